"""The sentiment judge: P(positive) of a sequence classifier, a group's ground truth.

``00_sentiment_judge``'s model on the cpu profile, ``lvwerra/distilbert-imdb`` on the paper
profile: the majority's ground truth in notebooks 04 and 06. An *evaluator*, never the
reward a policy was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pluralign.training.models import load_sequence_classifier, load_tokenizer

LABELS = {0: "NEGATIVE", 1: "POSITIVE"}


_POSITIVE_NAMES = ("POSITIVE", "POS", "LABEL_1")


def positive_index(id2label: dict) -> int:
    """Which logit means "positive" (``lvwerra/distilbert-imdb`` names it ``POSITIVE``)."""
    for idx, name in id2label.items():
        if str(name).upper() in _POSITIVE_NAMES:
            return int(idx)
    raise ValueError(f"no positive label among id2label={id2label}")


class SentimentJudge:
    """Batched P(positive) from a sequence classifier folder or hub name."""

    def __init__(self, model, tokenizer, max_length: int = 256, batch_size: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.positive = positive_index(model.config.id2label)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs) -> SentimentJudge:
        return cls(load_sequence_classifier(name_or_path), load_tokenizer(name_or_path), **kwargs)

    @torch.no_grad()
    def logits(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """(n, n_labels) logits; texts are truncated to ``max_length`` tokens."""
        out = []
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc="judge", disable=not progress, mininterval=5):
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]),
                truncation=True,
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            ).to(self.model.device)
            out.append(self.model(**batch).logits.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.num_labels))

    def positive_prob(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """P(positive) in [0, 1] for each text."""
        logits = self.logits(texts, progress)
        return torch.softmax(torch.from_numpy(logits), dim=-1)[:, self.positive].numpy()
