"""The activation file format: per-rank HDF5 segments, one master file of virtual datasets over them, its reader.

File format (version 1), the contract every later command reads:

- ``/activations/<layer>``: float32 ``[N, U_layer]``; row ``i`` is stimulus ``i`` of the dataset. In the master
  these are HDF5 *virtual datasets* over the segment files (source paths relative to the master file, fill value
  NaN).
- ``/positive``: bool ``[N]``; ``/index``: int64 ``[N]`` equal to ``0..N-1``; ``/split``: utf-8 strings ``[N]``
  when the stimuli have a split column; ``/stimulus``: utf-8 strings ``[N]``, what row ``i`` was shown (the text;
  for images the file path, or ``<source>#<row>`` for images without one); ``/n_tokens``: int64 ``[N]`` for text
  stimuli, the number of tokens the model was given (special tokens included, after truncation).
- A finished extraction is *packed* by default (:mod:`localizer.files.pack`): the activations are real datasets in
  the one file and the segments are gone. With ``layout: virtual`` they stay virtual datasets over the segments.
- root attributes: ``format_version`` (1), ``model``, ``model_class``, ``pooling``, ``layers`` (JSON list, recording
  order), ``n_stimuli``, ``created`` (ISO 8601, UTC); ``stimuli`` (and ``control``): the stimulus source(s), when
  given as paths or ids; ``weights`` (the weights' fingerprint) and ``settings`` (JSON: everything that determines
  the values, compared when a run is repeated).

Crash safety (the writer is :class:`localizer.files.writer.HDF5ActivationWriter`, the segments
:mod:`localizer.files.segments`, resuming :mod:`localizer.files.resume`).
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
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from localizer.errors import LocalizerError
from localizer.files.segments import STRING, fsync_dir, require_space

FORMAT_VERSION = 1


def segment_dir(master: str | os.PathLike) -> Path:
    """The folder holding a master file's segments."""
    master = Path(master)
    return master.with_name(master.name + ".shards")


def segment_files(master: str | os.PathLike) -> list[Path]:
    """The committed segments of ``master``, in name order (``part-*.h5``; open ones end in ``.part``)."""
    folder = segment_dir(master)
    return sorted(folder.glob("part-*.h5")) if folder.is_dir() else []


def coverage(index: np.ndarray, n: int) -> str:
    """How ``index`` (int ``[M]``) fails to cover ``0..n-1`` exactly once, in words; ``""`` when it does."""
    inside = index[(index >= 0) & (index < n)]
    counts = np.bincount(inside, minlength=n)
    missing, dup = np.flatnonzero(counts == 0), np.flatnonzero(counts > 1)
    outside = len(index) - len(inside)
    parts = [
        f"{len(missing)} missing (e.g. {missing[:5].tolist()})" if len(missing) else "",
        f"{len(dup)} duplicated (e.g. {dup[:5].tolist()})" if len(dup) else "",
        f"{outside} out of range" if outside else "",
    ]
    return ", ".join(p for p in parts if p)


