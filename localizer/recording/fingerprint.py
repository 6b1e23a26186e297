"""Fingerprints of a model's weights: what a resumed extraction and an ablation compare to know it is the same model.

Every byte counts: a model read from files is hashed through its weight files (each file's SHA-256 cached by path,
size and mtime, so a rerun costs a ``stat``); any other model through every value of every parameter and buffer.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn


def weights_fingerprint(model: nn.Module) -> str:
    """SHA-256 over every parameter's and buffer's name, shape, dtype and every value."""
    import hashlib

    h = hashlib.sha256()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        if t.device.type != "meta":  # a meta tensor has no values
            values = t.detach().to("cpu").contiguous().reshape(-1)
            h.update(values.view(torch.uint8).numpy().tobytes() if values.numel() else b"")
    return h.hexdigest()


def files_fingerprint(files: tuple[Path, ...] | list[Path]) -> str:
    """SHA-256 over the names and contents of ``files``, each file's hash cached in ``<cache>/fingerprints.json``
    under its resolved path, size and mtime (a changed file is read again)."""
    import hashlib
    import json

    from localizer.recording.models import cache_dir

    cache_file = cache_dir() / "fingerprints.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    changed = False
    h = hashlib.sha256()
    for f in files:
        path = Path(f).resolve()
        st = path.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        entry = cache.get(str(path))
        if not entry or entry.get("stamp") != stamp:
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    digest.update(block)
            entry = cache[str(path)] = {"stamp": stamp, "sha256": digest.hexdigest()}
            changed = True
        h.update(f"{path.name}:{entry['sha256']}".encode())
    if changed:
        try:  # a cache that cannot be written only costs time
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f".fingerprints-{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            os.replace(tmp, cache_file)
        except OSError:
            pass
    return h.hexdigest()
