"""Notebook 06's paper path (a hub preference set, a gold reward model, a hub-style policy),
run offline on local stand-ins of the same kinds: an rm-static-schema dataset folder, a
GPT-2 policy folder with its tokenizer, and a one-output GPT-2 classifier as the gold RM."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
from helpers import TINY_PARAMS, tiny_gpt2, write_params
from test_pipeline import ROOT, _run
from transformers import GPT2ForSequenceClassification

from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.inverse import load_hub_records


def _rm_static_standin(folder: Path, n_train: int, n_test: int) -> Path:
    """``prompt`` / ``response`` / ``chosen`` / ``rejected`` JSON lines, two splits."""
    folder.mkdir(parents=True)
    words = ["good", "bad", "film", "story", "actor", "plot", "great", "dull", "fun", "long"]
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for i in range(n):
            w = [words[(i + j) % len(words)] for j in range(12)]
            prompt = f"\n\nHuman: tell me about {i} the {' '.join(w[:6])} \n\nAssistant:"
            rows.append(
                {
                    "prompt": prompt,
                    "response": " " + " ".join(w[6:9]),
                    "chosen": " " + " ".join(w[6:9]),
                    "rejected": " " + " ".join(w[3:5]),
                }
            )
        (folder / f"{split}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


def test_hub_records_loader_reads_a_local_standin(tmp_path: Path) -> None:
    """``load_hub_records`` goes through ``datasets`` and checks every record."""
    data = _rm_static_standin(tmp_path / "rm-static", 12, 4)
    records = load_hub_records(str(data), None, "train")
    assert len(records) == 12 and len(records.prompts) == 12
    assert records.chosen[0].startswith(" ") and records.full_texts([0])[0][0].endswith(
        records.chosen[0]
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text(
        json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
        + "\n"
        + json.dumps({"prompt": "q", "chosen": "", "rejected": "b"})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"row 1: field 'chosen'"):
        load_hub_records(str(bad), None, "train")


def test_notebook_06_paper_path_runs_on_local_standins(tmp_path: Path) -> None:
    tok = load_gpt2_tokenizer(max_merges=300)
    policy_dir, gold_dir = tmp_path / "policy", tmp_path / "gold"
    policy = tiny_gpt2(tok, seed=0)
    policy.save_pretrained(policy_dir)
    tok.save_pretrained(policy_dir)
    gold = GPT2ForSequenceClassification(copy.deepcopy(policy.config))
    gold.config.num_labels = 1
    gold = GPT2ForSequenceClassification(gold.config)
    gold.save_pretrained(gold_dir)
    tok.save_pretrained(gold_dir)
    data = _rm_static_standin(tmp_path / "rm-static", 24, 8)

    params = copy.deepcopy(TINY_PARAMS)
    section = params["inverse_alignment"]
    section |= {
        "policy": str(policy_dir),
        "judge": str(gold_dir),
        "rm_backbone": str(policy_dir),
        "offline_data": str(data),
        "offline_revision": None,
        "n_offline_prompts": 24,
        "n_ood_prompts": 0,
        "prompt_tokens": 6,
        "seeds": [0],
    }
    params_file = write_params(tmp_path / "params.yaml", params)
    out = tmp_path / "out"
    proc, attempts = _run(
        [
            sys.executable,
            "-m",
            "pluralign.run_notebook",
            str(ROOT / "notebooks" / "06_inverse_alignment.ipynb"),
            "--params-file",
            str(params_file),
            "--output-root",
            str(out),
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert attempts == []
    metrics = json.loads((out / "results/metrics/06_inverse_alignment.json").read_text())
    assert metrics["records"] == 24
    assert "ood_rm_accuracy_at_reference" not in metrics  # no OOD arm on this path
    assert "records_label_truth_agreement" not in metrics  # the hub set has no planted truth
    assert {"vanilla_truth", "FRFT_P4_truth", "FRFT_random_selected"} <= set(metrics)
