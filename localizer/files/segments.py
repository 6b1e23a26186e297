"""One open segment of an activation file: rows appended, buffered, then committed by an fsync + rename.

See :mod:`localizer.files.activations` for the format and the naming of segment files.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from localizer.errors import LocalizerError

STRING = h5py.string_dtype("utf-8")
MARGIN = 1 << 20  # bytes kept free beyond an estimate: HDF5 must never be the one that meets a full disk


def free_bytes(folder: Path) -> int:
    """Free bytes on the device of ``folder``. For the tests, ``LOCALIZER_TEST_DISK=ROOT:BYTES`` makes ``ROOT`` a
    simulated disk of that capacity (free = capacity - the files below ``ROOT``), where no tmpfs can be mounted."""
    simulated = os.environ.get("LOCALIZER_TEST_DISK")
    if simulated:
        root, _, capacity = simulated.rpartition(":")
        if Path(folder).resolve().is_relative_to(Path(root).resolve()):
            used = sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())
            return max(0, int(capacity) - used)
    return shutil.disk_usage(folder).free


def require_space(folder: Path, nbytes: float, what: str) -> None:
    """Refuse to write ``nbytes`` (an estimate) into ``folder`` unless that much and :data:`MARGIN` more is free.

    HDF5 meeting ENOSPC in the middle of a write leaves handles that cannot be closed (errors at exit, a segfault):
    checking first turns a full disk into one line, before HDF5 writes anything.
    """
    from localizer.distributed import failpoint

    failpoint(f"space:{what}", 0)
    free = free_bytes(folder)
    if free < nbytes + MARGIN:
        raise LocalizerError(
            f"no space left on the device of {folder} for {what}: about {(nbytes + MARGIN) / 2**20:.1f} MB needed, "
            f"{free / 2**20:.1f} MB free"
        )


BUFFER_BYTES = 32 << 20  # rows held before one HDF5 write per dataset (one such block may be in flight too)


def _sync_file_range():
    """libc's ``sync_file_range`` (Linux), or None."""
    import ctypes

    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except Exception:  # not Linux (no such symbol, or no process-wide library handle, as on Windows)
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


_SYNC_FILE_RANGE = _sync_file_range()


def start_writeback(fd: int) -> bool:
    """Ask the kernel to start writing the file's dirty pages to the device now, without waiting for them
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, as RocksDB's ``bytes_per_sync``). Called after each block written
    to a segment or a packed file, it lets the disk work while the next rows are computed, so that the fsync at the
    commit only waits for the last block (writer benchmark: 0.45 -> 0.35 s for 576 MB). A hint: False where it is
    not available or refused; durability still comes from the fsync."""
    if _SYNC_FILE_RANGE is None:
        return False
    return _SYNC_FILE_RANGE(fd, 0, 0, 2) == 0  # offset 0, length 0: to the end of the file; 2 = WRITE


