"""Voronoi weights against exact cell volumes (1-D, 2-D), ties, seeding, chunking; clone search."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.spatial import Voronoi

from pluralign.core.clones import (
    fill_zero_weight,
    find_clones,
    standard_mle,
    voronoi_weights,
    weighted_mle,
)

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


# --------------------------------------------------------------------------- weighted_mle


def comparisons(m: int, seed: int = 0) -> np.ndarray:
    """A win-fraction matrix with every pair compared."""
    P = np.random.default_rng(seed).uniform(0.2, 0.8, size=(m, m))
    return P / (P + P.T)


def test_weighted_mle_warns_when_points_outside_its_default_box_are_dropped() -> None:
    """The newcomer's case: points in [0, 10]^2 with the default box [0, 1]^2 leave most cells
    empty (weights like [0, 1, 0, ...]) and the fit ignores those points: a warning names
    the box and says how to pass low / high. With the points' own box: no warning."""
    X = np.random.default_rng(1).uniform(size=(6, 2))
    P = comparisons(6)
    with pytest.warns(UserWarning, match=r"outside the box .*\[0, 1\]\^2.*low=.*high="):
        _, w = weighted_mle(X * 10, P, lam=0.1, n_samples=20_000)
    assert np.sum(w == 0) >= 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, w = weighted_mle(
            X * 10, P, lam=0.1, low=X.min(0) * 10, high=X.max(0) * 10, n_samples=20_000
        )
        _, w_none = weighted_mle(X * 10, P, lam=0.1, low=None, high=None, n_samples=20_000)
        weighted_mle(X, P, lam=0.1, n_samples=20_000)  # inside [0, 1]^2: silent
    assert np.all(w > 0)
    np.testing.assert_array_equal(w, w_none)  # None: voronoi_weights' bounding box


def test_weighted_mle_needs_one_point_per_alternative() -> None:
    """A points / P mismatch used to be blamed on the Voronoi weights."""
    with pytest.raises(ValueError, match=r"points has 3 rows but P is \(4, 4\)"):
        weighted_mle(np.eye(3), comparisons(4), lam=0.1, n_samples=1_000)
    with pytest.raises(ValueError, match="P must be a 2-D"):
        weighted_mle(np.eye(3), np.ones(3), lam=0.1, n_samples=1_000)


def test_standard_mle_and_fill_zero_weight_check_shapes() -> None:
    """A scalar P was an IndexError; mismatched r / P / weights a numpy index error."""
    with pytest.raises(ValueError, match="P must be a 2-D"):
        standard_mle(1.0, 0.1)
    with pytest.raises(ValueError, match=r"r \(3,\), P \(2, 2\) and weights \(2,\)"):
        fill_zero_weight(np.zeros(3), comparisons(2), 0.1, np.ones(2))
    with pytest.raises(ValueError, match="weights must be non-negative and not all zero"):
        fill_zero_weight(np.zeros(2), comparisons(2), 0.1, np.zeros(2))
    with pytest.raises(ValueError, match="lam must be"):
        fill_zero_weight(np.zeros(2), comparisons(2), -1.0, np.array([1.0, 0.0]))


def test_points_as_text_are_rejected_and_lists_accepted() -> None:
    with pytest.raises(ValueError, match="points must hold numbers"):
        voronoi_weights(np.array([["0.1", "0.2"], ["0.5", "0.9"]]))
    np.testing.assert_array_equal(
        voronoi_weights([[0.1, 0.2], [0.5, 0.9]], n_samples=500),
        voronoi_weights(np.array([[0.1, 0.2], [0.5, 0.9]]), n_samples=500),
    )


# --------------------------------------------------------------------------- properties

PROPERTY = settings(max_examples=40, deadline=None, derandomize=True, database=None)


@PROPERTY
@given(
    pts=st.integers(1, 3).flatmap(
        lambda d: arrays(np.float64, st.tuples(st.integers(1, 8), st.just(d)),
                         elements=st.floats(-5, 5, width=32))
    ),
    seed=st.integers(0, 1000),
)  # fmt: skip
def test_voronoi_weights_are_a_distribution_that_splits_duplicates(pts, seed) -> None:
    """Any points (duplicates included): weights are >= 0 and sum to 1, and exact
    duplicates get equal weight."""
    w = voronoi_weights(pts, low=-6.0, high=6.0, n_samples=2_000, seed=seed)
    assert w.shape == (pts.shape[0],) and np.all(w >= 0)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    _, inverse = np.unique(pts, axis=0, return_inverse=True)
    for group in np.unique(inverse):
        assert np.ptp(w[inverse.ravel() == group]) == 0
