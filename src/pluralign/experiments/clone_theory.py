"""Synthetic experiments behind notebook 01: the MLE moves under approximate clones, the
weighted MLE does not (Procaccia, Schiffer, Zhang, 2025).

Pure functions, no I/O; every random draw comes from a seed or ``Generator`` argument. The
estimators are the library's (:func:`pluralign.core.clones.standard_mle` and
:func:`pluralign.core.clones.weighted_mle`, i.e. ``fit_bt`` with Voronoi weights); this
module only builds data (annotator populations, clones, non-uniform samples) and measures.

Scaling convention (used everywhere here). By ``fit_bt(P, lam, c * w) == fit_bt(P, lam / c, w)``
the ridge strength only means something relative to the total weight, so every fit uses a
*probability measure* over the alternatives and the same ``lam``:

* standard MLE: the empirical measure, ``w_i = 1 / m``;
* weighted MLE: Voronoi volumes of the box S, summing to 1;
* continuum MLE: a regular grid of G cell centres of S, ``w = 1 / G``.

With ``lam = 0`` the scale does not matter at all. ``P`` always holds *exact expected*
win fractions of an annotator population (no sampling noise), so every difference measured
here comes from the estimator, not from data noise.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit

from pluralign.core.bradley_terry import average_win_rates, fit_bt, stationarity_residual
from pluralign.core.clones import standard_mle, weighted_mle
from pluralign.pipeline.config import StageConfig

#: The stage's DVC metrics: one or two numbers per claim: how far each estimator moves. Its other
#: numbers go to ``results/details/``.
HEADLINE: tuple[str, ...] = (
    "claim1_mle_max_change",
    "claim1_weighted_max_change",
    "claim1_mle_order_flipped",
    "claim1_weighted_order_kept",
    "claim2_mle_change_k_max",
    "claim2_weighted_change_k_max",
    "claim3_mle_rmse_m_max",
    "claim3_weighted_rmse_m_max",
    "claim4_winrate_gap_standard_rewards",
    "claim4_winrate_gap_weighted",
)


@dataclass(frozen=True, kw_only=True)
class Config(StageConfig):
    """``clone_theory`` (notebook 01): claims 1-4 of Procaccia et al. (2025) on synthetic data.

    Every fit uses a probability measure over the alternatives and the same ``lam``
    (this module's docstring); ``P`` holds exact expected win fractions.
    """

    lam: float
    """Ridge strength of every fit of claims 1-3 (claim 4 uses 0 by definition)."""
    n_samples: int
    """Monte Carlo samples per Voronoi-weight estimate."""
    clone_k: int
    """Claim 1: number of approximate clones added to alternative C."""
    clone_eps: float
    """Claim 1: distance of each clone from C."""
    delta: float
    """Claim 1: the weighted MLE's originals must move by less than this."""
    eps_grid: list[float]
    """Claim 2: clone distances swept (with ``clone_k`` clones)."""
    k_max: int
    """Claim 2: numbers of clones 1..k_max swept (at ``clone_eps``)."""
    n_reps: int
    """Claims 2-3: repetitions (fresh clone directions / samples and Voronoi samples)."""
    dim: int
    """Claim 3: dimension d of S = [0, 1]^d."""
    m_grid: list[int]
    """Claim 3: numbers of sampled alternatives."""
    grid_size: int
    """Claim 3: grid cells per axis of the continuum reference (G = grid_size ** dim)."""
    cluster_share: float
    """Claim 3: share of alternatives drawn from the Beta(2, 6) cluster (rest uniform)."""
    n_characterization: int
    """Claim 4: number of clustered alternatives in [0, 1]^2 for the win-rate identity."""
    grid_per_axis: int
    """Claim 4: regular grid of grid_per_axis^2 points where weighted MLE ~ MLE."""

    def __post_init__(self) -> None:
        """Refuse values no claim can run with, naming the key (not a crash in cell 4)."""
        for name in ("n_samples", "clone_k", "k_max", "n_reps", "dim", "grid_size",
                     "n_characterization", "grid_per_axis"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("lam", "clone_eps", "delta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")
        if not 0 <= self.cluster_share <= 1:
            raise ValueError(f"cluster_share: must be in [0, 1], got {self.cluster_share}")
        if any(e <= 0 for e in self.eps_grid) or any(m < 2 for m in self.m_grid):
            raise ValueError("eps_grid must be positive and m_grid at least 2")


FloatArray = NDArray[np.float64]


# --------------------------------------------------------------------------- populations


@dataclass(frozen=True)
class Population:
    r"""Annotator types ``t`` with mixture weights ``alpha_t`` and Lipschitz rewards over R^d.

    .. math::
        u_t(x) = \langle \theta_t, x \rangle
                 + h_t \exp\!\big(-\lVert x - c_t \rVert^2 / (2 s_t^2)\big)

    a linear part plus one RBF bump (``h_t = 0`` for none). Its Lipschitz constant is at most
    ``|theta_t| + |h_t| / (s_t sqrt(e))``, which is what the paper's robustness needs.
    """

    alphas: FloatArray
    """(T,) type shares, non-negative, summing to 1."""
    linear: FloatArray
    """(T, d) slopes ``theta_t``."""
    bump_height: FloatArray
    """(T,) RBF heights ``h_t``."""
    bump_center: FloatArray
    """(T, d) RBF centres ``c_t``."""
    bump_width: FloatArray
    """(T,) RBF widths ``s_t > 0``."""

    def __post_init__(self) -> None:
        a = np.asarray(self.alphas, dtype=np.float64)
        lin = np.atleast_2d(np.asarray(self.linear, dtype=np.float64))
        n_types, d = lin.shape
        for name, arr, shape in (
            ("alphas", a, (n_types,)),
            ("bump_height", self.bump_height, (n_types,)),
            ("bump_center", self.bump_center, (n_types, d)),
            ("bump_width", self.bump_width, (n_types,)),
        ):
            arr = np.asarray(arr, dtype=np.float64)
            if arr.shape != shape or not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} must be finite with shape {shape}, got {arr.shape}")
        if np.any(a < 0) or not np.isclose(a.sum(), 1.0):
            raise ValueError(f"alphas must be non-negative and sum to 1, got {a}")
        if np.any(np.asarray(self.bump_width) <= 0):
            raise ValueError("bump_width must be > 0")

    @classmethod
    def linear_types(cls, alphas: ArrayLike, slopes: ArrayLike) -> Population:
        """Purely linear types ``u_t(x) = <theta_t, x>`` (no bumps)."""
        lin = np.atleast_2d(np.asarray(slopes, dtype=np.float64))
        n_types, d = lin.shape
        return cls(
            alphas=np.asarray(alphas, dtype=np.float64),
            linear=lin,
            bump_height=np.zeros(n_types),
            bump_center=np.zeros((n_types, d)),
            bump_width=np.ones(n_types),
        )

    @property
    def dim(self) -> int:
        return np.atleast_2d(self.linear).shape[1]

    def utilities(self, points: ArrayLike) -> FloatArray:
        """``U[i, t] = u_t(x_i)``, shape (m, T)."""
        x = np.asarray(points, dtype=np.float64)  # (m, d)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"points must have shape (m, {self.dim}), got {x.shape}")
        lin = x @ np.atleast_2d(self.linear).T  # (m, T)
        sq = ((x[:, None, :] - np.asarray(self.bump_center)[None]) ** 2).sum(-1)  # (m, T)
        width = np.asarray(self.bump_width)
        return lin + np.asarray(self.bump_height) * np.exp(-sq / (2 * width**2))

    def lipschitz(self) -> float:
        """An upper bound on the Lipschitz constant of every type's reward."""
        lin = np.linalg.norm(np.atleast_2d(self.linear), axis=1)
        bump = np.abs(self.bump_height) / (np.asarray(self.bump_width) * np.sqrt(np.e))
        return float(np.max(lin + bump))


def expected_win_matrix(points: ArrayLike, population: Population) -> FloatArray:
    r"""Exact expected win fractions ``P[i, j] = sum_t alpha_t sigma(u_t(x_i) - u_t(x_j))``.

    Shape (m, m), diagonal 0, ``P + P.T = 1`` off the diagonal: every pair is compared with
    unit mass, as with infinitely many annotators drawn from the population.
    """
    U = population.utilities(points)  # (m, T)
    P = np.zeros((U.shape[0], U.shape[0]))
    for t, alpha in enumerate(np.asarray(population.alphas)):
        P += alpha * expit(U[:, None, t] - U[None, :, t])  # (m, m)
    np.fill_diagonal(P, 0.0)
    return P


def add_clones(
    points: ArrayLike, index: int, k: int, eps: float, rng: np.random.Generator
) -> FloatArray:
    """Append ``k`` approximate clones of ``points[index]``, each at distance exactly ``eps``.

    Directions are uniform on the sphere (normalized Gaussians from ``rng``). Returns the
    (m + k, d) array: the originals unchanged in their rows, clones after them. Clones may
    leave the box S when ``eps`` exceeds the distance to its boundary; Voronoi weights handle
    that (a point outside S owns whatever part of S is nearest to it).
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] == 0:
        raise ValueError(f"points must be a non-empty (m, d) array, got shape {pts.shape}")
    if not -pts.shape[0] <= index < pts.shape[0]:
        raise ValueError(f"index {index} out of range for {pts.shape[0]} points")
    if int(k) != k or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k}")
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite number > 0, got {eps}")
    direction = rng.normal(size=(int(k), pts.shape[1]))  # (k, d)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return np.vstack([pts, pts[index] + eps * direction])


# --------------------------------------------------------------------------- the two estimators


# --------------------------------------------------------------------------- claim 1: the example

#: Claim 1's three alternatives in S = [0, 1]^2: A, B and C (the one that gets cloned).
EXAMPLE_POINTS = np.array([[0.8, 0.4], [0.5, 0.9], [0.6, 0.1]])
EXAMPLE_NAMES = ("A", "B", "C")
EXAMPLE_CLONED = 2


def example_population(beta: float = 4.0) -> Population:
    r"""Claim 1's two equally large annotator types, each caring about one coordinate.

    ``u_1(x) = beta x_1`` and ``u_2(x) = beta x_2`` (``beta = 4``, Lipschitz constant 4).
    Why the example works (found by reasoning about average win rates, then checked): head to
    head, B beats A (B's +0.5 on x_2 outweighs its -0.3 on x_1). C is mediocre: A beats it on
    *both* coordinates by moderate margins, B beats it on x_2 by a lot (+0.8, a saturated
    sigmoid) but loses on x_1. So A's win rate against C (0.73) exceeds B's (0.68), and each
    clone of C adds another comparison against C for both A and B, which favours A until the
    standard MLE ranks A above B. The weighted MLE splits C's Voronoi cell among the clones
    instead, so the total weight of "C-like" alternatives stays put.
    """
    return Population.linear_types([0.5, 0.5], [[beta, 0.0], [0.0, beta]])


def clone_example(
    k: int,
    eps: float,
    lam: float,
    n_samples: int = 200_000,
    seed: int = 0,
    population: Population | None = None,
    points: ArrayLike | None = None,
    index: int = EXAMPLE_CLONED,
) -> list[dict]:
    """Rewards of the original alternatives before/after adding ``k`` clones at distance ``eps``.

    One record per (method, original alternative) with ``before``, ``after`` and ``change``.
    ``seed`` drives both the clone directions and the Voronoi samples.
    """
    population = example_population() if population is None else population
    pts = EXAMPLE_POINTS if points is None else np.asarray(points, dtype=np.float64)
    m = pts.shape[0]
    names = EXAMPLE_NAMES if points is None else tuple(f"x{i}" for i in range(m))
    cloned = add_clones(pts, index, k, eps, np.random.default_rng(seed))
    P0, P1 = expected_win_matrix(pts, population), expected_win_matrix(cloned, population)
    fits = {
        "MLE": (standard_mle(P0, lam), standard_mle(P1, lam)),
        "weighted MLE": (
            weighted_mle(pts, P0, lam, n_samples=n_samples, seed=seed)[0],
            weighted_mle(cloned, P1, lam, n_samples=n_samples, seed=seed)[0],
        ),
    }
    return [
        {
            "method": method,
            "alternative": names[i],
            "before": float(before[i]),
            "after": float(after[i]),
            "change": float(after[i] - before[i]),
        }
        for method, (before, after) in fits.items()
        for i in range(m)
    ]


# --------------------------------------------------------------------------- claim 2: delta-eps


def _changes(before: FloatArray, after: FloatArray) -> tuple[float, float]:
    """Max |change| of the originals' rewards, and of their pairwise gaps (gauge-free)."""
    m = before.shape[0]
    diff = after[:m] - before
    gaps = np.abs(diff[:, None] - diff[None, :]).max()
    return float(np.abs(diff).max()), float(gaps)


def clone_sweep(
    eps_grid: list[float],
    k_values: list[int],
    lam: float,
    n_reps: int = 3,
    n_samples: int = 200_000,
    seed: int = 0,
    population: Population | None = None,
    points: ArrayLike | None = None,
    index: int = EXAMPLE_CLONED,
) -> list[dict]:
    """Max reward change of the originals for every (eps, k) and repetition, both methods.

    Records: ``eps, k, rep, method, max_change`` (max over originals of |r_after - r_before|),
    ``max_gap_change`` (same for pairwise differences, which no re-centring can hide) and
    ``order_changed`` (1 if the ranking of the originals changed). Repetition ``rep`` draws
    fresh clone directions and Voronoi samples from ``seed + rep``.
    """
    population = example_population() if population is None else population
    pts = EXAMPLE_POINTS if points is None else np.asarray(points, dtype=np.float64)
    P0 = expected_win_matrix(pts, population)
    r_std0 = standard_mle(P0, lam)
    records = []
    for rep in range(n_reps):
        r_w0 = weighted_mle(pts, P0, lam, n_samples=n_samples, seed=seed + rep)[0]
        for eps, k in itertools.product(eps_grid, k_values):
            cloned = add_clones(pts, index, k, eps, np.random.default_rng(seed + rep))
            P1 = expected_win_matrix(cloned, population)
            after = {
                "MLE": (r_std0, standard_mle(P1, lam)),
                "weighted MLE": (
                    r_w0,
                    weighted_mle(cloned, P1, lam, n_samples=n_samples, seed=seed + rep)[0],
                ),
            }
            for method, (before, r1) in after.items():
                change, gap = _changes(before, r1)
                order = int(np.any(np.argsort(before) != np.argsort(r1[: len(before)])))
                records.append(
                    {
                        "eps": float(eps),
                        "k": int(k),
                        "rep": rep,
                        "method": method,
                        "max_change": change,
                        "max_gap_change": gap,
                        "order_changed": order,
                    }
                )
    return records


# --------------------------------------------------------------------------- claim 3: continuum


def continuum_population(dim: int = 1) -> Population:
    r"""Claim 3's two types on [0, 1]^d: a majority (0.6) with ``u = 3 x_1``, increasing
    along the first axis, and a minority (0.4) liking a bump of height 3 and width 0.1 at
    ``x = 0.2`` (all coordinates), right where the non-uniform sampler puts most alternatives.
    """
    lin = np.zeros((2, dim))
    lin[0, 0] = 3.0
    return Population(
        alphas=np.array([0.6, 0.4]),
        linear=lin,
        bump_height=np.array([0.0, 3.0]),
        bump_center=np.full((2, dim), 0.2),
        bump_width=np.array([1.0, 0.1]),
    )


def sample_nonuniform(
    m: int, dim: int, rng: np.random.Generator, cluster_share: float = 0.7
) -> FloatArray:
    """``m`` points in [0, 1]^d: with probability ``cluster_share`` every coordinate is
    Beta(2, 6) (a cluster around 0.2), else uniform. The density is bounded below by
    ``1 - cluster_share``, so Voronoi cells shrink everywhere as m grows. Shape (m, d)."""
    if not 0 <= cluster_share <= 1:
        raise ValueError(f"cluster_share must be in [0, 1], got {cluster_share}")
    clustered = rng.uniform(size=m) < cluster_share  # (m,)
    return np.where(clustered[:, None], rng.beta(2, 6, (m, dim)), rng.uniform(size=(m, dim)))


def grid_points(n_per_axis: int, dim: int) -> FloatArray:
    """Cell centres of the regular grid of [0, 1]^d with ``n_per_axis`` cells per axis."""
    axis = (np.arange(n_per_axis) + 0.5) / n_per_axis
    mesh = np.meshgrid(*([axis] * dim), indexing="ij")
    return np.stack([g.ravel() for g in mesh], axis=1)  # (n^d, d)


def continuum_mle(population: Population, grid_size: int, lam: float) -> FloatArray:
    """The MLE over S = [0, 1]^d approximated on a regular grid: ``w = 1 / G``, shape (G,),
    ``G = grid_size ** d``, in the order of :func:`grid_points`."""
    grid = grid_points(grid_size, population.dim)
    return fit_bt(expected_win_matrix(grid, population), lam, np.full(len(grid), 1 / len(grid)))


def grid_lookup(points: ArrayLike, grid_rewards: FloatArray, grid_size: int) -> FloatArray:
    """Continuum reward at ``points`` by the nearest grid cell centre (the cell holding x)."""
    x = np.asarray(points, dtype=np.float64)  # (m, d)
    cell = np.clip((x * grid_size).astype(int), 0, grid_size - 1)  # (m, d)
    flat = np.ravel_multi_index(tuple(cell.T), (grid_size,) * x.shape[1])
    return grid_rewards[flat]


def continuum_experiment(
    m_grid: list[int],
    lam: float,
    dim: int = 1,
    grid_size: int = 500,
    n_reps: int = 3,
    n_samples: int = 200_000,
    cluster_share: float = 0.7,
    seed: int = 0,
    population: Population | None = None,
) -> list[dict]:
    """Error of each estimator against the continuum MLE at the sampled points, vs m.

    For each m and repetition: sample m alternatives from :func:`sample_nonuniform`, fit the
    standard MLE (``w = 1/m``) and the weighted MLE (Voronoi, sums to 1) with the same ``lam``
    as the grid fit (``w = 1/G``), and compare both with the grid rewards at the points.
    Records: ``m, rep, method, rmse`` (root mean square over the m points), ``centered_rmse``
    (the same after removing the mean difference: the error in shape alone, which a gauge
    shift cannot explain) and ``max_abs``.
    """
    population = continuum_population(dim) if population is None else population
    if population.dim != dim:
        raise ValueError(f"population is {population.dim}-dimensional, dim is {dim}")
    target = continuum_mle(population, grid_size, lam)
    records = []
    for m, rep in itertools.product(m_grid, range(n_reps)):
        rng = np.random.default_rng([seed, int(m), rep])
        x = sample_nonuniform(int(m), dim, rng, cluster_share)
        P = expected_win_matrix(x, population)
        truth = grid_lookup(x, target, grid_size)
        fits = {
            "MLE": standard_mle(P, lam),
            "weighted MLE": weighted_mle(x, P, lam, n_samples=n_samples, seed=seed + rep)[0],
        }
        for method, r in fits.items():
            err = r - truth
            records.append(
                {
                    "m": int(m),
                    "rep": rep,
                    "method": method,
                    "rmse": float(np.sqrt(np.mean(err**2))),
                    "centered_rmse": float(np.std(err)),
                    "max_abs": float(np.abs(err).max()),
                }
            )
    return records


# --------------------------------------------------------------------------- claim 4


def characterization_check(
    m: int = 12,
    dim: int = 2,
    n_samples: int = 200_000,
    seed: int = 0,
    population: Population | None = None,
) -> dict[str, float]:
    """At the ``lam = 0`` weighted optimum, weighted model win rates = weighted empirical ones.

    ``m`` clustered alternatives (:func:`sample_nonuniform`), Voronoi weights, ``fit_bt`` with
    ``lam = 0``. Returns the max |empirical - model| weighted average win rate, the max
    stationarity residual, and (for contrast) the same win-rate gap at the *standard* MLE's
    rewards, which satisfy the unweighted identity but not the weighted one.
    """
    population = continuum_population(dim) if population is None else population
    x = sample_nonuniform(m, dim, np.random.default_rng(seed))
    P = expected_win_matrix(x, population)
    r_w, w = weighted_mle(x, P, 0.0, n_samples=n_samples, seed=seed)
    emp, model = average_win_rates(r_w, P, w)
    r_s = fit_bt(P, 0.0)
    emp_s, model_s = average_win_rates(r_s, P, w)
    return {
        "winrate_gap_weighted": float(np.abs(emp - model).max()),
        "residual_weighted": float(np.abs(stationarity_residual(r_w, P, 0.0, w)).max()),
        "winrate_gap_standard_rewards": float(np.abs(emp_s - model_s).max()),
    }


def uniform_grid_check(
    n_per_axis: int = 6,
    dim: int = 2,
    lam: float = 0.1,
    n_samples: int = 200_000,
    seed: int = 0,
    population: Population | None = None,
) -> dict[str, float]:
    """On a regular grid of S the Voronoi weights are (nearly) equal, so weighted MLE ≈ MLE.

    Returns the max |r_weighted - r_standard|, the weights' relative spread
    ``(max - min) / mean``, and for contrast the same reward gap for as many clustered
    (:func:`sample_nonuniform`) alternatives.
    """
    population = continuum_population(dim) if population is None else population
    out = {}
    clustered = sample_nonuniform(n_per_axis**dim, dim, np.random.default_rng(seed))
    for name, x in (("grid", grid_points(n_per_axis, dim)), ("clustered", clustered)):
        P = expected_win_matrix(x, population)
        r_w, w = weighted_mle(x, P, lam, n_samples=n_samples, seed=seed)
        out[f"max_reward_gap_{name}"] = float(np.abs(r_w - standard_mle(P, lam)).max())
        out[f"weight_spread_{name}"] = float((w.max() - w.min()) / w.mean())
    return out
