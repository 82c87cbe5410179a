"""Shared statistics (``pluralign.core.stats``): z-scores that refuse constant columns,
pair accuracy, percentile bootstrap CIs (scipy), Student-t CIs, win rates, the paired
headline table, gains and updates-to-target.

Bootstrap CIs are checked against ``scipy.stats.bootstrap`` called directly and against
closed forms (constant data, shrinking with n, the normal approximation, pairing)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pluralign.core.stats import (
    bootstrap_ci,
    column_stats,
    evaluate,
    gains,
    headline,
    mean_ci,
    pair_accuracy,
    standardize,
    standardize_columns,
    updates_to_target,
    win_rate,
    win_rate_ci,
    win_rates,
)

# --------------------------------------------------------------------------- z-scores


def test_column_stats_population_mean_and_std():
    v = np.array([[1.0, 10.0], [2.0, 10.0], [6.0, 40.0]])
    mean, std = column_stats(v)
    np.testing.assert_allclose(mean, [3.0, 20.0], rtol=1e-15)
    np.testing.assert_allclose(std, [np.sqrt(14 / 3), np.sqrt(200.0)], rtol=1e-14)  # ddof=0
    mean1, std1 = column_stats([1.0, 3.0])  # 1-D: one column
    assert (float(mean1), float(std1)) == pytest.approx((2.0, 1.0), rel=1e-15)


@pytest.mark.parametrize(
    ("values", "names", "match"),
    [
        ([[1.0, np.nan], [2.0, 3.0]], ["x", "y"], r"columns \['y'\] hold NaN or inf"),
        ([[1.0, np.inf], [2.0, -np.inf]], None, r"columns \[1\] hold NaN or inf"),
        ([[1.0, 2.0]], None, ">= 2 rows"),
        (np.zeros((2, 2, 2)), None, ">= 2 rows of a 1-D or 2-D"),
    ],
)
def test_column_stats_raises_naming_the_column(values, names, match):
    with pytest.raises(ValueError, match=match):
        column_stats(values, names)


@pytest.mark.parametrize(
    ("values", "names", "match"),
    [
        ([[1.0, 2.0], [1.0, 3.0]], ["x", "y"], r"columns \['x'\] are constant"),
        ([[1.0, 2.0], [1.0, 2.0]], None, r"columns \[0, 1\] are constant"),
    ],
)
def test_column_stats_names_a_constant_column_and_only_centres_it(values, names, match):
    """A constant column has no scale: it is named in a warning and gets std 1, so its
    z-scores are 0 (centred, not scaled); the other columns keep their own std."""
    v = np.asarray(values)
    with pytest.warns(UserWarning, match=match):
        mean, std = column_stats(v, names)
    np.testing.assert_allclose(mean, v.mean(axis=0), rtol=1e-15)
    flat = v.std(axis=0) == 0
    np.testing.assert_array_equal(std[flat], 1.0)  # set, not computed
    np.testing.assert_allclose(std[~flat], v.std(axis=0)[~flat], rtol=1e-15)


def test_column_stats_detects_a_constant_column_whose_mean_is_rounded():
    v = np.full(3, 0.1)  # 0.1 + 0.1 + 0.1 = 0.30000000000000004: the mean is not 0.1
    with pytest.warns(UserWarning, match=r"columns \['c'\] are constant"):
        _, std = column_stats(v, ["c"])
    assert float(std) == 1.0


def test_standardize_gives_zero_mean_unit_std_and_keeps_labels():
    raw = pd.DataFrame({"a": [1.0, 2.0, 4.0, 9.0], "b": [-3.0, 0.0, 0.5, 0.5]}, index=list("wxyz"))
    z = standardize(raw)
    np.testing.assert_allclose(z.mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(ddof=0), 1.0)
    assert list(z.index) == list("wxyz") and list(z.columns) == ["a", "b"]
    np.testing.assert_allclose(z["a"], (raw["a"] - 4.0) / np.sqrt(9.5))


def test_standardize_rejects_a_non_finite_column():
    raw = pd.DataFrame({"ok": [0.0, 1.0, 2.0], "bad": [1.0, np.nan, 2.0]})
    with pytest.raises(ValueError, match=r"\['bad'\] hold NaN or inf"):
        standardize(raw)


def test_standardize_names_a_constant_column_and_zeroes_it():
    """A constant ground truth has no ranking: a warning names it and its z-scores are 0
    (a BT draw on it is then a coin flip); the other columns are z-scored as usual."""
    raw = pd.DataFrame({"ok": [0.0, 1.0, 2.0], "bad": [2.0, 2.0, 2.0]})
    with pytest.warns(UserWarning, match=r"\['bad'\] are constant"):
        z = standardize(raw)
    np.testing.assert_allclose(z["bad"], 0.0, atol=1e-15)
    np.testing.assert_allclose(z["ok"], [-np.sqrt(1.5), 0.0, np.sqrt(1.5)], rtol=1e-14)


def test_standardize_columns_pools_both_sides_of_the_pairs():
    a = pd.DataFrame({"g": [1.0, 2.0, 3.0], "h": [0.0, 0.0, 1.0]})
    b = pd.DataFrame({"g": [4.0, 5.0, 6.0], "h": [1.0, 0.0, 0.0]})
    za, zb = standardize_columns(a, b)
    assert za.shape == zb.shape == (3, 2)
    pooled = np.concatenate([a.to_numpy(), b.to_numpy()])
    want = (pooled - pooled.mean(axis=0)) / pooled.std(axis=0)
    np.testing.assert_allclose(np.concatenate([za, zb]), want, rtol=1e-14, atol=1e-15)
    # Pooled, not per side: side a of "g" is entirely below the pooled mean.
    assert (za[:, 0] < 0).all() and (zb[:, 0] > 0).all()
    np.testing.assert_allclose(np.concatenate([za, zb]).mean(axis=0), 0.0, atol=1e-12)


def test_standardize_columns_names_a_column_constant_over_the_pooled_rows():
    a = pd.DataFrame({"g": [1.0, 2.0], "flat": [3.0, 3.0]})
    b = pd.DataFrame({"g": [0.0, 5.0], "flat": [3.0, 3.0]})
    with pytest.warns(UserWarning, match=r"columns \['flat'\] are constant"):
        za, zb = standardize_columns(a, b)
    np.testing.assert_allclose(np.concatenate([za, zb])[:, 1], 0.0, atol=1e-15)
    pooled = np.array([1.0, 2.0, 0.0, 5.0])
    want = (pooled - pooled.mean()) / pooled.std()
    np.testing.assert_allclose(np.concatenate([za, zb])[:, 0], want, rtol=1e-14)
    # Constant within each side but not pooled is fine (no warning): the pairs differ.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ok_a, ok_b = standardize_columns(a[["g"]].assign(s=1.0), b[["g"]].assign(s=2.0))
    np.testing.assert_allclose(ok_a[:, 1], -1.0)
    np.testing.assert_allclose(ok_b[:, 1], 1.0)


# --------------------------------------------------------------------------- accuracy


def test_pair_accuracy_skips_ties_per_group():
    gt_a = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [0.0, 0.0, 1.0, 1.0]})
    gt_b = pd.DataFrame({"x": [0.0, 3.0, 1.0, 4.0], "y": [1.0, 0.0, 0.0, 1.0]})
    ra, rb = np.array([1.0, 1.0, 0.0, 2.0]), np.array([0.0, 2.0, 1.0, 1.0])
    out = pair_accuracy(ra, rb, gt_a, gt_b)
    # x: pair 3 is tied; pairs 0, 1 agree, pair 2 does not -> 2/3
    # y: pairs 1, 3 tied; pair 0 (a worse) disagrees, pair 2 (a better) disagrees -> 0
    assert out == {"x": pytest.approx(2 / 3), "y": pytest.approx(0.0)}
    tied = pair_accuracy(ra, rb, gt_a[["x"]] * 0, gt_b[["x"]] * 0)
    assert math.isnan(tied["x"])


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_is_scipys_percentile_bootstrap_of_the_mean():
    v = np.random.default_rng(0).normal(1.0, 2.0, size=40)
    mean, lo, hi = bootstrap_ci(v, n_boot=999, seed=5, level=0.9)
    ref = scipy.stats.bootstrap(
        (v,),
        np.mean,
        n_resamples=999,
        method="percentile",
        confidence_level=0.9,
        rng=np.random.default_rng(5),
    ).confidence_interval
    assert mean == pytest.approx(v.mean(), rel=1e-12)
    assert (lo, hi) == pytest.approx((ref.low, ref.high), rel=1e-12)
    assert lo < mean < hi
    assert bootstrap_ci(v, 999, 5, 0.9) == (mean, lo, hi)  # seeded: reproduces itself
    assert bootstrap_ci(v, 999, 6, 0.9)[1:] != (lo, hi)


def test_bootstrap_ci_closed_forms():
    # Constant data: every resample has the same mean, so the interval is a point.
    mean, lo, hi = bootstrap_ci(np.full(25, 0.3), n_boot=200, seed=0)
    assert lo == pytest.approx(mean, abs=1e-15) and hi == pytest.approx(mean, abs=1e-15)
    assert mean == pytest.approx(0.3, abs=1e-15)
    # Large n: the percentile interval approaches mean +- z sd / sqrt(n).
    rng = np.random.default_rng(1)
    big = rng.normal(size=4000)
    _, lo, hi = bootstrap_ci(big, n_boot=2000, seed=2)
    half = scipy.stats.norm.ppf(0.975) * big.std() / np.sqrt(big.size)
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    # The interval shrinks like 1 / sqrt(n): 100x the data, about a tenth of the width.
    _, lo_s, hi_s = bootstrap_ci(big[:40], n_boot=2000, seed=2)
    assert 5 < (hi_s - lo_s) / (hi - lo) < 20


def test_bootstrap_ci_of_one_value_has_nan_bounds_and_bad_input_raises():
    mean, lo, hi = bootstrap_ci([0.7], n_boot=100, seed=0)
    assert mean == pytest.approx(0.7) and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        bootstrap_ci([], 100, 0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        bootstrap_ci(np.ones((2, 2)), 100, 0)


def test_win_rates_and_evaluate():
    pol = pd.DataFrame({"g": [1.0, 0.0, 2.0, 2.0], "h": [0.0, 0.0, 0.0, 5.0]})
    ref = pd.DataFrame({"g": [0.0, 1.0, 2.0, 1.0], "h": [1.0, 0.0, 0.0, 0.0]})
    w = win_rates(pol, ref)
    assert list(w.columns) == ["g", "h"]
    np.testing.assert_array_equal(w["g"], [1.0, 0.0, 0.5, 1.0])  # exact: 0.5 + 0.5 sign
    np.testing.assert_array_equal(w["h"], [0.0, 0.5, 0.5, 1.0])
    out = evaluate(pol, ref, n_boot=300, seed=4)
    names = ("reward", "win_rate")
    assert set(out) == {f"{g}_{k}{s}" for g in "gh" for k in names for s in ("", "_lo", "_hi")}
    for g in "gh":
        want = bootstrap_ci(pol[g].to_numpy(), 300, 4)
        assert (out[f"{g}_reward"], out[f"{g}_reward_lo"], out[f"{g}_reward_hi"]) == want
        want = bootstrap_ci(w[g].to_numpy(), 300, 4)
        assert (out[f"{g}_win_rate"], out[f"{g}_win_rate_lo"], out[f"{g}_win_rate_hi"]) == want


def test_mean_ci_is_the_student_t_interval():
    x = np.array([1.0, 2.0, 4.0, 7.0])
    mean, lo, hi = mean_ci(x, level=0.9)
    half = scipy.stats.t.ppf(0.95, df=3) * x.std(ddof=1) / np.sqrt(4)
    assert mean == pytest.approx(3.5)
    assert (lo, hi) == pytest.approx((3.5 - half, 3.5 + half), rel=1e-12)
    m1, lo1, hi1 = mean_ci([2.5])
    assert m1 == 2.5 and math.isnan(lo1) and math.isnan(hi1)


# --------------------------------------------------------------------------- win rates


def test_win_rate_and_its_ci():
    assert win_rate([1.0, 1.0, 0.0, 0.5]) == pytest.approx(0.625)
    for bad in ([], [1.2], [[1.0]], [-0.1]):
        with pytest.raises(ValueError, match="values in"):
            win_rate(bad)
    outcomes = np.array([1.0, 0.0, 0.5, 1.0, 1.0, 0.0, 1.0])
    assert win_rate_ci(outcomes, 400, 3) == bootstrap_ci(outcomes, 400, 3)
    rate, lo, hi = win_rate_ci([0.5] * 10, n_boot=50, seed=0)
    assert (rate, lo, hi) == pytest.approx((0.5, 0.5, 0.5), abs=1e-15)
    with pytest.raises(ValueError, match="values in"):
        win_rate_ci([0.5, 2.0], 50, 0)


def _outcomes(n: int, p: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(n) < p, 1.0, np.where(rng.random(n) < 0.2, 0.5, 0.0))


def test_headline_points_and_scipys_paired_bootstrap():
    x, y = _outcomes(60, 0.7, 0), _outcomes(60, 0.4, 1)
    table = headline({"maxmin": {"maj": x, "min": y}}, n_boot=500, seed=9)
    assert table["group"].tolist() == ["maj", "min", "average"]
    assert set(table["method"]) == {"maxmin"}
    rate = dict(zip(table["group"], table["win_rate"], strict=True))
    assert rate == pytest.approx({"maj": x.mean(), "min": y.mean(), "average": (x + y).mean() / 2})
    # Each group's interval: scipy's paired percentile bootstrap of that group's mean, with
    # the same generator (the resampled rows depend on the data sizes and seed only).
    for j, g in enumerate(["maj", "min", "average"]):

        def stat(a, b, axis=-1, j=j):
            return np.stack([a.mean(axis=axis), b.mean(axis=axis), (a + b).mean(axis=axis) / 2])[j]

        ref = scipy.stats.bootstrap(
            (x, y),
            stat,
            n_resamples=500,
            method="percentile",
            paired=True,
            vectorized=True,
            rng=np.random.default_rng(9),
        ).confidence_interval
        row = table[table["group"] == g].iloc[0]
        assert (row["lo"], row["hi"]) == pytest.approx((ref.low, ref.high), rel=1e-12), g
        assert row["lo"] <= row["win_rate"] <= row["hi"]


def test_headline_bootstrap_is_paired_across_groups():
    """One resample of rows serves every group: with y = 1 - x the average is 0.5 in every
    resample (a point interval), and with y = x it has x's interval."""
    x = _outcomes(80, 0.6, 2)
    anti = headline({"m": {"a": x, "b": 1 - x}}, n_boot=400, seed=0).set_index("group")
    assert anti.loc["average", "win_rate"] == pytest.approx(0.5)
    assert anti.loc["average", "lo"] == pytest.approx(0.5, abs=1e-12)
    assert anti.loc["average", "hi"] == pytest.approx(0.5, abs=1e-12)
    assert anti.loc["a", "hi"] - anti.loc["a", "lo"] > 0.1  # the groups themselves vary
    # the two groups' intervals mirror each other: the same rows resampled
    assert anti.loc["b", "lo"] == pytest.approx(1 - anti.loc["a", "hi"], abs=1e-12)
    same = headline({"m": {"a": x, "b": x}}, n_boot=400, seed=0).set_index("group")
    for col in ("win_rate", "lo", "hi"):
        assert same.loc["average", col] == pytest.approx(same.loc["a", col], abs=1e-12)
        assert same.loc["b", col] == pytest.approx(same.loc["a", col], abs=1e-12)


