"""The causal test: rerun a task with the selected units silenced, against size-matched random controls.

:class:`AblationModule` evaluates every condition (``baseline``, ``localized``, ``<kind>_<i>`` controls, optional
sweep conditions) inside one ``trainer.validate`` pass, batch by batch: data are prepared once, and ``agreement`` can
compare each condition with the baseline on the same batch. Metric states are float64 sums synced once at the end,
and under DDP the data are split with an unrepeated sampler, so every sample counts exactly once.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from localizer.data import IndexedRows
from localizer.errors import LocalizerError
from localizer.masking import ablate, unit_edits
from localizer.models import ModelCaller
from localizer.selection import (CONTROL_KINDS, SelectionOptions, UnitLayout, draw_controls, read_selection,
                                 select_units)
from localizer.tasks import SumStates, Task


@dataclass
class Condition:
    """One way of running the model: ``edits`` from :func:`localizer.masking.unit_edits` (None = untouched).

    ``group`` is ``baseline``, ``localized`` or a control kind; ``sweep`` the top-% of a sweep point (else None).
    """

    name: str
    group: str
    edits: dict[str, tuple[torch.Tensor, torch.Tensor]] | None
    sweep: str | None = None


class AblationModule(L.LightningModule):
    """Evaluate a task under several masking conditions in one validation pass.

    Args:
        model: the network (eval mode; weights untouched).
        task: a :class:`localizer.tasks.Task`.
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
        self.states = nn.ModuleList([SumStates(task.sums()) for _ in conditions])
        self.results: dict[str, dict[str, float]] | None = None

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        baseline = self.task.output(self.call_model, batch)
        for c, states in zip(self.conditions, self.states):
            if c.edits is None:
                out = baseline
            else:
                with ablate(self.model, c.edits, self.pooling):
                    out = self.task.output(self.call_model, batch)
            self.task.update(states, out, baseline, batch)

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
            sampler = UnrepeatedDistributedSampler(rows, num_replicas=torch.distributed.get_world_size(),
                                                   rank=torch.distributed.get_rank(), shuffle=False)
        return DataLoader(rows, batch_size=self.batch_size, sampler=sampler, shuffle=False,
                          collate_fn=self.task.collate, num_workers=self.num_workers)


# --- conditions --------------------------------------------------------------------------------------------------

def build_conditions(selection: dict[str, Any], method: str, kinds: list[str], n_controls: int | None,
                     sweep: list[str] | None = None) -> list[Condition]:
    """Conditions from a selection file (:func:`localizer.selection.read_selection`).

    Args:
        selection: the read selection file.
        method: ``zero``, ``mean`` or ``scale=F``.
        kinds: control kinds to use (each must be stored in the file).
        n_controls: use the first N stored sets of each kind (None: all).
        sweep: top-% values; each re-selects the global top k% from the stored t (same abs/alternative) and draws
            controls with the file's seed, as ``localizer select`` does.
    """
    layers = selection["layers"]
    means = {layer: selection["stats"][layer]["mean_all"] for layer in layers}

    def edits(mask_per_layer):
        return unit_edits(mask_per_layer, method, means)

    conditions = [Condition("baseline", "baseline", None), Condition("localized", "localized",
                                                                       edits(selection["mask"]))]
    for kind in kinds:
        stored = selection["controls"].get(kind, [])
        if not stored:
            raise LocalizerError(f"the selection file has no {kind} controls; rerun localizer select with "
                                 f"--controls N")
        use = stored if n_controls is None else stored[:n_controls]
        if n_controls is not None and n_controls > len(stored):
            raise LocalizerError(f"--n-controls {n_controls} but the selection file stores {len(stored)} {kind} sets")
        conditions += [Condition(f"{kind}_{i}", kind, edits(c)) for i, c in enumerate(use)]
    if sweep:
        per_kind = n_controls if n_controls is not None else min(len(selection["controls"][k]) for k in kinds) \
            if kinds else 0
        conditions += sweep_conditions(selection, sweep, method, kinds, per_kind)
    return conditions


