"""Output paths: refuse to replace what exists unless asked, create missing folders, probe that they are writable;
and input paths as they are recorded in files (resolved, so that later commands find them from any folder)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from localizer.errors import LocalizerError, opt


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse an existing output without ``overwrite``; create missing folders; refuse unwritable ones."""
    if out.exists() and not overwrite:
        raise LocalizerError(f"{out} exists; pass {opt('overwrite', True)} to replace it")
    if out.is_dir():
        raise LocalizerError(f"{out} is a directory; give a file path for the output")
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise LocalizerError(f"cannot write {out}: {parent} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LocalizerError(f"cannot create the output folder {parent}: {e.strerror}") from e
    try:  # a real probe: permission bits say nothing for root or on read-only mounts
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".localizer-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise LocalizerError(f"output folder {parent} is not writable ({e.strerror})") from e


def source_name(source: str | os.PathLike) -> str:
    """A local path as an absolute path (so later commands find it from anywhere); anything else as given."""
    p = Path(source)
    return str(p.resolve()) if p.exists() else str(source)


def _identity(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of an existing file (hard links and symlinks share it), else None."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def input_files(source: str | os.PathLike | None) -> list[Path]:
    """The files an input reads: the file itself, or every regular file inside a folder (a model folder, an image
    folder, a ``save_to_disk`` dataset); nothing for hub ids and other names."""
    if source is None:
        return []
    path = Path(source)
    if path.is_file():
        return [path]
    if path.is_dir():
        return [p for p in path.rglob("*") if p.is_file()]
    return []


def _label(name: str) -> str:
    """A parameter as the user wrote it (``--out``), or a description as it is (``the recorded stimuli``)."""
    return opt(name) if name.isidentifier() else name


def check_outputs(outputs: dict[str, str | os.PathLike | None], inputs: dict[str, list[Path]]) -> None:
    """Refuse, before any work and whatever ``overwrite`` says, an output that is one of the inputs or another
    output: same resolved path, or the same file through a symlink or hard link (device and inode).

    Args:
        outputs: ``{parameter: path}`` of what the command writes (None: not written).
        inputs: ``{parameter: files it reads}`` (see :func:`input_files`).
    """
    named = [(name, Path(path)) for name, path in outputs.items() if path is not None]
    for i, (name, path) in enumerate(named):
        resolved, identity = path.resolve(), _identity(path)
        for other, other_path in named[i + 1 :]:
            if resolved == other_path.resolve() or (identity and identity == _identity(other_path)):
                raise LocalizerError(f"{_label(name)} and {_label(other)} are the same file ({path}); give two paths")
        for source, files in inputs.items():
            for f in files:
                if resolved == f.resolve() or (identity and identity == _identity(f)):
                    shown = "" if f.resolve() == resolved else f" (the same file as {f})"
                    raise LocalizerError(
                        f"{_label(name)} {path} is an input ({_label(source)}){shown}; localizer never writes over "
                        f"its inputs: choose another output path"
                    )


def check_log_dir(log_dir: str | os.PathLike | None) -> None:
    """Refuse a TensorBoard folder that cannot be created (a file on its way), before any work is done."""
    if log_dir is None:
        return
    path = Path(log_dir)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise LocalizerError(f"{opt('log_dir')} {log_dir}: {existing} is a file, not a folder")
    if existing is not None and not os.access(existing, os.W_OK):
        raise LocalizerError(f"{opt('log_dir')} {log_dir}: {existing} is not writable")


def write_json(path: str | os.PathLike, document: object) -> Path:
    """Write a JSON document under a temporary name, then rename it: a file that exists is complete."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(document, indent=2, default=str))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
