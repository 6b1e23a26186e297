"""TensorBoard figures and printed summaries."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def remove_run(folder: Path) -> None:
    """Delete a TensorBoard run folder that holds only TensorBoard's and Lightning's files (never anything else)."""
    ours = ("events.out.tfevents.", "hparams.yaml")
    if folder.is_dir() and all(p.is_file() and p.name.startswith(ours) for p in folder.iterdir()):
        shutil.rmtree(folder)


@contextmanager
def tensorboard_run(log_dir, step: str, job: str | None = None):
    """A TensorBoardLogger for one step's run, or None when ``log_dir`` is None.

    With a ``job`` name the run is ``log_dir/<job>/<step>`` (a rerun of the job replaces it); without one it is
    ``log_dir/<step>/version_N``. Lightning's placeholder ``hp_metric`` is never written. When the body fails, a run
    folder that this call created is removed: a failed job leaves no empty run behind.
    """
    if log_dir is None:
        yield None
        return
    from lightning.pytorch.loggers import TensorBoardLogger

    if job is None:
        logger = TensorBoardLogger(str(log_dir), name=step, default_hp_metric=False)
    else:
        logger = TensorBoardLogger(str(log_dir), name=job, version=step, default_hp_metric=False)
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    folder = Path(logger.log_dir)
    if job is not None and getattr(rank_zero_only, "rank", 0) == 0:
        remove_run(folder)  # the job's earlier run of this step
    existed = folder.exists()
    try:
        yield logger
    except BaseException:
        if not existed:
            writer = getattr(logger, "_experiment", None)
            if writer is not None:  # its writer thread must not write into the folder after it is gone
                writer.close()
            shutil.rmtree(folder, ignore_errors=True)
        raise


def fraction_selected(result) -> dict[str, float]:
    """``{layer: fraction of its units in the mask}``."""
    return {layer: float(m.mean()) for layer, m in result.layout.split(result.mask).items()}


def _save(fig, png_dir, name: str) -> None:
    """Also save a figure as ``png_dir/name.png`` (for papers and people without TensorBoard)."""
    if png_dir is not None:
        from pathlib import Path

        Path(png_dir).mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(png_dir) / f"{name.replace('/', '_')}.png", dpi=120)


def log_selectivity(experiment, result, step: int = 0, png_dir=None) -> None:
    """Per-layer histograms of t (``selectivity/t/<layer>``), the fraction of units selected per layer as scalars
    (``selectivity/fraction_selected/<layer>``) and as a bar chart (``selectivity/fraction_selected``).
    ``experiment`` is a TensorBoard ``SummaryWriter`` (None: only the PNG in ``png_dir``)."""
    plt = _plt()

    fractions = fraction_selected(result)
    if experiment is not None:
        for layer, t in result.layout.split(result.stats["t"]).items():
            experiment.add_histogram(f"selectivity/t/{layer}", np.nan_to_num(t), step)
        for layer, value in fractions.items():
            experiment.add_scalar(f"selectivity/fraction_selected/{layer}", value, step)
    fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(fractions) + 2), 3.2))
    ax.bar(range(len(fractions)), [100 * v for v in fractions.values()], color="tab:red")
    ax.set_xticks(range(len(fractions)), list(fractions), rotation=90, fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("% of the layer's units selected")
    ax.set_title(f"{int(result.mask.sum())} of {result.layout.total} units selected", fontsize=9)
    fig.tight_layout()
    _save(fig, png_dir, "selectivity_fraction_selected")
    if experiment is not None:
        experiment.add_figure("selectivity/fraction_selected", fig, step)
        experiment.flush()
    plt.close(fig)


def print_selection(result, file=None) -> None:
    """A short text summary of a selection: units per layer, top layers, validation and split-half numbers."""
    import sys

    out = file or sys.stdout
    a = result.attrs
    mask, layout = result.mask, result.layout
    print(
        f"selected {int(mask.sum())} of {layout.total} units ({100 * mask.mean():.3g}%) from "
        f"{a['n_positive']} positive vs {a['n_control']} control stimuli "
        f"({'|activation|' if a['abs'] else 'signed activation'}, alternative={a['alternative']})",
        file=out,
    )
    counts = {layer: int(m.sum()) for layer, m in layout.split(mask).items()}
    print("units per layer: " + ", ".join(f"{layer}={c}" for layer, c in counts.items()), file=out)
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
    print("top layers: " + ", ".join(f"{layer} ({c})" for layer, c in top if c), file=out)
    if mask.any():
        mag = result.stats["mean_abs_all"]
        print(
            f"mean |activation|: selected {mag[mask].mean():.4g} vs all units {mag[result.valid].mean():.4g} "
            f"({mag[mask].mean() / max(mag[result.valid].mean(), 1e-30):.2f}x)",
            file=out,
        )
    if result.validation_t is not None and mask.any():
        vt = result.validation_t[mask]
        print(
            f"held-out validation: mean t of selected units {np.nanmean(vt):.3f} "
            f"(all units {np.nanmean(result.validation_t[result.valid]):.3f})",
            file=out,
        )
    if "n_tokens_t" in a:
        print(
            f"token length: positive {a['n_tokens_positive']:.1f} vs control {a['n_tokens_control']:.1f} tokens "
            f"(Welch t = {a['n_tokens_t']:.1f})",
            file=out,
        )
    for text in json.loads(str(a.get("warnings", "[]"))):
        print(f"warning: {text}", file=out)
    if "dice_split_half" in a:
        print(f"split-half Dice {a['dice_split_half']:.3f} (chance {a['dice_chance']:.3f})", file=out)
    for kind, sets in result.controls.items():
        if sets:
            print(f"controls: {len(sets)} x {kind}", file=out)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _num(value, spec: str) -> str:
    """A number for the printed tables; ``n/a`` for a value that could not be computed (null in the JSON)."""
    return "n/a" if value is None or not np.isfinite(value) else format(value, spec)


def print_ablation(doc: dict, file=None) -> None:
    """The localized delta of every metric beside each control kind's deltas (mean ± sd), z and p."""
    import sys

    out = file or sys.stdout
    print(f"{doc['task']}: {doc['method']} ablation of {doc['n_selected']} units", file=out)
    kinds = [k for k in doc["delta"] if k != "localized"]
    if kinds:
        print(
            "  (delta = ablated - baseline; z = (localized delta - mean control delta) / sd of the control deltas, "
            "so z < 0: the metric fell more than with random units; p = empirical, on |delta|: the share of "
            "control sets, plus one, that changed it at least as much)",
            file=out,
        )
    for m in doc["metrics"]:
        print(
            f"  {m}: baseline {_num(doc['baseline'][m], '.4g')}, localized {_num(doc['localized'][m], '.4g')} "
            f"(delta {_num(doc['delta']['localized'][m], '+.4g')})",
            file=out,
        )
        for k in kinds:
            d = np.array([np.nan if x[m] is None else x[m] for x in doc["delta"][k]], dtype=float)
            sd = np.std(d, ddof=1) if len(d) > 1 else 0.0
            print(
                f"    vs {k:<17} delta {_num(np.mean(d), '+.4g')} ± {_num(sd, '.3g')} (n={len(d)})  "
                f"z={_num(doc['z'][k][m], '.2f')}  p={_num(doc['p_empirical'][k][m], '.3g')}",
                file=out,
            )


