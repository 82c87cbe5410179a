"""EM for a mixture of linear Bradley-Terry reward models (MaxMin-RLHF, Chakraborty et al., 2024).

Users fall in K groups; group u scores a response by r_u(x) = <theta_u, psi(x)>. A comparison i
of user h (``chosen`` preferred to ``rejected``) has BT probability sigma(theta_u . z_i) with
z_i = psi(x, y_w) - psi(x, y_l). With comparison weights c_i (``alt_weights``, 1 by default)
user h's log-likelihood under group u is

    S[h, u] = sum_{i in D_h} c_i log sigma(theta_u . z_i),

and EM increases the penalized objective (``EMResult.log_likelihood``)

    hard:  L = sum_h S[h, g(h)]                      - (lam / 2) sum_u ||theta_u||^2,
    soft:  L = sum_h logsumexp_u(log pi_u + S[h, u]) - (lam / 2) sum_u ||theta_u||^2.

The M-step is, per group, the BT loss of ``bradley_terry.py`` with alternatives replaced by
feature vectors: a ridge logistic regression without intercept on the rows z_i (all labels 1)
with row weights c_i gamma[h(i), u]. One-hot features psi(y) = e_y give back exactly
``bradley_terry.objective`` with unit weights (tested).

Implementation details:
1. Log-sigmoid everywhere (``log_sigmoid``): the authors' code takes ``log(sigmoid(...))``
   through ``exp``, which overflows for margins below about -709.
2. Hard-EM init as in the paper: users in sorted order, user h -> group h mod K; restarts
   > 0 use a random balanced assignment (a permutation of those labels) from ``seed``.
3. M-step: damped Newton (Cholesky of the d x d Hessian, Armijo backtracking), warm-started at
   the previous theta, stopped by the Newton decrement (scale-free, unlike a step-size test:
   features scaled by 1e4 give theta scaled by 1e-4), see ``_m_step``.
4. E-step: per-user sums by ``np.bincount`` over the comparisons, no Python loop over users.
5. An empty group in hard EM is re-seeded with the user whose mean log-likelihood per
   comparison under its own group is lowest, taken from a group with >= 2 users.
6. Stop when the hard assignment stops changing, or when the soft objective improves by
   less than ``tol * (1 + |L|)``; of several restarts the one with the best final L is kept.
   A fit that reaches ``n_iter`` first says so: ``converged=False`` and an
   :class:`EMNotConvergedWarning`, since its groups are wherever the last iteration left them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.linalg
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit, log_expit, logsumexp

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
_NEWTON_TOL = 1e-12  # on the Newton decrement -g.step, relative to 1 + |f|
_NEWTON_MAX_ITER = 200


class EMNotConvergedWarning(UserWarning):
    """An EM loop (linear, neural or cross-fitted) stopped at its ``n_iter`` cap while users
    were still changing group: the assignment it returns is a snapshot, not a fixed point."""


def warn_not_converged(
    what: str, n_iter: int, change: str, advice: str, stacklevel: int = 3
) -> None:
    """Issue the :class:`EMNotConvergedWarning` of every EM loop in one wording: which loop,
    how many iterations ran, what still changed at the last one, what to try.
    ``stacklevel=3`` names the line that called the public function that calls this."""
    warnings.warn(
        f"{what} did not converge: it stopped at the n_iter cap after {n_iter} iterations; "
        f"at the last one {change}. {advice}",
        EMNotConvergedWarning,
        stacklevel=stacklevel,
    )


def describe_last_change(
    assignments: list[IntArray], initial: IntArray, hard: bool, objective: list[float]
) -> str:
    """What an unconverged EM's last iteration still changed (for its warning): the share of
    users that moved (hard), or the objective's relative improvement (soft)."""
    if hard:
        before = assignments[-2] if len(assignments) > 1 else initial
        return f"{np.mean(assignments[-1] != before):.0%} of users changed group"
    if len(objective) > 1:
        rel = (objective[-1] - objective[-2]) / (1.0 + abs(objective[-1]))
        return f"the objective changed by {rel:.1e} relative to 1 + |L| (above tol)"
    return "there was no earlier objective to compare with (soft EM needs two iterations)"


