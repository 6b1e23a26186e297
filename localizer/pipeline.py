"""``localizer run``: extract → select → ablate in one command, with a printed summary, TensorBoard logs and files.

A run is a *job* with a name (default: from the config, the stimuli and the model, e.g. ``language-gemma-3-270m``).
Everything lands in ``output_dir`` (default ``outputs/<name>``): ``activations.h5``, ``selection.h5``,
``results_<task>.json``, ``summary.txt``, exemplars, PNG figures and ``run.json`` (the job's settings; its
``finished`` time marks a finished run). TensorBoard runs go to ``log_dir/<name>/select``, ``.../exemplars`` and
``.../ablate/<task>``. A finished run is never replaced without ``overwrite``; an activation file or selection made
with the same settings is reused, so changing only an ablation option reruns only the ablation.
"""

from __future__ import annotations

import inspect
import io
import json
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any, Optional

from localizer.errors import LocalizerError, at_least, opt, step_options
from localizer.selection.options import PARAMETERS as SELECT_OPTIONS

# run's own choices for the steps it chains (everything else: the steps' parameters, see run's docstring)
NOT_FROM_EXTRACT = {"model", "stimuli", "out", "selection", "log_dir", "trainer", "overwrite", "resume"}
ABLATE_OPTIONS = ("method", "controls", "n_controls", "sweep", "batch_size", "max_length", "num_workers", "tasks")


