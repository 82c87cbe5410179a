"""Sampling and its log-probabilities (``pluralign.training.generation``): the settings,
left-padded prompts in ``sample_rollouts`` (which replaced notebook 05's own ``sample``),
and the per-sequence log-probabilities behind the KL estimate.

The notebooks' uses (notebook 04's KL curves, notebook 05's chat prompts) are tested in
tests/experiments; these are the library's own contracts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_gpt2

from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.training.generation import (
    GenerationSettings,
    kl_to_reference,
    response_logprobs,
    sample_continuations,
    sample_rollouts,
    strip_left_padding,
)


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=300)


@pytest.fixture(scope="module")
def peaked(tok):
    """Peaked next-token distributions: near-greedy sampling at a low temperature."""
    return tiny_gpt2(tok, seed=1, init=0.5)


def test_generation_settings_validate():
    assert GenerationSettings(8, 0.7) == GenerationSettings(max_new_tokens=8, temperature=0.7)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        GenerationSettings(0, 0.7)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            GenerationSettings(4, bad)


def test_strip_left_padding_removes_only_leading_pads():
    assert strip_left_padding([0, 0, 5, 0, 6], 0) == [5, 0, 6]  # a PAD inside stays
    assert strip_left_padding((5, 6), 0) == [5, 6]
    assert strip_left_padding([0, 0], 0) == []


def test_sample_rollouts_mask_left_padding_and_keep_the_padded_prompts(tok, peaked):
    pad, eos = tok.pad_token_id, tok.eos_token_id
    plain = [[eos, 40, 41, 42], [eos, 50]]
    padded = [[pad] * (6 - len(p)) + p for p in plain]  # one length, as PPO batches them
    roll = sample_rollouts(peaked, tok, padded, 5, 1e-4, seed=0)
    ref = sample_rollouts(peaked, tok, plain, 5, 1e-4, seed=0)
    assert len(roll) == 2
    assert roll.prompt_ids == padded  # kept as given: one prompt length for the KL
    assert roll.continuation_ids == ref.continuation_ids  # padding was not attended
    assert roll.texts == ref.texts and roll.continuations == ref.continuations
    alone = [sample_rollouts(peaked, tok, [p], 5, 1e-4, seed=0).continuation_ids[0] for p in plain]
    assert roll.continuation_ids == alone
    rows = sample_continuations(peaked, tok, plain, 5, 1e-4, seed=0)
    for i, r in enumerate(rows):
        assert roll.texts[i] == r["prompt"] + r["continuation"]
        assert roll.n_tokens[i] == r["new_tokens"] == len(r["continuation_ids"])
        assert bool(roll.stopped[i]) == r["stopped"]
    assert roll.n_tokens.dtype == np.int64 and roll.stopped.dtype == bool


def test_response_logprobs_sum_the_response_tokens_at_the_temperature(tok, peaked):
    pad, eos = tok.pad_token_id, tok.eos_token_id
    rows = [[eos, 40, 41, 60, 61, 62], [eos, 50, 51, 70, pad, pad]]  # prompt 3, right-padded
    ids = torch.tensor(rows)
    got = response_logprobs(peaked, ids, 3, pad, temperature=0.5)
    for b, row in enumerate(rows):
        n = len([t for t in row if t != pad])
        with torch.no_grad():
            logits = peaked(input_ids=torch.tensor([row[:n]])).logits[0].float()
        logp = torch.log_softmax(logits / 0.5, dim=-1)
        want = sum(float(logp[t - 1, row[t]]) for t in range(3, n))
        assert float(got[b]) == pytest.approx(want, rel=1e-5, abs=1e-5)


def test_kl_to_reference_is_zero_against_itself_and_needs_one_prompt_length(tok, peaked):
    pad, eos = tok.pad_token_id, tok.eos_token_id
    prompts = [[pad, eos, 40], [eos, 50, 51]]
    roll = sample_rollouts(peaked, tok, prompts, 4, 1.0, seed=2)
    assert kl_to_reference(peaked, peaked, tok, roll, 1.0) == pytest.approx(0.0, abs=1e-6)
    other = tiny_gpt2(tok, seed=2, init=0.5)
    assert kl_to_reference(peaked, other, tok, roll, 1.0) != pytest.approx(0.0, abs=1e-3)
    ragged = sample_rollouts(peaked, tok, [[eos, 40], [eos, 50, 51]], 4, 1.0, seed=2)
    with pytest.raises(ValueError, match="one length"):
        kl_to_reference(peaked, peaked, tok, ragged, 1.0)
