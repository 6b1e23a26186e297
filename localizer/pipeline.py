"""``localizer run``: extract → select → ablate in one command, with a printed summary, TensorBoard logs and files.

Everything lands in ``output_dir``: ``activations.h5`` (+ segments), ``selection.h5``, ``results_<task>.json``,
``summary.txt``, exemplars and PNG copies of the TensorBoard figures.
"""

from __future__ import annotations

import inspect
import io
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, Optional

from localizer.errors import LocalizerError, at_least, opt, step_options
from localizer.selection.options import PARAMETERS as SELECT_OPTIONS

# run's own choices for the steps it chains (everything else: the steps' parameters, see run's docstring)
NOT_FROM_EXTRACT = {"model", "stimuli", "out", "selection", "log_dir", "trainer", "overwrite", "resume"}
ABLATE_OPTIONS = ("method", "controls", "n_controls", "sweep", "batch_size", "num_workers", "tasks")


def run(
    model: str,
    stimuli: str,
    output_dir: str,
    *,
    untrained: bool = False,
    seed: int = 0,
    log_dir: Optional[str] = "lightning_logs",
    select: Optional[dict[str, Any]] = None,
    ablate: Optional[dict[str, Any]] = None,
    trainer: Optional[dict[str, Any]] = None,
    **extract_options: Any,
) -> dict[str, Any]:
    """Extract -> select -> ablate in one command, into one folder, with a printed summary.

    Args:
        model: the model, as for extract.
        stimuli: the localizer stimuli, as for extract.
        output_dir: where every file goes (this command owns the folder: its files are replaced).
        untrained: also run everything on a randomly initialized copy of the model (a baseline), into
            output_dir/untrained.
        seed: seed of the untrained copy's random initialization.
        log_dir: TensorBoard folder (null: no logs).
        select: options of the select step (the parameters of localizer select: top, abs, controls, ...).
        ablate: options of the ablate step (method, controls, n_controls, sweep, batch_size, num_workers) and
            tasks, a list of {task, data} (data null: the validation rows of the stimuli); no tasks: no ablation.
        trainer: Lightning Trainer options (one process: devices auto means 1).
        extract_options: any other parameter of extract (layers, pooling, batch_size, max_length, ...).

    Returns:
        ``{"trained": {"selection": Selection, "ablation": {task: results document}}, "untrained": ...}``.
    """
    from localizer.ablation.ablate import control_kinds, run_ablation
    from localizer.ablation.masking import parse_method
    from localizer.ablation.tasks import TASKS, load_task_data
    from localizer.files.outputs import check_log_dir, check_outputs, input_files, source_name
    from localizer.recording.extract import extract
    from localizer.recording.models import load_model
    from localizer.recording.stimuli import load_stimuli, modality
    from localizer.report import log_exemplars, print_run_summary
    from localizer.selection.options import SelectionOptions
    from localizer.selection.select import select as select_step
    from localizer.selection.select import select_file

    allowed = set(inspect.signature(extract).parameters) - NOT_FROM_EXTRACT - set(SELECT_OPTIONS)
    for name, group, known in (
        ("extract", extract_options, allowed),
        ("select", select or {}, SELECT_OPTIONS),
        ("ablate", ablate or {}, ABLATE_OPTIONS),
    ):
        unknown = sorted(set(group) - set(known))
        if unknown:
            where = "" if name == "extract" else f" (in {name}=...)"
            hint = "; selection options go in select={...}" if set(unknown) & set(SELECT_OPTIONS) else ""
            raise LocalizerError(
                f"run: unknown {name} options {unknown}{where}{hint}; choose from {', '.join(sorted(known))}"
            )
    at_least(0, seed=seed)
    check_log_dir(log_dir)
    trainer = _one_process(dict(trainer or {}))
    # everything about the later steps is checked before any work starts
    with step_options("select"):
        defaults = {name: p.default for name, p in inspect.signature(select_step).parameters.items()}
        options = SelectionOptions.from_parameters({**defaults, **(select or {})})
    ablate = dict(ablate or {})
    tasks = ablate.pop("tasks", None) or []
    with step_options("ablate"):
        parse_method(ablate.get("method", "zero"))
        control_kinds(ablate.get("controls", "all"))
        for spec in tasks:
            if not isinstance(spec, dict) or spec.get("task") not in TASKS:
                raise LocalizerError(
                    f"{opt('tasks')}: each entry is {{task: {' | '.join(TASKS)}, data: ... or null}}, got {spec!r}"
                )
    data = load_stimuli(stimuli, extract_options.get("control"))
    for spec in tasks:
        if spec.get("data") is not None:
            load_task_data(spec["data"], spec["task"])
        elif "split" not in data.column_names or "validation" not in set(data["split"]):
            raise LocalizerError(f"task {spec['task']} has data: null but stimuli {stimuli} have no validation rows")
    out = Path(output_dir)
    folders = [out, out / "untrained"] if untrained else [out]
    written = [f / name for f in folders for name in ("activations.h5", "selection.h5", "summary.txt")]
    written += [f / f"results_{spec['task']}.json" for f in folders for spec in tasks]
    check_outputs(
        {f"the run's {path.relative_to(out)}": path for path in written},
        {
            "stimuli": input_files(stimuli),
            "model": input_files(model),
            "control": input_files(extract_options.get("control")),
        },
    )
    out.mkdir(parents=True, exist_ok=True)
    kind = modality(data)
    loaded = load_model(
        model,
        kind,
        tokenizer=extract_options.get("tokenizer"),
        transform=extract_options.get("transform"),
        padding_side=extract_options.get("padding_side", "right"),
        trust_remote_code=extract_options.get("trust_remote_code", False),
    )
    runs = [("trained", out, loaded)]
    if untrained:
        runs.append(("untrained", out / "untrained", _untrained_copy(loaded, seed)))
    summary = {}
    for label, folder, lm in runs:
        folder.mkdir(parents=True, exist_ok=True)
        acts = _extract_or_resume(
            lm, data, folder / "activations.h5", trainer=trainer, source=source_name(stimuli), **extract_options
        )
        with step_options("select"):
            result = select_file(acts, folder / "selection.h5", options, log_dir=log_dir, png_dir=folder)
        log_exemplars(acts, result, data, log_dir, folder)
        docs = {}
        for spec in tasks:
            with step_options("ablate"):
                docs[spec["task"]] = run_ablation(
                    folder / "selection.h5",
                    spec["task"],
                    task_data=spec.get("data"),
                    loaded=lm,
                    out=folder / f"results_{spec['task']}.json",
                    max_length=extract_options.get("max_length"),
                    log_dir=log_dir,
                    trainer=trainer,
                    png_dir=folder,
                    **ablate,
                )
        summary[label] = {"selection": result, "ablation": docs}
        text = io.StringIO()
        with redirect_stdout(text):
            print_run_summary(f"{model} ({label})" if untrained else model, stimuli, result, docs)
        (folder / "summary.txt").write_text(text.getvalue())
        print(text.getvalue(), end="")
    return summary


