"""Smoke run of the paper profile's code paths (notebooks 04, 05, 06) on whatever device is
present, at tiny scale, with no hub: the check to run first on a GPU.

The paper profile cannot run here (no GPU, no hub), so its GPU-only behaviour is exercised by
this script on the real architectures with random weights, built from configs:

* **04** GPT-2 small (124 M, 12 layers): the PPO policy and its reference loaded from a
  folder (onto the compute device), a GPT-2 sentiment judge as the reward, a few PPO updates,
  samples and the KL between the PPO policy and a reference that PPO never moved;
* **06** GPT-2 small as a neural reward model trained on prompt + response pairs at the paper
  profile's 512 tokens, PPO with the critic loaded from it, 100 tokens at temperature 0.9
  (the paper profile's sampling), KL;
* **05** a 2-layer Llama with Tulu's tokenizer settings (32,000-token vocabulary, ``<unk>`` /
  ``<s>`` / ``</s>`` = 0 / 1 / 2, no PAD, so UNK pads on the left; Tulu's chat format) at
  Llama-2-7B's width on a GPU: every reward model, EM slot and judge as LoRA adapters on one
  base (8-bit where bitsandbytes and CUDA work), MaxMin PPO in the paper's batch shape
  (batch 8, one mini-batch of 8, reward whitening), evaluation with held-out judges against
  the policy with its adapter off, and KL.

Precision follows the project's rule (bf16 on a bf16 GPU, fp32 otherwise). The JSON
(``--out``) records the device, precision, and per section the seconds, the seconds per PPO
update and the peak GPU memory, so the first real GPU run checks notebook 05's estimates.

    python scripts/gpu_smoke.py --out scratch/gpu_smoke.json
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pluralign.pipeline.assets import load_gpt2_tokenizer, load_imdb, use_offline_hub
from pluralign.pipeline.device import compute_device, precision_record, use_bf16
from pluralign.pipeline.io import set_seed, write_json_atomic

GIB = 2**30
TULU_VOCAB = 32_000
#: How big each section runs. A GPU runs the paper's shapes at tiny scale; the CPU (``make
#: test``) one update of one PPO epoch with short answers and a narrow Llama, so the whole
#: run stays within a few minutes on 2 cores (GPT-2 small costs ~30 s per update there).
SCALES: dict[str, dict[str, Any]] = {
    "cuda": {"updates": 2, "ppo_epochs": 2, "tokens_04": 32, "tokens_06": 100,
             "rm_pairs_06": 16, "tokens_05": 64, "llama_width": 4096},
    "cpu": {"updates": 1, "ppo_epochs": 1, "tokens_04": 8, "tokens_06": 24,
            "rm_pairs_06": 8, "tokens_05": 12, "llama_width": 256},
}  # fmt: skip


def _peak_gib() -> float | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / GIB


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _timed(name: str, run: Callable[[], dict[str, Any]], out: dict[str, Any]) -> None:
    _reset_peak()
    t0 = time.perf_counter()
    result = run()
    result["seconds"] = time.perf_counter() - t0
    result["peak_gpu_gib"] = _peak_gib()
    out[name] = result
    print(f"[smoke] {name}: " + json.dumps(result, default=str), flush=True)


def _reviews(n: int, seed: int) -> list[str]:
    texts = load_imdb()["text"]
    rng = np.random.default_rng(seed)
    return [texts[i] for i in rng.choice(len(texts), size=n, replace=False)]


# --------------------------------------------------------------------------- 04 and 06: GPT-2


def _gpt2_folder(tok, folder: Path, classifier: bool, seed: int) -> Path:
    """GPT-2 small (the hub ``gpt2`` architecture) with random weights, saved with ``tok``."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    if classifier:
        config.num_labels, config.id2label = 2, {0: "NEGATIVE", 1: "POSITIVE"}
        config.label2id = {"NEGATIVE": 0, "POSITIVE": 1}
        model = GPT2ForSequenceClassification(config)
    else:
        model = GPT2LMHeadModel(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def smoke_04(work: Path, scale: dict[str, Any], seed: int) -> dict[str, Any]:
    """Notebook 04's paper path: policy stack from folders, a judge reward, PPO, KL."""
    from datasets import Dataset

    from pluralign.pipeline.paths import ProjectPaths
    from pluralign.training.generation import GenerationSettings, kl_to_reference, sample_rollouts
    from pluralign.training.models import load_policy_stack
    from pluralign.training.ppo import PPOSettings, train_policy
    from pluralign.training.sentiment import SentimentJudge

    tok = load_gpt2_tokenizer()
    policy_dir = _gpt2_folder(tok, work / "gpt2", classifier=False, seed=seed)
    judge_dir = _gpt2_folder(tok, work / "judge", classifier=True, seed=seed + 1)
    stack = load_policy_stack(str(policy_dir), str(policy_dir), ProjectPaths(work))
    judge = SentimentJudge.from_pretrained(judge_dir)
    prompts = [[tok.eos_token_id, *tok(t)["input_ids"][:8]] for t in _reviews(64, seed)]
    prompts = [p for p in prompts if len(p) == 9][:32]
    updates, tokens = scale["updates"], scale["tokens_04"]
    generation = GenerationSettings(max_new_tokens=tokens, temperature=0.7)
    settings = PPOSettings(updates, 8, num_mini_batches=1, num_ppo_epochs=scale["ppo_epochs"],
                           learning_rate=1.4e-5, checkpoint_every=updates)  # fmt: skip
    ref_texts = sample_rollouts(stack.ref_policy, tok, prompts[:16], tokens, 0.7, seed).texts
    policy = stack.new_policy()
    t0 = time.perf_counter()
    policy, log, _ = train_policy(
        policy, tok, Dataset.from_dict({"input_ids": prompts}), {"judge": judge.positive_prob},
        ref_texts, "single", settings, generation, work / "ppo-04", seed,
    )  # fmt: skip
    per_update = (time.perf_counter() - t0) / updates
    roll = sample_rollouts(policy, tok, prompts[:8], tokens, 0.7, seed + 1)
    return {
        "architecture": "gpt2 (124M, random weights)",
        "policy_device": str(policy.device),
        "reference_device": str(stack.ref_policy.device),
        "ppo_updates": len(log),
        "seconds_per_update": per_update,
        "kl": kl_to_reference(policy, stack.ref_policy, tok, roll, 0.7),
    }


def smoke_06(work: Path, scale: dict[str, Any], seed: int) -> dict[str, Any]:
    """Notebook 06's paper path: a neural reward model on prompt + response at 512 tokens,
    PPO with the critic loaded from it, the paper's sampling, KL."""
    from datasets import Dataset

    from pluralign.training.generation import GenerationSettings, kl_to_reference, sample_rollouts
    from pluralign.training.models import load_causal_lm, load_sequence_classifier
    from pluralign.training.ppo import PPOSettings, train_policy
    from pluralign.training.reward_models import (
        RewardModelSettings,
        fit_reward_model,
        reward_fn,
    )

    tok = load_gpt2_tokenizer()
    policy_dir = _gpt2_folder(tok, work / "gpt2-06", classifier=False, seed=seed)
    reviews = _reviews(48, seed + 2)
    prompts = [
        f"\n\nHuman: What do you think of this film? {r[:300]}\n\nAssistant:" for r in reviews
    ]
    n_pairs, updates, tokens = scale["rm_pairs_06"], scale["updates"], scale["tokens_06"]
    chosen = [p + " It is a good film, well acted." for p in prompts[:n_pairs]]
    rejected = [p + " No." for p in prompts[:n_pairs]]
    rm = load_sequence_classifier(policy_dir, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    t0 = time.perf_counter()
    fit_reward_model(rm, tok, chosen, rejected, RewardModelSettings(1.0, 1e-5, 8, 512), seed)
    rm_seconds = time.perf_counter() - t0
    value = load_sequence_classifier(policy_dir, num_labels=1)  # the critic from the RM
    value.load_state_dict(rm.state_dict())
    policy, ref = load_causal_lm(policy_dir), load_causal_lm(policy_dir)
    ids = [[tok.eos_token_id, *tok(p)["input_ids"][-8:]] for p in prompts[16:]]
    generation = GenerationSettings(max_new_tokens=tokens, temperature=0.9)
    settings = PPOSettings(
        updates, 8, num_mini_batches=2, num_ppo_epochs=scale["ppo_epochs"],
        learning_rate=1.4e-5, kl_coef=0.02, checkpoint_every=updates,
    )  # fmt: skip
    ref_texts = sample_rollouts(ref, tok, ids[:8], tokens, 0.9, seed).texts
    t0 = time.perf_counter()
    policy, log, _ = train_policy(
        policy, tok, Dataset.from_dict({"input_ids": ids}), {"rm": reward_fn(rm, tok, 512)},
        ref_texts, "single", settings, generation, work / "ppo-06", seed, value_model=value,
    )  # fmt: skip
    per_update = (time.perf_counter() - t0) / updates
    roll = sample_rollouts(policy, tok, ids[:8], tokens, 0.9, seed + 1)
    return {
        "architecture": "gpt2 (124M, random weights)",
        "reward_model_seconds": rm_seconds,
        "ppo_updates": len(log),
        "seconds_per_update": per_update,
        "tokens_per_answer": float(roll.n_tokens.mean()),
        "kl": kl_to_reference(policy, ref, tok, roll, 0.9),
    }


# --------------------------------------------------------------------------- 05: Llama + LoRA


def tulu_like_tokenizer(folder: Path, texts: list[str]):
    """A BPE tokenizer with Llama-2 / Tulu's settings: ``<unk>``, ``<s>``, ``</s>`` at ids 0,
    1, 2, a BOS prepended, no PAD token, a 32,000-token vocabulary (trained here on reviews;
    ids past what the text supports are unused). Saved to ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=["<unk>", "<s>", "</s>"])
    core.train_from_iterator([*texts, "<|user|>\n<|assistant|>\n"], trainer)
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.pad_token is None  # as Llama-2's: load_chat_tokenizer pads with UNK
    tok.save_pretrained(folder)
    return tok


def _llama_folder(folder: Path, tok, seed: int, width: int) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = (
        {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32}
        if width == 4096
        else {"hidden_size": 256, "intermediate_size": 688, "num_attention_heads": 4}
    )
    config = LlamaConfig(
        vocab_size=TULU_VOCAB, num_hidden_layers=2,
        num_key_value_heads=shape["num_attention_heads"],
        max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=None,
        tie_word_embeddings=False, **shape,
    )  # fmt: skip
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _new_slot(bank, lora, counter, k: int) -> str:
    return bank.add(f"slot{next(counter)}", lora)


def smoke_05(work: Path, scale: dict[str, Any], seed: int) -> dict[str, Any]:
    """Notebook 05's paper path at tiny scale (see the module doc)."""
    import importlib.util

    from pluralign.data.text import chat_prompt_ids
    from pluralign.experiments import maxmin_tulu2 as mt
    from pluralign.training.adapter_bank import AdapterBank, WithoutAdapter
    from pluralign.training.generation import kl_to_reference, sample_rollouts
    from pluralign.training.judges import RewardModelJudge
    from pluralign.training.lora import BackboneSpec, classifier_base, reward_lora_config
    from pluralign.training.models import load_chat_tokenizer
    from pluralign.training.neural_crossfit import fit_neural_crossfit_em
    from pluralign.training.reward_models import (
        RewardModelSettings,
        fit_reward_model,
        reward_fn,
    )

    cuda = torch.cuda.is_available()
    reviews = _reviews(96, seed + 3)
    tulu = work / "tulu"
    tulu_like_tokenizer(tulu, reviews)
    _llama_folder(tulu, load_chat_tokenizer(str(tulu)), seed, scale["llama_width"])
    updates = scale["updates"]
    tok = load_chat_tokenizer(str(tulu))
    bits = 8 if cuda and importlib.util.find_spec("bitsandbytes") else None
    spec = BackboneSpec(str(tulu), load_in_bits=bits, bf16=use_bf16(), gradient_checkpointing=True)
    pad = tok.pad_token_id
    settings = RewardModelSettings(1.0, 2e-5, 8, 512)
    lora = reward_lora_config(r=8)
    short = [" ".join(r.split()[:12]) for r in reviews]
    long = [" ".join(r.split()[:40]) for r in reviews]

    # reward models, EM slots and judges: adapters on one base, saved and freed
    bank = AdapterBank(classifier_base(spec, pad))
    adapters = {}
    for name, (chosen, rejected) in {
        "group_majority": (short[:16], long[:16]),
        "group_minority": (long[16:32], short[16:32]),
        "judge_majority": (short[32:40], long[32:40]),
        "judge_minority": (long[40:48], short[40:48]),
    }.items():
        fit_reward_model(bank.use(bank.add(name, lora)), tok, chosen, rejected, settings, seed)
        adapters[name] = bank.save(name, work / "rms" / name)
        bank.drop(name)
    users = np.repeat(np.arange(4), 4)
    counter = iter(range(10**6))
    em = fit_neural_crossfit_em(
        short[48:64], long[48:64], users, 2,
        functools.partial(_new_slot, bank, lora, counter),
        tok, n_folds=2, n_iter=1, seed=seed, max_length=512,
        train_args=settings.trainer_args(), activate=bank.use, release=bank.drop,
    )  # fmt: skip
    em_bases = 1
    del bank, em

    # MaxMin PPO in the paper's batch shape, in this process (the notebook without launcher)
    prompt_ids = chat_prompt_ids(tok, [f"Tell me about {r[:60]}" for r in reviews], 64)[:32]
    mt_settings = {"n_updates": updates, "batch_size": 8, "num_mini_batches": 1,
                   "num_ppo_epochs": scale["ppo_epochs"], "learning_rate": 1.4e-5, "kl_coef": 0.05,
                   "checkpoint_every": updates, "whiten_rewards": True}  # fmt: skip
    generation = {"max_new_tokens": scale["tokens_05"], "temperature": 0.7}
    tok.save_pretrained(work / "tok")
    arm = mt.ArmSpec(
        name="maxmin-seed0", how="maxmin_sample", backbone=spec, tokenizer_dir=str(work / "tok"),
        reward_adapters={g: str(adapters[f"group_{g}"]) for g in mt.GROUPS},
        reference_texts=short[64:80], prompt_ids=prompt_ids, probe_ids=prompt_ids[:8],
        majority="P1A", minority="P1B", settings=mt_settings, generation=generation,
        policy_lora_r=16, value_lora_r=8, rm_max_length=512, seed=seed,
        workdir=str(work / "ppo-05"), output_dir=str(work / "arm"), suppress_eos=True,
    )  # fmt: skip
    _reset_peak()
    t0 = time.perf_counter()
    out = mt.train_arm(arm)
    per_update = (time.perf_counter() - t0) / updates
    ppo_peak = _peak_gib()

    # evaluation: one policy base, its adapter off as the reference, judges on one base
    policies = mt.evaluation_policies(spec, tok, suppress_eos=True)
    policy = policies.use(policies.load("maxmin-seed0", out / "adapter")).eval()
    roll = sample_rollouts(policy, tok, prompt_ids[:8], generation["max_new_tokens"], 0.7, seed)
    ref = WithoutAdapter(policy)
    sft = sample_rollouts(ref, tok, prompt_ids[:8], generation["max_new_tokens"], 0.7, seed)
    judges = AdapterBank(classifier_base(spec, pad))
    wins = {}
    for g in mt.GROUPS:
        name = judges.load(f"judge_{g}", adapters[f"judge_{g}"])
        judge = RewardModelJudge(judges.scorer(name, lambda m: reward_fn(m, tok, 512)))
        prompts_text = [mt.prompt_text(tok, p) for p in prompt_ids[:8]]
        wins[g] = float(np.mean(judge.compare(prompts_text, roll.continuations, sft.continuations)))
    log = json.loads((out / "log.json").read_text())
    return {
        "architecture": f"llama, 2 layers, width {scale['llama_width']}, vocab {TULU_VOCAB}",
        "load_in_bits": bits,
        "em_bases": em_bases,
        "ppo_updates": len(log),
        "seconds_per_update": per_update,
        "ppo_peak_gpu_gib": ppo_peak,
        "answer_tokens": float(roll.n_tokens.mean()),
        "win_rate_vs_sft": wins,
        "kl": kl_to_reference(policy, ref, tok, roll, 0.7),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="scratch/gpu_smoke.json", help="the JSON to write")
    parser.add_argument("--updates", type=int, default=None, help="PPO updates per section")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", choices=["04", "05", "06"], default=None)
    args = parser.parse_args(argv)
    use_offline_hub()  # everything is built here: no lookup may reach the hub
    set_seed(args.seed)
    scale = dict(SCALES["cuda" if torch.cuda.is_available() else "cpu"])
    if args.updates is not None:
        scale["updates"] = args.updates
    record: dict[str, Any] = {
        **precision_record(),
        "torch": torch.__version__,
        "compute_device": str(compute_device()),
        "scale": scale,
        "sections": {},
    }
    t0 = time.perf_counter()
    runs = {"04": smoke_04, "06": smoke_06, "05": smoke_05}
    with tempfile.TemporaryDirectory(prefix="pluralign-smoke-") as tmp:
        for name, run in runs.items():
            if args.only is None or name in args.only:
                work = Path(tmp) / name
                work.mkdir()
                _timed(name, lambda run=run, work=work: run(work, scale, args.seed),
                       record["sections"])  # fmt: skip
    record["seconds"] = time.perf_counter() - t0
    write_json_atomic(Path(args.out), record)
    print(f"[smoke] passed in {record['seconds']:.0f} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
