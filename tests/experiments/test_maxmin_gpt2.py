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


# --------------------------------------------------------------------------- the config


@pytest.fixture
def cfg(tiny_params: Path) -> exp.Config:
    return load_stage_config("maxmin_gpt2", exp.Config, tiny_params, "cpu")


def test_config_loads_from_the_tiny_params_and_needs_the_main_ratio(cfg: exp.Config) -> None:
    # tiny_overrides.yaml over params.yaml's shared keys
    assert cfg.generation.max_new_tokens == 6 and cfg.ppo.n_updates == 2
    assert cfg.ppo.learning_rate == 1e-4 and cfg.ppo.kl_coef == 0.05  # override and shared
    assert cfg.gentle_ppo == exp.GentlePPO(learning_rate=5e-5, n_updates=3)
    assert cfg.gentle_ppo.overrides() == {"learning_rate": 5e-5, "n_updates": 3}
    assert (cfg.heldout_fraction, cfg.em_folds, cfg.text_max_length) == (0.5, 2, 16)
    assert (cfg.oracle_ridge, cfg.text_ridge) == (0.01, 10.0)
    assert cfg.seeds == [0] and cfg.ratio_grid == [1, 2]
    assert cfg.main_ratio == 2  # 4 : 2 users
    with pytest.raises(
        ValueError,
        match=r"ratio_grid \[1, 4\] must hold the main ratio users_majority / users_minority = 2",
    ):
        dataclasses.replace(cfg, ratio_grid=[1, 4])
    paper_ratio = dataclasses.replace(cfg, users_majority=30, users_minority=3, ratio_grid=[10])
    assert paper_ratio.main_ratio == 10


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_config_needs_a_heldout_fraction_strictly_between_0_and_1(
    cfg: exp.Config, fraction: float
) -> None:
    with pytest.raises(ValueError, match=r"heldout_fraction must be in \(0, 1\)"):
        dataclasses.replace(cfg, heldout_fraction=fraction)
    assert dataclasses.replace(cfg, heldout_fraction=0.25).heldout_fraction == 0.25


# --------------------------------------------------------------------------- features


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


def test_token_counter_counts_each_text_without_special_tokens(tok) -> None:
    texts = ["This movie was great", "", " a  b c", "Worst film I have seen in years honestly"]
    got = exp.token_counter(tok)(texts)
    expected = [len(tok(t, add_special_tokens=False).input_ids) for t in texts]
    assert got.dtype == np.float64
    assert got.tolist() == expected
    assert expected[1] == 0 and min(expected[0], expected[3]) > 3  # the texts differ in length


def lookup(table: dict[str, list[float]], calls: list[list[str]] | None = None):
    """A raw feature function that returns known rows per text and records its calls."""

    def raw(texts: list[str]) -> np.ndarray:
        if calls is not None:
            calls.append(list(texts))
        return np.array([table[t] for t in texts], dtype=np.float64)

    return raw


# norm texts: column means (3, 5, 5); population stds sqrt(8/3), 0 (-> 1), sqrt(26/3)
NORM = {"a": [1.0, 5.0, 2.0], "b": [3.0, 5.0, 4.0], "c": [5.0, 5.0, 9.0]}
# their z-scores by hand: x -> (1, 2, 0), y -> (-1, 0, 2)
QUERY = {
    "x": [3.0 + math.sqrt(8 / 3), 7.0, 5.0],
    "y": [3.0 - math.sqrt(8 / 3), 5.0, 5.0 + 2 * math.sqrt(26 / 3)],
}


def test_feature_map_z_scores_with_the_norm_texts_statistics() -> None:
    fm = exp.FeatureMap(lookup({**NORM, **QUERY}), ["a", "b", "c"])
    np.testing.assert_allclose(fm.mean, [3.0, 5.0, 5.0])
    np.testing.assert_allclose(fm.std, [math.sqrt(8 / 3), 1.0, math.sqrt(26 / 3)])
    got = fm(["x", "y"])
    np.testing.assert_allclose(got, [[1.0, 2.0, 0.0], [-1.0, 0.0, 2.0]], atol=1e-12)
    # the norm texts themselves: mean 0, and std 1 except the constant column (0, no NaN)
    z = fm(["a", "b", "c"])
    assert np.all(np.isfinite(z))
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=0), [1.0, 0.0, 1.0], atol=1e-12)
    # transform z-scores raw rows computed elsewhere the same way
    np.testing.assert_allclose(fm.transform(np.array([QUERY["x"], QUERY["y"]])), got)


