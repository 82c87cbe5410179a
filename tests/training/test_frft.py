"""FRFT during PPO (pluralign.training.frft): on-policy accuracy, record embedding and
selection, the filtered refit (a fresh reward model per refit) and its PPO run with critic
reset, snapshots and resume.

Every check is against something computed independently here: per-pair loops, hand
values, planted records whose similarity is exactly 1, a z-score computed by hand, a fake
reward recipe whose rewards are known linear functions of the text, and an uninterrupted
run for the resume.
"""

from __future__ import annotations

import math
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from helpers import tiny_gpt2

import pluralign.training.frft as training_frft
from pluralign.core.frft import frft_select
from pluralign.data.preferences import PreferenceRecords
from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.training import ppo
from pluralign.training.frft import (
    REFIT_RULES,
    FilteredRefit,
    OnPolicyPairs,
    RefitSettings,
    embed_records,
    pair_accuracy,
    run_frft,
    select_records,
    selection_stats,
)
from pluralign.training.frft_embeddings import Embedding
from pluralign.training.frft_rewards import FittedReward
from pluralign.training.generation import GenerationSettings
from pluralign.training.ppo import PPOSettings, value_model_from

# --------------------------------------------------------------------------- helpers

DIM = 64


def hashed_words(prompts, responses) -> np.ndarray:
    """Raw features for an Embedding: hashed word counts of prompt + response."""
    out = np.zeros((len(prompts), DIM))
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        for w in (p + r).split():
            out[i, zlib.crc32(w.encode()) % DIM] += 1.0
    return out


def counts(texts) -> np.ndarray:
    """(n, 3): characters, letters 'e', spaces: what the fake rewards are linear in."""
    return np.array([[len(t), t.count("e"), t.count(" ")] for t in texts], dtype=np.float64)


class FakeRecipe:
    """A reward recipe whose rewards are ``counts(texts) @ w``: a fit's ``w`` depends on its
    seed and on the number of records, so rewards can be told apart. Records every fit,
    load and score call; ``critic(i)`` is the critic_state of the i-th fit (1-based)."""

    def __init__(self, critic=None) -> None:
        self.critic = critic
        self.fits: list[tuple[PreferenceRecords, int]] = []
        self.loads: list[dict] = []
        self.calls: list[tuple[tuple[float, ...], list[str]]] = []

    @staticmethod
    def weights(seed: int, n: int) -> np.ndarray:
        return np.array([1.0, -0.5 * (seed % 5 + 1), 0.1 * n])

    def fit(self, records: PreferenceRecords, seed: int) -> FittedReward:
        self.fits.append((records, seed))
        critic = None if self.critic is None else self.critic(len(self.fits))
        return self.reward(self.weights(seed, len(records)), critic)

    def load(self, state) -> FittedReward:
        self.loads.append(state)
        return self.reward(state["w"].numpy())

    def reward(self, w, critic_state=None) -> FittedReward:
        w = np.asarray(w, dtype=np.float64)

        def score(texts):
            self.calls.append((tuple(w), list(texts)))
            return counts(texts) @ w

        return FittedReward(score, {"w": torch.from_numpy(w.copy())}, critic_state)


def linear(w):
    return lambda texts: counts(texts) @ np.asarray(w, dtype=np.float64)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def manual_accuracy(score, pairs: OnPolicyPairs) -> float:
    """Share of non-tied ground-truth pairs the reward orders the same way, by a loop (a
    reward tie counts as wrong)."""
    ra, rb = score(pairs.texts_a), score(pairs.texts_b)
    hits = [
        (ra[i] > rb[i]) == (pairs.truth_a[i] > pairs.truth_b[i]) and ra[i] != rb[i]
        for i in range(len(ra))
        if pairs.truth_a[i] != pairs.truth_b[i]
    ]
    return sum(hits) / len(hits)


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=300)


# --------------------------------------------------------------------------- settings, accuracy


