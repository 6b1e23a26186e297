"""The online selection: a Lightning callback that updates unit statistics while ``trainer.predict`` records."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from localizer.distributed import failpoint, on_rank_zero
from localizer.selection.compute import finish_selection
from localizer.selection.metric import LOCALIZE, VALIDATION, UnitStatistics, half_assignment
from localizer.selection.options import SelectionOptions
from localizer.selection.result import Selection
from localizer.selection.rules import UnitLayout


class SelectivityCallback(Callback):
    """Update unit statistics from the recorder's pooled activations during ``trainer.predict``; at the end, sync
    them across ranks, select the network and its controls, and write the selection file (rank 0).

    Works with or without :class:`localizer.files.writer.HDF5ActivationWriter` in the same run. Expects batches from
    :class:`localizer.recording.datamodule.LocalizerDataModule` (``index``, ``positive``, optional ``split``) and
    predictions ``{layer: [B, U_layer]}``.

    Args:
        out: the selection file to write.
        options: selection rule, controls, ``abs``/``alternative``, split-half.
        log_to_tensorboard: histograms of t per layer and the fraction selected, through ``trainer.logger``.
        metadata: extra root attributes for the selection file (e.g. ``stimuli``, the stimulus source).
    """

    def __init__(
        self,
        out: str | os.PathLike,
        options: SelectionOptions | None = None,
        log_to_tensorboard: bool = True,
        metadata: dict[str, Any] | None = None,
    ):
        self.out = Path(out)
        self.metadata = dict(metadata or {})
        self.options = options or SelectionOptions()
        self.log_to_tensorboard = log_to_tensorboard
        self.result: Selection | None = None

    def on_predict_start(self, trainer, pl_module) -> None:
        loaders = trainer.predict_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        self.n_stimuli = len(loader.dataset)
        example = loader.collate_fn([loader.dataset[0]])  # one stimulus: learn the unit counts on every rank
        example = pl_module.transfer_batch_to_device(example, pl_module.device, 0)
        with torch.inference_mode():
            units = {layer: a.shape[1] for layer, a in pl_module(example).items()}
        self.layout = UnitLayout(list(units), list(units.values()))
        self.stats = UnitStatistics(self.layout.total, 2).to(pl_module.device)
        self.halves = UnitStatistics(self.layout.total, 2).to(pl_module.device) if self.options.split_half else None
        self.half_of = torch.from_numpy(half_assignment(self.n_stimuli, self.options.seed)).to(pl_module.device)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        x = torch.cat([outputs[layer] for layer in self.layout.layers], dim=1)
        group = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        if "split" in batch and self.options.rows == "localize":
            group = torch.tensor(
                [VALIDATION if s == "validation" else LOCALIZE for s in batch["split"]], device=x.device
            )
        self.stats.update(x, batch["positive"], group)
        if self.halves is not None:
            halves = torch.where(group == LOCALIZE, self.half_of[batch["index"].to(x.device)], -1)
            self.halves.update(x, batch["positive"], halves)

    def on_predict_end(self, trainer, pl_module) -> None:
        moments = self.stats.compute()  # collective: every rank takes part
        halves = self.halves.compute() if self.halves is not None else None

        def finish() -> None:
            has_val = bool(moments["signed"].n[VALIDATION].sum() > 0)
            meta = {
                "source": "online",
                "pooling": getattr(pl_module, "pooling", ""),
                "model": getattr(pl_module, "model_name", ""),
                "model_class": getattr(pl_module, "model_class", ""),
                **self.metadata,
            }
            self.result = finish_selection(self.layout, moments, halves, self.options, has_val, meta)
            failpoint("before-selection-write", trainer.global_rank)
            self.result.write(self.out)
            if self.log_to_tensorboard and trainer.logger is not None:
                from localizer.report import log_selectivity

                log_selectivity(trainer.logger.experiment, self.result)

        on_rank_zero(trainer, finish)
