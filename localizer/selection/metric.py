"""The streaming per-unit statistics as a torchmetrics Metric, merged across DDP ranks with Chan et al.'s update.

Rows are grouped: group 0 = ``localize`` rows (or all rows when there is no split column), group 1 = ``validation``.
Split-half validation uses a second metric whose groups are two random halves (see :func:`half_assignment`).
"""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics import Metric

from localizer.selection.statistics import Moments, batch_moments, empty_moments, merge, merge_all

LOCALIZE, VALIDATION = 0, 1


class UnitStatistics(Metric):
    """Per-unit moments of signed and absolute activations, per group and class, in float64.

    States (``G`` groups, class 0 = control, 1 = positive, ``U`` units): ``n`` ``[G, 2]``; ``mean``, ``m2``,
    ``mean_abs``, ``m2_abs`` ``[G, 2, U]``. Across DDP ranks the states are gathered (``dist_reduce_fx=None``) and
    merged with Chan et al.'s update in :meth:`compute` — never as sums of squares.

    Args:
        num_units: ``U``, the units of all recorded layers together.
        num_groups: ``G``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None
    n: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor
    mean_abs: torch.Tensor
    m2_abs: torch.Tensor

    def __init__(self, num_units: int, num_groups: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.num_units, self.num_groups = num_units, num_groups
        z = empty_moments(num_units, (num_groups, 2))
        self.add_state("n", default=z.n, dist_reduce_fx=None)
        for name in ("mean", "m2", "mean_abs", "m2_abs"):
            self.add_state(name, default=z.mean.clone(), dist_reduce_fx=None)

    def update(self, x: torch.Tensor, positive: torch.Tensor, group: torch.Tensor | None = None) -> None:
        """Add rows ``x`` ``[B, U]`` with classes ``positive`` ``[B]`` (bool) and groups ``group`` ``[B]``
        (int; rows with a group outside ``0..G-1`` are ignored; default all group 0)."""
        if x.shape[1] != self.num_units:
            raise ValueError(f"expected {self.num_units} units, got {x.shape[1]}")
        if group is None:
            group = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        positive = positive.to(x.device).long()
        group = group.to(x.device)
        x = x.to(torch.float64)
        ax = x.abs()
        for g in range(self.num_groups):
            for c in (0, 1):
                w = (group == g) & (positive == c)
                signed = merge(Moments(self.n[g, c], self.mean[g, c], self.m2[g, c]), batch_moments(x, w))
                absolute = merge(Moments(self.n[g, c], self.mean_abs[g, c], self.m2_abs[g, c]), batch_moments(ax, w))
                self.n[g, c] = signed.n
                self.mean[g, c], self.m2[g, c] = signed.mean, signed.m2
                self.mean_abs[g, c], self.m2_abs[g, c] = absolute.mean, absolute.m2

    def compute(self) -> dict[str, Moments]:
        """``{"signed": Moments, "abs": Moments}`` with ``n`` ``[G, 2]`` and ``mean``/``m2`` ``[G, 2, U]``."""
        n, mean, m2, mean_abs, m2_abs = self.n, self.mean, self.m2, self.mean_abs, self.m2_abs
        if n.dim() == 3:  # gathered from several ranks: [W, G, 2, ...] → Chan merge over ranks
            signed = merge_all(Moments(n, mean, m2))
            absolute = merge_all(Moments(n, mean_abs, m2_abs))
            return {"signed": signed, "abs": Moments(signed.n, absolute.mean, absolute.m2)}
        return {"signed": Moments(n, mean, m2), "abs": Moments(n, mean_abs, m2_abs)}


def half_assignment(n_stimuli: int, seed: int) -> np.ndarray:
    """Split-half groups ``[N]`` (0/1): an exactly balanced random split of all rows, a function of (N, seed) only,
    so the online and offline paths agree; restricted to ``localize`` rows it gives two random halves."""
    perm = np.random.default_rng(seed).permutation(n_stimuli)
    half = np.empty(n_stimuli, dtype=np.int64)
    half[perm] = np.arange(n_stimuli) % 2
    return half
