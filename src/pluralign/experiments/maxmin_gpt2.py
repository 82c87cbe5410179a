"""Notebook 04: MaxMin-RLHF at small scale on GPT-2 (Chakraborty et al., 2024), as a test.

Two groups judge the same reference-policy samples by their own ground truth:

* majority, ``sentiment``: P(positive) of prompt + continuation by the sentiment judge
  (``00_sentiment_judge`` on cpu, ``lvwerra/distilbert-imdb`` on the paper profile);
* minority, ``concise``: ``-(generated tokens, EOS included) / max_new_tokens`` in
  [-1, 0): an answer that stops after 3 tokens scores -0.125, one that hits the cap -1.

Users label pairs by a Bradley-Terry draw on their group's ground truth. Reward models are
linear BT fits on two feature *tiers* (:class:`FeatureMap`):

* ``oracle``: ``[z_sentiment, z_length]``, both groups' signals equally learnable, so the
  tier tests the paper's mechanism itself;
* ``text``: the sentiment judge's frozen encoder (:mod:`pluralign.training.text_features`)
  with a linear head: a reward model that reads text.

Per tier: one pooled reward, one per true group, and a K = 2 mixture by hard EM with a
cross-fitted E-step (:mod:`pluralign.core.crossfit_em`). The positive control trains on the
ground-truth functions themselves. Arms are compared *head to head* per prompt by each
group's ground truth (:func:`head_to_head`), and the verdict follows a rule fixed before
the runs (:func:`verdict`). Plumbing shared with 05 and 06: :mod:`pluralign.experiments._rlhf`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sklearn.metrics import adjusted_rand_score

from pluralign._typing import FloatArray, TextScore
from pluralign.core.crossfit_em import CrossFitEMResult, cross_fitted_hard_em, fit_linear
from pluralign.core.mixture import fit_em, match_groups
from pluralign.core.simulate import PairLabels
from pluralign.core.stats import bootstrap_ci, headline, win_rates
from pluralign.experiments._rlhf import Arm, Truth
from pluralign.pipeline.config import StageConfig
from pluralign.training.generation import GenerationSettings, Rollouts
from pluralign.training.ppo import PPOSettings

GROUPS = ("sentiment", "concise")
MAJORITY, MINORITY = GROUPS
TIERS = ("oracle", "text")


@dataclass(frozen=True)
class GentlePPO:
    """The robustness pair's PPO: a lower learning rate for more updates."""

    learning_rate: float
    n_updates: int

    def overrides(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate, "n_updates": self.n_updates}


#: The stage's DVC metrics: premise, control, EM recovery, the head-to-head claims and the
#: verdicts. Its other numbers go to ``results/details/``.
HEADLINE: tuple[str, ...] = (
    "premise_oracle_holds",
    "premise_text_holds",
    "control_works",
    "em_text_ari_ratio_10",
    "em_text_in_sample_ari_ratio_10",
    "em_text_converged",
    "h2h_control_concise",
    "h2h_oracle_concise",
    "h2h_text_concise",
    "h2h_text_sentiment",
    "verdict_oracle_reproduces",
    "verdict_text_reproduces",
)


@dataclass(frozen=True, kw_only=True)
class Config(StageConfig):
    """``maxmin_gpt2`` (notebook 04): single-reward PPO vs MaxMin PPO, sentiment vs concise."""

    policy: str
    """``00_policy_pretrain`` (that stage's model) or a pinned hub causal LM (``gpt2@..``)."""
    judge: str
    """``00_sentiment_judge`` or a pinned hub classifier: the majority's ground truth, and
    the frozen encoder of the text tier's reward models."""
    imdb: str
    """``packaged`` or a pinned hub dataset: the reviews whose openings are the prompts."""
    prompt_tokens: int
    generation: GenerationSettings
    """Sampling of preference data, PPO rollouts and evaluation."""
    n_pref_prompts: int
    """Prompts with two reference samples each: the pairs users label, and held-out pairs."""
    heldout_fraction: float
    """Share of the preference pairs never labelled: they measure reward accuracy."""
    n_ppo_prompts: int
    n_eval_prompts: int
    n_norm_samples: int
    """Reference samples on PPO prompts that z-score every feature and reward."""
    users_majority: int
    users_minority: int
    """The paper's 10:1 majority:minority ratio is 30:3 users here."""
    ratio_grid: list[int]
    """Majority:minority ratios (minority users fixed) at which EM's recovery is measured."""
    comparisons_per_user: int
    label_beta: float
    """BT inverse temperature on z-scored ground truth."""
    em_iters: int
    em_folds: int
    oracle_ridge: float
    text_ridge: float
    text_max_length: int
    ppo: PPOSettings
    gentle_ppo: GentlePPO
    """Overrides of ``ppo`` for the robustness pair (a lower lr, more updates)."""
    seeds: list[int]
    """PPO seeds of the main comparisons; the secondary runs use ``seeds[0]``."""
    n_boot: int

    @property
    def main_ratio(self) -> int:
        return round(self.users_majority / self.users_minority)

    def __post_init__(self) -> None:
        if self.main_ratio not in self.ratio_grid:
            raise ValueError(
                f"ratio_grid {self.ratio_grid} must hold the main ratio users_majority / "
                f"users_minority = {self.main_ratio}"
            )
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")


