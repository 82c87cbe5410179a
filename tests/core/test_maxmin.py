"""MaxMin aggregation rules and the reference-reward normalizer (``pluralign.core.maxmin``).

The reward adapter TRL's PPO calls with these rules is tested in
``tests/training/test_reward_adapter.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

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
