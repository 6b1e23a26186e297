"""The offline selection: ``localizer select`` reads an activation file in row chunks (memory does not depend on
N) and gives the same :class:`Selection` as the online callback."""

from __future__ import annotations

import json
import os
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
        chunk_bytes: float64 bytes per chunk of rows over all layers.
        log_dir: TensorBoard folder (a ``select`` run is added); None to skip.
        png_dir: also save the figures as PNG files here.
        log_name: the job's name: the TensorBoard run is ``log_dir/<log_name>/select`` (else ``select/version_N``).
    """
    import numpy as np
    import torch

    from localizer.files.activations import open_activations, segment_files
    from localizer.files.check import require_valid
    from localizer.files.outputs import check_log_dir, check_outputs
    from localizer.selection.compute import finish_selection
    from localizer.selection.metric import LOCALIZE, VALIDATION, UnitStatistics, half_assignment
    from localizer.selection.rules import UnitLayout

    require_valid(activations, "activations", values=False)  # check's rules; values are checked while reading
    check_outputs({"out": out}, {"activations": [Path(activations), *segment_files(activations)]})
    check_log_dir(log_dir)
    options = options or SelectionOptions()
    with open_activations(activations) as (f, meta):
        layers = meta["layers"]
        dsets = [f[f"activations/{layer}"] for layer in layers]
        layout = UnitLayout(layers, [d.shape[1] for d in dsets])
        n = int(meta["n_stimuli"])
        positive = torch.from_numpy(f["positive"][:])
        group = torch.zeros(n, dtype=torch.long)
        if "split" in f and options.rows == "localize":  # rows "all": every row is selected on
            group = torch.from_numpy((f["split"].asstr()[:] == "validation").astype(np.int64))
        lengths = None
        if "n_tokens" in f:  # text stimuli: the token counts of the rows selected on, per class
            n_tokens, on = f["n_tokens"][:], group.numpy() == LOCALIZE
            lengths = (n_tokens[on & positive.numpy()], n_tokens[on & ~positive.numpy()])
        stats = UnitStatistics(layout.total, 2)
        halves = UnitStatistics(layout.total, 2) if options.split_half else None
        half_of = torch.from_numpy(half_assignment(n, options.seed))
        rows = max(1, chunk_bytes // (8 * max(layout.total, 1)))
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            try:
                x = torch.from_numpy(np.concatenate([d[r0:r1] for d in dsets], axis=1))
            except OSError as e:  # a truncated or corrupt segment behind the virtual datasets
                raise LocalizerError(
                    f"{activations}: stimuli {r0}..{r1 - 1} cannot be read ({first_line(e)}); "
                    f"`localizer check {activations}` says which file is damaged"
                ) from e
            if not torch.isfinite(x).all():
                row = r0 + int((~torch.isfinite(x)).any(1).nonzero()[0, 0])
                raise LocalizerError(
                    f"{activations}: NaN/inf activations at stimulus {row} (a damaged file, or "
                    f"recorded with {opt('nan_policy', 'allow')}); `localizer check` lists them"
                )
            stats.update(x, positive[r0:r1], group[r0:r1])
            if halves is not None:
                halves.update(x, positive[r0:r1], torch.where(group[r0:r1] == LOCALIZE, half_of[r0:r1], -1))
    moments = stats.compute()
    result = finish_selection(
        layout,
        moments,
        halves.compute() if halves is not None else None,
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