def test_refit_settings_rules_and_refusals() -> None:
    """The paper's rules, the random control and the oracle filter; an unknown rule (rules
    are case-sensitive) and a budget or interval below 1 are refused; P1's threshold
    defaults to None (by quantile)."""
    assert REFIT_RULES == ("P1", "P2", "P3", "P4", "random", "oracle")
    assert RefitSettings(rule="oracle", k=3, every=2).threshold is None
    with pytest.raises(ValueError, match="unknown selection rule"):
        RefitSettings(rule="p4", k=1, every=1)
    with pytest.raises(ValueError, match=">= 1"):
        RefitSettings(rule="P4", k=0, every=1)
    with pytest.raises(ValueError, match=">= 1"):
        RefitSettings(rule="P4", k=1, every=0)


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
    assert pair_accuracy(score, pairs) == pytest.approx(manual_accuracy(score, pairs))
    pairs.truth_b = np.array([0.0, -1.0, 3.0, 5.0])  # pairs 1 and 3 now right
    assert pair_accuracy(score, pairs) == pytest.approx(1.0)
    ties = OnPolicyPairs(["a0"], ["b0"], np.array([1.0]), np.array([1.0]))
    assert math.isnan(pair_accuracy(score, ties))


# --------------------------------------------------------------------------- records

GEN_WORDS = [
    ("sunny", "park", "walk"),
    ("cold", "winter", "night"),
    ("loud", "concert", "crowd"),
    ("quiet", "library", "book"),
    ("fast", "red", "car"),
    ("green", "garden", "tea"),
]
FILLER = ["movie", "plot", "actor", "scene", "music", "story", "ending", "camera"]
PLANTED = {0: "alpha", 3: "alpha", 6: "alpha", 9: "alpha", 15: "beta"}


def planted_records(tok):
    """6 prompts, 3 records each. Planted (rows 0, 3, 6, 9, 15): chosen == the generation
    for the prompt (s_c = 1); the other chosen responses share at most one word with it.
    Labeler x on rows 0, 3 and 10; row 6's label disagrees with the truth."""
    prompts = [f"Prompt {i} says" for i in range(len(GEN_WORDS))]
    gens = [" " + " ".join(w) for w in GEN_WORDS]
    rng = np.random.default_rng(0)
    index, chosen, rejected, source = [], [], [], []
    for p in range(len(prompts)):
        for j in range(3):
            row = len(index)
            filler = list(rng.choice(FILLER, 3, replace=False))
            index.append(p)
            if row in PLANTED:
                chosen.append(gens[p])
                source.append(PLANTED[row])
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
        labeler=np.array(["x" if r in (0, 3, 10) else "y" for r in range(len(index))]),
        agrees_with_truth=np.array([r != 6 for r in range(len(index))]),
    )
    prompt_ids = [tok(p)["input_ids"] for p in prompts]
    return rec, prompt_ids, gens, sorted(PLANTED)


def embedded(tok):
    rec, prompt_ids, gens, planted = planted_records(tok)
    embedding = Embedding("words", hashed_words)
    embed_records(rec, embedding)
    return rec, prompt_ids, gens, planted, embedding


def by_hand_embedding(rec: PreferenceRecords, prompts, responses) -> np.ndarray:
    """z-score with the statistics of every record response (with its prompt), unit norm."""
    p = [rec.prompts[i] for i in rec.prompt_index]
    X = hashed_words(p + p, list(rec.chosen) + list(rec.rejected))
    mean, std = X.mean(0), X.std(0)
    std[std == 0] = 1.0
    Z = (hashed_words(prompts, responses) - mean) / std
    return Z / np.linalg.norm(Z, axis=1, keepdims=True)


def test_embed_records_fits_on_every_response_and_caches_both_sides(tok) -> None:
    """chosen_emb / rejected_emb are the z-scored (statistics of all 2n record responses
    with their prompts), unit-normed features, row by row."""
    rec, *_ = embedded(tok)
    p = [rec.prompts[i] for i in rec.prompt_index]
    assert rec.chosen_emb.shape == rec.rejected_emb.shape == (len(rec), DIM)
    np.testing.assert_allclose(rec.chosen_emb, by_hand_embedding(rec, p, rec.chosen), atol=1e-6)
    np.testing.assert_allclose(rec.rejected_emb, by_hand_embedding(rec, p, rec.rejected), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(rec.chosen_emb, axis=1), 1.0, atol=1e-6)


