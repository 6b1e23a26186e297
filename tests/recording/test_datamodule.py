"""Texts tokenized once ahead of the loop give the batches the tokenizer gives batch by batch."""

from __future__ import annotations

import pytest
import torch
from helpers import make_texts

from localizer.recording.datamodule import Collate, LocalizerDataModule


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("model", ["gpt2_dir", "bert_dir"])
def test_pretokenized_batches_equal_the_tokenizers_own_padding(request, model, side):
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(model))
    tok.padding_side = side
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    rows = make_texts(23, seed=3)
    ds = datasets.Dataset.from_list(rows)
    for max_length in (None, 4):
        data = LocalizerDataModule(ds, tok, batch_size=5, max_length=max_length)
        batches = list(data.predict_dataloader())
        per_batch = Collate("text", tok, max_length=max_length)  # the tokenizer called on each batch's texts
        at = 0
        for b in batches:
            want = per_batch([{"index": at + i, **rows[at + i]} for i in range(len(b["index"]))])
            assert set(b) == set(want)
            for key in ("index", "input_ids", "attention_mask", "token_type_ids", "positive"):
                if key in want:
                    assert torch.equal(b[key], want[key]), (key, side, max_length)
            at += len(b["index"])
        assert at == len(rows)
        assert data.token_counts() == [
            len(ids)
            for ids in tok([r["text"] for r in rows], truncation=max_length is not None, max_length=max_length)[
                "input_ids"
            ]
        ]


@pytest.mark.parametrize("model", ["gpt2_dir", "bert_dir"])
def test_the_rust_backend_gives_the_tokenizers_own_ids(request, model, monkeypatch):
    """``tokenize`` calls a fast tokenizer's Rust backend directly: the same ids (and token types) as
    ``tokenizer(texts)``, whatever truncation an earlier call left on the backend, with special-token strings in
    the texts (kept whole, or split when the tokenizer splits them); a class that changes how texts are encoded is
    called as usual."""
    from transformers import AutoTokenizer

    import localizer.recording.datamodule as dm
    from localizer.recording.datamodule import _encode_fast, tokenize

    monkeypatch.setattr(dm, "ENCODE_CHUNK", 3)  # the texts go to the backend in several calls
    tok = AutoTokenizer.from_pretrained(request.getfixturevalue(model))
    special = tok.eos_token or tok.sep_token
    texts = [r["text"] for r in make_texts(17, seed=5)] + [f"a {special} b", "", "   "]
    for split in (False, True):
        tok.split_special_tokens = split
        for max_length in (None, 3, 7):
            tok(texts, truncation=True, max_length=2)  # leaves truncation set on the backend
            want = tok(texts, truncation=max_length is not None, max_length=max_length)
            got = _encode_fast(texts, tok, max_length)
            assert got is not None  # the fast path is the one tested
            assert got == tokenize(texts, tok, max_length)
            assert got["input_ids"] == want["input_ids"], (split, max_length)
            assert (tok.convert_tokens_to_ids(special) in got["input_ids"][17]) == (not split)
            if "token_type_ids" in want:
                assert got["token_type_ids"] == want["token_type_ids"]
            else:
                assert "token_type_ids" not in got

    class Custom(type(tok)):
        def _encode_plus(self, *args, **kwargs):
            return super()._encode_plus(*args, **kwargs)

    tok.__class__ = Custom
    assert _encode_fast(texts, tok, None) is None
    assert tokenize(texts, tok, None)["input_ids"] == tok(texts)["input_ids"]
