"""P-SOUPS-like dimensions: scores, prompts, mixed users, simulated labels, file loading."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from pluralign import psoups
from pluralign.pipeline.assets import AssetError, clean_review, load_imdb
from pluralign.data.psoups import DIMENSIONS, dimension_scores, label_by_dimensions, mixture_users
from pluralign.data.text import TEMPLATES, instruction_prompts

CAT = "The cat sat on the mat."  # 6 one-syllable words: grade 0.39*6 + 11.8 - 15.59 = -1.45
PHD = "Quantum chromodynamics characterizes interactions between quarks and gluons."
MONSTER = "Antidisestablishmentarianism notwithstanding."  # grade > 40: clipped to 25
THREE = "Loved it, truly."
THIRTY = " ".join(["I", "watched", "it", "again", "and", "again"] * 5)
FRIENDLY = "Thank you so much, you are wonderful and kind!"
RUDE = "Shut up, you stupid idiot. I hate this."
NEUTRAL = "The meeting is at noon."


# --------------------------------------------------------------------------- scores


def test_dimension_scores_hand_values_and_orderings():
    s = dimension_scores([CAT, PHD, MONSTER, THREE, THIRTY, FRIENDLY, RUDE, NEUTRAL, ""])
    assert list(s.columns) == ["P1A", "P1B", "P2A", "P2B", "P3A", "P3B"] == list(DIMENSIONS)
    assert s.loc[0, "P1A"] == pytest.approx(1.45)  # easy: minus a negative grade
    assert s.loc[0, "P1A"] > s.loc[1, "P1A"] and s.loc[1, "P1B"] > s.loc[0, "P1B"]
    assert s.loc[1, "P1B"] > 10  # a PhD-like sentence has a university grade
    assert s.loc[2, "P1B"] == 25.0 and s.loc[8, "P1A"] == 5.0  # FK_CLIP at both ends
    assert s.loc[3, "P2A"] == pytest.approx(-np.log(4)) and s.loc[4, "P2B"] == np.log(31)
    assert s.loc[3, "P2A"] > s.loc[4, "P2A"] and s.loc[4, "P2B"] > s.loc[3, "P2B"]
    assert s.loc[8, "P2A"] == 0.0  # the empty answer is finite and the most concise
    assert s.loc[5, "P3A"] > 0.5 > -0.5 > s.loc[6, "P3A"] and s.loc[7, "P3A"] == 0.0
    assert s.loc[6, "P3B"] > s.loc[7, "P3B"] > s.loc[5, "P3B"]
    for axis in ("P1", "P2", "P3"):  # opposite directions are exact negatives
        np.testing.assert_array_equal(s[f"{axis}A"].to_numpy(), -s[f"{axis}B"].to_numpy())


def test_dimensions_describe_their_sign_and_scorer():
    for name, d in DIMENSIONS.items():
        assert d.name == name and d.description and d.sign in (-1.0, 1.0)
        assert d.scorer in {"fk_grade", "log_words", "vader"}
    signs = {n: d.sign for n, d in DIMENSIONS.items()}
    assert signs == {"P1A": -1, "P1B": 1, "P2A": -1, "P2B": 1, "P3A": 1, "P3B": -1}


# --------------------------------------------------------------------------- prompts


@pytest.fixture(scope="module")
def imdb_texts() -> list[str]:
    return load_imdb()["text"][:400]


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


def test_instruction_prompts_custom_templates_and_bad_templates():
    texts = [f"Film number {i} was a delight to watch with friends." for i in range(10)]
    out = instruction_prompts(texts, 5, seed=0, templates=["Q: {text}"], min_words=3)
    assert all(p.startswith("Q: Film number ") for p in out) and len(set(out)) == 5
    for bad in (["no field"], ["{text} and {text}"], ["{text} {other}"]):
        with pytest.raises(ValueError, match="exactly once"):
            instruction_prompts(texts, 2, 0, templates=bad, min_words=3)
    with pytest.raises(ValueError, match="wanted 11"):
        instruction_prompts(texts, 11, 0, min_words=3)


# --------------------------------------------------------------------------- users


def test_mixture_users_ten_to_one_and_validation():
    users = mixture_users("P2A", "P2B", 10, 1)
    assert users == ["P2A"] * 10 + ["P2B"]
    with pytest.raises(ValueError, match=r"minority dimension 'P4A'"):
        mixture_users("P2A", "P4A", 10, 1)
    with pytest.raises(ValueError, match="not a mix"):
        mixture_users("P1A", "P1A", 10, 1)
    for n_maj, n_min, field in ((0, 1, "n_majority"), (10, 0, "n_minority"), (2.5, 1, "n_maj")):
        with pytest.raises(ValueError, match=field):
            mixture_users("P1A", "P1B", n_maj, n_min)


def _length_pairs(n: int, seed: int) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Pairs of neutral texts whose word counts differ by a factor >= 3 in random order."""
    rng = np.random.default_rng(seed)
    short = rng.integers(2, 5, size=n)
    long = rng.integers(15, 40, size=n)
    swap = rng.random(n) < 0.5
    wa, wb = np.where(swap, long, short), np.where(swap, short, long)
    return [" ".join(["word"] * k) for k in wa], [" ".join(["word"] * k) for k in wb], wa, wb


