"""Unit selectivity: streaming statistics (a torchmetrics Metric), the online callback and the offline path.

Both paths feed the same :class:`UnitStatistics` and finish with the same :func:`finish_selection`, so a selection
computed while recording equals one computed later from the activation file.

Rows are grouped: group 0 = ``localize`` rows (or all rows when there is no split column), group 1 = ``validation``.
Split-half validation uses a second metric whose groups are two random halves (see :func:`half_assignment`).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torchmetrics import Metric

from localizer.errors import LocalizerError, first_line
from localizer.selection import (SelectionOptions, UnitLayout, dice, dice_chance, draw_controls, select_units,
                                 write_selection)
from localizer.stats import Moments, batch_moments, empty_moments, fdr_bh, merge, merge_all, variance, welch

LOCALIZE, VALIDATION = 0, 1


class UnitStatistics(Metric):
    """Per-unit moments of signed and absolute activations, per group and class, in float64.

    States (``G`` groups, class 0 = control, 1 = positive, ``U`` units): ``n`` ``[G, 2]``; ``mean``, ``m2``,
    ``mean_abs``, ``m2_abs`` ``[G, 2, U]``. Across DDP ranks the states are gathered (``dist_reduce_fx=None``) and
    merged with Chan et al.'s update in :meth:`compute` — never as sums of squares.

    Args:
        num_units: ``U``, the units of all recorded layers together.
        num_groups: ``G``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_units: int, num_groups: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.num_units, self.num_groups = num_units, num_groups
        z = empty_moments(num_units, (num_groups, 2))
        self.add_state("n", default=z.n, dist_reduce_fx=None)
        for name in ("mean", "m2", "mean_abs", "m2_abs"):
            self.add_state(name, default=z.mean.clone(), dist_reduce_fx=None)

    def update(self, x: torch.Tensor, positive: torch.Tensor, group: torch.Tensor | None = None) -> None:
        """Add rows ``x`` ``[B, U]`` with classes ``positive`` ``[B]`` (bool) and groups ``group`` ``[B]``
        (int; rows with a group outside ``0..G-1`` are ignored; default all group 0)."""
        if x.shape[1] != self.num_units:
            raise ValueError(f"expected {self.num_units} units, got {x.shape[1]}")
        if group is None:
            group = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        positive = positive.to(x.device).long()
        group = group.to(x.device)
        x = x.to(torch.float64)
        ax = x.abs()
        for g in range(self.num_groups):
            for c in (0, 1):
                w = (group == g) & (positive == c)
                signed = merge(Moments(self.n[g, c], self.mean[g, c], self.m2[g, c]), batch_moments(x, w))
                absolute = merge(Moments(self.n[g, c], self.mean_abs[g, c], self.m2_abs[g, c]), batch_moments(ax, w))
                self.n[g, c] = signed.n
                self.mean[g, c], self.m2[g, c] = signed.mean, signed.m2
                self.mean_abs[g, c], self.m2_abs[g, c] = absolute.mean, absolute.m2

    def compute(self) -> dict[str, Moments]:
        """``{"signed": Moments, "abs": Moments}`` with ``n`` ``[G, 2]`` and ``mean``/``m2`` ``[G, 2, U]``."""
        n, mean, m2, mean_abs, m2_abs = self.n, self.mean, self.m2, self.mean_abs, self.m2_abs
        if n.dim() == 3:  # gathered from several ranks: [W, G, 2, ...] → Chan merge over ranks
            signed = merge_all(Moments(n, mean, m2))
            absolute = merge_all(Moments(n, mean_abs, m2_abs))
            return {"signed": signed, "abs": Moments(signed.n, absolute.mean, absolute.m2)}
        return {"signed": Moments(n, mean, m2), "abs": Moments(n, mean_abs, m2_abs)}


def half_assignment(n_stimuli: int, seed: int) -> np.ndarray:
    """Split-half groups ``[N]`` (0/1): an exactly balanced random split of all rows, a function of (N, seed) only,
    so the online and offline paths agree; restricted to ``localize`` rows it gives two random halves."""
    perm = np.random.default_rng(seed).permutation(n_stimuli)
    half = np.empty(n_stimuli, dtype=np.int64)
    half[perm] = np.arange(n_stimuli) % 2
    return half


@dataclass
class SelectionResult:
    """Everything a selection computes; flat arrays over all units ``[U]``."""

    layout: UnitLayout
    stats: dict[str, np.ndarray]
    valid: np.ndarray
    mask: np.ndarray
    controls: dict[str, list[np.ndarray]]
    validation_t: np.ndarray | None
    attrs: dict[str, Any]