# --------------------------------------------------------------------------- selection


def test_select_records_oracle_draws_k_rows_of_the_truth_labeler(tok) -> None:
    """oracle: only rows labelled by truth_labeler, k distinct of them (all when fewer),
    sorted; fixed by the rng seed; refused without a labeler or with none labelled."""
    rec, *_ = planted_records(tok)
    x_rows = {0, 3, 10}
    two = RefitSettings("oracle", k=2, every=1)
    seen = set()
    for seed in range(30):
        got = select_records(two, rec, None, None, np.random.default_rng(seed), "x")
        assert got.size == 2 and set(got.tolist()) <= x_rows and np.all(np.diff(got) > 0)
        again = select_records(two, rec, None, None, np.random.default_rng(seed), "x")
        assert np.array_equal(got, again)
        seen.add(tuple(got.tolist()))
    assert len(seen) == 3  # every pair of the three rows is drawn
    many = RefitSettings("oracle", k=10, every=1)
    assert select_records(many, rec, None, None, np.random.default_rng(0), "x").tolist() == [
        0, 3, 10
    ]  # fmt: skip
    with pytest.raises(ValueError, match="labeler the user agrees with"):
        select_records(two, rec, None, None, np.random.default_rng(0))
    with pytest.raises(ValueError, match="no record is labelled by 'z'"):
        select_records(two, rec, None, None, np.random.default_rng(0), "z")


def test_select_records_random_and_similarity_rules(tok) -> None:
    """random: k distinct rows without similarities; a similarity rule is the core rule on
    the given similarities (P1 with its threshold) and needs them."""
    rec, *_ = planted_records(tok)
    n = len(rec)
    got = select_records(RefitSettings("random", 7, 1), rec, None, None, np.random.default_rng(1))
    assert got.size == 7 and np.unique(got).size == 7 and got.min() >= 0 and got.max() < n
    rng = np.random.default_rng(2)
    s_c, s_r = rng.normal(size=n), rng.normal(size=n)
    for rule in ("P1", "P2", "P3", "P4"):
        for threshold in (None, 0.1):
            settings = RefitSettings(rule, 5, 1, threshold)
            got = select_records(settings, rec, s_c, s_r, np.random.default_rng(0))
            want = frft_select(rule, s_c, s_r, 5, threshold)
            assert np.array_equal(got, want), (rule, threshold)
    with pytest.raises(ValueError, match="needs the similarities"):
        select_records(RefitSettings("P3", 2, 1), rec, None, None, np.random.default_rng(0))


def test_selection_stats_by_hand(tok) -> None:
    """Similarity means over all records and over the selection; every source and labeler
    share (absent ones 0); label agreement; an empty selection keeps only the all-record
    means; records without a truth have no agreement."""
    rec, *_ = planted_records(tok)
    n = len(rec)
    s_c, s_r = np.arange(n) / n, -np.arange(n) / n
    rows = np.array([0, 6, 15, 16])  # alpha, alpha, beta, gamma; x, y, y, y; agree 1 0 1 1
    out = selection_stats(rec, rows, s_c, s_r)
    assert out["sim_chosen_all"] == pytest.approx(np.mean(np.arange(n) / n))
    assert out["sim_rejected_all"] == pytest.approx(-np.mean(np.arange(n) / n))
    assert out["sim_chosen"] == pytest.approx((0 + 6 + 15 + 16) / 4 / n)
    assert out["sim_rejected"] == pytest.approx(-(0 + 6 + 15 + 16) / 4 / n)
    assert out["share_source_alpha"] == pytest.approx(0.5)
    assert out["share_source_beta"] == pytest.approx(0.25)
    assert out["share_source_gamma"] == pytest.approx(0.25)
    assert out["share_labeler_x"] == pytest.approx(0.25)
    assert out["share_labeler_y"] == pytest.approx(0.75)
    assert out["label_truth_agreement"] == pytest.approx(0.75)
    assert selection_stats(rec, np.array([], dtype=int), s_c, s_r).keys() == {
        "sim_chosen_all", "sim_rejected_all"
    }  # fmt: skip
    plain = selection_stats(rec, rows)
    assert "sim_chosen_all" not in plain and "sim_chosen" not in plain
    rec.agrees_with_truth = None
    assert "label_truth_agreement" not in selection_stats(rec, rows)


