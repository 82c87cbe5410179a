"""Banning one token from a causal LM's output (pluralign.training.token_ban): notebook 05's
"EOS disabled". The banned token is made the likeliest one first (a bias on the output
layer), so "never sampled" is a claim that could fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_gpt2

from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.training.generation import sample_rollouts
from pluralign.training.llama_proxy import build_llama_proxy
from pluralign.training.lora import policy_lora_config, with_lora
from pluralign.training.token_ban import BANNED_LOGIT, ban_token

SHAPE = {"hidden_size": 16, "n_layers": 1, "n_heads": 2, "intermediate_size": 32}
BIAS = 8.0  # about 0.85 of the probability mass on the favoured token (558-token vocabulary)
N_NEW = 8


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=300)


@pytest.fixture(scope="module")
def prompts(tok) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [[tok.eos_token_id, *rng.integers(32, 250, size=3).tolist()] for _ in range(48)]


def favouring(model, token_id: int):
    """``model`` whose output layer gets a bias that makes ``token_id`` the likeliest token
    after every prefix (the other logits unchanged)."""
    old = model.get_output_embeddings()
    head = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.zero_()
        head.bias[token_id] = BIAS
    model.set_output_embeddings(head)
    return model


def llama(tok, token_id: int):
    return favouring(build_llama_proxy(tok, seed=0, **SHAPE), token_id)


def gpt2(tok, token_id: int):
    return favouring(tiny_gpt2(tok, seed=0), token_id)


def _ids(rolls) -> np.ndarray:
    return np.concatenate([np.asarray(c) for c in rolls.continuation_ids])


def _logits(model, prompts) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor(prompts)).logits


@pytest.mark.parametrize("build", [llama, gpt2], ids=["llama", "gpt2"])
def test_a_banned_token_is_never_sampled(tok, prompts, build):
    token = 100  # an ordinary token (not EOS, not PAD)
    model = build(tok, token)
    before = _ids(sample_rollouts(model, tok, prompts, N_NEW, 1.0, seed=0))
    assert before.size == len(prompts) * N_NEW
    assert (before == token).mean() > 0.5  # without the ban it dominates
    handle = ban_token(model, token)
    after = sample_rollouts(model, tok, prompts, N_NEW, 1.0, seed=0)
    assert (_ids(after) != token).all()
    assert (after.n_tokens == N_NEW).all()
    handle.remove()
    again = _ids(sample_rollouts(model, tok, prompts, N_NEW, 1.0, seed=0))
    assert (again == token).mean() > 0.5  # lifted


def test_the_banned_logit_is_finite_and_its_probability_zero(tok, prompts):
    token = 100
    model = llama(tok, token)
    plain = _logits(model, prompts)
    handle = ban_token(model, token)
    banned = _logits(model, prompts)
    assert (banned[..., token] == BANNED_LOGIT).all()
    others = torch.ones(plain.shape[-1], dtype=torch.bool)
    others[token] = False
    torch.testing.assert_close(banned[..., others], plain[..., others])  # the rest untouched
    logp = torch.log_softmax(banned, dim=-1)
    assert torch.isfinite(logp).all()
    p = logp.exp()
    assert (p[..., token] == 0).all()  # exp(-1e4 - max) underflows to 0 in fp32
    torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))  # renormalised
    # PPO's entropy: logsumexp - sum(p * logits); an infinite logit would make it NaN
    entropy = torch.logsumexp(banned, -1) - (torch.softmax(banned, -1) * banned).sum(-1)
    assert torch.isfinite(entropy).all() and (entropy >= -1e-5).all()
    # the same with -inf would give 0 * -inf = NaN: why the ban is a finite number
    inf = plain.clone()
    inf[..., token] = -torch.inf
    assert torch.isnan((torch.softmax(inf, -1) * inf).sum(-1)).all()
    handle.remove()
    torch.testing.assert_close(_logits(model, prompts), plain)


def test_ban_works_through_a_lora_wrapper_and_its_disabled_adapter(tok, prompts):
    token = 100
    base = llama(tok, token)
    peft_model = with_lora(base, policy_lora_config(r=4)).eval()  # no LoRA dropout
    torch.manual_seed(1)
    with torch.no_grad():  # a non-zero adapter: the policy differs from its reference
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    plain = _logits(peft_model, prompts)
    with peft_model.disable_adapter():
        reference = _logits(peft_model, prompts)
    assert not torch.allclose(plain, reference)
    handle = ban_token(peft_model, token)
    banned = _logits(peft_model, prompts)
    assert (banned[..., token] == BANNED_LOGIT).all()
    with peft_model.disable_adapter():  # PPO's reference pass sees the same ban
        assert (_logits(peft_model, prompts)[..., token] == BANNED_LOGIT).all()
    rolls = sample_rollouts(peft_model, tok, prompts, N_NEW, 1.0, seed=0)
    assert (_ids(rolls) != token).all()
    handle.remove()
    torch.testing.assert_close(_logits(peft_model, prompts), plain)


def test_banning_eos_makes_every_answer_run_to_its_full_length(tok, prompts):
    eos = tok.eos_token_id
    model = llama(tok, eos)
    free = sample_rollouts(model, tok, prompts, N_NEW, 1.0, seed=0)
    assert free.stopped.mean() > 0.5 and free.n_tokens.mean() < N_NEW / 2
    handle = ban_token(model, eos)
    banned = sample_rollouts(model, tok, prompts, N_NEW, 1.0, seed=0)
    assert not banned.stopped.any() and (banned.n_tokens == N_NEW).all()
    handle.remove()


def test_ban_token_refuses_a_token_outside_the_output_and_a_model_without_one(tok):
    model = build_llama_proxy(tok, seed=0, **SHAPE)
    n = model.get_output_embeddings().out_features
    with pytest.raises(ValueError, match=f"token {n} is not an output row of LlamaForCausalLM"):
        ban_token(model, n)
    handle = ban_token(model, n - 1)  # the last row is fine
    handle.remove()

    class Headless(torch.nn.Module):
        def get_output_embeddings(self):
            return None

    with pytest.raises(ValueError, match="token 0 is not an output row of Headless"):
        ban_token(Headless(), 0)
