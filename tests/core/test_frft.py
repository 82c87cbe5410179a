"""FRFT's selection rules (pluralign.core.frft): top-k, the rules P1-P4 and random, and the
similarities they select on.

Every check is against something computed independently here: brute-force references of
the selection rules, per-record loops, hand values and binomial tolerances.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pluralign.core.frft import RULES, frft_select, quantile_threshold, similarities, top_k


def binomial_ok(hits: int, n: int, p: float, z: float = 4.0) -> bool:
    """|hits - n p| within z binomial standard deviations."""
    return abs(hits - n * p) <= z * math.sqrt(n * p * (1 - p))


def ref_top_k(scores, k: int, eligible=None) -> list[int]:
    """Brute force: stable order by (-score, index), first k, sorted by index."""
    pool = [i for i in range(len(scores)) if eligible is None or eligible[i]]
    return sorted(sorted(pool, key=lambda i: (-scores[i], i))[:k])


def ref_select(rule: str, s_c, s_r, k: int, tau: float) -> list[int]:
    """The rules of the module docstring, written out record by record."""
    n = len(s_c)
    if rule == "P1":
        both = [s_c[i] > tau and s_r[i] > tau for i in range(n)]
        return ref_top_k([s_c[i] + s_r[i] for i in range(n)], k, both)
    if rule == "P2":
        by_r = ref_top_k(s_r, k // 2) if k // 2 else []
        return sorted(set(ref_top_k(s_c, -(-k // 2))) | set(by_r))
    if rule == "P3":
        return ref_top_k(s_r, k)
    return ref_top_k(s_c, k)  # P4


# --------------------------------------------------------------------------- top_k / frft_select


def test_rules_are_the_papers_four_and_the_random_control() -> None:
    assert RULES == ("P1", "P2", "P3", "P4", "random")


def test_top_k_matches_brute_force_with_ties() -> None:
    """top_k = stable sort by (-score, index), with and without a mask, any k."""
    rng = np.random.default_rng(0)
    for _ in range(400):
        n = int(rng.integers(1, 16))
        scores = rng.integers(0, 5, size=n).astype(float)  # many ties
        mask = rng.random(n) < 0.6 if rng.random() < 0.5 else None
        for k in range(1, n + 3):
            got = top_k(scores, k, mask)
            assert got.tolist() == ref_top_k(scores, k, mask), (scores, mask, k)
            assert got.dtype.kind == "i"


def test_top_k_edge_cases_by_hand() -> None:
    """Ties at the cut go to the lower index; k >= pool returns the pool; empty pool."""
    s = np.array([1.0, 3.0, 3.0, 2.0, 3.0])
    assert top_k(s, 2).tolist() == [1, 2]
    assert top_k(s, 4).tolist() == [1, 2, 3, 4]
    assert top_k(s, 5).tolist() == [0, 1, 2, 3, 4]  # k == pool
    assert top_k(s, 9).tolist() == [0, 1, 2, 3, 4]  # k > pool
    mask = np.array([True, False, True, True, False])
    assert top_k(s, 1, mask).tolist() == [2]
    assert top_k(s, 3, mask).tolist() == [0, 2, 3]  # k == pool
    assert top_k(s, 1, np.zeros(5, bool)).tolist() == []


@pytest.mark.parametrize("rule", ["P1", "P2", "P3", "P4"])
def test_select_rules_match_their_definitions(rule: str) -> None:
    """Each rule equals a plain-Python reading of its definition (ties, odd and even k)."""
    rng = np.random.default_rng(1)
    for _ in range(150):
        n = int(rng.integers(1, 14))
        s_c = rng.integers(0, 5, size=n) / 4.0
        s_r = rng.integers(0, 5, size=n) / 4.0
        for k in range(1, n + 2):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                got = frft_select(rule, s_c, s_r, k, threshold=0.5)
            want = ref_select(rule, s_c, s_r, k, 0.5)
            assert got.tolist() == want, (s_c, s_r, k)
            assert len(caught) == (rule == "P1" and not want), caught  # warns iff P1 is empty


def test_p1_threshold_is_strict_on_both_similarities() -> None:
    """P1 keeps only records with s_c > tau and s_r > tau (equality excluded)."""
    s_c = np.array([0.9, 0.8, 0.95, 0.99, 0.85])
    s_r = np.array([0.9, 0.99, 0.7, 0.81, 0.86])
    assert frft_select("P1", s_c, s_r, 10, threshold=0.8).tolist() == [0, 3, 4]
    assert frft_select("P1", s_c, s_r, 2, threshold=0.8).tolist() == [0, 3]  # 1.8 and 1.8 > 1.71


def test_p2_respects_the_budget_for_odd_k() -> None:
    """P2's union has at most k records: ceil(k/2) by s_c and floor(k/2) by s_r."""
    s_c = np.array([3.0, 2.0, 1.0, 0.0])
    s_r = np.array([0.0, 1.0, 2.0, 3.0])
    assert frft_select("P2", s_c, s_r, 3).size <= 3


