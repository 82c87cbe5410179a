"""Hard EM for a mixture of reward models with a *cross-fitted* E-step.

The paper's hard EM (MaxMin-RLHF, Alg. 1; :func:`pluralign.core.mixture.fit_em`) trains
group k's reward on its users' comparisons and then scores every user on *the same*
comparisons. A reward that can memorise its training comparisons (a neural reward model,
or a linear one with more features than comparisons) then fits its own users better than
any other group's reward does, whatever their true group: every starting assignment is a
fixed point and EM stops after one iteration with nobody moved.

Cross-fitting removes that: every user's comparisons are split into ``n_folds`` folds; for
fold f each group's reward is fitted on the group's comparisons *outside* f and scores the
comparisons *in* f. So ``S[h, k]`` is user h's out-of-fold log-likelihood under group k, a
held-out quantity that memorisation cannot inflate. The E-step and the empty-group rule
are those of :mod:`pluralign.core.mixture`; the final rewards are refitted on every
comparison of the final groups.

The loop is generic over the reward model: ``fit(rows, slot) -> model`` and
``margins(model, rows) -> r(y_w) - r(y_l)`` of those rows, so linear (:func:`fit_linear`)
and neural rewards share it. ``slot = (fold, group)`` names the model being fitted (fold -1:
the final refit), so a neural reward can warm-start the same slot across iterations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from tqdm.auto import tqdm

from pluralign.core.mixture import (
    fit_em,
    hard_e_step,
    prepare_users,
    user_log_likelihoods,
)

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
M = TypeVar("M")


@dataclass
class CrossFitEMResult(Generic[M]):
    """A cross-fitted hard-EM fit. ``moved[i]``: share of users whose group changed at
    E-step i; ``heldout_log_likelihood[i]``: the out-of-fold log-likelihood
    ``sum_h S[h, g(h)]`` of the assignment that E-step i started from."""

    user_ids: NDArray[Any]  # (n_users,) sorted
    initial: IntArray  # (n_users,) the starting assignment (round robin)
    assignment: IntArray  # (n_users,) the final one
    assignments: list[IntArray]  # after each E-step
    moved: list[float]
    heldout_log_likelihood: list[float]
    converged: bool
    models: list[M]  # per group, refitted on all of the group's comparisons
    folds: IntArray  # (n,) fold of each comparison

    @property
    def n_iter(self) -> int:
        return len(self.assignments)

    @property
    def moved_from_start(self) -> float:
        """Share of users whose final group differs from their starting one."""
        return float(np.mean(self.assignment != self.initial))


def user_folds(uidx: ArrayLike, n_folds: int, seed: int) -> IntArray:
    """Fold (0..n_folds-1) of each comparison: every user's comparisons are shuffled and
    dealt round robin, so each user has about ``1 / n_folds`` of them in every fold."""
    uidx = np.asarray(uidx, dtype=np.int64)
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2 (cross-fitting holds a fold out), got {n_folds}")
    rng = np.random.default_rng(seed)
    folds = np.empty(uidx.size, dtype=np.int64)
    order = np.argsort(uidx, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(uidx[order]) != 0])
    for rows in np.split(order, starts[1:]):
        if rows.size < n_folds:
            raise ValueError(
                f"user index {uidx[rows[0]]} has {rows.size} comparisons, fewer than "
                f"n_folds={n_folds}: every user needs one in each fold"
            )
        folds[rng.permutation(rows)] = np.arange(rows.size) % n_folds
    return folds


def cross_fitted_hard_em(
    fit: Callable[[IntArray, tuple[int, int]], M],
    margins: Callable[[M, IntArray], FloatArray],
    users: ArrayLike,
    n_groups: int,
    *,
    n_folds: int = 2,
    n_iter: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> CrossFitEMResult[M]:
    """Hard EM over ``n_groups`` rewards from the paper's round-robin start (user h ->
    h mod K), with the E-step on out-of-fold margins (module docstring).

    ``fit(rows, (fold, k))`` trains group k's reward for ``fold`` (-1: the final refit) on
    comparisons ``rows`` (indices into ``users``); ``margins(model, rows)`` returns
    ``r(y_w) - r(y_l)`` of those comparisons, shape (len(rows),).
    Stops when no user changes group, or after ``n_iter`` E-steps."""
    uidx, ids, c = prepare_users(users, np.asarray(users).shape[0], None)
    K, n_users = int(n_groups), ids.size
    if not 1 <= K <= n_users:
        raise ValueError(f"n_groups must be in [1, {n_users}] (users), got {n_groups}")
    folds = user_folds(uidx, n_folds, seed)
    counts = np.bincount(uidx, minlength=n_users)
    g = np.arange(n_users, dtype=np.int64) % K
    initial = g.copy()
    assignments: list[IntArray] = []
    moved: list[float] = []
    lls: list[float] = []
    converged = False
    bar = tqdm(total=n_iter, desc="cross-fitted EM", disable=not progress)
    for _ in range(n_iter):
        L = np.empty((uidx.size, K))  # out-of-fold margins
        for f in range(n_folds):
            test = np.flatnonzero(folds == f)
            for k in range(K):
                train = np.flatnonzero((g[uidx] == k) & (folds != f))
                L[test, k] = margins(fit(train, (f, k)), test)
        S = user_log_likelihoods(L, uidx, c, n_users)  # (n_users, K), held out
        lls.append(float(S[np.arange(n_users), g].sum()))
        new = hard_e_step(S, counts)
        assignments.append(new.copy())
        moved.append(float(np.mean(new != g)))
        bar.update()
        bar.set_postfix(moved=f"{moved[-1]:.2f}", heldout_ll=f"{lls[-1]:.1f}")
        if np.array_equal(new, g):
            converged = True
            break
        g = new
    bar.close()
    models = [fit(np.flatnonzero(g[uidx] == k), (-1, k)) for k in range(K)]
    return CrossFitEMResult(
        user_ids=ids,
        initial=initial,
        assignment=g,
        assignments=assignments,
        moved=moved,
        heldout_log_likelihood=lls,
        converged=converged,
        models=models,
        folds=folds,
    )


def fit_linear(
    chosen: ArrayLike, rejected: ArrayLike, lam: float
) -> tuple[
    Callable[[IntArray, tuple[int, int]], FloatArray], Callable[[FloatArray, IntArray], FloatArray]
]:
    """``fit`` and ``margins`` of a linear BT reward ``r(y) = theta . psi(y)`` on feature
    rows (n, d): ``fit`` is the ridge BT fit of :func:`pluralign.core.mixture.fit_em` with
    one group, so the M-step is the same as the in-sample EM's (a convex fit: the slot is
    ignored)."""
    Z_w = np.asarray(chosen, dtype=np.float64)
    Z_l = np.asarray(rejected, dtype=np.float64)
    Z = Z_w - Z_l

    def fit(rows: IntArray, slot: tuple[int, int] = (-1, 0)) -> FloatArray:
        if rows.size == 0:
            raise ValueError("a group has no comparisons to fit in this fold")
        one_user = np.zeros(rows.size, dtype=np.int64)
        return fit_em(Z_w[rows], Z_l[rows], one_user, 1, n_iter=1, lam=lam).theta[0]

    def margins(theta: FloatArray, rows: IntArray) -> FloatArray:
        return Z[rows] @ theta

    return fit, margins


__all__ = [
    "CrossFitEMResult",
    "cross_fitted_hard_em",
    "fit_linear",
    "user_folds",
]
