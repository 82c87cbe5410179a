"""What notebooks 04, 05 and 06 share: preference pairs, the reward-model trio, PPO arms.

The experiments differ in data, users and evaluation; the plumbing between them is the same
and lives here, so a notebook reads *data -> rewards -> PPO arms -> evaluation*:

* :class:`PreferencePairs`: two reference samples per preference prompt, each group's
  ground truth of both, and an 80/20 split of the prompts into labelled and held-out pairs
  (held-out pairs measure a reward model's accuracy per group);
* :func:`fit_single_and_em`: the pooled reward model and the hard-EM mixture (MaxMin-RLHF,
  Alg. 1);
* :class:`Arm` and :func:`run_arm`: one PPO run on learned rewards (04, 05's in-process
  path), and :func:`evaluate_policy`: a trained policy judged by each group's ground truth
  against the reference policy on held-out prompts (04, 06).

Call order matters for reproducibility: a fresh reward or value head draws from torch's
global RNG, so notebooks keep their cells' order and these functions keep the order of
their steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pluralign._typing import IntArray, TextScore
from pluralign.core.maxmin import Aggregation
from pluralign.core.simulate import PairLabels, label_pairs
from pluralign.core.stats import evaluate, pair_accuracy, standardize_columns
from pluralign.training.generation import (
    GenerationSettings,
    Rollouts,
    kl_to_reference,
    sample_rollouts,
)
from pluralign.training.neural_mixture import NeuralEMResult, fit_neural_em
from pluralign.training.ppo import PPOSettings, train_policy
from pluralign.training.reward_models import RewardModelSettings, fit_reward_model, score_texts

Truth = Callable[[Rollouts], pd.DataFrame]
"""Each group's ground truth of each rollout: one column per group."""


# --------------------------------------------------------------------------- preference data


@dataclass
class PreferencePairs:
    """Two reference-policy samples ``a``, ``b`` per preference prompt and their ground truth.

    Pairs ``train`` (the first 80% of the prompts) are labelled by simulated users; pairs
    ``held`` are never labelled and measure reward-model accuracy."""

    a: Rollouts
    b: Rollouts
    truth_a: pd.DataFrame
    truth_b: pd.DataFrame
    n_train: int

    @classmethod
    def sample(
        cls,
        policy: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        prompt_ids: Sequence[Sequence[int]],
        generation: GenerationSettings,
        truth: Truth,
        seed: int,
        train_fraction: float = 0.8,
    ) -> PreferencePairs:
        """Sample both sides with seeds ``seed + 1`` and ``seed + 2`` and score them."""
        a = sample_rollouts(
            policy, tokenizer, prompt_ids, generation.max_new_tokens, generation.temperature,
            seed + 1,
        )  # fmt: skip
        b = sample_rollouts(
            policy, tokenizer, prompt_ids, generation.max_new_tokens, generation.temperature,
            seed + 2,
        )  # fmt: skip
        return cls(a, b, truth(a), truth(b), int(train_fraction * len(prompt_ids)))

    @property
    def train(self) -> IntArray:
        return np.arange(self.n_train)

    @property
    def held(self) -> IntArray:
        return np.arange(self.n_train, len(self.a))

    def label(
        self, users_per_group: Sequence[int], per_user: int, beta: float, seed: int
    ) -> PairLabels:
        """Users label the training pairs by BT draws on their group's ground truth, z-scored
        over all sampled pairs, held-out ones included (notebook 04's rule; notebook 05
        labels by P-SOUPS dimensions, z-scored over the labelled pairs only:
        :func:`pluralign.data.psoups.label_by_dimensions`)."""
        z_a, z_b = standardize_columns(self.truth_a, self.truth_b)
        return label_pairs(z_a[self.train], z_b[self.train], users_per_group, per_user, beta, seed)

    def comparisons(self, labels: PairLabels) -> tuple[list[str], list[str]]:
        """(chosen, rejected) texts (prompt + continuation) of the labelled comparisons."""
        texts_a = [self.a.texts[i] for i in self.train]
        texts_b = [self.b.texts[i] for i in self.train]
        return labels.chosen_rejected(texts_a, texts_b)

    def heldout_accuracy(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int
    ) -> dict[str, float]:
        """Per group: share of held-out pairs the model orders as the ground truth does."""
        held = self.held
        ra = score_texts(model, tokenizer, [self.a.texts[i] for i in held], max_length)
        rb = score_texts(model, tokenizer, [self.b.texts[i] for i in held], max_length)
        return pair_accuracy(ra, rb, self.truth_a.iloc[held], self.truth_b.iloc[held])


# --------------------------------------------------------------------------- reward models


