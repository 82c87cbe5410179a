"""Notebook 05's helpers (MaxMin-RLHF at 7B on a tiny Llama proxy): pinning, chat prompts,
left-padded sampling, P-SOUPS users, the headline table and one PPO arm end to end.

Every check is against something computed here independently: hand values, a hand-written
chat template, properties a paired percentile bootstrap must have, a greedy decode of
unpadded prompts, planted rows.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import datasets.config
import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from datasets import Dataset
from transformers import PreTrainedTokenizerFast

from pluralign.core.stats import gains, headline
from pluralign.data.preferences import load_prompt_texts
from pluralign.data.psoups import (
    DIMENSIONS,
    check_dimensions,
    dimension_scores,
    group_truth,
    opposed,
    psoups_users,
)
from pluralign.data.text import chat_prompt_ids
from pluralign.experiments import maxmin_tulu2 as mt
from pluralign.experiments.maxmin_tulu2 import (
    GROUPS,
    ArmSpec,
    ProxySettings,
    backbone_spec,
    launch_arm,
    main,
    proxy_pretrain_config,
    read_arm,
    train_arm,
)
from pluralign.pipeline import assets
from pluralign.pipeline.assets import AssetError, Source, load_gpt2_tokenizer, resolve_source
from pluralign.pipeline.config import load_stage_config
from pluralign.training import generation
from pluralign.training.generation import (
    GenerationSettings,
    Rollouts,
    kl_to_reference,
    sample_continuations,
    sample_rollouts,
)
from pluralign.training.llama_proxy import build_llama_proxy
from pluralign.training.lora import (
    BackboneSpec,
    load_base_policy,
    lora_classifier,
    lora_policy,
    save_adapter,
)
from pluralign.training.models import load_chat_tokenizer
from pluralign.training.ppo import PPOSettings
from pluralign.training.pretrain import PretrainConfig

SHAPE = {"hidden_size": 16, "n_layers": 1, "n_heads": 2, "intermediate_size": 32}
N_TOKENS = 32
TEXTS = [
    "Say hi.",
    "  Tell me about the film and its plot.  ",
    "Why?",
    "Name a good movie.",
]


def chat(text: str) -> str:
    """Tulu 2's format, written out by hand (allenai/tulu-2-7b model card)."""
    return "<|user|>\n" + text.strip() + "\n<|assistant|>\n"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=300)


@pytest.fixture(scope="module")
def proxy(tok):
    return build_llama_proxy(tok, seed=0, **SHAPE)


@pytest.fixture
def datasets_cache(tmp_path: Path, monkeypatch) -> Path:
    """Keep ``load_dataset``'s cache out of the home folder."""
    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


# --------------------------------------------------------------------------- pinning


def test_require_pinned_wants_a_revision_for_a_hub_name_only(tmp_path: Path, monkeypatch):
    with pytest.raises(ValueError, match="pin a revision"):
        mt.require_pinned("allenai/tulu-2-7b", None, "policy")
    with pytest.raises(ValueError, match="pin a revision"):
        mt.require_pinned("allenai/tulu-2-7b", "", "policy")  # empty is not a pin
    mt.require_pinned("allenai/tulu-2-7b", "0123abc", "policy")
    # Local: an existing folder, or anything spelled as a path, even if absent.
    for local in (str(tmp_path), "./not-there", "/not/there/either"):
        with pytest.raises(ValueError, match="local path; its revision must be null"):
            mt.require_pinned(local, "0123abc", "policy")
        mt.require_pinned(local, None, "policy")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(ValueError, match=r"prompts: data is a local path"):
        mt.require_pinned("data", "v1", "prompts")  # a relative existing folder is local
    mt.require_pinned("data", None, "prompts")


def test_backbone_spec_of_the_proxy_and_of_a_pinned_hub_model(tmp_path: Path):
    base = {"load_in_bits": None, "bf16": True, "gradient_checkpointing": True}
    proxy = backbone_spec(SimpleNamespace(policy="llama_proxy", **base), tmp_path / "m")
    assert proxy == BackboneSpec(str(tmp_path / "m"), None, None, True, True)
    hub = SimpleNamespace(policy="allenai/tulu-2-7b", policy_revision="abc123", **base)
    assert backbone_spec(hub, tmp_path) == BackboneSpec(
        "allenai/tulu-2-7b", "abc123", None, True, True
    )
    with pytest.raises(ValueError, match="pin a revision"):
        backbone_spec(
            SimpleNamespace(policy="allenai/tulu-2-7b", policy_revision=None, **base), ""
        )
    assert BackboneSpec("x", "abc", bf16=True).kwargs() == {
        "revision": "abc",
        "dtype": torch.bfloat16,
    }
    assert BackboneSpec("x").kwargs() == {}


