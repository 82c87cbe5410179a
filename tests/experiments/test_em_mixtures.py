"""em_mixtures (notebook 03): planted ground truth, closed forms and brute force (the neural
EM itself is not trained here: its wiring is checked with a stand-in).

Every check compares with something computed independently of the function under test: a
hand-worked apportionment, the planted groups (ARI), the pooled reward's closed form at
eta in {0, 1}, Gibbs' closed form of max_pi J_u, a grid search over the 3-response simplex,
and an SVD for PCA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import logsumexp

import pluralign.experiments.em_mixtures as em_mixtures
from pluralign.core.mixture import match_groups
from pluralign.core.simulate import simulate_users, users_per_group
from pluralign.core.stats import standardize
from pluralign.experiments.em_mixtures import (
    GROUPS,
    Config,
    choose_k_table,
    impossibility_table,
    maxmin_vs_single,
    planted_linear_problem,
    recovery_sweep,
    reward_linearity,
    text_features,
    text_recovery,
    theory_problem,
)
from pluralign.pipeline.config import load_stage_config
from pluralign.training.reward_models import RewardModelSettings

RECOVERY_COLUMNS = [
    "sweep", "x", "seed", "method", "ari", "heldout_ari", "n_iter", "converged",
]  # fmt: skip


# --------------------------------------------------------------------------- helpers


def hamilton(n: int, shares: np.ndarray) -> list[int]:
    """Largest-remainder apportionment written out by hand (no minimum of one)."""
    raw = shares * n
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts.tolist()


def utilities(pi: np.ndarray, R: np.ndarray, pi_ref: np.ndarray, beta: float) -> np.ndarray:
    """J_u(pi) = E_pi[r_u] - beta KL(pi || pi_ref) for policies pi (P, n); shape (P, K)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(pi > 0, pi * np.log(pi / pi_ref), 0.0).sum(axis=1)
    return pi @ R.T - beta * kl[:, None]


def softmax_policy(r: np.ndarray, pi_ref: np.ndarray, beta: float) -> np.ndarray:
    """argmax_pi E_pi[r] - beta KL(pi || pi_ref) = pi_ref exp(r / beta) / Z (Gibbs)."""
    w = pi_ref * np.exp((r - r.max()) / beta)
    return w / w.sum()


def simplex_grid(steps: int) -> np.ndarray:
    """All points of the 3-simplex with coordinates in multiples of 1/steps; (P, 3)."""
    i, j = np.meshgrid(np.arange(steps + 1), np.arange(steps + 1), indexing="ij")
    keep = i + j <= steps
    i, j = i[keep], j[keep]
    return np.stack([i, j, steps - i - j], axis=1) / steps


def synthetic_rewards(m: int, seed: int) -> pd.DataFrame:
    """Standardized independent random rewards for the text groups (no text needed)."""
    rng = np.random.default_rng(seed)
    return standardize(pd.DataFrame(rng.standard_normal((m, len(GROUPS))), columns=list(GROUPS)))


# --------------------------------------------------------------------------- users_per_group


def test_users_per_group_hand_worked_cases() -> None:
    assert users_per_group(10, [0.25, 0.75]) == [3, 7]  # raw 2.5 / 7.5: tie -> first
    assert users_per_group(20, [0.1, 0.9]) == [2, 18]
    assert users_per_group(7, [1 / 3, 1 / 3, 1 / 3]) == [3, 2, 2]
    assert users_per_group(5, [1.0]) == [5]
    # the minimum of one user, paid for by the largest over-allocation
    assert users_per_group(10, [0.01, 0.99]) == [1, 9]
    assert users_per_group(3, [0.01, 0.01, 0.98]) == [1, 1, 1]


def test_users_per_group_matches_largest_remainder() -> None:
    """Random shares with every raw quota >= 1: exactly Hamilton's method, within 1 of quota."""
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(300):
        K = int(rng.integers(2, 6))
        shares = rng.dirichlet(np.ones(K))
        n = int(rng.integers(K, 80))
        if np.any(shares * n < 1):
            continue
        counts = users_per_group(n, shares)
        assert counts == hamilton(n, shares)
        assert np.all(np.abs(np.array(counts) - shares * n) < 1)
        checked += 1
    assert checked > 50


