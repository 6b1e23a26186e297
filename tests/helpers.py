"""Helpers shared by the tests: synthetic stimuli and activation files written independently of localizer, and
running the ``localizer`` command in a subprocess. (Fixtures live in ``conftest.py``.)"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import h5py
import numpy as np

CPU = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False}  # trainer= of the Python API
CPU_FLAGS = ["--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"]  # the same on the CLI

WORDS = (
    "the cat dog sat ran on a mat big small red blue house tree river bird sang under over quickly slowly "
    "green old young child walked talked near far light dark stone water"
).split()


def make_texts(n: int, seed: int = 0) -> list[dict]:
    """n stimuli with mixed lengths (1..15 words), alternating positive/control, 1/5 validation."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        k = rng.randint(1, 15)
        rows.append(
            {
                "text": " ".join(rng.choice(WORDS) for _ in range(k)),
                "positive": i % 2 == 0,
                "split": "validation" if i % 5 == 3 else "localize",
            }
        )
    return rows


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def make_tokenizer(save_dir):
    """A small BPE tokenizer trained on the test vocabulary, saved as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<pad>", "<eos>"])
    tok.train_from_iterator([" ".join(WORDS)] * 5, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    fast.save_pretrained(save_dir)  # no pad token: the loader must fall back to eos, as for GPT-2
    return fast


def write_activation_file(path, layers: dict[str, np.ndarray], positive, split=None):
    """An activation file in the documented format, written with plain h5py (independent of localizer)."""
    n = len(positive)
    with h5py.File(path, "w") as f:
        for name, x in layers.items():
            f.create_dataset(f"activations/{name}", data=x.astype(np.float32))
        f["positive"] = np.asarray(positive, dtype=bool)
        f["index"] = np.arange(n, dtype=np.int64)
        if split is not None:
            f.create_dataset("split", data=np.asarray(split, dtype=object), dtype=h5py.string_dtype())
        f.attrs.update(
            {
                "format_version": 1,
                "model": "synthetic",
                "model_class": "none",
                "pooling": "last",
                "layers": json.dumps(list(layers)),
                "n_stimuli": n,
                "created": "now",
            }
        )
    return path


def synthetic(seed=0, n_pos=41, n_ctl=36, units=(50, 70, 30), offset=1e4, planted=()):
    """Activations with a large common offset (|mean| >> std), per-unit scales over 4 decades, and ``planted``
    flat unit indices shifted up for positive stimuli; the last unit of every layer is constant."""
    rng = np.random.default_rng(seed)
    n = n_pos + n_ctl
    positive = np.zeros(n, dtype=bool)
    positive[rng.choice(n, n_pos, replace=False)] = True
    total = sum(units)
    scale = 10 ** rng.uniform(-2, 2, total)
    x = offset + rng.normal(size=(n, total)) * scale
    for u in planted:
        x[positive, u] += 3 * scale[u]
    bounds = np.cumsum(units)
    for b in bounds:
        x[:, b - 1] = offset  # zero variance in both classes
    layers = {f"block.{i}": x[:, b - u : b] for i, (u, b) in enumerate(zip(units, bounds))}
    return layers, positive


# `python -m localizer` with Ctrl-C handled as in a terminal, also when the tests run as a background job (`cmd &`
# starts with SIGINT ignored; the child would inherit that, and Python would then install no KeyboardInterrupt)
CTRL_C_READY = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "runpy.run_module('localizer', run_name='__main__', alter_sys=True)"
)


def run_cli(*args, cwd=None, extra_env=None, timeout=600) -> subprocess.CompletedProcess:
    """``python -m localizer ARGS`` in a subprocess (unbuffered; ``extra_env`` added to the environment). With an
    injected Ctrl-C (``LOCALIZER_FAILPOINT_SIGINT``) the child handles SIGINT whatever it inherited."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    for key in ("LOCALIZER_FAILPOINT", "LOCALIZER_FAILPOINT_RAISE", "LOCALIZER_FAILPOINT_SIGINT"):
        if key not in (extra_env or {}):
            env.pop(key, None)
    start = ["-c", CTRL_C_READY] if "LOCALIZER_FAILPOINT_SIGINT" in env else ["-m", "localizer"]
    return subprocess.run(
        [sys.executable, *start, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def file_contents(path) -> dict:
    """Every dataset of an HDF5 file (``name: array``) and its root attributes but ``created``."""
    with h5py.File(path, "r") as f:
        out = {"attrs": {k: v for k, v in f.attrs.items() if k != "created"}}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[:]) if isinstance(obj, h5py.Dataset) else None)
    return out
