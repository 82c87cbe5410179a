"""P-SOUPS-like user groups over real IMDB text, for notebook 03 (MaxMin-RLHF, EM mixtures).

P-SOUPS (Jang et al., 2023) asks annotators to prefer answers along one axis each (e.g.
concise vs. verbose). It is not available offline, so we plant the same structure on real
review snippets with rule-based ground-truth rewards, one per hidden group (:data:`GROUPS`):

=========  ===========================================  ==================================
group      raw reward r_k(x)                            why
=========  ===========================================  ==================================
positive   VADER compound polarity, in [-1, 1]          sentiment, the usual IMDB reward
concise    ``-log(number of words)``                    shorter is better, per P-SOUPS
plain      ``-clip(Flesch-Kincaid grade, -5, 25)``      readable words, short sentences
=========  ===========================================  ==================================

Recipe (each step a pure function, seeded by its caller):

1. :func:`extract_snippets`: the first 1-3 sentences of reviews, so lengths vary widely
   (a fixed one-sentence cut would make ``concise`` nearly constant).
2. :func:`group_rewards`, then :func:`standardize`: z-scores, so one ``beta`` means the
   same noise level for every group.
3. :func:`group_correlations`: if two groups' rewards correlate strongly, no algorithm can
   tell those users apart from their comparisons; the notebook reports this matrix.
4. :func:`simulate_users`: each user compares random pairs under the Bradley-Terry model
   of their group's reward, ``P(a preferred to b) = sigma(beta (r_k(a) - r_k(b)))``.
   EM (``mixture.fit_em``) must recover the groups from these comparisons alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.special import expit

from pluralign.assets import clean_review, vader_compound

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

#: The hidden groups, in the column order of :func:`group_rewards`.
GROUPS: tuple[str, ...] = ("positive", "concise", "plain")
#: Flesch-Kincaid grades are clipped to this range: one long word in a three-word snippet
#: gives a grade above 40, which would dominate the z-scores of ``plain``.
FK_CLIP: tuple[float, float] = (-5.0, 25.0)
MAX_SENTENCES = 3  # a snippet is the first 1..MAX_SENTENCES sentences of a review
# Same splitter as case_study: after . ! ? and before a capital letter or a quote.
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def n_words(text: str) -> int:
    """Whitespace-separated words: the one word count used for bounds and ``concise``."""
    return len(text.split())


# --------------------------------------------------------------------------- snippets


def extract_snippets(
    texts: Sequence[str], n: int, min_words: int, max_words: int, seed: int
) -> list[str]:
    """``n`` distinct review openings of 1-3 sentences, deterministic given ``seed``.

    Reviews are visited in the order of ``default_rng(seed).permutation``; review r gives
    the first ``k_r`` sentences of ``clean_review(texts[r])``, with ``k_r`` uniform on
    {1, 2, 3} (drawn for every review up front from the same generator), so that snippet
    lengths vary widely and ``concise`` has something to rank. A snippet is kept if it has
    ``min_words..max_words`` words, ends with ``. ! ?`` (not cut mid-sentence), and its
    lower-cased text was not taken before.

    Parameters
    ----------
    texts : sequence of str
        Reviews (raw or cleaned; ``<br />`` tags are removed here).
    n : int
        Number of snippets wanted, >= 1.
    min_words, max_words : int
        Inclusive word-count bounds, ``1 <= min_words <= max_words``.
    seed : int
        Seed of the visiting order and of the number of sentences per review.

    Returns
    -------
    list of str
        The snippets in the order they were picked.

    Raises
    ------
    ValueError
        On bad arguments, or when fewer than ``n`` reviews give a qualifying snippet.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    n_sentences = rng.integers(1, MAX_SENTENCES + 1, size=len(texts))
    picked: list[str] = []
    seen: set[str] = set()
    for r in order:
        sentences = _SENTENCE_SPLIT.split(clean_review(texts[r]))
        snippet = " ".join(s.strip() for s in sentences[: n_sentences[r]]).strip()
        if not snippet or snippet[-1] not in ".!?" or snippet.lower() in seen:
            continue
        if min_words <= n_words(snippet) <= max_words:
            seen.add(snippet.lower())
            picked.append(snippet)
            if len(picked) == n:
                return picked
    raise ValueError(
        f"only {len(picked)} of {len(texts)} reviews give a distinct snippet of "
        f"{min_words}-{max_words} words ending in . ! ? (wanted {n})"
    )


# --------------------------------------------------------------------------- rewards


_FK_GRADE: Callable[[str], float] | None = None