def test_feature_map_caches_only_the_last_batch() -> None:
    calls: list[list[str]] = []
    fm = exp.FeatureMap(lookup({**NORM, **QUERY}, calls), ["a", "b", "c"])
    assert calls == [["a", "b", "c"]]  # the norm texts, once
    first = fm(["x", "y"])
    second = fm(["x", "y"])  # an equal batch in a new list: served from the cache
    assert len(calls) == 2 and calls[-1] == ["x", "y"]
    np.testing.assert_array_equal(first, second)
    fm(["y", "x"])  # another batch (same texts, other order) is computed
    assert len(calls) == 3 and calls[-1] == ["y", "x"]
    again = fm(["x", "y"])  # only the last batch is kept
    assert len(calls) == 4
    np.testing.assert_array_equal(again, first)


def test_oracle_raw_linear_reward_and_concise_of_text() -> None:
    texts = ["one", "three words here", "two words"]

    def sentiment(t: list[str]) -> np.ndarray:
        return np.array([0.25, 0.5, 0.75])[: len(t)]

    def count(t: list[str]) -> np.ndarray:
        return np.array([len(s.split()) for s in t], dtype=np.float64)

    raw = exp.oracle_raw(sentiment, count)(texts)
    assert raw.shape == (3, 2) and raw.dtype == np.float64
    np.testing.assert_array_equal(raw[:, 0], [0.25, 0.5, 0.75])  # P(positive)
    np.testing.assert_array_equal(raw[:, 1], [1.0, 3.0, 2.0])  # tokens

    fm = exp.FeatureMap(lookup({**NORM, **QUERY}), ["a", "b", "c"])
    reward = exp.LinearReward(fm, np.array([0.5, -1.0, 3.0]))
    # z(x) = (1, 2, 0), z(y) = (-1, 0, 2): 0.5 - 2 + 0 and -0.5 + 0 + 6
    np.testing.assert_allclose(reward(["x", "y"]), [-1.5, 5.5])

    concise = exp.concise_of_text(count, max_new_tokens=4)
    np.testing.assert_allclose(concise(texts), [-0.25, -0.75, -0.5])


def test_concise_of_text_with_the_token_counter(tok) -> None:
    texts = ["I liked it", "The plot is thin but the music works"]
    n = [len(tok(t, add_special_tokens=False).input_ids) for t in texts]
    got = exp.concise_of_text(exp.token_counter(tok), 8)(texts)
    np.testing.assert_allclose(got, [-n[0] / 8, -n[1] / 8])


# --------------------------------------------------------------------------- reward learning


def test_comparison_features_pick_rows_by_pair_and_winner() -> None:
    X_a = np.arange(6, dtype=np.float64).reshape(3, 2)  # pair p: (2p, 2p + 1)
    X_b = X_a + 10.0
    lab = PairLabels(
        user=np.array([0, 0, 1, 1]),
        pair=np.array([0, 2, 1, 2]),
        a_wins=np.array([True, False, True, True]),
        user_group=np.array([0, 1]),
        p_a=np.full(4, 0.5),
    )
    chosen, rejected = exp.comparison_features(X_a, X_b, lab)
    np.testing.assert_array_equal(chosen, [[0, 1], [14, 15], [2, 3], [4, 5]])
    np.testing.assert_array_equal(rejected, [[10, 11], [4, 5], [12, 13], [14, 15]])


def ridge_bt(chosen: np.ndarray, rejected: np.ndarray, lam: float) -> np.ndarray:
    """argmin -sum log sigma(theta . (w - l)) + lam / 2 |theta|^2 by scipy's BFGS."""
    from scipy.optimize import minimize
    from scipy.special import log_expit

    Z = chosen - rejected

    def f(theta):
        return -log_expit(Z @ theta).sum() + 0.5 * lam * theta @ theta

    def grad(theta):
        return -Z.T @ (1 - np.exp(log_expit(Z @ theta))) + lam * theta

    res = minimize(f, np.zeros(Z.shape[1]), jac=grad, method="BFGS", options={"gtol": 1e-10})
    return res.x


