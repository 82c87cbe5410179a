"""EM mixtures of linear BT rewards: monotonicity, planted groups, M-step vs sklearn and scipy."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score

from pluralign.core import mixture
from pluralign.core.bradley_terry import fit_bt, win_matrix
from pluralign.core.mixture import (
    EMResult,
    fit_em,
    hard_e_step,
    log_sigmoid,
    run_em,
    select_n_groups,
    soft_e_step,
    user_log_likelihoods,
)


def planted(
    K: int,
    n_users: int = 60,
    per_user: int = 40,
    d: int = 8,
    seed: int = 0,
    scale: float = 3.0,
    theta: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Users in K linear BT groups; (chosen, rejected, users, true group per user, theta)."""
    rng = np.random.default_rng(seed)
    if theta is None:
        q, _ = np.linalg.qr(rng.normal(size=(d, K)))
        theta = scale * q.T  # (K, d): orthogonal rewards of norm `scale`
    groups = rng.permutation(np.arange(n_users) % K)  # random, so round-robin init isn't the truth
    users = np.repeat(np.arange(n_users), per_user)  # (n,)
    a, b = rng.normal(size=(2, users.size, d))
    a_wins = rng.uniform(size=users.size) < expit(((a - b) * theta[groups[users]]).sum(axis=1))
    chosen = np.where(a_wins[:, None], a, b)
    rejected = np.where(a_wins[:, None], b, a)
    return chosen, rejected, users, groups, theta


def single_user_problem(seed: int = 0, n: int = 300, d: int = 5):
    """One group's data for the M-step: (chosen, rejected, users, comparison weights)."""
    ch, rj, _, _, _ = planted(1, n_users=1, per_user=n, d=d, seed=seed, scale=1.5)
    w = np.random.default_rng(seed + 100).uniform(0.1, 2.0, size=n)
    return ch, rj, np.zeros(n, dtype=int), w


# tol=0 runs every iteration on purpose: the objective is checked at each one
@pytest.mark.filterwarnings("ignore::pluralign.core.mixture.EMNotConvergedWarning")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_em_never_decreases_penalized_log_likelihood(seed):
    ch, rj, u, _, _ = planted(3, per_user=10, scale=1.0, seed=seed)  # overlapping: many iters
    res = fit_em(ch, rj, u, 3, hard=False, tol=0.0, n_iter=25)
    ll = np.array(res.log_likelihood)
    assert ll.size >= 10
    assert np.all(np.diff(ll) >= -1e-10 * np.abs(ll[1:]))


