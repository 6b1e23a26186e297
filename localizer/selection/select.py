"""The offline selection: ``localizer select`` reads an activation file in row chunks (memory does not depend on
N) and gives the same :class:`Selection` as the online callback."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from localizer.errors import LocalizerError, first_line, opt
from localizer.selection.options import PARAMETERS_DOC, Alternative, Rows, SelectionOptions, Statistic
from localizer.selection.result import Selection


def select(
    activations: str,
    out: str,
    *,
    overwrite: bool = False,
    log_dir: Optional[str] = "lightning_logs",
    abs: bool = False,
    alternative: Alternative = "greater",
    statistic: Statistic = "welch",
    rows: Rows = "localize",
    top: str = "1%",
    per_layer: bool = False,
    count: int | None = None,
    fdr: float | None = None,
    range: str | None = None,
    bottom: bool = False,
    controls: int = 10,
    seed: int = 0,
    split_half: bool = False,
) -> Selection:
    """Per-unit selectivity (Welch t, p, BH-FDR q, Cohen's d) of positive vs control stimuli from an activation
    file; select the network and matched random controls; write a selection file.

    Args:
        activations: the activation file written by localizer extract.
        out: the selection file to write (.h5).
        overwrite: replace an existing out.
        log_dir: TensorBoard folder (a select/ run is added; null: no logs).
        {selection_parameters}

    Returns:
        the :class:`Selection` (also written to ``out``).
    """
    from localizer.files.outputs import check_output

    options = SelectionOptions.from_parameters(locals())
    check_output(Path(out), overwrite)
    return select_file(activations, out, options, log_dir=log_dir)


select.__doc__ = (select.__doc__ or "").replace("{selection_parameters}", PARAMETERS_DOC)


def select_file(
    activations: str | os.PathLike,
    out: str | os.PathLike,
    options: SelectionOptions | None = None,
    chunk_bytes: int = 16 << 20,
    log_dir: str | os.PathLike | None = "lightning_logs",
    png_dir: str | os.PathLike | None = None,
    log_name: str | None = None,
) -> Selection:
    """Compute the selection from an activation file and write it to ``out`` (replacing it).

    Args:
        activations: a master activation file (:mod:`localizer.files.activations`).
        out: the selection file to write.
        options: selection rule, controls, ``abs``/``alternative``, split-half.
        chunk_bytes: float32 bytes per chunk of rows over all layers (read layer by layer: one layer's rows are
            read while the previous layer's are added).
        log_dir: TensorBoard folder (a ``select`` run is added); None to skip.
        png_dir: also save the figures as PNG files here.
        log_name: the job's name: the TensorBoard run is ``log_dir/<log_name>/select`` (else ``select/version_N``).
    """
    import numpy as np

    from localizer.files.activations import open_activations, segment_files
    from localizer.files.check import require_valid
    from localizer.files.outputs import check_log_dir, check_outputs
    from localizer.selection.compute import finish_selection
    from localizer.selection.metric import LOCALIZE, VALIDATION, half_assignment
    from localizer.selection.rules import UnitLayout
    from localizer.selection.shifted import ShiftedSums

    require_valid(activations, "activations", values=False)  # check's rules; values are checked while reading
    check_outputs({"out": out}, {"activations": [Path(activations), *segment_files(activations)]})
    check_log_dir(log_dir)
    options = options or SelectionOptions()
    with open_activations(activations) as (f, meta):
        layers = meta["layers"]
        dsets = [f[f"activations/{layer}"] for layer in layers]
        layout = UnitLayout(layers, [d.shape[1] for d in dsets])
        n = int(meta["n_stimuli"])
        positive = f["positive"][:].astype(bool)
        group = np.zeros(n, dtype=np.int64)
        if "split" in f and options.rows == "localize":  # rows "all": every row is selected on
            group = (f["split"].asstr()[:] == "validation").astype(np.int64)
        lengths = None
        if "n_tokens" in f:  # text stimuli: the token counts of the rows selected on, per class
            n_tokens, on = f["n_tokens"][:], group == LOCALIZE
            lengths = (n_tokens[on & positive], n_tokens[on & ~positive])
        main = (group * 2 + positive).astype(np.int8)  # label = group * 2 + class
        half_of = half_assignment(n, options.seed)
        halves_labels = np.where(group == LOCALIZE, half_of * 2 + positive, -1).astype(np.int8)
        sums = [ShiftedSums(layout.units, 4) for _ in range(2 if options.split_half else 1)]
        labels = [main, halves_labels][: len(sums)]
        rows = max(1, chunk_bytes // (4 * max(layout.total, 1)))

        groupings: list = [None] * len(sums)  # each accumulator's rows by label, for the chunk being added

        def add(x: np.ndarray, i: int, r0: int, r1: int) -> None:  # on the worker thread (the kernel drops the GIL)
            for k, (acc, lab) in enumerate(zip(sums, labels)):
                if i == 0:  # a new chunk of rows: counted and grouped once, for all its layers
                    acc.count(lab[r0:r1])
                    groupings[k] = acc.group(lab[r0:r1])
                if not acc.add(x, lab[r0:r1], i, groupings[k]):
                    row = r0 + int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
                    raise LocalizerError(
                        f"{activations}: NaN/inf activations at stimulus {row} (a damaged file, or "
                        f"recorded with {opt('nan_policy', 'allow')}); `localizer check` lists them"
                    )

        # read layer i+1 while layer i is added: each layer's rows are added while still in the cache
        with ThreadPoolExecutor(1) as worker:
            pending = None
            for r0 in range(0, n, rows):
                r1 = min(n, r0 + rows)
                for i, d in enumerate(dsets):
                    try:
                        x = d[r0:r1]
                    except OSError as e:  # a truncated or corrupt segment behind the virtual datasets
                        raise LocalizerError(
                            f"{activations}: stimuli {r0}..{r1 - 1} cannot be read ({first_line(e)}); "
                            f"`localizer check {activations}` says which file is damaged"
                        ) from e
                    if pending is not None:
                        pending.result()
                    pending = worker.submit(add, x, i, r0, r1)
            if pending is not None:
                pending.result()
    moments = _grouped(sums[0].moments())
    result = finish_selection(
        layout,
        moments,
        _grouped(sums[1].moments()) if options.split_half else None,
        options,
        bool(moments["signed"].n[VALIDATION].sum() > 0),
        {**meta, "source": str(Path(activations).resolve()), "token_lengths": lengths},
    )
    result.write(out)
    from localizer.report import log_selectivity, tensorboard_run

    with tensorboard_run(log_dir, "select", log_name) as logger:
        if logger is not None:
            options_text = json.dumps({"activations": str(activations), **json.loads(options.to_json())}, indent=2)
            logger.experiment.add_text("selectivity/options", f"```\n{options_text}\n```", 0)
            log_selectivity(logger.experiment, result, png_dir=png_dir)
            logger.finalize("success")
        elif png_dir is not None:
            log_selectivity(None, result, png_dir=png_dir)
    return result


def _grouped(moments: dict) -> dict:
    """Label-major moments (label = group * 2 + class, ``n`` ``[4]``) as the metric's ``[G=2, 2]`` layout."""
    from localizer.selection.statistics import Moments

    return {k: Moments(m.n.reshape(2, 2), m.mean.reshape(2, 2, -1), m.m2.reshape(2, 2, -1)) for k, m in moments.items()}
