"""One pass over float32 activation rows: per-label sums of shifted values and of their squares, in float64.

The offline selection reads every value once and adds ``d = x - K`` and ``d**2`` (and the same for ``|x|``) into
float64 accumulators per label, with ``K`` per unit and label: the label's first row. With the shift near the
mean these "shifted data" sums (Chan, Golub & LeVeque 1983) lose no precision when ``|mean| >> std``, unlike plain
sums of squares: ``mean = K + S1 / n`` and ``M2 = S2 - S1**2 / n``. The loop is a single-threaded numba kernel that
releases the GIL, so the next layer's rows are read from HDF5 on the calling thread while these are added (two
threads; a spinning thread pool would compete with the reader). It goes tile by tile (64 units) and label by label,
summing a label's rows into partial sums that stay in L1 before adding them to the accumulators once: ~7 GB/s of
float32 on one core, against ~3 GB/s when every row updated the accumulators. Shapes: ``L`` labels, ``U`` units,
``B`` rows.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from localizer.selection.statistics import Moments

TILE = 64  # units per tile: the tile's four partial sums stay in L1 while every row of one label is added


@njit(nogil=True, cache=True, boundscheck=False, inline="never")
def _tile(x, rows, lo, ks, ka, t1, t2, t3, t4):  # pragma: no cover - compiled
    """Add ``x[rows, lo:lo + w]`` shifted by ``ks`` / ``ka`` ``[w]`` into the partial sums ``t1..t4`` ``[w]`` (of
    d, d², a, a² with d = x - ks, a = |x| - ka). A function of 1-D contiguous arrays, so LLVM vectorizes its loop."""
    w = t1.shape[0]
    for i in range(rows.shape[0]):
        row = x[rows[i], lo : lo + w]
        for u in range(w):
            v = np.float64(row[u])
            d = v - ks[u]
            t1[u] += d
            t2[u] += d * d
            a = abs(v) - ka[u]
            t3[u] += a
            t4[u] += a * a


@njit(nogil=True, cache=True, boundscheck=False)
def _add(x, order, starts, shift, shift_abs, sums):  # pragma: no cover - compiled
    """Add rows ``x`` ``[B, u]`` (float32) into the float64 accumulators ``sums`` ``[4, L, u]`` (d, d², a, a²),
    shifted by the label's ``shift`` / ``shift_abs`` ``[L, u]``. Label ``k``'s rows are ``order[starts[k]:
    starts[k + 1]]``. Tile by tile, each label's rows are summed into small partial sums first (in L1), then added
    to ``sums`` once. (Both kinds' squares cost no more than one kind's here: the loop is bound by reading x.)"""
    n_units = x.shape[1]
    t = np.zeros((4, TILE))
    for label in range(starts.shape[0] - 1):
        rows = order[starts[label] : starts[label + 1]]
        if rows.shape[0] == 0:
            continue
        for lo in range(0, n_units, TILE):
            w = min(n_units, lo + TILE) - lo
            t[:] = 0.0
            ks, ka = shift[label, lo : lo + w], shift_abs[label, lo : lo + w]
            _tile(x, rows, lo, ks, ka, t[0, :w], t[1, :w], t[2, :w], t[3, :w])
            for k in range(4):
                s = sums[k, label]
                for u in range(w):
                    s[lo + u] += t[k, u]


class ShiftedSums:
    """Accumulators for ``n_labels`` labels over layers of ``sizes`` units; rows are added one layer at a time.

    Args:
        sizes: units per layer (``U`` = their sum).
        n_labels: ``L``.
    """

    def __init__(self, sizes: list[int], n_labels: int):
        self.n = np.zeros(n_labels, dtype=np.float64)
        # per layer: the shifts [2 (signed, |x|), L, u], each label's first row; which labels have one yet
        self.shift = [np.zeros((2, n_labels, u), dtype=np.float64) for u in sizes]
        self.shifted = [np.zeros(n_labels, dtype=bool) for _ in sizes]
        self.layers = [np.zeros((4, n_labels, u), dtype=np.float64) for u in sizes]  # sums of d, d², a, a²

    def count(self, labels: np.ndarray) -> None:
        """Count the rows of one chunk by label (``labels`` ``[B]`` int8; < 0 not counted)."""
        self.n += np.bincount(labels[labels >= 0], minlength=len(self.n))[: len(self.n)]

    def group(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows of a chunk by label (``labels`` ``[B]`` int8; < 0 skipped): ``order`` ``[B_valid]`` and
        ``starts`` ``[L + 1]``, label ``k``'s rows being ``order[starts[k]:starts[k + 1]]``. The same for every
        layer of the chunk: compute it once and pass it to :meth:`add`."""
        valid = labels >= 0
        order = np.argsort(labels, kind="stable")[np.count_nonzero(~valid) :].astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(np.bincount(labels[valid], minlength=len(self.n)))]).astype(np.int64)
        return order, starts

    def add(
        self, x: np.ndarray, labels: np.ndarray, layer: int, grouping: tuple[np.ndarray, np.ndarray] | None = None
    ) -> bool:
        """Add the rows ``x`` ``[B, u]`` (float32) of layer ``layer``; False if a value is NaN or infinite (the sums
        of the layer are then meaningless). ``grouping``: :meth:`group` of ``labels``, when the caller has it."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        shift, shifted = self.shift[layer], self.shifted[layer]
        order, starts = grouping if grouping is not None else self.group(labels)
        for label in np.flatnonzero((np.diff(starts) > 0) & ~shifted):  # labels first seen in this chunk
            first = x[order[starts[label]]].astype(np.float64)  # the label's first row (a stable grouping)
            shift[0, label], shift[1, label], shifted[label] = first, np.abs(first), True  # near its mean
        sums = self.layers[layer]
        _add(x, order, starts, shift[0], shift[1], sums)
        return bool(np.isfinite(sums[0]).all() and np.isfinite(sums[2]).all())

    def moments(self) -> dict[str, Moments]:
        """``{"signed": Moments, "abs": Moments}`` with ``n`` ``[L]`` and ``mean``/``m2`` ``[L, U]`` (float64
        tensors; zero where a label has no rows)."""
        n = self.n[:, None]
        out = {}
        for kind, first in (("signed", 0), ("abs", 2)):
            means, m2s = [], []
            for shift, sums in zip(self.shift, self.layers):
                s1, s2 = sums[first], sums[first + 1]
                with np.errstate(invalid="ignore", divide="ignore"):
                    means.append(np.where(n > 0, shift[first // 2] + s1 / n, 0.0))
                    m2s.append(np.where(n > 0, np.maximum(s2 - s1 * s1 / n, 0.0), 0.0))
            out[kind] = Moments(
                torch.from_numpy(self.n.copy()),
                torch.from_numpy(np.concatenate(means, axis=1)),
                torch.from_numpy(np.concatenate(m2s, axis=1)),
            )
        return out
