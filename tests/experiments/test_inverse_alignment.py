"""Inverse alignment (FRFT): offline records, similarity selection, the refit and its PPO run.

Every check is against something computed independently here: brute-force references of
the selection rules, per-record loops, hand values, binomial tolerances, planted records
whose similarity is exactly 1, and an uninterrupted run for the resume.
"""

from __future__ import annotations

import copy
import math
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import tiny_gpt2
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, GPT2Config
from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.core.frft import select, similarities, top_k
from pluralign.data.preferences import PreferenceRecords
from pluralign.data.text import review_prompts
from pluralign.experiments.inverse_alignment import assign_labelers, build_records, human_pairs, label_pairs_by, labeler_scores, perturb_text
from pluralign.inverse import pair_accuracy, records_from_dataset
from pluralign.training.frft import FilteredRefit, OnPolicyPairs, RefitSettings, embed_records, run_frft
from pluralign.training.ppo import PPOSettings
from pluralign.training.reward_models import score_texts
from pluralign.training.ppo import _save_chunk
from pluralign.training.reward_models import tokenize_pairs

# --------------------------------------------------------------------------- helpers


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


class BagOfWords:
    """A deterministic sentence "encoder": hashed word counts, unit-normalized."""

    def __init__(self, dim: int = 64) -> None:
        self.dim = dim
        self.calls = 0

    def encode(self, texts, batch_size, convert_to_numpy, normalize_embeddings, show_progress_bar):
        assert convert_to_numpy and normalize_embeddings and not show_progress_bar
        self.calls += 1
        out = np.zeros((len(texts), self.dim))
        for i, t in enumerate(texts):
            for w in t.split():
                out[i, zlib.crc32(w.encode()) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def tiny_reward_model(tok, seed: int = 0):
    """A 1-layer GPT-2 with a scalar head (pad id set, so batches score their last token)."""
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=32,
        n_embd=16,
        n_layer=1,
        n_head=2,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    return AutoModelForSequenceClassification.from_config(cfg).eval()


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def manual_accuracy(model, tok, pairs: OnPolicyPairs, max_length: int) -> float:
    """Share of non-tied ground-truth pairs the model orders the same way, by a loop."""
    ra = score_texts(model, tok, pairs.texts_a, max_length)
    rb = score_texts(model, tok, pairs.texts_b, max_length)
    hits = [
        (ra[i] > rb[i]) == (pairs.truth_a[i] > pairs.truth_b[i]) and ra[i] != rb[i]
        for i in range(len(ra))
        if pairs.truth_a[i] != pairs.truth_b[i]
    ]
    return sum(hits) / len(hits)


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=300)


# --------------------------------------------------------------------------- top_k / select


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
            got = select(rule, s_c, s_r, k, threshold=0.5)
            assert got.tolist() == ref_select(rule, s_c, s_r, k, 0.5), (s_c, s_r, k)


def test_p1_threshold_is_strict_on_both_similarities() -> None:
    """P1 keeps only records with s_c > tau and s_r > tau (equality excluded)."""
    s_c = np.array([0.9, 0.8, 0.95, 0.99, 0.85])
    s_r = np.array([0.9, 0.99, 0.7, 0.81, 0.86])
    assert select("P1", s_c, s_r, 10, threshold=0.8).tolist() == [0, 3, 4]
    assert select("P1", s_c, s_r, 2, threshold=0.8).tolist() == [0, 3]  # 1.8 and 1.8 > 1.71


def test_p2_respects_the_budget_for_odd_k() -> None:
    """P2's union has at most k records: ceil(k/2) by s_c and floor(k/2) by s_r."""
    s_c = np.array([3.0, 2.0, 1.0, 0.0])
    s_r = np.array([0.0, 1.0, 2.0, 3.0])
    assert select("P2", s_c, s_r, 3).size <= 3


def test_random_rule_is_a_reproducible_sample_without_repeats() -> None:
    """random: min(k, n) distinct sorted indices, fixed by the rng seed, varying with it."""
    s = np.zeros(50)
    a = select("random", s, s, 10, rng=np.random.default_rng(3))
    assert a.size == 10 and np.unique(a).size == 10 and np.all(np.diff(a) > 0)
    assert a.min() >= 0 and a.max() < 50
    assert np.array_equal(a, select("random", s, s, 10, rng=np.random.default_rng(3)))
    assert not np.array_equal(a, select("random", s, s, 10, rng=np.random.default_rng(4)))
    assert select("random", s[:4], s[:4], 10, rng=np.random.default_rng(0)).tolist() == [0, 1, 2, 3]
    # uniform: every index is drawn about k/n of the time
    counts = np.zeros(50)
    rng = np.random.default_rng(5)
    for _ in range(2000):
        counts[select("random", s, s, 10, rng=rng)] += 1
    assert all(binomial_ok(int(c), 2000, 0.2, z=5) for c in counts)


