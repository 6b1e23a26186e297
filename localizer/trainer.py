"""The Lightning Trainer options that every command takes (``--trainer.devices 2 --trainer.strategy ddp``).

Light on purpose: the command line is built from :class:`TrainerOptions` without importing Lightning. Options that
concern training (epochs, gradient clipping, checkpoints, ...) do not exist here: localizer only predicts and
validates.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any, Literal, Optional, Union

from localizer.errors import LocalizerError, first_line

# what localizer changes in Lightning's defaults: no checkpoints, no model summary; loggers are chosen per command
TRAINER_DEFAULTS: dict[str, Any] = dict(logger=False, enable_checkpointing=False, enable_model_summary=False)


Precision = Literal["64-true", "64", "32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true",
                   "transformer-engine", "transformer-engine-float16"]  # fmt: skip


@dataclass
class TrainerOptions:
    """Lightning Trainer options.

    Args:
        accelerator: cpu, gpu, cuda, mps, tpu or auto (the best one available).
        devices: devices per node: a number, a list of device ids, "auto", or -1 for all.
        strategy: how processes share the work: auto, ddp, ddp_spawn, fsdp, ... (ddp for several devices).
        num_nodes: machines taking part (with torchrun or SLURM).
        precision: numeric precision, e.g. 32-true (Lightning's default), bf16-mixed, 16-mixed.
        enable_progress_bar: show a progress bar.
        enable_model_summary: print Lightning's summary of the model's parameters.
    """

    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps", "tpu"] = "auto"
    devices: Union[int, str, list[int]] = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: Optional[Precision] = None
    enable_progress_bar: bool = True
    enable_model_summary: bool = False


def trainer_kwargs(trainer: dict[str, Any] | TrainerOptions | None) -> dict[str, Any]:
    """Keyword arguments for ``lightning.Trainer``: localizer's defaults, then ``trainer`` (None values dropped,
    so that Lightning's own defaults apply)."""
    if isinstance(trainer, TrainerOptions):
        trainer = asdict(trainer)
    return {**TRAINER_DEFAULTS, **{k: v for k, v in (trainer or {}).items() if v is not None}}


def build_trainer(kwargs: dict[str, Any]):
    """``lightning.Trainer(**kwargs)``; options that Lightning refuses (``devices=0``, an accelerator this machine
    lacks, an unknown strategy) are one :class:`LocalizerError` naming them."""
    import lightning as L

    from localizer.quiet import quiet_lightning

    quiet_lightning()
    try:
        return L.Trainer(**kwargs)
    except Exception as e:  # Lightning refuses bad options with MisconfigurationException, ValueError, ...
        shown = {k: v for k, v in kwargs.items() if k in TrainerOptions.__dataclass_fields__}
        raise LocalizerError(f"invalid trainer options {shown}: {' '.join(first_line(e).split())}") from e


@contextlib.contextmanager
def frozen_heap():
    """Python's collector skips every object alive before a predict or validate loop (``gc.freeze``) while it
    runs: the loop makes many short-lived containers, and each full collection would otherwise walk the whole heap
    (the token lists, the model, the datasets) again — 10-15% of a small model's extraction time. Garbage made in
    the loop is still collected; the frozen objects are handed back to the collector after."""
    import gc

    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