def test_users_per_group_invariants_with_tiny_shares() -> None:
    """Sum n, every group >= 1 user, and a larger share never gets fewer users."""
    rng = np.random.default_rng(1)
    for _ in range(300):
        K = int(rng.integers(1, 7))
        shares = np.maximum(rng.dirichlet(np.full(K, 0.2)), 1e-6)
        shares /= shares.sum()
        n = int(rng.integers(K, 40))
        counts = np.array(users_per_group(n, shares))
        assert counts.sum() == n and counts.min() >= 1
        order = np.argsort(shares)
        assert np.all(np.diff(counts[order]) >= 0)


@pytest.mark.parametrize(
    ("n", "shares"),
    [
        (10, [0.5, 0.6]),  # does not sum to 1
        (10, [1.2, -0.2]),  # negative
        (10, [0.0, 1.0]),  # zero share
        (10, [[0.5, 0.5]]),  # not 1-D
        (2, [0.2, 0.3, 0.5]),  # fewer users than groups
    ],
)
def test_users_per_group_rejects_bad_input(n: int, shares: list) -> None:
    with pytest.raises(ValueError):
        users_per_group(n, shares)


# --------------------------------------------------------------------------- planted problems


def test_planted_linear_problem_shapes_norms_and_seed() -> None:
    psi, theta = planted_linear_problem(5, 3, 2000, 4.0, 7)
    assert psi.shape == (2000, 5) and theta.shape == (3, 5)
    np.testing.assert_allclose(np.linalg.norm(theta, axis=1), 4.0, rtol=1e-12)
    # psi ~ N(0, I/d): E||psi||^2 = 1 and covariance I/d (2000 rows: a few % sampling error)
    assert abs(np.mean(np.sum(psi**2, axis=1)) - 1.0) < 0.05
    np.testing.assert_allclose(np.cov(psi.T), np.eye(5) / 5, atol=0.02)
    psi2, theta2 = planted_linear_problem(5, 3, 2000, 4.0, 7)
    np.testing.assert_array_equal(psi, psi2)
    np.testing.assert_array_equal(theta, theta2)
    psi3, theta3 = planted_linear_problem(5, 3, 2000, 4.0, 8)
    assert not np.allclose(theta, theta3) and not np.allclose(psi, psi3)


def test_theory_problem_shapes_norms_and_diverse_groups() -> None:
    for seed in range(5):
        psi, phi_min, phi_maj, pi_ref = theory_problem(7, 3, 2.5, seed)
        assert psi.shape == (7, 3) and phi_min.shape == phi_maj.shape == (3,)
        np.testing.assert_allclose(pi_ref, np.full(7, 1 / 7))
        np.testing.assert_allclose(np.linalg.norm(phi_min), 2.5, rtol=1e-12)
        np.testing.assert_allclose(np.linalg.norm(phi_maj), 2.5, rtol=1e-12)
        # the groups disagree on some pair of responses (preferences differ)
        r_min, r_maj = psi @ phi_min, psi @ phi_maj
        d_min = np.sign(r_min[:, None] - r_min[None, :])
        d_maj = np.sign(r_maj[:, None] - r_maj[None, :])
        assert np.any(d_min != d_maj)


def test_theory_problem_groups_in_opposite_half_spaces() -> None:
    """The docstring promises opposite half-spaces: phi_min . phi_maj < 0 for every seed."""
    dots = [
        float(phi_min @ phi_maj)
        for phi_min, phi_maj in (theory_problem(12, 4, 3.0, s)[1:3] for s in range(20))
    ]
    assert all(d < 0 for d in dots), dots


# --------------------------------------------------------------------------- recovery sweep

EASY = {
    "dim": 3,
    "n_users": 40,
    "n_heldout": 20,
    "n_alternatives": 30,
    "scale": 8.0,
    "lam": 1.0,
    "n_restarts": 2,
    "seed": 0,
}


@pytest.fixture(scope="module")
def easy_sweep() -> pd.DataFrame:
    return recovery_sweep(
        per_user_grid=[1, 40], per_user=40, eta_grid=[0.3, 0.5], eta=0.5, n_seeds=3, **EASY
    )