def test_select_rejects_bad_arguments() -> None:
    """Unknown rule, k < 1, random without rng, s_c / s_r of different shapes."""
    s = np.zeros(4)
    with pytest.raises(ValueError, match="unknown selection rule"):
        select("P5", s, s, 2)
    with pytest.raises(ValueError, match="k must be >= 1"):
        select("P4", s, s, 0)
    with pytest.raises(ValueError, match="needs an rng"):
        select("random", s, s, 2)
    with pytest.raises(ValueError, match="one entry per record"):
        select("P3", s, np.zeros(5), 2)
    with pytest.raises(ValueError, match="unknown selection rule"):
        RefitSettings(rule="p4", k=1, every=1)
    with pytest.raises(ValueError, match=">= 1"):
        RefitSettings(rule="P4", k=0, every=1)


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


# --------------------------------------------------------------------------- labelling


def test_label_pairs_by_follows_each_records_labeler() -> None:
    """Noise 0: record i's label is the order of column labeler[i] (the other disagrees)."""
    a = pd.DataFrame({"x": [1.0, 0.0, 1.0, 0.0, 5.0], "y": [0.0, 1.0, 0.0, 1.0, -5.0]})
    b = pd.DataFrame({"x": [0.0, 1.0, 0.0, 1.0, 4.0], "y": [1.0, 0.0, 1.0, 0.0, -4.0]})
    labeler = ["x", "x", "y", "y", "y"]
    got = label_pairs_by(a, b, labeler, 0.0, np.random.default_rng(0))
    assert got.dtype == bool and got.tolist() == [True, False, False, True, False]


def test_label_pairs_by_breaks_ties_and_flips_at_the_noise_rate() -> None:
    """Ties are fair coin flips; noise 0.2 flips about 20% of clear labels."""
    n = 20_000
    tie = pd.DataFrame({"x": np.zeros(n)})
    wins = label_pairs_by(tie, tie, ["x"] * n, 0.0, np.random.default_rng(1))
    assert binomial_ok(int(wins.sum()), n, 0.5)
    a = pd.DataFrame({"x": np.arange(n) % 2, "y": np.zeros(n)})
    b = pd.DataFrame({"x": 1 - np.arange(n) % 2, "y": np.zeros(n)})
    clean = np.arange(n) % 2 == 1
    noisy = label_pairs_by(a, b, ["x"] * n, 0.2, np.random.default_rng(2))
    flips = noisy != clean
    assert binomial_ok(int(flips.sum()), n, 0.2)
    assert binomial_ok(int(flips[clean].sum()), int(clean.sum()), 0.2)  # both directions
    assert binomial_ok(int(flips[~clean].sum()), int((~clean).sum()), 0.2)


def test_label_pairs_by_rejects_bad_arguments() -> None:
    """Noise outside [0, 0.5) and labelers without a score column."""
    f = pd.DataFrame({"x": [1.0, 2.0]})
    for noise in (-0.1, 0.5, 1.0):
        with pytest.raises(ValueError, match="label noise"):
            label_pairs_by(f, f, ["x", "x"], noise, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"no scores for labelers \[.*'z'.*\]; have \['x'\]"):
        label_pairs_by(f, f, ["x", "z"], 0.0, np.random.default_rng(0))


def test_assign_labelers_draws_each_source_from_its_mix() -> None:
    """Shares per source match the normalized mix; a one-labeler source is constant."""
    n = 6000
    sources = np.array(["a", "b"] * n)
    mix = {"a": {"x": 1.0, "y": 3.0}, "b": {"z": 2.0}, "unused": {"w": 1.0}}
    got = assign_labelers(sources, mix, np.random.default_rng(0))
    assert got.dtype.kind == "U" and got.shape == (2 * n,)
    assert set(got[sources == "a"]) == {"x", "y"}
    assert binomial_ok(int((got[sources == "a"] == "y").sum()), n, 0.75)
    assert set(got[sources == "b"]) == {"z"}


def test_error_messages_name_labelers_and_sources_as_plain_strings() -> None:
    """Unknown labelers / sources appear in error messages as 'z', not np.str_('z')."""
    f = pd.DataFrame({"x": [1.0, 2.0]})
    with pytest.raises(ValueError) as labeler_err:
        label_pairs_by(f, f, ["x", "z"], 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError) as source_err:
        assign_labelers(["a", "c"], {"a": {"x": 1.0}}, np.random.default_rng(0))
    assert "np.str_" not in str(labeler_err.value) + str(source_err.value)


