"""Ablate: rerun a task with the selected units silenced, against random controls, and summarize the deltas.

``masking`` (silencing hooks), ``tasks`` (task data, collation, summed metric states), ``module`` (the
LightningModule, its data module and the conditions), ``summary`` (deltas, z, empirical p), ``ablate`` (one call).
"""

from localizer._lazy import lazy

_NAMES = {
    "ablate": "localizer.ablation.ablate",
    "AblationModule": "localizer.ablation.module",
    "AblationDataModule": "localizer.ablation.module",
    "Condition": "localizer.ablation.module",
    "build_conditions": "localizer.ablation.module",
    "silence": "localizer.ablation.masking",
    "unit_edits": "localizer.ablation.masking",
    "make_task": "localizer.ablation.tasks",
    "load_task_data": "localizer.ablation.tasks",
    "summarize": "localizer.ablation.summary",
    "control_statistics": "localizer.ablation.summary",
}
__all__ = list(_NAMES)
__getattr__, __dir__ = lazy(__name__, _NAMES)
