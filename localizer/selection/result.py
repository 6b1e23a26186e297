"""The :class:`Selection` type: what a selection computes, in memory and on disk (one type for both)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from localizer.selection.rules import UnitLayout


@dataclass
class Selection:
    """A selected network, its statistics and its random controls; arrays are flat over all units ``[U]``.

    The online callback, the offline :func:`localizer.select` and :meth:`read` all give this type.

    Attributes:
        layout: layer names (recording order) and unit counts; ``layout.split(flat)`` gives ``{layer: [U_layer]}``.
        stats: ``t``, ``p``, ``q``, ``d``, ``mean_positive``, ``mean_control``, ``var_positive``, ``var_control``,
            ``mean_all``, ``mean_abs_all`` (float64 ``[U]``; computed selections also hold ``df``).
        valid: bool ``[U]``, units whose response varies (the others have t = 0, p = 1 and are never selected).
        mask: bool ``[U]``, the network.
        controls: ``{kind: [bool [U], ...]}``.
        validation_t: float64 ``[U]``, t on the validation rows (None without a validation split).
        attrs: the file's root attributes (``selection`` options as JSON, ``model``, ``pooling``, ``n_positive``...).
    """

    layout: UnitLayout
    stats: dict[str, np.ndarray]
    valid: np.ndarray
    mask: np.ndarray
    controls: dict[str, list[np.ndarray]]
    validation_t: np.ndarray | None
    attrs: dict[str, Any]

    @property
    def n_selected(self) -> int:
        return int(self.mask.sum())

    def per_layer(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """A flat ``[U]`` array of this selection → ``{layer: [U_layer]}``."""
        return self.layout.split(flat)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the selection file (format version 1, :mod:`localizer.files.selection_file`)."""
        from localizer.files.selection_file import STAT_NAMES, write_selection_file

        return write_selection_file(
            path,
            self.layout.layers,
            {name: self.per_layer(self.stats[name]) for name in STAT_NAMES},
            self.per_layer(self.mask),
            {kind: [self.per_layer(c) for c in sets] for kind, sets in self.controls.items()},
            self.attrs,
            None if self.validation_t is None else self.per_layer(self.validation_t),
        )

    @classmethod
    def read(cls, path: str | os.PathLike) -> Selection:
        """Read a selection file; ``valid`` is recomputed as (var_positive + var_control > 0)."""
        from localizer.files.selection_file import STAT_NAMES, read_selection_file

        raw = read_selection_file(path)
        layers = raw["layers"]
        layout = UnitLayout(layers, [len(raw["mask"][layer]) for layer in layers])
        stats = {name: layout.join({layer: raw["stats"][layer][name] for layer in layers}) for name in STAT_NAMES}
        with np.errstate(invalid="ignore"):
            valid = stats["var_positive"] + stats["var_control"] > 0
        return cls(
            layout,
            stats,
            valid,
            layout.join(raw["mask"]),
            {kind: [layout.join(c) for c in sets] for kind, sets in raw["controls"].items()},
            None if raw["validation_t"] is None else layout.join(raw["validation_t"]),
            raw["attrs"],
        )
