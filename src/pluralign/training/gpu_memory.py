"""Back-of-envelope GPU memory of LoRA PPO with K reward models (MaxMin-RLHF at 7B).

Answers "does policy + reference + value + K reward models fit on one card, and at what
batch size?" before renting the card. Everything follows from parameter counts:

* frozen base weights: ``n_params * weight_bytes`` each (2 for bf16; 1 for 8-bit, ~0.5 for
  4-bit, ignoring the quantisation constants);
* LoRA trainable parameters: the closed form of :func:`pluralign.lora.llama_lora_parameter_count`
  (Llama-2, no GQA: q/k/v/o, each ``r * (hidden + hidden)`` per layer);
* per trainable parameter 16 bytes: fp32 weight 4 + fp32 grad 4 + Adam's two moments 8 (peft
  keeps adapters in fp32 even on a bf16 base);
* activations of the training forward/backward (policy and value), or the generation KV
  cache, whichever is larger: they are not alive at the same time.

It is an estimate: no allocator fragmentation, CUDA context (~0.5-1 GiB) or temporary
buffers; compare it with ``torch.cuda.max_memory_allocated`` on a real step.
"""

from __future__ import annotations

from pluralign.training.lora import llama_lora_parameter_count

GIB = 2**30
#: fp32 weight + fp32 gradient + Adam exp_avg + exp_avg_sq, per trainable parameter.
TRAINABLE_BYTES = 4 + 4 + 8
#: peft upcasts adapter weights to fp32 (``autocast_adapter_dtype=True``).
ADAPTER_BYTES = 4
#: Activation values kept per token, per hidden unit, per layer, without checkpointing:
#: Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer
#: Models") count 34 * s * b * h bytes per layer at 2 bytes a value, plus 5 * a * s^2 * b
#: for the attention matrix, which fused (SDPA / flash) attention does not store.
ACTIVATION_VALUES_PER_LAYER = 17
#: With gradient checkpointing each layer keeps only its input (1 value per hidden unit),
#: and one layer at a time is recomputed in full during the backward pass.
CHECKPOINTED_VALUES_PER_LAYER = 1
#: The policy's logits over the vocabulary stay alive for the log-prob backward, in fp32.
LOGIT_BYTES = 4


def training_activation_bytes(
    batch_size: int,
    seq_len: int,
    hidden_size: int,
    n_layers: int,
    act_bytes: float = 2,
    gradient_checkpointing: bool = True,
) -> float:
    """Activations one model keeps for its backward (trunk only, no vocabulary logits)."""
    token_values = batch_size * seq_len * hidden_size * act_bytes
    full_layer = token_values * ACTIVATION_VALUES_PER_LAYER
    if gradient_checkpointing:
        return n_layers * token_values * CHECKPOINTED_VALUES_PER_LAYER + full_layer
    return n_layers * full_layer


def kv_cache_bytes(
    batch_size: int, seq_len: int, hidden_size: int, n_layers: int, act_bytes: float = 2
) -> float:
    """Generation's key/value cache: 2 tensors of ``hidden`` values per token and layer."""
    return 2 * batch_size * seq_len * hidden_size * n_layers * act_bytes


def bases_held(
    n_reward_models: int,
    *,
    shared_base: bool,
    value_shares_policy_base: bool,
    reference_from_adapters: bool,
) -> int:
    """How many frozen copies of the base one LoRA PPO update holds (see
    :func:`ppo_memory_estimate`): the policy's, the reference's unless it is the policy with
    its adapter off, the value model's unless it shares the policy's, and one per reward
    model unless they share one base. A test counts the bases the code really holds."""
    return (
        1
        + (0 if reference_from_adapters else 1)
        + (0 if value_shares_policy_base else 1)
        + (1 if shared_base else n_reward_models)
    )


