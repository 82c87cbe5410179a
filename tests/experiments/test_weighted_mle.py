"""Notebook 02 (weighted_mle), the case study: its pieces (themes, edits, clones,
comparisons) and a tiny end-to-end run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from helpers import TINY_PARAMS

from pluralign.core.stats import mean_ci
from pluralign.experiments.weighted_mle import (
    EDITS,
    THEMES,
    TYPES,
    Config,
    clone_candidates,
    make_clones,
    run_case_study,
    sample_comparisons,
    select_snippets,
    theme_level_mle,
    theme_of,
    utility_matrix,
)
from pluralign.pipeline.config import from_mapping, profile_section

REVIEWS = [
    "The acting was superb in every scene. I loved the plot twists until the very end.",
    "Great cast and a lovely soundtrack. The cast really carried this slow film to the end.",
    "The story made no sense at all to me. Visually it is a stunning and rich piece of work.",
    "The music was far too loud in most of the scenes. The actress gave a moving performance.",
    "Nothing to say here. The script was written by a committee of very tired people.",
    "The cinematography is gorgeous from the first shot to the last one. The story drags on.",
    "Her performance alone is worth the ticket price for sure. The ending was a real letdown.",
    "The photography of the desert is breathtaking in its scale. The actors seem so bored.",
]


@pytest.fixture(scope="module")
def tiny_cfg() -> Config:
    """The tiny params' ``weighted_mle`` section for the cpu profile (shared keys, then the
    profile's overrides), loaded as strictly as the notebook loads it."""
    section = profile_section(TINY_PARAMS["weighted_mle"], "cpu", "weighted_mle", Config)
    return from_mapping(Config, {**section, "profile": "cpu"}, "weighted_mle")


# --------------------------------------------------------------------------- themes


def test_theme_of_needs_exactly_one_theme():
    assert theme_of("The acting was superb.") == "acting"
    assert theme_of("The plot was thin.") == "story"
    assert theme_of("What a soundtrack.") == "visuals"
    assert theme_of("Good acting, bad plot.") is None  # two themes
    assert theme_of("I give it a score of 3.") is None  # 'score' alone is a rating


def test_select_snippets_is_deterministic_single_theme_and_disjoint():
    a = select_snippets(REVIEWS, 2, seed=0, min_words=4)
    b = select_snippets(REVIEWS, 2, seed=0, min_words=4)
    pd.testing.assert_frame_equal(a, b)
    assert a["theme"].value_counts().to_dict() == {t: 2 for t in THEMES}
    assert all(theme_of(t) == th for t, th in zip(a["text"], a["theme"], strict=True))
    assert a["text"].str.lower().is_unique  # disjoint across and within themes
    assert all(4 <= len(t.split()) <= 30 and t[-1] in ".!?" for t in a["text"])
    others = [select_snippets(REVIEWS, 2, seed=s, min_words=4)["text"].tolist() for s in (1, 2)]
    assert any(o != a["text"].tolist() for o in others)  # the seed matters


def test_select_snippets_errors_when_the_corpus_is_too_small():
    with pytest.raises(ValueError, match="not enough single-theme sentences"):
        select_snippets(REVIEWS, 10, seed=0, min_words=4)
    with pytest.raises(ValueError, match="n_per_theme"):
        select_snippets(REVIEWS, 0, seed=0)


# --------------------------------------------------------------------------- clones


def test_edits_are_small_deterministic_and_keep_the_theme():
    text = "The music is very good, and it is the best part of this movie."
    edits = {name: fn(text) for name, fn in EDITS}
    assert edits["punctuation"].endswith("!")
    assert edits["synonym"] == text.replace("very", "really")  # the first word in the table
    assert "very" not in edits["drop filler"]
    assert "it's" in edits["contraction"]
    assert edits == {name: fn(text) for name, fn in EDITS}
    base = pd.DataFrame({"text": [text], "theme": ["visuals"]})
    cands = clone_candidates(base, "visuals")
    assert len(cands) == len(set(cands["text"])) and text not in set(cands["text"])
    assert (cands["theme"] == "visuals").all()
    assert all(theme_of(t) == "visuals" for t in cands["text"])


def test_make_clones_keeps_only_candidates_within_eps():
    cands = pd.DataFrame(
        {"text": list("abcdef"), "theme": "visuals", "original": [0, 0, 0, 1, 1, 2], "edit": "x"}
    )
    dist = np.array([0.3, 0.05, 0.07, 0.09, 0.01, 0.2])
    kept = make_clones(cands, dist, per_snippet=1, eps=0.1)
    assert kept["text"].tolist() == ["b", "d"]  # first within eps per original; none for 2
    assert (kept["distance"] <= 0.1).all()
    assert len(make_clones(cands, dist, per_snippet=2, eps=0.1)) == 4


