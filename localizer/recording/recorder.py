"""ActivationRecorder: a LightningModule that turns stimuli into pooled per-unit activations.

``predict_step`` runs the wrapped network on a batch (see :mod:`localizer.recording.datamodule`) with forward hooks
on the chosen layers and returns ``{layer: [B, U_layer] float32}`` in recording order. Pair it with
:class:`localizer.files.writer.HDF5ActivationWriter` to stream those rows to disk.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from localizer.errors import LocalizerError
from localizer.recording.calling import ModelCaller
from localizer.recording.hooks import StopForward, trace
from localizer.recording.layers import POOLINGS, Pooler, resolve_layers

ALLOWED_POOLINGS = {"text": ("last", "mean"), "image": ("channel", "flat", "mean")}
DEFAULT_POOLING = {"text": "last", "image": "channel"}


class ActivationRecorder(L.LightningModule):
    """Record pooled activations of chosen layers of any ``nn.Module`` or Hugging Face model.

    Args:
        model: the network (put in eval mode; its weights are never changed).
        layers: ``"auto"``, exact module names or glob patterns (list or comma-separated string).
        pooling: ``last`` / ``mean`` (text), ``channel`` / ``flat`` / ``mean`` (images); default ``last`` for text and
            ``channel`` for images (see :mod:`localizer.recording.layers`).
        modality: ``"text"`` or ``"image"``.
        model_name: how the model was named (recorded in the activation file).
        model_class: the class it was loaded with (recorded; later commands load the same class).

    Text inputs of Hugging Face models get ``position_ids`` derived from the attention mask, so a left-padded causal
    model with absolute position embeddings (GPT-2) gives the same result as unpadded inputs. Models that derive
    positions from the input ids themselves (RoBERTa family) are left alone.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | list[str] = "auto",
        pooling: str | None = None,
        *,
        modality: str = "text",
        model_name: str | None = None,
        model_class: str | None = None,
    ):
        super().__init__()
        if modality not in ALLOWED_POOLINGS:
            raise LocalizerError(f"modality must be 'text' or 'image', got {modality!r}")
        pooling = pooling or DEFAULT_POOLING[modality]
        if pooling not in POOLINGS:
            raise LocalizerError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
        if pooling not in ALLOWED_POOLINGS[modality]:
            raise LocalizerError(
                f"pooling {pooling!r} does not fit {modality} stimuli; use one of "
                f"{', '.join(ALLOWED_POOLINGS[modality])}"
            )
        self.model = model.eval()
        self.layers = resolve_layers(model, layers)
        self.pooling, self.modality = pooling, modality
        self.model_name = model_name or type(model).__name__
        self.model_class = model_class or type(model).__name__
        self.call_model = ModelCaller(model, modality)
        self._calls_checked = False

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``batch`` (see :mod:`localizer.recording.datamodule`) → ``{layer: [B, U_layer] float32}``, in recording
        order. A step of several batches (``parts``) runs them one by one under one set of hooks and returns their
        rows in order ``[R, U_layer]``, still on the model's device (one copy to the host per step)."""
        parts = batch["parts"] if "parts" in batch else [batch]
        if not self._calls_checked:
            self._check_single_calls(parts[0])
        pooler: Pooler = Pooler(self.pooling)
        pooled: dict[str, torch.Tensor] = {}

        def keep(layer: str, output: torch.Tensor) -> None:
            pooled[layer] = pooler(output, layer)
            if len(pooled) == len(self.layers):  # every layer seen (each runs once): skip the rest of the network
                raise StopForward

        outs = []
        with trace(self.model, self.layers, keep):
            for part in parts:
                pooler, pooled = Pooler(self.pooling, part.get("attention_mask")), {}
                try:
                    self.call_model(part)
                except StopForward:
                    pass
                missing = [layer for layer in self.layers if layer not in pooled]
                if missing:
                    raise LocalizerError(
                        f"layers {missing} produced no output in the forward pass (a fused fast path may "
                        f"skip them); choose other layers"
                    )
                outs.append(pooled)
        if len(outs) == 1:
            return {layer: outs[0][layer] for layer in self.layers}
        return {layer: torch.cat([o[layer] for o in outs]) for layer in self.layers}

    def _check_single_calls(self, batch: dict[str, Any]) -> None:
        """One whole forward pass counting how often each layer runs: a module that runs several times per forward
        (a layer shared across depth, as in ALBERT) is refused, because recording would keep one call while
        ablation silences every call."""
        calls: dict[str, int] = dict.fromkeys(self.layers, 0)

        def count(layer: str, output: torch.Tensor) -> None:
            calls[layer] += 1

        with trace(self.model, self.layers, count):
            self.call_model(batch)
        shared = {layer: n for layer, n in calls.items() if n > 1}
        if shared:
            layer, n = next(iter(shared.items()))
            raise LocalizerError(
                f"layer {layer!r} runs {n} times in one forward pass (a module shared across depth); recording keeps "
                f"one call but ablation would silence all {n}: choose modules that run once (e.g. a wrapper per call)"
            )
        self._calls_checked = True

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        return self(batch)
