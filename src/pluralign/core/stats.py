"""Statistics shared by the notebooks: z-scores, bootstrap CIs, win rates, accuracies.

One rule for each. z-scores: a non-finite column is an error; a constant column has no
ranking and no scale, so its z-scores are 0 (it is centred, not scaled) and a warning names
it (a policy that never stops makes a length reward constant, say; a BT draw on it is a coin
flip, which is what that group's preference then is). Every confidence interval of a mean
over prompts is a percentile bootstrap by ``scipy.stats.bootstrap`` (paired over groups
where groups share the resampled rows).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.stats
from numpy.typing import ArrayLike

from pluralign._typing import FloatArray

# --------------------------------------------------------------------------- z-scores


def column_stats(
    values: ArrayLike, names: Sequence[str] | None = None
) -> tuple[FloatArray, FloatArray]:
    """(mean, std) of each column (population std, ``ddof=0``) of a 1-D or 2-D array; a
    constant column (all values equal) gets std 1, so its z-scores are 0 (up to rounding), and a
    ``UserWarning`` naming it. Equality, not ``std == 0``: the std of ``[0.1] * 3`` rounds
    to ~1e-17, and dividing by it would blow the column up.

    Raises
    ------
    ValueError
        If a column holds NaN / inf (named by ``names`` when given), or fewer than 2 rows.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim not in (1, 2) or v.shape[0] < 2:
        raise ValueError(f"need >= 2 rows of a 1-D or 2-D array to z-score, got shape {v.shape}")
    cols = v if v.ndim == 2 else v[:, None]
    label = list(names) if names is not None else list(range(cols.shape[1]))
    bad = [c for c, ok in zip(label, np.isfinite(cols).all(axis=0), strict=True) if not ok]
    if bad:
        raise ValueError(f"columns {bad} hold NaN or inf")
    mean, std = v.mean(axis=0), v.std(axis=0)
    flat = np.ptp(cols, axis=0) == 0  # (columns,)
    if flat.any():
        constant = [c for c, f in zip(label, flat, strict=True) if f]
        warnings.warn(
            f"columns {constant} are constant: their z-scores are 0", UserWarning, stacklevel=2
        )
        std = np.where(flat, 1.0, std) if v.ndim == 2 else np.float64(1.0)
    return mean, std


def standardize(rewards: pd.DataFrame) -> pd.DataFrame:
    """Z-score each column so one BT ``beta`` means the same noise for every group."""
    values = rewards.to_numpy(dtype=np.float64)
    mean, std = column_stats(values, [str(c) for c in rewards.columns])
    return pd.DataFrame((values - mean) / std, index=rewards.index, columns=rewards.columns)


def standardize_columns(a: pd.DataFrame, b: pd.DataFrame) -> tuple[FloatArray, FloatArray]:
    """Z-score each group's ground truth over the pooled rows of both sides of the pairs."""
    va, vb = a.to_numpy(dtype=np.float64), b.to_numpy(dtype=np.float64)
    mean, std = column_stats(np.concatenate([va, vb]), [str(c) for c in a.columns])
    return (va - mean) / std, (vb - mean) / std


# --------------------------------------------------------------------------- accuracy


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


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    values: ArrayLike, n_boot: int, seed: int, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, lo, hi): percentile bootstrap of the mean over the entries (e.g. prompts);
    lo and hi are NaN for a single entry."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {v.shape}")
    if v.size < 2:
        return float(v.mean()), math.nan, math.nan
    ci = scipy.stats.bootstrap(
        (v,),
        np.mean,
        n_resamples=n_boot,
        method="percentile",
        confidence_level=level,
        vectorized=True,
        rng=np.random.default_rng(seed),
    ).confidence_interval
    return float(v.mean()), float(ci.low), float(ci.high)


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


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval over seeds (NaN bounds for one seed)."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    lo, hi = scipy.stats.t.interval(level, len(x) - 1, loc=mean, scale=scipy.stats.sem(x))
    return mean, float(lo), float(hi)


# --------------------------------------------------------------------------- win rates


def win_rate(outcomes: Sequence[float] | FloatArray) -> float:
    """Mean outcome: wins count 1, ties 0.5 (already in the outcomes), losses 0."""
    v = np.asarray(outcomes, dtype=np.float64)
    if v.ndim != 1 or v.size == 0 or not ((v >= 0) & (v <= 1)).all():
        raise ValueError("outcomes must be a non-empty 1-D array of values in [0, 1]")
    return float(v.mean())


def win_rate_ci(
    outcomes: Sequence[float] | FloatArray, n_boot: int, seed: int, level: float = 0.95
) -> tuple[float, float, float]:
    """(win rate, lo, hi): percentile bootstrap over prompts (:func:`bootstrap_ci`)."""
    win_rate(outcomes)  # validates
    return bootstrap_ci(np.asarray(outcomes, dtype=np.float64), n_boot, seed, level)


def headline(
    outcomes: Mapping[str, Mapping[str, np.ndarray]], n_boot: int, seed: int, level: float = 0.95
) -> pd.DataFrame:
    """The MaxMin paper's table: per method and group, the win rate against the SFT policy
    with a percentile bootstrap CI over (seed, prompt) rows, and the average across groups.

    ``outcomes[method][group]``: win outcomes (1 win, 0.5 tie, 0 loss) of every seed's
    answers, seeds concatenated in one order for all groups, so the bootstrap is *paired*:
    one resample of rows serves every group and the average."""
    rows = []
    for method, by_group in outcomes.items():
        n = {len(v) for v in by_group.values()}
        if len(n) != 1:
            raise ValueError(f"{method}: groups have different numbers of outcomes {n}")
        cols = [np.asarray(by_group[g], dtype=np.float64) for g in by_group]

        def stat(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
            means = np.stack([s.mean(axis=axis) for s in samples])  # (groups, ...)
            return np.concatenate([means, means.mean(axis=0, keepdims=True)])

        ci = scipy.stats.bootstrap(
            tuple(cols),
            stat,
            n_resamples=n_boot,
            method="percentile",
            confidence_level=level,
            vectorized=True,
            paired=True,
            rng=np.random.default_rng(seed),
        ).confidence_interval
        point = stat(*cols)
        for j, g in enumerate([*by_group, "average"]):
            rows.append(
                {
                    "method": method,
                    "group": g,
                    "win_rate": float(point[j]),
                    "lo": float(ci.low[j]),
                    "hi": float(ci.high[j]),
                }
            )
    return pd.DataFrame(rows)


def gains(table: pd.DataFrame, base: str, new: str) -> dict[str, float]:
    """``new`` minus ``base`` win rate per group, in points and relative to ``base`` (the
    paper's "> 16% average, > 33% minority" are relative improvements)."""
    wide = table.pivot(index="group", columns="method", values="win_rate")
    out = {}
    for g, row in wide.iterrows():
        out[f"{g}_gain_points"] = float(row[new] - row[base])
        out[f"{g}_gain_relative"] = float(row[new] / row[base] - 1) if row[base] > 0 else math.nan
    return out


def updates_to_target(curve: pd.DataFrame, target: float, value: str = "gt") -> float:
    """First PPO update (> 0) whose ``value`` reaches ``target``; NaN if none does."""
    hit = curve[(curve["update"] > 0) & (curve[value] >= target)]["update"]
    return float(hit.min()) if len(hit) else math.nan