def test_headline_interval_shrinks_with_more_rows_and_checks_lengths():
    small = headline({"m": {"g": _outcomes(30, 0.6, 3)}}, 500, 0).set_index("group")
    large = headline({"m": {"g": _outcomes(3000, 0.6, 3)}}, 500, 0).set_index("group")
    width = {k: t.loc["g", "hi"] - t.loc["g", "lo"] for k, t in (("s", small), ("l", large))}
    assert 5 < width["s"] / width["l"] < 20  # about sqrt(100) = 10
    two = headline({"a": {"g": np.ones(5)}, "b": {"g": np.zeros(5)}}, 100, 0)
    assert two["method"].tolist() == ["a", "a", "b", "b"]
    with pytest.raises(ValueError, match="different numbers of outcomes"):
        headline({"m": {"g": np.ones(5), "h": np.ones(4)}}, 100, 0)


def test_gains_in_points_and_relative():
    table = pd.DataFrame(
        {
            "method": ["single", "single", "maxmin", "maxmin"],
            "group": ["maj", "min", "maj", "min"],
            "win_rate": [0.6, 0.0, 0.66, 0.3],
        }
    )
    out = gains(table, base="single", new="maxmin")
    assert out["maj_gain_points"] == pytest.approx(0.06)
    assert out["maj_gain_relative"] == pytest.approx(0.1)
    assert out["min_gain_points"] == pytest.approx(0.3)
    assert math.isnan(out["min_gain_relative"])  # relative to a base of 0: undefined


