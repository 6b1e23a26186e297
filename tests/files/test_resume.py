"""A killed extraction resumes into a master file equal to an uninterrupted run.

Real `localizer extract` subprocesses are SIGKILLed at several points: by fault injection (``LOCALIZER_FAILPOINT``,
which makes the process SIGKILL itself at a named point: after a segment is committed, with a segment fully written but
not yet renamed, with the master written but not yet renamed, on one DDP rank only) and from outside while it runs.
Each is rerun with the same command (or ``--resume``, or with another number of processes) and compared with an
uninterrupted run. Batch size 1 and one
thread per process make every row's computation identical across runs, so contents are compared exactly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from helpers import file_contents, make_texts, write_jsonl

N = 30
ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def command(gpt2_dir, stimuli, out, *extra):
    return [
        sys.executable,
        "-m",
        "localizer",
        "extract",
        "--model",
        str(gpt2_dir),
        "--stimuli",
        str(stimuli),
        "--out",
        str(out),
        "--batch-size",
        "1",
        "--pooling",
        "mean",
        "--segment_mb",
        "0.0005",
        "--layout",
        "virtual",
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
        *map(str, extra),
    ]


def run(cmd, failpoint=None):
    env = {**os.environ, **ENV}
    env.pop("LOCALIZER_FAILPOINT", None)
    if failpoint:
        env["LOCALIZER_FAILPOINT"] = failpoint
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def assert_same(a, b):
    assert sorted(a) == sorted(b)
    assert a["attrs"].keys() == b["attrs"].keys()
    for k in a["attrs"]:
        if k != "stimuli":  # the stimulus path differs by folder only
            assert a["attrs"][k] == b["attrs"][k], k
    for name in a:
        if name != "attrs":
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def rows_by_attempt(out):
    rows = {}
    for p in (out.parent / (out.name + ".shards")).glob("part-*.h5"):
        with h5py.File(p) as f:
            attempt = int(p.name.split("-")[1])
            rows.setdefault(attempt, []).extend(f["index"][:].tolist())
    return rows


@pytest.fixture(scope="module")
def setup(gpt2_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    stimuli = write_jsonl(d / "s.jsonl", make_texts(N, seed=5))
    r = run(command(gpt2_dir, stimuli, d / "ref.h5"))
    assert r.returncode == 0, r.stderr[-3000:]
    ref = file_contents(d / "ref.h5")
    assert not np.isnan(ref["activations/transformer.h.1"]).any()
    return gpt2_dir, stimuli, ref


@pytest.mark.slow
def test_killed_twice_then_resumed(setup, tmp_path):
    gpt2_dir, stimuli, ref = setup
    out = tmp_path / "a.h5"
    cmd = command(gpt2_dir, stimuli, out)
    first = run(cmd, "after-commit:1")  # killed right after its second segment was committed
    assert first.returncode == -signal.SIGKILL
    assert not out.exists() and not out.with_name("a.h5.tmp").exists()
    done0 = rows_by_attempt(out)[0]
    assert 0 < len(done0) < N

    second = run(cmd, "before-commit:2")  # killed with a segment written but not renamed
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    assert f"resuming {out}: {len(done0)} of {N} stimuli already recorded" in second.stderr + second.stdout
    (part,) = (tmp_path / "a.h5.shards").glob("*.part")  # complete, closed and fsynced, but not renamed
    with h5py.File(part) as f:
        assert f.attrs["complete"] and len(f["index"]) > 0
    assert not out.exists()

    third = run(cmd + ["--resume"])
    assert third.returncode == 0, third.stderr[-3000:]
    assert_same(file_contents(out), ref)
    rows = rows_by_attempt(out)
    assert sorted(sum(rows.values(), [])) == list(range(N))  # every row recorded once, none recomputed and kept
    assert set(rows[0]) == set(done0) and len(rows) == 3
    assert not list((tmp_path / "a.h5.shards").glob("*.part"))


@pytest.mark.slow
def test_killed_before_the_master_rename(setup, tmp_path):
    gpt2_dir, stimuli, ref = setup
    out = tmp_path / "b.h5"
    cmd = command(gpt2_dir, stimuli, out)
    first = run(cmd, "before-master")
    assert first.returncode == -signal.SIGKILL
    assert not out.exists()  # every segment is committed, but there is no master: nothing looks complete
    with h5py.File(tmp_path / "b.h5.tmp") as f:  # the master was fully written under its temporary name
        assert f["activations/transformer.h.1"].shape[0] == N
    assert sorted(rows_by_attempt(out)[0]) == list(range(N))
    second = run(cmd)
    assert second.returncode == 0, second.stderr[-3000:]
    assert_same(file_contents(out), ref)
    assert list(rows_by_attempt(out)) == [0] and not (tmp_path / "b.h5.tmp").exists()  # nothing re-recorded
    again = run(cmd + ["--resume"])
    assert again.returncode == 0 and "is complete; nothing to resume" in again.stderr + again.stdout


@pytest.mark.slow
@pytest.mark.multiprocess
def test_killed_from_outside_while_running_and_resumed_by_two_processes(setup, tmp_path):
    gpt2_dir, stimuli, ref = setup
    out = tmp_path / "c.h5"
    cmd = command(gpt2_dir, stimuli, out)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **ENV}, start_new_session=True
    )
    folder = tmp_path / "c.h5.shards"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(folder.glob("part-*.h5"))) < 3 and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not out.exists()
    resumed = run(cmd + ["--trainer.devices", "2", "--trainer.strategy", "ddp"])  # resumed by 2 processes
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {out}" in resumed.stderr + resumed.stdout
    assert_same(file_contents(out), ref)
    rows = rows_by_attempt(out)
    assert sorted(sum(rows.values(), [])) == list(range(N))
    assert {int(p.name.split("-")[2]) for p in (tmp_path / "c.h5.shards").glob("part-0001-*.h5")} == {0, 1}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_one_ddp_rank_killed(setup, tmp_path):
    gpt2_dir, stimuli, ref = setup
    out = tmp_path / "d.h5"
    cmd = command(gpt2_dir, stimuli, out, "--trainer.devices", 2, "--trainer.strategy", "ddp")
    first = run(cmd, "after-commit:2@1")  # rank 1 dies alone; Lightning then stops rank 0
    log = first.stderr[-3000:]
    assert first.returncode != 0, log
    assert not out.exists(), log
    done0 = rows_by_attempt(out)[0]
    assert any(i % 2 == 1 for i in done0), (done0, log)  # rank 1 had committed rows before it died
    second = run(cmd)
    assert second.returncode == 0, second.stderr[-3000:]
    assert_same(file_contents(out), ref)
    rows = rows_by_attempt(out)
    assert sorted(sum(rows.values(), [])) == list(range(N)) and set(rows[0]) == set(done0)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_rank_zero_killed_the_other_rank_stops_and_the_rerun_resumes(setup, tmp_path):
    """Lightning stops the job when a child rank dies, not when rank 0 does: rank 1 then stops by itself (its
    launcher is gone at its next batch, or the final barrier fails) and releases the folder's lock; the rerun
    resumes."""
    import fcntl

    gpt2_dir, stimuli, ref = setup
    out = tmp_path / "e.h5"
    cmd = command(gpt2_dir, stimuli, out, "--trainer.devices", 2, "--trainer.strategy", "ddp")
    first = run(cmd, "after-commit:1@0")
    assert first.returncode == -signal.SIGKILL
    fd = os.open(tmp_path / "e.h5.shards" / "lock", os.O_RDWR)
    deadline = time.monotonic() + 60
    while True:  # free once no process of the killed run is left
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            assert time.monotonic() < deadline, "a rank of the killed run is still holding the folder"
            time.sleep(0.1)
    os.close(fd)
    assert "localizer extract: error: rank 1: " in first.stderr  # rank 1 stopped with its own one-line error
    second = run(cmd)
    assert second.returncode == 0, second.stderr[-3000:]
    assert_same(file_contents(out), ref)


@pytest.mark.slow
def test_a_second_run_into_a_busy_folder_is_refused(setup, tmp_path):
    import fcntl

    gpt2_dir, stimuli, ref = setup
    out = tmp_path / "f.h5"
    (tmp_path / "f.h5.shards").mkdir()
    fd = os.open(tmp_path / "f.h5.shards" / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_SH)  # as a still-running process of another extraction holds it
    refused = run(command(gpt2_dir, stimuli, out))
    assert refused.returncode == 2
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith(f"localizer extract: error: another extraction is still writing into {tmp_path / 'f.h5.shards'}")
    )
    assert not out.exists()
    os.close(fd)
    done = run(command(gpt2_dir, stimuli, out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same(file_contents(out), ref)


@pytest.mark.slow
def test_a_rank_whose_launcher_died_stops_at_its_next_batch(tmp_path):
    """The check behind the test above, at the batch where it fires (which batch that is depends on timing there)."""
    import torch

    from localizer.errors import LocalizerError
    from localizer.files.writer import HDF5ActivationWriter

    writer = HDF5ActivationWriter(tmp_path / "x.h5", n_stimuli=4)
    writer._ppid = os.getppid() + 1  # the pid recorded when this rank was launched: no longer the parent
    trainer = type("T", (), {"global_rank": 1})()
    batch = {"index": torch.tensor([1]), "positive": torch.tensor([True])}
    with pytest.raises(LocalizerError, match="rank 1: the process that launched it has died"):
        writer.write_on_batch_end(trainer, None, {"a": torch.zeros(1, 2)}, None, batch, 0)
    assert not (tmp_path / "x.h5.shards").exists()  # nothing written


@pytest.mark.slow
def test_an_unreadable_segment_is_named_and_the_folder_is_not_left_locked(setup, tmp_path):
    from localizer import extract
    from localizer.errors import LocalizerError

    gpt2_dir, stimuli, ref = setup
    out = tmp_path / "g.h5"
    first = run(command(gpt2_dir, stimuli, out), "after-commit:2")
    assert first.returncode == -signal.SIGKILL
    damaged = sorted((tmp_path / "g.h5.shards").glob("part-*.h5"))[1]
    damaged.write_bytes(b"not hdf5")
    for _ in range(2):  # the same error twice in one process: the first attempt released its lock
        with pytest.raises(LocalizerError, match=f"segment {damaged} is unreadable"):
            extract(
                gpt2_dir,
                stimuli,
                out,
                batch_size=1,
                pooling="mean",
                segment_mb=0.0005,
                trainer={"accelerator": "cpu", "enable_progress_bar": False},
            )
    assert not out.exists()


def test_weights_fingerprint_tells_checkpoints_apart():
    import torch

    from localizer.recording.fingerprint import weights_fingerprint

    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    assert weights_fingerprint(a) == weights_fingerprint(b)  # same values: same key, so a resume is allowed
    with torch.no_grad():
        b.bias[3] += 1e-3
    assert weights_fingerprint(a) != weights_fingerprint(b)  # one changed value: refused
