"""Notebook 05's helpers (MaxMin-RLHF at 7B on a tiny Llama proxy): pinning, chat prompts,
left-padded sampling, P-SOUPS users, the config's refusals, the prompt sets (control tags on
the proxy, preference instructions on the paper path), premise (a), the preference data and
which reward model learns from what, the per-group conditioned evaluation and its judges,
the paper's gains, claims and verdict, and one PPO arm end to end.

Every check is against something computed here independently: hand values, a hand-written
chat template, properties a paired percentile bootstrap must have (and the same bootstrap
by hand), a greedy decode of unpadded prompts, planted rows.
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
from helpers import tiny_params_copy, write_params
from transformers import PreTrainedTokenizerFast

from pluralign.core.stats import bootstrap_ci, gains, headline
from pluralign.data.control_tags import TAGS, grade_gap, grades, tagged_prompt_ids
from pluralign.data.preferences import load_prompt_texts
from pluralign.data.psoups import (
    DIMENSIONS,
    PREFERENCE_PROMPTS,
    check_dimensions,
    dimension_scores,
    group_truth,
    label_by_dimensions,
    opposed,
    psoups_users,
    with_preference,
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
from pluralign.pipeline.assets import AssetError, Source, load_gpt2_tokenizer, resolve_source
from pluralign.pipeline.config import load_stage_config
from pluralign.pipeline.device import compute_device
from pluralign.pipeline.paths import project_root
from pluralign.training import generation
from pluralign.training.generation import (
    GenerationSettings,
    kl_to_reference,
    sample_continuations,
    sample_rollouts,
)
from pluralign.training.judges import ChatEndpointJudge, RewardModelJudge
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
from pluralign.training.token_ban import BANNED_LOGIT

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


def test_resolve_source_wants_a_revision_for_a_hub_name_only(tmp_path: Path, monkeypatch):
    """Notebook 05's sources (policy, prompt sets): a hub name is pinned in the name itself
    (``name@revision``); a local path is local however it is spelled and carries none."""
    with pytest.raises(AssetError, match=r"policy: 'allenai/tulu-2-7b' is a hub name: pin a"):
        resolve_source("allenai/tulu-2-7b", "policy")
    with pytest.raises(AssetError, match="pin a revision"):
        resolve_source("allenai/tulu-2-7b@", "policy")  # empty is not a pin
    with pytest.raises(AssetError, match=r"prompts: 'HuggingFaceH4/Koala-test-set' is a hub"):
        resolve_source("HuggingFaceH4/Koala-test-set", "prompts")
    pinned = resolve_source("allenai/tulu-2-7b@0123abc", "policy")
    assert pinned == Source("allenai/tulu-2-7b", "0123abc") and not pinned.local
    assert str(pinned) == "allenai/tulu-2-7b@0123abc"
    # Local: an existing folder, or anything spelled as a path, even if absent. A local
    # path carries no revision: "path@rev" is refused rather than read either way.
    for local in (str(tmp_path), "./not-there", "/not/there/either"):
        src = resolve_source(local, "policy")
        assert src.local and src.revision is None, local
        assert src.name.endswith(local.lstrip("./")), local
        with pytest.raises(AssetError, match="is a local path; it has no revision"):
            resolve_source(local + "@0123abc", "policy")
    # A relative existing folder is local (relative to the project root, not the cwd).
    monkeypatch.setenv("PLURALIGN_ROOT", str(tmp_path))
    with pytest.raises(AssetError, match=r"prompts: 'data' is a hub name"):
        resolve_source("data", "prompts")  # not there (yet): a hub name
    (tmp_path / "data").mkdir()
    assert resolve_source("data", "prompts") == Source(str(tmp_path / "data"))


def test_backbone_spec_of_the_proxy_and_of_a_pinned_hub_model(tmp_path: Path, monkeypatch):
    base = {"load_in_bits": None, "bf16": True, "gradient_checkpointing": True}
    proxy = backbone_spec(SimpleNamespace(policy="llama_proxy", **base), tmp_path / "m")
    assert proxy == BackboneSpec(str(tmp_path / "m"), None, True, True)
    hub = SimpleNamespace(policy="allenai/tulu-2-7b@abc123", **base)
    assert backbone_spec(hub, tmp_path) == BackboneSpec(
        "allenai/tulu-2-7b@abc123", None, True, True
    )
    # The revision travels in the source, not in the loading kwargs.
    assert BackboneSpec("x@abc", bf16=True).kwargs() == {"dtype": torch.bfloat16}
    assert BackboneSpec("x").kwargs() == {}
    # ... and reaches from_pretrained split into name and revision.
    calls: list[tuple[str, dict[str, Any]]] = []

    def fake_from_pretrained(name, **kwargs):
        calls.append((name, kwargs))
        return SimpleNamespace(
            config=SimpleNamespace(), generation_config=SimpleNamespace(), device=compute_device()
        )

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_from_pretrained)
    model = load_base_policy(backbone_spec(hub, tmp_path), pad_token_id=7)
    assert model.config.pad_token_id == 7 and model.generation_config.pad_token_id == 7
    assert calls == [
        (
            "allenai/tulu-2-7b",
            {
                "revision": "abc123",
                "use_safetensors": True,
                "local_files_only": False,
                "dtype": torch.bfloat16,
            },
        )
    ]


def test_an_unpinned_hub_policy_fails_before_any_download(tmp_path: Path, host_lookups):
    unpinned = SimpleNamespace(
        policy="allenai/tulu-2-7b", load_in_bits=None, bf16=False, gradient_checkpointing=False
    )
    spec = backbone_spec(unpinned, tmp_path)
    with pytest.raises(AssetError, match="pin a revision"):
        load_chat_tokenizer(spec.source)
    with pytest.raises(AssetError, match="pin a revision"):
        load_base_policy(spec, pad_token_id=0)
    with pytest.raises(AssetError, match="pin a revision"):
        lora_classifier(spec, 0, 4)
    assert host_lookups == []


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
    assert any(p != u for p, u in zip(ids, unpadded, strict=True))  # some rows are padded
    roll = sample_rollouts(proxy, tok, ids, 6, 0.7, seed=3)
    assert roll.prompt_ids == ids  # one prompt length, as kl_to_reference needs
    plain = sample_rollouts(proxy, tok, unpadded, 6, 0.7, seed=3)
    assert plain.prompt_ids == unpadded
    assert roll.continuation_ids == plain.continuation_ids
    assert roll.continuations == plain.continuations
    np.testing.assert_array_equal(roll.n_tokens, plain.n_tokens)
    # bitwise on purpose: the same network on the same rows gives the same log-probs
    assert kl_to_reference(proxy, proxy, tok, roll, 0.7) == 0.0


def test_sample_continues_each_prompt_as_if_it_had_no_padding(tok):
    """Near-greedy sampling of a peaked proxy: each padded row's continuation equals a
    greedy decode of its prompt alone (batch of one, no padding, no mask)."""
    peaked = build_llama_proxy(tok, seed=1, initializer_range=0.2, **SHAPE)
    ids = chat_prompt_ids(tok, TEXTS, N_TOKENS)
    roll = sample_rollouts(peaked, tok, ids, 5, 1e-4, seed=0)
    for text, got in zip(TEXTS, roll.continuation_ids, strict=True):
        expected = _greedy(
            peaked, tok(chat(text))["input_ids"], 5, tok.pad_token_id, tok.eos_token_id
        )
        assert got == expected, text
    # Attending the PAD tokens (the padded ids passed to generate as content, mask all
    # ones) would change at least one continuation: the comparison above can fail.
    attended = sample_continuations(peaked, tok, ids, 5, 1e-4, seed=0)
    assert [r["continuation_ids"] for r in attended] != roll.continuation_ids


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
    assert body[0] != tok.pad_token_id  # the UNK is inside, not leading
    seen: list[list[list[int]]] = []

    def fake_continuations(policy, tokenizer, prompts, *args):
        seen.append([list(p) for p in prompts])
        row = {"continuation_ids": [], "continuation": "", "new_tokens": 0, "stopped": False}
        return [dict(row, prompt="") for _ in prompts]

    monkeypatch.setattr(generation, "sample_continuations", fake_continuations)
    roll = sample_rollouts(None, tok, ids, 4, 0.7, 0)
    assert seen == [[body]]  # only the leading padding removed
    assert roll.prompt_ids == ids  # and restored in the rollouts


# --------------------------------------------------------------------------- prompt files


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_load_prompt_texts_reads_a_local_jsonl_column(tmp_path: Path, datasets_cache):
    rows = [{"instruction": "Say hi.", "id": 1}, {"instruction": " Why? ", "id": 2}]
    path = _jsonl(tmp_path / "prompts.jsonl", rows)
    assert load_prompt_texts(str(path), "train", "instruction") == ["Say hi.", " Why? "]


@pytest.mark.parametrize("bad", ["", "   ", 5, None], ids=["empty", "blank", "number", "null"])
def test_load_prompt_texts_names_row_and_column_of_a_bad_field(
    tmp_path: Path, datasets_cache, bad: Any
):
    rows = [{"q": "fine"}, {"q": "fine too"}, {"q": bad}, {"q": "ok"}]
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(
        ValueError, match=r"bad\.jsonl: row 2: field 'prompt' \(column 'q'\) is empty or not"
    ):
        load_prompt_texts(str(path), "train", "q")


def test_load_prompt_texts_names_the_columns_when_one_is_missing(tmp_path: Path, datasets_cache):
    path = _jsonl(tmp_path / "p.jsonl", [{"instruction": "a", "output": "b"}])
    with pytest.raises(
        ValueError,
        match=r"p\.jsonl: missing columns \['prompt'\] .*the file has \['instruction', 'output'\]",
    ):
        load_prompt_texts(str(path), "train", "prompt")


def test_load_prompt_texts_checks_pinning_before_loading(
    tmp_path: Path, datasets_cache, host_lookups: list[str]
):
    with pytest.raises(AssetError, match="pin a revision"):
        load_prompt_texts("HuggingFaceH4/Koala-test-set", "test", "prompt")
    assert host_lookups == []  # refused before any download
    path = _jsonl(tmp_path / "p.jsonl", [{"q": "a"}])
    # a local file takes no revision: "file@v1" is refused before anything is loaded
    with pytest.raises(AssetError, match=r"p\.jsonl@v1 is a local path; it has no revision"):
        load_prompt_texts(f"{path}@v1", "train", "q")
    with pytest.raises(AssetError, match=r"absent\.jsonl(:train)?: cannot load"):
        load_prompt_texts(str(tmp_path / "absent.jsonl"), "train", "q")


def test_load_prompt_texts_of_a_local_file_makes_no_network_lookup(
    tmp_path: Path, datasets_cache, host_lookups: list[str], monkeypatch
):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # as in a hand-run notebook
    path = _jsonl(tmp_path / "p.jsonl", [{"q": "a"}, {"q": "b"}])
    assert load_prompt_texts(str(path), "train", "q") == ["a", "b"]
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
    hand = -np.log([1 + 1, 9 + 1, 11 + 1, 0 + 1, 6 + 1])  # -log(words + 1)
    np.testing.assert_allclose(gt["majority"], hand, rtol=1e-12, atol=0)
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
    chosen, rejected, user_of, user_group, groups, held = psoups_users(FILES, USERS, 2, seed=4)
    assert {d: len(rows) for d, rows in held.items()} == {"P1A": 0, "P1B": 0}
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
    with pytest.raises(ValueError, match=r"P1B: 4 users x 2 need 8 rows, the file has 7 outside"):
        psoups_users(FILES, {"P1A": 1, "P1B": 4}, 2, seed=0)
    psoups_users(FILES, {"P1A": 5, "P1B": 7}, 1, seed=0)  # exactly all rows is fine
    with pytest.raises(ValueError, match=r"P1B: 3 users x 2 need 6 rows, the file has 5 outside"):
        psoups_users(FILES, {"P1A": 1, "P1B": 3}, 2, seed=0, held_out=2)
    psoups_users(FILES, {"P1A": 1, "P1B": 3}, 2, seed=0, held_out=1)  # 6 + 1 = 7: all rows


# --------------------------------------------------------------------------- evaluation


def test_headline_point_estimates_are_exact_means_inside_their_intervals():
    rng = np.random.default_rng(11)
    outcomes = {
        "single": {
            "majority": rng.choice([0.0, 0.5, 1.0], size=9),
            "minority": rng.choice([0.0, 0.5, 1.0], size=9),
        },
        "maxmin": {"majority": np.ones(9) * 0.5, "minority": np.arange(9) % 2 * 1.0},
    }
    table = headline(outcomes, n_boot=300, seed=7)
    assert list(table.columns) == ["method", "group", "win_rate", "lo", "hi"]
    assert list(zip(table.method, table.group, strict=True)) == [
        (m, g) for m in ("single", "maxmin") for g in ("majority", "minority", "average")
    ]
    for method, by_group in outcomes.items():
        rows = table[table.method == method].set_index("group")
        for g, values in by_group.items():
            assert rows.win_rate[g] == pytest.approx(sum(values) / len(values), abs=1e-12)
        hand_avg = sum(sum(v) / len(v) for v in by_group.values()) / len(by_group)
        assert rows.win_rate["average"] == pytest.approx(hand_avg, abs=1e-12)
        for g in rows.index:
            assert rows.lo[g] <= rows.win_rate[g] <= rows.hi[g], (method, g)
            assert rows.lo[g] >= 0.0 and rows.hi[g] <= 1.0  # means of outcomes in [0, 1]
    assert table.loc[table.method == "maxmin", "win_rate"].tolist()[1] == pytest.approx(4 / 9)
    constant = table[(table.method == "maxmin") & (table.group == "majority")].iloc[0]
    assert constant.win_rate == constant.lo == constant.hi == 0.5  # no spread, no interval
    single = table[table.method == "single"].set_index("group")
    assert (single.lo < single.hi).all()  # varying outcomes give a real interval


def test_headline_is_a_seeded_percentile_bootstrap_over_shared_rows():
    """One resample of rows serves every group: each group's interval is that column's own
    percentile bootstrap with the same seed (:func:`bootstrap_ci`), and the average's is
    the bootstrap of the per-row averages (an average of group means of one resample)."""
    rng = np.random.default_rng(3)
    by_group = {g: rng.choice([0.0, 0.5, 1.0], size=40) for g in ("majority", "minority")}
    table = headline({"m": by_group}, n_boot=500, seed=5).set_index("group")
    row_avg = (by_group["majority"] + by_group["minority"]) / 2
    for g, values in [*by_group.items(), ("average", row_avg)]:
        mean, lo, hi = bootstrap_ci(values, 500, seed=5)
        assert table.win_rate[g] == pytest.approx(mean, abs=1e-12)
        assert (table.lo[g], table.hi[g]) == pytest.approx((lo, hi), abs=1e-12), g
    # seeded: the same seed reproduces the table bitwise, another one moves the bounds
    pd.testing.assert_frame_equal(
        headline({"m": by_group}, 500, seed=5).set_index("group"), table, check_exact=True
    )
    other = headline({"m": by_group}, 500, seed=6).set_index("group")
    assert (other.win_rate == table.win_rate).all()
    assert not np.array_equal(other[["lo", "hi"]], table[["lo", "hi"]])
    # a percentile interval: a lower level gives a nested, narrower interval
    narrow = headline({"m": by_group}, 500, seed=5, level=0.5).set_index("group")
    assert ((table.lo <= narrow.lo) & (narrow.hi <= table.hi)).all()
    assert ((narrow.hi - narrow.lo) < (table.hi - table.lo)).all()


def test_headline_average_resamples_the_same_rows_for_both_groups():
    """Opposed groups: minority = 1 - majority on every row, so every row averages 1/2 and a
    bootstrap over shared rows gives the degenerate CI [0.5, 0.5], narrower than either
    group's (independent resamples of the two groups would spread it)."""
    major = np.array([1.0, 0.0, 1.0, 1.0, 0.5, 0.0, 1.0, 1.0])
    table = headline({"m": {"majority": major, "minority": 1 - major}}, 200, seed=0)
    rows = table.set_index("group")
    assert (rows.win_rate["average"], rows.lo["average"], rows.hi["average"]) == (0.5, 0.5, 0.5)
    assert rows.win_rate["majority"] == pytest.approx(5.5 / 8)
    assert rows.win_rate["minority"] == pytest.approx(2.5 / 8)
    for g in ("majority", "minority"):
        assert rows.lo[g] < rows.hi[g]
        assert rows.hi["average"] - rows.lo["average"] < rows.hi[g] - rows.lo[g]
    # the same resamples: the minority's interval mirrors the majority's
    assert rows.lo["minority"] == pytest.approx(1 - rows.hi["majority"], abs=1e-12)
    assert rows.hi["minority"] == pytest.approx(1 - rows.lo["majority"], abs=1e-12)