def test_labels_follow_each_users_dimension_planted():
    texts_a, texts_b, wa, wb = _length_pairs(200, seed=1)
    sa, sb = dimension_scores(texts_a), dimension_scores(texts_b)
    users = mixture_users("P2A", "P2B", 10, 2)
    labels, groups = label_by_dimensions(sa, sb, users, per_user=50, beta=20.0, seed=0)
    assert groups == ("P2A", "P2B")
    np.testing.assert_array_equal(labels.user_group, [0] * 10 + [1] * 2)
    assert [groups[labels.user_group[u]] for u in range(12)] == users
    a_shorter = (wa < wb)[labels.pair]
    is_concise = labels.user_group[labels.user] == 0
    agree = labels.a_wins == np.where(is_concise, a_shorter, ~a_shorter)
    assert agree.mean() > 0.98  # large beta: each user follows their own dimension
    assert agree[~is_concise].mean() > 0.95  # the minority too, not only the bulk
    # p_a from an independent pooled z-score of log(words + 1) by hand.
    raw = np.log(np.concatenate([wa, wb]) + 1.0)
    z = (raw - raw.mean()) / raw.std()
    za, zb = z[:200], z[200:]
    sign = np.where(is_concise, -1.0, 1.0)
    want = expit(20.0 * sign * (za[labels.pair] - zb[labels.pair]))
    np.testing.assert_allclose(labels.p_a, want, rtol=1e-12)


def test_labels_with_three_dimensions_and_small_beta_are_noisy_but_informed():
    texts_a = [FRIENDLY, RUDE, CAT, PHD, THREE, THIRTY] * 20
    texts_b = [RUDE, NEUTRAL, PHD, CAT, THIRTY, THREE] * 20
    sa, sb = dimension_scores(texts_a), dimension_scores(texts_b)
    users = ["P3A"] * 4 + ["P1B"] * 4 + ["P2B"] * 4
    labels, groups = label_by_dimensions(sa, sb, users, per_user=100, beta=1.0, seed=2)
    assert groups == ("P3A", "P1B", "P2B")
    truth = np.stack([(sa[g] > sb[g]).to_numpy() for g in groups], axis=1)  # (pairs, 3)
    differ = np.stack([(sa[g] != sb[g]).to_numpy() for g in groups], axis=1)
    g = labels.user_group[labels.user]
    keep = differ[labels.pair, g]
    agree = labels.a_wins[keep] == truth[labels.pair, g][keep]
    assert 0.6 < agree.mean() < 0.97  # beta = 1: informative, yet noisy


def test_label_by_dimensions_validation():
    s = dimension_scores([CAT, PHD, THREE])
    with pytest.raises(ValueError, match="contiguous"):
        label_by_dimensions(s, s, ["P1A", "P1B", "P1A"], 1, 1.0, 0)
    with pytest.raises(ValueError, match="unknown dimensions"):
        label_by_dimensions(s, s, ["P9A"], 1, 1.0, 0)
    with pytest.raises(ValueError, match=r"scores_b lacks columns \['P2A'\]"):
        label_by_dimensions(s, s.drop(columns="P2A"), ["P2A"], 1, 1.0, 0)
    with pytest.raises(ValueError, match="rows"):
        label_by_dimensions(s, s.iloc[:2], ["P2A"], 1, 1.0, 0)


# --------------------------------------------------------------------------- files


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


ROWS = [
    {"instruction": "Review a film.", "better": "Good.", "worse": "It was a film I saw."},
    {"instruction": "Describe a film.", "better": "Fine.", "worse": "A long answer here."},
]
MAP = {"prompt": "instruction", "chosen": "better", "rejected": "worse"}


def test_load_local_json_with_column_mapping(tmp_path, host_lookups):
    path = _write(tmp_path / "p2a.jsonl", ROWS)
    data = psoups.load_psoups_file(path, columns=MAP, cache_dir=tmp_path / "cache")
    assert data.column_names == ["prompt", "chosen", "rejected"]
    assert data["prompt"] == ["Review a film.", "Describe a film."]
    assert data["chosen"] == ["Good.", "Fine."] and data["rejected"][1] == "A long answer here."
    # The same file in a folder, with the default standard names.
    folder = tmp_path / "folder"
    folder.mkdir()
    std = [
        {"prompt": r["instruction"], "chosen": r["better"], "rejected": r["worse"]} for r in ROWS
    ]
    _write(folder / "train.jsonl", std)
    again = psoups.load_psoups_file(folder, cache_dir=tmp_path / "cache")
    assert again.to_dict() == data.to_dict()
    assert host_lookups == []


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"better": "  "}, r"row 1: field 'chosen' \(column 'better'\) is empty or not text"),
        ({"instruction": None}, r"row 1: field 'prompt' \(column 'instruction'\)"),
        ({"worse": "Fine."}, r"row 1: 'chosen' equals 'rejected'"),
    ],
)
def test_load_names_file_row_and_field(tmp_path, row, message):
    path = _write(tmp_path / "bad.jsonl", [ROWS[0], ROWS[1] | row])
    with pytest.raises(ValueError, match=re.escape(f"{path}:train: ") + message):
        psoups.load_psoups_file(path, columns=MAP, cache_dir=tmp_path / "cache")


def test_load_missing_column_and_bad_arguments(tmp_path):
    path = _write(tmp_path / "p.jsonl", ROWS)
    with pytest.raises(ValueError, match=r"missing columns \['chosen', 'prompt', 'rejected'\]"):
        psoups.load_psoups_file(path, cache_dir=tmp_path / "cache")  # default names absent
    with pytest.raises(ValueError, match="must map exactly"):
        psoups.load_psoups_file(path, columns={"prompt": "instruction"})
    with pytest.raises(ValueError, match="local file has no revision"):
        psoups.load_psoups_file(path, revision="abc123", columns=MAP)
    with pytest.raises(ValueError, match="pin a revision"):  # checked before any download
        psoups.load_psoups_file("someone/p-soups", columns=MAP)
    with pytest.raises(AssetError, match=re.escape(f"{tmp_path / 'absent.json'}:train: cannot")):
        psoups.load_psoups_file(tmp_path / "absent.json", columns=MAP)
