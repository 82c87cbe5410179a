"""CTRL-style control tags of notebook 05's proxy (pluralign.data.control_tags): tercile
thresholds, the tagging rule, tagged prompts that are exactly what pretraining showed, and
the grade gap that decides whether the tags work.

Known grades come from Flesch-Kincaid's formula by hand: one sentence of ``n`` one-syllable
words has grade ``0.39 n + 11.8 - 15.59 = 0.39 n - 3.79``."""

from __future__ import annotations

import numpy as np
import pytest

from pluralign.core.stats import bootstrap_ci
from pluralign.data.control_tags import (
    SEPARATOR,
    TAGS,
    GradeGap,
    TercileTagger,
    grade_gap,
    grades,
    tag_train_and_heldout,
    tagged_prompt_ids,
)
from pluralign.data.text import make_prompts
from pluralign.pipeline.assets import load_gpt2_tokenizer, load_imdb

EASY, HARD = TAGS["P1A"], TAGS["P1B"]


def words(n: int) -> str:
    """One sentence of ``n`` one-syllable words: grade 0.39 n - 3.79 (unclipped up to 73)."""
    return " ".join(["cat"] * n) + "."


def hand_grade(n: float) -> float:
    return 0.39 * n - 3.79


PHD = "Quantum chromodynamics characterizes interactions between quarks and gluons."


# --------------------------------------------------------------------------- tags and grades


def test_tags_are_the_p1_directions_and_the_separator_a_newline():
    assert TAGS == {"P1A": "[easy]", "P1B": "[hard]"}
    assert SEPARATOR == "\n"


def test_grades_are_the_hand_formula_and_clipped():
    got = grades([words(5), words(20), words(40), PHD, " ".join(["Antidisestablishment"] * 3)])
    np.testing.assert_allclose(got[:3], [hand_grade(5), hand_grade(20), hand_grade(40)], atol=1e-9)
    assert got[3] > 15  # a PhD-like sentence reads at university level
    assert got[4] == 25.0  # FK_CLIP's upper end


# --------------------------------------------------------------------------- terciles


def test_tercile_thresholds_are_the_linear_quantiles_of_the_training_grades():
    ns = [30, 5, 20, 10, 25, 15]  # order does not matter
    tagger = TercileTagger.fit([words(n) for n in ns])
    # sorted n = 5, 10, ..., 30; linear quantile at 1/3 sits 2/3 of the way from 10 to 15,
    # at 2/3 1/3 of the way from 20 to 25; the grade is linear in n.
    assert tagger.low == pytest.approx(hand_grade(10 + 2 / 3 * 5), abs=1e-9)
    assert tagger.high == pytest.approx(hand_grade(20 + 1 / 3 * 5), abs=1e-9)
    assert tagger.low < tagger.high


def test_tagging_rule_easy_below_hard_above_middle_untagged():
    ns = [5, 10, 15, 20, 25, 30]
    docs = [words(n) for n in ns]
    tagger = TercileTagger.fit(docs)
    tagged = tagger(docs)
    assert tagged == [
        f"[easy]\n{docs[0]}",
        f"[easy]\n{docs[1]}",
        docs[2],  # the middle tercile stays ordinary text
        docs[3],
        f"[hard]\n{docs[4]}",
        f"[hard]\n{docs[5]}",
    ]
    # strict inequalities: a grade exactly at a threshold is untagged
    assert tagger.tag_of(tagger.low) is None and tagger.tag_of(tagger.high) is None
    assert tagger.tag_of(tagger.low - 1e-6) == EASY
    assert tagger.tag_of(tagger.high + 1e-6) == HARD
    assert tagger.tag_of((tagger.low + tagger.high) / 2) is None
    # thresholds apply unchanged to new documents
    assert tagger([words(3), words(14), words(60)]) == [
        f"[easy]\n{words(3)}",
        words(14),
        f"[hard]\n{words(60)}",
    ]


def test_fit_needs_three_documents():
    with pytest.raises(ValueError, match="need at least 3 documents to cut terciles, got 2"):
        TercileTagger.fit([words(5), words(10)])
    TercileTagger.fit([words(5), words(10), words(15)])


def test_tag_train_and_heldout_cuts_terciles_on_the_training_documents_only():
    train = [words(n) for n in (5, 10, 15, 20, 25, 30)]
    heldout = [words(n) for n in (26, 28, 30, 32, 34, 36)]  # all harder than training's 2/3
    new_train, new_heldout = tag_train_and_heldout(train, heldout)
    assert new_train == TercileTagger.fit(train)(train)
    assert all(d.startswith(HARD + SEPARATOR) for d in new_heldout)
    # thresholds fitted on the held-out set itself would tag a third of it easy
    assert TercileTagger.fit(heldout)(heldout) != new_heldout


# --------------------------------------------------------------------------- tagged prompts


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer("packaged", 8000)


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    return load_imdb("packaged")["text"][:300]


