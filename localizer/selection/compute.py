"""From streaming moments to a :class:`Selection`: Welch statistics, FDR, the rule, controls, validation.

Both the online callback and the offline path end here, so a selection computed while recording equals one computed
later from the activation file.
"""

from __future__ import annotations

import json
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


FEW_STIMULI = 20  # per class: below this, t and the selection vary a lot with the sample
LENGTH_T, LENGTH_RATIO = 3.0, 0.10  # a length confound: |Welch t| of token counts > 3 and means > 10% apart


def guardrails(
    n_positive: int, n_control: int, lengths: tuple[np.ndarray, np.ndarray] | None, pooling: str
) -> tuple[dict[str, Any], list[str]]:
    """Checks of the localizer's design, as selection-file attributes and warnings in words.

    - fewer than :data:`FEW_STIMULI` stimuli in a class;
    - text stimuli whose classes differ in token count (``lengths``: positive and control counts of the rows selected
      on): ``|Welch t| > LENGTH_T`` and means more than ``LENGTH_RATIO`` apart, with ``last`` or ``mean`` pooling,
      where position or length alone can separate the classes.
    """
    attrs: dict[str, Any] = {}
    found = []
    if min(n_positive, n_control) < FEW_STIMULI:
        found.append(
            f"only {n_positive} positive and {n_control} control stimuli are selected on (fewer than {FEW_STIMULI} "
            f"in a class): t is noisy and the selected units change with the sample; use more stimuli and check "
            f"--split_half"
        )
    if lengths is not None and len(lengths[0]) > 1 and len(lengths[1]) > 1:
        from scipy.stats import ttest_ind

        pos, ctl = (np.asarray(x, dtype=np.float64) for x in lengths)
        mp, mc = float(pos.mean()), float(ctl.mean())
        if pos.std() + ctl.std() > 0:
            t = float(ttest_ind(pos, ctl, equal_var=False).statistic)
        else:  # every text of a class has the same length: a perfect confound when the classes differ
            t = float(np.sign(mp - mc) * np.inf) if mp != mc else 0.0
        attrs.update(n_tokens_positive=mp, n_tokens_control=mc, n_tokens_t=t)
        if pooling in ("last", "mean") and abs(t) > LENGTH_T and abs(mp - mc) > LENGTH_RATIO * max(mp, mc):
            found.append(
                f"positive stimuli average {mp:.1f} tokens and control stimuli {mc:.1f} (Welch t = {t:.1f}): with "
                f"{pooling} pooling, position or length alone can separate the classes; use stimuli matched in "
                f"token length"
            )
    if found:
        for text in found:
            warnings.warn(text, stacklevel=3)
    attrs["warnings"] = json.dumps(found)
    return attrs, found


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
        **{k: str(meta[k]) for k in ("stimuli", "control", "weights", "dtype") if meta.get(k)},
    }
    if meta.get("settings"):  # what the activations were recorded with: a run reuses a selection only from them
        attrs["activations_settings"] = str(meta["settings"])
    checks, _ = guardrails(
        int(s["n_positive"]), int(s["n_control"]), meta.get("token_lengths"), str(meta.get("pooling", ""))
    )
    attrs.update(checks)
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
