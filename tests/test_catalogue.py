"""The catalogue of bad input: every command, each mistake → one line `localizer CMD: error: ...`, exit code 2, no
traceback, and no output file left behind (an existing one is left untouched).

Each case runs the same ``main(argv)`` that the console script runs; an exception that escaped it would fail the test
with a traceback. ``test_real_processes`` repeats a few cases as real subprocesses.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from helpers import CPU_FLAGS as CPU
from helpers import make_texts, synthetic, write_activation_file, write_jsonl

from localizer.cli import main


@pytest.fixture(scope="module")
def w(gpt2_dir, bert_dir, resnet_dir, text_file, tmp_path_factory):
    """Shared valid inputs: models, stimuli, a GPT-2 activation file + selection, a synthetic activation file."""
    from localizer import extract
    from localizer.selection import SelectionOptions
    from localizer.selection.select import select_file

    d = tmp_path_factory.mktemp("catalogue")
    acts = extract(
        gpt2_dir,
        text_file,
        d / "acts.h5",
        layers="transformer.h.*",
        segment_mb=0.001,
        layout="virtual",
        trainer={"accelerator": "cpu", "enable_progress_bar": False},
    )
    select_file(acts, d / "sel.h5", SelectionOptions(count=6, controls=4, seed=1), log_dir=None)
    layers, positive = synthetic(seed=4)
    syn = write_activation_file(d / "syn.h5", layers, positive)
    return SimpleNamespace(
        gpt2=gpt2_dir, bert=bert_dir, resnet=resnet_dir, text=text_file, acts=acts, sel=d / "sel.h5", syn=syn, dir=d
    )


def extract_args(w, t, *extra, model=None, stimuli=None, out=None):
    out = out or t / "a.h5"
    return ["extract", "--model", model or w.gpt2, "--stimuli", stimuli or w.text, "--out", out, *CPU, *extra]


def bad_stimuli(rows):
    def build(w, t):
        return extract_args(w, t, stimuli=write_jsonl(t / "bad.jsonl", rows)), t / "a.h5"

    return build


def image_folder_with_broken_file(w, t):
    from PIL import Image

    for sub in ("positive", "control"):
        (t / "imgs" / sub).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(t / "imgs" / "positive" / "ok.png")
    (t / "imgs" / "control" / "broken.png").write_bytes(b"\x89PNG not really")
    return extract_args(w, t, model=w.resnet, stimuli=t / "imgs"), t / "a.h5"


def existing_output(w, t):
    (t / "a.h5").write_text("keep me")
    return extract_args(w, t), None


def partial_with_other_settings(w, t):
    """A partial extraction (segments, no master: as after a crash before the rename) with other layers."""
    from localizer import extract

    extract(
        w.gpt2,
        w.text,
        t / "a.h5",
        layers="transformer.h.0",
        segment_mb=0.001,
        layout="virtual",
        trainer={"accelerator": "cpu", "enable_progress_bar": False},
    )
    (t / "a.h5").unlink()
    return extract_args(w, t, "--layers", "transformer.h.1"), t / "a.h5"


def yaml_with_unknown_key(command):
    def build(w, t):
        cfg = t / "cfg.yaml"
        if command == "extract":
            cfg.write_text(json.dumps({"model": w.gpt2, "stimuli": w.text, "out": str(t / "a.h5"), "colour": "red"}))
        else:
            cfg.write_text(json.dumps({"model": "gemma-3-270m", "colour": "red"}))
        return [command, "--config", cfg], t / "a.h5"

    return build


def damaged_copy(kind):
    def build(w, t):
        shutil.copy(w.acts, t / "acts.h5")
        shutil.copytree(w.dir / "acts.h5.shards", t / "acts.h5.shards")
        if kind == "truncated master":
            data = (t / "acts.h5").read_bytes()
            (t / "acts.h5").write_bytes(data[: len(data) // 3])
        elif kind == "truncated segment":
            seg = sorted((t / "acts.h5.shards").glob("part-*.h5"))[1]
            seg.write_bytes(seg.read_bytes()[:2000])
        elif kind == "corrupt":
            (t / "acts.h5").write_bytes(np.random.default_rng(0).bytes(5000))
        elif kind == "version":
            with h5py.File(t / "acts.h5", "a") as f:
                f.attrs["format_version"] = 7
        return ["select", "--activations", t / "acts.h5", "--out", t / "s.h5"], t / "s.h5"

    return build


def select_args(*extra):
    def build(w, t):
        return ["select", "--activations", w.syn, "--out", t / "s.h5", *extra], t / "s.h5"

    return build


def ablate_args(case):
    def build(w, t):
        args = [
            "ablate",
            "--selection",
            w.sel,
            "--model",
            w.gpt2,
            "--task",
            "next-token",
            "--task-data",
            write_jsonl(t / "t.jsonl", [{"text": "a b c"}, {"text": "d e"}]),
            "--log-dir",
            t / "tb",
            "--out",
            t / "r.json",
            *CPU,
        ]
        if case == "no labels":
            args[6] = "classification"
        elif case == "bad pairs":
            args[5:9] = [
                "--task",
                "minimal-pairs",
                "--task-data",
                write_jsonl(t / "p.jsonl", [{"good": "a b", "bad": ""}]),
            ]
        elif case == "other model":
            args[4], args[6] = w.bert, "agreement"  # a BERT has encoder.layer.*, not transformer.h.*
            args[8] = write_jsonl(t / "a.jsonl", [{"text": "a b", "positive": True}, {"text": "c", "positive": False}])
        elif case in ("other width", "other depth"):
            from transformers import GPT2Config, GPT2LMHeadModel

            shutil.copytree(w.gpt2, t / "other")
            cfg = GPT2Config.from_pretrained(w.gpt2)
            cfg.n_embd, cfg.n_layer = (48, 2) if case == "other width" else (32, 1)
            GPT2LMHeadModel(cfg).save_pretrained(t / "other")
            args[4] = t / "other"
        elif case == "truncated selection":
            data = Path(w.sel).read_bytes()
            (t / "trunc.h5").write_bytes(data[: len(data) // 2])
            args[2] = t / "trunc.h5"
        elif case == "unknown version":
            with h5py.File(t / "bad.h5", "w") as f:
                f.attrs["format_version"] = 7
            args[2] = t / "bad.h5"
        elif case == "bad method":
            args += ["--method", "halve"]
        elif case == "bad kind":
            args += ["--controls", "random"]
        elif case == "too many controls":
            args += ["--n-controls", "9"]
        elif case == "no validation rows":
            from localizer import extract
            from localizer.selection import SelectionOptions
            from localizer.selection.select import select_file

            rows = [{"text": r["text"], "positive": r["positive"]} for r in make_texts(12)]
            acts = extract(
                w.gpt2,
                write_jsonl(t / "ns.jsonl", rows),
                t / "ns.h5",
                trainer={"accelerator": "cpu", "enable_progress_bar": False},
            )
            select_file(acts, t / "ns_sel.h5", SelectionOptions(count=2, controls=1), log_dir=None)
            args[2] = t / "ns_sel.h5"
            del args[7:9]  # no --task-data: the recorded stimuli's validation rows
        return args, t / "r.json"

    return build


CASES = {
    # extract: model, layers, stimuli, outputs, processes, options, resuming
    "unknown model path": (lambda w, t: (extract_args(w, t, model=t / "nope"), t / "a.h5"), "not a model directory"),
    "hub model id without network": (
        lambda w, t: (extract_args(w, t, model="localizer-tests/no-such-model"), t / "a.h5"),
        "reachable hub id",
    ),
    "layer glob matching nothing": (
        lambda w, t: (extract_args(w, t, "--layers", "transformer.x.*"), t / "a.h5"),
        ("'transformer.x.*' matches no module", "transformer.h.*"),
    ),
    "stimuli missing positive": (
        bad_stimuli([{"text": "a b", "label": 1}, {"text": "c", "label": 0}]),
        "missing the bool column 'positive'",
    ),
    "only one class": (
        bad_stimuli([{"text": "a b", "positive": True}, {"text": "c", "positive": True}]),
        "only one class present",
    ),
    "non-bool positive": (
        bad_stimuli([{"text": "a b", "positive": 1}, {"text": "c", "positive": 0}]),
        "'positive' must be bool",
    ),
    "empty text": (
        bad_stimuli([{"text": "a b", "positive": True}, {"text": "  ", "positive": False}]),
        "stimulus 1 has an empty",
    ),
    "unknown split value": (
        bad_stimuli(
            [{"text": "a", "positive": True, "split": "train"}, {"text": "b", "positive": False, "split": "validation"}]
        ),
        "'split' may only hold",
    ),
    "no text or image column": (
        bad_stimuli([{"words": "a", "positive": True}, {"words": "b", "positive": False}]),
        "exactly one of the columns",
    ),
    "empty stimulus file": (
        lambda w, t: ((t / "e.jsonl").write_text("") and None or extract_args(w, t, stimuli=t / "e.jsonl"), t / "a.h5"),
        "empty",
    ),
    "unreadable image": (image_folder_with_broken_file, "broken.png: unreadable image"),
    "output under a file": (
        lambda w, t: ((t / "f").write_text("") and None or extract_args(w, t, out=t / "f" / "a.h5"), None),
        "is a file, not a folder",
    ),
    "output folder not writable": (
        lambda w, t: (extract_args(w, t, out="/proc/sys/a.h5"), Path("/proc/sys/a.h5")),
        "output folder /proc/sys is not writable",
    ),
    "existing output": (existing_output, "exists; pass --overwrite to replace it"),
    "more processes than stimuli": (
        lambda w, t: (
            extract_args(
                w,
                t,
                "--trainer.devices",
                "3",
                "--trainer.strategy",
                "ddp",
                stimuli=write_jsonl(t / "two.jsonl", make_texts(2)),
            ),
            t / "a.h5",
        ),
        "3 processes for 2 stimuli",
    ),
    "pooling of another modality": (
        lambda w, t: (extract_args(w, t, "--pooling", "channel"), t / "a.h5"),
        "does not fit text stimuli",
    ),
    "unknown option": (lambda w, t: (extract_args(w, t, "--no-such-option", "1"), t / "a.h5"), "no-such-option"),
    "extract config with unknown key": (yaml_with_unknown_key("extract"), "colour"),
    "unknown nan policy": (
        lambda w, t: (extract_args(w, t, "--nan_policy", "zero"), t / "a.h5"),
        "option --nan_policy: 'zero' is not one of error, allow",
    ),
    "resume with nothing to resume": (lambda w, t: (extract_args(w, t, "--resume"), t / "a.h5"), "nothing to resume"),
    "partial extraction with other settings": (
        partial_with_other_settings,
        "holds a partial extraction made with other settings (layers "
        "['transformer.h.0'] -> ['transformer.h.1']); pass --overwrite",
    ),
    # select: damaged or foreign activation files, selection rules
    "activation file missing": (
        lambda w, t: (["select", "--activations", t / "no.h5", "--out", t / "s.h5"], t / "s.h5"),
        "no.h5 does not exist",
    ),
    "truncated activation file": (damaged_copy("truncated master"), "not a readable HDF5 file"),
    "truncated segment file": (
        damaged_copy("truncated segment"),
        "is not a readable HDF5 file (truncated or corrupt?)",
    ),
    "corrupt activation file": (damaged_copy("corrupt"), "not a readable HDF5 file"),
    "activation file of unknown version": (damaged_copy("version"), "format_version is 7"),
    "--top 0": (select_args("--top", "0"), "--top must be in (0, 100]"),
    "--top above 100": (select_args("--top", "101%"), "--top must be in (0, 100]"),
    "--top selecting no unit": (select_args("--top", "0.1%"), "k = 0 units"),
    "two selection rules": (select_args("--bottom", "--fdr", "0.1"), "choose one of"),
    "--count with --fdr": (select_args("--count", "5", "--fdr", "0.1"), "--count does not apply to --fdr"),
    "unknown alternative": (
        select_args("--alternative", "less"),
        "option --alternative: 'less' is not one of greater, two-sided",
    ),
    "more controls than the pool": (select_args("--count", "148"), "only"),
    "more layer-matched controls than a layer": (select_args("--count", "70"), "layer-matched controls need"),
    # ablate
    "classification data without labels": (ablate_args("no labels"), "needs an integer 'label' column"),
    "malformed minimal pairs": (ablate_args("bad pairs"), "minimal pair 0 has an empty"),
    "selection from another model (layer names)": (ablate_args("other model"), "made with another model"),
    "selection from another model (layer size)": (ablate_args("other width"), "is not the one"),
    "selection from another model (depth)": (ablate_args("other depth"), "is not the one"),
    "selection of unknown version": (ablate_args("unknown version"), "not a selection file"),
    "truncated selection file": (ablate_args("truncated selection"), "trunc.h5"),
    "unknown ablation method": (ablate_args("bad method"), "zero, mean or scale=F"),
    "unknown control kind": (ablate_args("bad kind"), "unknown control kinds"),
    "more control sets than stored": (ablate_args("too many controls"), "stores 4"),
    "no task data and no validation rows": (ablate_args("no validation rows"), "have no validation rows"),
    # run, check
    "run config with unknown key": (yaml_with_unknown_key("run"), "colour"),
    "run with several processes": (lambda w, t: (["run", "--trainer.devices", "2"], None), "single-process"),
    "check a missing file": (lambda w, t: (["check", t / "no.h5"], None), "no.h5 does not exist"),
}


SLOW_CASES = {"hub model id without network"}  # retries the network for ~20 s


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in CASES])
def test_bad_input(w, tmp_path, capfd, case):
    build, expected = CASES[case]
    argv, must_not_exist = build(w, tmp_path)
    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    ours = [line for line in err.splitlines() if line.startswith("localizer")]
    assert code == 2, err[-2000:]
    assert len(ours) == 1 and ours[0].startswith(f"localizer {argv[0]}: error: "), err[-2000:]
    assert all(e in ours[0] for e in ((expected,) if isinstance(expected, str) else expected)), ours[0]
    assert "Traceback" not in out + err
    if must_not_exist is not None:
        assert not must_not_exist.exists()
        assert not must_not_exist.with_name(must_not_exist.name + ".tmp").exists()
    if case == "existing output":
        assert (tmp_path / "a.h5").read_text() == "keep me"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unknown model path", "truncated segment file", "malformed minimal pairs"])
def test_real_processes(w, tmp_path, case):
    build, expected = CASES[case]
    argv, _ = build(w, tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "localizer", *map(str, argv)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr + r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"localizer {argv[0]}: error: ") and expected in last
