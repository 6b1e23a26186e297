"""One pass over float32 activation rows: per-label sums of shifted values and of their squares, in float64.

The offline selection reads every value once and adds ``d = x - K`` and ``d**2`` (and the same for ``|x|``) into
float64 accumulators per label, with ``K`` per unit and label: the label's first row. With the shift near the
mean these "shifted data" sums (Chan, Golub & LeVeque 1983) lose no precision when ``|mean| >> std``, unlike plain
sums of squares: ``mean = K + S1 / n`` and ``M2 = S2 - S1**2 / n``. The loop is a single-threaded numba kernel that
releases the GIL, so the next chunk is read from HDF5 on the calling thread while this one is added (two threads; a
spinning thread pool would compete with the reader). Shapes: ``L`` labels, ``U`` units, ``B`` rows.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit

from localizer.selection.statistics import Moments

BLOCK = 512  # units per block: the block's accumulators stay in cache while every row of the chunk is added


@njit(nogil=True, cache=True, boundscheck=False)
def _add(x, labels, shift, shift_abs, s1, s2, a1, a2, squares):  # pragma: no cover - compiled
    """Add rows ``x`` ``[B, u]`` (float32) with ``labels`` ``[B]`` (int8; < 0: skipped) into the ``[L, u]``
    float64 accumulators, shifted by the label's ``shift`` / ``shift_abs`` ``[L, u]``; ``squares``: 0 both, 1 only
    the signed values' squares, 2 only |x|'s."""
    n_rows, n_units = x.shape
    for block in range((n_units + BLOCK - 1) // BLOCK):
        lo = block * BLOCK
        hi = min(n_units, lo + BLOCK)
        for b in range(n_rows):
            label = labels[b]
            if label < 0:
                continue
            row = x[b, lo:hi]
            k_signed, k_abs = shift[label, lo:hi], shift_abs[label, lo:hi]
            r1, r2, q1, q2 = s1[label, lo:hi], s2[label, lo:hi], a1[label, lo:hi], a2[label, lo:hi]
            if squares == 1:
                for u in range(hi - lo):
                    v = np.float64(row[u])
                    d = v - k_signed[u]
                    r1[u] += d
                    r2[u] += d * d
                    q1[u] += abs(v) - k_abs[u]
            elif squares == 2:
                for u in range(hi - lo):
                    v = np.float64(row[u])
                    r1[u] += v - k_signed[u]
                    a = abs(v) - k_abs[u]
                    q1[u] += a
                    q2[u] += a * a
            else:
                for u in range(hi - lo):
                    v = np.float64(row[u])
                    d = v - k_signed[u]
                    r1[u] += d
                    r2[u] += d * d
                    a = abs(v) - k_abs[u]
                    q1[u] += a
                    q2[u] += a * a


class ShiftedSums:
    """Accumulators for ``n_labels`` labels over layers of ``sizes`` units; rows are added one layer at a time.

    Args:
        sizes: units per layer (``U`` = their sum).
        n_labels: ``L``.
        squares: ``both``, or only ``signed`` / ``abs``: the other kind's ``m2`` is then zero (its means are kept).
    """

    def __init__(self, sizes: list[int], n_labels: int, squares: str = "both"):
        self.squares = {"both": 0, "signed": 1, "abs": 2}[squares]  # whose M2 is needed (the tested values')
        self.n = np.zeros(n_labels, dtype=np.float64)
        # per layer: the shifts [2 (signed, |x|), L, u], each label's first row; which labels have one yet
        self.shift = [np.zeros((2, n_labels, u), dtype=np.float64) for u in sizes]
        self.shifted = [np.zeros(n_labels, dtype=bool) for _ in sizes]
        self.layers = [[np.zeros((n_labels, u), dtype=np.float64) for _ in range(4)] for u in sizes]

    def count(self, labels: np.ndarray) -> None:
        """Count the rows of one chunk by label (``labels`` ``[B]`` int8; < 0 not counted)."""
        self.n += np.bincount(labels[labels >= 0], minlength=len(self.n))[: len(self.n)]

    def add(self, x: np.ndarray, labels: np.ndarray, layer: int) -> bool:
        """Add the rows ``x`` ``[B, u]`` (float32) of layer ``layer``; False if a value is NaN or infinite (the sums
        of the layer are then meaningless)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        shift, shifted = self.shift[layer], self.shifted[layer]
        for label in np.unique(labels[labels >= 0]):
            if not shifted[label]:  # each label's first row: near its own mean, so no precision is lost
                first = x[int(np.argmax(labels == label))].astype(np.float64)
                shift[0, label], shift[1, label], shifted[label] = first, np.abs(first), True
        s1, s2, a1, a2 = self.layers[layer]
        _add(x, labels, shift[0], shift[1], s1, s2, a1, a2, self.squares)
        return bool(np.isfinite(s1).all() and np.isfinite(a1).all())

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
