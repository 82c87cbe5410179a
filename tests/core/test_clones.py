"""Voronoi weights against exact cell volumes (1-D, 2-D), ties, seeding, chunking; clone search."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import Voronoi

from pluralign.core.clones import find_clones, voronoi_weights

N_SAMPLES = 200_000


def assert_within_monte_carlo_error(est: np.ndarray, exact: np.ndarray, n: int) -> None:
    """|est - exact| <= 4 standard errors of a binomial proportion (plus a floor for w ~ 0)."""
    se = np.sqrt(exact * (1 - exact) / n)
    assert np.all(np.abs(est - exact) <= 4 * se + 1e-6), np.abs(est - exact) / np.maximum(se, 1e-12)


def exact_cells_1d(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Cell lengths in [low, high] of distinct 1-D points: boundaries at midpoints."""
    order = np.argsort(x)
    xs = x[order]
    edges = np.concatenate([[low], (xs[1:] + xs[:-1]) / 2, [high]])
    lengths = np.empty_like(x)
    lengths[order] = np.diff(np.clip(edges, low, high))
    return lengths / (high - low)


def exact_cells_2d(pts: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Areas of the box-clipped Voronoi cells of points strictly inside the box.

    Reflecting every point across each of the four box edges makes each original cell finite
    and bounded exactly by the box (the mirror of a point is as far from an edge as the point),
    so no polygon clipping is needed.
    """
    mirrors = [pts]
    for axis in range(2):
        for edge in (low[axis], high[axis]):
            q = pts.copy()
            q[:, axis] = 2 * edge - q[:, axis]
            mirrors.append(q)
    vor = Voronoi(np.concatenate(mirrors))
    areas = np.empty(len(pts))
    for i in range(len(pts)):
        region = vor.regions[vor.point_region[i]]
        assert -1 not in region
        v = vor.vertices[region]
        c = v.mean(axis=0)
        v = v[np.argsort(np.arctan2(v[:, 1] - c[1], v[:, 0] - c[0]))]  # convex: sort by angle
        x, y = v[:, 0], v[:, 1]
        areas[i] = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    return areas / np.prod(high - low)


def test_1d_matches_exact_cell_lengths():
    x = np.random.default_rng(0).uniform(-1.0, 3.0, size=9)
    exact = exact_cells_1d(x, -2.0, 4.0)
    est = voronoi_weights(x[:, None], low=-2.0, high=4.0, n_samples=N_SAMPLES, seed=1)
    assert_within_monte_carlo_error(est, exact, N_SAMPLES)


def test_1d_default_box_is_bounding_box():
    x = np.array([0.0, 1.0, 3.0, 4.0])
    est = voronoi_weights(x[:, None], n_samples=N_SAMPLES)
    assert_within_monte_carlo_error(est, exact_cells_1d(x, 0.0, 4.0), N_SAMPLES)


def test_2d_matches_exact_polygon_areas():
    rng = np.random.default_rng(2)
    low, high = np.array([0.0, -1.0]), np.array([2.0, 1.5])
    pts = rng.uniform(low, high, size=(12, 2))
    exact = exact_cells_2d(pts, low, high)
    assert exact.sum() == pytest.approx(1.0, abs=1e-9)
    est = voronoi_weights(pts, low=low, high=high, n_samples=N_SAMPLES, seed=3)
    assert_within_monte_carlo_error(est, exact, N_SAMPLES)


def test_exact_duplicates_split_their_cell_evenly():
    rng = np.random.default_rng(4)
    pts = rng.uniform(size=(6, 3))
    dup = np.concatenate([pts, pts[[2, 2]]])  # three copies of point 2
    single = voronoi_weights(pts, 0.0, 1.0, n_samples=20_000)
    split = voronoi_weights(dup, 0.0, 1.0, n_samples=20_000)  # same samples (same seed)
    np.testing.assert_allclose(split[[2, 6, 7]], single[2] / 3, rtol=1e-15)
    np.testing.assert_array_equal(np.delete(split, [2, 6, 7]), np.delete(single, 2))


def test_single_point_and_all_duplicates():
    assert voronoi_weights(np.zeros((1, 2)), -1, 1, n_samples=10).tolist() == [1.0]
    np.testing.assert_allclose(voronoi_weights(np.ones((4, 2)), 0, 2, n_samples=100), 0.25)


def test_weights_sum_to_one_and_seeding():
    pts = np.random.default_rng(5).normal(size=(50, 4))
    w = voronoi_weights(pts, n_samples=5_000, seed=7)
    assert w.shape == (50,) and np.all(w >= 0)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_array_equal(w, voronoi_weights(pts, n_samples=5_000, seed=7))
    assert not np.array_equal(w, voronoi_weights(pts, n_samples=5_000, seed=8))


def test_chunk_size_does_not_change_result():
    pts = np.random.default_rng(6).uniform(size=(30, 3))
    pts[5] = pts[9]  # include a tie
    ref = voronoi_weights(pts, n_samples=3_001, seed=2, chunk_size=3_001)
    for chunk in (1, 7, 500):
        got = voronoi_weights(pts, n_samples=3_001, seed=2, chunk_size=chunk)
        np.testing.assert_array_equal(got, ref)


def test_scalar_and_vector_bounds_agree():
    pts = np.random.default_rng(7).uniform(size=(5, 2))
    a = voronoi_weights(pts, 0.0, 1.0, n_samples=1_000)
    b = voronoi_weights(pts, np.zeros(2), np.ones(2), n_samples=1_000)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("points", "kwargs", "match"),
    [
        (np.array([[0.0, np.nan]]), {}, "points contain NaN"),
        (np.array([[0.0, np.inf]]), {}, "points contain NaN or inf"),
        (np.zeros((0, 2)), {}, "points is empty"),
        (np.zeros(3), {}, "points must be a 2-D"),
        (np.zeros((2, 2, 2)), {}, "points must be a 2-D"),
        (np.eye(2), {"low": 1.0, "high": 0.0}, "low must be < high"),
        (np.eye(2), {"low": 0.0, "high": 0.0}, "low must be < high"),
        (np.eye(2), {"low": np.zeros(3)}, r"low must be a scalar or have shape \(2,\)"),
        (np.eye(2), {"high": np.nan}, "high contains NaN"),
        (np.eye(2), {"n_samples": 0}, "n_samples must be"),
        (np.eye(2), {"chunk_size": 0}, "chunk_size must be"),
    ],
)
def test_voronoi_weights_rejects_bad_input(points, kwargs, match):
    with pytest.raises(ValueError, match=match):
        voronoi_weights(points, **kwargs)


def test_find_clones_recovers_planted_groups():
    rng = np.random.default_rng(8)
    centres = rng.uniform(0, 100, size=(4, 5))  # far apart (pairwise distance >> 1)
    pts = np.concatenate(
        [
            centres,
            centres[1] + 0.01 * rng.normal(size=(2, 5)),  # two clones of 1
            centres[3] + 0.01 * rng.normal(size=(1, 5)),  # one clone of 3
            centres[[0]],  # an exact duplicate of 0
        ]
    )
    assert find_clones(pts, eps=0.2) == [[0, 7], [1, 4, 5], [3, 6]]
    assert find_clones(pts, eps=0.0) == [[0, 7]]
    assert find_clones(centres, eps=1.0) == []


def test_find_clones_chains_and_rejects_bad_eps():
    pts = np.array([[0.0], [1.0], [2.0], [5.0]])
    assert find_clones(pts, eps=1.0) == [[0, 1, 2]]  # distance <= eps, linked through 1
    with pytest.raises(ValueError, match="eps must be"):
        find_clones(pts, eps=-0.1)
    with pytest.raises(ValueError, match="points contain NaN"):
        find_clones(np.array([[np.nan]]), eps=1.0)
