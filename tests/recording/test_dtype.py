"""--dtype: weights loaded in bfloat16/float16, activations stored as float32, the type carried to select and ablate."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

import localizer
from localizer.errors import LocalizerError

CPU = {"accelerator": "cpu", "devices": 1}


def direct_last_token(model_dir, texts, dtype):
    """Block 0's output at the last token of each text, one text at a time, from a direct model call."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    rows = []
    with torch.no_grad():
        for t in texts:
            hidden = model(tok(t, return_tensors="pt")["input_ids"], output_hidden_states=True).hidden_states[1]
            rows.append(hidden[0, -1].float().numpy())
    return np.stack(rows)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_extract_in_half_precision_equals_a_direct_call_and_stores_float32(gpt2_dir, text_file, tmp_path, dtype):
    out = localizer.extract(model=gpt2_dir, stimuli=text_file, out=tmp_path / "a.h5", layers="transformer.h.0",
                            batch_size=1, dtype=dtype, trainer=CPU)  # fmt: skip
    full = localizer.extract(model=gpt2_dir, stimuli=text_file, out=tmp_path / "f.h5", layers="transformer.h.0",
                             batch_size=1, trainer=CPU)  # fmt: skip
    with h5py.File(out) as f, h5py.File(full) as g:
        x = f["activations/transformer.h.0"][:]
        assert x.dtype == np.float32 and f.attrs["dtype"] == dtype and g.attrs["dtype"] == "float32"
        assert json.loads(f.attrs["settings"])["dtype"] == dtype and "dtype" not in json.loads(g.attrs["settings"])
        texts = [s.decode() for s in f["stimulus"][:]]
        x32 = g["activations/transformer.h.0"][:]
    want = direct_last_token(gpt2_dir, texts, getattr(torch, dtype))
    np.testing.assert_allclose(x, want, rtol=0, atol=1e-6)
    assert np.abs(x - x32).max() > 1e-6  # it really ran in half precision (equal to 1e-6 to its own reference)
    # select records the type; ablate loads the model in it unless told otherwise
    sel = localizer.select(activations=out, out=tmp_path / "s.h5", top="10%", controls=2)
    assert sel.attrs["dtype"] == dtype
    doc = localizer.ablate(selection=tmp_path / "s.h5", task="next-token", task_data=text_file, log_dir=None,
                           trainer=CPU)  # fmt: skip
    assert doc["provenance"]["dtype"] == dtype
    doc32 = localizer.ablate(selection=tmp_path / "s.h5", task="next-token", task_data=text_file, log_dir=None,
                             dtype="float32", trainer=CPU)  # fmt: skip
    assert doc32["provenance"]["dtype"] == "float32"


def test_an_unknown_dtype_is_refused(gpt2_dir, text_file, tmp_path):
    with pytest.raises(LocalizerError, match="dtype"):
        localizer.extract(model=gpt2_dir, stimuli=text_file, out=tmp_path / "a.h5", dtype="float8", trainer=CPU)
    assert not (tmp_path / "a.h5").exists()
