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

Calibration. Held-out scores are only as good as the reward's confidence. A reward trained
to separation (an overfitted neural reward model; a linear one with tiny ridge and more
features than comparisons) has large out-of-fold margins that are sometimes wrong, and a few
confident mistakes then dominate each user's ``S[h, k]``: with a 10:1 minority, EM
oscillates (10-20% of users moving per iteration until ``n_iter`` runs out) and returns a
chance-level assignment whose held-out log-likelihood is far below the true groups'. So by
default each E-step first fits one temperature per group, ``T_k = argmin_{T >= 1} -sum log
sigma(m / T)`` over the out-of-fold margins of group k's own users (one parameter per group,
fitted on held-out predictions), and scores with ``margins / T_k``. T only cools: a reward
whose held-out margins are all right would otherwise be sharpened without bound, and one
later mistake would then dominate as before. On 10:1 planted mixtures (the scenarios of
``tests/core/test_crossfit_em.py``, measured on 32 seeds each; the tests keep a few) this
recovered the groups wherever a well-regularised reward does, and left well-regularised
rewards where they were (the same ARI as with T free in [1e-2, 1e4]); a shared temperature,
a bounded score ``log(eps + (1 - 2 eps) sigma(m))`` and restarts alone were weaker (restarts
chosen by an uncalibrated held-out likelihood inherit its noise). Its failure mode: a group
whose reward has no skill on its own users gets a huge T, scores every user as a coin flip
and can keep poorly fitted users (1 seed in 32 of one scenario). ``n_starts > 1`` adds
random balanced starts and keeps the one whose final assignment has the best held-out log-
likelihood; start 0 is always the paper's round robin.

The loop is generic over the reward model: ``fit(rows, slot) -> model`` and
``margins(model, rows) -> r(y_w) - r(y_l)`` of those rows, so linear (:func:`fit_linear`)
and neural rewards share it. ``slot = (model, group)`` names the model being fitted, so a
neural reward can warm-start the same slot across iterations: ``model = s * n_folds + f``
for fold f of start s (just ``f`` with one start), -1 for the final refit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize_scalar
from scipy.special import log_expit
from tqdm.auto import tqdm

from pluralign.core.mixture import (
    fit_em,
    hard_e_step,
    prepare_users,
    user_log_likelihoods,
    warn_not_converged,
)

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
M = TypeVar("M")
Fit = Callable[[IntArray, tuple[int, int]], M]
Margins = Callable[[M, IntArray], FloatArray]
# Temperatures are fitted as an inverse scale b = 1 / T in [1 / _T_MAX, 1 / _T_MIN]: the
# held-out BT loss -sum log sigma(b m) is convex in b, so the 1-D search finds its minimum.
_T_MIN, _T_MAX = 1.0, 1e4


@dataclass
class CrossFitEMResult(Generic[M]):
    """A cross-fitted hard-EM fit (of the start with the best final held-out likelihood).

    ``moved[i]``: share of users whose group changed at E-step i; ``heldout_log_likelihood[i]``:
    the out-of-fold log-likelihood ``sum_h S[h, g(h)]`` of the assignment that E-step i started
    from, scored with ``temperatures[i]`` (K,), the per-group temperatures fitted at that
    E-step (all 1 with ``calibrate=False``). ``converged``: the last E-step moved nobody."""

    user_ids: NDArray[Any]  # (n_users,) sorted
    initial: IntArray  # (n_users,) the kept start's assignment (start 0: round robin)
    assignment: IntArray  # (n_users,) the final one
    assignments: list[IntArray]  # after each E-step
    moved: list[float]
    heldout_log_likelihood: list[float]
    converged: bool
    models: list[M]  # per group, refitted on all of the group's comparisons
    folds: IntArray  # (n,) fold of each comparison
    temperatures: list[FloatArray] = field(default_factory=list)  # per E-step, (K,)
    calibrate: bool = True
    start: int = 0  # which start was kept (0: the round robin)
    # per start: held-out log-likelihood of its final assignment (NaN for a lone start that
    # did not converge: not computed, it decides nothing) and whether it converged
    start_heldout_log_likelihood: list[float] = field(default_factory=list)
    start_converged: list[bool] = field(default_factory=list)

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