def ppo_memory_estimate(
    n_params: float,
    n_layers: int,
    hidden_size: int,
    policy_lora_r: int = 16,
    reward_lora_r: int = 8,
    n_reward_models: int = 2,
    weight_bytes: float = 2,
    batch_size: int = 8,
    seq_len: int = 1024,
    *,
    vocab_size: int = 32000,
    value_lora_r: int | None = None,
    shared_base: bool = False,
    value_shares_policy_base: bool = False,
    reference_from_adapters: bool = True,
    gradient_checkpointing: bool = True,
    act_bytes: float = 2,
) -> dict[str, float]:
    """GiB per component of one LoRA PPO update, and their ``total``.

    * ``policy_base``: the frozen base of the policy.
    * ``reference``: 0 when the policy is a PeftModel (``reference_from_adapters``): TRL's
      PPO then computes reference log-probs on the same weights with the adapter disabled;
      otherwise a second copy of the base.
    * ``value_base``: the value model is base + LoRA (rank ``value_lora_r``, default
      ``reward_lora_r``: TRL starts the value model from a reward model) + a scalar head.
      TRL's PPO keeps it as a separate model, so by default it has its own base;
      ``value_shares_policy_base`` puts its adapter on the policy's base instead (0 here).
    * ``reward_bases``: K frozen reward-model bases, or one base carrying K adapters when
      ``shared_base`` (all K reward models are LoRA fine-tunes of the same backbone).
    * ``reward_adapters``: K frozen reward adapters and heads (fp32).
    * ``trainable``: policy and value adapters + value head, 16 bytes each (see module doc).
    * ``activations``: max(policy + value training activations + policy logits,
      generation KV cache). ``batch_size`` is the sequences per forward/backward (the
      per-device PPO mini-batch), ``seq_len`` query + response tokens.
    """
    for name, value in (("n_params", n_params), ("n_layers", n_layers), ("hidden", hidden_size)):
        if value <= 0:
            raise ValueError(f"{name}={value} must be > 0")
    if n_reward_models < 1 or batch_size < 1 or seq_len < 1:
        raise ValueError("n_reward_models, batch_size and seq_len must be >= 1")
    value_r = reward_lora_r if value_lora_r is None else value_lora_r
    base = n_params * weight_bytes
    head = hidden_size  # a scalar score head: hidden x 1, no bias (Llama)

    def lora(r: int) -> int:
        return llama_lora_parameter_count(n_layers, hidden_size, r)

    trunk = training_activation_bytes(
        batch_size, seq_len, hidden_size, n_layers, act_bytes, gradient_checkpointing
    )
    train = 2 * trunk + batch_size * seq_len * vocab_size * LOGIT_BYTES
    generate = kv_cache_bytes(batch_size, seq_len, hidden_size, n_layers, act_bytes)
    parts = {
        "policy_base": base,
        "reference": 0.0 if reference_from_adapters else base,
        "value_base": 0.0 if value_shares_policy_base else base,
        "reward_bases": base * (1 if shared_base else n_reward_models),
        "reward_adapters": n_reward_models * (lora(reward_lora_r) + head) * ADAPTER_BYTES,
        "trainable": (lora(policy_lora_r) + lora(value_r) + head) * TRAINABLE_BYTES,
        "activations": max(train, generate),
    }
    estimate = {name: float(size) / GIB for name, size in parts.items()}
    estimate["total"] = sum(estimate.values())
    return estimate


# --------------------------------------------------------------------------- time per update

#: Published datasheet figures (dense bf16 tensor-core TFLOPS, HBM GB/s): NVIDIA A100
#: 80GB SXM datasheet and NVIDIA H100 SXM datasheet.
HARDWARE: dict[str, tuple[float, float]] = {
    "A100-80GB-SXM": (312.0, 2039.0),
    "H100-SXM": (989.0, 3350.0),
}


def ppo_update_seconds(
    n_params: float,
    batch_size: int,
    prompt_len: int,
    response_len: int,
    n_reward_models: int = 2,
    ppo_epochs: int = 8,
    weight_bytes: float = 2,
    gpu: str = "A100-80GB-SXM",
    mfu: float = 0.4,
) -> dict[str, float]:
    """Seconds of one PPO update on one GPU, from parameter counts and datasheet figures.

    * ``generation``: ``response_len`` decoding steps, each reading every weight once
      (memory bound at PPO batch sizes): ``response_len * n_params * weight_bytes / bandwidth``.
    * ``scoring``: forward passes over the ``batch_size * (prompt_len + response_len)``
      tokens of reference, value and K reward models, 2 FLOPs per parameter and token.
    * ``training``: ``ppo_epochs`` passes of policy and value forward + backward with
      gradient checkpointing, ~6 FLOPs per parameter and token (LoRA skips the weight
      gradients but the recomputed forward adds them back).

    Compute runs at ``mfu`` (model FLOPs utilisation, assumed 0.4) of the datasheet peak.
    An order-of-magnitude guide: 8-bit bitsandbytes bases decode slower than bf16, and
    Python overhead dominates tiny batches.
    """
    if gpu not in HARDWARE:
        raise ValueError(f"unknown gpu {gpu!r}; known: {sorted(HARDWARE)}")
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    tflops, gbs = HARDWARE[gpu]
    flops_per_s = tflops * 1e12 * mfu
    tokens = batch_size * (prompt_len + response_len)
    parts = {
        "generation": response_len * n_params * weight_bytes / (gbs * 1e9),
        "scoring": (2 + n_reward_models) * 2 * n_params * tokens / flops_per_s,
        "training": ppo_epochs * 2 * 6 * n_params * tokens / flops_per_s,
    }
    parts["total"] = sum(parts.values())
    return parts


def free_memory() -> None:
    """Return the memory of models no longer referenced (``del`` them first): collect
    Python's cycles, then hand CUDA's cached blocks back, so the next base fits."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
