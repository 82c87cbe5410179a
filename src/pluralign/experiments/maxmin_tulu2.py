"""Notebook 05: MaxMin-RLHF at 7B scale (Tulu2-7B on P-SOUPS, LoRA) and its cpu Llama proxy,
on the authors' protocol.

What the authors ran (``josephxu1234/MaxMinRLHF``), and what this module reproduces:

* **rewards**: MaxMin PPO takes the per-sample min of two reward models trained
  *separately on the full P1A and P1B files*; the single reward model sees all of P1A and
  1/10 of P1B (the 10:1 ratio enters the baseline only). EM is a separate demonstration;
  here it also feeds a third arm (MaxMin over the cross-fitted EM mixture: the paper's full
  pipeline on the same 10:1 data as the single model);
* **PPO**: prompts carry no preference instruction, EOS is disabled and the length is not
  the policy's choice (:mod:`pluralign.training.token_ban`; here one fixed length);
* **evaluation**: each group's answers are generated *with that group's preference
  instruction*, for the trained policy and the SFT model alike, and judged against each
  other; the two groups' win rates live on different generations and need not sum to 1.
  The cpu proxy cannot read instructions, so it is pretrained with CTRL-style control tags
  (:mod:`pluralign.data.control_tags`) and the tag plays the instruction's part.

One code path for both profiles. What differs is data and size:

* **policy**: ``llama_proxy``, a small ``LlamaForCausalLM`` pretrained here with notebook
  00's recipe on tagged reviews, or a pinned hub model (``allenai/tulu-2-7b@..``, optional
  8/4-bit bases); the trained policy is a LoRA adapter (r = 16) and the reference is the
  same network with the adapter disabled;
* **reward models**: the backbone as a one-logit sequence classifier with LoRA (r = 8) and a
  trained ``score`` head, trained by TRL's ``RewardTrainer``;
* **data**: pairs of proxy samples labelled by simulated users of two P-SOUPS dimensions
  (rule-based ground truth, :mod:`pluralign.data.psoups`), or the P-SOUPS files
  (``data/rm_training/P1A.json``: ``user_input``, ``completion_a`` preferred,
  ``completion_b``) cut into users, preference instructions stripped.

A PPO run ("arm") is described by a JSON :class:`ArmSpec` and trained by :func:`train_arm`,
in the notebook's process or, for several GPUs, by ``accelerate launch -m
pluralign.experiments.maxmin_tulu2 spec.json`` (:func:`launch_arm`); either way the adapter
and the log land in ``spec.output_dir`` and the notebook evaluates from there.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from datasets import Dataset
from sklearn.metrics import adjusted_rand_score
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pluralign._typing import IntArray, TextScore
from pluralign.core.crossfit_em import CrossFitEMResult
from pluralign.core.simulate import PairLabels
from pluralign.data.control_tags import TAGS, GradeGap, grade_gap, grades, tag_train_and_heldout
from pluralign.data.control_tags import tagged_prompt_ids as tag_prompts
from pluralign.data.preferences import load_prompt_texts
from pluralign.data.psoups import (
    DIMENSIONS,
    check_dimensions,
    comparison_texts,
    dimension_scores,
    group_truth,
    label_by_dimensions,
    load_psoups,
    mixture_users,
    psoups_users,
    with_preference,
)
from pluralign.data.text import chat_prompt_ids, make_prompts, split_prompts
from pluralign.experiments._rlhf import PreferencePairs
from pluralign.pipeline.assets import load_gpt2_tokenizer, load_imdb
from pluralign.pipeline.config import StageConfig
from pluralign.pipeline.io import save_dir_atomic, write_json_atomic
from pluralign.pipeline.paths import project_root
from pluralign.training.adapter_bank import AdapterBank
from pluralign.training.generation import (
    GenerationSettings,
    Rollouts,
    kl_to_reference,
    sample_rollouts,
    strip_left_padding,
)
from pluralign.training.gpu_memory import free_memory
from pluralign.training.judges import ChatEndpointJudge, PairwiseJudge, RewardModelJudge
from pluralign.training.llama_proxy import build_llama_proxy
from pluralign.training.lora import (
    BackboneSpec,
    classifier_base,
    lora_classifier,
    lora_policy,
    policy_base,
    reward_lora_config,
    save_adapter,
)
from pluralign.training.models import load_tokenizer
from pluralign.training.neural_crossfit import fit_neural_crossfit_em
from pluralign.training.ppo import PPOSettings, check_batch, train_policy
from pluralign.training.pretrain import PretrainConfig, PretrainResult, train_and_evaluate
from pluralign.training.reward_models import RewardModelSettings, fit_reward_model, reward_fn
from pluralign.training.token_ban import ban_token

GROUPS = ("majority", "minority")
PROXY = "llama_proxy"
SYNTHETIC = "synthetic"
#: The PPO arms: single pooled reward (10:1); MaxMin over per-group reward models on equal,
#: full-size data (the authors' run); MaxMin over the cross-fitted EM mixture at 10:1.
ARMS = ("single", "maxmin", "maxmin_em")
JUDGES = ("ground_truth", "heldout_rm", "endpoint")
#: "Majority not hurt": MaxMin's majority win rate is at most this far below single's
#: (lower end of the 95% CI of the difference in points).
NON_INFERIORITY_MARGIN = 0.05


@dataclass(frozen=True)
class ProxySettings:
    """The cpu proxy's shape (Llama-2 layout) and how long notebook 00's recipe trains it."""

    hidden_size: int
    layers: int
    heads: int
    intermediate_size: int
    pretrain_steps: int


#: The stage's DVC metrics: premise, EM recovery, win rates against SFT, the gains and the
#: verdicts. Its other numbers go to ``results/details/``.
HEADLINE: tuple[str, ...] = (
    "premise_bias",
    "controllability_grade_gap",
    "em_ari_10to1",
    "em_converged_10to1",
    "power",
    "win_single_minority",
    "win_maxmin_minority",
    "win_maxmin_em_minority",
    "gain_minority_relative",
    "gain_average_relative",
    "gain_majority_points",
    "verdict",
    "verdict_em",
)


@dataclass(frozen=True, kw_only=True)
class Config(StageConfig):
    """Single-reward vs MaxMin LoRA PPO on P-SOUPS preference dimensions.

    Hub sources are pinned in the name (``allenai/tulu-2-7b@<commit>``); keys used by one
    profile only (``proxy``, ``n_pref_prompts``, the P-SOUPS files) are left out of the
    other."""

    # ---- models
    policy: str
    """``llama_proxy`` (pretrained with control tags in this stage) or a pinned hub causal LM."""
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
    """Standard column (prompt/chosen/rejected) -> the file's column (the release:
    ``user_input`` / ``completion_a`` / ``completion_b``)."""
    ppo_prompts: str
    """``imdb`` (review openings, cpu) or an instruction file / pinned hub set (Alpaca-GPT4)."""
    ppo_prompt_column: str | None = None
    ppo_input_column: str | None = None
    """The instruction file's input column (may be empty): PPO prompts are instruction +
    input, as in the authors' ``robust_rlhf.py`` (local files only)."""
    eval_prompts: str
    """``imdb`` or an evaluation file / pinned hub set (the authors' 50 Koala prompts)."""
    eval_prompts_split: str | None = None
    eval_prompt_column: str | None = None
    prompt_tokens: int
    """Prompt length in tokens (chat prompts are left-padded to it: PPO batches one length)."""
    generation: GenerationSettings
    """``max_new_tokens`` is every answer's length when ``suppress_eos`` (PPO and evaluation)."""
    suppress_eos: bool
    """Disable EOS, as the authors do (``eos_token_id = 100_000``): answers cannot stop early,
    so a reading-level preference must show in words, not in length."""
    stop_if_uncontrollable: bool
    """Stop before any reward model when the SFT model does not follow the preference
    (grade-gap CI not above 0): a conditioned evaluation would then measure nothing."""
    n_pref_prompts: int | None = None
    """Prompts of the synthetic preference pairs (``preference_data: synthetic`` only)."""
    n_judge_prompts: int | None = None
    """Prompts of the pairs the judges' reward models learn from (synthetic only)."""
    n_judge_comparisons: int | None = None
    """Held-out rows per P-SOUPS file for the judges' reward models (P-SOUPS data only)."""
    n_ppo_prompts: int
    n_eval_prompts: int
    min_eval_prompts: int | None = None
    """At least this many of the ``n_eval_prompts`` must fit ``prompt_tokens`` with every
    group's instruction (``None``: all of them); fewer stop the stage before any model loads."""

    # ---- users and reward models
    majority: str
    """Majority group's P-SOUPS dimension (the paper: ``P1A``, elementary-level answers)."""
    minority: str
    """Minority group's dimension (the paper: ``P1B``, PhD-level answers)."""
    users_per_group: int
    """Users of each group in the full per-group data (the P1A and P1B files' analogue)."""
    ratio: int
    """Majority:minority ratio of the single reward model's data and of EM's 10:1 run: all
    majority users and ``users_per_group // ratio`` minority users."""
    comparisons_per_user: int
    label_beta: float
    rm_lora_r: int
    policy_lora_r: int
    reward_model: RewardModelSettings
    em_iters: int
    em_folds: int
    em_epochs: float
    """Epochs of each EM M-step. The slot models are warm-started across iterations, so
    each comparison is seen ``em_iters x em_epochs`` times by the end, as in the authors'
    EM (10 iterations x 10 epochs)."""

    # ---- PPO
    ppo: PPOSettings
    seeds: list[int]
    launcher: str | None
    """``None``: train in the notebook's process (cpu, one GPU). Else an accelerate config
    (``configs/accelerate/multi_gpu.yaml``, ``deepspeed_zero3.yaml``): each PPO run is then
    ``accelerate launch --config_file <launcher> -m pluralign.experiments.maxmin_tulu2
    <arm spec>``."""

    # ---- evaluation
    judges: list[str]
    """Judges of the win rates, the first one primary: ``ground_truth`` (the dimensions'
    rule-based scores; synthetic data only), ``heldout_rm`` (a reward model per group
    trained on data no arm trained on) or ``endpoint`` (an OpenAI-compatible chat model;
    URL and key from PLURALIGN_JUDGE_URL / PLURALIGN_JUDGE_KEY, never from params). No judge
    is ever a reward model an arm trained against."""
    judge_model: str | None = None
    """The endpoint's model name (``endpoint`` judge only)."""
    n_boot: int

    def __post_init__(self) -> None:
        check_dimensions(self.majority, self.minority)
        if self.policy == PROXY and self.proxy is None:
            raise ValueError("policy llama_proxy needs the proxy section")
        if (self.policy == PROXY or self.stop_if_uncontrollable) and {
            self.majority,
            self.minority,
        } != set(TAGS):
            raise ValueError(
                f"the proxy's control tags and the grade-gap check cover {sorted(TAGS)}; "
                f"majority/minority are {self.majority}/{self.minority} (set "
                "stop_if_uncontrollable: false for other dimensions on a hub model)"
            )
        if self.preference_data == SYNTHETIC and not (self.n_pref_prompts and self.n_judge_prompts):
            raise ValueError("synthetic preference data needs n_pref_prompts and n_judge_prompts")
        if self.preference_data != SYNTHETIC and self.psoups_files is None:
            raise ValueError(f"preference_data {self.preference_data!r} needs psoups_files")
        if not self.judges or any(j not in JUDGES for j in self.judges):
            raise ValueError(f"judges {self.judges!r}: each must be one of {JUDGES}")
        if "ground_truth" in self.judges and self.preference_data != SYNTHETIC:
            raise ValueError("judge ground_truth exists for synthetic data only")
        if (
            "heldout_rm" in self.judges
            and self.preference_data != SYNTHETIC
            and not (self.n_judge_comparisons)
        ):
            raise ValueError("judge heldout_rm on P-SOUPS files needs n_judge_comparisons")
        if self.ppo_prompts != "imdb" and not self.ppo_prompt_column:
            raise ValueError(f"ppo_prompts {self.ppo_prompts!r} needs ppo_prompt_column")
        if self.eval_prompts != "imdb" and not (
            self.eval_prompt_column and self.eval_prompts_split
        ):
            raise ValueError(
                f"eval_prompts {self.eval_prompts!r} needs eval_prompt_column and "
                "eval_prompts_split"
            )
        if "endpoint" in self.judges and not self.judge_model:
            raise ValueError("judge endpoint: name the endpoint's model in judge_model")
        if not 1 <= self.users_per_group // max(self.ratio, 1) < self.users_per_group:
            raise ValueError(
                f"ratio {self.ratio} must leave 1..{self.users_per_group - 1} minority users "
                f"of {self.users_per_group} in the biased mix"
            )
        if self.em_folds < 2:
            raise ValueError(f"em_folds must be >= 2 (cross-fitted E-step), got {self.em_folds}")
        if self.min_eval_prompts is not None and not (
            1 <= self.min_eval_prompts <= self.n_eval_prompts
        ):
            raise ValueError(
                f"min_eval_prompts {self.min_eval_prompts} must be in 1..n_eval_prompts "
                f"({self.n_eval_prompts})"
            )
        check_batch(self.ppo, launcher_processes(self.launcher))

    @property
    def dimension(self) -> dict[str, str]:
        """Group -> P-SOUPS dimension."""
        return {"majority": self.majority, "minority": self.minority}


