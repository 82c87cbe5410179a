"""Notebook 04's pipeline: diverse users -> preferences -> single vs EM rewards -> PPO -> eval.

The MaxMin-RLHF small-scale experiment (PAPERS.md section 2). Two groups judge the same
reference-policy samples by their own ground truth:

* majority, ``sentiment``: P(positive) of prompt + continuation by the sentiment judge
  (``00_sentiment_judge`` on cpu, ``lvwerra/distilbert-imdb`` on the paper profile);
* minority, ``concise``: ``-(generated tokens, EOS included) / max_new_tokens`` in
  [-1, 0): an answer that stops after 3 tokens scores -0.125, one that hits the cap -1.

Each user labels pairs (two samples for one prompt) by a Bradley-Terry draw on the
group's ground truth, z-scored over the reference samples. Ground truth is used to label
and to evaluate; PPO only ever sees the *learned* reward models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray
from scipy.special import expit

from pluralign.pretrain import sample_continuations

FloatArray = NDArray[np.float64]
GROUPS = ("sentiment", "concise")


@dataclass
class Rollouts:
    """One sampled continuation per prompt; ``texts`` = prompt + continuation (no EOS)."""

    prompt_ids: list[list[int]]
    continuation_ids: list[list[int]]  # as sampled, EOS included when it stopped
    texts: list[str]
    continuations: list[str]
    n_tokens: NDArray[np.int64]  # generated tokens, EOS included
    stopped: NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.texts)


def sample_rollouts(
    policy,
    tokenizer,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int = 64,
) -> Rollouts:
    """Sample with ``pretrain.sample_continuations`` (the PPO generation settings)."""
    rows = sample_continuations(
        policy, tokenizer, prompt_ids, max_new_tokens, temperature, seed, batch_size
    )
    return Rollouts(
        prompt_ids=[list(p) for p in prompt_ids],
        continuation_ids=[r["continuation_ids"] for r in rows],
        texts=[r["prompt"] + r["continuation"] for r in rows],
        continuations=[r["continuation"] for r in rows],
        n_tokens=np.array([r["new_tokens"] for r in rows], dtype=np.int64),
        stopped=np.array([r["stopped"] for r in rows], dtype=bool),
    )


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


@dataclass
class PairLabels:
    """Comparisons of pairs (a_i, b_i): user u prefers a over b in row j iff ``a_wins``."""

    user: NDArray[np.int64]
    pair: NDArray[np.int64]
    a_wins: NDArray[np.bool_]
    user_group: NDArray[np.int64]  # (n_users,)
    p_a: FloatArray  # true P(a preferred) of each row


def label_pairs(
    gt_a: FloatArray,
    gt_b: FloatArray,
    users_per_group: Sequence[int],
    per_user: int,
    beta: float,
    seed: int,
) -> PairLabels:
    """Users of K groups each label ``per_user`` distinct pairs, drawn at random, by a BT draw
    with probability ``sigmoid(beta * (r_k(a) - r_k(b)))`` on *standardized* ground truth
    ``gt_a``, ``gt_b`` (n_pairs, K). Users are numbered group by group."""
    gt_a, gt_b = np.asarray(gt_a, dtype=np.float64), np.asarray(gt_b, dtype=np.float64)
    if gt_a.shape != gt_b.shape or gt_a.ndim != 2:
        raise ValueError(
            f"gt_a and gt_b must be equal (n_pairs, K) arrays: {gt_a.shape}, {gt_b.shape}"
        )
    n_pairs, K = gt_a.shape
    if len(users_per_group) != K:
        raise ValueError(f"users_per_group has {len(users_per_group)} entries for K={K} groups")
    if not 1 <= per_user <= n_pairs:
        raise ValueError(f"per_user must be in 1..{n_pairs} (the pairs), got {per_user}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    rng = np.random.default_rng(seed)
    user_group = np.repeat(np.arange(K), users_per_group)
    pairs = np.concatenate([rng.choice(n_pairs, per_user, replace=False) for _ in user_group])
    users = np.repeat(np.arange(user_group.size), per_user)
    g = user_group[users]
    p_a = expit(beta * (gt_a[pairs, g] - gt_b[pairs, g]))
    return PairLabels(users, pairs, rng.random(pairs.size) < p_a, user_group, p_a)


def standardize_columns(a: pd.DataFrame, b: pd.DataFrame) -> tuple[FloatArray, FloatArray]:
    """z-score each group's ground truth over the pooled samples of both sides."""
    both = pd.concat([a, b])
    mu, sd = both.mean(), both.std(ddof=0).replace(0.0, 1.0)
    return ((a - mu) / sd).to_numpy(), ((b - mu) / sd).to_numpy()


