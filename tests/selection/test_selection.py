"""Selectivity statistics against scipy, selection rules, controls, validation, TensorBoard output."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import synthetic, write_activation_file
from scipy import stats

from localizer.cli import main
from localizer.files.selection_file import read_selection_file
from localizer.selection import SelectionOptions
from localizer.selection.metric import half_assignment
from localizer.selection.select import select_file


def rel(a, b):
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))


@pytest.mark.parametrize("alternative", ["greater", "two-sided"])
def test_t_p_q_match_scipy_with_large_offset(tmp_path, alternative):
    layers, positive = synthetic()
    f = write_activation_file(tmp_path / "a.h5", layers, positive)
    opts = SelectionOptions(alternative=alternative, controls=0)
    result = select_file(f, tmp_path / "s.h5", opts, chunk_bytes=4 * 150 * 10, log_dir=None)  # 10-row chunks (float32)
    x = np.concatenate([v.astype(np.float32).astype(np.float64) for v in layers.values()], axis=1)
    valid = x.std(0) > 0
    ref = stats.ttest_ind(x[positive][:, valid], x[~positive][:, valid], equal_var=False, alternative=alternative)
    assert rel(result.stats["t"][valid], ref.statistic) < 1e-6
    assert rel(result.stats["p"][valid], ref.pvalue) < 1e-6
    p_all = result.stats["p"]
    assert rel(result.stats["q"], stats.false_discovery_control(p_all.ravel())) < 1e-6
    assert np.all(result.stats["t"][~valid] == 0) and np.all(p_all[~valid] == 1)
    sel = read_selection_file(tmp_path / "s.h5")
    for _i, name in enumerate(layers):
        xs = layers[name].astype(np.float32).astype(np.float64)
        s = sel["stats"][name]
        np.testing.assert_allclose(s["mean_positive"], xs[positive].mean(0), rtol=1e-12)
        np.testing.assert_allclose(s["var_control"], xs[~positive].var(0, ddof=1), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(s["mean_all"], xs.mean(0), rtol=1e-12)
        np.testing.assert_allclose(s["mean_abs_all"], np.abs(xs).mean(0), rtol=1e-12)
        pooled = np.sqrt(
            (
                (positive.sum() - 1) * xs[positive].var(0, ddof=1)
                + ((~positive).sum() - 1) * xs[~positive].var(0, ddof=1)
            )
            / (len(xs) - 2)
        )
        d = (xs[positive].mean(0) - xs[~positive].mean(0))[:-1] / pooled[:-1]
        np.testing.assert_allclose(s["d"][:-1], d, rtol=1e-6)
    assert sel["attrs"]["n_positive"] == positive.sum() and sel["attrs"]["n_control"] == (~positive).sum()


def test_abs_top1_is_the_alkhamissi_rule(tmp_path):
    rng = np.random.default_rng(3)
    n = 60
    positive = np.arange(n) % 3 == 0
    layers = {f"h.{i}": rng.normal(size=(n, 400)) * rng.uniform(0.1, 3, 400) + rng.normal(size=400) for i in range(3)}
    f = write_activation_file(tmp_path / "a.h5", layers, positive)
    code = main(
        [
            "select",
            "--activations",
            str(f),
            "--out",
            str(tmp_path / "s.h5"),
            "--abs",
            "--top",
            "1%",
            "--controls",
            "0",
            "--log-dir",
            str(tmp_path / "tb"),
        ]
    )
    assert code == 0
    # the rule, independently: Welch t of |x| per layer, global top floor(1% of all units) by t
    t = np.concatenate(
        [
            stats.ttest_ind(
                np.abs(x.astype(np.float32))[positive], np.abs(x.astype(np.float32))[~positive], equal_var=False
            ).statistic
            for x in layers.values()
        ]
    )
    k = int(0.01 * t.size)
    want = np.zeros(t.size, dtype=bool)
    want[np.argsort(-t)[:k]] = True
    sel = read_selection_file(tmp_path / "s.h5")
    got = np.concatenate([sel["mask"][name] for name in layers])
    assert k == 12 and got.sum() == k
    np.testing.assert_array_equal(got, want)
    assert sel["attrs"]["abs"] and sel["attrs"]["n_selected"] == k


def test_planted_units_and_controls(tmp_path):
    planted = [3, 10, 11, 47, 60, 95, 121, 140]
    layers, positive = synthetic(seed=5, planted=planted, units=(60, 80, 60))
    f = write_activation_file(tmp_path / "a.h5", layers, positive)
    opts = SelectionOptions(count=len(planted), controls=20, seed=7)
    r = select_file(f, tmp_path / "s.h5", opts, log_dir=None)
    assert np.flatnonzero(r.mask).tolist() == planted
    layer = r.layout.layer_of()
    sel = read_selection_file(tmp_path / "s.h5")
    for kind in ("global", "layer_matched", "magnitude_matched"):
        assert len(sel["controls"][kind]) == 20
        for c in sel["controls"][kind]:
            flat = np.concatenate([c[name] for name in layers])
            assert flat.sum() == len(planted) and not (flat & r.mask).any() and not (flat & ~r.valid).any()
            if kind == "layer_matched":
                np.testing.assert_array_equal(
                    np.bincount(layer[flat], minlength=3), np.bincount(layer[r.mask], minlength=3)
                )
    assert not r.valid[[59, 139, 199]].any()  # constant units


def test_magnitude_matched_controls_match_magnitudes(tmp_path):
    """Criterion: sorted mean |activation| of each magnitude-matched set is within 25% of the selection's at the
    median (|log ratio| < log 1.25), and the two-sample KS statistic is < 0.3; global controls fail this."""
    rng = np.random.default_rng(11)
    n, units = 80, 600
    positive = np.arange(n) % 2 == 0
    scale = 10 ** rng.uniform(-2, 2, units)
    x = rng.normal(size=(n, units)) * scale
    big = np.argsort(scale)[-150:-30]  # the selective units are among the larger-magnitude ones (as in LLMs)
    planted = rng.choice(big, 12, replace=False)
    x[np.ix_(positive, planted)] += 2 * scale[planted]
    f = write_activation_file(tmp_path / "a.h5", {"a": x[:, :300], "b": x[:, 300:]}, positive)
    r = select_file(f, tmp_path / "s.h5", SelectionOptions(count=12, controls=10, seed=1), log_dir=None)
    mag = r.stats["mean_abs_all"]
    m_sel = np.sort(mag[r.mask])

    def matched(c):
        m_ctl = np.sort(mag[c])
        return np.median(np.abs(np.log(m_ctl / m_sel))) < np.log(1.25) and stats.ks_2samp(m_ctl, m_sel).statistic < 0.3

    assert all(matched(c) for c in r.controls["magnitude_matched"])
    assert not any(matched(c) for c in r.controls["global"])


def test_selection_rules(tmp_path):
    layers, positive = synthetic(seed=2, planted=list(range(0, 40, 4)))
    f = write_activation_file(tmp_path / "a.h5", layers, positive)
    total = 150

    def run(**kw):
        return select_file(f, tmp_path / "s.h5", SelectionOptions(controls=0, **kw), log_dir=None)

    t_valid = None
    r = run(top="2%")
    assert r.mask.sum() == 3  # floor(2 x 150 / 100)
    t_valid = r.stats["t"]
    r = run(top="0.7")
    assert r.mask.sum() == 1  # floor(1.05)
    r = run(top="10", per_layer=True)
    assert [int(m.sum()) for m in r.layout.split(r.mask).values()] == [5, 7, 3]
    for m, t in zip(r.layout.split(r.mask).values(), r.layout.split(t_valid).values()):
        assert t[m].min() >= np.sort(t)[-m.sum()]
    r = run(rule="fdr", fdr=0.05)
    q = r.stats["q"]
    np.testing.assert_array_equal(r.mask, (q < 0.05) & (r.stats["t"] > 0) & r.valid)
    r = run(rule="bottom", count=5)
    assert np.abs(r.stats["t"][r.mask]).max() <= np.sort(np.abs(r.stats["t"][r.valid]))[4]
    r = run(rule="range", range="40-60", count=6)
    pct = stats.rankdata(r.stats["t"][r.valid], method="ordinal") - 1
    pct = 100 * pct / (r.valid.sum() - 1)
    chosen = pct[r.mask[r.valid]]
    assert r.mask.sum() == 6 and chosen.min() >= 40 and chosen.max() <= 60
    assert total == r.layout.total


def test_validation_split_and_split_half(tmp_path):
    layers, positive = synthetic(seed=9, n_pos=60, n_ctl=60, planted=list(range(0, 150, 10)))
    n = len(positive)
    split = np.where(np.arange(n) % 4 == 3, "validation", "localize")
    f = write_activation_file(tmp_path / "a.h5", layers, positive, split)
    r = select_file(f, tmp_path / "s.h5", SelectionOptions(count=15, controls=0, split_half=True, seed=3), log_dir=None)
    x = np.concatenate([v.astype(np.float32).astype(np.float64) for v in layers.values()], axis=1)
    loc, val = split == "localize", split == "validation"
    valid = r.valid
    ref = stats.ttest_ind(x[loc & positive][:, valid], x[loc & ~positive][:, valid], equal_var=False)
    assert rel(r.stats["t"][valid], ref.statistic) < 1e-6
    ref_val = stats.ttest_ind(x[val & positive][:, valid], x[val & ~positive][:, valid], equal_var=False)
    assert rel(r.validation_t[valid], ref_val.statistic) < 1e-6
    # split half by hand: the documented halves, top-15 by scipy t in each, Dice
    half = half_assignment(n, 3)
    masks = []
    for h in (0, 1):
        rows = loc & (half == h)
        t = np.zeros(x.shape[1])
        t[valid] = stats.ttest_ind(
            x[rows & positive][:, valid], x[rows & ~positive][:, valid], equal_var=False
        ).statistic
        m = np.zeros(x.shape[1], dtype=bool)
        m[np.argsort(-t, kind="stable")[:15]] = True
        masks.append(m)
    want = 2 * (masks[0] & masks[1]).sum() / 30
    sel = read_selection_file(tmp_path / "s.h5")
    assert sel["attrs"]["dice_split_half"] == pytest.approx(want)
    assert sel["attrs"]["dice_chance"] == pytest.approx(15 / valid.sum())
    assert abs((half[loc] == 0).mean() - 0.5) < 0.1
    assert set(sel["validation_t"]) == set(layers)


def test_tensorboard_histograms_and_figure(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    layers, positive = synthetic(seed=1)
    f = write_activation_file(tmp_path / "a.h5", layers, positive)
    select_file(f, tmp_path / "s.h5", SelectionOptions(controls=1), log_dir=tmp_path / "tb")
    runs = list((tmp_path / "tb" / "select").iterdir())
    acc = EventAccumulator(str(runs[0]), size_guidance={"histograms": 0, "images": 0, "scalars": 0}).Reload()
    tags = acc.Tags()
    assert {f"selectivity/t/{name}" for name in layers} <= set(tags["histograms"])
    assert "selectivity/fraction_selected" in tags["images"]
    assert {f"selectivity/fraction_selected/{name}" for name in layers} <= set(tags["scalars"])


@pytest.mark.parametrize("statistic", ["mean_diff", "cohens_d"])
@pytest.mark.parametrize("alternative", ["greater", "two-sided"])
def test_ranking_statistics_and_rows(tmp_path, statistic, alternative):
    """--statistic ranks by the mean difference or Cohen's d (computed here by hand); --rows all selects on every row
    (the validation rows included), while t, p and q are stored whichever statistic ranks."""
    layers, positive = synthetic(seed=7, planted=(5, 80))
    split = np.where(np.arange(len(positive)) % 4 == 1, "validation", "localize")
    acts = write_activation_file(tmp_path / "a.h5", layers, positive, split=split)
    x = np.concatenate(list(layers.values()), axis=1).astype(np.float32).astype(np.float64)  # as stored
    for rows, use in (("localize", split == "localize"), ("all", np.ones(len(split), dtype=bool))):
        out = tmp_path / f"{rows}.h5"
        opts = SelectionOptions(count=7, statistic=statistic, alternative=alternative, rows=rows)
        result = select_file(acts, out, opts, log_dir=None)
        p, c = x[use & positive], x[use & ~positive]
        diff = p.mean(0) - c.mean(0)
        pooled = np.sqrt(((len(p) - 1) * p.var(0, ddof=1) + (len(c) - 1) * c.var(0, ddof=1)) / (len(p) + len(c) - 2))
        score = diff if statistic == "mean_diff" else np.divide(diff, pooled, out=np.zeros_like(diff), where=pooled > 0)
        score = np.abs(score) if alternative == "two-sided" else score
        score[pooled == 0] = -np.inf  # constant units are never selected
        want = np.zeros(len(score), dtype=bool)
        want[np.argsort(-score, kind="stable")[:7]] = True
        assert (result.mask == want).all(), (rows, statistic, alternative)
        t = stats.ttest_ind(p[:, pooled > 0], c[:, pooled > 0], equal_var=False).statistic
        np.testing.assert_allclose(result.stats["t"][pooled > 0], t, rtol=1e-6)
        assert (result.validation_t is None) == (rows == "all")
