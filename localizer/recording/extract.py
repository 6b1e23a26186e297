"""The record step in one call: stimuli + model → activation file (see :mod:`localizer.files.activations`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Optional

from localizer.errors import LocalizerError, at_least, opt
from localizer.selection.options import PARAMETERS_DOC, Alternative, Rows, SelectionOptions, Statistic
from localizer.trainer import build_trainer, frozen_heap, trainer_kwargs

Pooling = Literal["last", "mean", "channel", "flat"]
Dtype = Literal["float32", "bfloat16", "float16"]


def extract(
    model: str,
    stimuli: str,
    out: str,
    *,
    layers: str = "auto",
    pooling: Optional[Pooling] = None,
    batch_size: int = 32,
    control: Optional[str] = None,
    tokenizer: Optional[str] = None,
    transform: Optional[str] = None,
    padding_side: Literal["right", "left"] = "right",
    max_length: Optional[int] = None,
    lowercase: bool = False,
    sort_by_length: bool = False,
    num_workers: int = 0,
    overwrite: bool = False,
    resume: bool = False,
    segment_mb: float = 1024.0,
    nan_policy: Literal["error", "allow"] = "error",
    layout: Literal["single", "virtual"] = "single",
    trust_remote_code: bool = False,
    dtype: Dtype = "float32",
    device_map: Optional[str] = None,
    max_memory: Optional[str] = None,
    selection: Optional[str] = None,
    log_dir: Optional[str] = "lightning_logs",
    abs: bool = False,
    alternative: Alternative = "greater",
    statistic: Statistic = "welch",
    rows: Rows = "localize",
    top: str = "1%",
    per_layer: bool = False,
    count: Optional[int] = None,
    fdr: Optional[float] = None,
    range: Optional[str] = None,
    bottom: bool = False,
    controls: int = 10,
    seed: int = 0,
    split_half: bool = False,
    trainer: Optional[dict[str, Any]] = None,
) -> Path:
    """Record pooled per-unit activations of a model on positive and control stimuli into one HDF5 file.

    Args:
        model: short name (gemma-3-270m, minilm-l6, efficientnet-lite0), local save_pretrained folder, hub id, or
            package.module:callable returning an nn.Module (Python: also a loaded LoadedModel).
        stimuli: built-in set (language, faces, tom, arithmetic, ...), JSONL/JSON/CSV/Parquet file, save_to_disk
            folder, image folder with positive/ and control/, or hub id (Python: also a datasets.Dataset).
        out: the activation file to write (.h5).
        layers: auto, or module names / glob patterns, comma-separated (e.g. transformer.h.*).
        pooling: last or mean (text; default last), channel, flat or mean (images; default channel).
        batch_size: stimuli per forward pass.
        control: control stimuli (a path or hub id) when stimuli holds only the positive ones.
        tokenizer: tokenizer folder or hub id, for text stimuli to a package.module:callable model.
        transform: package.module:callable mapping one PIL image to a [C, H, W] tensor (replaces the model's
            image processor).
        padding_side: pad texts on the right or the left (results do not depend on it).
        max_length: truncate texts to this many tokens, special tokens included.
        lowercase: lower-case every text stimulus before tokenizing (as AlKhamissi et al.).
        sort_by_length: batch texts of similar token length together (less padding); the file is the same.
        num_workers: DataLoader worker processes.
        overwrite: replace an existing out (and discard a partial extraction into it).
        resume: continue a killed extraction (also done without this when the settings match); an error if there
            is nothing to resume, a no-op when out is complete.
        segment_mb: commit recorded rows to disk every this many MB per process (what a crash can lose).
        nan_policy: error (stop at the first NaN/inf activation, naming layer and stimulus) or allow (record).
        layout: single (one self-contained file; the segments are packed into it and deleted at the end) or virtual
            (keep virtual datasets over out.shards/: no copy, for outputs too large to hold twice).
        trust_remote_code: allow code shipped with a hub model to run.
        dtype: load the weights as float32, bfloat16 or float16 (activations are stored as float32 either way).
        device_map: a model larger than one device: place its blocks on every device (auto, balanced, sequential,
            or a JSON object of module names and devices), one process driving them all; weights that fit nowhere go
            to the disk.
        max_memory: with device_map, the most each device may hold, e.g. 0=70GiB,1=70GiB,cpu=200GiB.
        selection: also compute the selection while recording and write it to this file (options below).
        log_dir: TensorBoard folder of the online selection (an extract/ run is added; null: no logs).
        {selection_parameters}
        trainer: Lightning Trainer options (accelerator, devices, strategy, num_nodes, precision, ...).

    Returns:
        the path of the activation file.
    """
    options = SelectionOptions.from_parameters(locals()) if selection is not None else None
    return record(
        model,
        stimuli,
        out,
        layers=layers,
        pooling=pooling,
        batch_size=batch_size,
        control=control,
        tokenizer=tokenizer,
        transform=transform,
        padding_side=padding_side,
        max_length=max_length,
        lowercase=lowercase,
        sort_by_length=sort_by_length,
        num_workers=num_workers,
        overwrite=overwrite,
        resume=resume,
        segment_mb=segment_mb,
        nan_policy=nan_policy,
        layout=layout,
        trust_remote_code=trust_remote_code,
        dtype=dtype,
        device_map=device_map,
        max_memory=max_memory,
        selection=selection,
        selection_options=options,
        log_dir=log_dir,
        trainer=trainer,
    )


extract.__doc__ = (extract.__doc__ or "").replace("{selection_parameters}", PARAMETERS_DOC)


def record(
    model: Any,
    stimuli: Any,
    out: str | os.PathLike,
    *,
    layers: str | list[str] = "auto",
    pooling: str | None = None,
    batch_size: int = 32,
    control: str | None = None,
    tokenizer: str | None = None,
    transform: str | Callable | None = None,
    padding_side: str = "right",
    max_length: int | None = None,
    lowercase: bool = False,
    sort_by_length: bool = False,
    num_workers: int = 0,
    overwrite: bool = False,
    resume: bool = False,
    segment_mb: float = 1024.0,
    nan_policy: str = "error",
    layout: str = "single",
    trust_remote_code: bool = False,
    dtype: str = "float32",
    device_map: str | None = None,
    max_memory: str | None = None,
    selection: str | os.PathLike | None = None,
    selection_options: SelectionOptions | None = None,
    log_dir: str | os.PathLike | None = "lightning_logs",
    source: str | None = None,
    trainer: dict[str, Any] | None = None,
    announce: bool = True,
) -> Path:
    """:func:`extract` for Python callers that hold the pieces: ``model`` may be a loaded
    :class:`localizer.recording.models.LoadedModel`, ``stimuli`` a ``datasets.Dataset`` (then ``source`` names it
    in the file), ``transform`` a callable, and the selection rule a :class:`SelectionOptions`; ``announce=False``
    says nothing when a finished file is found (the caller reports it)."""

    from localizer.files.activations import segment_files
    from localizer.files.outputs import check_log_dir, check_output, check_outputs, input_files, source_name
    from localizer.files.resume import check_partial, check_segment_folder, committed_rows
    from localizer.files.writer import LAYOUTS, NAN_POLICIES, HDF5ActivationWriter
    from localizer.recording.builtin import POOLING as BUILTIN_POOLING
    from localizer.recording.builtin import builtin_name, for_model
    from localizer.recording.datamodule import LocalizerDataModule, fit_texts, tokenize
    from localizer.recording.device_map import device_map_trainer
    from localizer.recording.models import LoadedModel, dtype_name, load_model
    from localizer.recording.recorder import ActivationRecorder
    from localizer.recording.stimuli import fingerprint, load_stimuli, modality, stimulus_labels, validate_stimuli

    at_least(1, batch_size=batch_size, max_length=max_length)
    at_least(0, num_workers=num_workers)
    if nan_policy not in NAN_POLICIES:
        raise LocalizerError(f"unknown {opt('nan_policy')} {nan_policy!r}; choose one of {', '.join(NAN_POLICIES)}")
    if layout not in LAYOUTS:
        raise LocalizerError(f"unknown {opt('layout')} {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not segment_mb > 0:
        raise LocalizerError(f"{opt('segment_mb')} must be positive, got {segment_mb}")
    out = Path(out)
    model_files = [] if isinstance(model, LoadedModel) else input_files(model)
    check_outputs(
        {"out": out, "selection": selection},
        {
            "stimuli": input_files(stimuli) if isinstance(stimuli, (str, os.PathLike)) else [],
            "control": input_files(control),
            "model": model_files,
            "tokenizer": input_files(tokenizer),
            "out": segment_files(out),  # the selection must not land on a segment of the activation file
        },
    )
    check_segment_folder(out)
    if selection is not None:
        check_log_dir(log_dir)
    finished = resume and not overwrite and out.exists()
    if not finished:
        check_output(out, overwrite)
    prior = 0 if overwrite else committed_rows(out)
    if resume and not prior and not finished:
        raise LocalizerError(f"{out}: nothing to resume (no recorded segments); run without {opt('resume', True)}")
    provenance: dict[str, str | None] = {}
    if source:  # a dataset that the caller names (run: the stimuli as given, resolved)
        provenance = {"stimuli": source, "control": source_name(control) if control else None}
    named = None if control else builtin_name(source or stimuli)
    if pooling is None and named in BUILTIN_POOLING:
        pooling = BUILTIN_POOLING[named]
    to_match = named if isinstance(stimuli, (str, os.PathLike)) else None  # a dataset passed in is as recorded
    if isinstance(stimuli, (str, os.PathLike)):
        provenance = {"stimuli": source_name(stimuli), "control": source_name(control) if control else None}
        stimuli = load_stimuli(stimuli, control)
    else:
        stimuli = validate_stimuli(stimuli)
    kind = modality(stimuli)
    for name, value in (("lowercase", lowercase), ("sort_by_length", sort_by_length)):
        if value and kind != "text":
            raise LocalizerError(f"{opt(name, True)} applies to text stimuli; these are images")
    loaded = (
        model
        if isinstance(model, LoadedModel)
        else load_model(
            str(model),
            kind,
            tokenizer=tokenizer,
            transform=transform,
            padding_side=padding_side,
            trust_remote_code=trust_remote_code,
            dtype=dtype,
            device_map=device_map,
            max_memory=max_memory,
            trainer=trainer,
        )
    )
    if kind == "text":
        stimuli = for_model(to_match, stimuli, loaded.processor)  # before lower-casing, as run does
    if lowercase:
        stimuli = stimuli.map(lambda t: {"text": t.lower()}, input_columns="text")
    recorder = ActivationRecorder(
        loaded.model, layers, pooling, modality=kind, model_name=loaded.name, model_class=loaded.model_class
    )
    collate_length = max_length
    columns = {}
    tokens = None
    if kind == "text" and loaded.processor is not None:
        texts = stimuli["text"][:]
        tokens = tokenize(texts, loaded.processor, max_length)  # once; reused unless the model needs them shorter
        counts = [len(ids) for ids in tokens["input_ids"]]
        limit = loaded.max_positions
        collate_length = fit_texts(
            texts, loaded.processor, max_length, limit, "stimulus", None if max_length else counts
        )
        if collate_length != max_length:
            tokens = None
    data = LocalizerDataModule(
        stimuli,
        loaded.processor,
        loaded.transform,
        batch_size=batch_size,
        num_workers=num_workers,
        max_length=collate_length,
        sort_by_length=sort_by_length,
        tokens=tokens,
        batches_per_step="auto",
    )
    tokens = None  # the datamodule's table holds them (flat); the lists would stay alive through the loop
    recorded_counts = data.token_counts()  # as the model gets them (truncated)
    if recorded_counts is not None:
        columns["n_tokens"] = recorded_counts
    kwargs = trainer_kwargs(trainer)
    key = {
        "format_version": 1,
        "model": source_name(loaded.name),
        "model_class": loaded.model_class,
        "weights": loaded.fingerprint(),
        "layers": recorder.layers,
        "pooling": recorder.pooling,
        "n_stimuli": len(stimuli),
        "stimuli": fingerprint(stimuli),
        "max_length": max_length,
        "tokenizer": tokenizer,
        "transform": transform
        if isinstance(transform, str) or transform is None
        else getattr(transform, "__qualname__", type(transform).__name__),
        "padding_side": padding_side,
        "precision": str(kwargs.get("precision") or "32-true"),
        "nan_policy": nan_policy,
    }
    dtype = dtype_name(loaded.model)  # a model passed in loaded: the type it holds
    if dtype != "float32":  # (float32 files keep the key they always had)
        key["dtype"] = dtype
    provenance["dtype"] = dtype
    provenance["weights"] = str(key["weights"])  # recorded: ablate checks that it loads the same model
    provenance["settings"] = json.dumps(key)  # compared when the same extraction is asked for again
    if finished:
        return _finished(out, key, selection, selection_options, overwrite, log_dir, announce, layout)
    mode = "fresh" if overwrite else "resume" if resume else "auto"
    if prior:
        check_partial(out, key)  # before any process starts; the writer checks again, race-free, on rank 0
    writer = HDF5ActivationWriter(
        out,
        provenance,
        n_stimuli=len(stimuli),
        resume_key=key,
        mode=mode,
        segment_mb=segment_mb,
        nan_policy=nan_policy,
        layout=layout,
        stimulus=stimulus_labels(stimuli, provenance.get("stimuli")),
        columns=columns,
        window_rows=data.window_rows if data.sort_by_length else None,
    )
    kwargs["callbacks"] = list(kwargs.get("callbacks") or []) + [writer]
    if prior:
        from localizer.distributed import say

        say(f"resuming {out}: {prior} of {len(stimuli)} stimuli already recorded")
    if selection is not None:
        check_output(Path(selection), overwrite)
    if selection is not None and not prior:
        from localizer.selection.callback import SelectivityCallback

        kwargs["callbacks"].append(SelectivityCallback(selection, selection_options, metadata=provenance))
        if kwargs.get("logger") is False and "logger" not in (trainer or {}) and log_dir is not None:
            from lightning.pytorch.loggers import TensorBoardLogger

            kwargs["logger"] = TensorBoardLogger(str(log_dir), name="extract")
    trainer_ = build_trainer(device_map_trainer(loaded.model, kwargs))
    if trainer_.world_size > len(stimuli):
        raise LocalizerError(
            f"{trainer_.world_size} processes for {len(stimuli)} stimuli: use at most {len(stimuli)} devices x nodes"
        )
    with frozen_heap():
        trainer_.predict(recorder, datamodule=data, return_predictions=False)
    if selection is not None and prior:  # the online statistics saw only this attempt: select from the file
        from localizer.distributed import on_rank_zero
        from localizer.selection.select import select_file

        on_rank_zero(trainer_, lambda: select_file(out, selection, selection_options, log_dir=log_dir) and None)
    return out


def _finished(
    out: Path, key: dict[str, Any], selection, options, overwrite: bool, log_dir, announce: bool, layout: str
) -> Path:
    """``resume`` on a complete activation file: recorded with the same settings, there is nothing to record (the
    selection, when asked for, is computed from the file); with other settings it is refused, naming them."""
    from localizer.files.outputs import check_output
    from localizer.files.resume import SettingsMismatch, recorded_settings, settings_diff

    recorded = recorded_settings(out)
    if recorded is None:
        raise LocalizerError(
            f"{out} is complete, but its settings were not recorded (an older file), so they cannot be compared; "
            f"pass {opt('overwrite', True)} to record again"
        )
    diff = settings_diff(recorded, key)
    if diff:
        error = SettingsMismatch(
            f"{out} is complete but was recorded with other settings ({'; '.join(diff)}); pass "
            f"{opt('overwrite', True)} to record again"
        )
        error.diff = diff
        raise error
    from localizer.distributed import say

    if layout == "single" and os.environ.get("RANK", "0") == "0":
        from localizer.files.pack import is_virtual, pack

        if is_virtual(out):  # finished, but killed before it was packed into one file
            pack(out)
            say(f"{out}: packed into one file (the extraction had finished before it was stopped)")
    if selection is not None and os.environ.get("RANK", "0") == "0":
        from localizer.selection.select import select_file

        check_output(Path(selection), overwrite)
        select_file(out, selection, options, log_dir=log_dir)
    if announce:
        say(f"{out} is complete; nothing to resume (it was recorded with these settings)")
    return out
