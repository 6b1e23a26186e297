"""From streaming moments to a :class:`Selection`: Welch statistics, FDR, the rule, controls, validation.

Both the online callback and the offline path end here, so a selection computed while recording equals one computed
later from the activation file.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from localizer.errors import LocalizerError
from localizer.selection.metric import LOCALIZE, VALIDATION
from localizer.selection.options import SelectionOptions
from localizer.selection.result import Selection
from localizer.selection.rules import UnitLayout, dice, dice_chance, draw_controls, select_units
from localizer.selection.statistics import Moments, fdr_bh, variance, welch


def welch_statistics(moments: dict[str, Moments], group: int, use_abs: bool, alternative: str) -> dict[str, Any]:
    """Welch statistics of one group (positive vs control) from :meth:`UnitStatistics.compute` output.

    Returns flat ``[U]`` arrays ``t, p, d, df, valid, mean_positive, mean_control, var_positive, var_control,
    mean_all, mean_abs_all`` and the scalars ``n_positive``, ``n_control``.
    """
    tested = moments["abs" if use_abs else "signed"]
    pos = Moments(tested.n[group, 1], tested.mean[group, 1], tested.m2[group, 1])
    ctl = Moments(tested.n[group, 0], tested.mean[group, 0], tested.m2[group, 0])
    n_pos, n_ctl = int(pos.n.item()), int(ctl.n.item())
    if n_pos < 2 or n_ctl < 2:
        raise LocalizerError(
            f"selectivity needs >= 2 positive and >= 2 control stimuli in this split, got "
            f"{n_pos} positive and {n_ctl} control"
        )
    mean_pos, mean_ctl = pos.mean.cpu().numpy(), ctl.mean.cpu().numpy()
    var_pos, var_ctl = variance(pos), variance(ctl)
    w = welch(mean_pos, var_pos, n_pos, mean_ctl, var_ctl, n_ctl, alternative)
    signed, absolute = moments["signed"], moments["abs"]
    total = n_pos + n_ctl

    def pooled_mean(m: torch.Tensor) -> np.ndarray:
        return ((signed.n[group, 1] * m[group, 1] + signed.n[group, 0] * m[group, 0]) / total).cpu().numpy()

    return {
        "t": w.t,
        "p": w.p,
        "d": w.d,
        "df": w.df,
        "valid": w.valid,
        "mean_positive": mean_pos,
        "mean_control": mean_ctl,
        "var_positive": var_pos,
        "var_control": var_ctl,
        "mean_all": pooled_mean(signed.mean),
        "mean_abs_all": pooled_mean(absolute.mean),
        "n_positive": n_pos,
        "n_control": n_ctl,
    }


def finish_selection(
    layout: UnitLayout,
    moments: dict[str, Moments],
    halves: dict[str, Moments] | None,
    options: SelectionOptions,
    has_validation: bool,
    meta: dict[str, Any],
) -> Selection:
    """Statistics → q (BH over all units of all layers) → mask → controls (+ validation t and split-half Dice)."""
    s = welch_statistics(moments, LOCALIZE, options.abs, options.alternative)
    s["q"] = fdr_bh(s["p"])
    valid = s["valid"]
    rng = np.random.default_rng(options.seed)
    mask = select_units(s["t"], s["q"], valid, layout, options, rng, options.ranking(s))
    controls = draw_controls(mask, valid, layout, s["mean_abs_all"], options.controls, options.seed + 1, options.kinds)
    validation_t = None
    if has_validation:
        n_val = moments["signed"].n[VALIDATION]
        if n_val.min() < 2:
            warnings.warn(
                f"validation split has {int(n_val[1])} positive and {int(n_val[0])} control stimuli "
                f"(need >= 2 each); no validation t is written",
                stacklevel=2,
            )
        else:
            validation_t = welch_statistics(moments, VALIDATION, options.abs, options.alternative)["t"]
    attrs = {
        "selection": options.to_json(),
        "abs": options.abs,
        "alternative": options.alternative,
        "n_positive": s["n_positive"],
        "n_control": s["n_control"],
        **{k: meta.get(k, "") for k in ("source", "pooling", "model", "model_class")},
        **{k: str(meta[k]) for k in ("stimuli", "control", "weights") if meta.get(k)},
    }
    if meta.get("settings"):  # what the activations were recorded with: a run reuses a selection only from them
        attrs["activations_settings"] = str(meta["settings"])
    if halves is not None:
        masks = []
        for g in (0, 1):
            h = welch_statistics(halves, g, options.abs, options.alternative)
            h["q"] = fdr_bh(h["p"])
            rng_h = np.random.default_rng(options.seed)
            masks.append(select_units(h["t"], h["q"], h["valid"], layout, options, rng_h, options.ranking(h)))
        attrs["dice_split_half"] = dice(*masks)
        attrs["dice_chance"] = dice_chance(int(masks[0].sum()), int(masks[1].sum()), int(valid.sum()))
    return Selection(layout, s, valid, mask, controls, validation_t, attrs)