# --------------------------------------------------------------------------- ground truth


def concise_reward(n_tokens: Sequence[int] | NDArray[Any], max_new_tokens: int) -> FloatArray:
    """The minority's ground truth: ``-n_tokens / max_new_tokens`` (shorter is better)."""
    return -np.asarray(n_tokens, dtype=np.float64) / float(max_new_tokens)


def ground_truth(
    rollouts: Rollouts, sentiment: Callable[[list[str]], FloatArray], max_new_tokens: int
) -> pd.DataFrame:
    """Each group's ground-truth reward of each rollout (columns ``GROUPS``)."""
    return pd.DataFrame(
        {
            "sentiment": np.asarray(sentiment(rollouts.texts), dtype=np.float64),
            "concise": concise_reward(rollouts.n_tokens, max_new_tokens),
        }
    )


def truth_of(sentiment: Callable[[list[str]], FloatArray], max_new_tokens: int) -> Truth:
    """:func:`ground_truth` as the ``rollouts -> frame`` callable the notebook passes around."""
    return lambda rollouts: ground_truth(rollouts, sentiment, max_new_tokens)


def token_counter(tokenizer: Any) -> TextScore:
    """Tokens of each text (prompt + response, re-tokenized): PPO rewards see only decoded
    text. The prompt adds a near-constant, which z-scoring removes."""

    def count(texts: list[str]) -> FloatArray:
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return np.array([len(i) for i in ids], dtype=np.float64)

    return count


# --------------------------------------------------------------------------- features


class FeatureMap:
    """``texts -> (n, d)`` features, z-scored with the mean and std of ``norm_texts``
    (fresh reference samples, never a reward's training texts). The last batch is cached:
    MaxMin calls every group's reward on the same PPO batch."""

    def __init__(self, raw: Callable[[list[str]], FloatArray], norm_texts: Sequence[str]):
        self.raw = raw
        X = np.asarray(raw(list(norm_texts)), dtype=np.float64)
        self.mean = X.mean(axis=0)
        std = X.std(axis=0)
        self.std = np.where(std > 0, std, 1.0)
        self._key: tuple[str, ...] | None = None
        self._value: FloatArray | None = None

    def transform(self, raw: FloatArray) -> FloatArray:
        """Z-score raw features computed elsewhere (e.g. from ground truth already at hand)."""
        return (np.asarray(raw, dtype=np.float64) - self.mean) / self.std

    def __call__(self, texts: list[str]) -> FloatArray:
        key = tuple(texts)
        if key != self._key:
            self._key, self._value = key, self.transform(self.raw(list(texts)))
        assert self._value is not None
        return self._value


def oracle_raw(sentiment: TextScore, count_tokens: TextScore) -> TextScore:
    """The oracle tier's raw features ``[P(positive), tokens]`` of each text, (n, 2)."""

    def raw(texts: list[str]) -> FloatArray:
        return np.column_stack([sentiment(texts), count_tokens(texts)]).astype(np.float64)

    return raw  # type: ignore[return-value]


@dataclass(frozen=True)
class LinearReward:
    """``r(y) = theta . features(y)``: a fitted linear BT reward as a PPO text reward."""

    features: FeatureMap
    theta: FloatArray

    def __call__(self, texts: list[str]) -> FloatArray:
        return self.features(texts) @ self.theta


def concise_of_text(count_tokens: TextScore, max_new_tokens: int) -> TextScore:
    """The minority's ground truth as a text reward (the positive control): ``-tokens /
    max_new_tokens`` of the re-tokenized text (a constant off for the prompt and the EOS)."""
    return lambda texts: -count_tokens(texts) / float(max_new_tokens)


# --------------------------------------------------------------------------- reward learning


def comparison_features(
    X_a: FloatArray, X_b: FloatArray, labels: PairLabels
) -> tuple[FloatArray, FloatArray]:
    """(chosen, rejected) feature rows of the labelled comparisons (row j: pair
    ``labels.pair[j]``, ``a`` chosen iff ``labels.a_wins[j]``); ``X_*`` are indexed by pair."""
    w = labels.a_wins[:, None]
    A, B = X_a[labels.pair], X_b[labels.pair]
    return np.where(w, A, B), np.where(w, B, A)


