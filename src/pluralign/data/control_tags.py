"""CTRL-style control tags: how notebook 05's small proxy learns to follow a "preference
instruction" as Tulu 2 does.

The authors evaluate each P-SOUPS group on answers generated *with that group's preference
instruction* ("... easily understood by an elementary school student" / "... only a PhD
student in that specific field could understand"), for the trained policy and the SFT model
alike. A 7 M-parameter proxy pretrained on raw reviews cannot read an instruction, so it is
pretrained with a tag at the start of each document instead (Keskar et al., 2019, CTRL):
``[easy]`` for the documents in the lowest tercile of Flesch-Kincaid grade, ``[hard]`` for
the highest, no tag for the middle one (so untagged text, the PPO prompts, stays ordinary).
Whether the tags work is measured, not assumed: :func:`grade_gap` on held-out prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from pluralign.core.stats import bootstrap_ci
from pluralign.data.scorers import FK_CLIP, flesch_kincaid_grade

#: The tag of each P-SOUPS reading-level direction (the proxy's preference instructions).
TAGS: dict[str, str] = {"P1A": "[easy]", "P1B": "[hard]"}
#: Between tag and text. BPE keeps a newline a token of its own and the next word without
#: a leading space, so "[easy]\nThe film" tokenizes as tag tokens + the text's own tokens:
#: a prompt is tagged by inserting the tag's tokens (:func:`tagged_prompt_ids`) and the
#: model sees exactly what it saw in training (with a space, "] The" != "]" + "The").
SEPARATOR = "\n"


def grades(texts: Sequence[str]) -> np.ndarray:
    """Clipped Flesch-Kincaid grade of each text (the P1A/P1B ground truth's raw score)."""
    return np.clip([flesch_kincaid_grade(t) for t in texts], *FK_CLIP)


@dataclass(frozen=True)
class TercileTagger:
    """Tags a document by its grade: below ``low`` -> ``[easy]``, above ``high`` ->
    ``[hard]``, else none. Thresholds come from the training documents (:meth:`fit`) and
    apply unchanged to held-out ones."""

    low: float
    high: float

    @classmethod
    def fit(cls, docs: Sequence[str]) -> TercileTagger:
        if len(docs) < 3:
            raise ValueError(f"need at least 3 documents to cut terciles, got {len(docs)}")
        low, high = np.quantile(grades(docs), [1 / 3, 2 / 3])
        return cls(float(low), float(high))

    def tag_of(self, grade: float) -> str | None:
        if grade < self.low:
            return TAGS["P1A"]
        if grade > self.high:
            return TAGS["P1B"]
        return None

    def __call__(self, docs: Sequence[str]) -> list[str]:
        out = []
        for doc, grade in zip(docs, grades(docs), strict=True):
            tag = self.tag_of(float(grade))
            out.append(doc if tag is None else f"{tag}{SEPARATOR}{doc}")
        return out


def tag_train_and_heldout(train: list[str], heldout: list[str]) -> tuple[list[str], list[str]]:
    """:func:`pluralign.training.pretrain.train_and_evaluate`'s ``rewrite``: terciles of the
    training documents tag both sets."""
    tagger = TercileTagger.fit(train)
    return tagger(train), tagger(heldout)


def tagged_prompt_ids(tokenizer, prompt_ids: Sequence[Sequence[int]], tag: str) -> list[list[int]]:
    """Each prompt with ``tag`` and :data:`SEPARATOR` inserted after its leading
    EOS-as-BOS, where a tagged document starts in pretraining; every prompt grows by the
    same number of tokens, so a batch keeps one length."""
    tag_ids = tokenizer(tag + SEPARATOR, add_special_tokens=False)["input_ids"]
    out = []
    for i, ids in enumerate(prompt_ids):
        if not ids or ids[0] != tokenizer.eos_token_id:
            raise ValueError(f"prompt {i} does not start with EOS-as-BOS: {list(ids[:3])}")
        out.append([ids[0], *tag_ids, *ids[1:]])
    return out


@dataclass(frozen=True)
class GradeGap:
    """Mean grade of ``[hard]``-tagged minus ``[easy]``-tagged samples on the same prompts,
    with a paired bootstrap CI over prompts, and each tag's (and no tag's) mean grade."""

    gap: float
    lo: float
    hi: float
    mean_grade: Mapping[str, float]

    @property
    def controllable(self) -> bool:
        """The CI excludes zero on the right side: ``[hard]`` reads harder than ``[easy]``."""
        return self.lo > 0


def grade_gap(
    easy: Sequence[str], hard: Sequence[str], untagged: Sequence[str], n_boot: int, seed: int
) -> GradeGap:
    """:class:`GradeGap` of continuations sampled from the same prompts with each tag."""
    if not len(easy) == len(hard) == len(untagged):
        raise ValueError(
            f"need one sample per prompt and tag: {len(easy)}/{len(hard)}/{len(untagged)}"
        )
    g_easy, g_hard, g_none = grades(easy), grades(hard), grades(untagged)
    diff = g_hard - g_easy
    gap, lo, hi = bootstrap_ci(diff, n_boot, seed)
    means = {TAGS["P1A"]: float(g_easy.mean()), TAGS["P1B"]: float(g_hard.mean())}
    return GradeGap(gap, lo, hi, means | {"none": float(g_none.mean())})
