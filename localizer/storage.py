"""Activation files: per-rank HDF5 shards written while recording, one master file over them.

File format (version 1), the contract every later command reads:

- ``/activations/<layer>``: float32 ``[N, U_layer]``; row ``i`` is stimulus ``i`` of the dataset. In the master
  these are HDF5 *virtual datasets* over the shards (source paths relative to the master file, fill value NaN).
- ``/positive``: bool ``[N]``; ``/index``: int64 ``[N]`` equal to ``0..N-1``; ``/split``: utf-8 strings ``[N]``
  when the stimuli have a split column.
- root attributes: ``format_version`` (1), ``model``, ``model_class``, ``pooling``, ``layers`` (JSON list, recording
  order), ``n_stimuli``, ``created`` (ISO 8601, UTC); ``stimuli`` (and ``control``): the stimulus source(s), when
  given as paths or ids.

Shards live in ``<master>.shards/rank-RRRRR-of-WWWWW.h5``; each holds its rank's rows in the order it processed them,
with their dataset indices in ``/index``. The master is written under a temporary name and renamed, and only when the
shards together cover ``0..N-1`` exactly once.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from localizer.errors import LocalizerError

FORMAT_VERSION = 1
_SHARD_RE = re.compile(r"rank-(\d{5})-of-(\d{5})\.h5\Z")
_STR = h5py.string_dtype("utf-8")


def shard_dir(master: str | os.PathLike) -> Path:
    """The folder holding a master file's shards."""
    master = Path(master)
    return master.with_name(master.name + ".shards")


def shard_path(master: str | os.PathLike, rank: int, world_size: int) -> Path:
    return shard_dir(master) / f"rank-{rank:05d}-of-{world_size:05d}.h5"


