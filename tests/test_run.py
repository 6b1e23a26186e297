"""`localizer run`: extract -> select -> ablate from a YAML config with command-line overrides."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
from helpers import CPU_FLAGS

from localizer.cli import main


def test_run_from_config_with_overrides(gpt2_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.yaml").write_text(f"""
model: {gpt2_dir}
stimuli: tom
layers: transformer.h.*
pooling: last
batch_size: 8
max_length: 60  # the tiny test GPT-2 has 64 positions
output_dir: out
select:
  top: 50%
  abs: true
  controls: 3
ablate:
  method: zero
  batch_size: 8
  tasks:
    - task: next-token
      data: language-next-token
    - task: agreement
      data: null
""")
    code = main(
        [
            "run",
            "--config",
            "cfg.yaml",
            "--select.top",
            "10%",
            "--untrained",
            "true",
            "--seed",
            "7",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "1",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    out = tmp_path / "out"
    for folder in (out, out / "untrained"):
        for name in (
            "activations.h5",
            "selection.h5",
            "results_next-token.json",
            "results_agreement.json",
            "summary.txt",
            "exemplars.md",
            "selectivity_fraction_selected.png",
            "ablation_next-token_cross_entropy_deltas.png",
        ):
            assert (folder / name).exists(), folder / name
    with h5py.File(out / "selection.h5") as f:
        assert f.attrs["n_selected"] == int(0.10 * 64)  # the command line overrides the YAML's 50%
        assert bool(f.attrs["abs"]) and f.attrs["stimuli"] == "tom"
        trained_t = f["layers/transformer.h.1/t"][:]
    with h5py.File(out / "untrained" / "selection.h5") as f:
        assert not np.allclose(f["layers/transformer.h.1/t"][:], trained_t)  # another (random) network
    doc = json.loads((out / "results_agreement.json").read_text())
    assert doc["baseline"]["agreement_positive"] == 1.0 and len(doc["controls"]["layer_matched"]) == 3
    summary = (out / "summary.txt").read_text()
    assert "selected 6 of 64 units" in summary and "vs magnitude_matched" in summary and "magnitude:" in summary
    assert summary in printed and printed.rstrip().endswith("TensorBoard: tensorboard --logdir lightning_logs")
    job = f"cfg-tom-{Path(gpt2_dir).name}"  # the config's name, the stimuli, the model
    logs = tmp_path / "lightning_logs"
    runs = {str(p.parent.relative_to(logs)) for p in logs.rglob("events.out.tfevents.*")}
    steps = {"select", "exemplars", "ablate/next-token", "ablate/agreement"}
    assert runs == {f"{job}/{s}" for s in steps} | {f"{job}/untrained/{s}" for s in steps}


def test_print_config_and_shipped_configs(capsys):
    import yaml

    assert main(["run", "--print_config"]) == 0
    default = yaml.safe_load(capsys.readouterr().out)
    assert default["model"] == "gemma-3-270m" and default["select"]["abs"] is True
    assert default["select"]["top"] == "1%" and default["pooling"] is None  # last for text; tom, arithmetic: mean
    assert {t["task"] for t in default["ablate"]["tasks"]} == {"next-token", "minimal-pairs"}
    assert main(["run", "--config", "faces", "--print_config"]) == 0
    faces = yaml.safe_load(capsys.readouterr().out)
    assert faces["model"] == "efficientnet-lite0" and faces["ablate"]["tasks"] == [{"task": "agreement", "data": None}]
    assert main(["run", "--config", "language", "--no_such_key", "1"]) == 2


def test_run_continues_a_killed_extraction_and_reuses_a_finished_one(gpt2_dir, text_file, tmp_path, capsys):
    from localizer import extract
    from localizer.pipeline import _extract_or_reuse

    cpu = {"accelerator": "cpu", "enable_progress_bar": False}
    path = tmp_path / "activations.h5"
    kw = {"layers": "transformer.h.0", "layout": "virtual", "trainer": cpu}
    extract(gpt2_dir, text_file, path, segment_mb=0.001, **kw)
    with h5py.File(path) as f:
        reference = f["activations/transformer.h.0"][:]
    path.unlink()  # as if killed before the master's rename: every segment is committed
    segments = sorted(p.name for p in (tmp_path / "activations.h5.shards").glob("part-*.h5"))
    _extract_or_reuse(gpt2_dir, text_file, path, **kw)
    assert "resuming" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "activations.h5.shards").glob("part-*.h5")) == segments
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["activations/transformer.h.0"][:], reference)

    path.unlink()
    _extract_or_reuse(gpt2_dir, text_file, path, **{**kw, "layers": "transformer.h.1"})  # other settings
    assert "holds a partial extraction made with other settings: starting over" in capsys.readouterr().out
    with h5py.File(path) as f:
        assert list(f["activations"]) == ["transformer.h.1"]
    stamp = path.stat().st_mtime_ns
    _extract_or_reuse(gpt2_dir, text_file, path, **{**kw, "layers": "transformer.h.1"})  # finished, same: reused
    assert "reusing" in capsys.readouterr().out and path.stat().st_mtime_ns == stamp
    _extract_or_reuse(gpt2_dir, text_file, path, **kw)  # finished, other settings: recorded again
    assert "recorded with other settings (layers" in capsys.readouterr().out
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["activations/transformer.h.0"][:], reference)


def test_jobs_own_their_folders(gpt2_dir, text_file, tmp_path, capsys, monkeypatch):
    """Two different runs land in two folders; a finished run is neither repeated nor replaced without --overwrite;
    with it, an ablation option change reuses the activations and the selection; the whole folder checks OK."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(text_file, tmp_path / "other.jsonl")
    base = ["run", "--model", gpt2_dir, "--layers", "transformer.h.*", "--max_length", "60", *CPU_FLAGS]
    base += ["--select.top", "10%", "--select.controls", "2", "--ablate.tasks", '[{"task": "agreement", "data": null}]']
    first = [*base, "--stimuli", text_file]
    folder = tmp_path / "outputs" / f"texts-{Path(gpt2_dir).name}"

    def state():
        return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    assert main(first) == 0
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1].startswith(f"wrote {Path('outputs') / folder.name}/")
    assert "GPU available" not in out  # Lightning's info lines are hidden without --verbose
    job = json.loads((folder / "run.json").read_text())
    assert job["finished"] and job["job"]["ablate"]["tasks"] == [{"task": "agreement", "data": None}]
    before = state()
    doc = json.loads((folder / "results_agreement.json").read_text())

    assert main(first) == 0  # the same run again: nothing is redone
    assert "already holds this run" in capsys.readouterr().out and state() == before

    assert main([*first, "--ablate.method", "mean"]) == 2  # another finished run is never replaced silently
    err = capsys.readouterr().err
    assert "holds a finished run with other settings (ablate.method: 'zero' -> 'mean')" in err and "--overwrite" in err
    assert state() == before

    assert main([*first, "--ablate.method", "mean", "--overwrite"]) == 0  # only the ablation is rerun
    out = capsys.readouterr().out
    assert "reusing" in out and "activations.h5" in out and "selection.h5" in out
    after = state()
    assert after["activations.h5"] == before["activations.h5"] and after["selection.h5"] == before["selection.h5"]
    mean_doc = json.loads((folder / "results_agreement.json").read_text())
    assert mean_doc["method"] == "mean" and doc["method"] == "zero"
    assert mean_doc["baseline"] == doc["baseline"]  # the same model on the same rows

    # the job without its ablation task: the task's earlier results are removed, not left to read as this run's
    assert main([*first, "--ablate.tasks", "[]", "--overwrite"]) == 0
    assert "removed the results of task agreement" in capsys.readouterr().out
    assert not (folder / "results_agreement.json").exists() and not list(folder.glob("ablation_agreement_*.png"))
    assert not (tmp_path / "lightning_logs" / folder.name / "ablate" / "agreement").exists()
    assert main([*first, "--ablate.method", "mean", "--overwrite"]) == 0  # back as it was
    capsys.readouterr()
    after = state()

    assert main([*base, "--stimuli", str(tmp_path / "other.jsonl")]) == 0  # another job, another folder
    capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == sorted(
        [folder.name, f"other-{Path(gpt2_dir).name}"]
    )
    assert state() == after
    assert main(["check", str(folder)]) == 0
    checked = capsys.readouterr().out
    assert "activations.h5: OK" in checked and "results_agreement.json: OK" in checked
    assert f"run.json: OK (run record of job {folder.name}: " in checked and "finished 20" in checked

    # the activation file alone, copied anywhere, reads the same values with plain h5py
    alone = tmp_path / "copy" / "a.h5"
    alone.parent.mkdir()
    shutil.copy(folder / "activations.h5", alone)
    with h5py.File(alone) as f, h5py.File(folder / "activations.h5") as g:
        for layer in ("transformer.h.0", "transformer.h.1"):
            assert not f[f"activations/{layer}"].is_virtual
            np.testing.assert_array_equal(f[f"activations/{layer}"][:], g[f"activations/{layer}"][:])
            assert np.isfinite(f[f"activations/{layer}"][:]).all()
        texts = [json.loads(line)["text"] for line in open(text_file)]
        assert f["stimulus"].asstr()[:].tolist() == texts
    assert not (folder / "activations.h5.shards").exists()