def test_headline_refuses_groups_of_different_lengths():
    with pytest.raises(ValueError, match=r"single: groups have different numbers of outcomes"):
        headline({"single": {"majority": np.ones(4), "minority": np.ones(3)}}, 10, 0)


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
    recipe = load_stage_config("policy_pretrain", PretrainConfig, tiny_params, "cpu")
    assert isinstance(recipe, PretrainConfig)
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
        with pytest.raises(ValueError, match=r"proxy\.pretrain_steps must be >= 1, got "):
            proxy_pretrain_config(recipe, bad)


# --------------------------------------------------------------------------- config


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> mt.Config:
    params = write_params(tmp_path_factory.mktemp("params") / "params.yaml", tiny_params_copy())
    return load_stage_config("maxmin_tulu2", mt.Config, params, "cpu")


@pytest.fixture(scope="module")
def prompts(cfg, tok) -> mt.PromptSets:
    return mt.prompt_sets(cfg, tok, "packaged")


def test_config_of_the_cpu_profile_has_nested_sections_and_leaves_optionals_none(cfg):
    assert cfg.proxy == ProxySettings(16, 1, 2, 32, 4)
    assert cfg.generation == GenerationSettings(max_new_tokens=6, temperature=0.7)
    assert cfg.ppo.n_updates == 2 and cfg.ppo.kl_coef == 0.05  # shared key, cpu override
    assert cfg.reward_model.max_length == 16
    assert (cfg.n_pref_prompts, cfg.n_judge_prompts) == (20, 10) and cfg.launcher is None
    assert (cfg.users_per_group, cfg.ratio, cfg.comparisons_per_user) == (4, 2, 3)
    assert (cfg.em_iters, cfg.em_folds) == (1, 2)
    assert cfg.judges == ["ground_truth", "heldout_rm"]  # the rule first: primary
    assert cfg.suppress_eos is True and cfg.stop_if_uncontrollable is False
    assert cfg.dimension == {"majority": "P1A", "minority": "P1B"}
    for key in ("psoups_files", "psoups_columns", "ppo_prompt_column", "ppo_input_column",
                "eval_prompts_split", "eval_prompt_column", "judge_model",
                "n_judge_comparisons"):  # fmt: skip
        assert getattr(cfg, key) is None, key


