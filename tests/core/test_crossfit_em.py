"""Cross-fitted hard EM: a planted mixture with a reward that memorises its training
comparisons. The paper's in-sample E-step stays at its round-robin start; the cross-fitted
one recovers the planted groups. A 10:1 mixture with a reward trained to separation (tiny
ridge, one indicator feature per comparison) has overconfident out-of-fold margins: the
uncalibrated E-step oscillates to a chance-level assignment, the calibrated one (default)
recovers the groups."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.special import expit, log_expit
from sklearn.metrics import adjusted_rand_score

from pluralign.core.crossfit_em import (
    cross_fitted_hard_em,
    crossfit_log_likelihood,
    fit_linear,
    fit_temperature,
    user_folds,
)
from pluralign.core.mixture import EMNotConvergedWarning, fit_em, run_em


def planted(memorise: bool, seed: int = 0):
    """20 users x 20 comparisons; users 0-9 prefer feature 0, users 10-19 feature 1 (so the
    round-robin start h mod 2 is as wrong as can be). ``memorise`` appends one indicator
    feature per comparison: a linear reward can then fit every training label exactly."""
    rng = np.random.default_rng(seed)
    n_users, per = 20, 20
    users = np.repeat(np.arange(n_users), per)
    group = (np.arange(n_users) >= n_users // 2).astype(int)
    x = rng.normal(size=(users.size, 2))
    theta = np.array([[3.0, 0.0], [0.0, 3.0]])[group[users]]
    win = rng.random(users.size) < 1 / (1 + np.exp(-(x * theta).sum(1)))
    z = np.where(win[:, None], x, -x)
    if memorise:
        z = np.hstack([z, 3.0 * np.eye(users.size)])
    return z, np.zeros_like(z), users, group


def overconfident(seed: int, per: int = 40, d: int = 5):
    """10:1 users (30 + 3, minority ids drawn from ``seed``), ``per`` comparisons each of
    ``d`` Gaussian features; the majority's BT reward is 3 x0, the minority's 3 (x1 - x0/2).
    Returns z = psi(y_w) - psi(y_l) (n, d), the user of each row and the group of each user."""
    rng = np.random.default_rng(seed)
    group = rng.permutation(np.r_[np.zeros(30, int), np.ones(3, int)])
    users = np.repeat(np.arange(group.size), per)
    x = rng.normal(size=(users.size, d))
    theta = np.zeros((2, d))
    theta[0, 0], theta[1, 0], theta[1, 1] = 3.0, -1.5, 3.0
    win = rng.random(users.size) < expit((x * theta[group[users]]).sum(1))
    return np.where(win[:, None], x, -x), users, group


def memorising_reward(z, lam: float, scale: float = 3.0):
    """``fit``/``margins`` of the ridge BT reward on the features [z, scale * I_n] (one
    indicator per comparison, as in ``planted(memorise=True)``): with a tiny ``lam`` it fits
    every training comparison (trained to separation) and its margins on held-out ones,
    which only see the weights w of z, are large and sometimes confidently wrong. Solved by
    Newton on the Schur complement of the diagonal indicator block: d x d, not (d + n)^2."""
    z = np.asarray(z, dtype=np.float64)

    def loss(Z, w, t):
        return -log_expit(Z @ w + scale * t).sum() + 0.5 * lam * (w @ w + t @ t)

    def fit(rows, slot=(-1, 0)):
        Z = z[rows]
        w, t = np.zeros(z.shape[1]), np.zeros(rows.size)
        f = loss(Z, w, t)
        for _ in range(200):
            p = expit(-(Z @ w + scale * t))
            D = p * (1 - p)
            gw, gt = lam * w - Z.T @ p, lam * t - scale * p
            htt = scale**2 * D + lam  # the indicator block of the Hessian, diagonal
            A = (Z * (D * lam / htt)[:, None]).T @ Z + lam * np.eye(z.shape[1])
            dw = np.linalg.solve(A, Z.T @ (scale * D * gt / htt) - gw)
            dt = -(gt + scale * D * (Z @ dw)) / htt
            slope = gw @ dw + gt @ dt
            if -slope <= 1e-12 * (1 + abs(f)):
                return w + dw
            step = 1.0
            while loss(Z, w + step * dw, t + step * dt) > f + 1e-4 * step * slope:
                step /= 2
            w, t = w + step * dw, t + step * dt
            f = loss(Z, w, t)
        raise RuntimeError("Newton did not converge")

    def margins(w, rows):
        return z[rows] @ w

    return fit, margins


def test_in_sample_e_step_is_stuck_when_the_reward_memorises():
    chosen, rejected, users, group = planted(memorise=True)
    res = fit_em(chosen, rejected, users, 2, n_iter=10, lam=1e-2)
    assert res.n_iter == 1 and res.converged
    np.testing.assert_array_equal(res.assignment, res.initial)  # nobody moved
    assert adjusted_rand_score(group, res.assignment) < 0.1


def test_cross_fitted_e_step_recovers_the_planted_groups():
    chosen, rejected, users, group = planted(memorise=True)
    fit, margins = fit_linear(chosen, rejected, lam=1e-2)
    res = cross_fitted_hard_em(fit, margins, users, 2, n_folds=2, n_iter=10, seed=0)
    assert adjusted_rand_score(group, res.assignment) == pytest.approx(1.0)
    assert res.converged and res.n_iter >= 2
    assert res.moved[0] > 0 and res.moved[-1] == 0
    assert res.moved_from_start == pytest.approx(0.5)  # h mod 2 vs first/second half
    assert len(res.heldout_log_likelihood) == res.n_iter
    assert res.heldout_log_likelihood[-1] > res.heldout_log_likelihood[0]
    assert len(res.models) == 2


def test_without_memorisation_both_e_steps_agree():
    chosen, rejected, users, group = planted(memorise=False)
    fit, margins = fit_linear(chosen, rejected, lam=1e-2)
    cross = cross_fitted_hard_em(fit, margins, users, 2, n_iter=10)
    inside = fit_em(chosen, rejected, users, 2, n_iter=10, lam=1e-2)
    assert adjusted_rand_score(group, cross.assignment) == pytest.approx(1.0)
    assert adjusted_rand_score(group, inside.assignment) == pytest.approx(1.0)


def test_final_models_are_the_ridge_fits_on_the_final_groups():
    chosen, rejected, users, _ = planted(memorise=False)
    fit, margins = fit_linear(chosen, rejected, lam=1e-2)
    res = cross_fitted_hard_em(fit, margins, users, 2, n_iter=10)
    for k in range(2):
        rows = np.flatnonzero(res.assignment[users] == k)
        ref = fit_em(chosen[rows], rejected[rows], users[rows], 1, lam=1e-2).theta[0]
        np.testing.assert_allclose(res.models[k], ref, rtol=1e-6, atol=1e-8)
    # and they score pairs as the planted rewards do: group k's model leans on feature k
    lean = [int(np.argmax(m[:2])) for m in res.models]
    assert sorted(lean) == [0, 1]


def test_user_folds_split_every_user_evenly():
    users = np.repeat(np.arange(5), [4, 5, 6, 7, 8])
    folds = user_folds(users, 2, seed=3)
    for u in range(5):
        per_fold = np.bincount(folds[users == u], minlength=2)
        assert per_fold.max() - per_fold.min() <= 1
    np.testing.assert_array_equal(folds, user_folds(users, 2, seed=3))
    assert not np.array_equal(folds, user_folds(users, 2, seed=4))


def test_user_folds_reject_users_with_too_few_comparisons():
    with pytest.raises(ValueError, match="user index 1 has 1 comparisons"):
        user_folds(np.array([0, 0, 1]), 2, seed=0)
    with pytest.raises(ValueError, match="n_folds must be >= 2"):
        user_folds(np.array([0, 0]), 1, seed=0)


# ------------------------------------------------------------------ overconfident rewards

OSCILLATING = (0, 1, 5, 6)  # seeds where the uncalibrated E-step stops at the cap


def test_memorising_reward_is_the_ridge_fit_on_indicator_features():
    z, users, _ = overconfident(0, per=4)
    rows = np.flatnonzero(users < 10)  # 40 comparisons, 5 + 40 features
    explicit = np.hstack([z, 3.0 * np.eye(z.shape[0])])
    ref = fit_linear(explicit, np.zeros_like(explicit), 1e-6)[0](rows)
    w = memorising_reward(z, 1e-6)[0](rows)
    np.testing.assert_allclose(w, ref[:5], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("seed", OSCILLATING)
def test_uncalibrated_e_step_oscillates_on_an_overconfident_reward(seed):
    """The failure the calibration fixes: users keep moving until n_iter runs out, the
    assignment is no better than chance, and it is far less likely held out than the truth."""
    z, users, group = overconfident(seed)
    fit, margins = memorising_reward(z, 1e-6)
    with pytest.warns(EMNotConvergedWarning, match="after 10 iterations"):
        res = cross_fitted_hard_em(fit, margins, users, 2, n_iter=10, seed=seed, calibrate=False)
    assert not res.converged and res.n_iter == 10 and res.moved[-1] > 0.05
    assert adjusted_rand_score(group, res.assignment) < 0.2
    raw = {"calibrate": False}
    truth = crossfit_log_likelihood(fit, margins, users, group, res.folds, **raw)
    found = crossfit_log_likelihood(fit, margins, users, res.assignment, res.folds, **raw)
    assert found < truth - 100  # nats
    np.testing.assert_array_equal(res.temperatures, np.ones((10, 2)))


@pytest.mark.parametrize("seed", OSCILLATING)
def test_calibrated_e_step_recovers_the_groups_of_an_overconfident_reward(seed):
    z, users, group = overconfident(seed)
    fit, margins = memorising_reward(z, 1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EMNotConvergedWarning)  # converged: no warning
        res = cross_fitted_hard_em(fit, margins, users, 2, n_iter=10, seed=seed)
    assert res.converged and res.moved[-1] == 0
    assert adjusted_rand_score(group, res.assignment) >= 0.8
    truth = crossfit_log_likelihood(fit, margins, users, group, res.folds)
    assert res.heldout_log_likelihood[-1] >= truth - 0.01 * abs(truth)
    # what the remedy did: both groups' margins were cooled (T ~ 2.5-5 here)
    assert res.calibrate and np.all(res.temperatures[-1] > 1.5)
    assert res.start == 0 and res.start_converged == [True]


def test_calibration_leaves_a_well_regularised_reward_alone():
    """Where the uncalibrated E-step works (a ridge reward on few features), the calibrated
    one finds the same groups and its temperatures stay near 1."""
    for seed in range(3):
        z, users, group = overconfident(seed)
        fit, margins = fit_linear(z, np.zeros_like(z), 1e-2)
        plain = cross_fitted_hard_em(fit, margins, users, 2, seed=seed, calibrate=False)
        calibrated = cross_fitted_hard_em(fit, margins, users, 2, seed=seed)
        assert adjusted_rand_score(group, plain.assignment) == pytest.approx(1.0)
        assert adjusted_rand_score(group, calibrated.assignment) == pytest.approx(1.0)
        majority = np.bincount(calibrated.assignment).argmax()
        assert 0.8 < calibrated.temperatures[-1][majority] < 1.25


def test_fit_temperature_minimises_the_held_out_log_loss():
    rng = np.random.default_rng(0)
    m = 10 * rng.normal(size=200)  # overconfident: labels are drawn at margin m / 10
    m = np.where(rng.random(200) < expit(m / 10), m, -m)
    T = fit_temperature(m)
    assert 5 < T < 20

    def loss(t):
        return -log_expit(m / t).sum()

    assert loss(T) <= min(loss(T * 1.01), loss(T / 1.01))
    assert fit_temperature(np.abs(m)) == pytest.approx(1.0)  # all right: never sharpened
    assert fit_temperature(-np.abs(m)) == pytest.approx(1e4)  # all wrong: a coin flip
    assert fit_temperature(np.zeros(3)) == 1.0


def test_several_starts_keep_the_best_held_out_likelihood():
    """A case where the round-robin start ends in a worse fixed point (a minority group that
    took majority users, its temperature high) and a random start finds the planted groups."""
    z, users, group = overconfident(3, per=20, d=2)
    fit, margins = fit_linear(z, np.zeros_like(z), 1e-2)
    one = cross_fitted_hard_em(fit, margins, users, 2, seed=3)
    assert one.converged and adjusted_rand_score(group, one.assignment) < 0.9
    assert one.start == 0 and one.start_heldout_log_likelihood == [one.heldout_log_likelihood[-1]]
    np.testing.assert_array_equal(one.initial, np.arange(33) % 2)  # start 0: round robin
    res = cross_fitted_hard_em(fit, margins, users, 2, seed=3, n_starts=3)
    lls = res.start_heldout_log_likelihood
    assert len(lls) == len(res.start_converged) == 3
    assert lls[0] == pytest.approx(one.heldout_log_likelihood[-1], rel=1e-12)  # same start 0
    assert res.start == int(np.argmax(lls)) != 0 and lls[res.start] > lls[0] + 1
    assert np.bincount(res.initial).tolist() == [17, 16]  # a random balanced start
    assert adjusted_rand_score(group, res.assignment) == pytest.approx(1.0)
    found = crossfit_log_likelihood(fit, margins, users, res.assignment, res.folds)
    assert found == pytest.approx(lls[res.start], rel=1e-9)
    with pytest.raises(ValueError, match="n_starts must be an integer >= 1"):
        cross_fitted_hard_em(fit, margins, users, 2, n_starts=0)


def test_starts_that_stop_at_the_cap_are_scored_on_their_final_assignment():
    """Without calibration starts do not rescue an overconfident reward: every start
    oscillates; each is scored on where it stopped, and the warning names the kept one."""
    z, users, group = overconfident(1, per=20, d=2)
    fit, margins = memorising_reward(z, 1e-6)
    with pytest.warns(EMNotConvergedWarning, match=r"\(start \d of 3\)"):
        res = cross_fitted_hard_em(fit, margins, users, 2, seed=1, calibrate=False, n_starts=3)
    assert res.start_converged == [False] * 3
    lls = res.start_heldout_log_likelihood
    assert np.all(np.isfinite(lls)) and res.start == int(np.argmax(lls))
    found = crossfit_log_likelihood(fit, margins, users, res.assignment, res.folds, calibrate=False)
    assert found == pytest.approx(lls[res.start], rel=1e-9)
    assert adjusted_rand_score(group, res.assignment) < 0.2


# ------------------------------------------------------------------ bookkeeping (M04-M06)


def test_moved_is_the_share_of_users_whose_group_changed():
    """Mutant M04 (moved as a count) survived the tests above."""
    z, users, _ = overconfident(0)
    fit, margins = memorising_reward(z, 1e-6)
    with pytest.warns(EMNotConvergedWarning):
        res = cross_fitted_hard_em(fit, margins, users, 2, n_iter=6, seed=0, calibrate=False)
    previous = [res.initial, *res.assignments[:-1]]
    for moved, new, old in zip(res.moved, res.assignments, previous, strict=True):
        assert 0.0 <= moved <= 1.0
        assert moved == pytest.approx(np.mean(new != old))
    assert max(res.moved) > 0


@pytest.mark.parametrize("calibrate", [False, True])
def test_first_heldout_log_likelihood_is_the_round_robin_starts(calibrate):
    """Mutant M05 (the held-out likelihood of the new assignment) survived: recompute the
    round-robin start's out-of-fold log-likelihood from the folds, fit and margins."""
    chosen, rejected, users, _ = planted(memorise=False)
    fit, margins = fit_linear(chosen, rejected, lam=1e-2)
    res = cross_fitted_hard_em(fit, margins, users, 2, seed=0, calibrate=calibrate)
    start = np.arange(20) % 2
    assert res.moved[0] > 0  # the new assignment differs, so M05 would be seen
    L = np.empty(users.size)  # each comparison under its user's start group, held out
    for f in range(2):
        test = np.flatnonzero(res.folds == f)
        for k in range(2):
            train = np.flatnonzero((start[users] == k) & (res.folds != f))
            mine = test[start[users[test]] == k]
            L[mine] = margins(fit(train, (f, k)), mine)
    T = res.temperatures[0]
    if calibrate:  # each group's T minimises the log-loss of its own users' margins
        for k in range(2):
            own = L[start[users] == k]

            def loss(t, own=own):
                return -log_expit(own / t).sum()

            assert loss(T[k]) <= min(loss(T[k] * 1.001), loss(T[k] / 1.001)) + 1e-9
    else:
        np.testing.assert_array_equal(T, [1.0, 1.0])
    by_hand = float(log_expit(L / T[start[users]]).sum())
    assert res.heldout_log_likelihood[0] == pytest.approx(by_hand, rel=1e-9)


