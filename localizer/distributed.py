"""Work that one rank does for all: run it on rank 0 and let every rank learn how it went.

Under DDP a failure on rank 0 that the other ranks do not hear about leaves them waiting in the next collective
forever. :func:`on_rank_zero` broadcasts success (with a small result) or the failure as one line, and every rank
raises the same :class:`LocalizerError`.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from localizer.errors import LocalizerError


def on_rank_zero(trainer, fn: Callable[[], Any]) -> Any:
    """Run ``fn()`` on global rank 0 only; return its (picklable, small) result on every rank.

    Any exception raised by ``fn`` on rank 0 (an input error, an ``OSError`` from a full disk, a bug) is broadcast
    as one line: rank 0 raises the original exception (a bug keeps its traceback), every other rank a
    :class:`LocalizerError` with that line — never a hang. ``trainer`` is a Lightning Trainer (anything with
    ``is_global_zero`` and ``strategy.broadcast``).
    """
    result = error = None
    failure: Exception | None = None
    if trainer.is_global_zero:
        try:
            result = fn()
        except Exception as e:
            failure = e
            error = str(e) if isinstance(e, LocalizerError) else f"{type(e).__name__}: {e}"
            error = " ".join(error.split()) or type(e).__name__
    error, result = trainer.strategy.broadcast((error, result), src=0)
    if failure is not None:
        raise failure
    if error:
        raise LocalizerError(f"rank 0 failed: {error}")
    return result


def failpoint(name: str, rank: int) -> None:
    """Fault injection for the tests: ``LOCALIZER_FAILPOINT=NAME[@RANK]`` SIGKILLs this process at ``NAME``;
    ``LOCALIZER_FAILPOINT_RAISE=NAME[@RANK]`` raises ``OSError`` there instead, ``LOCALIZER_FAILPOINT_SIGINT`` sends
    Ctrl-C."""
    for variable in ("LOCALIZER_FAILPOINT", "LOCALIZER_FAILPOINT_RAISE", "LOCALIZER_FAILPOINT_SIGINT"):
        point, _, only = os.environ.get(variable, "").partition("@")
        if point == name and (not only or int(only) == rank):
            if variable.endswith("RAISE"):
                raise OSError(f"injected failure at {name} on rank {rank}")
            if variable.endswith("SIGINT"):  # handled before raise_signal returns (on the main thread): a signal
                signal.raise_signal(signal.SIGINT)  # from os.kill could be handled inside a finalizer and be lost
            else:
                os.kill(os.getpid(), signal.SIGKILL)


def say(message: str) -> None:
    """Print a progress message once (global rank 0), whether or not Lightning's info logging is shown."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        print(message, flush=True)
