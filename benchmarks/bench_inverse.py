"""Benchmark FRFT (notebook 06): selection over 100,000 cached records, and the time of one
refit cycle split into sampling, embedding, selection and fitting a fresh reward model.

Selection: random unit 384-d embeddings for 100,000 records over 100,000 prompts (one
generation each, the paper's setting), float32 as cached; the time covers ``similarities``
(the gather-and-dot) plus ``frft_select`` for each rule, median of 5. Goal: under one second.

Refit cycle: the notebook-06 cpu setting: the 00 policy (``models/policy`` when present,
else random weights of its architecture) sampled on 256 prompts, the log-prob-profile
embedding of prompt + generation, a 1,024-record offline set (reference samples), k = 256,
and a fresh reward model on the selected records: the cpu ``probe`` (a linear BT head on
frozen MiniLM features, cached per text as in the stage) and, for comparison, the paper's
``neural`` recipe (the policy's network with a scalar head, 2 epochs). Median of 3 refits.

    python benchmarks/bench_inverse.py --quick   # selection only
    python benchmarks/bench_inverse.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from pluralign.core.frft import RULES, frft_select, similarities
from pluralign.data.preferences import PreferenceRecords
from pluralign.data.text import review_prompts
from pluralign.training.frft import FilteredRefit, RefitSettings, embed_records
from pluralign.training.frft_embeddings import Embedding, logprob_profile


def unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_selection(n: int = 100_000, d: int = 384, k: int = 2_000, repeats: int = 5) -> None:
    rng = np.random.default_rng(0)
    gen, chosen, rejected = unit(rng, n, d), unit(rng, n, d), unit(rng, n, d)
    prompt_index = rng.permutation(n)
    print(f"selection over {n:,} records, d={d}, k={k} (median of {repeats}):")
    for rule in RULES:
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            s_c, s_r = similarities(gen, prompt_index, chosen, rejected)
            rows = frft_select(rule, s_c, s_r, k, threshold=0.05, rng=np.random.default_rng(r))
            times.append(time.perf_counter() - t0)
        print(f"  {rule:7s} {statistics.median(times) * 1000:7.1f} ms  ({rows.size} selected)")


def bench_refit(repeats: int = 3) -> None:
    from transformers import AutoModelForSequenceClassification, GPT2LMHeadModel

    from pluralign.pipeline.assets import load_gpt2_tokenizer, load_imdb, load_sentence_encoder
    from pluralign.pipeline.config import load_stage_config
    from pluralign.pipeline.paths import project_root
    from pluralign.training.frft_rewards import NeuralRewards, ProbeRewards
    from pluralign.training.generation import sample_rollouts
    from pluralign.training.models import load_tokenizer
    from pluralign.training.pretrain import PretrainConfig, build_policy
    from pluralign.training.reward_models import RewardModelSettings

    folder = project_root() / "models" / "policy"
    if (folder / "config.json").is_file():
        tok, policy, source = load_tokenizer(folder), GPT2LMHeadModel.from_pretrained(folder), "00"
    else:
        cfg = load_stage_config("policy_pretrain", PretrainConfig)
        tok = load_gpt2_tokenizer(cfg.tokenizer, cfg.max_merges)
        torch.manual_seed(0)
        policy, source = build_policy(cfg, tok), "random weights"
    tmp = tempfile.TemporaryDirectory()
    policy.save_pretrained(tmp.name)

    def new_rm():
        return AutoModelForSequenceClassification.from_pretrained(
            tmp.name, num_labels=1, pad_token_id=tok.pad_token_id
        )

    texts = load_imdb().select(range(600))["text"]
    prompt_ids, _ = review_prompts(tok, texts, 8, 32)
    prompt_ids = prompt_ids[:256]
    prompts = [tok.decode(p[1:]) for p in prompt_ids]
    a = sample_rollouts(policy, tok, prompt_ids, 32, 0.7, 1).continuations
    b = sample_rollouts(policy, tok, prompt_ids, 32, 0.7, 2).continuations
    n = len(prompts)
    records = PreferenceRecords(
        prompts=prompts,
        prompt_index=np.tile(np.arange(n), 4),
        chosen=a * 4,
        rejected=b * 4,
        source=np.repeat(["s0", "s1", "s2", "s3"], n),
        labeler=np.full(4 * n, "x"),
    )
    embedding = Embedding("logprob_profile", lambda p, r: logprob_profile(policy, tok, p, r))
    embed_records(records, embedding)
    encoder = load_sentence_encoder()

    def featurize(texts: list[str]) -> np.ndarray:
        return encoder.encode(texts, batch_size=128, normalize_embeddings=True).astype(float)

    chosen, rejected = records.full_texts()
    recipes = {
        "probe": ProbeRewards(featurize, chosen + rejected, ridge=50.0),
        "neural": NeuralRewards(new_rm, tok, RewardModelSettings(2.0, 1e-4, 32, 48)),
    }

    def generate(pol, ids, seed):
        return sample_rollouts(pol, tok, ids, 32, 0.7, seed).continuations

    settings = RefitSettings(rule="P4", k=256, every=10)
    print(f"refit cycle ({source} policy, {n} prompts, {len(records)} records, k=256):")
    for name, recipe in recipes.items():
        refit = FilteredRefit(recipe, records, prompt_ids, embedding, settings, generate, seed=0)
        rows = [refit(policy, 10 * (r + 1))[1] for r in range(repeats)]
        print(f"  reward models: {name}")
        for step in ("sampling", "embedding", "selection", "fitting"):
            med = statistics.median(r[f"time_{step}_s"] for r in rows)
            print(f"    {step:10s} {med:7.3f} s")
        total = statistics.median(
            sum(v for k, v in r.items() if k.startswith("time_")) for r in rows
        )
        print(f"    {'total':10s} {total:7.3f} s")
    tmp.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="selection only")
    args = parser.parse_args()
    bench_selection()
    if not args.quick:
        bench_refit()


if __name__ == "__main__":
    main()