def top_units(result, n: int = 8) -> list[tuple[str, int, float]]:
    """The ``n`` most selective units: ``(layer, unit, t)``, by the ranking score of the selection."""
    t = result.stats["t"]
    score = np.abs(t) if result.attrs.get("alternative") == "two-sided" else t
    score = np.where(result.valid, score, -np.inf)
    order = np.argsort(-score, kind="stable")[:n]
    layer_of = result.layout.layer_of()
    offsets = result.layout.offsets
    return [(result.layout.layers[layer_of[i]], int(i - offsets[layer_of[i]]), float(t[i])) for i in order]


def log_exemplars(
    activations, result, stimuli, log_dir, png_dir=None, n_units: int = 8, n_top: int = 5, log_name: str | None = None
) -> None:
    """For the most selective units, the stimuli that drive them most: a text table (``exemplars/text``) or an image
    grid (``exemplars/images``) in TensorBoard (``log_dir/exemplars``), and ``exemplars.md``/``.png`` in png_dir."""
    from localizer.files.activations import open_activations

    units = top_units(result, n_units)
    use_abs = bool(result.attrs.get("abs"))
    rows = []
    with open_activations(activations) as (f, _):
        for layer, u, t in units:
            x = f[f"activations/{layer}"][:, u]
            x = np.abs(x) if use_abs else x
            rows.append((layer, u, t, np.argsort(-x, kind="stable")[:n_top]))
    with tensorboard_run(log_dir, "exemplars", log_name) as logger:
        _exemplars(logger, rows, stimuli, png_dir, n_top)


