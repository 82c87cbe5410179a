"""Bradley-Terry reward models on text with TRL's ``RewardTrainer``, plus per-pair weights.

TRL's trainer averages ``-log sigma(r(y_w) - r(y_l))`` over a batch and drops every column
it does not know. The EM M-step (soft responsibilities) and the clone-robust weighted MLE
both need ``sum_i c_i * loss_i``, so ``WeightedRewardTrainer`` keeps a ``weight`` column and
minimises ``mean_i(c_i * loss_i)`` — an unbiased minibatch estimate of ``(1/n) sum_i c_i
loss_i``, the same objective as ``mixture._m_step`` up to the 1/n scale (normalising by the
batch's weight sum instead would change the objective, not only its scale).

Pairs are tokenized here into ``chosen_ids`` / ``rejected_ids`` (TRL's "processed" format):
TRL appends an EOS to raw text, which BERT-style tokenizers (MiniLM) do not have.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from pluralign._typing import FloatArray
from pluralign.pipeline.device import pin_mixed_precision
from pluralign.training._hf import quiet, use_text_progress


@dataclass(frozen=True)
class RewardModelSettings:
    """How every reward model of a notebook is trained (names follow TRL's ``RewardConfig``).

    ``max_length`` truncates pairs for training and texts for scoring."""

    num_train_epochs: float
    learning_rate: float
    per_device_train_batch_size: int
    max_length: int

    def __post_init__(self) -> None:
        if self.num_train_epochs <= 0 or self.learning_rate <= 0:
            raise ValueError("num_train_epochs and learning_rate must be > 0")
        if self.per_device_train_batch_size < 1 or self.max_length < 1:
            raise ValueError("per_device_train_batch_size and max_length must be >= 1")

    def trainer_args(self) -> dict[str, Any]:
        """The ``RewardConfig`` overrides for :func:`train_reward_model`."""
        return {
            "learning_rate": self.learning_rate,
            "num_train_epochs": self.num_train_epochs,
            "per_device_train_batch_size": self.per_device_train_batch_size,
        }


class WeightedPreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator, passing a per-pair ``weight`` through when present."""

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(examples)
        if "weight" in examples[0]:
            out["weight"] = torch.tensor([e["weight"] for e in examples], dtype=torch.float)
        return out


class WeightedRewardTrainer(RewardTrainer):
    """``RewardTrainer`` whose loss is ``mean_i(weight_i * -log sigma(r_w - r_l))``.

    Without a ``weight`` column it is exactly TRL's trainer (the parent's ``compute_loss``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("data_collator") is None:
            tok = kwargs["processing_class"]
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            kwargs["data_collator"] = WeightedPreferenceCollator(pad_token_id=pad)
        super().__init__(*args, **kwargs)

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["chosen_ids", "rejected_ids", "margin", "weight"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "weight" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        weight = inputs.pop("weight")
        inputs["use_cache"] = False
        outputs = model(**inputs)
        chosen, rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        loss = -(weight * nn.functional.logsigmoid(chosen - rejected)).mean()
        if self.args.center_rewards_coefficient is not None:
            loss += self.args.center_rewards_coefficient * torch.mean((chosen + rejected) ** 2)
        mode = "train" if self.model.training else "eval"
        with torch.no_grad():
            share = weight / weight.sum().clamp_min(1e-12)  # weighted, like the loss
            self._metrics[mode]["accuracy"].append((share * (chosen > rejected)).sum().item())
            self._metrics[mode]["margin"].append((share * (chosen - rejected)).sum().item())
        return (loss, outputs) if return_outputs else loss


def tokenize_pairs(
    tokenizer: PreTrainedTokenizerBase,
    chosen: Sequence[str],
    rejected: Sequence[str],
    max_length: int,
    weights: Sequence[float] | np.ndarray | None = None,
) -> Dataset:
    """A processed preference ``Dataset`` (``chosen_ids``, ``rejected_ids``[, ``weight``])."""
    if len(chosen) != len(rejected):
        raise ValueError(f"chosen has {len(chosen)} texts but rejected has {len(rejected)}")
    if len(chosen) == 0:
        raise ValueError("no preference pairs to tokenize")
    kw = {"truncation": True, "max_length": max_length}
    cols: dict[str, Any] = {
        "chosen_ids": tokenizer(list(chosen), **kw)["input_ids"],
        "rejected_ids": tokenizer(list(rejected), **kw)["input_ids"],
    }
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(chosen),) or not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"weights must be {len(chosen)} finite non-negative numbers")
        cols["weight"] = w.tolist()
    return Dataset.from_dict(cols)


def reward_config(output_dir: str, **overrides: Any) -> RewardConfig:
    """Defaults for every reward model: no checkpoints, no hub, no reporting, and the
    project's precision rule (bf16 autocast on a bf16 GPU, fp32 otherwise, whatever the
    launcher: :mod:`pluralign.pipeline.device`)."""
    kw: dict[str, Any] = {
        "output_dir": output_dir,
        "bf16": pin_mixed_precision() == "bf16",
        "use_cpu": not torch.cuda.is_available(),
        "report_to": [],
        "save_strategy": "no",
        "logging_steps": 10,
        "lr_scheduler_type": "constant",
        "per_device_train_batch_size": 16,
        "num_train_epochs": 1.0,
        "learning_rate": 5e-5,
        "disable_tqdm": True,
        "max_length": None,
    }
    kw.update(overrides)
    return RewardConfig(**kw)


def train_reward_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Dataset,
    **config: Any,
) -> list[dict[str, float]]:
    """Train ``model`` in place on a processed pair dataset; returns TRL's log history."""
    with tempfile.TemporaryDirectory(prefix="pluralign-rm-") as tmp:
        trainer = WeightedRewardTrainer(
            model=model,
            args=reward_config(tmp, **config),
            train_dataset=pairs,
            processing_class=tokenizer,
        )
        if trainer.args.disable_tqdm:  # the caller shows its own progress
            quiet(trainer)
        else:
            use_text_progress(trainer)
        trainer.train()
        history = list(trainer.state.log_history)
    model.eval()
    return history