# --------------------------------------------------------------------------- prompts


def test_chat_prompt_ids_left_pad_the_templated_prompt(tok):
    ids = chat_prompt_ids(tok, TEXTS, N_TOKENS)
    assert len(ids) == len(TEXTS)
    pad = tok.pad_token_id
    for row, text in zip(ids, TEXTS, strict=True):
        expected = tok(chat(text))["input_ids"]
        n_pad = N_TOKENS - len(expected)
        assert len(row) == N_TOKENS
        assert n_pad >= 0 and row[:n_pad] == [pad] * n_pad
        assert row[n_pad:] == expected
        assert pad not in expected  # the padding is exactly the leading PADs
    assert any(row[0] == pad for row in ids)  # the check above did see padding


def test_chat_prompt_ids_drop_long_prompts_and_keep_exact_fits(tok):
    fit = "Name a good movie."
    n = len(tok(chat(fit))["input_ids"])
    long = "Describe " + "the long and winding plot " * 4
    assert len(tok(chat(long))["input_ids"]) > n
    ids = chat_prompt_ids(tok, ["Hi.", long, fit], n)
    assert len(ids) == 2  # the long one is dropped, not cut
    assert ids[1] == tok(chat(fit))["input_ids"]  # exactly n tokens: no padding
    assert ids[0][-len(tok(chat("Hi."))["input_ids"]) :] == tok(chat("Hi."))["input_ids"]
    custom = chat_prompt_ids(tok, ["Hi."], 12, template="Q: {prompt} A:")
    assert custom[0][-len(tok("Q: Hi. A:")["input_ids"]) :] == tok("Q: Hi. A:")["input_ids"]


def test_chat_prompt_ids_refuse_a_right_padding_tokenizer():
    right = load_gpt2_tokenizer(max_merges=300)
    right.padding_side = "right"
    with pytest.raises(ValueError, match="left-padding tokenizer"):
        chat_prompt_ids(right, TEXTS, N_TOKENS)


def _greedy(model, prompt: list[int], n_new: int, pad: int, eos: int) -> list[int]:
    """Argmax decoding of one unpadded prompt, full forward each step, PAD never sampled."""
    ids = list(prompt)
    out: list[int] = []
    with torch.no_grad():
        for _ in range(n_new):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].double()
            logits[pad] = -torch.inf
            nxt = int(logits.argmax())
            out.append(nxt)
            ids.append(nxt)
            if nxt == eos:
                break
    return out


def test_sample_masks_left_padding_and_keeps_the_padded_prompts(tok, proxy):
    ids = chat_prompt_ids(tok, TEXTS, N_TOKENS)
    unpadded = [tok(chat(t))["input_ids"] for t in TEXTS]
    roll = mt.sample(proxy, tok, ids, 6, 0.7, seed=3)
    assert roll.prompt_ids == ids  # one prompt length, as kl_to_reference needs
    plain = sample_rollouts(proxy, tok, unpadded, 6, 0.7, seed=3)
    assert roll.continuation_ids == plain.continuation_ids
    assert roll.continuations == plain.continuations
    np.testing.assert_array_equal(roll.n_tokens, plain.n_tokens)
    assert kl_to_reference(proxy, proxy, tok, roll, 0.7) == 0.0


def test_sample_continues_each_prompt_as_if_it_had_no_padding(tok):
    """Near-greedy sampling of a peaked proxy: each padded row's continuation equals a
    greedy decode of its prompt alone (batch of one, no padding, no mask)."""
    peaked = build_llama_proxy(tok, seed=1, initializer_range=0.2, **SHAPE)
    ids = chat_prompt_ids(tok, TEXTS, N_TOKENS)
    roll = mt.sample(peaked, tok, ids, 5, 1e-4, seed=0)
    for text, got in zip(TEXTS, roll.continuation_ids, strict=True):
        expected = _greedy(
            peaked, tok(chat(text))["input_ids"], 5, tok.pad_token_id, tok.eos_token_id
        )
        assert got == expected, text
    # Attending the PAD tokens (no mask) would change at least one continuation: the
    # comparison above can fail.
    attended = sample_rollouts(peaked, tok, ids, 5, 1e-4, seed=0)
    assert attended.continuation_ids != roll.continuation_ids


