"""The ablation's TensorBoard run and figures: series tags, a custom-scalars layout, HParams, delta and sweep plots."""

from __future__ import annotations

from typing import Any

import numpy as np

from localizer.report import _num, _plt, _save


def metric_groups(metrics: list[str]) -> list[tuple[str, list[str]]]:
    """Metrics that belong on one axis: ``x_positive`` beside ``x_control`` (agreement, KL); others alone."""
    groups, seen = [], set()
    for m in metrics:
        if m in seen:
            continue
        stem = m[: -len("_positive")] if m.endswith("_positive") else None
        if stem and f"{stem}_control" in metrics:
            groups.append((stem, [m, f"{stem}_control"]))
            seen |= {m, f"{stem}_control"}
        else:
            groups.append((m, [m]))
            seen.add(m)
    return groups


def log_ablation(logger, doc: dict, hparams: dict, png_dir=None) -> None:
    """TensorBoard for one ablation task (``logger``: a TensorBoardLogger, or None for the PNGs only).

    Scalars, one chart per metric and kind of value, conditions as series (x: the control set's number):
    ``ablation/<task>/<metric>/delta/<localized|kind>`` and ``.../value/<baseline|localized|kind>`` (the localized and
    baseline values drawn as flat lines over the sets); with a sweep ``ablation/<task>/<metric>/sweep/<localized|kind>``
    (x: top % x 100, controls: the mean of their sets). A custom-scalars layout puts each metric's series in one
    chart. Figures ``ablation/<task>/<metric>/deltas`` (and ``.../sweep``), also saved as PNGs in ``png_dir``. HParams:
    ``hparams`` plus metrics ``hp/<task>/<metric>/delta_localized`` and ``hp/<task>/<metric>/z_<kind>``.
    """
    task = doc["task"]
    kinds = [k for k in doc["delta"] if k != "localized"]
    sets = max([len(doc["delta"][k]) for k in kinds] + [1])
    ex = logger.experiment if logger is not None else None
    if ex is not None:
        for m in doc["metrics"]:
            series = {
                "delta/localized": [doc["delta"]["localized"][m]] * sets,
                "value/baseline": [doc["baseline"][m]] * sets,
                "value/localized": [doc["localized"][m]] * sets,
                **{f"delta/{k}": [d[m] for d in doc["delta"][k]] for k in kinds},
                **{f"value/{k}": [c[m] for c in doc["controls"][k]] for k in kinds},
            }
            for name, values in series.items():
                for i, v in enumerate(values):
                    if v is not None:
                        ex.add_scalar(f"ablation/{task}/{m}/{name}", v, i)
            for point in doc.get("sweep", []):
                step = int(round(100 * float(point["top"])))
                means: dict[str, float | None] = {"localized": point["delta"]["localized"][m]}
                for k in kinds:
                    ds = [d[m] for d in point["delta"].get(k, []) if d[m] is not None]
                    means[k] = float(np.mean(ds)) if ds else None
                for name, v in means.items():
                    if v is not None:
                        ex.add_scalar(f"ablation/{task}/{m}/sweep/{name}", v, step)
        layout = {}
        for m in doc["metrics"]:
            layout[f"{task}: {m} (x = control set)"] = ["Multiline", [f"ablation/{task}/{m}/delta/.*"]]
            if doc.get("sweep"):
                layout[f"{task}: {m} by top % (x = top % x 100)"] = ["Multiline", [f"ablation/{task}/{m}/sweep/.*"]]
        ex.add_custom_scalars({f"ablation {task}": layout})
    plt = _plt()
    for stem, group in metric_groups(doc["metrics"]):
        fig = _delta_figure(plt, doc, stem, group, kinds)
        _save(fig, png_dir, f"ablation_{task}_{stem}_deltas")
        if ex is not None:
            ex.add_figure(f"ablation/{task}/{stem}/deltas", fig, 0)
        plt.close(fig)
        if doc.get("sweep"):
            for m in group:
                fig = _sweep_figure(plt, doc, m, kinds)
                _save(fig, png_dir, f"ablation_{task}_{m}_sweep")
                if ex is not None:
                    ex.add_figure(f"ablation/{task}/{m}/sweep", fig, 0)
                plt.close(fig)
    if logger is not None:
        log_hparams(ex, hparams, doc, kinds)
        logger.finalize("success")


# HParams columns, the same in every session (TensorBoard shows the columns of one session's experiment summary)
HP_METRICS = ("accuracy", "cross_entropy", "agreement_positive", "agreement_control", "kl_positive", "kl_control")