@settings(max_examples=15, deadline=None, derandomize=True, database=None)
@given(
    K=st.integers(1, 3),
    n_users=st.integers(3, 12),
    per_user=st.integers(1, 8),
    lam=st.sampled_from([1e-3, 1e-2, 1.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_soft_em_objective_never_decreases_on_any_data(K, n_users, per_user, lam, seed):
    """EM's monotonicity as a property: any users (few comparisons, labels unrelated to any
    group structure), any K <= users, any ridge."""
    rng = np.random.default_rng(seed)
    K = min(K, n_users)
    ch, rj = rng.normal(size=(2, n_users * per_user, 3))
    users = np.repeat(np.arange(n_users), per_user)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an n_iter cap may warn; not the point
        res = fit_em(ch, rj, users, K, hard=False, tol=0.0, n_iter=15, lam=lam)
    ll = np.array(res.log_likelihood)
    assert np.all(np.diff(ll) >= -1e-9 * (1 + np.abs(ll[1:])))


@pytest.mark.parametrize("hard", [True, False])
@pytest.mark.parametrize("K", [2, 3])
def test_planted_groups_recovered(K, hard):
    ch, rj, u, groups, theta = planted(K, seed=K)
    res = fit_em(ch, rj, u, K, hard=hard)
    assert res.converged
    assert adjusted_rand_score(groups, res.assignment) >= 0.95
    np.testing.assert_array_equal(res.user_ids, np.arange(60))
    # Each fitted reward points along one planted reward.
    cos = res.theta @ theta.T / np.outer(*(np.linalg.norm(t, axis=1) for t in (res.theta, theta)))
    assert np.all(cos.max(axis=1) > 0.95)
    if hard:
        np.testing.assert_array_equal(res.responsibilities, np.eye(K)[res.assignment])


@pytest.mark.parametrize("weighted", [False, True])
def test_single_group_m_step_matches_sklearn(weighted):
    # sklearn minimizes 0.5 ||w||^2 + C sum_i s_i loss_i; ours (lam / 2) ||theta||^2 +
    # sum_i c_i loss_i. Dividing ours by lam gives sklearn's with C = 1 / lam.
    ch, rj, u, w = single_user_problem(seed=1)
    w = w if weighted else None
    lam = 0.3
    res = fit_em(ch, rj, u, 1, lam=lam, alt_weights=w)
    # log sigma(theta.z) is sklearn's loss for label 1 at x = z, or for label 0 at x = -z;
    # random signs give sklearn the two classes it needs.
    flip = np.random.default_rng(0).uniform(size=len(u)) < 0.5
    X = np.where(flip[:, None], rj - ch, ch - rj)
    clf = LogisticRegression(C=1.0 / lam, fit_intercept=False, solver="newton-cholesky", tol=1e-12)
    clf.fit(X, (~flip).astype(int), sample_weight=w)
    np.testing.assert_allclose(res.theta[0], clf.coef_[0], atol=1e-5)


def test_single_group_m_step_matches_scipy_minimize():
    ch, rj, u, w = single_user_problem(seed=2)
    Z, lam = ch - rj, 0.05

    def f(t):
        return -w @ np.log(expit(Z @ t)) + 0.5 * lam * t @ t

    def grad(t):
        return -Z.T @ (w * expit(-(Z @ t))) + lam * t

    ref = minimize(f, np.zeros(Z.shape[1]), jac=grad, method="BFGS", options={"gtol": 1e-10})
    res = fit_em(ch, rj, u, 1, lam=lam, alt_weights=w)
    np.testing.assert_allclose(res.theta[0], ref.x, atol=1e-6)
    assert res.log_likelihood[-1] == pytest.approx(-ref.fun, rel=1e-12)


def test_one_hot_features_reduce_to_fit_bt():
    """psi(y) = e_y: the M-step is bradley_terry's objective (w = 1), so the rewards agree."""
    rng = np.random.default_rng(3)
    m, n, lam = 6, 200, 0.5
    i = rng.integers(0, m, n)
    j = (i + rng.integers(1, m, n)) % m
    eye = np.eye(m)
    res = fit_em(eye[i], eye[j], np.zeros(n), 1, lam=lam)
    np.testing.assert_allclose(res.theta[0], fit_bt(win_matrix(i, j, m), lam=lam), atol=1e-9)


@pytest.mark.parametrize("hard", [True, False])
def test_assign_held_out_users(hard):
    ch, rj, u, groups, theta = planted(2, seed=5)
    res = fit_em(ch, rj, u, 2, hard=hard)
    _, g = res.assign(ch, rj, u)  # training users: the E-step rule gives the fit back
    np.testing.assert_array_equal(g, res.assignment)
    ch2, rj2, u2, groups2, _ = planted(2, n_users=20, seed=6, theta=theta)
    names = np.array([f"new{k:02d}" for k in range(20)])  # string ids, already sorted
    ids2, g2 = res.assign(ch2, rj2, names[u2])
    np.testing.assert_array_equal(ids2, names)
    assert adjusted_rand_score(groups2, g2) == 1.0
    # Group labels carry over: a new user lands in the group of training users alike.
    match = {t: np.bincount(res.assignment[groups == t]).argmax() for t in (0, 1)}
    np.testing.assert_array_equal(g2, [match[t] for t in groups2])


def test_soft_log_likelihood_of_matches_the_objective():
    ch, rj, u, _, _ = planted(2, seed=7)
    lam = 0.1
    res = fit_em(ch, rj, u, 2, hard=False, lam=lam)
    penalty = 0.5 * lam * np.sum(res.theta**2)
    assert res.log_likelihood_of(ch, rj, u) - penalty == pytest.approx(res.log_likelihood[-1])


# soft EM on one planted group converges slowly; the choice of K is what is tested
@pytest.mark.filterwarnings("ignore::pluralign.core.mixture.EMNotConvergedWarning")
@pytest.mark.parametrize("hard", [True, False])
@pytest.mark.parametrize("K", [1, 2, 3])
def test_select_n_groups_picks_planted_k(K, hard):
    ch, rj, u, _, _ = planted(K, seed=0)
    best, table = select_n_groups(ch, rj, u, hard=hard, seed=0)
    assert best == K
    assert [row["n_groups"] for row in table] == [1, 2, 3, 4]


@pytest.mark.parametrize("hard", [True, False])
def test_alt_weights_of_ones_equal_none(hard):
    ch, rj, u, _, _ = planted(2, seed=8)
    a = fit_em(ch, rj, u, 2, hard=hard)
    b = fit_em(ch, rj, u, 2, hard=hard, alt_weights=np.ones(len(u)))
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.log_likelihood == b.log_likelihood


@pytest.mark.parametrize("hard", [True, False])
def test_doubled_weights_equal_duplicated_comparisons(hard):
    ch, rj, u, _, _ = planted(2, seed=9)
    dup = u == 5  # user 5's comparisons, twice
    w = np.where(dup, 2.0, 1.0)
    a = fit_em(ch, rj, u, 2, hard=hard, alt_weights=w)
    b = fit_em(*(np.concatenate([x, x[dup]]) for x in (ch, rj, u)), 2, hard=hard)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=1e-12)
    np.testing.assert_array_equal(a.assignment, b.assignment)


def test_huge_features_do_not_overflow():
    ch, rj, u, _, _ = planted(2, seed=10)
    base = fit_em(ch, rj, u, 2)
    big = 1e4
    margins = (ch - rj) @ np.full(ch.shape[1], 1.0)  # (n,), |m| up to ~1e5 once scaled
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        np.log(1.0 / (1.0 + np.exp(-big * margins)))  # the naive path
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        assert np.all(np.isfinite(log_sigmoid(big * margins)))
        res = fit_em(big * ch, big * rj, u, 2)
        held = res.log_likelihood_of(big * ch, big * rj + big, u)  # margins ~ -1e4 and below
    assert np.isfinite(held) and np.all(np.isfinite(res.log_likelihood))
    np.testing.assert_array_equal(res.assignment, base.assignment)
    np.testing.assert_allclose(big * res.theta, base.theta, rtol=1e-3)  # ridge ~ lam / big^2


def test_empty_group_is_reseeded():
    ch, rj, _, _, _ = planted(1, n_users=1, per_user=20, seed=11)
    n_users = 6  # identical users: equal scores, so every user ties into group 0
    users = np.repeat(np.arange(n_users), 20)
    res = fit_em(np.tile(ch, (n_users, 1)), np.tile(rj, (n_users, 1)), users, 2)
    assert res.converged
    assert np.bincount(res.assignment, minlength=2).min() >= 1


# capped runs on purpose: determinism and the choice among restarts are tested
@pytest.mark.filterwarnings("ignore::pluralign.core.mixture.EMNotConvergedWarning")
@pytest.mark.parametrize("hard", [True, False])
def test_deterministic_given_seed_and_restarts_keep_the_best(hard):
    ch, rj, u, _, _ = planted(4, per_user=8, scale=1.0, seed=12)
    a, b = (fit_em(ch, rj, u, 4, hard=hard, n_restarts=3, seed=7) for _ in range(2))
    np.testing.assert_array_equal(a.theta, b.theta)
    np.testing.assert_array_equal(a.assignment, b.assignment)
    one = fit_em(ch, rj, u, 4, hard=hard, n_restarts=1, seed=7)  # = restart 0 of the three
    assert a.log_likelihood[-1] >= one.log_likelihood[-1]


def _good():
    ch, rj, u, _, _ = planted(2, n_users=6, per_user=5, d=3, seed=13)
    return {"chosen": ch, "rejected": rj, "users": u, "n_groups": 2}


def _nan(a, value=np.nan):
    a = a.copy()
    a[0, 0] = value
    return a


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda k: {"rejected": k["rejected"][:, :2]}, "rejected"),
        (lambda k: {"chosen": k["chosen"][:, 0], "rejected": k["rejected"][:, 0]}, "chosen"),
        (lambda k: {"chosen": k["chosen"][:0], "rejected": k["rejected"][:0]}, "chosen"),
        (lambda k: {"chosen": _nan(k["chosen"])}, "chosen"),
        (lambda k: {"rejected": _nan(k["rejected"], np.inf)}, "rejected"),
        (lambda k: {"users": k["users"][:-1]}, "users"),
        (lambda k: {"users": k["users"][:, None]}, "users"),
        (lambda k: {"n_groups": 0}, "n_groups"),
        (lambda k: {"n_groups": 7}, "n_groups"),
        (lambda k: {"n_groups": 1.5}, "n_groups"),
        (lambda k: {"alt_weights": -np.ones(30)}, "alt_weights"),
        (lambda k: {"alt_weights": np.full(30, np.nan)}, "alt_weights"),
        (lambda k: {"alt_weights": np.ones(29)}, "alt_weights"),
        (lambda k: {"lam": 0.0}, "lam"),
        (lambda k: {"n_iter": 0}, "n_iter"),
        (lambda k: {"n_restarts": 0}, "n_restarts"),
        (lambda k: {"tol": -1.0}, "tol"),
    ],
)
def test_bad_inputs_raise_naming_the_field(change, field):
    kwargs = _good()
    kwargs.update(change(kwargs))
    with pytest.raises(ValueError, match=field):
        fit_em(**kwargs)


