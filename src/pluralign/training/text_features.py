"""Frozen-encoder text features: what a linear reward probe reads.

Notebook 04's text-tier reward models are the sentiment judge's encoder (MiniLM on the cpu
profile) with a new linear head. Fine-tuning the whole encoder per EM M-step costs minutes
here, so the encoder stays frozen and the head is a ridge BT fit on these features
(:mod:`pluralign.core.crossfit_em`): the encoder can represent sentiment (it was trained to)
and length (through the masked mean), the two things the groups care about.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.no_grad()
def encoder_features(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 64,
    progress: bool = False,
) -> NDArray[np.float64]:
    """(n, 2 h) features ``[pooled | masked mean]`` of the encoder's last hidden states.

    "Pooled" is the encoder's pooler output where it has one (BERT/MiniLM: what the
    classification head reads), the first token's hidden state otherwise (DistilBERT);
    the mean runs over real tokens only, so padding does not change a text's features."""
    base = model.base_model
    was_training = base.training
    base.eval()
    out = []
    try:
        starts = range(0, len(texts), batch_size)
        for s in tqdm(starts, desc="features", disable=not progress, mininterval=5):
            batch = tokenizer(
                [str(t) for t in texts[s : s + batch_size]],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            ).to(base.device)
            hidden = base(**batch)
            last = hidden.last_hidden_state.float()  # (b, t, h)
            pooled = getattr(hidden, "pooler_output", None)
            pooled = last[:, 0] if pooled is None else pooled.float()
            mask = batch["attention_mask"].unsqueeze(-1).float()  # (b, t, 1)
            mean = (last * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.cat([pooled, mean], dim=1).cpu().numpy().astype(np.float64))
    finally:
        base.train(was_training)
    width = 2 * int(model.config.hidden_size)
    return np.concatenate(out) if out else np.zeros((0, width))
