"""Select: per-unit statistics → the network and its matched random controls → a :class:`Selection`.

``statistics`` (pure: streaming moments, Chan merge, Welch t, BH FDR; no Lightning), ``options`` (how to select),
``rules`` (top-k / FDR / range / bottom, matched controls), ``metric`` (the torchmetrics Metric synced across ranks),
``compute`` (moments → Selection), ``result`` (the :class:`Selection` type, read/write), ``callback`` (online, while
recording), ``select`` (offline, from an activation file).
"""

from localizer._lazy import lazy

_NAMES = {
    "select": "localizer.selection.select",
    "select_file": "localizer.selection.select",
    "Selection": "localizer.selection.result",
    "SelectionOptions": "localizer.selection.options",
    "CONTROL_KINDS": "localizer.selection.options",
    "UnitLayout": "localizer.selection.rules",
    "select_units": "localizer.selection.rules",
    "draw_controls": "localizer.selection.rules",
    "UnitStatistics": "localizer.selection.metric",
    "SelectivityCallback": "localizer.selection.callback",
    "finish_selection": "localizer.selection.compute",
}
__all__ = list(_NAMES)
__getattr__, __dir__ = lazy(__name__, _NAMES)
