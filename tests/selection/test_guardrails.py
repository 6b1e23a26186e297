"""select warns about designs that cannot be trusted: few stimuli per class, and text classes of different lengths."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest
from helpers import CPU, synthetic, write_activation_file, write_jsonl
from scipy.stats import ttest_ind

from localizer.cli import main
from localizer.selection import SelectionOptions
from localizer.selection.select import select_file


def test_few_stimuli_per_class_are_warned_and_recorded(tmp_path, capsys):
    layers, positive = synthetic(seed=1, n_pos=12, n_ctl=30)
    acts = write_activation_file(tmp_path / "a.h5", layers, positive)
    with pytest.warns(UserWarning, match="only 12 positive and 30 control stimuli"):
        select_file(acts, tmp_path / "s.h5", SelectionOptions(count=3), log_dir=None)
    with h5py.File(tmp_path / "s.h5") as f:
        assert "fewer than 20 in a class" in json.loads(f.attrs["warnings"])[0]
    layers, positive = synthetic(seed=1, n_pos=25, n_ctl=30)
    acts = write_activation_file(tmp_path / "b.h5", layers, positive)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        select_file(acts, tmp_path / "t.h5", SelectionOptions(count=3), log_dir=None)
    with h5py.File(tmp_path / "t.h5") as f:
        assert json.loads(f.attrs["warnings"]) == [] and "n_tokens_t" not in f.attrs  # no token counts: images


def test_token_lengths_are_stored_compared_and_a_confound_is_warned(gpt2_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    from localizer import extract

    rng = np.random.default_rng(0)
    words = "the cat dog sat ran on a mat big small red blue house tree river bird".split()
    rows = [{"text": " ".join(rng.choice(words, 12 if i % 2 == 0 else 3)), "positive": i % 2 == 0} for i in range(50)]
    stimuli = write_jsonl(tmp_path / "s.jsonl", rows)
    acts = extract(gpt2_dir, stimuli, tmp_path / "a.h5", layers="transformer.h.*", max_length=10, trainer=CPU)
    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    want = np.array([len(tok(r["text"], truncation=True, max_length=10)["input_ids"]) for r in rows])
    with h5py.File(acts) as f:
        np.testing.assert_array_equal(f["n_tokens"][:], want)
    assert main(["select", "--activations", str(acts), "--out", str(tmp_path / "sel.h5"), "--count", "3"]) == 0
    printed = capsys.readouterr()
    pos, ctl = want[0::2], want[1::2]
    t = ttest_ind(pos, ctl, equal_var=False).statistic
    with h5py.File(tmp_path / "sel.h5") as f:
        assert f.attrs["n_tokens_positive"] == pytest.approx(pos.mean())
        assert f.attrs["n_tokens_control"] == pytest.approx(ctl.mean())
        assert f.attrs["n_tokens_t"] == pytest.approx(t)
        recorded = json.loads(f.attrs["warnings"])
    assert len(recorded) == 1 and "position or length alone can separate the classes" in recorded[0]
    assert f"token length: positive {pos.mean():.1f} vs control {ctl.mean():.1f}" in printed.out
    assert "warning: positive stimuli average" in printed.out