def test_recovery_sweep_frame_layout(easy_sweep: pd.DataFrame) -> None:
    df = easy_sweep
    assert list(df.columns) == RECOVERY_COLUMNS
    assert len(df) == (2 + 2) * 3 * 2
    counts = df.groupby(["sweep", "x", "method"]).size()
    assert set(counts) == {3}
    assert set(df["method"]) == {"hard EM", "soft EM"}
    assert sorted(df.loc[df.sweep == "comparisons_per_user", "x"].unique()) == [1, 40]
    assert sorted(df.loc[df.sweep == "minority_share", "x"].unique()) == [0.3, 0.5]
    assert sorted(df["seed"].unique()) == [0, 1, 2]
    assert (df["n_iter"] >= 1).all() and (df["n_iter"] <= 50).all()


def test_recovery_sweep_recovers_planted_groups_when_easy(easy_sweep: pd.DataFrame) -> None:
    """40 nearly deterministic comparisons per user: both EMs recover the planted split
    exactly, on training users and on held-out users assigned by the fitted mixture."""
    easy = easy_sweep[~((easy_sweep.sweep == "comparisons_per_user") & (easy_sweep.x == 1))]
    assert len(easy) == 18
    np.testing.assert_allclose(easy["ari"], 1.0)
    np.testing.assert_allclose(easy["heldout_ari"], 1.0)


def test_recovery_sweep_one_comparison_is_near_chance() -> None:
    """One comparison per user carries almost no group information: ARI near 0 on average."""
    df = recovery_sweep(per_user_grid=[1], per_user=1, eta_grid=[], eta=0.5, n_seeds=6, **EASY)
    assert len(df) == 6 * 2
    assert df["ari"].mean() < 0.3 and df["heldout_ari"].mean() < 0.3
    assert df["ari"].mean() > -0.2


def test_recovery_sweep_deterministic(easy_sweep: pd.DataFrame) -> None:
    again = recovery_sweep(
        per_user_grid=[1, 40], per_user=40, eta_grid=[0.3, 0.5], eta=0.5, n_seeds=3, **EASY
    )
    pd.testing.assert_frame_equal(easy_sweep, again)


def test_recovery_sweep_simulates_the_requested_settings(monkeypatch) -> None:
    """Spy on simulate_users: group sizes, comparisons per user and beta of every call."""
    calls = []
    real = simulate_users

    def spy(R, counts, cpu, beta, seed):
        calls.append((list(counts), cpu, beta, np.shape(R)))
        return real(R, counts, cpu, beta, seed)

    monkeypatch.setattr(em_mixtures, "simulate_users", spy)
    df = recovery_sweep(
        dim=3,
        n_users=20,
        n_heldout=6,
        n_alternatives=12,
        scale=4.0,
        per_user_grid=[2, 3],
        per_user=4,
        eta_grid=[0.1, 0.5],
        eta=0.25,
        n_seeds=1,
        lam=1.0,
        n_restarts=1,
        seed=0,
    )
    assert len(df) == 8
    expected = []
    for counts, cpu in [([5, 15], 2), ([5, 15], 3), ([2, 18], 4), ([10, 10], 4)]:
        expected += [(counts, cpu, 1.0, (12, 2)), ([3, 3], cpu, 1.0, (12, 2))]
    assert calls == expected


# --------------------------------------------------------------------------- choosing K


@pytest.mark.parametrize("true_k", [2, 3])
def test_choose_k_table_recovers_planted_k(true_k: int) -> None:
    """Nearly orthogonal groups in R^8 with 40 comparisons per user: K found every time."""
    for seed in range(3):
        k, table = choose_k_table(
            dim=8,
            n_users=48,
            n_alternatives=40,
            scale=8.0,
            per_user=40,
            true_k=true_k,
            candidates=[4, 1, 3, 2],
            lam=1.0,
            n_restarts=2,
            seed=seed,
        )
        assert k == true_k, (seed, table)
        assert table["n_groups"].tolist() == [1, 2, 3, 4]
        assert {"train_objective", "heldout_log_likelihood", "heldout_se"} <= set(table.columns)
        ll = table.set_index("n_groups")["heldout_log_likelihood"]
        # fewer groups than planted cannot explain the held-out users
        assert all(ll[j] < ll[true_k] for j in range(1, true_k))


# --------------------------------------------------------------------------- impossibility

