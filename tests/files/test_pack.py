"""One file is one file: a finished extraction is packed by default; `localizer pack` packs a virtual one."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
from helpers import file_contents, make_texts, write_jsonl

from localizer.cli import main

CPU = {"accelerator": "cpu", "enable_progress_bar": False}


@pytest.fixture(scope="module")
def virtual(gpt2_dir, tmp_path_factory):
    from localizer import extract

    d = tmp_path_factory.mktemp("pack")
    stimuli = write_jsonl(d / "s.jsonl", make_texts(23, seed=5))
    path = extract(gpt2_dir, stimuli, d / "v.h5", layers="transformer.h.*", batch_size=4, segment_mb=0.0005,
                   layout="virtual", trainer=CPU)  # fmt: skip
    single = extract(gpt2_dir, stimuli, d / "s.h5", layers="transformer.h.*", batch_size=4, trainer=CPU)
    return d, path, single


def layers_virtual(path):
    with h5py.File(path) as f:
        return [f["activations"][k].is_virtual for k in f["activations"]]


def test_default_is_one_file_and_pack_makes_the_same(virtual, tmp_path, capsys):
    d, path, single = virtual
    assert layers_virtual(single) == [False, False] and not (d / "s.h5.shards").exists()
    assert layers_virtual(path) == [True, True]
    assert sorted(p.name for p in (d / "v.h5.shards").iterdir() if not p.name.startswith("part-")) == ["run.json"]
    reference = file_contents(single)
    work = tmp_path / "w"
    shutil.copytree(d, work, ignore=shutil.ignore_patterns("s.h5*"))
    assert main(["pack", str(work / "v.h5"), "--out", str(tmp_path / "copy.h5")]) == 0  # a copy: both kept
    assert "copy.h5" in capsys.readouterr().out and (work / "v.h5.shards").is_dir()
    assert main(["pack", str(work / "v.h5")]) == 0  # in place: the segments go
    capsys.readouterr()
    assert not (work / "v.h5.shards").exists()
    for packed in (tmp_path / "copy.h5", work / "v.h5"):
        assert layers_virtual(packed) == [False, False]
        got = file_contents(packed)
        assert {k: v for k, v in got.pop("attrs").items() if k != "settings"} == {
            k: v for k, v in reference["attrs"].items() if k != "settings"
        }
        for name, value in reference.items():
            if name != "attrs":
                np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert main(["check", str(work / "v.h5")]) == 0 and "stored in the file" in capsys.readouterr().out
    assert main(["pack", str(work / "v.h5")]) == 0  # already one file: unchanged


def test_pack_refuses_missing_segments_and_existing_outputs(virtual, tmp_path, capsys):
    d, path, _ = virtual
    work = tmp_path / "w"
    shutil.copytree(d, work, ignore=shutil.ignore_patterns("s.h5*"))
    assert main(["pack", str(work / "v.h5"), "--out", str(work / "s.jsonl")]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    victim = sorted((work / "v.h5.shards").glob("part-*.h5"))[1]
    victim.unlink()
    before = (work / "v.h5").read_bytes()
    assert main(["pack", str(work / "v.h5")]) == 2
    err = capsys.readouterr().err
    assert "1 segment files are missing" in err and victim.name in err and len(err.strip().splitlines()) == 1
    assert (work / "v.h5").read_bytes() == before and not list(work.glob("*.tmp"))
    assert main(["pack", str(tmp_path / "nope.h5")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_killed_while_packing_then_resumed(gpt2_dir, tmp_path):
    """SIGKILL after the master's rename, before packing: a complete virtual file; --resume packs it."""
    import os
    import subprocess
    import sys

    stimuli = write_jsonl(tmp_path / "s.jsonl", make_texts(11, seed=2))
    cmd = [sys.executable, "-m", "localizer", "extract", "--model", str(gpt2_dir), "--stimuli", str(stimuli),
           "--out", str(tmp_path / "a.h5"), "--layers", "transformer.h.0", "--trainer.accelerator", "cpu"]  # fmt: skip
    env = {**os.environ, "LOCALIZER_FAILPOINT": "before-pack"}
    killed = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert killed.returncode == -9
    assert layers_virtual(tmp_path / "a.h5") == [True] and (tmp_path / "a.h5.shards").is_dir()
    values = file_contents(tmp_path / "a.h5")
    env.pop("LOCALIZER_FAILPOINT")
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "packed into one file" in resumed.stdout
    assert layers_virtual(tmp_path / "a.h5") == [False] and not (tmp_path / "a.h5.shards").exists()
    after = file_contents(tmp_path / "a.h5")
    for name, value in values.items():
        if name != "attrs":
            np.testing.assert_array_equal(after[name], value, err_msg=name)
