"""The reward models FRFT trains: a fresh one per refit, as the authors ran it.

The authors' FRFT reward model is a *fresh* reward model from the SFT backbone, trained on
the filtered records only, and PPO's critic starts from its weights (``train3_rm.py``,
``train_ppo.py``). Two recipes give that object:

* :class:`NeuralRewards` (paper profile): the backbone with a new scalar head, trained by
  TRL's ``RewardTrainer``; the critic is loaded from the reward model's weights.
* :class:`ProbeRewards` (cpu profile): a linear Bradley-Terry head on frozen sentence-encoder
  features of prompt + response (ridge BT fit, :func:`pluralign.core.crossfit_em.fit_linear`).
  The cpu policy's backbone (4 layers, 256 wide) cannot learn sentiment from 256 pairs
  (measured: on-policy accuracy 0.52, correlation with the ground truth 0.06-0.09 for a
  fine-tuned one, 0.53 for a probe on its frozen hidden states), while this probe reaches
  0.70 on the same records; a "fresh model" is a fresh head. Its architecture is not the
  critic's, so the critic is re-initialised (its start weights) at each refit instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from pluralign._typing import FloatArray, TextScore
from pluralign.core.crossfit_em import fit_linear
from pluralign.core.stats import column_stats
from pluralign.data.preferences import PreferenceRecords
from pluralign.training.reward_models import RewardModelSettings, fit_reward_model, reward_fn


@dataclass
class FittedReward:
    """A trained reward: how it scores texts, what a snapshot keeps, and the weights PPO's
    critic starts from (None: the critic is re-initialised)."""

    score: TextScore
    state: dict[str, torch.Tensor]
    critic_state: dict[str, torch.Tensor] | None = None


class RewardRecipe(Protocol):
    """How FRFT gets a fresh reward model from preference records (and back from a snapshot)."""

    def fit(self, records: PreferenceRecords, seed: int) -> FittedReward: ...

    def load(self, state: dict[str, torch.Tensor]) -> FittedReward: ...


class ProbeRewards:
    """Linear BT heads on frozen features ``featurize(texts) -> (n, d)`` of prompt + response,
    z-scored with the statistics of ``norm_texts`` (the offline records' texts). Features are
    cached by text: refits and evaluations reuse them."""

    def __init__(
        self, featurize: Callable[[list[str]], FloatArray], norm_texts: Sequence[str], ridge: float
    ) -> None:
        if not (np.isfinite(ridge) and ridge > 0):
            raise ValueError(f"the probe's ridge must be > 0, got {ridge}")
        self.featurize = featurize
        self.ridge = float(ridge)
        self._cache: dict[str, FloatArray] = {}
        self.mean, self.std = column_stats(self._raw(list(norm_texts)))

    def _raw(self, texts: list[str]) -> FloatArray:
        new = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if new:
            for t, row in zip(new, np.asarray(self.featurize(new), dtype=np.float64), strict=True):
                self._cache[t] = row
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 0))

    def features(self, texts: Sequence[str]) -> FloatArray:
        """z-scored features (n, d)."""
        return (self._raw(list(texts)) - self.mean) / self.std

    def _reward(self, theta: FloatArray) -> FittedReward:
        theta = np.asarray(theta, dtype=np.float64)

        def score(texts: list[str]) -> FloatArray:
            return self.features(texts) @ theta

        return FittedReward(score, {"theta": torch.from_numpy(theta.copy())})

    def fit(self, records: PreferenceRecords, seed: int = 0) -> FittedReward:
        """A fresh head on ``records`` (the convex fit needs no seed)."""
        if len(records) == 0:
            raise ValueError("no records to fit a reward model on")
        chosen, rejected = records.full_texts()
        fit, _ = fit_linear(self.features(chosen), self.features(rejected), self.ridge)
        return self._reward(fit(np.arange(len(records))))

    def load(self, state: dict[str, torch.Tensor]) -> FittedReward:
        return self._reward(state["theta"].numpy())


class NeuralRewards:
    """Fresh reward models from ``new_model()`` (the backbone with a new scalar head) trained
    by TRL's ``RewardTrainer``; the critic starts from the reward model's weights."""

    def __init__(
        self, new_model: Callable[[], Any], tokenizer: Any, settings: RewardModelSettings
    ) -> None:
        self.new_model = new_model
        self.tokenizer = tokenizer
        self.settings = settings

    def _reward(self, model) -> FittedReward:
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return FittedReward(
            reward_fn(model, self.tokenizer, self.settings.max_length), state, state
        )

    def fit(self, records: PreferenceRecords, seed: int = 0) -> FittedReward:
        if len(records) == 0:
            raise ValueError("no records to fit a reward model on")
        chosen, rejected = records.full_texts()
        model = fit_reward_model(
            self.new_model(), self.tokenizer, chosen, rejected, self.settings, seed
        )
        return self._reward(model)

    def load(self, state: dict[str, torch.Tensor]) -> FittedReward:
        model = self.new_model()
        model.load_state_dict(state)
        return self._reward(model.eval())
