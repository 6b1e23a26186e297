"""The shipped paper presets against the papers' procedures, written here from their descriptions (not localizer's
code): AlKhamissi et al. (2024) and DeepLocalizer (xnought/deeplocalizer 0.0.3)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from helpers import CPU_FLAGS, make_texts, write_jsonl

from localizer.cli import main

pytestmark = pytest.mark.slow


def alkhamissi_mask(model_dir, rows, percent):
    """Their procedure: lower-case, tokenizer(truncation=True, max_length=12), the last token's output of every
    block (forward hooks), |x|, scipy Welch t (equal_var=False) over ALL rows, global top k = floor(pct x U / 100)."""
    from scipy.stats import ttest_ind
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    outputs = {}
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: outputs.__setitem__(k, o[0] if isinstance(o, tuple) else o))
             for k, b in enumerate(model.transformer.h)]  # fmt: skip
    acts = []
    with torch.no_grad():
        for row in rows:
            enc = tok(row["text"].lower(), truncation=True, max_length=12, return_tensors="pt")
            model(**enc)
            acts.append(torch.cat([outputs[k][0, -1] for k in sorted(outputs)]).numpy())
    for h in hooks:
        h.remove()
    x = np.abs(np.stack(acts).astype(np.float64))
    positive = np.array([r["positive"] for r in rows])
    t = ttest_ind(x[positive], x[~positive], equal_var=False).statistic
    k = len(t) * percent // 100
    mask = np.zeros(len(t), dtype=bool)
    mask[np.argsort(-t, kind="stable")[:k]] = True
    return mask, t


def test_alkhamissi2024_preset_is_their_procedure(gpt2_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = make_texts(60, seed=11)
    for i, r in enumerate(rows):  # capitals, so that lower-casing matters
        r["text"] = r["text"].upper() if i % 3 == 0 else r["text"].capitalize()
    stimuli = write_jsonl(tmp_path / "mixed.jsonl", rows)
    args = ["run", "--config", "alkhamissi2024", "--model", gpt2_dir, "--stimuli", stimuli, "--select.top", "10",
            "--ablate.tasks", "[]", "--output_dir", "preset", *CPU_FLAGS]  # fmt: skip
    assert main(args) == 0
    want, t = alkhamissi_mask(gpt2_dir, rows, 10)
    with h5py.File(tmp_path / "preset" / "selection.h5") as f:
        layers = json.loads(f.attrs["layers"])
        got = np.concatenate([f[f"mask/{layer}"][:] for layer in layers])
        got_t = np.concatenate([f[f"layers/{layer}/t"][:] for layer in layers])
        options = json.loads(f.attrs["selection"])
        assert "validation" not in f  # all rows are selected on: nothing is held out
    np.testing.assert_allclose(got_t, t, rtol=1e-4, atol=1e-6)
    assert got.sum() == want.sum() == 6 and (got == want).all()
    assert options["rows"] == "all" and options["abs"] is True
    with h5py.File(tmp_path / "preset" / "activations.h5") as f:
        assert f["stimulus"].asstr()[0] == rows[0]["text"].lower()  # what the model was shown
    # the default protocol (full texts as written, localize rows only) selects other units on the same model
    assert main(["run", "--model", gpt2_dir, "--stimuli", stimuli, "--select.top", "10", "--ablate.tasks", "[]",
                 "--output_dir", "default", *CPU_FLAGS]) == 0  # fmt: skip
    with h5py.File(tmp_path / "default" / "selection.h5") as f:
        default = np.concatenate([f[f"mask/{layer}"][:] for layer in layers])
    assert not (default == want).all()


def test_deeplocalizer_preset_is_its_procedure(resnet_dir, image_folder, tmp_path, monkeypatch):
    """Its procedure on the recorded activations: every element of every block output, mean over faces - mean over
    objects of the raw values on the non-validation rows, ranked by absolute value, k = int(pct / 100 x total)."""
    monkeypatch.chdir(tmp_path)
    args = ["run", "--config", "deeplocalizer", "--model", resnet_dir, "--stimuli", str(image_folder),
            "--select.top", "2", "--ablate.tasks", "[]", "--output_dir", "dl", *CPU_FLAGS]  # fmt: skip
    assert main(args) == 0
    with h5py.File(tmp_path / "dl" / "activations.h5") as f:
        assert f.attrs["pooling"] == "flat"
        layers = json.loads(f.attrs["layers"])
        x = np.concatenate([f[f"activations/{layer}"][:] for layer in layers], axis=1).astype(np.float64)
        positive = f["positive"][:]
    diff = x[positive].mean(0) - x[~positive].mean(0)
    k = int((2 / 100) * x.shape[1])
    want = np.zeros(x.shape[1], dtype=bool)
    want[np.argsort(-np.abs(diff), kind="stable")[:k]] = True
    with h5py.File(tmp_path / "dl" / "selection.h5") as f:
        got = np.concatenate([f[f"mask/{layer}"][:] for layer in layers])
        assert json.loads(f.attrs["selection"])["statistic"] == "mean_diff"
    assert got.sum() == k and (got == want).all()
