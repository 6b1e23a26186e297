"""Choosing the "network" from per-unit statistics and drawing matched random controls (pure numpy).

All functions work on *flat* unit vectors: the units of every recorded layer concatenated in recording order
(``U = sum(U_layer)``); :class:`UnitLayout` maps between flat vectors and per-layer ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from localizer.errors import LocalizerError, opt
from localizer.selection.options import CONTROL_KINDS, SelectionOptions


@dataclass
class UnitLayout:
    """Layer names (recording order) and their unit counts; flat index ``offsets[l] + u`` is unit ``u`` of layer l."""

    layers: list[str]
    units: list[int]

    @property
    def total(self) -> int:
        return int(sum(self.units))

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.units)]).astype(np.int64)

    def layer_of(self) -> np.ndarray:
        """``[U]`` int: the layer number of every flat unit."""
        return np.repeat(np.arange(len(self.layers)), self.units)

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Flat ``[U]`` → ``{layer: [U_layer]}``."""
        o = self.offsets
        return {layer: flat[o[i] : o[i + 1]] for i, layer in enumerate(self.layers)}

    def join(self, per_layer: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(per_layer[layer]) for layer in self.layers])


def top_k_count(percent: str, units: int) -> int:
    """k = floor(percent x units / 100), computed exactly from the decimal string."""
    return int(Fraction(percent) * units // 100)


# --- selection ---------------------------------------------------------------------------------------------------


def _ranking_score(t: np.ndarray, alternative: str) -> np.ndarray:
    return np.abs(t) if alternative == "two-sided" else t


def _top(score: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The k candidates of highest score (ties: lower unit index first)."""
    idx = np.flatnonzero(candidates)
    order = np.lexsort((idx, -score[idx]))
    return idx[order[:k]]


def select_units(
    t: np.ndarray,
    q: np.ndarray,
    valid: np.ndarray,
    layout: UnitLayout,
    options: SelectionOptions,
    rng: np.random.Generator | None = None,
    statistic: np.ndarray | None = None,
) -> np.ndarray:
    """The flat bool mask ``[U]`` of selected units. Units with zero variance (``~valid``) are never selected.

    ``statistic`` ``[U]`` ranks the units (default ``t``; see :meth:`SelectionOptions.ranking`); ``alternative``
    two-sided ranks by its absolute value, ``bottom`` takes its smallest absolute values; ``fdr`` uses q and t.
    """
    U = layout.total
    base = t if statistic is None else statistic
    score = _ranking_score(base, options.alternative)
    mask = np.zeros(U, dtype=bool)
    k = options.count if options.count is not None else top_k_count(options.top, U)
    if options.rule == "top" and options.per_layer and options.count is None:
        o = layout.offsets
        for i, units in enumerate(layout.units):
            kl = top_k_count(options.top, units)
            cand = np.zeros(U, dtype=bool)
            cand[o[i] : o[i + 1]] = valid[o[i] : o[i + 1]]
            mask[_top(score, cand, kl)] = True
        if not mask.any():
            raise LocalizerError(
                f"top {options.top}% of each layer selects no unit (layers have "
                f"{min(layout.units)}..{max(layout.units)} units); raise {opt('top')}"
            )
        return mask
    if options.rule == "fdr":
        mask = valid & (q < options.fdr) & (t > 0)
        if not mask.any():
            raise LocalizerError(f"no unit has q < {options.fdr:g} and t > 0: {opt('fdr')} selects nothing")
        return mask
    if k == 0:
        raise LocalizerError(
            f"top {options.top}% of {U} units is k = 0 units; raise {opt('top')} or use {opt('count')}"
        )
    if k > int(valid.sum()):
        raise LocalizerError(f"cannot select {k} units: only {int(valid.sum())} units vary")
    if options.rule == "top":
        mask[_top(score, valid, k)] = True
    elif options.rule == "bottom":
        mask[_top(-np.abs(base), valid, k)] = True
    else:  # range: k random units whose t percentile lies in [low, high]
        rng = rng or np.random.default_rng(options.seed)
        idx = np.flatnonzero(valid)
        ranks = np.argsort(np.argsort(score[idx], kind="stable"), kind="stable")
        pct = 100.0 * ranks / max(len(idx) - 1, 1)
        low, high = options.band
        band = idx[(pct >= low) & (pct <= high)]
        if len(band) < k:
            raise LocalizerError(f"t percentile band {low:g}-{high:g} holds {len(band)} units, fewer than k = {k}")
        mask[rng.choice(band, size=k, replace=False)] = True
    return mask


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap 2|A∩B| / (|A| + |B|) of two bool masks."""
    total = int(a.sum() + b.sum())
    return 2.0 * int((a & b).sum()) / total if total else float("nan")


def dice_chance(a: int, b: int, pool: int) -> float:
    """Expected Dice of two independent uniform random sets of sizes a and b from ``pool`` units: 2ab / (pool (a+b))."""
    return 2.0 * a * b / (pool * (a + b)) if pool and (a + b) else float("nan")


# --- controls ----------------------------------------------------------------------------------------------------


def draw_controls(
    mask: np.ndarray,
    valid: np.ndarray,
    layout: UnitLayout,
    mean_abs: np.ndarray,
    n: int,
    seed: int,
    kinds: list[str] | tuple[str, ...] = CONTROL_KINDS,
    neighbours: int = 5,
) -> dict[str, list[np.ndarray]]:
    """``n`` random control masks of each kind, all the size of ``mask``, drawn from valid non-selected units.

    - ``global``: uniform over the pool.
    - ``layer_matched``: in each layer, as many units as the selection has there.
    - ``magnitude_matched``: each selected unit is paired with a random one of the ``neighbours`` pool units closest
      to it in mean |activation| that are not yet used in this set (units farthest from the pool's median magnitude
      are paired first). Where the selection holds the very largest units, the partners are the nearest available.

    Returns:
        ``{kind: [mask [U], ...]}``. Raises :class:`LocalizerError` when a pool is smaller than needed.
    """
    rng = np.random.default_rng(seed)
    pool = valid & ~mask
    k = int(mask.sum())
    out: dict[str, list[np.ndarray]] = {kind: [] for kind in kinds}
    if n == 0 or k == 0:
        return out
    pool_idx = np.flatnonzero(pool)
    if len(pool_idx) < k:
        raise LocalizerError(
            f"controls need {k} non-selected units but only {len(pool_idx)} are available; select fewer units"
        )
    layer = layout.layer_of()
    per_layer = np.bincount(layer[mask], minlength=len(layout.layers))
    pools_by_layer = [np.flatnonzero(pool & (layer == i)) for i in range(len(layout.layers))]
    if "layer_matched" in kinds:
        for i, need in enumerate(per_layer):
            if need > len(pools_by_layer[i]):
                raise LocalizerError(
                    f"layer-matched controls need {need} non-selected units in layer "
                    f"{layout.layers[i]!r}, which has only {len(pools_by_layer[i])}"
                )
    by_magnitude = pool_idx[np.argsort(mean_abs[pool_idx], kind="stable")]
    sorted_mag = mean_abs[by_magnitude]
    selected = np.flatnonzero(mask)
    for _ in range(n):
        for kind in kinds:
            c = np.zeros_like(mask)
            if kind == "global":
                c[rng.choice(pool_idx, size=k, replace=False)] = True
            elif kind == "layer_matched":
                for i, need in enumerate(per_layer):
                    if need:
                        c[rng.choice(pools_by_layer[i], size=need, replace=False)] = True
            else:
                c[_magnitude_matched(selected, mean_abs, by_magnitude, sorted_mag, neighbours, rng)] = True
            out[kind].append(c)
    return out


def _magnitude_matched(selected, mean_abs, by_magnitude, sorted_mag, neighbours, rng) -> np.ndarray:
    used = np.zeros(len(by_magnitude), dtype=bool)
    chosen = []
    # the most extreme magnitudes first: they have the fewest close partners
    centre = np.median(sorted_mag)
    order = rng.permutation(selected)
    order = order[np.argsort(-np.abs(mean_abs[order] - centre), kind="stable")]
    for unit in order:
        pos = int(np.searchsorted(sorted_mag, mean_abs[unit]))
        lo, hi, cand = pos - 1, pos, list[int]()
        while len(cand) < neighbours and (lo >= 0 or hi < len(sorted_mag)):
            take_hi = lo < 0 or (
                hi < len(sorted_mag) and sorted_mag[hi] - mean_abs[unit] <= mean_abs[unit] - sorted_mag[lo]
            )
            j = hi if take_hi else lo
            if take_hi:
                hi += 1
            else:
                lo -= 1
            if not used[j]:
                cand.append(j)
        j = cand[rng.integers(len(cand))]
        used[j] = True
        chosen.append(by_magnitude[j])
    return np.asarray(chosen, dtype=np.int64)
