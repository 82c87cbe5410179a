"""MaxMin aggregation rules and the reward adapter, called the way TRL's PPO calls it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from trl.experimental.utils import get_reward

from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.core.maxmin import Normalizer, aggregate
from pluralign.training.reward_adapter import TextRewardAdapter

R = np.array([[0.5, -1.0], [2.0, 0.1], [-0.3, 0.4]])  # (B=3, K=2)


def test_aggregation_rules_against_hand_computed_values():
    # group means: 0.733 and -0.167 -> group 1 is the batch's worst
    np.testing.assert_allclose(aggregate(R, "maxmin_batch")[0], R[:, 1])
    assert aggregate(R, "maxmin_batch")[1] == 1
    np.testing.assert_allclose(aggregate(R, "maxmin_sample")[0], [-1.0, 0.1, -0.3])
    np.testing.assert_allclose(aggregate(R[:, :1], "single")[0], R[:, 0])
    tau = 0.5
    expected = -tau * np.log(np.exp(-R[:, 0] / tau) + np.exp(-R[:, 1] / tau))
    np.testing.assert_allclose(aggregate(R, "softmin", tau)[0], expected)


def test_softmin_bounds_and_limit():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    lo = X.min(axis=1)
    for tau in (2.0, 0.5, 0.01):
        s = aggregate(X, "softmin", tau)[0]
        assert np.all(s <= lo + 1e-12) and np.all(s >= lo - tau * np.log(3) - 1e-12)
    np.testing.assert_allclose(aggregate(X, "softmin", 1e-6)[0], lo, atol=1e-5)
    np.testing.assert_array_equal(aggregate(X, "softmin", 0.0)[0], lo)


def test_aggregate_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(R, "mean")
    with pytest.raises(ValueError, match="exactly one reward"):
        aggregate(R, "single")
    with pytest.raises(ValueError, match="temperature"):
        aggregate(R, "softmin", -1.0)
    with pytest.raises(ValueError, match="non-empty"):
        aggregate(np.zeros((0, 2)), "maxmin_sample")


def test_normalizer():
    n = Normalizer.fit([1.0, 3.0])
    assert (n.mean, n.std) == (2.0, 1.0)
    np.testing.assert_allclose(n(np.array([4.0])), [2.0])
    with pytest.raises(ValueError, match="constant"):
        Normalizer.fit([1.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        Normalizer.fit([1.0, np.nan])


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=300)


def _batch(tok, prompt: str, responses: list[str]) -> tuple[torch.Tensor, int]:
    """[EOS-as-BOS + prompt | response + EOS + PAD...] as PPO builds it after truncation."""
    p = [tok.eos_token_id, *tok(prompt)["input_ids"]]
    rows = [tok(r)["input_ids"] + [tok.eos_token_id] for r in responses]
    width = max(map(len, rows)) + 2
    ids = [p + r + [tok.pad_token_id] * (width - len(r)) for r in rows]
    return torch.tensor(ids), len(p)


def test_adapter_through_trls_get_reward(tok):
    def n_chars(texts):
        return np.array([len(t) for t in texts], dtype=float)

    def has_great(texts):
        return np.array([float("great" in t) for t in texts])

    ids, ctx = _batch(tok, "The film", [" was great", " was long and slow and dull", " ok"])
    adapter = TextRewardAdapter(
        tok,
        ctx,
        {"short": lambda t: -n_chars(t), "great": has_great},
        {"short": Normalizer(-10.0, 5.0), "great": Normalizer(0.5, 0.5)},
        how="maxmin_sample",
        with_prompt=False,
    )
    _, score, _ = get_reward(adapter, ids, tok.pad_token_id, ctx)
    short = (-np.array([10.0, 27.0, 3.0]) + 10.0) / 5.0  # len(' was great') = 10
    great = (np.array([1.0, 0.0, 0.0]) - 0.5) / 0.5
    np.testing.assert_allclose(score.numpy(), np.minimum(short, great), rtol=1e-6)
    rec = adapter.history[-1]
    assert rec["argmin_group"] == "short"  # mean -2/3 < mean of great (-1/3)
    assert rec["raw_short"] == pytest.approx(-40 / 3)
    assert adapter.decode(ids, ids != tok.pad_token_id) == [
        " was great",
        " was long and slow and dull",
        " ok",
    ]


def test_adapter_with_prompt_keeps_prompt_text(tok):
    ids, ctx = _batch(tok, "The film", [" was great"])
    adapter = TextRewardAdapter(
        tok, ctx, {"n": lambda t: np.zeros(len(t))}, {"n": Normalizer(0.0, 1.0)}, "single"
    )
    assert adapter.decode(ids, ids != tok.pad_token_id) == ["The film was great"]


def test_adapter_validation(tok):
    norm = {"a": Normalizer(0.0, 1.0)}
    with pytest.raises(ValueError, match="same groups"):
        TextRewardAdapter(tok, 3, {"b": lambda t: t}, norm, "single")
    with pytest.raises(ValueError, match="exactly one"):
        TextRewardAdapter(tok, 3, {"a": len, "b": len}, {**norm, "b": norm["a"]}, "single")
    adapter = TextRewardAdapter(tok, 5, {"a": len}, norm, "single")
    with pytest.raises(ValueError, match="hold no response"):
        adapter.decode(torch.zeros((1, 5), dtype=torch.long), torch.ones((1, 5)))
