"""MaxMin-RLHF at 7B scale (Tulu2-7B on P-SOUPS, LoRA) and its cpu Llama proxy.

One code path for both profiles (notebook 05). What differs is data and size:

* **policy**: ``llama_proxy``, a small ``LlamaForCausalLM`` pretrained here with notebook
  00's recipe on the packaged tokenizer, or a hub model (``allenai/tulu-2-7b``, pinned
  revision, optional 8/4-bit bases); the trained policy is a LoRA adapter (r = 16) and the
  reference is the same network with the adapter disabled;
* **reward models**: the backbone as a one-logit sequence classifier with LoRA (r = 8) and a
  trained ``score`` head, trained by TRL's ``RewardTrainer`` (single pooled model, hard-EM
  mixture, or one per true group);
* **data**: pairs of proxy samples labelled by simulated users of two P-SOUPS dimensions
  (rule-based ground truth, :mod:`pluralign.psoups`), or the P-SOUPS files cut into users.

A PPO run ("arm") is described by a JSON :class:`ArmSpec` and trained by :func:`train_arm`,
in the notebook's process or, for several GPUs, by ``accelerate launch -m
pluralign.maxmin_tulu2 spec.json`` (:func:`launch_arm`); either way the adapter and the log
land in ``spec.output_dir`` and the notebook evaluates from there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from datasets import Dataset

from pluralign import maxmin_gpt2 as mg
from pluralign.assets import AssetError, load_causal_lm, load_sequence_classifier
from pluralign.config import PolicyPretrainConfig
from pluralign.lora import policy_lora_config, quantization_config, reward_lora_config, with_lora
from pluralign.psoups import DIMENSIONS, _no_load_ping, dimension_scores, load_psoups_file
from pluralign.runlog import save_dir_atomic, write_json_atomic

GROUPS = ("majority", "minority")
#: Tulu 2's chat format (allenai/tulu-2-7b model card); the cpu proxy reads raw text.
TULU_TEMPLATE = "<|user|>\n{prompt}\n<|assistant|>\n"
PROXY = "llama_proxy"


# --------------------------------------------------------------------------- models


def proxy_pretrain_config(recipe: PolicyPretrainConfig, steps: int) -> PolicyPretrainConfig:
    """Notebook 00's recipe for the proxy: same data, tokenizer and schedule, ``steps`` long.
    ``init_from`` is filled in by :func:`pretrain_proxy` (the freshly built Llama folder)."""
    if steps < 1:
        raise ValueError(f"proxy_pretrain_steps must be >= 1, got {steps}")
    return dataclasses.replace(
        recipe, max_steps=steps, warmup_steps=min(recipe.warmup_steps, steps)
    )


def pretrain_proxy(cfg: Any, recipe: PolicyPretrainConfig, model_dir: str | Path):
    """Build the Llama proxy (``cfg.proxy_*`` shape) and pretrain it with notebook 00's
    :func:`pluralign.pretrain.train_and_evaluate`; the model lands in ``model_dir``."""
    from pluralign.assets import load_gpt2_tokenizer
    from pluralign.llama_proxy import build_llama_proxy
    from pluralign.pretrain import train_and_evaluate

    tok = load_gpt2_tokenizer(recipe.tokenizer, recipe.max_merges)
    model = build_llama_proxy(
        tok,
        seed=cfg.seed,
        hidden_size=cfg.proxy_hidden_size,
        n_layers=cfg.proxy_layers,
        n_heads=cfg.proxy_heads,
        intermediate_size=cfg.proxy_intermediate_size,
        max_positions=recipe.block_size,
    )
    with tempfile.TemporaryDirectory(prefix="llama-proxy-init-") as init:
        model.save_pretrained(init, safe_serialization=True)
        run = dataclasses.replace(
            proxy_pretrain_config(recipe, cfg.proxy_pretrain_steps), init_from=init
        )
        return train_and_evaluate(run, model_dir)


def is_hub_name(name_or_path: str) -> bool:
    """``owner/name`` that is not a local path (a missing local file must say "not found",
    not "pin a revision")."""
    text = str(name_or_path)
    path = Path(text)
    return (
        not path.exists()
        and not text.startswith((".", "/", "~"))
        and text.count("/") == 1
        and path.suffix not in {".json", ".jsonl", ".csv", ".parquet"}
    )


def require_pinned(name_or_path: str, revision: str | None, what: str) -> None:
    """A hub source needs a pinned revision (a re-upload must not change results silently);
    a local path must not have one."""
    if not is_hub_name(name_or_path) and revision:
        raise ValueError(f"{what}: {name_or_path} is a local path; its revision must be null")
    if is_hub_name(name_or_path) and not revision:
        raise ValueError(
            f"{what}: {name_or_path} is a hub name: pin a revision (commit or tag) in params"
        )


@dataclass(frozen=True)
class BackboneSpec:
    """How to load the shared backbone of policy, value and reward models (JSON-able)."""

    source: str
    """A local folder or a hub name."""
    revision: str | None = None
    load_in_bits: int | None = None
    bf16: bool = False
    gradient_checkpointing: bool = False

    def kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.revision:
            kw["revision"] = self.revision
        if self.bf16:
            kw["dtype"] = torch.bfloat16
        quant = quantization_config(self.load_in_bits)
        if quant is not None:
            kw["quantization_config"] = quant
            kw["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
        return kw


def backbone_spec(cfg: Any, proxy_dir: str | Path) -> BackboneSpec:
    """The policy backbone of ``cfg``: the pretrained proxy folder or the pinned hub model."""
    if cfg.policy == PROXY:
        return BackboneSpec(
            str(proxy_dir), None, cfg.load_in_bits, cfg.bf16, cfg.gradient_checkpointing
        )
    require_pinned(cfg.policy, cfg.policy_revision, "maxmin_tulu2.policy")
    return BackboneSpec(
        cfg.policy, cfg.policy_revision, cfg.load_in_bits, cfg.bf16, cfg.gradient_checkpointing
    )


def _prepare(model, spec: BackboneSpec, pad_token_id: int):
    model.config.pad_token_id = pad_token_id
    if spec.load_in_bits:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=spec.gradient_checkpointing
        )
    elif spec.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()  # LoRA: the frozen embeddings give no grad
    return model


def load_base_policy(spec: BackboneSpec, pad_token_id: int):
    """The frozen causal LM (reference / SFT policy), no adapter."""
    model = load_causal_lm(spec.source, **spec.kwargs())
    model.config.pad_token_id = pad_token_id
    model.generation_config.pad_token_id = pad_token_id
    return model


def lora_policy(
    spec: BackboneSpec, pad_token_id: int, r: int, adapter_dir: str | Path | None = None
):
    """The policy to train: the backbone with a fresh LoRA adapter (or the one saved in
    ``adapter_dir``, for evaluation)."""
    base = _prepare(load_base_policy(spec, pad_token_id), spec, pad_token_id)
    if adapter_dir is None:
        return with_lora(base, policy_lora_config(r=r))
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)


def lora_classifier(
    spec: BackboneSpec, pad_token_id: int, r: int, adapter_dir: str | Path | None = None
):
    """A reward or value model: the backbone with one logit, LoRA and a trained ``score``
    head (fresh, or loaded from ``adapter_dir``)."""
    base = load_sequence_classifier(spec.source, num_labels=1, **spec.kwargs())
    base = _prepare(base, spec, pad_token_id)
    if adapter_dir is None:
        return with_lora(base, reward_lora_config(r=r))
    from peft import PeftModel

    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).eval()


def load_chat_tokenizer(source: str, revision: str | None = None):
    """The policy's tokenizer with left padding. Llama-2's has no PAD token; UNK pads then,
    because PAD must differ from EOS (PPO would mask EOS out of the loss otherwise)."""
    from transformers import AutoTokenizer

    local = Path(source).exists()
    try:
        tok = AutoTokenizer.from_pretrained(source, revision=revision, local_files_only=local)
    except (OSError, ValueError) as err:
        raise AssetError(f"{source}: cannot load tokenizer: {err}") from err
    tok.padding_side = "left"
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        if tok.unk_token_id is None or tok.unk_token_id == tok.eos_token_id:
            raise ValueError(f"{source}: no PAD token and no UNK distinct from EOS to pad with")
        tok.pad_token = tok.unk_token
    return tok


def save_adapter(model, folder: str | Path) -> Path:
    """Write a peft adapter (and its saved heads) atomically."""
    return save_dir_atomic(folder, lambda tmp: model.save_pretrained(tmp))


# --------------------------------------------------------------------------- prompts


def load_prompt_texts(
    name_or_path: str, revision: str | None, split: str, column: str
) -> list[str]:
    """Instruction texts from a local JSON/JSONL file or a pinned hub dataset; a row whose
    ``column`` is not non-empty text stops with the file, row and field named."""
    from datasets import load_dataset

    require_pinned(name_or_path, revision, "prompts")
    path = Path(name_or_path)
    local = not is_hub_name(name_or_path)
    where = str(path) if local else f"{name_or_path}@{revision}:{split}"
    try:
        with _no_load_ping(local):  # no download-count request for a local file
            if path.is_file():
                data = load_dataset("json", data_files=str(path), split="train")
            else:
                data = load_dataset(str(name_or_path), revision=revision, split=split)
    except Exception as err:  # datasets raises many types
        raise AssetError(f"{where}: cannot load: {err}") from err
    if column not in data.column_names:
        raise ValueError(f"{where}: no column {column!r} (columns: {data.column_names})")
    texts = data[column]
    for row, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{where}: row {row}: field {column!r} is empty or not text")
    return list(texts)


def chat_prompt_ids(
    tokenizer, texts: Sequence[str], n_tokens: int, template: str = TULU_TEMPLATE
) -> list[list[int]]:
    """Templated prompts left-padded with PAD to ``n_tokens`` ids (PPO batches one length);
    prompts longer than that are dropped, not cut, so no instruction loses its start."""
    if tokenizer.padding_side != "left":
        raise ValueError("chat prompts need a left-padding tokenizer")
    out = []
    for text in texts:
        ids = tokenizer(template.format(prompt=text.strip()))["input_ids"]
        if len(ids) <= n_tokens:
            out.append([tokenizer.pad_token_id] * (n_tokens - len(ids)) + ids)
    return out


def sample(
    policy, tokenizer, prompt_ids: Sequence[Sequence[int]], max_new_tokens, temperature, seed
):
    """``maxmin_gpt2.sample_rollouts`` for left-padded prompts: the left padding is stripped
    before generation (so it is masked, not attended) and restored in ``prompt_ids``, so
    every rollout keeps the one prompt length that ``kl_to_reference`` needs. Only leading
    PADs go: where UNK pads (:func:`load_chat_tokenizer`), an UNK inside a prompt stays."""
    pad = tokenizer.pad_token_id

    def strip_left(ids: Sequence[int]) -> list[int]:
        ids = list(ids)
        start = next((i for i, t in enumerate(ids) if t != pad), len(ids))
        return ids[start:]

    stripped = [strip_left(p) for p in prompt_ids]
    roll = mg.sample_rollouts(policy, tokenizer, stripped, max_new_tokens, temperature, seed)
    return dataclasses.replace(roll, prompt_ids=[list(p) for p in prompt_ids])


# --------------------------------------------------------------------------- preferences


def group_truth(texts: Sequence[str], majority: str, minority: str) -> pd.DataFrame:
    """Each group's rule-based ground truth of each response (columns ``GROUPS``)."""
    scores = dimension_scores(texts)
    return pd.DataFrame({"majority": scores[majority], "minority": scores[minority]})