#: Notebook 05's GPU-memory estimate of one paper-profile PPO update, as the code holds it
#: (:func:`pluralign.training.gpu_memory.ppo_memory_estimate`): Tulu2-7B (Llama-2-7B: 6.74 B
#: parameters, 32 layers, width 4096); the policy's base, whose adapter switched off is the
#: reference; the value model's own base; one base carrying both reward adapters
#: (:class:`~pluralign.training.adapter_bank.AdapterBank`). A test counts the bases a run of
#: the paper path holds at its peak against :func:`~pluralign.training.gpu_memory.bases_held`.
PAPER_MEMORY: dict[str, Any] = {
    "n_params": 6.74e9,
    "n_layers": 32,
    "hidden_size": 4096,
    "policy_lora_r": 16,
    "reward_lora_r": 8,
    "n_reward_models": 2,
    "shared_base": True,
    "value_shares_policy_base": False,
    "reference_from_adapters": True,
}


# --------------------------------------------------------------------------- before any model

#: Why the DeepSpeed ZeRO-3 launcher is refused (review of 2026-12, defect 4).
ZERO3_UNSUPPORTED = (
    "DeepSpeed ZeRO-3 is not supported for notebook 05's PPO: TRL 1.12 prepares the reward "
    "model for DeepSpeed and reads its `config`, which the text-reward adapter lacks, and "
    "adapters saved from ZeRO-3 partitions would be empty. Use "
    "configs/accelerate/multi_gpu.yaml (DDP over 8-bit bases) instead."
)


def launcher_path(launcher: str) -> Path:
    """The accelerate config file ``launcher``: relative paths are from the project root
    (a notebook in JupyterLab runs in ``notebooks/``)."""
    path = Path(launcher)
    return path if path.is_absolute() else project_root() / path


def launcher_settings(launcher: str | None) -> dict[str, Any]:
    """The accelerate config file ``launcher`` (relative: from the project root), read."""
    if launcher is None:
        return {}
    path = launcher_path(launcher)
    if not path.is_file():
        raise ValueError(f"launcher {launcher!r}: no accelerate config file at {path}")
    settings = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(settings, dict):
        raise ValueError(f"{path}: not an accelerate config (a YAML mapping)")
    zero = (settings.get("deepspeed_config") or {}).get("zero_stage")
    if settings.get("distributed_type") == "DEEPSPEED" and zero == 3:
        raise ValueError(f"launcher {launcher!r}: {ZERO3_UNSUPPORTED}")
    return settings


def launcher_processes(launcher: str | None) -> int:
    """How many processes ``launcher`` starts (1 in the notebook's own process)."""
    processes = launcher_settings(launcher).get("num_processes", 1)
    if not isinstance(processes, int) or processes < 1:
        raise ValueError(f"launcher {launcher!r}: num_processes must be a positive integer")
    return processes


def refuse_zero3(state: Any) -> None:
    """Stop an arm started by hand under ZeRO-3 before it loads a model."""
    from accelerate.utils import DistributedType

    stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
    if state.distributed_type == DistributedType.DEEPSPEED and stage == "3":
        raise RuntimeError(ZERO3_UNSUPPORTED)


