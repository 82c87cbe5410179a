"""Voronoi-volume weights and approximate-clone detection (Procaccia et al., 2025).

The clone-robust weighted MLE weights each alternative by the share of the region S whose
nearest alternative it is. A near-duplicate splits its original's cell instead of adding a
new one, so the total weight near a cluster of clones barely changes; that is what makes the
weighted MLE robust where the plain MLE (one vote per alternative) is not.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.optimize
from numpy.typing import ArrayLike
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from scipy.special import expit

from pluralign._typing import FloatArray
from pluralign.core._checks import float_array, number
from pluralign.core.bradley_terry import fit_bt

#: Memory for one chunk's (chunk_size, m) float64 distance block.
DEFAULT_CHUNK_BYTES = 8 * 2**20


def _check_points(points: ArrayLike) -> FloatArray:
    pts = float_array(points, "points", allow_empty=True, finite=False)
    if pts.ndim != 2:
        raise ValueError(f"points must be a 2-D (m, d) array, got {pts.ndim} dimension(s)")
    if pts.shape[0] == 0 or pts.shape[1] == 0:
        raise ValueError(f"points is empty (shape {pts.shape}); need m >= 1 points in d >= 1")
    if not np.all(np.isfinite(pts)):
        raise ValueError("points contain NaN or inf")
    return pts


def _bound(value: ArrayLike, d: int, name: str) -> FloatArray:
    b = float_array(value, name, allow_empty=True, finite=False)
    if b.ndim == 0:
        b = np.full(d, float(b))
    if b.shape != (d,):
        raise ValueError(f"{name} must be a scalar or have shape ({d},), got {b.shape}")
    if not np.all(np.isfinite(b)):
        raise ValueError(f"{name} contains NaN or inf")
    return b


def default_chunk_size(m: int, memory_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows per chunk so that one (chunk_size, m) float64 block fits in ``memory_bytes``."""
    return max(1, memory_bytes // (8 * max(m, 1)))


def voronoi_weights(
    points: ArrayLike,
    low: ArrayLike | None = None,
    high: ArrayLike | None = None,
    n_samples: int = 200_000,
    seed: int = 0,
    chunk_size: int | None = None,
) -> FloatArray:
    """Monte Carlo share of the box ``[low, high]`` nearest to each point; shape (m,), sums to 1.

    Samples are uniform in the box; each goes to its nearest point (Euclidean). Exact
    duplicates share one cell equally (the only ties of positive probability). The standard
    error of each weight is ``sqrt(w (1 - w) / n_samples)``; integer counts make the result
    independent of ``chunk_size``.

    Parameters
    ----------
    points : array_like, shape (m, d)
        The alternatives' embeddings.
    low, high : float or array_like of shape (d,), optional
        The region S. Defaults to the points' bounding box (a zero-width side is allowed
        then: sampling stays on that face). Given explicitly, ``low < high`` is required.
    n_samples : int
        Number of Monte Carlo samples.
    seed : int
        Seed of the ``numpy.random.default_rng`` drawing the samples. The draws do not
        depend on ``chunk_size``, so neither does the result.
    chunk_size : int, optional
        Samples per block; memory is O(chunk_size * m). Default: :func:`default_chunk_size`,
        a block of a few MB: small enough to stay in cache, which matters more than GEMM size
        because for small d the argmin pass costs as much as the product.
    """
    pts = _check_points(points)
    d = pts.shape[1]
    lo = pts.min(axis=0) if low is None else _bound(low, d, "low")
    hi = pts.max(axis=0) if high is None else _bound(high, d, "high")
    if (low is not None or high is not None) and np.any(lo >= hi):
        raise ValueError("low must be < high in every coordinate")
    if np.any(lo > hi):
        raise ValueError("low must be <= high in every coordinate")
    if int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples}")
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size}")

    # Exact duplicates are merged and share their cell evenly at the end. Among distinct points
    # an exact tie has probability 0 for continuous samples, so a plain argmin is exact, and
    # one pass over each distance block is all the work beyond the product.
    uniq, inverse, mult = np.unique(pts, axis=0, return_inverse=True, return_counts=True)
    u = uniq.shape[0]
    chunk = min(n_samples, default_chunk_size(u) if chunk_size is None else int(chunk_size))
    center = 0.5 * (lo + hi)  # centring keeps the norms small, so cancellation stays mild
    half = 0.5 * (hi - lo)
    p = uniq - center  # (u, d)
    # ||x - p||^2 - ||x||^2 = [x, 1] . [-2 p, ||p||^2]: one GEMM gives the row-shifted distances.
    p_aug = np.vstack([-2.0 * p.T, np.einsum("ij,ij->i", p, p)[None, :]])  # (d + 1, u)
    x_aug = np.ones((chunk, d + 1))  # (chunk, d + 1); the last column stays 1
    buf = np.empty((chunk, u))
    rng = np.random.default_rng(seed)
    counts = np.zeros(u, dtype=np.int64)
    for start in range(0, n_samples, chunk):
        n = min(chunk, n_samples - start)
        x_aug[:n, :d] = rng.uniform(-1.0, 1.0, size=(n, d)) * half  # uniform in the box
        s = np.matmul(x_aug[:n], p_aug, out=buf[:n])  # (n, u)
        counts += np.bincount(s.argmin(axis=1), minlength=u)
    return counts[inverse] / (mult[inverse] * float(n_samples))


