"""The plumbing notebooks 04, 05 and 06 share (:mod:`pluralign.experiments._rlhf`): preference
pairs and their labels, the reward-model trio, PPO arms and their evaluation.

Checks are against hand computations (numpy z-scores, :func:`label_pairs` on them), seeded
rollouts redone here, or recorded calls of the trainers (their training is tested in
tests/training); models are 1-layer GPT-2s.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers import tiny_gpt2

from pluralign.core.simulate import label_pairs
from pluralign.core.stats import evaluate, pair_accuracy
from pluralign.data.text import make_prompts
from pluralign.experiments import _rlhf
from pluralign.experiments._rlhf import (
    Arm,
    Evaluation,
    PreferencePairs,
    fit_single_and_em,
    per_run_metrics,
    probe_truth,
    run_arm,
)
from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.training.generation import (
    GenerationSettings,
    Rollouts,
    kl_to_reference,
    sample_rollouts,
)
from pluralign.training.ppo import PPOSettings
from pluralign.training.reward_models import RewardModelSettings

GEN = GenerationSettings(max_new_tokens=5, temperature=0.7)
PROMPT_TEXTS = [
    "This movie was a great deal of fun",
    "I did not like the acting at all",
    "The plot is thin but the music works",
    "Worst film I have seen in years honestly",
    "A quiet film about two brothers and a dog",
]


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=200)


@pytest.fixture(scope="module")
def prompts(tok) -> list[list[int]]:
    ids = make_prompts(tok, PROMPT_TEXTS, n_tokens=4)
    assert len(ids) == len(PROMPT_TEXTS)
    return ids


def length_truth(roll: Rollouts) -> pd.DataFrame:
    """A two-group ground truth computable by hand: text length and (minus) token count."""
    return pd.DataFrame(
        {
            "long": np.array([len(t) for t in roll.texts], dtype=np.float64),
            "short": -roll.n_tokens.astype(np.float64),
        }
    )


def _rollouts(texts: list[str]) -> Rollouts:
    n = len(texts)
    return Rollouts(
        prompt_ids=[[0]] * n,
        continuation_ids=[[1]] * n,
        texts=texts,
        continuations=texts,
        n_tokens=np.ones(n, dtype=np.int64),
        stopped=np.zeros(n, dtype=bool),
    )


def _pairs(n: int = 10, n_train: int = 8, seed: int = 0) -> PreferencePairs:
    rng = np.random.default_rng(seed)
    truth_a = pd.DataFrame({"g0": rng.normal(size=n), "g1": rng.normal(2.0, 3.0, size=n)})
    truth_b = pd.DataFrame({"g0": rng.normal(size=n), "g1": rng.normal(size=n)})
    a = _rollouts([f"a{i}" for i in range(n)])
    b = _rollouts([f"b{i}" for i in range(n)])
    return PreferencePairs(a, b, truth_a, truth_b, n_train)


def _zscore(rows_a: np.ndarray, rows_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pooled = np.vstack([rows_a, rows_b])
    mean, std = pooled.mean(axis=0), pooled.std(axis=0)  # population std
    return (rows_a - mean) / std, (rows_b - mean) / std


# --------------------------------------------------------------------------- preference pairs


def test_preference_pairs_split_train_and_held_out() -> None:
    pairs = _pairs(n=10, n_train=8)
    np.testing.assert_array_equal(pairs.train, np.arange(8))
    np.testing.assert_array_equal(pairs.held, [8, 9])


def test_label_is_label_pairs_on_z_scores_over_all_sampled_pairs() -> None:
    pairs = _pairs()
    ta, tb = pairs.truth_a.to_numpy(), pairs.truth_b.to_numpy()
    za, zb = _zscore(ta, tb)  # over all 20 sampled answers, then the training rows
    expected = label_pairs(za[:8], zb[:8], [3, 2], 4, beta=2.0, seed=5)
    got = pairs.label([3, 2], 4, beta=2.0, seed=5)
    np.testing.assert_array_equal(got.user, expected.user)
    np.testing.assert_array_equal(got.pair, expected.pair)
    np.testing.assert_array_equal(got.user_group, expected.user_group)
    np.testing.assert_allclose(got.p_a, expected.p_a, rtol=1e-12)
    np.testing.assert_array_equal(got.a_wins, expected.a_wins)
    assert got.pair.max() < pairs.n_train  # held-out pairs are never labelled
    # held-out answers enter the z-scores: z over the training rows alone differs
    za_train, zb_train = _zscore(ta[:8], tb[:8])
    on_train = label_pairs(za_train, zb_train, [3, 2], 4, beta=2.0, seed=5)
    assert np.abs(on_train.p_a - got.p_a).max() > 1e-3


def test_label_of_a_constant_group_is_a_coin_flip() -> None:
    pairs = _pairs()
    on_all = pairs.label([3, 2], 4, 2.0, 5)
    constant = dataclasses.replace(
        pairs, truth_a=pairs.truth_a.assign(g1=1.0), truth_b=pairs.truth_b.assign(g1=1.0)
    )
    with pytest.warns(UserWarning, match=r"\['g1'\] are constant"):
        coin = constant.label([3, 2], 4, 2.0, 5)  # a constant truth: coin flips, named
    group = coin.user_group[coin.user]
    np.testing.assert_array_equal(coin.p_a[group == 1], 0.5)  # sigmoid(0): exact
    np.testing.assert_allclose(coin.p_a[group == 0], on_all.p_a[group == 0], rtol=1e-12)


def test_comparisons_are_the_labelled_training_texts() -> None:
    pairs = _pairs()
    labels = pairs.label([3, 2], 4, 2.0, 5)
    chosen, rejected = pairs.comparisons(labels)
    assert len(chosen) == len(rejected) == 20
    for c, r, p, a_wins in zip(chosen, rejected, labels.pair, labels.a_wins, strict=True):
        assert (c, r) == ((f"a{p}", f"b{p}") if a_wins else (f"b{p}", f"a{p}"))


def test_heldout_accuracy_scores_only_the_held_out_pairs(monkeypatch) -> None:
    pairs = _pairs(n=10, n_train=6)
    planted = {f"a{i}": float(i % 3) for i in range(10)} | {f"b{i}": 1.0 for i in range(10)}
    calls: list[tuple[Any, list[str], int]] = []

    def fake_score(model, tokenizer, texts, max_length):
        calls.append((model, list(texts), max_length))
        return np.array([planted[t] for t in texts])

    monkeypatch.setattr(_rlhf, "score_texts", fake_score)
    got = pairs.heldout_accuracy("model", "tok", max_length=12)
    held = [6, 7, 8, 9]
    assert calls == [
        ("model", [f"a{i}" for i in held], 12),
        ("model", [f"b{i}" for i in held], 12),
    ]
    expected = pair_accuracy(
        np.array([planted[f"a{i}"] for i in held]),
        np.ones(4),
        pairs.truth_a.iloc[held],
        pairs.truth_b.iloc[held],
    )
    assert got.keys() == expected.keys() == {"g0", "g1"}
    for g in got:
        assert got[g] == pytest.approx(expected[g])


def test_sample_draws_both_sides_with_their_own_seeds(tok, prompts) -> None:
    policy = tiny_gpt2(tok, seed=0, init=0.5)
    pairs = PreferencePairs.sample(policy, tok, prompts, GEN, length_truth, seed=10)
    for side, seed in ((pairs.a, 11), (pairs.b, 12)):
        again = sample_rollouts(policy, tok, prompts, GEN.max_new_tokens, GEN.temperature, seed)
        assert side.continuation_ids == again.continuation_ids and side.texts == again.texts
    assert pairs.a.continuation_ids != pairs.b.continuation_ids  # two different samples
    pd.testing.assert_frame_equal(pairs.truth_a, length_truth(pairs.a))
    pd.testing.assert_frame_equal(pairs.truth_b, length_truth(pairs.b))
    assert pairs.n_train == int(0.8 * len(prompts)) == 4
    half = PreferencePairs.sample(policy, tok, prompts, GEN, length_truth, 10, train_fraction=0.5)
    assert half.n_train == 2


# --------------------------------------------------------------------------- reward models


SETTINGS = RewardModelSettings(
    num_train_epochs=1.0, learning_rate=1e-3, per_device_train_batch_size=4, max_length=24
)


def test_fit_single_and_em_trains_the_pooled_model_first(monkeypatch) -> None:
    events: list[Any] = []
    made = iter(range(100))

    def new_model():
        m = f"model{next(made)}"
        events.append(("new", m))
        return m

    def fake_fit(model, tokenizer, chosen, rejected, settings, seed):
        events.append(("fit", model, list(chosen), list(rejected), settings, seed))
        return f"fitted-{model}"

    def fake_em(chosen, rejected, users, n_groups, make_model, tokenizer, **kw):
        events.append(("em", list(chosen), list(users), n_groups, tokenizer, kw))
        return {"em_models": [make_model(k) for k in range(n_groups)]}

    monkeypatch.setattr(_rlhf, "fit_reward_model", fake_fit)
    monkeypatch.setattr(_rlhf, "fit_neural_em", fake_em)
    chosen, rejected, users = ["c0", "c1", "c2"], ["r0", "r1", "r2"], np.array([0, 1, 1])
    single, em = fit_single_and_em(
        chosen, rejected, users, new_model, "tok", SETTINGS, em_iters=4, seed=9, n_groups=3
    )
    assert single == "fitted-model0"
    assert events[:2] == [
        ("new", "model0"),
        ("fit", "model0", chosen, rejected, SETTINGS, 9),
    ]  # the pooled model draws its head from torch's RNG before EM does
    kind, em_chosen, em_users, n_groups, tokenizer, kw = events[2]
    assert (kind, em_chosen, em_users, n_groups, tokenizer) == ("em", chosen, [0, 1, 1], 3, "tok")
    assert kw == {
        "n_iter": 4,
        "seed": 9,
        "max_length": 24,
        "train_args": SETTINGS.trainer_args(),
        "progress": False,
    }
    assert em == {"em_models": ["model1", "model2", "model3"]}  # fresh models per group


# --------------------------------------------------------------------------- arms


BASE_PPO = PPOSettings(n_updates=4, batch_size=4, kl_coef=0.05, learning_rate=1e-4)


def test_arm_settings_apply_the_overrides_only() -> None:
    plain = Arm("single", "single", {}, seed=0)
    assert plain.settings(BASE_PPO) == BASE_PPO
    high = Arm("single_kl_high", "single", {}, 0, {"kl_coef": 0.3, "learning_rate": 2e-4})
    got = high.settings(BASE_PPO)
    assert (got.kl_coef, got.learning_rate) == (0.3, 2e-4)
    assert dataclasses.replace(got, kl_coef=0.05, learning_rate=1e-4) == BASE_PPO  # rest kept
    assert BASE_PPO.kl_coef == 0.05  # the base is not mutated
    with pytest.raises(TypeError):
        Arm("x", "single", {}, 0, {"not_a_setting": 1}).settings(BASE_PPO)
    with pytest.raises(ValueError, match="multiple of num_mini_batches"):
        Arm("x", "single", {}, 0, {"batch_size": 3}).settings(BASE_PPO)  # still validated


def test_run_arm_trains_then_evaluates_against_the_reference(tok, prompts, monkeypatch) -> None:
    trained = tiny_gpt2(tok, seed=2, init=0.5)
    ref = tiny_gpt2(tok, seed=1)
    calls: list[tuple] = []

    def fake_train_policy(policy, tokenizer, ppo_prompts, rewards, reference_texts, how,
                          settings, generation, workdir, seed, temperature, progress,
                          on_checkpoint):  # fmt: skip
        calls.append((policy, rewards, list(reference_texts), how, settings, generation,
                      workdir, seed, temperature, progress, on_checkpoint))  # fmt: skip
        log = pd.DataFrame({"update": [1, 2], "objective/kl": [0.1, 0.2]})
        return trained, log, None

    monkeypatch.setattr(_rlhf, "train_policy", fake_train_policy)
    ref_roll = sample_rollouts(ref, tok, prompts, GEN.max_new_tokens, GEN.temperature, 7)
    evaluation = Evaluation(prompts, length_truth, length_truth(ref_roll), seed=7, n_boot=50)
    rewards = {"long": lambda texts: np.zeros(len(texts))}
    arm = Arm("softmin_true", "softmin", rewards, 3, {"kl_coef": 0.3}, softmin_temperature=0.5)
    new = []
    log, row, roll = run_arm(
        arm, lambda: new.append(1) or "fresh", ref, tok, "ppo-prompts", ["ref text"], BASE_PPO,
        GEN, Path("work"), evaluation, progress=True,
    )  # fmt: skip
    assert new == [1]  # one fresh policy per arm
    assert calls == [
        ("fresh", rewards, ["ref text"], "softmin", dataclasses.replace(BASE_PPO, kl_coef=0.3),
         GEN, Path("work"), 3, 0.5, True, None),
    ]  # fmt: skip
    # evaluation rollouts: the trained policy on the evaluation prompts, evaluation's seed
    again = sample_rollouts(trained, tok, prompts, GEN.max_new_tokens, GEN.temperature, 7)
    assert roll.continuation_ids == again.continuation_ids and roll.texts == again.texts
    expected = evaluate(length_truth(roll), evaluation.truth_ref, 50, 7)
    assert {k: row[k] for k in ("run", "method", "seed", "kl_coef")} == {
        "run": "softmin_true",
        "method": "softmin",
        "seed": 3,
        "kl_coef": 0.3,
    }
    for k, v in expected.items():
        assert row[k] == pytest.approx(v, abs=1e-12, nan_ok=True), k
    kl = kl_to_reference(trained, ref, tok, roll, GEN.temperature)
    assert row["kl"] == pytest.approx(kl, rel=1e-6, abs=1e-9) and row["kl"] > 0
    assert row["mean_tokens"] == pytest.approx(roll.n_tokens.mean())
    assert row["stop_rate"] == pytest.approx(roll.stopped.mean())
    assert row["train_seconds"] >= 0
    assert row["seconds_per_update"] == pytest.approx(row["train_seconds"] / 4)
    assert log[["run", "method", "seed"]].drop_duplicates().values.tolist() == [
        ["softmin_true", "softmin", 3]
    ]
    assert log["update"].tolist() == [1, 2]


def test_probe_truth_reports_each_groups_mean_ground_truth(tok, prompts) -> None:
    policy = tiny_gpt2(tok, seed=0, init=0.5)
    probe = probe_truth(tok, prompts, GEN, length_truth, seed=4)
    got = probe(policy, 10)
    roll = sample_rollouts(policy, tok, prompts, GEN.max_new_tokens, GEN.temperature, 4)
    truth = length_truth(roll)
    assert got.keys() == {"gt_long", "gt_short"}
    assert got["gt_long"] == pytest.approx(truth["long"].mean())
    assert got["gt_short"] == pytest.approx(truth["short"].mean())
    assert probe(policy, 20) == got  # seeded: the same answer at every checkpoint


# --------------------------------------------------------------------------- metrics


def test_per_run_metrics_nest_means_over_seeds_and_round() -> None:
    results = pd.DataFrame(
        {
            "run": ["single", "single", "maxmin"],
            "method": ["single", "single", "maxmin_sample"],
            "seed": [0, 1, 0],
            "sentiment_reward": [0.10004, 0.20004, 0.123456],
            "sentiment_win_rate": [0.5, 0.75, 1 / 3],
            "concise_reward": [-0.5, -0.25, -0.987654],
            "concise_win_rate": [0.25, 0.25, 2 / 3],
            "kl": [1.0, 2.00002, 0.55557],
            "mean_tokens": [3.0, 4.12345, 5.0],
            "other": [9.0, 9.0, 9.0],
        }
    )
    got = per_run_metrics(results, ["sentiment", "concise"])
    assert list(got) == ["maxmin", "single"]  # sorted by run
    assert got["single"] == {
        "sentiment": {"reward": 0.15, "win_rate": 0.625},
        "concise": {"reward": -0.375, "win_rate": 0.25},
        "kl": 1.5,
        "mean_tokens": 3.562,
    }
    assert got["maxmin"] == {
        "sentiment": {"reward": 0.1235, "win_rate": 0.3333},
        "concise": {"reward": -0.9877, "win_rate": 0.6667},
        "kl": 0.5556,
        "mean_tokens": 5.0,
    }
    two = per_run_metrics(results, ["concise"], digits=2)
    assert two["maxmin"] == {
        "concise": {"reward": -0.99, "win_rate": 0.67},
        "kl": 0.56,
        "mean_tokens": 5.0,
    }
    assert all(isinstance(v, float) for v in (two["maxmin"]["kl"], got["single"]["kl"]))
