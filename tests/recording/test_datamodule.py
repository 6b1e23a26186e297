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