class SegmentWriter:
    """Appends rows to one open segment (``<path>.part``); :meth:`commit` closes and renames it to ``path``.

    Rows are buffered up to ``buffer_bytes`` and written with one HDF5 call per dataset (per-batch HDF5 calls cost
    more than a GPU forward pass), on a background thread while the next rows come (h5py releases the GIL while
    writing): at most one buffer is being written while another fills. A write's error is raised in the caller's
    thread at the next :meth:`append`, :meth:`flush` or :meth:`commit`; :meth:`commit` waits for every write.
    """

    def __init__(
        self,
        path: Path,
        chunk_bytes: int = 1 << 20,
        max_bytes: float = float("inf"),
        buffer_bytes: float = BUFFER_BYTES,
        units: dict[str, int] | None = None,
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.chunk_bytes, self.max_bytes, self.buffer_bytes = path, chunk_bytes, max_bytes, buffer_bytes
        self.tmp = path.with_name(path.name + ".part")
        require_space(path.parent, 64 << 10, "a segment")
        self.file = h5py.File(self.tmp, "w", rdcc_nbytes=0)
        self.file.attrs["complete"] = False
        self.rows = self.nbytes = 0
        self.started = time.monotonic()
        self.file.create_dataset("index", (0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
        self.file.create_dataset("positive", (0,), maxshape=(None,), dtype=bool, chunks=(4096,))
        self.group = self.file.create_group("activations")
        self.units: dict[str, int] = {} if units is None else units  # shared by a run's segments
        self._pending: list[tuple] = []
        self._pending_bytes = 0
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="localizer-segment")
        self._writing: Future | None = None  # the buffer being written (at most one)
        self._tail: dict[str, tuple] = {}  # per layer: (chunk buffer, rows in it) of a partial chunk not on file

    def append(
        self, index: np.ndarray, positive: np.ndarray, split: list[str] | None, acts: dict[str, np.ndarray]
    ) -> None:
        """Rows ``[B]`` of indices/labels and ``{layer: [B, U]}`` activations (kept by reference until flushed)."""
        for layer, a in acts.items():
            units = self.units.setdefault(layer, a.shape[1])
            if units != a.shape[1]:
                raise LocalizerError(
                    f"layer {layer!r} changed size from {units} to {a.shape[1]} units between "
                    f"batches; 'flat' pooling needs inputs of one size"
                )
        acts = {layer: np.asarray(a, dtype=np.float32) for layer, a in acts.items()}
        self._pending.append(
            (
                np.asarray(index, dtype=np.int64),
                np.asarray(positive, dtype=bool),
                None if split is None else list(split),
                acts,
            )
        )
        size = sum(a.nbytes for a in acts.values())
        self.nbytes += size
        self._pending_bytes += size
        self.rows += len(index)
        if self._pending_bytes >= self.buffer_bytes:
            self.write_behind()

    def _wait(self) -> None:
        """Wait for the buffer being written; its error, if any, is raised here."""
        writing, self._writing = self._writing, None
        if writing is not None:
            writing.result()

    def write_behind(self, final: bool = False) -> None:
        """Hand the buffered rows to the writer thread (after the previous buffer is written). Activation rows that
        do not fill a whole HDF5 chunk wait for the next buffer, unless ``final``."""
        self._wait()
        if self._pending or (final and self._tail):
            pending, size = self._pending, self._pending_bytes
            self._pending, self._pending_bytes = [], 0
            self._writing = self._worker.submit(self._write, pending, size, final)

    def flush(self) -> None:
        """Write every row now, the last partial chunk included (and wait for the writer thread)."""
        self.write_behind(final=True)
        self._wait()

    def _write(self, pending: list[tuple], size: int, final: bool) -> None:
        """Append ``pending`` (on the writer thread): one resize and one write per column; activations as whole
        chunks (:meth:`_write_chunks`)."""
        whole_chunks = sum(4 * u * self._chunk_rows(u) for u in self.units.values())  # bound on tails and padding
        require_space(self.tmp.parent, 1.1 * size + whole_chunks + 64 * len(pending) + (64 << 10), "a segment")
        order = self._write_columns(pending) if pending else None
        for layer in list(pending[0][3]) if pending else list(self._tail):
            units = self.units[layer]
            if layer not in self.group:
                self.group.create_dataset(
                    layer, (0, units), maxshape=(None, units), dtype=np.float32, chunks=(self._chunk_rows(units), units)
                )
            parts = [p[3][layer] for p in pending]
            self._write_chunks(self.group[layer], layer, parts if order is None else [_take(parts, order)], final)
        self.file.flush()  # nothing waits in HDF5's cache: an error later can always close the file
        start_writeback(self.file.id.get_vfd_handle())

    def _write_chunks(self, ds: h5py.Dataset, layer: str, parts: list[np.ndarray], final: bool) -> None:
        """Append the rows of ``parts`` (``[B_i, U]`` float32) to ``ds`` one whole chunk at a time: each is assembled
        in one reused chunk-sized buffer (hot in the cache) and written with ``write_direct_chunk``. A partial last
        chunk waits in :attr:`_tail`, or, ``final``, is written zero-padded (rows beyond the extent are never read;
        rows appended after such a flush complete that chunk)."""
        chunk, units = ds.chunks[0], ds.shape[1]
        buf, filled = self._tail.pop(layer, (None, 0))
        start = ds.shape[0]
        if buf is None:
            buf = np.empty((chunk, units), dtype="<f4")
            if start % chunk:  # an earlier flush wrote a partial chunk: it is completed (rewritten) now
                filled = start % chunk
                start -= filled
                buf[:filled] = ds[start : start + filled]
        total = filled + sum(len(p) for p in parts)
        ds.resize((start + (total if final else total // chunk * chunk), units))
        for part in parts:
            i = 0
            while i < len(part):
                k = min(chunk - filled, len(part) - i)
                buf[filled : filled + k] = part[i : i + k]
                filled, i = filled + k, i + k
                if filled == chunk:
                    ds.id.write_direct_chunk((start, 0), buf)
                    start, filled = start + chunk, 0
        if filled and final:
            buf[filled:] = 0
            ds.id.write_direct_chunk((start, 0), buf)
        elif filled:
            self._tail[layer] = (buf, filled)

    def _chunk_rows(self, units: int) -> int:
        """Rows per chunk of a layer: about ``chunk_bytes``, smaller for small segments."""
        per_row = 4 * max(units, 1)
        return int(max(1, min(4096, self.chunk_bytes // per_row, self.max_bytes // per_row)))

    def _write_columns(self, pending: list[tuple]) -> np.ndarray | None:
        """Append the index, class and split columns of ``pending`` in dataset order; return the order that puts the
        buffer's rows there (None: they are in order already)."""
        index = np.concatenate([p[0] for p in pending])
        order = None if (np.diff(index) > 0).all() else np.argsort(index, kind="stable")  # batched by length
        columns = {"index": _take([index], order), "positive": _take([p[1] for p in pending], order)}
        n = self.file["index"].shape[0]
        if pending[0][2] is not None:
            if "split" not in self.file:
                self.file.create_dataset("split", (n,), maxshape=(None,), dtype=STRING, chunks=(4096,))
            columns["split"] = _take([np.asarray([s for p in pending for s in p[2]], dtype=object)], order)
        for name, value in columns.items():
            ds = self.file[name]
            ds.resize((n + len(value),))
            ds[n:] = value
        return order

    def commit(self, layers: list[str], before_rename=None) -> Path:
        """Mark complete, close, fsync and rename: from here on the rows survive any crash.

        ``before_rename()`` runs with the closed file still under its ``.part`` name (it may refuse by raising).
        """
        self.flush()
        self._worker.shutdown()
        self.file.attrs["layers"] = json.dumps(layers)
        self.file.attrs["n_rows"] = self.rows
        self.file.attrs["complete"] = True
        self.file.close()
        with open(self.tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.path

    def discard(self) -> None:
        """Drop the open segment (an error, not a crash): close it whatever state it is in, delete it."""
        self._pending, self._tail = [], {}
        try:
            self._wait()
        except BaseException:  # the write that failed is why we discard
            pass
        self._worker.shutdown()
        try:
            self.file.close()
        except Exception:  # a failed write can leave HDF5 unable to flush; the file is deleted anyway
            pass
        self.tmp.unlink(missing_ok=True)


def _take(parts: list[np.ndarray], order: np.ndarray | None) -> np.ndarray:
    """The rows of ``parts`` (one buffer), in ``order`` when given (rows batched by length come out of order)."""
    rows = np.concatenate(parts) if len(parts) > 1 else parts[0]
    return rows if order is None else rows[order]


def fsync_dir(folder: Path) -> None:
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
