"""localizer: fMRI-style functional localizers for deep networks.

Record pooled per-unit activations for positive and control stimuli into HDF5 (on one or many devices), select the
selective units, and ablate them. One function per command, with the command line's parameter names and defaults:
:func:`extract`, :func:`select`, :func:`ablate`, :func:`run`, :func:`check`, :func:`pack`. Heavy packages load on
first use.
"""

from localizer._lazy import lazy
from localizer.errors import LocalizerError

__version__ = "0.1.0"

_NAMES = {
    "extract": "localizer.recording.extract",
    "select": "localizer.selection.select",
    "ablate": "localizer.ablation.ablate",
    "run": "localizer.pipeline",
    "check": "localizer.files.check",
    "pack": "localizer.files.pack",
    "compare": "localizer.selection.compare",
    "dissociate": "localizer.ablation.dissociate",
    "Selection": "localizer.selection.result",
    "SelectionOptions": "localizer.selection.options",
    "ActivationRecorder": "localizer.recording.recorder",
    "LocalizerDataModule": "localizer.recording.datamodule",
    "HDF5ActivationWriter": "localizer.files.writer",
    "SelectivityCallback": "localizer.selection.callback",
    "AblationModule": "localizer.ablation.module",
    "load_model": "localizer.recording.models",
    "load_stimuli": "localizer.recording.stimuli",
    "resolve_layers": "localizer.recording.layers",
}
__all__ = ["LocalizerError", *_NAMES]
__getattr__, __dir__ = lazy(__name__, _NAMES)
