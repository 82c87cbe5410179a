"""MaxMin aggregation rules and the reference-reward normalizer (``pluralign.core.maxmin``).

The reward adapter TRL's PPO calls with these rules is tested in
``tests/training/test_reward_adapter.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pluralign.core.maxmin import AGGREGATIONS, Normalizer, aggregate

R = np.array([[0.5, -1.0], [2.0, 0.1], [-0.3, 0.4]])  # (B=3, K=2)


def test_aggregation_rules_against_hand_computed_values():
    # group means: 0.733 and -0.167 -> group 1 is the batch's worst
    np.testing.assert_allclose(aggregate(R, "maxmin_batch")[0], R[:, 1])
    assert aggregate(R, "maxmin_batch")[1] == 1
    np.testing.assert_allclose(aggregate(R, "maxmin_sample")[0], [-1.0, 0.1, -0.3])
    np.testing.assert_allclose(aggregate(R[:, :1], "single")[0], R[:, 0])
    tau = 0.5
    expected = -tau * np.log(np.exp(-R[:, 0] / tau) + np.exp(-R[:, 1] / tau))
    np.testing.assert_allclose(aggregate(R, "softmin", tau)[0], expected)


def test_every_rule_reports_the_argmin_group_of_the_batch_means():
    for how in AGGREGATIONS:
        X = R[:, :1] if how == "single" else R
        assert aggregate(X, how, 0.5)[1] == int(np.argmin(X.mean(axis=0))), how


def test_softmin_bounds_and_limit():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    lo = X.min(axis=1)
    for tau in (2.0, 0.5, 0.01):
        s = aggregate(X, "softmin", tau)[0]
        assert np.all(s <= lo + 1e-12) and np.all(s >= lo - tau * np.log(3) - 1e-12)
    np.testing.assert_allclose(aggregate(X, "softmin", 1e-6)[0], lo, atol=1e-5)
    # tau = 0 *is* maxmin_sample: a selection, no arithmetic, so the same numbers exactly.
    np.testing.assert_array_equal(aggregate(X, "softmin", 0.0)[0], lo)
    np.testing.assert_array_equal(aggregate(X, "maxmin_sample")[0], lo)


def test_aggregate_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(R, "mean")
    with pytest.raises(ValueError, match="exactly one reward"):
        aggregate(R, "single")
    with pytest.raises(ValueError, match="temperature"):
        aggregate(R, "softmin", -1.0)
    with pytest.raises(ValueError, match="non-empty"):
        aggregate(np.zeros((0, 2)), "maxmin_sample")


def test_normalizer():
    n = Normalizer.fit([1.0, 3.0])
    assert (n.mean, n.std) == pytest.approx((2.0, 1.0), rel=1e-12)  # population std
    np.testing.assert_allclose(n(np.array([4.0])), [2.0])
    z = Normalizer.fit([1.0, 2.0, 6.0])
    np.testing.assert_allclose(z(np.array([1.0, 2.0, 6.0])).mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(z(np.array([1.0, 2.0, 6.0])).std(), 1.0, rtol=1e-12)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ([1.0, np.nan], r"\['reference rewards'\] hold NaN or inf"),
        ([1.0, np.inf], r"\['reference rewards'\] hold NaN or inf"),
        ([1.0], ">= 2 rows"),
    ],
)
def test_normalizer_fit_raises_naming_the_bad_rewards(values, match):
    with pytest.raises(ValueError, match=match):
        Normalizer.fit(values)


def test_normalizer_fit_names_constant_reference_rewards_and_only_centres():
    """Constant reference rewards have no scale: a warning names them, std is 1."""
    with pytest.warns(UserWarning, match=r"\['reference rewards'\] are constant"):
        n = Normalizer.fit([1.5, 1.5, 1.5])
    assert (n.mean, n.std) == pytest.approx((1.5, 1.0), rel=1e-15)
    np.testing.assert_allclose(n(np.array([1.5, 2.5])), [0.0, 1.0], atol=1e-15)


# --------------------------------------------------------------------------- boundary checks


@pytest.mark.parametrize(
    ("R", "kwargs", "match"),
    [
        (np.array([[0.1, np.nan], [0.2, 0.3]]), {}, "R contains NaN or inf"),  # passed through
        (np.array([[0.1, np.inf]]), {}, "R contains NaN or inf"),
        (np.array([["0.1", "0.2"]]), {}, "R must hold numbers"),  # strings were parsed
        (np.zeros(3), {}, r"R must be a 2-D \(batch, groups\) array"),
        (R, {"temperature": float("nan")}, "temperature must be a finite number"),  # was min
        (R, {"temperature": -1.0, "how": "maxmin_sample"}, "temperature must be a finite"),
    ],
)
def test_aggregate_names_the_bad_argument(R, kwargs, match):
    args = {"how": "softmin"} | kwargs
    with pytest.raises(ValueError, match=match):
        aggregate(R, **args)


def test_aggregate_takes_lists():
    np.testing.assert_array_equal(aggregate([[1.0, 2.0], [0.0, -1.0]], "maxmin_sample")[0], [1, -1])


@pytest.mark.parametrize(
    ("mean", "std", "match"),
    [
        (0.0, 0.0, "Normalizer std must be a finite number in \\(0"),  # was inf + a warning
        (0.0, -1.0, "Normalizer std"),
        (0.0, float("inf"), "Normalizer std"),
        (float("nan"), 1.0, "Normalizer mean must be a finite number"),
    ],
)
def test_normalizer_refuses_a_zero_or_non_finite_scale(mean, std, match):
    with pytest.raises(ValueError, match=match):
        Normalizer(mean, std)


def test_softmin_with_a_tiny_temperature_is_the_minimum_not_inf():
    """-R / tau overflowed for tau ~ 1e-308 and the reward came out +inf (found by the
    property test below)."""
    for tau in (4.2e-308, 1e-300, 1e-12):
        np.testing.assert_allclose(aggregate(np.array([[8.0]]), "softmin", tau)[0], [8.0])
        got = aggregate(np.array([[8.0, -3.0], [2.0, 2.0]]), "softmin", tau)[0]
        np.testing.assert_allclose(got, [-3.0, 2.0 - tau * np.log(2)], rtol=1e-12)


# --------------------------------------------------------------------------- properties

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)
REWARDS = st.tuples(st.integers(1, 12), st.integers(1, 5)).flatmap(
    lambda shape: arrays(np.float64, shape, elements=st.floats(-10, 10, width=32))
)


@PROPERTY
@given(R=REWARDS, seed=st.integers(0, 2**32 - 1), tau=st.sampled_from([0.0, 0.1, 1.0, 5.0]))
def test_aggregation_does_not_depend_on_the_order_of_the_groups(R, seed, tau):
    """Permuting the columns (groups) leaves each response's aggregated reward unchanged,
    and the reported worst group is the same group (by its new index)."""
    perm = np.random.default_rng(seed).permutation(R.shape[1])
    for how in ("maxmin_sample", "softmin"):
        a, worst = aggregate(R, how, tau)
        b, worst_p = aggregate(R[:, perm], how, tau)
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
        means = R.mean(axis=0)
        assert means[perm[worst_p]] == means[worst]  # the same (tied) lowest mean
    b, worst_p = aggregate(R[:, perm], "maxmin_batch")
    np.testing.assert_array_equal(b, R[:, perm[worst_p]])


@PROPERTY
@given(R=REWARDS, tau=st.floats(0.0, 5.0))
def test_every_rule_lies_between_the_minimum_and_the_maximum(R, tau):
    """An aggregate of group rewards is never above the best group's or (up to the softmin
    bound tau log K) below the worst's."""
    lo, hi = R.min(axis=1), R.max(axis=1)
    slack = tau * np.log(R.shape[1]) + 1e-9
    for how in ("maxmin_batch", "maxmin_sample", "softmin"):
        a, _ = aggregate(R, how, tau)
        assert np.all(a <= hi + 1e-9) and np.all(a >= lo - slack)


def test_normalizer_keeps_checked_floats_and_refuses_text() -> None:
    from pluralign.core.maxmin import Normalizer

    norm = Normalizer(np.float32(1.5), 2)
    assert type(norm.mean) is float and type(norm.std) is float
    with pytest.raises(ValueError, match="must be numbers"):
        Normalizer("1", 1)
