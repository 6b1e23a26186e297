"""`localizer check`: verify activation files (and their segments), selection files, results and run records.
:func:`check_file` returns ``(kind, summary, problems)``, each problem one line saying what is wrong and where."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from localizer.errors import LocalizerError
from localizer.files.activations import FORMAT_VERSION, allow_sources, coverage, read_version, source_file
from localizer.jobs import describe_job

CHUNK_BYTES = 16 << 20


@dataclass
class FileReport:
    """What :func:`check` found in one file: ``kind`` is ``activations``, ``selection`` or ``unknown``;
    ``problems`` holds one line per problem (empty when the file is OK)."""

    path: str
    kind: str
    summary: str
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def require_valid(path: str | os.PathLike, kind: str, values: bool = True) -> None:
    """Refuse ``path`` unless ``localizer check`` finds it a sound file of ``kind`` (``activations`` or
    ``selection``): the first problem it finds, in one line. ``values=False`` skips the NaN/inf scan."""
    found, _, problems = check_file(path, values)
    if found != kind:
        what = {"activations": "an activation file", "selection": "a selection file"}[kind]
        raise LocalizerError(f"{path}: not {what} ({problems[0] if problems else f'it is a {found} file'})")
    if problems:
        more = f" (and {len(problems) - 1} more; `localizer check {path}` lists them)" if len(problems) > 1 else ""
        raise LocalizerError(f"{path}: {problems[0]}{more}")


def check(files: list[str]) -> list[FileReport]:
    """Verify activation and selection files: format version, shapes, /index = 0..N-1 with no gap or duplicate,
    no NaN/inf, every segment file present, complete and mapped to its own stimuli. Nothing is modified.

    Args:
        files: activation or selection files (.h5), results documents (.json), or folders: a folder stands for every
            .h5 and .json file in it and below it (a ``localizer run`` folder), segment folders aside.

    Returns:
        one :class:`FileReport` per file, in order.

    Raises:
        LocalizerError: a path does not exist, or a folder holds no such file (bad input, not a damaged file).
    """
    paths: list[Path] = []
    for given in [files] if isinstance(files, (str, os.PathLike)) else list(files):
        path = Path(given)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in (".h5", ".json") and p.is_file()
                           and not any(part.endswith(".shards") for part in p.relative_to(path).parts))  # fmt: skip
            if not found:
                raise LocalizerError(f"{path} is a folder without .h5 or .json files to check")
            paths += found
        else:
            paths.append(path)
    return [FileReport(str(path), *check_file(path)) for path in paths]


def check_file(path: str | os.PathLike, values: bool = True) -> tuple[str, str, list[str]]:
    """Check one file → ``(kind, summary, problems)``; kind is ``activations``, ``selection`` or ``unknown``.

    Raises:
        LocalizerError: the path does not exist or is a folder (bad input, not a damaged file).
    """
    path = Path(path)
    if not path.exists():
        raise LocalizerError(f"{path} does not exist")
    if path.is_dir():
        raise LocalizerError(f"{path} is a folder; give an .h5 file")
    if not path.is_file():  # a named pipe or a device would block the reader
        raise LocalizerError(f"{path} is not a regular file")
    if path.suffix == ".json":
        return _check_results(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        return "unknown", "", [f"not a readable HDF5 file (truncated or corrupt?): {_short(e)}"]
    with f:
        try:
            if "activations" in f:
                return ("activations", *_check_activations(f, path, values))
            if "mask" in f:
                return ("selection", *_check_selection(f))
        except Exception as e:  # damage below the root that no section caught
            return "unknown", "", [f"cannot be read (truncated or corrupt?): {type(e).__name__}: {_short(e)}"]
        return "unknown", "", ["neither an activation file (/activations) nor a selection file (/mask)"]


@contextmanager
def _section(problems: list[str], what: str):
    """Any failure inside becomes one problem line: a damaged file must never end the check with a traceback."""
    try:
        yield
    except Exception as e:
        problems.append(f"{what} cannot be read ({type(e).__name__}: {_short(e)})")


def _version(f, problems: list[str]) -> None:
    ok, shown = read_version(f.attrs)
    if not ok:
        problems.append(f"format_version is {shown!r}; this localizer reads version {FORMAT_VERSION}")


def _layers(f, problems: list[str]) -> list[str]:
    try:
        layers = json.loads(f.attrs["layers"])
        assert isinstance(layers, list) and all(isinstance(x, str) for x in layers)
        return layers
    except (KeyError, ValueError, TypeError, AssertionError):
        problems.append("root attribute 'layers' is missing or not a JSON list of names")
        return []


def _check_activations(f, path: Path, values: bool = True) -> tuple[str, list[str]]:
    problems: list[str] = []
    _version(f, problems)
    layers = _layers(f, problems)
    for key in ("model", "model_class", "pooling", "n_stimuli"):
        if key not in f.attrs:
            problems.append(f"root attribute {key!r} is missing")
    n = 0
    with _section(problems, "root attribute 'n_stimuli'"):
        n = int(f.attrs.get("n_stimuli", f["index"].shape[0] if "index" in f else 0))

    with _section(problems, "/index"):
        if not isinstance(f.get("index"), h5py.Dataset):
            problems.append("/index is missing")
        else:
            index = f["index"][:]
            if index.shape != (n,) or index.dtype.kind not in "iu":
                problems.append(f"/index is {index.dtype} {index.shape}, expected int ({n},)")
            elif not np.array_equal(index, np.arange(n)):
                problems.append(f"/index is not 0..{n - 1}: {coverage(index, n) or 'out of order'}")
    positive = None
    with _section(problems, "/positive"):
        if not isinstance(f.get("positive"), h5py.Dataset):
            problems.append("/positive is missing")
        else:
            positive = f["positive"][:]
            if positive.dtype != bool or positive.shape != (n,):
                problems.append(f"/positive is {positive.dtype} {positive.shape}, expected bool ({n},)")
                positive = None
            elif positive.all() or not positive.any():
                problems.append("/positive holds only one class")
    if "split" in f:
        with _section(problems, "/split"):
            split = f["split"].asstr()[:]
            bad = sorted(set(split.tolist()) - {"localize", "validation", ""})
            if split.shape != (n,) or bad:
                problems.append(f"/split has shape {split.shape} (expected ({n},)) and unknown values {bad[:5]}")

    group = f["activations"]
    if not isinstance(group, h5py.Group):
        return "activation file", problems + ["/activations is not a group of datasets"]
    listed, present = set(layers), set(group)
    if listed - present:
        problems.append(f"layers listed but without a dataset: {sorted(listed - present)}")
    if present - listed:
        problems.append(f"datasets not listed in the 'layers' attribute: {sorted(present - listed)}")
    units, sources = 0, dict[str, Any]()
    good = []
    for layer in [x for x in layers if x in present]:
        with _section(problems, f"layer {layer!r}"):
            ds = group[layer]
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or ds.shape[0] != n or ds.dtype != np.float32:
                shown = f"{ds.dtype} {ds.shape}" if isinstance(ds, h5py.Dataset) else "a group"
                problems.append(f"layer {layer!r}: dataset is {shown}, expected float32 ({n}, units)")
                continue
            units += ds.shape[1]
            good.append(layer)
            if ds.is_virtual:
                for vs in ds.virtual_sources():
                    sources.setdefault(vs.file_name, []).append((layer, vs))
    if sources:
        try:
            allow_sources(path)
        except LocalizerError as e:
            problems.append(str(e))
        problems += _check_segments(path, n, positive, {x: group[x].shape[1] for x in good}, sources)
    if values:  # the NaN/inf scan reads every value (select does it itself while it reads)
        problems += _check_finite(group, good)
    n_pos = int(positive.sum()) if positive is not None else "?"
    summary = f"activation file, format 1: {n} stimuli ({n_pos} positive), {len(layers)} layers, {units} units" + (
        f", {len(sources)} segment files" if sources else ", stored in the file"
    )
    return summary, problems


def _rows(space) -> np.ndarray | None:
    """The first-axis rows of a regular hyperslab selection (``None`` when it is not one)."""
    try:
        start, stride, count, block = space.get_regular_hyperslab()
    except Exception:
        return None
    starts = start[0] + stride[0] * np.arange(count[0])
    return (starts[:, None] + np.arange(block[0])[None, :]).ravel()


def _check_segments(path: Path, n: int, positive, units: dict[str, int], sources: dict) -> list[str]:
    """Every segment file exists, is complete, has the layers' shapes, and maps its rows to its own indices."""
    problems: list[str] = []
    covered: list[np.ndarray] = []
    for name, maps in sources.items():
        name = source_file(name)
        seg = Path(name) if os.path.isabs(name) else path.parent / name
        if not seg.exists():
            problems.append(f"segment {seg} is missing (its rows read as NaN)")
            continue
        try:
            with h5py.File(seg, "r") as s:
                problems += _check_segment(s, seg, n, positive, units, maps, covered)
        except OSError as e:
            problems.append(f"segment {seg} is not a readable HDF5 file (truncated or corrupt?): {_short(e)}")
        except Exception as e:
            problems.append(f"segment {seg} is damaged ({type(e).__name__}: {_short(e)})")
    if covered:
        index = np.concatenate(covered)
        gaps = coverage(index, n)
        if gaps:
            problems.append(f"the segments do not cover the {n} stimuli exactly once: {gaps}")
    return problems


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:160]