@pytest.mark.parametrize("eps", [0.0, -0.1, float("nan")])
def test_make_clones_rejects_bad_eps(eps):
    cands = pd.DataFrame({"text": ["a"], "theme": "visuals", "original": [0], "edit": "x"})
    with pytest.raises(ValueError, match="eps"):
        make_clones(cands, np.array([0.0]), per_snippet=1, eps=eps)


def test_clone_candidates_rejects_unknown_theme():
    with pytest.raises(ValueError, match="unknown theme"):
        clone_candidates(pd.DataFrame({"text": ["x"], "theme": ["acting"]}), "romance")


# --------------------------------------------------------------------------- preferences


def test_design_flips_the_theme_level_mle_when_visuals_triples():
    # The population was chosen for this (module docstring): a closed-form check.
    equal, tripled = theme_level_mle([1, 1, 1]), theme_level_mle([1, 1, 3])
    assert THEMES[int(np.argmax(equal))] == "acting"
    assert THEMES[int(np.argmax(tripled))] == "story"
    assert sum(t.share for t in TYPES) == pytest.approx(1.0)


def test_sample_comparisons_counts_types_and_bt_outcomes():
    theme_idx = np.repeat([0, 1, 2], 20)  # 60 alternatives
    n = 40_000
    win, los, typ = sample_comparisons(theme_idx, n, np.random.default_rng(0))
    assert win.shape == los.shape == typ.shape == (n,)
    assert np.all(win != los) and win.min() >= 0 and max(win.max(), los.max()) < 60
    shares = np.bincount(typ, minlength=3) / n
    np.testing.assert_allclose(shares, [t.share for t in TYPES], atol=0.01)
    # Acting vs visuals: P(acting wins) = sum_t share_t sigma(U[t, acting] - U[t, visuals]).
    U = utility_matrix()
    want = sum(t.share / (1 + np.exp(U[i, 2] - U[i, 0])) for i, t in enumerate(TYPES))
    a_v = (theme_idx[win] == 0) & (theme_idx[los] == 2)
    v_a = (theme_idx[win] == 2) & (theme_idx[los] == 0)
    assert a_v.sum() / (a_v.sum() + v_a.sum()) == pytest.approx(want, abs=0.02)


def test_mean_ci_known_answer():
    mean, _, hi = mean_ci([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert hi - mean == pytest.approx(4.302652729911275 / np.sqrt(3))  # t_{0.975, 2} * sd/sqrt(n)


# --------------------------------------------------------------------------- end to end


def test_run_case_study_tiny_end_to_end(tiny_cfg):
    out = run_case_study(tiny_cfg)
    info, snippets = out["clones"], out["snippets"]
    n = tiny_cfg.snippets_per_theme
    assert info["m_original"] == 3 * n
    assert 1 <= info["n_clones"] <= n * tiny_cfg.clones_per_snippet
    clones = snippets[snippets["edit"] != "original"]
    assert len(clones) == info["n_clones"] and (clones["theme"] == tiny_cfg.clone_theme).all()
    assert clones["distance"].max() == pytest.approx(info["eps_max"])
    assert info["eps_max"] <= tiny_cfg.clone_eps  # within the reported eps
    # Every condition has every theme and a CI around its mean; masses sum to 1.
    n_models, n_conditions = 3, 3  # paper lr, deviation lr, tabular x MLE, 2 regions
    assert len(out["summary"]) == 2 * n_models * n_conditions * 3
    s = out["summary"]
    assert ((s["ci_low"] <= s["mean"]) & (s["mean"] <= s["ci_high"])).all()
    w = out["weights"]
    np.testing.assert_allclose(w[[f"mass_{t}" for t in THEMES]].sum(axis=1), 1.0)
    assert len(out["runs"]) == tiny_cfg.n_seeds * 2 * n_models * n_conditions * 3
    assert set(out["headline"]["flipped"]) <= {True, False}
    assert np.isfinite(out["training"][["loss_start", "loss_end"]].to_numpy()).all()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"clone_theme": "romance"}, "unknown theme"),
        ({"clone_eps": 0.0}, "clone_eps"),
        ({"n_seeds": 0}, "n_seeds"),
        ({"tabular_lam": 0.0}, "tabular_lam"),
    ],
)
def test_run_case_study_rejects_bad_config_before_work(tiny_cfg, change, match):
    with pytest.raises(ValueError, match=match):
        run_case_study(dataclasses.replace(tiny_cfg, **change))
