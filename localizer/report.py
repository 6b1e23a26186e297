"""TensorBoard figures and printed summaries."""

from __future__ import annotations

import numpy as np


def fraction_selected(result) -> dict[str, float]:
    """``{layer: fraction of its units in the mask}``."""
    return {layer: float(m.mean()) for layer, m in result.layout.split(result.mask).items()}


def log_selectivity(experiment, result, step: int = 0) -> None:
    """Per-layer histograms of t (``selectivity/t/<layer>``), the fraction of units selected per layer as scalars
    and as a bar chart (``selectivity/fraction_selected``). ``experiment`` is a TensorBoard ``SummaryWriter``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for layer, t in result.layout.split(result.stats["t"]).items():
        experiment.add_histogram(f"selectivity/t/{layer}", np.nan_to_num(t), step)
    fractions = fraction_selected(result)
    for layer, value in fractions.items():
        experiment.add_scalar(f"selectivity/fraction_selected/{layer}", value, step)
    fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(fractions) + 2), 3))
    ax.bar(range(len(fractions)), [100 * v for v in fractions.values()])
    ax.set_xticks(range(len(fractions)), list(fractions), rotation=90, fontsize=7)
    ax.set_ylabel("% of layer's units selected")
    ax.set_title(f"{int(result.mask.sum())} units selected")
    fig.tight_layout()
    experiment.add_figure("selectivity/fraction_selected", fig, step)
    plt.close(fig)
    experiment.flush()


def print_selection(result, file=None) -> None:
    """A short text summary of a selection: units per layer, top layers, validation and split-half numbers."""
    import sys

    out = file or sys.stdout
    a = result.attrs
    mask, layout = result.mask, result.layout
    print(f"selected {int(mask.sum())} of {layout.total} units ({100 * mask.mean():.3g}%) from "
          f"{a['n_positive']} positive vs {a['n_control']} control stimuli "
          f"({'|activation|' if a['abs'] else 'signed activation'}, alternative={a['alternative']})", file=out)
    counts = {layer: int(m.sum()) for layer, m in layout.split(mask).items()}
    print("units per layer: " + ", ".join(f"{layer}={c}" for layer, c in counts.items()), file=out)
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
    print("top layers: " + ", ".join(f"{layer} ({c})" for layer, c in top if c), file=out)
    if mask.any():
        mag = result.stats["mean_abs_all"]
        print(f"mean |activation|: selected {mag[mask].mean():.4g} vs all units {mag[result.valid].mean():.4g} "
              f"({mag[mask].mean() / max(mag[result.valid].mean(), 1e-30):.2f}x)", file=out)
    if result.validation_t is not None and mask.any():
        vt = result.validation_t[mask]
        print(f"held-out validation: mean t of selected units {np.nanmean(vt):.3f} "
              f"(all units {np.nanmean(result.validation_t[result.valid]):.3f})", file=out)
    if "dice_split_half" in a:
        print(f"split-half Dice {a['dice_split_half']:.3f} (chance {a['dice_chance']:.3f})", file=out)
    for kind, sets in result.controls.items():
        if sets:
            print(f"controls: {len(sets)} x {kind}", file=out)