@dataclass
class TierFit:
    """A tier's rewards (thetas): pooled, per true group, the EM mixture; and EM's record."""

    pooled: FloatArray
    per_group: dict[str, FloatArray]
    em: CrossFitEMResult[FloatArray]
    em_groups: list[int]  # the true group most of EM model k's users are in
    em_ari: float
    in_sample_ari: float  # the paper's in-sample E-step on the same data, for comparison
    in_sample_moved: float
    in_sample_converged: bool


def fit_tier(
    X_a: FloatArray,
    X_b: FloatArray,
    labels: PairLabels,
    ridge: float,
    em_iters: int,
    em_folds: int,
    seed: int,
    progress: bool = False,
) -> TierFit:
    """Linear BT fits on a tier's features: pooled (every comparison), one per true group,
    and hard EM with K = 2 from the round-robin start, cross-fitted over ``em_folds``."""
    chosen, rejected = comparison_features(X_a, X_b, labels)
    fit, margins = fit_linear(chosen, rejected, ridge)
    group_of_row = labels.user_group[labels.user]
    pooled = fit(np.arange(len(labels.user)))
    per_group = {g: fit(np.flatnonzero(group_of_row == k)) for k, g in enumerate(GROUPS)}
    em = cross_fitted_hard_em(
        fit, margins, labels.user, 2, n_folds=em_folds, n_iter=em_iters, seed=seed,
        progress=progress,
    )  # fmt: skip
    inside = fit_em(chosen, rejected, labels.user, 2, n_iter=em_iters, lam=ridge)
    truth = labels.user_group[em.user_ids]
    return TierFit(
        pooled=pooled,
        per_group=per_group,
        em=em,
        em_groups=match_groups(truth, em.assignment, 2),
        em_ari=float(adjusted_rand_score(truth, em.assignment)),
        in_sample_ari=float(adjusted_rand_score(truth, inside.assignment)),
        in_sample_moved=float(np.mean(inside.assignment != inside.initial)),
        in_sample_converged=bool(inside.converged),
    )


def em_rewards(fit: TierFit, features: FeatureMap) -> dict[str, TextScore]:
    """The EM mixture's rewards, named ``em<k>:<group it mostly holds>``."""
    return {
        f"em{k}:{GROUPS[g]}": LinearReward(features, theta)
        for k, (theta, g) in enumerate(zip(fit.em.models, fit.em_groups, strict=True))
    }


# --------------------------------------------------------------------------- the premise


def pair_agreement(
    score_a: FloatArray, score_b: FloatArray, truth_a: pd.DataFrame, truth_b: pd.DataFrame
) -> dict[str, FloatArray]:
    """Per group: 1 where a reward orders a held-out pair as the group's ground truth does,
    else 0 (pairs the ground truth ties are dropped; a reward tie counts 1/2)."""
    out = {}
    for g in truth_a.columns:
        diff = truth_a[g].to_numpy() - truth_b[g].to_numpy()
        keep = diff != 0
        agree = np.sign(np.asarray(score_a) - np.asarray(score_b))[keep] * np.sign(diff[keep])
        out[str(g)] = 0.5 + 0.5 * agree
    return out


def accuracy_table(
    scores: Mapping[tuple[str, str], tuple[FloatArray, FloatArray]],
    truth_a: pd.DataFrame,
    truth_b: pd.DataFrame,
    n_boot: int,
    seed: int,
) -> pd.DataFrame:
    """Held-out accuracy per (tier, reward) and group with bootstrap CIs over pairs (NaN
    where the ground truth ties every pair). ``scores[(tier, reward)] = (side a, side b)``."""
    rows = []
    for (tier, reward), (sa, sb) in scores.items():
        for g, agree in pair_agreement(sa, sb, truth_a, truth_b).items():
            m, lo, hi = bootstrap_ci(agree, n_boot, seed) if len(agree) else (np.nan,) * 3
            rows.append(
                {"tier": tier, "reward": reward, "group": g, "accuracy": m, "lo": lo, "hi": hi}
            )
            rows[-1]["pairs"] = len(agree)
    return pd.DataFrame(rows)


def premise(table: pd.DataFrame, tier: str) -> dict[str, Any]:
    """The paper's premise in one tier, by the rule written in the notebook: the pooled
    reward is majority-dominated (its majority accuracy's CI lies above its minority
    accuracy's) and far from the minority (the minority's own reward beats it on minority
    pairs, CIs apart)."""
    t = table[table["tier"] == tier].set_index(["reward", "group"])
    pooled_major, pooled_minor = t.loc[("pooled", MAJORITY)], t.loc[("pooled", MINORITY)]
    own_minor = t.loc[(MINORITY, MINORITY)]
    dominated = bool(pooled_major["lo"] > pooled_minor["hi"])
    far = bool(own_minor["lo"] > pooled_minor["hi"])
    return {
        "pooled_majority_accuracy": float(pooled_major["accuracy"]),
        "pooled_minority_accuracy": float(pooled_minor["accuracy"]),
        "own_minority_accuracy": float(own_minor["accuracy"]),
        "majority_dominated": dominated,
        "far_from_minority": far,
        "holds": dominated and far,
    }


