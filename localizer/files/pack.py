"""``localizer pack``: turn an activation file of virtual datasets into one self-contained HDF5 file.

An extraction writes its rows into per-rank segment files and a master file of virtual datasets over them (see
:mod:`localizer.files.activations`). By default it then packs the master: every ``/activations/<layer>`` becomes a
real float32 dataset, the segments are deleted, and the file can be copied alone and read with plain h5py. The
virtual layout (``layout: virtual``) avoids the copy for outputs too large to hold twice; ``localizer pack FILE``
converts such a file later.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from localizer.errors import LocalizerError
from localizer.files.activations import allow_sources, open_activations, segment_dir, source_file
from localizer.files.segments import fsync_dir, require_space, start_writeback

BLOCK_BYTES = 64 << 20  # rows copied per read: bounded memory whatever the file's size
CHUNK_BYTES = 1 << 20


def is_virtual(path: str | os.PathLike) -> bool:
    """Whether any ``/activations`` dataset of ``path`` is a virtual dataset (reads from segment files)."""
    with h5py.File(path, "r") as f:
        group = f.get("activations")
        return isinstance(group, h5py.Group) and any(group[k].is_virtual for k in group)


def _missing_sources(path: Path, f: h5py.File) -> list[str]:
    missing = set()
    for name in f["activations"]:
        ds = f["activations"][name]
        if ds.is_virtual:
            for vs in ds.virtual_sources():
                source = path.parent / source_file(vs.file_name)
                if not source.is_file():
                    missing.add(str(source))
    return sorted(missing)


def pack(
    path: str | os.PathLike, out: str | os.PathLike | None = None, *, overwrite: bool = False, held: bool = False
) -> Path:
    """Make an activation file of layout virtual one self-contained file (in place: its segments are deleted).

    The packed file has real datasets with the same values, rows and attributes.

    Args:
        path: an activation file (virtual datasets over ``<path>.shards/``, or already packed).
        out: the packed file; ``None`` packs ``path`` in place and then deletes its ``.shards`` segment folder (which
            only this file reads). With ``out`` the original and its segments are kept.
        overwrite: replace an existing ``out``.
        held: the caller (the extraction's writer) already holds the segment folder's lock.

    Returns:
        the packed file. Raises :class:`LocalizerError` when a segment is missing (it would read as NaN).
    """
    from localizer.files.outputs import check_output
    from localizer.files.resume import RunLock, check_segment_folder

    path = Path(path)
    target = path if out is None else Path(out)
    if out is not None:
        check_output(target, overwrite)
        if target.resolve() == path.resolve():
            target = path
    with open_activations(path) as (f, _meta):
        missing = _missing_sources(path, f)
        if missing:
            raise LocalizerError(
                f"{path}: {len(missing)} segment files are missing (e.g. {missing[0]}); their rows would read as NaN"
            )
        virtual = any(f["activations"][k].is_virtual for k in f["activations"])
        if not virtual and target == path:
            return path  # already one file
        nbytes = sum(f["activations"][k].size * 4 for k in f["activations"])
    in_place = target == path
    lock = None
    if in_place and not held:
        check_segment_folder(path)  # only localizer's own files are deleted after packing
        lock = RunLock(segment_dir(path))
        if not lock.acquire(exclusive=True):
            raise LocalizerError(f"an extraction is still writing into {segment_dir(path)}; wait for it to finish")
    tmp = target.with_name(target.name + ".pack.tmp")
    try:
        require_space(target.parent, nbytes * 1.02 + (1 << 20), f"packing {path.name}")
        allow_sources(path)
        with h5py.File(path, "r") as src, h5py.File(tmp, "w") as dst:
            _copy(src, dst)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        if lock is not None:
            lock.close()
        raise
    if lock is not None:
        lock.close()
    if in_place:
        shutil.rmtree(segment_dir(path), ignore_errors=True)
    return target


def _copy(src: h5py.File, dst: h5py.File) -> None:
    """Every dataset and root attribute of ``src`` into ``dst``; activations as real, chunked float32 datasets."""
    for key, value in src.attrs.items():
        dst.attrs[key] = value
    for name in src:
        if name != "activations":
            src.copy(src[name], dst, name)
    group = dst.create_group("activations")
    for layer in src["activations"]:
        ds = src["activations"][layer]
        n, units = ds.shape
        chunk_rows = int(max(1, min(n, CHUNK_BYTES // (4 * max(units, 1)))))
        out = group.create_dataset(
            layer, (n, units), dtype=np.float32, chunks=(chunk_rows, units) if n else None, fillvalue=np.nan
        )
        step = int(max(1, BLOCK_BYTES // (4 * max(units, 1))))
        for start in range(0, n, step):
            out[start : start + step] = ds[start : start + step]
            dst.flush()
            start_writeback(dst.id.get_vfd_handle())  # the disk works while the next block is read
