"""LoRA adapters (peft), optional bitsandbytes quantisation, and the 7B LoRA backbones.

MaxMin-RLHF at 7B trains the policy with LoRA r=16 and each reward model with LoRA r=8
(``allenai/tulu-2-7b`` backbones). Only the attention projections are adapted; the frozen
base stays in bf16 (or 8/4-bit where bitsandbytes and a GPU exist), which is what makes a
policy, a value model and K reward models fit on one card (see
:mod:`pluralign.training.gpu_memory`).

Trainable parameters per adapted matrix: r * (d_in + d_out) (A is r x d_in, B is d_out x r);
:func:`lora_parameter_count` is that closed form, shared with the memory estimate.

:class:`BackboneSpec` and its loaders give notebook 05's models on one backbone (Tulu2-7B or
the cpu proxy): the frozen reference policy, a LoRA policy whose reference is the same
network with the adapter disabled, and LoRA reward / value models with a trained ``score``
head.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pluralign.pipeline.io import save_dir_atomic
from pluralign.training.models import load_causal_lm, load_sequence_classifier

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel
    from transformers import BitsAndBytesConfig

#: Attention projections adapted per architecture (``config.model_type``).
TARGET_MODULES: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "gpt2": ("c_attn",),  # fused q/k/v Conv1D, (hidden, 3 * hidden)
}
#: Heads that a reward model gets fresh from ``load_sequence_classifier``: they must train.
REWARD_HEAD = "score"


def lora_target_modules(model) -> list[str]:
    """Module names to adapt, by ``model.config.model_type``; unknown types fail loudly
    rather than fall back to peft's own defaults (for Llama those are q/v only)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in TARGET_MODULES:
        raise ValueError(
            f"no LoRA targets for model_type={model_type!r}; known: {sorted(TARGET_MODULES)}"
        )
    return list(TARGET_MODULES[model_type])


def lora_parameter_count(shapes: Sequence[tuple[int, int]], r: int) -> int:
    """Closed form: sum of r * (d_in + d_out) over the adapted (d_in, d_out) matrices."""
    if r < 1:
        raise ValueError(f"LoRA rank r={r} must be >= 1")
    return sum(r * (d_in + d_out) for d_in, d_out in shapes)


def llama_lora_parameter_count(n_layers: int, hidden_size: int, r: int) -> int:
    """:func:`lora_parameter_count` for Llama-2 (no GQA): 4 square projections per layer."""
    return lora_parameter_count([(hidden_size, hidden_size)] * (4 * n_layers), r)


def _lora_config(task_type: str, r: int, alpha: int, dropout: float, targets, modules_to_save):
    from peft import LoraConfig

    if r < 1:
        raise ValueError(f"LoRA rank r={r} must be >= 1")
    return LoraConfig(
        task_type=task_type,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=None if targets is None else list(targets),
        modules_to_save=modules_to_save,
        bias="none",
    )


def policy_lora_config(
    r: int = 16, alpha: int = 32, dropout: float = 0.05, targets: Sequence[str] | None = None
) -> LoraConfig:
    """The policy's adapter (causal LM). ``targets=None``: :func:`with_lora` picks them from
    the model via :func:`lora_target_modules`."""
    return _lora_config("CAUSAL_LM", r, alpha, dropout, targets, None)


def reward_lora_config(
    r: int = 8, alpha: int = 16, dropout: float = 0.05, targets: Sequence[str] | None = None
) -> LoraConfig:
    """A reward (or value) model's adapter: SEQ_CLS, and the freshly initialised ``score``
    head is saved and trained in full, or the reward would be a random projection."""
    return _lora_config("SEQ_CLS", r, alpha, dropout, targets, [REWARD_HEAD])


def with_lora(model, config: LoraConfig) -> PeftModel:
    """Wrap ``model`` with a LoRA adapter; the base weights are frozen.

    peft injects the adapter layers *into* ``model`` (no copy: at 7B there is no room for
    one) and mutates the config it is given (it appends the classifier names to
    ``modules_to_save``), so a copy of ``config`` is used and the caller's stays reusable.
    """
    from peft import get_peft_model

    config = copy.deepcopy(config)
    if config.target_modules is None:
        config.target_modules = set(lora_target_modules(model))
    # GPT-2 stores its projections as Conv1D (in, out); saying so avoids peft's warning.
    config.fan_in_fan_out = getattr(model.config, "model_type", None) == "gpt2"
    return fp32_trainables(get_peft_model(model, config))


def fp32_trainables(model: torch.nn.Module) -> torch.nn.Module:
    """Every trainable parameter in fp32, on a bf16 base too.

    peft keeps LoRA weights in fp32, but a ``modules_to_save`` head (the reward models'
    ``score``) is a copy of the base's bf16 head: trained in bf16, Adam's small updates
    round away (review of 2026-12, defect 7). Autocast computes in bf16 either way."""
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not any(p.dtype != torch.float32 for p in own):
            continue
        for param in own:
            param.data = param.data.float()
        if isinstance(module, torch.nn.Linear):  # a head fed by the bf16 trunk
            module.register_forward_pre_hook(_inputs_to_weight_dtype)
    return model