# --------------------------------------------------------------------------- chat tokenizer

WORDS = ["<|", "|>", "user", "assistant", "hello", "world"]


def _wordlevel_folder(
    folder: Path, unk: str | None, pad: str | None = None, padding_side: str = "right"
) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3} | {w: i + 4 for i, w in enumerate(WORDS)}
    model = models.WordLevel(vocab=vocab, unk_token="<unk>")
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    special: dict[str, Any] = {"bos_token": "<s>", "eos_token": "</s>"}
    if unk is not None:
        special["unk_token"] = unk
    if pad is not None:
        special["pad_token"] = pad
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, padding_side=padding_side, **special)
    fast.save_pretrained(folder)
    return folder


def test_load_chat_tokenizer_pads_with_unk_on_the_left(tmp_path: Path):
    folder = _wordlevel_folder(tmp_path / "llama-like", unk="<unk>")
    tok = load_chat_tokenizer(str(folder))
    assert tok.padding_side == "left"
    assert (tok.pad_token, tok.pad_token_id) == ("<unk>", 0)
    assert tok.eos_token_id == 2 != tok.pad_token_id
    assert tok(["hello", "hello world"], padding=True)["input_ids"][0] == [0, 8]  # left


def test_load_chat_tokenizer_replaces_a_pad_equal_to_eos(tmp_path: Path):
    folder = _wordlevel_folder(tmp_path / "pad-is-eos", unk="<unk>", pad="</s>")
    tok = load_chat_tokenizer(str(folder))
    assert tok.pad_token_id == 0 and tok.padding_side == "left"


def test_load_chat_tokenizer_keeps_a_distinct_pad(tmp_path: Path):
    folder = _wordlevel_folder(tmp_path / "own-pad", unk="<unk>", pad="<pad>")
    tok = load_chat_tokenizer(str(folder))
    assert tok.pad_token_id == 3 and tok.padding_side == "left"


@pytest.mark.parametrize("unk", [None, "</s>"], ids=["no-unk", "unk-is-eos"])
def test_load_chat_tokenizer_refuses_when_nothing_can_pad(tmp_path: Path, unk: str | None):
    folder = _wordlevel_folder(tmp_path / "no-pad", unk=unk)
    with pytest.raises(ValueError, match="no PAD token and no UNK distinct from EOS"):
        load_chat_tokenizer(str(folder))


def test_load_chat_tokenizer_names_an_unreadable_folder(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AssetError, match=r"empty: cannot load tokenizer"):
        load_chat_tokenizer(str(tmp_path / "empty"))


def test_sample_keeps_an_unk_inside_the_prompt_when_unk_pads(tmp_path: Path, monkeypatch):
    tok = load_chat_tokenizer(str(_wordlevel_folder(tmp_path / "t", unk="<unk>")))
    ids = chat_prompt_ids(tok, ["hello zzz world"], 12)
    unk = tok.unk_token_id
    body = tok(chat("hello zzz world"))["input_ids"]
    assert unk in body and ids[0][-len(body) :] == body and ids[0][0] == tok.pad_token_id
    seen: list[list[list[int]]] = []

    def fake_rollouts(policy, tokenizer, prompt_ids, *args):
        seen.append([list(p) for p in prompt_ids])
        n = len(prompt_ids)
        return Rollouts(
            [list(p) for p in prompt_ids], [[]] * n, [""] * n, [""] * n, np.zeros(n), np.zeros(n)
        )

    monkeypatch.setattr(mg, "sample_rollouts", fake_rollouts)
    mt.sample(None, tok, ids, 4, 0.7, 0)
    assert seen == [[body]]  # only the leading padding removed


# --------------------------------------------------------------------------- prompt files


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_load_prompt_texts_reads_a_local_jsonl_column(tmp_path: Path, datasets_cache):
    rows = [{"instruction": "Say hi.", "id": 1}, {"instruction": " Why? ", "id": 2}]
    path = _jsonl(tmp_path / "prompts.jsonl", rows)
    assert load_prompt_texts(str(path), None, "train", "instruction") == ["Say hi.", " Why? "]


@pytest.mark.parametrize("bad", ["", "   ", 5, None], ids=["empty", "blank", "number", "null"])
def test_load_prompt_texts_names_row_and_column_of_a_bad_field(
    tmp_path: Path, datasets_cache, bad: Any
):
    rows = [{"q": "fine"}, {"q": "fine too"}, {"q": bad}, {"q": "ok"}]
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=r"bad\.jsonl: row 2: field 'q' is empty or not"):
        load_prompt_texts(str(path), None, "train", "q")


