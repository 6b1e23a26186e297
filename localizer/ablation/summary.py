"""Control statistics of an ablation: deltas vs baseline, z against each control kind, empirical p; the results
document (``--out results.json``)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from localizer.ablation.module import Condition

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


def summarize(
    results: dict[str, dict[str, float]], conditions: list[Condition], task: str, method: str, n_selected: int
) -> dict[str, Any]:
    """The results document; non-finite numbers become null.

    Keys: ``task``, ``metrics``, ``method``, ``n_selected``, ``baseline`` ``{metric: value}``, then the block of
    :func:`_compare`: ``localized`` (raw metrics), ``controls`` ``{kind: [raw metrics per set]}``, ``delta``
    (``localized``: ``{metric: ablated - baseline}``, ``<kind>``: one per set), ``z`` and ``p_empirical``
    ``{kind: {metric}}``. A sweep adds ``sweep``: one entry per top-% with ``top``, ``n_selected`` and the same block.
    """
    base = results["baseline"]
    metrics = list(base)
    main = [c for c in conditions if c.sweep is None]
    doc: dict[str, Any] = {
        "task": task,
        "metrics": metrics,
        "method": method,
        "n_selected": int(n_selected),
        "baseline": {m: _finite(v) for m, v in base.items()},
        **_compare(results, main, metrics),
    }
    sweeps = list(dict.fromkeys(c.sweep for c in conditions if c.sweep is not None))
    if sweeps:
        doc["sweep"] = []
        for pct in sweeps:
            here = [c for c in conditions if c.sweep == pct]
            n = next((c.n_units for c in here if c.group == "localized"), None)
            doc["sweep"].append({"top": pct, "n_selected": n, **_compare(results, [conditions[0], *here], metrics)})
    return doc


def _compare(results, conditions: list[Condition], metrics: list[str]) -> dict[str, Any]:
    """Raw metrics, deltas vs the baseline, z and empirical p of one localized condition against its controls."""
    base = results["baseline"]
    localized = next(c for c in conditions if c.group == "localized")
    kinds = list(dict.fromkeys(c.group for c in conditions if c.group not in ("baseline", "localized")))

    def raw(name):
        return {m: _finite(results[name][m]) for m in metrics}

    def delta(name):
        return {m: _finite(results[name][m] - base[m]) for m in metrics}

    block: dict[str, Any] = {
        "localized": raw(localized.name),
        "controls": {k: [raw(c.name) for c in conditions if c.group == k] for k in kinds},
        "delta": {
            "localized": delta(localized.name),
            **{k: [delta(c.name) for c in conditions if c.group == k] for k in kinds},
        },
        "z": {},
        "p_empirical": {},
    }
    for k in kinds:
        block["z"][k], block["p_empirical"][k] = {}, {}
        for m in metrics:
            dl = results[localized.name][m] - base[m]
            dc = [results[c.name][m] - base[m] for c in conditions if c.group == k]
            block["z"][k][m], block["p_empirical"][k][m] = control_statistics(dl, dc)
    return block