def fit_single_and_em(
    chosen: Sequence[str],
    rejected: Sequence[str],
    users: IntArray,
    new_reward_model: Callable[[], PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    settings: RewardModelSettings,
    em_iters: int,
    seed: int,
    n_groups: int = 2,
    progress: bool = False,
) -> tuple[PreTrainedModel, NeuralEMResult]:
    """The pooled reward model on every comparison, then hard EM over ``n_groups`` models
    (round-robin start, as in the paper; models trained by TRL's ``RewardTrainer``)."""
    single = fit_reward_model(new_reward_model(), tokenizer, chosen, rejected, settings, seed)
    em = fit_neural_em(
        chosen,
        rejected,
        users,
        n_groups,
        lambda k: new_reward_model(),
        tokenizer,
        n_iter=em_iters,
        seed=seed,
        max_length=settings.max_length,
        train_args=settings.trainer_args(),
        progress=progress,
    )
    return single, em


# --------------------------------------------------------------------------- PPO arms


@dataclass(frozen=True)
class Arm:
    """One PPO run: its name, how the group rewards are aggregated, the learned rewards,
    the seed, and overrides of the stage's PPO settings (e.g. a higher ``kl_coef``)."""

    name: str
    how: Aggregation
    rewards: dict[str, TextScore]
    seed: int
    ppo_overrides: dict[str, Any] | None = None
    softmin_temperature: float = 0.0

    def settings(self, base: PPOSettings) -> PPOSettings:
        return replace(base, **(self.ppo_overrides or {}))


@dataclass(frozen=True)
class Evaluation:
    """The fixed part of every arm's evaluation: held-out prompts, the reference policy's
    answers' ground truth, the sampling seed, and the bootstrap's size and seed (default:
    the sampling seed)."""

    prompt_ids: list[list[int]]
    truth: Truth
    truth_ref: pd.DataFrame
    seed: int
    n_boot: int
    boot_seed: int | None = None


def evaluate_policy(
    policy: PreTrainedModel,
    ref_policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    generation: GenerationSettings,
    evaluation: Evaluation,
) -> tuple[Rollouts, dict[str, float]]:
    """A trained policy's answers on the evaluation prompts, judged by each group's ground
    truth against the reference's (mean and win rate with bootstrap CIs), its KL to the
    reference, and its answers' length and stop rate."""
    roll = sample_rollouts(
        policy,
        tokenizer,
        evaluation.prompt_ids,
        generation.max_new_tokens,
        generation.temperature,
        evaluation.seed,
    )
    gt = evaluation.truth(roll)
    boot_seed = evaluation.seed if evaluation.boot_seed is None else evaluation.boot_seed
    scores = evaluate(gt, evaluation.truth_ref, evaluation.n_boot, boot_seed)
    scores["kl"] = kl_to_reference(policy, ref_policy, tokenizer, roll, generation.temperature)
    scores["mean_tokens"] = float(roll.n_tokens.mean())
    scores["stop_rate"] = float(roll.stopped.mean())
    return roll, scores


def run_arm(
    arm: Arm,
    new_policy: Callable[[], PreTrainedModel],
    ref_policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Dataset,
    reference_texts: Sequence[str],
    ppo: PPOSettings,
    generation: GenerationSettings,
    workdir: str | Path,
    evaluation: Evaluation,
    progress: bool = False,
    on_checkpoint: Callable[[Any, int], dict[str, float]] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any], Rollouts]:
    """Train one PPO policy and evaluate it against the reference on held-out prompts by
    each group's ground truth. Returns (per-update log, summary row, evaluation rollouts)."""
    settings = arm.settings(ppo)
    t0 = time.perf_counter()
    policy, log, _ = train_policy(
        new_policy(),
        tokenizer,
        prompts,
        arm.rewards,
        reference_texts,
        arm.how,
        settings,
        generation,
        workdir,
        arm.seed,
        arm.softmin_temperature,
        progress,
        on_checkpoint,
    )
    train_s = time.perf_counter() - t0
    roll, scores = evaluate_policy(policy, ref_policy, tokenizer, generation, evaluation)
    row: dict[str, Any] = {"run": arm.name, "method": arm.how, "seed": arm.seed}
    row["kl_coef"] = settings.kl_coef
    row |= scores
    row["train_seconds"] = train_s
    row["seconds_per_update"] = train_s / settings.n_updates
    log = log.assign(run=arm.name, method=arm.how, seed=arm.seed)
    return log, row, roll


def probe_truth(
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    generation: GenerationSettings,
    truth: Truth,
    seed: int,
) -> Callable[[PreTrainedModel, int], dict[str, float]]:
    """A PPO checkpoint hook: each group's mean ground truth of the policy on a few
    evaluation prompts (``gt_<group>`` in the training log)."""

    def probe(policy: PreTrainedModel, updates: int) -> dict[str, float]:
        roll = sample_rollouts(
            policy, tokenizer, prompt_ids, generation.max_new_tokens, generation.temperature,
            seed,
        )  # fmt: skip
        gt = truth(roll)
        return {f"gt_{g}": float(gt[g].mean()) for g in gt.columns}

    return probe


def per_run_metrics(
    results: pd.DataFrame, groups: Sequence[str], digits: int = 4
) -> dict[str, dict[str, Any]]:
    """Nested metrics ``{run: {group: {reward, win_rate}, kl, mean_tokens}}``, means over
    seeds (DVC flattens them as ``runs.<run>.<group>.win_rate``)."""
    out: dict[str, dict[str, Any]] = {}
    for run, r in results.groupby("run", sort=True).mean(numeric_only=True).iterrows():
        entry: dict[str, Any] = {
            g: {
                "reward": round(float(r[f"{g}_reward"]), digits),
                "win_rate": round(float(r[f"{g}_win_rate"]), digits),
            }
            for g in groups
        }
        entry["kl"] = round(float(r["kl"]), digits)
        entry["mean_tokens"] = round(float(r["mean_tokens"]), 3)
        out[str(run)] = entry
    return out
