"""Notebook 05's hub-profile data path (the RLPHF release's reward-model files cut into
users, instruction prompts in Tulu's chat format, held-out reward models as judges), run
offline on local stand-ins of the release's files."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import datasets.config
import numpy as np
import pandas as pd
import pytest
from helpers import TINY_PARAMS, run_stage, write_params

from pluralign.data.preferences import load_prompt_texts
from pluralign.data.psoups import PREFERENCE_PROMPTS, load_psoups, psoups_users, strip_preference
from pluralign.data.scorers import FK_CLIP
from pluralign.data.text import chat_prompt_ids
from pluralign.experiments import maxmin_tulu2 as mt
from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.pipeline.config import load_stage_config
from pluralign.pipeline.io import flatten
from pluralign.training.llama_proxy import build_llama_proxy

#: The release's reward-model files (data/rm_training/P1A.json): the preference instruction
#: is part of user_input; completion_a is the preferred answer.
FILES = {"P1A": "rm_training/P1A.json", "P1B": "rm_training/P1B.json"}
COLUMNS = {"prompt": "user_input", "chosen": "completion_a", "rejected": "completion_b"}
TOPICS = ["rain", "stars", "bread", "music", "trees", "rivers", "cats", "maps", "glass"]
ANSWERS = {  # (preferred, other) of each direction
    "P1A": ("It is wet.", "Precipitation manifests."),
    "P1B": ("Precipitation manifests.", "It is wet."),
}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _release(folder: Path, n: int = 2 * len(TOPICS)) -> Path:
    """rm_training/P1A.json and P1B.json with the release's columns (and one it has that
    the loader must ignore)."""
    for dim, (good, bad) in ANSWERS.items():
        rows = [
            {
                "user_input": f"Explain {TOPICS[i % len(TOPICS)]} {i}. {PREFERENCE_PROMPTS[dim]}",
                "completion_a": f" {good} {i}",
                "completion_b": f" {bad} {i}",
                "extra": i,
            }
            for i in range(n)
        ]
        _jsonl(folder / FILES[dim], rows)
    return folder


@pytest.fixture
def offline_loads(tmp_path: Path, monkeypatch, host_lookups: list[str]) -> list[str]:
    """Datasets cache in tmp; host names looked up while loading are recorded."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return host_lookups


def test_load_psoups_reads_both_release_files_with_the_column_mapping(
    tmp_path: Path, offline_loads: list[str]
):
    files = load_psoups(_release(tmp_path / "rlphf", 8), FILES, ("P1A", "P1B"), COLUMNS)
    assert list(files) == ["P1A", "P1B"]
    assert files["P1A"].column_names == ["prompt", "chosen", "rejected"]
    assert files["P1A"]["prompt"][2] == f"Explain bread 2. {PREFERENCE_PROMPTS['P1A']}"
    assert files["P1B"]["chosen"] == [f" Precipitation manifests. {i}" for i in range(8)]
    assert files["P1B"]["rejected"][4] == " It is wet. 4"
    assert offline_loads == []


def test_load_psoups_names_a_dimension_without_a_file(tmp_path: Path, offline_loads):
    folder = _release(tmp_path / "rlphf", 4)
    with pytest.raises(ValueError, match="psoups_files: no file for dimension P1B"):
        load_psoups(folder, {"P1A": FILES["P1A"]}, ("P1A", "P1B"), COLUMNS)