def test_bad_inputs_to_select_and_assign():
    k = _good()
    args = (k["chosen"], k["rejected"], k["users"])
    for bad, field in [({"holdout_fraction": 1.0}, "holdout_fraction"), ({"rule": "x"}, "rule")]:
        with pytest.raises(ValueError, match=field):
            select_n_groups(*args, candidates=(1, 2), **bad)
    res = fit_em(**k)
    with pytest.raises(ValueError, match="features"):
        res.assign(k["chosen"][:, :2], k["rejected"][:, :2], k["users"])


# --------------------------------------------------------------------------- the shared EM loop


def _fixed_margins():
    """4 users x 3 comparisons whose margins never change (the M-step only records): users
    0, 1 fit group 0 (positive margins there), users 2, 3 fit group 1."""
    uidx = np.repeat(np.arange(4), 3)
    rng = np.random.default_rng(0)
    good, bad = rng.uniform(1.0, 3.0, size=12), rng.uniform(-3.0, -1.0, size=12)
    fits_0 = uidx < 2
    margins = np.stack([np.where(fits_0, good, bad), np.where(fits_0, bad, good)], axis=1)
    c = rng.uniform(0.5, 1.5, size=12)
    return uidx, margins, c


def test_run_em_hard_trains_on_each_groups_rows_and_stops_when_nothing_moves():
    uidx, margins, c = _fixed_margins()
    calls = []

    def m_step(it, k, rows, w):
        calls.append((it, k, rows, w))

    init = np.array([0, 1, 0, 1])
    trace = run_em(
        m_step,
        lambda: margins,
        uidx,
        c,
        init,
        2,
        hard=True,
        n_iter=10,
        tol=0.0,
        penalty=lambda: 0.25,
    )
    S = user_log_likelihoods(margins, uidx, c, 4)
    truth = np.array([0, 0, 1, 1])
    # iteration 0 trains group k on the rows of its initial users, with weights c
    assert [(it, k) for it, k, _, _ in calls] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for (_, k, rows, w), groups in zip(calls, [init, init, truth, truth], strict=True):
        np.testing.assert_array_equal(rows, np.flatnonzero(groups[uidx] == k))
        np.testing.assert_array_equal(w, c[rows])  # a copy of the weights
    assert trace.converged and len(trace.log_likelihood) == 2  # the 2nd E-step repeats
    np.testing.assert_array_equal(trace.assignment, truth)
    assert [a.tolist() for a in trace.assignments] == [truth.tolist()] * 2
    np.testing.assert_array_equal(trace.responsibilities, np.eye(2)[truth])
    np.testing.assert_allclose(trace.weights, [0.5, 0.5])
    # objective after each M-step: sum_h S[h, g(h)] of the groups trained on, minus penalty
    want = [S[np.arange(4), g].sum() - 0.25 for g in (init, truth)]
    np.testing.assert_allclose(trace.log_likelihood, want, rtol=1e-12)