def test_load_prompt_texts_names_the_columns_when_one_is_missing(tmp_path: Path, datasets_cache):
    path = _jsonl(tmp_path / "p.jsonl", [{"instruction": "a", "output": "b"}])
    with pytest.raises(
        ValueError, match=r"no column 'prompt' \(columns: \['instruction', 'output'\]"
    ):
        load_prompt_texts(str(path), None, "train", "prompt")


def test_load_prompt_texts_checks_pinning_before_loading(tmp_path: Path):
    with pytest.raises(ValueError, match="pin a revision"):
        load_prompt_texts("HuggingFaceH4/Koala-test-set", None, "test", "prompt")
    path = _jsonl(tmp_path / "p.jsonl", [{"q": "a"}])
    with pytest.raises(ValueError, match="revision must be null"):
        load_prompt_texts(str(path), "v1", "train", "q")
    with pytest.raises(AssetError, match=r"absent\.jsonl: cannot load"):
        load_prompt_texts(str(tmp_path / "absent.jsonl"), None, "train", "q")


def test_load_prompt_texts_of_a_local_file_makes_no_network_lookup(
    tmp_path: Path, datasets_cache, host_lookups: list[str], monkeypatch
):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # as in a hand-run notebook
    path = _jsonl(tmp_path / "p.jsonl", [{"q": "a"}, {"q": "b"}])
    assert load_prompt_texts(str(path), None, "train", "q") == ["a", "b"]
    assert host_lookups == []


# --------------------------------------------------------------------------- preferences


def test_group_truth_is_the_two_dimensions_scores():
    texts = [
        "Good.",
        "The cat sat on the mat. It was warm.",
        "Notwithstanding considerable methodological heterogeneity, the investigators "
        "concluded that epistemological considerations predominate.",
        "",
        "I hate this awful, terrible film!",
    ]
    scores = dimension_scores(texts)
    for major, minor in (("P1A", "P1B"), ("P2B", "P3A"), ("P3B", "P1A")):
        gt = group_truth(texts, major, minor)
        assert list(gt.columns) == list(GROUPS) == ["majority", "minority"]
        np.testing.assert_array_equal(gt["majority"], scores[major])
        np.testing.assert_array_equal(gt["minority"], scores[minor])
    gt = group_truth(texts, "P2A", "P2B")
    np.testing.assert_array_equal(gt["majority"], -np.log([1 + 1, 9 + 1, 11 + 1, 0 + 1, 6 + 1]))
    for major, minor in (("P1A", "P1B"), ("P2A", "P2B"), ("P3B", "P3A")):
        gt = group_truth(texts, major, minor)
        assert (gt["majority"] == -gt["minority"]).all()  # exact negatives
    assert gt["majority"].std() > 0  # not trivially all zero


def test_opposed_is_true_exactly_for_the_a_b_pairs_of_one_axis():
    for a in DIMENSIONS:
        for b in DIMENSIONS:
            same_axis = a[:2] == b[:2]
            assert opposed(a, b) == (same_axis and a != b), (a, b)
    assert opposed("P1A", "P1B") and not opposed("P1A", "P2A")


def test_check_dimensions_refuses_unknown_and_identical():
    check_dimensions("P1A", "P1B")
    check_dimensions("P2B", "P3A")
    with pytest.raises(ValueError, match=r"unknown P-SOUPS dimension 'P4A'"):
        check_dimensions("P4A", "P1B")
    with pytest.raises(ValueError, match=r"unknown P-SOUPS dimension 'p1b'"):
        check_dimensions("P1A", "p1b")
    with pytest.raises(ValueError, match="must be different dimensions"):
        check_dimensions("P1A", "P1A")


def _psoups_file(tag: str, n: int) -> Dataset:
    return Dataset.from_dict(
        {
            "prompt": [f"  {tag} question {i}? " for i in range(n)],
            "chosen": [f"{tag}-good-{i}" for i in range(n)],
            "rejected": [f"{tag}-bad-{i}" for i in range(n)],
        }
    )


FILES = {"P1A": _psoups_file("A", 10), "P1B": _psoups_file("B", 7)}
USERS = {"P1A": 3, "P1B": 2}


def _row_of(text: str, tag: str, kind: str) -> int:
    """The file row that a comparison text was built from (hand parse of the planted text)."""
    head = chat(f"{tag} question X?").split("X")[0]
    assert text.startswith(head)
    row = int(text[len(head) :].split("?")[0])
    assert text == chat(f"{tag} question {row}?") + f"{tag}-{kind}-{row}"
    return row


