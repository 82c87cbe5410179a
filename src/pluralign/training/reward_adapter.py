"""The reward "model" TRL 1.12's PPO calls: decoded responses scored by Python rewards.

TRL 1.12's PPO does not take a callable: it calls ``get_reward(model, ids, pad, ctx)``,
i.e. ``model.<base_model_prefix>(input_ids, attention_mask, ...)`` and then
``model.score(hidden_states[-1])``, and reads the score at each sequence's last token.
:class:`TextRewardAdapter` is that module: its "backbone" decodes the responses and computes
the aggregated reward (:func:`pluralign.core.maxmin.aggregate`) in Python, and ``score`` is
the identity.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from pluralign._typing import FloatArray, TextScore
from pluralign.core.maxmin import Aggregation, Normalizer, aggregate


class TextRewardAdapter(nn.Module):
    """The reward "model" handed to ``trl.experimental.ppo.PPOTrainer``.

    ``context_length`` is the (fixed) prompt length in tokens: every PPO batch is
    ``[prompt | response]`` and only responses are judged, together with their prompt text
    when ``with_prompt`` (reward models trained on prompt + response). ``rewards`` and
    ``normalizers`` map the same group names to a text scorer and its :class:`Normalizer`.
    ``how`` is one of ``'single'`` (one group), ``'maxmin_sample'``, ``'maxmin_batch'`` or
    ``'softmin'`` (with ``temperature`` > 0), as in :func:`pluralign.core.maxmin.aggregate`.
    ``history`` gets one record per call: raw and normalized group means and the batch's
    argmin group.
    """

    base_model_prefix = "backbone"

    def __init__(
        self,
        tokenizer: Any,
        context_length: int,
        rewards: dict[str, TextScore],
        normalizers: dict[str, Normalizer],
        how: Aggregation,
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
                "n": len(texts),  # this process's share of the update's prompts
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