def sweep_conditions(selection: dict[str, Any], percents: list[str], method: str, kinds: list[str],
                     n_controls: int) -> list[Condition]:
    layers = selection["layers"]
    stats = selection["stats"]
    layout = UnitLayout(layers, [len(stats[layer]["t"]) for layer in layers])
    t = layout.join({layer: stats[layer]["t"] for layer in layers})
    q = layout.join({layer: stats[layer]["q"] for layer in layers})
    valid = layout.join({layer: stats[layer]["var_positive"] + stats[layer]["var_control"] > 0 for layer in layers})
    mean_abs = layout.join({layer: stats[layer]["mean_abs_all"] for layer in layers})
    means = {layer: stats[layer]["mean_all"] for layer in layers}
    stored = json.loads(selection["attrs"]["selection"])
    out = []
    for pct in percents:
        opts = SelectionOptions(top=pct, alternative=stored.get("alternative", "greater"), seed=stored.get("seed", 0))
        mask = select_units(t, q, valid, layout, opts)
        controls = draw_controls(mask, valid, layout, mean_abs, n_controls, opts.seed + 1, kinds)
        tag = f"sweep{opts.top}"
        out.append(Condition(f"{tag}_localized", "localized", unit_edits(layout.split(mask), method, means), opts.top))
        for kind in kinds:
            out += [Condition(f"{tag}_{kind}_{i}", kind, unit_edits(layout.split(c), method, means), opts.top)
                    for i, c in enumerate(controls[kind])]
    return out


# --- statistics --------------------------------------------------------------------------------------------------

def _finite(v: float) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def control_statistics(delta_localized: float, deltas: list[float]) -> tuple[float | None, float | None]:
    """z = (delta_localized - mean(control deltas)) / sd(control deltas, ddof=1) (None when undefined) and
    p_empirical = (1 + #controls with |delta| >= |delta_localized|) / (1 + #controls)."""
    d = np.asarray(deltas, dtype=np.float64)
    p = (1 + int(np.sum(np.abs(d) >= abs(delta_localized)))) / (1 + len(d))
    if len(d) < 2:
        return None, p
    sd = d.std(ddof=1)
    z = (delta_localized - d.mean()) / sd if sd > 0 else float("nan")
    return _finite(z), p


def summarize(results: dict[str, dict[str, float]], conditions: list[Condition], task: str, method: str,
              n_selected: int) -> dict[str, Any]:
    """The results document (``--out results.json``); non-finite numbers become null."""
    base = results["baseline"]
    metrics = list(base)
    main = [c for c in conditions if c.sweep is None]
    kinds = list(dict.fromkeys(c.group for c in main if c.group not in ("baseline", "localized")))

    def delta(name):
        return {m: _finite(results[name][m] - base[m]) for m in metrics}

    doc = {"task": task, "metrics": metrics, "method": method, "n_selected": int(n_selected),
           "baseline": {m: _finite(v) for m, v in base.items()},
           "localized": {m: _finite(v) for m, v in results["localized"].items()},
           "controls": {k: [{m: _finite(v) for m, v in results[c.name].items()} for c in main if c.group == k]
                        for k in kinds},
           "delta": {"localized": delta("localized"),
                     **{k: [delta(c.name) for c in main if c.group == k] for k in kinds}},
           "z": {}, "p_empirical": {}}
    for k in kinds:
        doc["z"][k], doc["p_empirical"][k] = {}, {}
        for m in metrics:
            dl = results["localized"][m] - base[m]
            dc = [results[c.name][m] - base[m] for c in main if c.group == k]
            doc["z"][k][m], doc["p_empirical"][k][m] = control_statistics(dl, dc)
    sweeps = list(dict.fromkeys(c.sweep for c in conditions if c.sweep is not None))
    if sweeps:
        doc["sweep"] = []
        for pct in sweeps:
            here = [c for c in conditions if c.sweep == pct]
            point = {"top": pct, "localized": delta(here[0].name)}
            for k in kinds:
                point[k] = [delta(c.name) for c in here if c.group == k]
            doc["sweep"].append(point)
    return doc


# --- one call ----------------------------------------------------------------------------------------------------