def find_clones(points: ArrayLike, eps: float) -> list[list[int]]:
    """Groups of alternatives linked by chains of pairs at distance <= ``eps``.

    ``points`` has shape (m, d) (one row per alternative); ``eps`` is finite and >= 0.
    Returns the connected components with at least two members of the graph joining points
    within ``eps`` (single linkage), each sorted, ordered by smallest index. ``eps = 0``
    finds exact duplicates.
    """
    pts = _check_points(points)
    eps = float(eps)
    if not np.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    m = pts.shape[0]
    pairs = cKDTree(pts).query_pairs(r=eps, output_type="ndarray")  # (n_pairs, 2)
    if pairs.size == 0:
        return []
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(m, m))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    groups: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        if sizes[lab] > 1:
            groups.setdefault(int(lab), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


# --------------------------------------------------------------------------- the estimators


def standard_mle(P: ArrayLike, lam: float) -> FloatArray:
    """Regularized MLE under the empirical measure (``w = 1 / m``): ``fit_bt`` with equal
    weights. ``P`` is the (m, m) win matrix (:func:`pluralign.core.bradley_terry.fit_bt`);
    returns rewards, shape (m,)."""
    P = float_array(P, "P", ndim=2, shape="(m, m)", finite=False)  # fit_bt checks the rest
    m = P.shape[0]
    return fit_bt(P, lam, np.full(m, 1.0 / m))


def _box_text(lo: FloatArray, hi: FloatArray) -> str:
    """``[0, 1]^3`` for a cube, else the two corners."""
    if np.all(lo == lo[0]) and np.all(hi == hi[0]):
        return f"[{lo[0]:g}, {hi[0]:g}]^{lo.size}"
    return f"[{lo.tolist()}, {hi.tolist()}]"


def weighted_mle(
    points: ArrayLike,
    P: ArrayLike,
    lam: float,
    low: ArrayLike | None = 0.0,
    high: ArrayLike | None = 1.0,
    n_samples: int = 200_000,
    seed: int = 0,
) -> tuple[FloatArray, FloatArray]:
    """The clone-robust weighted MLE: ``fit_bt`` with Voronoi weights of the box [low, high].

    Weights come from :func:`voronoi_weights` of the box, rewards from ``fit_bt`` with them;
    then :func:`fill_zero_weight` gives each alternative whose cell got no Monte Carlo sample
    (weight 0, so ``fit_bt`` leaves it at 0) its ``w -> 0+`` limit reward.

    Parameters
    ----------
    points : array_like, shape (m, d)
        The alternatives' embeddings, one row per alternative (the rows of ``P``).
    P : array_like, shape (m, m)
        Win matrix: ``P[i, j]`` = fraction or count of i-vs-j comparisons won by i.
    lam : float
        Ridge strength, >= 0.
    low, high : float or array_like of shape (d,), or None
        The region S. Default: the unit cube [0, 1]^d, *not* the points' bounding box that
        :func:`voronoi_weights` defaults to (pass None for that). Points outside S whose
        cells miss it get weight 0 and do not enter the fit: that warns. For points on
        another scale pass ``low=points.min(axis=0), high=points.max(axis=0)`` or your own
        region.
    n_samples, seed : int
        Monte Carlo samples and their seed (:func:`voronoi_weights`).

    Returns ``(rewards, weights)``, each shape (m,). The Monte Carlo samples depend only on
    ``seed`` and the box, so two point sets weighted with the same seed share their samples
    (common random numbers): a before/after comparison then sees only the change of the cells.

    Warns
    -----
    UserWarning
        When points outside the box got weight 0 (e.g. points in [0, 10]^d with the
        default box): the fit then ignores them.
    """
    pts = _check_points(points)
    P = float_array(P, "P", ndim=2, shape="(m, m)", finite=False)  # fit_bt checks the rest
    if P.shape[0] != pts.shape[0]:
        raise ValueError(
            f"points has {pts.shape[0]} rows but P is {P.shape}: one point per alternative"
        )
    w = voronoi_weights(pts, low, high, n_samples=n_samples, seed=seed)
    d = pts.shape[1]
    lo = pts.min(axis=0) if low is None else _bound(low, d, "low")  # None: as voronoi_weights
    hi = pts.max(axis=0) if high is None else _bound(high, d, "high")
    dropped = np.any((pts < lo) | (pts > hi), axis=1) & (w == 0)
    if dropped.any():
        warnings.warn(
            f"weighted_mle: {dropped.sum()} of {pts.shape[0]} points lie outside the box "
            f"[low, high] = {_box_text(lo, hi)} and got Voronoi weight 0, so the fit ignores "
            "them (the default box is [0, 1]^d). Pass low= and high= for the points' region, "
            "e.g. low=points.min(axis=0), high=points.max(axis=0) (voronoi_weights' default)",
            UserWarning,
            stacklevel=2,
        )
    return fill_zero_weight(fit_bt(P, lam, w), P, lam, w), w


def fill_zero_weight(r: ArrayLike, P: ArrayLike, lam: float, weights: ArrayLike) -> FloatArray:
    r"""Rewards of zero-weight alternatives as the ``w_k -> 0+`` limit of the weighted MLE.

    A Voronoi cell smaller than the Monte Carlo resolution gets no sample and weight 0, and
    ``fit_bt`` then leaves ``r_k = 0`` (k is not in the objective). The exact cell is tiny but
    positive, and as ``w_k -> 0+`` the other rewards do not move while ``r_k`` must still
    satisfy its own stationarity condition (``bradley_terry.stationarity_residual``):

    .. math::
        \sum_j w_j P_{kj} - \sum_j w_j N_{kj} \sigma(r_k - r_j) = \lambda r_k ,

    whose left side minus right side is strictly decreasing in ``r_k``; we solve it by
    bisection. Matters for near-duplicates: a point surrounded by its clones at distance eps
    keeps a cell of area ~eps^2, which 200,000 samples miss for eps ~ 1e-3.

    Shapes: ``r`` and ``weights`` (m,), ``P`` (m, m); returns the filled rewards, (m,).
    """
    r = float_array(r, "r", ndim=1, shape="(m,)").copy()
    P = float_array(P, "P", ndim=2, shape="(m, m)")
    w = float_array(weights, "weights", ndim=1, shape="(m,)")
    m = r.size
    if P.shape != (m, m) or w.shape != (m,):
        raise ValueError(
            f"r {r.shape}, P {P.shape} and weights {w.shape} must be (m,), (m, m) and (m,)"
        )
    if np.any(w < 0) or not np.any(w > 0):
        raise ValueError("weights must be non-negative and not all zero")
    lam = number(lam, "lam", low=0.0)
    pos = w > 0
    for k in np.flatnonzero(~pos):
        wins = float(np.dot(w[pos], P[k, pos]))
        mass = w[pos] * (P[k, pos] + P[pos, k])  # (n_pos,)

        def excess(x: float, k: int = k, wins: float = wins, mass: FloatArray = mass) -> float:
            return wins - float(np.dot(mass, expit(x - r[pos]))) - lam * x

        lo, hi = r[pos].min() - 1.0, r[pos].max() + 1.0
        while excess(lo) < 0:  # widen until the root is bracketed (it exists: monotone)
            lo -= 2 * (hi - lo)
        while excess(hi) > 0:
            hi += 2 * (hi - lo)
        if lam == 0 and (wins == 0 or wins == mass.sum()):
            raise ValueError(f"alternative {k} never wins or never loses: no finite limit")
        r[k] = scipy.optimize.brentq(excess, lo, hi, xtol=1e-13)
    return r