def test_assign_labelers_rejects_bad_mixes() -> None:
    """A source without a mix, negative weights, weights summing to zero."""
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"source .*'c'.* has no labeler mix \(known: \['a'\]\)"):
        assign_labelers(["a", "c"], {"a": {"x": 1.0}}, rng)
    with pytest.raises(ValueError, match="non-negative weights"):
        assign_labelers(["a"], {"a": {"x": 1.0, "y": -0.5}}, rng)
    with pytest.raises(ValueError, match="non-negative weights"):
        assign_labelers(["a"], {"a": {"x": 0.0}}, rng)


# --------------------------------------------------------------------------- build_records


def toy_score(prompts: list[str], responses: list[str]) -> pd.DataFrame:
    """Scores from letter counts; checks that each response comes with its own prompt."""
    for p, r in zip(prompts, responses, strict=True):
        assert r.startswith(f" r{p[1:-1]}"), (p, r)  # prompt "P3:" <-> response " r3 ..."
    return pd.DataFrame(
        {
            "long": [float(r.count("x")) for r in responses],
            "short": [-float(r.count("x")) for r in responses],
            "truth": [float(r.count("z")) for r in responses],
        }
    )


def toy_pairs(n: int, seed: int):
    """Two sources of (a, b) responses per prompt, x-counts and z-counts never tied."""
    rng = np.random.default_rng(seed)
    out = {}
    for src in ("s1", "s2"):
        a, b = [], []
        for i in range(n):
            la, lb = rng.choice(8, 2, replace=False)
            za, zb = rng.choice(5, 2, replace=False)
            a.append(f" r{i} " + "x" * la + "z" * za)
            b.append(f" r{i} " + "x" * lb + "z" * zb)
        out[src] = (a, b)
    return out


def test_build_records_labels_by_labeler_and_recomputes_truth() -> None:
    """prompts x sources records; full texts; labels follow the labeler at noise 0."""
    n = 30
    prompts = [f"P{i}:" for i in range(n)]
    pairs = toy_pairs(n, 0)
    mix = {"s1": {"long": 1.0}, "s2": {"long": 1.0, "short": 1.0}}
    rec = build_records(prompts, pairs, toy_score, mix, noise=0.0, truth="truth", seed=4)
    assert len(rec) == 2 * n and rec.prompts == prompts
    assert rec.prompt_index.tolist() == list(range(n)) * 2
    assert rec.source.tolist() == ["s1"] * n + ["s2"] * n
    assert set(rec.labeler[:n]) == {"long"} and set(rec.labeler[n:]) == {"long", "short"}
    chosen_full, rejected_full = rec.full_texts()
    for i in range(2 * n):
        src, p = rec.source[i], rec.prompt_index[i]
        assert {rec.chosen[i], rec.rejected[i]} == {pairs[src][0][p], pairs[src][1][p]}
        assert chosen_full[i] == prompts[p] + rec.chosen[i]
        assert rejected_full[i] == prompts[p] + rec.rejected[i]
        lc, lr = rec.chosen[i].count("x"), rec.rejected[i].count("x")
        assert lc > lr if rec.labeler[i] == "long" else lc < lr
        zc, zr = rec.chosen[i].count("z"), rec.rejected[i].count("z")
        assert rec.agrees_with_truth[i] == (zc > zr)
    assert 0 < rec.agrees_with_truth.sum() < 2 * n  # both outcomes occur
    rows = [3, 40]
    assert rec.full_texts(rows) == (
        [chosen_full[i] for i in rows],
        [rejected_full[i] for i in rows],
    )
    again = build_records(prompts, pairs, toy_score, mix, noise=0.0, truth="truth", seed=4)
    assert again.labeler.tolist() == rec.labeler.tolist() and again.chosen == rec.chosen


def test_build_records_rejects_bad_inputs() -> None:
    """Responses not one per prompt; a ground truth that is not a scored column."""
    prompts = ["P0:", "P1:"]
    pairs = toy_pairs(2, 0)
    mix = {"s1": {"long": 1.0}, "s2": {"long": 1.0}}
    short = {**pairs, "s2": (pairs["s2"][0], pairs["s2"][1][:1])}
    with pytest.raises(ValueError, match="source 's2': 2/1 responses for 2 prompts"):
        build_records(prompts, short, toy_score, mix, 0.0, "truth", 0)
    with pytest.raises(ValueError, match="ground truth 'stars'"):
        build_records(prompts, pairs, toy_score, mix, 0.0, "stars", 0)