def test_random_rule_is_a_reproducible_sample_without_repeats() -> None:
    """random: min(k, n) distinct sorted indices, fixed by the rng seed, varying with it."""
    s = np.zeros(50)
    a = frft_select("random", s, s, 10, rng=np.random.default_rng(3))
    assert a.size == 10 and np.unique(a).size == 10 and np.all(np.diff(a) > 0)
    assert a.min() >= 0 and a.max() < 50
    assert np.array_equal(a, frft_select("random", s, s, 10, rng=np.random.default_rng(3)))
    assert not np.array_equal(a, frft_select("random", s, s, 10, rng=np.random.default_rng(4)))
    few = frft_select("random", s[:4], s[:4], 10, rng=np.random.default_rng(0))
    assert few.tolist() == [0, 1, 2, 3]
    # uniform: every index is drawn about k/n of the time
    counts = np.zeros(50)
    rng = np.random.default_rng(5)
    for _ in range(2000):
        counts[frft_select("random", s, s, 10, rng=rng)] += 1
    assert all(binomial_ok(int(c), 2000, 0.2, z=5) for c in counts)


def test_select_rejects_bad_arguments() -> None:
    """Unknown rule, k < 1, random without rng, s_c / s_r of different shapes."""
    s = np.zeros(4)
    with pytest.raises(ValueError, match="unknown selection rule"):
        frft_select("P5", s, s, 2)
    with pytest.raises(ValueError, match="k must be >= 1"):
        frft_select("P4", s, s, 0)
    with pytest.raises(ValueError, match="needs an rng"):
        frft_select("random", s, s, 2)
    with pytest.raises(ValueError, match="one entry per record"):
        frft_select("P3", s, np.zeros(5), 2)


# --------------------------------------------------------------------------- P1's quantile


def passing(s_c, s_r, tau: float) -> int:
    """Records above tau on both similarities, counted by a loop."""
    return sum(1 for c, r in zip(s_c, s_r, strict=True) if c > tau and r > tau)


def test_quantile_threshold_is_the_largest_tau_that_k_records_pass() -> None:
    """Brute force over every candidate: min(k, n) records pass tau, and none of the record
    values at or above tau would let as many pass (tau is the largest such float: the next
    float up loses at least one record). Many ties (values on a grid of 5)."""
    rng = np.random.default_rng(10)
    for _ in range(300):
        n = int(rng.integers(1, 13))
        s_c = rng.integers(-2, 3, size=n) / 2.0
        s_r = rng.integers(-2, 3, size=n) / 2.0 if rng.random() < 0.7 else s_c.copy()
        for k in range(1, n + 3):
            tau = quantile_threshold(s_c, s_r, k)
            need = min(k, n)
            assert passing(s_c, s_r, tau) >= need, (s_c, s_r, k, tau)
            assert passing(s_c, s_r, np.nextafter(tau, np.inf)) < need, (s_c, s_r, k, tau)
            # the candidates: each record's min(s_c, s_r); the largest v that k records reach
            both = [min(c, r) for c, r in zip(s_c, s_r, strict=True)]
            best = max(v for v in both if sum(b >= v for b in both) >= need)
            assert tau < best and np.nextafter(tau, np.inf) == best


def test_quantile_threshold_by_hand_with_ties_and_a_large_budget() -> None:
    """min(s_c, s_r) = [0.2, 0.5, 0.5, 0.9]: k = 1 -> just below 0.9; k = 2 or 3 -> just
    below 0.5 (the tie lets three records pass); k >= n -> just below the smallest."""
    s_c = np.array([0.9, 0.5, 0.6, 0.95])
    s_r = np.array([0.2, 0.7, 0.5, 0.9])
    assert quantile_threshold(s_c, s_r, 1) == np.nextafter(0.9, -np.inf)
    for k in (2, 3):
        assert quantile_threshold(s_c, s_r, k) == np.nextafter(0.5, -np.inf)
    for k in (4, 5, 100):
        assert quantile_threshold(s_c, s_r, k) == np.nextafter(0.2, -np.inf)
    with pytest.raises(ValueError, match="no records"):
        quantile_threshold(np.zeros(0), np.zeros(0), 3)