def log_hparams(ex, hparams: dict, doc: dict, kinds: list[str]) -> None:
    """One HParams session: ``hparams`` as columns, and as metrics ``hp/<metric>/delta_localized`` and
    ``hp/<metric>/z_<kind>`` for the task's metrics among :data:`HP_METRICS` (the task is a column). Every session
    declares the same columns, so that the dashboard at the top-level logdir shows every task of every job."""
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    from localizer.files import CONTROL_KINDS

    # this task's metrics first (TensorBoard shows the first five columns without a click): deltas, then z
    ordered = [m for m in doc["metrics"] if m in HP_METRICS] + [m for m in HP_METRICS if m not in doc["metrics"]]
    names = [f"hp/{m}/delta_localized" for m in ordered] + [f"hp/{m}/z_{k}" for m in ordered for k in CONTROL_KINDS]
    columns = dict.fromkeys(names, 0.0)
    experiment, start, end = hparams_summaries(hparams, columns)
    writer = ex._get_file_writer()
    for summary in (experiment, start, end):
        writer.add_summary(summary)
    for m in doc["metrics"]:
        if m not in HP_METRICS:
            continue
        values = {"delta_localized": doc["delta"]["localized"][m], **{f"z_{k}": doc["z"][k][m] for k in kinds}}
        for what, v in values.items():
            if v is not None:
                ex.add_scalar(f"hp/{m}/{what}", v, 0)
    ex.flush()


def _delta_figure(plt, doc: dict, stem: str, group: list[str], kinds: list[str]):
    """Bars of delta (ablated - baseline): the localized units beside each control kind (mean ± 1 sd of its sets,
    every set as a dot), z and p written over each control bar; the metrics of ``group`` side by side."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    colors = ["tab:red", "tab:blue"] if len(group) > 1 else ["tab:red"]
    width = 0.8 / len(group)
    fig, ax = plt.subplots(figsize=(1.5 * (len(kinds) + 1) + 2.2, 3.6))
    for j, m in enumerate(group):
        offset = (j - (len(group) - 1) / 2) * width
        loc = doc["delta"]["localized"][m]
        ax.bar([offset], [np.nan if loc is None else loc], width=width, color=colors[j])
        for i, k in enumerate(kinds, start=1):
            d = np.array([x[m] for x in doc["delta"][k] if x[m] is not None], dtype=float)
            if not len(d):
                continue
            sd = d.std(ddof=1) if len(d) > 1 else 0.0
            ax.bar([i + offset], [d.mean()], width=width, color=colors[j], alpha=0.35, yerr=[sd], capsize=3)
            ax.scatter(np.full(len(d), i + offset), d, s=7, color="black", zorder=3)
            z, p = doc["z"][k][m], doc["p_empirical"][k][m]
            label = f"z={_num(z, '.1f')}\np={_num(p, '.2g')}"
            top = max(d.max() + sd, 0) if loc is None or loc >= 0 else min(d.min() - sd, 0)
            ax.annotate(label, (i + offset, top), ha="center", va="bottom" if top >= 0 else "top", fontsize=6)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xticks(range(len(kinds) + 1), ["localized units"] + [f"{k}\ncontrols" for k in kinds], fontsize=7)
    ax.set_ylabel(f"delta {stem} (ablated - baseline)", fontsize=8)
    ax.set_title(f"{doc['task']}: {doc['method']} ablation of {doc['n_selected']} units", fontsize=9)
    handles: list[Any] = [Patch(color=c, label=m) for c, m in zip(colors, group)] if len(group) > 1 else []
    handles += [
        Patch(color="tab:gray", alpha=0.35, label="control sets: mean ± 1 sd"),
        Line2D([], [], marker="o", linestyle="", color="black", markersize=3, label="one control set"),
    ]
    ax.legend(handles=handles, fontsize=6, loc="best")
    ax.margins(y=0.25)
    fig.tight_layout()
    return fig


def _sweep_figure(plt, doc: dict, m: str, kinds: list[str]):
    """delta of ``m`` against the top % of units ablated: localized and each control kind (mean ± 1 sd)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    tops = [float(p["top"]) for p in doc["sweep"]]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(tops, [p["delta"]["localized"][m] for p in doc["sweep"]], "o-", color="tab:red", label="localized units")
    for k in kinds:
        per = [[d[m] for d in p["delta"].get(k, []) if d[m] is not None] for p in doc["sweep"]]
        mean = [np.mean(v) if v else np.nan for v in per]
        sd = [np.std(v, ddof=1) if len(v) > 1 else 0 for v in per]
        ax.errorbar(tops, mean, yerr=sd, fmt="s--", capsize=3, label=f"{k} controls (mean ± 1 sd)")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(tops))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("units ablated (top % by selectivity)", fontsize=8)
    ax.set_ylabel(f"delta {m} (ablated - baseline)", fontsize=8)
    ax.set_title(f"{doc['task']}: {doc['method']} ablation, sweep", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig
