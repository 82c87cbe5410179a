"""Rule-based text scorers: the raw material of every ground truth in the repo.

Each notebook's ground truth is a signed transform of these, chosen in its own module and
stated there: 03's ``concise`` is ``-log(words)`` (snippets are never empty), 05's P2A/P2B
use ``log(words + 1)`` (a policy may answer nothing), 06's ``length`` labeler is ``-words``.

* :func:`n_words`: whitespace-separated words;
* :func:`flesch_kincaid_grade`: textstat's grade without its rounding, clipped by callers
  to :data:`FK_CLIP`;
* :func:`vader_compound`: VADER's lexicon polarity in [-1, 1] (no training).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from pluralign._typing import FloatArray

#: Flesch-Kincaid grades are clipped to this range: one long word in a three-word snippet
#: gives a grade above 40, which would dominate the z-scores of ``plain``.
FK_CLIP: tuple[float, float] = (-5.0, 25.0)


def n_words(text: str) -> int:
    """Whitespace-separated words: the one word count used for bounds and ``concise``."""
    return len(text.split())


_FK_GRADE: Callable[[str], float] | None = None


def flesch_kincaid_grade(text: str) -> float:
    """textstat's Flesch-Kincaid grade *without* its default rounding.

    ``0.39 words/sentence + 11.8 syllables/word - 15.59`` (pyphen syllables; sentences of
    <= 2 words are not counted). textstat rounds syllables/word to 0.1 by default, which
    moves the grade in steps of 1.18 and creates many ties; a private instance with
    rounding off keeps the grade continuous without touching the shared ``textstat``.
    """
    global _FK_GRADE
    if _FK_GRADE is None:
        from textstat.textstat import textstatistics

        stats = textstatistics()
        stats.set_rounding(False)
        _FK_GRADE = stats.flesch_kincaid_grade
    return float(_FK_GRADE(text))


_VADER = None


def vader_compound(texts: Sequence[str]) -> FloatArray:
    """VADER's compound polarity in [-1, 1]: a lexicon score that needs no training."""
    global _VADER
    if _VADER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _VADER = SentimentIntensityAnalyzer()
    return np.array([_VADER.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)