@torch.no_grad()
def score_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """(n,) scalar rewards; each distinct text is scored once (EM rescoring reuses texts)."""
    unique, inverse = np.unique(np.asarray(list(texts), dtype=object), return_inverse=True)
    was_training = model.training
    model.eval()
    pad_side = tokenizer.padding_side
    tokenizer.padding_side = "right"  # what the trainer's collator used
    out = []
    try:
        starts = range(0, len(unique), batch_size)
        for s in tqdm(starts, desc="score", disable=not progress, mininterval=5):
            batch = tokenizer(
                [str(t) for t in unique[s : s + batch_size]],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            ).to(model.device)
            out.append(model(**batch).logits.squeeze(-1).float().cpu().numpy())
    finally:
        tokenizer.padding_side = pad_side
        model.train(was_training)
    scores = np.concatenate(out) if out else np.zeros(0)
    return scores[inverse].astype(np.float64)


def reward_fn(model, tokenizer, max_length: int) -> Callable[[list[str]], FloatArray]:
    """A learned reward model as the ``texts -> rewards`` callable the PPO adapter takes."""

    def score(texts: list[str]) -> FloatArray:
        return score_texts(model, tokenizer, texts, max_length)

    return score


def fit_reward_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    chosen: Sequence[str],
    rejected: Sequence[str],
    settings: RewardModelSettings,
    seed: int,
) -> PreTrainedModel:
    """Train ``model`` in place on (chosen, rejected) text pairs; returns it in eval mode."""
    pairs = tokenize_pairs(tokenizer, chosen, rejected, settings.max_length)
    train_reward_model(model, tokenizer, pairs, seed=seed, **settings.trainer_args())
    return model
