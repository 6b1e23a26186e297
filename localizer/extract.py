"""The record step in one call: stimuli + model → activation file (see :mod:`localizer.storage`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from localizer.errors import LocalizerError

TRAINER_DEFAULTS = dict(logger=False, enable_checkpointing=False, enable_model_summary=False)


def extract(model: str | Any, stimuli: str | Any, out: str | os.PathLike, *, layers: str | list[str] = "auto",
            pooling: str | None = None, batch_size: int = 32, control: str | None = None,
            tokenizer: str | None = None, transform: str | Callable | None = None, padding_side: str = "right",
            max_length: int | None = None, num_workers: int = 0, overwrite: bool = False,
            trust_remote_code: bool = False, trainer: dict[str, Any] | None = None,
            selection: tuple[str | os.PathLike, Any] | None = None, source: str | None = None,
            resume: bool = False, segment_mb: float = 1024.0, nan_policy: str = "error") -> Path:
    """Record pooled activations of ``model`` on ``stimuli`` into the HDF5 file ``out``.

    Args:
        model: short name, local ``save_pretrained`` directory, hub id, ``package.module:callable``, or a
            :class:`localizer.models.LoadedModel`.
        stimuli: a source for :func:`localizer.stimuli.load_stimuli` or a ``datasets.Dataset``.
        out: the master activation file to write.
        layers: ``"auto"``, module names or glob patterns.
        pooling: ``last``/``mean`` (text), ``channel``/``flat``/``mean`` (images); default by modality.
        batch_size: stimuli per forward pass.
        control: with a two-source stimulus set, the control source.
        tokenizer / transform / padding_side / max_length / trust_remote_code: see :func:`localizer.models.load_model`.
        num_workers: DataLoader workers.
        overwrite: replace an existing ``out`` and discard any partial extraction into it.
        resume: require a partial extraction to continue (an error when there is none; a no-op when ``out`` is
            complete). Without it, a partial extraction made with the same settings is continued anyway.
        segment_mb: commit recorded rows every this many MB per rank (a crash loses at most one segment per rank).
        nan_policy: ``error`` (stop at the first NaN/inf, naming layer and stimulus) or ``allow``.
        trainer: keyword arguments for ``lightning.Trainer`` (``accelerator``, ``devices``, ``strategy``,
            ``num_nodes``, ...).
        selection: ``(path, SelectionOptions)`` to also compute the selection online (a
            :class:`localizer.selectivity.SelectivityCallback`) and write it to ``path``; TensorBoard logs then go to
            ``lightning_logs/`` unless ``trainer`` names a logger.
        source: the name to record as the stimulus source when ``stimuli`` is a dataset (e.g. a built-in name).

    Returns:
        the path of the master file.
    """
    import lightning as L

    from localizer.data import LocalizerDataModule
    from localizer.models import LoadedModel, load_model
    from localizer.recording import ActivationRecorder
    from localizer.stimuli import fingerprint, load_stimuli, modality, validate_stimuli
    from localizer.resume import check_partial, committed_rows
    from localizer.writer import NAN_POLICIES, HDF5ActivationWriter

    if nan_policy not in NAN_POLICIES:
        raise LocalizerError(f"unknown --nan_policy {nan_policy!r}; choose one of {', '.join(NAN_POLICIES)}")
    if not segment_mb > 0:
        raise LocalizerError(f"--segment_mb must be positive, got {segment_mb}")
    out = Path(out)
    if resume and not overwrite and out.exists():
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(f"{out} is complete; nothing to resume")
        return out
    check_output(out, overwrite)
    prior = 0 if overwrite else committed_rows(out)
    if resume and not prior:
        raise LocalizerError(f"{out}: nothing to resume (no recorded segments); run without --resume")
    provenance = {"stimuli": source} if source else {}
    if isinstance(stimuli, (str, os.PathLike)):
        provenance = {"stimuli": _source_name(stimuli), "control": _source_name(control) if control else None}
        stimuli = load_stimuli(stimuli, control)
    else:
        stimuli = validate_stimuli(stimuli)
    kind = modality(stimuli)
    loaded = model if isinstance(model, LoadedModel) else load_model(
        str(model), kind, tokenizer=tokenizer, transform=transform, padding_side=padding_side,
        trust_remote_code=trust_remote_code)
    recorder = ActivationRecorder(loaded.model, layers, pooling, modality=kind, model_name=loaded.name,
                                  model_class=loaded.model_class)
    data = LocalizerDataModule(stimuli, loaded.processor, loaded.transform, batch_size=batch_size,
                               num_workers=num_workers, max_length=max_length)
    kwargs = {**TRAINER_DEFAULTS, **(trainer or {})}
    key = {"format_version": 1, "model": _source_name(loaded.name), "model_class": loaded.model_class,
           "weights": weights_fingerprint(loaded.model), "layers": recorder.layers, "pooling": recorder.pooling,
           "n_stimuli": len(stimuli), "stimuli": fingerprint(stimuli), "max_length": max_length,
           "tokenizer": tokenizer, "transform": transform if isinstance(transform, str) or transform is None
           else getattr(transform, "__qualname__", type(transform).__name__), "padding_side": padding_side,
           "precision": str((trainer or {}).get("precision") or "32-true"), "nan_policy": nan_policy}
    mode = "fresh" if overwrite else "resume" if resume else "auto"
    if prior:
        check_partial(out, key)  # before any process starts; the writer checks again, race-free, on rank 0
    writer = HDF5ActivationWriter(out, provenance, n_stimuli=len(stimuli), resume_key=key, mode=mode,
                                  segment_mb=segment_mb, nan_policy=nan_policy)
    kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [writer]
    if prior:
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(f"resuming {out}: {prior} of {len(stimuli)} stimuli already recorded")
    if selection is not None:
        check_output(Path(selection[0]), overwrite)
    if selection is not None and not prior:
        from localizer.selectivity import SelectivityCallback

        kwargs["callbacks"].append(SelectivityCallback(selection[0], selection[1], metadata=provenance))
        if kwargs.get("logger") is False and "logger" not in (trainer or {}):
            from lightning.pytorch.loggers import TensorBoardLogger

            kwargs["logger"] = TensorBoardLogger("lightning_logs", name="extract")
    trainer_ = L.Trainer(**kwargs)
    if trainer_.world_size > len(stimuli):
        raise LocalizerError(f"{trainer_.world_size} processes for {len(stimuli)} stimuli: use at most "
                             f"{len(stimuli)} devices x nodes")
    trainer_.predict(recorder, datamodule=data, return_predictions=False)
    if selection is not None and prior and trainer_.is_global_zero:  # the online statistics saw only this attempt
        from localizer.selectivity import select_from_file

        select_from_file(out, selection[0], selection[1])
    return out


def weights_fingerprint(model) -> str:
    """SHA-256 over every parameter's and buffer's name, shape, dtype and first 4096 values (cheap for any size)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in tensors:
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        if t.device.type != "meta":  # a meta tensor has no values
            head = t.detach().reshape(-1)[:4096].to("cpu")
            h.update((head.float() if head.dtype == torch.bfloat16 else head).numpy().tobytes())
    return h.hexdigest()


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an existing output without ``overwrite``; create missing folders; refuse unwritable ones."""
    if out.exists() and not overwrite:
        raise LocalizerError(f"{out} exists; pass --overwrite to replace it")
    if out.is_dir():
        raise LocalizerError(f"{out} is a directory; give a file path for the output")
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise LocalizerError(f"cannot write {out}: {parent} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LocalizerError(f"cannot create the output folder {parent}: {e.strerror}") from e
    import tempfile

    try:  # a real probe: permission bits say nothing for root or on read-only mounts
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".localizer-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise LocalizerError(f"output folder {parent} is not writable ({e.strerror})") from e


def _source_name(source: str | os.PathLike) -> str:
    """A local path as an absolute path (so later commands find it from anywhere); anything else as given."""
    p = Path(source)
    return str(p.resolve()) if p.exists() else str(source)