def pair_accuracy(
    reward_a: FloatArray, reward_b: FloatArray, gt_a: pd.DataFrame, gt_b: pd.DataFrame
) -> dict[str, float]:
    """Per group: how often a reward model orders a held-out pair as the ground truth does
    (pairs the ground truth ties are skipped)."""
    out = {}
    for g in gt_a.columns:
        diff = gt_a[g].to_numpy() - gt_b[g].to_numpy()
        keep = diff != 0
        agree = np.sign(reward_a - reward_b)[keep] == np.sign(diff[keep])
        out[g] = float(agree.mean()) if keep.any() else float("nan")
    return out


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def response_logprobs(
    model, ids: torch.Tensor, prompt_len: int, pad_id: int, temperature: float = 1.0
) -> torch.Tensor:
    """(B,) summed log pi(response | prompt) of right-padded [prompt | response] rows, with
    the logits divided by ``temperature`` (the sampling distribution)."""
    mask = ids != pad_id
    logits = model(input_ids=ids.masked_fill(~mask, 0), attention_mask=mask).logits[:, :-1]
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    logp = logp.gather(-1, ids[:, 1:, None])[..., 0]
    keep = mask[:, 1:].clone()
    keep[:, : prompt_len - 1] = False
    return (logp * keep).sum(dim=1)


def kl_to_reference(
    policy, ref, tokenizer, rollouts: Rollouts, temperature: float, batch_size: int = 64
) -> float:
    """Monte Carlo ``KL(pi || pi_ref)`` in nats per sequence over the rollouts (sampled from
    pi): mean of ``log pi(y|x) - log pi_ref(y|x)``, both at the sampling temperature."""
    plen = {len(p) for p in rollouts.prompt_ids}
    if len(plen) != 1:
        raise ValueError("kl_to_reference needs prompts of one length")
    plen_ = plen.pop()
    pad = tokenizer.pad_token_id
    total = []
    for s in range(0, len(rollouts), batch_size):
        rows = [
            p + c
            for p, c in zip(
                rollouts.prompt_ids[s : s + batch_size],
                rollouts.continuation_ids[s : s + batch_size],
                strict=True,
            )
        ]
        width = max(map(len, rows))
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        lp = response_logprobs(policy.eval(), ids, plen_, pad, temperature)
        lr = response_logprobs(ref.eval(), ids, plen_, pad, temperature)
        total.append((lp - lr).numpy())
    return float(np.concatenate(total).mean())


