"""localizer benchmarks: every number is a ratio measured side by side in this run (absolute times beside it).

    .venv/bin/python benchmarks/run.py                 # all benchmarks, median of 3 repeats
    .venv/bin/python benchmarks/run.py --quick         # smaller sizes, 1 repeat (a smoke test)
    .venv/bin/python benchmarks/run.py --only extraction,ablation --accelerator gpu --devices 1

Each benchmark builds its own random-init model and synthetic stimuli (speed does not depend on trained weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# --- synthetic models and stimuli ---------------------------------------------------------------------------------


def word_tokenizer(vocab: int, save_dir: Path):
    """A word-level tokenizer over tokens w0..w{vocab-3}: one token per word, so lengths are exact."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {f"w{i}": i + 2 for i in range(vocab - 2)}
    words.update({"<unk>": 0, "<pad>": 1})
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>")
    fast.save_pretrained(save_dir)
    return fast


def gpt2_dir(root: Path, n_layer: int, d: int, vocab: int = 8192) -> Path:
    """A random-init GPT-2 (``n_layer`` blocks, width ``d``) with the word tokenizer, saved with save_pretrained."""
    from transformers import GPT2Config, GPT2Model

    path = root / f"gpt2-{n_layer}x{d}"
    if not (path / "config.json").exists():
        word_tokenizer(vocab, path)
        torch.manual_seed(0)
        GPT2Model(
            GPT2Config(n_layer=n_layer, n_embd=d, n_head=max(1, d // 64), vocab_size=vocab, n_positions=64)
        ).eval().save_pretrained(path)
    return path


def texts(n: int, lo: int = 12, hi: int = 20, vocab: int = 8192, seed: int = 0):
    """``n`` stimuli of lo..hi tokens, half positive, as a datasets.Dataset."""
    import datasets

    rng = np.random.default_rng(seed)
    rows = [" ".join(f"w{t}" for t in rng.integers(0, vocab - 2, rng.integers(lo, hi + 1))) for _ in range(n)]
    return datasets.Dataset.from_dict({"text": rows, "positive": [i % 2 == 0 for i in range(n)]})


def timed(fn, repeats: int, setup=None):
    """Median wall time of ``fn()`` over ``repeats`` runs (each after an untimed ``setup()``), and every time."""
    times = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def paired(a, b, repeats: int, setup=None):
    """Time ``a`` and ``b`` alternately (a, b, a, b, ...) after one untimed warm-up of each, so that imports,
    allocator warm-up and slow drifts of a shared machine hit both alike; ``setup()`` runs untimed before each.

    Returns (median a, runs a, median b, runs b)."""
    a()
    b()
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(timed(a, 1, setup)[0])
        tb.append(timed(b, 1, setup)[0])
    return statistics.median(ta), ta, statistics.median(tb), tb


# --- 1. extraction overhead ---------------------------------------------------------------------------------------


def bench_extraction(work: Path, args) -> dict:
    """localizer extract (Trainer + hooks + pooling + HDF5) vs a bare ``model(**batch)`` loop over the same batches."""
    from localizer.recording.datamodule import LocalizerDataModule
    from localizer.recording.extract import record as extract  # takes a loaded model and a dataset
    from localizer.recording.models import load_model

    n = args.extraction_n or (512 if args.quick else 2048)
    model_dir = gpt2_dir(work, 12, 768)
    loaded = load_model(str(model_dir), "text")
    data = texts(n)
    device = "cuda" if args.accelerator == "gpu" else "cpu"
    loaded.model.to(device)
    loader = LocalizerDataModule(data, loaded.processor, batch_size=32).predict_dataloader()
    batches = [{k: v.to(device) for k, v in b.items() if k in ("input_ids", "attention_mask")} for b in loader]

    def bare():
        loaded.model.to(device)  # like extract, which moves the model in (and Lightning moves it back out)
        with torch.inference_mode():
            for b in batches:
                loaded.model(**b)
        if device == "cuda":
            torch.cuda.synchronize()

    def ours():
        extract(
            loaded,
            data,
            work / "extract.h5",
            layers="h.*",
            pooling="last",
            batch_size=32,
            overwrite=True,
            trainer={"accelerator": args.accelerator, "devices": 1, "enable_progress_bar": False},
        )

    t_ours, all_ours, t_bare, all_bare = paired(ours, bare, args.repeats)
    return {
        "name": f"extraction overhead (GPT-2-small shape, 12 blocks, N={n}, batch 32)",
        "ratio": t_ours / t_bare,
        "target": "<= 1.05",  # issue 15 (on a GPU: <= 1.10 at N=16384)
        "ok": t_ours / t_bare <= 1.05,
        "detail": f"localizer {t_ours:.2f} s vs bare forward {t_bare:.2f} s (runs: {fmt(all_ours)} / {fmt(all_bare)})",
    }


def bench_host(work: Path, args) -> dict:
    """The host-bound case: a tiny model (2 blocks, d=64), so the pipeline around the forward pass is what costs.
    Marginal cost per row (a run of N rows minus a run of 512, which cancels start-up) of localizer extract vs a bare
    forward loop over pre-tokenized batches on the same rows."""
    from localizer.recording.datamodule import LocalizerDataModule
    from localizer.recording.extract import record as extract
    from localizer.recording.models import load_model

    n, small, batch = (4096 if args.quick else 16384), 512, 64
    model_dir = gpt2_dir(work, 2, 64)
    loaded = load_model(str(model_dir), "text")
    data = {k: texts(k) for k in (n, small)}
    device = "cuda" if args.accelerator == "gpu" else "cpu"
    batches = {}
    for k, d in data.items():
        loader = LocalizerDataModule(d, loaded.processor, batch_size=batch).predict_dataloader()
        batches[k] = [
            {k2: v.to(device) for k2, v in b.items() if k2 in ("input_ids", "attention_mask")} for b in loader
        ]

    def bare(k):
        loaded.model.to(device)
        with torch.inference_mode():
            for b in batches[k]:
                loaded.model(**b)
        if device == "cuda":
            torch.cuda.synchronize()

    def ours(k):
        extract(loaded, data[k], work / f"host{k}.h5", layers="h.*", pooling="last", batch_size=batch, overwrite=True,
                trainer={"accelerator": args.accelerator, "devices": 1, "enable_progress_bar": False})  # fmt: skip

    t_ours, all_ours, t_bare, all_bare = paired(lambda: ours(n), lambda: bare(n), args.repeats)
    s_ours, all_s_ours, s_bare, all_s_bare = paired(lambda: ours(small), lambda: bare(small), args.repeats)
    marginal = (t_ours - s_ours) / (t_bare - s_bare)
    per_row = ((t_ours - s_ours) - (t_bare - s_bare)) / (n - small) * 1e6
    return {
        "name": f"host-bound case: marginal cost per row, tiny GPT-2 (2 blocks, d=64), N={n} minus N={small}, batch 64",
        "ratio": marginal,
        "target": "<= 1.15",
        "ok": marginal <= 1.15,
        "detail": f"localizer {t_ours:.2f} - {s_ours:.2f} s vs bare forward {t_bare:.2f} - {s_bare:.2f} s; pipeline "
        f"{per_row:.0f} us per row over the forward (runs: {fmt(all_ours)} / {fmt(all_bare)}; "
        f"{fmt(all_s_ours)} / {fmt(all_s_bare)})",
    }


def bench_sort_by_length(work: Path, args) -> dict:
    """--sort_by_length vs dataset order on texts of 4..64 tokens (GPT-2-small shape, 6 blocks, batch 32): the
    padded tokens the model computes, and the time of the whole extraction."""
    from localizer.recording.datamodule import LocalizerDataModule
    from localizer.recording.extract import record as extract
    from localizer.recording.models import load_model

    n = 512 if args.quick else 2048
    loaded = load_model(str(gpt2_dir(work, 6, 768)), "text")
    data = texts(n, lo=4, hi=64)

    def run(sort: bool):
        extract(loaded, data, work / f"sorted{sort}.h5", layers="h.*", pooling="last", batch_size=32, overwrite=True,
                sort_by_length=sort, trainer={"accelerator": args.accelerator, "devices": 1,
                                              "enable_progress_bar": False})  # fmt: skip

    t_sorted, all_sorted, t_plain, all_plain = paired(lambda: run(True), lambda: run(False), args.repeats)
    dm = LocalizerDataModule(data, loaded.processor, batch_size=32, sort_by_length=True)
    lengths = np.array(dm.token_counts())

    def padded(order):
        return sum(lengths[order[i : i + 32]].max() * len(order[i : i + 32]) for i in range(0, n, 32))

    real = lengths.sum()
    return {
        "name": f"--sort_by_length vs dataset order (texts of 4-64 tokens, N={n}, batch 32, 6 blocks d=768)",
        "ratio": t_sorted / t_plain,
        "target": "report",
        "ok": None,
        "detail": f"sorted {t_sorted:.2f} s vs dataset order {t_plain:.2f} s (runs: {fmt(all_sorted)} / "
        f"{fmt(all_plain)}); tokens computed per real token: {padded(dm.served_rows(1)) / real:.2f} sorted vs "
        f"{padded(np.arange(n)) / real:.2f}",
    }


def bench_writer(work: Path, args) -> dict:
    """The writer path alone: batches of 32 rows x 12 layers x 768 float32 through the segment writer (buffered,
    committed with fsync and rename) vs a plain h5py write of the same arrays into one file (fsync included). Each
    writes a new file: the last run's outputs are deleted before, untimed."""
    import h5py

    from localizer.files.segments import SegmentWriter

    n, batch, layers, units = (4096 if args.quick else 16384), 32, [f"h.{i}" for i in range(12)], 768
    rng = np.random.default_rng(0)
    acts = {layer: rng.standard_normal((n, units), dtype=np.float32) for layer in layers}
    positive = np.arange(n) % 2 == 0

    def ours():
        w = SegmentWriter(work / "seg" / "part.h5")
        for r0 in range(0, n, batch):
            r1 = min(n, r0 + batch)
            w.append(np.arange(r0, r1), positive[r0:r1], None, {k: v[r0:r1] for k, v in acts.items()})
        w.commit(layers)

    def plain():
        with h5py.File(work / "plain.h5", "w") as f:
            f["index"], f["positive"] = np.arange(n), positive
            for layer, a in acts.items():
                f.create_dataset(f"activations/{layer}", data=a)
        with open(work / "plain.h5", "rb") as fh:
            os.fsync(fh.fileno())

    def remove_outputs():  # deleting the last run's 576 MB is part of neither write
        shutil.rmtree(work / "seg", ignore_errors=True)
        (work / "plain.h5").unlink(missing_ok=True)
        os.sync()  # and the deletions settled on disk

    t_ours, all_ours, t_plain, all_plain = paired(ours, plain, args.repeats, remove_outputs)
    mb = n * len(layers) * units * 4 / 2**20
    return {
        "name": f"writer path: {mb:.0f} MB in batches of {batch} rows x 12 x 768 through the segment writer, "
        "throughput vs one plain h5py write",
        "ratio": t_plain / t_ours,
        "target": ">= 0.7",
        "ok": t_plain / t_ours >= 0.7,
        "detail": f"segment writer {t_ours:.2f} s vs plain h5py {t_plain:.2f} s; best runs "
        f"{min(all_ours):.2f} vs {min(all_plain):.2f} s: {min(all_plain) / min(all_ours):.2f} "
        f"(runs: {fmt(all_ours)} / {fmt(all_plain)})",
    }


def bench_packing(work: Path, args) -> dict:
    """What packing a finished extraction into one self-contained file costs, as a share of the extraction:
    extract with ``layout="virtual"`` (segments + virtual master), then :func:`localizer.files.pack.pack`."""
    from localizer.files.pack import pack
    from localizer.recording.extract import record as extract
    from localizer.recording.models import load_model

    n = args.extraction_n or (512 if args.quick else 2048)
    loaded = load_model(str(gpt2_dir(work, 12, 768)), "text")
    data = texts(n)
    out = work / "pack.h5"
    trainer = {"accelerator": args.accelerator, "devices": 1, "enable_progress_bar": False}
    extracting, packing = [], []
    for _ in range(args.repeats + 1):  # the first pair is a warm-up
        t = time.perf_counter()
        extract(loaded, data, out, layers="h.*", pooling="last", batch_size=32, overwrite=True, layout="virtual",
                trainer=trainer)  # fmt: skip
        extracting.append(time.perf_counter() - t)
        t = time.perf_counter()
        pack(out)
        packing.append(time.perf_counter() - t)
    t_ex, t_pack = statistics.median(extracting[1:]), statistics.median(packing[1:])
    size = out.stat().st_size / 2**20
    return {
        "name": f"packing into one file (GPT-2-small shape, N={n}, {size:.0f} MB) / extraction",
        "ratio": t_pack / t_ex,
        "target": "report",
        "ok": None,
        "detail": f"pack {t_pack:.2f} s vs extraction {t_ex:.2f} s (runs: {fmt(packing[1:])} / {fmt(extracting[1:])})",
    }


# --- 2. versus the llm-localization loop -------------------------------------------------------------------------


def llm_localization(model, tokenizer, data, layers):
    """AlKhamissi et al.'s method, faithfully: one stimulus at a time, hooks registered and removed for every stimulus,
    last-token activations kept in RAM, then scipy.stats.ttest_ind per layer."""
    from scipy import stats

    modules = dict(model.named_modules())
    acts = {layer: [] for layer in layers}
    for text in data["text"]:
        store = {}
        handles = [
            modules[layer].register_forward_hook(
                lambda m, i, o, layer=layer, store=store: store.__setitem__(layer, o[0] if isinstance(o, tuple) else o)
            )
            for layer in layers
        ]
        with torch.no_grad():
            model(**tokenizer(text, return_tensors="pt"))
        for h in handles:
            h.remove()
        for layer in layers:
            acts[layer].append(store[layer][0, -1].float().cpu().numpy())
    positive = np.array(data["positive"])
    return {
        layer: stats.ttest_ind(np.abs(np.stack(a))[positive], np.abs(np.stack(a))[~positive]).statistic
        for layer, a in acts.items()
    }


def bench_versus_peer(work: Path, args) -> dict:
    from localizer.recording.extract import record as extract  # takes a loaded model and a dataset
    from localizer.recording.models import load_model
    from localizer.selection import SelectionOptions
    from localizer.selection.select import select_file

    n = 256 if args.quick else 1024
    model_dir = gpt2_dir(work, 12, 768)
    loaded = load_model(str(model_dir), "text")
    data = texts(n, seed=1)
    layers = [f"h.{i}" for i in range(12)]

    def peer():
        llm_localization(loaded.model, loaded.processor, data, layers)

    def ours():
        extract(
            loaded,
            data,
            work / "peer.h5",
            layers="h.*",
            pooling="last",
            batch_size=32,
            overwrite=True,
            trainer={"accelerator": args.accelerator, "devices": 1, "enable_progress_bar": False},
        )
        select_file(work / "peer.h5", work / "peer_sel.h5", SelectionOptions(abs=True, controls=0), log_dir=None)

    t_ours, all_ours, t_peer, all_peer = paired(ours, peer, args.repeats)
    return {
        "name": f"extract + select vs the llm-localization loop (batch 1, per-stimulus hooks, N={n})",
        "ratio": t_peer / t_ours,
        "target": ">= 3 (speedup)",
        "ok": t_peer / t_ours >= 3,
        "detail": f"localizer {t_ours:.2f} s vs llm-localization {t_peer:.2f} s "
        f"(runs: {fmt(all_ours)} / {fmt(all_peer)})",
    }


# --- 3. memory ----------------------------------------------------------------------------------------------------


def peak_rss_cli(cmd: list[str]) -> float:
    """Peak RSS (MiB) of a child process."""
    code = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024); sys.exit(r.returncode)"
    )
    out = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_memory(work: Path, args) -> dict:
    small, large = (500, 5000) if args.quick else (2000, 20000)
    model_dir = gpt2_dir(work, 4, 256)
    rss = {}
    for n in (small, large):
        path = work / f"mem{n}.jsonl"
        texts(n, seed=2).to_json(str(path))
        rss[n] = statistics.median(
            peak_rss_cli(
                [
                    sys.executable,
                    "-m",
                    "localizer",
                    "extract",
                    "--model",
                    str(model_dir),
                    "--stimuli",
                    str(path),
                    "--out",
                    str(work / f"mem{n}.h5"),
                    "--overwrite",
                    "--batch-size",
                    "32",
                    "--trainer.accelerator",
                    args.accelerator,
                    "--trainer.devices",
                    "1",
                    "--trainer.enable_progress_bar",
                    "false",
                ]
            )
            for _ in range(args.repeats)
        )
    ratio = rss[large] / rss[small]
    return {
        "name": f"peak memory of extraction, N={large} vs N={small} (4 blocks, d=256)",
        "ratio": ratio,
        "target": "<= 1.25",
        "ok": ratio <= 1.25,
        "detail": f"{rss[large]:.0f} MiB vs {rss[small]:.0f} MiB",
    }


