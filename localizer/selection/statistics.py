"""Pure statistics of unit selectivity (no Lightning): streaming moments, Welch t, FDR, effect sizes.

Moments are kept per unit as ``(n, mean, M2)`` in float64 and merged with the pairwise update of Chan et al. (1979),
which stays accurate when ``|mean| >> std`` (unlike sums of squares). Shapes: ``U`` units, ``B`` rows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class Moments(NamedTuple):
    """Per-unit streaming moments: ``n`` ``[...]`` (rows seen), ``mean`` and ``m2`` ``[..., U]`` float64."""

    n: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor


def empty_moments(units: int, lead: tuple[int, ...] = (), device=None) -> Moments:
    """Zero moments for ``units`` units with leading dims ``lead``."""
    z = torch.zeros(*lead, units, dtype=torch.float64, device=device)
    return Moments(torch.zeros(lead, dtype=torch.float64, device=device), z, z.clone())


def batch_moments(x: torch.Tensor, weight: torch.Tensor) -> Moments:
    """Moments of the rows of ``x`` ``[B, U]`` where ``weight`` ``[B]`` (0/1) is 1, in float64.

    On an accelerator this stays free of host syncs (weighted sums over all rows); on the CPU it gathers the chosen
    rows and uses one fused mean/variance pass over them (several times faster for the offline path).
    """
    x = x.to(torch.float64)
    if x.device.type == "cpu":
        idx = torch.nonzero(weight, as_tuple=True)[0]
        if len(idx) == 0:
            z = torch.zeros(x.shape[1], dtype=torch.float64)
            return Moments(torch.zeros((), dtype=torch.float64), z, z.clone())
        rows = x if len(idx) == x.shape[0] else x.index_select(0, idx)
        var, mean = torch.var_mean(rows, dim=0, correction=0)
        n = torch.tensor(float(len(idx)), dtype=torch.float64)
        return Moments(n, mean, var * n)
    w = weight.to(torch.float64)
    n = w.sum()
    mean = (w @ x) / n.clamp(min=1)
    m2 = w @ (x - mean).square()
    return Moments(n, mean, m2)


def merge(a: Moments, b: Moments) -> Moments:
    """Chan et al.'s merge of two moment sets (any matching shapes; ``n`` broadcasts over the unit axis)."""
    n = a.n + b.n
    safe = n.clamp(min=1).unsqueeze(-1)
    delta = b.mean - a.mean
    nb = b.n.unsqueeze(-1)
    mean = a.mean + delta * nb / safe
    m2 = a.m2 + b.m2 + delta.square() * a.n.unsqueeze(-1) * nb / safe
    empty = (n == 0).unsqueeze(-1)
    return Moments(n, torch.where(empty, 0.0, mean), torch.where(empty, 0.0, m2))


def merge_all(stacked: Moments) -> Moments:
    """Merge moments stacked along dim 0 (e.g. one entry per DDP rank) into one set, pairwise in order."""
    out = Moments(stacked.n[0], stacked.mean[0], stacked.m2[0])
    for i in range(1, stacked.n.shape[0]):
        out = merge(out, Moments(stacked.n[i], stacked.mean[i], stacked.m2[i]))
    return out


def variance(m: Moments) -> np.ndarray:
    """Sample variance (ddof=1) per unit, as numpy float64; NaN where fewer than 2 rows."""
    n = m.n.cpu().numpy()[..., None]
    m2 = m.m2.cpu().numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 1, m2 / np.maximum(n - 1, 1), np.nan)


class Welch(NamedTuple):
    """Welch's unequal-variance t-test per unit (positive vs control); arrays ``[U]`` float64."""

    t: np.ndarray
    df: np.ndarray
    p: np.ndarray
    d: np.ndarray  # Cohen's d with the pooled standard deviation
    valid: np.ndarray  # bool: False where both classes have zero variance (t = 0, p = 1, d = 0)


def welch(
    mean1: np.ndarray,
    var1: np.ndarray,
    n1: int,
    mean2: np.ndarray,
    var2: np.ndarray,
    n2: int,
    alternative: str = "greater",
) -> Welch:
    """Welch t (class 1 minus class 2), Welch-Satterthwaite df, p-value and Cohen's d.

    Args:
        mean1, var1: per-unit mean and ddof=1 variance of class 1 (positive), ``[U]``; likewise class 2 (control).
        n1, n2: rows per class (each >= 2).
        alternative: ``"greater"`` (class 1 > class 2, one-sided) or ``"two-sided"``.
    """
    from scipy import special

    if alternative not in ("greater", "two-sided"):
        raise ValueError(f"alternative must be 'greater' or 'two-sided', got {alternative!r}")
    mean1, var1, mean2, var2 = (np.asarray(a, dtype=np.float64) for a in (mean1, var1, mean2, var2))
    a, b = var1 / n1, var2 / n2
    se2 = a + b
    valid = se2 > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(valid, (mean1 - mean2) / np.sqrt(se2), 0.0)
        df = np.where(valid, se2**2 / (a**2 / (n1 - 1) + b**2 / (n2 - 1)), np.nan)
        if alternative == "greater":
            p = special.stdtr(df, -t)
        else:
            p = 2.0 * special.stdtr(df, -np.abs(t))
        pooled = np.sqrt(((n1 - 1) * var1 + (n2 - 1) * var2) / (n1 + n2 - 2))
        d = np.where(pooled > 0, (mean1 - mean2) / pooled, 0.0)
    p = np.where(valid, np.minimum(p, 1.0), 1.0)
    return Welch(t, df, p, d, valid)


def fdr_bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q) over all entries of ``p`` as one family (same shape as ``p``)."""
    from scipy import stats

    p = np.asarray(p, dtype=np.float64)
    if p.size == 0:
        return p.copy()
    return stats.false_discovery_control(p.ravel(), method="bh").reshape(p.shape)
