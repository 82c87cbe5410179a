"""Run by tests/test_ppo_multiprocess.py under ``accelerate launch --multi_gpu
--num_processes 2`` on CPU (gloo): a few MaxMin PPO updates of a tiny Llama proxy through
``ppo_runner.run_ppo`` (full fine-tuning, or LoRA policy + LoRA value model with the
reference as the adapter-disabled policy); both ranks share one checkpoint folder, written by
rank 0; each rank writes its final-weight digest and its reward history."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset

from pluralign.core.maxmin import Normalizer
from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.training.generation import GenerationSettings
from pluralign.training.llama_proxy import build_llama_proxy
from pluralign.training.lora import policy_lora_config, reward_lora_config, with_lora
from pluralign.training.models import load_sequence_classifier
from pluralign.training.ppo import PPOSettings, run_ppo
from pluralign.training.reward_adapter import TextRewardAdapter


def main(out: Path, mode: str) -> None:
    rank = int(os.environ["RANK"])
    tok = load_gpt2_tokenizer(max_merges=300)
    policy = build_llama_proxy(tok, hidden_size=16, n_layers=1, n_heads=2, intermediate_size=32)
    value = None
    if mode == "lora":
        with tempfile.TemporaryDirectory() as base:
            policy.save_pretrained(base)
            torch.manual_seed(1)  # the value head's init, the same on both ranks
            value = with_lora(load_sequence_classifier(base, num_labels=1), reward_lora_config(r=4))
        policy = with_lora(policy, policy_lora_config(r=4))
    prompts = Dataset.from_dict(
        {"input_ids": [[tok.eos_token_id, 10 + i % 50, 20 + i % 7, 30] for i in range(32)]}
    )
    rewards = {
        "letters": lambda texts: np.array([t.count("e") for t in texts], dtype=float),
        "concise": lambda texts: -np.array([len(t) for t in texts], dtype=float),
    }
    norms = {g: Normalizer(0.0, 1.0) for g in rewards}
    adapter = TextRewardAdapter(tok, 4, rewards, norms, "maxmin_sample")
    settings = PPOSettings(n_updates=2, batch_size=4, num_mini_batches=2, num_ppo_epochs=1)
    generation = GenerationSettings(max_new_tokens=6, temperature=0.7)
    policy, _ = run_ppo(
        policy, tok, prompts, adapter, settings, generation, out / "work", 0, value_model=value
    )
    digest = hashlib.sha256(
        b"".join(
            p.detach().to(torch.float32).numpy().tobytes()
            for p in policy.parameters()
            if p.requires_grad
        )
    ).hexdigest()
    record = {
        "rank": rank,
        "world_size": int(os.environ["WORLD_SIZE"]),
        "digest": digest,
        "rewards": [h["reward"] for h in adapter.history],
        "batch": [h["n"] for h in adapter.history],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
