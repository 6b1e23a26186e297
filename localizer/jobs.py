"""A ``localizer run`` job: its name, its record (``run.json``) and what a rerun compares and cleans up."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

JOB_FILE = "run.json"


def remove_dropped_tasks(out: Path, previous: dict[str, Any], tasks: list[dict], log_dir, name: str) -> None:
    """Delete what an earlier run of this job wrote for tasks that it no longer has (its results JSON, its figures and
    its TensorBoard run) — files that this job created, listed in its run.json."""
    from localizer.report import remove_run

    earlier = previous.get("job", {}).get("ablate", {}).get("tasks") or []
    old = {str(t["task"]) for t in earlier if isinstance(t, dict) and t.get("task")}
    for task in sorted(old - {t["task"] for t in tasks}):
        for folder in (out, out / "untrained"):
            (folder / f"results_{task}.json").unlink(missing_ok=True)
            for png in folder.glob(f"ablation_{task}_*.png"):
                png.unlink()
        for run_name in (name, f"{name}/untrained") if log_dir is not None else ():
            remove_run(Path(log_dir) / run_name / "ablate" / task)
        print(f"removed the results of task {task} from the earlier run of this job (it is no longer in its tasks)")


def job_name(model: str, stimuli: str, config: str | None = None) -> str:
    """A job's default name: ``[config-]stimuli-model`` from their short names (``language-gemma-3-270m``)."""

    def short(spec: str) -> str:
        spec = str(spec).rstrip("/")
        if ":" in spec and not Path(spec).exists():  # package.module:callable
            return spec.rsplit(":", 1)[1]
        return (
            Path(spec).stem
            if Path(spec).suffix in (".jsonl", ".json", ".csv", ".parquet", ".yaml")
            else Path(spec).name
        )

    parts = [short(stimuli), short(model)]
    if config and short(config) != parts[0]:
        parts.insert(0, short(config))
    return clean_name("-".join(parts))


def clean_name(name: str) -> str:
    """A name safe as one folder name (letters, digits, ``._-``; ``/`` would nest folders)."""
    import re

    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "job"
    return cleaned


def read_job(out: Path) -> dict[str, Any] | None:
    """The job record of a run folder (``run.json``), or None."""
    path = Path(out) / JOB_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_job(out: Path, record: dict[str, Any]) -> None:
    import localizer
    from localizer.files.outputs import write_json

    write_json(Path(out) / JOB_FILE, {"localizer": localizer.__version__, **record})


def now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def settings_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """The settings that differ, as ``key: old -> new`` (nested keys dotted)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += settings_diff(a, b, f"{prefix}{key}.")
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def finished_results(out: Path, folders: list[Path], tasks, previous) -> dict[str, Any]:
    """A finished run's results read back from its folder (and its summary printed again)."""
    from localizer.selection.result import Selection

    summary = {}
    for label, folder in zip(("trained", "untrained"), folders):
        print((folder / "summary.txt").read_text(), end="")
        docs = {spec["task"]: json.loads((folder / f"results_{spec['task']}.json").read_text()) for spec in tasks}
        summary[label] = {"selection": Selection.read(folder / "selection.h5"), "ablation": docs}
    return summary


def describe_job(doc: Any) -> str | None:
    """A run record (``run.json``) in words, for ``localizer check``; None when ``doc`` is not one."""
    if not (isinstance(doc, dict) and isinstance(doc.get("job"), dict) and "started" in doc):
        return None
    job, finished = doc["job"], doc.get("finished")
    state = f"finished {finished}" if finished else "not finished (killed or running)"
    return f"run record of job {job.get('name', '?')}: {job.get('model')} on {job.get('stimuli')}, {state}"