def run(
    model: str,
    stimuli: str,
    output_dir: Optional[str] = None,
    *,
    name: Optional[str] = None,
    overwrite: bool = False,
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
        output_dir: where every file goes (default: outputs/NAME).
        name: the job's name, for its folder and its TensorBoard runs (default: from the stimuli and the model, e.g.
            language-gemma-3-270m; the command line puts a config's name first when it is not the stimuli's).
        overwrite: replace a finished run in output_dir (activations and selection made with the same settings are
            still reused); without it a finished run with the same settings is reported, not repeated.
        untrained: also run everything on a randomly initialized copy of the model (a baseline), into
            output_dir/untrained.
        seed: seed of the untrained copy's random initialization.
        log_dir: TensorBoard folder (null: no logs).
        select: options of the select step (the parameters of localizer select: top, abs, controls, ...).
        ablate: options of the ablate step (method, controls, n_controls, sweep, batch_size, max_length,
            num_workers) and tasks, a list of {task, data} (data null: the validation rows of the stimuli); no tasks:
            no ablation. The extraction's max_length does not truncate the task data.
        trainer: Lightning Trainer options (one process: devices auto means 1).
        extract_options: any other parameter of extract (layers, pooling, batch_size, max_length, ...).

    Returns:
        ``{"trained": {"selection": Selection, "ablation": {task: results document}}, "untrained": ...}``.
    """
    from localizer.ablation.ablate import check_task, control_kinds, run_ablation
    from localizer.ablation.masking import parse_method
    from localizer.ablation.tasks import TASKS, load_task_data, validate_task_data
    from localizer.files.outputs import check_log_dir, check_outputs, input_files, source_name
    from localizer.jobs import (
        clean_name,
        finished_results,
        job_name,
        now,
        read_job,
        remove_dropped_tasks,
        settings_diff,
        write_job,
    )
    from localizer.recording.builtin import builtin_name, for_model
    from localizer.recording.extract import extract
    from localizer.recording.models import load_model
    from localizer.recording.stimuli import fingerprint, load_stimuli, modality
    from localizer.report import log_exemplars, print_run_summary
    from localizer.selection.options import SelectionOptions
    from localizer.selection.select import select as select_step
    from localizer.selection.select import select_file

    allowed = set(inspect.signature(extract).parameters) - NOT_FROM_EXTRACT - set(SELECT_OPTIONS)
    for step, group, known in (
        ("extract", extract_options, allowed),
        ("select", select or {}, SELECT_OPTIONS),
        ("ablate", ablate or {}, ABLATE_OPTIONS),
    ):
        unknown = sorted(set(group) - set(known))
        if unknown:
            where = "" if step == "extract" else f" (in {step}=...)"
            hint = "; selection options go in select={...}" if set(unknown) & set(SELECT_OPTIONS) else ""
            raise LocalizerError(
                f"run: unknown {step} options {unknown}{where}{hint}; choose from {', '.join(sorted(known))}"
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
    task_rows = {}
    for spec in tasks:
        if spec.get("data") is not None:
            task_rows[spec["task"]] = load_task_data(spec["data"], spec["task"])
        elif "split" not in data.column_names or "validation" not in set(data["split"]):
            raise LocalizerError(f"task {spec['task']} has data: null but stimuli {stimuli} have no validation rows")
        else:
            rows = data.filter(lambda s: s == "validation", input_columns="split")
            task_rows[spec["task"]] = validate_task_data(rows, spec["task"], name=f"validation rows of {stimuli}")
    name = clean_name(name) if name else job_name(model, stimuli)
    out = Path(output_dir) if output_dir else Path("outputs") / name
    folders = [out, out / "untrained"] if untrained else [out]
    written = [f / n for f in folders for n in ("activations.h5", "selection.h5", "summary.txt")]
    written += [f / f"results_{spec['task']}.json" for f in folders for spec in tasks]
    check_outputs(
        {f"the run's {path.relative_to(out)}": path for path in written},
        {
            "stimuli": input_files(stimuli),
            "model": input_files(model),
            "control": input_files(extract_options.get("control")),
        },
    )
    job = {
        "name": name,
        "model": source_name(model),
        "stimuli": source_name(stimuli),
        "untrained": untrained,
        "seed": seed if untrained else None,
        "extract": {k: v for k, v in sorted(extract_options.items())},
        "select": json.loads(options.to_json()),
        "ablate": {**{k: v for k, v in sorted(ablate.items())}, "tasks": tasks},
        "precision": str(trainer.get("precision") or "32-true"),
    }
    previous = read_job(out)
    finished = previous is not None and bool(previous.get("finished")) and not overwrite

    def refuse_other_settings(diff: list[str]) -> None:
        raise LocalizerError(
            f"{out} holds a finished run with other settings ({'; '.join(diff[:4])}"
            f"{'; ...' if len(diff) > 4 else ''}); pass {opt('overwrite', True)} to replace its results "
            f"(activations and selection made with the same settings are reused) or choose another "
            f"{opt('name')} / {opt('output_dir')}"
        )

    if finished:  # before loading the model: what the options alone say
        assert previous is not None
        diff = settings_diff(
            {k: v for k, v in previous.get("job", {}).items() if k not in ("weights", "stimuli_rows")}, job
        )
        if diff:
            refuse_other_settings(diff)
    elif previous is None and not overwrite:
        found = [p for p in written if p.exists()]
        if found:
            raise LocalizerError(
                f"{out} holds files that no localizer run recorded ({found[0].name}, ...); pass "
                f"{opt('overwrite', True)} to replace them or choose another {opt('output_dir')}"
            )
    kind = modality(data)
    loaded = load_model(
        model,
        kind,
        tokenizer=extract_options.get("tokenizer"),
        transform=extract_options.get("transform"),
        padding_side=extract_options.get("padding_side", "right"),
        trust_remote_code=extract_options.get("trust_remote_code", False),
        dtype=extract_options.get("dtype", "float32"),
        device_map=extract_options.get("device_map"),
        max_memory=extract_options.get("max_memory"),
    )
    job["weights"] = loaded.fingerprint()  # the same path may hold other weights now
    if kind == "text":  # a built-in set as recorded for this model (language: matched to its tokenizer)
        named = builtin_name(stimuli) if extract_options.get("control") is None else None
        data = for_model(named, data, loaded.processor)
    job["stimuli_rows"] = fingerprint(data)  # what the model gets: a set matched to it, a file edited since
    if finished:
        assert previous is not None
        diff = settings_diff(previous.get("job", {}), job)
        if diff:
            refuse_other_settings(diff)
        print(
            f"{out} already holds this run, finished {previous['finished']}; nothing to do "
            f"(pass {opt('overwrite', True)} to run it again)"
        )
        return finished_results(out, folders, tasks, previous)
    for spec in tasks:  # what the model cannot do fails now, not after the extraction
        with step_options("ablate"):
            check_task(loaded, spec["task"], task_rows[spec["task"]], ablate.get("max_length"))
    out.mkdir(parents=True, exist_ok=True)
    if previous is not None:  # results of tasks the job no longer has would read as this run's: remove them
        remove_dropped_tasks(out, previous, tasks, log_dir, name)
    write_job(out, {"job": job, "started": now(), "finished": None})
    runs = [("trained", out, loaded)]
    if untrained:
        runs.append(("untrained", out / "untrained", _untrained_copy(loaded, seed)))
    summary = {}
    for label, folder, lm in runs:
        folder.mkdir(parents=True, exist_ok=True)
        log_name = name if label == "trained" else f"{name}/untrained"
        acts = _extract_or_reuse(
            lm, data, folder / "activations.h5", trainer=trainer, source=source_name(stimuli), **extract_options
        )
        result = _reuse_selection(folder / "selection.h5", acts, options)
        if result is None:
            with step_options("select"):
                result = select_file(
                    acts, folder / "selection.h5", options, log_dir=log_dir, png_dir=folder, log_name=log_name
                )
        log_exemplars(acts, result, data, log_dir, folder, log_name=log_name)
        docs = {}
        for spec in tasks:
            with step_options("ablate"):
                docs[spec["task"]] = run_ablation(
                    folder / "selection.h5",
                    spec["task"],
                    task_data=spec.get("data"),
                    loaded=lm,
                    out=folder / f"results_{spec['task']}.json",
                    log_dir=log_dir,
                    trainer=trainer,
                    png_dir=folder,
                    log_name=log_name,
                    **ablate,
                )
        summary[label] = {"selection": result, "ablation": docs}
        text = io.StringIO()
        with redirect_stdout(text):
            print_run_summary(f"{model} ({label})" if untrained else model, stimuli, result, docs)
        (folder / "summary.txt").write_text(text.getvalue())
        print(text.getvalue(), end="")
    write_job(out, {"job": job, "started": (read_job(out) or {}).get("started"), "finished": now()})
    where = f"; TensorBoard: tensorboard --logdir {log_dir}" if log_dir is not None else ""
    print(f"wrote {out}/{where}")
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
        fresh,
        loaded.name + " (untrained)",
        loaded.model_class,
        loaded.processor,
        loaded.transform,
        loaded.is_hf,
        max_positions=loaded.max_positions,  # the same architecture takes as many tokens
    )


def _extract_or_reuse(model, data, path: Path, **kwargs) -> Path:
    """A finished activation file recorded with the same settings is reused; a killed extraction with the same
    settings is continued; anything else is recorded again (the run's folder is the job's own)."""
    from localizer.files.resume import SettingsMismatch, recorded_settings
    from localizer.recording.extract import record

    if path.exists() and recorded_settings(path) is not None:
        try:
            record(model, data, path, resume=True, announce=False, **kwargs)
            print(f"reusing {path} (recorded with these settings)")
            return path
        except SettingsMismatch as e:
            print(f"{path} was recorded with other settings ({'; '.join(getattr(e, 'diff', []))}): recording again")
            return record(model, data, path, overwrite=True, **kwargs)
    try:
        return record(model, data, path, overwrite=path.exists(), **kwargs)
    except SettingsMismatch as e:
        print(f"{e.args[0].split(' (')[0]}: starting over")
        return record(model, data, path, overwrite=True, **kwargs)


def _reuse_selection(path: Path, activations: Path, options) -> Any:
    """The selection in ``path`` when it was made from an activation file with these settings and with these
    options (the same numbers would come out), else None."""
    import h5py

    from localizer.selection.result import Selection

    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            made_from, made_with = f.attrs.get("activations_settings"), f.attrs.get("selection")
        with h5py.File(activations, "r") as f:
            settings = f.attrs.get("settings")
    except OSError:
        return None
    if settings is None or made_from != settings or made_with != options.to_json():
        return None
    print(f"reusing {path} (selected with these options from these activations)")
    return Selection.read(path)
