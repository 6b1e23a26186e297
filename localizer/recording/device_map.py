"""Models larger than one device: a Hugging Face device map (``--device_map auto --max_memory 0=70GiB,1=70GiB``).

Transformers (with accelerate) places the model's blocks on the devices of the map — several GPUs, the CPU, and
the disk for what fits nowhere else (``max_memory`` caps each device) — and moves each block's inputs to its device
as the forward runs, so one process drives every device. Lightning must then neither move the model nor split the
data across processes: :func:`device_map_trainer` gives the Trainer a single-device strategy that leaves the model
where the map put it. Weights offloaded to the disk go to a temporary folder that lives as long as the model.
"""

from __future__ import annotations

import json
import re
import tempfile
from typing import Any

import torch

from localizer.errors import LocalizerError, opt

PLACEMENTS = ("auto", "balanced", "balanced_low_0", "sequential")
SIZE = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?)?B", re.IGNORECASE)  # what accelerate reads as a size


def device_map_options(device_map: str | None, max_memory: str | None) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for ``--device_map`` (a placement name or a JSON object mapping module
    names to devices) and ``--max_memory`` (``DEVICE=SIZE`` pairs separated by commas, e.g. ``0=20GiB,cpu=64GiB``);
    ``{}`` without a device map. The ``offload_folder`` returned with them is a :class:`tempfile.TemporaryDirectory`
    (deleted when the model is)."""
    if device_map is None:
        if max_memory is not None:
            raise LocalizerError(f"{opt('max_memory')} applies with {opt('device_map', 'auto')}")
        return {}
    placement: Any = device_map
    if device_map.lstrip().startswith("{"):
        try:
            placement = json.loads(device_map)
        except json.JSONDecodeError as e:
            raise LocalizerError(f"{opt('device_map')}: not a JSON object ({e.msg})") from e
    elif device_map not in PLACEMENTS:
        raise LocalizerError(
            f"unknown {opt('device_map')} {device_map!r}; choose one of {', '.join(PLACEMENTS)} or give a JSON "
            f'object of module names and devices (e.g. {{"": "cpu"}})'
        )
    memory: dict[int | str, str] = {}
    for pair in (max_memory or "").split(","):
        if not pair.strip():
            continue
        device, sep, size = (part.strip() for part in pair.partition("="))
        if not sep or not device or not SIZE.fullmatch(size):
            raise LocalizerError(
                f"{opt('max_memory')}: {pair.strip()!r} is not DEVICE=SIZE (e.g. 0=20GiB or cpu=64GiB; sizes in B, KB, "
                f"MB, GB, TB or KiB ... TiB)"
            )
        memory[int(device) if device.isdigit() else device] = size
    folder = tempfile.TemporaryDirectory(prefix="localizer-offload-")
    options: dict[str, Any] = {"device_map": placement, "offload_folder": folder.name, "_offload": folder}
    if memory:
        options["max_memory"] = memory
    return options


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a device-mapped model takes its inputs: the first GPU of its map (its embeddings' usual place), else the
    CPU (accelerate moves every block's inputs to that block's device)."""
    for place in (getattr(model, "hf_device_map", None) or {}).values():
        if isinstance(place, int) or (isinstance(place, str) and place.startswith(("cuda", "xpu", "mps"))):
            return torch.device(f"cuda:{place}" if isinstance(place, int) else place)
        if isinstance(place, torch.device) and place.type != "cpu":
            return place
    return torch.device("cpu")


def require_one_process(kwargs: dict[str, Any]) -> None:
    """Refuse Trainer options that would start several processes for a device-mapped model (checked before the
    model is loaded, so that a 70B model is not loaded only to be refused)."""
    devices, nodes, strategy = kwargs.get("devices", "auto"), kwargs.get("num_nodes", 1), kwargs.get("strategy")
    wrong = [
        f"{name} {value}"
        for name, value, fine in (
            ("devices", devices, str(devices) in ("1", "auto")),
            ("num_nodes", nodes, int(nodes or 1) == 1),
            ("strategy", strategy, strategy in (None, "auto")),
        )
        if not fine
    ]
    if wrong:
        raise LocalizerError(
            f"a model placed by {opt('device_map')} runs in one process that drives every device of its map: "
            f"leave devices, num_nodes and strategy unset (got {', '.join(wrong)})"
        )


def device_map_trainer(model: torch.nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Trainer keyword arguments for a model placed by a device map (unchanged for any other model): one process
    (``devices`` 1, one node, no strategy given) and a strategy that leaves the model where the map put it."""
    if not getattr(model, "hf_device_map", None):
        return kwargs
    require_one_process(kwargs)
    from lightning.pytorch.strategies import SingleDeviceStrategy

    class DeviceMapStrategy(SingleDeviceStrategy):
        """:class:`SingleDeviceStrategy` that never moves the model (its blocks stay on their devices)."""

        def model_to_device(self) -> None:
            pass

        def teardown(self) -> None:  # Strategy.teardown without moving the module to the CPU
            self.precision_plugin.teardown()
            if self.accelerator is not None:
                self.accelerator.teardown()
            self.checkpoint_io.teardown()

    device = input_device(model)
    accelerator = "gpu" if device.type == "cuda" else device.type
    return {**kwargs, "accelerator": accelerator, "devices": 1, "strategy": DeviceMapStrategy(device=device)}
