"""The one exception type for mistakes in the user's input, and how messages name the user's settings.

Everything raised as :class:`LocalizerError` is a problem the user can fix (a bad path, a layer pattern that matches
nothing, stimuli without a ``positive`` column, ...). The CLI prints its message on one line and exits with code 2;
any other exception is a bug and keeps its traceback.

Messages name a setting with :func:`opt`: as the Python parameter (``overwrite=True``) when the library is called
from Python, as the command-line option (``--overwrite``) when the ``localizer`` command runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_style: dict = {"cli": False, "step": None}


class LocalizerError(ValueError):
    """A user-facing input error; the message says what was wrong and how to fix it."""


def speak_options(cli: bool = True) -> None:
    """Name settings as command-line options in messages from now on (the ``localizer`` command calls this)."""
    _style["cli"] = cli


@contextlib.contextmanager
def step_options(step: str | None) -> Iterator[None]:
    """Within the block, settings belong to the step ``step`` of ``localizer run`` (``select``, ``ablate``): messages
    name them ``--select.top`` on the command line and ``select['top']`` in Python."""
    before = _style["step"]
    _style["step"] = step
    try:
        yield
    finally:
        _style["step"] = before


def opt(name: str, value: object = None, step: str | None = None) -> str:
    """A setting as the user wrote it: ``--name [value]`` on the command line, ``name[=value]`` in Python.

    ``value=True`` stands for a switch (``--overwrite`` / ``overwrite=True``). Inside ``localizer run``
    (:func:`step_options`) a setting of a step carries its prefix; ``step`` names the step a setting belongs to
    when it is not the current one (the ablate step pointing at a select option).
    """
    group = step or _style["step"] if _style["step"] else None
    if _style["cli"]:
        name = f"{group}.{name}" if group else name
        return f"--{name}" if value is None or value is True else f"--{name} {value}"
    if group:
        return f"{group}[{name!r}]" if value is None else f"{group}[{name!r}]={value!r}"
    return name if value is None else f"{name}={value!r}"


def at_least(low: int, **values: int | None) -> None:
    """Refuse any of ``values`` (by parameter name) below ``low``; None means "not given" and passes."""
    for name, value in values.items():
        if value is not None and value < low:
            raise LocalizerError(f"{opt(name)} must be >= {low}, got {value}")


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (library errors can be pages long)."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
