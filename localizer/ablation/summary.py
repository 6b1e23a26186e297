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
    """The results document; non-finite numbers become null."""
    base = results["baseline"]
    metrics = list(base)
    main = [c for c in conditions if c.sweep is None]
    kinds = list(dict.fromkeys(c.group for c in main if c.group not in ("baseline", "localized")))

    def delta(name):
        return {m: _finite(results[name][m] - base[m]) for m in metrics}

    doc: dict[str, Any] = {
        "task": task,
        "metrics": metrics,
        "method": method,
        "n_selected": int(n_selected),
        "baseline": {m: _finite(v) for m, v in base.items()},
        "localized": {m: _finite(v) for m, v in results["localized"].items()},
        "controls": {
            k: [{m: _finite(v) for m, v in results[c.name].items()} for c in main if c.group == k] for k in kinds
        },
        "delta": {"localized": delta("localized"), **{k: [delta(c.name) for c in main if c.group == k] for k in kinds}},
        "z": {},
        "p_empirical": {},
    }
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
