"""Notebook 05's hub-profile data path (P-SOUPS files cut into users, instruction prompts in
Tulu's chat format), run offline on local stand-ins of the RLPHF release's files."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import datasets.config
import numpy as np
import pytest
from helpers import TINY_PARAMS, run_stage, write_params

from pluralign.data.preferences import load_prompt_texts
from pluralign.data.psoups import load_psoups, psoups_users
from pluralign.data.text import chat_prompt_ids
from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.pipeline.io import flatten
from pluralign.training.llama_proxy import build_llama_proxy

COLUMNS = {"prompt": "instruction", "chosen": "better", "rejected": "worse"}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def _release(folder: Path) -> Path:
    """P1A.json / P1B.json as JSON lines with the release's (assumed) own column names."""
    folder.mkdir()
    for dim, n in (("P1A", 8), ("P1B", 5)):
        rows = [
            {
                "instruction": f"{dim} prompt {i}",
                "better": f" {dim} good {i}",
                "worse": f" {dim} bad {i}",
                "extra": i,
            }
            for i in range(n)
        ]
        _jsonl(folder / f"{dim}.json", rows)
    return folder


FILES = {"P1A": "P1A.json", "P1B": "P1B.json"}


@pytest.fixture
def offline_loads(tmp_path: Path, monkeypatch, host_lookups: list[str]) -> list[str]:
    """Datasets cache in tmp; host names looked up while loading are recorded."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return host_lookups


def test_load_psoups_reads_both_groups_files_with_the_column_mapping(
    tmp_path: Path, offline_loads: list[str]
):
    files = load_psoups(_release(tmp_path / "rlphf"), FILES, ("P1A", "P1B"), COLUMNS)
    assert list(files) == ["P1A", "P1B"]
    assert files["P1A"].column_names == ["prompt", "chosen", "rejected"]
    assert files["P1A"]["prompt"] == [f"P1A prompt {i}" for i in range(8)]
    assert files["P1B"]["chosen"] == [f" P1B good {i}" for i in range(5)]
    assert files["P1B"]["rejected"][4] == " P1B bad 4"
    assert offline_loads == []


def test_load_psoups_names_a_dimension_without_a_file(tmp_path: Path, offline_loads):
    folder = _release(tmp_path / "rlphf")
    with pytest.raises(ValueError, match="psoups_files: no file for dimension P1B"):
        load_psoups(folder, {"P1A": "P1A.json"}, ("P1A", "P1B"), COLUMNS)


def test_psoups_users_on_the_loaded_release(tmp_path: Path, offline_loads):
    files = load_psoups(_release(tmp_path / "rlphf"), FILES, ("P1A", "P1B"), COLUMNS)
    chosen, rejected, user_of, user_group, groups = psoups_users(
        files, {"P1A": 3, "P1B": 2}, 2, seed=0
    )
    assert groups == ("P1A", "P1B")
    np.testing.assert_array_equal(user_group, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(user_of, np.repeat(np.arange(5), 2))
    for c, r, u in zip(chosen, rejected, user_of, strict=True):
        dim = groups[user_group[u]]
        i = int(c.split(" good ")[1])  # planted row number
        assert c == f"<|user|>\n{dim} prompt {i}\n<|assistant|>\n {dim} good {i}"
        assert r == f"<|user|>\n{dim} prompt {i}\n<|assistant|>\n {dim} bad {i}"
    by_user = [[c for c, v in zip(chosen, user_of, strict=True) if v == u] for u in range(5)]
    assert all(len(set(texts)) == 2 for texts in by_user)
    with pytest.raises(ValueError, match=r"P1B: 3 users x 2 need 6 rows, file has 5"):
        psoups_users(files, {"P1A": 1, "P1B": 3}, 2, seed=0)


def test_instruction_file_to_chat_prompts(tmp_path: Path, offline_loads):
    """``prompts_from`` of notebook 05: a local instruction file -> left-padded chat ids."""
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


def test_notebook_05_hub_path_runs_on_local_standins(tmp_path: Path) -> None:
    """The whole hub-profile path of notebook 05 (a Tulu-like backbone folder, P-SOUPS files,
    instruction files, chat prompts, reward-model judge), offline on local stand-ins."""
    tok = load_gpt2_tokenizer(max_merges=300)
    tulu = tmp_path / "tulu"
    build_llama_proxy(
        tok, hidden_size=16, n_layers=1, n_heads=2, intermediate_size=32
    ).save_pretrained(tulu)
    tok.save_pretrained(tulu)
    data = tmp_path / "rlphf"
    data.mkdir()
    topics = ["rain", "stars", "bread", "music", "trees", "rivers", "cats", "maps", "glass"]
    for dim, (good, bad) in {
        "P1A": ("It is wet.", "Precipitation manifests."),
        "P1B": ("Precipitation manifests.", "It is wet."),
    }.items():
        rows = [
            {"prompt": f"Explain {t} {i}.", "chosen": f" {good} {i}", "rejected": f" {bad} {i}"}
            for i, t in enumerate(topics * 2)
        ]
        _jsonl(data / f"{dim}.json", rows)
    alpaca = _jsonl(
        tmp_path / "alpaca.json", [{"instruction": f"Tell me about {t}."} for t in topics]
    )
    koala = _jsonl(tmp_path / "koala.json", [{"prompt": f"Why {t}?"} for t in topics])

    params = copy.deepcopy(TINY_PARAMS)
    section = params["maxmin_tulu2"]
    section["cpu"] |= {
        "policy": str(tulu),
        "preference_data": str(data),
        "psoups_files": {"P1A": "P1A.json", "P1B": "P1B.json"},
        "ppo_prompts": str(alpaca),
        "ppo_prompt_column": "instruction",
        "eval_prompts": str(koala),
        "eval_prompt_column": "prompt",
        "eval_prompts_split": "train",  # a local JSON file loads as one "train" split
        "prompt_tokens": 48,
        "n_pref_prompts": 0,
        "judge": "reward_model",
    }
    params_file = write_params(tmp_path / "params.yaml", params)
    out = tmp_path / "out"
    proc, attempts = run_stage("05_maxmin_ppo_tulu2", params_file, out, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert attempts == []
    metrics = json.loads((out / "results/metrics/05_maxmin_ppo_tulu2.json").read_text())
    flat = flatten(metrics)
    assert not any(k.startswith("proxy.") for k in flat)  # no proxy pretraining on this path
    assert not (out / "models" / "llama_proxy").exists()
    for method in ("single", "maxmin", "maxmin_true"):
        for group in ("majority", "minority", "average"):
            run = metrics["runs"][method][group]
            assert 0.0 <= run["lo"] <= run["win_rate"] <= run["hi"] <= 1.0, (method, group)
    assert not any(k.startswith("rm_accuracy.") for k in flat)  # no planted truth here
    assert metrics["opposed_dimensions"] is True  # P1A vs P1B
