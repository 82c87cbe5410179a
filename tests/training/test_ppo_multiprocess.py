"""PPO across processes: ``accelerate launch --multi_gpu --num_processes 2`` on CPU runs DDP
over gloo (``--cpu`` would fall back to one process). Both ranks must end with the same
weights (DDP averages the gradients) while each judged its own half of the prompts."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, TESTS

from pluralign.experiments.maxmin_tulu2 import ArmSpec, launch_arm, read_arm
from pluralign.training.lora import BackboneSpec, lora_classifier, save_adapter

SCRIPT = TESTS / "scripts" / "ppo_two_ranks.py"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora"])
def test_two_process_maxmin_ppo_ranks_agree(tmp_path: Path, mode: str) -> None:
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(accelerate),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(SCRIPT),
        str(tmp_path),
        mode,
    ]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["digest"] == ranks[1]["digest"]  # one model, synchronized
    assert len(ranks[0]["rewards"]) == len(ranks[1]["rewards"]) == 2
    assert ranks[0]["rewards"] != ranks[1]["rewards"]  # each rank rolled out its own prompts
    # batch_size 4 is the update's total: 2 prompts per rank, not 4 each (defect 10)
    assert ranks[0]["batch"] == ranks[1]["batch"] == [2, 2]
    # One checkpoint folder, written once (rank 0), holding both updates.
    chunks = sorted(p.name for p in (tmp_path / "work").iterdir() if p.name.startswith("chunk"))
    assert chunks == ["chunk-0000"]
    log = json.loads((tmp_path / "work" / "chunk-0000" / "log.json").read_text())
    assert [row["update"] for row in log] == [1, 2]


@pytest.mark.slow
def test_notebook_05_arm_runs_under_accelerate_launch(tmp_path: Path, monkeypatch) -> None:
    """An arm of notebook 05 (LoRA policy, LoRA value, LoRA reward adapter) launched the way
    the paper profile launches it on several GPUs, here with 2 CPU processes."""
    import torch

    from pluralign.pipeline.assets import load_gpt2_tokenizer
    from pluralign.training.generation import GenerationSettings
    from pluralign.training.llama_proxy import build_llama_proxy
    from pluralign.training.ppo import PPOSettings

    tok = load_gpt2_tokenizer(max_merges=300)
    base, tok_dir = tmp_path / "base", tmp_path / "tok"
    build_llama_proxy(
        tok, hidden_size=16, n_layers=1, n_heads=2, intermediate_size=32
    ).save_pretrained(base)
    tok.save_pretrained(tok_dir)
    backbone = BackboneSpec(str(base))
    torch.manual_seed(0)
    rm = save_adapter(lora_classifier(backbone, tok.pad_token_id, 4), tmp_path / "rm")
    prompts = [[tok.eos_token_id, 10 + i % 50, 20 + i % 7, 30] for i in range(16)]
    settings = PPOSettings(2, 4, num_mini_batches=2, num_ppo_epochs=1)
    generation = GenerationSettings(max_new_tokens=4, temperature=0.7)
    spec = ArmSpec(
        name="single-seed0",
        how="single",
        backbone=backbone,
        tokenizer_dir=str(tok_dir),
        reward_adapters={"single": str(rm)},
        reference_texts=["a short text", "another one here", "and a third"],
        prompt_ids=prompts,
        probe_ids=prompts[:4],
        majority="P1A",
        minority="P1B",
        settings=dataclasses.asdict(settings),
        generation=dataclasses.asdict(generation),
        policy_lora_r=4,
        value_lora_r=4,
        rm_max_length=16,
        seed=0,
        workdir=str(tmp_path / "work"),
        output_dir=str(tmp_path / "out"),
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = ROOT / "configs" / "accelerate" / "cpu_two_processes.yaml"
    assert config.is_file() and SCRIPT.is_file()
    out = launch_arm(spec, tmp_path / "spec.json", str(config))
    log, timing = read_arm(out)
    assert timing["processes"] == 2
    assert list(log["update"]) == [1, 2]  # both updates, each on 4 prompts (2 per rank)
    assert log["gt_majority"].notna().sum() == 1  # probed once, at the end of the chunk
    assert (out / "adapter" / "adapter_config.json").is_file()