def test_updates_to_target():
    curve = pd.DataFrame({"update": [0, 1, 2, 3, 4], "gt": [0.9, 0.1, 0.5, 0.4, 0.8]})
    assert updates_to_target(curve, 0.5) == 2.0  # update 0 (the start) does not count
    assert updates_to_target(curve, 0.8) == 4.0
    assert math.isnan(updates_to_target(curve, 0.95))
    other = curve.rename(columns={"gt": "reward"})
    assert updates_to_target(other, 0.45, value="reward") == 2.0


# --------------------------------------------------------------------------- boundary checks


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([0.1, np.nan, 0.3], 100, 0), "values contain NaN or inf: drop them"),  # was NaN CI
        (([0.1, 0.2], 0, 0), "n_boot must be an integer >= 1"),
        (([0.1, 0.2], 10.5, 0), "n_boot must be an integer"),
        (([0.1, 0.2], 100, 0, 1.5), r"^level must be a finite number in \(0, 1\)"),
        ((np.array(["0.1", "0.2"]), 100, 0), "values must hold numbers"),
    ],
)
def test_bootstrap_ci_names_the_bad_argument(args, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(*args)


def test_mean_ci_rejects_empty_and_nan_values():
    """An empty list gave NaN with a RuntimeWarning; NaN a NaN interval."""
    with pytest.raises(ValueError, match="values is empty"):
        mean_ci([])
    with pytest.raises(ValueError, match="values contains NaN"):
        mean_ci([0.1, np.nan])


def test_win_rates_need_the_same_group_columns():
    """Columns in another order were compared position by position, silently."""
    a = pd.DataFrame({"x": [1.0, 2.0], "y": [0.0, 0.0]})
    with pytest.raises(ValueError, match="gt_policy and gt_ref must have the same rows and group"):
        win_rates(a, a[["y", "x"]])
    with pytest.raises(ValueError, match="gt_policy and gt_ref must have the same rows"):
        win_rates(a, a.iloc[:1])
    with pytest.raises(ValueError, match="contains NaN"):
        win_rates(a, a.where(a > 1))


def test_pair_accuracy_checks_lengths():
    gt = pd.DataFrame({"g": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match=r"reward_a \(2,\) and reward_b \(3,\) must have one"):
        pair_accuracy(np.zeros(2), np.zeros(3), gt, gt)
    with pytest.raises(ValueError, match="gt_a and gt_b must have the same rows"):
        pair_accuracy(np.zeros(3), np.zeros(3), gt, gt.iloc[:2])


def test_headline_and_gains_name_the_bad_input():
    with pytest.raises(ValueError, match="outcomes is empty"):
        headline({}, 10, 0)
    with pytest.raises(ValueError, match=r"outcomes\['m'\]\['g'\] must be win outcomes in"):
        headline({"m": {"g": np.array([0.0, 2.0])}}, 10, 0)
    with pytest.raises(ValueError, match=r"outcomes\['m'\]\['g'\] contains NaN"):
        headline({"m": {"g": np.array([0.0, np.nan])}}, 10, 0)
    table = headline({"a": {"g": np.array([0.0, 1.0])}}, 10, 0)
    with pytest.raises(ValueError, match="new='b' is not a method of the table"):
        gains(table, "a", "b")  # was a KeyError


def test_column_stats_rejects_text():
    with pytest.raises(ValueError, match="values must hold numbers"):
        column_stats(np.array(["1", "2", "3"]))


PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)


@PROPERTY
@given(
    gt=st.tuples(st.integers(1, 10), st.integers(1, 3)).flatmap(
        lambda shape: st.tuples(
            *(arrays(np.float64, shape, elements=st.integers(-3, 3).map(float)) for _ in range(2))
        )
    )
)
def test_win_rates_are_antisymmetric(gt):
    """Outcomes are 0, 0.5 or 1 and swapping the two sides turns wins into losses."""
    a, b = (pd.DataFrame(x, columns=[f"g{j}" for j in range(x.shape[1])]) for x in gt)
    ab, ba = win_rates(a, b), win_rates(b, a)
    assert set(np.unique(ab.to_numpy())) <= {0.0, 0.5, 1.0}
    np.testing.assert_array_equal(ab.to_numpy() + ba.to_numpy(), 1.0)
