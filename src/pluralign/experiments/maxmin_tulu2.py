"""Notebook 05: MaxMin-RLHF at 7B scale (Tulu2-7B on P-SOUPS, LoRA) and its cpu Llama proxy.

One code path for both profiles. What differs is data and size:

* **policy**: ``llama_proxy``, a small ``LlamaForCausalLM`` pretrained here with notebook
  00's recipe on the packaged tokenizer, or a pinned hub model (``allenai/tulu-2-7b@..``,
  optional 8/4-bit bases); the trained policy is a LoRA adapter (r = 16) and the reference
  is the same network with the adapter disabled;
* **reward models**: the backbone as a one-logit sequence classifier with LoRA (r = 8) and a
  trained ``score`` head, trained by TRL's ``RewardTrainer`` (single pooled model, hard-EM
  mixture, or one per true group);
* **data**: pairs of proxy samples labelled by simulated users of two P-SOUPS dimensions
  (rule-based ground truth, :mod:`pluralign.data.psoups`), or the P-SOUPS files cut into
  users.

A PPO run ("arm") is described by a JSON :class:`ArmSpec` and trained by :func:`train_arm`,
in the notebook's process or, for several GPUs, by ``accelerate launch -m
pluralign.experiments.maxmin_tulu2 spec.json`` (:func:`launch_arm`); either way the adapter
and the log land in ``spec.output_dir`` and the notebook evaluates from there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from datasets import Dataset

from pluralign._typing import TextScore
from pluralign.core.simulate import PairLabels
from pluralign.core.stats import win_rates
from pluralign.data.preferences import load_prompt_texts
from pluralign.data.psoups import (
    DIMENSIONS,
    check_dimensions,
    dimension_scores,
    group_truth,
    label_by_dimensions,
    load_psoups,
    mixture_users,
    psoups_users,
)
from pluralign.data.text import chat_prompt_ids, make_prompts, split_prompts
from pluralign.experiments._rlhf import PreferencePairs
from pluralign.pipeline.assets import load_gpt2_tokenizer, load_imdb
from pluralign.pipeline.config import StageConfig
from pluralign.pipeline.io import write_json_atomic
from pluralign.training.generation import (
    GenerationSettings,
    Rollouts,
    kl_to_reference,
    sample_rollouts,
    strip_left_padding,
)
from pluralign.training.judges import ChatEndpointJudge, PairwiseJudge, RewardModelJudge
from pluralign.training.llama_proxy import build_llama_proxy
from pluralign.training.lora import BackboneSpec, lora_classifier, lora_policy, save_adapter
from pluralign.training.models import load_tokenizer
from pluralign.training.ppo import PPOSettings, train_policy
from pluralign.training.pretrain import PretrainConfig, PretrainResult, train_and_evaluate
from pluralign.training.reward_models import RewardModelSettings, reward_fn

GROUPS = ("majority", "minority")
PROXY = "llama_proxy"
SYNTHETIC = "synthetic"


@dataclass(frozen=True)
class ProxySettings:
    """The cpu proxy's shape (Llama-2 layout) and how long notebook 00's recipe trains it."""

    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    pretrain_steps: int


@dataclass(frozen=True, kw_only=True)
class Config(StageConfig):
    """Single-reward vs MaxMin LoRA PPO on P-SOUPS preference dimensions.

    Hub sources are pinned in the name (``allenai/tulu-2-7b@<commit>``); keys used by one
    profile only (``proxy``, ``n_pref_prompts``, the P-SOUPS files) are left out of the
    other."""

    # ---- models
    policy: str
    """``llama_proxy`` (pretrained in this stage) or a pinned hub causal LM."""
    proxy: ProxySettings | None = None
    """The proxy's shape (``policy: llama_proxy`` only)."""
    load_in_bits: int | None
    """8 or 4: bitsandbytes quantisation of the frozen bases (GPU only); ``None``: bf16/fp32."""
    bf16: bool
    gradient_checkpointing: bool

    # ---- data
    preference_data: str
    """``synthetic`` (pairs of proxy samples labelled by simulated users of the dimensions)
    or a local folder with one P-SOUPS data file per dimension (``psoups_files``)."""
    psoups_files: dict[str, str] | None = None
    """Dimension -> data file inside ``preference_data`` (P-SOUPS data only)."""
    psoups_columns: dict[str, str] | None = None
    """Standard column (prompt/chosen/rejected) -> the file's column (default: same)."""
    ppo_prompts: str
    """``imdb`` (review openings, cpu) or an instruction file / pinned hub set (Alpaca-GPT4)."""
    ppo_prompt_column: str | None = None
    eval_prompts: str
    """``imdb`` or an evaluation file / pinned hub set (Koala)."""
    eval_prompts_split: str | None = None
    eval_prompt_column: str | None = None
    prompt_tokens: int
    """Prompt length in tokens (prompts are cut or left-padded to it: PPO batches one length)."""
    generation: GenerationSettings
    n_pref_prompts: int | None = None
    """Prompts of the synthetic preference pairs (``preference_data: synthetic`` only)."""
    n_ppo_prompts: int
    n_eval_prompts: int

    # ---- users and reward models
    majority: str
    """Majority group's P-SOUPS dimension (the paper: ``P1A``, elementary-level answers)."""
    minority: str
    """Minority group's dimension (the paper: ``P1B``, PhD-level answers)."""
    users_majority: int
    users_minority: int
    comparisons_per_user: int
    label_beta: float
    rm_lora_r: int
    policy_lora_r: int
    reward_model: RewardModelSettings
    em_iters: int

    # ---- PPO
    ppo: PPOSettings
    seeds: list[int]
    launcher: str | None
    """``None``: train in the notebook's process (cpu, one GPU). Else an accelerate config
    (``configs/accelerate/multi_gpu.yaml``, ``deepspeed_zero3.yaml``): each PPO run is then
    ``accelerate launch --config_file <launcher> -m pluralign.experiments.maxmin_tulu2
    <arm spec>``."""

    # ---- evaluation
    judge: str
    """``ground_truth`` (the dimensions' rule-based scores), ``reward_model`` (each group's
    reward model trained on its own data) or ``endpoint`` (an OpenAI-compatible chat model;
    URL and key from PLURALIGN_JUDGE_URL / PLURALIGN_JUDGE_KEY, never from params)."""
    judge_model: str | None = None
    """The endpoint's model name (``endpoint`` judge only)."""
    n_boot: int

    def __post_init__(self) -> None:
        check_dimensions(self.majority, self.minority)
        if self.policy == PROXY and self.proxy is None:
            raise ValueError("policy llama_proxy needs the proxy section")
        if self.preference_data == SYNTHETIC and self.n_pref_prompts is None:
            raise ValueError("synthetic preference data needs n_pref_prompts")
        if self.preference_data != SYNTHETIC and self.psoups_files is None:
            raise ValueError(f"preference_data {self.preference_data!r} needs psoups_files")
        if self.judge not in ("ground_truth", "reward_model", "endpoint"):
            raise ValueError(f"judge {self.judge!r} is not ground_truth/reward_model/endpoint")
        if self.ppo_prompts != "imdb" and not self.ppo_prompt_column:
            raise ValueError(f"ppo_prompts {self.ppo_prompts!r} needs ppo_prompt_column")
        if self.eval_prompts != "imdb" and not (
            self.eval_prompt_column and self.eval_prompts_split
        ):
            raise ValueError(
                f"eval_prompts {self.eval_prompts!r} needs eval_prompt_column and "
                "eval_prompts_split"
            )
        if self.judge == "endpoint" and not self.judge_model:
            raise ValueError("judge endpoint: name the endpoint's model in judge_model")