def test_run_checks_every_step_before_any_work(gpt2_dir, bert_dir, text_file, tmp_path, capsys, monkeypatch):
    """A bad select/ablate option or task is refused before the model loads and before output_dir exists, naming
    run's own option (--select.top, --ablate.method, --ablate.tasks)."""
    import pytest

    import localizer

    monkeypatch.chdir(tmp_path)
    base = ["run", "--model", gpt2_dir, "--stimuli", text_file, "--output_dir", "o", "--trainer.accelerator", "cpu"]
    cases = [
        (["--select.top", "0"], "--select.top must be in (0, 100]"),
        (["--select.fdr", "0.1", "--select.bottom"], "choose one of --select.fdr, --select.range, --select.bottom"),
        (["--ablate.method", "bogus"], "--ablate.method must be zero, mean or scale=F"),
        (["--ablate.controls", "near"], "--ablate.controls: unknown control kinds ['near']"),
        (["--ablate.tasks", '[{"task": "guess", "data": null}]'], "--ablate.tasks: each entry is {task:"),
        (["--ablate.tasks", '[{"task": "next-token", "data": "nope.jsonl"}]'], "nope.jsonl"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not (tmp_path / "o").exists(), extra
    # what the model cannot do is found before the extraction: a bare encoder has no token logits for next-token
    encoder = ["run", "--model", bert_dir, "--stimuli", text_file, "--output_dir", "o", *CPU_FLAGS]
    assert main([*encoder, "--ablate.tasks", '[{"task": "next-token", "data": null}]']) == 2
    err = capsys.readouterr().err
    assert "task next-token needs a model with a prediction head" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
    with pytest.raises(localizer.LocalizerError, match=r"selection options go in select=\{\.\.\.\}"):
        localizer.run(gpt2_dir, text_file, str(tmp_path / "o"), top="5%")
    with pytest.raises(localizer.LocalizerError, match=r"select\['top'\] must be in \(0, 100\]"):
        localizer.run(gpt2_dir, text_file, str(tmp_path / "o"), select={"top": "0"})
    assert not (tmp_path / "o").exists()


def test_trainer_options_that_lightning_refuses_are_one_line(gpt2_dir, text_file, tmp_path, capsys):
    args = ["extract", "--model", gpt2_dir, "--stimuli", text_file, "--out", str(tmp_path / "a.h5")]
    assert main([*args, "--trainer.devices", "0", "--trainer.accelerator", "cpu"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("localizer extract: error:")]
    assert len(errors) == 1 and "invalid trainer options" in errors[0] and "'devices': 0" in errors[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "a.h5").exists()


def test_a_finished_run_on_changed_weights_is_not_reported_as_done(gpt2_dir, text_file, tmp_path, capsys, monkeypatch):
    """The same model path holding other weights is another run: refused, naming the weights, not 'nothing to do'."""
    import torch
    from transformers import GPT2LMHeadModel

    monkeypatch.chdir(tmp_path)
    model = tmp_path / "m"
    shutil.copytree(gpt2_dir, model)
    args = ["run", "--model", str(model), "--stimuli", str(text_file), "--layers", "transformer.h.*",
            "--select.top", "10%", "--ablate.tasks", "[]", *CPU_FLAGS]  # fmt: skip
    assert main(args) == 0
    assert main(args) == 0 and "already holds this run" in capsys.readouterr().out
    m = GPT2LMHeadModel.from_pretrained(model)
    with torch.no_grad():
        m.transformer.h[0].mlp.c_fc.weight[0, 0] += 1.0
    m.save_pretrained(model)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds a finished run with other settings (weights:" in err and len(err.strip().splitlines()) == 1
