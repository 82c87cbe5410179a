"""Notebook 03's experiments: EM recovery of planted groups, impossibility, MaxMin vs single.

Every function returns tidy ``pandas`` frames (one row per run) and is seeded by its
arguments, so the notebook only plots. Recovery is scored against the *planted* groups with
the adjusted Rand index (ARI; label-permutation invariant, 0 for chance, 1 for exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.metrics import adjusted_rand_score
from tqdm.auto import tqdm

from pluralign.maxmin_theory import (
    group_utilities,
    impossibility_sweep,
    kl_regularized_policy,
    maxmin_policy,
    pooled_reward,
)
from pluralign.mixture import fit_em, match_groups, select_n_groups
from pluralign.text_groups import SimulatedComparisons, simulate_users

FloatArray = NDArray[np.float64]


def users_per_group(n_users: int, shares: Sequence[float]) -> list[int]:
    """Split ``n_users`` by ``shares`` (largest remainder), every group at least one user."""
    shares = np.asarray(shares, dtype=np.float64)
    if shares.ndim != 1 or np.any(shares <= 0) or not np.isclose(shares.sum(), 1.0):
        raise ValueError(f"shares must be positive and sum to 1, got {shares.tolist()}")
    if n_users < shares.size:
        raise ValueError(f"{n_users} users cannot fill {shares.size} groups")
    raw = shares * n_users
    counts = np.maximum(np.floor(raw).astype(int), 1)
    while counts.sum() < n_users:
        counts[np.argmax(raw - counts)] += 1
    while counts.sum() > n_users:
        counts[np.argmax(np.where(counts > 1, counts - raw, -np.inf))] -= 1
    return counts.tolist()


def planted_linear_problem(
    dim: int, n_groups: int, n_alternatives: int, scale: float, seed: int
) -> tuple[FloatArray, FloatArray]:
    """Alternatives ``psi`` (m, d) ~ N(0, I/d) and group rewards ``theta`` (K, d) of norm ``scale``.

    Random directions in d >= K dimensions are nearly orthogonal, so the groups disagree on
    about half of all pairs; ``scale`` sets how deterministic each group's choices are.
    """
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal((n_groups, dim))
    theta *= scale / np.linalg.norm(theta, axis=1, keepdims=True)
    psi = rng.standard_normal((n_alternatives, dim)) / np.sqrt(dim)
    return psi, theta


def _fit_and_score(
    psi: FloatArray, sim: SimulatedComparisons, held: SimulatedComparisons, K: int, **em: Any
) -> dict[str, float]:
    res = fit_em(psi[sim.chosen], psi[sim.rejected], sim.user, K, **em)
    _, held_groups = res.assign(psi[held.chosen], psi[held.rejected], held.user)
    return {
        "ari": adjusted_rand_score(sim.user_group, res.assignment),
        "heldout_ari": adjusted_rand_score(held.user_group, held_groups),
        "n_iter": res.n_iter,
    }


def recovery_sweep(
    dim: int,
    n_users: int,
    n_heldout: int,
    n_alternatives: int,
    scale: float,
    per_user_grid: Sequence[int],
    per_user: int,
    eta_grid: Sequence[float],
    eta: float,
    n_seeds: int,
    lam: float,
    n_restarts: int,
    seed: int,
    progress: bool = False,
) -> pd.DataFrame:
    """Two planted groups (minority share eta): ARI of hard and soft EM on training users and
    on held-out users (assigned by the fitted mixture), against comparisons per user (at
    ``eta``) and against eta (at ``per_user``). Rows: sweep, x, seed, method, ari, ..."""
    settings = [("comparisons_per_user", c, eta) for c in per_user_grid]
    settings += [("minority_share", e, e) for e in eta_grid]
    rows = []
    jobs = [(s, r) for s in settings for r in range(n_seeds)]
    for (sweep, x, share), rep in tqdm(jobs, desc="recovery", disable=not progress, mininterval=5):
        cpu = int(x) if sweep == "comparisons_per_user" else per_user
        rs = seed + 1000 * rep
        psi, theta = planted_linear_problem(dim, 2, n_alternatives, scale, rs)
        R = psi @ theta.T  # (m, 2); group 0 is the minority
        sim = simulate_users(R, users_per_group(n_users, [share, 1 - share]), cpu, 1.0, rs + 1)
        held = simulate_users(R, users_per_group(n_heldout, [0.5, 0.5]), cpu, 1.0, rs + 2)
        for hard in (True, False):
            em = {"hard": hard, "lam": lam, "n_restarts": n_restarts, "seed": rs}
            rows.append(
                {"sweep": sweep, "x": x, "seed": rep, "method": "hard EM" if hard else "soft EM"}
                | _fit_and_score(psi, sim, held, 2, **em)
            )
    return pd.DataFrame(rows)


def choose_k_table(
    dim: int,
    n_users: int,
    n_alternatives: int,
    scale: float,
    per_user: int,
    true_k: int,
    candidates: Sequence[int],
    lam: float,
    n_restarts: int,
    seed: int,
) -> tuple[int, pd.DataFrame]:
    """K chosen by held-out likelihood (one-SE rule) on ``true_k`` equal planted groups."""
    psi, theta = planted_linear_problem(dim, true_k, n_alternatives, scale, seed)
    counts = users_per_group(n_users, [1 / true_k] * true_k)
    sim = simulate_users(psi @ theta.T, counts, per_user, 1.0, seed + 1)
    k, table = select_n_groups(
        psi[sim.chosen],
        psi[sim.rejected],
        sim.user,
        candidates=candidates,
        seed=seed,
        lam=lam,
        n_restarts=n_restarts,
    )
    return k, pd.DataFrame(table)


def theory_problem(
    n_responses: int, dim: int, scale: float, seed: int
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """One prompt with ``n_responses`` responses: (psi (n, d), phi_minority, phi_majority,
    uniform pi_ref); the two groups' reward vectors point in opposite half-spaces so their
    preferences differ (eps well above 0)."""
    rng = np.random.default_rng(seed)
    psi = rng.standard_normal((n_responses, dim)) / np.sqrt(dim)
    phi_maj = rng.standard_normal(dim)
    phi_maj *= scale / np.linalg.norm(phi_maj)
    phi_min = rng.standard_normal(dim)
    phi_min -= 1.5 * abs(phi_min @ phi_maj) / (phi_maj @ phi_maj) * phi_maj  # cos < 0
    phi_min *= scale / np.linalg.norm(phi_min)
    return psi, phi_min, phi_maj, np.full(n_responses, 1.0 / n_responses)


def impossibility_table(
    n_responses: int, dim: int, scale: float, beta: float, eta_grid: Sequence[float], seed: int
) -> pd.DataFrame:
    """``maxmin_theory.impossibility_sweep`` over the minority share, as a frame."""
    psi, phi_min, phi_maj, pi_ref = theory_problem(n_responses, dim, scale, seed)
    return pd.DataFrame(impossibility_sweep(eta_grid, phi_min, phi_maj, psi, pi_ref, beta))


def maxmin_vs_single(
    n_responses: int, dim: int, scale: float, beta: float, eta_grid: Sequence[float], seed: int
) -> pd.DataFrame:
    """Each group's utility J_u under the pooled single-reward policy and the MaxMin policy.

    Rows: eta, policy ("single reward" / "MaxMin"), group ("minority" / "majority"), utility,
    and ``utility_own_optimum`` = J_u(pi*_u), the best that group could get alone.
    """
    psi, phi_min, phi_maj, pi_ref = theory_problem(n_responses, dim, scale, seed)
    R = np.vstack([phi_min, phi_maj]) @ psi.T  # (2, n)
    pi_mm, _, _ = maxmin_policy(R, pi_ref, beta)
    own = [
        float(group_utilities(kl_regularized_policy(R[u], pi_ref, beta), R, pi_ref, beta)[u])
        for u in range(2)
    ]
    rows = []
    for eta in eta_grid:
        r_pool = psi @ pooled_reward(np.vstack([phi_min, phi_maj]), [eta, 1 - eta], psi)
        policies = {
            "single reward": kl_regularized_policy(r_pool, pi_ref, beta),
            "MaxMin": pi_mm,
        }
        for name, pi in policies.items():
            J = group_utilities(pi, R, pi_ref, beta)
            for u, group in enumerate(("minority", "majority")):
                rows.append(
                    {
                        "eta": float(eta),
                        "policy": name,
                        "group": group,
                        "utility": float(J[u]),
                        "utility_own_optimum": own[u],
                    }
                )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- EM on text


def text_features(
    embeddings: FloatArray, rewards: pd.DataFrame, pca_dims: Sequence[int], seed: int
) -> dict[str, FloatArray]:
    """Feature maps psi(x) for the linear EM on text, from most to least informed.

    ``oracle``: the standardized ground-truth rewards themselves (every group's reward is
    exactly linear in them: the ceiling for this data); ``MiniLM-PCA<k>``: PCA of the sentence
    embeddings; ``MiniLM-<d>``: the raw embeddings. The gap between oracle and MiniLM is
    how much of a group's reward the encoder cannot express linearly.
    """
    from sklearn.decomposition import PCA

    feats = {"oracle": rewards.to_numpy(dtype=np.float64)}
    for k in pca_dims:
        feats[f"MiniLM-PCA{k}"] = PCA(k, random_state=seed).fit_transform(embeddings)
    feats[f"MiniLM-{embeddings.shape[1]}"] = np.asarray(embeddings, dtype=np.float64)
    return feats


def reward_linearity(features: dict[str, FloatArray], rewards: pd.DataFrame) -> pd.DataFrame:
    """Cross-validated R^2 of a ridge regression of each group's reward on each feature map."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import cross_val_score

    rows = []
    for name, X in features.items():
        for group in rewards.columns:
            r2 = cross_val_score(RidgeCV(alphas=np.logspace(-3, 3, 13)), X, rewards[group], cv=5)
            rows.append({"features": name, "group": group, "cv_r2": float(np.mean(r2))})
    return pd.DataFrame(rows)


