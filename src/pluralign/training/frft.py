"""Filtered reward fine-tuning (FRFT) during PPO (Krishna & Sahoo, 2024).

An offline preference set mixes generators and labelling policies; a reward model trained on
all of it averages their signals. FRFT refits the critic for the *current* actor: every
``every`` PPO updates the policy is frozen and sampled on the offline prompts, the records
whose responses look like its generations (prompt + text, in the embedding chosen by
:mod:`pluralign.training.frft_embeddings`) are selected by one of the paper's rules
(:mod:`pluralign.core.frft`), a *fresh* reward model is trained on them alone
(:mod:`pluralign.training.frft_rewards`), and PPO continues with it and a reset critic, as
the authors' ``train3_rm.py`` / ``train_ppo.py`` do.

The loop reuses the PPO runner (:func:`pluralign.training.ppo.run_ppo`): the refit is its
``on_checkpoint`` hook, so it happens between two resumable chunks. The refit reward is
saved next to the PPO checkpoints after each refit, and a resumed run reloads the one that
belongs to its last complete chunk (the critic comes back with the PPO checkpoint, which is
written after the hook).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pluralign._typing import FloatArray, IntArray, TextScore
from pluralign.core.frft import RULES, frft_select, similarities
from pluralign.core.maxmin import Normalizer
from pluralign.core.stats import pair_accuracy as group_pair_accuracy
from pluralign.data.preferences import PreferenceRecords
from pluralign.pipeline.io import atomic_path
from pluralign.training.frft_embeddings import Embedding
from pluralign.training.frft_rewards import FittedReward, RewardRecipe
from pluralign.training.generation import GenerationSettings
from pluralign.training.ppo import PPOSettings, completed_updates, run_ppo, value_model_from
from pluralign.training.reward_adapter import TextRewardAdapter


@dataclass(frozen=True)
class RefitSettings:
    """How FRFT refits: rule, budget, interval and P1's threshold (None: by quantile)."""

    rule: str
    k: int
    every: int
    """Refit after every ``every`` PPO updates (a multiple of the checkpoint interval)."""
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.rule not in REFIT_RULES:
            raise ValueError(f"unknown selection rule {self.rule!r}; choose one of {REFIT_RULES}")
        if self.k < 1 or self.every < 1:
            raise ValueError("k and every must be >= 1")


REFIT_RULES: tuple[str, ...] = (*RULES, "oracle")
"""The paper's rules, the random control, and the positive control ``oracle``: k records
made by the labeler the user agrees with (drawn at random among them), whatever the policy
generates: what a perfect filter could reach."""


@dataclass
class OnPolicyPairs:
    """Two samples of the current policy per evaluation prompt and their ground truth."""

    texts_a: list[str]
    texts_b: list[str]
    truth_a: FloatArray
    truth_b: FloatArray


def pair_accuracy(score: TextScore, pairs: OnPolicyPairs) -> float:
    """Share of pairs (ground-truth ties skipped) a reward orders as the ground truth does:
    :func:`pluralign.core.stats.pair_accuracy` with one ground truth."""
    truth_a = pd.DataFrame({"truth": np.asarray(pairs.truth_a, dtype=np.float64)})
    truth_b = pd.DataFrame({"truth": np.asarray(pairs.truth_b, dtype=np.float64)})
    return group_pair_accuracy(score(pairs.texts_a), score(pairs.texts_b), truth_a, truth_b)[
        "truth"
    ]


def embed_records(records: PreferenceRecords, embedding: Embedding) -> None:
    """Fit ``embedding``'s standardisation on every record response (with its prompt) and
    cache the chosen and rejected embeddings (the fixed dataset)."""
    prompts = [records.prompts[i] for i in records.prompt_index]
    both = embedding.fit(prompts + prompts, list(records.chosen) + list(records.rejected))
    records.chosen_emb, records.rejected_emb = both[: len(records)], both[len(records) :]


