"""Calling a loaded network with a batch: the inputs it takes (keyword or positional, position ids from the attention
mask, no cache), the same way for recording and for ablation."""

from __future__ import annotations

import inspect
import sys
from typing import Any

import torch
from torch import nn


def weights_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of a module's floating-point weights (None when it has none)."""
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    return None if weight is None else weight.dtype


def forward_accepts(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` takes a keyword ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params


class ModelCaller:
    """Calls a model on a batch from :mod:`localizer.recording.datamodule` (or a task's collation) the same way
    everywhere.

    Hugging Face text models get ``input_ids``/``attention_mask`` (and ``token_type_ids``), ``position_ids`` derived
    from the attention mask (so left padding matches unpadded inputs for absolute position embeddings; skipped for
    the RoBERTa family, which derives positions from the input ids itself) and ``use_cache=False``. Image models get
    ``pixel_values``. Plain modules get the main input positionally (plus ``attention_mask`` if their forward takes it).

    Args:
        model: the network.
        modality: ``"text"`` or ``"image"``.
    """

    INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "pixel_values")

    def __init__(self, model: nn.Module, modality: str):
        self.model, self.modality = model, modality
        self.is_hf = type(model).__module__.startswith("transformers.")
        self.position_ids = (
            self.is_hf
            and modality == "text"
            and forward_accepts(model, "position_ids")
            and not hasattr(sys.modules.get(type(model).__module__), "create_position_ids_from_input_ids")
        )
        self.no_cache = self.is_hf and forward_accepts(model, "use_cache")
        self.takes_mask = forward_accepts(model, "attention_mask")

    def __call__(self, batch: dict[str, Any]) -> Any:
        inputs = {k: batch[k] for k in self.INPUT_KEYS if k in batch}
        if self.modality == "image":
            pixels = inputs["pixel_values"]
            dtype = weights_dtype(self.model)  # asked per batch: a precision plugin may convert the model later
            if dtype is not None and pixels.dtype != dtype:  # a model loaded in bfloat16/float16
                pixels = pixels.to(dtype)
            return self.model(pixel_values=pixels) if self.is_hf else self.model(pixels)
        if not self.is_hf:
            if "attention_mask" in inputs and self.takes_mask:
                return self.model(inputs["input_ids"], attention_mask=inputs["attention_mask"])
            return self.model(inputs["input_ids"])
        if self.position_ids and "attention_mask" in inputs:
            inputs["position_ids"] = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        if self.no_cache:
            inputs["use_cache"] = False
        return self.model(**inputs)