# --------------------------------------------------------------------------- the design


HEAD_TO_HEAD = {
    "control": ("control_single", "control_maxmin"),
    "oracle": ("oracle_single", "oracle_maxmin"),
    "text": ("text_single", "text_maxmin"),
    "gentle": ("gentle_single", "gentle_maxmin"),
}
"""Head-to-head comparisons: label -> (single-reward run, MaxMin run), paired by seed."""


def arms(
    cfg: Config, rewards: Mapping[str, dict[str, TextScore]], with_true_groups: bool
) -> list[Arm]:
    """The experiment design as data, in training order.

    ``rewards``: ``control_single`` (the majority's ground truth), ``control_maxmin`` (both
    ground truths), ``<tier>_single`` (pooled), ``<tier>_maxmin`` (EM mixture), ``text_true``
    (per true group). Every seed: single vs MaxMin per sample for the control and both
    tiers. ``seeds[0]`` only: per-batch argmin (oracle EM), text per-true-group MaxMin
    (``with_true_groups``: skipped when EM found exactly the true groups, whose rewards are
    then the EM rewards), and the gentle pair (oracle, ``gentle_ppo``). A majority-only
    learned reward is left out: the control's single arm (the majority's true function)
    already shows what PPO does with the majority's reward alone."""
    out = []
    for s in cfg.seeds:
        for name in ("control", "oracle", "text"):
            out += [Arm(f"{name}_single", "single", rewards[f"{name}_single"], s)]
            out += [Arm(f"{name}_maxmin", "maxmin_sample", rewards[f"{name}_maxmin"], s)]
    s0 = cfg.seeds[0]
    out += [Arm("oracle_maxmin_batch", "maxmin_batch", rewards["oracle_maxmin"], s0)]
    if with_true_groups:
        out += [Arm("text_true", "maxmin_sample", rewards["text_true"], s0)]
    gentle = cfg.gentle_ppo.overrides()
    out += [Arm("gentle_single", "single", rewards["oracle_single"], s0, gentle)]
    out += [Arm("gentle_maxmin", "maxmin_sample", rewards["oracle_maxmin"], s0, gentle)]
    return out


# --------------------------------------------------------------------------- evaluation


def head_to_head(
    truths: Mapping[tuple[str, int], pd.DataFrame], n_boot: int, seed: int
) -> pd.DataFrame:
    """MaxMin vs single per prompt, by each group's ground truth (1 MaxMin better, 1/2 tie,
    0 worse), for every :data:`HEAD_TO_HEAD` pair whose runs share seeds. Win rates with a
    paired bootstrap over (seed, prompt) rows (:func:`pluralign.core.stats.headline`).

    ``truths[(run, seed)]``: ground truth of that run's answers to the evaluation prompts."""
    outcomes: dict[str, dict[str, FloatArray]] = {}
    for label, (base, new) in HEAD_TO_HEAD.items():
        seeds = sorted(s for r, s in truths if r == new and (base, s) in truths)
        if not seeds:
            continue
        per_seed = [win_rates(truths[(new, s)], truths[(base, s)]) for s in seeds]
        outcomes[label] = {g: np.concatenate([w[g].to_numpy() for w in per_seed]) for g in GROUPS}
    table = headline(outcomes, n_boot, seed)
    return table.rename(columns={"method": "comparison"})


def verdict(h2h: pd.DataFrame, premises: Mapping[str, bool]) -> dict[str, str]:
    """The rule fixed before the runs. No power if the positive control's minority lower
    bound is not above 1/2; otherwise per tier: "premise fails" if its premise failed,
    "reproduces" if MaxMin beats single for the minority (lower bound > 1/2), "reversed"
    if it loses (upper bound < 1/2), else "no difference"."""
    t = h2h.set_index(["comparison", "group"])
    if ("control", MINORITY) not in t.index or not t.loc[("control", MINORITY), "lo"] > 0.5:
        return dict.fromkeys(TIERS, "no power")
    out = {}
    for tier in TIERS:
        row = t.loc[(tier, MINORITY)]
        if not premises[tier]:
            out[tier] = "premise fails"
        elif row["lo"] > 0.5:
            out[tier] = "reproduces"
        elif row["hi"] < 0.5:
            out[tier] = "reversed"
        else:
            out[tier] = "no difference"
    return out
