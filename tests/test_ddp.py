"""Extraction with 2 CPU processes (DDP, gloo) writes the same master file as 1 process."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from helpers import CPU_FLAGS, file_contents, make_texts, run_cli, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def virtual_layers(path) -> dict[str, bool]:
    with h5py.File(path, "r") as f:
        return {k: f["activations"][k].is_virtual for k in f["activations"]}


@pytest.mark.parametrize("n,batch,layout", [(37, 4, "virtual"), (21, 5, "single")])
def test_two_process_master_equals_one_process(gpt2_dir, tmp_path, n, batch, layout):
    """Two processes write the same file as one: packed into one self-contained file by default (segments
    deleted), or virtual datasets over one segment per rank that ``localizer pack`` turns into the same file."""
    stimuli = write_jsonl(tmp_path / "s.jsonl", make_texts(n, seed=n))
    common = [
        "extract",
        "--model",
        gpt2_dir,
        "--stimuli",
        stimuli,
        "--batch-size",
        batch,
        "--pooling",
        "mean",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
    ]
    one = run_cli(*common, "--out", tmp_path / "one.h5", "--trainer.devices", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    assert not any(virtual_layers(tmp_path / "one.h5").values()) and not (tmp_path / "one.h5.shards").exists()
    ddp = ["--trainer.devices", 2, "--trainer.strategy", "ddp", "--layout", layout]
    two = run_cli(*common, "--out", tmp_path / "two.h5", *ddp)
    assert two.returncode == 0, two.stderr[-3000:]

    a, b = file_contents(tmp_path / "one.h5"), file_contents(tmp_path / "two.h5")
    with h5py.File(tmp_path / "one.h5") as f:  # row i says what stimulus i was
        assert f["stimulus"].asstr()[:].tolist() == [json.loads(x)["text"] for x in open(stimuli)]
    virtual = virtual_layers(tmp_path / "two.h5")
    if layout == "single":
        assert not any(virtual.values()) and not (tmp_path / "two.h5.shards").exists()
        assert sorted(a) == sorted(b) and a.pop("attrs") == b.pop("attrs")
        for name in a:
            if b[name].dtype.kind == "f":
                np.testing.assert_allclose(b[name], a[name], atol=1e-6, rtol=0, err_msg=name)
            else:
                np.testing.assert_array_equal(b[name], a[name], err_msg=name)
        return
    assert all(virtual.values()) and len(virtual) == 2
    assert sorted(a) == sorted(b)
    assert a.pop("attrs") == b.pop("attrs")
    np.testing.assert_array_equal(b["index"], np.arange(n))
    for name in a:
        if b[name].dtype.kind == "f":
            assert not np.isnan(b[name]).any(), name  # NaN = the fill value of an unmapped row
            np.testing.assert_allclose(b[name], a[name], atol=1e-6, rtol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(b[name], a[name], err_msg=name)

    shards = sorted(p.name for p in (tmp_path / "two.h5.shards").glob("*.h5"))
    assert shards == ["part-0000-00000-000000.h5", "part-0000-00001-000000.h5"]  # one committed segment per rank
    rows = []
    for s in shards:
        with h5py.File(tmp_path / "two.h5.shards" / s) as f:
            assert f.attrs["complete"]
            rows.append(f["index"][:])
    assert sorted(np.concatenate(rows).tolist()) == list(range(n))  # each row written exactly once
    assert min(len(r) for r in rows) > 0

    # the master reads from any working directory (virtual-dataset source paths are relative to it)
    cwd = os.getcwd()
    try:
        os.chdir("/")
        with h5py.File(tmp_path / "two.h5") as f:
            np.testing.assert_allclose(
                f["activations/transformer.h.1"][:], a["activations/transformer.h.1"], atol=1e-6, rtol=0
            )
    finally:
        os.chdir(cwd)
    packed = run_cli("pack", tmp_path / "two.h5", "--out", tmp_path / "packed.h5")
    assert packed.returncode == 0, packed.stderr[-3000:]
    c = file_contents(tmp_path / "packed.h5")
    assert not any(virtual_layers(tmp_path / "packed.h5").values()) and (tmp_path / "two.h5.shards").is_dir()
    assert c.pop("attrs") == file_contents(tmp_path / "one.h5")["attrs"]
    for name in b:
        np.testing.assert_array_equal(c[name], b[name], err_msg=name)


def test_online_selection_two_processes_equals_one_and_offline(gpt2_dir, tmp_path):
    """Batch size 1 and one thread per process make the activations bitwise equal across runs, so the statistics
    must agree to rounding: 2-process online = 1-process online = offline `localizer select` on the file."""
    from localizer.files.selection_file import read_selection_file

    stimuli = write_jsonl(tmp_path / "s.jsonl", make_texts(37, seed=5))
    sel_args = ["--top", "5%", "--controls", "3", "--seed", "4", "--split-half"]
    common = [
        "extract",
        "--model",
        gpt2_dir,
        "--stimuli",
        stimuli,
        "--batch-size",
        1,
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
        *sel_args,
    ]
    env_one = {"OMP_NUM_THREADS": "1"}
    runs = {}
    for name, extra in (
        ("one", ["--trainer.devices", 1]),
        ("two", ["--trainer.devices", 2, "--trainer.strategy", "ddp"]),
    ):
        r = run_cli(
            *common,
            "--out",
            tmp_path / f"{name}.h5",
            "--selection",
            tmp_path / f"{name}_sel.h5",
            *extra,
            cwd=tmp_path,
            extra_env=env_one,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        runs[name] = read_selection_file(tmp_path / f"{name}_sel.h5")
    off = run_cli(
        "select", "--activations", tmp_path / "two.h5", "--out", tmp_path / "off_sel.h5", *sel_args, cwd=tmp_path
    )
    assert off.returncode == 0, off.stderr[-3000:]
    runs["offline"] = read_selection_file(tmp_path / "off_sel.h5")

    a, b = file_contents(tmp_path / "one.h5"), file_contents(tmp_path / "two.h5")
    for name in a:
        if name != "attrs":
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    base = runs["one"]
    for other in ("two", "offline"):
        o = runs[other]
        for layer in base["layers"]:
            for stat, value in base["stats"][layer].items():
                np.testing.assert_allclose(
                    o["stats"][layer][stat], value, rtol=1e-9, atol=1e-12, err_msg=f"{other} {layer} {stat}"
                )
            np.testing.assert_array_equal(o["mask"][layer], base["mask"][layer])
            np.testing.assert_allclose(o["validation_t"][layer], base["validation_t"][layer], rtol=1e-9, atol=1e-12)
            for kind, sets in base["controls"].items():
                for i, c in enumerate(sets):
                    np.testing.assert_array_equal(o["controls"][kind][i][layer], c[layer])
        for key in ("n_selected", "n_positive", "n_control", "dice_split_half", "dice_chance"):
            assert o["attrs"][key] == pytest.approx(base["attrs"][key], rel=1e-12), key
    assert base["attrs"]["n_selected"] == int(0.05 * 64)  # 2 blocks x 32 units
    assert (tmp_path / "lightning_logs" / "extract").is_dir()  # online TensorBoard logs


def test_ablation_two_processes_count_every_sample_once(gpt2_dir, tmp_path):
    """21 task rows (not divisible by 2 x batch size): Lightning's padded sampler would count one twice."""
    stimuli = write_jsonl(tmp_path / "s.jsonl", make_texts(30, seed=2))
    r = run_cli(
        "extract",
        "--model",
        gpt2_dir,
        "--stimuli",
        stimuli,
        "--out",
        tmp_path / "a.h5",
        "--selection",
        tmp_path / "sel.h5",
        "--count",
        5,
        "--controls",
        3,
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    task = write_jsonl(tmp_path / "task.jsonl", [{"text": row["text"]} for row in make_texts(21, seed=6)])
    docs = {}
    for name, extra in (
        ("one", ["--trainer.devices", 1]),
        ("two", ["--trainer.devices", 2, "--trainer.strategy", "ddp"]),
    ):
        r = run_cli(
            "ablate",
            "--selection",
            tmp_path / "sel.h5",
            "--task",
            "next-token",
            "--task-data",
            task,
            "--batch-size",
            1,
            "--out",
            tmp_path / f"{name}.json",
            "--trainer.accelerator",
            "cpu",
            "--trainer.enable_progress_bar",
            "false",
            *extra,
            cwd=tmp_path,
            extra_env={"OMP_NUM_THREADS": "1"},
        )
        assert r.returncode == 0, r.stderr[-3000:]
        docs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    one, two = docs["one"], docs["two"]
    for cond in ("baseline", "localized"):
        assert two[cond]["accuracy"] == one[cond]["accuracy"]
        assert two[cond]["cross_entropy"] == pytest.approx(one[cond]["cross_entropy"], rel=1e-9)
    for kind, sets in one["controls"].items():
        for a, b in zip(sets, two["controls"][kind]):
            assert b["accuracy"] == a["accuracy"]
            assert b["cross_entropy"] == pytest.approx(a["cross_entropy"], rel=1e-9)
    assert (tmp_path / "lightning_logs" / "ablate").is_dir()


@pytest.mark.parametrize(("point", "written"), [("before-master", []), ("before-selection-write", ["a.h5"])])
def test_a_failure_on_rank_zero_reaches_every_rank(gpt2_dir, tmp_path, point, written):
    """An OSError injected on rank 0 while it writes for everyone (the master file, the selection file) ends both
    ranks with the same one-line error, exit code 2: nobody waits in a collective for a rank that gave up."""
    stimuli = write_jsonl(tmp_path / "s.jsonl", make_texts(12, seed=3))
    r = run_cli(
        "extract", "--model", gpt2_dir, "--stimuli", stimuli, "--out", tmp_path / "a.h5", "--selection",
        tmp_path / "sel.h5", "--count", 3, "--batch-size", 2, "--layers", "transformer.h.0", *CPU_FLAGS,
        "--trainer.devices", 2, "--trainer.strategy", "ddp", cwd=tmp_path, timeout=300,
        extra_env={"LOCALIZER_FAILPOINT_RAISE": f"{point}@0", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("localizer extract: error:")]
    assert len(errors) == 2 and r.stderr.count("localizer extract: error:") == 2, r.stderr[-3000:]  # one per rank
    assert all(f"injected failure at {point} on rank 0" in line for line in errors), errors
    assert any("rank 0 failed: OSError" in line for line in errors), errors  # what rank 1 heard
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == written
    assert not list(tmp_path.glob("*.tmp"))


def test_two_processes_batched_by_length_write_the_one_process_file(gpt2_dir, tmp_path):
    """--sort_by_length under DDP: each rank serves its usual rows sorted by length, and the packed file equals the
    1-process file recorded in dataset order. 401 texts in batches of 1: steps of 4 batches (8 in 1 process), within
    sort windows of 16 batches."""
    from localizer.recording.datamodule import batches_per_step

    assert (batches_per_step(1, 201), batches_per_step(1, 401)) == (4, 8)
    stimuli = write_jsonl(tmp_path / "s.jsonl", make_texts(401, seed=9))
    common = ["extract", "--model", gpt2_dir, "--stimuli", stimuli, "--batch_size", 1, "--pooling", "mean",
              "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    one = run_cli(*common, "--out", tmp_path / "one.h5", "--trainer.devices", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli(*common, "--out", tmp_path / "two.h5", "--sort-by-length", "--layout", "virtual",
                  "--trainer.devices", 2, "--trainer.strategy", "ddp")  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    segments = sorted((tmp_path / "two.h5.shards").glob("part-*.h5"))
    ranks = set()
    for segment in segments:  # each rank recorded its usual rows r, r+2, ... and wrote them in dataset order
        with h5py.File(segment) as f:
            index = f["index"][:]
        rank = int(segment.name.split("-")[2])
        ranks.add(rank)
        assert (index % 2 == rank).all() and (np.diff(index) == 2).all(), (segment.name, index)
    assert ranks == {0, 1}
    packed = run_cli("pack", tmp_path / "two.h5", "--out", tmp_path / "two_packed.h5")
    assert packed.returncode == 0, packed.stderr[-3000:]
    a, b = file_contents(tmp_path / "one.h5"), file_contents(tmp_path / "two_packed.h5")
    assert sorted(a) == sorted(b)
    for name in a:
        if name != "attrs" and a[name].dtype.kind == "f":
            np.testing.assert_allclose(b[name], a[name], atol=1e-6, rtol=0, err_msg=name)
        elif name != "attrs":
            np.testing.assert_array_equal(b[name], a[name], err_msg=name)