def test_em_stops_at_the_first_e_step_that_moves_nobody():
    """Mutant M06 (no early stop) survived: iterations = first 0 in ``moved`` + 1 < cap."""
    chosen, rejected, users, _ = planted(memorise=False)
    fit, margins = fit_linear(chosen, rejected, lam=1e-2)
    res = cross_fitted_hard_em(fit, margins, users, 2, n_iter=30, seed=0)
    assert res.converged and 0.0 in res.moved
    assert res.n_iter == res.moved.index(0.0) + 1 < 30
    assert len(res.heldout_log_likelihood) == len(res.temperatures) == res.n_iter
    np.testing.assert_array_equal(res.assignment, res.assignments[-1])


# ------------------------------------------------------------------ the warning elsewhere


def test_fit_em_warns_when_it_stops_at_the_cap():
    chosen, rejected, users, _ = planted(memorise=False)
    with pytest.warns(EMNotConvergedWarning, match=r"fit_em \(hard EM\).* 1 iterations"):
        res = fit_em(chosen, rejected, users, 2, n_iter=1)
    assert not res.converged
    with pytest.warns(EMNotConvergedWarning, match=r"soft EM, the best of 2 restarts"):
        fit_em(chosen, rejected, users, 2, hard=False, n_iter=2, n_restarts=2, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EMNotConvergedWarning)
        assert fit_em(chosen, rejected, users, 2, n_iter=50).converged


def test_run_em_warns_unless_told_not_to():
    """A loop whose margins flip every user's preferred group at each iteration."""
    uidx = np.repeat(np.arange(4), 2)
    calls = [0]

    def margins():
        calls[0] += 1
        prefer = (np.arange(4) + calls[0]) % 2  # (n_users,)
        return np.where(np.eye(2)[prefer[uidx]] > 0, 2.0, -2.0)

    args = (lambda *a: None, margins, uidx, np.ones(8), np.arange(4) % 2, 2)
    with pytest.warns(EMNotConvergedWarning, match=r"3 iterations; at the last one 100% of"):
        trace = run_em(*args, hard=True, n_iter=3, tol=0.0)
    assert not trace.converged
    with warnings.catch_warnings():
        warnings.simplefilter("error", EMNotConvergedWarning)
        run_em(*args, hard=True, n_iter=3, tol=0.0, warn=False)
