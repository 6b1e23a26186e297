"""Forward hooks on modules named by dotted path, in the spirit of baukit's ``nethook``.

:func:`trace` registers one forward hook per named module and always removes them when the ``with`` block ends,
even on error. The callback sees each module's output and may return a replacement (used to mask units) or None.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


class StopForward(Exception):
    """Raised from a hook to end a forward pass early once every traced layer has been seen."""


def main_tensor(output: Any) -> torch.Tensor:
    """The tensor a module output stands for: element 0 of tuples/lists, the first field of a ModelOutput."""
    while not isinstance(output, torch.Tensor):
        if isinstance(output, (tuple, list)) and output:
            output = output[0]
        elif isinstance(output, dict) and output:
            output = next(iter(output.values()))
        else:
            raise TypeError(f"cannot find a tensor in a module output of type {type(output).__name__}")
    return output


def replace_main_tensor(output: Any, new: torch.Tensor) -> Any:
    """``output`` with its main tensor (see :func:`main_tensor`) replaced by ``new``."""
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (replace_main_tensor(output[0], new),) + tuple(output[1:])
    if isinstance(output, list):
        return [replace_main_tensor(output[0], new)] + list(output[1:])
    if isinstance(output, dict):
        key = next(iter(output))
        output[key] = replace_main_tensor(output[key], new)
        return output
    raise TypeError(f"cannot replace the tensor in a module output of type {type(output).__name__}")


@contextlib.contextmanager
def trace(
    model: nn.Module,
    layers: list[str],
    fn: Callable[[str, torch.Tensor], torch.Tensor | None],
) -> Iterator[None]:
    """Call ``fn(layer, output_tensor)`` after each named module's forward.

    Args:
        model: the network.
        layers: dotted module names (as in ``model.named_modules()``).
        fn: gets the layer name and its main output tensor; a returned tensor replaces that output. It may raise
            :class:`StopForward` (the caller catches it) to skip the rest of the network, e.g. once every recorded
            layer has fired.
    """
    handles = []

    def make_hook(name: str):
        def hook(module, args, output):
            new = fn(name, main_tensor(output))
            return None if new is None else replace_main_tensor(output, new)

        return hook

    try:
        for name in layers:
            handles.append(model.get_submodule(name).register_forward_hook(make_hook(name)))
        yield
    finally:
        for h in handles:
            h.remove()
