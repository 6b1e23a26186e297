"""``localizer dissociate``: is each localized network specific to its own task? (a double dissociation)

Each network is localized on its own stimuli (one extraction per stimulus set), then ablated — with its matched
random controls — on every network's task. A network is specific when ablating it hurts its own task more than the
other tasks, and the other networks' ablations hurt its task less. Built-in localizers and their tasks
(:data:`TASKS_OF`): ``language`` (next-token prediction and grammatical minimal pairs), ``tom`` (false-belief stories
completed with the believed vs the true location) and ``arithmetic`` (two-digit sums completed with the right vs a
wrong answer); the task data are held out from the localizer stimuli.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Optional

from localizer.errors import LocalizerError, step_options
from localizer.recording.extract import Dtype

# localizer -> its tasks, as (task name in the results, ablation task, task data)
TASKS_OF = {
    "language": [
        ("language-next-token", "next-token", "language-next-token"),
        ("language-minimal-pairs", "minimal-pairs", "language-minimal-pairs"),
    ],
    "tom": [("tom-forced-choice", "minimal-pairs", "tom-forced-choice")],
    "arithmetic": [("arithmetic-forced-choice", "minimal-pairs", "arithmetic-forced-choice")],
}
MAIN_METRIC = "accuracy"
CHANCE = {"next-token": None, "minimal-pairs": 0.5}  # forced choice between two completions
NEAR_CHANCE = 0.1  # a baseline within this of chance cannot show an ablation effect


def dissociate(
    model: str,
    localizers: str = "language,tom,arithmetic",
    out: str = "outputs/dissociation",
    *,
    layers: str = "auto",
    pooling: Optional[str] = None,
    batch_size: int = 16,
    max_length: Optional[int] = None,
    dtype: Dtype = "float32",
    device_map: Optional[str] = None,
    max_memory: Optional[str] = None,
    overwrite: bool = False,
    log_dir: Optional[str] = "lightning_logs",
    select: Optional[dict[str, Any]] = None,
    ablate: Optional[dict[str, Any]] = None,
    trainer: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Localize several networks and ablate each on every network's task: a double-dissociation matrix.

    Args:
        model: the model (as for extract).
        localizers: built-in localizers, comma-separated: language, tom, arithmetic.
        out: the folder for every file (one subfolder per localizer, dissociation.json, dissociation.png).
        layers: layers to record (as for extract).
        pooling: pooling (as for extract; default: each localizer's own, last for language, mean for tom and
            arithmetic).
        batch_size: stimuli per forward pass when recording.
        max_length: truncate the localizer stimuli to this many tokens (the task data are not truncated).
        dtype: load the weights as float32, bfloat16 or float16.
        device_map: place a model larger than one device on every device (as for extract).
        max_memory: with device_map, the most each device may hold (as for extract).
        overwrite: replace the files of an earlier dissociation in out.
        log_dir: TensorBoard folder (a run log_dir/dissociation-NAME is added; null: no logs).
        select: options of the select step (as for localizer run's select).
        ablate: options of the ablate step (method, controls, n_controls, batch_size, max_length, num_workers).
        trainer: Lightning Trainer options (one process).

    Returns:
        the dissociation document written to out/dissociation.json.
    """
    from localizer.ablation.ablate import control_kinds, run_ablation
    from localizer.ablation.masking import parse_method
    from localizer.files.outputs import check_log_dir, check_output, write_json
    from localizer.pipeline import _one_process
    from localizer.recording.extract import record
    from localizer.recording.models import load_model
    from localizer.selection.compare import compare
    from localizer.selection.options import PARAMETERS as SELECT_OPTIONS
    from localizer.selection.options import SelectionOptions
    from localizer.selection.select import select as select_step
    from localizer.selection.select import select_file

    names = [n.strip() for n in localizers.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASKS_OF]
    if unknown or len(set(names)) < 2:
        raise LocalizerError(
            f"localizers: give two or more of {', '.join(TASKS_OF)} (got {localizers!r})"
            if not unknown
            else f"localizers: no built-in task for {unknown}; choose from {', '.join(TASKS_OF)}"
        )
    names = list(dict.fromkeys(names))
    allowed_ablate = {"method", "controls", "n_controls", "batch_size", "max_length", "num_workers"}
    bad = sorted(set(ablate or {}) - allowed_ablate) + sorted(set(select or {}) - set(SELECT_OPTIONS))
    if bad:
        raise LocalizerError(f"dissociate: unknown select/ablate options {bad}")
    with step_options("select"):
        defaults = {k: p.default for k, p in inspect.signature(select_step).parameters.items()}
        options = SelectionOptions.from_parameters({**defaults, **(select or {})})
    ablate = dict(ablate or {})
    with step_options("ablate"):
        parse_method(ablate.get("method", "zero"))
        control_kinds(ablate.get("controls", "all"))
    check_log_dir(log_dir)
    folder = Path(out)
    result_file = folder / "dissociation.json"
    check_output(result_file, overwrite)
    trainer = _one_process(dict(trainer or {}))
    loaded = load_model(model, "text", dtype=dtype, device_map=device_map, max_memory=max_memory)
    selections = {}
    for name in names:  # one extraction and one selection per localizer
        sub = folder / name
        try:
            acts = record(loaded, name, sub / "activations.h5", layers=layers, pooling=pooling, batch_size=batch_size,
                          max_length=max_length, overwrite=True, source=name, trainer=trainer)  # fmt: skip
            with step_options("select"):
                select_file(acts, sub / "selection.h5", options, log_dir=None)
        except LocalizerError as e:
            raise LocalizerError(f"the {name} localizer: {e}") from e
        selections[name] = sub / "selection.h5"
    tasks = [t for name in names for t in TASKS_OF[name]]
    doc: dict[str, Any] = {
        "networks": names,
        "tasks": [t[0] for t in tasks],
        "metric": MAIN_METRIC,
        "baseline": {},
        "delta": {n: {} for n in names},
        "z": {n: {} for n in names},
        "near_chance": [],
    }
    for network in names:
        for label, task, data in tasks:
            with step_options("ablate"):
                result = run_ablation(selections[network], task, task_data=data, loaded=loaded,
                                      out=folder / network / f"results_{label}.json", log_dir=None,
                                      trainer=trainer, **ablate)  # fmt: skip
            doc["baseline"][label] = result["baseline"]
            doc["delta"][network][label] = result["delta"]["localized"]
            doc["z"][network][label] = result["z"]
    for label, task, _ in tasks:
        chance, base = CHANCE.get(task), doc["baseline"][label].get(MAIN_METRIC)
        if chance is not None and base is not None and base < chance + NEAR_CHANCE:
            doc["near_chance"].append(label)
    overlap = compare([str(selections[n]) for n in names])
    doc["dice"], doc["chance_dice"] = overlap["dice"], overlap["chance_dice"]
    write_json(result_file, doc)
    figure = heat_map(doc)
    figure.savefig(folder / "dissociation.png", dpi=120)
    if log_dir is not None:
        from localizer.report import tensorboard_run

        with tensorboard_run(log_dir, "dissociation", f"dissociation-{Path(str(model)).name}") as logger:
            logger.experiment.add_figure("dissociation/z", figure, 0)
            logger.finalize("success")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return doc