# --------------------------------------------------------------------------- models


def backbone_spec(cfg: Config, proxy_dir: str | Path) -> BackboneSpec:
    """The policy backbone of ``cfg``: the pretrained proxy folder or the pinned hub model."""
    source = str(proxy_dir) if cfg.policy == PROXY else cfg.policy
    return BackboneSpec(source, cfg.load_in_bits, cfg.bf16, cfg.gradient_checkpointing)


def proxy_pretrain_config(recipe: PretrainConfig, steps: int) -> PretrainConfig:
    """Notebook 00's recipe for the proxy: same data, tokenizer and schedule, ``steps`` long.
    ``init_from`` is filled in by :func:`pretrain_proxy` (the freshly built Llama folder)."""
    if steps < 1:
        raise ValueError(f"proxy.pretrain_steps must be >= 1, got {steps}")
    return dataclasses.replace(
        recipe, max_steps=steps, warmup_steps=min(recipe.warmup_steps, steps)
    )


def pretrain_proxy(
    proxy: ProxySettings, seed: int, recipe: PretrainConfig, model_dir: str | Path
) -> PretrainResult:
    """Build the Llama proxy (``proxy``'s shape) and pretrain it with notebook 00's
    :func:`pluralign.training.pretrain.train_and_evaluate`; the model lands in ``model_dir``."""
    tok = load_gpt2_tokenizer(recipe.tokenizer, recipe.max_merges)
    model = build_llama_proxy(
        tok,
        seed=seed,
        hidden_size=proxy.hidden_size,
        n_layers=proxy.layers,
        n_heads=proxy.heads,
        intermediate_size=proxy.intermediate_size,
        max_positions=recipe.block_size,
    )
    with tempfile.TemporaryDirectory(prefix="llama-proxy-init-") as init:
        model.save_pretrained(init, safe_serialization=True)
        run = dataclasses.replace(
            proxy_pretrain_config(recipe, proxy.pretrain_steps), init_from=init
        )
        return train_and_evaluate(run, model_dir)


