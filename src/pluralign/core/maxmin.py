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
from pluralign.core._checks import float_array, number
from pluralign.core.stats import column_stats

Aggregation = Literal["single", "maxmin_batch", "maxmin_sample", "softmin"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)


@dataclass(frozen=True)
class Normalizer:
    """``(r - mean) / std`` with statistics from reference-policy samples.

    ``mean`` must be finite and ``std`` finite and > 0: a zero scale would turn every reward
    into +-inf (use :meth:`fit`, which gives a constant reward std 1 and a warning).
    """

    mean: float
    std: float

    def __post_init__(self) -> None:
        if isinstance(self.mean, str) or isinstance(self.std, str):
            raise ValueError(
                f"Normalizer mean and std must be numbers, got {self.mean!r}, {self.std!r}"
            )
        # frozen: store the checked floats (a NumPy scalar or int becomes a float)
        object.__setattr__(self, "mean", number(self.mean, "Normalizer mean"))
        object.__setattr__(self, "std", number(self.std, "Normalizer std", low=0.0, low_open=True))

    @classmethod
    def fit(cls, values: Sequence[float]) -> Normalizer:
        """Statistics of reference rewards, shape (n,): non-finite ones are an error; constant
        ones give std 1 and a warning (:func:`pluralign.core.stats.column_stats`)."""
        mean, std = column_stats(np.asarray(values, dtype=np.float64), ["reference rewards"])
        return cls(float(mean), float(std))

    def __call__(self, values: FloatArray) -> FloatArray:
        """z-scores of ``values`` (any shape, e.g. (B,))."""
        return (np.asarray(values, dtype=np.float64) - self.mean) / self.std


def aggregate(R: FloatArray, how: Aggregation, temperature: float = 0.0) -> tuple[FloatArray, int]:
    """Aggregate normalized group rewards into one reward per response (module docstring).

    Parameters
    ----------
    R : array_like, shape (B, K)
        Normalized rewards of B responses (rows) under K groups (columns); finite.
    how : one of 'single', 'maxmin_batch', 'maxmin_sample', 'softmin'
        'single': R[:, 0] (K must be 1); 'maxmin_batch': the column of the group with the
        lowest batch mean; 'maxmin_sample': min over groups per response; 'softmin':
        -temperature log sum_k exp(-R[:, k] / temperature) (temperature 0 is the min).
    temperature : float
        softmin's temperature, finite and >= 0; ignored by the other rules.

    Returns
    -------
    rewards : ndarray, shape (B,)
    worst : int
        The argmin group of the batch means (the group MaxMin-batch trains on; reported for
        every rule).
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; choose one of {AGGREGATIONS}")
    R = float_array(R, "R", ndim=2, shape="(batch, groups)", allow_empty=True)
    if R.shape[0] == 0 or R.shape[1] == 0:
        raise ValueError(f"R must be a non-empty (batch, groups) array, got shape {R.shape}")
    temperature = number(temperature, "temperature", low=0.0)
    worst = int(np.argmin(R.mean(axis=0)))
    if how == "single":
        if R.shape[1] != 1:
            raise ValueError(f"'single' takes exactly one reward, got {R.shape[1]}")
        return R[:, 0], worst
    if how == "maxmin_batch":
        return R[:, worst], worst
    if how == "softmin" and temperature > 0:
        # Shifted by the row minimum: -R / tau alone overflows for tiny tau (the reward then
        # came out +inf); (R - min) / tau >= 0 only underflows exp to 0, which is exact.
        low = R.min(axis=1)
        with np.errstate(over="ignore"):  # a gap of inf is exact here: exp(-inf) = 0
            gaps = (R - low[:, None]) / temperature  # (B, K), >= 0
        return low - temperature * logsumexp(-gaps, axis=1), worst
    return R.min(axis=1), worst
