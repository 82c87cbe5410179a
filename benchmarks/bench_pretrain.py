"""Training throughput of the 00 policy: full vs truncated BPE, fp32 vs bf16 autocast.

    python benchmarks/bench_pretrain.py [--steps 8] [--batch-size 16]

Why: on a 4-layer, width-256 model the 50k-row output softmax is most of the compute, so
the cpu profile keeps the first 8,000 BPE merges; this measures what that buys here.
Prints a markdown table (tokens/s of forward+backward+AdamW steps, after one warm-up step).
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pluralign.pipeline.assets import load_gpt2_tokenizer


def tokens_per_second(vocab: int, bf16: bool, steps: int, batch: int, block: int) -> float:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=vocab,
        n_positions=block,
        n_embd=256,
        n_layer=4,
        n_head=4,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, vocab, (batch, block))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: allocator and kernel selection
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * block / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=128)
    args = parser.parse_args()
    vocabs = {
        "full BPE (50,258)": len(load_gpt2_tokenizer()),
        "8,000 merges": len(load_gpt2_tokenizer(max_merges=8000)),
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"batch {args.batch_size} x {args.block_size} tokens\n"
    )
    print("| vocabulary | precision | tokens/s |\n|---|---|---|")
    for name, vocab in vocabs.items():
        for bf16 in (False, True):
            tps = tokens_per_second(vocab, bf16, args.steps, args.batch_size, args.block_size)
            print(f"| {name} | {'bf16 autocast' if bf16 else 'fp32'} | {tps:,.0f} |")


if __name__ == "__main__":
    main()
