"""HDF5ActivationWriter: the Lightning prediction writer that streams activations into resumable segments.

See :mod:`localizer.files.activations` for the files it writes and :mod:`localizer.files.resume` for how a rerun
continues.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from localizer.distributed import failpoint, on_rank_zero
from localizer.errors import LocalizerError, opt
from localizer.files.activations import segment_dir, write_master
from localizer.files.resume import RunLock, check_segment_folder, plan_resume, read_manifest
from localizer.files.segments import BUFFER_BYTES, SegmentWriter

NAN_POLICIES = ("error", "allow")
LAYOUTS = ("single", "virtual")


def _to_numpy(prediction: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """``{layer: [B, U_layer]}`` tensors → float32 arrays on the host, with one device-to-host copy per batch."""
    layers = list(prediction)
    tensors = [prediction[layer].detach() for layer in layers]
    if all(t.device.type == "cpu" for t in tensors):
        return {layer: t.to(torch.float32).numpy() for layer, t in zip(layers, tensors)}
    flat = torch.cat([t.to(torch.float32) for t in tensors], dim=1).cpu().numpy()
    return dict(zip(layers, np.split(flat, np.cumsum([t.shape[1] for t in tensors])[:-1], axis=1)))


class HDF5ActivationWriter(BasePredictionWriter):
    """Stream the recorder's per-batch activations to resumable per-rank segments; rank 0 then writes the master.

    Args:
        out: the master file path (``.h5``).
        metadata: root attributes to record (``model``, ``model_class``, ``pooling``); by default read from the
            LightningModule (:class:`localizer.recording.recorder.ActivationRecorder`).
        n_stimuli: the dataset size N; by default the length of the predict dataloader's dataset.
        resume_key: what determines the recorded values (see :func:`localizer.files.resume.plan_resume`); with it
            (and ``n_stimuli``) a rerun skips the rows already committed. Without it every run starts over.
        mode: ``"auto"``, ``"resume"`` or ``"fresh"`` (see :func:`localizer.files.resume.plan_resume`).
        segment_mb / segment_minutes: commit the open segment when it holds this many MB of activations or is this
            old (a crash loses at most that much work per rank).
        nan_policy: ``"error"`` stop at the first NaN/inf activation, naming the layer and the stimulus index;
            ``"allow"`` record them and warn at the end (``localizer check`` lists them; ``localizer select``
            refuses such a file).
        layout: ``"single"`` pack the finished file into one self-contained file and delete the segments
            (:mod:`localizer.files.pack`); ``"virtual"`` keep the master's virtual datasets over the segments.
        stimulus: what each of the N rows shows (text, image path or id), stored as ``/stimulus``.
        columns: more per-row datasets ``{name: [N] values}`` (e.g. ``n_tokens``).

    The batch must carry ``index`` ``[B]`` and ``positive`` ``[B]`` (and ``split`` when present), as
    :class:`localizer.recording.datamodule.LocalizerDataModule` makes them; the prediction is
    ``{layer: [B, U_layer]}``. When the
    datamodule has a ``restrict(indices)`` method (LocalizerDataModule does), a resumed run only computes the rows
    that are missing; otherwise rows already recorded are computed and dropped.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        metadata: dict[str, Any] | None = None,
        n_stimuli: int | None = None,
        *,
        resume_key: dict[str, Any] | None = None,
        mode: str = "auto",
        segment_mb: float = 1024.0,
        segment_minutes: float = 10.0,
        nan_policy: str = "error",
        layout: str = "single",
        stimulus: list[str] | None = None,
        columns: dict[str, Any] | None = None,
        window_rows: int | None = None,
    ):
        super().__init__(write_interval="batch")
        if layout not in LAYOUTS:
            raise LocalizerError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
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
        self.segment_bytes, self.segment_seconds = segment_mb * 2**20, segment_minutes * 60
        self.nan_policy = nan_policy
        self.layout = layout
        self.columns = {**({} if stimulus is None else {"stimulus": stimulus}), **(columns or {})}
        self._segment: SegmentWriter | None = None
        self.window_rows = window_rows  # rows served batched by length: written (and committed) a window at a time
        self._served = 0
        self._seq = self._attempt = 0
        self._done: np.ndarray | None = None
        self._first_nonfinite: tuple[str, int] | None = None  # (layer, stimulus), under "allow"
        self._nonfinite_rows = 0
        self._lock: RunLock | None = None
        self._units: dict[str, int] = {}
        self._launcher_pid = os.getppid()  # read before any launcher can die (a DDP child builds this first)
        self._ppid: int | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "predict":  # the same Trainer may run validate/test later: never plan (and wipe) a run there
            return

        def make_plan():
            check_segment_folder(self.out)  # before the lock file is created in it
            self._lock = RunLock(segment_dir(self.out))
            if not self._lock.acquire(exclusive=True):
                raise LocalizerError(
                    f"another extraction is still writing into {segment_dir(self.out)} (or a "
                    f"process of a killed one is still alive); stop it first"
                )
            result = plan_resume(self.out, self.resume_key, self.mode)
            self._lock.acquire(exclusive=False)
            return result

        try:
            plan = on_rank_zero(trainer, make_plan)
        except LocalizerError:
            self._release()
            raise
        if not trainer.is_global_zero:
            self._lock = RunLock(segment_dir(self.out))
            self._lock.acquire(exclusive=False)
            self._ppid = self._launcher_pid  # Lightning's rank 0, torchrun or srun: if it dies, stop
        self._attempt, done, units = plan
        self._units = dict(units)
        self._seq = self._served = 0
        self._first_nonfinite, self._nonfinite_rows = None, 0
        self._done = None
        if len(done):
            self._done = np.zeros(self._n_stimuli(trainer), dtype=bool)
            self._done[done] = True
            restrict = getattr(trainer.datamodule, "restrict", None)
            if restrict is not None:
                todo = np.flatnonzero(~self._done)
                if len(todo) < trainer.world_size:  # every rank needs a batch to reach on_predict_end
                    todo = np.sort(np.concatenate([todo, done[: trainer.world_size - len(todo)]]))
                restrict(todo)

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if self._ppid is not None and os.getppid() != self._ppid:
            raise LocalizerError(
                f"rank {trainer.global_rank}: the process that launched it has died; stopping "
                f"(committed segments are kept; rerun the command to resume)"
            )
        index = batch["index"].cpu().numpy().astype(np.int64)
        self._served += len(index)
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
            buffer = BUFFER_BYTES if self.window_rows is None else float("inf")  # (by length: flushed per window)
            self._segment = SegmentWriter(
                segment_dir(self.out) / name, max_bytes=self.segment_bytes, units=self._units, buffer_bytes=buffer
            )
        self._segment.append(index, positive, split, acts)
        if self.window_rows is not None:
            if self._served % self.window_rows:
                return  # mid-window: its rows are written together, back in dataset order
            self._segment.write_behind()  # (a commit below waits for it)
        if (
            self._segment.nbytes >= self.segment_bytes
            or time.monotonic() - self._segment.started >= self.segment_seconds
        ):
            self._commit(trainer, pl_module)

    def _commit(self, trainer, pl_module) -> None:
        def before_rename():
            failpoint(f"before-commit:{self._seq}", trainer.global_rank)
            attempt = (read_manifest(segment_dir(self.out)) or {}).get("attempt")
            if attempt != self._attempt:  # a later run took over this folder (where flock does not work)
                raise LocalizerError(
                    f"{segment_dir(self.out)} now belongs to another extraction (attempt {attempt}); "
                    f"this one (attempt {self._attempt}) stops"
                )

        assert self._segment is not None
        self._segment.commit(list(getattr(pl_module, "layers", [])), before_rename)
        self._segment = None
        failpoint(f"after-commit:{self._seq}", trainer.global_rank)
        self._seq += 1

    def _check_finite(self, index: np.ndarray, acts: dict[str, np.ndarray]) -> None:
        bad_any = np.zeros(len(index), dtype=bool)
        for layer, a in acts.items():
            bad_rows = ~np.isfinite(a).all(axis=1)
            if bad_rows.any():
                first, count = int(index[np.argmax(bad_rows)]), int(bad_rows.sum())
                if self.nan_policy == "error":
                    more = f" (and {count - 1} more stimuli of this batch)" if count > 1 else ""
                    raise LocalizerError(
                        f"layer {layer!r} gave NaN/inf activations for stimulus {first}{more}; "
                        f"check the model and inputs, or record them with {opt('nan_policy', 'allow')}"
                    )
                self._first_nonfinite = self._first_nonfinite or (layer, first)
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
        if self._first_nonfinite:
            layer, first = self._first_nonfinite
            import warnings

            warnings.warn(
                f"rank {trainer.global_rank}: {self._nonfinite_rows} recorded rows hold NaN/inf activations "
                f"(first: layer {layer!r}, stimulus {first}); `localizer check {self.out}` lists them",
                stacklevel=2,
            )
        try:
            trainer.strategy.barrier()
        except RuntimeError as e:  # a rank died: what is committed stays, the rerun resumes
            self._release()
            raise LocalizerError(
                f"rank {trainer.global_rank}: another process of this job stopped before the end "
                f"({' '.join(str(e).split())[:120]}); rerun the command to resume"
            ) from e

        def finish() -> None:
            write_master(
                self.out,
                self._n_stimuli(trainer),
                self._metadata(pl_module),
                before_rename=lambda: failpoint("before-master", 0),
                columns=self.columns,
            )
            if self.layout == "single":
                from localizer.files.pack import pack

                failpoint("before-pack", 0)
                pack(self.out, held=True)  # every rank holds the folder's lock until this returns
            else:  # the run is complete: no lock file is left behind (flock holders keep working on the inode)
                (segment_dir(self.out) / "lock").unlink(missing_ok=True)

        try:
            on_rank_zero(trainer, finish)
        finally:
            self._release()

    def _n_stimuli(self, trainer) -> int:
        if self.n_stimuli is not None:
            return self.n_stimuli
        loaders = trainer.predict_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        return len(loader.dataset)

    def _metadata(self, pl_module) -> dict[str, Any]:
        meta = {
            key: getattr(pl_module, attr, "")
            for key, attr in (("model", "model_name"), ("model_class", "model_class"), ("pooling", "pooling"))
        }
        meta["layers"] = list(getattr(pl_module, "layers", []))
        meta.update(self.metadata)
        return meta
