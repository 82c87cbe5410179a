"""Weighted Bradley-Terry MLE: derivatives, optimum vs scipy and choix, the paper's identities."""

from __future__ import annotations

import choix
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import softmax

from pluralign.core.bradley_terry import (
    average_win_rates,
    fit_bt,
    gradient,
    hessian,
    objective,
    stationarity_residual,
    win_matrix,
)


def random_comparisons(
    m: int, n: int, seed: int, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n BT comparisons among m alternatives with planted scores; (winners, losers, scores)."""
    rng = np.random.default_rng(seed)
    scores = scale * rng.normal(size=m)
    i = rng.integers(0, m, n)
    j = (i + rng.integers(1, m, n)) % m  # j != i
    i_wins = rng.uniform(size=n) < 1.0 / (1.0 + np.exp(scores[j] - scores[i]))
    return np.where(i_wins, i, j), np.where(i_wins, j, i), scores


@pytest.fixture
def problem() -> tuple[np.ndarray, np.ndarray]:
    """A dense fractional win matrix and positive weights, m = 7."""
    rng = np.random.default_rng(1)
    P = rng.uniform(size=(7, 7))
    P = P / (P + P.T)  # P[i, j] + P[j, i] = 1, like empirical win fractions
    return P, rng.uniform(0.05, 1.0, size=7)


def central_diff(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    return np.array([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(len(x))])


@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_gradient_and_hessian_match_finite_differences(problem, lam):
    P, w = problem
    r = np.random.default_rng(2).normal(size=7)
    g_fd = central_diff(lambda x: objective(x, P, lam, w), r)
    np.testing.assert_allclose(gradient(r, P, lam, w), g_fd, rtol=1e-6, atol=1e-8)
    H_fd = central_diff(lambda x: gradient(x, P, lam, w), r)
    np.testing.assert_allclose(hessian(r, P, lam, w), H_fd, rtol=1e-6, atol=1e-8)


def test_objective_is_stable_for_huge_margins():
    P = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert np.isfinite(objective(np.array([800.0, -800.0]), P, 0.0))
    assert np.all(np.isfinite(hessian(np.array([800.0, -800.0]), P, 0.0)))


@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_fit_matches_scipy_minimize(problem, lam):
    P, w = problem
    r = fit_bt(P, lam, w)
    res = minimize(
        objective,
        np.zeros(7),
        args=(P, lam, w),
        jac=gradient,
        method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000},
    )
    ref = res.x - np.dot(w, res.x) / w.sum()  # same gauge as fit_bt (matters for lam = 0)
    np.testing.assert_allclose(r, ref, atol=1e-6)
    assert np.abs(gradient(r, P, lam, w)).max() < 1e-10


def test_fit_matches_choix_opt_pairwise():
    # choix.opt_pairwise minimizes  alpha * sum_i r_i^2 + sum_{(a, b) in data} -log sigma(r_a - r_b)
    # (opt.py, PairwiseFcts.objective). With P = win counts, sum_{(a,b)} = sum_{i,j} P[i, j], so
    # our f(r) = sum P[i,j] (-log sigma(r_i - r_j)) + (lam/2) sum r^2 is choix's with alpha = lam/2.
    m, lam = 8, 0.8
    win, los, _ = random_comparisons(m, 120, seed=3)
    P = win_matrix(win, los, m)
    data = list(zip(win.tolist(), los.tolist(), strict=True))
    ref = choix.opt_pairwise(m, data, alpha=lam / 2, tol=1e-12)  # Newton-CG xtol
    np.testing.assert_allclose(fit_bt(P, lam), ref, atol=1e-6)


def test_fit_matches_choix_ilsr_unregularized():
    # choix.ilsr_pairwise's alpha is NOT an L2 penalty: it adds rate alpha to every edge of the
    # LSR Markov chain, and the fixed point then solves grad NLL(r) + alpha m (m softmax(r) - 1)
    # = 0, the gradient of alpha m (m logsumexp(r) - sum r). So only alpha = 0 <-> lam = 0
    # shares an optimum; both are then centred to mean 0 (choix's log_transform, our gauge).
    m = 8
    win, los, _ = random_comparisons(m, 200, seed=4)
    P = win_matrix(win, los, m)
    data = list(zip(win.tolist(), los.tolist(), strict=True))
    ref = choix.ilsr_pairwise(m, data, alpha=0.0, tol=1e-13, max_iter=10_000)
    np.testing.assert_allclose(fit_bt(P, 0.0), ref - ref.mean(), atol=1e-6)
    # The alpha > 0 fixed point, checked with our gradient (alpha = 0.3).
    reg = choix.ilsr_pairwise(m, data, alpha=0.3, tol=1e-13, max_iter=10_000)
    penalty_grad = 0.3 * m * (m * softmax(reg) - 1.0)
    np.testing.assert_allclose(gradient(reg, P, 0.0) + penalty_grad, 0.0, atol=1e-8)


@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_three_cycle_gives_equal_rewards(lam):
    P = np.zeros((3, 3))
    P[0, 1] = P[1, 2] = P[2, 0] = 1.0
    np.testing.assert_allclose(fit_bt(P, lam), 0.0, atol=1e-12)


def test_no_mle_without_regularization_on_separable_data():
    P = np.triu(np.ones((4, 4)), k=1)  # 0 beats everyone, 1 beats 2 and 3, ...: a total order
    with pytest.raises(ValueError, match="not strongly connected"):
        fit_bt(P, lam=0.0)
    two_islands = np.kron(np.eye(2), np.ones((2, 2)))  # never compared across the islands
    with pytest.raises(ValueError, match="not strongly connected"):
        fit_bt(two_islands, lam=0.0)
    assert np.all(np.isfinite(fit_bt(P, lam=1e-3)))  # the ridge restores a finite optimum


def test_unit_weights_equal_no_weights(problem):
    P, _ = problem
    np.testing.assert_array_equal(fit_bt(P, 0.5, np.ones(7)), fit_bt(P, 0.5))


def test_scaling_weights_rescales_lam(problem):
    # f(r; c w, lam) = c^2 f(r; w, lam / c): data terms carry w_i w_j, the ridge only w_i.
    P, w = problem
    c, lam = 3.0, 0.6
    r = np.random.default_rng(5).normal(size=7)
    assert objective(r, P, lam, c * w) == pytest.approx(c**2 * objective(r, P, lam / c, w))
    np.testing.assert_allclose(fit_bt(P, lam, c * w), fit_bt(P, lam / c, w), atol=1e-9)


def split_into_clone(P: np.ndarray, w: np.ndarray, k: int, self_win: float):
    """Add an exact clone of alternative k (new last index); k and its clone share w_k."""
    m = len(w)
    Q = np.zeros((m + 1, m + 1))
    Q[:m, :m] = P
    Q[m, :m], Q[:m, m] = P[k], P[:, k]
    Q[k, m] = Q[m, k] = self_win  # annotators indifferent between identical responses
    w2 = np.append(w, w[k] / 2)
    w2[k] = w[k] / 2
    return Q, w2


@pytest.mark.parametrize("lam", [0.0, 1.0])
@pytest.mark.parametrize("self_win", [0.0, 0.5])
def test_weighted_mle_invariant_to_exact_clone_with_split_weight(problem, lam, self_win):
    # With r_clone = r_k, the clone's data terms (w_k/2) w_j P[k, j] (twice) and ridge terms
    # (lam/2)(w_k/2) r_k^2 (twice) add up to the original ones, and the k-clone terms have zero
    # gradient there when Q[k, clone] = Q[clone, k]; the new objective is symmetric in
    # (k, clone) and convex, so its optimum is the old one with r_clone = r_k.
    P, w = problem
    r = fit_bt(P, lam, w)
    Q, w2 = split_into_clone(P, w, k=2, self_win=self_win)
    r2 = fit_bt(Q, lam, w2)
    np.testing.assert_allclose(r2[:7], r, atol=1e-9)
    assert r2[7] == pytest.approx(r[2], abs=1e-9)


def test_unweighted_mle_is_not_clone_robust(problem):
    # Result 1 of the paper: adding a clone with a full vote moves the other alternatives.
    P, _ = problem
    r = fit_bt(P, 1.0)
    Q, _ = split_into_clone(P, np.ones(7), k=2, self_win=0.5)
    assert np.abs(fit_bt(Q, 1.0)[:7] - r).max() > 1e-2


@pytest.mark.parametrize("lam", [0.0, 0.4])
def test_optimum_satisfies_stationarity_and_win_rate_identity(problem, lam):
    P, w = problem
    r = fit_bt(P, lam, w)
    np.testing.assert_allclose(stationarity_residual(r, P, lam, w), 0.0, atol=1e-10)
    assert np.dot(w, r) == pytest.approx(0.0, abs=1e-10)  # weighted-centred optimum
    emp, model = average_win_rates(r, P, w)
    if lam == 0:  # the paper's characterization: model and empirical win rates agree
        np.testing.assert_allclose(model, emp, atol=1e-10)
    else:  # the ridge pulls each r_k to 0, so emp - model has the sign of r_k
        assert np.all(np.sign(emp - model) == np.sign(r))


def test_zero_weight_alternatives_drop_out(problem):
    P, w = problem
    w = w.copy()
    w[[1, 4]] = 0.0
    keep = np.array([0, 2, 3, 5, 6])
    r = fit_bt(P, 0.5, w)
    assert r[1] == 0.0 and r[4] == 0.0
    np.testing.assert_allclose(r[keep], fit_bt(P[np.ix_(keep, keep)], 0.5, w[keep]), atol=1e-12)


def test_larger_problem_recovers_planted_scores():
    m = 150
    win, los, scores = random_comparisons(m, 40_000, seed=6)
    r = fit_bt(win_matrix(win, los, m), 0.0)
    assert np.abs(r - (scores - scores.mean())).max() < 0.5
    assert np.corrcoef(r, scores)[0, 1] > 0.98


def test_win_matrix_counts_and_weights():
    win, los = np.array([0, 0, 2, 1]), np.array([1, 1, 0, 2])
    P = win_matrix(win, los, 3)
    assert P[0, 1] == 2 and P[2, 0] == 1 and P[1, 2] == 1 and P.sum() == 4
    assert win_matrix(win, los, 3, weights=[1.0, 0.5, 2.0, 0.0])[0, 1] == 1.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"P": np.full((2, 2), np.nan)}, "P contains NaN"),
        ({"P": np.array([[0, np.inf], [1, 0]])}, "P contains NaN or inf"),
        ({"P": -np.ones((2, 2))}, "P must be non-negative"),
        ({"P": np.ones((2, 3))}, "P must be a square"),
        ({"P": np.ones(3)}, "P must be a square"),
        ({"P": np.zeros((0, 0))}, "P is empty"),
        ({"weights": np.ones(3)}, r"weights must have shape \(2,\)"),
        ({"weights": np.array([1.0, -1.0])}, "weights must be non-negative"),
        ({"weights": np.zeros(2)}, "weights are all zero"),
        ({"weights": np.array([1.0, np.nan])}, "weights contain NaN"),
        ({"lam": -1.0}, "lam must be"),
        ({"lam": np.nan}, "lam must be"),
    ],
)
def test_fit_rejects_bad_input(kwargs, match):
    args = {"P": np.ones((2, 2)), "lam": 1.0, "weights": None} | kwargs
    with pytest.raises(ValueError, match=match):
        fit_bt(**args)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([0, 1], [1], 2), "equal length"),
        (([0, 2], [1, 0], 2), r"indices in \[0, 2\)"),
        (([0, 1], [0, 0], 2), "must differ"),
        (([0.5], [1.0], 2), "integer indices"),
        (([0], [1], 0), "m must be"),
    ],
)
def test_win_matrix_rejects_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        win_matrix(np.asarray(args[0]), np.asarray(args[1]), args[2])


@pytest.mark.parametrize(("lam", "weighted"), [(0.0, False), (0.5, False), (0.5, True)])
def test_sparse_cg_path_solves_the_dense_problem(lam: float, weighted: bool) -> None:
    """m = 600 with few compared pairs takes fit_bt's sparse-CG path; check it against the
    dense gradient (the public reference) and, unweighted at lam = 0, against choix."""
    m, n = 600, 6000
    rng = np.random.default_rng(7)
    scores = rng.normal(size=m)
    i = rng.integers(0, m, n)
    j = (i + rng.integers(1, m, n)) % m
    i_wins = rng.uniform(size=n) < 1.0 / (1.0 + np.exp(scores[j] - scores[i]))
    ring, nxt = np.arange(m), (np.arange(m) + 1) % m  # strongly connected
    win = np.concatenate([np.where(i_wins, i, j), ring, nxt])
    los = np.concatenate([np.where(i_wins, j, i), nxt, ring])
    P = win_matrix(win, los, m)
    w = rng.uniform(0.2, 2.0, size=m) if weighted else None
    r = fit_bt(P, lam, w)
    g = gradient(r, P, lam, w)
    assert np.max(np.abs(g)) < 1e-8 * np.abs(P).sum() / m
    if lam == 0 and not weighted:
        ref = choix.ilsr_pairwise(m, list(zip(win, los, strict=True)), tol=1e-13, max_iter=10_000)
        np.testing.assert_allclose(r - r.mean(), ref - ref.mean(), atol=1e-6)


# --------------------------------------------------------------------------- boundary checks


def test_fit_bt_rejects_a_string_win_matrix_and_accepts_lists() -> None:
    """np.asarray(P, dtype=float) would parse strings: a P read as text must fail, naming P;
    nested lists are arrays."""
    with pytest.raises(ValueError, match="P must hold numbers"):
        fit_bt(np.array([["0", "1"], ["1", "0"]]))
    np.testing.assert_array_equal(fit_bt([[0, 1], [2, 0]]), fit_bt(np.array([[0, 1], [2, 0]])))


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (([], [], 3), "winners and losers are empty"),  # was numpy's cast TypeError
        (([0, 1], [1, 5], 3), r"^losers must be indices in \[0, 3\)"),
        (([-1, 1], [1, 0], 3), r"^winners must be indices in \[0, 3\)"),
        (([0, 1], [1, 0], 2.5), "m must be an integer"),
        ((["0"], ["1"], 2), "winners must be integer indices"),
    ],
)
def test_win_matrix_names_the_bad_argument(args, match) -> None:
    with pytest.raises(ValueError, match=match):
        win_matrix(*args)


@pytest.mark.parametrize("fn", [objective, gradient, hessian, stationarity_residual])
def test_rewards_must_match_the_win_matrix(fn) -> None:
    """r of the wrong length was a numpy broadcast error; NaN r passed through."""
    with pytest.raises(ValueError, match=r"r must have shape \(2,\) to match P"):
        fn(np.zeros(3), np.ones((2, 2)), 1.0)
    with pytest.raises(ValueError, match="r contains NaN"):
        fn(np.array([0.0, np.nan]), np.ones((2, 2)), 1.0)


def test_average_win_rates_checks_r() -> None:
    with pytest.raises(ValueError, match=r"r must have shape \(2,\)"):
        average_win_rates([0.0], np.ones((2, 2)))


def test_fit_bt_max_iter_must_be_a_positive_integer() -> None:
    """max_iter = 0 used to run no iteration and blame convergence (a RuntimeError)."""
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1"):
        fit_bt(np.ones((2, 2)), max_iter=0)


# --------------------------------------------------------------------------- properties

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None)


@st.composite
def win_matrices(draw, connected: bool = True) -> np.ndarray:
    """Integer win counts among 2-6 alternatives; every pair compared both ways when
    ``connected`` (so the lam = 0 MLE is finite)."""
    m = draw(st.integers(2, 6))
    counts = draw(st.lists(st.integers(0, 5), min_size=m * m, max_size=m * m))
    P = np.array(counts, dtype=np.float64).reshape(m, m)
    if connected:
        P += 1.0
    np.fill_diagonal(P, 0.0)
    return P


@PROPERTY
@given(P=win_matrices(), shift=st.floats(-50, 50), lam_zero=st.booleans())
def test_objective_at_lam_zero_is_shift_invariant_and_fit_bt_fixes_the_gauge(
    P, shift, lam_zero
) -> None:
    """BT likelihoods depend on score differences only: adding a constant changes nothing at
    lam = 0, and fit_bt's answer is weighted-centred (sum_k w_k r_k = 0) for any lam."""
    m = P.shape[0]
    w = np.linspace(0.5, 1.5, m)
    r = np.linspace(-1.0, 1.0, m)
    assert objective(r + shift, P, 0.0, w) == pytest.approx(objective(r, P, 0.0, w), rel=1e-9)
    lam = 0.0 if lam_zero else 0.3
    fit = fit_bt(P, lam, w)
    assert abs(w @ fit) < 1e-8 * (1 + np.abs(fit).max())


@PROPERTY
@given(P=win_matrices(), seed=st.integers(0, 2**32 - 1))
def test_fit_bt_is_equivariant_to_relabelling_the_alternatives(P, seed) -> None:
    """Renumbering the alternatives renumbers their rewards, nothing else."""
    perm = np.random.default_rng(seed).permutation(P.shape[0])
    np.testing.assert_allclose(fit_bt(P[np.ix_(perm, perm)], 0.0), fit_bt(P, 0.0)[perm], atol=1e-7)


@PROPERTY
@given(P=win_matrices(), scale=st.floats(0.1, 10.0))
def test_fit_bt_at_lam_zero_is_invariant_to_the_scale_of_the_counts(P, scale) -> None:
    """Counts or fractions: the unregularized MLE depends on win proportions only."""
    np.testing.assert_allclose(fit_bt(scale * P, 0.0), fit_bt(P, 0.0), atol=1e-7)
