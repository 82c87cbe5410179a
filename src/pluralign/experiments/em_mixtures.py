"""Notebook 03 (MaxMin-RLHF, reward learning): EM recovery of planted groups, the
impossibility result, MaxMin vs a single reward, and EM on text.

Every function returns tidy ``pandas`` frames (one row per run) and is seeded by its
arguments, so the notebook only plots. Recovery is scored against the *planted* groups with
the adjusted Rand index (ARI; label-permutation invariant, 0 for chance, 1 for exact).

**EM on text.** P-SOUPS (Jang et al., 2023) asks annotators to prefer answers along one axis
each (e.g. concise vs. verbose). It is not available offline, so we plant the same structure
on real review snippets (:func:`pluralign.data.text.extract_snippets`) with rule-based
ground-truth rewards, one per hidden group (:data:`GROUPS`):

=========  ===========================================  ==================================
group      raw reward r_k(x)                            why
=========  ===========================================  ==================================
positive   VADER compound polarity, in [-1, 1]          sentiment, the usual IMDB reward
concise    ``-log(number of words)``                    shorter is better, per P-SOUPS
plain      ``-clip(Flesch-Kincaid grade, -5, 25)``      readable words, short sentences
=========  ===========================================  ==================================

The rewards are z-scored (:func:`pluralign.core.stats.standardize`) so one ``beta`` means
the same noise for every group; :func:`group_correlations` says how separable the groups
are; users label pairs under Bradley-Terry (:func:`pluralign.core.simulate.simulate_users`)
and EM must recover the groups from the comparisons alone.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import adjusted_rand_score
from tqdm.auto import tqdm

from pluralign._typing import FloatArray
from pluralign.core.maxmin_theory import (
    group_utilities,
    impossibility_sweep,
    kl_regularized_policy,
    maxmin_policy,
    pooled_reward,
)
from pluralign.core.mixture import (
    EMNotConvergedWarning,
    fit_em,
    match_groups,
    select_n_groups,
    user_log_likelihoods,
)
from pluralign.core.simulate import SimulatedComparisons, simulate_users, users_per_group
from pluralign.data.scorers import FK_CLIP, flesch_kincaid_grade, n_words, vader_compound
from pluralign.pipeline.assets import PACKAGED_MINILM, packaged_minilm
from pluralign.pipeline.config import StageConfig
from pluralign.training.models import load_sequence_classifier, load_tokenizer
from pluralign.training.neural_crossfit import fit_neural_crossfit_em
from pluralign.training.neural_mixture import fit_neural_em
from pluralign.training.reward_models import RewardModelSettings, score_texts

#: The stage's DVC metrics: recovery at the README's settings, the bounds, MaxMin vs one reward, EM
#: on text. Its other numbers go to ``results/details/``.
HEADLINE: tuple[str, ...] = (
    "planted_ari_hard_EM_comparisons_per_user_20",
    "planted_ari_hard_EM_minority_share_0.05",
    "planted_ari_soft_EM_minority_share_0.05",
    "select_k_chosen",
    "select_k_true",
    "gap_bound_holds_all",
    "dist_bound_holds_all",
    "worst_utility_maxmin",
    "text_neural_ari",
    "text_neural_crossfit_ari",
    "text_neural_crossfit_converged",
    "planted_converged_share",
)


@dataclass(frozen=True, kw_only=True)
class Config(StageConfig):
    """``em_mixtures`` (notebook 03): EM over users and the MaxMin impossibility result."""

    lam: float
    """Ridge of each linear group reward (``mixture.fit_em``)."""
    n_restarts: int
    """EM restarts (the first round robin, as in the paper)."""
    n_seeds: int
    """Repetitions of every recovery setting (fresh problem and users each)."""
    # 1. planted linear groups
    planted_dim: int
    planted_alternatives: int
    planted_scale: float
    """Norm of each group's theta: how deterministic its choices are."""
    planted_users: int
    planted_heldout_users: int
    planted_per_user_grid: list[int]
    planted_per_user: int
    """Comparisons per user in the minority-share sweep."""
    planted_eta_grid: list[float]
    planted_eta: float
    """Minority share in the comparisons-per-user sweep."""
    select_true_k: int
    select_candidates: list[int]
    # 2./3. impossibility and MaxMin, one prompt with finitely many responses
    theory_responses: int
    theory_dim: int
    theory_scale: float
    theory_beta: float
    theory_eta_grid: list[float]
    # 4. EM on text
    imdb: str
    encoder: str
    text_reviews: int
    """Reviews (in a seeded order) the snippets are drawn from."""
    text_snippets: int
    text_min_words: int
    text_max_words: int
    text_users_per_group: list[int]
    """Users of the groups positive, concise, plain (:data:`GROUPS` order)."""
    text_heldout_per_group: list[int]
    text_per_user_grid: list[int]
    text_beta: float
    """BT inverse temperature on standardized rewards."""
    text_pca_dims: list[int]
    # 4b. neural EM: one fine-tuned transformer reward model per group (TRL RewardTrainer)
    neural_backbone: str
    """``packaged-minilm`` or a hub model name for AutoModelForSequenceClassification."""
    neural_per_user: int
    neural_n_iter: int
    neural_folds: int
    """Folds of the cross-fitted E-step (``core.crossfit_em``), run beside the in-sample one."""
    neural_reward_model: RewardModelSettings
    """How each group's reward model is trained in every M-step."""


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
    """ARI on training and held-out users, iterations, and whether EM converged. A sweep
    fits hundreds of mixtures: whether each converged is a column (the notebook reports
    the share), not a warning per fit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EMNotConvergedWarning)
        res = fit_em(psi[sim.chosen], psi[sim.rejected], sim.user, K, **em)
    _, held_groups = res.assign(psi[held.chosen], psi[held.rejected], held.user)
    return {
        "ari": adjusted_rand_score(sim.user_group, res.assignment),
        "heldout_ari": adjusted_rand_score(held.user_group, held_groups),
        "n_iter": res.n_iter,
        "converged": bool(res.converged),
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
    reward_model: RewardModelSettings,
    seed: int,
    folds: int = 0,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Neural hard EM (one transformer reward model per group, trained with TRL) on text.

    ``folds = 0``: the paper's in-sample E-step (``fit_neural_em``); ``folds >= 2``: the
    cross-fitted E-step (``fit_neural_crossfit_em``), where users are scored on comparisons
    the models did not train on. Returns per-iteration rows (iteration, ari, moved: share of
    users whose group changed) and a summary: final and held-out ARI, users moved from the
    round-robin start, and for each fitted model the Spearman correlation of its rewards on
    all snippets with every planted group's ground truth (the matched group should be
    highest).
    """
    if backbone == PACKAGED_MINILM:
        backbone = packaged_minilm()
    R = rewards.to_numpy(dtype=np.float64)
    K = R.shape[1]
    sim = simulate_users(R, users_per_group, per_user, beta, seed)
    held = simulate_users(R, heldout_per_group, per_user, beta, seed + 1)
    texts = list(snippets)
    tok = load_tokenizer(backbone)
    args = (
        [texts[i] for i in sim.chosen],
        [texts[i] for i in sim.rejected],
        sim.user,
        K,
        lambda k: load_sequence_classifier(backbone, num_labels=1),
        tok,
    )
    kw = {
        "n_iter": n_iter,
        "seed": seed,
        "max_length": reward_model.max_length,
        "train_args": reward_model.trainer_args(),
        "progress": progress,
    }
    res = (
        fit_neural_crossfit_em(*args, n_folds=folds, **kw) if folds else fit_neural_em(*args, **kw)
    )
    start = np.asarray(res.initial)
    previous = [start, *res.assignments[:-1]]
    iters = pd.DataFrame(
        {
            "iteration": np.arange(1, len(res.assignments) + 1),
            "ari": [adjusted_rand_score(sim.user_group, a) for a in res.assignments],
            "moved": [
                float(np.mean(a != p)) for a, p in zip(res.assignments, previous, strict=True)
            ],
        }
    )
    length = reward_model.max_length
    fitted = np.stack([score_texts(m, tok, texts, length) for m in res.models], 1)  # (m, K)
    held_margins = fitted[held.chosen] - fitted[held.rejected]  # (n_held, K)
    held_ids, held_uidx = np.unique(held.user, return_inverse=True)
    S = user_log_likelihoods(held_margins, held_uidx, np.ones(len(held.user)), held_ids.size)
    held_groups = np.argmax(S, axis=1)
    corr = [[float(spearmanr(fitted[:, k], R[:, j])[0]) for j in range(K)] for k in range(K)]
    summary = {
        "ari": float(iters["ari"].iloc[-1]),
        "heldout_ari": float(adjusted_rand_score(held.user_group[held_ids], held_groups)),
        "moved_from_start": float(np.mean(res.assignment != start)),
        "n_iter": len(res.assignments),
        "converged": res.converged,
        "matched_group": match_groups(sim.user_group, res.assignment, K),
        "spearman_fitted_vs_truth": corr,
        "n_comparisons": len(sim.user),
    }
    return iters, summary