def preflight(cfg: Config) -> None:
    """Everything the paper profile would otherwise find out hours in (review of 2026-12,
    defect 9), checked before any model loads: the endpoint judge's environment, the
    P-SOUPS files and prompt files. (The batch arithmetic and the launcher are checked by
    ``Config`` itself; whether the evaluation prompts fit is checked by :func:`prompt_sets`
    right after the tokenizer loads.)"""
    if "endpoint" in cfg.judges:
        ChatEndpointJudge(cfg.judge_model or "", "")  # reads the URL and key, or says which
    missing = []
    if cfg.preference_data != SYNTHETIC:
        for dim in (cfg.majority, cfg.minority):
            rel = (cfg.psoups_files or {}).get(dim)
            if rel is None:
                raise ValueError(f"psoups_files has no file for dimension {dim}")
            missing += [] if (Path(cfg.preference_data) / rel).is_file() else [
                f"{Path(cfg.preference_data) / rel} (psoups_files.{dim})"
            ]  # fmt: skip
    for key in ("ppo_prompts", "eval_prompts"):
        value = getattr(cfg, key)
        local = value.endswith((".json", ".jsonl", ".csv", ".parquet")) or "/" in value
        if value != "imdb" and local and "@" not in value and not Path(value).is_file():
            missing.append(f"{value} ({key})")
    if missing:
        raise FileNotFoundError(
            "missing before any training (paths are read from the working directory "
            f"{Path.cwd()}): " + "; ".join(missing)
        )


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
    :func:`pluralign.training.pretrain.train_and_evaluate` on reviews tagged by their
    reading-grade tercile (:mod:`pluralign.data.control_tags`); the model lands in
    ``model_dir``."""
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
        return train_and_evaluate(run, model_dir, rewrite=tag_train_and_heldout)


def ban_eos(enabled: bool, model: PreTrainedModel, tokenizer) -> PreTrainedModel:
    """``model`` with EOS banned when ``enabled`` (see ``Config.suppress_eos``)."""
    if enabled:
        ban_token(model, tokenizer.eos_token_id)
    return model


# --------------------------------------------------------------------------- prompts


@dataclass
class PromptSets:
    """Every prompt set of the stage, as token ids of one length per set.

    ``eval`` carries no preference; ``eval_by_group[g]`` are the same prompts conditioned on
    group g's preference (the proxy's control tag, or the P-SOUPS instruction appended), the
    form in which each group's answers are generated and judged; ``eval_text`` are the
    unconditioned prompts as text (what a held-out reward model reads before an answer)."""

    pref: list[list[int]]
    judge: list[list[int]]
    ppo: list[list[int]]
    eval: list[list[int]]
    eval_by_group: dict[str, list[list[int]]]
    eval_text: list[str]


def instruction_texts(
    source: str, split: str, instruction_column: str, input_column: str | None
) -> list[str]:
    """Instruction prompts, each followed by its input when the file has one (the authors'
    ``f"{instruction} {input}"``); inputs may be empty, instructions may not."""
    instructions = load_prompt_texts(source, split, instruction_column)
    if input_column is None:
        return instructions
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"ppo_input_column needs a local JSON file, got {source!r}")
    from datasets import load_dataset

    data = load_dataset("json", data_files=str(path), split="train")
    if input_column not in data.column_names:
        raise ValueError(f"{path}: no column {input_column!r} (it has {data.column_names})")
    out = []
    for row, (instruction, extra) in enumerate(zip(instructions, data[input_column], strict=True)):
        if extra is not None and not isinstance(extra, str):
            raise ValueError(f"{path}: row {row}: field {input_column!r} is not text")
        out.append(f"{instruction.strip()} {(extra or '').strip()}".strip())
    return out


def _fitting_chat_prompts(
    tok, versions: Mapping[str, Sequence[str]], n_tokens: int, n: int
) -> dict[str, list[list[int]]]:
    """The first ``n`` prompts whose every version fits in ``n_tokens`` (so all groups are
    judged on the same prompts), each version left-padded to ``n_tokens``."""
    names = list(versions)
    kept: dict[str, list[list[int]]] = {v: [] for v in names}
    for texts in zip(*(versions[v] for v in names), strict=True):
        ids = [chat_prompt_ids(tok, [t], n_tokens) for t in texts]
        if all(ids):
            for v, one in zip(names, ids, strict=True):
                kept[v].append(one[0])
        if len(kept[names[0]]) == n:
            break
    return kept


def prompt_text(tok, ids: Sequence[int]) -> str:
    """A prompt as the text a reward model reads before an answer: no left padding and no
    leading BOS (or EOS-as-BOS), which the tokenizer adds again when it scores the text."""
    ids = strip_left_padding(ids, tok.pad_token_id)
    if ids and ids[0] in {tok.bos_token_id, tok.eos_token_id} - {None}:
        ids = ids[1:]
    return tok.decode(ids)


def prompt_sets(cfg: Config, tok, imdb: str) -> PromptSets:
    """Preference / judge / PPO / evaluation prompts: openings of shuffled IMDB reviews,
    evaluation ones tagged per group (cpu), or Tulu chat prompts from instruction files with
    each group's preference instruction appended for evaluation (paper; prompts longer than
    ``prompt_tokens`` are dropped, shorter ones left-padded)."""
    if cfg.ppo_prompts == "imdb":
        sizes = {
            "pref": cfg.n_pref_prompts or 0,
            "judge": cfg.n_judge_prompts or 0,
            "ppo": cfg.n_ppo_prompts,
            "eval": cfg.n_eval_prompts,
        }
        sets = split_prompts(
            lambda texts: make_prompts(tok, texts, cfg.prompt_tokens),
            load_imdb(imdb)["text"],
            sizes,
            cfg.seed,
        )
        by_group = {g: tag_prompts(tok, sets["eval"], TAGS[d]) for g, d in cfg.dimension.items()}
        text = [prompt_text(tok, p) for p in sets["eval"]]
        return PromptSets(sets["pref"], sets["judge"], sets["ppo"], sets["eval"], by_group, text)

    ppo_texts = instruction_texts(
        cfg.ppo_prompts, "train", cfg.ppo_prompt_column or "", cfg.ppo_input_column
    )
    ppo = chat_prompt_ids(tok, ppo_texts, cfg.prompt_tokens)[: cfg.n_ppo_prompts]
    eval_texts = load_prompt_texts(
        cfg.eval_prompts, cfg.eval_prompts_split or "", cfg.eval_prompt_column or ""
    )
    versions = {"none": eval_texts} | {
        g: [with_preference(t, d) for t in eval_texts] for g, d in cfg.dimension.items()
    }
    fitted = _fitting_chat_prompts(tok, versions, cfg.prompt_tokens, cfg.n_eval_prompts)
    n_eval = len(fitted["none"])
    if len(ppo) < cfg.n_ppo_prompts or n_eval < (cfg.min_eval_prompts or cfg.n_eval_prompts):
        raise ValueError(
            f"{len(ppo)} PPO / {n_eval} evaluation prompts fit in prompt_tokens="
            f"{cfg.prompt_tokens} with every group's instruction; params ask for "
            f"{cfg.n_ppo_prompts} / {cfg.min_eval_prompts or cfg.n_eval_prompts} "
            "(raise prompt_tokens or lower min_eval_prompts)"
        )
    if n_eval < cfg.n_eval_prompts:
        warnings.warn(
            f"{cfg.n_eval_prompts - n_eval} of the first evaluation prompts do not fit "
            f"prompt_tokens={cfg.prompt_tokens} with an instruction: evaluating on {n_eval}",
            stacklevel=2,
        )
    text = [prompt_text(tok, p) for p in fitted["none"]]
    by_group = {g: fitted[g] for g in GROUPS}
    return PromptSets([], [], ppo, fitted["none"], by_group, text)


# --------------------------------------------------------------------------- preference data


def truth_of(cfg: Config):
    """The groups' ground truth of each answer (the continuation, not the prompt)."""
    return lambda roll: group_truth(roll.continuations, cfg.majority, cfg.minority)