def _exemplars(logger, rows, stimuli, png_dir, n_top: int) -> None:
    if "text" in stimuli.column_names:
        lines = ["| layer | unit | t | stimuli that drive it most |", "|---|---|---|---|"]
        for layer, u, t, idx in rows:
            texts = " / ".join(f"{'+' if stimuli[int(i)]['positive'] else '-'} {stimuli[int(i)]['text']}" for i in idx)
            lines.append(f"| {layer} | {u} | {t:.2f} | {texts} |")
        table = "\n".join(lines)
        if logger is not None:
            logger.experiment.add_text("exemplars/text", table, 0)
        if png_dir is not None:
            (Path(png_dir) / "exemplars.md").write_text(table + "\n")
    else:
        plt = _plt()
        fig, axes = plt.subplots(len(rows), n_top, figsize=(1.3 * n_top, 1.3 * len(rows)), squeeze=False)
        for r, (layer, u, t, idx) in enumerate(rows):
            for c, i in enumerate(idx):
                ax = axes[r][c]
                ax.imshow(np.asarray(stimuli[int(i)]["image"].convert("RGB")))
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(f"{layer}\nunit {u}, t={t:.1f}", fontsize=6)
        fig.tight_layout()
        _save(fig, png_dir, "exemplars")
        if logger is not None:
            logger.experiment.add_figure("exemplars/images", fig, 0)
        plt.close(fig)
    if logger is not None:
        logger.finalize("success")


def print_run_summary(model: str, stimuli: str, result, docs: dict, file=None) -> None:
    """The localizer run in a few lines: the selection, then every task's deltas against each control kind, with
    the magnitude caveat made explicit."""
    import sys

    out = file or sys.stdout
    print(f"== {model} on {stimuli} ==", file=out)
    print_selection(result, file=out)
    for _task, doc in docs.items():
        print_ablation(doc, file=out)
        for m in doc["metrics"]:
            loc = doc["delta"]["localized"][m]
            verdicts = []
            for kind in ("global", "layer_matched", "magnitude_matched"):
                deltas = [d[m] for d in doc["delta"].get(kind, []) if d[m] is not None]
                if deltas and loc is not None:
                    beats = sum(abs(loc) > abs(d) for d in deltas)
                    verdicts.append(f"{kind}: |delta| larger than {beats}/{len(deltas)}")
            if verdicts:
                print(f"  {m}: localized vs controls -> " + "; ".join(verdicts), file=out)
    mag = result.stats["mean_abs_all"]
    if result.mask.any():
        ratio = mag[result.mask].mean() / max(mag[result.valid].mean(), 1e-30)
        note = (
            " — the selection is dominated by large-magnitude units; judge it against the magnitude-matched "
            "controls (or rerun with method: mean)"
            if ratio > 2
            else ""
        )
        print(f"magnitude: selected units' mean |activation| is {ratio:.1f}x the average unit{note}", file=out)
