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

Crash safety. Each rank appends its rows to ``<master>.shards/part-AAAA-RRRRR-SSSSSS.h5.part`` (attempt, rank,
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
import shutil
import signal
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from localizer.errors import LocalizerError

FORMAT_VERSION = 1
NAN_POLICIES = ("error", "allow")
_STR = h5py.string_dtype("utf-8")
_MANIFEST = "run.json"


def shard_dir(master: str | os.PathLike) -> Path:
    """The folder holding a master file's segments."""
    master = Path(master)
    return master.with_name(master.name + ".shards")


def segment_files(master: str | os.PathLike) -> list[Path]:
    """The committed segments of ``master``, in name order (``part-*.h5``; open ones end in ``.part``)."""
    folder = shard_dir(master)
    return sorted(folder.glob("part-*.h5")) if folder.is_dir() else []


def _failpoint(name: str, rank: int) -> None:
    """Fault injection for the crash tests: ``LOCALIZER_FAILPOINT=NAME[@RANK]`` SIGKILLs this process at ``NAME``."""
    spec = os.environ.get("LOCALIZER_FAILPOINT")
    if spec:
        point, _, only = spec.partition("@")
        if point == name and (not only or int(only) == rank):
            os.kill(os.getpid(), signal.SIGKILL)


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


def _to_numpy(prediction: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """``{layer: [B, U_layer]}`` tensors → float32 arrays on the host, with one device-to-host copy per batch."""
    layers = list(prediction)
    tensors = [prediction[layer].detach() for layer in layers]
    if all(t.device.type == "cpu" for t in tensors):
        return {layer: t.to(torch.float32).numpy() for layer, t in zip(layers, tensors)}
    flat = torch.cat([t.to(torch.float32) for t in tensors], dim=1).cpu().numpy()
    return dict(zip(layers, np.split(flat, np.cumsum([t.shape[1] for t in tensors])[:-1], axis=1)))


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


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (_MANIFEST + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(manifest, indent=1, sort_keys=True))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / _MANIFEST)
    _fsync_dir(folder)


def _segment_attempt(path: Path) -> int:
    return int(path.name.split("-")[1])


class _RunLock:
    """``flock`` on ``<master>.shards/lock``: exclusive while rank 0 plans a run, then shared by every rank for the
    whole run, so a second run (or a process of an earlier one still alive) cannot write into the same folder.
    Released by the OS when a process dies. Where the file system has no ``flock`` it silently does nothing."""

    def __init__(self, folder: Path):
        import fcntl

        self.fcntl = fcntl
        folder.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)

    def acquire(self, exclusive: bool) -> bool:
        """Non-blocking; False when another process holds a conflicting lock."""
        try:
            self.fcntl.flock(self.fd, (self.fcntl.LOCK_EX if exclusive else self.fcntl.LOCK_SH) | self.fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:  # no flock here (some network file systems)
            pass
        return True

    def close(self) -> None:
        os.close(self.fd)


def committed_rows(master: str | os.PathLike) -> int:
    """How many rows the committed segments of ``master`` hold (read only; 0 when there are none)."""
    total = 0
    for path in segment_files(master):
        try:
            with h5py.File(path, "r") as f:
                total += int(f.attrs.get("n_rows", 0))
        except OSError:
            pass
    return total


class SettingsMismatch(LocalizerError):
    """A partial extraction into the same output was made with other settings."""


def check_partial(out: str | os.PathLike, key: dict[str, Any]) -> None:
    """Refuse to continue committed segments of ``out`` that were recorded with another ``key`` (read only).

    Raises:
        SettingsMismatch: naming every setting that differs.
    """
    folder = shard_dir(out)
    manifest = _read_manifest(folder)
    if manifest is None or not segment_files(out) or manifest.get("key") == key:
        return
    old = manifest.get("key") or {}
    diff = [f"{k} {old.get(k)!r} -> {key.get(k)!r}" for k in sorted(set(old) | set(key)) if old.get(k) != key.get(k)]
    raise SettingsMismatch(f"{folder} holds a partial extraction made with other settings ({'; '.join(diff)}); "
                           f"pass --overwrite to discard it")


def plan_resume(out: str | os.PathLike, key: dict[str, Any] | None,
                mode: str = "auto") -> tuple[int, np.ndarray, dict[str, int]]:
    """Decide what an extraction into ``out`` records; called once, by rank 0, before any row is written.

    Args:
        key: what determines the rows' values (model, layers, pooling, stimulus fingerprint, ...); ``None``
            disables resuming.
        mode: ``"auto"`` resume when the committed segments were made with the same ``key``, else start over
            (refusing when they were made with another key); ``"resume"`` as auto but an error when there is
            nothing to resume; ``"fresh"`` discard earlier segments and the master.

    Returns:
        ``(attempt, done, units)``: this attempt's number, the dataset indices already recorded (int64 ``[D]``) and
        the recorded layers' unit counts.
    """
    out = Path(out)
    folder = shard_dir(out)
    manifest = _read_manifest(folder)
    segments = segment_files(out)
    if mode == "fresh" or key is None or not segments or manifest is None:
        if mode == "resume" and key is not None:
            raise LocalizerError(f"{out}: nothing to resume (no recorded segments in {folder}); run without --resume")
        out.unlink(missing_ok=True)
        for old in folder.iterdir() if folder.exists() else []:  # everything but the lock that this run holds
            if old.name != "lock":
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        attempt = 0 if manifest is None else int(manifest.get("attempt", 0)) + 1  # names never repeat
        _write_manifest(folder, {"key": key, "attempt": attempt})
        return attempt, np.zeros(0, dtype=np.int64), {}
    check_partial(out, key)
    done, units = [], {}
    for path in segments:
        try:
            with h5py.File(path, "r") as f:
                done.append(f["index"][:])
                units = units or {layer: int(ds.shape[1]) for layer, ds in f["activations"].items()}
        except (OSError, KeyError) as e:
            raise LocalizerError(f"segment {path} is unreadable ({e}); pass --overwrite to start over") from e
    done = np.concatenate(done).astype(np.int64)
    if len(np.unique(done)) != len(done):
        raise LocalizerError(f"{folder}: the recorded segments hold some stimuli twice; pass --overwrite to start over")
    for stale in folder.glob("*.part"):
        stale.unlink()
    attempt = max([int(manifest.get("attempt", 0))] + [_segment_attempt(p) for p in segments]) + 1
    _write_manifest(folder, {"key": key, "attempt": attempt})
    return attempt, done, units


class HDF5ActivationWriter(BasePredictionWriter):
    """Stream the recorder's per-batch activations to resumable per-rank segments; rank 0 then writes the master.

    Args:
        out: the master file path (``.h5``).
        metadata: root attributes to record (``model``, ``model_class``, ``pooling``); by default read from the
            LightningModule (:class:`localizer.recording.ActivationRecorder`).
        n_stimuli: the dataset size N; by default the length of the predict dataloader's dataset.
        resume_key: what determines the recorded values (see :func:`plan_resume`); with it (and ``n_stimuli``) a
            rerun skips the rows already committed. Without it every run starts over.
        mode: ``"auto"``, ``"resume"`` or ``"fresh"`` (see :func:`plan_resume`).
        segment_mb / segment_minutes: commit the open segment when it holds this many MB of activations or is this
            old (a crash loses at most that much work per rank).
        nan_policy: ``"error"`` stop at the first NaN/inf activation, naming the layer and the stimulus index;
            ``"allow"`` record them and warn at the end (``localizer check`` reports them; such units are never
            selected).

    The batch must carry ``index`` ``[B]`` and ``positive`` ``[B]`` (and ``split`` when present), as
    :class:`localizer.data.LocalizerDataModule` makes them; the prediction is ``{layer: [B, U_layer]}``. When the
    datamodule has a ``restrict(indices)`` method (LocalizerDataModule does), a resumed run only computes the rows
    that are missing; otherwise rows already recorded are computed and dropped.
    """

    def __init__(self, out: str | os.PathLike, metadata: dict[str, Any] | None = None, n_stimuli: int | None = None,
                 *, resume_key: dict[str, Any] | None = None, mode: str = "auto", segment_mb: float = 1024.0,
                 segment_minutes: float = 10.0, nan_policy: str = "error"):
        super().__init__(write_interval="batch")
        if nan_policy not in NAN_POLICIES:
            raise LocalizerError(f"unknown nan policy {nan_policy!r}; choose one of {', '.join(NAN_POLICIES)}")
        if mode not in ("auto", "resume", "fresh"):
            raise LocalizerError(f"unknown mode {mode!r}; choose auto, resume or fresh")
        if segment_mb <= 0 or segment_minutes <= 0:
            raise LocalizerError("segment size and age must be positive")
        self.out = Path(out)
        self.metadata = dict(metadata or {})
        self.n_stimuli = n_stimuli
        self.resume_key = None if n_stimuli is None else resume_key
        self.mode = mode
        self.segment_bytes, self.segment_seconds = segment_mb * 2 ** 20, segment_minutes * 60
        self.nan_policy = nan_policy
        self.resumed_rows = 0
        self._segment: _SegmentWriter | None = None
        self._seq = self._attempt = 0
        self._done: np.ndarray | None = None
        self._nonfinite: list[tuple[str, int]] = []  # the first (layer, stimulus) with NaN/inf, under "allow"
        self._nonfinite_rows = 0
        self._lock: _RunLock | None = None
        self._units: dict[str, int] = {}
        self._launcher_pid = os.getppid()  # read before any launcher can die (a DDP child builds this first)
        self._ppid: int | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        plan = error = None
        if trainer.is_global_zero:
            try:
                self._lock = _RunLock(shard_dir(self.out))
                if not self._lock.acquire(exclusive=True):
                    raise LocalizerError(f"another extraction is still writing into {shard_dir(self.out)} (or a "
                                         f"process of a killed one is still alive); stop it first")
                plan = plan_resume(self.out, self.resume_key, self.mode)
                self._lock.acquire(exclusive=False)
            except Exception as e:  # any failure here must reach every rank, or they wait forever
                error = str(e) if isinstance(e, LocalizerError) else f"{type(e).__name__}: {e}"
        error, plan = trainer.strategy.broadcast((error, plan), src=0)
        if error:
            raise LocalizerError(error)
        if not trainer.is_global_zero:
            self._lock = _RunLock(shard_dir(self.out))
            self._lock.acquire(exclusive=False)
            self._ppid = self._launcher_pid  # Lightning's rank 0, torchrun or srun: if it dies, stop
        self._attempt, done, units = plan
        self._units = dict(units)
        self._seq, self.resumed_rows = 0, len(done)
        self._nonfinite, self._nonfinite_rows = [], 0
        self._done = None
        if len(done):
            self._done = np.zeros(self.n_stimuli, dtype=bool)
            self._done[done] = True
            restrict = getattr(trainer.datamodule, "restrict", None)
            if restrict is not None:
                todo = np.flatnonzero(~self._done)
                if len(todo) < trainer.world_size:  # every rank needs a batch to reach on_predict_end
                    todo = np.sort(np.concatenate([todo, done[: trainer.world_size - len(todo)]]))
                restrict(todo)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        if self._ppid is not None and os.getppid() != self._ppid:
            raise LocalizerError(f"rank {trainer.global_rank}: the process that launched it has died; stopping "
                                 f"(committed segments are kept; rerun the command to resume)")
        index = batch["index"].cpu().numpy().astype(np.int64)
        acts = _to_numpy(prediction)
        positive, split = batch["positive"].cpu().numpy(), batch.get("split")
        if self._done is not None:
            keep = ~self._done[index]
            if not keep.all():
                index, positive = index[keep], positive[keep]
                split = None if split is None else [s for s, k in zip(split, keep) if k]
                acts = {layer: a[keep] for layer, a in acts.items()}
            if not len(index):
                return
        self._check_finite(index, acts)
        if self._segment is None:
            name = f"part-{self._attempt:04d}-{trainer.global_rank:05d}-{self._seq:06d}.h5"
            self._segment = _SegmentWriter(shard_dir(self.out) / name, max_bytes=self.segment_bytes,
                                           units=self._units)
        self._segment.append(index, positive, split, acts)
        if (self._segment.nbytes >= self.segment_bytes
                or time.monotonic() - self._segment.started >= self.segment_seconds):
            self._commit(trainer, pl_module)

    def _commit(self, trainer, pl_module) -> None:
        def before_rename():
            _failpoint(f"before-commit:{self._seq}", trainer.global_rank)
            attempt = (_read_manifest(shard_dir(self.out)) or {}).get("attempt")
            if attempt != self._attempt:  # a later run took over this folder (where flock does not work)
                raise LocalizerError(f"{shard_dir(self.out)} now belongs to another extraction (attempt {attempt}); "
                                     f"this one (attempt {self._attempt}) stops")

        self._segment.commit(list(getattr(pl_module, "layers", [])), before_rename)
        self._segment = None
        _failpoint(f"after-commit:{self._seq}", trainer.global_rank)
        self._seq += 1

    def _check_finite(self, index: np.ndarray, acts: dict[str, np.ndarray]) -> None:
        bad_any = np.zeros(len(index), dtype=bool)
        for layer, a in acts.items():
            bad_rows = ~np.isfinite(a).all(axis=1)
            if bad_rows.any():
                first, count = int(index[np.argmax(bad_rows)]), int(bad_rows.sum())
                if self.nan_policy == "error":
                    more = f" (and {count - 1} more stimuli of this batch)" if count > 1 else ""
                    raise LocalizerError(f"layer {layer!r} gave NaN/inf activations for stimulus {first}{more}; "
                                         f"check the model and inputs, or record them with --nan_policy allow")
                if not self._nonfinite:
                    self._nonfinite.append((layer, first))
                bad_any |= bad_rows
        self._nonfinite_rows += int(bad_any.sum())

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self._segment is not None:  # an error, not a crash: nothing in the open segment is kept
            self._segment.discard()
            self._segment = None
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def on_predict_end(self, trainer, pl_module) -> None:
        if self._segment is not None:
            self._commit(trainer, pl_module)
        if self._nonfinite:
            layer, first = self._nonfinite[0]
            import warnings

            warnings.warn(f"rank {trainer.global_rank}: {self._nonfinite_rows} recorded rows hold NaN/inf activations "
                          f"(first: layer {layer!r}, stimulus {first}); `localizer check {self.out}` lists them")
        try:
            trainer.strategy.barrier()
        except RuntimeError as e:  # a rank died: what is committed stays, the rerun resumes
            self._release()
            raise LocalizerError(f"rank {trainer.global_rank}: another process of this job stopped before the end "
                                 f"({' '.join(str(e).split())[:120]}); rerun the command to resume") from e
        error = None
        if trainer.is_global_zero:
            try:
                write_master(self.out, self._n_stimuli(trainer), self._metadata(pl_module),
                             before_rename=lambda: _failpoint("before-master", 0))
            except Exception as e:  # any failure here must reach every rank, or they wait forever
                error = str(e) if isinstance(e, LocalizerError) else f"{type(e).__name__}: {e}"
        error = trainer.strategy.broadcast(error, src=0)
        self._release()
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