@dataclass
class Comparisons:
    """Labelled comparisons reward models learn from, and who made them."""

    chosen: list[str]
    rejected: list[str]
    user_of: IntArray
    """(n,) user of each comparison."""
    user_group: IntArray
    """(n_users,) true group of each user (0 majority, 1 minority)."""

    def __len__(self) -> int:
        return len(self.chosen)

    def subset(self, users: Sequence[int] | IntArray) -> Comparisons:
        """The comparisons of ``users``, users renumbered 0.. in the order given."""
        users = np.asarray(users)
        new_id = {int(u): i for i, u in enumerate(users)}
        rows = np.flatnonzero(np.isin(self.user_of, users))
        return Comparisons(
            [self.chosen[i] for i in rows],
            [self.rejected[i] for i in rows],
            np.array([new_id[int(self.user_of[i])] for i in rows], dtype=np.int64),
            self.user_group[users],
        )

    def group(self, g: int) -> Comparisons:
        """Group g's users only (a full per-group file)."""
        return self.subset(np.flatnonzero(self.user_group == g))

    def biased(self, ratio: int) -> Comparisons:
        """All majority users and the first ``n_minority // ratio`` minority users: the
        single reward model's 10:1 data (the authors' "all of P1A + 1/10 of P1B")."""
        majority = np.flatnonzero(self.user_group == 0)
        minority = np.flatnonzero(self.user_group == 1)
        keep = len(minority) // ratio
        if keep < 1:
            raise ValueError(f"{len(minority)} minority users leave none at ratio {ratio}")
        return self.subset(np.concatenate([majority, minority[:keep]]))


@dataclass
class PreferenceData:
    """The stage's preference data: every user's comparisons (``users_per_group`` per
    group), each group's judge comparisons (data no arm trains on), and, for synthetic
    data, the sampled pairs (held-out pairs measure reward-model accuracy) and labels."""

    full: Comparisons
    judge: dict[str, tuple[list[str], list[str]]]
    pairs: PreferencePairs | None = None
    labels: PairLabels | None = None


def _rule_labelled(pairs: PreferencePairs, group: str) -> tuple[list[str], list[str]]:
    """Every pair ordered by ``group``'s ground truth (ties dropped): a noiseless labeller."""
    ta, tb = pairs.truth_a[group].to_numpy(), pairs.truth_b[group].to_numpy()
    keep = np.flatnonzero(ta != tb)
    chosen = [pairs.a.texts[i] if ta[i] > tb[i] else pairs.b.texts[i] for i in keep]
    rejected = [pairs.b.texts[i] if ta[i] > tb[i] else pairs.a.texts[i] for i in keep]
    return chosen, rejected


def preference_data(cfg: Config, tok, ref_policy, prompts: PromptSets) -> PreferenceData:
    """Synthetic: two reference samples per preference prompt, labelled by
    ``users_per_group`` simulated users of each dimension
    (:func:`pluralign.data.psoups.label_by_dimensions`); the judges' pairs are separate
    prompts, ordered by each group's rule. P-SOUPS: the files cut into users, and
    ``n_judge_comparisons`` other rows of each file for the judges."""
    n = cfg.users_per_group
    if cfg.preference_data == SYNTHETIC:
        users = mixture_users(cfg.majority, cfg.minority, n, n)
        pairs = PreferencePairs.sample(
            ref_policy, tok, prompts.pref, cfg.generation, truth_of(cfg), cfg.seed
        )
        scores_a = dimension_scores([pairs.a.continuations[i] for i in pairs.train])
        scores_b = dimension_scores([pairs.b.continuations[i] for i in pairs.train])
        labels, _ = label_by_dimensions(
            scores_a, scores_b, users, cfg.comparisons_per_user, cfg.label_beta, cfg.seed
        )
        chosen, rejected = pairs.comparisons(labels)
        judge_pairs = PreferencePairs.sample(
            ref_policy, tok, prompts.judge, cfg.generation, truth_of(cfg), cfg.seed + 10, 1.0
        )
        judge = {g: _rule_labelled(judge_pairs, g) for g in GROUPS}
        full = Comparisons(chosen, rejected, labels.user, labels.user_group)
        return PreferenceData(full, judge, pairs, labels)
    files = load_psoups(
        cfg.preference_data, cfg.psoups_files or {}, (cfg.majority, cfg.minority),
        cfg.psoups_columns,
    )  # fmt: skip
    chosen, rejected, user_of, user_group, _, held = psoups_users(
        files,
        {cfg.majority: n, cfg.minority: n},
        cfg.comparisons_per_user,
        cfg.seed,
        held_out=cfg.n_judge_comparisons or 0,
    )
    judge = {}
    for g, d in cfg.dimension.items():
        texts = [comparison_texts(rec) for rec in held[d]]
        judge[g] = ([c for c, _ in texts], [r for _, r in texts])
    return PreferenceData(Comparisons(chosen, rejected, user_of, user_group), judge)


