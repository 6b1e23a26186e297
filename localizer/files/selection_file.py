"""The selection file format (version 1): per-layer statistics, the network's mask and the control masks.

- ``/layers/<layer>/{t,p,q,d,mean_positive,mean_control,var_positive,var_control,mean_all,mean_abs_all}``: float64
  ``[U_layer]``
- ``/mask/<layer>``: bool ``[U_layer]``
- ``/controls/<kind>/<i>/<layer>``: bool ``[U_layer]``, kind in ``global``, ``layer_matched``, ``magnitude_matched``
- ``/validation/<layer>/t`` (when the stimuli have a validation split)
- root attributes: ``format_version``, ``selection`` (JSON options), ``n_selected``, ``abs``, ``alternative``,
  ``source``, ``layers`` (JSON list), ``pooling``, ``model``, ``model_class``, ``n_positive``, ``n_control``;
  ``dice_split_half``, ``dice_chance`` with split-half validation.

:class:`localizer.selection.Selection` is the type that reads and writes it; this module only moves arrays.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from localizer.errors import LocalizerError
from localizer.files.activations import FORMAT_VERSION, _existing_file, read_version
from localizer.files.segments import require_space

STAT_NAMES = (
    "t",
    "p",
    "q",
    "d",
    "mean_positive",
    "mean_control",
    "var_positive",
    "var_control",
    "mean_all",
    "mean_abs_all",
)

PerLayer = dict[str, np.ndarray]


def write_selection_file(
    path: str | os.PathLike,
    layers: list[str],
    stats: dict[str, PerLayer],
    mask: PerLayer,
    controls: dict[str, list[PerLayer]],
    attrs: dict[str, Any],
    validation_t: PerLayer | None = None,
) -> Path:
    """Write a selection file under a temporary name, then rename it (a file that exists is complete).

    Args:
        layers: layer names in recording order.
        stats: ``{name: {layer: float64 [U_layer]}}`` for every name of :data:`STAT_NAMES`.
        mask: ``{layer: bool [U_layer]}``; controls: ``{kind: [{layer: bool [U_layer]}, ...]}``.
        attrs: root attributes besides ``format_version``, ``layers`` and ``n_selected``.
        validation_t: ``{layer: float64 [U_layer]}``, t on the validation rows, when there are any.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    units = sum(len(m) for m in mask.values())
    n_sets = sum(len(sets) for sets in controls.values())
    require_space(path.parent, units * (8 * len(STAT_NAMES) + 16 + n_sets) + (32 << 10) * len(layers), "the selection")
    try:
        with h5py.File(tmp, "w") as f:
            for name in STAT_NAMES:
                for layer in layers:
                    f.create_dataset(f"layers/{layer}/{name}", data=np.asarray(stats[name][layer], dtype=np.float64))
            for layer in layers:
                f.create_dataset(f"mask/{layer}", data=np.asarray(mask[layer], dtype=bool))
            for kind, sets in controls.items():
                for i, c in enumerate(sets):
                    for layer in layers:
                        f.create_dataset(f"controls/{kind}/{i}/{layer}", data=np.asarray(c[layer], dtype=bool))
            if validation_t is not None:
                for layer in layers:
                    f.create_dataset(f"validation/{layer}/t", data=validation_t[layer])
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["layers"] = json.dumps(layers)
            f.attrs["n_selected"] = int(sum(int(np.sum(m)) for m in mask.values()))
            for key, value in attrs.items():
                f.attrs[key] = value
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_selection_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a selection file → ``{"attrs", "layers", "stats": {layer: {name: [U_layer]}}, "mask": {layer: ...},
    "controls": {kind: [{layer: mask}, ...]}, "validation_t": {layer: t} | None}``; checks the format version."""
    path = _existing_file(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise LocalizerError(f"{path}: not a readable HDF5 file ({e})") from e
    with f:
        attrs = dict(f.attrs)
        ok, shown = read_version(attrs)
        if not ok or "mask" not in f:
            raise LocalizerError(
                f"{path}: not a selection file of format version {FORMAT_VERSION} (format_version={shown!r})"
            )
        layers = json.loads(attrs["layers"])
        return {
            "attrs": attrs,
            "layers": layers,
            "stats": {layer: {k: f[f"layers/{layer}/{k}"][:] for k in STAT_NAMES} for layer in layers},
            "mask": {layer: f[f"mask/{layer}"][:] for layer in layers},
            "controls": {
                kind: [
                    {layer: f[f"controls/{kind}/{i}/{layer}"][:] for layer in layers}
                    for i in sorted(f[f"controls/{kind}"], key=int)
                ]
                for kind in (f["controls"] if "controls" in f else [])
            },
            "validation_t": ({layer: f[f"validation/{layer}/t"][:] for layer in layers} if "validation" in f else None),
        }
