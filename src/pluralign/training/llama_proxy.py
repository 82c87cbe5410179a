"""A small ``LlamaForCausalLM`` that stands in for ``allenai/tulu-2-7b`` on CPU.

The 7B MaxMin-RLHF setup uses a Llama-2 backbone for the policy and the reward models. On
CPU the same code path (save a folder, load it with
:func:`pluralign.training.models.load_causal_lm` or
:func:`pluralign.training.models.load_sequence_classifier`, wrap it with LoRA) runs on this
proxy, so only the size differs between the two profiles.

The proxy keeps the Llama-2 choices that change behaviour: untied input/output embeddings,
no grouped-query attention (``num_key_value_heads == num_attention_heads``), RoPE (so left
padding does not shift what a token attends to), and no bias in any projection. The token
ids come from the repo's tokenizer: BOS = EOS (the prompts start with EOS, see
:mod:`pluralign.training.pretrain`) and a PAD distinct from EOS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM


def llama_proxy_config(
    tokenizer,
    hidden_size: int = 32,
    n_layers: int = 2,
    n_heads: int = 4,
    intermediate_size: int = 64,
    max_positions: int = 64,
    initializer_range: float = 0.02,
) -> LlamaConfig:
    """A Llama-2-shaped config sized to ``tokenizer`` (vocab, BOS/EOS and PAD ids)."""
    from transformers import LlamaConfig

    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError("tokenizer needs a PAD distinct from EOS (see load_gpt2_tokenizer)")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads,
        max_position_embeddings=max_positions,
        initializer_range=initializer_range,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def build_llama_proxy(tokenizer, seed: int = 0, **shape: Any) -> LlamaForCausalLM:
    """A freshly initialised proxy (deterministic in ``seed``) whose ``generate`` pads with
    PAD and stops at EOS, like :func:`pluralign.training.pretrain.build_policy`'s GPT-2. ``shape``
    takes :func:`llama_proxy_config`'s keywords (hidden_size, n_layers, ...)."""
    from transformers import LlamaForCausalLM

    config = llama_proxy_config(tokenizer, **shape)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)  # building a model must not move the caller's RNG
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.eos_token_id
    return model.eval()