def test_p1_without_a_threshold_selects_the_top_k_of_the_smaller_similarity() -> None:
    """threshold None: with distinct min(s_c, s_r) exactly the k records with the largest
    min; with ties at the cut, the tied ones are eligible and s_c + s_r decides (brute
    force); never more than k records, and k of them whenever there are k records."""
    rng = np.random.default_rng(11)
    for _ in range(200):
        n = int(rng.integers(1, 15))
        s_c, s_r = rng.normal(size=n), rng.normal(size=n)
        both = np.minimum(s_c, s_r)
        for k in range(1, n + 2):
            got = frft_select("P1", s_c, s_r, k, threshold=None)
            assert got.tolist() == ref_top_k(both, k), (s_c, s_r, k)
    for _ in range(300):
        n = int(rng.integers(1, 12))
        s_c = rng.integers(0, 4, size=n) / 3.0
        s_r = rng.integers(0, 4, size=n) / 3.0
        both = [min(c, r) for c, r in zip(s_c, s_r, strict=True)]
        for k in range(1, n + 2):
            cut = max(v for v in both if sum(b >= v for b in both) >= min(k, n))
            eligible = [b >= cut for b in both]
            want = ref_top_k([c + r for c, r in zip(s_c, s_r, strict=True)], k, eligible)
            got = frft_select("P1", s_c, s_r, k, threshold=None)
            assert got.tolist() == want, (s_c, s_r, k)
            assert got.size == min(k, n)


# --------------------------------------------------------------------------- similarities


def test_similarities_match_a_per_record_cosine_loop() -> None:
    """s_c, s_r = cosine of each record's responses to its own prompt's generation."""
    rng = np.random.default_rng(2)

    def unit(n):
        x = rng.normal(size=(n, 8)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    gen, chosen, rejected = unit(4), unit(11), unit(11)
    prompt_index = np.array([0, 0, 3, 1, 3, 3, 2, 0, 1, 2, 3])
    s_c, s_r = similarities(gen, prompt_index, chosen, rejected)
    assert s_c.dtype == np.float64 and s_r.shape == (11,)
    for i, p in enumerate(prompt_index):
        g = gen[p].astype(np.float64)
        for resp, s in ((chosen[i], s_c[i]), (rejected[i], s_r[i])):
            r = resp.astype(np.float64)
            assert s == pytest.approx(g @ r / np.linalg.norm(g) / np.linalg.norm(r), abs=1e-6)


# --------------------------------------------------------------------------- boundary checks


def unit_rows(rng: np.random.Generator, n: int, d: int = 8) -> np.ndarray:
    x = rng.normal(size=(n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_frft_select_takes_lists_and_names_bad_similarities() -> None:
    """A list was an AttributeError ('list' has no 'shape'); NaN passed through; an empty
    set of records returned [] silently."""
    assert frft_select("P4", [0.1, 0.5, 0.3], [0.2, 0.1, 0.4], 2).tolist() == [1, 2]
    with pytest.raises(ValueError, match="s_c contains NaN"):
        frft_select("P4", [0.1, np.nan], [0.2, 0.1], 1)
    with pytest.raises(ValueError, match="s_r contains NaN"):
        frft_select("P1", [0.1, 0.2], [np.nan, 0.1], 1, threshold=None)
    with pytest.raises(ValueError, match="s_c is empty"):
        frft_select("P3", [], [], 1)
    with pytest.raises(ValueError, match=r"s_c must be a 1-D \(n,\) array"):
        frft_select("P3", np.zeros((2, 2)), np.zeros((2, 2)), 1)
    with pytest.raises(ValueError, match="k must be an integer"):
        frft_select("P4", [0.1, 0.2], [0.1, 0.2], 1.5)
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        frft_select("P1", [0.1, 0.2], [0.1, 0.2], 1, threshold=float("nan"))


def test_p1_warns_when_its_threshold_selects_nothing() -> None:
    """The paper's 0.8 on another encoder's scale: the empty selection is said, with the fix."""
    s_c, s_r = np.array([0.1, 0.3, 0.2]), np.array([0.2, 0.25, 0.05])
    with pytest.warns(UserWarning, match=r"selected no record.*threshold=None.*quantile_threshold"):
        assert frft_select("P1", s_c, s_r, 2).tolist() == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert frft_select("P1", s_c, s_r, 2, threshold=None).tolist() == [0, 1]


def test_quantile_threshold_checks_its_budget_and_shapes() -> None:
    """k = 0 indexed the sorted values at -1 (the smallest) and returned a threshold."""
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        quantile_threshold(np.ones(3), np.ones(3), 0)
    with pytest.raises(ValueError, match="one entry per record"):
        quantile_threshold(np.ones(3), np.ones(2), 1)


def test_similarities_reject_embeddings_that_are_not_unit_norm() -> None:
    """Cosines of 3.05 from unnormalized rows were returned silently; float32 unit rows
    (norm off by ~1e-7) and all-zero rows (what the embedder leaves unnormalized) pass."""
    rng = np.random.default_rng(0)
    gen, ch, rj = unit_rows(rng, 3), unit_rows(rng, 5), unit_rows(rng, 5)
    idx = np.array([0, 1, 2, 0, 1])
    with pytest.raises(ValueError, match=r"chosen_emb must have unit-norm rows.*row 2 has norm 2"):
        similarities(gen, idx, ch * np.array([[1], [1], [2], [1], [1]]), rj)
    with pytest.raises(ValueError, match="generation_emb must have unit-norm rows"):
        similarities(gen * (1 + 1e-5), idx, ch, rj)
    similarities(gen * (1 + 1e-7), idx, ch, rj)  # within the 1e-6 tolerance
    similarities(gen.astype(np.float32), idx, ch.astype(np.float32), rj.astype(np.float32))
    rj[3] = 0.0
    assert similarities(gen, idx, ch, rj)[1][3] == 0.0


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"prompt_index": [0, 1, 3, 0, 1]}, r"prompt_index must be indices in \[0, 3\)"),
        ({"prompt_index": [0, 1, -1, 0, 1]}, r"prompt_index must be indices in \[0, 3\)"),
        ({"prompt_index": [0, 1, 2]}, "prompt_index has 3 entries but chosen_emb has 5"),
        ({"prompt_index": [0.0, 1, 2, 0, 1]}, "prompt_index must be integer indices"),
        ({"generation_emb": "d6"}, "generation_emb has dimension d=6 but chosen_emb has d=8"),
        ({"rejected_emb": "short"}, r"rejected_emb must have the shape of chosen_emb \(5, 8\)"),
        ({"rejected_emb": "nan"}, "rejected_emb contains NaN or inf"),
        ({"chosen_emb": "1d"}, r"chosen_emb must be a 2-D \(n, d\) array"),
    ],
)
def test_similarities_name_the_bad_argument(change, match) -> None:
    """Out-of-range indices were a bare IndexError (negative ones wrapped around silently),
    a dimension mismatch a numpy broadcast error, NaN passed through."""
    rng = np.random.default_rng(1)
    args = {
        "generation_emb": unit_rows(rng, 3),
        "prompt_index": [0, 1, 2, 0, 1],
        "chosen_emb": unit_rows(rng, 5),
        "rejected_emb": unit_rows(rng, 5),
    }
    special = {
        "d6": unit_rows(rng, 3, d=6),
        "short": unit_rows(rng, 4),
        "nan": np.where(np.arange(8) == 2, np.nan, unit_rows(rng, 5)),
        "1d": unit_rows(rng, 1)[0],
    }
    for key, value in change.items():
        args[key] = special.get(value, value) if isinstance(value, str) else value
    with pytest.raises(ValueError, match=match):
        similarities(**args)


