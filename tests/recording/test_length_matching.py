"""Built-in sets matched in token length: the language non-words to the model's tokenizer, the ToM and arithmetic
templates pair by pair; ToM and arithmetic recorded with mean pooling unless asked otherwise."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from scipy import stats

import localizer
from localizer.recording.builtin import builtin
from localizer.resources import read_text

CPU = {"accelerator": "cpu", "devices": 1}


@pytest.fixture(scope="module")
def word_model(tmp_path_factory):
    """A tiny GPT-2 whose BPE tokenizer knows the built-in sentences' words (as a real model's does) and so splits
    the pseudowords into more tokens than the words: the confound that matching removes."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("wordmodel")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<unk>", "<eos>"])
    tok.train_from_iterator(read_text("sentences.txt").splitlines() * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    fast.save_pretrained(d)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=16, n_head=2, n_positions=128, vocab_size=len(fast),
                     eos_token_id=fast.eos_token_id, bos_token_id=fast.eos_token_id)  # fmt: skip
    GPT2LMHeadModel(cfg).eval().save_pretrained(d)
    return str(d), fast


def n_tokens(tok, texts):
    return np.array([len(ids) for ids in tok(list(texts))["input_ids"]])


def runs_of(words):
    """Every run of >= 2 consecutive words (written here independently of localizer)."""
    return [words[i:j] for i in range(len(words)) for j in range(i + 2, len(words) + 1)]


def test_language_non_words_are_matched_to_the_models_tokenizer(word_model, tmp_path):
    path, tok = word_model
    before = builtin("language-word-matched")
    pos = np.array(before["positive"])
    lengths = n_tokens(tok, before["text"])
    t_before = stats.ttest_ind(lengths[pos], lengths[~pos], equal_var=False).statistic
    assert t_before < -10  # the word-matched set: the non-words take far more tokens

    out = localizer.extract(model=path, stimuli="language", layers="transformer.h.*", out=tmp_path / "a.h5",
                            batch_size=64, trainer=CPU)  # fmt: skip
    with h5py.File(out) as f:
        texts = [s.decode() for s in f["stimulus"][:]]
        recorded = f["n_tokens"][:]
        positive = f["positive"][:]
    assert (positive == pos).all() and texts[0::2] == before["text"][0::2]  # the sentences as they were
    np.testing.assert_array_equal(recorded, n_tokens(tok, texts))
    for sentence, original, chosen in zip(texts[0::2], before["text"][1::2], texts[1::2]):
        words = original.rstrip(".").split()
        options = [" ".join(r) for r in runs_of(words)]
        options = [o[0].upper() + o[1:] + "." for o in options]
        assert chosen in options, (original, chosen)
        gaps = np.abs(n_tokens(tok, options) - n_tokens(tok, [sentence])[0])
        assert abs(n_tokens(tok, [chosen])[0] - n_tokens(tok, [sentence])[0]) == gaps.min()
    t_after = stats.ttest_ind(recorded[positive], recorded[~positive], equal_var=False).statistic
    assert abs(t_after) < 2 and abs(recorded[positive].mean() - recorded[~positive].mean()) < 0.5, t_after
    sel = localizer.select(activations=out, out=tmp_path / "s.h5", top="5%")
    assert not any("token" in w for w in sel.attrs.get("warnings", [])), sel.attrs.get("warnings")


@pytest.mark.parametrize("name", ["tom", "arithmetic"])
def test_tom_and_arithmetic_pairs_have_the_same_number_of_words_and_marks(name):
    """With a tokenizer that gives every word and punctuation mark one token (as gemma-3-270m's and MiniLM's do for
    these templates' words: measured in the README), a story and its control have the same token count."""
    import re

    ds = builtin(name)
    assert (np.array(ds["positive"][0::2]) & ~np.array(ds["positive"][1::2])).all()
    pieces = [len(re.findall(r"\w+|[^\w\s]", t)) for t in ds["text"]]
    assert pieces[0::2] == pieces[1::2]


def test_tom_and_arithmetic_are_recorded_with_mean_pooling_unless_asked(word_model, tmp_path):
    path, tok = word_model
    default = localizer.extract(model=path, stimuli="arithmetic", layers="transformer.h.*", out=tmp_path / "m.h5",
                                trainer=CPU)  # fmt: skip
    last = localizer.extract(model=path, stimuli="arithmetic", layers="transformer.h.*", out=tmp_path / "l.h5",
                             pooling="last", trainer=CPU)  # fmt: skip
    with h5py.File(default) as f, h5py.File(last) as g:
        assert f.attrs["pooling"] == "mean" and g.attrs["pooling"] == "last"
        mean_acts, last_acts = f["activations/transformer.h.0"][:], g["activations/transformer.h.0"][:]
    # the mean over the tokens, computed from a direct model call
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    text = builtin("arithmetic")["text"][3]
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():  # block 0's output (the last entry has ln_f applied)
        hidden = model(ids, output_hidden_states=True).hidden_states[1][0]
    np.testing.assert_allclose(mean_acts[3], hidden.mean(0).numpy(), atol=1e-5)
    np.testing.assert_allclose(last_acts[3], hidden[-1].numpy(), atol=1e-5)