# --------------------------------------------------------------------------- data


def prompt_sets(cfg: Config, tok, imdb: str) -> dict[str, list[list[int]]]:
    """``pref`` / ``ppo`` / ``eval`` prompt ids: openings of shuffled IMDB reviews (cpu), or
    Tulu chat prompts from instruction files (paper; prompts longer than ``prompt_tokens``
    are dropped, shorter ones left-padded)."""
    if cfg.ppo_prompts == "imdb":
        sizes = {
            "pref": cfg.n_pref_prompts or 0,
            "ppo": cfg.n_ppo_prompts,
            "eval": cfg.n_eval_prompts,
        }
        return split_prompts(
            lambda texts: make_prompts(tok, texts, cfg.prompt_tokens),
            load_imdb(imdb)["text"],
            sizes,
            cfg.seed,
        )

    def prompts_from(source: str, split: str, column: str | None, n: int) -> list[list[int]]:
        texts = load_prompt_texts(source, split, column or "")
        return chat_prompt_ids(tok, texts, cfg.prompt_tokens)[:n]

    ppo = prompts_from(cfg.ppo_prompts, "train", cfg.ppo_prompt_column, cfg.n_ppo_prompts)
    evals = prompts_from(
        cfg.eval_prompts, cfg.eval_prompts_split or "", cfg.eval_prompt_column,
        cfg.n_eval_prompts,
    )  # fmt: skip
    if len(ppo) < cfg.n_ppo_prompts or len(evals) < cfg.n_eval_prompts:
        raise ValueError(
            f"{len(ppo)} PPO / {len(evals)} evaluation prompts fit in prompt_tokens="
            f"{cfg.prompt_tokens}; params ask for {cfg.n_ppo_prompts} / {cfg.n_eval_prompts}"
        )
    return {"pref": [], "ppo": ppo, "eval": evals}


def truth_of(cfg: Config):
    """The groups' ground truth of each answer (the continuation, not the prompt)."""
    return lambda roll: group_truth(roll.continuations, cfg.majority, cfg.minority)


@dataclass
class Comparisons:
    """The labelled comparisons reward models learn from, and who made them."""

    chosen: list[str]
    rejected: list[str]
    user_of: np.ndarray
    """(n,) user of each comparison."""
    user_group: np.ndarray
    """(n_users,) true group of each user (0 majority, 1 minority)."""
    pairs: PreferencePairs | None = None
    """The sampled pairs (synthetic data): held-out pairs measure reward-model accuracy."""
    labels: PairLabels | None = None
    """The simulated labels of the training pairs (synthetic data)."""