def fit_temperature(margins: ArrayLike, weights: ArrayLike | None = None) -> float:
    """The temperature T minimising the BT log-loss ``-sum_i w_i log sigma(m_i / T)`` of
    held-out margins, in [1, 1e4]: T > 1 cools an overconfident reward, and T = 1e4 flattens
    a reward with no skill to a coin flip. T never goes below 1: sharpening a reward whose
    held-out margins happen to be all right has no bound (the loss falls as T -> 0)."""
    m = np.asarray(margins, dtype=np.float64)
    w = np.ones_like(m) if weights is None else np.asarray(weights, dtype=np.float64)
    if m.size == 0 or not np.any(w * m):
        return 1.0
    opt = minimize_scalar(
        lambda b: -float(w @ log_expit(b * m)),
        bounds=(1 / _T_MAX, 1 / _T_MIN),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return float(1.0 / opt.x)


def _out_of_fold_margins(
    fit: Fit[M],
    margins: Margins[M],
    uidx: IntArray,
    folds: IntArray,
    g: IntArray,
    K: int,
    first_model: int = 0,
) -> FloatArray:
    """(n, K): comparison i's margin under the group-k reward of the fold model that did
    not train on i (models ``first_model + f``, see the module docstring)."""
    n_folds = int(folds.max()) + 1
    L = np.empty((uidx.size, K))
    for f in range(n_folds):
        test = np.flatnonzero(folds == f)
        for k in range(K):
            train = np.flatnonzero((g[uidx] == k) & (folds != f))
            L[test, k] = margins(fit(train, (first_model + f, k)), test)
    return L


def _heldout_scores(
    L: FloatArray, uidx: IntArray, c: FloatArray, g: IntArray, calibrate: bool
) -> tuple[FloatArray, FloatArray]:
    """(S (n_users, K) on ``L / T``, temperatures T (K,)); group k's T is fitted on the
    out-of-fold margins of its own users' comparisons (all 1 without ``calibrate``)."""
    K = L.shape[1]
    T = np.ones(K)
    if calibrate:
        for k in range(K):
            own = g[uidx] == k
            T[k] = fit_temperature(L[own, k], c[own])
    return user_log_likelihoods(L / T, uidx, c, g.size), T


def crossfit_log_likelihood(
    fit: Fit[M],
    margins: Margins[M],
    users: ArrayLike,
    groups: ArrayLike,
    folds: ArrayLike,
    *,
    calibrate: bool = True,
) -> float:
    """Out-of-fold log-likelihood ``sum_h S[h, g(h)]`` of any assignment ``groups`` (one per
    sorted user id) on the given ``folds``, scored as the E-step scores it: how to compare a
    result's ``heldout_log_likelihood`` with the planted groups'. Fits fold models in slots
    (f, k), so pass a ``fit`` that does not warm-start (e.g. :func:`fit_linear`)."""
    uidx, ids, c = prepare_users(users, np.asarray(users).shape[0], None)
    g = np.asarray(groups, dtype=np.int64)
    if g.shape != (ids.size,):
        raise ValueError(f"groups must hold one group per user ({ids.size}), got {g.shape}")
    L = _out_of_fold_margins(fit, margins, uidx, np.asarray(folds), g, int(g.max()) + 1)
    S, _ = _heldout_scores(L, uidx, c, g, calibrate)
    return float(S[np.arange(ids.size), g].sum())


@dataclass
class _Run:
    """One start's trajectory."""

    initial: IntArray
    assignment: IntArray
    assignments: list[IntArray]
    moved: list[float]
    lls: list[float]
    temperatures: list[FloatArray]
    converged: bool
    final_ll: float = float("nan")  # held-out log-likelihood of ``assignment``


def cross_fitted_hard_em(
    fit: Fit[M],
    margins: Margins[M],
    users: ArrayLike,
    n_groups: int,
    *,
    n_folds: int = 2,
    n_iter: int = 10,
    seed: int = 0,
    calibrate: bool = True,
    n_starts: int = 1,
    progress: bool = False,
) -> CrossFitEMResult[M]:
    """Hard EM over ``n_groups`` rewards from the paper's round-robin start (user h ->
    h mod K), with the E-step on out-of-fold margins (module docstring).

    ``fit(rows, (model, k))`` trains group k's reward on comparisons ``rows`` (indices into
    ``users``) for fold model ``model`` (-1: the final refit); ``margins(model, rows)``
    returns ``r(y_w) - r(y_l)`` of those comparisons, shape (len(rows),).
    ``calibrate``: score each group's margins at its fitted temperature (on by default: an
    overconfident reward otherwise makes EM oscillate). ``n_starts``: start 0 is the round
    robin, the others random balanced assignments from ``seed``; the start whose final
    assignment has the best held-out log-likelihood is kept (each start costs a full EM).
    Each start stops when no user changes group, or after ``n_iter`` E-steps; a kept start
    that stops at the cap gives ``converged=False`` and an ``EMNotConvergedWarning``."""
    uidx, ids, c = prepare_users(users, np.asarray(users).shape[0], None)
    K, n_users = int(n_groups), ids.size
    if not 1 <= K <= n_users:
        raise ValueError(f"n_groups must be in [1, {n_users}] (users), got {n_groups}")
    for name, v in (("n_iter", n_iter), ("n_starts", n_starts)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v}")
    folds = user_folds(uidx, n_folds, seed)
    counts = np.bincount(uidx, minlength=n_users)
    round_robin = np.arange(n_users, dtype=np.int64) % K
    rng = np.random.default_rng([seed, 1])  # the starts; ``seed`` alone draws the folds
    bar = tqdm(total=int(n_iter) * int(n_starts), desc="cross-fitted EM", disable=not progress)
    runs: list[_Run] = []
    for s in range(int(n_starts)):
        g = round_robin.copy() if s == 0 else rng.permutation(round_robin)
        run = _Run(g.copy(), g, [], [], [], [], False)
        for _ in range(int(n_iter)):
            L = _out_of_fold_margins(fit, margins, uidx, folds, g, K, s * n_folds)
            S, T = _heldout_scores(L, uidx, c, g, calibrate)
            run.temperatures.append(T)
            run.lls.append(float(S[np.arange(n_users), g].sum()))
            new = hard_e_step(S, counts)
            run.assignments.append(new.copy())
            run.moved.append(float(np.mean(new != g)))
            bar.update()
            bar.set_postfix(start=s, moved=f"{run.moved[-1]:.2f}", heldout_ll=f"{run.lls[-1]:.1f}")
            if np.array_equal(new, g):
                run.converged = True
                break
            g = new
        run.assignment = g
        if run.converged:  # the last E-step started from the final assignment
            run.final_ll = run.lls[-1]
        elif n_starts > 1:  # the final assignment's own held-out likelihood decides
            L = _out_of_fold_margins(fit, margins, uidx, folds, g, K, s * n_folds)
            S, _ = _heldout_scores(L, uidx, c, g, calibrate)
            run.final_ll = float(S[np.arange(n_users), g].sum())
        runs.append(run)
    bar.close()
    best = int(np.argmax([r.final_ll for r in runs])) if n_starts > 1 else 0
    run = runs[best]
    if not run.converged:
        warn_not_converged(
            "cross-fitted hard EM" + (f" (start {best} of {n_starts})" if n_starts > 1 else ""),
            len(run.moved),
            f"{run.moved[-1]:.0%} of users changed group",
            "Raise n_iter or n_starts; keep calibrate=True, or regularise the reward more "
            "(confident out-of-fold mistakes make users swap groups).",
        )
    g = run.assignment
    models = [fit(np.flatnonzero(g[uidx] == k), (-1, k)) for k in range(K)]
    return CrossFitEMResult(
        user_ids=ids,
        initial=run.initial,
        assignment=g,
        assignments=run.assignments,
        moved=run.moved,
        heldout_log_likelihood=run.lls,
        converged=run.converged,
        models=models,
        folds=folds,
        temperatures=run.temperatures,
        calibrate=bool(calibrate),
        start=best,
        start_heldout_log_likelihood=[r.final_ll for r in runs],
        start_converged=[r.converged for r in runs],
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
    "crossfit_log_likelihood",
    "fit_linear",
    "fit_temperature",
    "user_folds",
]
