"""P-SOUPS-like dimensions (pluralign.data.psoups): scores, mixed users, simulated labels,
and P-SOUPS files through the one validated loader (pluralign.data.preferences).

The instruction prompts (pluralign.data.text) are tested in tests/data/test_text.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from pluralign.data.preferences import load_preference_file
from pluralign.data.psoups import (
    DIMENSIONS,
    PREFERENCE_PROMPTS,
    check_dimensions,
    comparison_texts,
    dimension_scores,
    group_truth,
    label_by_dimensions,
    load_psoups,
    mixture_users,
    opposed,
    psoups_users,
    strip_preference,
    with_preference,
)
from pluralign.pipeline.assets import AssetError

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
    assert s.loc[2, "P1B"] == 25.0 and s.loc[8, "P1A"] == 5.0  # FK_CLIP at both ends (exact)
    assert s.loc[3, "P2A"] == pytest.approx(-np.log(4), rel=1e-15)
    assert s.loc[4, "P2B"] == pytest.approx(np.log(31), rel=1e-15)
    assert s.loc[3, "P2A"] > s.loc[4, "P2A"] and s.loc[4, "P2B"] > s.loc[3, "P2B"]
    # the empty answer is finite and the most concise: -log(0 + 1)
    assert s.loc[8, "P2A"] == pytest.approx(0.0, abs=1e-15)
    assert s.loc[5, "P3A"] > 0.5 > -0.5 > s.loc[6, "P3A"]
    assert s.loc[7, "P3A"] == pytest.approx(0.0, abs=1e-15)  # VADER: neutral wording
    assert s.loc[6, "P3B"] > s.loc[7, "P3B"] > s.loc[5, "P3B"]
    for axis in ("P1", "P2", "P3"):  # exact negatives: one raw score times -1 and +1
        np.testing.assert_array_equal(s[f"{axis}A"].to_numpy(), -s[f"{axis}B"].to_numpy())


def test_dimensions_describe_their_sign_and_scorer():
    for name, d in DIMENSIONS.items():
        assert d.name == name and d.description and d.sign in (-1.0, 1.0)
        assert d.scorer in {"fk_grade", "log_words", "vader"}
    signs = {n: d.sign for n, d in DIMENSIONS.items()}
    assert signs == {"P1A": -1, "P1B": 1, "P2A": -1, "P2B": 1, "P3A": 1, "P3B": -1}


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


def _standard(rows: list[dict]) -> list[dict]:
    return [
        {"prompt": r["instruction"], "chosen": r["better"], "rejected": r["worse"]} for r in rows
    ]


def test_load_local_json_with_column_mapping(tmp_path, host_lookups):
    path = _write(tmp_path / "p2a.jsonl", ROWS)
    data = load_preference_file(path, columns=MAP, cache_dir=tmp_path / "cache")
    assert data.column_names == ["prompt", "chosen", "rejected"]
    assert data["prompt"] == ["Review a film.", "Describe a film."]
    assert data["chosen"] == ["Good.", "Fine."] and data["rejected"][1] == "A long answer here."
    # The same file in a folder, with the default standard names.
    folder = tmp_path / "folder"
    folder.mkdir()
    _write(folder / "train.jsonl", _standard(ROWS))
    again = load_preference_file(folder, cache_dir=tmp_path / "cache")
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
    with pytest.raises(ValueError, match=re.escape(f"{path}: ") + message):
        load_preference_file(path, columns=MAP, cache_dir=tmp_path / "cache")


def test_load_missing_column_and_bad_arguments(tmp_path, host_lookups):
    path = _write(tmp_path / "p.jsonl", ROWS)
    with pytest.raises(ValueError, match=r"missing columns \['chosen', 'prompt', 'rejected'\]"):
        load_preference_file(path, cache_dir=tmp_path / "cache")  # default names absent
    with pytest.raises(ValueError, match="must map exactly"):
        load_preference_file(path, columns={"prompt": "instruction"})
    # A local file has no revision: "file@rev" is refused before anything is loaded.
    pinned_local = f"{path}@abc123"
    with pytest.raises(AssetError, match=re.escape(f"{pinned_local} is a local path; it has no")):
        load_preference_file(pinned_local, columns=MAP, cache_dir=tmp_path / "cache")
    # A hub name must be pinned; refused before any download.
    with pytest.raises(AssetError, match=re.escape("pin a revision (someone/p-soups@<commit")):
        load_preference_file("someone/p-soups", columns=MAP)
    with pytest.raises(AssetError, match=re.escape(f"{tmp_path / 'absent.json'}:train: cannot")):
        load_preference_file(tmp_path / "absent.json", columns=MAP)
    assert host_lookups == []


def test_load_psoups_reads_each_dimensions_file(tmp_path, monkeypatch, host_lookups):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    _write(tmp_path / "p1a.jsonl", _standard(ROWS))
    _write(tmp_path / "p1b.jsonl", _standard(ROWS[::-1]))
    files = {"P1A": "p1a.jsonl", "P1B": "p1b.jsonl", "P2A": "absent.jsonl"}
    out = load_psoups(tmp_path, files, ["P1A", "P1B"])
    assert list(out) == ["P1A", "P1B"]
    assert out["P1A"]["prompt"] == ["Review a film.", "Describe a film."]
    assert out["P1B"]["chosen"] == ["Fine.", "Good."]
    with pytest.raises(ValueError, match="no file for dimension P3A"):
        load_psoups(tmp_path, files, ["P1A", "P3A"])
    with pytest.raises(AssetError, match=re.escape(str(tmp_path / "absent.jsonl"))):
        load_psoups(tmp_path, files, ["P2A"])
    assert host_lookups == []


# --------------------------------------------------------------------------- notebook 05's groups


def _rows(tag: str, n: int, suffix: str = ""):
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [f" {tag}{i} {suffix}" for i in range(n)],
            "chosen": [f"c{tag}{i}" for i in range(n)],
            "rejected": [f"r{tag}{i}" for i in range(n)],
        }
    )


def test_psoups_users_cut_each_dimensions_comparisons_into_users():
    files = {"P1A": _rows("a", 7), "P1B": _rows("b", 4)}
    chosen, rejected, user_of, user_group, groups, held = psoups_users(
        files, {"P1A": 3, "P1B": 2}, per_user=2, seed=0, template="<{prompt}>"
    )
    assert groups == ("P1A", "P1B")
    np.testing.assert_array_equal(user_group, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(user_of, np.repeat(np.arange(5), 2))
    for c, r, u in zip(chosen, rejected, user_of, strict=True):
        tag = "a" if user_group[u] == 0 else "b"
        i = c.split(tag)[-1]
        assert c == f"<{tag}{i}>c{tag}{i}" and r == f"<{tag}{i}>r{tag}{i}"  # one row each
    assert len(set(chosen)) == len(chosen)  # distinct comparisons across users
    assert {d: len(rows) for d, rows in held.items()} == {"P1A": 0, "P1B": 0}  # none asked
    again = psoups_users(files, {"P1A": 3, "P1B": 2}, per_user=2, seed=0, template="<{prompt}>")
    assert again[0] == chosen
    with pytest.raises(ValueError, match=r"P1B: 3 users x 2 need 6 rows, the file has 4 outside"):
        psoups_users(files, {"P1A": 1, "P1B": 3}, 2, seed=0)


def _shared_prompt_files(n: int):
    """P1A and P1B as in the release: the same prompts, each answer pair in both files with
    opposite labels."""
    from datasets import Dataset

    prompts = [f"Explain topic {i}." for i in range(n)]
    easy, hard = [f"Simple {i}." for i in range(n)], [f"Intricate {i}." for i in range(n)]
    return {
        "P1A": Dataset.from_dict({"prompt": prompts, "chosen": easy, "rejected": hard}),
        "P1B": Dataset.from_dict({"prompt": prompts, "chosen": hard, "rejected": easy}),
    }


def test_psoups_users_hold_prompts_out_of_every_file():
    files = _shared_prompt_files(12)
    users = {"P1A": 2, "P1B": 2}
    chosen, rejected, *_, held = psoups_users(
        files, users, per_user=2, seed=3, template="<{prompt}>", held_out=3
    )
    assert list(held) == ["P1A", "P1B"]
    assert all(len(held[d]) == 3 for d in held)
    assert held["P1A"].column_names == ["prompt", "chosen", "rejected"]  # whole rows
    judge_prompts = {p for d in held for p in held[d]["prompt"]}
    trained_prompts = {t[1 : t.index(">")] for t in chosen + rejected}
    assert 4 <= len(trained_prompts) <= 8  # 4 rows per file; the files may share prompts
    # the point: no judge prompt reaches any user of any file (P1B's row on a P1A judge
    # prompt carries the opposite label of the same answers)
    assert not judge_prompts & trained_prompts
    # the rows of a held-out prompt in each file are held out together
    assert set(held["P1A"]["prompt"]) == set(held["P1B"]["prompt"])
    again = psoups_users(files, users, per_user=2, seed=3, template="<{prompt}>", held_out=3)
    assert again[0] == chosen  # seeded
    other = psoups_users(files, users, per_user=2, seed=4, template="<{prompt}>", held_out=3)
    assert set(other[-1]["P1A"]["prompt"]) != set(held["P1A"]["prompt"])


def test_psoups_users_name_the_file_that_runs_short():
    files = _shared_prompt_files(6)
    with pytest.raises(ValueError, match=r"^P1A: 2 users x 2 need 4 rows, the file has 3 outside"):
        psoups_users(files, {"P1A": 2, "P1B": 1}, per_user=2, seed=0, held_out=3)
    psoups_users(files, {"P1A": 1, "P1B": 1}, per_user=3, seed=0, held_out=3)  # 3 + 3: fits
    with pytest.raises(ValueError, match=r"held_out=7 rows per file: only"):
        psoups_users(files, {"P1A": 1, "P1B": 1}, per_user=1, seed=0, held_out=7)


def test_psoups_users_strip_the_preference_instruction_from_the_prompt():
    files = {
        "P1A": _rows("a", 4, PREFERENCE_PROMPTS["P1A"]),
        "P1B": _rows("b", 4, PREFERENCE_PROMPTS["P1B"]),
    }
    chosen, rejected, *_, held = psoups_users(
        files, {"P1A": 1, "P1B": 1}, per_user=3, seed=0, template="<{prompt}>", held_out=1
    )
    for text in chosen + rejected:
        assert not any(p in text for p in PREFERENCE_PROMPTS.values())
        assert text.startswith("<") and "> " not in text and " >" not in text
    for dim in files:  # the held-out rows are raw: stripped where they become texts
        assert PREFERENCE_PROMPTS[dim] in held[dim]["prompt"][0]


# --------------------------------------------------------------------------- preference prompts


def test_preference_prompts_are_the_release_instructions():
    assert list(PREFERENCE_PROMPTS) == ["P1A", "P1B", "P2A", "P2B", "P3A", "P3B", "P3C", "P3D"]
    assert PREFERENCE_PROMPTS["P1A"] == (
        "Generate a response that can be easily understood by an elementary school student."
    )
    assert PREFERENCE_PROMPTS["P1B"] == (
        "Generate a response that only a PhD Student in that specific field could understand."
    )
    assert set(DIMENSIONS) <= set(PREFERENCE_PROMPTS)


@pytest.mark.parametrize("dim", list(PREFERENCE_PROMPTS))
def test_strip_preference_removes_each_instruction_wherever_it_stands(dim: str):
    instruction = PREFERENCE_PROMPTS[dim]
    text = "Explain why the sky is blue, in two sentences."
    assert strip_preference(f"{text} {instruction}") == text  # the release's place: the end
    assert strip_preference(f"{instruction} {text}") == text
    assert strip_preference(f"Explain why the sky {instruction} is blue, in two sentences.") == (
        text
    )
    assert strip_preference(f"  {text}  {instruction}  ") == text
    assert strip_preference(instruction) == ""


def test_strip_preference_leaves_other_text_alone():
    assert strip_preference("Explain rain.") == "Explain rain."
    assert strip_preference("  Explain rain.\n") == "Explain rain."  # trimmed only
    assert strip_preference("Line one.\nLine two.") == "Line one.\nLine two."
    # not an instruction: a prefix of one, or one with a different word, stays
    near = "Generate a response that can be easily understood by an elementary school pupil."
    assert strip_preference(f"Explain rain. {near}") == f"Explain rain. {near}"
    assert strip_preference("Generate a response") == "Generate a response"


@pytest.mark.parametrize("dim", ["P1A", "P1B", "P3D"])
def test_with_preference_appends_the_instruction_and_strip_undoes_it(dim: str):
    prompt = "  Why do cats purr? "
    conditioned = with_preference(prompt, dim)
    assert conditioned == f"Why do cats purr? {PREFERENCE_PROMPTS[dim]}"
    assert strip_preference(conditioned) == "Why do cats purr?"
    with pytest.raises(KeyError):
        with_preference(prompt, "P9A")


def test_comparison_texts_use_the_stripped_templated_prompt():
    record = {
        "prompt": f"Explain rain. {PREFERENCE_PROMPTS['P1B']}",
        "chosen": " Precipitation manifests.",
        "rejected": " It is wet.",
    }
    chosen, rejected = comparison_texts(record)
    assert chosen == "<|user|>\nExplain rain.\n<|assistant|>\n Precipitation manifests."
    assert rejected == "<|user|>\nExplain rain.\n<|assistant|>\n It is wet."
    assert comparison_texts(record, "Q: {prompt} A:") == (
        "Q: Explain rain. A: Precipitation manifests.",
        "Q: Explain rain. A: It is wet.",
    )


def test_group_truth_check_dimensions_and_opposed():
    texts = [CAT, PHD, THREE]
    gt = group_truth(texts, "P1A", "P2B")
    scores = dimension_scores(texts)
    assert list(gt.columns) == ["majority", "minority"]
    np.testing.assert_array_equal(gt["majority"], scores["P1A"])  # a copy of the column
    np.testing.assert_array_equal(gt["minority"], scores["P2B"])
    assert opposed("P1A", "P1B") and opposed("P3B", "P3A")
    assert not opposed("P1A", "P2B") and not opposed("P2A", "P2A")
    check_dimensions("P2A", "P2B")
    with pytest.raises(ValueError, match="unknown P-SOUPS dimension 'P9A'"):
        check_dimensions("P9A", "P2B")
    with pytest.raises(ValueError, match="must be different"):
        check_dimensions("P2A", "P2A")