# --------------------------------------------------------------------------- text sources


def test_perturb_text_keeps_or_drops_words() -> None:
    """drop=0 keeps the multiset of words; output is a sub-multiset; seeded; empty input."""
    text = " ".join(f"w{i}" for i in range(40))
    out = perturb_text(text, np.random.default_rng(0), drop=0.0)
    assert sorted(out.split()) == sorted(text.split()) and out.startswith(" ")
    assert out != " " + text  # some adjacent pairs were swapped
    a = perturb_text(text, np.random.default_rng(7))
    assert a == perturb_text(text, np.random.default_rng(7))
    assert a != perturb_text(text, np.random.default_rng(8))
    assert set(a.split()) <= set(text.split()) and len(set(a.split())) == len(a.split())
    long = " ".join(f"w{i}" for i in range(5000))
    kept = len(perturb_text(long, np.random.default_rng(1), drop=0.3).split())
    assert binomial_ok(kept, 5000, 0.7)
    assert perturb_text("", np.random.default_rng(0)) == ""
    assert perturb_text("   ", np.random.default_rng(0), drop=0.0) == ""
    assert perturb_text("a b", np.random.default_rng(0), drop=1.0) == ""


class IdTokenizer:
    """decode() writes token ids out, so a decoded text names the tokens it came from."""

    def decode(self, ids):
        return " ".join(str(t) for t in ids)


def test_human_pairs_never_pair_a_prompt_with_its_own_review() -> None:
    """own[i] is a prefix of review i, other[i] a prefix of another review; lengths bounded."""
    rng = np.random.default_rng(0)
    n, min_tokens = 12, 4
    lengths = rng.integers(1, 10, size=n)
    conts = [[1000 * i + t for t in range(lengths[i])] for i in range(n)]
    partners = set()
    for seed in range(20):
        own, other = human_pairs(IdTokenizer(), conts, seed, min_tokens)
        assert len(own) == len(other) == n
        for i in range(n):
            ids = [int(t) for t in own[i].split()]
            assert ids == conts[i][: len(ids)]
            assert min(min_tokens, lengths[i]) <= len(ids) <= lengths[i]
            ids = [int(t) for t in other[i].split()]
            j = ids[0] // 1000
            assert j != i and ids == conts[j][: len(ids)]
            assert min(min_tokens, lengths[j]) <= len(ids) <= lengths[j]
            partners.add((i, j))
    assert len(partners) > 3 * n  # the other review is drawn, not a fixed neighbour
    assert human_pairs(IdTokenizer(), conts, 3) == human_pairs(IdTokenizer(), conts, 3)
    with pytest.raises(ValueError, match="at least 2 reviews"):
        human_pairs(IdTokenizer(), conts[:1], 0)


def test_review_prompts_cut_each_review_and_skip_short_ones(tok) -> None:
    """EOS + the first prompt_tokens tokens, then the next max_new_tokens; short reviews
    (fewer than prompt_tokens + 4 tokens) are dropped; checked review by review."""
    texts = [
        "the movie was a long and winding story about two friends and a dog",
        "too short",
        "i think this film is great fun",
        "one two three four five six seven",
    ]
    prompts, rest = review_prompts(tok, texts, prompt_tokens=3, max_new_tokens=5)
    kept = [t for t in texts if len(tok(t)["input_ids"]) >= 7]
    assert "too short" not in kept and len(kept) == 3 == len(prompts) == len(rest)
    for text, prompt, cont in zip(kept, prompts, rest, strict=True):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert prompt == [tok.eos_token_id, *ids[:3]]
        assert cont == ids[3:8]


def test_labeler_scores_columns_by_hand() -> None:
    """sentiment sees prompt + response; length = -words; readability = -clipped grade,
    higher for plain words than for long polysyllabic ones; empty response -> 0."""
    seen = []

    def sentiment(texts):
        seen.extend(texts)
        return np.arange(len(texts), dtype=float) / 10

    responses = [
        " the cat sat on the mat. it was fun.",
        " incomprehensible extraordinarily bureaucratic internationalization considerations",
        "",
    ]
    out = labeler_scores(["P1", "P2", "P3"], responses, sentiment)
    assert seen == ["P1" + responses[0], "P2" + responses[1], "P3"]
    assert list(out.columns) == ["sentiment", "length", "readability"]
    assert out["sentiment"].tolist() == [0.0, 0.1, 0.2]
    assert out["length"].tolist() == [-9.0, -5.0, 0.0]
    assert out["readability"][0] > out["readability"][1]
    assert out["readability"][2] == 0.0
    assert out["readability"].between(-25.0, 5.0).all()


