"""Building and validating stimulus sets.

A stimulus set is a :class:`datasets.Dataset` with

- exactly one of a ``text`` column (non-empty strings) or an ``image`` column (images),
- a bool ``positive`` column: True = the category being localized, False = control,
- an optional ``split`` column with values ``localize`` / ``validation``.

:func:`load_stimuli` reads one from a JSONL / CSV / Parquet file, a ``save_to_disk`` directory, an image folder with
``positive/`` and ``control/`` subfolders, a hub dataset id, or two hub ids (positive, control), and validates it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from localizer.errors import LocalizerError, first_line

if TYPE_CHECKING:  # datasets is slow to import: only where it is used
    import datasets

SPLITS = ("localize", "validation")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_stimuli(
    source: str | os.PathLike, control: str | os.PathLike | None = None, hub_split: str = "train"
) -> datasets.Dataset:
    """Load and validate a stimulus set.

    Args:
        source: a built-in set's name (:mod:`localizer.recording.builtin`), a ``.jsonl``/``.json``/``.csv``/
            ``.parquet`` file, a ``save_to_disk`` directory, an image folder with
            ``positive/`` and ``control/`` subfolders, or a hub dataset id (needs internet). With ``control``, the
            positive stimuli of a two-source set.
        control: a second source whose rows are all controls; ``source``'s rows are then all positive and neither
            needs a ``positive`` column. Hub datasets have their text/image column found by type.
        hub_split: the split read from hub datasets.

    Returns:
        the validated dataset, ``N`` rows.
    """
    if control is not None:
        return _two_sources(source, control, hub_split)
    return validate_stimuli(_read_source(source, hub_split), name=str(source))


def validate_stimuli(ds: datasets.Dataset, name: str = "stimuli") -> datasets.Dataset:
    """Check the stimulus-set contract (see the module docstring); raise :class:`LocalizerError` naming the problem."""
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        ds = _concat_splits(ds, name)
    if not isinstance(ds, datasets.Dataset):
        raise LocalizerError(f"{name}: expected a datasets.Dataset, got {type(ds).__name__}")
    if len(ds) == 0:
        raise LocalizerError(f"{name}: the stimulus set is empty")
    columns = set(ds.column_names)
    kinds = [c for c in ("text", "image") if c in columns]
    if len(kinds) != 1:
        raise LocalizerError(
            f"{name}: needs exactly one of the columns 'text' or 'image' (found columns: {sorted(columns)})"
        )
    if "positive" not in columns:
        raise LocalizerError(
            f"{name}: missing the bool column 'positive' (True = category being localized, "
            f"False = control); found columns: {sorted(columns)}"
        )
    feature = ds.features["positive"]
    if getattr(feature, "dtype", None) != "bool":
        raise LocalizerError(
            f"{name}: column 'positive' must be bool (true/false), got {getattr(feature, 'dtype', feature)}"
        )
    positive = ds["positive"][:]  # a list (a datasets Column is read item by item)
    if any(p is None for p in positive):
        raise LocalizerError(f"{name}: column 'positive' has missing values")
    n_pos = sum(positive)
    if n_pos == 0 or n_pos == len(positive):
        which = "control (positive=false)" if n_pos else "positive (positive=true)"
        raise LocalizerError(f"{name}: only one class present; add {which} stimuli")
    if "split" in columns:
        bad = sorted({s for s in ds["split"][:] if s not in SPLITS}, key=str)
        if bad:
            raise LocalizerError(f"{name}: column 'split' may only hold {list(SPLITS)}, found {bad[:5]}")
    if kinds[0] == "text":
        texts = ds["text"][:]
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise LocalizerError(f"{name}: stimulus {i} has an empty or non-string text ({t!r})")
    else:
        if not isinstance(ds.features["image"], datasets.Image):
            raise LocalizerError(f"{name}: column 'image' must be a datasets.Image feature, got {ds.features['image']}")
    return ds


def fingerprint(ds: datasets.Dataset) -> str:
    """SHA-256 of a stimulus set's rows as Arrow data (texts, or image bytes/paths, and every other column)."""
    import hashlib

    import pyarrow as pa

    h = hashlib.sha256()
    for batch in ds.with_format("arrow").iter(batch_size=4096):
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, batch.schema) as writer:
            writer.write_table(batch)
        h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()


def stimulus_labels(ds: datasets.Dataset, source: str | None = None) -> list[str]:
    """What each row shows, as ``[N]`` strings: the text, an image's file path, or ``<source>#<row>`` for an image
    held as bytes (no path)."""
    if modality(ds) == "text":
        return [str(t) for t in ds["text"][:]]
    import datasets

    paths = ds.cast_column("image", datasets.Image(decode=False))["image"]
    name = source or "stimuli"
    return [(p or {}).get("path") or f"{name}#{i}" for i, p in enumerate(paths)]


def modality(ds: datasets.Dataset) -> str:
    """``"text"`` or ``"image"``: which stimulus column the set has."""
    return "text" if "text" in ds.column_names else "image"


# --- readers -----------------------------------------------------------------------------------------------------