def select_records(
    settings: RefitSettings,
    records: PreferenceRecords,
    s_c: FloatArray | None,
    s_r: FloatArray | None,
    rng: np.random.Generator,
    truth_labeler: str | None = None,
) -> IntArray:
    """The rows a refit trains on: a similarity rule (:func:`pluralign.core.frft.frft_select`),
    or ``oracle``: ``k`` rows drawn among those labelled by ``truth_labeler``."""
    if settings.rule == "oracle":
        if truth_labeler is None:
            raise ValueError("the oracle filter needs the labeler the user agrees with")
        pool = np.flatnonzero(records.labeler == truth_labeler)
        if pool.size == 0:
            raise ValueError(f"no record is labelled by {truth_labeler!r}")
        return np.sort(rng.choice(pool, size=min(settings.k, pool.size), replace=False))
    if settings.rule == "random":
        zeros = np.zeros(len(records))
        return frft_select("random", zeros, zeros, settings.k, rng=rng)
    if s_c is None or s_r is None:
        raise ValueError(f"rule {settings.rule!r} needs the similarities")
    return frft_select(settings.rule, s_c, s_r, settings.k, settings.threshold, rng)  # type: ignore[arg-type]


class FilteredRefit:
    """One FRFT refit: sample the frozen policy on the offline prompts, embed prompt +
    generation, select records, and train a *fresh* reward model on them (``recipe``).
    ``generate(policy, prompt_ids, seed)`` returns the responses (text without prompt), one
    per prompt. The random and oracle rules do not read the generations (none are drawn)."""

    def __init__(
        self,
        recipe: RewardRecipe,
        records: PreferenceRecords,
        prompt_ids: Sequence[Sequence[int]],
        embedding: Embedding,
        settings: RefitSettings,
        generate: Callable[[Any, Sequence[Sequence[int]], int], list[str]] | None,
        seed: int,
        truth_labeler: str | None = None,
    ) -> None:
        if records.chosen_emb is None or records.rejected_emb is None:
            raise ValueError("embed the records first (embed_records)")
        if len(prompt_ids) != len(records.prompts):
            raise ValueError("prompt_ids must hold the token ids of every record prompt")
        if settings.rule == "oracle" and truth_labeler is None:
            raise ValueError("the oracle filter needs truth_labeler")
        self.recipe = recipe
        self.records = records
        self.prompt_ids = [list(p) for p in prompt_ids]
        self.embedding = embedding
        self.settings = settings
        self.generate = generate
        self.seed = seed
        self.truth_labeler = truth_labeler

    def __call__(self, policy, updates: int) -> tuple[FittedReward | None, dict[str, float]]:
        s = self.settings
        t = {"start": time.perf_counter()}
        s_c = s_r = None
        if s.rule in RULES and s.rule != "random":
            if self.generate is None:
                raise ValueError(f"rule {s.rule!r} needs generate")
            responses = self.generate(policy, self.prompt_ids, self.seed * 7919 + updates)
            t["sampling"] = time.perf_counter()
            gen = self.embedding(self.records.prompts, responses)
            t["embedding"] = time.perf_counter()
            s_c, s_r = similarities(
                gen, self.records.prompt_index, self.records.chosen_emb, self.records.rejected_emb
            )
        else:
            t["sampling"] = t["embedding"] = time.perf_counter()
        rng = np.random.default_rng([self.seed, updates])
        rows = select_records(s, self.records, s_c, s_r, rng, self.truth_labeler)
        t["selection"] = time.perf_counter()
        reward = None
        if rows.size:
            reward = self.recipe.fit(self.records.subset(rows), self.seed + updates)
        t["fitting"] = time.perf_counter()
        out: dict[str, float] = {"selected": float(rows.size)}
        out |= selection_stats(self.records, rows, s_c, s_r)
        steps = ["start", "sampling", "embedding", "selection", "fitting"]
        for a, b in itertools.pairwise(steps):
            out[f"time_{b}_s"] = t[b] - t[a]
        return reward, out


def selection_stats(
    records: PreferenceRecords,
    rows: IntArray,
    s_c: FloatArray | None = None,
    s_r: FloatArray | None = None,
) -> dict[str, float]:
    """What a selection holds: mean similarities (when measured), source and labeler shares,
    label quality."""
    out: dict[str, float] = {}
    if s_c is not None and s_r is not None:
        out["sim_chosen_all"] = float(s_c.mean())
        out["sim_rejected_all"] = float(s_r.mean())
        if rows.size:
            out["sim_chosen"] = float(s_c[rows].mean())
            out["sim_rejected"] = float(s_r[rows].mean())
    if rows.size == 0:
        return out
    for src in np.unique(records.source):
        out[f"share_source_{src}"] = float((records.source[rows] == src).mean())
    for lab in np.unique(records.labeler):
        out[f"share_labeler_{lab}"] = float((records.labeler[rows] == lab).mean())
    if records.agrees_with_truth is not None:
        out["label_truth_agreement"] = float(records.agrees_with_truth[rows].mean())
    return out


