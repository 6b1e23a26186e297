"""Built-in stimulus sets: counts, no duplicates, length balance, non-words are not words, reproducibility."""

from __future__ import annotations

import re

import numpy as np
import pytest

from localizer.recording.stimuli import load_stimuli


def test_language_counts_balance_and_nonwords():
    from wordfreq import zipf_frequency

    ds = load_stimuli("language")
    pos = [t for t, p in zip(ds["text"], ds["positive"]) if p]
    ctl = [t for t, p in zip(ds["text"], ds["positive"]) if not p]
    assert len(pos) >= 240 and len(ctl) >= 240
    assert len(set(ds["text"])) == len(ds)  # no duplicates
    for s in pos:
        assert 8 <= len(s.split()) <= 14, s
    # each non-word string follows its sentence: same number of words, about the same length in letters
    for s, n in zip(ds["text"][0::2], ds["text"][1::2]):
        assert len(s.split()) == len(n.split())
        assert abs(len(n) - len(s)) <= 0.25 * len(s), (s, n)
    sentence_words = {w.lower() for s in pos for w in re.findall(r"[A-Za-z]+", s)}
    for n in ctl:
        for w in re.findall(r"[A-Za-z]+", n.lower()):
            assert zipf_frequency(w, "en") == 0 and w not in sentence_words, (w, n)
    split = np.array(ds["split"])
    positive = np.array(ds["positive"])
    assert set(split) == {"localize", "validation"}
    assert (split[positive] == split[~positive]).all()  # a sentence and its non-words share a split
    assert 0.2 < (split == "validation").mean() < 0.3


def test_language_tasks():
    from localizer.recording.builtin import builtin

    texts = builtin("language-next-token")["text"]
    pairs = builtin("language-minimal-pairs")
    sentences = set(load_stimuli("language")["text"])
    assert len(texts) >= 50 and len(set(texts)) == len(texts) and not set(texts) & sentences  # held out
    assert len(pairs) >= 100
    assert all(g != b for g, b in zip(pairs["good"], pairs["bad"]))
    assert len({(g, b) for g, b in zip(pairs["good"], pairs["bad"])}) == len(pairs)
    assert len(set(pairs["phenomenon"])) >= 4


@pytest.mark.parametrize("name", ["tom", "arithmetic"])
def test_seeded_sets_are_reproducible_and_balanced(name):
    a, b = load_stimuli(name), load_stimuli(name)
    assert a["text"] == b["text"] and a["split"] == b["split"]
    assert sum(a["positive"]) == len(a) // 2 and len(set(a["text"])) == len(a)
    pos = [len(t.split()) for t, p in zip(a["text"], a["positive"]) if p]
    ctl = [len(t.split()) for t, p in zip(a["text"], a["positive"]) if not p]
    assert abs(np.mean(pos) - np.mean(ctl)) <= 0.15 * np.mean(pos)  # length-matched conditions


def test_arithmetic_prompts_are_hard_vs_easy():
    ds = load_stimuli("arithmetic")
    for t, p in zip(ds["text"], ds["positive"]):
        a, op, b = re.match(r"What is (\d+) (times|plus) (\d+)\?", t).groups()
        if p:
            assert op == "times" and 10 <= int(a) < 100 and 10 <= int(b) < 100 and int(a) % 10 and int(b) % 10
        else:  # sums of tens: easy, and as many digits as the hard products' factors
            assert op == "plus" and int(a) in range(10, 100, 10) and int(b) in range(10, 100, 10)


def test_faces():
    ds = load_stimuli("faces")
    assert sum(ds["positive"]) == 100 and len(ds) - 100 >= 100
    assert ds["image"][0].size == (25, 25)
    faces = np.stack([np.asarray(im, dtype=float) for im, p in zip(ds["image"], ds["positive"]) if p])
    from skimage.data import lfw_subset

    np.testing.assert_allclose(faces / 255, lfw_subset()[:100], atol=1 / 255)
    assert load_stimuli("faces")["split"] == ds["split"]