PSOUPS = {"preference_data": "data/rlphf", "psoups_files": {"P1A": "a.json", "P1B": "b.json"}}
HUB = {"policy": "allenai/tulu-2-7b@abc", "proxy": None}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"majority": "P4A"}, r"unknown P-SOUPS dimension 'P4A'"),
        ({"minority": "P1A"}, "must be different dimensions"),
        ({"proxy": None}, "policy llama_proxy needs the proxy section"),
        (
            {"majority": "P2A", "minority": "P2B"},
            r"the proxy's control tags and the grade-gap check cover \['P1A', 'P1B'\]; "
            r"majority/minority are P2A/P2B",
        ),
        ({"minority": "P3B"}, r"grade-gap check cover .*; majority/minority are P1A/P3B"),
        ({"n_pref_prompts": None}, "synthetic preference data needs n_pref_prompts and n_judge"),
        ({"n_judge_prompts": None}, "synthetic preference data needs n_pref_prompts and n_judge"),
        ({"preference_data": "data/rlphf"}, r"preference_data 'data/rlphf' needs psoups_files"),
        ({"judges": []}, r"judges \[\]: each must be one of \('ground_truth', 'heldout_rm', 'end"),
        ({"judges": ["gpt4"]}, r"judges \['gpt4'\]: each must be one of"),
        ({"judges": ["heldout_rm", "reward_model"]}, r"judges \['heldout_rm', 'reward_model'\]"),
        ({**PSOUPS, "judges": ["ground_truth"]}, "judge ground_truth exists for synthetic data"),
        (
            {**PSOUPS, "judges": ["heldout_rm", "ground_truth"], "n_judge_comparisons": 5},
            "judge ground_truth exists for synthetic data only",
        ),
        ({**PSOUPS, "judges": ["heldout_rm"]}, "heldout_rm on P-SOUPS files needs n_judge_comp"),
        ({"judges": ["endpoint"]}, "judge endpoint: name the endpoint's model in judge_model"),
        ({"ratio": 5}, r"ratio 5 must leave 1\.\.3 minority users of 4 in the biased mix"),
        ({"ratio": 1}, r"ratio 1 must leave 1\.\.3 minority users of 4"),  # no bias: 4 of 4
        ({"ratio": 0}, r"ratio 0 must leave"),
        ({"users_per_group": 1}, r"ratio 2 must leave 1\.\.0 minority users of 1"),
        ({"em_folds": 1}, r"em_folds must be >= 2 \(cross-fitted E-step\), got 1"),
        ({"ppo_prompts": "alpaca.json"}, r"ppo_prompts 'alpaca.json' needs ppo_prompt_column"),
        ({"eval_prompts": "koala.json"}, r"needs eval_prompt_column and eval_prompts_split"),
    ],
)
def test_config_refuses_inconsistent_settings(cfg, changes: dict[str, Any], message: str):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(cfg, **changes)


def test_config_accepts_the_hub_profile_combinations(cfg):
    hub = dataclasses.replace(
        cfg, **HUB, **PSOUPS, n_pref_prompts=None, n_judge_prompts=None,
        judges=["heldout_rm", "endpoint"], judge_model="gpt-4o", n_judge_comparisons=500,
        users_per_group=40, ratio=10, em_folds=5,
    )  # fmt: skip
    assert backbone_spec(hub, "unused").source == "allenai/tulu-2-7b@abc"
    # a hub policy reads instructions: any two dimensions, no control tags needed
    dataclasses.replace(hub, minority="P3B")
    # the edges that are allowed: ratio leaving exactly 1 minority user, two folds
    dataclasses.replace(cfg, ratio=3)  # 4 // 3 = 1
    dataclasses.replace(cfg, ratio=4, em_folds=2)  # 4 // 4 = 1
    dataclasses.replace(cfg, majority="P1B", minority="P1A")  # the tags in either order


# --------------------------------------------------------------------------- prompt sets


def test_prompt_sets_from_imdb_have_the_sizes_one_length_and_tags(cfg, tok, proxy, prompts):
    """(Disjoint by review: two reviews may still open with the same 4 tokens.)"""
    sizes = {k: len(getattr(prompts, k)) for k in ("pref", "judge", "ppo", "eval")}
    assert sizes == {"pref": 20, "judge": 10, "ppo": 8, "eval": 6}
    rows = prompts.pref + prompts.judge + prompts.ppo + prompts.eval
    assert {len(p) for p in rows} == {cfg.prompt_tokens + 1}  # EOS + prompt_tokens
    assert all(p[0] == tok.eos_token_id for p in rows)
    # each group's evaluation prompts: the same openings with the group's control tag
    assert list(prompts.eval_by_group) == list(GROUPS)
    for g, dim in cfg.dimension.items():
        assert prompts.eval_by_group[g] == tagged_prompt_ids(tok, prompts.eval, TAGS[dim])
    assert prompts.eval_by_group["majority"] != prompts.eval_by_group["minority"]
    # the text a held-out reward model reads before an answer: the untagged prompt, in the
    # form of the texts it was trained on (Rollouts.texts = prompt text + continuation)
    roll = sample_rollouts(proxy, tok, prompts.eval, 2, 0.7, seed=0)
    assert len(prompts.eval_text) == 6
    for text, full, cont in zip(prompts.eval_text, roll.texts, roll.continuations, strict=True):
        assert full == text + cont
        assert not any(tag in text for tag in TAGS.values())
    assert mt.prompt_sets(cfg, tok, "packaged") == prompts  # seeded