@pytest.fixture(scope="module")
def planted_tier():
    """300 pairs of 2-D features; 12 majority users want feature 0 (the "sentiment" group),
    4 minority users feature 1 ("concise"): BT labels on that ground truth, beta 3."""
    rng = np.random.default_rng(0)
    X_a, X_b = rng.normal(size=(300, 2)), rng.normal(size=(300, 2))
    labels = label_pairs(X_a, X_b, [12, 4], 40, beta=3.0, seed=1)
    fit = exp.fit_tier(X_a, X_b, labels, ridge=0.01, em_iters=10, em_folds=2, seed=0)
    return X_a, X_b, labels, fit


def test_fit_tier_on_a_planted_mixture(planted_tier) -> None:
    X_a, X_b, labels, fit = planted_tier
    chosen, rejected = exp.comparison_features(X_a, X_b, labels)
    group_of_row = labels.user_group[labels.user]
    # pooled and per-group thetas are the ridge BT fits on their comparisons
    np.testing.assert_allclose(fit.pooled, ridge_bt(chosen, rejected, 0.01), atol=1e-5)
    for k, g in enumerate(GROUPS):
        rows = group_of_row == k
        expected = ridge_bt(chosen[rows], rejected[rows], 0.01)
        np.testing.assert_allclose(fit.per_group[g], expected, atol=1e-5)
    assert list(fit.per_group) == list(GROUPS)
    # each group's own reward finds its planted direction (3 e_k)
    for k, g in enumerate(GROUPS):
        theta = fit.per_group[g]
        assert abs(theta[k] - 3.0) < 1.0 and abs(theta[1 - k]) < 0.75, (g, theta)
    # the pooled reward leans to the majority's feature but keeps some of the minority's
    assert fit.pooled[0] > 2 * fit.pooled[1] > 0
    # EM finds the planted groups from the round-robin start (which mixes them)
    assert fit.em_ari == pytest.approx(1.0) and fit.in_sample_ari == pytest.approx(1.0)
    assert sorted(fit.em_groups) == [0, 1]
    assert fit.em.moved_from_start > 0 and fit.in_sample_moved > 0
    truth = labels.user_group[fit.em.user_ids]
    for k, g in enumerate(fit.em_groups):
        assert np.all(truth[fit.em.assignment == k] == g)
        assert int(np.argmax(fit.em.models[k])) == g  # model k leans to its group's feature
        # refitted on all comparisons of its users: here the true group's, so = per_group
        np.testing.assert_allclose(fit.em.models[k], fit.per_group[GROUPS[g]], atol=1e-5)


def test_em_rewards_are_named_by_model_and_the_group_it_holds(planted_tier) -> None:
    *_, fit = planted_tier
    fm = exp.FeatureMap(lookup({**NORM, **QUERY}), ["a", "b", "c"])
    named = exp.em_rewards(fit, fm)
    expected_names = [f"em{k}:{GROUPS[g]}" for k, g in enumerate(fit.em_groups)]
    assert list(named) == expected_names
    assert sorted(n.split(":")[1] for n in named) == ["concise", "sentiment"]
    for k, reward in enumerate(named.values()):
        assert isinstance(reward, exp.LinearReward)
        assert reward.features is fm and reward.theta is fit.em.models[k]
    # two models holding the same group keep distinct names by their index
    same = dataclasses.replace(fit, em_groups=[1, 1])
    assert list(exp.em_rewards(same, fm)) == ["em0:concise", "em1:concise"]


# --------------------------------------------------------------------------- the premise

SCORE_A = np.array([1.0, 0.0, 2.0, 5.0])
SCORE_B = np.array([0.0, 1.0, 2.0, 3.0])  # reward signs: +, -, tie, +
TRUTH_A = pd.DataFrame({"sentiment": [0.9, 0.8, 0.1, 0.5], "concise": [0.0, -1.0, -0.5, 0.0]})
TRUTH_B = pd.DataFrame({"sentiment": [0.1, 0.2, 0.4, 0.5], "concise": [-0.5, -0.5, -0.5, -0.1]})


def test_pair_agreement_by_hand() -> None:
    got = exp.pair_agreement(SCORE_A, SCORE_B, TRUTH_A, TRUTH_B)
    assert list(got) == ["sentiment", "concise"]
    # sentiment truth signs +, +, -, tie (dropped): reward +, -, tie -> 1, 0, 1/2
    np.testing.assert_array_equal(got["sentiment"], [1.0, 0.0, 0.5])
    # concise truth signs +, -, tie (dropped), +: reward +, -, + -> 1, 1, 1
    np.testing.assert_array_equal(got["concise"], [1.0, 1.0, 1.0])


