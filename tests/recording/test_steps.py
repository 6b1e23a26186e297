"""Several text batches per Lightning step: the model still sees the plain batches, and the file is the same."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import CPU, make_texts, write_jsonl
from test_recorder import read, text_reference

from localizer import extract
from localizer.errors import LocalizerError
from localizer.recording.datamodule import LocalizerDataModule, batches_per_step
from localizer.recording.recorder import ActivationRecorder


def test_a_step_carries_the_plain_batches_in_order(gpt2_dir):
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    tok.pad_token = tok.eos_token
    ds = datasets.Dataset.from_list(make_texts(47, seed=5))
    plain = list(LocalizerDataModule(ds, tok, batch_size=4).predict_dataloader())
    steps = list(LocalizerDataModule(ds, tok, batch_size=4, batches_per_step=4).predict_dataloader())
    assert [len(s["parts"]) for s in steps] == [4, 4, 4]  # 12 batches of 4 rows, the last one of 3
    parts = [p for s in steps for p in s["parts"]]
    assert len(parts) == len(plain)
    for p, b in zip(parts, plain):  # each part padded on its own, exactly as the batch of 4 rows
        assert set(p) == {"input_ids", "attention_mask"}
        assert torch.equal(p["input_ids"], b["input_ids"]) and torch.equal(p["attention_mask"], b["attention_mask"])
    for key in ("index", "positive"):
        assert torch.equal(torch.cat([s[key] for s in steps]), torch.cat([b[key] for b in plain]))
    with pytest.raises(LocalizerError, match="batches_per_step"):
        LocalizerDataModule(ds, tok, batch_size=4, batches_per_step=3)  # does not divide a window of 16 batches


def test_steps_grow_with_the_run_up_to_512_rows_and_16_batches():
    for batch, n_batches in ((64, 256), (64, 31), (1, 10**6), (2, 150), (700, 10**6), (32, 512), (32, 64)):
        k = batches_per_step(batch, n_batches)
        assert k & (k - 1) == 0 and 16 % k == 0  # a power of two that divides the sort window
        assert k == 1 or (k // 2) * batch < 512  # no bigger than needed to reach 512 rows
        assert k == 16 or k * batch >= 512 or 2 * k * 32 > n_batches  # as big as allowed
        assert n_batches // k >= 32 or k == 1  # at least 32 steps per run


def test_extraction_in_steps_equals_each_text_alone(gpt2_dir, tmp_path, monkeypatch):
    """300 texts in batches of 2 (150 batches: 4 per step): every row equals the model run on that text alone."""
    rows = make_texts(300, seed=8)
    stimuli = write_jsonl(tmp_path / "s.jsonl", rows)
    parts_per_step: list[int] = []
    forward = ActivationRecorder.forward

    def spy(self, batch):
        if "parts" in batch:
            parts_per_step.append(len(batch["parts"]))
            assert all(len(p["input_ids"]) <= 2 for p in batch["parts"])  # the model still gets batches of 2
        return forward(self, batch)

    monkeypatch.setattr(ActivationRecorder, "forward", spy)
    out = extract(gpt2_dir, stimuli, tmp_path / "a.h5", layers="transformer.h.0", pooling="mean", batch_size=2,
                  trainer=CPU)  # fmt: skip
    assert parts_per_step == [4] * 37 + [2]
    _, ref_mean, _ = text_reference(gpt2_dir, [r["text"] for r in rows])
    data, _ = read(out)
    np.testing.assert_allclose(data["activations/transformer.h.0"], ref_mean[1], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(data["index"], np.arange(300))
    np.testing.assert_array_equal(data["positive"], [r["positive"] for r in rows])
