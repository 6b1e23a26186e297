"""Activation files: resumable per-rank HDF5 segments written while recording, one master file over them.

File format (version 1), the contract every later command reads:

- ``/activations/<layer>``: float32 ``[N, U_layer]``; row ``i`` is stimulus ``i`` of the dataset. In the master
  these are HDF5 *virtual datasets* over the segment files (source paths relative to the master file, fill value
  NaN).
- ``/positive``: bool ``[N]``; ``/index``: int64 ``[N]`` equal to ``0..N-1``; ``/split``: utf-8 strings ``[N]``
  when the stimuli have a split column.
- root attributes: ``format_version`` (1), ``model``, ``model_class``, ``pooling``, ``layers`` (JSON list, recording
  order), ``n_stimuli``, ``created`` (ISO 8601, UTC); ``stimuli`` (and ``control``): the stimulus source(s), when
  given as paths or ids.

Crash safety (the writer is :class:`localizer.writer.HDF5ActivationWriter`, resuming is :mod:`localizer.resume`).
Each rank appends its rows to ``<master>.shards/part-AAAA-RRRRR-SSSSSS.h5.part`` (attempt, rank,
sequence number) together with their dataset indices in ``/index``; every ``segment_mb`` MB (or ``segment_minutes``)
the segment is closed, flushed to disk and renamed to ``...h5``: a file with that name is complete by construction,
and at most one open segment per rank is lost when a process dies. ``<master>.shards/run.json`` records what the
extraction is (model, layers, pooling, stimulus fingerprint, ...); a rerun with the same settings skips the rows of
every committed segment and records only the rest. Every process of a run holds ``<master>.shards/lock`` (flock), so
two runs never write into one folder. The master is written under a temporary name and renamed, and only when the
committed segments together cover ``0..N-1`` exactly once: the rename is the completion marker. Readers call
:func:`allow_sources` first: HDF5 reads a virtual-dataset source that it cannot open (open-file limit) as NaN.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from localizer.errors import LocalizerError

FORMAT_VERSION = 1
_STR = h5py.string_dtype("utf-8")


def shard_dir(master: str | os.PathLike) -> Path:
    """The folder holding a master file's segments."""
    master = Path(master)
    return master.with_name(master.name + ".shards")


def segment_files(master: str | os.PathLike) -> list[Path]:
    """The committed segments of ``master``, in name order (``part-*.h5``; open ones end in ``.part``)."""
    folder = shard_dir(master)
    return sorted(folder.glob("part-*.h5")) if folder.is_dir() else []


