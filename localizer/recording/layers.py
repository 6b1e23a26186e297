"""Choosing layers by name, glob or ``auto``, and pooling a layer's output into units.

Pooling (``U`` = units of the layer):

- ``last``:    ``[B, T, D]`` → ``[B, D]``, the last non-pad token (found from the attention mask, so either padding
               side gives the same result)
- ``mean``:    ``[B, T, D]`` → ``[B, D]``, mean over non-pad tokens
- ``channel``: ``[B, C, H, W]`` → ``[B, C]``, spatial mean
- ``flat``:    ``[B, ...]`` → ``[B, prod(...)]``, every element is a unit (row-major order)
"""

from __future__ import annotations

import difflib
import re

import torch
from torch import nn

from localizer.errors import LocalizerError

POOLINGS = ("last", "mean", "channel", "flat")
TOKEN_POOLINGS = ("last", "mean")


# --- layer names -------------------------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern:
    """``*`` matches within one dotted component, ``**`` across components, ``?`` one character."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append(r"[^.]*")
            i += 1
        elif pattern[i] == "?":
            out.append(r"[^.]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def resolve_layers(model: nn.Module, spec: str | list[str] = "auto") -> list[str]:
    """Module names to record, in the order given (each pattern's matches in module order, duplicates dropped).

    Args:
        model: the network.
        spec: ``"auto"`` (the network's repeated blocks, see :func:`auto_layers`), or exact names / glob patterns
            (``transformer.h.*``), as a list or one comma-separated string.

    Raises:
        LocalizerError: a pattern matches nothing (the message lists candidate names).
    """
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s]
    if not items:
        raise LocalizerError("no layers given: pass module names, glob patterns or 'auto'")
    names = [n for n, _ in model.named_modules() if n]
    chosen: list[str] = []
    for item in items:
        if item == "auto":
            found = auto_layers(model)
        elif item in names:
            found = [item]
        else:
            rx = _glob_regex(item)
            found = [n for n in names if rx.match(n)]
        if not found:
            raise LocalizerError(f"layer pattern {item!r} matches no module; candidates: {_candidates(model, item)}")
        chosen += [n for n in found if n not in chosen]
    return chosen


def _candidates(model: nn.Module, item: str) -> str:
    names = [n for n, _ in model.named_modules() if n]
    close = difflib.get_close_matches(item, names, n=5, cutoff=0.5)
    blocks = [f"{c}.*" for c in _block_containers(model)]
    shown = list(dict.fromkeys(close + blocks + ["auto"]))
    if len(shown) < 6:
        shown += [n for n in names if "." not in n and n not in shown][: 6 - len(shown)]
    return ", ".join(shown)


def _repeated_containers(model: nn.Module) -> dict[str, nn.Module]:
    """ModuleList/Sequential modules holding >= 2 children, all of one class (a stack of blocks)."""
    found: dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.ModuleList, nn.Sequential)):
            kids = list(mod.children())
            if len(kids) >= 2 and len({type(k) for k in kids}) == 1 and any(p.numel() for p in kids[0].parameters()):
                found[name] = mod
    return found


def _block_containers(model: nn.Module) -> list[str]:
    """Outermost repeated containers (not inside another one) that hold >= 10% of the parameters."""
    reps = _repeated_containers(model)
    outer = [n for n in reps if not any(n.startswith(o + ".") for o in reps if o != n and o != "")]
    if "" in reps:  # the model itself is a Sequential of blocks
        outer = [""]
    total = sum(p.numel() for p in model.parameters()) or 1
    return [n for n in outer if sum(p.numel() for p in reps[n].parameters()) >= 0.1 * total]


def auto_layers(model: nn.Module) -> list[str]:
    """The outputs of the network's repeated blocks.

    Finds the outermost stacks of same-class blocks (``transformer.h``, ``encoder.layer``, ``model.layers``) and
    returns their elements. A block that only wraps another stack (a ResNet stage: ``stages.i`` → ``stages.i.layers``)
    is looked through, so a ResNet gives its residual blocks (``encoder.stages.0.layers.0``, ...).
    """

    def expand(prefix: str, container: nn.Module) -> list[str]:
        out = []
        for key, child in container.named_children():
            name = f"{prefix}.{key}" if prefix else key
            grandkids = list(child.named_children())
            if len(grandkids) == 1 and isinstance(grandkids[0][1], (nn.ModuleList, nn.Sequential)):
                out += expand(name + "." + grandkids[0][0], grandkids[0][1])  # a wrapper around a stack
            else:
                out.append(name)
        return out

    layers = []
    modules = dict(model.named_modules())
    for c in _block_containers(model):
        layers += expand(c, modules[c])
    if not layers:
        raise LocalizerError(
            "layers 'auto' found no stack of repeated blocks in this model; name the layers "
            f"(exact names or globs), e.g. one of: {_candidates(model, '')}"
        )
    return layers


# --- pooling -----------------------------------------------------------------------------------------------------


def pool(
    output: torch.Tensor, pooling: str, attention_mask: torch.Tensor | None = None, layer: str = ""
) -> torch.Tensor:
    """Pool one layer output into units.

    Args:
        output: the layer's main output, ``[B, T, D]`` for ``last``/``mean``, ``[B, C, H, W]`` for ``channel``,
            any ``[B, ...]`` for ``flat``.
        pooling: one of :data:`POOLINGS`.
        attention_mask: ``[B, T]`` (1 = real token), needed for ``last``/``mean``; all-ones when None.
        layer: the layer name, for error messages.

    Returns:
        ``[B, U]`` float32.
    """
    return Pooler(pooling, attention_mask)(output, layer)


class Pooler:
    """:func:`pool` for the layers of one batch: what the attention mask gives (the last real token's position, the
    token counts) is computed once, not once per layer."""

    def __init__(self, pooling: str, attention_mask: torch.Tensor | None = None):
        if pooling not in POOLINGS:
            raise LocalizerError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        self.pooling, self.attention_mask = pooling, attention_mask
        self._by_mask: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}  # (device, dtype, shape) → derived

    def _derived(self, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``last``: (rows ``[B]``, last real position ``[B]``); ``mean``: (mask ``[B, T, 1]``, count ``[B, 1]``)."""
        key = (x.device, x.dtype, tuple(x.shape[:2]))
        if key not in self._by_mask:
            mask = self.attention_mask
            if mask is None:
                mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
            mask = mask.to(x.device)
            if mask.shape != x.shape[:2]:
                raise LocalizerError(
                    f"layer {layer!r}: output has {x.shape[1]} positions but the attention mask has "
                    f"{mask.shape[1]}; token pooling needs one output per input token"
                )
            if self.pooling == "last":
                positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
                last = (mask.long() * positions).argmax(dim=1)  # index of the last 1 in each row
                self._by_mask[key] = (torch.arange(x.shape[0], device=x.device), last)
            else:
                m = mask.to(x.dtype).unsqueeze(-1)
                self._by_mask[key] = (m, m.sum(dim=1).clamp(min=1))
        return self._by_mask[key]

    def __call__(self, output: torch.Tensor, layer: str = "") -> torch.Tensor:
        """One layer's output → ``[B, U]`` float32 (see :func:`pool`)."""
        x, pooling = output, self.pooling
        if pooling in TOKEN_POOLINGS:
            if x.dim() != 3:
                raise LocalizerError(
                    f"layer {layer!r}: pooling {pooling!r} needs a [batch, tokens, dim] output, "
                    f"got shape {tuple(x.shape)}; use 'channel' or 'flat'"
                )
            a, b = self._derived(x, layer)
            out = x[a, b] if pooling == "last" else (x * a).sum(dim=1) / b
        elif pooling == "channel":
            if x.dim() != 4:
                raise LocalizerError(
                    f"layer {layer!r}: pooling 'channel' needs a [batch, channels, height, width] "
                    f"output, got shape {tuple(x.shape)}; use 'flat' or a token pooling"
                )
            out = x.mean(dim=(2, 3))
        else:  # flat: a copy, not a view of the output, which a later in-place op (ReLU(inplace=True)) may change
            out = x.reshape(x.shape[0], -1)
            if out.dtype != torch.float32:
                return out.float()  # (a copy)
            views = out.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
            return out.clone() if views else out  # (reshaping a channels-last output copies already)
        return out.float()
