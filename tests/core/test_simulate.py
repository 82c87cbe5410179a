"""The one Bradley-Terry label simulator (``pluralign.core.simulate``): users of planted
groups drawing distinct items, BT outcomes, and its two front ends ``simulate_users``
(pairs of m texts) and ``label_pairs`` (given pairs (a_i, b_i))."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit

from pluralign.core import simulate
from pluralign.core.simulate import (
    PairLabels,
    _decode_pairs,
    bt_outcomes,
    draw_user_items,
    label_pairs,
    simulate_users,
    users_per_group,
)


def _rewards(m: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((m, 3))


# --------------------------------------------------------------------------- the shared parts


def test_decode_pairs_enumerates_every_pair_once():
    m = 40
    a, b = _decode_pairs(np.arange(m * (m - 1) // 2))
    rows, cols = np.triu_indices(m, k=1)
    assert set(zip(a.tolist(), b.tolist(), strict=True)) == set(
        zip(rows.tolist(), cols.tolist(), strict=True)
    )
    assert (a < b).all() and len(a) == len(rows)


def test_decode_pairs_is_exact_near_large_triangular_numbers():
    """p = b (b - 1) / 2 + a: the float square root must be corrected at the boundaries."""
    b = np.array([10**6, 3 * 10**7 + 7, 94_906_267])
    tri = b * (b - 1) // 2
    p = np.concatenate([tri, tri + b - 1])  # first and last pair of each b
    got_a, got_b = _decode_pairs(p)
    np.testing.assert_array_equal(got_b, np.concatenate([b, b]))
    np.testing.assert_array_equal(got_a, np.concatenate([0 * b, b - 1]))


def test_draw_user_items_numbers_users_group_by_group_with_distinct_items():
    rng = np.random.default_rng(3)
    user, item, user_group = draw_user_items(20, [2, 0, 3], 6, rng, 3)
    np.testing.assert_array_equal(user_group, [0, 0, 2, 2, 2])
    np.testing.assert_array_equal(user, np.repeat(np.arange(5), 6))
    for u in range(5):
        assert len(set(item[user == u].tolist())) == 6  # without replacement within a user
    assert item.min() >= 0 and item.max() < 20


def test_draw_user_items_is_one_choice_per_user_from_the_generator():
    """The draw is ``rng.choice(n_items, per_user, replace=False)`` user after user, and
    leaves the generator where the outcomes continue."""
    a, b = np.random.default_rng(11), np.random.default_rng(11)
    _, item, _ = draw_user_items(15, [1, 2], 4, a, 2)
    expected = np.concatenate([b.choice(15, 4, replace=False) for _ in range(3)])
    np.testing.assert_array_equal(item, expected)
    np.testing.assert_array_equal(a.random(5), b.random(5))  # same generator state after


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((10, [1, 1], 2, 3), "users_per_group has 2 entries for K=3"),
        ((10, [1, -1, 1], 2, 3), "non-negative"),
        ((10, [0, 0, 0], 2, 3), "not all 0"),
        ((10, [1.0, 1.0, 1.0], 2, 3), "ints"),
        ((10, [1, 1, 1], 0, 3), r"in 1\.\.10 \(the widgets\)"),
        ((10, [1, 1, 1], 11, 3), r"in 1\.\.10 \(the widgets\)"),
    ],
)
def test_draw_user_items_validates(args, match):
    n_items, counts, per_user, K = args
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=match):
        draw_user_items(n_items, counts, per_user, rng, K, "the widgets")


def test_bt_outcomes_probabilities_and_frequencies():
    margin = np.array([-2.0, 0.0, 0.5, 3.0])
    wins, p_a = bt_outcomes(margin, 1.5, np.random.default_rng(0))
    np.testing.assert_allclose(p_a, 1 / (1 + np.exp(-1.5 * margin)), rtol=1e-14)
    assert wins.dtype == bool and wins.shape == (4,)
    # a wins iff one uniform per comparison is below p_a, from the given generator
    np.testing.assert_array_equal(wins, np.random.default_rng(0).random(4) < p_a)
    many = np.full(40_000, 0.4)
    freq = bt_outcomes(many, 2.0, np.random.default_rng(1))[0].mean()
    assert freq == pytest.approx(expit(0.8), abs=4 * np.sqrt(0.25 / many.size))


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_bt_outcomes_rejects_bad_beta(beta):
    with pytest.raises(ValueError, match="beta must be finite and > 0"):
        bt_outcomes(np.zeros(3), beta, np.random.default_rng(0))


def test_users_per_group_largest_remainder_and_at_least_one_each():
    assert users_per_group(10, [0.5, 0.5]) == [5, 5]
    assert users_per_group(10, [0.75, 0.25]) == [8, 2]  # 7.5 / 2.5: largest remainder, tie
    assert users_per_group(11, [10 / 11, 1 / 11]) == [10, 1]
    assert users_per_group(3, [0.98, 0.01, 0.01]) == [1, 1, 1]  # nobody left out
    for n, shares in [(7, [0.2, 0.3, 0.5]), (100, [0.05, 0.95]), (4, [0.9, 0.05, 0.05])]:
        counts = users_per_group(n, shares)
        assert sum(counts) == n and min(counts) >= 1
    with pytest.raises(ValueError, match="sum to 1"):
        users_per_group(10, [0.5, 0.6])
    with pytest.raises(ValueError, match="positive"):
        users_per_group(10, [1.0, 0.0])
    with pytest.raises(ValueError, match="cannot fill 3 groups"):
        users_per_group(2, [0.2, 0.3, 0.5])


# --------------------------------------------------------------------------- simulate_users


def test_simulate_users_shapes_numbering_and_seed():
    sim = simulate_users(_rewards(), [2, 0, 3], comparisons_per_user=7, beta=2.0, seed=1)
    n = 5 * 7
    for field in (sim.user, sim.chosen, sim.rejected, sim.p_chosen):
        assert field.shape == (n,)
    np.testing.assert_array_equal(sim.user_group, [0, 0, 2, 2, 2])
    np.testing.assert_array_equal(sim.user, np.repeat(np.arange(5), 7))
    assert (sim.chosen != sim.rejected).all()
    assert ((sim.p_chosen > 0) & (sim.p_chosen < 1)).all()
    for u in range(5):  # distinct unordered pairs within a user
        rows = sim.user == u
        pairs = set(zip(np.minimum(sim.chosen, sim.rejected)[rows],
                        np.maximum(sim.chosen, sim.rejected)[rows], strict=True))  # fmt: skip
        assert len(pairs) == 7
    # a seeded generator reproduces itself exactly
    again = simulate_users(_rewards(), [2, 0, 3], 7, 2.0, seed=1)
    pd.testing.assert_frame_equal(sim.to_frame(), again.to_frame(), check_exact=True)
    other = simulate_users(_rewards(), [2, 0, 3], 7, 2.0, seed=2)
    assert not np.array_equal(sim.chosen, other.chosen)
    np.testing.assert_array_equal(sim.to_frame()["group"], sim.user_group[sim.user])


def test_simulate_users_can_ask_every_pair_once():
    sim = simulate_users(_rewards(m=5), [1, 1, 0], comparisons_per_user=10, beta=1.0, seed=0)
    for u in range(2):
        rows = sim.user == u
        lo = np.minimum(sim.chosen, sim.rejected)[rows]
        hi = np.maximum(sim.chosen, sim.rejected)[rows]
        assert sorted(zip(lo.tolist(), hi.tolist(), strict=True)) == [
            (a, b) for a in range(5) for b in range(5) if a < b
        ]


def test_p_chosen_matches_bradley_terry_recomputed_in_a_loop():
    r, beta = _rewards(), 1.7
    sim = simulate_users(r, [3, 2, 4], comparisons_per_user=11, beta=beta, seed=5)
    for i in range(sim.user.size):
        k = sim.user_group[sim.user[i]]
        margin = beta * (r[sim.chosen[i], k] - r[sim.rejected[i], k])
        assert sim.p_chosen[i] == pytest.approx(1 / (1 + np.exp(-margin)), rel=1e-12)


def test_win_frequency_of_better_text_matches_planted_probability():
    r, beta = _rewards(m=60), 1.0
    sim = simulate_users(r, [40, 40, 40], comparisons_per_user=200, beta=beta, seed=0)
    k = sim.group
    diff = r[sim.chosen, k] - r[sim.rejected, k]
    for g in range(3):  # per group: users follow their own group's reward
        rows = k == g
        better_won = (diff[rows] > 0).mean()
        expected = expit(beta * np.abs(diff[rows])).mean()
        # 8000 draws: standard error <= 0.0056; 0.02 is > 3.5 standard errors
        assert better_won == pytest.approx(expected, abs=0.02)
        assert expected > 0.65  # the check has power: a coin flip would give 0.5
        # ... and not another group's reward (independent columns: about 0.5)
        other = (g + 1) % 3
        other_won = (r[sim.chosen[rows], other] > r[sim.rejected[rows], other]).mean()
        assert abs(other_won - 0.5) < 0.05


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rewards": np.zeros(5)}, "2-D"),
        ({"rewards": np.zeros((1, 3))}, "at least 2 texts"),
        ({"rewards": np.array([[0.0, 1.0, np.inf]] * 4)}, "NaN or inf"),
        ({"users_per_group": [1, 1]}, "K=3"),
        ({"users_per_group": [1, -1, 1]}, "non-negative"),
        ({"users_per_group": [0, 0, 0]}, "not all 0"),
        ({"users_per_group": [1.0, 1.0, 1.0]}, "ints"),
        ({"comparisons_per_user": 0}, r"1\.\.6 \(distinct pairs of 4 texts\)"),
        ({"comparisons_per_user": 7}, r"1\.\.6 \(distinct pairs of 4 texts\)"),
        ({"beta": 0.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
    ],
)
def test_simulate_users_validates_inputs(kwargs, match):
    args = {
        "rewards": _rewards(m=4),
        "users_per_group": [1, 1, 1],
        "comparisons_per_user": 6,
        "beta": 1.0,
        "seed": 0,
    }
    with pytest.raises(ValueError, match=match):
        simulate_users(**{**args, **kwargs})


# --------------------------------------------------------------------------- label_pairs


def _gt(n_pairs: int = 25, K: int = 2, seed: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_pairs, K)), rng.standard_normal((n_pairs, K))


def old_label_pairs(gt_a, gt_b, counts, per_user, beta, seed):
    """The algorithm before the simulators were merged, written as a direct loop: per user
    ``rng.choice(n_pairs, per_user, replace=False)``, then one ``rng.random(n)`` for all
    outcomes, a winning iff the uniform is below sigma(beta (a - b)) of the user's group."""
    rng = np.random.default_rng(seed)
    n_pairs = gt_a.shape[0]
    user_group = np.repeat(np.arange(len(counts)), counts)
    users, pairs = [], []
    for u in range(user_group.size):
        pairs.extend(rng.choice(n_pairs, per_user, replace=False).tolist())
        users.extend([u] * per_user)
    users, pairs = np.array(users), np.array(pairs)
    g = user_group[users]
    p_a = expit(beta * (gt_a[pairs, g] - gt_b[pairs, g]))
    a_wins = rng.random(pairs.size) < p_a
    return users, pairs, a_wins, user_group, p_a


