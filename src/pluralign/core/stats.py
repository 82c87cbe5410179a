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
from pluralign.core._checks import float_array, integer, number

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
    v = float_array(values, "values", allow_empty=True, finite=False)
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
    (pairs the ground truth ties are skipped). ``reward_a``, ``reward_b``: the model's scores
    of the two sides, shape (n,); ``gt_a``, ``gt_b``: ground truth, n rows, one column per
    group (the same columns)."""
    reward_a = float_array(reward_a, "reward_a", ndim=1, shape="(n,)", allow_empty=True)
    reward_b = float_array(reward_b, "reward_b", ndim=1, shape="(n,)", allow_empty=True)
    _same_frames(gt_a, gt_b, "gt_a", "gt_b")
    if not reward_a.shape == reward_b.shape == (len(gt_a),):
        raise ValueError(
            f"reward_a {reward_a.shape} and reward_b {reward_b.shape} must have one score per "
            f"row of gt_a ({len(gt_a)},)"
        )
    out = {}
    for g in gt_a.columns:
        diff = gt_a[g].to_numpy() - gt_b[g].to_numpy()
        keep = diff != 0
        agree = np.sign(reward_a - reward_b)[keep] == np.sign(diff[keep])
        out[g] = float(agree.mean()) if keep.any() else float("nan")
    return out


def _same_frames(a: pd.DataFrame, b: pd.DataFrame, name_a: str, name_b: str) -> None:
    """Two ground-truth frames of the same rows (count) and the same group columns, in order."""
    if a.shape != b.shape or list(a.columns) != list(b.columns):
        raise ValueError(
            f"{name_a} and {name_b} must have the same rows and group columns: "
            f"{a.shape} {list(a.columns)} vs {b.shape} {list(b.columns)}"
        )


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    values: ArrayLike, n_boot: int, seed: int, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, lo, hi): percentile bootstrap of the mean over the entries (e.g. prompts) of
    ``values``, shape (n,), finite (drop NaN first: a NaN would make every bound NaN); lo and
    hi are NaN for a single entry. ``n_boot`` >= 1 resamples, ``level`` in (0, 1)."""
    v = float_array(values, "values", allow_empty=True, finite=False)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values contain NaN or inf: drop them (e.g. v[np.isfinite(v)]) first")
    n_boot = integer(n_boot, "n_boot", minimum=1)
    level = number(level, "level", low=0.0, high=1.0, low_open=True, high_open=True)
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
    """Per prompt and group: 1 if the policy's answer beats the reference's, 0.5 tie, 0 loss.
    Both frames: one row per prompt, one column per group (the same columns)."""
    _same_frames(gt_policy, gt_ref, "gt_policy", "gt_ref")
    diff = gt_policy.to_numpy(dtype=np.float64) - gt_ref.to_numpy(dtype=np.float64)
    if np.isnan(diff).any():
        raise ValueError("gt_policy or gt_ref contains NaN: a win is undefined")
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
    """Mean and Student-t confidence interval over seeds of ``values``, shape (n_seeds,),
    finite (NaN bounds for one seed)."""
    x = float_array(values, "values", ndim=1, shape="(n_seeds,)")
    level = number(level, "level", low=0.0, high=1.0, low_open=True, high_open=True)
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
    one resample of rows serves every group and the average. Each is 1-D, shape (n,), with
    values in [0, 1]."""
    if not outcomes:
        raise ValueError("outcomes is empty: no method to tabulate")
    rows = []
    for method, by_group in outcomes.items():
        if not by_group:
            raise ValueError(f"outcomes[{method!r}] is empty: no group")
        n = {len(v) for v in by_group.values()}
        if len(n) != 1:
            raise ValueError(f"{method}: groups have different numbers of outcomes {n}")
        cols = [
            float_array(by_group[g], f"outcomes[{method!r}][{g!r}]", ndim=1, shape="(n,)")
            for g in by_group
        ]
        for g, c in zip(by_group, cols, strict=True):
            if np.any((c < 0) | (c > 1)):
                raise ValueError(f"outcomes[{method!r}][{g!r}] must be win outcomes in [0, 1]")

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
    for name, method in (("base", base), ("new", new)):
        if method not in set(table["method"]):
            raise ValueError(
                f"{name}={method!r} is not a method of the table: {sorted(set(table['method']))}"
            )
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
