"""Notebook 06's offline preference set (pluralign.experiments.inverse_alignment): labelling
policies, record building, the text sources, and the stage's config.

Every check is against something computed independently here: per-record loops, hand
values and binomial tolerances. The FRFT selection rules are tested in
tests/core/test_frft.py, the refit and its PPO run in tests/training/test_frft.py, the
preference loader in tests/data/test_preferences.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pluralign.data.text import review_prompts
from pluralign.experiments.inverse_alignment import (
    Config,
    arms,
    assign_labelers,
    build_records,
    decode_prompts,
    human_pairs,
    label_pairs_by,
    labeler_scores,
    perturb_text,
    refit_settings,
)
from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.pipeline.config import load_stage_config
from pluralign.training.generation import GenerationSettings
from pluralign.training.ppo import PPOSettings
from pluralign.training.reward_models import RewardModelSettings


def binomial_ok(hits: int, n: int, p: float, z: float = 4.0) -> bool:
    """|hits - n p| within z binomial standard deviations."""
    return abs(hits - n * p) <= z * math.sqrt(n * p * (1 - p))


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=300)


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


def a_won(rec, pairs, i: int) -> bool:
    """Whether record i chose its source's response a (the responses of a pair differ)."""
    src, p = rec.source[i], rec.prompt_index[i]
    a, b = pairs[src][0][p], pairs[src][1][p]
    assert a != b and {rec.chosen[i], rec.rejected[i]} == {a, b}
    return rec.chosen[i] == a


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_build_records_a_ground_truth_tie_never_agrees_with_the_truth(noise: float) -> None:
    """A record whose two responses tie on the ground truth gets agrees_with_truth False
    whichever way its labeler ordered it: by another scorer (``long``, a before b on even
    prompts, b before a on odd ones) or by the tied ground truth itself (a coin flip).
    Untied records labelled by the ground truth agree, up to the label noise."""
    n = 40
    prompts = [f"P{i}:" for i in range(n)]
    rng = np.random.default_rng(7)
    pairs: dict[str, tuple[list[str], list[str]]] = {}
    for src in ("tie_long", "tie_truth", "clear"):
        a, b = [], []
        for i in range(n):
            la, lb = (3, 1) if i % 2 == 0 else (1, 3)
            za, zb = (i % 4, i % 4) if src != "clear" else rng.choice(5, 2, replace=False)
            a.append(f" r{i} " + "x" * la + "z" * za)
            b.append(f" r{i} " + "x" * lb + "z" * zb)
        pairs[src] = (a, b)
    mix = {"tie_long": {"long": 1.0}, "tie_truth": {"truth": 1.0}, "clear": {"truth": 1.0}}
    rec = build_records(prompts, pairs, toy_score, mix, noise=noise, truth="truth", seed=5)
    assert rec.agrees_with_truth.dtype == bool
    for src in ("tie_long", "tie_truth"):
        rows = np.flatnonzero(rec.source == src)
        for i in rows:
            zc, zr = rec.chosen[i].count("z"), rec.rejected[i].count("z")
            assert zc == zr  # the planted tie
        assert not rec.agrees_with_truth[rows].any(), src
        assert {a_won(rec, pairs, i) for i in rows} == {True, False}, src  # both orders
    if noise == 0.0:
        rows = np.flatnonzero(rec.source == "tie_long")
        assert [a_won(rec, pairs, i) for i in rows] == [i % 2 == 0 for i in range(n)]
    clear = np.flatnonzero(rec.source == "clear")
    agree = rec.agrees_with_truth[clear]
    if noise == 0.0:
        assert agree.all()
    else:
        assert binomial_ok(int((~agree).sum()), n, noise)
    for i in clear:
        zc, zr = rec.chosen[i].count("z"), rec.rejected[i].count("z")
        assert rec.agrees_with_truth[i] == (zc > zr)


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


def test_decode_prompts_drops_the_leading_eos() -> None:
    """Prompt texts as Rollouts.texts begin: the EOS every prompt starts with is left out."""
    assert decode_prompts(IdTokenizer(), [[50256, 1, 2], [50256, 7]]) == ["1 2", "7"]


# --------------------------------------------------------------------------- the stage's config


def test_config_reads_the_nested_sections_and_feeds_arms_and_refits(tiny_params: Path) -> None:
    """The tiny params load into the nested generation / reward_model / ppo settings (shared
    keys merged with the cpu profile's); the arms and each rule's refit settings follow."""
    cfg = load_stage_config("inverse_alignment", Config, tiny_params)
    assert cfg.profile == "cpu" and cfg.offline_data == "synthetic"
    assert cfg.generation == GenerationSettings(max_new_tokens=6, temperature=0.7)
    assert cfg.reward_model == RewardModelSettings(
        num_train_epochs=1.0, learning_rate=1e-4, per_device_train_batch_size=8, max_length=16
    )
    assert isinstance(cfg.ppo, PPOSettings)
    assert (cfg.ppo.n_updates, cfg.ppo.batch_size, cfg.ppo.checkpoint_every) == (2, 4, 1)
    assert (cfg.ppo.num_mini_batches, cfg.ppo.kl_coef) == (2, 0.05)  # shared keys
    names = [a.name for a in arms(cfg, with_ood=True)]
    assert names == ["vanilla", *(f"FRFT_{r}" for r in cfg.rules), "OOD"]
    assert [a.name for a in arms(cfg, with_ood=False)] == names[:-1]
    assert {a.start for a in arms(cfg, with_ood=True)} == {"vanilla", "ood"}
    assert [a.rule for a in arms(cfg, with_ood=False)] == [None, *cfg.rules]
    for rule in cfg.rules:
        r = refit_settings(cfg, rule)
        assert (r.rule, r.k, r.every, r.threshold) == (
            rule, cfg.select_k, cfg.refit_every, cfg.select_threshold
        )  # fmt: skip
        assert (r.learning_rate, r.epochs) == (cfg.refit_lr, cfg.refit_epochs)
        assert (r.batch_size, r.max_length) == (8, 16)  # the reward models' recipe
        assert r.every % cfg.ppo.checkpoint_every == 0  # what run_frft requires
