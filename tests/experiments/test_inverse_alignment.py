"""Notebook 06 (pluralign.experiments.inverse_alignment): the offline preference set
(labelling policies, record building, the text sources), the stage's config and arms, the
reward models' accuracies, the embedding choice, the subset study, and the paired
statistics and decision rule.

Every check is against something computed independently here: per-record loops, hand
values, binomial tolerances, planted sources and synthetic outcomes with known answers.
The FRFT selection rules are tested in tests/core/test_frft.py, the refit and its PPO run
in tests/training/test_frft.py, the embeddings and reward models in
tests/training/test_frft_embeddings.py and test_frft_rewards.py, the preference loader in
tests/data/test_preferences.py.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import TINY_PARAMS, tiny_gpt2

import pluralign.experiments.inverse_alignment as exp
from pluralign.core.frft import top_k
from pluralign.core.stats import bootstrap_ci
from pluralign.data.preferences import PreferenceRecords
from pluralign.data.text import review_prompts
from pluralign.experiments.inverse_alignment import (
    Config,
    arm_means,
    arms,
    assign_labelers,
    build_records,
    choose_embedding,
    claims,
    contrast,
    decode_prompts,
    embedding_candidates,
    human_pairs,
    label_pairs_by,
    labeler_scores,
    on_policy_pairs,
    pair_correct,
    per_seed,
    perturb_text,
    pooled_mix,
    reward_accuracies,
    reward_recipe,
    seed_bootstrap,
    speed,
    subset_experiment,
    subset_vs_whole,
)
from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.pipeline.config import load_stage_config
from pluralign.training.frft import OnPolicyPairs, RefitSettings, pair_accuracy
from pluralign.training.frft_embeddings import Embedding, logprob_profile
from pluralign.training.frft_rewards import FittedReward, NeuralRewards
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


@pytest.fixture
def cfg(tiny_params: Path) -> Config:
    return load_stage_config("inverse_alignment", Config, tiny_params)


def test_config_reads_the_nested_sections(cfg: Config) -> None:
    """The tiny params load into the nested generation / reward_model / ppo settings (shared
    keys merged with the cpu profile's), and the redesign's keys."""
    assert cfg.profile == "cpu" and cfg.offline_data == "synthetic"
    assert cfg.generation == GenerationSettings(max_new_tokens=6, temperature=0.7)
    assert cfg.reward_model == RewardModelSettings(
        num_train_epochs=1.0, learning_rate=1e-4, per_device_train_batch_size=8, max_length=16
    )
    assert isinstance(cfg.ppo, PPOSettings)
    assert (cfg.ppo.n_updates, cfg.ppo.batch_size, cfg.ppo.checkpoint_every) == (2, 4, 1)
    assert (cfg.ppo.num_mini_batches, cfg.ppo.kl_coef) == (2, 0.05)  # shared keys
    assert cfg.reward_models == "probe" and cfg.probe_encoder == "packaged"
    assert cfg.probe_ridge == 50.0 and cfg.select_threshold is None
    assert cfg.embeddings == ["logprob_profile", "char_tfidf"] and cfg.embedding_folds == 2
    assert (cfg.select_k, cfg.refit_every, cfg.pair_draws) == (6, 1, 1)
    assert cfg.noninferiority_margin == 0.03 and cfg.truth == "sentiment"
    assert cfg.refit_every % cfg.ppo.checkpoint_every == 0  # what run_frft requires


def test_config_refuses_bad_settings(cfg: Config) -> None:
    """Unknown reward models, embeddings (a bare 'sentence:' too) or rules; a refit interval
    off the checkpoints; a ground truth no source is labelled by; pair_draws < 1 and
    embedding_folds < 2. A hub sentence encoder and a fixed threshold are fine."""
    replace = dataclasses.replace
    ok = replace(cfg, embeddings=["sentence:some/encoder@abc", "hidden_mean"])
    assert replace(ok, select_threshold=0.8).select_threshold == 0.8
    cases = [
        ({"reward_models": "lora"}, "reward_models must be one of"),
        ({"embeddings": ["bag_of_words"]}, "embeddings must name candidates"),
        ({"embeddings": ["sentence:"]}, "embeddings must name candidates"),
        ({"embeddings": []}, "embeddings must name candidates"),
        ({"rules": ["P1", "P5"]}, r"unknown rules \['P5'\]"),
        ({"rules": ["oracle"]}, "unknown rules"),  # the oracle is an arm, not a rule
        (
            {"refit_every": 3, "ppo": dataclasses.replace(cfg.ppo, checkpoint_every=2)},
            "multiple of ppo.checkpoint_every",
        ),
        ({"truth": "stars"}, "no source is labelled by the ground truth 'stars'"),
        ({"pair_draws": 0}, "pair_draws must be >= 1"),
        ({"embedding_folds": 1}, "embedding_folds >= 2"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            replace(cfg, **change)


def test_arms_are_vanilla_the_oracle_the_rules_the_random_control_and_ood(cfg: Config) -> None:
    """vanilla, the oracle filter (only when records carry the truth's labeler), FRFT per
    rule, the random control last among the refits, then the OOD arms, each starting from
    its own reward; every refit rule is one RefitSettings accepts."""
    got = arms(cfg, ["ood_mix", "ood_oracle"])
    assert cfg.rules == ["P1", "P2", "P3", "P4", "random"]
    assert [a.name for a in got] == [
        "vanilla", "oracle_filter", "frft_P1", "frft_P2", "frft_P3", "frft_P4", "random",
        "ood_mix", "ood_oracle",
    ]  # fmt: skip
    assert [a.start for a in got] == ["vanilla"] * 7 + ["ood_mix", "ood_oracle"]
    assert [a.rule for a in got] == [None, "oracle", "P1", "P2", "P3", "P4", "random", None, None]
    for a in got:
        if a.rule is not None:
            RefitSettings(a.rule, cfg.select_k, cfg.refit_every, cfg.select_threshold)
    plain = arms(cfg, [], with_oracle=False)
    assert [a.name for a in plain] == ["vanilla", "frft_P1", "frft_P2", "frft_P3", "frft_P4",
                                       "random"]  # fmt: skip
    one = arms(dataclasses.replace(cfg, rules=["random", "P3"]), ["ood_mix"])
    assert [a.name for a in one] == ["vanilla", "oracle_filter", "frft_P3", "random", "ood_mix"]


def test_reward_recipe_neural_is_the_backbone_recipe(cfg: Config) -> None:
    """reward_models neural: fresh backbone reward models with the stage's settings."""
    neural = dataclasses.replace(cfg, reward_models="neural")
    recipe = reward_recipe(neural, lambda: None, "tok", None)
    assert isinstance(recipe, NeuralRewards)
    assert recipe.settings == cfg.reward_model and recipe.tokenizer == "tok"


# --------------------------------------------------------------------------- pooled mix, pairs


def test_pooled_mix_by_hand() -> None:
    """The repo's mix: each source holds a quarter of the records, so a labeler's share is
    the mean of its normalized share per source; unnormalized mixes are normalized."""
    mix = TINY_PARAMS["inverse_alignment"]["labeler_mix"]
    got = pooled_mix(mix)
    assert got == pytest.approx(
        {
            "sentiment": (0.7 + 0 + 0.4 + 0) / 4,
            "length": (0.3 + 0.5 + 0 + 0.5) / 4,
            "readability": (0 + 0.5 + 0.6 + 0.5) / 4,
        }
    )
    assert sum(got.values()) == pytest.approx(1.0)
    assert pooled_mix({"a": {"x": 2.0, "y": 2.0}, "b": {"x": 5.0}}) == pytest.approx(
        {"x": (0.5 + 1.0) / 2, "y": 0.25}
    )


def table_score(table: dict[str, float]):
    return lambda texts: np.array([table[t] for t in texts], dtype=np.float64)


def test_pair_correct_by_hand_with_ties() -> None:
    """1 when the reward orders the pair as the truth does, 0 when not (a reward tie
    included, as pair_accuracy counts it), NaN on a truth tie (whatever the reward says);
    its non-NaN mean is pair_accuracy's."""
    score = table_score(
        {"a0": 2.0, "b0": 1.0, "a1": 0.0, "b1": 3.0, "a2": 0.0, "b2": 1.0, "a3": 5.0,
         "b3": 1.0, "a4": 4.0, "b4": 4.0, "a5": 1.0, "b5": 1.0}
    )  # fmt: skip
    pairs = OnPolicyPairs(
        [f"a{i}" for i in range(6)],
        [f"b{i}" for i in range(6)],
        np.array([1.0, 1.0, 0.0, 0.3, 0.9, 0.2]),
        np.array([0.0, 0.0, 1.0, 0.3, 0.1, 0.2]),
    )
    got = pair_correct(score, pairs)
    np.testing.assert_array_equal(got, [1.0, 0.0, 1.0, np.nan, 0.0, np.nan])
    assert np.nanmean(got) == pytest.approx(pair_accuracy(score, pairs))


def test_reward_accuracies_per_reward_with_a_ci() -> None:
    """The mean of the non-tied pairs' correctness per reward, a CI around it."""
    rng = np.random.default_rng(0)
    n = 200
    texts_a, texts_b = [f"a{i}" for i in range(n)], [f"b{i}" for i in range(n)]
    truth_a, truth_b = rng.normal(size=n), rng.normal(size=n)
    truth_b[:10] = truth_a[:10]  # ties: dropped
    pairs = OnPolicyPairs(texts_a, texts_b, truth_a, truth_b)
    table = dict(zip(texts_a + texts_b, np.r_[truth_a, truth_b], strict=True))
    flip = dict(zip(texts_a + texts_b, np.r_[truth_a, truth_b] * np.r_[np.ones(n),
                    np.where(np.arange(n) % 4 == 0, -1.0, 1.0)], strict=True))  # fmt: skip
    rewards = {
        "truth": FittedReward(table_score(table), {}),
        "flipped": FittedReward(table_score(flip), {}),
    }
    out = reward_accuracies(rewards, pairs, n_boot=200, seed=0)
    assert list(out.index) == ["truth", "flipped"]
    assert out.loc["truth", "accuracy"] == 1.0
    by_hand = np.mean(
        [(flip[f"a{i}"] > flip[f"b{i}"]) == (truth_a[i] > truth_b[i]) for i in range(10, n)]
    )
    assert out.loc["flipped", "accuracy"] == pytest.approx(by_hand)
    assert out.loc["flipped", "lo"] <= by_hand <= out.loc["flipped", "hi"]
    assert out.loc["flipped", "hi"] < 1.0


def test_on_policy_pairs_draw_fixed_seeds_per_update_and_draw(cfg: Config, monkeypatch) -> None:
    """draw d at update u samples a with seed*1000 + 2(u + 100 d) + 101 and b with + 102
    (the same for every arm), at the stage's generation settings; texts concatenate over
    draws and the truth is the truth of each text."""
    calls = []

    class Roll:
        def __init__(self, seed: int, n: int) -> None:
            self.texts = [f"s{seed}/{i}" for i in range(n)]

    def fake(policy, tok, prompt_ids, max_new_tokens, temperature, seed):
        calls.append((policy, max_new_tokens, temperature, seed))
        return Roll(seed, len(prompt_ids))

    monkeypatch.setattr(exp, "sample_rollouts", fake)
    cfg = dataclasses.replace(cfg, seed=2)

    def truth_of(texts):
        return np.array([float(len(t)) for t in texts])

    got = on_policy_pairs(cfg, None, [[1], [2], [3]], truth_of, "pi", 3, draws=2)
    seeds = [2000 + 2 * 3 + 101, 2000 + 2 * 3 + 102, 2000 + 2 * 103 + 101, 2000 + 2 * 103 + 102]
    assert calls == [("pi", 6, 0.7, s) for s in seeds]
    assert got.texts_a == Roll(seeds[0], 3).texts + Roll(seeds[2], 3).texts
    assert got.texts_b == Roll(seeds[1], 3).texts + Roll(seeds[3], 3).texts
    np.testing.assert_array_equal(got.truth_a, truth_of(got.texts_a))
    np.testing.assert_array_equal(got.truth_b, truth_of(got.texts_b))


# --------------------------------------------------------------------------- embedding choice


def source_records(n_prompts: int = 24) -> PreferenceRecords:
    """n_prompts x 3 sources; each response starts with its source's word."""
    rng = np.random.default_rng(0)
    sources = ["alpha", "beta", "gamma"]
    words = ["film", "plot", "actor", "scene", "music", "story", "ending", "camera"]
    rows = [(p, s) for s in sources for p in range(n_prompts)]

    def text(s: str) -> str:
        return " " + " ".join([s, *rng.choice(words, 4)])

    return PreferenceRecords(
        prompts=[f"Prompt {p}:" for p in range(n_prompts)],
        prompt_index=np.array([p for p, _ in rows]),
        chosen=[text(s) for _, s in rows],
        rejected=[text(s) for _, s in rows],
        source=np.array([s for _, s in rows]),
        labeler=np.array(["sentiment" if s == "alpha" else "length" for _, s in rows]),
    )


def by_source(prompts, responses) -> np.ndarray:
    """Features that name the source (the response's first word) plus noise."""
    rng = np.random.default_rng(len(responses))
    names = {"alpha": 0, "beta": 1, "gamma": 2}
    X = rng.normal(size=(len(responses), 4))
    for i, r in enumerate(responses):
        X[i, names[r.split()[0]]] += 5.0
    return X


def by_hash(prompts, responses) -> np.ndarray:
    """Features unrelated to the source: a seeded draw per text."""
    return np.array(
        [np.random.default_rng(zlib.crc32((p + r).encode())).normal(size=4)
         for p, r in zip(prompts, responses, strict=True)]
    )  # fmt: skip


def test_choose_embedding_picks_the_candidate_that_identifies_sources() -> None:
    """The candidate whose features carry the source wins on held-out source accuracy (near
    1, the noise one near chance 1/3); the table has one row per candidate; ties go to the
    first listed."""
    rec = source_records()
    cands = {"noise": Embedding("noise", by_hash), "source": Embedding("source", by_source)}
    best, table = choose_embedding(cands, rec, folds=3)
    assert best == "source"
    assert table["embedding"].tolist() == ["noise", "source"]
    acc = table.set_index("embedding")["source_id_accuracy"]
    assert acc["source"] >= 0.95 and acc["noise"] < 0.6
    assert table["dims"].tolist() == [4, 4] and (table["seconds"] >= 0).all()
    twins = {"b": Embedding("b", by_source), "a": Embedding("a", by_source)}
    assert choose_embedding(twins, rec, folds=3)[0] == "b"


def test_embedding_candidates_wrap_the_policy_features(tok) -> None:
    """Each named candidate is an unfitted Embedding of prompt + response: logprob_profile's
    raw features are the policy's profile; char_tfidf is fitted on the records' texts;
    unknown names are refused."""
    rec = source_records(8)
    policy = tiny_gpt2(tok, seed=0)
    names = ["logprob_profile", "hidden_mean", "char_tfidf"]
    got = embedding_candidates(names, policy, tok, rec, seed=0)
    assert list(got) == names and all(e.mean.size == 0 for e in got.values())
    p = [rec.prompts[i] for i in rec.prompt_index[:3]]
    r = list(rec.chosen[:3])
    np.testing.assert_array_equal(
        got["logprob_profile"].raw(p, r), logprob_profile(policy, tok, p, r)
    )
    assert got["hidden_mean"].raw(p, r).shape == (3, policy.config.n_embd)
    tfidf = got["char_tfidf"].raw(p, r)
    assert tfidf.shape[0] == 3 and 1 <= tfidf.shape[1] <= 128
    with pytest.raises(ValueError, match="unknown embedding"):
        embedding_candidates(["bag"], policy, tok, rec, seed=0)


# --------------------------------------------------------------------------- subset study


class CountRecipe:
    """Rewards linear in (characters, spaces, 'a's): the weights depend on the records'
    number of distinct sources and on the seed; records every fit."""

    def __init__(self) -> None:
        self.fits: list[tuple[PreferenceRecords, int]] = []

    def fit(self, records: PreferenceRecords, seed: int) -> FittedReward:
        self.fits.append((records, seed))
        w = np.array([1.0, -float(len(set(records.source))), 0.5 * seed])
        return FittedReward(lambda texts: count_features(texts) @ w, {})

    def load(self, state):  # pragma: no cover - not used by the subset study
        raise NotImplementedError


def count_features(texts) -> np.ndarray:
    return np.array([[len(t), t.count(" "), t.count("a")] for t in texts], dtype=np.float64)


def unit_rows(rng, n: int, d: int = 6) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("with_truth", [True, False])
def test_subset_experiment_trains_each_rules_subset_and_scores_it(
    cfg: Config, with_truth: bool
) -> None:
    """Per rule and seed: the rule's k records given the reference's generations (P4 = top k
    by s_c, the cosine computed by a loop), a fresh fit on them alone, its per-pair
    correctness next to the whole set's; the oracle filter only when some record is
    labelled by the ground truth, and then only its records."""
    rec = source_records(8)
    if not with_truth:
        rec.labeler = np.full(len(rec), "length")
    rng = np.random.default_rng(0)
    rec.chosen_emb, rec.rejected_emb = unit_rows(rng, len(rec)), unit_rows(rng, len(rec))
    gen_emb = unit_rows(rng, len(rec.prompts))
    texts = [f"pair {'a' * i} {'b' * (i % 3)}" for i in range(12)]
    pairs = OnPolicyPairs(texts[:6], texts[6:], rng.normal(size=6), rng.normal(size=6))
    recipe = CountRecipe()
    whole = recipe.fit(rec, 0)
    cfg = dataclasses.replace(cfg, rules=["P4", "random"], seeds=[0, 1], select_k=5)
    table, correct = subset_experiment(cfg, rec, recipe, {0: gen_emb, 1: gen_emb}, whole, pairs)
    rules = ["P4", "random", *(["oracle"] if with_truth else [])]
    assert list(zip(table["rule"], table["seed"], strict=True)) == [
        (r, s) for r in rules for s in (0, 1)
    ]
    assert (table["selected"] == 5).all()
    s_c = np.array([float(gen_emb[p] @ rec.chosen_emb[i]) for i, p in enumerate(rec.prompt_index)])
    fits = recipe.fits[1:]
    assert len(fits) == len(table)
    for (records, seed), (_, row) in zip(fits, table.iterrows(), strict=True):
        assert seed == row["seed"]
        if row["rule"] == "P4":
            assert records.full_texts() == rec.full_texts(top_k(s_c, 5))
        if row["rule"] == "oracle":
            assert set(records.labeler) == {"sentiment"}
            assert row["share_labeler_sentiment"] == 1.0
        fitted = recipe.fit(records, seed)
        want = pair_correct(fitted.score, pairs)
        np.testing.assert_array_equal(correct[f"{row['rule']}/{seed}"], want)
        assert row["accuracy"] == pytest.approx(np.nanmean(want))
    np.testing.assert_array_equal(correct["whole"], pair_correct(whole.score, pairs))
    assert list(correct.columns) == ["whole", *(f"{r}/{s}" for r in rules for s in (0, 1))]


def test_subset_vs_whole_averages_seeds_per_pair_and_drops_truth_ties() -> None:
    """Per rule: subset minus whole correctness averaged over seeds for each pair (the pairs
    are the resampled unit), truth ties (NaN) dropped, with a CI around the mean and the
    number of pairs used; a higher level widens the CI."""
    nan = np.nan
    correct = pd.DataFrame(
        {
            "whole": [1.0, 0.0, nan, 1.0, 0.5],
            "P1/0": [1.0, 1.0, nan, 0.0, 1.0],
            "P1/1": [0.0, 1.0, nan, 1.0, 1.0],
            "P2/0": [1.0, 0.0, nan, 1.0, 0.5],
            "P2/1": [1.0, 0.0, nan, 1.0, 0.5],
        }
    )
    out = subset_vs_whole(correct, ["P1", "P2"], [0, 1], n_boot=200, seed=0)
    diffs = [-0.5, 1.0, -0.5, 0.5]  # per pair: the mean of seeds 0 and 1
    assert out.loc["P1", "minus_whole"] == pytest.approx(np.mean(diffs))
    assert out.loc["P1", "pairs"] == 4
    assert out.loc["P1", "lo"] <= np.mean(diffs) <= out.loc["P1", "hi"]
    wide = subset_vs_whole(correct, ["P1"], [0, 1], n_boot=200, seed=0, level=0.99)
    assert wide.loc["P1", "lo"] <= out.loc["P1", "lo"]
    assert out.loc["P1", "hi"] <= wide.loc["P1", "hi"]
    assert out.loc["P2"].tolist()[:3] == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------- statistics


def synthetic_final(offsets: dict[str, float], seeds=(0, 1), n_prompts: int = 60, noise=0.02):
    """Final ground truth per (run, seed, prompt): a shared per-prompt base plus the run's
    offset plus (for offsets given as floats other than 0) small noise; rows shuffled so
    that only the (seed, prompt) keys pair them."""
    rng = np.random.default_rng(0)
    base = rng.random((len(seeds), n_prompts))
    frames = []
    for run, off in offsets.items():
        jitter = noise * rng.normal(size=base.shape) if off else 0.0
        truth = base + off + jitter
        frames.append(pd.DataFrame({
            "run": run, "seed": np.repeat(seeds, n_prompts),
            "prompt": np.tile(np.arange(n_prompts), len(seeds)), "truth": truth.ravel(),
        }))  # fmt: skip
    final = pd.concat(frames, ignore_index=True)
    return final.sample(frac=1.0, random_state=1).reset_index(drop=True)


def test_contrast_is_the_mean_paired_difference_with_a_ci() -> None:
    """Paired by (seed, prompt) whatever the row order; the CI holds the mean and narrows
    with the level."""
    final = synthetic_final({"base": 0.0, "new": 0.1}, noise=0.2)
    a = final[final["run"] == "new"].set_index(["seed", "prompt"])["truth"]
    b = final[final["run"] == "base"].set_index(["seed", "prompt"])["truth"]
    by_hand = np.mean([a[k] - b[k] for k in a.index])
    m, lo, hi = contrast(final, "new", "base", n_boot=500, seed=0)
    assert m == pytest.approx(by_hand) and lo < m < hi
    _, lo99, hi99 = contrast(final, "new", "base", n_boot=500, seed=0, level=0.99)
    assert lo99 <= lo and hi <= hi99
    assert contrast(final, "base", "new", n_boot=500, seed=0)[0] == pytest.approx(-by_hand)


def test_seed_bootstrap_counts_the_spread_between_seeds() -> None:
    """Seeds far apart with almost no spread within a seed: the two-level bootstrap's CI
    spans the seeds' means, a bootstrap over (seed, prompt) rows would not; one seed is the
    bootstrap over prompts; bad shapes are refused."""
    rng = np.random.default_rng(0)
    v = np.array([-1.0, 0.0, 1.0])[:, None] + 0.01 * rng.normal(size=(3, 200))
    m, lo, hi = seed_bootstrap(v, n_boot=2000, seed=0)
    assert m == pytest.approx(v.mean()) and lo < -0.4 and hi > 0.4
    _, row_lo, row_hi = bootstrap_ci(v.ravel(), 2000, 0)
    assert row_hi - row_lo < 0.2 * (hi - lo)
    one = v[:1]
    m1, lo1, hi1 = seed_bootstrap(one, n_boot=2000, seed=0)
    _, blo, bhi = bootstrap_ci(one.ravel(), 2000, 0)
    assert m1 == pytest.approx(one.mean()) and hi1 - lo1 == pytest.approx(bhi - blo, rel=0.25)
    with pytest.raises(ValueError, match="seeds, prompts"):
        seed_bootstrap(np.zeros(5), 10, 0)


def test_per_seed_differences_by_hand() -> None:
    final = pd.DataFrame(
        {"run": ["a"] * 4 + ["b"] * 4, "seed": [0, 0, 1, 1] * 2, "prompt": [0, 1] * 4,
         "truth": [1.0, 3.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0]}
    )  # fmt: skip
    assert per_seed(final, "a", "b") == [1.5, -1.0]


def test_arm_means_per_run_in_first_appearance_order() -> None:
    final = pd.DataFrame(
        {"run": ["b", "a", "b", "a", "b"], "seed": 0, "prompt": [0, 0, 1, 1, 2],
         "truth": [1.0, 0.0, 2.0, 1.0, 6.0]}
    )  # fmt: skip
    out = arm_means(final, n_boot=100, seed=0)
    assert list(out.index) == ["b", "a"]
    assert out["truth"].tolist() == [3.0, 0.5]
    assert (out["lo"] <= out["truth"]).all() and (out["truth"] <= out["hi"]).all()


def test_speed_first_checkpoint_reaching_the_target_or_censored() -> None:
    """The first update > 0 whose gt reaches the target (update 0, the reference, never
    counts), per run and seed; a run that never reaches it gets the censoring value."""
    curves = pd.DataFrame(
        [("a", 0, 0, 0.9), ("a", 0, 2, 0.4), ("a", 0, 4, 0.6), ("a", 0, 6, 0.7),
         ("a", 1, 0, 0.9), ("a", 1, 2, 0.5), ("a", 1, 4, 0.59), ("a", 1, 6, 0.1),
         ("b", 0, 2, 0.65), ("b", 0, 4, 0.2)],
        columns=["run", "seed", "update", "gt"],
    )  # fmt: skip
    out = speed(curves, target=0.6, censored=8)
    assert out[["run", "seed"]].values.tolist() == [["a", 0], ["a", 1], ["b", 0]]
    assert out["updates_to_target"].tolist() == [4.0, 8.0, 2.0]
    assert out["reached"].tolist() == [True, False, True]


RULES4 = ["P1", "P2", "P3", "P4", "random"]


def synthetic_speeds(fast: str | None = None) -> pd.DataFrame:
    """vanilla reaches the target in 1 of 2 seeds (mean 7 updates); ``fast`` in 2 (mean 3);
    the other arms never (censored at 8)."""
    runs = ["vanilla", "oracle_filter", "frft_P1", "frft_P2", "frft_P3", "frft_P4", "random"]
    rows = []
    for run in runs:
        for seed in (0, 1):
            if run == "vanilla":
                u, hit = (6.0, True) if seed == 0 else (8.0, False)
            elif run == fast:
                u, hit = (2.0 if seed == 0 else 4.0), True
            else:
                u, hit = 8.0, False
            rows.append({"run": run, "seed": seed, "updates_to_target": u, "reached": hit})
    return pd.DataFrame(rows)


SUBSET = pd.DataFrame(
    {"minus_whole": [0.0, -0.06, 0.02, -0.1, 0.0, 0.1],
     "lo": [-0.01, -0.05, np.nan, -0.2, 0.0, 0.05]},
    index=pd.Index(["P1", "P2", "P3", "P4", "random", "oracle"], name="rule"),
)  # fmt: skip


def offsets(oracle: float, rules: dict[str, float], random: float = 0.0) -> dict[str, float]:
    out = {"vanilla": 0.0, "oracle_filter": oracle}
    out |= {f"frft_{r}": rules.get(r, 0.0) for r in ("P1", "P2", "P3", "P4")}
    return out | {"random": random}


def test_claims_reproduced_when_a_rule_beats_vanilla_and_random() -> None:
    """Power (the oracle filter above vanilla); frft_P2 above vanilla and the random control
    at the Bonferroni level (1 - 0.05/4), faster than vanilla; P1's subset within the
    margin (lo > -margin), P2's and P4's not, P3's unknown."""
    final = synthetic_final(offsets(0.3, {"P2": 0.2}))
    out = claims(final, synthetic_speeds("frft_P2"), SUBSET, RULES4, 0.03, n_boot=300, seed=0)
    assert out["power"] == 1 and out["oracle_filter_minus_vanilla_lo"] > 0
    assert out["oracle_filter_minus_vanilla"] == pytest.approx(
        contrast(final, "oracle_filter", "vanilla", 300, 0)[0]
    )
    random_row = contrast(final, "random", "vanilla", 300, 0)  # 95%: a description
    assert [out[f"random_minus_vanilla{s}"] for s in ("", "_lo", "_hi")] == list(random_row)
    assert out["claim_beats_vanilla"] == "reproduced"
    assert out["rules_beating_vanilla"] == "frft_P2"
    assert out["frft_P2_beats_vanilla_and_random"] == 1
    assert out["frft_P1_beats_vanilla_and_random"] == 0  # equal to vanilla: lo = 0
    adjusted = contrast(final, "frft_P2", "random", 300, 0, level=1 - 0.05 / 4)
    assert (out["frft_P2_minus_random_lo"], out["frft_P2_minus_random_hi"]) == adjusted[1:]
    assert out["frft_P2_minus_random_lo"] < contrast(final, "frft_P2", "random", 300, 0)[1]
    assert out["claim_faster"] == "reproduced"
    assert out["frft_P2_updates_to_target"] == 3.0 and out["vanilla_reached_target"] == 1
    assert out["claim_subset_competitive"] == "reproduced"
    assert out["rules_competitive_subset"] == "P1"


def test_claims_not_reproduced_when_the_random_control_does_as_well() -> None:
    """frft_P2 beats vanilla but not the random control (which is 0.01 above it): claim 1
    fails; claim 2 needs claim 1, so it fails even for a faster rule."""
    final = synthetic_final(offsets(0.3, {"P2": 0.2}, random=0.0))
    final.loc[final["run"] == "random", "truth"] = (
        final[final["run"] == "frft_P2"].set_index(["seed", "prompt"])["truth"]
        .reindex(pd.MultiIndex.from_frame(final.loc[final["run"] == "random", ["seed", "prompt"]]))
        .to_numpy() + 0.01
    )  # fmt: skip
    out = claims(final, synthetic_speeds("frft_P2"), SUBSET, RULES4, 0.03, n_boot=300, seed=0)
    assert out["power"] == 1
    assert out["frft_P2_minus_vanilla_lo"] > 0 and out["frft_P2_minus_random"] < 0
    assert out["claim_beats_vanilla"] == "not reproduced"
    assert out["rules_beating_vanilla"] == "none"
    assert out["claim_faster"] == "not reproduced"


def test_claims_without_power_judge_no_ppo_claim() -> None:
    """The oracle filter not above vanilla (equal): power 0 and the PPO claims read "no
    power", even with a rule that beats vanilla and random."""
    final = synthetic_final(offsets(0.0, {"P2": 0.2}))
    out = claims(final, synthetic_speeds("frft_P2"), SUBSET, RULES4, 0.03, n_boot=300, seed=0)
    assert out["power"] == 0
    assert out["claim_beats_vanilla"] == "no power"
    assert out["claim_faster"] == "no power"
    assert out["rules_beating_vanilla"] == "frft_P2"  # reported, not judged


def test_claims_subset_judged_on_its_own_positive_control() -> None:
    """Claim 3 is about reward models at the reference, not PPO: it is judged whatever the
    PPO power, and it is "no power" when the oracle filter's subset does not beat the whole
    set (its own positive control)."""
    final = synthetic_final(offsets(0.0, {"P2": 0.2}))
    out = claims(final, synthetic_speeds(), SUBSET, RULES4, 0.03, n_boot=300, seed=0)
    assert out["power"] == 0 and out["claim_subset_competitive"] == "reproduced"
    weak = SUBSET.copy()
    weak.loc["oracle", "lo"] = -0.01
    out = claims(final, synthetic_speeds(), weak, RULES4, 0.03, n_boot=300, seed=0)
    assert out["claim_subset_competitive"] == "no power"
    assert out["rules_competitive_subset"] == "P1"  # reported, not judged


def test_claims_judge_a_rule_on_its_ci_not_its_point_estimate() -> None:
    """frft_P2 above vanilla and random on average (+0.033) but only in one seed of three
    (+0.3, -0.1, -0.1 per seed, the same on every prompt): the seed-level CI reaches below 0,
    so the rule does not pass and claim 1 is not reproduced, though the point estimates are
    positive (mutant M27: a verdict on the point estimate). The oracle filter gives power."""
    seeds, n_prompts = (0, 1, 2), 40
    base = np.random.default_rng(0).random((len(seeds), n_prompts))
    rule_offset = np.array([[0.3], [-0.1], [-0.1]])  # per seed
    truth = {"vanilla": base, "random": base.copy(), "oracle_filter": base + 0.3}
    truth |= {f"frft_{r}": base.copy() for r in ("P1", "P3", "P4")}
    truth["frft_P2"] = base + rule_offset
    final = pd.concat(
        [
            pd.DataFrame({"run": run, "seed": np.repeat(seeds, n_prompts),
                          "prompt": np.tile(np.arange(n_prompts), len(seeds)), "truth": t.ravel()})
            for run, t in truth.items()
        ],
        ignore_index=True,
    )  # fmt: skip
    out = claims(final, synthetic_speeds("frft_P2"), SUBSET, RULES4, 0.03, n_boot=300, seed=0)
    assert out["power"] == 1
    for base_run in ("vanilla", "random"):
        assert out[f"frft_P2_minus_{base_run}"] == pytest.approx(0.1 / 3)  # positive ...
        assert out[f"frft_P2_minus_{base_run}_seeds_positive"] == 1  # ... in one seed of 3
        assert out[f"frft_P2_minus_{base_run}_lo"] < 0  # the CI over seeds covers 0
    assert out["frft_P2_beats_vanilla_and_random"] == 0
    assert out["rules_beating_vanilla"] == "none"
    assert out["claim_beats_vanilla"] == "not reproduced"
    assert out["claim_faster"] == "not reproduced"


def test_claims_without_a_positive_control_say_so() -> None:
    """No oracle filter arm (records without the truth's labeler, the paper path): no power
    entry and each PPO verdict carries "(no positive control)"."""
    final = synthetic_final(offsets(0.0, {"P4": 0.2}))
    final = final[final["run"] != "oracle_filter"]
    speeds = synthetic_speeds()
    speeds = speeds[speeds["run"] != "oracle_filter"]
    out = claims(final, speeds, SUBSET.iloc[:0], RULES4, 0.03, n_boot=300, seed=0)
    assert "power" not in out and "oracle_filter_minus_vanilla" not in out
    assert out["claim_beats_vanilla"] == "reproduced (no positive control)"
    assert out["claim_faster"] == "not reproduced (no positive control)"
    assert out["claim_subset_competitive"] == "not reproduced (no positive control)"
