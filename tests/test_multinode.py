"""Two nodes simulated on this machine: two ``torchrun --nnodes 2 --nproc_per_node 1`` launches with a local
rendezvous and ``--trainer.num_nodes 2`` (gloo). ``extract --selection`` and ``ablate`` give the 1-process results."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from helpers import file_contents, make_texts, run_cli, write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(*args, cwd) -> list[subprocess.CompletedProcess]:
    """``localizer ARGS`` on two simulated nodes of one process each (node ranks 0 and 1, one rendezvous)."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    procs = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--node_rank", str(node), "--master_addr", "127.0.0.1", "--master_port", str(port),
               "-m", "localizer", *map(str, args), "--trainer.num_nodes", "2", "--trainer.devices", "1",
               "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def test_two_simulated_nodes_record_select_and_ablate_as_one_process(gpt2_dir, tmp_path):
    from localizer.files.selection_file import read_selection_file

    stimuli = write_jsonl(tmp_path / "s.jsonl", make_texts(29, seed=7))
    extract = ["extract", "--model", gpt2_dir, "--stimuli", stimuli, "--batch_size", 1, "--top", "10%",
               "--controls", 2, "--trainer.enable_progress_bar", "false"]  # fmt: skip
    one = run_cli(*extract, "--out", tmp_path / "one.h5", "--selection", tmp_path / "one_sel.h5",
                  "--trainer.devices", 1, "--trainer.accelerator", "cpu", cwd=tmp_path,
                  extra_env={"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    nodes = two_nodes(*extract, "--out", tmp_path / "two.h5", "--selection", tmp_path / "two_sel.h5", cwd=tmp_path)
    for r in nodes:
        assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote" in nodes[0].stdout + nodes[0].stderr  # rank 0 reports; the other node stays quiet
    a, b = file_contents(tmp_path / "one.h5"), file_contents(tmp_path / "two.h5")
    assert sorted(a) == sorted(b) and not (tmp_path / "two.h5.shards").exists()
    for name in a:
        if name != "attrs" and a[name].dtype.kind == "f":
            np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-6, err_msg=name)
        elif name != "attrs":
            np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    s1, s2 = read_selection_file(tmp_path / "one_sel.h5"), read_selection_file(tmp_path / "two_sel.h5")
    for layer in s1["layers"]:
        np.testing.assert_array_equal(s2["mask"][layer], s1["mask"][layer])
        np.testing.assert_allclose(s2["stats"][layer]["t"], s1["stats"][layer]["t"], rtol=1e-9, atol=1e-12)

    ablate = ["ablate", "--selection", tmp_path / "one_sel.h5", "--task", "next-token", "--task_data", stimuli,
              "--batch_size", 3, "--log_dir", "null", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    single = run_cli(*ablate, "--out", tmp_path / "r1.json", "--trainer.devices", 1, "--trainer.accelerator", "cpu",
                     cwd=tmp_path)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    nodes = two_nodes(*ablate, "--out", tmp_path / "r2.json", cwd=tmp_path)
    for r in nodes:
        assert r.returncode == 0, r.stderr[-3000:]
    r1, r2 = (json.loads((tmp_path / f"r{i}.json").read_text()) for i in (1, 2))
    assert r2["baseline"] == pytest.approx(r1["baseline"], rel=1e-6)
    assert r2["localized"] == pytest.approx(r1["localized"], rel=1e-6)
    assert r2["provenance"]["rows"] == r1["provenance"]["rows"] == 29
