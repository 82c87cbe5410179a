"""Notebook 04's helpers: preference labelling, evaluation statistics and sequence log-probs.

Every check is against something computed independently here: hand values, closed forms,
planted ground truth, numpy/scipy, or a per-row forward pass of the model without padding.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import tiny_gpt2
from scipy import stats

from pluralign.core.simulate import PairLabels, label_pairs
from pluralign.core.stats import (
    bootstrap_ci,
    evaluate,
    pair_accuracy,
    standardize_columns,
    win_rates,
)
from pluralign.data.text import make_prompts
from pluralign.experiments import maxmin_gpt2 as exp
from pluralign.experiments._rlhf import Arm
from pluralign.experiments.maxmin_gpt2 import GROUPS, concise_reward, ground_truth
from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.pipeline.config import load_stage_config
from pluralign.pipeline.io import config_fingerprint
from pluralign.training.generation import (
    Rollouts,
    kl_to_reference,
    response_logprobs,
    sample_rollouts,
)

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=200)


@pytest.fixture(scope="module")
def policy(tok):
    return tiny_gpt2(tok, seed=0, init=0.5)


@pytest.fixture(scope="module")
def ref(tok):
    return tiny_gpt2(tok, seed=1)


def manual_logprob(model, prompt: list[int], response: list[int], temperature: float) -> float:
    """sum_t log softmax(logits / T)[response_t] from one unpadded row, in float64."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0].double()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return sum(float(logp[len(prompt) + i - 1, t]) for i, t in enumerate(response))


PROMPT_TEXTS = [
    "This movie was a great deal of fun",
    "I did not like the acting at all",
    "The plot is thin but the music works",
    "Worst film I have seen in years honestly",
]

# --------------------------------------------------------------------------- ground truth


def test_concise_reward_hand_values() -> None:
    np.testing.assert_allclose(concise_reward([3], 24), [-0.125])
    np.testing.assert_allclose(concise_reward([1, 12, 24], 24), [-1 / 24, -0.5, -1.0])
    out = concise_reward(np.array([3, 6], dtype=np.int64), 6)
    assert out.dtype == np.float64 and out.tolist() == [-0.5, -1.0]  # no integer division


def test_ground_truth_columns_come_from_their_sources() -> None:
    roll = Rollouts(
        prompt_ids=[[0], [0]],
        continuation_ids=[[5, 6], [7]],
        texts=["good", "bad"],
        continuations=["", ""],
        n_tokens=np.array([2, 1]),
        stopped=np.array([False, False]),
    )
    gt = ground_truth(roll, lambda texts: np.array([0.9 if t == "good" else 0.2 for t in texts]), 4)
    assert list(gt.columns) == list(GROUPS)
    np.testing.assert_allclose(gt["sentiment"], [0.9, 0.2])
    np.testing.assert_allclose(gt["concise"], [-0.5, -0.25])


# --------------------------------------------------------------------------- labelling


def test_label_pairs_shapes_users_and_distinct_pairs() -> None:
    rng = np.random.default_rng(0)
    n_pairs, users, per_user = 12, [3, 2, 4], 5
    gt_a, gt_b = rng.normal(size=(n_pairs, 3)), rng.normal(size=(n_pairs, 3))
    lab = label_pairs(gt_a, gt_b, users, per_user, beta=1.5, seed=7)
    n_rows = sum(users) * per_user
    for arr in (lab.user, lab.pair, lab.a_wins, lab.p_a):
        assert arr.shape == (n_rows,)
    assert lab.a_wins.dtype == bool
    # users numbered group by group: 0,1,2 -> group 0; 3,4 -> 1; 5..8 -> 2
    assert lab.user_group.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert np.bincount(lab.user).tolist() == [per_user] * sum(users)
    for u in range(sum(users)):
        mine = lab.pair[lab.user == u]
        assert len(set(mine.tolist())) == per_user  # distinct pairs per user
        assert mine.min() >= 0 and mine.max() < n_pairs
    # not every user got the same pairs (they are drawn per user)
    assert len({tuple(sorted(lab.pair[lab.user == u])) for u in range(sum(users))}) > 1
    # p_a recomputed from the user's own group column
    group_of_user = np.repeat(np.arange(3), users)
    for j in range(n_rows):
        k, p = group_of_user[lab.user[j]], lab.pair[j]
        expected = 1.0 / (1.0 + math.exp(-1.5 * (gt_a[p, k] - gt_b[p, k])))
        assert lab.p_a[j] == pytest.approx(expected, rel=1e-12)
    # deterministic by seed, different across seeds
    again = label_pairs(gt_a, gt_b, users, per_user, beta=1.5, seed=7)
    assert np.array_equal(again.pair, lab.pair) and np.array_equal(again.a_wins, lab.a_wins)
    other = label_pairs(gt_a, gt_b, users, per_user, beta=1.5, seed=8)
    assert not np.array_equal(other.pair, lab.pair)