def comparisons(cfg: Config, tok, ref_policy, pref_ids: Sequence[Sequence[int]]) -> Comparisons:
    """Synthetic: two reference samples per preference prompt labelled by simulated users of
    the two dimensions (:func:`pluralign.data.psoups.label_by_dimensions`: each dimension
    z-scored over the labelled pairs). P-SOUPS: the files cut into users."""
    users = mixture_users(cfg.majority, cfg.minority, cfg.users_majority, cfg.users_minority)
    if cfg.preference_data == SYNTHETIC:
        pairs = PreferencePairs.sample(
            ref_policy, tok, pref_ids, cfg.generation, truth_of(cfg), cfg.seed
        )
        scores_a = dimension_scores(pairs.a.continuations).iloc[pairs.train]
        scores_b = dimension_scores(pairs.b.continuations).iloc[pairs.train]
        labels, _ = label_by_dimensions(
            scores_a, scores_b, users, cfg.comparisons_per_user, cfg.label_beta, cfg.seed
        )
        chosen, rejected = pairs.comparisons(labels)
        return Comparisons(chosen, rejected, labels.user, labels.user_group, pairs, labels)
    files = load_psoups(
        cfg.preference_data, cfg.psoups_files or {}, (cfg.majority, cfg.minority),
        cfg.psoups_columns,
    )  # fmt: skip
    chosen, rejected, user_of, user_group, _ = psoups_users(
        files,
        {cfg.majority: cfg.users_majority, cfg.minority: cfg.users_minority},
        cfg.comparisons_per_user,
        cfg.seed,
    )
    return Comparisons(chosen, rejected, user_of, user_group)


# --------------------------------------------------------------------------- PPO arms


@dataclass(frozen=True)
class ArmSpec:
    """Everything one PPO run needs, as plain data, so another process can run it."""

    name: str
    how: str
    """``single`` or a MaxMin aggregation of :func:`pluralign.core.maxmin.aggregate`."""
    backbone: BackboneSpec
    tokenizer_dir: str
    reward_adapters: dict[str, str]
    """Reward name -> LoRA adapter folder on ``backbone``."""
    reference_texts: list[str]
    """Normalization sample: each reward is z-scored on these before any min."""
    prompt_ids: list[list[int]]
    probe_ids: list[list[int]]
    """Evaluation prompts scored at each checkpoint by the groups' ground truth."""
    majority: str
    minority: str
    settings: dict[str, Any]
    """:class:`pluralign.training.ppo.PPOSettings` fields."""
    generation: dict[str, Any]
    """:class:`pluralign.training.generation.GenerationSettings` fields."""
    policy_lora_r: int
    value_lora_r: int
    rm_max_length: int
    seed: int
    workdir: str
    output_dir: str

    def write(self, path: str | Path) -> Path:
        return write_json_atomic(path, asdict(self))

    @classmethod
    def read(cls, path: str | Path) -> ArmSpec:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        raw["backbone"] = BackboneSpec(**raw["backbone"])
        return cls(**raw)


def _done(output_dir: Path) -> bool:
    return (output_dir / "log.json").is_file() and (output_dir / "adapter").is_dir()


def train_arm(spec: ArmSpec, progress: bool = False) -> Path:
    """Run one PPO arm (LoRA policy + LoRA value model) and save the adapter and the log to
    ``spec.output_dir`` (main process only). A finished arm is not rerun; a killed one
    resumes from ``spec.workdir`` (the PPO runner's checkpoints)."""
    from accelerate import PartialState

    out = Path(spec.output_dir)
    if _done(out):
        return out
    state = PartialState(cpu=not torch.cuda.is_available())
    tok = load_tokenizer(spec.tokenizer_dir)
    pad = tok.pad_token_id
    rewards = {}
    for name, folder in spec.reward_adapters.items():
        model = lora_classifier(spec.backbone, pad, spec.value_lora_r, folder)
        rewards[name] = reward_fn(model, tok, spec.rm_max_length)
    settings = PPOSettings(**spec.settings)
    generation = GenerationSettings(**spec.generation)

    def probe(policy, updates: int) -> dict[str, float]:
        roll = sample_rollouts(
            policy,
            tok,
            spec.probe_ids,
            generation.max_new_tokens,
            generation.temperature,
            spec.seed + 5,
        )
        gt = group_truth(roll.continuations, spec.majority, spec.minority)
        return {f"gt_{g}": float(gt[g].mean()) for g in GROUPS}

    torch.manual_seed(spec.seed)
    policy = lora_policy(spec.backbone, pad, spec.policy_lora_r)
    value = lora_classifier(spec.backbone, pad, spec.value_lora_r)
    t0 = time.perf_counter()
    policy, log, _ = train_policy(
        policy,
        tok,
        Dataset.from_dict({"input_ids": spec.prompt_ids}),
        rewards,
        spec.reference_texts,
        spec.how,
        settings,
        generation,
        spec.workdir,
        spec.seed,
        progress=progress,
        on_checkpoint=probe,
        value_model=value,
    )
    seconds = time.perf_counter() - t0
    if state.is_main_process:
        save_adapter(policy, out / "adapter")
        log = log.assign(run=spec.name, reward_rule=spec.how, seed=spec.seed)
        write_json_atomic(
            out / "timing.json", {"train_seconds": seconds, "processes": state.num_processes}
        )
        records = log.astype(object).where(log.notna(), None)  # JSON has null, not NaN
        write_json_atomic(out / "log.json", records.to_dict(orient="records"))
    state.wait_for_everyone()
    return out