#: The hidden groups, in the column order of :func:`group_rewards`.
GROUPS: tuple[str, ...] = ("positive", "concise", "plain")


def group_rewards(texts: Sequence[str]) -> pd.DataFrame:
    """Raw ground-truth rewards: one row per text, one column per :data:`GROUPS` entry.

    ``positive`` = VADER compound; ``concise`` = ``-log(n_words)``; ``plain`` =
    ``-clip(flesch_kincaid_grade, *FK_CLIP)`` (higher = easier to read). Raw scales differ
    (VADER spans [-1, 1], ``concise`` about [-4, -1.5]): pass the frame to
    :func:`standardize` before using it as Bradley-Terry utilities.

    Raises
    ------
    ValueError
        If a text has no words (``-log 0`` is undefined).
    """
    words = np.array([n_words(t) for t in texts], dtype=np.float64)
    empty = np.flatnonzero(words == 0)
    if empty.size:
        raise ValueError(f"text {int(empty[0])} has no words: no 'concise' reward")
    grade = np.array([flesch_kincaid_grade(t) for t in texts], dtype=np.float64)
    columns = {
        "positive": vader_compound(texts),
        "concise": -np.log(words),
        "plain": -np.clip(grade, *FK_CLIP),
    }
    return pd.DataFrame({g: columns[g] for g in GROUPS})


def group_correlations(rewards: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlation between the groups' rewards over the same texts.

    Strongly correlated groups rank most pairs alike, so their users' comparisons look alike
    and EM cannot separate them; rank correlation because only orderings matter to BT.
    """
    return rewards.corr(method="spearman")