class _SegmentWriter:
    """Appends rows to one open segment (``<path>.part``); :meth:`commit` closes and renames it to ``path``.

    Rows are buffered up to ``buffer_bytes`` and written with one HDF5 call per dataset (per-batch HDF5 calls cost
    more than a GPU forward pass); nothing else is kept in memory beyond HDF5's chunk cache.
    """

    def __init__(self, path: Path, chunk_bytes: int = 1 << 18, max_bytes: float = float("inf"),
                 buffer_bytes: int = 8 << 20, units: dict[str, int] | None = None):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.chunk_bytes, self.max_bytes, self.buffer_bytes = path, chunk_bytes, max_bytes, buffer_bytes
        self.tmp = path.with_name(path.name + ".part")
        self.file = h5py.File(self.tmp, "w", rdcc_nbytes=4 << 20)
        self.file.attrs["complete"] = False
        self.rows = self.nbytes = 0
        self.started = time.monotonic()
        self.file.create_dataset("index", (0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
        self.file.create_dataset("positive", (0,), maxshape=(None,), dtype=bool, chunks=(4096,))
        self.group = self.file.create_group("activations")
        self.units: dict[str, int] = {} if units is None else units  # shared by a run's segments
        self._pending: list[tuple] = []
        self._pending_bytes = 0

    def append(self, index: np.ndarray, positive: np.ndarray, split: list[str] | None,
               acts: dict[str, np.ndarray]) -> None:
        """Rows ``[B]`` of indices/labels and ``{layer: [B, U]}`` activations (kept by reference until flushed)."""
        for layer, a in acts.items():
            units = self.units.setdefault(layer, a.shape[1])
            if units != a.shape[1]:
                raise LocalizerError(f"layer {layer!r} changed size from {units} to {a.shape[1]} units between "
                                     f"batches; 'flat' pooling needs inputs of one size")
        acts = {layer: np.asarray(a, dtype=np.float32) for layer, a in acts.items()}
        self._pending.append((np.asarray(index, dtype=np.int64), np.asarray(positive, dtype=bool),
                              None if split is None else list(split), acts))
        size = sum(a.nbytes for a in acts.values())
        self.nbytes += size
        self._pending_bytes += size
        self.rows += len(index)
        if self._pending_bytes >= self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows: one resize and one write per dataset."""
        if not self._pending:
            return
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        n = self.file["index"].shape[0]
        index = np.concatenate([p[0] for p in pending])
        b = len(index)
        columns = {"index": index, "positive": np.concatenate([p[1] for p in pending])}
        if pending[0][2] is not None:
            if "split" not in self.file:
                self.file.create_dataset("split", (n,), maxshape=(None,), dtype=_STR, chunks=(4096,))
            columns["split"] = np.asarray([s for p in pending for s in p[2]], dtype=object)
        for name, value in columns.items():
            ds = self.file[name]
            ds.resize((n + b,))
            ds[n:] = value
        for layer in pending[0][3]:
            if layer not in self.group:
                units = self.units[layer]
                rows = int(max(1, min(4096, self.chunk_bytes // (4 * max(units, 1)),
                                      self.max_bytes // (4 * max(units, 1)))))  # small segments: small chunks
                self.group.create_dataset(layer, (n, units), maxshape=(None, units), dtype=np.float32,
                                          chunks=(rows, units))
            ds = self.group[layer]
            ds.resize((n + b, self.units[layer]))
            ds[n:] = np.concatenate([p[3][layer] for p in pending])

    def commit(self, layers: list[str], before_rename=None) -> Path:
        """Mark complete, close, fsync and rename: from here on the rows survive any crash.

        ``before_rename()`` runs with the closed file still under its ``.part`` name (it may refuse by raising).
        """
        self.flush()
        self.file.attrs["layers"] = json.dumps(layers)
        self.file.attrs["n_rows"] = self.rows
        self.file.attrs["complete"] = True
        self.file.close()
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)
        return self.path

    def discard(self) -> None:
        self._pending = []
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (power loss); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def coverage(index: np.ndarray, n: int) -> str:
    """How ``index`` (int ``[M]``) fails to cover ``0..n-1`` exactly once, in words; ``""`` when it does."""
    inside = index[(index >= 0) & (index < n)]
    counts = np.bincount(inside, minlength=n)
    missing, dup = np.flatnonzero(counts == 0), np.flatnonzero(counts > 1)
    outside = len(index) - len(inside)
    parts = [f"{len(missing)} missing (e.g. {missing[:5].tolist()})" if len(missing) else "",
             f"{len(dup)} duplicated (e.g. {dup[:5].tolist()})" if len(dup) else "",
             f"{outside} out of range" if outside else ""]
    return ", ".join(p for p in parts if p)


def _runs(index: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Split a segment's row → dataset-index map into strided runs ``(row0, index0, count, stride)``.

    Rank ``r`` of ``W`` under Lightning's unrepeated sampler processes ``r, r+W, ...`` → one run per segment.
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


def write_master(out: str | os.PathLike, n_stimuli: int, metadata: dict[str, Any], before_rename=None) -> Path:
    """Write the master file over the committed segments of ``out`` (see the module docstring).

    Raises:
        LocalizerError: a segment is incomplete, or the segments do not cover ``0..N-1`` exactly once.
    """
    out = Path(out)
    infos = []
    for path in segment_files(out):
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False):
                raise LocalizerError(f"{out}: segment {path} is incomplete")
            infos.append({
                "path": path, "index": f["index"][:], "positive": f["positive"][:],
                "split": f["split"].asstr()[:] if "split" in f else None,
                "units": {layer: ds.shape[1] for layer, ds in f["activations"].items()},
            })
    index = np.concatenate([i["index"] for i in infos] or [np.zeros(0, dtype=np.int64)])
    gaps = coverage(index, n_stimuli)
    if gaps:
        raise LocalizerError(f"{out}: the segments hold {len(index)} rows for {n_stimuli} stimuli ({gaps}); "
                             f"refusing to write the master file")
    layers = list(metadata.get("layers") or [])
    for info in infos:
        layers += [layer for layer in info["units"] if layer not in layers]
    units = {}
    for layer in layers:
        sizes = {info["units"][layer] for info in infos if layer in info["units"]}
        if len(sizes) != 1:
            raise LocalizerError(f"{out}: layer {layer!r} has unit counts {sorted(sizes)} across segments")
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
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    if before_rename is not None:
        before_rename()
    os.replace(tmp, out)
    _fsync_dir(out.parent)
    for stale in shard_dir(out).glob("*.part"):
        stale.unlink()
    return out


def allow_sources(path: str | os.PathLike) -> int:
    """Let this process open every segment file behind ``path``'s virtual datasets; returns their number.

    HDF5 keeps a virtual dataset's source files open while reading, and a source it cannot open reads as the fill
    value (NaN) without any error. So the soft open-file limit is raised to fit them, and a hard limit that is too
    low is an error instead of silent NaN.

    Raises:
        LocalizerError: the hard limit (``ulimit -Hn``) is too low.
    """
    import resource

    with h5py.File(path, "r") as f:
        group = f.get("activations")
        datasets_ = [group[k] for k in group] if isinstance(group, h5py.Group) else []
        sources = {vs.file_name for ds in datasets_ if isinstance(ds, h5py.Dataset) and ds.is_virtual
                   for vs in ds.virtual_sources()}
    need = len(sources) + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and need > soft:
        if hard != resource.RLIM_INFINITY and need > hard:
            raise LocalizerError(f"{path} reads from {len(sources)} segment files, but this process may open at most "
                                 f"{hard} files (ulimit -Hn); raise that limit")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return len(sources)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes of an activation file, with ``layers`` decoded; checks the format version."""
    if not Path(path).is_file():
        raise LocalizerError(f"{path} does not exist" if not Path(path).exists() else f"{path} is not a file")
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except OSError as e:
        raise LocalizerError(f"{path}: not a readable HDF5 file ({e})") from e
    version = attrs.get("format_version")
    if not (np.ndim(version) == 0 and version == FORMAT_VERSION):
        shown = version.item() if np.ndim(version) == 0 and hasattr(version, "item") else version
        raise LocalizerError(f"{path}: unknown activation file format version {shown!r} "
                             f"(this localizer reads version {FORMAT_VERSION})")
    attrs["layers"] = json.loads(attrs["layers"])
    return attrs
