"""The ablation LightningModule, its data module, and the conditions it evaluates.

:class:`AblationModule` evaluates every condition (``baseline``, ``localized``, ``<kind>_<i>`` controls, optional
sweep conditions) inside one ``trainer.validate`` pass, batch by batch: data are prepared once, and ``agreement`` can
compare each condition with the baseline on the same batch. Metric states are float64 sums synced once at the end,
and under DDP the data are split with an unrepeated sampler, so every sample counts exactly once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from localizer.ablation.masking import silence, unit_edits
from localizer.ablation.tasks import SumStates, Task
from localizer.errors import LocalizerError, opt
from localizer.recording.calling import ModelCaller
from localizer.recording.datamodule import IndexedRows
from localizer.selection.options import SelectionOptions
from localizer.selection.result import Selection
from localizer.selection.rules import draw_controls, select_units


@dataclass
class Condition:
    """One way of running the model: ``edits`` from :func:`localizer.ablation.masking.unit_edits` (None = untouched).

    ``group`` is ``baseline``, ``localized`` or a control kind; ``sweep`` the top-% of a sweep point (else None).
    """

    name: str
    group: str
    edits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None
    sweep: str | None = None
    n_units: int | None = None


class AblationModule(L.LightningModule):
    """Evaluate a task under several masking conditions in one validation pass.

    Args:
        model: the network (eval mode; weights untouched).
        task: a :class:`localizer.ablation.tasks.Task`.
        conditions: the conditions; the first must be the baseline (no edits).
        pooling: the pooling of the selection (where each unit lives in a layer output).
        modality: ``"text"`` or ``"image"``.

    After ``trainer.validate``, ``results`` maps condition name → ``{metric: value}`` on every rank.
    """

    def __init__(self, model: nn.Module, task: Task, conditions: list[Condition], pooling: str, modality: str):
        super().__init__()
        if not conditions or conditions[0].edits is not None:
            raise ValueError("the first condition must be the baseline (no edits)")
        self.model, self.task, self.conditions, self.pooling = model.eval(), task, conditions, pooling
        self.call_model = ModelCaller(model, modality)
        self.states: list[SumStates] = nn.ModuleList([SumStates(task.sums()) for _ in conditions])  # type: ignore[assignment]
        self.results: dict[str, dict[str, float]] | None = None
        self.progress = False  # a progress bar (rank 0) that names the condition being evaluated
        self._bar: Any = None

    def on_validation_start(self) -> None:
        if self.progress and self.trainer.is_global_zero:
            from tqdm.auto import tqdm

            batches = int(sum(self.trainer.num_val_batches))
            self._bar = tqdm(
                total=batches * len(self.conditions), desc=f"ablation {self.task.name}", unit="condition", leave=False
            )

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        baseline = self.task.output(self.call_model, batch)
        n_batches = int(sum(self.trainer.num_val_batches)) if self._bar is not None else 0
        for c, states in zip(self.conditions, self.states):
            if self._bar is not None:
                self._bar.set_description(
                    f"ablation {self.task.name}: {c.name} (batch {batch_idx + 1}/{n_batches})", refresh=False
                )
            if c.edits is None:
                out = baseline
            else:
                with silence(self.model, c.edits, self.pooling):
                    out = self.task.output(self.call_model, batch)
            self.task.update(states, out, baseline, batch)
            if self._bar is not None:
                self._bar.update(1)

    def on_validation_end(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_validation_epoch_end(self) -> None:
        self.results = {c.name: self.task.finalize(s.compute()) for c, s in zip(self.conditions, self.states)}
        for s in self.states:
            s.reset()


class AblationDataModule(L.LightningDataModule):
    """Task data for ``trainer.validate``; under DDP each rank gets rows r, r+W, ... (no padding, no repeats),
    a ``DistributedSampler`` subclass that Lightning keeps whatever ``use_distributed_sampler`` says."""

    def __init__(self, task: Task, data, batch_size: int = 16, num_workers: int = 0):
        super().__init__()
        self.task, self.data, self.batch_size, self.num_workers = task, data, batch_size, num_workers

    def val_dataloader(self) -> DataLoader:
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        rows = IndexedRows(self.data, self.task.columns)
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = UnrepeatedDistributedSampler(
                rows, num_replicas=torch.distributed.get_world_size(), rank=torch.distributed.get_rank(), shuffle=False
            )
        return DataLoader(
            rows,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            collate_fn=self.task.collate,
            num_workers=self.num_workers,
        )


# --- conditions --------------------------------------------------------------------------------------------------


def build_conditions(
    selection: Selection, method: str, kinds: list[str], n_controls: int | None, sweep: list[str] | None = None
) -> list[Condition]:
    """Conditions from a :class:`Selection`.

    Args:
        selection: the selection (read from its file).
        method: ``zero``, ``mean`` or ``scale=F``.
        kinds: control kinds to use (each must be stored in the selection).
        n_controls: use the first N stored sets of each kind (None: all).
        sweep: top-% values; each re-selects the global top k% from the stored t (same abs/alternative) and draws
            controls with the selection's seed, as ``localizer select`` does.
    """
    means = selection.per_layer(selection.stats["mean_all"])

    def edits(mask: np.ndarray):
        return unit_edits(selection.per_layer(mask), method, means)

    conditions = [Condition("baseline", "baseline", None), Condition("localized", "localized", edits(selection.mask))]
    for kind in kinds:
        stored = selection.controls.get(kind, [])
        if not stored:
            raise LocalizerError(
                f"the selection file has no {kind} controls; rerun localizer select with "
                f"{opt('controls', 'N', step='select')}"
            )
        if n_controls is not None and n_controls > len(stored):
            raise LocalizerError(
                f"{opt('n_controls', n_controls)} but the selection file stores {len(stored)} {kind} sets"
            )
        use = stored if n_controls is None else stored[:n_controls]
        conditions += [Condition(f"{kind}_{i}", kind, edits(c)) for i, c in enumerate(use)]
    if sweep:
        per_kind = (
            n_controls if n_controls is not None else min(len(selection.controls[k]) for k in kinds) if kinds else 0
        )
        conditions += sweep_conditions(selection, sweep, method, kinds, per_kind)
    return conditions


def sweep_conditions(
    selection: Selection, percents: list[str], method: str, kinds: list[str], n_controls: int
) -> list[Condition]:
    """For each top-% value: the re-selected global top k% and ``n_controls`` controls of each kind."""
    layout, stats = selection.layout, selection.stats
    means = selection.per_layer(stats["mean_all"])
    stored = json.loads(selection.attrs["selection"])
    out = []
    for pct in percents:
        opts = SelectionOptions(
            top=pct,
            alternative=stored.get("alternative", "greater"),
            statistic=stored.get("statistic", "welch"),
            seed=stored.get("seed", 0),
        )
        mask = select_units(stats["t"], stats["q"], selection.valid, layout, opts, statistic=opts.ranking(stats))
        controls = draw_controls(mask, selection.valid, layout, stats["mean_abs_all"], n_controls, opts.seed + 1, kinds)
        tag = f"sweep{opts.top}"
        edits = unit_edits(layout.split(mask), method, means)
        out.append(Condition(f"{tag}_localized", "localized", edits, opts.top, int(mask.sum())))
        for kind in kinds:
            out += [
                Condition(f"{tag}_{kind}_{i}", kind, unit_edits(layout.split(c), method, means), opts.top)
                for i, c in enumerate(controls[kind])
            ]
    return out