def test_prompt_sets_from_instruction_files(cfg, tok, tmp_path: Path, datasets_cache):
    """The paper path: PPO prompts are instruction + input (inputs may be empty), evaluation
    prompts get each group's preference instruction appended, and a prompt is kept only if
    every version of it fits, so that all groups are judged on the same prompts."""
    n_tokens = 72
    fits = ["Why do cats purr?", "Name a good film.", "Is rain wet?"]
    # fits alone, not with a preference instruction appended
    long = "Describe the plot of the film, then name its best scene and its actors."
    assert len(tok(chat(long))["input_ids"]) <= n_tokens
    assert len(tok(chat(with_preference(long, "P1A")))["input_ids"]) > n_tokens
    assert all(len(tok(chat(with_preference(t, "P1B")))["input_ids"]) <= n_tokens for t in fits)
    koala = _jsonl(tmp_path / "koala.json", [{"prompt": t} for t in [fits[0], long, *fits[1:]]])
    alpaca = _jsonl(
        tmp_path / "alpaca.json",
        [
            {"instruction": "Tell me about rain.", "input": ""},
            {"instruction": "Why? " * 30, "input": ""},  # too long: dropped
            {"instruction": " Summarize this. ", "input": " Cats purr when happy. "},
            {"instruction": "Name a cat.", "input": None},
        ],
    )
    texts = mt.instruction_texts(str(alpaca), "train", "instruction", "input")
    assert texts[0] == "Tell me about rain." and texts[2] == "Summarize this. Cats purr when happy."
    assert texts[3] == "Name a cat."
    assert mt.instruction_texts(str(alpaca), "train", "instruction", None)[2] == (
        " Summarize this. "
    )  # no input column: the instructions as they are
    paper = dataclasses.replace(
        cfg, ppo_prompts=str(alpaca), ppo_prompt_column="instruction", ppo_input_column="input",
        eval_prompts=str(koala), eval_prompts_split="train", eval_prompt_column="prompt",
        prompt_tokens=n_tokens, n_ppo_prompts=3, n_eval_prompts=3,
    )  # fmt: skip
    sets = mt.prompt_sets(paper, tok, "packaged")
    assert sets.pref == [] and sets.judge == []
    kept = [texts[0], texts[2], texts[3]]
    assert sets.ppo == chat_prompt_ids(tok, kept, n_tokens)
    assert sets.eval == chat_prompt_ids(tok, fits, n_tokens)  # the long one dropped
    for g, dim in paper.dimension.items():
        want = chat_prompt_ids(tok, [with_preference(t, dim) for t in fits], n_tokens)
        assert sets.eval_by_group[g] == want
    assert {len(p) for p in sets.ppo + sets.eval + sets.eval_by_group["minority"]} == {n_tokens}
    # the held-out reward models read the unconditioned prompt, never a preference
    for t, text in zip(fits, sets.eval_text, strict=True):
        assert t in text and text.endswith("<|assistant|>\n") and tok.pad_token not in text
        assert not any(p in text for p in PREFERENCE_PROMPTS.values())
    with pytest.raises(ValueError, match=r"3 PPO / 3 evaluation prompts fit in prompt_tokens=72"):
        mt.prompt_sets(dataclasses.replace(paper, n_ppo_prompts=4), tok, "packaged")
    with pytest.raises(ValueError, match=r"3 PPO / 3 evaluation prompts fit .* ask for 3 / 4"):
        mt.prompt_sets(dataclasses.replace(paper, n_eval_prompts=4), tok, "packaged")


def test_instruction_texts_name_a_bad_input_column(tmp_path: Path, datasets_cache):
    path = _jsonl(tmp_path / "a.json", [{"instruction": "Say hi.", "input": 5}] * 2)
    with pytest.raises(ValueError, match=r"a\.json: no column 'context' \(it has"):
        mt.instruction_texts(str(path), "train", "instruction", "context")
    with pytest.raises(ValueError, match=r"a\.json: row 0: field 'input' is not text"):
        mt.instruction_texts(str(path), "train", "instruction", "input")


# --------------------------------------------------------------------------- premise (a)


def test_controllability_is_the_grade_gap_of_the_sft_answers_per_tag(cfg, tok, prompts):
    # Peaked next-token distributions: the tag changes the answers (with the default
    # initialisation a 1-layer proxy answers both tags alike and every gap is 0).
    proxy = build_llama_proxy(tok, seed=0, initializer_range=0.5, **SHAPE)
    gap, sft = mt.controllability(proxy, tok, cfg, prompts, seed=3)
    assert list(sft) == ["majority", "minority", "none"]
    assert sft["majority"].continuations != sft["minority"].continuations
    assert abs(gap.gap) > 0.5  # the swap below could not hide behind a zero gap
    gen = cfg.generation
    for g, ids in [*prompts.eval_by_group.items(), ("none", prompts.eval)]:
        assert sft[g].prompt_ids == ids
        again = sample_rollouts(proxy, tok, ids, gen.max_new_tokens, gen.temperature, 3)
        assert sft[g].continuations == again.continuations  # the seed given, each condition
    # majority P1A = [easy], minority P1B = [hard]: gap = grade([hard]) - grade([easy])
    want = grade_gap(
        sft["majority"].continuations, sft["minority"].continuations, sft["none"].continuations,
        cfg.n_boot, 3,
    )  # fmt: skip
    assert gap.gap == pytest.approx(want.gap, abs=1e-12)
    assert (gap.lo, gap.hi) == pytest.approx((want.lo, want.hi), abs=1e-12)
    assert gap.mean_grade == pytest.approx(want.mean_grade, abs=1e-12)
    # groups swapped (majority P1B): the majority answers [hard], and the gap still reads
    # [hard] minus [easy], so it is the same number
    swapped = dataclasses.replace(cfg, majority="P1B", minority="P1A")
    by_group = {"majority": prompts.eval_by_group["minority"],
                "minority": prompts.eval_by_group["majority"]}  # fmt: skip
    gap2, sft2 = mt.controllability(
        proxy, tok, swapped, dataclasses.replace(prompts, eval_by_group=by_group), 3
    )
    assert sft2["majority"].continuations == sft["minority"].continuations
    assert gap2.gap == pytest.approx(gap.gap, abs=1e-12)
    assert gap2.mean_grade == pytest.approx(gap.mean_grade, abs=1e-12)