ETAS = [0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_impossibility_table(seed: int) -> None:
    beta = 0.5
    df = impossibility_table(6, 3, 3.0, beta, ETAS, seed)
    psi, phi_min, phi_maj, pi_ref = theory_problem(6, 3, 3.0, seed)
    assert df["eta"].tolist() == ETAS
    assert df["dist_bound_holds"].all()
    assert np.all(df["dist"] >= df["dist_bound"])
    assert df["eps"].nunique() == 1 and df["eps"].iloc[0] > 0
    # closed forms at the ends: eta = 1 pools only the minority, eta = 0 only the majority
    assert df["dist"].iloc[-1] < 1e-6 and df["gap"].iloc[-1] < 1e-9
    np.testing.assert_allclose(df["dist"].iloc[0], np.linalg.norm(phi_maj - phi_min), rtol=1e-6)
    # alignment gaps there: J_u(pi*_u) - J_u(pi*_v) = beta KL(pi*_v || pi*_u) (not symmetric)
    pi_min = softmax_policy(psi @ phi_min, pi_ref, beta)
    pi_maj = softmax_policy(psi @ phi_maj, pi_ref, beta)
    kl = lambda p, q: float(np.sum(p * np.log(p / q)))  # noqa: E731
    np.testing.assert_allclose(df["gap"].iloc[0], beta * kl(pi_maj, pi_min), rtol=1e-5)
    np.testing.assert_allclose(df["gap_majority"].iloc[-1], beta * kl(pi_min, pi_maj), rtol=1e-5)
    assert df["gap_majority"].iloc[0] < 1e-9
    # the pooled reward moves toward the minority as its share grows
    assert np.all(np.diff(df["dist"]) < 0)


# --------------------------------------------------------------------------- MaxMin vs single


@pytest.mark.parametrize("seed", [0, 4, 6])
def test_maxmin_vs_single_beats_grid_search(seed: int) -> None:
    """3 responses: no policy on a 1/600 grid of the simplex has a better worst group than
    MaxMin, and the grid's best is within its resolution of MaxMin's value."""
    beta, etas = 0.5, [0.0, 0.1, 0.5, 1.0]
    df = maxmin_vs_single(3, 2, 3.0, beta, etas, seed)
    psi, phi_min, phi_maj, pi_ref = theory_problem(3, 2, 3.0, seed)
    R = np.vstack([phi_min, phi_maj]) @ psi.T  # (2, 3)
    grid_best = utilities(simplex_grid(600), R, pi_ref, beta).min(axis=1).max()

    mm = df[df.policy == "MaxMin"]
    worst_mm = mm.groupby("eta")["utility"].min()
    assert np.ptp(worst_mm) < 1e-12  # the same policy at every eta
    assert np.ptp(mm[mm.group == "minority"]["utility"]) < 1e-12
    assert np.ptp(mm[mm.group == "majority"]["utility"]) < 1e-12
    v = float(worst_mm.iloc[0])
    assert v >= grid_best - 1e-9
    assert v <= grid_best + 1e-3

    worst_single = df[df.policy == "single reward"].groupby("eta")["utility"].min()
    assert np.all(worst_mm.to_numpy() >= worst_single.to_numpy() - 1e-9)


@pytest.mark.parametrize("seed", [0, 4])
def test_maxmin_vs_single_own_optimum_closed_form(seed: int) -> None:
    """utility_own_optimum = beta log sum pi_ref exp(r_u / beta) (Gibbs); no policy beats it,
    and the single-reward policy attains it for the minority at eta = 1 and for the majority
    at eta = 0 (the pooled reward is then that group's own)."""
    beta = 0.5
    df = maxmin_vs_single(3, 2, 3.0, beta, [0.0, 0.3, 1.0], seed)
    psi, phi_min, phi_maj, pi_ref = theory_problem(3, 2, 3.0, seed)
    R = np.vstack([phi_min, phi_maj]) @ psi.T
    own = beta * logsumexp(np.log(pi_ref) + R / beta, axis=1)  # (2,)
    assert len(df) == 3 * 2 * 2
    for u, group in enumerate(("minority", "majority")):
        rows = df[df.group == group]
        np.testing.assert_allclose(rows["utility_own_optimum"], own[u], rtol=1e-10)
        assert np.all(rows["utility"] <= own[u] + 1e-10)
    single = df[df.policy == "single reward"].set_index(["eta", "group"])["utility"]
    np.testing.assert_allclose(single[(1.0, "minority")], own[0], atol=1e-8)
    np.testing.assert_allclose(single[(0.0, "majority")], own[1], atol=1e-8)
    # and the other group loses something at that extreme
    assert single[(1.0, "majority")] < own[1] - 1e-6
    assert single[(0.0, "minority")] < own[0] - 1e-6


# --------------------------------------------------------------------------- text features


def test_text_features_oracle_pca_and_raw() -> None:
    rewards = synthetic_rewards(40, 0)
    emb = np.random.default_rng(1).standard_normal((40, 12))
    feats = text_features(emb, rewards, [2, 5], seed=0)
    assert list(feats) == ["oracle", "MiniLM-PCA2", "MiniLM-PCA5", "MiniLM-12"]
    np.testing.assert_array_equal(feats["oracle"], rewards.to_numpy())
    np.testing.assert_array_equal(feats["MiniLM-12"], emb)
    # PCA scores = U S of the centred embeddings (up to the sign of each component)
    U, S, _ = np.linalg.svd(emb - emb.mean(axis=0), full_matrices=False)
    for k in (2, 5):
        X = feats[f"MiniLM-PCA{k}"]
        assert X.shape == (40, k)
        np.testing.assert_allclose(np.abs(X), np.abs(U[:, :k] * S[:k]), atol=1e-8)


def test_reward_linearity_oracle_exact_and_noise_poor() -> None:
    rewards = synthetic_rewards(40, 0)
    rng = np.random.default_rng(2)
    feats = {
        "oracle": rewards.to_numpy(),
        "positive-only": rewards[["positive"]].to_numpy(),
        "noise": rng.standard_normal((40, 6)),
    }
    df = reward_linearity(feats, rewards)
    assert list(df.columns) == ["features", "group", "cv_r2"]
    assert len(df) == 3 * len(GROUPS)
    r2 = df.set_index(["features", "group"])["cv_r2"]
    for g in GROUPS:
        assert r2[("oracle", g)] > 0.999  # every reward is exactly linear in the oracle
        assert r2[("noise", g)] < 0.3
    assert r2[("positive-only", "positive")] > 0.999
    # independent rewards: the positive column explains nothing about the others
    assert r2[("positive-only", "concise")] < 0.3
    assert r2[("positive-only", "plain")] < 0.3


def test_text_recovery_oracle_recovers_groups() -> None:
    rewards = synthetic_rewards(40, 3)
    feats = {
        "oracle": rewards.to_numpy(),
        "noise": np.random.default_rng(4).standard_normal((40, 5)),
    }
    df = text_recovery(
        feats,
        rewards,
        users_per_group=[4, 4, 4],
        heldout_per_group=[3, 3, 3],
        per_user_grid=[2, 60],
        beta=4.0,
        n_seeds=2,
        lam=1.0,
        n_restarts=2,
        seed=0,
    )
    assert list(df.columns) == [
        "features",
        "comparisons_per_user",
        "seed",
        "ari",
        "heldout_ari",
        "n_iter",
        "converged",
    ]
    assert len(df) == 2 * 2 * 2
    assert df.groupby(["features", "comparisons_per_user"]).size().eq(2).all()
    easy = df[(df.features == "oracle") & (df.comparisons_per_user == 60)]
    np.testing.assert_allclose(easy["ari"], 1.0)
    np.testing.assert_allclose(easy["heldout_ari"], 1.0)


# --------------------------------------------------------------------------- matching groups


def test_match_groups_planted_permutation() -> None:
    truth = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])
    found = np.array([2, 2, 1, 0, 0, 0, 1, 1, 1])  # fitted 2 <- planted 0, 0 <- 1, 1 <- 2
    assert match_groups(truth, found, 3) == [1, 2, 0]
    assert match_groups(truth, np.array([0] * 5 + [1] * 4), 3) == [0, 2, -1]