def text_recovery(
    features: dict[str, FloatArray],
    rewards: pd.DataFrame,
    users_per_group: Sequence[int],
    heldout_per_group: Sequence[int],
    per_user_grid: Sequence[int],
    beta: float,
    n_seeds: int,
    lam: float,
    n_restarts: int,
    seed: int,
    progress: bool = False,
) -> pd.DataFrame:
    """Linear hard EM on simulated P-SOUPS-like users, per feature map and comparisons/user."""
    R = rewards.to_numpy(dtype=np.float64)
    K = R.shape[1]
    rows = []
    jobs = [(c, r) for c in per_user_grid for r in range(n_seeds)]
    for cpu, rep in tqdm(jobs, desc="text EM", disable=not progress, mininterval=5):
        rs = seed + 100_000 * rep + 10 * cpu  # rs + 1 (held-out users) never repeats
        sim = simulate_users(R, users_per_group, cpu, beta, rs)
        held = simulate_users(R, heldout_per_group, cpu, beta, rs + 1)
        for name, psi in features.items():
            em = {"hard": True, "lam": lam, "n_restarts": n_restarts, "seed": rs}
            rows.append(
                {"features": name, "comparisons_per_user": cpu, "seed": rep}
                | _fit_and_score(psi, sim, held, K, **em)
            )
    return pd.DataFrame(rows)