def unit_statistics(moments: dict[str, Moments], group: int, use_abs: bool, alternative: str) -> dict[str, np.ndarray]:
    """Welch statistics of one group (positive vs control) from :meth:`UnitStatistics.compute` output.

    Returns flat ``[U]`` arrays ``t, p, d, df, valid, mean_positive, mean_control, var_positive, var_control,
    mean_all, mean_abs_all`` and the scalars ``n_positive``, ``n_control``.
    """
    tested = moments["abs" if use_abs else "signed"]
    pos = Moments(tested.n[group, 1], tested.mean[group, 1], tested.m2[group, 1])
    ctl = Moments(tested.n[group, 0], tested.mean[group, 0], tested.m2[group, 0])
    n_pos, n_ctl = int(pos.n.item()), int(ctl.n.item())
    if n_pos < 2 or n_ctl < 2:
        raise LocalizerError(f"selectivity needs >= 2 positive and >= 2 control stimuli in this split, got "
                             f"{n_pos} positive and {n_ctl} control")
    mean_pos, mean_ctl = pos.mean.cpu().numpy(), ctl.mean.cpu().numpy()
    var_pos, var_ctl = variance(pos), variance(ctl)
    w = welch(mean_pos, var_pos, n_pos, mean_ctl, var_ctl, n_ctl, alternative)
    signed, absolute = moments["signed"], moments["abs"]
    total = n_pos + n_ctl

    def pooled_mean(m: torch.Tensor) -> np.ndarray:
        return ((signed.n[group, 1] * m[group, 1] + signed.n[group, 0] * m[group, 0]) / total).cpu().numpy()

    return {"t": w.t, "p": w.p, "d": w.d, "df": w.df, "valid": w.valid, "mean_positive": mean_pos,
            "mean_control": mean_ctl, "var_positive": var_pos, "var_control": var_ctl,
            "mean_all": pooled_mean(signed.mean), "mean_abs_all": pooled_mean(absolute.mean),
            "n_positive": n_pos, "n_control": n_ctl}


def finish_selection(layout: UnitLayout, moments: dict[str, Moments], halves: dict[str, Moments] | None,
                     options: SelectionOptions, has_validation: bool, meta: dict[str, Any]) -> SelectionResult:
    """Statistics → q (BH over all units of all layers) → mask → controls (+ validation t and split-half Dice)."""
    s = unit_statistics(moments, LOCALIZE, options.abs, options.alternative)
    s["q"] = fdr_bh(s["p"])
    valid = s["valid"]
    rng = np.random.default_rng(options.seed)
    mask = select_units(s["t"], s["q"], valid, layout, options, rng)
    controls = draw_controls(mask, valid, layout, s["mean_abs_all"], options.controls, options.seed + 1,
                             options.kinds)
    validation_t = None
    if has_validation:
        n_val = moments["signed"].n[VALIDATION]
        if n_val.min() < 2:
            warnings.warn(f"validation split has {int(n_val[1])} positive and {int(n_val[0])} control stimuli "
                          f"(need >= 2 each); no validation t is written")
        else:
            validation_t = unit_statistics(moments, VALIDATION, options.abs, options.alternative)["t"]
    attrs = {"selection": options.to_json(), "abs": options.abs, "alternative": options.alternative,
             "n_positive": s["n_positive"], "n_control": s["n_control"],
             **{k: meta.get(k, "") for k in ("source", "pooling", "model", "model_class")},
             **{k: str(meta[k]) for k in ("stimuli", "control") if meta.get(k)}}
    if halves is not None:
        masks = []
        for g in (0, 1):
            h = unit_statistics(halves, g, options.abs, options.alternative)
            h["q"] = fdr_bh(h["p"])
            masks.append(select_units(h["t"], h["q"], h["valid"], layout, options, np.random.default_rng(options.seed)))
        attrs["dice_split_half"] = dice(*masks)
        attrs["dice_chance"] = dice_chance(int(masks[0].sum()), int(masks[1].sum()), int(valid.sum()))
    return SelectionResult(layout, s, valid, mask, controls, validation_t, attrs)


def save_result(result: SelectionResult, out: str | os.PathLike) -> Path:
    return write_selection(out, result.layout, result.stats, result.mask, result.controls, result.attrs,
                           result.validation_t)


# --- online ------------------------------------------------------------------------------------------------------