def _check_segment(s, seg: Path, n: int, positive, units: dict[str, int], maps, covered: list) -> list[str]:
    """One open segment: complete, its shapes, its labels, and its mapping to the master's rows."""
    problems = []
    if not s.attrs.get("complete", False):
        problems.append(f"segment {seg} is not marked complete")
    if "index" not in s:
        return problems + [f"segment {seg} has no /index"]
    index = s["index"][:]
    if index.ndim != 1 or index.dtype.kind not in "iu":
        return problems + [f"segment {seg}: /index is {index.dtype} {index.shape}, expected int (rows,)"]
    covered.append(index)
    if int(s.attrs.get("n_rows", -1)) != len(index):
        problems.append(f"segment {seg}: n_rows {s.attrs.get('n_rows')} but {len(index)} indices")
    inside = (index >= 0) & (index < n)
    if positive is not None and "positive" in s and inside.all():
        if not np.array_equal(s["positive"][:], positive[index]):
            problems.append(f"segment {seg}: /positive disagrees with the master's")
    for layer, vs in maps:
        src = s.get(vs.dset_name)
        if src is None or src.shape != (len(index), units[layer]):
            shape = None if src is None else src.shape
            problems.append(f"segment {seg}: {vs.dset_name} is {shape}, expected ({len(index)}, {units[layer]})")
            continue
        vrows, srows = _rows(vs.vspace), _rows(vs.src_space)
        if (
            vrows is not None
            and srows is not None
            and (
                len(vrows) != len(srows)
                or srows.max(initial=-1) >= len(index)
                or not np.array_equal(index[srows], vrows)
            )
        ):
            problems.append(f"segment {seg}: layer {layer!r} maps rows to the wrong stimuli")
    return problems