# --------------------------------------------------------------------------- reward models


#: Written last into a cached EM run's folder: the run is complete when it exists.
EM_SUMMARY = "em_summary.json"
#: Written into each saved reward-model adapter: its held-out accuracy and training time.
RM_RECORD = "pluralign_record.json"


@dataclass
class RewardModels:
    """Every reward model of the stage as a saved LoRA adapter, by name: ``single`` (10:1
    pooled), ``group_<g>`` (full per-group data), ``em<k>`` (cross-fitted EM at 10:1),
    ``judge_<g>`` (the held-out judges); with each EM run's summary (10:1 feeds PPO; 1:1 is
    the authors' demonstration), held-out accuracy (synthetic data) and seconds."""

    adapters: dict[str, Path]
    em: dict[str, dict[str, float]]
    accuracy: dict[str, dict[str, float]]
    seconds: dict[str, float]
    cached: list[str]
    """Names loaded from an earlier run's adapters instead of trained (a resumed stage)."""

    def em_summary(self) -> dict[str, dict[str, float]]:
        """Per EM run: ARI against the planted groups, users moved from the start,
        iterations, ARI of the start itself (what "EM did nothing" would score), whether it
        converged (1) or stopped at its cap (0), and the last E-step's largest temperature
        (how much the calibration cooled an overconfident reward model)."""
        return self.em


def em_run_summary(em: CrossFitEMResult[Any], truth: IntArray) -> dict[str, float]:
    """One EM run's row of :meth:`RewardModels.em_summary`."""
    return {
        "ari": float(adjusted_rand_score(truth, em.assignment)),
        "ari_start": float(adjusted_rand_score(truth, em.initial)),
        "users_moved": int((em.assignment != em.initial).sum()),
        "users": len(truth),
        "iterations": int(em.n_iter),
        "converged": int(em.converged),
        "max_temperature": float(np.max(em.temperatures[-1])) if em.temperatures else 1.0,
    }


def _name_seed(seed: int, name: str) -> int:
    """A fresh head's seed from the model's name, so a cached model does not shift the
    random draws of the ones trained after it."""
    return seed + zlib.crc32(name.encode()) % 100_000


def _new_slot(bank: AdapterBank, lora: Any, prefix: str, counter: Any, k: int) -> str:
    """A fresh EM slot model: an adapter on the bank's base, named by a running count."""
    return bank.add(f"{prefix}{next(counter)}", lora)


def fit_reward_models(
    cfg: Config,
    data: PreferenceData,
    bank: AdapterBank,
    tok: PreTrainedTokenizerBase,
    folder: str | Path,
    progress: bool = False,
) -> RewardModels:
    """Train every reward model (TRL's ``RewardTrainer``) as a LoRA adapter on ``bank``'s one
    base, save each into ``folder/<name>`` and free it: the base is the only backbone held.

    A model whose adapter is already in ``folder`` is not retrained (a stage that crashed in
    PPO resumes here in seconds), and an EM run is reused once its summary is written. Each
    fresh head is drawn from a seed of its own name, so a resumed run equals an
    uninterrupted one."""
    settings = cfg.reward_model
    folder = Path(folder)
    lora = reward_lora_config(r=cfg.rm_lora_r)
    adapters: dict[str, Path] = {}
    accuracy: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    cached: list[str] = []

    def fit(name: str, chosen: Sequence[str], rejected: Sequence[str]) -> None:
        dest = folder / name
        if not (dest / RM_RECORD).is_file():
            t0 = time.perf_counter()
            torch.manual_seed(_name_seed(cfg.seed, name))
            model = bank.use(bank.add(name, lora))
            fit_reward_model(model, tok, chosen, rejected, settings, cfg.seed)
            record = {"seconds": time.perf_counter() - t0, "accuracy": _accuracy(model)}
            _save(name, dest, record)
        else:
            cached.append(name)
        record = json.loads((dest / RM_RECORD).read_text(encoding="utf-8"))
        adapters[name], seconds[name] = dest, record["seconds"]
        if record["accuracy"]:
            accuracy[name] = record["accuracy"]

    def _accuracy(model) -> dict[str, float]:
        if data.pairs is None:  # P-SOUPS files: no planted truth to score against
            return {}
        return data.pairs.heldout_accuracy(model, tok, settings.max_length)

    def _save(handle: str, dest: Path, record: dict[str, Any]) -> None:
        """The adapter and its record in one atomic folder, then freed from the bank."""

        def write(tmp: Path) -> None:
            bank.write(handle, tmp)
            write_json_atomic(tmp / RM_RECORD, record)

        save_dir_atomic(dest, write)
        bank.drop(handle)

    biased = data.full.biased(cfg.ratio)
    fit("single", biased.chosen, biased.rejected)
    full = data.full
    row_group = full.user_group[full.user_of]
    for g, name in enumerate(GROUPS):
        rows = np.flatnonzero(row_group == g)
        fit(f"group_{name}", [full.chosen[i] for i in rows], [full.rejected[i] for i in rows])
    if "heldout_rm" in cfg.judges:  # the judges' own models, only when they judge
        for name in GROUPS:
            fit(f"judge_{name}", *data.judge[name])
    em_data = {"10to1": biased, "1to1": data.full}
    ems: dict[str, dict[str, float]] = {}
    for run, comps in em_data.items():
        summary_file = folder / f"em_{run}" / EM_SUMMARY
        keep = [f"em{k}" for k in range(2)] if run == "10to1" else []
        if not summary_file.is_file():
            t0 = time.perf_counter()
            new_slot = functools.partial(_new_slot, bank, lora, f"em_{run}_slot", itertools.count())
            em = fit_neural_crossfit_em(
                comps.chosen,
                comps.rejected,
                comps.user_of,
                2,
                new_slot,
                tok,
                n_folds=cfg.em_folds,
                n_iter=cfg.em_iters,
                seed=cfg.seed,
                max_length=settings.max_length,
                train_args=settings.trainer_args() | {"num_train_epochs": cfg.em_epochs},
                progress=progress,
                activate=bank.use,
                release=bank.drop,
            )
            summary = em_run_summary(em, comps.user_group)
            record = {"seconds": time.perf_counter() - t0}
            for k, handle in enumerate(em.models):
                if k < len(keep):
                    extra = {"accuracy": _accuracy(bank.use(handle))}
                    _save(handle, folder / keep[k], record | extra)
                else:
                    bank.drop(handle)
            write_json_atomic(summary_file, summary | record)
        else:
            cached.append(f"em_{run}")
        stored = json.loads(summary_file.read_text(encoding="utf-8"))
        seconds[f"em_{run}"] = stored.pop("seconds")
        ems[run] = stored
        for name in keep:
            record = json.loads((folder / name / RM_RECORD).read_text(encoding="utf-8"))
            adapters[name] = folder / name
            if record["accuracy"]:
                accuracy[name] = record["accuracy"]
    return RewardModels(adapters, ems, accuracy, seconds, cached)


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
    suppress_eos: bool = False
    """Ban EOS from the policy (the authors' fixed-length answers)."""

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
    refuse_zero3(state)
    free_memory()  # a previous arm's models, if only garbage still holds them
    tok = load_tokenizer(spec.tokenizer_dir)
    pad = tok.pad_token_id
    # The K frozen reward models: K adapters on one base (review of 2026-12, defect 3).
    bank = AdapterBank(classifier_base(spec.backbone, pad))
    rewards = {}
    for name, folder in spec.reward_adapters.items():
        bank.load(name, folder)
        rewards[name] = bank.scorer(name, lambda m: reward_fn(m, tok, spec.rm_max_length))
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
    policy = ban_eos(spec.suppress_eos, lora_policy(spec.backbone, pad, spec.policy_lora_r), tok)
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
    launcher = str(launcher_path(launcher))  # accelerate resolves it from the working directory
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