def log_sigmoid(x: ArrayLike) -> FloatArray:
    """``log sigma(x) = -log(1 + exp(-x))``, finite for every finite x (no ``exp`` overflow)."""
    return log_expit(np.asarray(x, dtype=np.float64))


class MixtureScoring:
    """What every fitted mixture (linear here, neural in ``training.neural_mixture``) can
    do with comparisons once its group rewards give margins: score, assign, evaluate users.

    Subclasses hold ``weights`` (K,) and ``hard`` and implement :meth:`margins`."""

    weights: FloatArray
    hard: bool

    def margins(self, chosen: Any, rejected: Any) -> FloatArray:
        """(n, K) ``r_u(y_w) - r_u(y_l)`` of each comparison under each group's reward."""
        raise NotImplementedError

    def user_scores(
        self, chosen: Any, rejected: Any, users: ArrayLike, alt_weights: ArrayLike | None = None
    ) -> tuple[NDArray[Any], FloatArray]:
        """(sorted user ids, ``log pi_u + S[h, u]`` of shape (m, K)) for the given comparisons."""
        uidx, ids, c = prepare_users(users, len(chosen), alt_weights)
        margins = self.margins(chosen, rejected)
        with np.errstate(divide="ignore"):  # pi_u = 0 -> log pi_u = -inf, fine in logsumexp
            log_pi = np.log(self.weights)  # (K,)
        return ids, user_log_likelihoods(margins, uidx, c, ids.size) + log_pi

    def assign(
        self, chosen: Any, rejected: Any, users: ArrayLike, alt_weights: ArrayLike | None = None
    ) -> tuple[NDArray[Any], IntArray]:
        """Groups of (new) users by the E-step rule: (sorted user ids, groups), each (m,).

        Hard: ``argmax_u S[h, u]``; soft: the MAP group ``argmax_u log pi_u + S[h, u]``.
        """
        ids, post = self.user_scores(chosen, rejected, users, alt_weights)
        if self.hard:  # every group is non-empty, so pi_u > 0
            post -= np.log(self.weights)
        return ids, np.argmax(post, axis=1)

    def log_likelihood_of(
        self, chosen: Any, rejected: Any, users: ArrayLike, alt_weights: ArrayLike | None = None
    ) -> float:
        """Mixture log-likelihood of (held-out) users, ``sum_h logsumexp_u(log pi_u + S[h, u])``."""
        post = self.user_scores(chosen, rejected, users, alt_weights)[1]
        return float(logsumexp(post, axis=1).sum())


@dataclass
class EMResult(MixtureScoring):
    """A fitted mixture of K linear BT rewards; group labels 0..K-1 are arbitrary."""

    user_ids: NDArray[Any]  # (n_users,) distinct user ids, sorted
    assignment: IntArray  # (n_users,) group of each user: the last E-step's argmax
    responsibilities: FloatArray  # (n_users, K) gamma; one-hot for hard EM
    theta: FloatArray  # (K, d) reward parameters
    weights: FloatArray  # (K,) mixture weights pi (hard EM: fraction of users per group)
    log_likelihood: list[float]  # penalized objective L after each M-step
    n_iter: int  # EM iterations run
    converged: bool
    hard: bool
    assignments: list[IntArray] = field(default_factory=list)  # after each E-step
    initial: IntArray | None = None  # (n_users,) the starting assignment

    def margins(self, chosen: ArrayLike, rejected: ArrayLike) -> FloatArray:
        Z = _features(chosen, rejected)
        if Z.shape[1] != self.theta.shape[1]:
            raise ValueError(f"chosen has {Z.shape[1]} features, theta has {self.theta.shape[1]}")
        return Z @ self.theta.T


