"""What the command line hides unless ``--verbose``: Lightning's info lines (accelerator, tips), library progress
bars (model loading, dataset maps) and known deprecation warnings of the libraries. Errors, warnings about the
user's data and localizer's own progress and results are always shown."""

from __future__ import annotations

import logging
import os
import warnings

KNOWN_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\).*",  # torch/Lightning _pytree deprecation
    r".*does not have many workers.*",  # Lightning's DataLoader advice (num_workers is an option)
    r".*The number of training batches.*",
    r".*`torch_dtype` is deprecated.*",
    r".*Checkpoint directory .* exists and is not empty.*",
)


class _Quiet(logging.StreamHandler):
    """The root handler: WARNING and above, message only (Lightning then adds no INFO handler of its own). A record
    that a handler of its own logger already printed is not printed twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        logger: logging.Logger | None = logging.getLogger(record.name)
        while logger is not None and logger is not logging.getLogger():
            if logger.handlers:
                return False
            logger = logger.parent if logger.propagate else None
        return super().filter(record)


def quiet_lightning() -> None:
    """Lightning's info lines (accelerator, tips) at WARNING, under :func:`quiet`; called once Lightning is imported
    (importing it sets its loggers to INFO)."""
    if os.environ.get("LOCALIZER_QUIET") == "1":
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)


def quiet(verbose: bool = False) -> None:
    """Hide the libraries' chatter in this process and the processes it starts (the environment is inherited)."""
    if verbose:
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar too
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("LOCALIZER_QUIET", "1")
    root = logging.getLogger()
    if not any(isinstance(h, _Quiet) for h in root.handlers):
        handler = _Quiet()
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    for pattern in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    import sys

    if "transformers" in sys.modules:  # imported before (a Python caller of main()): the environment came too late
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