def test_records_from_dataset_dedups_prompts_and_names_bad_rows() -> None:
    """Prompts deduplicated in order of appearance; malformed rows named with their field."""
    data = {
        "prompt": ["A", "B", "A", "C", "B"],
        "chosen": ["c0", "c1", "c2", "c3", "c4"],
        "rejected": ["r0", "r1", "r2", "r3", "r4"],
        "extra": [1, 2, 3, 4, 5],
    }
    rec = records_from_dataset(Dataset.from_dict(data), "toy")
    assert rec.prompts == ["A", "B", "C"]
    assert rec.prompt_index.tolist() == [0, 1, 0, 2, 1]
    assert rec.chosen == data["chosen"] and rec.rejected == data["rejected"]
    assert set(rec.source) == {"toy"} and set(rec.labeler) == {"dataset"}
    assert [rec.prompts[p] for p in rec.prompt_index] == data["prompt"]

    def bad(field: str, row: int, value):
        d = {k: list(v) for k, v in data.items()}
        d[field][row] = value
        return Dataset.from_dict(d)

    with pytest.raises(ValueError, match=r"toy: row 2: field 'chosen' is empty"):
        records_from_dataset(bad("chosen", 2, "  "), "toy")
    with pytest.raises(ValueError, match=r"row 4: field 'prompt'"):
        records_from_dataset(bad("prompt", 4, None), "toy")
    with pytest.raises(ValueError, match=r"row 1: 'chosen' equals 'rejected'"):
        records_from_dataset(bad("rejected", 1, "c1"), "toy")
    no_rejected = {k: v for k, v in data.items() if k != "rejected"}
    with pytest.raises(ValueError, match=r"missing columns \['rejected'\]"):
        records_from_dataset(Dataset.from_dict(no_rejected), "toy")


def test_pair_accuracy_by_hand() -> None:
    """1 of 3 non-tied pairs ordered right, then 3 of 3; ground-truth ties are skipped;
    all ties -> nan."""
    table = {"a0": 1.0, "b0": 0.0, "a1": 2.0, "b1": 1.0, "a2": 0.0, "b2": 9.0, "a3": 0.0}
    table |= {"b3": 5.0}

    def score(texts):
        return np.array([table[t] for t in texts])

    pairs = OnPolicyPairs(
        ["a0", "a1", "a2", "a3"],
        ["b0", "b1", "b2", "b3"],
        np.array([1.0, 0.0, 3.0, 2.0]),
        np.array([0.0, 1.0, 3.0, 1.0]),
    )
    # pair 0 right, pair 1 wrong, pair 2 a tie (skipped), pair 3 wrong -> 1/3
    assert pair_accuracy(score, pairs) == pytest.approx(1 / 3)
    pairs.truth_b = np.array([0.0, -1.0, 3.0, 5.0])  # pairs 1 and 3 now right
    assert pair_accuracy(score, pairs) == pytest.approx(1.0)
    ties = OnPolicyPairs(["a0"], ["b0"], np.array([1.0]), np.array([1.0]))
    assert math.isnan(pair_accuracy(score, ties))


# --------------------------------------------------------------------------- the refit

GEN_WORDS = [
    ("sunny", "park", "walk"),
    ("cold", "winter", "night"),
    ("loud", "concert", "crowd"),
    ("quiet", "library", "book"),
    ("fast", "red", "car"),
    ("green", "garden", "tea"),
]
FILLER = ["movie", "plot", "actor", "scene", "music", "story", "ending", "camera"]


def planted_records(tok):
    """6 prompts, 3 records each. Planted (rows 0, 3, 6, 9, 15): chosen == the generation
    for the prompt (s_c = 1); the other chosen responses share at most one word with it."""
    prompts = [f"Prompt {i} says" for i in range(len(GEN_WORDS))]
    gens = [" " + " ".join(w) for w in GEN_WORDS]
    planted = {0: "alpha", 3: "alpha", 6: "alpha", 9: "alpha", 15: "beta"}
    rng = np.random.default_rng(0)
    index, chosen, rejected, source = [], [], [], []
    for p in range(len(prompts)):
        for j in range(3):
            row = len(index)
            filler = list(rng.choice(FILLER, 3, replace=False))
            index.append(p)
            if row in planted:
                chosen.append(gens[p])
                source.append(planted[row])
            else:
                chosen.append(" " + " ".join([GEN_WORDS[p][j], *filler[:2]]))
                source.append("alpha" if row % 2 else "gamma")
            rejected.append(" " + " ".join(filler))
    rec = PreferenceRecords(
        prompts=prompts,
        prompt_index=np.array(index),
        chosen=chosen,
        rejected=rejected,
        source=np.array(source),
        labeler=np.array(["x" if r in (0, 3) else "y" for r in range(len(index))]),
        agrees_with_truth=np.array([r != 6 for r in range(len(index))]),
    )
    prompt_ids = [tok(p)["input_ids"] for p in prompts]
    return rec, prompt_ids, gens, sorted(planted)