def test_accuracy_table_rows_columns_and_a_group_tied_everywhere() -> None:
    scores = {
        ("oracle", "pooled"): (SCORE_A, SCORE_B),
        ("text", "sentiment"): (SCORE_B, SCORE_A),  # the reverse ordering
    }
    table = exp.accuracy_table(scores, TRUTH_A, TRUTH_B, n_boot=200, seed=0)
    assert list(table.columns) == ["tier", "reward", "group", "accuracy", "lo", "hi", "pairs"]
    keys = list(zip(table["tier"], table["reward"], table["group"], strict=True))
    assert keys == [
        ("oracle", "pooled", "sentiment"),
        ("oracle", "pooled", "concise"),
        ("text", "sentiment", "sentiment"),
        ("text", "sentiment", "concise"),
    ]
    np.testing.assert_allclose(table["accuracy"], [0.5, 1.0, 0.5, 0.0])
    assert table["pairs"].tolist() == [3, 3, 3, 3]
    assert (table["lo"] <= table["accuracy"]).all() and (table["accuracy"] <= table["hi"]).all()
    assert table.loc[0, "lo"] < table.loc[0, "hi"]  # 1, 0, 1/2 resampled: an interval
    # concise ties on every pair: no accuracy, no interval, zero pairs
    tied_b = TRUTH_B.assign(concise=TRUTH_A["concise"])
    tied = exp.accuracy_table(scores, TRUTH_A, tied_b, n_boot=200, seed=0)
    concise = tied[tied["group"] == "concise"]
    assert len(concise) == 2 and concise["pairs"].tolist() == [0, 0]
    assert concise[["accuracy", "lo", "hi"]].isna().all().all()
    np.testing.assert_allclose(tied.loc[tied["group"] == "sentiment", "accuracy"], [0.5, 0.5])


def accuracy_rows(tier: str, pooled_major, pooled_minor, own_minor, own_major=(0.9, 0.8, 1.0)):
    """Rows of an accuracy table for one tier: (accuracy, lo, hi) per (reward, group)."""
    cells = {
        ("pooled", "sentiment"): pooled_major,
        ("pooled", "concise"): pooled_minor,
        ("concise", "concise"): own_minor,
        ("sentiment", "sentiment"): own_major,
        ("concise", "sentiment"): (0.5, 0.4, 0.6),
        ("sentiment", "concise"): (0.5, 0.4, 0.6),
    }
    return [
        {"tier": tier, "reward": r, "group": g, "accuracy": a, "lo": lo, "hi": hi}
        for (r, g), (a, lo, hi) in cells.items()
    ]


def test_premise_by_the_rule() -> None:
    holds = accuracy_rows("oracle", (0.9, 0.85, 0.95), (0.55, 0.5, 0.6), (0.85, 0.8, 0.9))
    # another tier where nothing holds must not leak into the oracle's verdict
    other = accuracy_rows("text", (0.6, 0.5, 0.7), (0.6, 0.5, 0.7), (0.6, 0.5, 0.7))
    table = pd.DataFrame(holds + other)
    assert exp.premise(table, "oracle") == {
        "pooled_majority_accuracy": 0.9,
        "pooled_minority_accuracy": 0.55,
        "own_minority_accuracy": 0.85,
        "majority_dominated": True,
        "far_from_minority": True,
        "holds": True,
    }
    text = exp.premise(table, "text")
    assert not text["majority_dominated"] and not text["far_from_minority"]
    assert not text["holds"]
    # not dominated: the pooled majority CI touches the pooled minority CI (lo == hi)
    touch = pd.DataFrame(
        accuracy_rows("oracle", (0.8, 0.6, 0.95), (0.55, 0.5, 0.6), (0.85, 0.8, 0.9))
    )
    got = exp.premise(touch, "oracle")
    assert (got["majority_dominated"], got["far_from_minority"], got["holds"]) == (
        False,
        True,
        False,
    )
    # not far: the minority's own reward's CI overlaps the pooled reward's on minority pairs
    near = pd.DataFrame(
        accuracy_rows("oracle", (0.9, 0.85, 0.95), (0.55, 0.5, 0.6), (0.65, 0.58, 0.72))
    )
    got = exp.premise(near, "oracle")
    assert (got["majority_dominated"], got["far_from_minority"], got["holds"]) == (
        True,
        False,
        False,
    )
    assert got["own_minority_accuracy"] == 0.65


