"""Files: the activation format (segments + master, one reader), the selection format, the prediction writer,
resuming a killed extraction, and ``check``."""

from localizer._lazy import lazy

# what a selection file may hold (a light constant: the command line is built from code that reads it)
CONTROL_KINDS = ("global", "layer_matched", "magnitude_matched")

_NAMES = {
    "check": "localizer.files.check",
    "open_activations": "localizer.files.activations",
    "read_metadata": "localizer.files.activations",
    "write_master": "localizer.files.activations",
    "segment_dir": "localizer.files.activations",
    "SegmentWriter": "localizer.files.segments",
    "HDF5ActivationWriter": "localizer.files.writer",
    "read_selection_file": "localizer.files.selection_file",
    "write_selection_file": "localizer.files.selection_file",
    "check_output": "localizer.files.outputs",
}
__all__ = list(_NAMES)
__getattr__, __dir__ = lazy(__name__, _NAMES)