def test_filtered_refit_selects_planted_records_and_trains_on_them(tok, monkeypatch) -> None:
    """P4 with k = #planted picks exactly the records whose chosen equals the generation;
    the stats describe them; the reward model is fine-tuned on those pairs only and its
    margin on them grows."""

    rec, prompt_ids, gens, planted = planted_records(tok)
    encoder = BagOfWords()
    embed_records(rec, encoder)
    rm = tiny_reward_model(tok)
    before = copy.deepcopy(rm.state_dict())
    calls, seen = [], {}

    def generate(policy, ids, seed):
        calls.append((policy, ids, seed))
        return list(gens)

    real_tokenize = tokenize_pairs

    def spy(tokenizer, chosen, rejected, max_length, weights=None):
        seen["pairs"] = (list(chosen), list(rejected))
        return real_tokenize(tokenizer, chosen, rejected, max_length, weights)

    monkeypatch.setattr(reward_trainer, "tokenize_pairs", spy)
    settings = RefitSettings(
        rule="P4", k=len(planted), every=2, learning_rate=3e-3, epochs=4.0, batch_size=5,
        max_length=16,
    )  # fmt: skip
    refit = FilteredRefit(rm, tok, rec, prompt_ids, encoder, settings, generate, seed=3)
    chosen_full, rejected_full = rec.full_texts(planted)

    def margin() -> float:
        return float(
            np.mean(score_texts(rm, tok, chosen_full, 16) - score_texts(rm, tok, rejected_full, 16))
        )

    m0 = margin()
    out = refit("the policy", 4)
    assert calls == [("the policy", prompt_ids, 3 * 7919 + 4)]
    assert seen["pairs"] == (chosen_full, rejected_full)  # exactly the planted pairs
    assert out["selected"] == len(planted) == 5
    assert out["share_source_alpha"] == pytest.approx(0.8)
    assert out["share_source_beta"] == pytest.approx(0.2)
    assert out["share_source_gamma"] == 0.0
    assert out["share_labeler_x"] == pytest.approx(0.4)
    assert out["label_truth_agreement"] == pytest.approx(0.8)
    assert out["sim_chosen"] == pytest.approx(1.0, abs=1e-5)
    assert out["sim_chosen_all"] < out["sim_chosen"]
    for step in ("sampling", "embedding", "selection", "fine_tuning"):
        assert out[f"time_{step}_s"] >= 0.0
    assert not same_weights(before, rm.state_dict())
    assert margin() > m0 + 0.05, (m0, margin())


def test_filtered_refit_with_an_empty_selection_does_not_train(tok) -> None:
    """P1 needs s_c and s_r above tau; no planted record has s_r > 0.5, so nothing is
    selected, the reward model is untouched and only the all-record stats are reported."""
    rec, prompt_ids, gens, _ = planted_records(tok)
    embed_records(rec, BagOfWords())
    rm = tiny_reward_model(tok)
    before = copy.deepcopy(rm.state_dict())
    settings = RefitSettings(rule="P1", k=5, every=1, threshold=0.5)
    refit = FilteredRefit(rm, tok, rec, prompt_ids, BagOfWords(), settings, lambda *a: gens, 0)
    out = refit(None, 1)
    assert out["selected"] == 0.0
    assert same_weights(before, rm.state_dict())
    assert "sim_chosen" not in out and "share_source_alpha" not in out
    s_c = [
        BagOfWords().encode([gens[p], c], 2, True, True, False).prod(0).sum()
        for p, c in zip(rec.prompt_index, rec.chosen, strict=True)
    ]
    assert out["sim_chosen_all"] == pytest.approx(np.mean(s_c), abs=1e-6)


def test_filtered_refit_needs_embedded_records_and_every_prompt(tok) -> None:
    """Records without cached embeddings, or prompt ids not one per prompt, are refused."""
    rec, prompt_ids, gens, _ = planted_records(tok)
    settings = RefitSettings(rule="P4", k=2, every=1)
    rm = tiny_reward_model(tok)
    args = (BagOfWords(), settings, lambda p, ids, s: gens)
    with pytest.raises(ValueError, match="embed the records first"):
        FilteredRefit(rm, tok, rec, prompt_ids, *args, seed=0)
    embed_records(rec, BagOfWords())
    with pytest.raises(ValueError, match="every record prompt"):
        FilteredRefit(rm, tok, rec, prompt_ids[:-1], *args, seed=0)


