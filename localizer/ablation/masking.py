"""Silencing units: forward hooks that rewrite chosen units of chosen layers, always removed afterwards.

A unit is what the recorder pooled (see :mod:`localizer.recording.layers`); masking silences it *everywhere it exists*:

- ``last`` / ``mean`` pooling: hidden dimension ``u`` of the layer output ``[B, T, D]`` at every position,
- ``channel``: the whole map of channel ``u`` of ``[B, C, H, W]``,
- ``flat``: element ``u`` of the flattened output ``[B, prod(...)]``.

Each masked layer output becomes ``x * keep + fill`` with per-unit ``keep``/``fill`` ``[U]``: 1/0 for untouched
units, and for masked ones ``zero`` → 0/0, ``mean`` → 0/mean (the unit's signed mean over the localizer stimuli),
``scale=F`` → F/0. ``scale=1`` therefore leaves every output bit-identical.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from localizer.errors import LocalizerError, opt
from localizer.recording.hooks import trace


def parse_method(method: str) -> tuple[str, float]:
    """``"zero"``, ``"mean"`` or ``"scale=F"`` → (name, factor)."""
    if method in ("zero", "mean"):
        return method, 0.0
    if method.startswith("scale="):
        try:
            factor = float(method.split("=", 1)[1])
        except ValueError:
            factor = float("nan")
        if np.isfinite(factor):
            return "scale", factor
    raise LocalizerError(f"{opt('method')} must be zero, mean or scale=F, got {method!r}")


def unit_edits(
    masks: dict[str, np.ndarray], method: str, means: dict[str, np.ndarray] | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per layer with any masked unit: ``(keep [U], fill [U])`` float32 tensors (see the module docstring).

    Args:
        masks: ``{layer: bool [U_layer]}``.
        method: ``zero``, ``mean`` or ``scale=F``.
        means: ``{layer: [U_layer]}`` signed means over the localizer stimuli (needed for ``mean``).
    """
    name, factor = parse_method(method)
    edits = {}
    for layer, m in masks.items():
        m = np.asarray(m, dtype=bool)
        if not m.any():
            continue
        keep = np.where(m, factor if name == "scale" else 0.0, 1.0)
        fill = np.zeros(m.shape)
        if name == "mean":
            if means is None:
                raise LocalizerError("mean ablation needs the units' means (mean_all of the selection file)")
            fill = np.where(m, means[layer], 0.0)
        edits[layer] = (torch.tensor(keep, dtype=torch.float32), torch.tensor(fill, dtype=torch.float32))
    return edits


def _shape_for(output: torch.Tensor, pooling: str, units: int, layer: str) -> tuple[int, ...]:
    """The shape that broadcasts per-unit vectors against ``output``."""
    if pooling in ("last", "mean"):
        if output.dim() < 2 or output.shape[-1] != units:
            raise LocalizerError(
                f"layer {layer!r}: the selection has {units} units but the model's output has shape "
                f"{tuple(output.shape)}; was the selection made on another model?"
            )
        return (units,)
    if pooling == "channel":
        if output.dim() != 4 or output.shape[1] != units:
            raise LocalizerError(
                f"layer {layer!r}: the selection has {units} channels but the model's output has "
                f"shape {tuple(output.shape)}; was the selection made on another model?"
            )
        return (units, 1, 1)
    if int(np.prod(output.shape[1:])) != units:
        raise LocalizerError(
            f"layer {layer!r}: the selection has {units} units but the model's output has "
            f"{int(np.prod(output.shape[1:]))} elements per stimulus"
        )
    return tuple(output.shape[1:])


@contextlib.contextmanager
def silence(model: nn.Module, edits: dict[str, tuple[torch.Tensor, torch.Tensor]], pooling: str) -> Iterator[None]:
    """Within the ``with`` block, every forward of ``model`` has the units in ``edits`` rewritten (see module doc).

    Args:
        model: any ``nn.Module`` or Hugging Face model (no patched model files: plain forward hooks).
        edits: from :func:`unit_edits`.
        pooling: the pooling the selection was made with (decides where a unit lives in the layer output).
    """
    missing = []
    for layer in edits:
        try:
            model.get_submodule(layer)
        except AttributeError:
            missing.append(layer)
    if missing:
        raise LocalizerError(
            f"layers {missing} of the selection are not modules of this model; was the selection made on another model?"
        )
    cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def edit(layer: str, output: torch.Tensor) -> torch.Tensor:
        keep, fill = edits[layer]
        key = (layer, output.device, output.dtype, tuple(output.shape[1:]))
        if key not in cache:
            shape = _shape_for(output, pooling, keep.numel(), layer)
            cache[key] = (
                keep.to(output.device, output.dtype).reshape(shape),
                fill.to(output.device, output.dtype).reshape(shape),
            )
        k, f = cache[key]
        return output * k + f

    with trace(model, list(edits), edit):
        yield