def test_psoups_users_cut_each_file_into_its_users():
    chosen, rejected, user_of, user_group, groups = psoups_users(FILES, USERS, 2, seed=4)
    assert groups == ("P1A", "P1B")
    assert len(chosen) == len(rejected) == 10
    np.testing.assert_array_equal(user_of, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    np.testing.assert_array_equal(user_group, [0, 0, 0, 1, 1])
    rows: dict[str, list[int]] = {"A": [], "B": []}
    for c, r, u in zip(chosen, rejected, user_of, strict=True):
        tag = "AB"[user_group[u]]  # each comparison comes from its user's group's file
        row = _row_of(c, tag, "good")
        assert _row_of(r, tag, "bad") == row
        rows[tag].append(row)
    # Distinct comparisons per user, and across users of one group too (no reuse).
    assert len(set(rows["A"])) == 6 and len(set(rows["B"])) == 4
    assert set(rows["A"]) <= set(range(10)) and set(rows["B"]) <= set(range(7))


def test_psoups_users_are_deterministic_in_the_seed():
    a = psoups_users(FILES, USERS, 2, seed=4)
    b = psoups_users(FILES, USERS, 2, seed=4)
    c = psoups_users(FILES, USERS, 2, seed=5)
    assert a[0] == b[0] and a[1] == b[1]
    assert a[0] != c[0]
    # Group order follows the users mapping.
    swapped = psoups_users(FILES, {"P1B": 1, "P1A": 1}, 3, seed=4)
    assert swapped[4] == ("P1B", "P1A")
    np.testing.assert_array_equal(swapped[3], [0, 1])
    assert all(c.startswith(chat("B question X?").split("X")[0]) for c in swapped[0][:3])


def test_psoups_users_need_enough_rows():
    with pytest.raises(ValueError, match=r"P1B: 4 users x 2 need 8 rows, file has 7"):
        psoups_users(FILES, {"P1A": 1, "P1B": 4}, 2, seed=0)
    psoups_users(FILES, {"P1A": 5, "P1B": 7}, 1, seed=0)  # exactly all rows is fine


# --------------------------------------------------------------------------- evaluation


def _percentile_bootstrap(
    by_group: dict[str, np.ndarray], n_boot: int, seed: int
) -> dict[str, tuple[float, float, float]]:
    """(mean, lo, hi) per group and of the average, by resampling row indices shared by
    the groups, written out loop by loop."""
    names = list(by_group)
    n = len(by_group[names[0]])
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boots: dict[str, list[float]] = {g: [] for g in [*names, "average"]}
    for b in range(n_boot):
        means = [sum(float(by_group[g][i]) for i in idx[b]) / n for g in names]
        for g, m in zip(names, means, strict=True):
            boots[g].append(m)
        boots["average"].append(sum(means) / len(means))
    out = {}
    for g in names:
        out[g] = (sum(by_group[g]) / n, *np.percentile(boots[g], [2.5, 97.5]))
    avg = sum(sum(by_group[g]) / n for g in names) / len(names)
    out["average"] = (avg, *np.percentile(boots["average"], [2.5, 97.5]))
    return out


def test_headline_matches_a_brute_force_percentile_bootstrap():
    rng = np.random.default_rng(11)
    outcomes = {
        "single": {
            "majority": rng.choice([0.0, 0.5, 1.0], size=9),
            "minority": rng.choice([0.0, 0.5, 1.0], size=9),
        },
        "maxmin": {"majority": np.ones(9) * 0.5, "minority": np.arange(9) % 2 * 1.0},
    }
    table = mt.headline(outcomes, n_boot=300, seed=7)
    assert list(table.columns) == ["method", "group", "win_rate", "lo", "hi"]
    assert len(table) == 6
    for method, by_group in outcomes.items():
        expected = _percentile_bootstrap(by_group, 300, 7)
        for g, (mean, lo, hi) in expected.items():
            row = table[(table.method == method) & (table.group == g)].iloc[0]
            assert row.win_rate == pytest.approx(mean, abs=1e-12)
            assert row.lo == pytest.approx(lo, abs=1e-12) and row.hi == pytest.approx(hi, abs=1e-12)
            assert row.lo <= row.win_rate <= row.hi
    single = table[table.method == "single"].set_index("group").win_rate
    assert single["average"] == pytest.approx(
        (outcomes["single"]["majority"].mean() + outcomes["single"]["minority"].mean()) / 2
    )
    constant = table[(table.method == "maxmin") & (table.group == "majority")].iloc[0]
    assert constant.lo == constant.hi == 0.5


def test_headline_average_resamples_the_same_rows_for_both_groups():
    """Opposed groups: minority = 1 - majority on every row, so every row averages 1/2 and a
    bootstrap over shared rows gives the degenerate CI [0.5, 0.5]."""
    major = np.array([1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 1.0, 1.0])
    table = mt.headline({"m": {"majority": major, "minority": 1 - major}}, 200, seed=0)
    avg = table[table.group == "average"].iloc[0]
    assert (avg.win_rate, avg.lo, avg.hi) == (0.5, 0.5, 0.5)
    maj = table[table.group == "majority"].iloc[0]
    assert maj.win_rate == pytest.approx(5.5 / 8) and maj.lo < maj.hi


def test_headline_refuses_groups_of_different_lengths():
    with pytest.raises(ValueError, match=r"single: groups have different numbers of outcomes"):
        mt.headline({"single": {"majority": np.ones(4), "minority": np.ones(3)}}, 10, 0)


def test_gains_in_points_and_relative_to_the_base():
    table = pd.DataFrame(
        [
            ("single", "majority", 0.40),
            ("single", "minority", 0.20),
            ("single", "average", 0.30),
            ("maxmin", "majority", 0.50),
            ("maxmin", "minority", 0.30),
            ("maxmin", "average", 0.40),
            ("other", "majority", 0.0),
            ("other", "minority", 0.0),
            ("other", "average", 0.0),
        ],
        columns=["method", "group", "win_rate"],
    ).assign(lo=0.0, hi=1.0)
    gain = gains(table, "single", "maxmin")
    expected = {
        "majority_gain_points": 0.10,
        "minority_gain_points": 0.10,
        "average_gain_points": 0.10,
        "majority_gain_relative": 0.25,
        "minority_gain_relative": 0.50,
        "average_gain_relative": 1 / 3,
    }
    assert gain.keys() == expected.keys()
    for k, v in expected.items():
        assert gain[k] == pytest.approx(v, abs=1e-12), k
    back = gains(table, "maxmin", "single")
    assert back["minority_gain_relative"] == pytest.approx(0.2 / 0.3 - 1)
    zero = gains(table, "other", "maxmin")
    assert zero["majority_gain_points"] == pytest.approx(0.5)
    assert np.isnan(zero["majority_gain_relative"])


# --------------------------------------------------------------------------- proxy recipe


def test_proxy_pretrain_config_replaces_steps_and_clips_warmup(tiny_params: Path):
    recipe = load_stage_config("policy_pretrain", tiny_params, "cpu")
    assert isinstance(recipe, PolicyPretrainConfig)
    recipe = dataclasses.replace(recipe, warmup_steps=10, max_steps=100)
    long = proxy_pretrain_config(recipe, 50)
    short = proxy_pretrain_config(recipe, 4)
    assert (long.max_steps, long.warmup_steps) == (50, 10)
    assert (short.max_steps, short.warmup_steps) == (4, 4)
    rest = {
        k: v
        for k, v in dataclasses.asdict(recipe).items()
        if k not in ("max_steps", "warmup_steps")
    }
    for new in (long, short):
        assert {k: v for k, v in dataclasses.asdict(new).items() if k in rest} == rest
    assert (recipe.max_steps, recipe.warmup_steps) == (100, 10)  # the recipe is not mutated
    for bad in (0, -3):
        with pytest.raises(ValueError, match=r"proxy_pretrain_steps must be >= 1"):
            proxy_pretrain_config(recipe, bad)


# --------------------------------------------------------------------------- arms


def _spec(root: Path, backbone: BackboneSpec, **changes: Any) -> ArmSpec:
    settings = PPOSettings(
        n_updates=2,
        batch_size=4,
        num_mini_batches=2,
        num_ppo_epochs=1,
        learning_rate=1e-2,
        response_length=4,
        temperature=0.7,
        checkpoint_every=1,
    )
    base = {
        "name": "single-seed0",
        "how": "single",
        "backbone": backbone,
        "tokenizer_dir": str(root / "tokenizer"),
        "reward_adapters": {"single": str(root / "rm")},
        "reference_texts": ["A film.", "The plot was long and dull.", "Good!", "I liked it."],
        "prompt_ids": [],
        "probe_ids": [],
        "majority": "P1A",
        "minority": "P1B",
        "settings": dataclasses.asdict(settings),
        "policy_lora_r": 4,
        "value_lora_r": 4,
        "rm_max_length": 32,
        "seed": 0,
        "workdir": str(root / "work"),
        "output_dir": str(root / "out"),
    }
    return ArmSpec(**(base | changes))


def test_arm_spec_round_trips_through_json(tmp_path: Path):
    backbone = BackboneSpec("allenai/tulu-2-7b", "abc123", 8, True, True)
    spec = _spec(tmp_path, backbone, prompt_ids=[[1, 2, 3], [4, 5, 6]], probe_ids=[[7, 8, 9]])
    file = spec.write(tmp_path / "spec.json")
    raw = json.loads(file.read_text())
    assert raw["backbone"] == {
        "source": "allenai/tulu-2-7b",
        "revision": "abc123",
        "load_in_bits": 8,
        "bf16": True,
        "gradient_checkpointing": True,
    }
    assert raw["prompt_ids"] == [[1, 2, 3], [4, 5, 6]] and raw["settings"]["batch_size"] == 4
    back = ArmSpec.read(file)
    assert isinstance(back.backbone, BackboneSpec)
    assert back == spec
    assert back != dataclasses.replace(spec, seed=1)  # equality looks at the fields


@pytest.fixture(scope="module")
def arm(tok, tmp_path_factory) -> ArmSpec:
    """One tiny PPO arm trained end to end through the saved-folder path."""
    root = tmp_path_factory.mktemp("arm")
    build_llama_proxy(tok, seed=0, **SHAPE).save_pretrained(root / "proxy")
    tok.save_pretrained(root / "tokenizer")
    backbone = BackboneSpec(str(root / "proxy"))
    torch.manual_seed(0)
    save_adapter(lora_classifier(backbone, tok.pad_token_id, 4), root / "rm")
    prompts = chat_prompt_ids(tok, [*TEXTS, "Is it good?", "What happens next?"], N_TOKENS)
    spec = _spec(root, backbone, prompt_ids=prompts[:4], probe_ids=prompts[4:])
    assert train_arm(spec) == Path(spec.output_dir)
    return spec


def _lora_b(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if "lora_B" in k}


def test_train_arm_writes_adapter_log_and_timing(arm: ArmSpec):
    out = Path(arm.output_dir)
    assert (out / "adapter" / "adapter_config.json").is_file()
    rows = json.loads((out / "log.json").read_text())
    assert [r["update"] for r in rows] == [1, 2]
    assert {(r["run"], r["method"], r["seed"]) for r in rows} == {("single-seed0", "single", 0)}
    for r in rows:  # checkpoint_every = 1: every row is a checkpoint
        assert np.isfinite(r["gt_majority"]) and np.isfinite(r["gt_minority"])
        assert r["gt_majority"] == -r["gt_minority"]  # P1A and P1B are exact opposites
    timing = json.loads((out / "timing.json").read_text())
    assert timing["train_seconds"] > 0 and timing["processes"] == 1
    log, timing_back = read_arm(out)
    assert len(log) == 2 and timing_back == timing


def test_train_arm_adapter_is_trained_and_its_probe_is_reproducible(tok, arm: ArmSpec):
    pad = tok.pad_token_id
    trained = lora_policy(arm.backbone, pad, arm.policy_lora_r, Path(arm.output_dir) / "adapter")
    fresh = lora_policy(arm.backbone, pad, arm.policy_lora_r)
    b_trained, b_fresh = _lora_b(trained), _lora_b(fresh)
    assert b_trained.keys() == b_fresh.keys() and len(b_trained) == 4  # q, k, v, o of 1 layer
    assert all(torch.count_nonzero(v) == 0 for v in b_fresh.values())
    assert any(torch.count_nonzero(v) > 0 for v in b_trained.values())
    # The last checkpoint probed the final policy: redo it from the saved adapter by hand.
    settings = PPOSettings(**arm.settings)
    roll = mt.sample(
        trained.eval(),
        tok,
        arm.probe_ids,
        settings.response_length,
        settings.temperature,
        arm.seed + 5,
    )
    scores = dimension_scores(roll.continuations)
    last = json.loads((Path(arm.output_dir) / "log.json").read_text())[-1]
    assert last["gt_majority"] == pytest.approx(float(scores["P1A"].mean()), abs=1e-12)
    assert last["gt_minority"] == pytest.approx(float(scores["P1B"].mean()), abs=1e-12)


def test_train_arm_does_not_rerun_a_finished_arm(arm: ArmSpec, monkeypatch, tmp_path: Path):
    log_file = Path(arm.output_dir) / "log.json"
    before = log_file.read_bytes()

    def boom(*args, **kwargs):
        raise AssertionError("a finished arm was trained again")

    monkeypatch.setattr(mg, "train_policy", boom)
    assert train_arm(arm) == Path(arm.output_dir)
    spec_file = tmp_path / "spec.json"
    assert launch_arm(arm, spec_file, None) == Path(arm.output_dir)
    assert log_file.read_bytes() == before
    assert not spec_file.exists()  # in-process: no spec file, no subprocess


def test_train_arm_logs_checkpoints_sparser_than_updates(tok, arm: ArmSpec, tmp_path: Path):
    """Rows between checkpoints have no ground truth: log.json must still be written
    (regression: at HEAD 9aeecb9 the NaN made write_json_atomic raise ValueError)."""
    settings = arm.settings | {"checkpoint_every": 2}  # 2 updates, one checkpoint at the end
    spec = dataclasses.replace(
        arm,
        settings=settings,
        workdir=str(tmp_path / "work"),
        output_dir=str(tmp_path / "out"),
    )
    out = train_arm(spec)
    rows = json.loads((out / "log.json").read_text())  # strict JSON: null, never NaN
    assert [r["update"] for r in rows] == [1, 2]
    assert rows[0]["gt_majority"] is None and rows[0]["gt_minority"] is None
    assert np.isfinite(rows[1]["gt_majority"]) and rows[1]["gt_majority"] == -rows[1]["gt_minority"]
    log, _ = read_arm(out)
    assert log["gt_majority"].isna().tolist() == [True, False]


def test_launch_arm_without_launcher_trains_in_process(arm: ArmSpec, monkeypatch, tmp_path):
    calls: list[tuple[ArmSpec, bool]] = []

    def fake_train(spec: ArmSpec, progress: bool = False) -> Path:
        calls.append((spec, progress))
        return Path(spec.output_dir)

    monkeypatch.setattr(mt, "train_arm", fake_train)
    monkeypatch.setattr(mt.subprocess, "run", lambda *a, **k: pytest.fail("no subprocess"))
    spec = dataclasses.replace(arm, output_dir=str(tmp_path / "out"))
    assert launch_arm(spec, tmp_path / "spec.json", None, progress=True) == tmp_path / "out"
    assert calls == [(spec, True)]


def test_launch_arm_with_a_launcher_runs_accelerate_on_the_written_spec(
    arm: ArmSpec, monkeypatch, tmp_path: Path
):
    spec = dataclasses.replace(arm, output_dir=str(tmp_path / "out"))
    spec_file = tmp_path / "arms" / "spec.json"
    commands: list[list[str]] = []

    def fake_run(cmd: list[str], check: bool) -> None:
        assert check
        commands.append(cmd)
        # the child reads what the parent meant
        assert ArmSpec.read(cmd[-1]) == (spec if len(commands) == 1 else other)
        if len(commands) == 1:  # the first child finishes its arm, the second does not
            (tmp_path / "out" / "adapter").mkdir(parents=True)
            (tmp_path / "out" / "log.json").write_text("[]")

    monkeypatch.setattr(mt.subprocess, "run", fake_run)
    out = launch_arm(spec, spec_file, "configs/accelerate/multi_gpu.yaml")
    assert out == tmp_path / "out"
    assert commands[0] == [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--config_file",
        "configs/accelerate/multi_gpu.yaml",
        "-m",
        "pluralign.maxmin_tulu2",
        str(spec_file),
    ]
    other = dataclasses.replace(spec, output_dir=str(tmp_path / "never"))
    with pytest.raises(RuntimeError, match="finished without writing"):
        launch_arm(other, spec_file, "x.yaml")


def test_main_trains_the_spec_read_from_its_file(arm: ArmSpec, monkeypatch, tmp_path, capsys):
    seen: list[tuple[ArmSpec, bool]] = []

    def fake_train(spec: ArmSpec, progress: bool = False) -> Path:
        seen.append((spec, progress))
        return Path(spec.output_dir)

    monkeypatch.setattr(mt, "train_arm", fake_train)
    file = arm.write(tmp_path / "spec.json")
    assert main([str(file), "--progress"]) == 0
    assert seen == [(arm, True)]
    assert f"arm written to {arm.output_dir}" in capsys.readouterr().out