def test_psoups_users_on_the_loaded_release(tmp_path: Path, offline_loads):
    files = load_psoups(_release(tmp_path / "rlphf", 8), FILES, ("P1A", "P1B"), COLUMNS)
    chosen, rejected, user_of, user_group, groups, held = psoups_users(
        files, {"P1A": 3, "P1B": 2}, 2, seed=0, held_out=1
    )
    assert groups == ("P1A", "P1B")
    np.testing.assert_array_equal(user_group, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(user_of, np.repeat(np.arange(5), 2))
    for c, r, u in zip(chosen, rejected, user_of, strict=True):
        good, bad = ANSWERS[groups[user_group[u]]]
        i = int(c.rsplit(" ", 1)[1])  # planted row number
        prompt = f"<|user|>\nExplain {TOPICS[i]} {i}.\n<|assistant|>\n"  # no instruction
        assert c == f"{prompt} {good} {i}" and r == f"{prompt} {bad} {i}"
    by_user = [[c for c, v in zip(chosen, user_of, strict=True) if v == u] for u in range(5)]
    assert all(len(set(texts)) == 2 for texts in by_user)
    assert len(held["P1A"]) == len(held["P1B"]) == 1
    # the two files share their prompts: a judge's prompt reaches no user of either file
    judged = {strip_preference(p) for d in held for p in held[d]["prompt"]}
    assert not any(f"\n{p}\n" in text for p in judged for text in chosen + rejected)
    with pytest.raises(ValueError, match=r"P1B: 3 users x 3 need 9 rows, the file has 8 outside"):
        psoups_users(files, {"P1A": 1, "P1B": 3}, 3, seed=0)


def test_instruction_file_to_chat_prompts(tmp_path: Path, offline_loads):
    """A local instruction file -> left-padded chat ids (long instructions dropped)."""
    tok = load_gpt2_tokenizer(max_merges=300)
    rows = [{"instruction": "Say hi."}, {"instruction": "Why? " * 20}, {"instruction": "Go."}]
    path = _jsonl(tmp_path / "alpaca_gpt4_10k.json", rows)
    texts = load_prompt_texts(str(path), "train", "instruction")
    ids = chat_prompt_ids(tok, texts, 24)
    assert len(ids) == 2  # the long instruction is dropped
    for row, text in zip(ids, ["Say hi.", "Go."], strict=True):
        body = tok(f"<|user|>\n{text}\n<|assistant|>\n")["input_ids"]
        assert len(row) == 24 and row[-len(body) :] == body
        assert set(row[: -len(body)]) == {tok.pad_token_id}


# --------------------------------------------------------------------------- the whole stage

N_JUDGE = 4  # held-out rows per file; users take 4 x 3 = 12 of the 18 rows


def _hub_params(tmp_path: Path) -> dict[str, Any]:
    """Tiny params for notebook 05's hub path on local stand-ins: a Tulu-like backbone
    folder, the release's reward-model files, Alpaca-like (instruction + input) and
    Koala-like prompt files."""
    tok = load_gpt2_tokenizer(max_merges=300)
    tulu = tmp_path / "tulu"
    build_llama_proxy(
        tok, hidden_size=16, n_layers=1, n_heads=2, intermediate_size=32, max_positions=128
    ).save_pretrained(tulu)
    tok.save_pretrained(tulu)
    data = _release(tmp_path / "rlphf")
    alpaca = _jsonl(
        tmp_path / "alpaca.json",
        [  # every other input empty, as in Alpaca
            {"instruction": f"Tell me about {t}.", "input": "" if i % 2 else f"Mostly {t}."}
            for i, t in enumerate(TOPICS)
        ],
    )
    koala = _jsonl(tmp_path / "koala.json", [{"prompt": f"Why {t}?"} for t in TOPICS])
    params = copy.deepcopy(TINY_PARAMS)
    cpu = params["maxmin_tulu2"]["cpu"]
    for synthetic_only in ("n_pref_prompts", "n_judge_prompts"):
        del cpu[synthetic_only]
    cpu |= {
        "policy": str(tulu),  # a local folder: no proxy pretraining, no control tags
        "preference_data": str(data),
        "psoups_files": FILES,
        "psoups_columns": COLUMNS,
        "judges": ["heldout_rm"],
        "n_judge_comparisons": N_JUDGE,
        "ppo_prompts": str(alpaca),
        "ppo_prompt_column": "instruction",
        "ppo_input_column": "input",
        "eval_prompts": str(koala),
        "eval_prompt_column": "prompt",
        "eval_prompts_split": "train",  # a local JSON file loads as one "train" split
        "prompt_tokens": 80,  # the preference instruction is ~50 tokens at 300 merges
        "stop_if_uncontrollable": False,  # a tiny model cannot follow instructions
    }
    cpu["reward_model"]["max_length"] = 64  # prompt + answer, not the prompt's start only
    assert (cpu["users_per_group"] * cpu["comparisons_per_user"] + N_JUDGE) <= 2 * len(TOPICS)
    assert cpu["users_per_group"] // cpu["ratio"] >= 1
    return params


def test_hub_params_give_reward_model_texts_without_preference_instructions(
    tmp_path: Path, offline_loads
):
    """The stand-in stage's own config and data, fast: every text a reward model (an arm's
    or a judge's) learns from is the prompt without its preference instruction."""
    params_file = write_params(tmp_path / "params.yaml", _hub_params(tmp_path))
    cfg = load_stage_config("maxmin_tulu2", mt.Config, params_file, "cpu")
    assert cfg.n_pref_prompts is None and cfg.n_judge_prompts is None
    data = mt.preference_data(cfg, None, None, None)
    n = cfg.users_per_group * cfg.comparisons_per_user
    assert len(data.full) == 2 * n and data.pairs is None
    judge_texts = [t for g in mt.GROUPS for side in data.judge[g] for t in side]
    assert len(judge_texts) == 2 * 2 * N_JUDGE
    for text in [*data.full.chosen, *data.full.rejected, *judge_texts]:
        assert not any(p in text for p in PREFERENCE_PROMPTS.values()), text
        assert text.startswith("<|user|>\nExplain ") and ".\n<|assistant|>\n " in text
    for g in range(2):  # a judge's rows are rows of its group's file no user labelled
        group = data.full.group(g)
        judge = data.judge[mt.GROUPS[g]]
        assert not set(judge[0]) & set(group.chosen) and not set(judge[1]) & set(group.rejected)
    assert offline_loads == []


VERDICTS = {"no power", "reproduced", "partly", "not reproduced"}


def test_notebook_05_hub_path_runs_on_local_standins(tmp_path: Path) -> None:
    """The whole hub-profile path of notebook 05 (a Tulu-like backbone folder, the release's
    reward-model files, instruction files, chat prompts with preference instructions,
    held-out reward-model judges), offline on local stand-ins."""
    params_file = write_params(tmp_path / "params.yaml", _hub_params(tmp_path))
    out = tmp_path / "out"
    trace = tmp_path / "bases.json"
    proc, attempts = run_stage(
        "05_maxmin_ppo_tulu2", params_file, out, tmp_path,
        extra_env={"PLURALIGN_BASE_TRACE": str(trace)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert attempts == []
    check_hub_outputs(out)
    check_bases_held(json.loads(trace.read_text()))


def check_bases_held(trace: dict) -> None:
    """The memory account (review of 2026-12, defect 3: 12-14 bases at the peak against the
    estimate's 4): the most bases alive at once on the paper path, counted after every load
    in the notebook's own process (PPO runs there when no launcher is set), is what the
    notebook's estimate assumes: policy, value and one base for every reward adapter."""
    from pluralign.training.gpu_memory import bases_held

    memory = mt.PAPER_MEMORY
    held = {k: memory[k] for k in ("shared_base", "value_shares_policy_base",
                                   "reference_from_adapters")}  # fmt: skip
    estimate = bases_held(memory["n_reward_models"], **held)
    loads = [name for name, _ in trace["loads"]]
    assert loads.count("LlamaForSequenceClassification") >= 4  # reward banks, values, judges
    assert trace["peak"] <= estimate == 3, trace


def check_hub_outputs(out: Path) -> None:
    metrics = json.loads((out / "results/details/05_maxmin_ppo_tulu2.json").read_text())
    assert metrics == flatten(metrics)  # flat keys
    assert not any(k.startswith("proxy") for k in metrics)  # no proxy pretraining here
    assert not (out / "models" / "llama_proxy").exists()
    assert not any(k.startswith("rm_accuracy_") for k in metrics)  # no planted truth here
    assert "premise_bias" not in metrics
    # premise (a), measured on the instruction-conditioned SFT answers
    gap = [metrics[f"controllability_grade_gap{e}"] for e in ("_lo", "", "_hi")]
    assert all(math.isfinite(v) for v in gap) and gap[0] <= gap[1] <= gap[2]
    for k in ("easy", "hard", "none"):
        assert FK_CLIP[0] <= metrics[f"grade_sft_{k}"] <= FK_CLIP[1]
    # EM at 1:1 (4 + 4 users) and 10:1 (here 2:1: 4 + 2 users)
    for run, users in (("1to1", 8), ("10to1", 6)):
        assert -1.0 <= metrics[f"em_ari_{run}"] <= 1.0
        assert 0 <= metrics[f"em_users_moved_{run}"] <= users
        assert metrics[f"em_iterations_{run}"] >= 1
    # one judge (held-out RMs), so it is primary: no suffixed keys
    for method in mt.ARMS:
        for group in ("majority", "minority", "average"):
            key = f"win_{method}_{group}"
            assert 0.0 <= metrics[f"{key}_lo"] <= metrics[key] <= metrics[f"{key}_hi"] <= 1.0
        assert math.isfinite(metrics[f"kl_{method}"])  # a Monte Carlo estimate: may be < 0
    assert not any(k.endswith("_heldout_rm") or "ground_truth" in k for k in metrics)
    for suffix in ("", "_em"):
        lo, point, hi = (metrics[f"gain_majority_points{suffix}{e}"] for e in ("_lo", "", "_hi"))
        assert lo <= point <= hi, suffix  # a difference of means
        for name in ("minority_relative", "average_relative"):  # ratios: may be undefined
            if f"gain_{name}{suffix}" in metrics:
                assert metrics[f"gain_{name}{suffix}_lo"] <= metrics[f"gain_{name}{suffix}_hi"]
        assert metrics[f"verdict{suffix}"] in VERDICTS
        if metrics["power"] is False:
            assert metrics[f"verdict{suffix}"] == "no power"
        assert (f"claim_majority_not_hurt{suffix}" in metrics) == (
            metrics["power"] and metrics.get(f"gain_minority_relative{suffix}_lo", 0) > 0
        )
    assert isinstance(metrics["power"], bool)
    headline = pd.read_csv(out / "results/tables/05_maxmin_ppo_tulu2_headline.csv", index_col=0)
    assert list(headline.index) == list(mt.ARMS)
    assert list(headline.columns) == ["majority", "minority", "average"]
