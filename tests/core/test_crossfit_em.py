"""Cross-fitted hard EM: a planted mixture with a reward that memorises its training
comparisons. The paper's in-sample E-step stays at its round-robin start; the cross-fitted
one recovers the planted groups."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from pluralign.core.crossfit_em import cross_fitted_hard_em, fit_linear, user_folds
from pluralign.core.mixture import fit_em


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