class _ShardWriter:
    """Appends rows to one rank's shard; nothing is kept in memory beyond HDF5's chunk cache."""

    def __init__(self, path: Path, chunk_bytes: int = 1 << 18):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.chunk_bytes = path, chunk_bytes
        self.file = h5py.File(path, "w", rdcc_nbytes=4 << 20)
        self.file.attrs["complete"] = False
        self.rows = 0
        self.file.create_dataset("index", (0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
        self.file.create_dataset("positive", (0,), maxshape=(None,), dtype=bool, chunks=(4096,))
        self.group = self.file.create_group("activations")

    def append(self, index: np.ndarray, positive: np.ndarray, split: list[str] | None,
               acts: dict[str, np.ndarray]) -> None:
        """Rows ``[B]`` of indices/labels and ``{layer: [B, U]}`` activations."""
        n, b = self.rows, len(index)
        if split is not None and "split" not in self.file:
            self.file.create_dataset("split", (n,), maxshape=(None,), dtype=_STR, chunks=(4096,))
        for name, value in (("index", index), ("positive", positive), ("split", split)):
            if value is not None:
                ds = self.file[name]
                ds.resize((n + b,))
                ds[n:] = np.asarray(value, dtype=object) if name == "split" else value
        for layer, a in acts.items():
            if layer not in self.group:
                units = a.shape[1]
                rows = int(max(1, min(4096, self.chunk_bytes // (4 * max(units, 1)))))
                self.group.create_dataset(layer, (n, units), maxshape=(None, units), dtype=np.float32,
                                          chunks=(rows, units))
            ds = self.group[layer]
            if ds.shape[1] != a.shape[1]:
                raise LocalizerError(f"layer {layer!r} changed size from {ds.shape[1]} to {a.shape[1]} units between "
                                     f"batches; 'flat' pooling needs inputs of one size")
            ds.resize((n + b, ds.shape[1]))
            ds[n:] = a
        self.rows += b

    def close(self, layers: list[str]) -> None:
        self.file.attrs["layers"] = json.dumps(layers)
        self.file.attrs["n_rows"] = self.rows
        self.file.attrs["complete"] = True
        self.file.close()


class HDF5ActivationWriter(BasePredictionWriter):
    """Stream the recorder's per-batch activations to per-rank shards; rank 0 then writes the master file.

    Args:
        out: the master file path (``.h5``).
        metadata: root attributes to record (``model``, ``model_class``, ``pooling``); by default read from the
            LightningModule (:class:`localizer.recording.ActivationRecorder`).
        n_stimuli: the dataset size N; by default the length of the predict dataloader's dataset.

    The batch must carry ``index`` ``[B]`` and ``positive`` ``[B]`` (and ``split`` when present), as
    :class:`localizer.data.LocalizerDataModule` makes them; the prediction is ``{layer: [B, U_layer]}``.
    """

    def __init__(self, out: str | os.PathLike, metadata: dict[str, Any] | None = None, n_stimuli: int | None = None):
        super().__init__(write_interval="batch")
        self.out = Path(out)
        self.metadata = dict(metadata or {})
        self.n_stimuli = n_stimuli
        self._shard: _ShardWriter | None = None

    def on_predict_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and self.out.exists():
            self.out.unlink()  # never leave an old master pointing at shards that are being rewritten
        self._shard = _ShardWriter(shard_path(self.out, trainer.global_rank, trainer.world_size))

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        acts = {layer: t.detach().to("cpu", torch.float32).numpy() for layer, t in prediction.items()}
        self._shard.append(batch["index"].cpu().numpy().astype(np.int64), batch["positive"].cpu().numpy(),
                           batch.get("split"), acts)

    def on_predict_end(self, trainer, pl_module) -> None:
        layers = list(getattr(pl_module, "layers", []))
        self._shard.close(layers)
        self._shard = None
        trainer.strategy.barrier()
        error = None
        if trainer.is_global_zero:
            try:
                write_master(self.out, trainer.world_size, self._n_stimuli(trainer), self._metadata(pl_module))
            except LocalizerError as e:
                error = str(e)
        error = trainer.strategy.broadcast(error, src=0)
        if error:
            raise LocalizerError(error)

    def _n_stimuli(self, trainer) -> int:
        if self.n_stimuli is not None:
            return self.n_stimuli
        loaders = trainer.predict_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        return len(loader.dataset)

    def _metadata(self, pl_module) -> dict[str, Any]:
        meta = {key: getattr(pl_module, attr, "") for key, attr in
                (("model", "model_name"), ("model_class", "model_class"), ("pooling", "pooling"))}
        meta["layers"] = list(getattr(pl_module, "layers", []))
        meta.update(self.metadata)
        return meta


def _runs(index: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Split a shard's row → dataset-index map into strided runs ``(row0, index0, count, stride)``.

    Rank ``r`` of ``W`` under Lightning's unrepeated sampler processes ``r, r+W, ...`` → one run per shard.
    """
    runs, n, j = [], len(index), 0
    while j < n:
        if j + 1 < n and index[j + 1] > index[j]:
            stride = int(index[j + 1] - index[j])
            k = j + 1
            while k + 1 < n and index[k + 1] - index[k] == stride:
                k += 1
            runs.append((j, int(index[j]), k - j + 1, stride))
            j = k + 1
        else:
            runs.append((j, int(index[j]), 1, 1))
            j += 1
    return runs


def write_master(out: str | os.PathLike, world_size: int, n_stimuli: int, metadata: dict[str, Any]) -> Path:
    """Write the master file over the ``world_size`` shards of ``out`` (see the module docstring).

    Raises:
        LocalizerError: a shard is missing or incomplete, or the shards do not cover ``0..N-1`` exactly once.
    """
    out = Path(out)
    shards = [shard_path(out, r, world_size) for r in range(world_size)]
    infos = []
    for path in shards:
        if not path.exists():
            raise LocalizerError(f"{out}: shard {path} is missing")
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False):
                raise LocalizerError(f"{out}: shard {path} is incomplete")
            infos.append({
                "path": path, "index": f["index"][:], "positive": f["positive"][:],
                "split": f["split"].asstr()[:] if "split" in f else None,
                "units": {layer: ds.shape[1] for layer, ds in f["activations"].items()},
            })
    index = np.concatenate([i["index"] for i in infos])
    counts = np.bincount(index[(index >= 0) & (index < n_stimuli)], minlength=n_stimuli)
    outside = int(((index < 0) | (index >= n_stimuli)).sum())
    if outside or len(index) != n_stimuli or (counts != 1).any():
        missing, dup = np.flatnonzero(counts == 0), np.flatnonzero(counts > 1)
        raise LocalizerError(f"{out}: shards hold {len(index)} rows for {n_stimuli} stimuli "
                             f"({len(missing)} missing, e.g. {missing[:5].tolist()}; {len(dup)} duplicated, e.g. "
                             f"{dup[:5].tolist()}; {outside} out of range); refusing to write the master file")
    layers = list(metadata.get("layers") or [])
    for info in infos:
        layers += [layer for layer in info["units"] if layer not in layers]
    units = {}
    for layer in layers:
        sizes = {info["units"][layer] for info in infos if layer in info["units"]}
        if len(sizes) != 1:
            raise LocalizerError(f"{out}: layer {layer!r} has unit counts {sorted(sizes)} across shards")
        units[layer] = sizes.pop()

    positive = np.zeros(n_stimuli, dtype=bool)
    split = None
    for info in infos:
        positive[info["index"]] = info["positive"]
        if info["split"] is not None:
            split = np.full(n_stimuli, "", dtype=object) if split is None else split
            split[info["index"]] = info["split"]

    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        group = f.create_group("activations")
        for layer in layers:
            layout = h5py.VirtualLayout(shape=(n_stimuli, units[layer]), dtype=np.float32)
            for info in infos:
                rows = len(info["index"])
                if not rows:
                    continue
                rel = os.path.relpath(info["path"], out.parent)
                source = h5py.VirtualSource(rel, f"activations/{layer}", shape=(rows, units[layer]))
                for row0, idx0, count, stride in _runs(info["index"]):
                    layout[idx0: idx0 + (count - 1) * stride + 1: stride] = source[row0: row0 + count]
            group.create_virtual_dataset(layer, layout, fillvalue=np.nan)
        f.create_dataset("index", data=np.arange(n_stimuli, dtype=np.int64))
        f.create_dataset("positive", data=positive)
        if split is not None:
            f.create_dataset("split", data=split.astype(object), dtype=_STR)
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["model"] = str(metadata.get("model", ""))
        f.attrs["model_class"] = str(metadata.get("model_class", ""))
        f.attrs["pooling"] = str(metadata.get("pooling", ""))
        f.attrs["layers"] = json.dumps(layers)
        f.attrs["n_stimuli"] = n_stimuli
        f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for key, value in metadata.items():  # extra provenance, e.g. the stimulus source
            if key not in ("layers", "model", "model_class", "pooling") and value is not None:
                f.attrs[key] = str(value)
    os.replace(tmp, out)
    for stale in shard_dir(out).iterdir():
        m = _SHARD_RE.match(stale.name)
        if m and int(m.group(2)) != world_size:
            stale.unlink()
    return out


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes of an activation file, with ``layers`` decoded; checks the format version."""
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except OSError as e:
        raise LocalizerError(f"{path}: not a readable HDF5 file ({e})") from e
    version = attrs.get("format_version")
    if version != FORMAT_VERSION:
        shown = version.item() if hasattr(version, "item") else version
        raise LocalizerError(f"{path}: unknown activation file format version {shown!r} "
                             f"(this localizer reads version {FORMAT_VERSION})")
    attrs["layers"] = json.loads(attrs["layers"])
    return attrs