def launch_arm(
    spec: ArmSpec, spec_file: str | Path, launcher: str | None, progress: bool = False
) -> Path:
    """Train ``spec`` here (``launcher`` None) or under ``accelerate launch --config_file
    launcher`` (several GPUs, DeepSpeed); returns ``spec.output_dir`` once it is complete."""
    if launcher is None:
        return train_arm(spec, progress)
    spec.write(spec_file)
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [
        str(accelerate),
        "launch",
        "--config_file",
        str(launcher),
        "-m",
        "pluralign.experiments.maxmin_tulu2",
        str(spec_file),
    ]
    subprocess.run(cmd, check=True)
    if not _done(Path(spec.output_dir)):
        raise RuntimeError(f"{' '.join(cmd)} finished without writing {spec.output_dir}")
    return Path(spec.output_dir)


def read_arm(output_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    out = Path(output_dir)
    log = pd.DataFrame(json.loads((out / "log.json").read_text()))
    return log, json.loads((out / "timing.json").read_text())


def judges_for(cfg: Config, true_rewards: dict[str, TextScore]) -> dict[str, PairwiseJudge] | None:
    """Each group's pairwise judge (params ``judge``): None for the ground truth itself,
    the group's own reward model, or a chat endpoint asked by the dimension's description."""
    if cfg.judge == "ground_truth":
        return None
    if cfg.judge == "reward_model":
        return {g: RewardModelJudge(true_rewards[g]) for g in GROUPS}
    return {
        g: ChatEndpointJudge(cfg.judge_model or "", DIMENSIONS[d].description)
        for g, d in zip(GROUPS, (cfg.majority, cfg.minority), strict=True)
    }


def evaluate_arm(
    policy,
    ref_policy,
    tok,
    cfg: Config,
    eval_ids: list[list[int]],
    ref_eval: Rollouts,
    judges: dict[str, PairwiseJudge] | None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """(per-prompt win outcomes against SFT per group, summary) of one trained policy:
    each group's judge (or ground truth), the answers' grade, KL and length."""
    gen = cfg.generation
    roll = sample_rollouts(policy, tok, eval_ids, gen.max_new_tokens, gen.temperature, cfg.seed + 4)
    gt, gt_ref = truth_of(cfg)(roll), truth_of(cfg)(ref_eval)
    if judges is None:
        wins = win_rates(gt, gt_ref)
    else:
        prompts = [tok.decode(strip_left_padding(p, tok.pad_token_id)) for p in eval_ids]
        wins = pd.DataFrame(
            {
                g: judges[g].compare(prompts, roll.continuations, ref_eval.continuations)
                for g in GROUPS
            }
        )
    row = {f"{g}_win_rate": float(wins[g].mean()) for g in GROUPS}
    row |= {f"{g}_truth": float(gt[g].mean()) for g in GROUPS}
    row["grade"] = float(-dimension_scores(roll.continuations)["P1A"].mean())
    row["kl"] = kl_to_reference(policy, ref_policy, tok, roll, gen.temperature)
    row["mean_tokens"] = float(roll.n_tokens.mean())
    return wins, row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Train one PPO arm of notebook 05 (under accelerate launch)."
    )
    parser.add_argument("spec", help="ArmSpec JSON written by the notebook")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    out = train_arm(ArmSpec.read(args.spec), progress=args.progress)
    print(f"arm written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
