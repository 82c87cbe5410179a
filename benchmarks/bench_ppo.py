"""Benchmark a PPO update (TRL 1.12) with a single reward vs MaxMin over two reward models.

Both runs use the same policy, prompts, batch, response length and seed; the only difference
is the reward: one learned reward model (``single``) or two plus the per-sample min
(``maxmin_sample``). MaxMin adds one reward-model forward pass per batch, so the goal is
MaxMin <= 1.2x single. Runs alternate (single, maxmin, single, ...) so drift in machine load
hits both alike; the median over repeats is reported. Also: tokens/s of generation alone
(``sample_continuations``) and of a whole update (rollout + reward + PPO epochs).

Uses ``models/policy`` (the 00_policy_pretrain stage) when present, else a random-weight model
of the same architecture (params.yaml ``policy_pretrain``). Both rewards start from the same
weights and seed, so the first update's rollouts are identical; later ones drift apart only as
far as a few updates move the policy (response lengths are reported by the notebook).

    python benchmarks/bench_ppo.py --quick   # 2 repeats x 2 updates
    python benchmarks/bench_ppo.py           # 3 repeats x 4 updates
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset

from pluralign.core.maxmin import Normalizer
from pluralign.data.text import make_prompts
from pluralign.pipeline.assets import load_gpt2_tokenizer, load_imdb
from pluralign.pipeline.config import load_stage_config
from pluralign.pipeline.paths import project_root
from pluralign.training.generation import GenerationSettings, sample_continuations
from pluralign.training.models import load_tokenizer
from pluralign.training.ppo import PPOSettings, run_ppo
from pluralign.training.pretrain import PretrainConfig, build_policy
from pluralign.training.reward_adapter import TextRewardAdapter
from pluralign.training.reward_models import score_texts


def load_models():
    from transformers import AutoModelForSequenceClassification, GPT2LMHeadModel

    folder = project_root() / "models" / "policy"
    if (folder / "config.json").is_file():
        tok = load_tokenizer(folder)
        policy = GPT2LMHeadModel.from_pretrained(folder)
        source = str(folder)
    else:
        cfg = load_stage_config("policy_pretrain", PretrainConfig)
        tok = load_gpt2_tokenizer(cfg.tokenizer, cfg.max_merges)
        torch.manual_seed(0)
        policy = build_policy(cfg, tok)
        source = "random weights (models/policy missing)"
    with tempfile.TemporaryDirectory() as tmp:
        policy.save_pretrained(tmp)
        rms = [
            AutoModelForSequenceClassification.from_pretrained(
                tmp, num_labels=1, pad_token_id=tok.pad_token_id
            ).eval()
            for _ in range(2)
        ]
    return tok, policy, rms, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats, updates = (2, 2) if args.quick else (3, 4)
    tok, policy, rms, source = load_models()
    texts = load_imdb()["text"][:2000]
    prompts = make_prompts(tok, texts, 8)[: 4 * args.batch]
    ds = Dataset.from_dict({"input_ids": prompts})
    rows = sample_continuations(policy, tok, prompts, args.response_length, 0.7, 0)
    ref_texts = [r["prompt"] + r["continuation"] for r in rows]

    def rm(model):
        return lambda t: score_texts(model, tok, t, 48)

    rewards = {
        "single": {"single": rm(rms[0])},
        "maxmin_sample": {"a": rm(rms[0]), "b": rm(rms[1])},
    }
    generation = GenerationSettings(max_new_tokens=args.response_length, temperature=0.7)
    settings = PPOSettings(
        n_updates=updates,
        batch_size=args.batch,
        checkpoint_every=updates,
    )
    times: dict[str, list[float]] = {k: [] for k in rewards}
    state = {k: v.clone() for k, v in policy.state_dict().items()}
    for rep in range(repeats):
        for how, fns in rewards.items():
            policy.load_state_dict(state)
            norms = {g: Normalizer.fit(f(ref_texts)) for g, f in fns.items()}
            adapter = TextRewardAdapter(tok, len(prompts[0]), fns, norms, how)
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                run_ppo(policy, tok, ds, adapter, settings, generation, Path(tmp), seed=rep)
                times[how].append((time.perf_counter() - t0) / updates)
    policy.load_state_dict(state)
    t0 = time.perf_counter()
    sample_continuations(policy, tok, prompts[: args.batch], args.response_length, 0.7, 1)
    gen_s = time.perf_counter() - t0
    tokens_per_update = args.batch * (len(prompts[0]) + args.response_length)
    single, maxmin = np.median(times["single"]), np.median(times["maxmin_sample"])
    print(
        f"policy: {source}; batch {args.batch} x {args.response_length} new tokens; "
        f"{repeats} repeats x {updates} updates; {args.threads} threads"
    )
    print("| reward | s / update (median) | all repeats | update tokens/s |")
    print("|---|---|---|---|")
    for how, sec in (("single", single), ("maxmin_sample", maxmin)):
        runs = ", ".join(f"{t:.2f}" for t in times[how])
        print(f"| {how} | {sec:.2f} | {runs} | {tokens_per_update / sec:,.0f} |")
    print(f"MaxMin / single: {maxmin / single:.2f}x (goal <= 1.2x)")
    print(f"generation alone: {args.batch * args.response_length / gen_s:,.0f} new tokens/s")


if __name__ == "__main__":
    main()
