"""Benchmark LoRA PPO (notebook 05's setup) against full fine-tuning on the Llama proxy.

Same policy weights, prompts, batch, response length and seed in every run; what differs:

* ``full``: every weight trains; the reference is a frozen copy and the value model a full
  copy with a new head (notebook 04's setup);
* ``lora``: the policy trains a LoRA adapter (r = 16) and the reference is the same network
  with the adapter disabled; the value model is the backbone with a LoRA (r = 8) adapter.

Both with a single reward and with MaxMin over two reward models (LoRA r = 8 adapters on the
backbone). Reported: seconds per update (median over repeats; runs alternate so machine-load
drift hits all alike), trainable parameters, and the size of one checkpoint chunk on disk
(LoRA keeps adapters only). The goal is LoRA no slower than full fine-tuning per update (it
skips weight gradients and Adam state of the frozen base) and a checkpoint < 5% of full.

Uses ``models/llama_proxy`` (stage 05) when present, else a random-weight proxy of the cpu
shape in ``params.yaml``.

    python benchmarks/bench_lora_ppo.py --quick   # 2 repeats x 2 updates
    python benchmarks/bench_lora_ppo.py           # 3 repeats x 4 updates
    python benchmarks/bench_lora_ppo.py --ban-eos # EOS banned: every answer full length
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset

from pluralign.core.maxmin import Normalizer
from pluralign.data.text import make_prompts
from pluralign.experiments.maxmin_tulu2 import Config
from pluralign.pipeline.assets import load_gpt2_tokenizer, load_imdb
from pluralign.pipeline.config import load_stage_config
from pluralign.pipeline.paths import project_root
from pluralign.training.generation import GenerationSettings, sample_continuations
from pluralign.training.llama_proxy import build_llama_proxy
from pluralign.training.lora import (
    BackboneSpec,
    load_base_policy,
    lora_classifier,
    lora_policy,
    trainable_parameters,
)
from pluralign.training.models import load_tokenizer
from pluralign.training.ppo import PPOSettings, run_ppo
from pluralign.training.pretrain import PretrainConfig
from pluralign.training.reward_adapter import TextRewardAdapter
from pluralign.training.reward_models import score_texts
from pluralign.training.token_ban import ban_token


def backbone_folder(tmp: Path) -> tuple[Path, str]:
    folder = project_root() / "models" / "llama_proxy"
    if (folder / "config.json").is_file():
        return folder, str(folder)
    cfg = load_stage_config("maxmin_tulu2", Config, profile="cpu")
    recipe = load_stage_config("policy_pretrain", PretrainConfig, profile="cpu")
    tok = load_gpt2_tokenizer(recipe.tokenizer, recipe.max_merges)
    model = build_llama_proxy(
        tok,
        hidden_size=cfg.proxy.hidden_size,
        n_layers=cfg.proxy.layers,
        n_heads=cfg.proxy.heads,
        intermediate_size=cfg.proxy.intermediate_size,
        max_positions=recipe.block_size,
    )
    model.save_pretrained(tmp / "proxy")
    tok.save_pretrained(tmp / "proxy")
    return tmp / "proxy", "random weights (models/llama_proxy missing)"


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--ban-eos", action="store_true", help="ban EOS (notebook 05's fixed-length answers)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats, updates = (2, 2) if args.quick else (3, 4)
    with tempfile.TemporaryDirectory() as tmp_root:
        tmp_root = Path(tmp_root)
        folder, source = backbone_folder(tmp_root)
        tok = load_tokenizer(folder)
        backbone = BackboneSpec(str(folder))
        pad = tok.pad_token_id
        torch.manual_seed(0)
        rms = [lora_classifier(backbone, pad, 8).eval() for _ in range(2)]
        prompts = make_prompts(tok, load_imdb()["text"][:2000], 8)[: 4 * args.batch]
        ds = Dataset.from_dict({"input_ids": prompts})
        base = load_base_policy(backbone, pad)
        if args.ban_eos:
            ban_token(base, tok.eos_token_id)
        rows = sample_continuations(base, tok, prompts, args.response_length, 0.7, 0)
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
            learning_rate=1e-3,
        )
        times: dict[tuple[str, str], list[float]] = {}
        sizes, params = {}, {}
        for rep in range(repeats):
            for mode in ("full", "lora"):
                for how, fns in rewards.items():
                    torch.manual_seed(rep)
                    if mode == "full":
                        policy, value = copy.deepcopy(base), None
                    else:
                        policy = lora_policy(backbone, pad, 16)
                        value = lora_classifier(backbone, pad, 8)
                        if args.ban_eos:
                            ban_token(policy, tok.eos_token_id)
                    params[mode] = trainable_parameters(policy)
                    norms = {g: Normalizer.fit(f(ref_texts)) for g, f in fns.items()}
                    adapter = TextRewardAdapter(tok, len(prompts[0]), fns, norms, how)
                    work = tmp_root / f"{mode}-{how}-{rep}"
                    t0 = time.perf_counter()
                    run_ppo(
                        policy, tok, ds, adapter, settings, generation, work, seed=rep,
                        value_model=value,
                    )  # fmt: skip
                    times.setdefault((mode, how), []).append((time.perf_counter() - t0) / updates)
                    sizes[mode] = folder_bytes(work / "chunk-0000")
    print(
        f"backbone: {source}; batch {args.batch} x {args.response_length} new tokens; "
        f"{repeats} repeats x {updates} updates; {args.threads} threads; "
        f"EOS {'banned' if args.ban_eos else 'allowed'}"
    )
    print("| policy | reward | s / update (median) | all repeats |")
    print("|---|---|---|---|")
    for (mode, how), runs in times.items():
        print(f"| {mode} | {how} | {np.median(runs):.2f} | {', '.join(f'{t:.2f}' for t in runs)} |")
    for mode in ("full", "lora"):
        trainable, total = params[mode]
        print(
            f"{mode}: {trainable:,} trainable of {total:,} policy parameters; "
            f"checkpoint chunk {sizes[mode] / 2**20:.1f} MiB"
        )
    ratio = np.median(times[("lora", "maxmin_sample")]) / np.median(
        times[("full", "maxmin_sample")]
    )
    share = sizes["lora"] / sizes["full"]
    print(f"LoRA / full (MaxMin): {ratio:.2f}x; checkpoint {share:.1%} of full")


if __name__ == "__main__":
    main()
