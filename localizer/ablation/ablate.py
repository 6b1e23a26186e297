"""The causal test in one call: rerun a task with the selected units silenced, against random control sets."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, Optional

from localizer.distributed import on_rank_zero
from localizer.errors import LocalizerError, at_least, opt
from localizer.recording.extract import Dtype
from localizer.trainer import build_trainer, frozen_heap, trainer_kwargs

Task = Literal["classification", "next-token", "minimal-pairs", "agreement"]


def ablate(
    selection: str,
    task: Task,
    *,
    model: Optional[str] = None,
    task_data: Optional[str] = None,
    method: str = "zero",
    controls: str = "all",
    n_controls: Optional[int] = None,
    sweep: Optional[str] = None,
    out: Optional[str] = None,
    overwrite: bool = False,
    batch_size: int = 16,
    max_length: Optional[int] = None,
    num_workers: int = 0,
    log_dir: Optional[str] = "lightning_logs",
    trust_remote_code: bool = False,
    dtype: Optional[Dtype] = None,
    device_map: Optional[str] = None,
    max_memory: Optional[str] = None,
    trainer: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Rerun a task with the selected units silenced and report metric deltas against random control sets.

    Args:
        selection: the selection file (from localizer select or extract --selection).
        task: classification, next-token, minimal-pairs or agreement.
        model: the model (default: the one recorded in the selection file, loaded with the recorded class).
        task_data: task data: a built-in name, file, folder or hub id (default: the validation rows of the
            recorded stimuli).
        method: how a unit is silenced: zero, mean (its mean over the localizer stimuli) or scale=F.
        controls: all, or control kinds, comma-separated (global, layer_matched, magnitude_matched).
        n_controls: use the first N stored sets of each kind (default: all).
        sweep: top-% values to re-select and evaluate as a curve, comma-separated, e.g. 0.5,1,2.
        out: write the results document (JSON) here.
        overwrite: replace an existing out.
        batch_size: task rows per batch.
        max_length: truncate texts to this many tokens, special tokens included.
        num_workers: DataLoader worker processes.
        log_dir: TensorBoard folder (an ablate/ run is added; null: no logs).
        trust_remote_code: allow code shipped with a hub model to run.
        dtype: load the weights as float32, bfloat16 or float16 (default: the type the activations were recorded
            with, as the selection file says).
        device_map: a model larger than one device: place its blocks on every device (auto, balanced, sequential,
            or a JSON object), one process driving them all.
        max_memory: with device_map, the most each device may hold, e.g. 0=70GiB,1=70GiB,cpu=200GiB.
        trainer: Lightning Trainer options (accelerator, devices, strategy, num_nodes, precision, ...).

    Returns:
        the results document (:func:`localizer.ablation.summary.summarize`).
    """
    if out is not None:
        from localizer.files.outputs import check_output

        check_output(Path(out), overwrite)
    return run_ablation(
        selection,
        task,
        model=model,
        task_data=task_data,
        method=method,
        controls=controls,
        n_controls=n_controls,
        sweep=sweep,
        out=out,
        batch_size=batch_size,
        max_length=max_length,
        num_workers=num_workers,
        log_dir=log_dir,
        trust_remote_code=trust_remote_code,
        dtype=dtype,
        device_map=device_map,
        max_memory=max_memory,
        trainer=trainer,
    )