# --------------------------------------------------------------------------- evaluation


def evaluation_policies(backbone: BackboneSpec, tok, suppress_eos: bool) -> AdapterBank:
    """One policy base (EOS banned as in PPO) onto which each trained arm's adapter is
    loaded in turn; :class:`~pluralign.training.adapter_bank.WithoutAdapter` of it is the
    reference, so evaluation holds one policy base, not one per arm plus the SFT model."""
    return AdapterBank(ban_eos(suppress_eos, policy_base(backbone, tok.pad_token_id), tok))


def heldout_scorers(
    cfg: Config, adapters: Mapping[str, Path], backbone: BackboneSpec, tok
) -> dict[str, TextScore] | None:
    """Each group's held-out judge reward model as a ``texts -> scores`` callable, both
    adapters on one classifier base (``None`` when ``heldout_rm`` does not judge)."""
    if "heldout_rm" not in cfg.judges:
        return None
    bank = AdapterBank(classifier_base(backbone, tok.pad_token_id))
    length = cfg.reward_model.max_length
    return {
        g: bank.scorer(bank.load(f"judge_{g}", adapters[f"judge_{g}"]),
                       lambda m: reward_fn(m, tok, length))
        for g in GROUPS
    }  # fmt: skip


def controllability(
    ref_policy, tok, cfg: Config, prompts: PromptSets, seed: int
) -> tuple[GradeGap, dict[str, Rollouts]]:
    """Does the SFT model follow the preference? Its answers to the same held-out prompts
    conditioned on the majority's (``[easy]``) and the minority's (``[hard]``) preference,
    and unconditioned: the grade gap with a paired bootstrap CI over prompts. The
    conditioned rollouts are the SFT answers every arm is judged against."""
    gen = cfg.generation
    sft = {
        g: sample_rollouts(ref_policy, tok, ids, gen.max_new_tokens, gen.temperature, seed)
        for g, ids in prompts.eval_by_group.items()
    }
    plain = sample_rollouts(
        ref_policy, tok, prompts.eval, gen.max_new_tokens, gen.temperature, seed
    )
    easy, hard = (sft[g].continuations for g in GROUPS)
    if DIMENSIONS[cfg.majority].sign > 0:  # majority prefers the higher grade
        easy, hard = hard, easy
    gap = grade_gap(easy, hard, plain.continuations, cfg.n_boot, seed)
    return gap, sft | {"none": plain}


def judges_for(
    cfg: Config, heldout: Mapping[str, TextScore] | None
) -> dict[str, dict[str, PairwiseJudge | None]]:
    """Each of ``cfg.judges`` as one judge per group: ``None`` for the rule-based ground
    truth, a :class:`RewardModelJudge` over the group's *held-out* reward model (trained on
    data no arm trained on), or a chat endpoint asked by the dimension's description."""
    out: dict[str, dict[str, PairwiseJudge | None]] = {}
    for name in cfg.judges:
        if name == "ground_truth":
            out[name] = {g: None for g in GROUPS}
        elif name == "heldout_rm":
            if heldout is None:
                raise ValueError("judge heldout_rm needs the held-out reward models")
            out[name] = {g: RewardModelJudge(heldout[g]) for g in GROUPS}
        else:
            out[name] = {
                g: ChatEndpointJudge(cfg.judge_model or "", DIMENSIONS[d].description)
                for g, d in cfg.dimension.items()
            }
    return out


