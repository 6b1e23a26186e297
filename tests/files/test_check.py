"""`localizer check` passes intact files and names what is wrong in deliberately damaged ones."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from helpers import make_texts, write_jsonl

from localizer.cli import main

N = 12


@pytest.fixture(scope="module")
def files(gpt2_dir, tmp_path_factory):
    from localizer import extract
    from localizer.selection import SelectionOptions
    from localizer.selection.select import select_file

    d = tmp_path_factory.mktemp("check")
    stimuli = write_jsonl(d / "s.jsonl", make_texts(N, seed=3))
    extract(
        gpt2_dir,
        stimuli,
        d / "a.h5",
        batch_size=2,
        segment_mb=0.0001,
        layout="virtual",
        trainer={"accelerator": "cpu", "enable_progress_bar": False},
    )
    select_file(d / "a.h5", d / "sel.h5", SelectionOptions(top="10%", controls=2), log_dir=None)
    return d


def segments(d):
    return sorted((d / "a.h5.shards").glob("part-*.h5"))


def attr(path, key, value):
    with h5py.File(path, "a") as f:
        f.attrs[key] = value


def edit(path, name, fn):
    with h5py.File(path, "a") as f:
        data = f[name][:]
        f[name][...] = fn(data)


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def seg_index(d):
    with h5py.File(segments(d)[1]) as f:
        return int(f["index"][0])


DAMAGE = {
    "segment deleted": (lambda d: segments(d)[1].unlink(), "a.h5", "is missing (its rows read as NaN)"),
    "master truncated": (lambda d: truncate(d / "a.h5"), "a.h5", "not a readable HDF5 file"),
    "segment truncated": (lambda d: truncate(segments(d)[0]), "a.h5", "is not a readable HDF5 file"),
    "NaN in a segment": (
        lambda d: edit(
            segments(d)[1],
            "activations/transformer.h.1",
            lambda a: np.where(np.arange(a.shape[0])[:, None] == 0, np.nan, a),
        ),
        "a.h5",
        "layer 'transformer.h.1': NaN/inf activations in 1 rows (first: stimulus {seg1})",
    ),
    "segment incomplete": (lambda d: attr(segments(d)[2], "complete", False), "a.h5", "is not marked complete"),
    "segment rows swapped": (
        lambda d: edit(segments(d)[0], "index", lambda i: i[::-1]),
        "a.h5",
        "maps rows to the wrong stimuli",
    ),
    "index duplicate": (
        lambda d: edit(d / "a.h5", "index", lambda i: np.where(i == 3, 2, i)),
        "a.h5",
        "/index is not 0..11: 1 missing (e.g. [3]), 1 duplicated (e.g. [2])",
    ),
    "unknown version": (lambda d: attr(d / "a.h5", "format_version", 7), "a.h5", "format_version is 7"),
    "layer without data": (
        lambda d: attr(d / "a.h5", "layers", '["transformer.h.0", "transformer.h.1", "x"]'),
        "a.h5",
        "layers listed but without a dataset: ['x']",
    ),
    "one class": (
        lambda d: edit(d / "a.h5", "positive", lambda p: np.ones_like(p)),
        "a.h5",
        "/positive holds only one class",
    ),
    "control overlaps": (
        lambda d: edit(d / "sel.h5", "controls/global/0/transformer.h.0", lambda c: c | _mask(d, "transformer.h.0")),
        "sel.h5",
        "overlaps the selection",
    ),
    "n_selected wrong": (lambda d: attr(d / "sel.h5", "n_selected", 99), "sel.h5", "n_selected is 99"),
    "p above 1": (
        lambda d: edit(d / "sel.h5", "layers/transformer.h.1/p", lambda p: p + 2),
        "sel.h5",
        "/layers/transformer.h.1/p holds values outside [0, 1]",
    ),
    "not ours": (lambda d: h5py.File(d / "a.h5", "w").close(), "a.h5", "neither an activation file"),
    # structural damage that must be reported, not end in a traceback
    "segment bytes zeroed": (lambda d: zero_bytes(segments(d)[1]), "a.h5", "part-0000-00000-000001.h5"),
    "n_stimuli not a number": (
        lambda d: attr(d / "a.h5", "n_stimuli", "many"),
        "a.h5",
        "root attribute 'n_stimuli' cannot be read (ValueError",
    ),
    "index of floats": (
        lambda d: replace(d / "a.h5", "index", np.arange(N) + 0.5),
        "a.h5",
        "/index is float64 (12,), expected int (12,)",
    ),
    "layer is a group": (
        lambda d: layer_as_group(d / "a.h5"),
        "a.h5",
        "layer 'transformer.h.1': dataset is a group, expected float32",
    ),
    "version is an array": (
        lambda d: attr(d / "a.h5", "format_version", np.array([1, 1])),
        "a.h5",
        "format_version is array([1, 1])",
    ),
    "selection mask of ints": (
        lambda d: replace(d / "sel.h5", "mask/transformer.h.0", np.zeros(32, np.int64)),
        "sel.h5",
        "/mask/transformer.h.0 is missing or not a bool vector",
    ),
}


def zero_bytes(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 4 : len(data) // 2] = bytes(len(data) // 2 - len(data) // 4)
    path.write_bytes(bytes(data))


def replace(path, name, value):
    with h5py.File(path, "a") as f:
        del f[name]
        f[name] = value


def layer_as_group(path):
    with h5py.File(path, "a") as f:
        del f["activations/transformer.h.1"]
        f.create_group("activations/transformer.h.1")


def _mask(d, layer):
    with h5py.File(d / "sel.h5") as f:
        return f[f"mask/{layer}"][:]


def test_intact_files_pass(files, capsys):
    assert main(["check", str(files / "a.h5"), str(files / "sel.h5")]) == 0
    out = capsys.readouterr().out
    assert f"a.h5: OK (activation file, format 1: {N} stimuli" in out and "6 segment files" in out
    assert "sel.h5: OK (selection file, format 1: 6 of 64 units selected in 2 layers, 6 control sets)" in out


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_files_are_reported(files, tmp_path, capsys, case):
    d = tmp_path / "copy"
    shutil.copytree(files, d)
    damage, target, expected = DAMAGE[case]
    expected = expected.format(seg1=seg_index(d)) if "{seg1}" in expected else expected
    damage(d)
    assert main(["check", str(d / target)]) == 1
    out = capsys.readouterr().out
    assert expected in out, out
    assert "OK (" not in out


def test_missing_path_is_a_usage_error(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"localizer check: error: {tmp_path / 'nope.h5'} does not exist"


@pytest.fixture(scope="module")
def nan_model(gpt2_dir, tmp_path_factory):
    """The test GPT-2 with the embedding of the word 'river' set to NaN: stimuli containing it give NaN."""
    import torch
    from transformers import AutoTokenizer, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("nan_gpt2")
    model = GPT2LMHeadModel.from_pretrained(gpt2_dir)
    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    (word_id,) = tok("river")["input_ids"]
    with torch.no_grad():
        model.transformer.wte.weight[word_id] = float("nan")
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d), tok, word_id


def test_nan_activations_stop_recording_with_layer_and_stimulus(nan_model, tmp_path, capsys):
    model, tok, word_id = nan_model
    rows = make_texts(20, seed=11)
    first = next(i for i, r in enumerate(rows) if word_id in tok(r["text"])["input_ids"])  # by direct tokenization
    n_bad = sum(word_id in tok(r["text"])["input_ids"] for r in rows)
    assert 0 < first and n_bad < len(rows)
    stimuli = write_jsonl(tmp_path / "s.jsonl", rows)
    common = [
        "extract",
        "--model",
        model,
        "--stimuli",
        stimuli,
        "--pooling",
        "mean",
        "--batch_size",
        "4",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
    ]
    assert main([*common, "--out", str(tmp_path / "a.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        f"localizer extract: error: layer 'transformer.h.0' gave NaN/inf activations for stimulus {first}"
    )
    assert not (tmp_path / "a.h5").exists()

    with pytest.warns(
        UserWarning,
        match=f"rank 0: {n_bad} recorded rows hold NaN/inf activations \\(first: layer "
        f"'transformer.h.0', stimulus {first}\\)",
    ):
        assert main([*common, "--out", str(tmp_path / "b.h5"), "--nan_policy", "allow"]) == 0
    assert main(["check", str(tmp_path / "b.h5")]) == 1
    out = capsys.readouterr().out
    assert f"layer 'transformer.h.0': NaN/inf activations in {n_bad} rows (first: stimulus {first})" in out
    assert main(["select", "--activations", str(tmp_path / "b.h5"), "--out", str(tmp_path / "s.h5")]) == 2
    assert f"NaN/inf activations at stimulus {first}" in capsys.readouterr().err