@pytest.mark.parametrize(
    ("counts", "per_user", "beta", "seed"),
    [([3, 2], 7, 1.0, 0), ([1, 4], 25, 3.0, 9), ([0, 5], 1, 0.2, 2)],
)
def test_label_pairs_reproduces_the_direct_loop(counts, per_user, beta, seed):
    gt_a, gt_b = _gt()
    lab = label_pairs(gt_a, gt_b, counts, per_user, beta, seed)
    users, pairs, a_wins, user_group, p_a = old_label_pairs(
        gt_a, gt_b, counts, per_user, beta, seed
    )
    # The seeded draws (integers, booleans) reproduce the old ones exactly.
    np.testing.assert_array_equal(lab.user, users)
    np.testing.assert_array_equal(lab.pair, pairs)
    np.testing.assert_array_equal(lab.a_wins, a_wins)
    np.testing.assert_array_equal(lab.user_group, user_group)
    np.testing.assert_allclose(lab.p_a, p_a, rtol=1e-14)


def test_label_pairs_and_simulate_users_share_the_draw():
    """``label_pairs`` on the m (m - 1) / 2 pairs of m texts, enumerated as ``_decode_pairs``
    does, draws the same items and outcomes as ``simulate_users`` with the same seed: both
    are ``draw_user_items`` followed by ``bt_outcomes`` on one generator."""
    r, counts, per_user, beta, seed = _rewards(m=12), [2, 1, 3], 9, 1.3, 7
    sim = simulate_users(r, counts, per_user, beta, seed)
    a, b = _decode_pairs(np.arange(12 * 11 // 2))
    lab = label_pairs(r[a], r[b], counts, per_user, beta, seed)
    np.testing.assert_array_equal(lab.user, sim.user)
    np.testing.assert_array_equal(lab.user_group, sim.user_group)
    lo, hi = np.minimum(sim.chosen, sim.rejected), np.maximum(sim.chosen, sim.rejected)
    np.testing.assert_array_equal(a[lab.pair], lo)
    np.testing.assert_array_equal(b[lab.pair], hi)
    np.testing.assert_array_equal(lab.a_wins, sim.chosen == lo)
    np.testing.assert_allclose(np.where(lab.a_wins, lab.p_a, 1 - lab.p_a), sim.p_chosen)


def test_both_simulators_call_draw_user_items_and_bt_outcomes(monkeypatch):
    calls: list[str] = []
    real_draw, real_bt = simulate.draw_user_items, simulate.bt_outcomes

    def draw(*args, **kwargs):
        calls.append("draw")
        return real_draw(*args, **kwargs)

    def bt(*args, **kwargs):
        calls.append("bt")
        return real_bt(*args, **kwargs)

    monkeypatch.setattr(simulate, "draw_user_items", draw)
    monkeypatch.setattr(simulate, "bt_outcomes", bt)
    simulate_users(_rewards(m=6), [1, 1, 1], 3, 1.0, 0)
    assert calls == ["draw", "bt"]
    calls.clear()
    label_pairs(*_gt(K=3), [1, 1, 1], 3, 1.0, 0)
    assert calls == ["draw", "bt"]


def test_label_pairs_follow_each_users_group_with_large_beta():
    gt_a, gt_b = _gt(n_pairs=200, K=2, seed=1)
    a_better_0 = gt_a[:, 0] > gt_b[:, 0]
    gt_b[:, 1] = gt_a[:, 1] + np.where(a_better_0, 3.0, -3.0)  # group 1 disagrees on every pair
    lab = label_pairs(gt_a, gt_b, [5, 5], 40, beta=50.0, seed=3)
    g = lab.user_group[lab.user]
    follows_0 = lab.a_wins == a_better_0[lab.pair]
    assert follows_0[g == 0].mean() > 0.97  # each user follows their own group ...
    assert (~follows_0[g == 1]).mean() > 0.99  # ... the other group too (margin 3, beta 50)


def test_chosen_rejected_texts_follow_the_labels():
    lab = PairLabels(
        user=np.array([0, 0, 1]),
        pair=np.array([1, 0, 1]),
        a_wins=np.array([True, False, False]),
        user_group=np.array([0, 1]),
        p_a=np.array([0.9, 0.2, 0.4]),
    )
    chosen, rejected = lab.chosen_rejected(["a0", "a1"], ["b0", "b1"])
    assert chosen == ["a1", "b0", "b1"]
    assert rejected == ["b1", "a0", "a1"]


def test_label_pairs_validates():
    gt_a, gt_b = _gt(n_pairs=6, K=2)
    with pytest.raises(ValueError, match="equal"):
        label_pairs(gt_a, gt_b[:5], [1, 1], 2, 1.0, 0)
    with pytest.raises(ValueError, match=r"\(n_pairs, K\)"):
        label_pairs(gt_a[:, 0], gt_b[:, 0], [1, 1], 2, 1.0, 0)
    with pytest.raises(ValueError, match="K=2"):
        label_pairs(gt_a, gt_b, [1, 1, 1], 2, 1.0, 0)
    with pytest.raises(ValueError, match=r"1\.\.6 \(the pairs\)"):
        label_pairs(gt_a, gt_b, [1, 1], 7, 1.0, 0)
    with pytest.raises(ValueError, match="beta"):
        label_pairs(gt_a, gt_b, [1, 1], 2, 0.0, 0)


# --------------------------------------------------------------------------- boundary checks


def test_bt_outcomes_rejects_nan_margins():
    """A NaN margin made sigma NaN and every such comparison a silent loss for a."""
    with pytest.raises(ValueError, match="margin contains NaN"):
        bt_outcomes(np.array([0.1, np.nan]), 1.0, np.random.default_rng(0))


def test_label_pairs_rejects_non_finite_ground_truth():
    gt_a, gt_b = _gt(n_pairs=6, K=2)
    gt_b[3, 1] = np.nan
    with pytest.raises(ValueError, match="gt_b contains NaN or inf"):
        label_pairs(gt_a, gt_b, [1, 1], 2, 1.0, 0)
    with pytest.raises(ValueError, match="gt_a must hold numbers"):
        label_pairs(gt_a.astype(str), gt_a, [1, 1], 2, 1.0, 0)


def test_simulate_users_names_a_non_integer_count_and_text_rewards():
    with pytest.raises(ValueError, match="comparisons per user must be an integer"):
        simulate_users(_rewards(m=4), [1, 1, 1], 2.5, 1.0, 0)  # was numpy's TypeError
    with pytest.raises(ValueError, match="rewards must hold numbers"):
        simulate_users(_rewards(m=4).astype(str), [1, 1, 1], 2, 1.0, 0)  # strings were parsed


PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)


@PROPERTY
@given(
    shares=st.lists(st.floats(0.01, 1.0), min_size=1, max_size=6),
    extra=st.integers(0, 200),
)
def test_users_per_group_fills_every_group_and_sums_to_the_total(shares, extra):
    shares = np.array(shares) / np.sum(shares)
    n_users = len(shares) + extra
    counts = users_per_group(n_users, shares)
    assert sum(counts) == n_users and min(counts) >= 1 and len(counts) == len(shares)


@PROPERTY
@given(
    counts=st.lists(st.integers(0, 3), min_size=1, max_size=3).filter(lambda c: sum(c) > 0),
    per_user=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
)
def test_simulated_comparisons_are_distinct_pairs_of_the_users_own_group(counts, per_user, seed):
    """Each user compares per_user distinct unordered pairs of distinct texts; users are
    numbered group by group."""
    sim = simulate_users(_rewards(m=4, seed=1)[:, : len(counts)], counts, per_user, 1.0, seed)
    assert np.all(sim.chosen != sim.rejected)
    assert sim.user_group.tolist() == np.repeat(np.arange(len(counts)), counts).tolist()
    for u in np.unique(sim.user):
        rows = sim.user == u
        pairs = {frozenset(p) for p in zip(sim.chosen[rows], sim.rejected[rows], strict=True)}
        assert rows.sum() == per_user and len(pairs) == per_user
