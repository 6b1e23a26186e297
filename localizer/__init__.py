"""localizer: fMRI-style functional localizers for deep networks.

Record pooled per-unit activations for positive and control stimuli into HDF5 (on one or many devices), select the
selective units, and ablate them.
"""

from localizer.errors import LocalizerError
from localizer.extract import extract

__all__ = ["LocalizerError", "extract", "ActivationRecorder", "HDF5ActivationWriter", "LocalizerDataModule",
           "load_model", "load_stimuli", "resolve_layers"]
__version__ = "0.1.0"

_LAZY = {
    "ActivationRecorder": "localizer.recording",
    "HDF5ActivationWriter": "localizer.writer",
    "LocalizerDataModule": "localizer.data",
    "load_model": "localizer.models",
    "load_stimuli": "localizer.stimuli",
    "resolve_layers": "localizer.layers",
}


def __getattr__(name):  # heavy modules (lightning, torch, datasets) load on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'localizer' has no attribute {name!r}")
