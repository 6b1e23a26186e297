"""Recorded activations equal an independent computation from the model's own hidden states."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from helpers import CPU

from localizer import extract


def read(path):
    """Every dataset and attribute of an activation file, as numpy (virtual datasets resolved)."""
    with h5py.File(path, "r") as f:
        data = {f"activations/{k}": v[:] for k, v in f["activations"].items()}
        for k in ("index", "positive", "split"):
            if k in f:
                data[k] = f[k][:]
        return data, dict(f.attrs)


def text_reference(model_dir, texts):
    """Per stimulus, unpadded (batch of 1): GPT-2 hidden states pooled by hand → {hidden_state_index: (last, mean)}."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    last, mean = {}, {}
    with torch.no_grad():
        for t in texts:
            ids = tok(t, return_tensors="pt")
            hs = model(**ids, output_hidden_states=True).hidden_states
            for k, h in enumerate(hs):
                last.setdefault(k, []).append(h[0, -1].numpy())
                mean.setdefault(k, []).append(h[0].mean(0).numpy())
    return {k: np.stack(v) for k, v in last.items()}, {k: np.stack(v) for k, v in mean.items()}, model


def test_gpt2_last_and_mean_match_hidden_states(gpt2_dir, text_file, tmp_path):
    from localizer.recording.stimuli import load_stimuli

    texts = load_stimuli(text_file)["text"]
    ref_last, ref_mean, model = text_reference(gpt2_dir, texts)
    layers = "transformer.h.*,transformer.ln_f"
    for pooling, ref in (("last", ref_last), ("mean", ref_mean)):
        out = extract(
            gpt2_dir, text_file, tmp_path / f"{pooling}.h5", layers=layers, pooling=pooling, batch_size=8, trainer=CPU
        )
        data, attrs = read(out)
        assert json.loads(attrs["layers"]) == ["transformer.h.0", "transformer.h.1", "transformer.ln_f"]
        assert attrs["pooling"] == pooling and attrs["model_class"] == "GPT2LMHeadModel"
        assert attrs["n_stimuli"] == len(texts) and attrs["format_version"] == 1
        # hidden_states[1] is block 0's output; hidden_states[2] is ln_f(block 1's output)
        np.testing.assert_allclose(data["activations/transformer.h.0"], ref[1], atol=1e-5, rtol=0)
        np.testing.assert_allclose(data["activations/transformer.ln_f"], ref[2], atol=1e-5, rtol=0)
        if pooling == "last":  # layer norm acts per token, so ln_f(last token of block 1) = last of ln_f(...)
            with torch.no_grad():
                h1 = model.transformer.ln_f(torch.from_numpy(data["activations/transformer.h.1"])).numpy()
            np.testing.assert_allclose(h1, ref[2], atol=1e-5, rtol=0)
        assert data["activations/transformer.h.0"].dtype == np.float32
        np.testing.assert_array_equal(data["index"], np.arange(len(texts)))


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_batch_size_and_padding_side_do_not_change_contents(gpt2_dir, text_file, tmp_path, pooling):
    runs = {}
    for batch_size, side in ((1, "right"), (8, "right"), (8, "left")):
        out = extract(
            gpt2_dir,
            text_file,
            tmp_path / f"b{batch_size}{side}.h5",
            pooling=pooling,
            batch_size=batch_size,
            padding_side=side,
            trainer=CPU,
        )
        runs[(batch_size, side)] = read(out)[0]
    base = runs[(1, "right")]
    assert sorted(base) == sorted(runs[(8, "left")])
    for key, other in runs.items():
        for name, value in base.items():
            if value.dtype.kind == "f":
                np.testing.assert_allclose(other[name], value, atol=1e-5, rtol=0, err_msg=f"{key} {name}")
            else:
                np.testing.assert_array_equal(other[name], value)


def test_bert_left_padding_matches_unpadded(bert_dir, text_file, tmp_path):
    """A bidirectional encoder with absolute positions: left padding needs mask-derived position ids too."""
    from transformers import AutoTokenizer, BertModel

    from localizer.recording.stimuli import load_stimuli

    texts = load_stimuli(text_file)["text"]
    tok = AutoTokenizer.from_pretrained(bert_dir)
    model = BertModel.from_pretrained(bert_dir).eval()
    with torch.no_grad():
        ref = np.stack([model(**tok(t, return_tensors="pt")).last_hidden_state[0].mean(0).numpy() for t in texts])
    out = extract(
        bert_dir,
        text_file,
        tmp_path / "bert.h5",
        layers="auto",
        pooling="mean",
        batch_size=8,
        padding_side="left",
        trainer=CPU,
    )
    data, attrs = read(out)
    assert json.loads(attrs["layers"]) == ["encoder.layer.0", "encoder.layer.1"]
    np.testing.assert_allclose(data["activations/encoder.layer.1"], ref, atol=1e-5, rtol=0)


