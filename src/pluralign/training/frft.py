"""Filtered reward fine-tuning (FRFT) during PPO (Krishna & Sahoo, 2024).

An offline preference set mixes generators and labelling policies; a reward model trained on
all of it averages their signals. FRFT refits the critic for the *current* actor: every
``every`` PPO updates the policy is frozen and sampled on the offline prompts, and the
records whose responses look like its generations are selected by one of the paper's rules
(:mod:`pluralign.core.frft`); the reward model is fine-tuned on them (Bradley-Terry loss,
1 epoch) and PPO continues with the refit reward.

The loop reuses the PPO runner (:func:`pluralign.training.ppo.run_ppo`): the refit is its
``on_checkpoint`` hook, so it happens between two resumable chunks. The refit reward model
is saved next to the PPO checkpoints after each refit, and a resumed run reloads the one
that belongs to its last complete chunk. The value model continues across refits (the
paper re-initializes the critic from the refit reward model; TRL's PPO keeps one value
model per run, and we keep PPO itself unchanged between arms).
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
from numpy.typing import NDArray

from pluralign._typing import FloatArray, IntArray, TextScore
from pluralign.core.frft import RULES, Rule, select, similarities
from pluralign.core.maxmin import Normalizer
from pluralign.core.stats import pair_accuracy as group_pair_accuracy
from pluralign.data.preferences import PreferenceRecords
from pluralign.pipeline.io import atomic_path
from pluralign.training.generation import GenerationSettings
from pluralign.training.ppo import PPOSettings, completed_updates, run_ppo
from pluralign.training.reward_adapter import TextRewardAdapter
from pluralign.training.reward_models import reward_fn, tokenize_pairs, train_reward_model


@dataclass(frozen=True)
class RefitSettings:
    """How FRFT refits: rule, budget, P1's threshold, and the reward fine-tuning."""

    rule: Rule
    k: int
    every: int
    """Refit after every ``every`` PPO updates (a multiple of the checkpoint interval)."""
    threshold: float = 0.8
    learning_rate: float = 1e-4
    epochs: float = 1.0
    batch_size: int = 16
    max_length: int = 48

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown selection rule {self.rule!r}; choose one of {RULES}")
        if self.k < 1 or self.every < 1:
            raise ValueError("k and every must be >= 1")


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


class FilteredRefit:
    """One FRFT refit: sample the frozen policy on the offline prompts, embed, select,
    fine-tune ``reward_model`` in place. ``generate(policy, prompt_ids, seed)`` returns the
    responses (text without prompt), one per prompt."""

    def __init__(
        self,
        reward_model,
        tokenizer,
        records: PreferenceRecords,
        prompt_ids: Sequence[Sequence[int]],
        encoder,
        settings: RefitSettings,
        generate: Callable[[Any, Sequence[Sequence[int]], int], list[str]],
        seed: int,
    ) -> None:
        if records.chosen_emb is None or records.rejected_emb is None:
            raise ValueError("embed the records first (embed_records)")
        if len(prompt_ids) != len(records.prompts):
            raise ValueError("prompt_ids must hold the token ids of every record prompt")
        self.reward_model = reward_model
        self.tokenizer = tokenizer
        self.records = records
        self.prompt_ids = [list(p) for p in prompt_ids]
        self.encoder = encoder
        self.settings = settings
        self.generate = generate
        self.seed = seed

    def __call__(self, policy, updates: int) -> dict[str, float]:

        s = self.settings
        t = {"start": time.perf_counter()}
        responses = self.generate(policy, self.prompt_ids, self.seed * 7919 + updates)
        t["sampling"] = time.perf_counter()
        gen = embed(self.encoder, responses)
        t["embedding"] = time.perf_counter()
        s_c, s_r = similarities(
            gen, self.records.prompt_index, self.records.chosen_emb, self.records.rejected_emb
        )
        rng = np.random.default_rng([self.seed, updates])
        rows = select(s.rule, s_c, s_r, s.k, s.threshold, rng)
        t["selection"] = time.perf_counter()
        out: dict[str, float] = {"selected": float(rows.size)}
        if rows.size:
            chosen, rejected = self.records.full_texts(rows)
            pairs = tokenize_pairs(self.tokenizer, chosen, rejected, s.max_length)
            train_reward_model(
                self.reward_model,
                self.tokenizer,
                pairs,
                seed=self.seed + updates,
                learning_rate=s.learning_rate,
                num_train_epochs=s.epochs,
                per_device_train_batch_size=s.batch_size,
            )
        t["fine_tuning"] = time.perf_counter()
        out |= selection_stats(self.records, rows, s_c, s_r)
        steps = ["start", "sampling", "embedding", "selection", "fine_tuning"]
        for a, b in itertools.pairwise(steps):
            out[f"time_{b}_s"] = t[b] - t[a]
        return out


