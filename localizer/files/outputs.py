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
