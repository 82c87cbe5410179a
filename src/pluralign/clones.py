"""Voronoi-volume weights and approximate-clone detection (Procaccia et al., 2025).

The clone-robust weighted MLE weights each alternative by the share of the region S whose
nearest alternative it is. A near-duplicate splits its original's cell instead of adding a
new one, so the total weight near a cluster of clones barely changes; that is what makes the
weighted MLE robust where the plain MLE (one vote per alternative) is not.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

FloatArray = NDArray[np.float64]

#: Memory for one chunk's (chunk_size, m) float64 distance block.
DEFAULT_CHUNK_BYTES = 8 * 2**20


def _check_points(points: ArrayLike) -> FloatArray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2:
        raise ValueError(f"points must be a 2-D (m, d) array, got {pts.ndim} dimension(s)")
    if pts.shape[0] == 0 or pts.shape[1] == 0:
        raise ValueError(f"points is empty (shape {pts.shape}); need m >= 1 points in d >= 1")
    if not np.all(np.isfinite(pts)):
        raise ValueError("points contain NaN or inf")
    return pts


def _bound(value: ArrayLike, d: int, name: str) -> FloatArray:
    b = np.asarray(value, dtype=np.float64)
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
