"""Group rewards for PPO: normalization, MaxMin aggregation, and the adapter TRL's PPO calls.

MaxMin-RLHF optimises the worst-off group. With K group rewards r_1..r_K on a batch of B
responses, each first z-scored on reference-policy samples (so "worst-off" compares groups
on one scale), the aggregated reward of response b is:

==================  ==========================================================  ===========
``single``          r_1 (one reward model; K must be 1)                         baseline
``maxmin_batch``    r_{k*}, k* = argmin_k mean_b r_k: the whole batch is        paper, Alg. 2
                    trained on the worst group's reward
``maxmin_sample``   min_k r_k(b)                                                authors' code
``softmin``         -tau log sum_k exp(-r_k(b) / tau); tau -> 0 is the min,     ours
                    and ``softmin`` with tau = 0 *is* ``maxmin_sample``
==================  ==========================================================  ===========

TRL 1.12's PPO does not take a callable: it calls ``get_reward(model, ids, pad, ctx)``,
i.e. ``model.<base_model_prefix>(input_ids, attention_mask, ...)`` and then
``model.score(hidden_states[-1])``, and reads the score at each sequence's last token.
``TextRewardAdapter`` is that module: its "backbone" decodes the responses and computes the
aggregated reward in Python, and ``score`` is the identity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from scipy.special import logsumexp
from torch import nn

FloatArray = NDArray[np.float64]
TextReward = Callable[[list[str]], FloatArray]
AGGREGATIONS = ("single", "maxmin_batch", "maxmin_sample", "softmin")


@dataclass(frozen=True)
class Normalizer:
    """``(r - mean) / std`` with statistics from reference-policy samples."""

    mean: float
    std: float

    @classmethod
    def fit(cls, values: Sequence[float]) -> Normalizer:
        v = np.asarray(values, dtype=np.float64)
        if v.size < 2 or not np.all(np.isfinite(v)):
            raise ValueError("need >= 2 finite reference rewards to normalize")
        std = float(v.std())
        if std <= 0:
            raise ValueError("reference rewards are constant: cannot normalize")
        return cls(float(v.mean()), std)

    def __call__(self, values: FloatArray) -> FloatArray:
        return (np.asarray(values, dtype=np.float64) - self.mean) / self.std


def aggregate(R: FloatArray, how: str, temperature: float = 0.0) -> tuple[FloatArray, int]:
    """Aggregate normalized group rewards R (B, K) into (B,) rewards; also the argmin group
    of the batch means (the group MaxMin-batch trains on; reported for every rule)."""
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] == 0 or R.shape[1] == 0:
        raise ValueError(f"R must be a non-empty (batch, groups) array, got shape {R.shape}")
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {AGGREGATIONS}")
    worst = int(np.argmin(R.mean(axis=0)))
    if how == "single":
        if R.shape[1] != 1:
            raise ValueError(f"'single' takes exactly one reward, got {R.shape[1]}")
        return R[:, 0], worst
    if how == "maxmin_batch":
        return R[:, worst], worst
    if how == "softmin" and temperature > 0:
        return -temperature * logsumexp(-R / temperature, axis=1), worst
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    return R.min(axis=1), worst


class TextRewardAdapter(nn.Module):
    """The reward "model" handed to ``trl.experimental.ppo.PPOTrainer``.

    ``context_length`` is the (fixed) prompt length in tokens: every PPO batch is
    ``[prompt | response]`` and only responses are judged, together with their prompt text
    when ``with_prompt`` (reward models trained on prompt + response). ``history`` gets one
    record per call: raw and normalized group means and the batch's argmin group.
    """

    base_model_prefix = "backbone"

    def __init__(
        self,
        tokenizer: Any,
        context_length: int,
        rewards: dict[str, TextReward],
        normalizers: dict[str, Normalizer],
        how: str,
        temperature: float = 0.0,
        with_prompt: bool = True,
    ) -> None:
        super().__init__()
        if set(rewards) != set(normalizers):
            raise ValueError("rewards and normalizers must name the same groups")
        if how == "single" and len(rewards) != 1:
            raise ValueError("'single' needs exactly one reward")
        aggregate(np.zeros((1, len(rewards))), how, temperature)  # validates how / temperature
        self.tokenizer = tokenizer
        self.context_length = int(context_length)
        self.rewards = dict(rewards)
        self.normalizers = dict(normalizers)
        self.how = how
        self.temperature = float(temperature)
        self.with_prompt = with_prompt
        self.history: list[dict[str, Any]] = []
        self.dummy = nn.Parameter(torch.zeros(()), requires_grad=False)  # gives it a device

    def decode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[str]:
        """Texts of the responses (prompt + response when ``with_prompt``), EOS/pad dropped."""
        if input_ids.shape[1] <= self.context_length:
            raise ValueError(
                f"sequences of {input_ids.shape[1]} tokens hold no response after the "
                f"{self.context_length}-token prompt"
            )
        start = 0 if self.with_prompt else self.context_length
        special = set(self.tokenizer.all_special_ids)
        texts = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
            kept = [
                t for t, m in zip(ids[start:], mask[start:], strict=True) if m and t not in special
            ]
            texts.append(self.tokenizer.decode(kept))
        return texts

    def group_rewards(self, texts: list[str]) -> tuple[FloatArray, FloatArray]:
        """(raw, normalized) rewards, each (B, K) in ``rewards`` order."""
        raw = np.stack([np.asarray(fn(texts), dtype=np.float64) for fn in self.rewards.values()], 1)
        norm = np.stack(
            [n(raw[:, k]) for k, n in enumerate(self.normalizers[g] for g in self.rewards)], 1
        )
        return raw, norm

    def backbone(self, input_ids, attention_mask, **_: Any) -> SimpleNamespace:
        texts = self.decode(input_ids, attention_mask)
        raw, norm = self.group_rewards(texts)
        reward, worst = aggregate(norm, self.how, self.temperature)
        names = list(self.rewards)
        self.history.append(
            {
                "argmin_group": names[worst],
                **{f"raw_{g}": float(raw[:, k].mean()) for k, g in enumerate(names)},
                **{f"norm_{g}": float(norm[:, k].mean()) for k, g in enumerate(names)},
                "reward": float(reward.mean()),
            }
        )
        out = torch.as_tensor(reward, dtype=torch.float32, device=input_ids.device)
        hidden = out[:, None, None].expand(-1, input_ids.shape[1], 1)  # same value everywhere
        return SimpleNamespace(hidden_states=[hidden])

    def score(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden
