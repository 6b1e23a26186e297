"""The tutorial scripts run as written and give what the one-call API gives on the same inputs. The language and face
scripts reuse their recording Trainer for the ablation: the recorded activations must survive that."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import CPU, file_contents, make_texts, write_jsonl

import localizer
from localizer.files.selection_file import read_selection_file

pytestmark = pytest.mark.slow
SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def script(name: str, *args, cwd) -> str:
    r = subprocess.run([sys.executable, str(SCRIPTS / name), *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def assert_same_activations(a, b) -> None:
    x, y = file_contents(a), file_contents(b)
    layers = [k for k in x if k.startswith("activations/")]
    assert layers and layers == [k for k in y if k.startswith("activations/")]
    for k in [*layers, "positive", "index"]:
        np.testing.assert_allclose(x[k], y[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_record_with_trainer_equals_extract(gpt2_dir, text_file, tmp_path):
    script(
        "record_with_trainer.py",
        "--model",
        gpt2_dir,
        "--stimuli",
        text_file,
        "--out",
        tmp_path / "s.h5",
        "--layers",
        "transformer.h.*",
        cwd=tmp_path,
    )
    localizer.extract(gpt2_dir, text_file, str(tmp_path / "e.h5"), layers="transformer.h.*", pooling="last",
                      batch_size=16, trainer=CPU)  # fmt: skip
    assert_same_activations(tmp_path / "s.h5", tmp_path / "e.h5")


def test_language_script_selects_and_ablates_like_the_commands(gpt2_dir, text_file, tmp_path):
    task = write_jsonl(tmp_path / "task.jsonl", [{"text": r["text"]} for r in make_texts(9, seed=4)])
    args = ["--model", gpt2_dir, "--stimuli", text_file, "--task-data", task, "--top", "10", "--controls", 2]
    out = script("language_localizer.py", *args, "--out", tmp_path / "o", "--accelerator", "cpu", "--devices", 1,
                 cwd=tmp_path)  # fmt: skip
    assert "next-token: zero ablation" in out
    offline = localizer.select(str(tmp_path / "o" / "activations.h5"), str(tmp_path / "off.h5"), abs=True,
                               top="10", controls=2, log_dir=None)  # fmt: skip
    online = read_selection_file(tmp_path / "o" / "selection.h5")
    np.testing.assert_array_equal(offline.layout.join(online["mask"]), offline.mask)
    doc = localizer.ablate(str(tmp_path / "o" / "selection.h5"), "next-token", model=gpt2_dir, task_data=task,
                           batch_size=8, log_dir=None, trainer=CPU)  # fmt: skip
    assert f"accuracy: baseline {doc['baseline']['accuracy']:.4g}" in out


def test_face_script_keeps_its_recording(resnet_dir, image_folder, tmp_path):
    import datasets

    stimuli = localizer.load_stimuli(image_folder)
    split = ["validation" if i % 4 == 0 else "localize" for i in range(len(stimuli))]
    stimuli.add_column("split", split).save_to_disk(str(tmp_path / "faces"))
    assert isinstance(datasets.load_from_disk(str(tmp_path / "faces")), datasets.Dataset)
    args = ["--model", resnet_dir, "--stimuli", tmp_path / "faces", "--top", "10", "--controls", 2]
    out = script("face_localizer.py", *args, "--out", tmp_path / "o", "--accelerator", "cpu", "--devices", 1,
                 cwd=tmp_path)  # fmt: skip
    assert "agreement: zero ablation" in out
    reports = localizer.check([str(tmp_path / "o" / "activations.h5"), str(tmp_path / "o" / "selection.h5")])
    assert [r.problems for r in reports] == [[], []]


def test_the_stimulus_builder_writes_only_when_asked_and_rebuilds_the_shipped_files(tmp_path):
    from localizer.resources import read_text

    out = script("make_language_stimuli.py", "--out", tmp_path / "built", cwd=tmp_path)
    assert "not written" in out and not (tmp_path / "built").exists()
    assert "usage:" in script("make_language_stimuli.py", "--help", cwd=tmp_path)
    script("make_language_stimuli.py", "--write", "--out", tmp_path / "built", cwd=tmp_path)
    for name in ("language.jsonl", "minimal_pairs.jsonl"):
        assert (tmp_path / "built" / name).read_text() == read_text(name), name


def test_dashboard_script_reads_back_what_hparams_shows(tmp_path):
    """The dashboard script serves a log folder with TensorBoard and prints the HParams table as the dashboard gets
    it: one row per ablation, with the task's localized deltas; without --out it writes nothing."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from localizer.ablation.figures import log_ablation
    from localizer.ablation.module import Condition
    from localizer.ablation.summary import summarize

    results = {"baseline": {"accuracy": 0.75}, "localized": {"accuracy": 0.25}}
    conditions = [Condition("baseline", "baseline", None), Condition("localized", "localized", {})]
    for i, v in enumerate([0.5, 0.625, 0.75]):
        results[f"global_{i}"] = {"accuracy": v}
        conditions.append(Condition(f"global_{i}", "global", {}))
    doc = summarize(results, conditions, "classification", "zero", 4)
    logger = TensorBoardLogger(str(tmp_path / "logs"), name="myjob", version="ablate/classification",
                               default_hp_metric=False)  # fmt: skip
    log_ablation(logger, doc, {"job": "myjob", "task": "classification", "method": "zero", "n_selected": 4,
                               "model": "m"})  # fmt: skip
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = script("dashboard_screenshots.py", "--logdir", tmp_path / "logs", cwd=tmp_path)
    assert "runs myjob/ablate/classification" in out and "HParams: 1 sessions" in out
    assert "columns job, method, model, n_selected, task" in out
    row = next(line for line in out.splitlines() if line.startswith("  myjob/ablate/classification"))
    assert "'task': 'classification'" in row and '"hp/accuracy/delta_localized": -0.5' in row
    d = np.array([0.5, 0.625, 0.75]) - 0.75
    z = float(row.split('"hp/accuracy/z_global": ')[1].split(",")[0].rstrip("}"))
    assert z == pytest.approx((-0.5 - d.mean()) / d.std(ddof=1), rel=1e-5)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written