def run_ablation(selection: str | os.PathLike, task: str, *, model: str | None = None,
                 task_data: str | os.PathLike | Any | None = None, method: str = "zero",
                 controls: str | list[str] = "all", n_controls: int | None = None, sweep: list[str] | str | None = None,
                 out: str | os.PathLike | None = None, batch_size: int = 16, max_length: int | None = None,
                 num_workers: int = 0, log_dir: str | os.PathLike | None = "lightning_logs",
                 trust_remote_code: bool = False, trainer: dict[str, Any] | None = None,
                 loaded=None, png_dir=None) -> dict[str, Any]:
    """Ablate the units of a selection file and report metric deltas against its random controls.

    Args:
        selection: a selection file (``localizer select`` / ``extract --selection``).
        task: ``classification``, ``next-token``, ``minimal-pairs`` or ``agreement`` (:mod:`localizer.tasks`).
        model: the model (default: the one recorded in the selection file), loaded with the recorded class.
        task_data: a file / directory / dataset; default: the ``validation`` rows of the recorded stimuli.
        method: ``zero``, ``mean`` or ``scale=F`` (:mod:`localizer.masking`).
        controls: ``all`` or control kinds (list or comma-separated).
        n_controls: use the first N stored sets of each kind (default all).
        sweep: top-% values (list or comma-separated) to re-select and evaluate as a curve.
        out: write the results document here (JSON).
        log_dir: TensorBoard folder (``ablate`` runs); None to skip (unless ``trainer`` has a logger).
        trainer: ``lightning.Trainer`` keyword arguments.
        loaded: an already loaded :class:`localizer.models.LoadedModel` (skips loading ``model``).
        png_dir: also save the TensorBoard figures as PNG files here.

    Returns:
        the results document (see :func:`summarize`).
    """
    from localizer.extract import TRAINER_DEFAULTS
    from localizer.models import load_model
    from localizer.tasks import TASKS, make_task

    if task not in TASKS:
        raise LocalizerError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    sel = read_selection(selection)
    attrs = sel["attrs"]
    kinds = list(CONTROL_KINDS) if controls in ("all", ["all"]) else \
        ([k.strip() for k in controls.split(",")] if isinstance(controls, str) else list(controls))
    kinds = [k for k in kinds if k]
    bad = [k for k in kinds if k not in CONTROL_KINDS]
    if bad:
        raise LocalizerError(f"unknown control kinds {bad}; choose from all, {', '.join(CONTROL_KINDS)}")
    if isinstance(sweep, str):
        sweep = [s.strip() for s in sweep.split(",") if s.strip()]
    data = _task_data(task_data, attrs, task)
    kind = "text" if ("text" in data.column_names or task == "minimal-pairs") else "image"
    if loaded is None:
        spec = model or str(attrs.get("model", ""))
        if not spec:
            raise LocalizerError("no model given and none recorded in the selection file; pass --model")
        forced = str(attrs.get("model_class", "")) or None
        if forced and ":" in forced:  # a package.module:callable model
            forced = None
        loaded = load_model(spec, kind, model_class=forced, trust_remote_code=trust_remote_code)
    conditions = build_conditions(sel, method, kinds, n_controls, sweep)
    the_task = make_task(task, data, loaded.processor, loaded.transform, max_length)
    module = AblationModule(loaded.model, the_task, conditions, str(attrs["pooling"]), kind)
    kwargs = {**TRAINER_DEFAULTS, **(trainer or {})}
    if "logger" not in (trainer or {}) and log_dir is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        kwargs["logger"] = TensorBoardLogger(str(log_dir), name="ablate")
    runner = L.Trainer(**kwargs)
    if runner.world_size > len(data):
        raise LocalizerError(f"{runner.world_size} processes for {len(data)} task rows: use at most {len(data)}")
    runner.validate(module, datamodule=AblationDataModule(the_task, data, batch_size, num_workers), verbose=False)
    doc = summarize(module.results, conditions, task, method, int(attrs["n_selected"]))
    if runner.is_global_zero:
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(str(out) + ".tmp")
            tmp.write_text(json.dumps(doc, indent=2))
            os.replace(tmp, out)
        if runner.logger is not None:
            from localizer.report import log_ablation

            log_ablation(runner.logger, doc, module.results, conditions,
                         {"task": task, "method": method, "n_selected": int(attrs["n_selected"]),
                          "model": str(attrs.get("model", "")), "selection": str(selection),
                          "controls": ",".join(kinds), "n_controls": n_controls or 0}, png_dir=png_dir)
    return doc


def _task_data(task_data, attrs, task):
    """The given task data, or the validation rows of the stimuli recorded in the selection file."""
    from localizer.stimuli import load_stimuli
    from localizer.tasks import load_task_data, validate_task_data

    if task_data is not None:
        return load_task_data(task_data, task)
    source = str(attrs.get("stimuli", ""))
    if not source:
        raise LocalizerError("the selection file records no stimuli to take validation rows from; pass --task-data")
    stimuli = load_stimuli(source, str(attrs["control"]) if attrs.get("control") else None)
    if "split" not in stimuli.column_names or "validation" not in set(stimuli["split"]):
        raise LocalizerError(f"stimuli {source} have no validation rows; pass --task-data")
    rows = stimuli.filter(lambda s: s == "validation", input_columns="split")
    return validate_task_data(rows, task, name=f"validation rows of {source}")