# --------------------------------------------------------------------------- the refit


def test_filtered_refit_selects_planted_records_and_fits_a_fresh_reward_on_them(tok) -> None:
    """P4 with k = #planted picks exactly the records whose chosen equals the generation;
    the recipe gets those records alone (seed + updates) and its reward is returned; the
    stats describe the selection; the generation is drawn with seed * 7919 + updates."""
    rec, prompt_ids, gens, planted, embedding = embedded(tok)
    calls = []

    def generate(policy, ids, seed):
        calls.append((policy, ids, seed))
        return list(gens)

    recipe = FakeRecipe()
    settings = RefitSettings(rule="P4", k=len(planted), every=2)
    refit = FilteredRefit(recipe, rec, prompt_ids, embedding, settings, generate, seed=3)
    reward, out = refit("the policy", 4)
    assert calls == [("the policy", prompt_ids, 3 * 7919 + 4)]
    assert len(recipe.fits) == 1
    fitted, seed = recipe.fits[0]
    assert seed == 3 + 4
    assert fitted.full_texts() == rec.full_texts(planted)  # exactly the planted pairs
    assert fitted.source.tolist() == [PLANTED[r] for r in planted]
    assert reward.state["w"].tolist() == FakeRecipe.weights(7, len(planted)).tolist()
    assert out["selected"] == len(planted) == 5
    assert out["share_source_alpha"] == pytest.approx(0.8)
    assert out["share_source_beta"] == pytest.approx(0.2)
    assert out["share_source_gamma"] == 0.0
    assert out["share_labeler_x"] == pytest.approx(0.4)
    assert out["label_truth_agreement"] == pytest.approx(0.8)
    assert out["sim_chosen"] == pytest.approx(1.0, abs=1e-5)
    # the all-record mean cosine, from an embedding computed by hand
    gen_emb = by_hand_embedding(rec, rec.prompts, gens)
    ch_emb = by_hand_embedding(rec, [rec.prompts[i] for i in rec.prompt_index], rec.chosen)
    s_c = [gen_emb[p] @ ch_emb[i] for i, p in enumerate(rec.prompt_index)]
    assert out["sim_chosen_all"] == pytest.approx(np.mean(s_c), abs=1e-5)
    assert out["sim_chosen_all"] < out["sim_chosen"]
    for step in ("sampling", "embedding", "selection", "fitting"):
        assert out[f"time_{step}_s"] >= 0.0


def test_filtered_refit_with_an_empty_selection_fits_nothing(tok) -> None:
    """P1 with tau 0.9: no record has both similarities above it, so nothing is selected,
    no reward is fitted (None) and only the all-record stats are reported."""
    rec, prompt_ids, gens, _, embedding = embedded(tok)
    recipe = FakeRecipe()
    settings = RefitSettings(rule="P1", k=5, every=1, threshold=0.9)
    refit = FilteredRefit(recipe, rec, prompt_ids, embedding, settings, lambda *a: gens, 0)
    reward, out = refit(None, 1)
    assert reward is None and recipe.fits == []
    assert out["selected"] == 0.0
    assert "sim_chosen" not in out and "share_source_alpha" not in out
    assert {"sim_chosen_all", "sim_rejected_all"} <= out.keys()


@pytest.mark.parametrize("rule", ["random", "oracle"])
def test_random_and_oracle_refits_never_sample_the_policy(tok, rule: str) -> None:
    """The controls need no generation (generate None is fine): k rows (oracle: the truth
    labeler's), no similarity stats; the same rows for the same (seed, updates)."""
    rec, prompt_ids, _, _, embedding = embedded(tok)
    recipe = FakeRecipe()
    settings = RefitSettings(rule=rule, k=3, every=1)
    refit = FilteredRefit(recipe, rec, prompt_ids, embedding, settings, None, 5, "x")
    reward, out = refit(None, 2)
    assert reward is not None and out["selected"] == 3.0
    assert not any(k.startswith("sim_") for k in out)
    fitted = recipe.fits[0][0]
    if rule == "oracle":
        assert fitted.labeler.tolist() == ["x"] * 3 and out["share_labeler_x"] == 1.0
    refit(None, 2)
    assert recipe.fits[1][0].full_texts() == fitted.full_texts()