def neural_text_em(
    snippets: Sequence[str],
    rewards: pd.DataFrame,
    users_per_group: Sequence[int],
    heldout_per_group: Sequence[int],
    per_user: int,
    beta: float,
    backbone: str,
    n_iter: int,
    train_args: dict[str, Any],
    max_length: int,
    seed: int,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Neural hard EM (one transformer reward model per group, trained with TRL) on text.

    Returns per-iteration rows (iteration, log_likelihood, ari) and a summary: final and
    held-out ARI, and for each fitted model the Spearman correlation of its rewards on all
    snippets with every planted group's ground truth (the matched group should be highest).
    """
    from scipy.stats import spearmanr

    from pluralign.assets import load_sequence_classifier, load_tokenizer, sentence_encoder_path
    from pluralign.neural_mixture import fit_neural_em
    from pluralign.sentiment_judge import PACKAGED_MINILM

    if backbone == PACKAGED_MINILM:
        backbone = sentence_encoder_path()
    R = rewards.to_numpy(dtype=np.float64)
    K = R.shape[1]
    sim = simulate_users(R, users_per_group, per_user, beta, seed)
    held = simulate_users(R, heldout_per_group, per_user, beta, seed + 1)
    texts = list(snippets)
    res = fit_neural_em(
        [texts[i] for i in sim.chosen],
        [texts[i] for i in sim.rejected],
        sim.user,
        K,
        lambda k: load_sequence_classifier(backbone, num_labels=1),
        load_tokenizer(backbone),
        n_iter=n_iter,
        seed=seed,
        max_length=max_length,
        train_args=train_args,
        progress=progress,
    )
    iters = pd.DataFrame(
        {
            "iteration": np.arange(1, res.n_iter + 1),
            "log_likelihood": res.log_likelihood,
            "ari": [adjusted_rand_score(sim.user_group, a) for a in res.assignments],
        }
    )
    _, held_groups = res.assign(
        [texts[i] for i in held.chosen], [texts[i] for i in held.rejected], held.user
    )
    fitted = res.rewards(texts)  # (m, K)
    corr = [[float(spearmanr(fitted[:, k], R[:, j])[0]) for j in range(K)] for k in range(K)]
    summary = {
        "ari": float(iters["ari"].iloc[-1]),
        "heldout_ari": float(adjusted_rand_score(held.user_group, held_groups)),
        "n_iter": res.n_iter,
        "converged": res.converged,
        "matched_group": match_groups(sim.user_group, res.assignment, K),
        "spearman_fitted_vs_truth": corr,
        "n_comparisons": len(sim.user),
    }
    return iters, summary