# --------------------------------------------------------------------------- run_frft

SETTINGS = PPOSettings(
    n_updates=4, batch_size=8, response_length=10, checkpoint_every=2, learning_rate=1e-3
)
RM_LENGTH = 16
REFERENCE = ["the movie was fine", "i think this is bad", "a great film indeed", "what a story"]
EVAL_PAIRS = OnPolicyPairs(
    texts_a=["the movie was great", "bad plot", "a fine film", "so so", "lovely music"],
    texts_b=["the movie was bad", "great plot", "a dull film", "very good", "no music"],
    truth_a=np.array([1.0, 0.0, 1.0, 0.0, 1.0]),
    truth_b=np.array([0.0, 1.0, 0.0, 1.0, 0.0]),
)


def ppo_prompts(tok) -> Dataset:
    texts = ["the movie was", "i think this", "a great film", "what a story"] * 4
    return Dataset.from_dict(
        {"input_ids": [[tok.eos_token_id, *tok(t)["input_ids"][:3]] for t in texts]}
    )


def evaluate(policy, updates: int) -> OnPolicyPairs:
    return EVAL_PAIRS


def frft(tok, workdir: Path, with_refit: bool = True, settings: PPOSettings = SETTINGS):
    """One run_frft on fresh tiny models; returns (log, reward model, refit)."""
    rm = tiny_reward_model(tok, seed=1)
    refit = None
    if with_refit:
        rec, prompt_ids, gens, _ = planted_records(tok)
        encoder = BagOfWords()
        embed_records(rec, encoder)
        refit_settings = RefitSettings(
            rule="P4", k=5, every=2, learning_rate=3e-3, epochs=2.0, batch_size=5,
            max_length=RM_LENGTH,
        )  # fmt: skip
        refit = FilteredRefit(
            rm, tok, rec, prompt_ids, encoder, refit_settings, lambda p, i, s: list(gens), 0
        )
    _, log = run_frft(
        tiny_gpt2(tok, seed=0),
        tok,
        ppo_prompts(tok),
        rm,
        RM_LENGTH,
        REFERENCE,
        settings,
        workdir,
        seed=0,
        refit=refit,
        evaluate=evaluate,
    )
    return log, rm, refit


@pytest.fixture(scope="module")
def full_run(tok, tmp_path_factory):
    """An uninterrupted 4-update run refit after update 2, and the initial reward model."""
    workdir = tmp_path_factory.mktemp("frft") / "full"
    log, rm, _ = frft(tok, workdir)
    return workdir, log, rm, tiny_reward_model(tok, seed=1)


def test_run_frft_logs_refits_and_evaluations_at_checkpoints(tok, full_run) -> None:
    """Refit columns at update 2 only, evaluation at 2 and 4 (recomputed by hand), the
    snapshot file, and the reward re-standardized on the reference texts after the refit."""
    workdir, log, rm, initial = full_run
    assert log["update"].tolist() == [1, 2, 3, 4]
    assert log["selected"].notna().tolist() == [False, True, False, False]
    assert log["selected"][1] == 5.0
    assert log["time_fine_tuning_s"].notna().tolist() == [False, True, False, False]
    assert log["share_source_beta"][1] == pytest.approx(0.2)
    for col in ("gt", "rm_accuracy"):
        assert log[col].notna().tolist() == [False, True, False, True]
    assert log["gt"][1] == log["gt"][3] == pytest.approx(0.6)
    assert log["rm_accuracy_after"].notna().tolist() == [False, True, False, False]
    assert (workdir / "reward-after-00002.pt").is_file()
    assert not (workdir / "reward-after-00004.pt").exists()  # no refit after the last chunk
    snap = torch.load(workdir / "reward-after-00002.pt", weights_only=True)
    assert same_weights(snap, rm.state_dict())  # the final reward is the refit one
    assert not same_weights(snap, initial.state_dict())
    assert log["rm_accuracy"][1] == pytest.approx(manual_accuracy(initial, tok, EVAL_PAIRS, 16))
    assert log["rm_accuracy_after"][1] == pytest.approx(manual_accuracy(rm, tok, EVAL_PAIRS, 16))
    assert log["rm_accuracy"][3] == pytest.approx(manual_accuracy(rm, tok, EVAL_PAIRS, 16))
    # norm = (raw - mean) / std over the reference texts, with the reward model in use
    for rows, model in (([0, 1], initial), ([2, 3], rm)):
        ref = score_texts(model, tok, REFERENCE, RM_LENGTH)
        for r in rows:
            expected = (log["raw_reward"][r] - ref.mean()) / ref.std()
            assert log["norm_reward"][r] == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_run_frft_without_refit_leaves_the_reward_model_alone(tok, tmp_path: Path) -> None:
    """refit=None is vanilla RLHF: same reward weights, no refit columns, no snapshots."""
    settings = PPOSettings(n_updates=1, batch_size=8, response_length=10, checkpoint_every=1)
    log, rm, _ = frft(tok, tmp_path / "r", with_refit=False, settings=settings)
    assert same_weights(rm.state_dict(), tiny_reward_model(tok, seed=1).state_dict())
    assert "selected" not in log.columns and "rm_accuracy_after" not in log.columns
    assert log["rm_accuracy"].tolist() == [manual_accuracy(rm, tok, EVAL_PAIRS, RM_LENGTH)]
    assert not list((tmp_path / "r").glob("reward-after-*"))