# --------------------------------------------------------------------------- the design


def test_arms_list_the_runs_in_the_documented_order(cfg: exp.Config) -> None:
    cfg = dataclasses.replace(cfg, seeds=[3, 4])

    def reward(tag: str):
        return {tag: lambda texts: np.full(len(texts), len(tag), dtype=np.float64)}

    names = ["control", "oracle", "text"]
    rewards = {f"{n}_{k}": reward(f"{n}_{k}") for n in names for k in ("single", "maxmin")}
    rewards["text_true"] = reward("text_true")
    runs = exp.arms(cfg, rewards, with_true_groups=True)
    assert all(isinstance(a, Arm) for a in runs)
    per_seed = [
        (f"{n}_{k}", how, s)
        for s in (3, 4)
        for n in names
        for k, how in (("single", "single"), ("maxmin", "maxmin_sample"))
    ]
    assert [(a.name, a.how, a.seed) for a in runs] == [
        *per_seed,
        ("oracle_maxmin_batch", "maxmin_batch", 3),
        ("text_true", "maxmin_sample", 3),
        ("gentle_single", "single", 3),
        ("gentle_maxmin", "maxmin_sample", 3),
    ]
    by_name = {a.name: a for a in runs}
    for n in names:
        for k in ("single", "maxmin"):
            assert by_name[f"{n}_{k}"].rewards is rewards[f"{n}_{k}"]
    assert by_name["oracle_maxmin_batch"].rewards is rewards["oracle_maxmin"]
    assert by_name["text_true"].rewards is rewards["text_true"]
    assert by_name["gentle_single"].rewards is rewards["oracle_single"]
    assert by_name["gentle_maxmin"].rewards is rewards["oracle_maxmin"]
    # the gentle pair runs with gentle_ppo's lr and updates, the rest with cfg.ppo's
    assert (cfg.gentle_ppo.learning_rate, cfg.gentle_ppo.n_updates) == (5e-5, 3)
    assert (cfg.ppo.learning_rate, cfg.ppo.n_updates) == (1e-4, 2)
    for a in runs:
        s = a.settings(cfg.ppo)
        gentle = a.name.startswith("gentle")
        assert s.learning_rate == (5e-5 if gentle else 1e-4)
        assert s.n_updates == (3 if gentle else 2)
        assert dataclasses.replace(s, learning_rate=1e-4, n_updates=2) == cfg.ppo
        assert a.softmin_temperature == 0.0

    without = exp.arms(cfg, rewards, with_true_groups=False)
    assert [a.name for a in without] == [a.name for a in runs if a.name != "text_true"]


def test_arms_need_no_text_true_reward_without_true_groups(cfg: exp.Config) -> None:
    rewards = {
        f"{n}_{k}": {"r": np.ones}
        for n in ("control", "oracle", "text")
        for k in ("single", "maxmin")
    }
    runs = exp.arms(cfg, rewards, with_true_groups=False)  # no KeyError for text_true
    assert len(runs) == 6 * len(cfg.seeds) + 3
    with pytest.raises(KeyError, match="text_true"):
        exp.arms(cfg, rewards, with_true_groups=True)


# --------------------------------------------------------------------------- evaluation


def frame(sentiment: list[float], concise: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"sentiment": sentiment, "concise": concise})