def _read_source(source, hub_split: str):
    import datasets

    from localizer.recording.builtin import BUILTIN, HUB_PAIRS, builtin

    if str(source) in BUILTIN and not Path(source).exists():
        return builtin(str(source))
    if str(source) in HUB_PAIRS and not Path(source).exists():
        (positive, control), finish = HUB_PAIRS[str(source)]
        return finish(_two_sources(positive, control, hub_split))
    path = Path(source)
    if path.is_file():
        builder = _FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise LocalizerError(
                f"{source}: unsupported stimulus file type {path.suffix!r} (use .jsonl, .json, .csv or .parquet)"
            )
        if path.stat().st_size == 0:
            raise LocalizerError(f"{source}: the stimulus file is empty")
        try:
            return datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as e:  # arrow/pandas parse errors come in many types
            raise LocalizerError(f"{source}: cannot parse as {builder}: {first_line(e)}") from e
    if path.is_dir():
        if (path / "positive").is_dir() and (path / "control").is_dir():
            return _image_folder(path)
        if (
            (path / "dataset_info.json").exists()
            or (path / "dataset_dict.json").exists()
            or (path / "state.json").exists()
        ):
            try:
                return datasets.load_from_disk(str(path))
            except Exception as e:
                raise LocalizerError(f"{source}: not a readable save_to_disk dataset: {first_line(e)}") from e
        return _hub(str(path), hub_split)  # a local dataset repository with data files
    if path.exists():  # a named pipe, a socket or a device: never opened (a pipe would block)
        raise LocalizerError(f"{source}: not a regular file or folder")
    if os.sep in str(source) and not _looks_like_hub_id(str(source)):
        raise LocalizerError(f"{source}: no such file or directory")
    return _hub(str(source), hub_split)


def _looks_like_hub_id(s: str) -> bool:
    parts = s.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") for p in parts)


def _hub(name: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(name, split=split)
    except Exception as e:
        raise LocalizerError(
            f"stimuli {name!r}: not a local path, and loading it as a hub dataset failed (no network?): {first_line(e)}"
        ) from e


def _image_folder(path: Path):
    """``path/positive/*`` and ``path/control/*`` → Dataset(image, positive); every file must open as an image."""
    import datasets
    from PIL import Image, UnidentifiedImageError

    files, positive = [], []
    for sub, flag in (("positive", True), ("control", False)):
        found = sorted(p for p in (path / sub).rglob("*") if p.is_file() and not p.name.startswith("."))
        for p in found:
            try:
                with Image.open(p) as im:
                    im.verify()
            except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
                raise LocalizerError(f"{p}: unreadable image ({first_line(e)})") from e
        files += [str(p) for p in found]
        positive += [flag] * len(found)
    return datasets.Dataset.from_dict(
        {"image": files, "positive": positive},
        features=datasets.Features({"image": datasets.Image(), "positive": datasets.Value("bool")}),
    )


def _two_sources(source, control, hub_split: str):
    """Positive rows from ``source``, control rows from ``control``; the stimulus column is found by type."""
    import datasets

    parts = []
    for src, flag in ((source, True), (control, False)):
        ds = _read_source(src, hub_split)
        if isinstance(ds, datasets.DatasetDict):
            ds = _concat_splits(ds, str(src))
        column, kind = _stimulus_column(ds, str(src))
        keep = [column] + (["split"] if "split" in ds.column_names else [])
        ds = ds.select_columns(keep)
        if column != kind:
            ds = ds.rename_column(column, kind)
        ds = ds.add_column("positive", [flag] * len(ds))
        parts.append(ds.cast_column("positive", datasets.Value("bool")))
    if set(parts[0].column_names) != set(parts[1].column_names):
        raise LocalizerError(
            f"positive {source} and control {control} stimuli differ in kind or columns: "
            f"{parts[0].column_names} vs {parts[1].column_names}"
        )
    ds = datasets.concatenate_datasets([parts[0], parts[1].cast(parts[0].features)])
    return validate_stimuli(ds, name=f"{source} + {control}")


def _stimulus_column(ds, name: str) -> tuple[str, str]:
    import datasets

    for c in ("text", "image"):
        if c in ds.column_names:
            return c, c
    for c, f in ds.features.items():
        if isinstance(f, datasets.Image):
            return c, "image"
    for c, f in ds.features.items():
        if getattr(f, "dtype", None) in ("string", "large_string"):
            return c, "text"
    raise LocalizerError(f"{name}: no text or image column found (columns: {ds.column_names})")


def _concat_splits(dd, name: str):
    """A DatasetDict with ``localize``/``validation`` splits → one Dataset with a ``split`` column."""
    import datasets

    bad = [k for k in dd if k not in SPLITS]
    if bad:
        raise LocalizerError(f"{name}: a dataset with several splits must name them {list(SPLITS)}, found {bad}")
    parts = []
    for key, ds in dd.items():
        if "split" not in ds.column_names:
            ds = ds.add_column("split", [key] * len(ds))
        parts.append(ds)
    return datasets.concatenate_datasets(parts)
