"""The offline selection's one-pass shifted sums equal float64 numpy moments and the streaming Chan metric to 1e-9,
also where |mean| >> std, across chunk boundaries, with skipped rows and several layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from localizer.selection.metric import UnitStatistics
from localizer.selection.shifted import ShiftedSums


def reference(x: np.ndarray, labels: np.ndarray, n_labels: int):
    """Per-label mean and M2 of x and |x| in float64, two-pass (numpy)."""
    out = {}
    for kind, v in (("signed", x.astype(np.float64)), ("abs", np.abs(x.astype(np.float64)))):
        mean = np.zeros((n_labels, x.shape[1]))
        m2 = np.zeros((n_labels, x.shape[1]))
        for k in range(n_labels):
            rows = v[labels == k]
            if len(rows):
                mean[k] = rows.mean(0)
                m2[k] = ((rows - mean[k]) ** 2).sum(0)
        out[kind] = (mean, m2)
    return out


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_shifted_sums_equal_two_pass_moments(offset):
    rng = np.random.default_rng(0)
    sizes = [7, 600, 33]  # a layer wider than one parallel block
    n = 301
    x = (offset + rng.normal(0, 1e-2 if offset else 1, size=(n, sum(sizes)))).astype(np.float32)
    x[:, 3] *= -1  # signs differ from |x|
    labels = rng.integers(-1, 4, size=n).astype(np.int8)  # -1: skipped
    acc = ShiftedSums(sizes, 4)
    for r0 in range(0, n, 37):  # chunks that do not divide n
        r1 = min(n, r0 + 37)
        acc.count(labels[r0:r1])
        col = 0
        for i, u in enumerate(sizes):
            assert acc.add(x[r0:r1, col : col + u], labels[r0:r1], i)
            col += u
    got = acc.moments()
    want = reference(x, labels, 4)
    np.testing.assert_array_equal(got["signed"].n.numpy(), np.bincount(labels[labels >= 0], minlength=4))
    for kind in ("signed", "abs"):
        mean, m2 = want[kind]
        np.testing.assert_allclose(got[kind].mean.numpy(), mean, rtol=1e-12, atol=1e-12 * np.abs(mean).max())
        np.testing.assert_allclose(got[kind].m2.numpy(), m2, rtol=1e-9, atol=1e-12 * np.abs(m2).max())
    # the streaming metric (Chan merges) gives the same variances
    metric = UnitStatistics(sum(sizes), 2)
    keep = labels >= 0
    xt = torch.from_numpy(x[keep])
    metric.update(xt, torch.from_numpy(labels[keep] % 2 == 1), torch.from_numpy(labels[keep] // 2).long())
    chan = metric.compute()
    np.testing.assert_allclose(
        chan["signed"].m2.numpy().reshape(4, -1), got["signed"].m2.numpy(), rtol=1e-9, atol=1e-12 * np.abs(m2).max()
    )


def test_a_nan_is_reported():
    acc = ShiftedSums([4], 1)
    x = np.ones((5, 4), dtype=np.float32)
    assert acc.add(x, np.zeros(5, dtype=np.int8), 0)
    x[2, 1] = np.nan
    assert not acc.add(x, np.zeros(5, dtype=np.int8), 0)
    x[2, 1] = np.inf
    assert not ShiftedSums([4], 1).add(x, np.zeros(5, dtype=np.int8), 0)


def test_a_unit_constant_within_each_class_has_zero_variance_and_far_classes_keep_precision():
    """Each label is shifted by its own first row: a unit constant within a class gets M2 = 0 exactly (not a
    rounding residue that Welch would read as a huge t), and a class 1e6 standard deviations from the other keeps
    its variance to 1e-9."""
    rng = np.random.default_rng(1)
    n = 200
    labels = (np.arange(n) % 2).astype(np.int8)
    x = np.empty((n, 3), dtype=np.float32)
    x[:, 0] = np.where(labels == 1, 3.7, -1.3)  # constant within each class
    x[:, 1] = np.where(labels == 1, 1e4, 0.0) + rng.normal(0, 1e-2, n)  # classes 1e6 sd apart
    x[:, 2] = rng.normal(size=n)
    acc = ShiftedSums([3], 2)
    acc.count(labels)
    assert acc.add(x, labels, 0)
    m = acc.moments()["signed"]
    assert (m.m2.numpy()[:, 0] == 0).all()
    want = reference(x, labels, 2)["signed"]
    np.testing.assert_allclose(m.m2.numpy()[:, 1:], want[1][:, 1:], rtol=1e-9)
