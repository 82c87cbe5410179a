"""Notebook 06's paper path (a hub preference set, a gold reward model, a hub-style policy),
run offline on local stand-ins of the same kinds: an rm-static-schema dataset folder, a
GPT-2 policy folder with its tokenizer, and a one-output GPT-2 classifier as the gold RM.
Hub sources must be pinned (``name@revision``); local paths need no revision."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from helpers import TINY_PARAMS, run_stage, tiny_gpt2, write_params
from transformers import GPT2ForSequenceClassification

from pluralign.data.preferences import load_preference_records
from pluralign.experiments.inverse_alignment import Config, build_offline_set
from pluralign.pipeline.assets import AssetError, load_gpt2_tokenizer
from pluralign.pipeline.config import load_stage_config
from pluralign.pipeline.io import flatten


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


def test_preference_records_loader_reads_a_local_standin(tmp_path: Path) -> None:
    """``load_preference_records`` reads a local rm-static-style folder (no revision
    needed), one split at a time, through ``datasets``, and checks every record."""
    data = _rm_static_standin(tmp_path / "rm-static", 12, 4)
    records = load_preference_records(str(data), "train")
    assert len(records) == 12 and len(records.prompts) == 12
    assert records.chosen[0].startswith(" ") and records.full_texts([0])[0][0].endswith(
        records.chosen[0]
    )
    assert len(load_preference_records(str(data), "test")) == 4
    assert len(load_preference_records(str(data), "train", n=5)) == 5
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "train.jsonl").write_text(
        json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
        + "\n"
        + json.dumps({"prompt": "q", "chosen": "", "rejected": "b"})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"row 1: field 'chosen'"):
        load_preference_records(str(bad), "train")


def test_offline_set_refuses_an_unpinned_hub_preference_set(
    tiny_params: Path, host_lookups: list[str]
) -> None:
    """The paper path's offline set from a hub name without ``@revision`` stops before any
    model is used or anything is downloaded."""
    cfg = load_stage_config("inverse_alignment", Config, tiny_params)
    cfg = dataclasses.replace(cfg, offline_data="Dahoas/rm-static")
    with pytest.raises(AssetError, match=r"pin a revision \(Dahoas/rm-static@<commit or tag>\)"):
        build_offline_set(cfg, None, None, None)
    assert host_lookups == []


def test_notebook_06_paper_path_runs_on_local_standins(tmp_path: Path) -> None:
    """The paper path end to end on stand-ins, with the paper's reward models (neural: a
    fresh backbone reward model per refit, the critic loaded from it). The hub set's records
    carry no ground-truth labeler, so there is no oracle-filter arm (no positive control),
    no OOD arm and no label-quality metric; the verdicts say so."""
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
    # The tests run the cpu profile, whose keys override the section's shared ones.
    params["inverse_alignment"]["cpu"] |= {
        "policy": str(policy_dir),
        "judge": str(gold_dir),
        "rm_backbone": str(policy_dir),
        "offline_data": str(data),
        "n_offline_prompts": 24,
        "n_ood_prompts": 0,
        "prompt_tokens": 6,
        "seeds": [0],
        # the paper's recipe: a fresh backbone reward model per fit, PPO's critic from it
        "reward_models": "neural",
    }
    params_file = write_params(tmp_path / "params.yaml", params)
    out = tmp_path / "out"
    proc, attempts = run_stage("06_inverse_alignment", params_file, out, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert attempts == []
    metrics = flatten(json.loads((out / "results/details/06_inverse_alignment.json").read_text()))
    assert metrics["records"] == 24
    arms = ["vanilla", "frft_P1", "frft_P2", "frft_P3", "frft_P4", "random"]
    assert {f"{a}_truth" for a in arms} <= set(metrics)
    assert {f"{a}_selected" for a in arms[1:]} <= set(metrics)  # every refit arm refit
    assert {k for k in metrics if k.startswith("rm_accuracy_")} == {
        "rm_accuracy_vanilla", "rm_accuracy_vanilla_lo", "rm_accuracy_vanilla_hi"
    }  # fmt: skip
    assert not [k for k in metrics if k.startswith(("oracle", "ood", "power", "subset_oracle"))]
    assert {f"subset_{r}_accuracy" for r in ("P1", "P2", "P3", "P4", "random")} <= set(metrics)
    assert "records_label_truth_agreement" not in metrics  # the hub set has no planted truth
    # rm-static records carry one source: nothing to identify, the first candidate is used
    assert metrics["embedding"] == "logprob_profile"
    assert "embedding_source_id_accuracy" not in metrics
    for claim in ("claim_beats_vanilla", "claim_faster", "claim_subset_competitive"):
        assert metrics[claim] in {
            "reproduced (no positive control)", "not reproduced (no positive control)"
        }, claim  # fmt: skip
