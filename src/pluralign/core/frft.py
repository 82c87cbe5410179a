"""FRFT's selection rules (Krishna & Sahoo, 2024): which offline records match the policy.

With ``g_i`` the policy's generation for record i's prompt and unit-norm embeddings E,
``s_c = <E(g_i), E(chosen_i)>`` and ``s_r = <E(g_i), E(rejected_i)>``. Rules (k = budget):

======  ===========================================================================
P1      records with s_c > tau and s_r > tau, the top k of them by s_c + s_r; tau = None
        takes the largest threshold that at least k records pass (:func:`quantile_threshold`):
        the paper's 0.8 is a value of its style encoder, not a property of any other one
P2      top ceil(k/2) by s_c  union  top floor(k/2) by s_r (so at most k records)
P3      top k by s_r
P4      top k by s_c
random  k records uniformly at random (the control)
======  ===========================================================================

Selection is one gather-and-dot over the cached record embeddings and an ``argpartition``
top-k: O(n d), no loop over records. The refit that uses it is
``pluralign.training.frft``.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray

from pluralign._typing import FloatArray, IntArray

Rule = Literal["P1", "P2", "P3", "P4", "random"]
RULES: tuple[str, ...] = get_args(Rule)


def similarities(
    generation_emb: NDArray[np.floating],
    prompt_index: IntArray,
    chosen_emb: NDArray[np.floating],
    rejected_emb: NDArray[np.floating],
) -> tuple[FloatArray, FloatArray]:
    """(s_c, s_r): cosine of each record's responses to the generation for its prompt
    (embeddings unit-norm; ``generation_emb`` has one row per prompt)."""
    g = generation_emb[prompt_index]
    s_c = np.einsum("nd,nd->n", g, chosen_emb, dtype=np.float64)
    s_r = np.einsum("nd,nd->n", g, rejected_emb, dtype=np.float64)
    return s_c, s_r


def top_k(scores: FloatArray, k: int, eligible: NDArray[np.bool_] | None = None) -> IntArray:
    """Indices of the k largest ``scores`` (among ``eligible``), sorted by index; ties are
    broken by the lower index, so the result is deterministic."""
    pool = np.arange(scores.size) if eligible is None else np.flatnonzero(eligible)
    if k >= pool.size:
        return np.sort(pool)
    s = scores[pool]
    part = np.argpartition(-s, k - 1)[:k]
    cut = s[part].min()  # the k-th largest value: resolve ties at the cut by index
    above = pool[s > cut]
    at_cut = pool[s == cut][: k - above.size]
    return np.sort(np.concatenate([above, at_cut]))


def quantile_threshold(s_c: FloatArray, s_r: FloatArray, k: int) -> float:
    """The largest tau with at least ``k`` records above it on both similarities (every record
    when there are at most k): the translation of the paper's "both > 0.8" to an embedding
    whose similarities live on another scale."""
    both = np.minimum(np.asarray(s_c, dtype=np.float64), np.asarray(s_r, dtype=np.float64))
    if both.size == 0:
        raise ValueError("no records to threshold")
    kth = np.sort(both)[::-1][min(k, both.size) - 1]
    return float(np.nextafter(kth, -np.inf))


def select(
    rule: Rule,
    s_c: FloatArray,
    s_r: FloatArray,
    k: int,
    threshold: float | None = 0.8,
    rng: np.random.Generator | None = None,
) -> IntArray:
    """Indices (sorted) of the records a rule selects with budget ``k`` (P1's ``threshold``
    None: :func:`quantile_threshold`)."""
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {RULES}")
    if k < 1:
        raise ValueError(f"selection budget k must be >= 1, got {k}")
    if s_c.shape != s_r.shape:
        raise ValueError("s_c and s_r must have one entry per record")
    if rule == "P1":
        tau = quantile_threshold(s_c, s_r, k) if threshold is None else threshold
        return top_k(s_c + s_r, k, (s_c > tau) & (s_r > tau))
    if rule == "P2":  # ceil(k/2) + floor(k/2) = k: never over the budget
        by_c = top_k(s_c, math.ceil(k / 2))
        return np.union1d(by_c, top_k(s_r, k // 2)) if k > 1 else by_c
    if rule == "P3":
        return top_k(s_r, k)
    if rule == "P4":
        return top_k(s_c, k)
    if rng is None:
        raise ValueError("the random rule needs an rng")
    return np.sort(rng.choice(s_c.size, size=min(k, s_c.size), replace=False))