def test_run_em_soft_weights_are_the_pi_of_the_last_e_step():
    uidx, margins, c = _fixed_margins()
    margins = margins / 4  # overlapping groups: pi moves for several iterations
    calls = []

    def m_step(it, k, rows, w):
        calls.append((it, k, rows, w))

    init = np.array([0, 1, 0, 1])
    trace = run_em(m_step, lambda: margins, uidx, c, init, 2, hard=False, n_iter=100, tol=1e-12)
    S = user_log_likelihoods(margins, uidx, c, 4)
    # The same recursion by hand: pi_t = mean of the previous responsibilities.
    pi, gamma = np.eye(2)[init].mean(axis=0), np.eye(2)[init]
    pis, gammas, lls = [], [gamma], []
    for _ in range(len(trace.log_likelihood)):
        pis.append(pi)
        gamma, ll_h = soft_e_step(S, pi)
        gammas.append(gamma)
        lls.append(ll_h.sum())
        pi = gamma.mean(axis=0)
    assert trace.converged and len(lls) > 3
    np.testing.assert_allclose(trace.log_likelihood, lls, rtol=1e-12)
    np.testing.assert_allclose(trace.weights, pis[-1], rtol=1e-12)  # not gamma.mean(axis=0)
    np.testing.assert_allclose(trace.responsibilities, gammas[-1], rtol=1e-12)
    np.testing.assert_array_equal(trace.assignment, np.argmax(gammas[-1], axis=1))
    # every soft M-step sees all rows, weighted by the current responsibilities
    for it, k, rows, w in calls:
        assert rows is None
        np.testing.assert_allclose(w, c * gammas[it][uidx, k], rtol=1e-12)


