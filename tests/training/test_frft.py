"""FRFT during PPO (pluralign.training.frft): on-policy accuracy, the filtered refit and
its PPO run with resume.

Every check is against something computed independently here: per-pair loops, hand
values, planted records whose similarity is exactly 1, and an uninterrupted run for the
resume.
"""

from __future__ import annotations

import copy
import math
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from helpers import tiny_gpt2
from transformers import AutoModelForSequenceClassification, GPT2Config

import pluralign.training.frft as training_frft
from pluralign.data.preferences import PreferenceRecords
from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.training import ppo
from pluralign.training.frft import (
    FilteredRefit,
    OnPolicyPairs,
    RefitSettings,
    embed_records,
    pair_accuracy,
    run_frft,
)
from pluralign.training.generation import GenerationSettings
from pluralign.training.ppo import PPOSettings
from pluralign.training.reward_models import score_texts, tokenize_pairs

# --------------------------------------------------------------------------- helpers


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


# --------------------------------------------------------------------------- settings, accuracy


def test_refit_settings_reject_bad_arguments() -> None:
    """An unknown rule (rules are case-sensitive) and a budget or interval below 1."""
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

    def spy(tokenizer, chosen, rejected, max_length, weights=None):
        seen["pairs"] = (list(chosen), list(rejected))
        return tokenize_pairs(tokenizer, chosen, rejected, max_length, weights)

    monkeypatch.setattr(training_frft, "tokenize_pairs", spy)
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

SETTINGS = PPOSettings(n_updates=4, batch_size=8, checkpoint_every=2, learning_rate=1e-3)
GENERATION = GenerationSettings(max_new_tokens=10, temperature=0.7)
RM_LENGTH = 16
REFERENCE = ["the movie was fine", "i think this is bad", "a great film indeed", "what a story"]
EVAL_PAIRS = OnPolicyPairs(
    texts_a=["the movie was great", "bad plot", "a fine film", "so so", "lovely music"],
    texts_b=["the movie was bad", "great plot", "a dull film", "very good", "no music"],
    truth_a=np.array([1.0, 0.0, 1.0, 0.0, 1.0]),
    truth_b=np.array([0.0, 1.0, 0.0, 1.0, 0.0]),
)
RESUME_COLUMNS = [
    "update", "objective/kl", "objective/scores", "raw_reward", "norm_reward",
    "selected", "gt", "rm_accuracy", "rm_accuracy_after", "share_source_alpha",
]  # fmt: skip


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
        GENERATION,
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
    settings = PPOSettings(n_updates=1, batch_size=8, checkpoint_every=1)
    log, rm, _ = frft(tok, tmp_path / "r", with_refit=False, settings=settings)
    assert same_weights(rm.state_dict(), tiny_reward_model(tok, seed=1).state_dict())
    assert "selected" not in log.columns and "rm_accuracy_after" not in log.columns
    assert log["rm_accuracy"].tolist() == [
        pytest.approx(manual_accuracy(rm, tok, EVAL_PAIRS, RM_LENGTH))
    ]
    assert not list((tmp_path / "r").glob("reward-after-*"))


def test_frft_run_missing_its_last_chunk_resumes_to_the_same_result(
    tok, full_run, tmp_path: Path
) -> None:
    """A copy of the full run without its last chunk, rerun with fresh models, reloads the
    refit reward model (its snapshot after update 2) and ends where the full run did
    (bitwise: same machine, same seeds)."""
    workdir, full_log, full_rm, initial = full_run
    shutil.copytree(workdir, tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "chunk-0001")
    log, rm, _ = frft(tok, tmp_path / "b")
    assert same_weights(rm.state_dict(), full_rm.state_dict())
    assert not same_weights(rm.state_dict(), initial.state_dict())
    assert log[RESUME_COLUMNS].equals(full_log[RESUME_COLUMNS])


@pytest.mark.slow
@pytest.mark.parametrize("die", ["after_first_checkpoint", "before_first_checkpoint"])
def test_killed_frft_run_resumes_to_the_uninterrupted_result(
    tok, full_run, tmp_path: Path, monkeypatch, die: str
) -> None:
    """Killed after the first chunk's checkpoint, a rerun with fresh models reloads the
    refit reward model and ends where the uninterrupted run did; killed after the refit
    snapshot but before the checkpoint, the rerun ignores that snapshot and redoes chunk 1."""
    _, full_log, full_rm, _ = full_run
    real_save = ppo._save_chunk

    def killed(path, *args):
        if die == "after_first_checkpoint":
            real_save(path, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(ppo, "_save_chunk", killed)
    with pytest.raises(KeyboardInterrupt):
        frft(tok, tmp_path / "b")
    assert (tmp_path / "b" / "reward-after-00002.pt").is_file()
    complete = (tmp_path / "b" / "chunk-0000" / "log.json").is_file()
    assert complete == (die == "after_first_checkpoint")
    monkeypatch.setattr(ppo, "_save_chunk", real_save)

    log, rm, _ = frft(tok, tmp_path / "b")
    assert same_weights(rm.state_dict(), full_rm.state_dict())
    assert log[RESUME_COLUMNS].equals(full_log[RESUME_COLUMNS])


def test_run_frft_rejects_mismatched_refits(tok, tmp_path: Path) -> None:
    """The refit interval must be a multiple of checkpoint_every, and the refit must
    fine-tune the reward model PPO uses."""
    rec, prompt_ids, _, _ = planted_records(tok)
    embed_records(rec, BagOfWords())
    rm = tiny_reward_model(tok)

    def refit(model, every: int) -> FilteredRefit:
        settings = RefitSettings(rule="P4", k=2, every=every)
        return FilteredRefit(model, tok, rec, prompt_ids, BagOfWords(), settings, None, 0)

    args = (tok, ppo_prompts(tok), rm, RM_LENGTH, REFERENCE, SETTINGS, GENERATION, tmp_path / "x")
    with pytest.raises(ValueError, match="multiple of checkpoint_every"):
        run_frft(tiny_gpt2(tok, seed=0), *args, 0, refit=refit(rm, 3))
    with pytest.raises(ValueError, match="reward model PPO uses"):
        run_frft(tiny_gpt2(tok, seed=0), *args, 0, refit=refit(tiny_reward_model(tok), 2))
    assert not (tmp_path / "x").exists()
