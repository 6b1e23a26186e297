"""Record: stimuli → model-ready batches → forward hooks → pooled per-unit activations ``{layer: [B, U_layer]}``.

``stimuli`` (load and validate stimulus sets; ``builtin`` the shipped ones), ``datamodule`` (batches that keep their
dataset indices), ``models`` (load any network and call it the same way everywhere), ``layers`` (names, globs,
``auto``, pooling), ``fingerprint`` (what identifies a model's weights), ``hooks`` (forward hooks as context
managers), ``recorder`` (the LightningModule), ``extract`` (the whole step in one call, writing through
:mod:`localizer.files`).
"""

from localizer._lazy import lazy

_NAMES = {
    "extract": "localizer.recording.extract",
    "ActivationRecorder": "localizer.recording.recorder",
    "LocalizerDataModule": "localizer.recording.datamodule",
    "Collate": "localizer.recording.datamodule",
    "IndexedRows": "localizer.recording.datamodule",
    "LoadedModel": "localizer.recording.models",
    "ModelCaller": "localizer.recording.calling",
    "load_model": "localizer.recording.models",
    "load_stimuli": "localizer.recording.stimuli",
    "validate_stimuli": "localizer.recording.stimuli",
    "builtin": "localizer.recording.builtin",
    "resolve_layers": "localizer.recording.layers",
    "auto_layers": "localizer.recording.layers",
    "pool": "localizer.recording.layers",
    "trace": "localizer.recording.hooks",
    "weights_fingerprint": "localizer.recording.fingerprint",
    "files_fingerprint": "localizer.recording.fingerprint",
}
__all__ = list(_NAMES)
__getattr__, __dir__ = lazy(__name__, _NAMES)