def test_similarities_take_lists() -> None:
    """A list of embeddings was a TypeError (list indices)."""
    g = [[1.0, 0.0], [0.0, 1.0]]
    s_c, s_r = similarities(g, [1, 0], [[0.0, 1.0], [0.6, 0.8]], [[1.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(s_c, [1.0, 0.6])
    np.testing.assert_allclose(s_r, [0.0, 0.0])


# --------------------------------------------------------------------------- properties

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None)
SIMS = st.integers(1, 30).flatmap(
    lambda n: st.tuples(
        *(arrays(np.float64, n, elements=st.floats(-1, 1, width=16)) for _ in range(2))
    )
)


@PROPERTY
@given(sims=SIMS, k=st.integers(1, 40), rule=st.sampled_from(["P1", "P2", "P3", "P4"]))
def test_selections_are_subsets_of_the_records_within_budget(sims, k, rule) -> None:
    """Every rule returns sorted distinct record indices, at most k of them; P1 (quantile
    threshold), P3 and P4 exactly min(k, n), P2 at least the ceil(k / 2) it takes by s_c."""
    s_c, s_r = sims
    n = s_c.size
    got = frft_select(rule, s_c, s_r, k, threshold=None)
    assert got.dtype.kind == "i" and np.all(np.diff(got) > 0)
    assert got.size == 0 or (got.min() >= 0 and got.max() < n)
    assert got.size <= k
    if rule == "P2":
        assert min(math.ceil(k / 2), n) <= got.size <= min(k, n)
    else:
        assert got.size == min(k, n)


@PROPERTY
@given(sims=SIMS, k=st.integers(1, 40), tau=st.floats(-1, 1))
def test_p1_with_a_threshold_keeps_only_records_above_it_on_both(sims, k, tau) -> None:
    s_c, s_r = sims
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # empty selections warn (tested above)
        got = frft_select("P1", s_c, s_r, k, threshold=tau)
    passing = np.flatnonzero((s_c > tau) & (s_r > tau))
    assert set(got.tolist()) <= set(passing.tolist())
    assert got.size == min(k, passing.size)