def test_filtered_refit_refusals(tok) -> None:
    """Records without cached embeddings, prompt ids not one per prompt, the oracle without
    its labeler, and a similarity rule without generate."""
    rec, prompt_ids, gens, _ = planted_records(tok)
    embedding = Embedding("words", hashed_words)
    p4 = RefitSettings(rule="P4", k=2, every=1)
    with pytest.raises(ValueError, match="embed the records first"):
        FilteredRefit(FakeRecipe(), rec, prompt_ids, embedding, p4, lambda *a: gens, 0)
    embed_records(rec, embedding)
    with pytest.raises(ValueError, match="every record prompt"):
        FilteredRefit(FakeRecipe(), rec, prompt_ids[:-1], embedding, p4, lambda *a: gens, 0)
    oracle = RefitSettings(rule="oracle", k=2, every=1)
    with pytest.raises(ValueError, match="needs truth_labeler"):
        FilteredRefit(FakeRecipe(), rec, prompt_ids, embedding, oracle, None, 0)
    refit = FilteredRefit(FakeRecipe(), rec, prompt_ids, embedding, p4, None, 0)
    with pytest.raises(ValueError, match="needs generate"):
        refit(None, 1)


# --------------------------------------------------------------------------- run_frft

SETTINGS = PPOSettings(n_updates=6, batch_size=4, checkpoint_every=2, learning_rate=1e-3)
GENERATION = GenerationSettings(max_new_tokens=6, temperature=0.7)
REFERENCE = ["the movie was fine", "i think this is bad", "a great film indeed"]
EVAL_PAIRS = OnPolicyPairs(
    texts_a=["the movie was great", "bad plot", "a fine film", "so so", "lovely music"],
    texts_b=["the movie was bad", "great plot", "a dull film", "very good", "no music"],
    truth_a=np.array([1.0, 0.0, 1.0, 0.0, 1.0]),
    truth_b=np.array([0.5, 1.0, 0.0, 1.0, 0.0]),
)
W_START = (0.2, 1.0, 0.0)
W_OTHER = (0.0, 0.0, 1.0)


def ppo_prompts(tok) -> Dataset:
    texts = ["the movie was", "i think this", "a great film", "what a story"] * 4
    return Dataset.from_dict(
        {"input_ids": [[tok.eos_token_id, *tok(t)["input_ids"][:3]] for t in texts]}
    )


def evaluate(policy, updates: int) -> OnPolicyPairs:
    return EVAL_PAIRS


