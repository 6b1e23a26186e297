"""Checks of the CUDA and multi-process paths, for a machine with a GPU; prints one JSON document.

    python benchmarks/device_check.py [--out results.json]

1. equality: the same random GPT-2 (4 blocks, d=256, N=300 stimuli) extracted on CPU and on CUDA (batch 32), and on
   CUDA with batch 1: largest absolute and relative differences.
2. DDP on CUDA (NCCL, every visible GPU) with the online selection: master file vs the 1-process CUDA file; online
   selection (statistics synced by NCCL) vs the offline selection from the file.
3. crash and resume on CUDA: SIGKILL after a segment commit, rerun, compare with the uninterrupted CUDA file.
4. throughput: `benchmarks/run.py --only extraction --accelerator gpu` (localizer vs a bare forward, same batches).
5. device map: the same model placed by `--device_map auto` with `--max_memory` small enough that its blocks are
   spread over every GPU (12 MB each) and the CPU, in one process: activations vs the 1-GPU file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import gpt2_dir, texts  # noqa: E402


def cli(*args, env=None):
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "localizer", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=900,
    )
    return r, time.perf_counter() - t


def acts(path):
    with h5py.File(path) as f:
        return {k: f[f"activations/{k}"][:] for k in f["activations"]}


def diff(a, b):
    absd = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    rel = max(float((np.abs(a[k] - b[k]) / (np.abs(b[k]) + 1e-3)).max()) for k in a)
    return {"max_abs": absd, "max_rel": rel}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--accelerator", default="gpu", help="gpu; cpu only to smoke-test this script")
    p.add_argument("--steps", default="1,2,3,4,5", help="which checks to run (comma-separated numbers)")
    args = p.parse_args()
    acc = args.accelerator
    work = Path(tempfile.mkdtemp())
    model = gpt2_dir(work, 4, 256)
    texts(300).to_json(work / "s.jsonl")
    report = {
        "gpu": torch.cuda.get_device_name(0) if acc == "gpu" else "none (cpu smoke test)",
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
    }
    common = [
        "extract",
        "--model",
        model,
        "--stimuli",
        work / "s.jsonl",
        "--pooling",
        "last",
        "--trainer.enable_progress_bar",
        "false",
    ]

    r, t_cpu = cli(*common, "--out", work / "cpu.h5", "--trainer.accelerator", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    r, t_gpu = cli(*common, "--out", work / "gpu.h5", "--trainer.accelerator", acc, "--trainer.devices", 1)
    assert r.returncode == 0, r.stderr[-3000:]
    r, _ = cli(
        *common, "--out", work / "gpu_b1.h5", "--trainer.accelerator", acc, "--trainer.devices", 1, "--batch_size", 1
    )
    assert r.returncode == 0, r.stderr[-3000:]
    gpu = acts(work / "gpu.h5")
    report["1_equality"] = {
        "cuda_vs_cpu": diff(gpu, acts(work / "cpu.h5")),
        "cuda_batch1_vs_batch32": diff(acts(work / "gpu_b1.h5"), gpu),
        "seconds_cpu_cli": round(t_cpu, 1),
        "seconds_gpu_cli": round(t_gpu, 1),
    }

    steps = set(args.steps.split(","))
    n_gpu = torch.cuda.device_count() if acc == "gpu" else 2
    if "2" in steps:
        ddp_check(common, acc, n_gpu, work, gpu, report)
    if "3" in steps:
        resume_check(common, acc, work, report)
    if "4" in steps:
        throughput(acc, work, report)
    if "5" in steps:
        device_map_check(common, acc, n_gpu, work, gpu, report)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def ddp_check(common, acc, n_gpu, work, gpu, report):
    r, t = cli(
        *common,
        "--out",
        work / "ddp.h5",
        "--trainer.accelerator",
        acc,
        "--trainer.devices",
        n_gpu,
        "--trainer.strategy",
        "ddp",
        "--selection",
        work / "online.h5",
        "--controls",
        2,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r2, _ = cli(
        "select",
        "--activations",
        work / "ddp.h5",
        "--out",
        work / "offline.h5",
        "--controls",
        2,
        "--log_dir",
        work / "tb",
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    with h5py.File(work / "online.h5") as on, h5py.File(work / "offline.h5") as off:
        layers = json.loads(on.attrs["layers"])
        t_on = np.concatenate([on[f"layers/{x}/t"][:] for x in layers])
        t_off = np.concatenate([off[f"layers/{x}/t"][:] for x in layers])
        same_mask = all(np.array_equal(on[f"mask/{x}"][:], off[f"mask/{x}"][:]) for x in layers)
    report["2_ddp"] = {
        "processes": n_gpu,
        "master_vs_1_process": diff(acts(work / "ddp.h5"), gpu),
        "online_vs_offline_t_max_rel": float(np.max(np.abs(t_on - t_off) / (np.abs(t_off) + 1e-9))),
        "same_selection": same_mask,
        "seconds": round(t, 1),
    }


def resume_check(common, acc, work, report):
    seg = ["--segment_mb", "0.05", "--batch_size", 8]
    r, _ = cli(*common, *seg, "--out", work / "ref.h5", "--trainer.accelerator", acc, "--trainer.devices", 1)
    assert r.returncode == 0, r.stderr[-3000:]
    killed, _ = cli(
        *common,
        *seg,
        "--out",
        work / "res.h5",
        "--trainer.accelerator",
        acc,
        "--trainer.devices",
        1,
        env={"LOCALIZER_FAILPOINT": "after-commit:3"},
    )
    committed = len(list((work / "res.h5.shards").glob("part-*.h5")))
    master_after_kill = (work / "res.h5").exists()
    r, _ = cli(
        *common, *seg, "--out", work / "res.h5", "--trainer.accelerator", acc, "--trainer.devices", 1, "--resume"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report["3_resume"] = {
        "killed_returncode": killed.returncode,
        "segments_before_resume": committed,
        "master_existed_after_kill": master_after_kill,
        "resumed_vs_uninterrupted": diff(acts(work / "res.h5"), acts(work / "ref.h5")),
        "resume_message": [x for x in (r.stderr + r.stdout).splitlines() if "resuming" in x],
    }


def device_map_check(common, acc, n_gpu, work, gpu, report):
    """Blocks spread over every GPU and the CPU (on a CPU smoke test: the CPU and the disk) by one process."""
    memory = ",".join([f"{i}=12MB" for i in range(n_gpu)] + ["cpu=2GB"]) if acc == "gpu" else "cpu=12MB"
    r, t = cli(*common, "--out", work / "mapped.h5", "--device_map", "auto", "--max_memory", memory)
    report["5_device_map"] = (
        {"max_memory": memory, "vs_1_gpu": diff(acts(work / "mapped.h5"), gpu), "seconds": round(t, 1)}
        if r.returncode == 0
        else r.stderr[-3000:]
    )


def throughput(acc, work, report):
    b = subprocess.run(
        [
            sys.executable,
            str(HERE / "run.py"),
            "--only",
            "extraction",
            "--accelerator",
            acc,
            "--extraction_n",
            "16384" if acc == "gpu" else "256",
            "--repeats",
            "3" if acc == "gpu" else "1",
            "--json",
            str(work / "bench.json"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    report["4_throughput"] = json.loads((work / "bench.json").read_text()) if b.returncode == 0 else b.stderr[-3000:]


if __name__ == "__main__":
    main()