def psoups_users(
    files: Mapping[str, Dataset],
    users: Mapping[str, int],
    per_user: int,
    seed: int,
    template: str = TULU_TEMPLATE,
) -> tuple[list[str], list[str], np.ndarray, np.ndarray, tuple[str, ...]]:
    """Cut each dimension's P-SOUPS comparisons into ``users[dim]`` users of ``per_user``
    distinct comparisons each (the release has no user ids; EM needs them).

    Returns (chosen, rejected, user id per comparison, group of each user, group names);
    texts are ``template(prompt) + answer``, the form the reward models score."""
    chosen, rejected, user_of, user_group = [], [], [], []
    groups = tuple(users)
    rng = np.random.default_rng(seed)
    for g, dim in enumerate(groups):
        data = files[dim]
        need = users[dim] * per_user
        if need > len(data):
            raise ValueError(
                f"{dim}: {users[dim]} users x {per_user} need {need} rows, file has {len(data)}"
            )
        rows = rng.permutation(len(data))[:need]
        for j, row in enumerate(rows):
            rec = data[int(row)]
            prompt = template.format(prompt=rec["prompt"].strip())
            chosen.append(prompt + rec["chosen"])
            rejected.append(prompt + rec["rejected"])
            user_of.append(len(user_group) + j // per_user)
        user_group += [g] * users[dim]
    return chosen, rejected, np.asarray(user_of), np.asarray(user_group), groups


def load_psoups(cfg: Any) -> dict[str, Dataset]:
    """The majority's and the minority's P-SOUPS files (hub-profile data)."""
    out = {}
    for dim in (cfg.majority, cfg.minority):
        if dim not in cfg.psoups_files:
            raise ValueError(f"maxmin_tulu2.psoups_files: no file for dimension {dim}")
        source = str(Path(cfg.preference_data) / cfg.psoups_files[dim])
        out[dim] = load_psoups_file(source, cfg.psoups_revision, "train", cfg.psoups_columns)
    return out


def check_dimensions(majority: str, minority: str) -> None:
    for dim in (majority, minority):
        if dim not in DIMENSIONS:
            raise ValueError(f"unknown P-SOUPS dimension {dim!r}; known: {list(DIMENSIONS)}")
    if majority == minority:
        raise ValueError("majority and minority must be different dimensions")


def opposed(majority: str, minority: str) -> bool:
    """True when the two ground truths are exact negatives (P1A/P1B, P2A/P2B, P3A/P3B)."""
    a, b = DIMENSIONS[majority], DIMENSIONS[minority]
    return a.scorer == b.scorer and a.sign == -b.sign


# --------------------------------------------------------------------------- PPO arms


@dataclass(frozen=True)
class ArmSpec:
    """Everything one PPO run needs, as plain data, so another process can run it."""

    name: str
    how: str
    """``single`` or a MaxMin aggregation of ``maxmin_rewards.aggregate``."""
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
    """``ppo_runner.PPOSettings`` fields."""
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
    resumes from ``spec.workdir`` (``ppo_runner`` checkpoints)."""
    from accelerate import PartialState

    from pluralign.assets import load_tokenizer
    from pluralign.ppo_runner import PPOSettings

    out = Path(spec.output_dir)
    if _done(out):
        return out
    state = PartialState(cpu=not torch.cuda.is_available())
    tok = load_tokenizer(spec.tokenizer_dir)
    pad = tok.pad_token_id
    rewards = {}
    for name, folder in spec.reward_adapters.items():
        model = lora_classifier(spec.backbone, pad, spec.value_lora_r, folder)
        rewards[name] = mg.reward_fn(model, tok, spec.rm_max_length)
    settings = PPOSettings(**spec.settings)

    def probe(policy, updates: int) -> dict[str, float]:
        roll = sample(
            policy,
            tok,
            spec.probe_ids,
            settings.response_length,
            settings.temperature,
            spec.seed + 5,
        )
        gt = group_truth(roll.continuations, spec.majority, spec.minority)
        return {f"gt_{g}": float(gt[g].mean()) for g in GROUPS}

    torch.manual_seed(spec.seed)
    policy = lora_policy(spec.backbone, pad, spec.policy_lora_r)
    value = lora_classifier(spec.backbone, pad, spec.value_lora_r)
    t0 = time.perf_counter()
    policy, log, _ = mg.train_policy(
        policy,
        tok,
        Dataset.from_dict({"input_ids": spec.prompt_ids}),
        rewards,
        spec.reference_texts,
        spec.how,
        settings,
        spec.workdir,
        spec.seed,
        progress=progress,
        on_checkpoint=probe,
        value_model=value,
    )
    seconds = time.perf_counter() - t0
    if state.is_main_process:
        save_adapter(policy, out / "adapter")
        log = log.assign(run=spec.name, method=spec.how, seed=spec.seed)
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
        "pluralign.maxmin_tulu2",
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


def headline(
    outcomes: Mapping[str, Mapping[str, np.ndarray]], n_boot: int, seed: int
) -> pd.DataFrame:
    """The paper's table: per method and group, the win rate against the SFT policy with a
    bootstrap 95% CI over (seed, prompt) outcomes, and the average across groups.

    ``outcomes[method][group]``: win outcomes (1 win, 0.5 tie, 0 loss) of every seed's
    answers, seeds concatenated in one order for all groups (so the average's bootstrap
    resamples the same (seed, prompt) rows for both groups)."""
    rows = []
    for method, by_group in outcomes.items():
        n = {len(v) for v in by_group.values()}
        if len(n) != 1:
            raise ValueError(f"{method}: groups have different numbers of outcomes {n}")
        stacked = np.column_stack([np.asarray(by_group[g], dtype=float) for g in by_group])
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, stacked.shape[0], size=(n_boot, stacked.shape[0]))
        boots = stacked[idx].mean(axis=1)  # (n_boot, groups)
        for j, g in enumerate([*by_group, "average"]):
            vals = boots[:, j] if j < stacked.shape[1] else boots.mean(axis=1)
            mean = stacked[:, j].mean() if j < stacked.shape[1] else stacked.mean()
            lo, hi = np.quantile(vals, [0.025, 0.975])
            rows.append(
                {
                    "method": method,
                    "group": g,
                    "win_rate": float(mean),
                    "lo": float(lo),
                    "hi": float(hi),
                }
            )
    return pd.DataFrame(rows)


def gains(table: pd.DataFrame, base: str, new: str) -> dict[str, float]:
    """``new`` minus ``base`` win rate per group, in points and relative to ``base`` (the
    paper's "> 16% average, > 33% minority" are relative improvements)."""
    wide = table.pivot(index="group", columns="method", values="win_rate")
    out = {}
    for g, row in wide.iterrows():
        out[f"{g}_gain_points"] = float(row[new] - row[base])
        out[f"{g}_gain_relative"] = float(row[new] / row[base] - 1) if row[base] > 0 else math.nan
    return out


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
