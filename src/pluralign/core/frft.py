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
import warnings
from typing import Literal, get_args

import numpy as np
from numpy.typing import NDArray

from pluralign._typing import FloatArray, IntArray
from pluralign.core._checks import (
    float_array,
    index_array,
    integer,
    number,
    numeric_array,
    unit_rows,
)

Rule = Literal["P1", "P2", "P3", "P4", "random"]
RULES: tuple[str, ...] = get_args(Rule)


def similarities(
    generation_emb: NDArray[np.floating],
    prompt_index: IntArray,
    chosen_emb: NDArray[np.floating],
    rejected_emb: NDArray[np.floating],
) -> tuple[FloatArray, FloatArray]:
    """(s_c, s_r), each shape (n,): cosine of each record's chosen and rejected response to
    the policy's generation for its prompt.

    Parameters
    ----------
    generation_emb : array_like, shape (n_prompts, d)
        Unit-norm embedding of the generation for each prompt.
    prompt_index : array_like of int, shape (n,)
        Row of ``generation_emb`` (the prompt) of each record, in ``[0, n_prompts)``.
    chosen_emb, rejected_emb : array_like, shape (n, d)
        Unit-norm embeddings of each record's chosen and rejected responses.

    Rows must have norm 1 (relative tolerance 1e-6, or 10 machine epsilons of their dtype),
    or be exactly 0: the rules compare cosines, and a dot product of unnormalized rows is
    not one (it can exceed 1). Raises ``ValueError`` naming the argument otherwise, and on
    shape mismatches, NaN / inf and out-of-range ``prompt_index``.
    """
    g_all = numeric_array(
        generation_emb, "generation_emb", ndim=2, shape="(n_prompts, d)", finite=False
    )
    chosen = numeric_array(chosen_emb, "chosen_emb", ndim=2, shape="(n, d)", finite=False)
    rejected = numeric_array(rejected_emb, "rejected_emb", ndim=2, shape="(n, d)", finite=False)
    idx = index_array(prompt_index, "prompt_index", g_all.shape[0], "rows of generation_emb")
    if rejected.shape != chosen.shape:
        raise ValueError(
            f"rejected_emb must have the shape of chosen_emb {chosen.shape}, got {rejected.shape}"
        )
    if idx.shape[0] != chosen.shape[0]:
        raise ValueError(
            f"prompt_index has {idx.shape[0]} entries but chosen_emb has {chosen.shape[0]} "
            "records (rows)"
        )
    if g_all.shape[1] != chosen.shape[1]:
        raise ValueError(
            f"generation_emb has dimension d={g_all.shape[1]} but chosen_emb has "
            f"d={chosen.shape[1]}: embed both with one encoder"
        )
    for name, E in (("generation_emb", g_all), ("chosen_emb", chosen), ("rejected_emb", rejected)):
        unit_rows(E, name)
    g = g_all[idx]
    s_c = np.einsum("nd,nd->n", g, chosen, dtype=np.float64)
    s_r = np.einsum("nd,nd->n", g, rejected, dtype=np.float64)
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
    s_c = float_array(s_c, "s_c", ndim=1, shape="(n,)", allow_empty=True)
    s_r = float_array(s_r, "s_r", ndim=1, shape="(n,)", allow_empty=True)
    if s_c.shape != s_r.shape:
        raise ValueError(
            f"s_c and s_r must have one entry per record, got {s_c.shape} and {s_r.shape}"
        )
    if s_c.size == 0:
        raise ValueError("no records to threshold (s_c and s_r are empty)")
    k = integer(k, "k", minimum=1)
    both = np.minimum(s_c, s_r)
    kth = np.sort(both)[::-1][min(k, both.size) - 1]
    return float(np.nextafter(kth, -np.inf))


def frft_select(
    rule: Rule,
    s_c: FloatArray,
    s_r: FloatArray,
    k: int,
    threshold: float | None = 0.8,
    rng: np.random.Generator | None = None,
) -> IntArray:
    """Indices (sorted, shape (<= k,)) of the records a rule selects with budget ``k``.

    Parameters
    ----------
    rule : one of 'P1', 'P2', 'P3', 'P4', 'random'
        The selection rule (module docstring): 'P1' both similarities above ``threshold``,
        top k by s_c + s_r; 'P2' top ceil(k/2) by s_c union top floor(k/2) by s_r; 'P3' top k
        by s_r; 'P4' top k by s_c; 'random' k records uniformly (needs ``rng``).
    s_c, s_r : array_like, shape (n,)
        Similarity of each record's chosen / rejected response to the policy's generation
        (:func:`similarities`); finite, one entry per record.
    k : int
        Budget, >= 1. Every rule returns at most k records (P1 fewer when fewer pass).
    threshold : float or None
        P1 only. None takes :func:`quantile_threshold` (the largest threshold that k records
        pass). The default 0.8 is the paper's value for its own encoder: on another
        embedding it may select nothing, which warns.
    rng : numpy.random.Generator, optional
        The 'random' rule's source of randomness (required for it).

    Warns
    -----
    UserWarning
        When P1's threshold lets no record through (the selection is empty).
    """
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; choose one of {RULES}")
    s_c = float_array(s_c, "s_c", ndim=1, shape="(n,)")
    s_r = float_array(s_r, "s_r", ndim=1, shape="(n,)")
    k = integer(k, "k")
    if k < 1:
        raise ValueError(f"selection budget k must be >= 1, got {k}")
    if s_c.shape != s_r.shape:
        raise ValueError(
            f"s_c and s_r must have one entry per record, got {s_c.shape} and {s_r.shape}"
        )
    if rule == "P1":
        if threshold is None:
            tau = quantile_threshold(s_c, s_r, k)
        else:
            tau = number(threshold, "threshold")
        rows = top_k(s_c + s_r, k, (s_c > tau) & (s_r > tau))
        if rows.size == 0:
            warnings.warn(
                f"frft_select('P1') selected no record: none of the {s_c.size} has both "
                f"s_c and s_r above threshold={tau:g} (the largest min(s_c, s_r) is "
                f"{np.minimum(s_c, s_r).max():.4g}). A threshold is a value of one encoder; "
                "pass threshold=None to use quantile_threshold (the largest threshold that "
                "k records pass)",
                UserWarning,
                stacklevel=2,
            )
        return rows
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