def test_label_pairs_is_a_calibrated_bradley_terry_draw() -> None:
    rng = np.random.default_rng(1)
    n_pairs = 40
    gt_a, gt_b = rng.normal(size=(n_pairs, 2)) + 0.4, rng.normal(size=(n_pairs, 2))
    lab = label_pairs(gt_a, gt_b, [150, 100], 30, beta=2.0, seed=3)
    wins = lab.a_wins.astype(float)
    assert lab.p_a.mean() > 0.55  # away from 1/2, so "a_wins = u > p_a" would fail below
    # overall and within bins of p_a: observed wins match sum(p) within 4 sd
    edges = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    masks = [np.ones_like(wins, bool)]
    masks += [(lab.p_a >= lo) & (lab.p_a < hi) for lo, hi in itertools.pairwise(edges)]
    for m in masks:
        if m.sum() < 200:
            continue
        p = lab.p_a[m]
        z = (wins[m].sum() - p.sum()) / math.sqrt((p * (1 - p)).sum())
        assert abs(z) < 4, (m.sum(), z)
    # pairs are drawn uniformly: chi-square on their counts
    counts = np.bincount(lab.pair, minlength=n_pairs)
    assert stats.chisquare(counts).pvalue > 1e-4


def test_label_pairs_groups_use_their_own_column() -> None:
    n_pairs = 10
    gt_a = np.column_stack([np.full(n_pairs, 4.0), np.full(n_pairs, -4.0)])
    gt_b = -gt_a  # group 0: a much better; group 1: b much better
    lab = label_pairs(gt_a, gt_b, [5, 7], 8, beta=1.0, seed=0)
    g = lab.user_group[lab.user]
    assert lab.a_wins[g == 0].mean() > 0.99
    assert lab.a_wins[g == 1].mean() < 0.01
    np.testing.assert_allclose(lab.p_a[g == 0], 1 / (1 + math.exp(-8.0)))
    np.testing.assert_allclose(lab.p_a[g == 1], 1 / (1 + math.exp(8.0)))


def test_label_pairs_rejects_bad_arguments() -> None:
    a, b = np.zeros((5, 2)), np.zeros((5, 2))
    with pytest.raises(ValueError, match="equal"):
        label_pairs(a, np.zeros((4, 2)), [1, 1], 2, 1.0, 0)
    with pytest.raises(ValueError, match="equal"):
        label_pairs(np.zeros(5), np.zeros(5), [1], 2, 1.0, 0)
    with pytest.raises(ValueError, match=r"comparisons per user must be in 1\.\.5 .*got 6"):
        label_pairs(a, b, [1, 1], 6, 1.0, 0)
    with pytest.raises(ValueError, match=r"comparisons per user must be in 1\.\.5 .*got 0"):
        label_pairs(a, b, [1, 1], 0, 1.0, 0)
    for beta in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            label_pairs(a, b, [1, 1], 2, beta, 0)
    with pytest.raises(ValueError, match=r"users_per_group has 3 entries for K=2 groups"):
        label_pairs(a, b, [1, 1, 1], 2, 1.0, 0)
    for users in ([0, 0], [2, -1]):
        with pytest.raises(ValueError, match="users_per_group must be non-negative ints"):
            label_pairs(a, b, users, 2, 1.0, 0)
    label_pairs(a, b, [1, 1], 5, 1.0, 0)  # per_user == n_pairs is allowed


def test_standardize_columns_pools_both_frames() -> None:
    a = pd.DataFrame({"sentiment": [0.1, 0.9, 0.5], "concise": [-0.5, -1.0, -0.25]})
    b = pd.DataFrame({"sentiment": [0.3, 0.7], "concise": [-0.75, -1.0]}, index=[0, 1])
    za, zb = standardize_columns(a, b)
    assert za.shape == (3, 2) and zb.shape == (2, 2)
    pooled = np.vstack([a.to_numpy(), b.to_numpy()])
    z = np.vstack([za, zb])
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), 1.0, rtol=1e-12)
    expected = (pooled - pooled.mean(0)) / pooled.std(0)
    np.testing.assert_allclose(z, expected, rtol=1e-12)
    # b's own statistics would give other z-scores: the pooling matters
    own = (b.to_numpy() - b.to_numpy().mean(0)) / b.to_numpy().std(0)
    assert np.abs(zb - own).max() > 0.1