def test_frft_run_missing_its_last_chunk_resumes_to_the_same_result(
    tok, full_run, tmp_path: Path
) -> None:
    """A copy of the full run without its last chunk, rerun with fresh models, reloads the
    refit reward model (its snapshot after update 2) and ends where the full run did."""
    workdir, full_log, full_rm, initial = full_run
    shutil.copytree(workdir, tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "chunk-0001")
    log, rm, _ = frft(tok, tmp_path / "b")
    assert same_weights(rm.state_dict(), full_rm.state_dict())
    assert not same_weights(rm.state_dict(), initial.state_dict())
    cols = ["update", "objective/kl", "objective/scores", "raw_reward", "norm_reward"]
    cols += ["selected", "gt", "rm_accuracy", "rm_accuracy_after", "share_source_alpha"]
    assert log[cols].equals(full_log[cols])


@pytest.mark.slow
@pytest.mark.parametrize("die", ["after_first_checkpoint", "before_first_checkpoint"])
def test_killed_frft_run_resumes_to_the_uninterrupted_result(
    tok, full_run, tmp_path: Path, monkeypatch, die: str
) -> None:
    """Killed after the first chunk's checkpoint, a rerun with fresh models reloads the
    refit reward model and ends where the uninterrupted run did; killed after the refit
    snapshot but before the checkpoint, the rerun ignores that snapshot and redoes chunk 1."""
    _, full_log, full_rm, _ = full_run
    real_save = _save_chunk

    def killed(path, *args):
        if die == "after_first_checkpoint":
            real_save(path, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(ppo_runner, "_save_chunk", killed)
    with pytest.raises(KeyboardInterrupt):
        frft(tok, tmp_path / "b")
    assert (tmp_path / "b" / "reward-after-00002.pt").is_file()
    complete = (tmp_path / "b" / "chunk-0000" / "log.json").is_file()
    assert complete == (die == "after_first_checkpoint")
    monkeypatch.setattr(ppo_runner, "_save_chunk", real_save)

    log, rm, _ = frft(tok, tmp_path / "b")
    assert same_weights(rm.state_dict(), full_rm.state_dict())
    cols = ["update", "objective/kl", "objective/scores", "raw_reward", "norm_reward"]
    cols += ["selected", "gt", "rm_accuracy", "rm_accuracy_after", "share_source_alpha"]
    assert log[cols].equals(full_log[cols])


def test_run_frft_rejects_mismatched_refits(tok, tmp_path: Path) -> None:
    """The refit interval must be a multiple of checkpoint_every, and the refit must
    fine-tune the reward model PPO uses."""
    rec, prompt_ids, _, _ = planted_records(tok)
    embed_records(rec, BagOfWords())
    rm = tiny_reward_model(tok)

    def refit(model, every: int) -> FilteredRefit:
        settings = RefitSettings(rule="P4", k=2, every=every)
        return FilteredRefit(model, tok, rec, prompt_ids, BagOfWords(), settings, None, 0)

    args = (tok, ppo_prompts(tok), rm, RM_LENGTH, REFERENCE, SETTINGS, tmp_path / "x", 0)
    with pytest.raises(ValueError, match="multiple of checkpoint_every"):
        run_frft(tiny_gpt2(tok, seed=0), *args, refit=refit(rm, 3))
    with pytest.raises(ValueError, match="reward model PPO uses"):
        run_frft(tiny_gpt2(tok, seed=0), *args, refit=refit(tiny_reward_model(tok), 2))
    assert not (tmp_path / "x").exists()
