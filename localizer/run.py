"""``localizer run``: extract → select → ablate in one command, with a printed summary, TensorBoard logs and files.

Everything lands in ``output_dir``: ``activations.h5`` (+ shards), ``selection.h5``, ``results_<task>.json``,
``summary.txt`` and PNG copies of the TensorBoard figures.
"""

from __future__ import annotations

import io
import os
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

from localizer.errors import LocalizerError

DEFAULT_TASKS = [{"task": "next-token", "data": "language-next-token"},
                 {"task": "minimal-pairs", "data": "language-minimal-pairs"}]


def run(model: str = "gemma-3-270m", stimuli: str = "language", layers: str = "auto", pooling: str | None = "last",
        batch_size: int = 16, max_length: int | None = None, output_dir: str = "outputs/language-gemma-3-270m",
        select: dict[str, Any] | None = None, ablate: dict[str, Any] | None = None, untrained: bool = False,
        log_dir: str = "lightning_logs", trainer: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """Run the whole localizer and return ``{"selection": SelectionResult, "ablation": {task: results doc}}``.

    Args:
        model, stimuli, layers, pooling, batch_size, max_length: as for :func:`localizer.extract`.
        output_dir: where every file goes (replaced files: this command owns the folder).
        select: :class:`localizer.selection.SelectionOptions` fields (``top``, ``abs``, ``controls``, ``seed``, ...).
        ablate: ``method``, ``batch_size``, ``sweep``, ``n_controls`` and ``tasks`` (a list of ``{"task", "data"}``;
            ``data`` null = the validation rows of the stimuli).
        untrained: also run everything on a randomly initialized copy of the model (into ``output_dir/untrained``).
        trainer: ``lightning.Trainer`` keyword arguments.
        seed: the seed of the untrained copy's initialization.
    """
    from localizer.ablation import run_ablation
    from localizer.models import load_model
    from localizer.report import log_exemplars, print_run_summary
    from localizer.selection import SelectionOptions
    from localizer.selectivity import select_from_file
    from localizer.stimuli import load_stimuli, modality

    trainer = dict(trainer or {})
    devices = trainer.get("devices", 1)
    if isinstance(devices, str):
        devices = [d for d in devices.split(",") if d.strip()] if "," in devices else \
            (int(devices) if devices.strip().lstrip("-").isdigit() else devices)
    many = (isinstance(devices, int) and (devices > 1 or devices == -1)) or \
        (isinstance(devices, (list, tuple)) and len(devices) > 1) or int(trainer.get("num_nodes") or 1) > 1
    if many:
        raise LocalizerError("localizer run is single-process; for several devices or nodes run localizer extract, "
                             "select and ablate with the --trainer flags (see the README)")
    trainer.setdefault("devices", 1)
    select = dict(select or {})
    ablate = dict(ablate or {})
    options = SelectionOptions(**{k: v for k, v in select.items() if v is not None})
    tasks = ablate.get("tasks", DEFAULT_TASKS)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_stimuli(stimuli)
    kind = modality(data)
    loaded = load_model(model, kind)
    runs = [("trained", out, loaded)]
    if untrained:
        runs.append(("untrained", out / "untrained", _untrained_copy(loaded, seed)))
    summary = {}
    for label, folder, lm in runs:
        folder.mkdir(parents=True, exist_ok=True)
        acts = _extract_or_resume(lm, data, folder / "activations.h5", layers=layers, pooling=pooling,
                                  batch_size=batch_size, max_length=max_length, trainer=trainer, source=stimuli)
        result = select_from_file(acts, folder / "selection.h5", options, log_dir=log_dir, png_dir=folder)
        log_exemplars(acts, result, data, log_dir, folder)
        docs = {}
        for spec in tasks:
            docs[spec["task"]] = run_ablation(
                folder / "selection.h5", spec["task"], task_data=spec.get("data"), loaded=lm,
                method=ablate.get("method", "zero"), n_controls=ablate.get("n_controls"), sweep=ablate.get("sweep"),
                out=folder / f"results_{spec['task']}.json", batch_size=ablate.get("batch_size", 8),
                max_length=max_length, log_dir=log_dir, trainer=trainer, png_dir=folder)
        summary[label] = {"selection": result, "ablation": docs}
        text = io.StringIO()
        with redirect_stdout(text):
            print_run_summary(f"{model} ({label})" if untrained else model, stimuli, result, docs)
        (folder / "summary.txt").write_text(text.getvalue())
        print(text.getvalue(), end="")
    return summary


def _untrained_copy(loaded, seed: int):
    """The same architecture with fresh random weights (Hugging Face: ``from_config``; others: reset_parameters)."""
    import copy

    import torch

    from localizer.models import LoadedModel

    torch.manual_seed(seed)
    if loaded.is_hf:
        fresh = type(loaded.model)(loaded.model.config).eval()
    else:
        fresh = copy.deepcopy(loaded.model)
        for m in fresh.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        fresh.eval()
    return LoadedModel(fresh, loaded.name + " (untrained)", loaded.model_class, loaded.processor, loaded.transform,
                       loaded.is_hf)


def config_path(name: str) -> str:
    """A shipped config by name (``language``, ``faces``) → its path; anything else unchanged."""
    p = Path(__file__).resolve().parent / "configs" / f"{name}.yaml"
    return str(p) if p.exists() and not os.path.exists(name) else name


def _extract_or_resume(model, data, path: Path, **kwargs) -> Path:
    """A finished earlier run is replaced; a killed one with the same settings is continued; else start over."""
    from localizer.extract import extract
    from localizer.resume import SettingsMismatch

    try:
        return extract(model, data, path, overwrite=path.exists(), **kwargs)
    except SettingsMismatch as e:
        print(f"{e.args[0].split(' (')[0]}: starting over")
        return extract(model, data, path, overwrite=True, **kwargs)