def z_matrix(doc: dict[str, Any], kind: str = "layer_matched") -> list[list[float | None]]:
    """``[network][task]``: z of the main metric's delta against ``kind`` controls."""
    return [[doc["z"][n][t].get(kind, {}).get(doc["metric"]) for t in doc["tasks"]] for n in doc["networks"]]


def heat_map(doc: dict[str, Any], kind: str = "layer_matched"):
    """A heat map of z (networks x tasks), each cell annotated with the accuracy delta."""
    import numpy as np

    from localizer.report import _plt

    plt = _plt()
    z = np.array([[np.nan if v is None else v for v in row] for row in z_matrix(doc, kind)], dtype=float)
    fig, ax = plt.subplots(figsize=(1.8 * len(doc["tasks"]) + 2, 0.9 * len(doc["networks"]) + 2))
    limit = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    image = ax.imshow(z, cmap="RdBu", vmin=-limit, vmax=limit)
    for i, n in enumerate(doc["networks"]):
        for j, t in enumerate(doc["tasks"]):
            d = doc["delta"][n][t].get(doc["metric"])
            text = "n/a" if d is None else f"{100 * d:+.1f} pts\nz={z[i, j]:.1f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    labels = [f"{t}\n(baseline {100 * (doc['baseline'][t].get(doc['metric']) or 0):.0f}%"
              + (", near chance)" if t in doc["near_chance"] else ")") for t in doc["tasks"]]  # fmt: skip
    ax.set_xticks(range(len(doc["tasks"])), labels, fontsize=7)
    ax.set_yticks(range(len(doc["networks"])), [f"{n} network" for n in doc["networks"]], fontsize=8)
    ax.set_xlabel("task")
    ax.set_title(f"ablating each network: z of the {doc['metric']} change vs {kind} controls", fontsize=9)
    fig.colorbar(image, ax=ax, label="z (negative: hurts more than random units)")
    fig.tight_layout()
    return fig


def print_dissociation(doc: dict[str, Any], file=None, kind: str = "layer_matched") -> None:
    """The matrix: rows are the ablated networks, columns the tasks; each cell the accuracy delta and its z."""
    import sys

    out = file or sys.stdout
    width = max(len(t) for t in doc["tasks"]) + 2
    print(f"{doc['metric']} change when each network is ablated (z vs {kind} controls):", file=out)
    print(" " * 22 + "".join(f"{t:>{width}}" for t in doc["tasks"]), file=out)
    bases = []
    for t in doc["tasks"]:
        value = doc["baseline"][t].get(doc["metric"])
        shown = "n/a" if value is None else f"{100 * value:.1f}%"
        bases.append(shown + ("*" if t in doc["near_chance"] else ""))
    print(f"{'baseline':<22}" + "".join(f"{b:>{width}}" for b in bases), file=out)
    for n, row in zip(doc["networks"], z_matrix(doc, kind)):
        cells = []
        for t, z in zip(doc["tasks"], row):
            d = doc["delta"][n][t].get(doc["metric"])
            cells.append("n/a" if d is None else f"{100 * d:+.1f} (z={'n/a' if z is None else f'{z:.1f}'})")
        print(f"{n + ' network':<22}" + "".join(f"{c:>{width}}" for c in cells), file=out)
    if doc["near_chance"]:
        print(f"* baseline near chance: {', '.join(doc['near_chance'])} cannot show an ablation effect", file=out)
    dice = doc["dice"]
    pairs = [f"{a}-{b} {dice[i][j]:.3f}" for i, a in enumerate(doc["networks"])
             for j, b in enumerate(doc["networks"]) if j > i]  # fmt: skip
    print("network overlap (Dice): " + ", ".join(pairs), file=out)