# --- 4. selection from disk ---------------------------------------------------------------------------------------


def big_activation_file(path: Path, gigabytes: float) -> Path:
    import h5py

    layers, units = 16, 1024
    n = int(gigabytes * 2**30 / (layers * units * 4))
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for i in range(layers):
            ds = f.create_dataset(f"activations/h.{i}", (n, units), dtype=np.float32, chunks=(256, units))
            for r in range(0, n, 4096):
                m = min(4096, n - r)
                ds[r : r + m] = rng.standard_normal((m, units), dtype=np.float32)
        f["positive"] = np.arange(n) % 2 == 0
        f["index"] = np.arange(n, dtype=np.int64)
        f.attrs.update(
            {
                "format_version": 1,
                "model": "synthetic",
                "model_class": "none",
                "pooling": "last",
                "layers": json.dumps([f"h.{i}" for i in range(layers)]),
                "n_stimuli": n,
                "created": "benchmark",
            }
        )
    return path


def plain_read(path: Path, chunk_bytes: int = 16 << 20) -> None:
    import h5py

    with h5py.File(path, "r") as f:
        dsets = [f[f"activations/{k}"] for k in f["activations"]]
        n = dsets[0].shape[0]
        rows = max(1, chunk_bytes // (4 * sum(d.shape[1] for d in dsets)))
        for r in range(0, n, rows):
            for d in dsets:
                d[r : r + rows]


def bench_select(work: Path, args) -> dict:
    """select_from_file (statistics of |x| and x for every unit, float64) vs only reading the same row chunks, both
    in this process with the file in the page cache; the peak RSS of the `localizer select` command beside."""
    from localizer.selection import SelectionOptions
    from localizer.selection.select import select_file

    path = big_activation_file(work / "big.h5", 0.25 if args.quick else 2.1)
    size = path.stat().st_size / 2**30
    t_sel, all_sel, t_read, all_read = paired(
        lambda: select_file(path, work / "big_sel.h5", SelectionOptions(abs=True, controls=0), log_dir=None),
        lambda: plain_read(path),
        args.repeats,
    )
    rss = peak_rss_cli(
        [
            sys.executable,
            "-m",
            "localizer",
            "select",
            "--activations",
            str(path),
            "--out",
            str(work / "big_sel.h5"),
            "--overwrite",
            "--abs",
            "--controls",
            "0",
            "--log-dir",
            str(work / "tb"),
        ]
    )
    base = peak_rss_cli(
        [sys.executable, "-c", "import localizer.selection.select, localizer.cli, lightning, matplotlib"]
    )
    return {
        "name": f"select from disk: {size:.2f} GB file, throughput vs a plain chunked h5py read",
        "ratio": t_read / t_sel,
        "target": ">= 0.5",
        "ok": t_read / t_sel >= 0.5,
        "detail": f"select {t_sel:.2f} s vs read {t_read:.2f} s (runs: {fmt(all_sel)} / {fmt(all_read)}); "
        f"`localizer select` peak RSS {rss:.0f} MiB, of which imports alone {base:.0f} MiB",
    }


# --- 5. ablation overhead -----------------------------------------------------------------------------------------


def bench_ablation(work: Path, args) -> dict:
    import lightning as L
    import transformers

    from localizer.ablation import AblationDataModule, AblationModule, Condition
    from localizer.ablation.masking import unit_edits
    from localizer.ablation.tasks import make_task

    n = 128 if args.quick else 512
    model_dir = gpt2_dir(work, 12, 768)
    word_tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config.from_pretrained(model_dir)
    model = GPT2LMHeadModel(cfg).eval()
    data = texts(n, seed=3).remove_columns("positive")
    rng = np.random.default_rng(0)
    masks = {f"transformer.h.{i}": rng.random(768) < 0.01 for i in range(12)}
    edits = unit_edits(masks, "zero")
    task = make_task("next-token", data, word_tok)

    def validate(conds):
        module = AblationModule(model, task, conds, "last", "text")
        L.Trainer(
            accelerator=args.accelerator, devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
        ).validate(module, datamodule=AblationDataModule(task, data, 16), verbose=False)

    base = Condition("baseline", "baseline", None)
    t_mask, all_mask, t_plain, all_plain = paired(
        lambda: validate([base, Condition("x", "localized", edits)]),
        lambda: validate([base, Condition("x", "localized", {})]),
        args.repeats,
    )
    return {
        "name": f"ablation: masked vs unmasked validation (GPT-2-small shape, 1% of units, N={n})",
        "ratio": t_mask / t_plain,
        "target": "<= 1.10",
        "ok": t_mask / t_plain <= 1.10,
        "detail": f"masked {t_mask:.2f} s vs unmasked {t_plain:.2f} s (runs: {fmt(all_mask)} / {fmt(all_plain)})",
    }


# --- 6. scaling ---------------------------------------------------------------------------------------------------


def bench_scaling(work: Path, args) -> dict:
    n = args.extraction_n or (512 if args.quick else 2048)
    model_dir = gpt2_dir(work, 12, 768)
    path = work / "scale.jsonl"
    texts(n, seed=4).to_json(str(path))
    devices = args.devices if args.accelerator == "gpu" else 2

    def cli(d):
        cmd = [
            sys.executable,
            "-m",
            "localizer",
            "extract",
            "--model",
            str(model_dir),
            "--stimuli",
            str(path),
            "--out",
            str(work / f"scale{d}.h5"),
            "--overwrite",
            "--batch-size",
            "32",
            "--trainer.accelerator",
            args.accelerator,
            "--trainer.devices",
            str(d),
            "--trainer.enable_progress_bar",
            "false",
        ] + (["--trainer.strategy", "ddp"] if d > 1 else [])
        return lambda: subprocess.run(cmd, check=True, capture_output=True)

    t1, all1, tn, alln = paired(cli(1), cli(devices), args.repeats)
    return {
        "name": f"scaling: 1 vs {devices} DDP processes ({args.accelerator}, N={n}, whole command)",
        "ratio": t1 / tn,
        "target": "report",
        "ok": None,
        "detail": f"{devices} processes {tn:.1f} s vs 1 process {t1:.1f} s (runs: {fmt(alln)} / {fmt(all1)})",
    }


def fmt(ts) -> str:
    return ", ".join(f"{t:.2f}" for t in ts)


BENCHMARKS = {
    "extraction": bench_extraction,
    "host": bench_host,
    "writer": bench_writer,
    "sort": bench_sort_by_length,
    "packing": bench_packing,
    "peer": bench_versus_peer,
    "memory": bench_memory,
    "select": bench_select,
    "ablation": bench_ablation,
    "scaling": bench_scaling,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes and 1 repeat (smoke test)")
    p.add_argument("--repeats", type=int, default=None, help="repeats per measurement (default 3; quick: 1)")
    p.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset of " + ", ".join(BENCHMARKS))
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--extraction_n", type=int, default=None, help="stimuli in the extraction benchmark (default 2048)")
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--workdir", default=None, help="keep models and files here (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    work_ctx = tempfile.TemporaryDirectory() if args.workdir is None else None
    work = Path(args.workdir or work_ctx.name)
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"# localizer benchmarks — {time.strftime('%Y-%m-%d')} — {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"repeats={args.repeats}, accelerator={args.accelerator}"
    )
    print("| benchmark | ratio | target | met | absolute times |\n|---|---|---|---|---|", flush=True)
    results = []
    for name in args.only.split(","):
        r = BENCHMARKS[name.strip()](work, args)
        results.append(r)
        met = "n/a" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        print(f"| {r['name']} | {r['ratio']:.2f} | {r['target']} | {met} | {r['detail']} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if work_ctx is not None:
        work_ctx.cleanup()


if __name__ == "__main__":
    main()
