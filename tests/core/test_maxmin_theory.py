"""MaxMin theory: closed forms vs scipy/sklearn, the impossibility bounds, MaxMin optimality."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from pluralign.core.maxmin_theory import (
    expected_rewards,
    group_utilities,
    impossibility_bounds,
    impossibility_sweep,
    kl_divergence,
    kl_regularized_policy,
    maxmin_policy,
    pooled_reward,
    preference_tv,
)

ETAS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5]


def planted(n: int = 8, d: int = 3, seed: int = 0, scale: float = 3.0):
    """Two groups with orthogonal rewards of norm ``scale``; features with max norm 1."""
    rng = np.random.default_rng(seed)
    psi = rng.normal(size=(n, d))
    psi /= np.linalg.norm(psi, axis=1).max()
    phi_min = scale * np.eye(d)[0]
    phi_maj = scale * np.eye(d)[1]
    return psi, phi_min, phi_maj, np.full(n, 1.0 / n)


def simplex_max(fun, n: int, x0=None) -> np.ndarray:
    """argmax of a concave fun over the probability simplex, by SLSQP (independent check)."""
    x0 = np.full(n, 1.0 / n) if x0 is None else x0
    res = minimize(
        lambda p: -fun(p),
        x0,
        method="SLSQP",
        bounds=[(1e-12, 1.0)] * n,
        constraints=[{"type": "eq", "fun": lambda p: p.sum() - 1.0}],
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    return res.x / res.x.sum()


# ----------------------------------------------------------------------------- KL policy
def test_kl_policy_maximizes_objective_like_scipy():
    rng = np.random.default_rng(1)
    r, ref, beta = rng.normal(size=5), rng.dirichlet(np.ones(5)), 0.7
    pi = kl_regularized_policy(r, ref, beta)

    def J(p):
        return p @ r - beta * kl_divergence(p, ref)

    pi_scipy = simplex_max(J, 5)
    np.testing.assert_allclose(pi, pi_scipy, atol=1e-5)
    assert J(pi) >= J(pi_scipy) - 1e-12
    # Gibbs: J(pi*) - J(p) = beta KL(p || pi*), and max J = beta log E_ref exp(r / beta).
    p = rng.dirichlet(np.ones(5))
    assert J(pi) - J(p) == pytest.approx(beta * kl_divergence(p, pi), rel=1e-10)
    assert J(pi) == pytest.approx(beta * np.log(ref @ np.exp(r / beta)), rel=1e-12)


def test_kl_policy_is_stable_for_huge_rewards():
    pi = kl_regularized_policy([1e6, 0.0, -1e6], [0.2, 0.3, 0.5], 1e-3)
    np.testing.assert_allclose(pi, [1.0, 0.0, 0.0])
    assert np.all(np.isfinite(pi))


def test_log_policy_lipschitz_constant_2_over_beta_is_valid():
    rng = np.random.default_rng(2)
    ref = rng.dirichlet(np.ones(6))
    worst = 0.0
    for _ in range(200):
        beta = rng.uniform(0.05, 3)
        r, dr = rng.normal(size=6) * 3, rng.normal(size=6) * rng.uniform(1e-3, 2)
        diff = np.log(kl_regularized_policy(r + dr, ref, beta)) - np.log(
            kl_regularized_policy(r, ref, beta)
        )
        worst = max(worst, np.abs(diff).max() / (2 / beta * np.abs(dr).max()))
    assert worst <= 1 + 1e-12
    assert worst > 0.5  # and not vacuous


def test_group_utilities_and_expected_rewards():
    R = np.array([[1.0, 0.0, 2.0], [0.0, 3.0, -1.0]])
    pi, ref, beta = np.array([0.2, 0.5, 0.3]), np.array([0.5, 0.25, 0.25]), 0.4
    er = expected_rewards(pi, R)
    np.testing.assert_allclose(er, [0.8, 1.2])
    kl = sum(p * np.log(p / q) for p, q in zip(pi, ref, strict=True))
    np.testing.assert_allclose(group_utilities(pi, R, ref, beta), er - beta * kl)


# ----------------------------------------------------------------------------- pooled reward
def test_pooled_reward_one_group_recovers_the_group():
    psi, phi_min, phi_maj, _ = planted()
    phis = np.vstack([phi_min, phi_maj])
    np.testing.assert_allclose(pooled_reward(phis, [1.0, 0.0], psi), phi_min, atol=1e-9)
    np.testing.assert_allclose(pooled_reward(phis, [0.0, 1.0], psi), phi_maj, atol=1e-9)
    # With ridge, eta = 1 equals fitting the group alone.
    np.testing.assert_allclose(
        pooled_reward(phis, [1.0, 0.0], psi, lam=0.1),
        pooled_reward(phi_min, [1.0], psi, lam=0.1),
        atol=1e-12,
    )


def test_pooled_reward_matches_sklearn_soft_target_logistic_regression():
    psi, phi_min, phi_maj, _ = planted(n=7, d=3, seed=3)
    phis, etas, lam = np.vstack([phi_min, phi_maj]), np.array([0.3, 0.7]), 0.05
    iu = np.triu_indices(psi.shape[0], k=1)
    Z = psi[iu[0]] - psi[iu[1]]
    M = Z.shape[0]
    p = etas @ expit(phis @ Z.T)
    X, y = np.vstack([Z, Z]), np.r_[np.ones(M), np.zeros(M)]
    clf = LogisticRegression(C=1 / lam, fit_intercept=False, tol=1e-12, max_iter=10_000)
    clf.fit(X, y, sample_weight=np.r_[p, 1 - p] / M)
    np.testing.assert_allclose(pooled_reward(phis, etas, psi, lam=lam), clf.coef_[0], atol=1e-6)


def test_pooled_reward_needs_ridge_when_features_degenerate():
    psi = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])  # second feature never varies
    with pytest.raises(ValueError, match="lam > 0"):
        pooled_reward([[1.0, 1.0]], [1.0], psi, lam=0.0)
    assert np.all(np.isfinite(pooled_reward([[1.0, 1.0]], [1.0], psi, lam=0.1)))


# ----------------------------------------------------------------------------- impossibility
def test_preference_tv_is_tv_of_the_joint_law_over_ordered_pairs():
    psi, phi_min, phi_maj, _ = planted(n=5)
    n = psi.shape[0]
    tv = 0.0
    for i, j in itertools.permutations(range(n), 2):
        pu = expit((psi[i] - psi[j]) @ phi_min)
        pv = expit((psi[i] - psi[j]) @ phi_maj)
        tv += 0.5 * (abs(pu - pv) + abs((1 - pu) - (1 - pv))) / (n * (n - 1))
    assert preference_tv(phi_min, phi_maj, psi) == pytest.approx(tv, rel=1e-12)
    assert preference_tv(phi_maj, phi_min, psi) == pytest.approx(tv, rel=1e-12)
    # Identical groups: zero TV up to the rounding of two products of equal rows.
    assert preference_tv(phi_min, phi_min, psi) == pytest.approx(0.0, abs=1e-15)


def test_bounds_constants():
    psi = np.array([[2.0, 0.0], [0.0, 1.0], [0.0, -1.0], [-2.0, 0.0]])
    b = impossibility_bounds(eps=0.4, eta=0.25, beta=0.5, psi=psi)
    assert b["D"] == pytest.approx(2.0, rel=1e-15)  # max feature norm, ||(2, 0)||
    assert b["lam_psi"] == pytest.approx(0.5)  # Gram = diag(8, 2) / 4
    assert b["L_pi"] == pytest.approx(4.0, rel=1e-15)  # 2 / beta
    assert b["dist_bound"] == pytest.approx(0.4 * 0.75 / 8)
    assert b["gap_bound"] == pytest.approx(0.5 * 0.4 * 0.75 / (64 * 0.25 * 4 * 4))
    with pytest.raises(ValueError, match="D must bound"):
        impossibility_bounds(0.4, 0.25, 0.5, psi, D=1.0)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_sweep_bounds_hold_on_planted_problem(beta):
    psi, phi_min, phi_maj, ref = planted()
    recs = impossibility_sweep(ETAS, phi_min, phi_maj, psi, ref, beta)
    assert [r["eta"] for r in recs] == ETAS
    for r in recs:
        assert r["dist_bound_holds"] and r["gap_bound_holds"]
        # Loose: measured / bound ~ 60-120x for the distance, >= 400x for the gap here.
        assert r["dist"] / r["dist_bound"] > 10
        assert r["gap"] / r["gap_bound"] > 100
        # Gap = J_min(pi*_min) - J_min(pi_pooled), computed directly.
        R = np.vstack([phi_min, phi_maj]) @ psi.T
        phi_pool = pooled_reward(np.vstack([phi_min, phi_maj]), [r["eta"], 1 - r["eta"]], psi)
        pi_pool = kl_regularized_policy(psi @ phi_pool, ref, beta)
        pi_min = kl_regularized_policy(R[0], ref, beta)
        J = group_utilities(pi_min, R, ref, beta)[0] - group_utilities(pi_pool, R, ref, beta)[0]
        assert r["gap"] == pytest.approx(J, rel=1e-8)
        # MaxMin serves the worst-off group at least as well as the pooled reward.
        assert r["worst_maxmin"] >= r["worst_pooled"] - 1e-10
    # Smaller minority -> further from its reward and larger alignment gap.
    assert np.all(np.diff([r["dist"] for r in recs]) < 0)
    assert np.all(np.diff([r["gap"] for r in recs]) < 0)


def test_gap_bound_fails_for_small_beta_and_weak_diversity():
    """Documented discrepancy: with our L_pi = 2/beta the gap 'bound' is not a lower bound."""
    psi, phi_min, phi_maj, ref = planted()
    # Small beta: the gap stays <= max r - min r, the bound grows like 1 / beta.
    rec = impossibility_sweep([0.1], phi_min, phi_maj, psi, ref, beta=1e-6)[0]
    assert rec["dist_bound_holds"] and not rec["gap_bound_holds"]
    R = psi @ phi_min
    assert rec["gap"] <= R.max() - R.min()
    # Weak diversity: the gap is quadratic in the reward error, the bound linear in eps.
    rec = impossibility_sweep([0.1], phi_min, phi_min + 1e-3 * phi_maj, psi, ref, beta=0.01)[0]
    assert rec["dist_bound_holds"] and not rec["gap_bound_holds"]


# ----------------------------------------------------------------------------- MaxMin
def test_maxmin_duality_gap_is_zero():
    rng = np.random.default_rng(4)
    for K in (2, 3, 4):
        R, ref, beta = rng.normal(size=(K, 6)) * 2, rng.dirichlet(np.ones(6)), 0.3
        pi, w, hist = maxmin_policy(R, ref, beta)
        assert w.sum() == pytest.approx(1.0) and np.all(w >= 0)
        assert hist[-1]["gap"] <= 1e-12 * (1 + np.ptp(R, axis=1).max())
        primal = group_utilities(pi, R, ref, beta).min()
        dual = beta * np.log(ref @ np.exp((w @ R) / beta))
        assert primal == pytest.approx(dual, abs=1e-10)
        np.testing.assert_allclose(pi, kl_regularized_policy(w @ R, ref, beta))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_maxmin_matches_brute_force_on_three_responses(seed):
    rng = np.random.default_rng(seed)
    R, ref, beta = rng.normal(size=(2, 3)) * 2, rng.dirichlet(np.ones(3)), 0.5
    pi, _, _ = maxmin_policy(R, ref, beta)
    value = group_utilities(pi, R, ref, beta).min()

    # Epigraph form with SLSQP: max t  s.t.  J_u(p) >= t, p in the simplex.
    def J(p):
        return R @ p - beta * kl_divergence(p, ref)

    res = minimize(
        lambda x: -x[3],
        np.r_[ref, J(ref).min()],
        method="SLSQP",
        bounds=[(1e-12, 1)] * 3 + [(None, None)],
        constraints=[
            {"type": "eq", "fun": lambda x: x[:3].sum() - 1},
            {"type": "ineq", "fun": lambda x: J(x[:3]) - x[3]},
        ],
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    assert value == pytest.approx(-res.fun, abs=1e-6)
    np.testing.assert_allclose(pi, res.x[:3], atol=1e-4)
    # Grid over the 2-simplex: nothing beats the MaxMin value.
    a, b = np.meshgrid(np.linspace(1e-6, 1, 301), np.linspace(1e-6, 1, 301))
    P = np.stack([a.ravel(), b.ravel(), 1 - a.ravel() - b.ravel()], axis=1)
    P = P[P[:, 2] > 1e-9]
    kl = np.sum(P * np.log(P / ref), axis=1)
    grid = (P @ R.T - beta * kl[:, None]).min(axis=1)
    assert grid.max() <= value + 1e-10
    assert grid.max() >= value - 1e-2


def test_maxmin_beats_every_single_reward_policy_in_the_worst_case():
    psi, phi_min, phi_maj, ref = planted()
    R, beta = np.vstack([phi_min, phi_maj]) @ psi.T, 0.5
    pi, _, _ = maxmin_policy(R, ref, beta)
    worst = group_utilities(pi, R, ref, beta).min()
    for eta in np.linspace(0, 1, 11):
        phi = pooled_reward(np.vstack([phi_min, phi_maj]), [eta, 1 - eta], psi)
        pi_single = kl_regularized_policy(psi @ phi, ref, beta)
        assert worst >= group_utilities(pi_single, R, ref, beta).min() - 1e-10


def test_maxmin_identical_groups_is_the_single_reward_policy():
    rng = np.random.default_rng(5)
    r, ref, beta = rng.normal(size=5), rng.dirichlet(np.ones(5)), 0.8
    pi, _, hist = maxmin_policy(np.vstack([r, r, r]), ref, beta)
    np.testing.assert_allclose(pi, kl_regularized_policy(r, ref, beta), atol=1e-12)
    # Identical groups: the duality gap is zero at once (one iteration), up to round-off
    # of w @ grad - min(grad) over equal entries (-1.1e-16 was seen on another CPU).
    assert len(hist) == 1
    assert hist[-1]["gap"] == pytest.approx(0.0, abs=1e-12)


def test_maxmin_dominated_group_gets_zero_weight():
    # Group 1 is better off than group 0 everywhere, so only group 0 binds.
    r0 = np.array([0.0, 1.0, 2.0])
    pi, w, _ = maxmin_policy(np.vstack([r0, r0 + 5.0]), np.full(3, 1 / 3), 0.5)
    np.testing.assert_allclose(w, [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(pi, kl_regularized_policy(r0, np.full(3, 1 / 3), 0.5))


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_name_the_field():
    ref = np.full(3, 1 / 3)
    R = np.zeros((2, 3))
    psi, phi_min, phi_maj, ref8 = planted()
    with pytest.raises(ValueError, match="beta"):
        kl_regularized_policy([0, 1, 2], ref, 0.0)
    with pytest.raises(ValueError, match="beta"):
        maxmin_policy(R, ref, -1.0)
    with pytest.raises(ValueError, match="pi_ref must sum to 1"):
        kl_regularized_policy([0, 1, 2], [0.5, 0.5, 0.5], 1.0)
    with pytest.raises(ValueError, match="pi_ref must be finite and strictly positive"):
        maxmin_policy(R, [1.0, 0.0, 0.0], 1.0)
    with pytest.raises(ValueError, match="pi_ref must have 3 entries"):
        maxmin_policy(R, np.full(4, 0.25), 1.0)
    with pytest.raises(ValueError, match="rewards"):
        maxmin_policy(np.zeros((2, 3, 1)), ref, 1.0)
    with pytest.raises(ValueError, match="reward must be a 1-D"):
        kl_regularized_policy(R, ref, 1.0)
    with pytest.raises(ValueError, match="etas must sum to 1"):
        pooled_reward(np.vstack([phi_min, phi_maj]), [0.3, 0.3], psi)
    with pytest.raises(ValueError, match="etas must have 2 entries"):
        pooled_reward(np.vstack([phi_min, phi_maj]), [1.0], psi)
    with pytest.raises(ValueError, match="phis"):
        pooled_reward(np.ones((2, 5)), [0.5, 0.5], psi)
    with pytest.raises(ValueError, match="psi"):
        pooled_reward(phi_min, [1.0], np.ones(3))
    with pytest.raises(ValueError, match="lam"):
        pooled_reward(phi_min, [1.0], psi, lam=-1.0)
    with pytest.raises(ValueError, match="etas_minority"):
        impossibility_sweep([1.5], phi_min, phi_maj, psi, ref8, 1.0)
    with pytest.raises(ValueError, match="pi must be a distribution"):
        group_utilities([0.5, 0.6, -0.1], R, ref, 1.0)
    with pytest.raises(ValueError, match="n_iter"):
        maxmin_policy(R, ref, 1.0, n_iter=0)


def test_transposed_rewards_are_blamed_on_rewards_not_pi_ref():
    """rewards (n, K) instead of (K, n): the message named pi_ref ("must have 2 entries")."""
    R = np.array([[0.0, 1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0, 0.0]])  # (K=2, n=5)
    ref = np.full(5, 0.2)
    with pytest.raises(
        ValueError, match=r"^rewards must be a \(K groups, n responses\).*transposed"
    ):
        maxmin_policy(R.T, ref, 1.0)
    with pytest.raises(ValueError, match=r"^rewards must be .*rewards\.T"):
        group_utilities(ref, R.T, ref, 1.0)
    with pytest.raises(ValueError, match="rewards must hold numbers"):
        maxmin_policy(R.astype(str), ref, 1.0)


def test_kl_divergence_checks_its_distributions():
    """Mismatched lengths were a numpy index error; q = 0 under p > 0 returned inf."""
    with pytest.raises(ValueError, match="p and q must have the same shape"):
        kl_divergence([0.5, 0.5], [0.2, 0.3, 0.5])
    with pytest.raises(ValueError, match="q must be > 0 wherever p > 0"):
        kl_divergence([0.5, 0.5], [1.0, 0.0])
    with pytest.raises(ValueError, match="p contains NaN"):
        kl_divergence([np.nan, 1.0], [0.5, 0.5])
    assert kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(np.log(2))


def test_preference_tv_and_bounds_name_their_arguments():
    psi, phi_min, phi_maj, _ = planted()
    with pytest.raises(ValueError, match=r"phi_u must have shape \(3,\) to match psi"):
        preference_tv(phi_min[:2], phi_maj, psi)  # was a numpy vstack error
    with pytest.raises(ValueError, match="eps must be a finite number in \\[0, 1\\]"):
        impossibility_bounds(2.0, 0.2, 1.0, psi)  # a TV distance is at most 1
    with pytest.raises(ValueError, match="eta must be a finite number"):
        impossibility_bounds(0.2, float("nan"), 1.0, psi)


PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None)


@PROPERTY
@given(
    R=st.tuples(st.integers(1, 3), st.integers(2, 5)).flatmap(
        lambda shape: arrays(np.float64, shape, elements=st.floats(-2, 2, width=16))
    ),
    beta=st.sampled_from([0.3, 1.0, 3.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_maxmin_policy_ignores_the_order_of_groups_and_beats_each_single_reward(R, beta, seed):
    """The MaxMin value min_u J_u(pi) does not depend on how the groups are numbered, and no
    single group's KL-optimal policy has a better worst case."""
    n = R.shape[1]
    ref = np.full(n, 1.0 / n)
    pi, _, _ = maxmin_policy(R, ref, beta)
    perm = np.random.default_rng(seed).permutation(R.shape[0])
    pi_p, _, _ = maxmin_policy(R[perm], ref, beta)
    worst = group_utilities(pi, R, ref, beta).min()
    assert group_utilities(pi_p, R, ref, beta).min() == pytest.approx(worst, abs=1e-8)
    for r in R:
        single = kl_regularized_policy(r, ref, beta)
        assert group_utilities(single, R, ref, beta).min() <= worst + 1e-8
