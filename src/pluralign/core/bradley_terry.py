"""Regularized, optionally weighted Bradley-Terry maximum likelihood (Procaccia et al., 2025).

The math lives in pure functions (``objective``, ``gradient``, ``hessian``) as in
lucasmaystre/choix, so each piece is checked on its own (finite differences, scipy, choix).
With ``A[i, j] = w_i w_j P[i, j]`` (diagonal ignored) and ``sigma`` the logistic function,

    f(r) = - sum_{i != j} A[i, j] log sigma(r_i - r_j) + (lam / 2) sum_i w_i r_i^2.

``w = 1`` is the standard regularized MLE; ``w`` = Voronoi volumes (``clones.voronoi_weights``)
is the paper's clone-robust weighted MLE. Setting ``d/dr_k f = 0`` and dividing by ``w_k``
gives, with ``N[k, j] = P[k, j] + P[j, k]`` the comparison mass of the pair,

    sum_j w_j P[k, j]  -  sum_j w_j N[k, j] sigma(r_k - r_j)  =  lam r_k,

i.e. weighted observed wins = weighted model-expected wins + ``lam r_k``: for ``lam = 0`` the
weighted average win rate of the model equals the weighted empirical one (the paper's
characterization). Summing ``gradient`` over k gives ``lam sum_k w_k r_k = 0``, so the optimum
is weighted-centred; for ``lam = 0`` we pick that same gauge, the ``lam -> 0+`` limit.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.linalg
import scipy.sparse
import scipy.sparse.linalg
from numpy.typing import ArrayLike, NDArray
from scipy.sparse.csgraph import connected_components
from scipy.special import expit

from pluralign.core._checks import float_array, index_array, integer

FloatArray = NDArray[np.float64]
#: Win matrix: ``P[i, j]`` = fraction (or count) of i-vs-j comparisons won by i; shape (m, m).
WinMatrix = FloatArray


def _check_P(P: ArrayLike) -> FloatArray:
    P = float_array(P, "P", allow_empty=True, finite=False)  # numbers only: no string P
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"P must be a square (m, m) array, got shape {P.shape}")
    if P.shape[0] == 0:
        raise ValueError("P is empty (m == 0): there are no alternatives to score")
    if not np.all(np.isfinite(P)):
        raise ValueError("P contains NaN or inf")
    if np.any(P < 0):
        raise ValueError("P must be non-negative (win fractions or counts)")
    return P


def _check_weights(weights: ArrayLike | None, m: int) -> FloatArray:
    if weights is None:
        return np.ones(m)
    w = float_array(weights, "weights", allow_empty=True, finite=False)
    if w.shape != (m,):
        raise ValueError(f"weights must have shape ({m},) to match P, got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights contain NaN or inf")
    if np.any(w < 0):
        raise ValueError("weights must be non-negative")
    if not np.any(w > 0):
        raise ValueError("weights are all zero: at least one alternative needs positive weight")
    return w


def _check_r(r: ArrayLike, m: int) -> FloatArray:
    r = float_array(r, "r", ndim=1, shape="(m,)", allow_empty=True)
    if r.shape != (m,):
        raise ValueError(
            f"r must have shape ({m},) to match P (one reward per alternative), got {r.shape}"
        )
    return r


def _check_lam(lam: float) -> float:
    lam = float(lam)
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    return lam


def _pair_weights(P: FloatArray, w: FloatArray) -> FloatArray:
    """``A[i, j] = w_i w_j P[i, j]`` with a zero diagonal (self-comparisons carry no signal)."""
    A = np.multiply(P, w[:, None])  # (m, m)
    A *= w[None, :]
    np.fill_diagonal(A, 0.0)
    return A


def _objective(r: FloatArray, A: FloatArray, lam: float, w: FloatArray) -> float:
    # -log sigma(x) = log(1 + exp(-x)), stable for any x.
    nll = np.logaddexp(0.0, r[None, :] - r[:, None])  # (m, m): -log sigma(r_i - r_j)
    nll *= A
    return float(nll.sum() + 0.5 * lam * np.dot(w, r * r))


def _gradient(r: FloatArray, A: FloatArray, lam: float, w: FloatArray) -> FloatArray:
    M = expit(r[None, :] - r[:, None])  # (m, m): sigma(r_j - r_i)
    M *= A  # M[i, j] = A[i, j] sigma(r_j - r_i)
    return M.sum(axis=0) - M.sum(axis=1) + lam * w * r


def _hessian(r: FloatArray, A: FloatArray, lam: float, w: FloatArray) -> FloatArray:
    # In place where possible: for m = 5,000 each (m, m) temporary is 200 MB.
    X = r[:, None] - r[None, :]  # (m, m)
    B = expit(X)
    B *= expit(np.negative(X, out=X), out=X)  # sigma(x) sigma(-x), without 1 - sigma cancellation
    B *= np.add(A, A.T, out=X)
    diag = B.sum(axis=1) + lam * w
    H = np.negative(B, out=B)
    H[np.diag_indices_from(H)] = diag
    return H


class _Edges:
    """The data term over compared pairs only: ``fit_bt``'s fast path.

    Real comparison data touch few of the m^2 pairs, and every evaluation of the dense
    functions above costs m^2 exponentials. Here each unordered pair {i, j} with
    ``A[i, j] + A[j, i] > 0`` is stored once, so objective and gradient cost O(E) and the
    Hessian is a sparse graph Laplacian (CSR, for CG) or, for small k, a dense matrix (for
    Cholesky). The dense functions above stay the reference these are tested against.
    """

    def __init__(self, src: NDArray[np.intp], dst: NDArray[np.intp], a: FloatArray, k: int):
        """``a[e]`` = weighted wins of ``src[e]`` over ``dst[e]`` (ordered, no self-pairs)."""
        lo, hi = np.minimum(src, dst), np.maximum(src, dst)
        pairs, slot = np.unique(lo * k + hi, return_inverse=True)  # unordered pairs, (E,)
        forward = src < dst  # the win counts for lo beating hi
        self.i, self.j, self.k = pairs // k, pairs % k, k
        self.a_ij = np.bincount(slot, np.where(forward, a, 0.0), pairs.size)  # i beat j
        self.a_ji = np.bincount(slot, np.where(forward, 0.0, a), pairs.size)  # j beat i
        self.n = self.a_ij + self.a_ji

    def objective(self, r: FloatArray, lam: float, w: FloatArray) -> float:
        x = r[self.i] - r[self.j]  # (E,)
        # -log sigma(x) = softplus(-x) and -log sigma(-x) = softplus(-x) + x: one exp per pair.
        nll = self.n @ np.logaddexp(0.0, -x) + self.a_ji @ x
        return float(nll + 0.5 * lam * np.dot(w, r * r))

    def gradient(self, r: FloatArray, lam: float, w: FloatArray) -> FloatArray:
        x = r[self.i] - r[self.j]
        e = self.n * expit(x) - self.a_ij  # d f / d r_i per edge: a_ji s(x) - a_ij s(-x)
        return np.bincount(self.i, e, self.k) - np.bincount(self.j, e, self.k) + lam * w * r

    def sparse_hessian(self, r: FloatArray, lam: float, w: FloatArray):
        """The same Hessian as a CSR matrix: a weighted graph Laplacian plus ``lam diag(w)``."""
        x = r[self.i] - r[self.j]
        h = self.n * expit(x) * expit(-x)
        diag = np.bincount(self.i, h, self.k) + np.bincount(self.j, h, self.k) + lam * w
        order, indices, indptr = self._csr_pattern
        vals = np.concatenate([-h, -h, diag])[order]
        return scipy.sparse.csr_matrix((vals, indices, indptr), shape=(self.k, self.k))

    @functools.cached_property
    def _csr_pattern(self) -> tuple[NDArray[np.intp], NDArray[np.int32], NDArray[np.int32]]:
        """CSR layout of (off-diagonal pairs, both ways; diagonal), computed once per fit."""
        rows = np.concatenate([self.i, self.j, np.arange(self.k)])
        cols = np.concatenate([self.j, self.i, np.arange(self.k)])
        tag = np.arange(1, rows.size + 1, dtype=np.float64)  # 1-based: no explicit zeros
        pattern = scipy.sparse.csr_matrix((tag, (rows, cols)), shape=(self.k, self.k))
        return pattern.data.astype(np.intp) - 1, pattern.indices, pattern.indptr

    @property
    def sparse(self) -> bool:
        """Use CG on the sparse Laplacian once dense Cholesky (k^3 / 3 flops) dominates."""
        return self.k >= 500

    def hessian(self, r: FloatArray, lam: float, w: FloatArray) -> FloatArray:
        x = r[self.i] - r[self.j]
        h = self.n * expit(x) * expit(-x)  # (E,)
        H = np.zeros((self.k, self.k))
        H[self.i, self.j] = -h  # pairs are unique, so plain assignment is exact
        H[self.j, self.i] = -h
        H[np.diag_indices(self.k)] = (
            np.bincount(self.i, h, self.k) + np.bincount(self.j, h, self.k) + lam * w
        )
        return H


def _newton_direction(
    edges: _Edges, r: FloatArray, g: FloatArray, lam: float, w: FloatArray
) -> FloatArray:
    """Solve ``H d = -g``; for ``lam = 0`` with ``H + c u u^T`` (u = 1 / sqrt(k)).

    Shifts ``r -> r + c 1`` leave the ``lam = 0`` objective unchanged, so ``H 1 = 0`` and
    ``1.g = 0``; the rank-one term makes H positive definite and keeps ``1.d = 0``. Large
    sparse problems use Jacobi-preconditioned CG on the sparse Laplacian (random comparison
    graphs are well conditioned); otherwise, or if CG stalls, dense Cholesky.
    """
    k = r.size
    if edges.sparse:
        H = edges.sparse_hessian(r, lam, w)
        diag = H.diagonal()
        shift = diag.mean() / k if lam == 0 else 0.0
        op = scipy.sparse.linalg.LinearOperator(
            (k, k), matvec=lambda v: H @ v + shift * v.sum(), dtype=np.float64
        )
        pre = scipy.sparse.linalg.LinearOperator((k, k), matvec=lambda v: v / (diag + shift))
        d, info = scipy.sparse.linalg.cg(op, -g, rtol=1e-13, atol=0.0, maxiter=20 * k, M=pre)
        if info == 0:
            return d
    H = edges.hessian(r, lam, w)
    if lam == 0:
        H += H.diagonal().mean() / k  # + c u u^T with u = 1 / sqrt(k), done in place
    s = 1.0 / np.sqrt(H.diagonal())  # Jacobi scaling keeps Cholesky accurate for tiny w_k
    H *= s[:, None]
    H *= s[None, :]
    c = scipy.linalg.cho_factor(H, overwrite_a=True, check_finite=False)
    return -s * scipy.linalg.cho_solve(c, s * g, check_finite=False)  # (k,)


def objective(r: ArrayLike, P: ArrayLike, lam: float, weights: ArrayLike | None = None) -> float:
    r"""Negative penalized log-likelihood of the weighted Bradley-Terry model.

    .. math::
        f(r) = -\sum_{i \neq j} w_i w_j P_{ij} \log \sigma(r_i - r_j)
               + \frac{\lambda}{2} \sum_i w_i r_i^2

    Parameters
    ----------
    r : array_like, shape (m,)
        Rewards (scores) of the alternatives.
    P : array_like, shape (m, m)
        ``P[i, j]`` = fraction or count of i-vs-j comparisons won by i; diagonal ignored.
    lam : float
        Ridge strength ``lambda >= 0``.
    weights : array_like, shape (m,), optional
        Alternative weights ``w``; all ones (the standard MLE) when ``None``.

    Returns
    -------
    float
    """
    P = _check_P(P)
    w = _check_weights(weights, P.shape[0])
    return _objective(_check_r(r, P.shape[0]), _pair_weights(P, w), _check_lam(lam), w)


def gradient(
    r: ArrayLike, P: ArrayLike, lam: float, weights: ArrayLike | None = None
) -> FloatArray:
    r"""Gradient of :func:`objective`, shape (m,).

    .. math::
        g_k = \sum_j A_{jk} \sigma(r_k - r_j) - \sum_j A_{kj} \sigma(r_j - r_k)
              + \lambda w_k r_k, \qquad A_{ij} = w_i w_j P_{ij}
    """
    P = _check_P(P)
    w = _check_weights(weights, P.shape[0])
    return _gradient(_check_r(r, P.shape[0]), _pair_weights(P, w), _check_lam(lam), w)


def hessian(r: ArrayLike, P: ArrayLike, lam: float, weights: ArrayLike | None = None) -> FloatArray:
    r"""Hessian of :func:`objective`, shape (m, m); a weighted graph Laplacian plus a ridge.

    .. math::
        H = \mathrm{diag}(B \mathbf{1}) - B + \lambda\, \mathrm{diag}(w), \qquad
        B_{ij} = (A_{ij} + A_{ji})\, \sigma(r_i - r_j)\, \sigma(r_j - r_i)
    """
    P = _check_P(P)
    w = _check_weights(weights, P.shape[0])
    return _hessian(_check_r(r, P.shape[0]), _pair_weights(P, w), _check_lam(lam), w)


def stationarity_residual(
    r: ArrayLike, P: ArrayLike, lam: float, weights: ArrayLike | None = None
) -> FloatArray:
    r"""Per-alternative optimality residual, shape (m,); zero at the optimum of :func:`objective`.

    .. math::
        \rho_k = \sum_j w_j P_{kj} - \sum_j w_j N_{kj} \sigma(r_k - r_j) - \lambda r_k
               = -g_k / w_k, \qquad N_{kj} = P_{kj} + P_{jk}

    (weighted observed wins minus weighted model-expected wins minus the ridge pull). It is
    ``-gradient / w`` rather than the gradient so that alternatives with tiny weight are not
    hidden by a tiny scale. Alternatives with ``w_k = 0`` do not enter the objective: their
    residual is reported as 0.
    """
    P = _check_P(P)
    w = _check_weights(weights, P.shape[0])
    g = _gradient(_check_r(r, P.shape[0]), _pair_weights(P, w), _check_lam(lam), w)
    out = np.zeros_like(g)
    pos = w > 0
    out[pos] = -g[pos] / w[pos]
    return out


def average_win_rates(
    r: ArrayLike, P: ArrayLike, weights: ArrayLike | None = None
) -> tuple[FloatArray, FloatArray]:
    r"""Weighted empirical and model average win rates of each alternative, each shape (m,).

    .. math::
        \hat p_k = \frac{\sum_{j \neq k} w_j P_{kj}}{\sum_{j \neq k} w_j N_{kj}}, \qquad
        p_k(r) = \frac{\sum_{j \neq k} w_j N_{kj} \sigma(r_k - r_j)}{\sum_{j \neq k} w_j N_{kj}}

    At the ``lam = 0`` optimum the two are equal for every alternative with ``w_k > 0`` (the
    paper's characterization of the weighted MLE). NaN where the denominator is zero.
    """
    P = _check_P(P)
    w = _check_weights(weights, P.shape[0])
    r = _check_r(r, P.shape[0])
    W = P.copy()
    np.fill_diagonal(W, 0.0)
    W *= w[None, :]  # (m, m): w_j P[k, j]
    N = W + P.T * w[None, :] - np.diag(np.diag(P) * w)  # (m, m): w_j N[k, j], diagonal zero
    mass = N.sum(axis=1)
    expected = (N * expit(r[:, None] - r[None, :])).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return W.sum(axis=1) / mass, expected / mass


def win_matrix(
    winners: ArrayLike, losers: ArrayLike, m: int, weights: ArrayLike | None = None
) -> WinMatrix:
    """Count matrix ``P[i, j]`` = (weighted) number of comparisons in which i beat j, (m, m).

    Parameters
    ----------
    winners, losers : array_like of int, shape (n,)
        Comparison i: alternative ``winners[i]`` beat ``losers[i]``; indices in ``[0, m)``,
        n >= 1 (an empty list has no comparison to count and is an error).
    m : int
        Number of alternatives, >= 1.
    weights : array_like, shape (n,), optional
        Per-comparison weights, e.g. annotator weights (finite, >= 0); the alternatives'
        weights belong in :func:`fit_bt`.

    Divide by ``P + P.T`` for fractions.
    """
    m = integer(m, "m")
    if m < 1:
        raise ValueError(f"m must be >= 1, got {m}")
    win = np.asarray(winners)
    los = np.asarray(losers)
    if win.ndim != 1 or win.shape != los.shape:
        raise ValueError(
            f"winners and losers must be 1-D of equal length: {win.shape}, {los.shape}"
        )
    if win.size == 0:
        raise ValueError(f"winners and losers are empty: no comparison to count (m={m})")
    win = index_array(win, "winners", m, "alternatives")
    los = index_array(los, "losers", m, "alternatives")
    if np.any(win == los):
        raise ValueError("winners and losers must differ (an alternative cannot beat itself)")
    c = np.ones(win.shape) if weights is None else float_array(weights, "weights", finite=False)
    if c.shape != win.shape or not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError("weights must be finite, non-negative and match winners in length")
    flat = np.bincount(win * m + los, weights=c, minlength=m * m)  # faster than np.add.at
    return flat.reshape(m, m)


def fit_bt(
    P: ArrayLike,
    lam: float = 1.0,
    weights: ArrayLike | None = None,
    tol: float = 1e-10,
    max_iter: int = 100,
) -> FloatArray:
    """Minimize :func:`objective` by damped Newton; returns rewards ``r``, shape (m,).

    Parameters
    ----------
    P : array_like of numbers, shape (m, m)
        ``P[i, j]`` = fraction or count of i-vs-j comparisons won by i (:func:`win_matrix`);
        finite, >= 0, diagonal ignored.
    lam : float
        Ridge strength, finite and >= 0.
    weights : array_like, shape (m,), optional
        Alternative weights ``w`` (finite, >= 0, not all 0); all ones when None.
    tol : float
        Stop once the Newton step's max-norm is below ``tol`` (> 0).
    max_iter : int
        At most this many Newton iterations (>= 1).

    Newton over the compared pairs (each step by preconditioned CG on the sparse Laplacian
    for m >= 500, dense Cholesky below) with Armijo backtracking converges quadratically, so
    stopping once the Newton step's max-norm is below ``tol`` leaves an error far below ``tol``.
    Alternatives with weight 0 do not enter the objective and get ``r = 0``.
    The result satisfies ``sum_k w_k r_k = 0``: automatically when ``lam > 0``, by choice of
    gauge when ``lam = 0`` (the objective is then shift-invariant).

    Raises
    ------
    ValueError
        On invalid inputs, or when ``lam == 0`` and no finite MLE exists: the directed graph
        ``i -> j`` iff ``w_i w_j P[i, j] > 0`` over positive-weight alternatives is not strongly
        connected (some group never loses to the rest, so its rewards diverge).
    RuntimeError
        If Newton has not converged after ``max_iter`` iterations.
    """
    P = _check_P(P)
    m = P.shape[0]
    w_full = _check_weights(weights, m)
    lam = _check_lam(lam)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    max_iter = integer(max_iter, "max_iter", minimum=1)
    act = np.flatnonzero(w_full > 0)
    w = w_full[act]
    k = act.size
    Pa = P if k == m else P[np.ix_(act, act)]
    src, dst = np.nonzero(Pa)  # ordered pairs with wins, (E',)
    keep = src != dst  # self-comparisons carry no signal
    src, dst = src[keep], dst[keep]
    a = Pa[src, dst] * w[src] * w[dst]  # A[i, j] = w_i w_j P[i, j]
    if lam == 0:
        graph = scipy.sparse.csr_matrix((np.ones(src.size), (src, dst)), shape=(k, k))
        n_comp, _ = connected_components(graph, directed=True, connection="strong")
        if n_comp > 1:
            raise ValueError(
                "no finite MLE with lam == 0: the comparison graph (edge i -> j when i beat j) "
                f"is not strongly connected ({n_comp} strong components), so the data are "
                "separable and some rewards diverge; use lam > 0 or add comparisons"
            )
    edges = _Edges(src, dst, a, k)
    r = np.zeros(k)
    f = edges.objective(r, lam, w)
    for _ in range(max_iter if k > 1 else 0):  # one alternative: f has no data term, r = 0
        g = edges.gradient(r, lam, w)
        d = _newton_direction(edges, r, g, lam, w)
        if np.max(np.abs(d), initial=0.0) <= tol:
            r = r + d
            break
        slope = float(g @ d)  # < 0: d is a descent direction
        t = 1.0
        while True:
            r_new = r + t * d
            f_new = edges.objective(r_new, lam, w)
            # Accept a full step once the predicted decrease is below round-off in f.
            if f_new <= f + 1e-4 * t * slope or -slope <= 1e-13 * (1.0 + abs(f)):
                break
            t *= 0.5
            if t < 1e-12:
                raise RuntimeError("line search failed; the problem may be badly scaled")
        r, f = r_new, f_new
    else:
        if k > 1:
            raise RuntimeError(f"fit_bt did not converge in {max_iter} Newton iterations")
    if lam == 0:
        r -= np.dot(w, r) / w.sum()
    out = np.zeros(m)
    out[act] = r
    return out
