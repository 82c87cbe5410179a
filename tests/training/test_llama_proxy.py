"""The CPU stand-in for tulu-2-7b: a tiny Llama that goes through the repo's loaders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, LlamaForSequenceClassification

from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.training.generation import sample_continuations
from pluralign.training.llama_proxy import build_llama_proxy, llama_proxy_config
from pluralign.training.models import load_causal_lm, load_sequence_classifier

HIDDEN, LAYERS = 32, 2


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=300)


@pytest.fixture(scope="module")
def folder(tok, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("llama_proxy")
    build_llama_proxy(tok, hidden_size=HIDDEN, n_layers=LAYERS, seed=0).save_pretrained(path)
    return path


def _batch(tok, prompts: list[list[int]]) -> dict[str, torch.Tensor]:
    return tok.pad({"input_ids": prompts}, return_tensors="pt")  # left padding


def test_config_is_llama2_shaped_and_sized_to_the_tokenizer(tok) -> None:
    cfg = llama_proxy_config(tok, hidden_size=HIDDEN, n_layers=LAYERS, n_heads=4)
    assert cfg.model_type == "llama"
    assert cfg.vocab_size == len(tok)
    assert cfg.bos_token_id == cfg.eos_token_id == tok.eos_token_id
    assert cfg.pad_token_id == tok.pad_token_id != tok.eos_token_id
    assert cfg.tie_word_embeddings is False
    assert cfg.num_key_value_heads == cfg.num_attention_heads == 4  # no GQA, as Llama-2 7B
    model = build_llama_proxy(tok, hidden_size=HIDDEN, n_layers=LAYERS)
    assert isinstance(model, LlamaForCausalLM) and not model.training
    assert model.get_input_embeddings().weight is not model.get_output_embeddings().weight
    gen = model.generation_config
    assert (gen.pad_token_id, gen.eos_token_id) == (tok.pad_token_id, tok.eos_token_id)


def test_seeded_build_leaves_the_callers_rng_alone(tok) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_llama_proxy(tok, hidden_size=HIDDEN, n_layers=1, seed=5)
    assert torch.equal(torch.rand(3), expected)
    b = build_llama_proxy(tok, hidden_size=HIDDEN, n_layers=1, seed=5)
    c = build_llama_proxy(tok, hidden_size=HIDDEN, n_layers=1, seed=6)
    w = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(a.state_dict()[w], b.state_dict()[w])
    assert not torch.equal(a.state_dict()[w], c.state_dict()[w])


def test_tokenizer_without_distinct_pad_is_refused(tok) -> None:
    class NoPad:
        eos_token_id = pad_token_id = tok.eos_token_id

        def __len__(self) -> int:
            return len(tok)

    with pytest.raises(ValueError, match="PAD distinct from EOS"):
        llama_proxy_config(NoPad())


def test_saved_proxy_loads_back_with_identical_logits(tok, folder: Path) -> None:
    model = build_llama_proxy(tok, hidden_size=HIDDEN, n_layers=LAYERS, seed=0)
    loaded = load_causal_lm(folder).eval()
    assert isinstance(loaded, LlamaForCausalLM)
    assert loaded.config.tie_word_embeddings is False
    batch = _batch(tok, [[tok.eos_token_id, 40, 41, 42], [tok.eos_token_id, 50]])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)


def test_same_folder_loads_as_a_reward_model_reading_the_last_real_token(tok, folder) -> None:
    torch.manual_seed(0)  # the fresh score head
    rm = load_sequence_classifier(folder, num_labels=1).eval()
    lm = load_causal_lm(folder)
    assert isinstance(rm, LlamaForSequenceClassification)
    assert rm.config.pad_token_id == tok.pad_token_id
    assert rm.score.weight.shape == (1, HIDDEN)
    embed = "model.embed_tokens.weight"
    assert torch.equal(rm.state_dict()[embed], lm.state_dict()[embed])  # backbone reused

    prompts = [[tok.eos_token_id, 40, 41, 42, 43], [tok.eos_token_id, 50, 51], [60]]
    batch = _batch(tok, prompts)
    assert (batch["input_ids"][:, 0] == tok.pad_token_id).sum() == 2  # really left-padded
    with torch.no_grad():
        out = rm(**batch, output_hidden_states=True)
        hidden = out.hidden_states[-1]
        # Manual: the score head at each row's last position whose token is not PAD.
        not_pad = batch["input_ids"] != tok.pad_token_id
        last = torch.tensor([int(row.nonzero().max()) for row in not_pad])
        manual = rm.score(hidden[torch.arange(len(prompts)), last])
        alone = torch.cat([rm(input_ids=torch.tensor([p])).logits for p in prompts])
    assert out.logits.shape == (len(prompts), 1)
    torch.testing.assert_close(out.logits, manual, rtol=0, atol=1e-6)
    # RoPE is relative, so left padding (masked) does not change a sequence's score.
    torch.testing.assert_close(out.logits, alone, rtol=0, atol=1e-5)


def _plant_logit_bias(model, token_id: int, bias: float):
    """A forward hook on the LM head: the planted model prefers ``token_id`` everywhere."""

    def hook(_module, _inputs, logits):
        logits = logits.clone()
        logits[..., token_id] += bias
        return logits

    return model.get_output_embeddings().register_forward_hook(hook)


def test_sampling_never_emits_pad_and_stops_at_eos(tok, folder: Path) -> None:
    model = load_causal_lm(folder)
    prompts = [[tok.eos_token_id, 40, 41, 42], [tok.eos_token_id, 50], [tok.eos_token_id, 7, 8]]
    kwargs = {"max_new_tokens": 5, "temperature": 1.0, "seed": 0}

    handle = _plant_logit_bias(model, tok.pad_token_id, 50.0)  # PAD would win every step
    try:
        rows = sample_continuations(model, tok, prompts, **kwargs)
    finally:
        handle.remove()
    assert len(rows) == len(prompts)
    for row in rows:
        assert tok.pad_token_id not in row["continuation_ids"]
        assert 1 <= row["new_tokens"] <= 5

    handle = _plant_logit_bias(model, tok.eos_token_id, 50.0)
    try:
        rows = sample_continuations(model, tok, prompts, **kwargs)
    finally:
        handle.remove()
    assert all(r["stopped"] and r["continuation_ids"] == [tok.eos_token_id] for r in rows)