def _snapshot(workdir: Path, updates: int) -> Path:
    return workdir / f"reward-after-{updates:05d}.pt"


def run_frft(
    policy,
    tokenizer,
    prompts,
    reward: FittedReward,
    reference_texts: Sequence[str],
    settings: PPOSettings,
    generation: GenerationSettings,
    workdir: str | Path,
    seed: int,
    refit: FilteredRefit | None = None,
    evaluate: Callable[[Any, int], OnPolicyPairs] | None = None,
    other_rewards: dict[str, TextScore] | None = None,
    progress: bool = False,
) -> tuple[Any, pd.DataFrame]:
    """PPO on ``reward``; ``refit=None`` is vanilla RLHF. Each refit replaces the reward by a
    fresh one trained on the selected records, z-scored on ``reference_texts`` again, and
    resets PPO's critic: to the new reward model's weights when it has a critic's
    architecture (``critic_state``), else to the critic's start weights. The critic starts
    from the first reward's ``critic_state`` when it has one (the authors' ``train_ppo.py``),
    else from the policy with a fresh head (TRL's default).

    At every checkpoint ``evaluate(policy, updates)`` draws on-policy pairs: the log gets
    their mean ground truth (``gt``) and the accuracy of the reward in use
    (``rm_accuracy``), of the refit one (``rm_accuracy_after``), and of ``other_rewards``
    (``accuracy_<name>``). Rerunning with the same ``workdir`` resumes (the reward in use is
    reloaded from the snapshot of its refit; the critic from the PPO checkpoint).

    A reset restores the critic's weights only: the optimizer's Adam moments carry over
    into the next chunk (the authors start PPO once, after their single refit). A critic
    without ``critic_state`` gets its fresh head from ``seed`` (not the global RNG), so runs
    of one seed are identical until their first refit: arms differ by their refits only."""
    workdir = Path(workdir)
    current = reward
    if refit is not None:
        if refit.settings.every % settings.checkpoint_every:
            raise ValueError("refit every must be a multiple of checkpoint_every")
        done = completed_updates(workdir, settings)
        snaps = [u for u in range(refit.settings.every, done + 1, refit.settings.every)]
        snaps = [u for u in snaps if _snapshot(workdir, u).is_file()]
        if snaps:  # resume: the reward model the next chunk trained with
            state = torch.load(_snapshot(workdir, snaps[-1]), map_location="cpu", weights_only=True)
            current = refit.recipe.load(state)
    with torch.random.fork_rng():  # the critic's fresh head: the same for every arm of a seed
        torch.manual_seed(seed)
        value = value_model_from(policy)
    if reward.critic_state is not None:
        value.load_state_dict(reward.critic_state)
    critic_start = {k: v.detach().clone() for k, v in value.state_dict().items()}
    context = len(prompts[0]["input_ids"])

    def normalizer(r: FittedReward) -> dict[str, Normalizer]:
        return {"reward": Normalizer.fit(r.score(list(reference_texts)))}

    adapter = TextRewardAdapter(
        tokenizer, context, {"reward": current.score}, normalizer(current), "single"
    )

    def hook(policy, updates: int) -> dict[str, float]:
        nonlocal current
        out: dict[str, float] = {}
        pairs = evaluate(policy, updates) if evaluate is not None else None
        if pairs is not None:
            out["gt"] = float(np.mean(np.r_[pairs.truth_a, pairs.truth_b]))
            out["rm_accuracy"] = pair_accuracy(current.score, pairs)
            for name, fn in (other_rewards or {}).items():
                out[f"accuracy_{name}"] = pair_accuracy(fn, pairs)
        if (
            refit is not None
            and updates % refit.settings.every == 0
            and updates < settings.n_updates
        ):
            new, info = refit(policy, updates)
            out |= info
            if new is not None:
                current = new
                adapter.rewards["reward"] = new.score
                adapter.normalizers = normalizer(new)
                value.load_state_dict(
                    critic_start if new.critic_state is None else new.critic_state
                )
                with atomic_path(_snapshot(workdir, updates)) as tmp:
                    torch.save(new.state, tmp)
            if pairs is not None:
                out["rm_accuracy_after"] = pair_accuracy(current.score, pairs)
        return out

    return run_ppo(
        policy, tokenizer, prompts, adapter, settings, generation, workdir, seed, progress, hook,
        value_model=value,
    )  # fmt: skip