def selection_stats(
    records: PreferenceRecords, rows: IntArray, s_c: FloatArray, s_r: FloatArray
) -> dict[str, float]:
    """What a selection holds: mean similarities, source and labeler shares, label quality."""
    out: dict[str, float] = {
        "sim_chosen_all": float(s_c.mean()),
        "sim_rejected_all": float(s_r.mean()),
    }
    if rows.size == 0:
        return out
    out["sim_chosen"] = float(s_c[rows].mean())
    out["sim_rejected"] = float(s_r[rows].mean())
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
    reward_model,
    reward_max_length: int,
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
    """PPO on ``reward_model`` (modified in place by ``refit``); ``refit=None`` is vanilla
    RLHF. At every checkpoint ``evaluate(policy, updates)`` draws on-policy pairs: the log
    gets their ground truth (``gt``) and the accuracy of the reward in use
    (``rm_accuracy``), of the refit one (``rm_accuracy_after``), and of ``other_rewards``
    (``accuracy_<name>``). The reward is z-scored on ``reference_texts`` again after each
    refit. Rerunning with the same ``workdir`` resumes."""
    workdir = Path(workdir)
    if refit is not None:
        if refit.reward_model is not reward_model:
            raise ValueError("refit must fine-tune the reward model PPO uses")
        if refit.settings.every % settings.checkpoint_every:
            raise ValueError("refit every must be a multiple of checkpoint_every")
        done = completed_updates(workdir, settings)
        snaps = [u for u in range(refit.settings.every, done + 1, refit.settings.every)]
        snaps = [u for u in snaps if _snapshot(workdir, u).is_file()]
        if snaps:  # resume: the reward model the next chunk trained with
            state = torch.load(_snapshot(workdir, snaps[-1]), map_location="cpu", weights_only=True)
            reward_model.load_state_dict(state)
    score = reward_fn(reward_model, tokenizer, reward_max_length)
    context = len(prompts[0]["input_ids"])

    def normalizer() -> dict[str, Normalizer]:
        return {"reward": Normalizer.fit(score(list(reference_texts)))}

    adapter = TextRewardAdapter(tokenizer, context, {"reward": score}, normalizer(), "single")

    def hook(policy, updates: int) -> dict[str, float]:
        out: dict[str, float] = {}
        pairs = evaluate(policy, updates) if evaluate is not None else None
        if pairs is not None:
            out["gt"] = float(np.mean(pairs.truth_a))
            out["rm_accuracy"] = pair_accuracy(score, pairs)
            for name, fn in (other_rewards or {}).items():
                out[f"accuracy_{name}"] = pair_accuracy(fn, pairs)
        if (
            refit is not None
            and updates % refit.settings.every == 0
            and updates < settings.n_updates
        ):
            out |= refit(policy, updates)
            adapter.normalizers = normalizer()
            with atomic_path(_snapshot(workdir, updates)) as tmp:
                torch.save(reward_model.state_dict(), tmp)
            if pairs is not None:
                out["rm_accuracy_after"] = pair_accuracy(score, pairs)
        return out

    policy, log = run_ppo(
        policy, tokenizer, prompts, adapter, settings, generation, workdir, seed, progress, hook
    )
    return policy, log


def embed(encoder, texts: Sequence[str], batch_size: int = 128) -> NDArray[np.float32]:
    """Unit-norm sentence embeddings (n, d) as float32."""
    emb = encoder.encode(
        list(texts),
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.asarray(emb, dtype=np.float32)


def embed_records(records: PreferenceRecords, encoder, batch_size: int = 128) -> None:
    """Cache the embeddings of every chosen and rejected response (the fixed dataset)."""
    records.chosen_emb = embed(encoder, records.chosen, batch_size)
    records.rejected_emb = embed(encoder, records.rejected, batch_size)
