"""Benchmark FRFT (``pluralign.inverse``): selection over 100,000 cached records, and the
time of one refit cycle split into sampling, embedding, selection and reward fine-tuning.

Selection: random unit 384-d embeddings (MiniLM's width) for 100,000 records over 100,000
prompts (one generation each, the paper's setting), float32 as cached; the time covers
``similarities`` (the gather-and-dot) plus ``select`` for each rule, median of 5. Goal: under
one second.

Refit cycle: the notebook-06 cpu setting — the 00 policy (``models/policy`` when present,
else random weights of its architecture) sampled on 256 prompts, the packaged MiniLM, a
1,024-record offline set (reference samples), and a reward model (the policy's network with
a scalar head) fine-tuned on the 128 selected records for 1 epoch. Median of 3 refits.

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

from pluralign.core.frft import RULES, select, similarities
from pluralign.data.preferences import PreferenceRecords
from pluralign.data.text import review_prompts
from pluralign.training.frft import FilteredRefit, RefitSettings, embed_records


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
            rows = select(rule, s_c, s_r, k, threshold=0.05, rng=np.random.default_rng(r))
            times.append(time.perf_counter() - t0)
        print(f"  {rule:7s} {statistics.median(times) * 1000:7.1f} ms  ({rows.size} selected)")


def bench_refit(repeats: int = 3) -> None:
    from transformers import AutoModelForSequenceClassification, GPT2LMHeadModel

    from pluralign.pipeline.assets import load_gpt2_tokenizer, load_imdb, load_sentence_encoder
    from pluralign.pipeline.config import load_stage_config
    from pluralign.pipeline.paths import project_root
    from pluralign.training.generation import sample_rollouts
    from pluralign.training.models import load_tokenizer
    from pluralign.training.pretrain import PretrainConfig, build_policy

    folder = project_root() / "models" / "policy"
    if (folder / "config.json").is_file():
        tok, policy, source = load_tokenizer(folder), GPT2LMHeadModel.from_pretrained(folder), "00"
    else:
        cfg = load_stage_config("policy_pretrain", PretrainConfig)
        tok = load_gpt2_tokenizer(cfg.tokenizer, cfg.max_merges)
        torch.manual_seed(0)
        policy, source = build_policy(cfg, tok), "random weights"
    with tempfile.TemporaryDirectory() as tmp:
        policy.save_pretrained(tmp)
        rm = AutoModelForSequenceClassification.from_pretrained(
            tmp, num_labels=1, pad_token_id=tok.pad_token_id
        )
    encoder = load_sentence_encoder()
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
    embed_records(records, encoder)

    def generate(pol, ids, seed):
        return sample_rollouts(pol, tok, ids, 32, 0.7, seed).continuations

    refit = FilteredRefit(
        rm,
        tok,
        records,
        prompt_ids,
        encoder,
        RefitSettings(rule="P4", k=128, every=4),
        generate,
        seed=0,
    )
    rows = [refit(policy, 4 * (r + 1)) for r in range(repeats)]
    print(f"refit cycle ({source} policy, {n} prompts, {len(records)} records, k=128):")
    for step in ("sampling", "embedding", "selection", "fine_tuning"):
        med = statistics.median(r[f"time_{step}_s"] for r in rows)
        print(f"  {step:12s} {med:7.3f} s")
    total = statistics.median(sum(v for k, v in r.items() if k.startswith("time_")) for r in rows)
    print(f"  {'total':12s} {total:7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="selection only")
    args = parser.parse_args()
    bench_selection()
    if not args.quick:
        bench_refit()


if __name__ == "__main__":
    main()
