"""Notebook 04: MaxMin-RLHF at small scale on GPT-2 (Chakraborty et al., 2024).

Two groups judge the same reference-policy samples by their own ground truth:

* majority, ``sentiment``: P(positive) of prompt + continuation by the sentiment judge
  (``00_sentiment_judge`` on cpu, ``lvwerra/distilbert-imdb`` on the paper profile);
* minority, ``concise``: ``-(generated tokens, EOS included) / max_new_tokens`` in
  [-1, 0): an answer that stops after 3 tokens scores -0.125, one that hits the cap -1.

Each user labels pairs (two samples for one prompt) by a Bradley-Terry draw on the
group's ground truth, z-scored over the sampled pairs. Ground truth is used to label and to
evaluate; PPO only ever sees the *learned* reward models. The plumbing shared with
notebooks 05 and 06 is :mod:`pluralign.experiments._rlhf`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from pluralign._typing import FloatArray, TextScore
from pluralign.experiments._rlhf import Arm, Truth
from pluralign.pipeline.config import StageConfig
from pluralign.training.generation import GenerationSettings, Rollouts
from pluralign.training.ppo import PPOSettings
from pluralign.training.reward_models import RewardModelSettings


@dataclass(frozen=True, kw_only=True)
class Config(StageConfig):
    """``maxmin_gpt2`` (notebook 04): single-reward PPO vs MaxMin PPO, sentiment vs concise."""

    policy: str
    """``00_policy_pretrain`` (that stage's model) or a pinned hub causal LM (``gpt2@..``)."""
    judge: str
    """``00_sentiment_judge`` (that stage's model) or a pinned hub classifier (majority's
    ground truth)."""
    imdb: str
    """``packaged`` or a pinned hub dataset: the reviews whose openings are the prompts."""
    prompt_tokens: int
    generation: GenerationSettings
    """Sampling of preference data, PPO rollouts and evaluation."""
    n_pref_prompts: int
    """Prompts with two reference samples each: the pairs users label."""
    n_ppo_prompts: int
    n_eval_prompts: int
    users_majority: int
    users_minority: int
    """The paper's 10:1 majority:minority ratio is 30:3 users here."""
    ratio_grid: list[int]
    """Majority:minority ratios (minority users fixed) for the reward-learning sweep."""
    comparisons_per_user: int
    label_beta: float
    """BT inverse temperature on z-scored ground truth."""
    rm_backbone: str
    """``00_policy_pretrain`` (the policy's network with a scalar head) or a hub model."""
    reward_model: RewardModelSettings
    em_iters: int
    ppo: PPOSettings
    kl_coef_high: float
    """A second single + MaxMin run with this KL coefficient (readable text)."""
    softmin_temperature: float
    seeds: list[int]
    """PPO seeds of the main comparison (single vs per-sample MaxMin)."""
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


GROUPS = ("sentiment", "concise")


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


def em_rewards(
    em_models: Sequence[Any], group_of_model: Sequence[int], score: Callable[[Any], TextScore]
) -> dict[str, TextScore]:
    """The EM mixture's rewards, named ``em<k>:<group it mostly holds>``."""
    pairs = enumerate(zip(em_models, group_of_model, strict=True))
    return {f"em{k}:{GROUPS[g]}": score(m) for k, (m, g) in pairs}


def arms(
    cfg: Config,
    single: Mapping[int, dict[str, TextScore]],
    em: Mapping[int, dict[str, TextScore]],
    true: dict[str, TextScore],
) -> list[Arm]:
    """The experiment design as data, in the order the runs are trained.

    ``single[ratio]`` and ``em[ratio]``: the pooled reward and the EM mixture learned at each
    majority:minority ratio; ``true``: one reward per true group (the ablation). Runs: single
    vs MaxMin per sample on the EM mixture at the paper's ratio (the paper's pipeline, every
    seed); MaxMin per sample / per batch / soft-min on the true-group rewards; single vs
    MaxMin at ``kl_coef_high`` (readable text); single vs MaxMin-EM at the other ratios."""
    main, s0 = cfg.main_ratio, cfg.seeds[0]
    high = {"kl_coef": cfg.kl_coef_high}
    out = [Arm("single", "single", single[main], s) for s in cfg.seeds]
    out += [Arm("maxmin_em", "maxmin_sample", em[main], s) for s in cfg.seeds]
    out += [Arm("maxmin_true", "maxmin_sample", true, s) for s in cfg.seeds]
    out += [Arm("maxmin_batch_true", "maxmin_batch", true, s0)]
    out += [Arm("softmin_true", "softmin", true, s0, softmin_temperature=cfg.softmin_temperature)]
    out += [Arm("single_kl_high", "single", single[main], s0, high)]
    out += [Arm("maxmin_true_kl_high", "maxmin_sample", true, s0, high)]
    for ratio in sorted(r for r in cfg.ratio_grid if r != main):
        out += [Arm(f"single_ratio_{ratio}", "single", single[ratio], s0)]
        out += [Arm(f"maxmin_em_ratio_{ratio}", "maxmin_sample", em[ratio], s0)]
    return out


def ratio_of(run: str, main_ratio: int) -> int | None:
    """The majority:minority ratio of a run of the ratio sweep (None: not part of it)."""
    if "_ratio_" in run:
        return int(run.rsplit("_", 1)[1])
    return main_ratio if run in ("single", "maxmin_em") else None