def evaluate_arm(
    policy,
    ref_policy,
    tok,
    cfg: Config,
    prompts: PromptSets,
    sft: Mapping[str, Rollouts],
    judges: Mapping[str, Mapping[str, PairwiseJudge | None]],
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """One trained policy against SFT, each group on its own conditioned generations.

    Returns (outcomes, summary): ``outcomes[judge][group]`` = per-prompt win (1), tie (1/2)
    or loss (0) of the policy's answer over SFT's to the same group-conditioned prompt;
    the summary has each group's mean ground truth and grade on its own generations, the
    KL to the reference (mean over both groups' prompts) and the answers' length."""
    gen = cfg.generation
    outcomes: dict[str, dict[str, np.ndarray]] = {name: {} for name in judges}
    row: dict[str, float] = {}
    kls = []
    for g in GROUPS:
        ids = prompts.eval_by_group[g]
        roll = sample_rollouts(policy, tok, ids, gen.max_new_tokens, gen.temperature, cfg.seed + 4)
        for name, by_group in judges.items():
            judge = by_group[g]
            if judge is None:
                gt, gt_sft = truth_of(cfg)(roll)[g], truth_of(cfg)(sft[g])[g]
                outcomes[name][g] = 0.5 + 0.5 * np.sign(gt.to_numpy() - gt_sft.to_numpy())
                continue
            # A reward model reads the unconditioned prompt (its training form); an endpoint
            # reads the instruction with the group's preference, as GPT-4 did for the authors.
            shown = (
                prompts.eval_text
                if isinstance(judge, RewardModelJudge)
                else [tok.decode(strip_left_padding(p, tok.pad_token_id)) for p in ids]
            )
            outcomes[name][g] = np.asarray(
                judge.compare(shown, roll.continuations, sft[g].continuations), dtype=np.float64
            )
        truth = truth_of(cfg)(roll)[g]
        row[f"truth_{g}"] = float(truth.mean())
        row[f"grade_{g}"] = float(np.mean(grades(roll.continuations)))
        row[f"tokens_{g}"] = float(roll.n_tokens.mean())
        kls.append(kl_to_reference(policy, ref_policy, tok, roll, gen.temperature))
    row["kl"] = float(np.mean(kls))
    return outcomes, row


def relative_gains(
    base: Mapping[str, np.ndarray],
    new: Mapping[str, np.ndarray],
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, float]:
    """The paper's comparison of ``new`` (MaxMin) with ``base`` (single) from per-row win
    outcomes against SFT (rows = (seed, prompt), in the same order for both arms and both
    groups): for the minority, the majority and their average, the gain in points and
    relative to ``base`` (``new / base - 1``), each with a paired percentile bootstrap CI
    (one resample of rows serves both arms and both groups)."""
    arrays = np.stack([np.asarray(d[g], dtype=np.float64) for d in (base, new) for g in GROUPS])
    n = arrays.shape[1]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))

    def stats(a: np.ndarray) -> dict[str, np.ndarray]:
        b_maj, b_min, n_maj, n_min = a
        b_avg, n_avg = (b_maj + b_min) / 2, (n_maj + n_min) / 2
        out = {}
        for name, b, x in (
            ("majority", b_maj, n_maj),
            ("minority", b_min, n_min),
            ("average", b_avg, n_avg),
        ):
            out[f"{name}_points"] = x - b
            with np.errstate(divide="ignore", invalid="ignore"):
                out[f"{name}_relative"] = np.where(b > 0, x / b - 1, np.nan)
        return out

    point = stats(arrays.mean(axis=1))
    boot = stats(arrays[:, idx].mean(axis=2))  # (4, n_boot) -> per stat (n_boot,)
    tail = (1 - level) / 2
    out: dict[str, float] = {}
    for key, value in point.items():
        out[key] = float(value)
        lo, hi = np.nanquantile(boot[key], [tail, 1 - tail])
        out[f"{key}_lo"], out[f"{key}_hi"] = float(lo), float(hi)
    return out


def per_seed(
    outcomes: Mapping[str, Mapping[str, np.ndarray]], seeds: Sequence[int]
) -> pd.DataFrame:
    """Win rate per (arm, group, seed) from outcomes whose seeds are consecutive blocks of
    equal size (the notebook's order): the bootstrap over (seed, prompt) rows treats rows as
    independent, so the seeds' agreement is worth reading beside it."""
    rows = []
    for arm, by_group in outcomes.items():
        for group, wins in by_group.items():
            blocks = np.split(np.asarray(wins, dtype=np.float64), len(seeds))
            for seed, block in zip(seeds, blocks, strict=True):
                rows.append({"method": arm, "group": group, "seed": seed, "win_rate": block.mean()})
    return pd.DataFrame(rows)


def claims(gain: Mapping[str, float]) -> dict[str, bool]:
    """The paper's three claims for one MaxMin arm, each only where it means something:
    a relative gain counts when it passes the paper's threshold *and* its CI excludes 0;
    "majority not hurt" is reported only when the minority gained (alone it would reward a
    MaxMin that simply kept serving the majority)."""
    out = {
        "minority_gain_gt_33pct": gain["minority_relative"] > 0.33
        and gain["minority_relative_lo"] > 0,
        "average_gain_gt_16pct": gain["average_relative"] > 0.16
        and gain["average_relative_lo"] > 0,
    }
    if gain["minority_relative_lo"] > 0:
        out["majority_not_hurt"] = gain["majority_points_lo"] > -NON_INFERIORITY_MARGIN
    return out


def verdict(gain: Mapping[str, float], power: bool) -> str:
    """The notebook's pre-registered rule for one MaxMin arm: ``no power`` when the single
    arm did not beat SFT for the majority (PPO moved nothing the evaluation can see);
    ``reproduced`` when all three claims hold; ``partly`` when the minority gained (CI
    above 0) but another claim fails; else ``not reproduced``."""
    if not power:
        return "no power"
    c = claims(gain)
    if all(c.values()) and len(c) == 3:
        return "reproduced"
    if gain["minority_relative_lo"] > 0:
        return "partly"
    return "not reproduced"


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