def _prepare(
    chosen: ArrayLike, rejected: ArrayLike, users: ArrayLike, alt_weights: ArrayLike | None
) -> tuple[FloatArray, IntArray, NDArray[Any], FloatArray]:
    """Validate; return z = chosen - rejected (n, d), user index (n,), sorted ids, weights (n,)."""
    Z = _features(chosen, rejected)
    uidx, ids, c = prepare_users(users, Z.shape[0], alt_weights)
    return Z, uidx, ids, c


def _features(chosen: ArrayLike, rejected: ArrayLike) -> FloatArray:
    """Validated feature differences z = chosen - rejected, (n, d)."""
    chosen = np.asarray(chosen, dtype=np.float64)
    rejected = np.asarray(rejected, dtype=np.float64)
    if chosen.ndim != 2:
        raise ValueError(f"chosen must be a 2-D (n, d) feature array, got shape {chosen.shape}")
    if rejected.shape != chosen.shape:
        raise ValueError(
            f"rejected must have the shape of chosen {chosen.shape}, got {rejected.shape}"
        )
    n, d = chosen.shape
    if n == 0 or d == 0:
        raise ValueError(f"chosen is empty (shape {chosen.shape}): need comparisons and features")
    for name, a in (("chosen", chosen), ("rejected", rejected)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or inf")
    return chosen - rejected


def prepare_users(
    users: ArrayLike, n: int, alt_weights: ArrayLike | None
) -> tuple[IntArray, NDArray[Any], FloatArray]:
    """Validate the user ids and weights of n comparisons: (user index (n,), ids, weights (n,))."""
    users = np.asarray(users)
    if users.ndim != 1:
        raise ValueError(f"users must be a 1-D array of user ids, got shape {users.shape}")
    if users.shape[0] != n:
        raise ValueError(f"users has {users.shape[0]} entries but chosen has {n} rows")
    ids, uidx = np.unique(users, return_inverse=True)  # every user has >= 1 comparison
    if alt_weights is None:
        c = np.ones(n)
    else:
        c = np.asarray(alt_weights, dtype=np.float64)
        if c.shape != (n,):
            raise ValueError(f"alt_weights must have shape ({n},), got {c.shape}")
        if not np.all(np.isfinite(c)) or np.any(c < 0) or not np.any(c > 0):
            raise ValueError("alt_weights must be finite, non-negative and not all zero")
    return uidx.astype(np.int64), ids, c


def user_log_likelihoods(margins: FloatArray, uidx: IntArray, c: FloatArray, m: int) -> FloatArray:
    """``S[h, u] = sum_{i in D_h} c_i log sigma(margins[i, u])``, shape (m, K).

    ``margins[i, u] = r_u(y_w) - r_u(y_l)`` of comparison i under group u's reward, from any
    reward model (linear here, neural in ``neural_mixture``); ``uidx`` maps rows to users 0..m-1.
    """
    L = log_sigmoid(margins)  # (n, K)
    L *= c[:, None]
    return np.stack([np.bincount(uidx, L[:, k], minlength=m) for k in range(L.shape[1])], 1)


def hard_e_step(S: FloatArray, counts: IntArray) -> IntArray:
    """Each user to its best group, ``argmax_u S[h, u]``, with empty groups re-seeded."""
    return _reseed_empty(np.argmax(S, axis=1), S, counts, S.shape[1])


def soft_e_step(S: FloatArray, pi: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Responsibilities ``gamma[h] ∝ pi * exp(S[h])`` and each user's ``logsumexp`` (n_users,)."""
    with np.errstate(divide="ignore"):
        post = np.log(pi) + S  # (n_users, K)
    ll_h = logsumexp(post, axis=1)  # (n_users,)
    return np.exp(post - ll_h[:, None]), ll_h


def _penalized_nll(theta: FloatArray, Z: FloatArray, c: FloatArray, lam: float) -> float:
    return float(-(c @ log_sigmoid(Z @ theta)) + 0.5 * lam * (theta @ theta))


def _m_step(Z: FloatArray, c: FloatArray, lam: float, theta: FloatArray) -> FloatArray:
    r"""Weighted ridge logistic regression without intercept (one group's BT M-step), (d,).

    .. math::
        f(\theta) = -\sum_i c_i \log\sigma(\theta \cdot z_i) + \frac{\lambda}{2}\|\theta\|^2,\quad
        \nabla f = \lambda\theta - Z^\top (c \odot \sigma(-m)),\quad
        \nabla^2 f = Z^\top \mathrm{diag}(c\, \sigma(m)\sigma(-m))\, Z + \lambda I,

    with margins ``m = Z theta``; ``lam > 0`` makes f strictly convex, so Newton from the warm
    start ``theta`` with backtracking converges (quadratically near the optimum).
    """
    d = Z.shape[1]
    f = _penalized_nll(theta, Z, c, lam)
    for _ in range(_NEWTON_MAX_ITER):
        m = Z @ theta  # (n,)
        p = expit(-m)  # sigma(-m) = 1 - sigma(m), without the cancellation
        g = lam * theta - Z.T @ (c * p)  # (d,)
        Zs = Z * np.sqrt(c * p * expit(m))[:, None]  # (n, d)
        H = Zs.T @ Zs  # (d, d); numpy calls syrk for A.T @ A
        H.flat[:: d + 1] += lam
        j = 1.0 / np.sqrt(H.diagonal())  # Jacobi scaling: features of very different scales
        chol = scipy.linalg.cho_factor(H * j[:, None] * j[None, :], check_finite=False)
        step = -j * scipy.linalg.cho_solve(chol, j * g, check_finite=False)  # (d,)
        slope = float(g @ step)  # -slope = Newton decrement^2 ~ 2 (f - min f); scale-free
        if -slope <= _NEWTON_TOL * (1.0 + abs(f)):
            return theta + step  # one more step: the error in theta is then squared
        t = 1.0
        while True:
            new = theta + t * step
            f_new = _penalized_nll(new, Z, c, lam)
            if f_new <= f + 1e-4 * t * slope:  # Armijo
                break
            t *= 0.5
            if t < 1e-12:
                raise RuntimeError("M-step line search failed; the features may be badly scaled")
        theta, f = new, f_new
    raise RuntimeError(f"M-step did not converge in {_NEWTON_MAX_ITER} Newton iterations")


def _reseed_empty(g: IntArray, S: FloatArray, counts: IntArray, K: int) -> IntArray:
    """Give each empty group the worst-fit user (lowest mean log-lik per comparison under its
    own group) among groups with >= 2 users; possible because K <= n_users."""
    sizes = np.bincount(g, minlength=K)
    fit = S[np.arange(g.size), g] / counts  # (n_users,)
    for k in np.flatnonzero(sizes == 0):
        movable = np.flatnonzero(sizes[g] >= 2)
        h = movable[np.argmin(fit[movable])]
        sizes[g[h]] -= 1
        g[h], sizes[k] = k, 1
    return g


@dataclass
class EMTrace:
    """What one EM run ends with (:func:`run_em`)."""

    assignment: IntArray  # (n_users,) argmax of the last responsibilities
    responsibilities: FloatArray  # (n_users, K)
    weights: FloatArray  # (K,) pi of the last E-step (hard: group shares of the assignment)
    log_likelihood: list[float]  # objective after each M-step
    assignments: list[IntArray]  # the assignment after each E-step
    converged: bool


def run_em(
    m_step: Callable[[int, int, IntArray | None, FloatArray], None],
    margins: Callable[[], FloatArray],
    uidx: IntArray,
    c: FloatArray,
    init: IntArray,
    n_groups: int,
    *,
    hard: bool,
    n_iter: int,
    tol: float,
    penalty: Callable[[], float] | None = None,
    warn: bool = True,
) -> EMTrace:
    """The EM loop shared by the linear (:func:`fit_em`) and neural
    (``training.neural_mixture.fit_neural_em``) mixtures; only the M-step and the margins
    differ between them.

    ``m_step(iteration, k, rows, w)`` refits group k's reward on comparisons ``rows`` (None:
    all of them) with row weights ``w = c * gamma[user, k]``; ``margins()`` returns (n, K)
    ``r_u(y_w) - r_u(y_l)`` under the current rewards; ``penalty()`` the regularizer
    subtracted from the objective. Hard EM stops when the assignment stops changing, soft EM
    when the objective improves by less than ``tol * (1 + |L|)``; reaching ``n_iter`` first
    gives ``converged=False`` and, with ``warn``, an :class:`EMNotConvergedWarning` (callers
    that pick among several runs pass ``warn=False`` and warn about the one they keep).
    """
    n_users, K = init.size, int(n_groups)
    counts = np.bincount(uidx, minlength=n_users)  # (n_users,) comparisons per user
    g = np.asarray(init, dtype=np.int64)
    gamma = np.eye(K)[g]  # (n_users, K)
    pi = gamma.mean(axis=0)
    lls: list[float] = []
    assignments: list[IntArray] = []
    converged = False
    for it in range(n_iter):
        pi = gamma.mean(axis=0)  # (K,)
        for k in range(K):  # M-step
            if hard:  # gamma is one-hot: the weights are c on the group's rows
                rows = np.flatnonzero(g[uidx] == k)
                m_step(it, k, rows, c[rows])
            else:
                m_step(it, k, None, c * gamma[uidx, k])
        S = user_log_likelihoods(margins(), uidx, c, n_users)  # (n_users, K); E-step
        pen = penalty() if penalty is not None else 0.0
        if hard:
            lls.append(float(S[np.arange(n_users), g].sum()) - pen)
            new = hard_e_step(S, counts)
            assignments.append(new.copy())
            if np.array_equal(new, g):
                converged = True
                break
            g = new
            gamma = np.eye(K)[g]
        else:
            gamma, ll_h = soft_e_step(S, pi)
            lls.append(float(ll_h.sum()) - pen)
            assignments.append(np.argmax(gamma, axis=1))
            if len(lls) > 1 and lls[-1] - lls[-2] < tol * (1.0 + abs(lls[-1])):
                converged = True
                break
    if warn and not converged:
        warn_not_converged(
            f"run_em ({'hard' if hard else 'soft'} EM)",
            len(lls),
            describe_last_change(assignments, np.asarray(init), hard, lls),
            "Raise n_iter; if groups keep swapping, start from several assignments and keep "
            "the best objective.",
        )
    return EMTrace(
        assignment=np.argmax(gamma, axis=1),
        responsibilities=gamma,
        weights=gamma.mean(axis=0) if hard else pi,
        log_likelihood=lls,
        assignments=assignments,
        converged=converged,
    )


def _run(Z, uidx, c, init, K, hard, n_iter, lam, tol) -> EMResult:
    """One linear EM run from the initial assignment ``init`` (n_users,)."""
    theta = np.zeros((K, Z.shape[1]))  # (K, d)

    def m_step(it: int, k: int, rows: IntArray | None, w: FloatArray) -> None:
        theta[k] = _m_step(Z if rows is None else Z[rows], w, lam, theta[k])

    trace = run_em(
        m_step,
        lambda: Z @ theta.T,
        uidx,
        c,
        init,
        K,
        hard=hard,
        n_iter=n_iter,
        tol=tol,
        penalty=lambda: 0.5 * lam * float(np.sum(theta * theta)),
        warn=False,  # fit_em warns about the restart it keeps
    )
    return EMResult(
        user_ids=np.empty(0),
        assignment=trace.assignment,
        responsibilities=trace.responsibilities,
        theta=theta,
        weights=trace.weights,
        log_likelihood=trace.log_likelihood,
        n_iter=len(trace.log_likelihood),
        converged=trace.converged,
        hard=hard,
        assignments=trace.assignments,
        initial=np.asarray(init).copy(),
    )


def fit_em(
    chosen: ArrayLike,
    rejected: ArrayLike,
    users: ArrayLike | Sequence[Hashable],
    n_groups: int,
    hard: bool = True,
    n_iter: int = 50,
    n_restarts: int = 1,
    seed: int = 0,
    lam: float = 1e-2,
    tol: float = 1e-8,
    alt_weights: ArrayLike | None = None,
) -> EMResult:
    """Fit a mixture of ``n_groups`` linear BT rewards by hard (paper) or soft EM.

    Parameters
    ----------
    chosen, rejected : array_like, shape (n, d)
        Features psi(x, y_w) of the preferred and psi(x, y_l) of the other response.
    users : array_like, shape (n,)
        User id of each comparison (sortable: ints or strings); users are grouped, not rows.
    n_groups : int
        K, between 1 and the number of distinct users.
    hard : bool
        Hard EM (each user to its best group, the paper's algorithm) or soft EM
        (responsibilities ``gamma[h, u] ∝ pi_u exp(S[h, u])`` and mixture weights pi).
    n_iter : int
        Maximum EM iterations per restart; a kept restart that reaches it without converging
        gives ``converged=False`` and an :class:`EMNotConvergedWarning`.
    n_restarts : int
        Restart 0 starts round-robin, others from random balanced assignments drawn from
        ``np.random.default_rng(seed)``; the restart with the best final objective is kept.
    lam : float
        Ridge strength ``lam > 0`` of each group's ``(lam / 2) ||theta_u||^2``.
    tol : float
        Soft EM stops once the objective improves by less than ``tol * (1 + |L|)``.
    alt_weights : array_like, shape (n,), optional
        Non-negative weights c_i multiplying comparison i's log-likelihood term wherever it
        enters (E-step, M-step, objective); a weight of 2 is the same as the comparison
        appearing twice. For the clone-robust weighted MLE pass ``w(y_w) * w(y_l)`` with ``w``
        the Voronoi weights of the alternatives (``clones.voronoi_weights``).

    Returns
    -------
    EMResult
    """
    Z, uidx, ids, c = _prepare(chosen, rejected, users, alt_weights)
    if int(n_groups) != n_groups or not 1 <= n_groups <= ids.size:
        raise ValueError(f"n_groups must be an integer in [1, {ids.size}] (users), got {n_groups}")
    for name, v in (("n_iter", n_iter), ("n_restarts", n_restarts)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v}")
    if not (np.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a finite number > 0 (the M-step needs it), got {lam}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    K = int(n_groups)
    rng = np.random.default_rng(seed)
    round_robin = np.arange(ids.size) % K  # (n_users,)
    best: EMResult | None = None
    for r in range(int(n_restarts)):
        init = round_robin.copy() if r == 0 else rng.permutation(round_robin)
        res = _run(Z, uidx, c, init, K, hard, int(n_iter), float(lam), float(tol))
        if best is None or res.log_likelihood[-1] > best.log_likelihood[-1]:
            best = res
    assert best is not None
    best.user_ids = ids
    if not best.converged:
        warn_not_converged(
            f"fit_em ({'hard' if hard else 'soft'} EM"
            + (f", the best of {int(n_restarts)} restarts)" if n_restarts > 1 else ")"),
            best.n_iter,
            describe_last_change(
                best.assignments, np.asarray(best.initial), hard, best.log_likelihood
            ),
            "Raise n_iter, try n_restarts > 1, or a larger lam (a reward that fits noise "
            "keeps users swapping groups).",
        )
    return best


def select_n_groups(
    chosen: ArrayLike,
    rejected: ArrayLike,
    users: ArrayLike,
    candidates: Sequence[int] = (1, 2, 3, 4),
    holdout_fraction: float = 0.5,
    seed: int = 0,
    rule: Literal["one_se", "max"] = "one_se",
    **kw: Any,
) -> tuple[int, list[dict[str, float]]]:
    """Pick K by the log-likelihood of held-out users (users are split, not comparisons).

    ``chosen`` and ``rejected`` are feature rows (n, d) of each comparison's winner and
    loser, ``users`` (n,) the user of each; ``rule`` is ``'one_se'`` or ``'max'``.

    A random ``holdout_fraction`` of the users is held out; for each K in ``candidates``,
    ``fit_em(..., seed=seed, **kw)`` is fit on the rest and each held-out user h gets
    ``l_K(h) = logsumexp_u(log pi_u + S[h, u])``. ``rule="max"`` takes the K with the largest
    ``sum_h l_K(h)``; ``rule="one_se"`` (default) the smallest K within one standard error of
    that best K*, ``se_K = sqrt(n_held) * std_h(l_K(h) - l_K*(h))`` (Hastie et al.'s one-SE
    rule): extra groups fit noise by a few nats, which ``"max"`` sometimes rewards.
    Returns ``(K, table)``, one row per candidate (ascending K).
    """
    chosen, rejected, users = np.asarray(chosen), np.asarray(rejected), np.asarray(users)
    # (n,) comparison weights; all ones when None, which fit_em treats identically (tested)
    alt = _prepare(chosen, rejected, users, kw.pop("alt_weights", None))[3]
    if not 0 < holdout_fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if len(candidates) == 0 or rule not in ("max", "one_se"):
        raise ValueError(f"candidates must be non-empty and rule 'max' or 'one_se', got {rule!r}")
    ids = np.unique(users)
    n_hold = round(holdout_fraction * ids.size)
    if not 1 <= n_hold < ids.size:
        raise ValueError(f"holdout_fraction={holdout_fraction} leaves no train or held-out users")
    test = np.isin(users, np.random.default_rng(seed).permutation(ids)[:n_hold])  # (n,)
    tr = ~test
    ks = sorted(int(k) for k in candidates)
    rows = []  # (train objective, per-held-out-user log-likelihood (n_hold,)) per K
    for k in ks:
        res = fit_em(chosen[tr], rejected[tr], users[tr], k, seed=seed, alt_weights=alt[tr], **kw)
        post = res.user_scores(chosen[test], rejected[test], users[test], alt[test])[1]
        rows.append((res.log_likelihood[-1], logsumexp(post, axis=1)))
    ll = np.array([r[1] for r in rows])  # (len(ks), n_hold)
    total = ll.sum(axis=1)
    best = int(np.argmax(total))
    se = np.sqrt(n_hold) * np.std(ll - ll[best], axis=1, ddof=1) if n_hold > 1 else 0 * total
    pick = best if rule == "max" else int(np.flatnonzero(total >= total[best] - se)[0])
    keys = ("n_groups", "train_objective", "heldout_log_likelihood", "heldout_se")
    cols = zip(ks, [r[0] for r in rows], total.tolist(), se.tolist(), strict=True)
    table = [dict(zip(keys, col, strict=True)) for col in cols]
    return ks[pick], table


def match_groups(truth: NDArray[Any], found: NDArray[Any], K: int) -> list[int]:
    """For each fitted group k < K, the planted group most of its users belong to (-1 if
    the fitted group is empty): how a notebook names what EM found."""
    truth, found = np.asarray(truth), np.asarray(found)
    return [
        int(np.bincount(truth[found == k], minlength=K).argmax()) if np.any(found == k) else -1
        for k in range(K)
    ]