def test_fit_em_and_fit_neural_em_share_run_em():
    """Both mixtures are one EM loop: fit_em's result is the trace of ``run_em`` (for the
    kept restart); the neural side is checked in tests/training/test_neural_mixture.py."""
    ch, rj, u, _, _ = planted(2, n_users=20, per_user=10, seed=14)
    for hard in (True, False):
        traces: list = []

        def spy(*args, traces=traces, **kwargs):
            traces.append(run_em(*args, **kwargs))
            return traces[-1]

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(mixture, "run_em", spy)
            res = fit_em(ch, rj, u, 2, hard=hard, n_restarts=3, seed=1)
        assert len(traces) == 3
        finals = [t.log_likelihood[-1] for t in traces]
        kept = traces[int(np.argmax(finals))]  # the first best, as fit_em keeps it
        assert res.log_likelihood is kept.log_likelihood
        assert res.assignments is kept.assignments and res.converged == kept.converged
        assert res.weights is kept.weights and res.assignment is kept.assignment
        assert res.responsibilities is kept.responsibilities
        assert res.n_iter == len(kept.log_likelihood)


def test_fit_em_records_its_initial_assignment():
    ch, rj, u, _, _ = planted(3, n_users=12, per_user=10, seed=15)
    res = fit_em(ch, rj, u, 3)
    np.testing.assert_array_equal(res.initial, np.arange(12) % 3)  # round robin, as the paper
    # restarts > 0 start from random balanced permutations of the round robin
    restarts = [fit_em(ch, rj, u, 3, n_restarts=4, seed=s) for s in range(3)]
    for r in restarts:
        assert sorted(r.initial.tolist()) == sorted((np.arange(12) % 3).tolist())


# --------------------------------------------------------------------------- the hard E-step rule


def test_hard_assign_is_argmax_s_even_against_unequal_shares():
    """A hard fit with shares 0.75 / 0.25: user 3's S favours group 1 by 0.5 nats, less than
    log 3, so the MAP rule (argmax log pi + S) would say group 0. Hard EM assigns by argmax S
    and ``assign`` must do the same for these (or held-out) users (mutant M08)."""
    theta = np.array([[1.0], [-1.0]])  # (K=2, d=1): margin z under group 0, -z under group 1
    res = EMResult(
        user_ids=np.arange(4),
        assignment=np.array([0, 0, 0, 1]),
        responsibilities=np.eye(2)[[0, 0, 0, 1]],
        theta=theta,
        weights=np.array([0.75, 0.25]),
        log_likelihood=[0.0],
        n_iter=1,
        converged=True,
        hard=True,
    )
    z = np.array([[3.0], [3.0], [2.0], [3.0], [-0.5]])  # chosen - rejected per comparison
    users = np.array([0, 0, 1, 2, 3])
    S = user_log_likelihoods(z @ theta.T, users, np.ones(5), 4)  # (4, 2)
    assert 0 < S[3, 1] - S[3, 0] < np.log(3)  # argmax S and the MAP group disagree
    assert np.argmax(S[3] + np.log(res.weights)) == 0
    ids, groups = res.assign(z, np.zeros_like(z), users)
    np.testing.assert_array_equal(ids, np.arange(4))
    np.testing.assert_array_equal(groups, hard_e_step(S, np.bincount(users)))
    np.testing.assert_array_equal(groups, [0, 0, 0, 1])
    _, held_out = res.assign(z[-1:], np.zeros((1, 1)), ["new"])
    assert held_out.tolist() == [1]


def test_an_emptied_group_is_reseeded_with_the_worst_fit_user():
    """Every user prefers group 0, emptying group 1; the user moved there is the one with the
    lowest mean log-likelihood per comparison under its group: user 2 (-1.5), not the lowest
    total (user 1: -6 over 10 comparisons) nor the best fit (user 3) (mutant M09)."""
    S = np.array([[-1.0, -50.0], [-6.0, -50.0], [-3.0, -50.0], [-0.5, -50.0]])
    counts = np.array([1, 10, 2, 1])  # means under group 0: -1, -0.6, -1.5, -0.5
    np.testing.assert_array_equal(hard_e_step(S, counts), [0, 0, 1, 0])
