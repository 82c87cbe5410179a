"""Embeddings FRFT compares generations and offline responses in, and how one is chosen.

A record's label is useful when the right labeler made it, and the labeler is tied to the
record's *source* (which generator, which temperature, human text, damaged copies). The
authors embed prompt + generation with a *style* model (``AnnaWegmann/Style-Embedding``)
for that reason: a topic model (MiniLM) sees one topic in every source. The candidates here
run offline:

* ``logprob_profile``: the reference policy's per-token log-probabilities of the response
  given its prompt, summarised (mean, spread, quantiles, entropy, argmax rate, length):
  how "policy-like" a text is, which separates temperatures, human text and damaged copies;
* ``hidden_mean``: the reference policy's mean last hidden state of prompt + response;
* ``char_tfidf``: character 2-4-gram TF-IDF of prompt + response, reduced by truncated SVD;
* ``sentence:<encoder>``: a sentence encoder on prompt + response (the packaged MiniLM, or
  a pinned hub one such as the authors' style encoder).

Each is z-scored on the offline records' responses and unit-normed, so FRFT's cosine is a
correlation of standardised features. The embedding is chosen *before* PPO by held-out
source identification (:func:`source_id_accuracy`), never by a PPO outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.typing import NDArray
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pluralign._typing import FloatArray, IntArray
from pluralign.core.stats import column_stats

RawFeatures = Callable[[Sequence[str], Sequence[str]], FloatArray]
"""``(prompts, responses) -> (n, d)`` raw features, one row per (prompt, response)."""


@torch.no_grad()
def logprob_profile(
    policy, tokenizer, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64
) -> FloatArray:
    """(n, 9) summaries of ``log p(response token | prompt, earlier tokens)`` under
    ``policy``: mean, std, min, 10/50/90 % quantiles, mean predictive entropy, share of
    tokens that are the argmax, and log(1 + tokens). An empty response gives zeros."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    was_training = policy.training
    policy.eval()
    out = np.zeros((len(prompts), 9), dtype=np.float64)
    try:
        for s in range(0, len(prompts), batch_size):
            p_ids = tokenizer(list(prompts[s : s + batch_size]), add_special_tokens=False)
            r_ids = tokenizer(list(responses[s : s + batch_size]), add_special_tokens=False)
            seqs = [
                [bos, *p, *r] for p, r in zip(p_ids["input_ids"], r_ids["input_ids"], strict=True)
            ]
            limit = int(getattr(policy.config, "n_positions", 0) or 1024)
            seqs = [q[:limit] for q in seqs]
            width = max(len(q) for q in seqs)
            ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, q in enumerate(seqs):
                ids[i, : len(q)] = torch.tensor(q)
                mask[i, : len(q)] = 1
            # the model's own device (a GPU on the paper path); the statistics on the CPU
            logits = policy(input_ids=ids.to(policy.device), attention_mask=mask.to(policy.device))
            logits = logits.logits[:, :-1].float().cpu()
            logp = torch.log_softmax(logits, dim=-1)
            target = ids[:, 1:]
            token_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
            entropy = -(logp.exp() * logp).sum(-1)
            is_top = logits.argmax(-1) == target
            for i, (p, q) in enumerate(zip(p_ids["input_ids"], seqs, strict=True)):
                start, end = min(len(p), len(q) - 1), len(q) - 1  # response positions
                if end <= start:
                    continue
                lp = token_lp[i, start:end].numpy().astype(np.float64)
                out[s + i] = [
                    lp.mean(),
                    lp.std(),
                    lp.min(),
                    *np.quantile(lp, [0.1, 0.5, 0.9]),
                    float(entropy[i, start:end].mean()),
                    float(is_top[i, start:end].float().mean()),
                    np.log1p(end - start),
                ]
    finally:
        policy.train(was_training)
    return out


@torch.no_grad()
def hidden_mean(
    policy, tokenizer, prompts: Sequence[str], responses: Sequence[str], batch_size: int = 64
) -> FloatArray:
    """(n, h) mean of the policy's last hidden states over prompt + response tokens."""
    texts = [p + r for p, r in zip(prompts, responses, strict=True)]
    base = policy.base_model
    was_training = base.training
    base.eval()
    pad_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    out = []
    try:
        limit = int(getattr(policy.config, "n_positions", 0) or 1024)
        for s in range(0, len(texts), batch_size):
            batch = tokenizer(
                texts[s : s + batch_size], truncation=True, max_length=limit, padding=True,
                return_tensors="pt",
            ).to(base.device)  # fmt: skip
            hidden = base(**batch).last_hidden_state.float()
            m = batch["attention_mask"].unsqueeze(-1).float()
            out.append(((hidden * m).sum(1) / m.sum(1).clamp(min=1.0)).cpu().numpy())
    finally:
        tokenizer.padding_side = pad_side
        base.train(was_training)
    return np.concatenate(out).astype(np.float64)


def char_tfidf(
    fit_texts: Sequence[str], dims: int, seed: int
) -> Callable[[Sequence[str]], FloatArray]:
    """Character 2-4-gram TF-IDF (sublinear tf) fitted on ``fit_texts``, reduced to ``dims``
    components by truncated SVD (seeded): ``texts -> (n, dims)``."""
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2, sublinear_tf=True)
    X = vec.fit_transform(list(fit_texts))
    svd = TruncatedSVD(n_components=min(dims, X.shape[1] - 1), random_state=seed).fit(X)
    return lambda texts: svd.transform(vec.transform(list(texts))).astype(np.float64)


@dataclass
class Embedding:
    """A fitted embedding: raw features z-scored with the statistics of the records'
    responses, then unit-normed (so a dot product is FRFT's cosine)."""

    name: str
    raw: RawFeatures
    mean: FloatArray = field(default_factory=lambda: np.zeros(0))
    std: FloatArray = field(default_factory=lambda: np.ones(0))

    def fit(self, prompts: Sequence[str], responses: Sequence[str]) -> FloatArray:
        """Fit the z-score on these texts; returns their embeddings."""
        X = self.raw(prompts, responses)
        self.mean, self.std = column_stats(X)
        flat = np.ptp(X, axis=0) == 0
        self.mean = np.where(flat, X[0], self.mean)  # a constant column z-scores to exactly 0
        return self._finish(X)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> NDArray[np.float32]:
        if self.mean.size == 0:
            raise RuntimeError(f"embedding {self.name!r} is not fitted (call fit first)")
        return self._finish(self.raw(prompts, responses))

    def _finish(self, X: FloatArray) -> NDArray[np.float32]:
        Z = (X - self.mean) / self.std
        norm = np.linalg.norm(Z, axis=1, keepdims=True)
        return (Z / np.where(norm > 0, norm, 1.0)).astype(np.float32)


def source_id_accuracy(
    features: FloatArray, source: Sequence[str], groups: IntArray, folds: int = 5
) -> float:
    """Held-out accuracy of a multinomial logistic regression that predicts a record's source
    from its features, with folds grouped by prompt (no prompt in both train and test):
    the criterion that picks FRFT's embedding before any PPO run."""
    y = np.asarray(source, dtype=str)
    if len(np.unique(y)) < 2:
        raise ValueError("source identification needs at least two sources")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0))
    cv = GroupKFold(n_splits=folds)
    scores = cross_val_score(model, np.asarray(features, dtype=np.float64), y, groups=groups, cv=cv)
    return float(np.mean(scores))
