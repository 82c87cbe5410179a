"""The one Bradley-Terry label simulator: users of planted groups label comparisons.

Every simulated preference in the repo is drawn here (notebooks 02-05): a user of group k
prefers a to b with probability ``sigma(beta (r_k(a) - r_k(b)))`` (:func:`bt_outcomes`).
What a labelled "item" is differs by caller, the drawing does not:

* :func:`simulate_users`: items are the unordered pairs of m texts (notebook 03);
* :func:`label_pairs`: items are given pairs (a_i, b_i), two answers to one prompt
  (notebooks 04, 05);
* notebook 02 draws an annotator type per comparison and calls :func:`bt_outcomes` itself.

Users are numbered group by group and each draws its items without replacement
(:func:`draw_user_items`); all randomness comes from one generator: first the items, user
by user, then one uniform per comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit

from pluralign._typing import BoolArray, FloatArray, IntArray
from pluralign.core._checks import float_array, integer


def bt_outcomes(
    margin: ArrayLike, beta: float, rng: np.random.Generator
) -> tuple[BoolArray, FloatArray]:
    """(a_wins, p_a): one Bradley-Terry draw per comparison with utility difference
    ``margin = r(a) - r(b)``, shape (n,): ``p_a = sigma(beta * margin)``, a wins iff a uniform
    < p_a. A NaN margin is an error (it would make every comparison a loss for a)."""
    if not (np.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be finite and > 0, got {beta}")
    margin = float_array(margin, "margin", allow_empty=True)
    p_a = expit(beta * margin)
    return rng.random(p_a.size) < p_a, p_a


def draw_user_items(
    n_items: int,
    users_per_group: Sequence[int],
    per_user: int,
    rng: np.random.Generator,
    n_groups: int,
    items: str = "items",
) -> tuple[IntArray, IntArray, IntArray]:
    """(user of each row, item of each row, group of each user): every user draws ``per_user``
    distinct items of ``n_items`` uniformly; users are numbered group by group."""
    counts = np.asarray(users_per_group)
    if counts.ndim != 1 or counts.size != n_groups:
        raise ValueError(f"users_per_group has {counts.size} entries for K={n_groups} groups")
    if not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any() or counts.sum() == 0:
        raise ValueError(f"users_per_group must be non-negative ints, not all 0: {counts}")
    per_user = integer(per_user, "comparisons per user")
    if not 1 <= per_user <= n_items:
        raise ValueError(f"comparisons per user must be in 1..{n_items} ({items}), got {per_user}")
    user_group = np.repeat(np.arange(n_groups), counts)  # (n_users,)
    item = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in user_group])
    user = np.repeat(np.arange(user_group.size), per_user)  # (n,)
    return user, item, user_group


@dataclass
class SimulatedComparisons:
    """Comparisons of simulated users; row i: ``user[i]`` preferred ``chosen[i]``.

    Users are numbered group by group: users ``0..users_per_group[0]-1`` belong to group 0,
    the next ``users_per_group[1]`` to group 1, and so on (``user_group`` holds the truth;
    ``mixture.fit_em``'s round-robin init ``h mod K`` mixes groups evenly, so the numbering
    leaks nothing). Rows are ordered by user.
    """

    user: IntArray  # (n,) user id 0..n_users-1 of each comparison
    chosen: IntArray  # (n,) index of the preferred text
    rejected: IntArray  # (n,) index of the other text
    user_group: IntArray  # (n_users,) planted group index of each user
    p_chosen: FloatArray  # (n,) true BT probability of the observed outcome

    @property
    def group(self) -> IntArray:
        """(n,) planted group of the user behind each comparison."""
        return self.user_group[self.user]

    def to_frame(self) -> pd.DataFrame:
        """One row per comparison: user, group, chosen, rejected, p_chosen."""
        return pd.DataFrame(
            {
                "user": self.user,
                "group": self.group,
                "chosen": self.chosen,
                "rejected": self.rejected,
                "p_chosen": self.p_chosen,
            }
        )


def _decode_pairs(p: IntArray) -> tuple[IntArray, IntArray]:
    """Pair number p -> (a, b) with a < b, enumerating (0,1), (0,2), (1,2), (0,3), ...

    ``p = b (b - 1) / 2 + a``; b from the quadratic formula, then corrected by one where
    floating point rounding lands on the wrong side of a triangular number.
    """
    b = ((1 + np.sqrt(1 + 8 * p.astype(np.float64))) / 2).astype(np.int64)
    b -= b * (b - 1) // 2 > p
    b += (b + 1) * b // 2 <= p
    return p - b * (b - 1) // 2, b


def simulate_users(
    rewards: ArrayLike,
    users_per_group: Sequence[int],
    comparisons_per_user: int,
    beta: float,
    seed: int,
) -> SimulatedComparisons:
    """Bradley-Terry comparisons by users of K planted groups.

    Each user of group k draws ``comparisons_per_user`` distinct unordered pairs {a, b} of
    the m texts (uniformly, without replacement within the user; ``a < b``) and prefers a
    with probability ``sigma(beta (r_k(a) - r_k(b)))``. All randomness comes from
    ``np.random.default_rng(seed)``: first the pairs, user by user, then one uniform per
    comparison for the outcomes.

    Parameters
    ----------
    rewards : array_like, shape (m, K)
        Ground truth per text and group, normally standardized (:func:`standardize`).
    users_per_group : sequence of int, length K
        Number of users of each group (>= 0 each, > 0 in total); see
        :class:`SimulatedComparisons` for how users are numbered.
    comparisons_per_user : int
        Between 1 and ``m (m - 1) / 2``.
    beta : float
        Inverse temperature > 0: larger means less noisy preferences.
    seed : int
        Seed of the generator.

    Returns
    -------
    SimulatedComparisons
    """
    r = float_array(rewards, "rewards", allow_empty=True, finite=False)
    if r.ndim != 2:
        raise ValueError(f"rewards must be 2-D (m texts, K groups), got shape {r.shape}")
    m, K = r.shape
    if m < 2:
        raise ValueError(f"need at least 2 texts to compare, got m={m}")
    if not np.isfinite(r).all():
        raise ValueError("rewards hold NaN or inf")
    n_pairs = m * (m - 1) // 2
    rng = np.random.default_rng(seed)
    user, p, user_group = draw_user_items(
        n_pairs, users_per_group, comparisons_per_user, rng, K, f"distinct pairs of {m} texts"
    )
    a, b = _decode_pairs(p)  # (n,), (n,)
    k = user_group[user]
    a_wins, p_a = bt_outcomes(r[a, k] - r[b, k], beta, rng)  # (n,)
    return SimulatedComparisons(
        user=user,
        chosen=np.where(a_wins, a, b),
        rejected=np.where(a_wins, b, a),
        user_group=user_group,
        p_chosen=np.where(a_wins, p_a, 1 - p_a),
    )


@dataclass
class PairLabels:
    """Comparisons of pairs (a_i, b_i): user u prefers a over b in row j iff ``a_wins``."""

    user: NDArray[np.int64]
    pair: NDArray[np.int64]
    a_wins: NDArray[np.bool_]
    user_group: NDArray[np.int64]  # (n_users,)
    p_a: FloatArray  # true P(a preferred) of each row

    def chosen_rejected(
        self, texts_a: Sequence[str], texts_b: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        """The labelled comparisons as (chosen, rejected) texts, one pair per row."""
        rows = list(zip(self.pair, self.a_wins, strict=True))
        chosen = [texts_a[p] if w else texts_b[p] for p, w in rows]
        rejected = [texts_b[p] if w else texts_a[p] for p, w in rows]
        return chosen, rejected


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
    ``gt_a``, ``gt_b`` (n_pairs, K), finite. ``users_per_group`` has K entries (users are
    numbered group by group); ``per_user`` is in 1..n_pairs."""
    gt_a = float_array(gt_a, "gt_a", allow_empty=True, finite=False)
    gt_b = float_array(gt_b, "gt_b", allow_empty=True, finite=False)
    if gt_a.shape != gt_b.shape or gt_a.ndim != 2:
        raise ValueError(
            f"gt_a and gt_b must be equal (n_pairs, K) arrays: {gt_a.shape}, {gt_b.shape}"
        )
    for name, gt in (("gt_a", gt_a), ("gt_b", gt_b)):
        if not np.all(np.isfinite(gt)):
            raise ValueError(f"{name} contains NaN or inf")
    n_pairs, K = gt_a.shape
    rng = np.random.default_rng(seed)
    users, pairs, user_group = draw_user_items(
        n_pairs, users_per_group, per_user, rng, K, "the pairs"
    )
    g = user_group[users]
    a_wins, p_a = bt_outcomes(gt_a[pairs, g] - gt_b[pairs, g], beta, rng)
    return PairLabels(users, pairs, a_wins, user_group, p_a)


def users_per_group(n_users: int, shares: Sequence[float]) -> list[int]:
    """Split ``n_users`` by ``shares`` (largest remainder), every group at least one user."""
    shares = np.asarray(shares, dtype=np.float64)
    if shares.ndim != 1 or np.any(shares <= 0) or not np.isclose(shares.sum(), 1.0):
        raise ValueError(f"shares must be positive and sum to 1, got {shares.tolist()}")
    if n_users < shares.size:
        raise ValueError(f"{n_users} users cannot fill {shares.size} groups")
    raw = shares * n_users
    counts = np.maximum(np.floor(raw).astype(int), 1)
    while counts.sum() < n_users:
        counts[np.argmax(raw - counts)] += 1
    while counts.sum() > n_users:
        counts[np.argmax(np.where(counts > 1, counts - raw, -np.inf))] -= 1
    return counts.tolist()