def _inputs_to_weight_dtype(module: torch.nn.Module, args: tuple) -> tuple:
    """Outside autocast (scoring, TRL's value head) a bf16 trunk's output meets the fp32
    head: cast it, so the head computes in its own precision."""
    dtype = module.weight.dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors are counted once.

    With ``modules_to_save`` peft keeps the original head (frozen) beside its trainable
    copy, so the total of a reward model counts the head twice, as it sits in memory.
    """
    params = list(model.parameters())  # parameters() already skips shared (tied) tensors
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --------------------------------------------------------------------------- quantisation


def _bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def quantization_config(bits: int | None) -> BitsAndBytesConfig | None:
    """``quantization_config=`` for :func:`pluralign.training.models.load_causal_lm` and friends.

    ``None`` loads bf16/fp32 weights. 8 is LLM.int8(); 4 is QLoRA's NF4 with double
    quantisation and bf16 compute. bitsandbytes kernels need CUDA, so asking for them on a
    machine without a GPU or without the package is an error here, not a silent fp32 load.
    """
    if bits is None:
        return None
    if bits not in (4, 8):
        raise ValueError(f"bits={bits!r}: use None (no quantisation), 8 or 4")
    if not torch.cuda.is_available():
        raise RuntimeError(f"{bits}-bit loading needs a CUDA GPU (bitsandbytes); none is visible")
    if not _bitsandbytes_installed():
        raise RuntimeError(f"{bits}-bit loading needs bitsandbytes: pip install bitsandbytes")
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


# --------------------------------------------------------------------------- LoRA backbones (05)


@dataclass(frozen=True)
class BackboneSpec:
    """How to load the shared backbone of policy, value and reward models (JSON-able)."""

    source: str
    """A local folder or a pinned hub name (``allenai/tulu-2-7b@<commit>``)."""
    load_in_bits: int | None = None
    bf16: bool = False
    gradient_checkpointing: bool = False

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.bf16:
            kw["dtype"] = torch.bfloat16
        quant = quantization_config(self.load_in_bits)
        if quant is not None:
            kw["quantization_config"] = quant
            kw["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
        return kw


def _prepare(model, spec: BackboneSpec, pad_token_id: int):
    model.config.pad_token_id = pad_token_id
    if spec.load_in_bits:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=spec.gradient_checkpointing
        )
    elif spec.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()  # LoRA: the frozen embeddings give no grad
    return model


def load_base_policy(spec: BackboneSpec, pad_token_id: int):
    """The frozen causal LM (reference / SFT policy), no adapter."""
    model = load_causal_lm(spec.source, **spec.kwargs())
    model.config.pad_token_id = pad_token_id
    model.generation_config.pad_token_id = pad_token_id
    return model


def lora_policy(
    spec: BackboneSpec, pad_token_id: int, r: int, adapter_dir: str | Path | None = None
):
    """The policy to train: the backbone with a fresh LoRA adapter (or the one saved in
    ``adapter_dir``, for evaluation)."""
    base = policy_base(spec, pad_token_id)
    if adapter_dir is None:
        return with_lora(base, policy_lora_config(r=r))
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)


def classifier_base(spec: BackboneSpec, pad_token_id: int):
    """The backbone as a one-logit sequence classifier, prepared for LoRA, no adapter: the
    base of :func:`lora_classifier` or of an
    :class:`~pluralign.training.adapter_bank.AdapterBank` of reward models."""
    base = load_sequence_classifier(spec.source, num_labels=1, **spec.kwargs())
    return _prepare(base, spec, pad_token_id)


def policy_base(spec: BackboneSpec, pad_token_id: int):
    """The causal LM prepared for LoRA, no adapter: the base of :func:`lora_policy` or of an
    :class:`~pluralign.training.adapter_bank.AdapterBank` of trained policies."""
    return _prepare(load_base_policy(spec, pad_token_id), spec, pad_token_id)


def lora_classifier(
    spec: BackboneSpec, pad_token_id: int, r: int, adapter_dir: str | Path | None = None
):
    """A reward or value model: the backbone with one logit, LoRA and a trained ``score``
    head (fresh, or loaded from ``adapter_dir``)."""
    base = classifier_base(spec, pad_token_id)
    if adapter_dir is None:
        return with_lora(base, reward_lora_config(r=r))
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).eval()


def save_adapter(model, folder: str | Path) -> Path:
    """Write a peft adapter (and its saved heads) atomically."""
    return save_dir_atomic(folder, lambda tmp: model.save_pretrained(tmp))
