"""The reward adapter TRL's PPO calls (``pluralign.training.reward_adapter``): decoding,
per-group normalization and MaxMin aggregation, called the way TRL calls it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from trl.experimental.utils import get_reward

from pluralign.core.maxmin import Normalizer
from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.training.reward_adapter import TextRewardAdapter


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


def n_chars(texts):
    return np.array([len(t) for t in texts], dtype=float)


def has_great(texts):
    return np.array([float("great" in t) for t in texts])


def test_adapter_through_trls_get_reward(tok):
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


def test_group_rewards_use_each_groups_own_normalizer_whatever_the_dict_order():
    """Mutation survivor M10: the normalizers given in another insertion order than the
    rewards, with different statistics, must still z-score each column by its own group."""

    def fa(texts):
        return np.array([1.0, 3.0, 5.0])[: len(texts)]

    def fb(texts):
        return np.array([10.0, 20.0, 40.0])[: len(texts)]

    adapter = TextRewardAdapter(
        None,  # group_rewards works on texts: no tokenizer needed
        4,
        rewards={"a": fa, "b": fb},
        normalizers={"b": Normalizer(20.0, 10.0), "a": Normalizer(2.0, 1.0)},
        how="maxmin_sample",
    )
    raw, norm = adapter.group_rewards(["x", "y", "z"])
    np.testing.assert_allclose(raw, [[1.0, 10.0], [3.0, 20.0], [5.0, 40.0]])  # rewards order
    np.testing.assert_allclose(norm[:, 0], (np.array([1.0, 3.0, 5.0]) - 2.0) / 1.0)
    np.testing.assert_allclose(norm[:, 1], (np.array([10.0, 20.0, 40.0]) - 20.0) / 10.0)
    np.testing.assert_allclose(norm, [[-1.0, -1.0], [1.0, 0.0], [3.0, 2.0]])


def test_backbone_history_names_groups_in_rewards_order(tok):
    """The same order pairing, end to end: normalized means in the history belong to their
    own group, and the argmin group is named by the rewards' key, not the normalizers'."""
    ids, ctx = _batch(tok, "The film", [" was great", " was long and slow and dull", " ok"])
    adapter = TextRewardAdapter(
        tok,
        ctx,
        {"great": has_great, "short": lambda t: -n_chars(t)},
        {"short": Normalizer(-10.0, 5.0), "great": Normalizer(0.5, 0.5)},
        how="maxmin_batch",
        with_prompt=False,
    )
    _, score, _ = get_reward(adapter, ids, tok.pad_token_id, ctx)
    short = (-np.array([10.0, 27.0, 3.0]) + 10.0) / 5.0
    great = (np.array([1.0, 0.0, 0.0]) - 0.5) / 0.5
    rec = adapter.history[-1]
    assert rec["norm_short"] == pytest.approx(short.mean())
    assert rec["norm_great"] == pytest.approx(great.mean())
    assert rec["argmin_group"] == "short"
    np.testing.assert_allclose(score.numpy(), short, rtol=1e-6)  # the batch's worst group


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
    with pytest.raises(ValueError, match="unknown aggregation"):
        TextRewardAdapter(tok, 3, {"a": len}, norm, "mean")
    with pytest.raises(ValueError, match="temperature"):
        TextRewardAdapter(tok, 3, {"a": len}, norm, "softmin", temperature=-1.0)
    adapter = TextRewardAdapter(tok, 5, {"a": len}, norm, "single")
    with pytest.raises(ValueError, match="hold no response"):
        adapter.decode(torch.zeros((1, 5), dtype=torch.long), torch.ones((1, 5)))