def test_standardize_columns_names_a_constant_column_and_zeroes_it() -> None:
    """A constant ground truth has no ranking to learn: a warning names the column and its
    z-scores are 0 (centred, not scaled: a BT draw on it is a coin flip); the other columns
    are z-scored as usual. Constant means over the pooled rows, not per side."""
    a = pd.DataFrame({"sentiment": [0.1, 0.9, 0.5], "c": 3.0})
    b = pd.DataFrame({"sentiment": [0.3, 0.7], "c": 3.0})
    with pytest.warns(UserWarning, match=r"columns \['c'\] are constant"):
        za, zb = standardize_columns(a, b)
    z = np.vstack([za, zb])
    assert np.all(np.isfinite(z)) and np.all(z[:, 1] == 0.0)  # (3 - 3) / 1: exactly 0
    pooled = np.concatenate([a["sentiment"], b["sentiment"]])
    np.testing.assert_allclose(z[:, 0], (pooled - pooled.mean()) / pooled.std(), rtol=1e-12)
    varies_in_a_only = pd.DataFrame({"sentiment": [0.3, 0.7], "c": [3.0, 3.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pooled, c is not constant: no warning
        za, zb = standardize_columns(a.assign(c=[3.0, 3.0, 4.0]), varies_in_a_only)
    assert np.vstack([za, zb])[:, 1].std() == pytest.approx(1.0, rel=1e-12)
    with pytest.raises(ValueError, match=r"columns \['sentiment'\] hold NaN or inf"):
        standardize_columns(a.assign(sentiment=[0.1, np.nan, 0.5], c=[1.0, 2.0, 3.0]), b)


def test_pair_accuracy_by_hand() -> None:
    reward_a = np.array([1.0, 0.0, 2.0, 5.0])
    reward_b = np.array([0.0, 1.0, 2.0, 3.0])  # signs: +, -, tie, +
    gt_a = pd.DataFrame({"sentiment": [0.9, 0.8, 0.1, 0.5], "concise": [0.0, -1.0, -0.5, 0.0]})
    gt_b = pd.DataFrame({"sentiment": [0.1, 0.2, 0.4, 0.5], "concise": [-0.5, -0.5, -0.5, -0.1]})
    # sentiment gt signs +, +, -, tie(skipped): agree T, F, F (a reward tie is no agreement)
    # concise gt signs +, -, tie(skipped), +: agree T, T, T
    acc = pair_accuracy(reward_a, reward_b, gt_a, gt_b)
    assert acc["sentiment"] == pytest.approx(1 / 3)
    assert acc["concise"] == pytest.approx(1.0)
    ties = pair_accuracy(reward_a, reward_b, gt_a[["concise"]] * 0, gt_b[["concise"]] * 0)
    assert math.isnan(ties["concise"])


def test_chosen_rejected_follows_a_wins() -> None:
    lab = PairLabels(
        user=np.array([0, 0, 1, 1]),
        pair=np.array([0, 2, 1, 2]),
        a_wins=np.array([True, False, True, True]),
        user_group=np.array([0, 1]),
        p_a=np.full(4, 0.5),
    )
    chosen, rejected = lab.chosen_rejected(["a0", "a1", "a2"], ["b0", "b1", "b2"])
    assert chosen == ["a0", "b2", "a1", "a2"]
    assert rejected == ["b0", "a2", "b1", "b2"]


# --------------------------------------------------------------------------- evaluation


def test_bootstrap_ci_closed_forms() -> None:
    x = np.random.default_rng(0).normal(2.0, 3.0, size=2000)
    m, lo, hi = bootstrap_ci(x, n_boot=2000, seed=0)
    assert m == pytest.approx(x.mean(), rel=1e-12)  # the point estimate is the plain mean
    assert lo < m < hi
    expected_width = 2 * 1.96 * x.std(ddof=1) / math.sqrt(x.size)
    assert (hi - lo) == pytest.approx(expected_width, rel=0.15)
    # seeded: the same seed reproduces itself bitwise, another seed resamples differently
    assert bootstrap_ci(x, 2000, seed=0) == (m, lo, hi)
    assert bootstrap_ci(x, 2000, seed=1)[1:] != (lo, hi)
    # a narrower level gives a narrower interval (same seed: the same resamples)
    _, lo50, hi50 = bootstrap_ci(x, 2000, seed=0, level=0.5)
    assert lo < lo50 < hi50 < hi
    # two points: resampled means are 0, 1/2, 1 with prob 1/4, 1/2, 1/4 (exact in binary)
    assert bootstrap_ci(np.array([0.0, 1.0]), 4000, seed=0) == (0.5, 0.0, 1.0)
    assert bootstrap_ci(np.array([0.0, 1.0]), 4000, seed=0, level=0.4) == (0.5, 0.5, 0.5)
    # constant values: a degenerate interval at the value
    assert bootstrap_ci(np.full(7, 0.25), 500, seed=0) == (0.25, 0.25, 0.25)
    # one value: no interval (NaN bounds), the point estimate still defined
    one = bootstrap_ci(np.array([0.7]), 500, seed=0)
    assert one[0] == 0.7 and math.isnan(one[1]) and math.isnan(one[2])
    for bad in (np.array([]), np.zeros((3, 2))):
        with pytest.raises(ValueError, match="non-empty 1-D"):
            bootstrap_ci(bad, 100, seed=0)


def test_win_rates_and_evaluate_by_hand() -> None:
    pol = pd.DataFrame({"sentiment": [0.9, 0.5, 0.1], "concise": [-1.0, -0.5, -0.1]})
    ref = pd.DataFrame({"sentiment": [0.5, 0.5, 0.5], "concise": [-0.5, -0.5, -0.5]})
    wins = win_rates(pol, ref)
    assert list(wins.columns) == ["sentiment", "concise"]
    assert wins["sentiment"].tolist() == [1.0, 0.5, 0.0]
    assert wins["concise"].tolist() == [0.0, 0.5, 1.0]

    pol2 = pd.DataFrame({"sentiment": [0.9, 0.7, 0.5, 0.1], "concise": [-0.25] * 4})
    ref2 = pd.DataFrame({"sentiment": [0.5, 0.5, 0.5, 0.5], "concise": [-0.5] * 4})
    out = evaluate(pol2, ref2, n_boot=200, seed=0)
    names = [f"{g}_{q}" for g in ("sentiment", "concise") for q in ("reward", "win_rate")]
    assert set(out) == {n + s for n in names for s in ("", "_lo", "_hi")}
    assert out["sentiment_reward"] == pytest.approx(0.55)
    assert out["sentiment_win_rate"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    assert out["concise_reward"] == pytest.approx(-0.25)
    assert out["concise_win_rate"] == 1.0
    assert out["concise_win_rate_lo"] == out["concise_win_rate_hi"] == 1.0  # constant
    for n in names:
        assert out[n + "_lo"] <= out[n] <= out[n + "_hi"]
    assert out["sentiment_reward_lo"] < out["sentiment_reward_hi"]


# --------------------------------------------------------------------------- log-probs and KL


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_response_logprobs_match_unpadded_rows(tok, policy, temperature) -> None:
    pad, eos = tok.pad_token_id, tok.eos_token_id
    prompt_len = 3
    rows = [
        [eos, 40, 41, 50, 51, 52, eos],  # 4 response tokens, EOS included
        [eos, 60, 61, 70, 71],  # 2
        [eos, 80, 81, 90],  # 1
    ]
    width = max(map(len, rows))
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    got = response_logprobs(policy, ids, prompt_len, pad, temperature)
    assert got.shape == (3,)
    expected = [manual_logprob(policy, r[:prompt_len], r[prompt_len:], temperature) for r in rows]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-4)
    # the model is peaked enough that T matters
    if temperature != 1.0:
        at_one = [manual_logprob(policy, r[:prompt_len], r[prompt_len:], 1.0) for r in rows]
        assert np.abs(np.array(expected) - at_one).min() > 0.1


def test_kl_to_reference_matches_manual_monte_carlo(tok, policy, ref) -> None:
    eos = tok.eos_token_id
    roll = Rollouts(
        prompt_ids=[[eos, 40, 41], [eos, 60, 61], [eos, 80, 81]],
        continuation_ids=[[50, 51, 52, 53], [70, eos], [90]],
        texts=["", "", ""],
        continuations=["", "", ""],
        n_tokens=np.array([4, 2, 1]),
        stopped=np.array([False, True, False]),
    )
    t = 0.7
    expected = np.mean(
        [
            manual_logprob(policy, p, c, t) - manual_logprob(ref, p, c, t)
            for p, c in zip(roll.prompt_ids, roll.continuation_ids, strict=True)
        ]
    )
    for bs in (2, 64):  # batches of different widths
        got = kl_to_reference(policy, ref, tok, roll, t, batch_size=bs)
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-4)
    bad = copy.copy(roll)
    bad.prompt_ids = [[eos, 40], [eos, 60, 61], [eos, 80, 81]]
    with pytest.raises(ValueError, match="one length"):
        kl_to_reference(policy, ref, tok, bad, t)


def test_kl_to_reference_on_sampled_rollouts(tok, policy, ref) -> None:
    prompts = make_prompts(tok, PROMPT_TEXTS, n_tokens=4) * 6
    assert len(prompts) == 24 and len({len(p) for p in prompts}) == 1
    roll = sample_rollouts(policy, tok, prompts, max_new_tokens=5, temperature=0.7, seed=0)
    # the rollouts are consistent with their own token ids
    assert len(roll) == 24
    for p, c, n, s, text in zip(
        roll.prompt_ids, roll.continuation_ids, roll.n_tokens, roll.stopped, roll.texts, strict=True
    ):
        assert n == len(c) and 1 <= n <= 5
        assert s == (c[-1] == tok.eos_token_id) and c[:-1].count(tok.eos_token_id) == 0
        assert text == tok.decode(p[1:]) + tok.decode([i for i in c if i != tok.eos_token_id])
    # same weights: exactly zero; different weights: positive and = the manual estimate
    assert kl_to_reference(policy, copy.deepcopy(policy), tok, roll, 0.7) == 0.0
    kl = kl_to_reference(policy, ref, tok, roll, 0.7)
    manual = np.mean(
        [
            manual_logprob(policy, p, c, 0.7) - manual_logprob(ref, p, c, 0.7)
            for p, c in zip(roll.prompt_ids[:2], roll.continuation_ids[:2], strict=True)
        ]
    )
    first_two = copy.copy(roll)
    first_two.prompt_ids, first_two.continuation_ids = (
        roll.prompt_ids[:2],
        roll.continuation_ids[:2],
    )
    assert kl_to_reference(policy, ref, tok, first_two, 0.7) == pytest.approx(manual, rel=1e-5)
    assert kl > 1.0  # a peaked policy against a near-uniform reference


# --------------------------------------------------------------------------- fingerprint


def test_config_fingerprint_is_stable_and_sensitive() -> None:
    base = ("04_maxmin_ppo_gpt2", {"seed": 0, "ratio_grid": [2, 4], "lr": 1e-4})
    fp = config_fingerprint(*base)
    assert len(fp) == 12 and all(ch in "0123456789abcdef" for ch in fp)
    assert (
        config_fingerprint("04_maxmin_ppo_gpt2", {"lr": 1e-4, "ratio_grid": [2, 4], "seed": 0})
        == fp
    )
    changed = [
        ("04_other", base[1]),
        (base[0], {**base[1], "seed": 1}),
        (base[0], {**base[1], "ratio_grid": [2, 5]}),
        (base[0], {**base[1], "lr": 2e-4}),
        (base[0], {**base[1], "extra": None}),
        (*base, "more"),
        (base[0],),
    ]
    fps = {config_fingerprint(*parts) for parts in changed}
    assert fp not in fps and len(fps) == len(changed)


# --------------------------------------------------------------------------- the design


@pytest.fixture
def cfg(tiny_params: Path) -> exp.Config:
    return load_stage_config("maxmin_gpt2", exp.Config, tiny_params, "cpu")


def test_config_loads_nested_sections_and_needs_the_main_ratio(cfg: exp.Config) -> None:
    assert cfg.generation.max_new_tokens == 6 and cfg.ppo.n_updates == 2
    assert cfg.reward_model.max_length == 16
    assert cfg.main_ratio == 2 and cfg.main_ratio in cfg.ratio_grid  # 4 : 2 users
    with pytest.raises(ValueError, match=r"ratio_grid \[1, 4\] must hold the main ratio .* = 2"):
        dataclasses.replace(cfg, ratio_grid=[1, 4])
    odd = dataclasses.replace(cfg, users_majority=30, users_minority=3, ratio_grid=[10])
    assert odd.main_ratio == 10


def test_arms_list_the_runs_in_the_documented_order(cfg: exp.Config) -> None:
    cfg = dataclasses.replace(cfg, seeds=[3, 4], ratio_grid=[4, 2, 1], kl_coef_high=0.7)

    def reward(tag: str):
        return lambda texts: np.full(len(texts), len(tag), dtype=np.float64)

    single = {r: {"single": reward(f"s{r}")} for r in (1, 2, 4)}
    em = {r: {"em0:sentiment": reward(f"e{r}"), "em1:concise": reward(f"f{r}")} for r in (1, 2, 4)}
    true = {g: reward(g) for g in GROUPS}
    runs = exp.arms(cfg, single, em, true)
    assert all(isinstance(a, Arm) for a in runs)
    assert [(a.name, a.how, a.seed) for a in runs] == [
        ("single", "single", 3),
        ("single", "single", 4),
        ("maxmin_em", "maxmin_sample", 3),
        ("maxmin_em", "maxmin_sample", 4),
        ("maxmin_true", "maxmin_sample", 3),
        ("maxmin_true", "maxmin_sample", 4),
        ("maxmin_batch_true", "maxmin_batch", 3),
        ("softmin_true", "softmin", 3),
        ("single_kl_high", "single", 3),
        ("maxmin_true_kl_high", "maxmin_sample", 3),
        ("single_ratio_1", "single", 3),
        ("maxmin_em_ratio_1", "maxmin_sample", 3),
        ("single_ratio_4", "single", 3),
        ("maxmin_em_ratio_4", "maxmin_sample", 3),
    ]
    by_name = {a.name: a for a in runs}  # the last seed of each name
    assert by_name["single"].rewards is single[2] and by_name["maxmin_em"].rewards is em[2]
    assert by_name["maxmin_true"].rewards is true and by_name["softmin_true"].rewards is true
    assert by_name["single_ratio_1"].rewards is single[1]
    assert by_name["maxmin_em_ratio_4"].rewards is em[4]
    assert by_name["softmin_true"].softmin_temperature == cfg.softmin_temperature
    assert {a.softmin_temperature for a in runs if a.name != "softmin_true"} == {0.0}
    high = [a for a in runs if a.ppo_overrides]
    assert [a.name for a in high] == ["single_kl_high", "maxmin_true_kl_high"]
    for a in runs:
        expected = 0.7 if a.ppo_overrides else cfg.ppo.kl_coef
        assert a.settings(cfg.ppo).kl_coef == expected
        assert a.settings(cfg.ppo).n_updates == cfg.ppo.n_updates
    # ratio_of inverts the naming of the sweep
    assert {a.name: exp.ratio_of(a.name, cfg.main_ratio) for a in runs} == {
        "single": 2,
        "maxmin_em": 2,
        "maxmin_true": None,
        "maxmin_batch_true": None,
        "softmin_true": None,
        "single_kl_high": None,
        "maxmin_true_kl_high": None,
        "single_ratio_1": 1,
        "maxmin_em_ratio_1": 1,
        "single_ratio_4": 4,
        "maxmin_em_ratio_4": 4,
    }


def test_em_rewards_are_named_by_model_and_the_group_it_holds() -> None:
    models = ["m0", "m1", "m2"]
    named = exp.em_rewards(models, [1, 0, 1], lambda m: f"score({m})")
    assert named == {
        "em0:concise": "score(m0)",
        "em1:sentiment": "score(m1)",
        "em2:concise": "score(m2)",
    }
    with pytest.raises(ValueError):
        exp.em_rewards(models, [0, 1], str)  # one group per model


def test_truth_of_is_ground_truth_as_a_callable() -> None:
    roll = Rollouts(
        prompt_ids=[[0], [0], [0]],
        continuation_ids=[[5], [6, 7, 8], [9, 9]],
        texts=["a", "bb", "ccc"],
        continuations=["", "", ""],
        n_tokens=np.array([1, 3, 2]),
        stopped=np.array([True, False, False]),
    )

    def sentiment(texts):
        return np.array([len(t) / 10 for t in texts])

    got = exp.truth_of(sentiment, 3)(roll)
    pd.testing.assert_frame_equal(got, ground_truth(roll, sentiment, 3))
    np.testing.assert_allclose(got["concise"], [-1 / 3, -1.0, -2 / 3])
    np.testing.assert_allclose(got["sentiment"], [0.1, 0.2, 0.3])