def run_ablation(
    selection: str | os.PathLike,
    task: str,
    *,
    model: str | None = None,
    task_data: str | os.PathLike | Any | None = None,
    method: str = "zero",
    controls: str | list[str] = "all",
    n_controls: int | None = None,
    sweep: list[str] | str | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    num_workers: int = 0,
    log_dir: str | os.PathLike | None = "lightning_logs",
    trust_remote_code: bool = False,
    dtype: str | None = None,
    device_map: str | None = None,
    max_memory: str | None = None,
    trainer: dict[str, Any] | None = None,
    loaded: Any = None,
    png_dir: str | os.PathLike | None = None,
    log_name: str | None = None,
) -> dict[str, Any]:
    """:func:`ablate` for Python callers that hold the pieces (``out`` is replaced if it exists).

    Besides :func:`ablate`'s parameters: ``task_data`` may be a ``datasets.Dataset``; ``loaded`` an already loaded
    :class:`localizer.recording.models.LoadedModel` (skips loading ``model``); ``png_dir`` also saves the
    TensorBoard figures as PNG files there; ``log_dir=None`` logs nothing; ``log_name`` (a job's name) puts the
    TensorBoard run at ``log_dir/<log_name>/ablate/<task>`` (else ``ablate/version_N``).
    """

    from localizer.ablation.module import AblationDataModule, AblationModule, build_conditions
    from localizer.ablation.summary import summarize
    from localizer.ablation.tasks import TASKS, make_task
    from localizer.files.outputs import check_log_dir, check_outputs, input_files
    from localizer.recording.datamodule import fit_texts
    from localizer.recording.device_map import device_map_trainer
    from localizer.recording.models import load_model
    from localizer.selection.result import Selection

    at_least(1, batch_size=batch_size, max_length=max_length)
    at_least(0, num_workers=num_workers, n_controls=n_controls)
    if task not in TASKS:
        raise LocalizerError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    from localizer.files.check import require_valid

    require_valid(selection, "selection")
    sel = Selection.read(selection)
    attrs = sel.attrs
    check_outputs(
        {"out": out},
        {
            "selection": [Path(selection)],
            "model": input_files(model or (None if loaded is not None else str(attrs.get("model", "")) or None)),
            "task_data": input_files(task_data) if isinstance(task_data, (str, os.PathLike)) else [],
            "the stimuli recorded in the selection": input_files(str(attrs.get("stimuli", "")) or None)
            if task_data is None
            else [],
        },
    )
    check_log_dir(log_dir)
    if sel.n_selected == 0:
        raise LocalizerError(f"{selection}: the selection holds no unit; there is nothing to ablate")
    kinds = control_kinds(controls)
    if isinstance(sweep, str):
        sweep = [s.strip() for s in sweep.split(",") if s.strip()]
    data = _task_data(task_data, attrs, task)
    kind = "text" if ("text" in data.column_names or task == "minimal-pairs") else "image"
    if loaded is None:
        spec = model or str(attrs.get("model", ""))
        if not spec:
            raise LocalizerError(f"no model given and none recorded in the selection file; pass {opt('model')}")
        forced = str(attrs.get("model_class", "")) or None
        if forced and ":" in forced:  # a package.module:callable model
            forced = None
        dtype = dtype or str(attrs.get("dtype") or "float32")
        loaded = load_model(
            spec,
            kind,
            model_class=forced,
            trust_remote_code=trust_remote_code,
            dtype=dtype,
            device_map=device_map,
            max_memory=max_memory,
            trainer=trainer,
        )
    recorded = str(attrs.get("weights", ""))
    if recorded and loaded.fingerprint() != recorded:
        raise LocalizerError(
            f"the model {loaded.name} is not the one {selection} was made with (its weights differ from the recorded "
            f"fingerprint); pass the recorded model ({attrs.get('model', '?')}) or select again on this one"
        )
    conditions = build_conditions(sel, method, kinds, n_controls, sweep)
    if kind == "text" and loaded.processor is not None:
        texts = data["good"][:] + data["bad"][:] if task == "minimal-pairs" else data["text"][:]
        max_length = fit_texts(texts, loaded.processor, max_length, loaded.max_positions, "task data")
    the_task = make_task(task, data, loaded.processor, loaded.transform, max_length)
    module = AblationModule(loaded.model, the_task, conditions, str(attrs["pooling"]), kind)
    from localizer.report import tensorboard_run

    own_logger = "logger" not in (trainer or {}) and log_dir is not None
    with tensorboard_run(
        log_dir if own_logger else None, "ablate" if log_name is None else f"ablate/{task}", log_name
    ) as logger:
        kwargs = trainer_kwargs(trainer)
        if logger is not None:
            kwargs["logger"] = logger
        kwargs["enable_progress_bar"] = False  # the module shows one bar per condition instead
        module.progress = (trainer or {}).get("enable_progress_bar", True) is not False
        runner = build_trainer(device_map_trainer(loaded.model, kwargs))
        if runner.world_size > len(data):
            raise LocalizerError(f"{runner.world_size} processes for {len(data)} task rows: use at most {len(data)}")
        with frozen_heap():
            runner.validate(
                module, datamodule=AblationDataModule(the_task, data, batch_size, num_workers), verbose=False
            )
        assert module.results is not None  # set by on_validation_epoch_end on every rank
        doc = summarize(module.results, conditions, task, method, int(attrs["n_selected"]))
        doc["provenance"] = _provenance(loaded, selection, attrs, task_data, len(data), method)
        undefined = [m for m in doc["metrics"] if doc["baseline"][m] is None]
        if undefined:
            import warnings

            warnings.warn(
                f"{task}: {', '.join(undefined)} could not be computed on this task data (nothing to score, e.g. "
                f"texts of one token for next-token); they are null in the results",
                stacklevel=2,
            )

        def write() -> None:  # rank 0 writes for all; a failure there reaches every rank
            if out is not None:
                from localizer.files.outputs import write_json

                write_json(out, doc)
            from localizer.ablation.figures import log_ablation

            hparams = {  # five columns: what TensorBoard shows without a click (the rest is in the JSON)
                "job": log_name or "",
                "task": task,
                "method": method,
                "n_selected": int(attrs["n_selected"]),
                "model": str(attrs.get("model", "")),
            }
            if runner.logger is not None or png_dir is not None:
                log_ablation(runner.logger, doc, hparams, png_dir=png_dir)

        on_rank_zero(runner, write)
    return doc