def critic_template(tok, seed: int = 0) -> dict[str, torch.Tensor]:
    """The critic's start weights as run_frft makes them: the policy with a fresh head drawn
    from the run's seed."""
    policy = tiny_gpt2(tok, seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        value = value_model_from(policy)
    return {k: v.clone() for k, v in value.state_dict().items()}


def shifted(state: dict[str, torch.Tensor], by: float) -> dict[str, torch.Tensor]:
    return {k: v + by if v.is_floating_point() else v.clone() for k, v in state.items()}


def frft(tok, workdir: Path, recipe: FakeRecipe | None, settings: PPOSettings = SETTINGS):
    """One run_frft on a fresh tiny policy from the reward ``W_START`` (refit by P4 every 2
    updates when ``recipe`` is given); returns the log."""
    start = (recipe or FakeRecipe()).reward(W_START)
    refit = None
    if recipe is not None:
        rec, prompt_ids, gens, _, embedding = embedded(tok)
        refit = FilteredRefit(
            recipe, rec, prompt_ids, embedding, RefitSettings(rule="P4", k=5, every=2),
            lambda p, i, s: list(gens), 0,
        )  # fmt: skip
    _, log = run_frft(
        tiny_gpt2(tok, seed=0),
        tok,
        ppo_prompts(tok),
        start,
        REFERENCE,
        settings,
        GENERATION,
        workdir,
        seed=0,
        refit=refit,
        evaluate=evaluate,
        other_rewards={"other": linear(W_OTHER)},
    )
    return log


def critic_of_fit(template):
    """The refit at update 2 has no critic (reset to the start weights), the one at 4 has."""
    return lambda i: None if i == 1 else shifted(template, 0.01)


@pytest.fixture(scope="module")
def full_run(tok, tmp_path_factory):
    """An uninterrupted 6-update run refit after updates 2 and 4."""
    template = critic_template(tok)
    workdir = tmp_path_factory.mktemp("frft") / "full"
    recipe = FakeRecipe(critic_of_fit(template))
    log = frft(tok, workdir, recipe)
    return workdir, log, recipe, template


def deterministic(log):
    """The log without its wall-clock columns (TRL's episodes per second, refit timings)."""
    return log[[c for c in log.columns if c != "eps" and not c.startswith("time_")]]


def ppo_batches(recipe: FakeRecipe):
    """The adapter's calls, one per PPO update (a batch of SETTINGS.batch_size texts):
    (weights, texts)."""
    return [(w, t) for w, t in recipe.calls if len(t) == SETTINGS.batch_size]


def test_run_frft_swaps_in_each_refit_reward_and_renormalizes(full_run) -> None:
    """Updates 1-2 are scored by the start reward, 3-4 by the refit after 2, 5-6 by the one
    after 4; the logged raw reward is that reward's mean on the batch and the normalized
    one uses its statistics on the reference texts; snapshots after 2 and 4 only."""
    workdir, log, recipe, _ = full_run
    assert log["update"].tolist() == [1, 2, 3, 4, 5, 6]
    assert [seed for _, seed in recipe.fits] == [2, 4]
    w2, w4 = (tuple(FakeRecipe.weights(s, 5)) for s in (2, 4))
    batches = ppo_batches(recipe)
    assert [w for w, _ in batches] == [W_START] * 2 + [w2] * 2 + [w4] * 2
    for r, (w, texts) in enumerate(batches):
        raw = linear(w)(texts)
        ref = linear(w)(REFERENCE)
        assert log["raw_reward"][r] == pytest.approx(raw.mean(), rel=1e-9)
        norm = (raw - ref.mean()) / ref.std()
        assert log["norm_reward"][r] == pytest.approx(norm.mean(), rel=1e-6, abs=1e-9)
    for u, w in ((2, w2), (4, w4)):
        snap = torch.load(workdir / f"reward-after-{u:05d}.pt", weights_only=True)
        assert snap["w"].tolist() == list(w)
    assert not (workdir / "reward-after-00006.pt").exists()  # no refit after the last chunk


def test_run_frft_logs_refits_and_evaluations_at_checkpoints(full_run) -> None:
    """Refit columns at updates 2 and 4, evaluation at 2, 4 and 6: gt is the mean ground
    truth over both samples of the pairs; the accuracies (reward in use, refit one, other
    rewards) recomputed by a loop."""
    _, log, _, _ = full_run
    refits = [False, True, False, True, False, False]
    checkpoints = [False, True, False, True, False, True]
    assert log["selected"].notna().tolist() == refits
    assert log.loc[log["selected"].notna(), "selected"].tolist() == [5.0, 5.0]
    assert log["time_fitting_s"].notna().tolist() == refits
    assert log["rm_accuracy_after"].notna().tolist() == refits
    assert log["share_source_beta"][1] == pytest.approx(0.2)
    for col in ("gt", "rm_accuracy", "accuracy_other"):
        assert log[col].notna().tolist() == checkpoints
    assert log["gt"][1] == log["gt"][5] == pytest.approx(5.5 / 10)
    w2, w4 = (FakeRecipe.weights(s, 5) for s in (2, 4))
    expected = {
        "rm_accuracy": [W_START, w2, w4],
        "rm_accuracy_after": [w2, w4],
        "accuracy_other": [W_OTHER] * 3,
    }
    for col, ws in expected.items():
        got = log[col].dropna().tolist()
        assert got == [pytest.approx(manual_accuracy(linear(w), EVAL_PAIRS)) for w in ws], col
    assert len({log["rm_accuracy"][1], log["rm_accuracy"][3]}) == 2  # the rewards differ


def test_run_frft_resets_the_critic_at_each_refit(tok, full_run, tmp_path: Path) -> None:
    """The critic saved with chunk 0 (after the hook) is the start critic (the refit's reward
    has no critic_state); with chunk 1, the critic_state of the refit after update 4; with
    the last chunk (no refit), a trained critic. Without refits the critic saved with
    chunk 0 is trained (so the reset is what makes the first one equal to the start)."""
    workdir, _, _, template = full_run

    def saved(root: Path, chunk: int) -> dict:
        return torch.load(root / f"chunk-{chunk:04d}" / "value.pt", weights_only=True)

    assert same_weights(saved(workdir, 0), template)
    assert same_weights(saved(workdir, 1), shifted(template, 0.01))
    last = saved(workdir, 2)
    assert not same_weights(last, template) and not same_weights(last, shifted(template, 0.01))
    vanilla = PPOSettings(n_updates=2, batch_size=4, checkpoint_every=2, learning_rate=1e-3)
    log = frft(tok, tmp_path / "vanilla", None, vanilla)
    assert not same_weights(saved(tmp_path / "vanilla", 0), template)
    assert "selected" not in log.columns and "rm_accuracy_after" not in log.columns
    assert log["rm_accuracy"].dropna().tolist() == [
        pytest.approx(manual_accuracy(linear(W_START), EVAL_PAIRS))
    ]
    assert not list((tmp_path / "vanilla").glob("reward-after-*"))


def test_run_frft_starts_the_critic_from_the_first_rewards_critic_state(
    tok, tmp_path: Path, monkeypatch
) -> None:
    """The critic handed to PPO is the start reward's critic_state when it has one (the
    authors' train_ppo.py), else the policy with a fresh head."""
    seen = []

    def spy(policy, *args, value_model=None, **kwargs):
        seen.append({k: v.clone() for k, v in value_model.state_dict().items()})
        return policy, None

    monkeypatch.setattr(training_frft, "run_ppo", spy)
    template = critic_template(tok)
    args = (tok, ppo_prompts(tok))
    later = (REFERENCE, SETTINGS, GENERATION, tmp_path / "x", 0)
    with_critic = FakeRecipe().reward(W_START, shifted(template, 0.5))
    run_frft(tiny_gpt2(tok, seed=0), *args, with_critic, *later)
    run_frft(tiny_gpt2(tok, seed=0), *args, FakeRecipe().reward(W_START), *later)
    assert same_weights(seen[0], shifted(template, 0.5))
    assert same_weights(seen[1], template)


@pytest.mark.parametrize("lost", [["chunk-0002"], ["chunk-0001", "chunk-0002"]])
def test_frft_run_missing_its_last_chunks_resumes_to_the_same_result(
    tok, full_run, tmp_path: Path, lost: list[str]
) -> None:
    """A copy of the full run without its last chunk(s), rerun with fresh models and a
    fresh recipe, reloads the reward of the last complete chunk's refit from its snapshot
    (scores equal to the refit's; a later snapshot without its chunk is ignored), refits
    again only where a chunk is missing, and ends where the full run did (bitwise: same
    machine, same seeds)."""
    workdir, full_log, full_recipe, template = full_run
    shutil.copytree(workdir, tmp_path / "b")
    for name in lost:
        shutil.rmtree(tmp_path / "b" / name)
    recipe = FakeRecipe(critic_of_fit(template))
    if len(lost) == 2:  # refit 4 is redone: its fit is this recipe's first
        recipe.critic = lambda i: shifted(template, 0.01)
    log = frft(tok, tmp_path / "b", recipe)
    kept_refit = 4 if len(lost) == 1 else 2
    assert len(recipe.loads) == 1
    assert recipe.loads[0]["w"].tolist() == FakeRecipe.weights(kept_refit, 5).tolist()
    assert [seed for _, seed in recipe.fits] == ([] if len(lost) == 1 else [4])
    batches = ppo_batches(recipe)
    full_batches = ppo_batches(full_recipe)[-len(batches) :]
    assert len(batches) == 2 * len(lost)
    for (w, texts), (w_full, texts_full) in zip(batches, full_batches, strict=True):
        assert w == w_full and texts == texts_full
    assert set(log.columns) == set(full_log.columns)
    assert deterministic(log).equals(deterministic(full_log)[deterministic(log).columns])


@pytest.mark.slow
@pytest.mark.parametrize("die", ["after_first_checkpoint", "before_first_checkpoint"])
def test_killed_frft_run_resumes_to_the_uninterrupted_result(
    tok, full_run, tmp_path: Path, monkeypatch, die: str
) -> None:
    """Killed after the first chunk's checkpoint, a rerun with fresh models reloads the
    refit reward and ends where the uninterrupted run did; killed after the refit snapshot
    but before the checkpoint, the rerun ignores that snapshot and redoes chunk 0."""
    _, full_log, _, template = full_run
    real_save = ppo._save_chunk

    def killed(path, *args):
        if die == "after_first_checkpoint":
            real_save(path, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(ppo, "_save_chunk", killed)
    with pytest.raises(KeyboardInterrupt):
        frft(tok, tmp_path / "b", FakeRecipe(critic_of_fit(template)))
    assert (tmp_path / "b" / "reward-after-00002.pt").is_file()
    complete = (tmp_path / "b" / "chunk-0000" / "log.json").is_file()
    assert complete == (die == "after_first_checkpoint")
    monkeypatch.setattr(ppo, "_save_chunk", real_save)

    recipe = FakeRecipe(critic_of_fit(template))
    if complete:  # the refit after 2 is not redone: the rerun's first fit is the one after 4
        recipe.critic = lambda i: shifted(template, 0.01)
    log = frft(tok, tmp_path / "b", recipe)
    assert len(recipe.loads) == int(complete)
    assert deterministic(log).equals(deterministic(full_log)[deterministic(log).columns])


def test_run_frft_critic_head_depends_on_the_seed_not_on_the_global_rng(
    tok, tmp_path: Path, monkeypatch
) -> None:
    """Runs of one seed start from the same critic whatever ran before them (arms of a seed
    are identical until their first refit); another seed gives another head."""
    seen = []

    def spy(policy, *args, value_model=None, **kwargs):
        seen.append({k: v.clone() for k, v in value_model.state_dict().items()})
        return policy, None

    monkeypatch.setattr(training_frft, "run_ppo", spy)
    args = (tok, ppo_prompts(tok), FakeRecipe().reward(W_START), REFERENCE, SETTINGS, GENERATION)
    for global_seed, run_seed in ((1, 0), (2, 0), (1, 3)):
        torch.manual_seed(global_seed)
        run_frft(tiny_gpt2(tok, seed=0), *args, tmp_path / f"r{len(seen)}", run_seed)
    assert same_weights(seen[0], seen[1]) and same_weights(seen[0], critic_template(tok, 0))
    assert not same_weights(seen[0], seen[2])
    assert same_weights(seen[2], critic_template(tok, 3))


def test_run_frft_rejects_a_refit_interval_off_the_checkpoints(tok, tmp_path: Path) -> None:
    """The refit interval must be a multiple of checkpoint_every; refused before anything
    is written."""
    rec, prompt_ids, _, _, embedding = embedded(tok)
    settings = RefitSettings(rule="P4", k=2, every=3)
    refit = FilteredRefit(FakeRecipe(), rec, prompt_ids, embedding, settings, None, 0)
    start = FakeRecipe().reward(W_START)
    args = (tok, ppo_prompts(tok), start, REFERENCE, SETTINGS, GENERATION, tmp_path / "x")
    with pytest.raises(ValueError, match="multiple of checkpoint_every"):
        run_frft(tiny_gpt2(tok, seed=0), *args, 0, refit=refit)
    assert not (tmp_path / "x").exists()