def _check_finite(group, layers: list[str]) -> list[str]:
    problems = []
    for layer in layers:
        ds = group[layer]
        step = max(1, CHUNK_BYTES // (4 * max(ds.shape[1], 1)))
        rows, first = 0, None
        for r0 in range(0, ds.shape[0], step):
            try:
                bad = ~np.isfinite(ds[r0 : r0 + step]).all(axis=1)
            except Exception as e:
                problems.append(
                    f"layer {layer!r}: stimuli {r0}..{min(r0 + step, ds.shape[0]) - 1} cannot be read ({_short(e)})"
                )
                break
            if bad.any():
                first = r0 + int(np.argmax(bad)) if first is None else first
                rows += int(bad.sum())
        if rows:
            problems.append(f"layer {layer!r}: NaN/inf activations in {rows} rows (first: stimulus {first})")
    return problems


def _check_selection(f) -> tuple[str, list[str]]:
    problems: list[str] = []
    _version(f, problems)
    layers = _layers(f, problems)
    sizes: dict[str, int] = {}
    for layer in layers:
        with _section(problems, f"layer {layer!r}"):
            _check_selection_layer(f, layer, sizes, problems)
    mask = np.zeros(0, bool)
    with _section(problems, "/mask"):
        mask = np.concatenate([f[f"mask/{x}"][:] for x in sizes]) if sizes else np.zeros(0, bool)
    n_sel = f.attrs.get("n_selected")
    if n_sel is None or np.ndim(n_sel) != 0 or int(n_sel) != int(mask.sum()):
        problems.append(f"n_selected is {n_sel} but the mask holds {int(mask.sum())} units")
    n_sets = 0
    with _section(problems, "/controls"):
        n_sets = _check_controls(f, sizes, mask, problems)
    summary = (
        f"selection file, format 1: {int(mask.sum())} of {mask.size} units selected in {len(layers)} layers, "
        f"{n_sets} control sets"
    )
    return summary, problems


def _check_selection_layer(f, layer: str, sizes: dict[str, int], problems: list[str]) -> None:
    """One layer's mask and statistics: present, of one size, finite, p and q in [0, 1]."""
    from localizer.files.selection_file import STAT_NAMES

    m = f.get(f"mask/{layer}")
    if not isinstance(m, h5py.Dataset) or m.ndim != 1 or m.dtype != bool:
        problems.append(f"/mask/{layer} is missing or not a bool vector")
        return
    sizes[layer] = m.shape[0]
    for name in STAT_NAMES:
        ds = f.get(f"layers/{layer}/{name}")
        if not isinstance(ds, h5py.Dataset) or ds.shape != (m.shape[0],):
            problems.append(f"/layers/{layer}/{name} is missing or not of shape ({m.shape[0]},)")
            continue
        values = ds[:]
        if not np.isfinite(values).all():
            problems.append(f"/layers/{layer}/{name} holds NaN/inf")
        elif name in ("p", "q") and ((values < 0) | (values > 1)).any():
            problems.append(f"/layers/{layer}/{name} holds values outside [0, 1]")


def _check_controls(f, sizes: dict[str, int], mask: np.ndarray, problems: list[str]) -> int:
    """Every control set: of the selection's size and disjoint from it. Returns the number of sets."""
    from localizer.files import CONTROL_KINDS

    n_sets = 0
    for kind in f.get("controls", {}):
        if kind not in CONTROL_KINDS:
            problems.append(f"/controls/{kind} is not a known control kind")
        for i in f[f"controls/{kind}"]:
            n_sets += 1
            try:
                c = np.concatenate([f[f"controls/{kind}/{i}/{x}"][:] for x in sizes])
            except KeyError:
                problems.append(f"/controls/{kind}/{i} lacks some layers")
                continue
            if c.shape != mask.shape or c.dtype != bool:
                problems.append(f"/controls/{kind}/{i} has {c.shape} units, the mask {mask.shape}")
            elif (c & mask).any():
                problems.append(f"/controls/{kind}/{i} overlaps the selection in {int((c & mask).sum())} units")
            elif c.sum() != mask.sum():
                problems.append(f"/controls/{kind}/{i} has {int(c.sum())} units, the selection {int(mask.sum())}")
    return n_sets


RESULT_KEYS = ("task", "metrics", "method", "n_selected", "baseline", "localized", "controls", "delta", "z",
               "p_empirical")  # fmt: skip


def _check_results(path: Path) -> tuple[str, str, list[str]]:
    """A results document of ``localizer ablate``: valid JSON, every key, a number or null for every metric."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return "unknown", "", [f"not a readable JSON file: {_short(e)}"]
    described = describe_job(doc)  # localizer run's run.json
    if described is not None:
        return "run", described, []
    if not isinstance(doc, dict) or "task" not in doc or "baseline" not in doc:
        return "json", "a JSON file, not an ablation results document", []
    problems = [f"key {key!r} is missing" for key in RESULT_KEYS if key not in doc]
    metrics: list = doc["metrics"] if isinstance(doc.get("metrics"), list) else []
    for part in ("baseline", "localized"):
        values: dict = doc[part] if isinstance(doc.get(part), dict) else {}
        for m in metrics:
            value = values.get(m, "missing")
            if value is not None and not isinstance(value, (int, float)):
                problems.append(f"{part}.{m} is {value!r}, not a number or null")
    summary = f"ablation results, task {doc.get('task')}: {len(metrics)} metrics, {doc.get('n_selected')} units"
    return "results", summary, problems
