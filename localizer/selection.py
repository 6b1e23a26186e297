"""Choosing the "network" from per-unit statistics, drawing matched random controls, and the selection file.

All functions work on *flat* unit vectors: the units of every recorded layer concatenated in recording order
(``U = sum(U_layer)``); :class:`UnitLayout` maps between flat vectors and per-layer ones.

Selection file (format version 1):

- ``/layers/<layer>/{t,p,q,d,mean_positive,mean_control,var_positive,var_control,mean_all,mean_abs_all}``: float64
  ``[U_layer]``
- ``/mask/<layer>``: bool ``[U_layer]``
- ``/controls/<kind>/<i>/<layer>``: bool ``[U_layer]``, kind in ``global``, ``layer_matched``, ``magnitude_matched``
- ``/validation/<layer>/t`` (when the stimuli have a validation split)
- root attributes: ``format_version``, ``selection`` (JSON options), ``n_selected``, ``abs``, ``alternative``,
  ``source``, ``layers`` (JSON list), ``pooling``, ``model``, ``model_class``, ``n_positive``, ``n_control``;
  ``dice_split_half``, ``dice_chance`` with split-half validation.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from localizer.errors import LocalizerError

FORMAT_VERSION = 1
CONTROL_KINDS = ("global", "layer_matched", "magnitude_matched")
STAT_NAMES = ("t", "p", "q", "d", "mean_positive", "mean_control", "var_positive", "var_control", "mean_all",
              "mean_abs_all")


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
        return {layer: flat[o[i]:o[i + 1]] for i, layer in enumerate(self.layers)}

    def join(self, per_layer: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(per_layer[layer]) for layer in self.layers])


@dataclass
class SelectionOptions:
    """How to pick the network and its controls (the CLI's ``localizer select`` options).

    Attributes:
        rule: ``top`` (top-k by t), ``fdr`` (q < fdr and t > 0), ``range`` (k random units in a t percentile band),
            ``bottom`` (the k least selective units: smallest |t|).
        top: percentage of units as a decimal string (``"1"`` = 1%), k = floor(top x units / 100) exactly.
        count: k as a number of units (overrides ``top``).
        per_layer: with ``top``, take the top k% of each layer instead of globally.
        fdr: the q threshold of rule ``fdr``.
        range: ``(low, high)`` t percentiles of rule ``range``.
        abs: test |activation| instead of the signed activation.
        alternative: ``greater`` (positive > control) or ``two-sided`` (ranking then uses |t|).
        controls: random control sets per kind; seed: their random seed.
        split_half: also select on two random halves of the localize rows and report their Dice overlap.
    """

    rule: str = "top"
    top: str = "1"
    count: int | None = None
    per_layer: bool = False
    fdr: float | None = None
    range: tuple[float, float] | None = None
    abs: bool = False
    alternative: str = "greater"
    controls: int = 0
    seed: int = 0
    split_half: bool = False
    kinds: list[str] = field(default_factory=lambda: list(CONTROL_KINDS))

    def __post_init__(self):
        self.top = parse_percent(self.top)
        if self.rule not in ("top", "fdr", "range", "bottom"):
            raise LocalizerError(f"unknown selection rule {self.rule!r}; choose top, fdr, range or bottom")
        if self.alternative not in ("greater", "two-sided"):
            raise LocalizerError(f"--alternative must be 'greater' or 'two-sided', got {self.alternative!r}")
        if self.count is not None and self.count < 1:
            raise LocalizerError(f"--count must be >= 1, got {self.count}")
        if self.rule == "fdr" and not (self.fdr is not None and 0 < self.fdr <= 1):
            raise LocalizerError(f"--fdr must be in (0, 1], got {self.fdr}")
        if self.rule == "range":
            if isinstance(self.range, str):
                self.range = parse_range(self.range)
            if self.range is None or not (0 <= self.range[0] < self.range[1] <= 100):
                raise LocalizerError(f"--range must be LOW-HIGH percentiles with 0 <= LOW < HIGH <= 100, "
                                     f"got {self.range}")
        if self.controls < 0:
            raise LocalizerError(f"--controls must be >= 0, got {self.controls}")
        bad = [k for k in self.kinds if k not in CONTROL_KINDS]
        if bad:
            raise LocalizerError(f"unknown control kinds {bad}; choose from {', '.join(CONTROL_KINDS)}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def parse_percent(value: str | float | int) -> str:
    """``"1%"``, ``"0.5"``, ``2`` → the decimal string of a percentage in (0, 100]."""
    text = str(value).strip().removesuffix("%").strip()
    try:
        pct = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise LocalizerError(f"--top must be a percentage like 1% or 0.5, got {value!r}") from None
    if not 0 < pct <= 100:
        raise LocalizerError(f"--top must be in (0, 100], got {value!r}")
    return text


def parse_range(value: str) -> tuple[float, float]:
    m = re.fullmatch(r"\s*([0-9.]+)\s*-\s*([0-9.]+)\s*", str(value))
    if not m:
        raise LocalizerError(f"--range must look like 80-90, got {value!r}")
    return float(m.group(1)), float(m.group(2))


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


def select_units(t: np.ndarray, q: np.ndarray, valid: np.ndarray, layout: UnitLayout,
                 options: SelectionOptions, rng: np.random.Generator | None = None) -> np.ndarray:
    """The flat bool mask ``[U]`` of selected units. Units with zero variance (``~valid``) are never selected."""
    U = layout.total
    score = _ranking_score(t, options.alternative)
    mask = np.zeros(U, dtype=bool)
    k = options.count if options.count is not None else top_k_count(options.top, U)
    if options.rule == "top" and options.per_layer and options.count is None:
        o = layout.offsets
        for i, units in enumerate(layout.units):
            kl = top_k_count(options.top, units)
            cand = np.zeros(U, dtype=bool)
            cand[o[i]:o[i + 1]] = valid[o[i]:o[i + 1]]
            mask[_top(score, cand, kl)] = True
        if not mask.any():
            raise LocalizerError(f"top {options.top}% of each layer selects no unit (layers have "
                                 f"{min(layout.units)}..{max(layout.units)} units); raise --top")
        return mask
    if options.rule == "fdr":
        mask = valid & (q < options.fdr) & (t > 0)
        return mask
    if k == 0:
        raise LocalizerError(f"top {options.top}% of {U} units is k = 0 units; raise --top or use --count")
    if k > int(valid.sum()):
        raise LocalizerError(f"cannot select {k} units: only {int(valid.sum())} units vary")
    if options.rule == "top":
        mask[_top(score, valid, k)] = True
    elif options.rule == "bottom":
        mask[_top(-np.abs(t), valid, k)] = True
    else:  # range: k random units whose t percentile lies in [low, high]
        rng = rng or np.random.default_rng(options.seed)
        idx = np.flatnonzero(valid)
        ranks = np.argsort(np.argsort(score[idx], kind="stable"), kind="stable")
        pct = 100.0 * ranks / max(len(idx) - 1, 1)
        band = idx[(pct >= options.range[0]) & (pct <= options.range[1])]
        if len(band) < k:
            raise LocalizerError(f"t percentile band {options.range[0]:g}-{options.range[1]:g} holds {len(band)} "
                                 f"units, fewer than k = {k}")
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

def draw_controls(mask: np.ndarray, valid: np.ndarray, layout: UnitLayout, mean_abs: np.ndarray, n: int,
                  seed: int, kinds: list[str] | tuple[str, ...] = CONTROL_KINDS,
                  neighbours: int = 5) -> dict[str, list[np.ndarray]]:
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
        raise LocalizerError(f"controls need {k} non-selected units but only {len(pool_idx)} are available; "
                             f"select fewer units")
    layer = layout.layer_of()
    per_layer = np.bincount(layer[mask], minlength=len(layout.layers))
    pools_by_layer = [np.flatnonzero(pool & (layer == i)) for i in range(len(layout.layers))]
    if "layer_matched" in kinds:
        for i, need in enumerate(per_layer):
            if need > len(pools_by_layer[i]):
                raise LocalizerError(f"layer-matched controls need {need} non-selected units in layer "
                                     f"{layout.layers[i]!r}, which has only {len(pools_by_layer[i])}")
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
        lo, hi, cand = pos - 1, pos, []
        while len(cand) < neighbours and (lo >= 0 or hi < len(sorted_mag)):
            take_hi = lo < 0 or (hi < len(sorted_mag) and
                                 sorted_mag[hi] - mean_abs[unit] <= mean_abs[unit] - sorted_mag[lo])
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


# --- the selection file ------------------------------------------------------------------------------------------

def write_selection(path: str | os.PathLike, layout: UnitLayout, stats: dict[str, np.ndarray], mask: np.ndarray,
                    controls: dict[str, list[np.ndarray]], attrs: dict[str, Any],
                    validation_t: np.ndarray | None = None) -> Path:
    """Write the selection file (see the module docstring) under a temporary name, then rename it.

    Args:
        stats: flat ``[U]`` arrays named as :data:`STAT_NAMES`.
        mask: flat bool ``[U]``; controls: ``{kind: [flat bool [U], ...]}``.
        attrs: root attributes besides ``format_version``, ``layers`` and ``n_selected``.
        validation_t: flat ``[U]`` t on the validation rows, when there are any.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        for name in STAT_NAMES:
            for layer, values in layout.split(np.asarray(stats[name], dtype=np.float64)).items():
                f.create_dataset(f"layers/{layer}/{name}", data=values)
        for layer, values in layout.split(mask).items():
            f.create_dataset(f"mask/{layer}", data=values)
        for kind, sets in controls.items():
            for i, c in enumerate(sets):
                for layer, values in layout.split(c).items():
                    f.create_dataset(f"controls/{kind}/{i}/{layer}", data=values)
        if validation_t is not None:
            for layer, values in layout.split(validation_t).items():
                f.create_dataset(f"validation/{layer}/t", data=values)
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["layers"] = json.dumps(layout.layers)
        f.attrs["n_selected"] = int(mask.sum())
        for key, value in attrs.items():
            f.attrs[key] = value
    os.replace(tmp, path)
    return path


def read_selection(path: str | os.PathLike) -> dict[str, Any]:
    """Read a selection file → ``{"attrs", "layers", "stats": {layer: {name: [U_layer]}}, "mask": {layer: ...},
    "controls": {kind: [{layer: mask}, ...]}, "validation_t": {layer: t} | None}``."""
    if not Path(path).is_file():
        raise LocalizerError(f"{path} does not exist" if not Path(path).exists() else f"{path} is not a file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise LocalizerError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        attrs = dict(f.attrs)
        version = attrs.get("format_version")
        if not (np.ndim(version) == 0 and version == FORMAT_VERSION) or "mask" not in f:
            shown = version.item() if np.ndim(version) == 0 and hasattr(version, "item") else version
            raise LocalizerError(f"{path}: not a selection file of format version {FORMAT_VERSION} "
                                 f"(format_version={shown!r})")
        layers = json.loads(attrs["layers"])
        out = {"attrs": attrs, "layers": layers,
               "stats": {layer: {k: f[f"layers/{layer}/{k}"][:] for k in STAT_NAMES} for layer in layers},
               "mask": {layer: f[f"mask/{layer}"][:] for layer in layers},
               "controls": {kind: [{layer: f[f"controls/{kind}/{i}/{layer}"][:] for layer in layers}
                                   for i in sorted(f[f"controls/{kind}"], key=int)]
                            for kind in (f["controls"] if "controls" in f else [])},
               "validation_t": ({layer: f[f"validation/{layer}/t"][:] for layer in layers}
                                if "validation" in f else None)}
    return out
