"""Claims 1-4 of notebook 01 as assertions, plus the building blocks they rest on."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from pluralign.core.bradley_terry import fit_bt, stationarity_residual
from pluralign.core.clones import fill_zero_weight
from pluralign.experiments.clone_theory import (
    EXAMPLE_POINTS,
    add_clones,
    characterization_check,
    clone_example,
    clone_sweep,
    continuum_experiment,
    continuum_mle,
    continuum_population,
    expected_win_matrix,
    grid_lookup,
    grid_points,
    sample_nonuniform,
    uniform_grid_check,
)

LAM = 0.1
N_SAMPLES = 200_000


# --------------------------------------------------------------------------- building blocks


def test_expected_win_matrix_matches_a_loop_and_is_a_fraction_matrix():
    pop = continuum_population(dim=2)
    x = sample_nonuniform(7, 2, np.random.default_rng(0))
    P = expected_win_matrix(x, pop)
    U = pop.utilities(x)
    for i in range(7):
        for j in range(7):
            want = (
                0.0
                if i == j
                else sum(a * expit(U[i, t] - U[j, t]) for t, a in enumerate(pop.alphas))
            )
            assert P[i, j] == pytest.approx(want, abs=1e-15)
    off = ~np.eye(7, dtype=bool)
    np.testing.assert_allclose((P + P.T)[off], 1.0)


def test_population_rewards_respect_their_lipschitz_bound():
    pop = continuum_population(dim=2)
    rng = np.random.default_rng(1)
    x, y = rng.uniform(size=(500, 2)), rng.uniform(size=(500, 2))
    ratio = np.abs(pop.utilities(x) - pop.utilities(y)) / np.linalg.norm(x - y, axis=1)[:, None]
    assert ratio.max() <= pop.lipschitz()


def test_add_clones_places_k_points_at_distance_eps_and_keeps_originals():
    pts = EXAMPLE_POINTS
    out = add_clones(pts, 2, 5, 0.03, np.random.default_rng(0))
    assert out.shape == (8, 2)
    np.testing.assert_array_equal(out[:3], pts)
    np.testing.assert_allclose(np.linalg.norm(out[3:] - pts[2], axis=1), 0.03)
    assert len(np.unique(out[3:], axis=0)) == 5  # random, distinct directions


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"eps": 0.0}, "eps"), ({"eps": -1.0}, "eps"), ({"k": -1}, "k"), ({"index": 3}, "index")],
)
def test_add_clones_rejects_bad_input(kwargs, match):
    args = {"index": 0, "k": 2, "eps": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        add_clones(EXAMPLE_POINTS, rng=np.random.default_rng(0), **args)


def test_zero_weight_fill_is_the_small_weight_limit():
    # A cell that Monte Carlo misses gets w = 0; its filled reward must equal the limit of
    # giving it a tiny positive weight (the others do not move either).
    x = sample_nonuniform(6, 2, np.random.default_rng(3))
    P = expected_win_matrix(x, continuum_population(2))
    w = np.array([0.3, 0.2, 0.0, 0.25, 0.15, 0.1])
    filled = fill_zero_weight(fit_bt(P, LAM, w), P, LAM, w)
    tiny = fit_bt(P, LAM, np.where(w > 0, w, 1e-9))
    np.testing.assert_allclose(filled, tiny, atol=1e-6)
    assert abs(stationarity_residual(tiny, P, LAM, np.where(w > 0, w, 1e-9))[2]) < 1e-8


# --------------------------------------------------------------------------- claim 1


def test_claim1_clones_flip_the_mle_order_but_not_the_weighted_mle():
    """3 alternatives in [0,1]^2, 2 linear types; 4 clones of C at eps = 0.01."""
    df = pd.DataFrame(clone_example(k=4, eps=0.01, lam=LAM, n_samples=N_SAMPLES))
    std = df[df.method == "MLE"].set_index("alternative")
    wtd = df[df.method == "weighted MLE"].set_index("alternative")
    # Standard MLE: B above A before, A above B after.
    assert std.loc["B", "before"] > std.loc["A", "before"]
    assert std.loc["A", "after"] > std.loc["B", "after"]
    assert std["change"].abs().max() > 0.2
    # Weighted MLE: same order as before, every original moves by less than delta = 0.05.
    assert wtd.loc["B", "before"] > wtd.loc["A", "before"]
    assert wtd.loc["B", "after"] > wtd.loc["A", "after"]
    assert wtd["change"].abs().max() < 0.05


# --------------------------------------------------------------------------- claim 2


def test_claim2_weighted_change_vanishes_with_eps_while_mle_change_does_not():
    eps_grid = [0.1, 0.03, 0.01, 0.003, 0.001]
    df = pd.DataFrame(clone_sweep(eps_grid, [4], LAM, n_reps=2, n_samples=N_SAMPLES))
    worst = df.groupby(["method", "eps"])["max_change"].max()
    w = worst["weighted MLE"].sort_index()  # ascending eps
    assert w.iloc[0] < 0.002  # eps = 0.001
    assert w.is_monotonic_increasing  # shrinks with eps
    assert worst["MLE"].min() > 0.2  # bounded away from 0 however close the clones
    assert df[df.method == "MLE"]["order_changed"].all()
    assert not df[df.method == "weighted MLE"]["order_changed"].any()


def test_claim2_mle_change_grows_with_k_weighted_stays_small():
    df = pd.DataFrame(clone_sweep([0.01], list(range(1, 7)), LAM, n_reps=1))
    by_k = df.pivot_table(index="k", columns="method", values="max_change")
    assert by_k["MLE"].is_monotonic_increasing and by_k["MLE"].iloc[0] > 0.1
    assert by_k["weighted MLE"].max() < 0.01


# --------------------------------------------------------------------------- claim 3


def test_claim3_weighted_mle_approaches_the_continuum_mle_standard_does_not():
    df = pd.DataFrame(
        continuum_experiment([10, 300], LAM, dim=1, grid_size=500, n_reps=2, n_samples=N_SAMPLES)
    )
    rmse = df.groupby(["method", "m"])["rmse"].mean()
    assert rmse["weighted MLE", 300] < 0.005
    assert rmse["weighted MLE", 300] < rmse["weighted MLE", 10]
    assert rmse["MLE", 300] > 0.02  # converges, but to the MLE of the sampling density
    assert rmse["weighted MLE", 300] < 0.2 * rmse["MLE", 300]
    shape = df.groupby(["method", "m"])["centered_rmse"].mean()
    assert shape["MLE", 300] > 5 * shape["weighted MLE", 300]  # not just a gauge shift


def test_grid_lookup_returns_the_grid_reward_at_grid_points():
    pop = continuum_population(dim=2)
    grid_r = continuum_mle(pop, 8, LAM)
    np.testing.assert_array_equal(grid_lookup(grid_points(8, 2), grid_r, 8), grid_r)


# --------------------------------------------------------------------------- claim 4


def test_claim4_weighted_win_rates_match_at_the_lam0_optimum():
    out = characterization_check(m=12, dim=2, n_samples=N_SAMPLES)
    assert out["winrate_gap_weighted"] < 1e-8
    assert out["residual_weighted"] < 1e-8
    assert out["winrate_gap_standard_rewards"] > 1e-3  # the identity is specific to the weights


def test_claim4_uniform_grid_weighted_equals_standard():
    out = uniform_grid_check(n_per_axis=6, dim=2, lam=LAM, n_samples=N_SAMPLES)
    assert out["weight_spread_grid"] < 0.1
    assert out["max_reward_gap_grid"] < 0.005
    assert out["max_reward_gap_clustered"] > 10 * out["max_reward_gap_grid"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"clone_k": -4}, r"clone_theory: clone_k: must be at least 1, got -4"),
        ({"clone_eps": 0.0}, r"clone_eps: must be positive"),
        ({"cluster_share": 1.5}, r"cluster_share: must be in \[0, 1\]"),
    ],
)
def test_config_refuses_values_no_claim_can_run_with(override, message) -> None:
    """``clone_k: -4`` used to pass validation and fail in the notebook's fourth cell."""
    from pluralign.experiments.clone_theory import Config
    from pluralign.pipeline.config import ConfigError, load_stage_config

    with pytest.raises(ConfigError, match=message):
        load_stage_config("clone_theory", Config, None, "cpu", override)
