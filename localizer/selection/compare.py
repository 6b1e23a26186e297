"""``localizer compare``: how much two or more selected networks overlap, against chance.

For selections ``A`` (``a`` units) and ``B`` (``b`` units) over the same ``M`` units: ``overlap`` = |A ∩ B|,
``dice`` = 2 |A ∩ B| / (a + b), ``chance_dice`` = 2ab / (M (a + b)) (the expected Dice of two random sets of those
sizes: E|A ∩ B| = ab / M), and ``p_hypergeom`` = P(X >= overlap) for X ~ Hypergeometric(M, a, b), the probability
that two random sets of those sizes overlap at least that much. Every number is computed over all units and per layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from localizer.errors import LocalizerError


def overlap_statistics(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Overlap of two bool masks ``[M]``: ``overlap``, ``dice``, ``chance_dice``, ``p_hypergeom`` (None where a
    number is undefined: no unit selected in either)."""
    from scipy.stats import hypergeom

    m, a, b = int(x.size), int(x.sum()), int(y.sum())
    k = int(np.sum(x & y))
    if a + b == 0:
        return {"overlap": k, "dice": None, "chance_dice": None, "p_hypergeom": None}
    return {
        "overlap": k,
        "dice": 2 * k / (a + b),
        "chance_dice": 2 * a * b / (m * (a + b)),
        "p_hypergeom": float(hypergeom.sf(k - 1, m, a, b)),
    }


def _matrices(masks: list[np.ndarray]) -> dict[str, Any]:
    n = len(masks)
    keys = ("overlap", "dice", "chance_dice", "p_hypergeom")
    out: dict[str, Any] = {"n_units": int(masks[0].size), "n_selected": [int(m.sum()) for m in masks]}
    out.update({key: [[None] * n for _ in range(n)] for key in keys})
    for i in range(n):
        for j in range(n):
            stats = overlap_statistics(masks[i], masks[j])
            for key in keys:
                out[key][i][j] = stats[key]
    return out


def compare(files: list[str], out: Optional[str] = None, overwrite: bool = False) -> dict[str, Any]:
    """Pairwise overlap of selection files over the same units: Dice, chance Dice, overlap, hypergeometric p.

    Args:
        files: two or more selection files (.h5) made on the same layers of the same model.
        out: also write the result as JSON here.
        overwrite: replace an existing out.

    Returns:
        ``{"files", "n_units", "n_selected", "dice", "chance_dice", "overlap", "p_hypergeom", "per_layer"}``: the
        matrices in file order (``per_layer``: the same keys for each layer).
    """
    from localizer.files.check import require_valid
    from localizer.files.outputs import check_output, check_outputs
    from localizer.selection.result import Selection

    if len(files) < 2:
        raise LocalizerError(f"compare needs at least two selection files, got {len(files)}")
    if out is not None:
        check_outputs({"out": out}, {"files": [Path(f) for f in files]})
        check_output(Path(out), overwrite)
    selections = []
    for f in files:
        require_valid(f, "selection")
        selections.append(Selection.read(f))
    first = selections[0].layout
    for f, s in zip(files[1:], selections[1:]):
        if s.layout.layers != first.layers or s.layout.units != first.units:
            differs = [
                f"{layer}: {u} vs {v}" for layer, u, v in zip(first.layers, first.units, s.layout.units) if u != v
            ][:3]
            what = (
                f"layers {first.layers[:3]}... vs {s.layout.layers[:3]}..."
                if s.layout.layers != first.layers
                else "unit counts " + ", ".join(differs)
            )
            raise LocalizerError(
                f"{files[0]} and {f} select from different units ({what}); compare selections made on the same "
                f"layers of the same model"
            )
    masks = [s.mask.astype(bool) for s in selections]
    result: dict[str, Any] = {"files": [str(Path(f).resolve()) for f in files], **_matrices(masks)}
    result["per_layer"] = {layer: _matrices([first.split(m)[layer] for m in masks]) for layer in first.layers}
    if out is not None:
        from localizer.files.outputs import write_json

        write_json(out, result)
    return result


def print_comparison(result: dict[str, Any], file=None) -> None:
    """The Dice matrix with chance and hypergeometric p, then each pair's overlap per layer where any unit is shared."""
    import sys

    out = file or sys.stdout
    names = [Path(f).name if len({Path(g).name for g in result["files"]}) == len(result["files"]) else f
             for f in result["files"]]  # fmt: skip
    print(f"{len(names)} selections over {result['n_units']} units; selected: "
          + ", ".join(f"{n} ({k})" for n, k in zip(names, result["n_selected"])), file=out)  # fmt: skip
    width = max(len(n) for n in names) + 2
    print(" " * (width + 2) + "  ".join(f"{i:>38}" for i in range(len(names))), file=out)
    for i, name in enumerate(names):
        cells = []
        for j in range(len(names)):
            d, c, p = result["dice"][i][j], result["chance_dice"][i][j], result["p_hypergeom"][i][j]
            cells.append("n/a".rjust(38) if d is None else f"Dice {d:.3f} (chance {c:.3f}) p={p:.2g}".rjust(38))
        print(f"{i} {name:<{width}}" + "  ".join(cells), file=out)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            shared = {layer: m["overlap"][i][j] for layer, m in result["per_layer"].items() if m["overlap"][i][j]}
            text = ", ".join(f"{layer}={k}" for layer, k in shared.items()) or "none"
            print(f"{names[i]} & {names[j]}: {result['overlap'][i][j]} shared units; per layer: {text}", file=out)
