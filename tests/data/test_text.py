"""Planted user groups over text: snippets, rule-based rewards, simulated BT comparisons."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from pluralign import text_groups as tg
from pluralign.pipeline.assets import clean_review
from pluralign.core.simulate import _decode_pairs, simulate_users
from pluralign.core.stats import standardize
from pluralign.data.scorers import FK_CLIP, flesch_kincaid_grade, n_words
from pluralign.data.text import MAX_SENTENCES, extract_snippets
from pluralign.experiments.em_mixtures import group_correlations, group_rewards
from pluralign.experiments.weighted_mle import _SENTENCE_SPLIT

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
    assert tuple(r.columns) == tg.GROUPS and len(r) == 6
    assert r.loc[0, "positive"] > 0.5 > -0.5 > r.loc[1, "positive"]
    assert r.loc[2, "concise"] > r.loc[3, "concise"]
    assert r.loc[4, "plain"] > r.loc[5, "plain"]
    # Glowing and hateful differ in a few words only: nearly the same length and grade.
    assert r.loc[0, "concise"] == r.loc[1, "concise"] == -np.log(13)


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


def test_standardize_gives_zero_mean_unit_std_and_keeps_labels():
    raw = pd.DataFrame({"a": [1.0, 2.0, 4.0, 9.0], "b": [-3.0, 0.0, 0.5, 0.5]}, index=list("wxyz"))
    z = standardize(raw)
    np.testing.assert_allclose(z.mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(z.std(ddof=0), 1.0)
    assert list(z.index) == list("wxyz") and list(z.columns) == ["a", "b"]
    np.testing.assert_allclose(z["a"], (raw["a"] - 4.0) / np.sqrt(9.5))


@pytest.mark.parametrize(
    ("column", "match"), [([2.0, 2.0, 2.0], "constant"), ([1.0, np.nan, 2.0], "NaN or inf")]
)
def test_standardize_rejects_constant_or_non_finite(column, match):
    raw = pd.DataFrame({"ok": [0.0, 1.0, 2.0], "bad": column})
    with pytest.raises(ValueError, match=rf"\['bad'\] .*{match}"):
        standardize(raw)


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
        assert 1 <= len(_SENTENCE_SPLIT.split(s)) <= MAX_SENTENCES
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
    from pluralign.pipeline.assets import load_imdb

    texts = load_imdb()["text"][:3000]
    snippets = extract_snippets(texts, 200, min_words=4, max_words=60, seed=0)
    words = np.array([n_words(s) for s in snippets])
    q10, q90 = np.percentile(words, [10, 90])
    assert q90 / q10 >= 3  # 'concise' has a real range to rank
    rho = group_correlations(group_rewards(snippets)).to_numpy()
    off_diagonal = rho[~np.eye(len(tg.GROUPS), dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.7  # groups are separable in principle


# --------------------------------------------------------------------------- users


def test_decode_pairs_enumerates_every_pair_once():
    m = 40
    a, b = _decode_pairs(np.arange(m * (m - 1) // 2))
    rows, cols = np.triu_indices(m, k=1)
    assert set(zip(a.tolist(), b.tolist(), strict=True)) == set(
        zip(rows.tolist(), cols.tolist(), strict=True)
    )
    assert (a < b).all() and len(a) == len(rows)


def _rewards(m: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((m, 3))


def test_simulate_users_shapes_numbering_and_seed():
    sim = simulate_users(_rewards(), [2, 0, 3], comparisons_per_user=7, beta=2.0, seed=1)
    n = 5 * 7
    for field in (sim.user, sim.chosen, sim.rejected, sim.p_chosen):
        assert field.shape == (n,)
    np.testing.assert_array_equal(sim.user_group, [0, 0, 2, 2, 2])
    np.testing.assert_array_equal(sim.user, np.repeat(np.arange(5), 7))
    assert (sim.chosen != sim.rejected).all()
    assert ((sim.p_chosen > 0) & (sim.p_chosen < 1)).all()
    for u in range(5):  # distinct unordered pairs within a user
        rows = sim.user == u
        pairs = set(zip(np.minimum(sim.chosen, sim.rejected)[rows],
                        np.maximum(sim.chosen, sim.rejected)[rows], strict=True))  # fmt: skip
        assert len(pairs) == 7
    again = simulate_users(_rewards(), [2, 0, 3], 7, 2.0, seed=1)
    pd.testing.assert_frame_equal(sim.to_frame(), again.to_frame())
    other = simulate_users(_rewards(), [2, 0, 3], 7, 2.0, seed=2)
    assert not np.array_equal(sim.chosen, other.chosen)
    np.testing.assert_array_equal(sim.to_frame()["group"], sim.user_group[sim.user])


def test_simulate_users_can_ask_every_pair_once():
    sim = simulate_users(_rewards(m=5), [1, 1, 0], comparisons_per_user=10, beta=1.0, seed=0)
    for u in range(2):
        rows = sim.user == u
        lo = np.minimum(sim.chosen, sim.rejected)[rows]
        hi = np.maximum(sim.chosen, sim.rejected)[rows]
        assert sorted(zip(lo.tolist(), hi.tolist(), strict=True)) == [
            (a, b) for a in range(5) for b in range(5) if a < b
        ]


def test_p_chosen_matches_bradley_terry_recomputed_in_a_loop():
    r, beta = _rewards(), 1.7
    sim = simulate_users(r, [3, 2, 4], comparisons_per_user=11, beta=beta, seed=5)
    for i in range(sim.user.size):
        k = sim.user_group[sim.user[i]]
        margin = beta * (r[sim.chosen[i], k] - r[sim.rejected[i], k])
        assert sim.p_chosen[i] == pytest.approx(1 / (1 + np.exp(-margin)), rel=1e-12)


def test_win_frequency_of_better_text_matches_planted_probability():
    r, beta = _rewards(m=60), 1.0
    sim = simulate_users(r, [40, 40, 40], comparisons_per_user=200, beta=beta, seed=0)
    k = sim.group
    diff = r[sim.chosen, k] - r[sim.rejected, k]
    for g in range(3):  # per group: users follow their own group's reward
        rows = k == g
        better_won = (diff[rows] > 0).mean()
        expected = expit(beta * np.abs(diff[rows])).mean()
        # 8000 draws: standard error <= 0.0056; 0.02 is > 3.5 standard errors
        assert better_won == pytest.approx(expected, abs=0.02)
        assert expected > 0.65  # the check has power: a coin flip would give 0.5
        # ... and not another group's reward (independent columns: about 0.5)
        other = (g + 1) % 3
        other_won = (r[sim.chosen[rows], other] > r[sim.rejected[rows], other]).mean()
        assert abs(other_won - 0.5) < 0.05


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rewards": np.zeros(5)}, "2-D"),
        ({"rewards": np.zeros((1, 3))}, "at least 2 texts"),
        ({"rewards": np.array([[0.0, 1.0, np.inf]] * 4)}, "NaN or inf"),
        ({"users_per_group": [1, 1]}, "K=3"),
        ({"users_per_group": [1, -1, 1]}, "non-negative"),
        ({"users_per_group": [0, 0, 0]}, "not all 0"),
        ({"users_per_group": [1.0, 1.0, 1.0]}, "ints"),
        ({"comparisons_per_user": 0}, r"1\.\.6"),
        ({"comparisons_per_user": 7}, r"1\.\.6"),
        ({"beta": 0.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
    ],
)
def test_simulate_users_validates_inputs(kwargs, match):
    args = {
        "rewards": _rewards(m=4),
        "users_per_group": [1, 1, 1],
        "comparisons_per_user": 6,
        "beta": 1.0,
        "seed": 0,
    }
    with pytest.raises(ValueError, match=match):
        simulate_users(**{**args, **kwargs})