class SelectivityCallback(Callback):
    """Update unit statistics from the recorder's pooled activations during ``trainer.predict``; at the end, sync
    them across ranks, select the network and its controls, and write the selection file (rank 0).

    Works with or without :class:`localizer.writer.HDF5ActivationWriter` in the same run. Expects batches from
    :class:`localizer.data.LocalizerDataModule` (``index``, ``positive``, optional ``split``) and predictions
    ``{layer: [B, U_layer]}``.

    Args:
        out: the selection file to write.
        options: selection rule, controls, ``abs``/``alternative``, split-half.
        log_to_tensorboard: histograms of t per layer and the fraction selected, through ``trainer.logger``.
        metadata: extra root attributes for the selection file (e.g. ``stimuli``, the stimulus source).
    """

    def __init__(self, out: str | os.PathLike, options: SelectionOptions | None = None,
                 log_to_tensorboard: bool = True, metadata: dict[str, Any] | None = None):
        self.out = Path(out)
        self.metadata = dict(metadata or {})
        self.options = options or SelectionOptions()
        self.log_to_tensorboard = log_to_tensorboard
        self.result: SelectionResult | None = None

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
        self.half_of = (torch.from_numpy(half_assignment(self.n_stimuli, self.options.seed)).to(pl_module.device)
                        if self.options.split_half else None)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        x = torch.cat([outputs[layer] for layer in self.layout.layers], dim=1)
        group = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        if "split" in batch:
            group = torch.tensor([VALIDATION if s == "validation" else LOCALIZE for s in batch["split"]],
                                 device=x.device)
        self.stats.update(x, batch["positive"], group)
        if self.halves is not None:
            halves = torch.where(group == LOCALIZE, self.half_of[batch["index"].to(x.device)], -1)
            self.halves.update(x, batch["positive"], halves)

    def on_predict_end(self, trainer, pl_module) -> None:
        moments = self.stats.compute()  # collective: every rank takes part
        halves = self.halves.compute() if self.halves is not None else None
        error = None
        if trainer.is_global_zero:
            try:
                has_val = bool(moments["signed"].n[VALIDATION].sum() > 0)
                meta = {"source": "online", "pooling": getattr(pl_module, "pooling", ""),
                        "model": getattr(pl_module, "model_name", ""),
                        "model_class": getattr(pl_module, "model_class", ""), **self.metadata}
                self.result = finish_selection(self.layout, moments, halves, self.options, has_val, meta)
                save_result(self.result, self.out)
                if self.log_to_tensorboard and trainer.logger is not None:
                    from localizer.report import log_selectivity

                    log_selectivity(trainer.logger.experiment, self.result)
            except LocalizerError as e:
                error = str(e)
        error = trainer.strategy.broadcast(error, src=0)
        if error:
            raise LocalizerError(error)


# --- offline -----------------------------------------------------------------------------------------------------

def select_from_file(activations: str | os.PathLike, out: str | os.PathLike,
                     options: SelectionOptions | None = None, chunk_bytes: int = 16 << 20,
                     log_dir: str | os.PathLike | None = "lightning_logs", png_dir=None) -> SelectionResult:
    """Compute the selection from an activation file, reading row chunks (memory does not depend on N).

    Args:
        activations: a master activation file (:mod:`localizer.storage`).
        out: the selection file to write.
        options: selection rule, controls, ``abs``/``alternative``, split-half.
        chunk_bytes: float64 bytes per chunk of rows over all layers.
        log_dir: TensorBoard folder (a ``select`` run is added); None to skip.
        png_dir: also save the figures as PNG files here.
    """
    import h5py

    from localizer.storage import allow_sources, read_metadata

    options = options or SelectionOptions()
    meta = read_metadata(activations)
    allow_sources(activations)
    with h5py.File(activations, "r") as f:
        layers = meta["layers"]
        missing = [layer for layer in layers if f"activations/{layer}" not in f]
        if missing:
            raise LocalizerError(f"{activations}: layers {missing} are listed but have no dataset")
        dsets = [f[f"activations/{layer}"] for layer in layers]
        layout = UnitLayout(layers, [d.shape[1] for d in dsets])
        n = int(meta["n_stimuli"])
        positive = torch.from_numpy(f["positive"][:])
        group = torch.zeros(n, dtype=torch.long)
        if "split" in f:
            group = torch.from_numpy((f["split"].asstr()[:] == "validation").astype(np.int64))
        stats = UnitStatistics(layout.total, 2)
        halves = UnitStatistics(layout.total, 2) if options.split_half else None
        half_of = torch.from_numpy(half_assignment(n, options.seed)) if options.split_half else None
        rows = max(1, chunk_bytes // (8 * max(layout.total, 1)))
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            try:
                x = torch.from_numpy(np.concatenate([d[r0:r1] for d in dsets], axis=1))
            except OSError as e:  # a truncated or corrupt segment behind the virtual datasets
                raise LocalizerError(f"{activations}: stimuli {r0}..{r1 - 1} cannot be read ({first_line(e)}); "
                                     f"`localizer check {activations}` says which file is damaged") from e
            if not torch.isfinite(x).all():
                row = r0 + int((~torch.isfinite(x)).any(1).nonzero()[0, 0])
                raise LocalizerError(f"{activations}: NaN/inf activations at stimulus {row} (a damaged file, or "
                                     f"recorded with --nan_policy allow); `localizer check` lists them")
            stats.update(x, positive[r0:r1], group[r0:r1])
            if halves is not None:
                halves.update(x, positive[r0:r1], torch.where(group[r0:r1] == LOCALIZE, half_of[r0:r1], -1))
    moments = stats.compute()
    result = finish_selection(layout, moments, halves.compute() if halves is not None else None, options,
                              bool(moments["signed"].n[VALIDATION].sum() > 0),
                              {**meta, "source": str(Path(activations).resolve())})
    save_result(result, out)
    if log_dir is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        from localizer.report import log_selectivity

        logger = TensorBoardLogger(str(log_dir), name="select")
        logger.log_hyperparams({"activations": str(activations), "selection": json.loads(options.to_json())})
        log_selectivity(logger.experiment, result, png_dir=png_dir)
        logger.finalize("success")
    return result