def check_task(loaded, task: str, data, max_length: int | None) -> None:
    """Run the unablated model on the first rows of ``data`` for ``task``: what the model cannot do (no prediction
    head, no token logits, no tokenizer) is refused in one line before any long work starts."""
    import torch

    from localizer.ablation.tasks import make_task
    from localizer.recording.calling import ModelCaller
    from localizer.recording.datamodule import IndexedRows

    kind = "text" if ("text" in data.column_names or task == "minimal-pairs") else "image"
    first = data.select(range(min(2, len(data))))
    if kind == "text" and loaded.processor is not None:  # truncated as the ablation will (its warning comes then)
        import warnings

        from localizer.recording.datamodule import fit_texts

        texts = first["good"][:] + first["bad"][:] if task == "minimal-pairs" else first["text"][:]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            max_length = fit_texts(texts, loaded.processor, max_length, loaded.max_positions, "task data")
    the_task = make_task(task, first, loaded.processor, loaded.transform, max_length)
    rows = IndexedRows(first, the_task.columns)
    batch = the_task.collate([rows[i] for i in range(len(rows))])
    with torch.no_grad():
        the_task.output(ModelCaller(loaded.model.eval(), kind), batch)


def control_kinds(controls: str | list[str]) -> list[str]:
    """``"all"`` or kinds (a list or comma-separated) → the control kinds, checked."""
    from localizer.files import CONTROL_KINDS

    if controls in ("all", ["all"]):
        return list(CONTROL_KINDS)
    kinds = [k.strip() for k in controls.split(",")] if isinstance(controls, str) else list(controls)
    kinds = list(dict.fromkeys(k for k in kinds if k))  # a kind named twice is used once
    bad = [k for k in kinds if k not in CONTROL_KINDS]
    if bad:
        raise LocalizerError(
            f"{opt('controls')}: unknown control kinds {bad}; choose all or {', '.join(CONTROL_KINDS)}"
        )
    return kinds


def _task_data(task_data, attrs, task):
    """The given task data, or the validation rows of the stimuli recorded in the selection file."""
    from localizer.ablation.tasks import load_task_data, validate_task_data
    from localizer.recording.stimuli import load_stimuli

    if task_data is not None:
        return load_task_data(task_data, task)
    source = str(attrs.get("stimuli", ""))
    if not source:
        raise LocalizerError(
            f"the selection file records no stimuli to take validation rows from; pass {opt('task_data')}"
        )
    stimuli = load_stimuli(source, str(attrs["control"]) if attrs.get("control") else None)
    if "split" not in stimuli.column_names or "validation" not in set(stimuli["split"]):
        raise LocalizerError(f"stimuli {source} have no validation rows; pass {opt('task_data')}")
    rows = stimuli.filter(lambda s: s == "validation", input_columns="split")
    return validate_task_data(rows, task, name=f"validation rows of {source}")


def _provenance(loaded, selection, attrs, task_data, rows: int, method: str) -> dict[str, Any]:
    """What a results document was computed from: enough to cite it and to rerun it."""
    import hashlib
    from datetime import datetime, timezone

    import localizer
    from localizer.files.outputs import source_name
    from localizer.recording.models import dtype_name

    if isinstance(task_data, (str, os.PathLike)):
        data = source_name(task_data)
    elif task_data is None:
        data = f"validation rows of {attrs.get('stimuli', '?')}"
    else:
        data = type(task_data).__name__
    return {
        "localizer": localizer.__version__,
        "model": source_name(loaded.name),
        "weights": loaded.fingerprint(),
        "dtype": dtype_name(loaded.model),
        "selection": str(Path(selection).resolve()),
        "selection_sha256": hashlib.sha256(Path(selection).read_bytes()).hexdigest(),
        "task_data": data,
        "rows": rows,
        "seed": json.loads(str(attrs.get("selection", "{}"))).get("seed"),
        "method": method,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
