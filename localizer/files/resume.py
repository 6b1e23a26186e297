"""Resuming an extraction: the run manifest, the run lock, and what a rerun still has to record.

``<master>.shards/run.json`` holds the settings key of the extraction and its attempt number;
``<master>.shards/lock`` is held (flock) by every process of a run. See :mod:`localizer.files.activations` for the
files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from localizer.errors import LocalizerError, opt
from localizer.files.activations import segment_dir, segment_files
from localizer.files.segments import fsync_dir

_MANIFEST = "run.json"


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (_MANIFEST + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(manifest, indent=1, sort_keys=True))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / _MANIFEST)
    fsync_dir(folder)


_OURS = re.compile(r"(lock|run\.json(\.tmp)?|part-\d{4}-\d{5}-\d{6}\.h5(\.part)?)\Z")


def check_segment_folder(out: str | os.PathLike) -> None:
    """Refuse a ``<out>.shards`` folder that localizer did not create: a symlink, something that is not a folder, or
    a folder holding anything but localizer's own files (``lock``, ``run.json``, ``part-*.h5``). Such a folder is
    never emptied, with or without ``overwrite``."""
    folder = segment_dir(out)
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise LocalizerError(
            f"{folder} exists but is not a folder localizer created (a link or a file); move it or choose another "
            f"{opt('out')}"
        )
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if not _OURS.match(p.name) or p.is_symlink() or p.is_dir())
        if foreign:
            raise LocalizerError(
                f"{folder} holds files localizer did not write ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); move them or choose another {opt('out')}"
            )


def _segment_attempt(path: Path) -> int:
    return int(path.name.split("-")[1])


class RunLock:
    """``flock`` on ``<master>.shards/lock``: exclusive while rank 0 plans a run, then shared by every rank for the
    whole run, so a second run (or a process of an earlier one still alive) cannot write into the same folder.
    Released by the OS when a process dies. Where the file system has no ``flock`` it silently does nothing."""

    def __init__(self, folder: Path):
        import fcntl

        self.fcntl = fcntl
        folder.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)

    def acquire(self, exclusive: bool) -> bool:
        """Non-blocking; False when another process holds a conflicting lock."""
        try:
            self.fcntl.flock(self.fd, (self.fcntl.LOCK_EX if exclusive else self.fcntl.LOCK_SH) | self.fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:  # no flock here (some network file systems)
            pass
        return True

    def close(self) -> None:
        os.close(self.fd)


def committed_rows(master: str | os.PathLike) -> int:
    """How many rows the committed segments of ``master`` hold (read only; 0 when there are none)."""
    total = 0
    for path in segment_files(master):
        try:
            with h5py.File(path, "r") as f:
                total += int(f.attrs.get("n_rows", 0))
        except OSError:
            pass
    return total


class SettingsMismatch(LocalizerError):
    """A partial extraction into the same output was made with other settings (``diff``: which, in words)."""

    diff: list[str] = []


def settings_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``["name old -> new", ...]`` for every setting of two run keys that differs."""
    names = sorted(set(old) | set(new))
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in names if old.get(k) != new.get(k)]


def check_partial(out: str | os.PathLike, key: dict[str, Any]) -> None:
    """Refuse to continue committed segments of ``out`` that were recorded with another ``key`` (read only).

    Raises:
        SettingsMismatch: naming every setting that differs.
    """
    folder = segment_dir(out)
    manifest = read_manifest(folder)
    if manifest is None or not segment_files(out) or manifest.get("key") == key:
        return
    diff = settings_diff(manifest.get("key") or {}, key)
    raise SettingsMismatch(
        f"{folder} holds a partial extraction made with other settings ({'; '.join(diff)}); "
        f"pass {opt('overwrite', True)} to discard it"
    )


def plan_resume(
    out: str | os.PathLike, key: dict[str, Any] | None, mode: str = "auto"
) -> tuple[int, np.ndarray, dict[str, int]]:
    """Decide what an extraction into ``out`` records; called once, by rank 0, before any row is written.

    Args:
        key: what determines the rows' values (model, layers, pooling, stimulus fingerprint, ...); ``None``
            disables resuming.
        mode: ``"auto"`` resume when the committed segments were made with the same ``key``, else start over
            (refusing when they were made with another key); ``"resume"`` as auto but an error when there is
            nothing to resume; ``"fresh"`` discard earlier segments and the master.

    Returns:
        ``(attempt, done, units)``: this attempt's number, the dataset indices already recorded (int64 ``[D]``) and
        the recorded layers' unit counts.
    """
    out = Path(out)
    check_segment_folder(out)
    folder = segment_dir(out)
    manifest = read_manifest(folder)
    segments = segment_files(out)
    if mode == "fresh" or key is None or not segments or manifest is None:
        if mode == "resume" and key is not None:
            raise LocalizerError(
                f"{out}: nothing to resume (no recorded segments in {folder}); run without {opt('resume', True)}"
            )
        out.unlink(missing_ok=True)
        for old in folder.iterdir() if folder.exists() else []:  # everything but the lock that this run holds
            if old.name != "lock":
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        attempt = 0 if manifest is None else int(manifest.get("attempt", 0)) + 1  # names never repeat
        _write_manifest(folder, {"key": key, "attempt": attempt})
        return attempt, np.zeros(0, dtype=np.int64), {}
    check_partial(out, key)
    found: list[np.ndarray] = []
    units: dict[str, int] = {}
    for path in segments:
        try:
            with h5py.File(path, "r") as f:
                found.append(f["index"][:])
                units = units or {layer: int(ds.shape[1]) for layer, ds in f["activations"].items()}
        except (OSError, KeyError) as e:
            raise LocalizerError(
                f"segment {path} is unreadable ({e}); pass {opt('overwrite', True)} to start over"
            ) from e
    done = np.concatenate(found).astype(np.int64)
    if len(np.unique(done)) != len(done):
        raise LocalizerError(
            f"{folder}: the recorded segments hold some stimuli twice; pass {opt('overwrite', True)} to start over"
        )
    for stale in folder.glob("*.part"):
        stale.unlink()
    attempt = max([int(manifest.get("attempt", 0))] + [_segment_attempt(p) for p in segments]) + 1
    _write_manifest(folder, {"key": key, "attempt": attempt})
    return attempt, done, units


def recorded_settings(out: str | os.PathLike) -> dict[str, Any] | None:
    """The settings key a finished activation file was recorded with: its ``settings`` attribute, or (files of
    layout virtual from before that attribute) ``<out>.shards/run.json``; ``None`` when neither is there."""
    try:
        with h5py.File(out, "r") as f:
            text = f.attrs.get("settings")
    except OSError:
        return None
    if text is not None:
        return json.loads(text)
    return (read_manifest(segment_dir(out)) or {}).get("key")
