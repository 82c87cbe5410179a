"""MaxMin aggregation of group rewards, and their normalization (numpy only).

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

The module TRL's PPO calls with these rewards is
``pluralign.training.reward_adapter.TextRewardAdapter``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from scipy.special import logsumexp

from pluralign._typing import FloatArray
from pluralign.core.stats import column_stats

Aggregation = Literal["single", "maxmin_batch", "maxmin_sample", "softmin"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)


@dataclass(frozen=True)
class Normalizer:
    """``(r - mean) / std`` with statistics from reference-policy samples."""

    mean: float
    std: float

    @classmethod
    def fit(cls, values: Sequence[float]) -> Normalizer:
        """Statistics of reference rewards: non-finite ones are an error; constant ones give
        std 1 and a warning (:func:`pluralign.core.stats.column_stats`)."""
        mean, std = column_stats(np.asarray(values, dtype=np.float64), ["reference rewards"])
        return cls(float(mean), float(std))

    def __call__(self, values: FloatArray) -> FloatArray:
        return (np.asarray(values, dtype=np.float64) - self.mean) / self.std


def aggregate(R: FloatArray, how: Aggregation, temperature: float = 0.0) -> tuple[FloatArray, int]:
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