def test_ban_eos_bans_only_when_enabled(tok):
    model = build_llama_proxy(tok, seed=0, **SHAPE)  # its own model: the ban stays on it
    ids = torch.tensor([[tok.eos_token_id, 40, 41, 42]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        assert mt.ban_eos(False, model, tok) is model
        torch.testing.assert_close(model(input_ids=ids).logits, plain)
        assert mt.ban_eos(True, model, tok) is model
        banned = model(input_ids=ids).logits
    eos = tok.eos_token_id
    assert (banned[..., eos] == BANNED_LOGIT).all()
    torch.testing.assert_close(banned[..., :eos], plain[..., :eos])
    torch.testing.assert_close(banned[..., eos + 1 :], plain[..., eos + 1 :])


# --------------------------------------------------------------------------- preference data


def test_synthetic_preference_data_is_labelled_on_the_training_pairs(cfg, tok, proxy, prompts):
    data = mt.preference_data(cfg, tok, proxy, prompts)
    pairs, labels, full = data.pairs, data.labels, data.full
    assert pairs is not None and labels is not None
    n_users = 2 * cfg.users_per_group  # the full per-group data: 4 + 4 users
    assert len(full) == len(full.rejected) == n_users * cfg.comparisons_per_user
    assert pairs.n_train == 16 and len(pairs.a) == 20
    assert labels.pair.max() < pairs.n_train  # held-out pairs are never labelled
    np.testing.assert_array_equal(full.user_of, labels.user)
    np.testing.assert_array_equal(full.user_group, [0] * 4 + [1] * 4)
    # labels by the dimensions' scores of the training pairs (z-scored over them only)
    again, groups = label_by_dimensions(
        dimension_scores([pairs.a.continuations[i] for i in pairs.train]),
        dimension_scores([pairs.b.continuations[i] for i in pairs.train]),
        [cfg.majority] * 4 + [cfg.minority] * 4, cfg.comparisons_per_user, cfg.label_beta,
        cfg.seed,
    )  # fmt: skip
    assert groups == (cfg.majority, cfg.minority)
    np.testing.assert_array_equal(again.a_wins, labels.a_wins)
    assert (full.chosen, full.rejected) == pairs.comparisons(labels)
    pd.testing.assert_frame_equal(
        pairs.truth_a, group_truth(pairs.a.continuations, cfg.majority, cfg.minority)
    )


def test_synthetic_judge_pairs_are_other_prompts_ordered_by_each_groups_rule(
    cfg, tok, proxy, prompts
):
    judge = mt.preference_data(cfg, tok, proxy, prompts).judge
    assert list(judge) == list(GROUPS)
    heads = [tok.decode(p[1:]) for p in prompts.judge]  # the judge prompts' text
    chosen, rejected = judge["majority"]
    assert 0 < len(chosen) == len(rejected) <= len(prompts.judge)
    for c, r in zip(chosen, rejected, strict=True):
        head = max((h for h in heads if c.startswith(h) and r.startswith(h)), key=len)
        truth = group_truth([c[len(head) :], r[len(head) :]], cfg.majority, cfg.minority)
        assert truth["majority"][0] > truth["majority"][1]  # strictly: ties are dropped
    # P1A and P1B are exact opposites: the minority's pairs are the majority's, reversed
    assert judge["minority"] == (rejected, chosen)


def _release(folder: Path, n: int) -> Path:
    """The RLPHF release's reward-model files: user_input carries the preference
    instruction; completion_a is the preferred answer."""
    (folder / "rm_training").mkdir(parents=True)
    for dim in ("P1A", "P1B"):
        rows = [
            {
                "user_input": f"Explain topic {i}. {PREFERENCE_PROMPTS[dim]}",
                "completion_a": f" {dim} good {i}",
                "completion_b": f" {dim} bad {i}",
            }
            for i in range(n)
        ]
        _jsonl(folder / "rm_training" / f"{dim}.json", rows)
    return folder


RELEASE = {
    "psoups_files": {"P1A": "rm_training/P1A.json", "P1B": "rm_training/P1B.json"},
    "psoups_columns": {
        "prompt": "user_input",
        "chosen": "completion_a",
        "rejected": "completion_b",
    },
}


def test_psoups_preference_data_has_no_preference_instruction_in_any_text(
    cfg, tmp_path: Path, datasets_cache, host_lookups
):
    """What the reward models (and the judges') learn from the release's rows: the prompt
    without its preference instruction (the PPO prompts carry none), in Tulu's format."""
    folder = _release(tmp_path / "rlphf", 16)
    paper = dataclasses.replace(
        cfg, preference_data=str(folder), **RELEASE, judges=["heldout_rm"], n_judge_comparisons=3
    )
    data = mt.preference_data(paper, None, None, None)  # files only: no model, no prompts
    assert data.pairs is None and data.labels is None
    full = data.full
    assert len(full) == 2 * 4 * 3
    np.testing.assert_array_equal(full.user_group, [0] * 4 + [1] * 4)
    texts = [*full.chosen, *full.rejected]
    texts += [t for g in GROUPS for side in data.judge[g] for t in side]
    for text in texts:
        assert not any(p in text for p in PREFERENCE_PROMPTS.values()), text
        assert "Generate a response" not in text
    used: dict[str, set[int]] = {"P1A": set(), "P1B": set()}
    for c, r, u in zip(full.chosen, full.rejected, full.user_of, strict=True):
        dim = ("P1A", "P1B")[full.user_group[u]]
        i = int(c.rsplit(" ", 1)[1])
        assert c == chat(f"Explain topic {i}.") + f" {dim} good {i}"  # completion_a: chosen
        assert r == chat(f"Explain topic {i}.") + f" {dim} bad {i}"
        used[dim].add(i)
    for g, dim in paper.dimension.items():
        chosen, rejected = data.judge[g]
        assert len(chosen) == len(rejected) == 3
        rows = set()
        for c, r in zip(chosen, rejected, strict=True):
            i = int(c.rsplit(" ", 1)[1])
            assert c == chat(f"Explain topic {i}.") + f" {dim} good {i}"
            assert r == chat(f"Explain topic {i}.") + f" {dim} bad {i}"
            rows.add(i)
        assert len(rows) == 3 and not rows & used[dim]  # rows no arm trains on
    assert host_lookups == []


# --------------------------------------------------------------------------- users and data


def _comparisons(groups: list[int], per_user: int = 2) -> mt.Comparisons:
    """User u's j-th comparison is ("c{u}-{j}", "r{u}-{j}")."""
    users = range(len(groups))
    return mt.Comparisons(
        [f"c{u}-{j}" for u in users for j in range(per_user)],
        [f"r{u}-{j}" for u in users for j in range(per_user)],
        np.repeat(np.arange(len(groups)), per_user),
        np.asarray(groups),
    )


def _owner(text: str) -> int:
    return int(text[1:].split("-")[0])


def test_comparisons_subset_renumbers_users_in_the_order_given():
    comps = _comparisons([0, 0, 1, 0, 1])
    sub = comps.subset([3, 1])
    assert sub.chosen == ["c1-0", "c1-1", "c3-0", "c3-1"]  # rows keep the file's order
    assert sub.rejected == ["r1-0", "r1-1", "r3-0", "r3-1"]
    np.testing.assert_array_equal(sub.user_of, [1, 1, 0, 0])  # 3 -> 0, 1 -> 1
    np.testing.assert_array_equal(sub.user_group, [0, 0])
    assert sub.user_of.dtype == np.int64 and len(sub) == 4
    mixed = comps.subset(np.array([4, 0]))
    for text, u in zip(mixed.chosen, mixed.user_of, strict=True):
        assert _owner(text) == [4, 0][u]
    np.testing.assert_array_equal(mixed.user_group, [1, 0])


def test_comparisons_group_keeps_one_groups_users():
    comps = _comparisons([0, 1, 0, 1, 1])
    minority = comps.group(1)
    assert [_owner(t) for t in minority.chosen] == [1, 1, 3, 3, 4, 4]
    np.testing.assert_array_equal(minority.user_of, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(minority.user_group, [1, 1, 1])
    assert {_owner(t) for t in comps.group(0).chosen} == {0, 2}


@pytest.mark.parametrize(("n", "ratio", "keep"), [(30, 10, 3), (40, 10, 4), (4, 2, 2), (9, 3, 3)])
def test_comparisons_biased_keeps_all_majority_and_n_over_ratio_minority_users(n, ratio, keep):
    comps = _comparisons([0] * n + [1] * n, per_user=1)
    biased = comps.biased(ratio)
    np.testing.assert_array_equal(biased.user_group, [0] * n + [1] * keep)
    owners = [_owner(t) for t in biased.chosen]
    assert owners == list(range(n)) + list(range(n, n + keep))  # the first minority users
    np.testing.assert_array_equal(biased.user_of, np.arange(n + keep))  # renumbered 0..
    assert np.bincount(biased.user_group[biased.user_of]).tolist() == [n, keep]


def test_comparisons_biased_refuses_to_keep_no_minority_user():
    with pytest.raises(ValueError, match="9 minority users leave none at ratio 10"):
        _comparisons([0] * 30 + [1] * 9).biased(10)
    _comparisons([0] * 30 + [1] * 10).biased(10)  # one is enough


class FakeBank:
    """The adapter bank's interface, recording what each named model learned from."""

    def __init__(self) -> None:
        self.models: dict[str, SimpleNamespace] = {}
        self.dropped: list[str] = []

    def add(self, name: str, lora) -> str:
        assert name not in self.models
        self.models[name] = SimpleNamespace(name=name, seen=None)
        return name

    def use(self, name: str) -> SimpleNamespace:
        return self.models[name]

    def write(self, name: str, folder: Path) -> None:
        (folder / "adapter_config.json").write_text(json.dumps(self.models[name].seen))

    def drop(self, name: str) -> None:
        self.dropped.append(name)


def test_fit_reward_models_trains_each_model_on_its_data(cfg, tok, monkeypatch, tmp_path):
    """Which data each reward model learns from: the single RM and EM's 10:1 run on the
    biased mix, each group RM on its whole group, each judge on the judges' rows only; each
    is saved as an adapter and freed, and a rerun reuses every saved one."""
    full = _comparisons([0] * 4 + [1] * 4, per_user=3)
    judge = {"majority": (["jc-maj"], ["jr-maj"]), "minority": (["jc-min"], ["jr-min"])}
    data = mt.PreferenceData(full, judge)
    em_calls: list[dict[str, Any]] = []

    def fake_fit(model, tokenizer, chosen, rejected, settings, seed):
        assert settings == cfg.reward_model and seed == cfg.seed and tokenizer is tok
        model.seen = (list(chosen), list(rejected))
        return model

    def fake_em(chosen, rejected, users, k, new_model, tokenizer, **kwargs):
        em_calls.append({"chosen": list(chosen), "users": np.asarray(users), "k": k} | kwargs)
        models = [new_model(0), new_model(1)]
        for m in models:
            kwargs["activate"](m).seen = (list(chosen), list(rejected))
        start = np.arange(len(np.unique(users))) % 2
        return SimpleNamespace(
            models=models, assignment=start, initial=start, n_iter=2, converged=True,
            temperatures=[np.ones(2)],
        )  # fmt: skip

    monkeypatch.setattr(mt, "fit_reward_model", fake_fit)
    monkeypatch.setattr(mt, "fit_neural_crossfit_em", fake_em)
    bank = FakeBank()
    rms = mt.fit_reward_models(cfg, data, bank, tok, tmp_path / "rms")
    assert list(rms.adapters) == [
        "single", "group_majority", "group_minority", "judge_majority", "judge_minority",
        "em0", "em1",
    ]  # fmt: skip
    assert set(bank.dropped) == set(bank.models)  # every model freed once saved
    seen = {
        name: tuple(json.loads((folder / "adapter_config.json").read_text()))
        for name, folder in rms.adapters.items()
    }
    biased = full.biased(cfg.ratio)
    owners = lambda texts: sorted({_owner(t) for t in texts})  # noqa: E731
    assert seen["single"] == (biased.chosen, biased.rejected)
    assert owners(seen["single"][0]) == [0, 1, 2, 3, 4, 5]  # 4 + 4 // 2
    assert owners(seen["group_majority"][0]) == [0, 1, 2, 3]
    assert owners(seen["group_minority"][0]) == [4, 5, 6, 7]
    assert seen["judge_majority"] == (["jc-maj"], ["jr-maj"])
    assert seen["judge_minority"] == (["jc-min"], ["jr-min"])
    assert seen["em0"] == (biased.chosen, biased.rejected)  # MaxMin-EM: the 10:1 mixture
    assert list(rms.em) == ["10to1", "1to1"] and len(em_calls) == 2
    assert rms.em["10to1"]["users"] == 6 and rms.em["1to1"]["users"] == 8
    assert em_calls[0]["chosen"] == biased.chosen and em_calls[1]["chosen"] == full.chosen
    np.testing.assert_array_equal(em_calls[0]["users"], biased.user_of)
    for call in em_calls:
        assert call["k"] == 2 and call["n_folds"] == cfg.em_folds
        assert call["n_iter"] == cfg.em_iters and call["seed"] == cfg.seed
        assert call["max_length"] == cfg.reward_model.max_length
        assert call["release"] == bank.drop  # EM slots share the bank's base
    assert set(rms.seconds) == ({*rms.adapters} - {"em0", "em1"}) | {"em_10to1", "em_1to1"}
    assert rms.cached == []
    # a rerun (a stage that crashed in PPO) trains nothing: every adapter is reused
    monkeypatch.setattr(mt, "fit_reward_model", lambda *a, **k: pytest.fail("retrained"))
    monkeypatch.setattr(mt, "fit_neural_crossfit_em", lambda *a, **k: pytest.fail("refit EM"))
    again = mt.fit_reward_models(cfg, data, FakeBank(), tok, tmp_path / "rms")
    assert again.adapters == rms.adapters and again.em == rms.em
    assert again.cached == [*list(rms.adapters)[:5], "em_10to1", "em_1to1"]
    # the judges' models are trained only when they judge
    monkeypatch.setattr(mt, "fit_reward_model", fake_fit)
    monkeypatch.setattr(mt, "fit_neural_crossfit_em", fake_em)
    no_rm_judge = dataclasses.replace(cfg, judges=["ground_truth"])
    rms = mt.fit_reward_models(no_rm_judge, data, FakeBank(), tok, tmp_path / "other")
    assert not any(name.startswith("judge_") for name in rms.adapters)


def test_em_summary_scores_each_run_against_the_planted_groups():
    truth = _comparisons([0, 0, 0, 1, 1, 1]).user_group
    perfect = SimpleNamespace(
        assignment=np.array([1, 1, 1, 0, 0, 0]), initial=np.array([0, 1, 0, 1, 0, 1]),
        n_iter=3, converged=True, temperatures=[np.array([1.0, 2.5])],
    )  # fmt: skip
    stuck = SimpleNamespace(
        assignment=np.array([0, 1, 0, 1, 0, 1]), initial=np.array([0, 1, 0, 1, 0, 1]),
        n_iter=1, converged=False, temperatures=[],
    )  # fmt: skip
    out = {"perfect": mt.em_run_summary(perfect, truth), "stuck": mt.em_run_summary(stuck, truth)}
    assert out["perfect"]["ari"] == pytest.approx(1.0)  # labels swapped: still perfect
    assert out["perfect"]["users_moved"] == 4 and out["perfect"]["users"] == 6
    assert out["perfect"]["iterations"] == 3
    assert out["stuck"]["users_moved"] == 0
    assert out["stuck"]["ari"] == pytest.approx(out["stuck"]["ari_start"])
    assert out["perfect"]["ari_start"] == pytest.approx(out["stuck"]["ari"])
    assert out["stuck"]["ari"] < 0.5
    assert (out["perfect"]["converged"], out["stuck"]["converged"]) == (1, 0)
    assert out["perfect"]["max_temperature"] == 2.5


# --------------------------------------------------------------------------- evaluation


class Recorder:
    """An endpoint-like judge (not a reward model): a fixed outcome, and what it was asked."""

    def __init__(self, outcome: float) -> None:
        self.outcome = outcome
        self.calls: list[tuple[list[str], list[str], list[str]]] = []

    def compare(self, prompts, answers, references):
        self.calls.append((list(prompts), list(answers), list(references)))
        return np.full(len(prompts), self.outcome)


def _sft(tok, proxy, prompts, seed: int):
    return {g: sample_rollouts(proxy, tok, prompts.eval_by_group[g], 6, 0.7, seed) for g in GROUPS}


def test_evaluate_arm_of_the_reference_itself_ties_everywhere(cfg, tok, proxy, prompts):
    gen = cfg.generation
    sft = {
        g: sample_rollouts(
            proxy, tok, prompts.eval_by_group[g], gen.max_new_tokens, gen.temperature, cfg.seed + 4
        )
        for g in GROUPS
    }
    judges = {"ground_truth": {g: None for g in GROUPS}}
    outcomes, row = mt.evaluate_arm(proxy, proxy, tok, cfg, prompts, sft, judges)
    assert list(outcomes) == ["ground_truth"] and list(outcomes["ground_truth"]) == list(GROUPS)
    for g in GROUPS:
        np.testing.assert_array_equal(outcomes["ground_truth"][g], np.full(6, 0.5))
        truth = mt.truth_of(cfg)(sft[g])[g]
        assert row[f"truth_{g}"] == pytest.approx(float(truth.mean()), abs=1e-12)
        assert row[f"grade_{g}"] == pytest.approx(float(grades(sft[g].continuations).mean()))
        assert row[f"tokens_{g}"] == pytest.approx(float(sft[g].n_tokens.mean()))
    assert row["kl"] == pytest.approx(0.0, abs=1e-9)  # one network, the same rows
    assert set(row) == {"kl"} | {f"{k}_{g}" for k in ("truth", "grade", "tokens") for g in GROUPS}


def test_evaluate_arm_judges_each_group_on_its_own_conditioned_answers(cfg, tok, proxy, prompts):
    sft = _sft(tok, proxy, prompts, seed=1)
    scored: list[list[str]] = []

    def score(texts: list[str]) -> np.ndarray:
        scored.append(list(texts))
        return np.arange(len(texts), dtype=np.float64)  # the references score higher

    endpoint = {"majority": Recorder(1.0), "minority": Recorder(0.25)}
    judges = {
        "ground_truth": {g: None for g in GROUPS},
        "heldout_rm": {g: RewardModelJudge(score) for g in GROUPS},
        "endpoint": endpoint,
    }
    outcomes, row = mt.evaluate_arm(proxy, proxy, tok, cfg, prompts, sft, judges)
    assert list(outcomes) == ["ground_truth", "heldout_rm", "endpoint"]
    for g, dim in cfg.dimension.items():
        (shown, answers, references), = endpoint[g].calls  # fmt: skip
        assert references == sft[g].continuations and len(answers) == 6
        # the endpoint reads the prompt as the policy saw it: with the group's condition
        assert all(TAGS[dim] in p for p in shown) and tok.pad_token not in "".join(shown)
        np.testing.assert_array_equal(outcomes["endpoint"][g], np.full(6, endpoint[g].outcome))
        # the rule: win 1, tie 1/2, loss 0 of the policy's answer against SFT's
        truth = group_truth(answers, cfg.majority, cfg.minority)[g].to_numpy()
        truth_sft = group_truth(references, cfg.majority, cfg.minority)[g].to_numpy()
        np.testing.assert_array_equal(
            outcomes["ground_truth"][g], 0.5 + 0.5 * np.sign(truth - truth_sft)
        )
        assert row[f"truth_{g}"] == pytest.approx(float(truth.mean()), abs=1e-12)
        assert row[f"grade_{g}"] == pytest.approx(float(grades(answers).mean()), abs=1e-12)
        np.testing.assert_array_equal(outcomes["heldout_rm"][g], np.zeros(6))
    # the held-out reward models read the unconditioned prompt (their training form)
    assert len(scored) == 2
    for texts, g in zip(scored, GROUPS, strict=True):
        _, answers, references = endpoint[g].calls[0]
        assert texts[:6] == [p + a for p, a in zip(prompts.eval_text, answers, strict=True)]
        assert texts[6:] == [p + r for p, r in zip(prompts.eval_text, references, strict=True)]
    # the same policy and seed for both groups' prompts, yet different conditions
    assert endpoint["majority"].calls[0][0] != endpoint["minority"].calls[0][0]


# --------------------------------------------------------------------------- the paper's claims


def test_judges_for_builds_each_judge_from_what_it_is_given(cfg, monkeypatch):
    heldout = {g: (lambda texts, g=g: np.zeros(len(texts))) for g in GROUPS}
    judges = mt.judges_for(cfg, heldout | {"single": lambda texts: np.ones(len(texts))})
    assert list(judges) == ["ground_truth", "heldout_rm"]  # cfg.judges' order: primary first
    assert judges["ground_truth"] == {"majority": None, "minority": None}
    for g in GROUPS:
        judge = judges["heldout_rm"][g]
        assert isinstance(judge, RewardModelJudge) and judge.score is heldout[g]
    with pytest.raises(ValueError, match="judge heldout_rm needs the held-out reward models"):
        mt.judges_for(cfg, None)
    only_rule = dataclasses.replace(cfg, judges=["ground_truth"])
    assert mt.judges_for(only_rule, None) == {"ground_truth": {"majority": None, "minority": None}}
    monkeypatch.setenv("PLURALIGN_JUDGE_URL", "http://localhost:1/v1")
    monkeypatch.setenv("PLURALIGN_JUDGE_KEY", "k")
    hub = dataclasses.replace(
        cfg, **HUB, minority="P3B", judges=["endpoint", "heldout_rm"], judge_model="m"
    )
    endpoint = mt.judges_for(hub, heldout)
    assert list(endpoint) == ["endpoint", "heldout_rm"]
    assert all(isinstance(j, ChatEndpointJudge) for j in endpoint["endpoint"].values())
    assert endpoint["endpoint"]["majority"].instruction == DIMENSIONS["P1A"].description
    assert endpoint["endpoint"]["minority"].instruction == DIMENSIONS["P3B"].description
    assert endpoint["endpoint"]["minority"].model == "m"


def _closed_form(base, new) -> dict[str, float]:
    """The paper's gains from the four means, written out (relative: undefined at 0)."""
    b = {g: float(np.mean(base[g])) for g in GROUPS}
    x = {g: float(np.mean(new[g])) for g in GROUPS}
    b["average"], x["average"] = (b["majority"] + b["minority"]) / 2, sum(x.values()) / 2
    out = {}
    for g in ("majority", "minority", "average"):
        out[f"{g}_points"] = x[g] - b[g]
        out[f"{g}_relative"] = x[g] / b[g] - 1 if b[g] > 0 else float("nan")
    return out


def _win_outcomes(rng, n: int, p: list[float]) -> np.ndarray:
    return rng.choice([0.0, 0.5, 1.0], size=n, p=p)


def test_relative_gains_points_are_the_closed_form_inside_their_intervals():
    rng = np.random.default_rng(5)
    base = {"majority": _win_outcomes(rng, 60, [0.3, 0.2, 0.5]),
            "minority": _win_outcomes(rng, 60, [0.6, 0.2, 0.2])}  # fmt: skip
    new = {"majority": _win_outcomes(rng, 60, [0.35, 0.2, 0.45]),
           "minority": _win_outcomes(rng, 60, [0.3, 0.2, 0.5])}  # fmt: skip
    gain = mt.relative_gains(base, new, n_boot=400, seed=3)
    names = [
        f"{g}_{k}" for g in ("majority", "minority", "average") for k in ("points", "relative")
    ]
    assert set(gain) == {f"{n}{end}" for n in names for end in ("", "_lo", "_hi")}
    for name, value in _closed_form(base, new).items():
        assert gain[name] == pytest.approx(value, abs=1e-12), name
        assert gain[f"{name}_lo"] < gain[name] < gain[f"{name}_hi"], name
    assert gain["minority_relative"] > 0.33  # the planted minority gain is large
    # seeded: the same seed reproduces it, another one moves only the bounds
    assert mt.relative_gains(base, new, 400, seed=3) == gain
    other = mt.relative_gains(base, new, 400, seed=4)
    assert all(other[n] == gain[n] for n in names)
    assert any(other[f"{n}_lo"] != gain[f"{n}_lo"] for n in names)
    narrow = mt.relative_gains(base, new, 400, seed=3, level=0.5)
    for n in names:
        assert gain[f"{n}_lo"] <= narrow[f"{n}_lo"] <= narrow[f"{n}_hi"] <= gain[f"{n}_hi"]


def test_relative_gains_resample_rows_jointly_like_a_brute_force_bootstrap():
    """The same rng draws by hand: one resample of (seed, prompt) rows for both arms and
    both groups, percentiles of each statistic over the resamples."""
    rng = np.random.default_rng(8)
    n, n_boot, seed = 30, 200, 11
    base = {g: _win_outcomes(rng, n, [0.4, 0.2, 0.4]) for g in GROUPS}
    new = {g: np.clip(base[g] + _win_outcomes(rng, n, [0.7, 0.2, 0.1]), 0, 1) for g in GROUPS}
    gain = mt.relative_gains(base, new, n_boot, seed)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    per_resample: dict[str, list[float]] = {}
    for rows in idx:
        stats = _closed_form({g: v[rows] for g, v in base.items()},
                             {g: v[rows] for g, v in new.items()})  # fmt: skip
        for k, v in stats.items():
            per_resample.setdefault(k, []).append(v)
    for k, values in per_resample.items():
        lo, hi = np.nanquantile(values, [0.025, 0.975])
        assert (gain[f"{k}_lo"], gain[f"{k}_hi"]) == pytest.approx((lo, hi), abs=1e-12), k


def test_relative_gains_of_an_arm_against_itself_are_exactly_zero():
    """Paired: the same rows for both arms make every resampled difference 0; resampling
    the arms independently would give an interval around 0 of non-zero width."""
    rng = np.random.default_rng(2)
    base = {g: _win_outcomes(rng, 50, [0.3, 0.4, 0.3]) for g in GROUPS}
    gain = mt.relative_gains(base, {g: v.copy() for g, v in base.items()}, 300, 0)
    for value in gain.values():
        assert value == pytest.approx(0.0, abs=1e-12)


def test_relative_gains_are_undefined_where_the_base_never_wins():
    rng = np.random.default_rng(3)
    base = {"majority": _win_outcomes(rng, 20, [0.5, 0.0, 0.5]), "minority": np.zeros(20)}
    new = {g: _win_outcomes(rng, 20, [0.5, 0.0, 0.5]) for g in GROUPS}
    gain = mt.relative_gains(base, new, 100, 0)
    assert np.isnan(gain["minority_relative"])
    assert np.isnan(gain["minority_relative_lo"]) and np.isnan(gain["minority_relative_hi"])
    assert gain["minority_points"] == pytest.approx(float(new["minority"].mean()))
    assert np.isfinite(gain["average_relative"])  # the majority's wins keep the average > 0


def _gain(**changes: float) -> dict[str, float]:
    """Every claim holds: minority +50% (CI above 0), average +20% (CI above 0), majority
    1 point down (CI's lower end 4 points down)."""
    base = {
        "minority_relative": 0.50, "minority_relative_lo": 0.10,
        "average_relative": 0.20, "average_relative_lo": 0.05,
        "majority_points": -0.01, "majority_points_lo": -0.04,
    }  # fmt: skip
    return base | changes


def test_claims_need_the_threshold_and_an_interval_above_zero():
    assert mt.claims(_gain()) == {
        "minority_gain_gt_33pct": True,
        "average_gain_gt_16pct": True,
        "majority_not_hurt": True,
    }
    assert mt.claims(_gain(minority_relative=0.30))["minority_gain_gt_33pct"] is False
    assert mt.claims(_gain(average_relative=0.15))["average_gain_gt_16pct"] is False
    # above the threshold, but not significantly above 0
    assert mt.claims(_gain(average_relative_lo=-0.01))["average_gain_gt_16pct"] is False
    hurt = mt.claims(_gain(majority_points_lo=-0.06))
    assert hurt["majority_not_hurt"] is False
    assert mt.claims(_gain(majority_points_lo=-0.049))["majority_not_hurt"] is True
    assert mt.NON_INFERIORITY_MARGIN == 0.05


@pytest.mark.parametrize("lo", [0.0, -0.2, float("nan")])
def test_claims_report_majority_not_hurt_only_when_the_minority_gained(lo: float):
    """Without a minority gain, "majority not hurt" would reward a MaxMin arm that simply
    kept serving the majority: the claim is left out, not reported as true."""
    c = mt.claims(_gain(minority_relative_lo=lo))
    assert "majority_not_hurt" not in c
    assert c["minority_gain_gt_33pct"] is False and c["average_gain_gt_16pct"] is True


@pytest.mark.parametrize(
    ("changes", "power", "expected"),
    [
        ({}, True, "reproduced"),
        ({}, False, "no power"),  # power first, whatever the gains
        ({"minority_relative_lo": -0.1}, False, "no power"),
        ({"average_relative": 0.10}, True, "partly"),
        ({"average_relative_lo": -0.01}, True, "partly"),
        ({"majority_points_lo": -0.2}, True, "partly"),  # the majority was hurt
        ({"minority_relative": 0.2}, True, "partly"),  # a gain, below the paper's 33%
        ({"minority_relative_lo": 0.0}, True, "not reproduced"),
        ({"minority_relative_lo": -0.1, "minority_relative": 0.4}, True, "not reproduced"),
        ({"minority_relative": float("nan"), "minority_relative_lo": float("nan")}, True,
         "not reproduced"),
    ],
)  # fmt: skip
def test_verdict_follows_the_pre_registered_rule(changes, power: bool, expected: str):
    assert mt.verdict(_gain(**changes), power) == expected


# --------------------------------------------------------------------------- arms


GENERATION = GenerationSettings(max_new_tokens=4, temperature=0.7)


def _spec(root: Path, backbone: BackboneSpec, **changes: Any) -> ArmSpec:
    settings = PPOSettings(
        n_updates=2,
        batch_size=4,
        num_mini_batches=2,
        num_ppo_epochs=1,
        learning_rate=1e-2,
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
        "generation": dataclasses.asdict(GENERATION),
        "policy_lora_r": 4,
        "value_lora_r": 4,
        "rm_max_length": 32,
        "seed": 0,
        "workdir": str(root / "work"),
        "output_dir": str(root / "out"),
    }
    return ArmSpec(**(base | changes))


def test_arm_spec_round_trips_through_json(tmp_path: Path):
    backbone = BackboneSpec("allenai/tulu-2-7b@abc123", 8, True, True)
    spec = _spec(tmp_path, backbone, prompt_ids=[[1, 2, 3], [4, 5, 6]], probe_ids=[[7, 8, 9]])
    file = spec.write(tmp_path / "spec.json")
    raw = json.loads(file.read_text())
    assert raw["backbone"] == {
        "source": "allenai/tulu-2-7b@abc123",
        "load_in_bits": 8,
        "bf16": True,
        "gradient_checkpointing": True,
    }
    assert raw["prompt_ids"] == [[1, 2, 3], [4, 5, 6]] and raw["settings"]["batch_size"] == 4
    assert raw["generation"] == {"max_new_tokens": 4, "temperature": 0.7}
    back = ArmSpec.read(file)
    assert isinstance(back.backbone, BackboneSpec)
    assert back == spec
    assert back != dataclasses.replace(spec, seed=1)  # equality looks at the fields
    assert PPOSettings(**back.settings) == PPOSettings(**spec.settings)
    assert GenerationSettings(**back.generation) == GENERATION
    assert raw["suppress_eos"] is False  # the default: EOS allowed
    banned = dataclasses.replace(spec, suppress_eos=True)
    assert ArmSpec.read(banned.write(tmp_path / "banned.json")) == banned != spec


@pytest.mark.parametrize("suppress", [True, False])
def test_train_arm_bans_eos_from_the_policy_it_trains_when_asked(
    tok, arm: ArmSpec, monkeypatch, tmp_path: Path, suppress: bool
):
    seen: dict[str, torch.Tensor] = {}

    def fake_train_policy(policy, tokenizer, *args, **kwargs):
        ids = torch.tensor([[tokenizer.eos_token_id, 40, 41]])
        with torch.no_grad():
            seen["logits"] = policy(input_ids=ids).logits
            with policy.disable_adapter():  # PPO's reference: the policy without adapter
                seen["reference"] = policy(input_ids=ids).logits
        return policy, pd.DataFrame({"update": [1]}), None

    monkeypatch.setattr(mt, "train_policy", fake_train_policy)
    spec = dataclasses.replace(
        arm, suppress_eos=suppress, workdir=str(tmp_path / "w"), output_dir=str(tmp_path / "o")
    )
    train_arm(spec)
    eos = tok.eos_token_id
    for logits in seen.values():
        assert (logits[..., eos] == BANNED_LOGIT).all() == suppress
        assert torch.isfinite(logits).all()


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
    assert {(r["run"], r["reward_rule"], r["seed"]) for r in rows} == {
        ("single-seed0", "single", 0)
    }
    assert "method" not in rows[0]  # the notebook's method names the arm, not the rule
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
    gen = GenerationSettings(**arm.generation)
    roll = sample_rollouts(
        trained.eval(), tok, arm.probe_ids, gen.max_new_tokens, gen.temperature, arm.seed + 5
    )
    assert roll.n_tokens.max() <= gen.max_new_tokens
    scores = dimension_scores(roll.continuations)
    last = json.loads((Path(arm.output_dir) / "log.json").read_text())[-1]
    assert last["gt_majority"] == pytest.approx(float(scores["P1A"].mean()), abs=1e-12)
    assert last["gt_minority"] == pytest.approx(float(scores["P1B"].mean()), abs=1e-12)


def test_train_arm_does_not_rerun_a_finished_arm(arm: ArmSpec, monkeypatch, tmp_path: Path):
    log_file = Path(arm.output_dir) / "log.json"
    before = log_file.read_bytes()

    def boom(*args, **kwargs):
        raise AssertionError("a finished arm was trained again")

    monkeypatch.setattr(mt, "train_policy", boom)
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
        str(project_root() / "configs/accelerate/multi_gpu.yaml"),  # not the cwd's
        "-m",
        "pluralign.experiments.maxmin_tulu2",
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


def test_evaluate_arm_shows_judges_the_prompt_the_policy_saw_when_unk_pads(cfg, tmp_path):
    tok = load_chat_tokenizer(str(_wordlevel_folder(tmp_path / "t", unk="<unk>")))
    ids = chat_prompt_ids(tok, ["hello zzz world"], 12)
    body = tok(chat("hello zzz world"))["input_ids"]
    assert tok.unk_token_id in body and ids[0][0] == tok.pad_token_id
    policy = build_llama_proxy(tok, seed=0, **SHAPE)
    sets = mt.PromptSets([], [], [], ids, {g: ids for g in GROUPS}, ["unused"])
    sft = {g: sample_rollouts(policy, tok, ids, 2, 0.7, seed=0) for g in GROUPS}
    endpoint = {g: Recorder(0.5) for g in GROUPS}
    mt.evaluate_arm(policy, policy, tok, cfg, sets, sft, {"endpoint": endpoint})
    for g in GROUPS:
        assert endpoint[g].calls[0][0] == [tok.decode(body)]  # leading padding gone, UNK kept