# --------------------------------------------------------------------------- config and neural EM


def test_config_merges_the_nested_neural_reward_model_settings(tiny_params: Path) -> None:
    """``neural_reward_model`` is one RewardModelSettings merged key by key from the shared
    section, the cpu profile and the tiny overrides; the old flat keys are refused."""
    cfg = load_stage_config("em_mixtures", Config, tiny_params)
    assert cfg.neural_reward_model == RewardModelSettings(
        num_train_epochs=1.0,  # cpu profile
        learning_rate=5e-5,  # shared
        per_device_train_batch_size=8,  # tiny override of the cpu profile's 32
        max_length=32,  # tiny override of the shared 96
    )
    text = tiny_params.read_text(encoding="utf-8")
    old = tiny_params.with_name("old.yaml")
    old.write_text(text.replace("em_mixtures:\n", "em_mixtures:\n  neural_epochs: 1.0\n", 1))
    with pytest.raises(ValueError, match=r"em_mixtures\.neural_epochs: unknown key"):
        load_stage_config("em_mixtures", Config, old)


@pytest.mark.parametrize("folds", [0, 2])
def test_neural_text_em_trains_with_the_reward_model_settings(monkeypatch, folds) -> None:
    """neural_text_em hands the RewardModelSettings to the neural EM (max_length and the
    trainer arguments), builds one-output classifiers of the backbone, and reports the
    simulated comparisons; the EM (in-sample, or cross-fitted with ``folds``) is replaced
    by a stand-in that records its call."""
    calls: dict = {}
    loaded: list = []

    class Fitted:
        def __init__(self, n_users: int, n_groups: int, n_iter: int) -> None:
            self.n_iter, self.converged = n_iter, True
            self.log_likelihood = [-1.0 - i for i in range(n_iter)]
            self.assignment = np.arange(n_users) % n_groups
            self.assignments = [self.assignment] * n_iter
            self.initial = (np.arange(n_users) + 1) % n_groups
            self.models = [f"model {k}" for k in range(n_groups)]
            self.n_groups = n_groups

        def assign(self, chosen, rejected, user):
            n = int(np.max(user)) + 1
            return None, np.arange(n) % self.n_groups

        def rewards(self, texts):
            return np.random.default_rng(0).standard_normal((len(texts), self.n_groups))

    def fake_fit(chosen, rejected, user, K, new_model, tokenizer, **kwargs):
        calls.update(kwargs, chosen=chosen, rejected=rejected, user=user, K=K, tok=tokenizer)
        new_model(0)
        return Fitted(int(np.max(user)) + 1, K, kwargs["n_iter"])

    def fake_classifier(name, **kwargs):
        loaded.append((name, kwargs))
        return "model"

    fit_name = "fit_neural_crossfit_em" if folds else "fit_neural_em"
    monkeypatch.setattr(em_mixtures, fit_name, fake_fit)
    monkeypatch.setattr(
        em_mixtures,
        "score_texts",
        lambda model, tok, texts, length: np.arange(len(texts)) * (1.0 + int(model[-1])),
    )
    monkeypatch.setattr(em_mixtures, "load_sequence_classifier", fake_classifier)
    monkeypatch.setattr(em_mixtures, "load_tokenizer", lambda name: f"tokenizer of {name}")
    rewards = synthetic_rewards(12, 5)
    snippets = [f"snippet {i}" for i in range(12)]
    settings = RewardModelSettings(
        num_train_epochs=2.0, learning_rate=3e-4, per_device_train_batch_size=4, max_length=24
    )
    iters, summary = em_mixtures.neural_text_em(
        snippets, rewards, [2, 2, 1], [1, 1, 1], per_user=3, beta=2.0, backbone="some/folder",
        n_iter=2, reward_model=settings, seed=7, folds=folds,
    )  # fmt: skip
    assert calls["max_length"] == 24
    assert calls.get("n_folds", 0) == folds
    assert calls["train_args"] == {
        "learning_rate": 3e-4,
        "num_train_epochs": 2.0,
        "per_device_train_batch_size": 4,
    }
    assert (calls["n_iter"], calls["seed"], calls["K"]) == (2, 7, 3)
    assert calls["tok"] == "tokenizer of some/folder"
    assert loaded == [("some/folder", {"num_labels": 1})]
    sim = simulate_users(rewards.to_numpy(), [2, 2, 1], 3, 2.0, 7)  # the users it simulates
    assert calls["chosen"] == [snippets[i] for i in sim.chosen]
    assert calls["rejected"] == [snippets[i] for i in sim.rejected]
    assert np.array_equal(calls["user"], sim.user)
    assert iters["iteration"].tolist() == [1, 2] and summary["n_iter"] == 2
    # every user started one group off the final assignment: all moved at E-step 1, none after
    assert iters["moved"].tolist() == [1.0, 0.0] and summary["moved_from_start"] == 1.0
    assert summary["n_comparisons"] == 5 * 3
    assert np.shape(summary["spearman_fitted_vs_truth"]) == (3, 3)