def test_head_to_head_win_rates_by_hand() -> None:
    truths = {
        # control: seeds 0 and 1 on both sides; seed 2 of the single run has no partner
        ("control_single", 0): frame([0.5, 0.5, 0.5], [-0.5, -0.5, -0.5]),
        ("control_maxmin", 0): frame([0.6, 0.5, 0.4], [-0.25, -0.25, -0.75]),
        ("control_single", 1): frame([0.2, 0.2, 0.2], [-0.5, -0.25, -1.0]),
        ("control_maxmin", 1): frame([0.3, 0.3, 0.3], [-0.5, -0.5, -0.5]),
        ("control_single", 2): frame([9.0, 9.0, 9.0], [9.0, 9.0, 9.0]),
        # oracle: only seed 1 is shared (seed 0 single-only, seed 5 maxmin-only)
        ("oracle_single", 0): frame([-9.0, -9.0, -9.0], [-9.0, -9.0, -9.0]),
        ("oracle_single", 1): frame([0.5, 0.5, 0.5], [-0.5, -0.5, -0.5]),
        ("oracle_maxmin", 1): frame([0.4, 0.6, 0.4], [-0.5, -0.25, -0.25]),
        ("oracle_maxmin", 5): frame([9.0, 9.0, 9.0], [9.0, 9.0, 9.0]),
        # text: no seed in common; gentle: absent
        ("text_single", 0): frame([0.5, 0.5, 0.5], [-0.5, -0.5, -0.5]),
        ("text_maxmin", 1): frame([0.6, 0.6, 0.6], [-0.2, -0.2, -0.2]),
    }
    table = exp.head_to_head(truths, n_boot=300, seed=0)
    assert list(table.columns) == ["comparison", "group", "win_rate", "lo", "hi"]
    assert table["comparison"].unique().tolist() == ["control", "oracle"]
    t = table.set_index(["comparison", "group"])
    assert t.loc["control"].index.tolist() == ["sentiment", "concise", "average"]
    # control: sentiment 1, 1/2, 0 | 1, 1, 1; concise 1, 1, 0 | 1/2, 0, 1
    expected = {
        ("control", "sentiment"): 4.5 / 6,
        ("control", "concise"): 3.5 / 6,
        ("control", "average"): (4.5 / 6 + 3.5 / 6) / 2,
        # oracle (seed 1 only): sentiment 0, 1, 0; concise 1/2, 1, 1
        ("oracle", "sentiment"): 1 / 3,
        ("oracle", "concise"): 2.5 / 3,
        ("oracle", "average"): (1 / 3 + 2.5 / 3) / 2,
    }
    for key, value in expected.items():
        assert t.loc[key, "win_rate"] == pytest.approx(value, abs=1e-12), key
        assert t.loc[key, "lo"] <= t.loc[key, "win_rate"] <= t.loc[key, "hi"], key
    assert t.loc[("control", "sentiment"), "lo"] < t.loc[("control", "sentiment"), "hi"]


def h2h_table(control_lo: float, oracle: tuple[float, float], text: tuple[float, float]):
    """A head-to-head table with the minority rows that matter (lo, hi) and some others."""
    rows = [
        ("control", "sentiment", 0.4, 0.3, 0.5),
        ("control", "concise", control_lo + 0.1, control_lo, control_lo + 0.2),
        ("oracle", "sentiment", 0.9, 0.85, 0.95),  # a majority row never decides
        ("oracle", "concise", sum(oracle) / 2, *oracle),
        ("text", "sentiment", 0.1, 0.05, 0.15),
        ("text", "concise", sum(text) / 2, *text),
    ]
    return pd.DataFrame(rows, columns=["comparison", "group", "win_rate", "lo", "hi"])


def test_verdict_by_the_rule_fixed_before_the_runs() -> None:
    both = {"oracle": True, "text": True}
    # no power: the control's minority lower bound is not above 1/2 (boundary included)
    for lo in (0.5, 0.3):
        table = h2h_table(lo, (0.7, 0.9), (0.7, 0.9))
        assert exp.verdict(table, both) == {"oracle": "no power", "text": "no power"}
    no_control = h2h_table(0.7, (0.7, 0.9), (0.7, 0.9)).query("comparison != 'control'")
    assert exp.verdict(no_control, both) == {"oracle": "no power", "text": "no power"}
    # with power: reproduces (lo > 1/2) and reversed (hi < 1/2)
    table = h2h_table(0.6, (0.55, 0.8), (0.2, 0.45))
    assert exp.verdict(table, both) == {"oracle": "reproduces", "text": "reversed"}
    # a failed premise overrides a win
    assert exp.verdict(table, {"oracle": False, "text": True}) == {
        "oracle": "premise fails",
        "text": "reversed",
    }
    # CIs that hold 1/2, on the boundary too: no difference
    table = h2h_table(0.6, (0.5, 0.7), (0.3, 0.5))
    assert exp.verdict(table, both) == {"oracle": "no difference", "text": "no difference"}
    table = h2h_table(0.6, (0.4, 0.6), (0.45, 0.55))
    assert exp.verdict(table, both) == {"oracle": "no difference", "text": "no difference"}