def flesch_kincaid_grade(text: str) -> float:
    """textstat's Flesch-Kincaid grade *without* its default rounding.

    ``0.39 words/sentence + 11.8 syllables/word - 15.59`` (pyphen syllables; sentences of
    <= 2 words are not counted). textstat rounds syllables/word to 0.1 by default, which
    moves the grade in steps of 1.18 and creates many ties; a private instance with
    rounding off keeps the grade continuous without touching the shared ``textstat``.
    """
    global _FK_GRADE
    if _FK_GRADE is None:
        from textstat.textstat import textstatistics

        stats = textstatistics()
        stats.set_rounding(False)
        _FK_GRADE = stats.flesch_kincaid_grade
    return float(_FK_GRADE(text))


def group_rewards(texts: Sequence[str]) -> pd.DataFrame:
    """Raw ground-truth rewards: one row per text, one column per :data:`GROUPS` entry.

    ``positive`` = VADER compound; ``concise`` = ``-log(n_words)``; ``plain`` =
    ``-clip(flesch_kincaid_grade, *FK_CLIP)`` (higher = easier to read). Raw scales differ
    (VADER spans [-1, 1], ``concise`` about [-4, -1.5]): pass the frame to
    :func:`standardize` before using it as Bradley-Terry utilities.

    Raises
    ------
    ValueError
        If a text has no words (``-log 0`` is undefined).
    """
    words = np.array([n_words(t) for t in texts], dtype=np.float64)
    empty = np.flatnonzero(words == 0)
    if empty.size:
        raise ValueError(f"text {int(empty[0])} has no words: no 'concise' reward")
    grade = np.array([flesch_kincaid_grade(t) for t in texts], dtype=np.float64)
    columns = {
        "positive": vader_compound(texts),
        "concise": -np.log(words),
        "plain": -np.clip(grade, *FK_CLIP),
    }
    return pd.DataFrame({g: columns[g] for g in GROUPS})


def standardize(rewards: pd.DataFrame) -> pd.DataFrame:
    """Z-score each column (population std, ``ddof=0``) so one ``beta`` fits every group.

    Raises
    ------
    ValueError
        If a column is constant (it has no ranking to learn), or holds NaN / inf.
    """
    values = rewards.to_numpy(dtype=np.float64)
    bad = [c for c, ok in zip(rewards.columns, np.isfinite(values).all(axis=0), strict=True)
           if not ok]  # fmt: skip
    if bad:
        raise ValueError(f"columns {bad} hold NaN or inf")
    std = values.std(axis=0)
    constant = [c for c, s in zip(rewards.columns, std, strict=True) if s == 0]
    if constant:
        raise ValueError(f"columns {constant} are constant: cannot standardize")
    z = (values - values.mean(axis=0)) / std
    return pd.DataFrame(z, index=rewards.index, columns=rewards.columns)


def group_correlations(rewards: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlation between the groups' rewards over the same texts.

    Strongly correlated groups rank most pairs alike, so their users' comparisons look alike
    and EM cannot separate them; rank correlation because only orderings matter to BT.
    """
    return rewards.corr(method="spearman")


# --------------------------------------------------------------------------- users


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
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"rewards must be 2-D (m texts, K groups), got shape {r.shape}")
    m, K = r.shape
    if m < 2:
        raise ValueError(f"need at least 2 texts to compare, got m={m}")
    if not np.isfinite(r).all():
        raise ValueError("rewards hold NaN or inf")
    counts = np.asarray(users_per_group)
    if counts.ndim != 1 or counts.size != K:
        raise ValueError(f"users_per_group has {counts.size} entries, rewards has K={K} columns")
    if not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any() or counts.sum() == 0:
        raise ValueError(f"users_per_group must be non-negative ints, not all 0: {counts}")
    n_pairs = m * (m - 1) // 2
    if not 1 <= comparisons_per_user <= n_pairs:
        raise ValueError(
            f"comparisons_per_user must be in 1..{n_pairs} (distinct pairs of {m} texts), "
            f"got {comparisons_per_user}"
        )
    if not (np.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be finite and > 0, got {beta}")

    rng = np.random.default_rng(seed)
    user_group = np.repeat(np.arange(K), counts)  # (n_users,)
    n_users, c = user_group.size, comparisons_per_user
    p = np.concatenate([rng.choice(n_pairs, size=c, replace=False) for _ in range(n_users)])
    a, b = _decode_pairs(p)  # (n,), (n,)
    user = np.repeat(np.arange(n_users), c)  # (n,)
    k = user_group[user]
    p_a = expit(beta * (r[a, k] - r[b, k]))  # (n,) P(a preferred)
    a_wins = rng.random(a.size) < p_a
    return SimulatedComparisons(
        user=user,
        chosen=np.where(a_wins, a, b),
        rejected=np.where(a_wins, b, a),
        user_group=user_group,
        p_chosen=np.where(a_wins, p_a, 1 - p_a),
    )
