"""Files shipped inside the package (in the wheel too), read with :mod:`importlib.resources`.

- ``language.jsonl``, ``next_token.txt``, ``minimal_pairs.jsonl``, ``sentences.txt``: built-in language stimuli and
  task data (:mod:`localizer.recording.builtin`); ``example_language.jsonl``: a 20-row example for the README.
- ``configs/*.yaml``: the shipped ``localizer run`` configs (``language``, the default, and ``faces``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

CONFIGS = ("language", "faces", "alkhamissi2024", "deeplocalizer")


def read_text(name: str) -> str:
    """The text of a shipped file, e.g. ``read_text("configs/faces.yaml")``."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


@contextlib.contextmanager
def resource_path(name: str) -> Iterator[Path]:
    """A real file path for a shipped file (a temporary copy when the package is zipped)."""
    with resources.as_file(resources.files(__name__).joinpath(name)) as path:
        yield path


def config_path(name: str) -> str | None:
    """The path of a shipped config by name (``language``, ``faces``), or None when there is no such config."""
    if name not in CONFIGS:
        return None
    return str(resources.files(__name__).joinpath("configs", f"{name}.yaml"))
