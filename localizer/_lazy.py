"""Lazy attributes for package ``__init__`` modules: names resolve on first use, so importing a package (for
``--help``, or one light module of it) never imports torch, Lightning or transformers."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` that import ``names[attr]`` (a module path) on first use."""

    def __getattr__(attr: str) -> Any:
        if attr in names:
            return getattr(importlib.import_module(names[attr]), attr)
        raise AttributeError(f"module {package!r} has no attribute {attr!r}")

    def __dir__() -> list[str]:
        return sorted(names)

    return __getattr__, __dir__