def strided_runs(index: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Split a segment's row → dataset-index map into strided runs ``(row0, index0, count, stride)``, greedily from
    the first row: a run goes on while the step to the next index stays the same and positive; a row whose next
    index is not larger is a run of its own.

    Rank ``r`` of ``W`` under Lightning's unrepeated sampler processes ``r, r+W, ...`` → one run per segment. Works
    on groups of equal steps (numpy), not row by row: a segment of a million rows in order takes milliseconds.
    """
    index = np.asarray(index, dtype=np.int64)
    n = len(index)
    steps = np.diff(index)
    cut = np.flatnonzero(steps[1:] != steps[:-1]) + 1  # groups of equal steps: steps[s:e], rows s..e
    runs: list[tuple[int, int, int, int]] = []
    j = 0  # the first row not yet in a run
    for s, e in zip(np.concatenate([[0], cut]).tolist(), np.concatenate([cut, [len(steps)]]).tolist()):
        s = max(s, j)  # the group's first row may already end the previous run
        if s >= e:
            continue
        if steps[s] > 0:
            runs.append((s, int(index[s]), e - s + 1, int(steps[s])))
            j = e + 1
        else:
            runs += [(i, int(index[i]), 1, 1) for i in range(s, e)]
            j = e
    if j == n - 1:
        runs.append((j, int(index[j]), 1, 1))
    return runs


def write_master(
    out: str | os.PathLike,
    n_stimuli: int,
    metadata: dict[str, Any],
    before_rename=None,
    columns: dict[str, Any] | None = None,
) -> Path:
    """Write the master file over the committed segments of ``out`` (see the module docstring).

    ``columns``: more per-stimulus datasets (``{name: [N] strings}``, e.g. ``stimulus``) stored as real datasets.

    Raises:
        LocalizerError: a segment is incomplete, or the segments do not cover ``0..N-1`` exactly once.
    """
    out = Path(out)
    infos = []
    for path in segment_files(out):
        with h5py.File(path, "r") as f:
            if not f.attrs.get("complete", False):
                raise LocalizerError(f"{out}: segment {path} is incomplete")
            infos.append(
                {
                    "path": path,
                    "index": f["index"][:],
                    "positive": f["positive"][:],
                    "split": f["split"].asstr()[:] if "split" in f else None,
                    "units": {layer: ds.shape[1] for layer, ds in f["activations"].items()},
                }
            )
            infos[-1]["runs"] = strided_runs(infos[-1]["index"])  # once per segment, the same for every layer
    index = np.concatenate([i["index"] for i in infos] or [np.zeros(0, dtype=np.int64)])
    gaps = coverage(index, n_stimuli)
    if gaps:
        raise LocalizerError(
            f"{out}: the segments hold {len(index)} rows for {n_stimuli} stimuli ({gaps}); "
            f"refusing to write the master file"
        )
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
    require_space(out.parent, 32 * n_stimuli + (64 << 10) * (len(layers) + 1), "the master file")
    try:
        with h5py.File(tmp, "w") as f:
            group = f.create_group("activations")
            for layer in layers:
                layout = h5py.VirtualLayout(shape=(n_stimuli, units[layer]), dtype=np.float32)
                for info in infos:
                    rows = len(info["index"])
                    if not rows:
                        continue
                    rel = escape_source(os.path.relpath(info["path"], out.parent))
                    source = h5py.VirtualSource(rel, f"activations/{layer}", shape=(rows, units[layer]))
                    for row0, idx0, count, stride in info["runs"]:
                        layout[idx0 : idx0 + (count - 1) * stride + 1 : stride] = source[row0 : row0 + count]
                group.create_virtual_dataset(layer, layout, fillvalue=np.nan)
            f.create_dataset("index", data=np.arange(n_stimuli, dtype=np.int64))
            f.create_dataset("positive", data=positive)
            if split is not None:
                f.create_dataset("split", data=split.astype(object), dtype=STRING)
            for name, values in (columns or {}).items():
                if len(values) != n_stimuli:
                    raise LocalizerError(f"{out}: column {name!r} has {len(values)} values for {n_stimuli} stimuli")
                array = np.asarray(values)
                if array.dtype.kind in "iu":
                    f.create_dataset(name, data=array.astype(np.int64))
                else:
                    f.create_dataset(name, data=np.asarray(list(values), dtype=object), dtype=STRING)
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
    except BaseException:  # never leave a half-written master behind (a crash leaves at most this .tmp)
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)
    for stale in segment_dir(out).glob("*.part"):
        stale.unlink()
    return out


def escape_source(name: str) -> str:
    """A file name as an HDF5 virtual-dataset source: ``%`` is a format character there (``%b``, ``%%``)."""
    return name.replace("%", "%%")


def source_file(name: str) -> str:
    """The file name that a stored virtual-dataset source name stands for (the inverse of :func:`escape_source`)."""
    return name.replace("%%", "%")


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
        sources = {
            vs.file_name
            for ds in datasets_
            if isinstance(ds, h5py.Dataset) and ds.is_virtual
            for vs in ds.virtual_sources()
        }
    need = len(sources) + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and need > soft:
        if hard != resource.RLIM_INFINITY and need > hard:
            raise LocalizerError(
                f"{path} reads from {len(sources)} segment files, but this process may open at most "
                f"{hard} files (ulimit -Hn); raise that limit"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    return len(sources)


def read_version(attrs) -> tuple[bool, Any]:
    """``(is this localizer's format version, the value as shown in messages)`` of a file's root attributes."""
    version = attrs.get("format_version")
    if np.ndim(version) == 0 and version == FORMAT_VERSION:
        return True, FORMAT_VERSION
    return False, version.item() if np.ndim(version) == 0 and hasattr(version, "item") else version


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise LocalizerError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Root attributes of an activation file, with ``layers`` decoded; checks the format version."""
    path = _existing_file(path)
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except OSError as e:
        raise LocalizerError(f"{path}: not a readable HDF5 file ({e})") from e
    ok, shown = read_version(attrs)
    if not ok:
        raise LocalizerError(
            f"{path}: unknown activation file format version {shown!r} (this localizer reads version {FORMAT_VERSION})"
        )
    attrs["layers"] = json.loads(attrs["layers"])
    return attrs


@contextmanager
def open_activations(path: str | os.PathLike) -> Iterator[tuple[h5py.File, dict[str, Any]]]:
    """The one way to read an activation file: ``with open_activations(p) as (f, meta)``.

    Checks that the file exists and has this format version, lets the process open every segment behind it
    (:func:`allow_sources`), and checks that every listed layer has a dataset. ``meta`` is :func:`read_metadata`.
    """
    meta = read_metadata(path)
    allow_sources(path)
    with h5py.File(path, "r") as f:
        missing = [layer for layer in meta["layers"] if f"activations/{layer}" not in f]
        if missing:
            raise LocalizerError(f"{path}: layers {missing} are listed but have no dataset")
        yield f, meta