def _one_process(trainer: dict[str, Any]) -> dict[str, Any]:
    """``trainer`` with one device; several devices or nodes are refused (run is single-process)."""
    devices = trainer.get("devices", "auto")
    if devices in (None, "auto"):
        devices = 1
    if isinstance(devices, str):
        devices = (
            [d for d in devices.split(",") if d.strip()]
            if "," in devices
            else (int(devices) if devices.strip().lstrip("-").isdigit() else devices)
        )
    many = (
        (isinstance(devices, int) and (devices > 1 or devices == -1))
        or (isinstance(devices, (list, tuple)) and len(devices) > 1)
        or int(trainer.get("num_nodes") or 1) > 1
    )
    if many:
        raise LocalizerError(
            "localizer run is single-process; for several devices or nodes run localizer extract, "
            "select and ablate with the trainer options (see the README)"
        )
    return {**trainer, "devices": devices}


def _untrained_copy(loaded, seed: int):
    """The same architecture with fresh random weights (Hugging Face: ``from_config``; others: reset_parameters)."""
    import copy

    import torch

    from localizer.recording.models import LoadedModel

    torch.manual_seed(seed)
    if loaded.is_hf:
        fresh = type(loaded.model)(loaded.model.config).eval()
    else:
        fresh = copy.deepcopy(loaded.model)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        fresh.eval()
    return LoadedModel(
        fresh, loaded.name + " (untrained)", loaded.model_class, loaded.processor, loaded.transform, loaded.is_hf
    )


def _extract_or_resume(model, data, path: Path, **kwargs) -> Path:
    """A finished earlier run is replaced; a killed one with the same settings is continued; else start over."""
    from localizer.files.resume import SettingsMismatch
    from localizer.recording.extract import record

    try:
        return record(model, data, path, overwrite=path.exists(), **kwargs)
    except SettingsMismatch as e:
        print(f"{e.args[0].split(' (')[0]}: starting over")
        return record(model, data, path, overwrite=True, **kwargs)
