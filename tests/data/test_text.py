"""Text sources (pluralign.data.text): review snippets and prompts; the rule-based scorers
(pluralign.data.scorers) and notebook 03's group rewards built on them.

The simulated BT comparisons over these texts are tested in tests/core/test_simulate.py, the
z-scores in tests/core/test_stats.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pluralign.data.scorers import FK_CLIP, flesch_kincaid_grade, n_words
from pluralign.data.text import (
    MAX_SENTENCES,
    SENTENCE_SPLIT,
    TEMPLATES,
    extract_snippets,
    instruction_prompts,
    make_prompts,
    review_prompts,
    split_prompts,
)
from pluralign.experiments.em_mixtures import GROUPS, group_correlations, group_rewards
from pluralign.pipeline.assets import clean_review, load_gpt2_tokenizer, load_imdb

GLOWING = "A wonderful, beautiful and brilliant film that I loved with all my heart!"
HATEFUL = "A horrible, ugly and stupid film that I hated with all my heart!"
SHORT = "Loved it."
LONG = "I went to see this film with my two brothers last Friday and we all stayed to the end."
PLAIN = "The dog ran to the park. It was fun. We had a good day."
ACADEMIC = (
    "The epistemological ramifications of postmodern cinematographic representation "
    "necessitate considerable interpretative sophistication."
)

REVIEWS = [
    "Great fun. I laughed a lot.<br /><br />Go see it with friends. Really.",
    "This was dull. The plot had holes everywhere. The acting was wooden. I left early.",
    "An absolute masterpiece of modern cinema, with a score that I still hum every day.",
    "Bad. Very bad. Truly very bad indeed, and I do not say that lightly about any film.",
    "I have seen better. I have also seen worse. It is fine for a rainy afternoon at home.",
    "The director clearly loves the genre. Every frame shows it. The cast is game too.",
    "no capital letters and no final full stop here so this one never qualifies",
    "Why? Why would anyone make this? Who paid for it? I want my two hours back now.",
]


# --------------------------------------------------------------------------- rewards


def test_group_rewards_order_hand_written_examples():
    r = group_rewards([GLOWING, HATEFUL, SHORT, LONG, PLAIN, ACADEMIC])
    assert tuple(r.columns) == GROUPS and len(r) == 6
    assert r.loc[0, "positive"] > 0.5 > -0.5 > r.loc[1, "positive"]
    assert r.loc[2, "concise"] > r.loc[3, "concise"]
    assert r.loc[4, "plain"] > r.loc[5, "plain"]
    # Glowing and hateful differ in a few words only: nearly the same length and grade.
    assert n_words(GLOWING) == n_words(HATEFUL) == 13
    assert r.loc[0, "concise"] == pytest.approx(-np.log(13), rel=1e-15)
    assert r.loc[1, "concise"] == pytest.approx(r.loc[0, "concise"], rel=1e-15)


def test_flesch_kincaid_known_answer():
    # 6 one-syllable words, 1 sentence: 0.39 * 6 + 11.8 * 1 - 15.59 = -1.45 (unrounded).
    assert flesch_kincaid_grade("The cat sat on the mat.") == pytest.approx(-1.45)
    # 2 sentences of 4 words; 'happy' has 2 syllables: 0.39 * 4 + 11.8 * 9 / 8 - 15.59.
    grade = flesch_kincaid_grade("The dog was happy. The cat was sad.")
    assert grade == pytest.approx(0.39 * 4 + 11.8 * 9 / 8 - 15.59)


def test_plain_is_clipped():
    monster = "Antidisestablishmentarianism notwithstanding."
    assert flesch_kincaid_grade(monster) > FK_CLIP[1]
    assert group_rewards([monster])["plain"].item() == -FK_CLIP[1]


def test_group_rewards_rejects_empty_text():
    with pytest.raises(ValueError, match="text 1 has no words"):
        group_rewards([SHORT, "   "])


def test_group_correlations_is_rank_based():
    x = np.array([0.1, 0.5, 0.2, 3.0, -1.0])
    frame = pd.DataFrame({"x": x, "cube": x**3, "neg": -np.exp(x)})
    rho = group_correlations(frame)
    assert rho.loc["x", "cube"] == pytest.approx(1.0)
    assert rho.loc["x", "neg"] == pytest.approx(-1.0)


# --------------------------------------------------------------------------- snippets


def test_extract_snippets_bounds_distinct_deterministic():
    a = extract_snippets(REVIEWS, 5, min_words=2, max_words=40, seed=3)
    assert a == extract_snippets(REVIEWS, 5, min_words=2, max_words=40, seed=3)
    assert len(a) == 5 and len({s.lower() for s in a}) == 5
    for s in a:
        assert 2 <= n_words(s) <= 40 and s[-1] in ".!?" and "<br" not in s
        # a prefix of 1-3 sentences of one cleaned review
        source = [clean_review(r) for r in REVIEWS if clean_review(r).startswith(s)]
        assert len(source) == 1
        assert 1 <= len(SENTENCE_SPLIT.split(s)) <= MAX_SENTENCES
    others = [extract_snippets(REVIEWS, 5, 2, 40, seed=s) for s in range(4, 10)]
    assert any(o != a for o in others)


def test_extract_snippets_respects_tight_bounds():
    reviews = ["This first sentence is far too long to ever qualify. Ok.", "Bad. Very bad. So bad."]
    for seed in range(5):  # every prefix of the second review fits, none of the first
        (got,) = extract_snippets(reviews, 1, min_words=1, max_words=6, seed=seed)
        assert got in {"Bad.", "Bad. Very bad.", "Bad. Very bad. So bad."}
    with pytest.raises(ValueError, match="only 1 of 2"):
        extract_snippets(reviews, 2, min_words=1, max_words=6, seed=0)


def test_extract_snippets_raises_with_counts_when_impossible():
    with pytest.raises(ValueError, match=r"only \d of 8 reviews .* \(wanted 9\)"):
        extract_snippets(REVIEWS, 9, min_words=1, max_words=100, seed=0)
    with pytest.raises(ValueError, match="only 0 of 8"):
        extract_snippets(REVIEWS, 1, min_words=200, max_words=300, seed=0)
    with pytest.raises(ValueError, match="min_words"):
        extract_snippets(REVIEWS, 1, min_words=5, max_words=4, seed=0)
    with pytest.raises(ValueError, match="n must be"):
        extract_snippets(REVIEWS, 0, min_words=1, max_words=4, seed=0)


def test_real_imdb_snippets_vary_in_length_and_groups_differ():
    texts = load_imdb()["text"][:3000]
    snippets = extract_snippets(texts, 200, min_words=4, max_words=60, seed=0)
    words = np.array([n_words(s) for s in snippets])
    q10, q90 = np.percentile(words, [10, 90])
    assert q90 / q10 >= 3  # 'concise' has a real range to rank
    rho = group_correlations(group_rewards(snippets)).to_numpy()
    off_diagonal = rho[~np.eye(len(GROUPS), dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.7  # groups are separable in principle


# --------------------------------------------------------------------------- prompts


@pytest.fixture(scope="module")
def imdb_texts() -> list[str]:
    return load_imdb()["text"][:400]


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=300)


def test_instruction_prompts_are_deterministic_distinct_and_from_reviews(imdb_texts):
    a = instruction_prompts(imdb_texts, 40, seed=3)
    assert a == instruction_prompts(imdb_texts, 40, seed=3)
    assert a != instruction_prompts(imdb_texts, 40, seed=4)
    assert len(set(a)) == 40
    starts = [clean_review(t) for t in imdb_texts]
    used = set()
    for p in a:
        k = next(i for i, t in enumerate(TEMPLATES) if p.startswith(t.split("{")[0]))
        used.add(k)
        opening = p[len(TEMPLATES[k].split("{")[0]) :]
        assert 8 <= len(opening.split()) <= 40 and opening[-1] in ".!?"
        assert any(s.startswith(opening) for s in starts)  # a real review opening
    assert len(used) >= 4  # templates are drawn, not one fixed phrasing


def test_instruction_prompts_openings_do_not_depend_on_the_templates(imdb_texts):
    """Templates come from a second generator: changing them keeps the openings."""
    plain = instruction_prompts(imdb_texts, 10, seed=5, templates=["{text}"])
    assert plain == extract_snippets(imdb_texts, 10, 8, 40, seed=5)
    quoted = instruction_prompts(imdb_texts, 10, seed=5, templates=["Q: {text}", "R: {text}"])
    assert [q[3:] for q in quoted] == plain


def test_instruction_prompts_custom_templates_and_bad_templates():
    texts = [f"Film number {i} was a delight to watch with friends." for i in range(10)]
    out = instruction_prompts(texts, 5, seed=0, templates=["Q: {text}"], min_words=3)
    assert all(p.startswith("Q: Film number ") for p in out) and len(set(out)) == 5
    for bad in (["no field"], ["{text} and {text}"], ["{text} {other}"]):
        with pytest.raises(ValueError, match="exactly once"):
            instruction_prompts(texts, 2, 0, templates=bad, min_words=3)
    with pytest.raises(ValueError, match="at least one template"):
        instruction_prompts(texts, 2, 0, templates=[], min_words=3)
    with pytest.raises(ValueError, match="wanted 11"):
        instruction_prompts(texts, 11, 0, min_words=3)


def test_make_prompts_are_eos_plus_the_first_tokens(tok):
    texts = ["The film was great fun", "Hi", "A long and winding review of a film"]
    prompts = make_prompts(tok, texts, 3)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert prompts == [[tok.eos_token_id, *ids[0][:3]], [tok.eos_token_id, *ids[2][:3]]]
    assert len(ids[1]) < 3  # too short for a prompt: dropped


def test_review_prompts_pair_each_prompt_with_its_own_continuation(tok):
    texts = ["The film was great fun and I loved it", "Hi there", "Bad. Very bad. So bad."]
    prompts, rest = review_prompts(tok, texts, prompt_tokens=2, max_new_tokens=3)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    kept = [d for d in ids if len(d) >= 2 + 4]
    assert len(kept) == len(prompts) == len(rest) >= 1 and len(kept) < len(texts)
    for p, r, d in zip(prompts, rest, kept, strict=True):
        assert p == [tok.eos_token_id, *d[:2]]
        assert r == d[2:5]  # the review's next tokens, not the prompt again
    assert prompts[:1] == make_prompts(tok, texts[:1], 2)  # the PPO query format


def test_split_prompts_are_disjoint_in_order_and_seeded():
    texts = [f"text {i}" for i in range(50)]

    def upper(batch: list[str]) -> list[str]:  # drops every text ending in 7
        return [t.upper() for t in batch if not t.endswith("7")]

    sizes = {"pref": 5, "ppo": 8, "eval": 3}
    out = split_prompts(upper, texts, sizes, seed=2)
    assert list(out) == ["pref", "ppo", "eval"]
    assert {k: len(v) for k, v in out.items()} == sizes
    flat = [p for part in out.values() for p in part]
    assert len(set(flat)) == len(flat)  # disjoint
    order = np.random.default_rng(2).permutation(50)[:32]
    assert flat == upper([texts[i] for i in order])[:16]  # consecutive cuts of one stream
    assert split_prompts(upper, texts, sizes, seed=2) == out
    assert split_prompts(upper, texts, sizes, seed=3) != out
    with pytest.raises(ValueError, match=r"only 3 of 32 texts give a prompt; .* need 16"):
        split_prompts(lambda b: b[:3], texts, sizes, seed=0)