def bootstrap_ci(
    values: FloatArray, n_boot: int, seed: int, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, lo, hi): percentile bootstrap over the entries (prompts)."""
    v = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    a = (1 - level) / 2
    return float(v.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def win_rates(gt_policy: pd.DataFrame, gt_ref: pd.DataFrame) -> pd.DataFrame:
    """Per prompt and group: 1 if the policy's answer beats the reference's, 0.5 tie, 0 loss."""
    diff = gt_policy.to_numpy() - gt_ref.to_numpy()
    return pd.DataFrame(0.5 + 0.5 * np.sign(diff), columns=gt_policy.columns)


def evaluate(
    gt_policy: pd.DataFrame, gt_ref: pd.DataFrame, n_boot: int, seed: int
) -> dict[str, float]:
    """Mean ground truth and win rate vs the reference per group, with bootstrap CIs."""
    out: dict[str, float] = {}
    wins = win_rates(gt_policy, gt_ref)
    for g in gt_policy.columns:
        for name, vals in (("reward", gt_policy[g]), ("win_rate", wins[g])):
            m, lo, hi = bootstrap_ci(vals.to_numpy(), n_boot, seed)
            out[f"{g}_{name}"], out[f"{g}_{name}_lo"], out[f"{g}_{name}_hi"] = m, lo, hi
    return out


# --------------------------------------------------------------------------- reward learning


def chosen_rejected(
    texts_a: Sequence[str], texts_b: Sequence[str], labels: PairLabels
) -> tuple[list[str], list[str]]:
    """The labelled comparisons as (chosen, rejected) text lists, one per row of ``labels``."""
    chosen = [
        texts_a[p] if w else texts_b[p] for p, w in zip(labels.pair, labels.a_wins, strict=True)
    ]
    rejected = [
        texts_b[p] if w else texts_a[p] for p, w in zip(labels.pair, labels.a_wins, strict=True)
    ]
    return chosen, rejected


def reward_fn(model, tokenizer, max_length: int) -> Callable[[list[str]], FloatArray]:
    """A learned reward model as the ``texts -> rewards`` callable the PPO adapter takes."""
    from pluralign.reward_trainer import score_texts

    def score(texts: list[str]) -> FloatArray:
        return score_texts(model, tokenizer, texts, max_length)

    return score


def train_policy(
    policy,
    tokenizer,
    prompts,
    rewards: dict[str, Callable[[list[str]], FloatArray]],
    reference_texts: Sequence[str],
    how: str,
    settings,
    workdir,
    seed: int,
    temperature: float = 0.0,
    progress: bool = False,
    on_checkpoint: Callable[[Any, int], dict[str, float]] | None = None,
    value_model=None,
):
    """PPO on ``rewards`` aggregated by ``how``; each reward is z-scored on the reference
    policy's samples ``reference_texts`` first. Returns (policy, per-update log, adapter).
    ``value_model``: see ``ppo_runner.run_ppo`` (required for a LoRA policy)."""
    from pluralign.maxmin_rewards import Normalizer, TextRewardAdapter
    from pluralign.ppo_runner import run_ppo

    norms = {g: Normalizer.fit(fn(list(reference_texts))) for g, fn in rewards.items()}
    context = len(prompts[0]["input_ids"])
    adapter = TextRewardAdapter(tokenizer, context, rewards, norms, how, temperature)
    policy, log = run_ppo(
        policy,
        tokenizer,
        prompts,
        adapter,
        settings,
        workdir,
        seed,
        progress,
        on_checkpoint,
        value_model=value_model,
    )
    return policy, log, adapter


# --------------------------------------------------------------------------- one PPO run


def config_fingerprint(*parts: Any) -> str:
    """Short hash naming a checkpoint folder, so a changed config never resumes stale state."""
    import hashlib
    import json

    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def run_and_evaluate(
    name: str,
    policy_loader: Callable[[], Any],
    ref_policy,
    tokenizer,
    prompts,
    rewards: dict[str, Callable[[list[str]], FloatArray]],
    reference_texts: Sequence[str],
    how: str,
    settings,
    workdir,
    seed: int,
    eval_prompt_ids: Sequence[Sequence[int]],
    gt_of: Callable[[Rollouts], pd.DataFrame],
    gt_ref: pd.DataFrame,
    eval_seed: int,
    n_boot: int,
    temperature: float = 0.0,
    progress: bool = False,
    on_checkpoint: Callable[[Any, int], dict[str, float]] | None = None,
    value_loader: Callable[[], Any] | None = None,
) -> tuple[pd.DataFrame, dict[str, Any], Rollouts]:
    """Train one PPO policy and evaluate it against the reference on held-out prompts by
    each group's ground truth. Returns (per-update log, summary row, eval rollouts).
    ``value_loader()`` builds the critic (a LoRA policy needs one; default: a policy copy)."""
    import time

    t0 = time.perf_counter()
    policy, log, _ = train_policy(
        policy_loader(),
        tokenizer,
        prompts,
        rewards,
        reference_texts,
        how,
        settings,
        workdir,
        seed,
        temperature,
        progress,
        on_checkpoint,
        value_model=None if value_loader is None else value_loader(),
    )
    train_s = time.perf_counter() - t0
    roll = sample_rollouts(
        policy,
        tokenizer,
        eval_prompt_ids,
        settings.response_length,
        settings.temperature,
        eval_seed,
    )
    gt = gt_of(roll)
    row: dict[str, Any] = {"run": name, "method": how, "seed": seed, "kl_coef": settings.kl_coef}
    row |= evaluate(gt, gt_ref, n_boot, eval_seed)
    row["kl"] = kl_to_reference(policy, ref_policy, tokenizer, roll, settings.temperature)
    row["mean_tokens"] = float(roll.n_tokens.mean())
    row["stop_rate"] = float(roll.stopped.mean())
    row["train_seconds"] = train_s
    row["seconds_per_update"] = train_s / settings.n_updates
    log = log.assign(run=name, method=how, seed=seed)
    return log, row, roll