@pytest.mark.parametrize("tag", [EASY, HARD])
def test_tagged_prompts_are_the_tagged_documents_start(tok, reviews, tag):
    """What the proxy saw in pretraining after the previous document's EOS (pack_blocks:
    documents tokenized alone, each followed by EOS) is EOS + tokens of "[tag]\\n" + doc:
    a tagged prompt must be exactly its beginning."""
    n = 8
    texts = [r[:300] for r in reviews]
    prompts = make_prompts(tok, texts, n)
    assert len(prompts) == len(texts)  # every review is longer than 8 tokens
    tagged = tagged_prompt_ids(tok, prompts, tag)
    k = len(tok(tag + SEPARATOR, add_special_tokens=False)["input_ids"])
    assert k >= 3  # "[", the word, "]\n" at least: the check below is not trivial
    for text, ids in zip(texts, tagged, strict=True):
        doc = f"{tag}{SEPARATOR}{text}"  # TercileTagger's form of a tagged document
        want = [tok.eos_token_id, *tok(doc, add_special_tokens=False)["input_ids"][: k + n]]
        assert ids == want, text[:40]
    assert {len(p) for p in tagged} == {1 + k + n}  # one length: a batch stays rectangular
    assert tagged != tagged_prompt_ids(tok, prompts, EASY if tag == HARD else HARD)


def test_tagged_prompts_start_the_tagger_output(tok):
    """The tagger's documents and the tagged prompts use one tag and one separator."""
    docs = [words(5), "The plot of the film was rather thin, yet I enjoyed it.", words(40)]
    checked = 0
    for doc, tagged_doc in zip(docs, TercileTagger.fit(docs)(docs), strict=True):
        if tagged_doc == doc:
            continue  # the middle document: no tag
        tag = tagged_doc.split(SEPARATOR)[0]
        k = len(tok(tag + SEPARATOR, add_special_tokens=False)["input_ids"])
        ids = tagged_prompt_ids(tok, make_prompts(tok, [doc], 3), tag)[0]
        assert ids == [
            tok.eos_token_id,
            *tok(tagged_doc, add_special_tokens=False)["input_ids"][: k + 3],
        ]
        checked += 1
    assert checked == 2


def test_tagged_prompt_ids_refuse_a_prompt_without_leading_eos(tok):
    eos = tok.eos_token_id
    good = [eos, 464, 2646]
    with pytest.raises(ValueError, match=r"prompt 1 does not start with EOS-as-BOS: \[464, 2646"):
        tagged_prompt_ids(tok, [good, [464, 2646, 373]], EASY)
    with pytest.raises(ValueError, match="prompt 0 does not start with EOS-as-BOS"):
        tagged_prompt_ids(tok, [[]], EASY)
    pad = tok.pad_token_id  # a left-padded prompt does not start with EOS either
    with pytest.raises(ValueError, match="prompt 0 does not start with EOS-as-BOS"):
        tagged_prompt_ids(tok, [[pad, *good]], HARD)


# --------------------------------------------------------------------------- grade gap


def test_grade_gap_sign_interval_and_controllable():
    rng = np.random.default_rng(0)
    n_easy = rng.integers(3, 12, size=40)
    n_hard = rng.integers(30, 50, size=40)
    n_none = rng.integers(12, 30, size=40)
    easy, hard = [words(n) for n in n_easy], [words(n) for n in n_hard]
    none = [words(n) for n in n_none]
    gap = grade_gap(easy, hard, none, n_boot=400, seed=1)
    assert isinstance(gap, GradeGap)
    assert gap.gap == pytest.approx(0.39 * (n_hard.mean() - n_easy.mean()), abs=1e-9)
    assert 0 < gap.lo <= gap.gap <= gap.hi
    assert gap.controllable
    assert gap.mean_grade.keys() == {EASY, HARD, "none"}
    assert gap.mean_grade[EASY] == pytest.approx(hand_grade(n_easy.mean()), abs=1e-9)
    assert gap.mean_grade[HARD] == pytest.approx(hand_grade(n_hard.mean()), abs=1e-9)
    assert gap.mean_grade["none"] == pytest.approx(hand_grade(n_none.mean()), abs=1e-9)
    # the tags swapped: the gap is negative and the model is not controllable
    back = grade_gap(hard, easy, none, n_boot=400, seed=1)
    assert back.gap == pytest.approx(-gap.gap, abs=1e-9)
    assert back.lo <= back.gap <= back.hi < 0 and not back.controllable
    # no difference on average: the interval straddles 0, not controllable
    mixed = grade_gap(easy[:20] + hard[:20], hard[20:] + easy[20:], none, 400, seed=1)
    assert mixed.lo < 0 < mixed.hi and not mixed.controllable


def test_grade_gap_is_a_paired_bootstrap_over_prompts():
    """Each prompt's [hard] answer is 10 words longer than its [easy] one while the lengths
    vary a lot across prompts: the per-prompt difference is constant, so the paired interval
    is (nearly) a point; resampling the two tags independently would spread it."""
    n = np.arange(3, 43)
    easy, hard = [words(k) for k in n], [words(k + 10) for k in n]
    gap = grade_gap(easy, hard, easy, n_boot=300, seed=2)
    assert gap.gap == pytest.approx(3.9, abs=1e-9)
    assert gap.hi - gap.lo < 1e-6
    assert gap.controllable
    # the same numbers as the library's bootstrap of the per-prompt differences
    diff = grades(hard) - grades(easy)
    _, lo, hi = bootstrap_ci(diff, 300, 2)
    assert (gap.lo, gap.hi) == pytest.approx((lo, hi), abs=1e-12)


def test_grade_gap_needs_one_answer_per_prompt_and_tag():
    with pytest.raises(ValueError, match="need one sample per prompt and tag: 2/1/2"):
        grade_gap([words(3), words(4)], [words(30)], [words(5), words(6)], 10, 0)
    with pytest.raises(ValueError, match="2/2/1"):
        grade_gap([words(3), words(4)], [words(30), words(31)], [words(5)], 10, 0)