def image_reference(model_dir, image_folder):
    """Per image (batch of 1): ResNet hidden states → [N, C, H, W] per hidden-state index, in dataset order."""
    from transformers import AutoImageProcessor, ResNetForImageClassification

    from localizer.recording.stimuli import load_stimuli

    ds = load_stimuli(image_folder)
    proc = AutoImageProcessor.from_pretrained(model_dir)
    model = ResNetForImageClassification.from_pretrained(model_dir).eval()
    hs = {}
    with torch.no_grad():
        for im in ds["image"]:
            px = proc(images=im.convert("RGB"), return_tensors="pt")["pixel_values"]
            for k, h in enumerate(model(px, output_hidden_states=True).hidden_states):
                hs.setdefault(k, []).append(h[0].numpy())
    return {k: np.stack(v) for k, v in hs.items()}, ds


def test_resnet_channel_and_flat_match_hidden_states(resnet_dir, image_folder, tmp_path):
    ref, ds = image_reference(resnet_dir, image_folder)
    blocks = [
        "resnet.encoder.stages.0.layers.0",
        "resnet.encoder.stages.1.layers.0",
        "resnet.encoder.stages.1.layers.1",
    ]
    for pooling in ("channel", "flat"):
        files = [
            extract(resnet_dir, image_folder, tmp_path / f"{pooling}{b}.h5", pooling=pooling, batch_size=b, trainer=CPU)
            for b in (1, 8)
        ]
        data, attrs = read(files[0])
        assert json.loads(attrs["layers"]) == blocks  # auto: residual blocks, looking through the stage wrappers
        assert attrs["model_class"] == "ResNetForImageClassification"
        np.testing.assert_array_equal(data["positive"], np.array(ds["positive"]))
        # hidden_states[1] = stage 0 output = its only block; hidden_states[2] = stage 1 output = its last block
        for layer, k in ((blocks[0], 1), (blocks[2], 2)):
            want = ref[k].mean(axis=(2, 3)) if pooling == "channel" else ref[k].reshape(len(ref[k]), -1)
            np.testing.assert_allclose(data[f"activations/{layer}"], want, atol=1e-5, rtol=0)
        other, _ = read(files[1])
        for name, value in data.items():
            np.testing.assert_allclose(other[name], value, atol=1e-5, rtol=0)


def test_plain_module_with_transform(tmp_path, image_folder):
    """A plain nn.Module from package.module:callable, inputs from a user transform; checked by direct calls."""
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "import torch\nfrom torch import nn\n"
        "def tiny():\n"
        "    torch.manual_seed(3)\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU())\n"
        "def to_tensor(im):\n"
        "    im = im.convert('L').resize((16, 16))\n"
        "    return torch.tensor(list(im.getdata()), dtype=torch.float32).reshape(1, 16, 16) / 255\n"
    )
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        from userpkg import nets

        from localizer.recording.stimuli import load_stimuli

        out = extract(
            "userpkg.nets:tiny",
            image_folder,
            tmp_path / "plain.h5",
            layers="1,3",
            batch_size=5,
            transform="userpkg.nets:to_tensor",
            trainer=CPU,
        )
        data, attrs = read(out)
        net = nets.tiny().eval()
        x = torch.stack([nets.to_tensor(im) for im in load_stimuli(image_folder)["image"]])
        with torch.no_grad():
            h1 = net[1](net[0](x))
            h3 = net[3](net[2](h1))
        np.testing.assert_allclose(data["activations/1"], h1.mean((2, 3)).numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(data["activations/3"], h3.mean((2, 3)).numpy(), atol=1e-5, rtol=0)
        assert attrs["model_class"] == "userpkg.nets:tiny"
    finally:
        sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_flat_rows_are_not_changed_by_a_later_in_place_op(layout):
    """A recorded layer followed by ReLU(inplace=True), with a later layer recorded too (so the forward goes on):
    the flat rows are the layer's own output, not what the in-place ReLU later makes of it (whether flattening the
    output views it or, channels last, copies it)."""
    from torch import nn

    from localizer.recording.recorder import ActivationRecorder

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 3)).eval()
    model = model.to(memory_format=layout)
    x = torch.randn(2, 3, 8, 8).to(memory_format=layout)
    with torch.no_grad():
        want = model[0](x)
        assert (want < 0).any()  # what the ReLU would zero
        for pooling, expected in (("flat", want.reshape(2, -1)), ("channel", want.mean(dim=(2, 3)))):
            got = ActivationRecorder(model, ["0", "2"], pooling, modality="image")({"pixel_values": x})
            torch.testing.assert_close(got["0"], expected, rtol=0, atol=1e-6)
            torch.testing.assert_close(got["2"], model(x).reshape(2, 2, -1).flatten(1) if pooling == "flat"
                                       else model(x).mean(dim=(2, 3)), rtol=0, atol=1e-6)  # fmt: skip
