"""Loading models: local folders or pinned hub names, the GPT-2 policy stack, LoRA backbones.

Every load goes through :func:`pluralign.pipeline.assets.resolve_source` (a hub name needs
``@revision``; a local folder is checked file by file before transformers sees it) and
reads safetensors only, never with ``trust_remote_code``. A loaded model goes to
:func:`pluralign.pipeline.device.compute_device` (the GPU when there is one).

* :func:`load_policy_stack`: notebooks 04 and 06's tokenizer, reference policy and
  factories of fresh policies and reward models (a stage name such as
  ``00_policy_pretrain`` means that stage's model folder);
* :func:`load_chat_tokenizer`: notebook 05's (Llama-2 / Tulu) tokenizer with a PAD.

The LoRA backbones of notebook 05 are in :mod:`pluralign.training.lora`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pluralign.pipeline.assets import AssetError, Source, load_gpt2_tokenizer, resolve_source
from pluralign.pipeline.device import compute_device
from pluralign.pipeline.paths import ProjectPaths

#: Upstream stages whose model folder a config may name instead of a hub model.
STAGE_MODELS: dict[str, str] = {
    "00_policy_pretrain": "policy",
    "00_sentiment_judge": "sentiment_judge",
}


# --------------------------------------------------------------------------- single models


def check_model_dir(path: Path) -> None:
    """Fail early, naming the file, on a missing or corrupt Hugging Face model folder."""
    if not path.is_dir():
        raise AssetError(f"{path}: model folder not found (run its DVC stage: dvc repro)")
    config = path / "config.json"
    if not config.is_file():
        raise AssetError(f"{config}: missing (not a saved model folder)")
    try:
        parsed = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AssetError(f"{config}: not valid JSON: {err}") from err
    if not isinstance(parsed, dict) or "model_type" not in parsed:
        raise AssetError(f"{config}: field 'model_type' missing")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise AssetError(f"{path}: no *.safetensors weights (pickled .bin files are not loaded)")
    from safetensors import safe_open

    for file in weights:
        try:
            with safe_open(str(file), framework="pt") as handle:
                list(handle.keys())
        except Exception as err:  # safetensors raises its own error types
            raise AssetError(f"{file}: unreadable safetensors file: {err}") from err


def model_source(name_or_path: str | os.PathLike[str]) -> Source:
    """:func:`resolve_source`, with a local model folder checked first."""
    src = resolve_source(name_or_path, "model")
    if src.local:
        check_model_dir(Path(src.name))
    return src


def load_causal_lm(name_or_path: str | os.PathLike[str], **kwargs: Any) -> PreTrainedModel:
    """A causal LM from a checked local folder or a pinned hub name (safetensors only)."""
    from transformers import AutoModelForCausalLM

    return _load(AutoModelForCausalLM, name_or_path, "causal LM", kwargs)


def load_sequence_classifier(
    name_or_path: str | os.PathLike[str], **kwargs: Any
) -> PreTrainedModel:
    """A sequence classifier / reward model backbone, checked like :func:`load_causal_lm`."""
    from transformers import AutoModelForSequenceClassification

    return _load(AutoModelForSequenceClassification, name_or_path, "sequence classifier", kwargs)


def _load(auto: Any, name_or_path: str | os.PathLike[str], what: str, kwargs: dict[str, Any]):
    """``auto.from_pretrained`` on safetensors only, then onto :func:`compute_device` unless
    the caller placed it (``device_map``, e.g. a quantised base): a frozen judge or reward
    model left on the CPU beside a GPU policy would score on the CPU."""
    src = model_source(name_or_path)
    try:
        model = auto.from_pretrained(
            src.name,
            revision=src.revision,
            use_safetensors=True,
            local_files_only=src.local,
            **kwargs,
        )
    except (OSError, ValueError, RuntimeError) as err:
        if not src.local and "safetensors" in str(err).lower():
            raise AssetError(
                f"{src}: this revision has no *.safetensors weights, and pickled .bin weights "
                "are not loaded (unpickling can run code). Pin a revision that has "
                "model.safetensors (the hub's safetensors conversion pull request, "
                "<name>@refs/pr/<n>, often has one), or convert the weights on a trusted "
                f"machine and name the local folder instead. ({err})"
            ) from err
        raise AssetError(f"{src}: cannot load {what}: {err}") from err
    if "device_map" not in kwargs and model.device != compute_device():
        model = model.to(compute_device())
    return model


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> PreTrainedTokenizerBase:
    """The tokenizer saved beside a model (folders written by this repo carry one)."""
    from transformers import AutoTokenizer

    src = resolve_source(name_or_path, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(
            src.name, revision=src.revision, local_files_only=src.local
        )
    except (OSError, ValueError) as err:
        raise AssetError(f"{src}: cannot load tokenizer: {err}") from err


def fit_to_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """Grow the embeddings to the tokenizer (a hub GPT-2 gets a new ``[PAD]``) and set PAD."""
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


# --------------------------------------------------------------------------- the GPT-2 stack


def stage_model(name: str, paths: ProjectPaths, stages: Mapping[str, str] = STAGE_MODELS) -> str:
    """The model folder of upstream stage ``name`` (``00_policy_pretrain``), else ``name``
    (a local folder or pinned hub name). A run writing to ``scratch/`` reads the project's."""
    return str(paths.upstream_model(stages[name])) if name in stages else name


@dataclass
class PolicyStack:
    """A tokenizer, the frozen reference policy, and where fresh copies come from."""

    tokenizer: PreTrainedTokenizerBase
    policy_source: str
    reward_source: str
    ref_policy: PreTrainedModel

    def new_policy(self) -> PreTrainedModel:
        """A fresh trainable copy of the reference policy."""
        return fit_to_tokenizer(load_causal_lm(self.policy_source), self.tokenizer)

    def new_reward_model(self) -> PreTrainedModel:
        """The reward backbone with a new scalar head (drawn from torch's global RNG)."""
        model = load_sequence_classifier(self.reward_source, num_labels=1)
        return fit_to_tokenizer(model, self.tokenizer)


def load_policy_stack(policy: str, reward_backbone: str, paths: ProjectPaths) -> PolicyStack:
    """The policy ``policy`` (a stage name, local folder or pinned hub GPT-2) with its
    tokenizer and reference copy; reward models start from ``reward_backbone``. A stage's
    folder carries its tokenizer (PAD included); a hub GPT-2 gets the repo's PAD rule."""
    policy_source = stage_model(policy, paths)
    from_stage = policy in STAGE_MODELS
    tok = load_tokenizer(policy_source) if from_stage else load_gpt2_tokenizer(policy_source)
    stack = PolicyStack(tok, policy_source, stage_model(reward_backbone, paths), None)  # type: ignore[arg-type]
    stack.ref_policy = stack.new_policy().eval()
    return stack


def load_chat_tokenizer(source: str) -> PreTrainedTokenizerBase:
    """The policy's tokenizer with left padding. Llama-2's has no PAD token; UNK pads then,
    because PAD must differ from EOS (PPO would mask EOS out of the loss otherwise)."""
    tok = load_tokenizer(source)
    tok.padding_side = "left"
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        if tok.unk_token_id is None or tok.unk_token_id == tok.eos_token_id:
            raise ValueError(f"{source}: no PAD token and no UNK distinct from EOS to pad with")
        tok.pad_token = tok.unk_token
    return tok
