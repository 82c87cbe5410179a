"""PPO with TRL 1.12 (``trl.experimental.ppo``), in resumable chunks.

TRL's ``PPOTrainer.train()`` always starts at update 0 and has no resume. A run of
``n_updates`` is therefore split into chunks of ``checkpoint_every`` updates; each chunk
builds a fresh trainer around the *same* policy and value model, loads the Adam state of
the previous chunk, and seeds everything (prompt shuffling, sampling) from
``(seed, chunk index)``. After each chunk the policy, value model, optimizer state and the
per-update log go to ``workdir/chunk-XXXX`` (written atomically). Rerunning a killed run
loads the last complete chunk and continues; because a chunk's randomness depends only on
its index and its starting state is restored exactly, the result equals an uninterrupted run
(tested).

Pitfalls handled here: precision by the project's rule (bf16 on a bf16 GPU, fp32 otherwise,
whatever the launcher: :mod:`pluralign.pipeline.device`); PAD != EOS;
``stop_token="eos"``; rollout batch = per-device batch (no accumulation); constant lr;
``num_sample_generations=0``; the value model is the policy's architecture with a new
one-output head; TRL's batch arithmetic checked before any trainer is built
(:func:`check_batch`).

Several processes (``accelerate launch``, DDP): every rank runs this function on the same
``workdir``; one update consumes ``batch_size`` prompts in all, ``batch_size / ranks`` per
rank, so a run means the same on one GPU or eight; only the main process writes
checkpoints, and all ranks wait for it before going on, so a resume reads one consistent
state.

LoRA (peft) policy: the reference is the policy with its adapter disabled (TRL's
``null_ref_context``; no second copy of a 7B base), and checkpoints hold the adapter
weights only. A peft policy needs an explicit ``value_model`` (e.g. the base checkpoint with LoRA).
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import PreTrainedModel, TrainerCallback

from pluralign._typing import TextScore
from pluralign.core.maxmin import Aggregation, Normalizer
from pluralign.pipeline.device import pin_mixed_precision
from pluralign.pipeline.io import save_dir_atomic, set_seed, write_json_atomic
from pluralign.training._hf import quiet
from pluralign.training.generation import GenerationSettings
from pluralign.training.reward_adapter import TextRewardAdapter


@dataclass(frozen=True)
class PPOSettings:
    """The PPO knobs of a notebook's ``ppo:`` params section (names follow TRL's
    ``PPOConfig``; ``n_updates`` and ``batch_size`` give ``total_episodes``). The response
    length and sampling temperature come from the stage's :class:`GenerationSettings`."""

    n_updates: int
    batch_size: int
    """Prompts per PPO update, over all processes."""
    num_mini_batches: int = 2
    num_ppo_epochs: int = 2
    learning_rate: float = 2e-4
    kl_coef: float = 0.05
    checkpoint_every: int = 10
    whiten_rewards: bool = False
    """TRL's per-batch whitening of the advantages' rewards (the paper's "reward scaling")."""

    def __post_init__(self) -> None:
        for name in ("n_updates", "batch_size", "num_mini_batches", "num_ppo_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.num_mini_batches:
            raise ValueError("batch_size must be a multiple of num_mini_batches")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        check_batch(self, processes=1)


#: TRL 1.12's ``PPOTrainer`` asserts this per-rank mini-batch when it whitens rewards.
MIN_WHITENING_BATCH = 8


def check_batch(settings: PPOSettings, processes: int) -> int:
    """TRL 1.12's batch arithmetic for ``processes`` ranks, checked before anything loads
    (its trainer asserts it only once the models are built); returns the per-rank batch.

    Per rank: ``batch_size / processes`` prompts, cut into ``num_mini_batches``; whitening
    needs mini-batches of at least :data:`MIN_WHITENING_BATCH` (TRL ``ppo_trainer.py``)."""
    if processes < 1 or settings.batch_size % processes:
        raise ValueError(
            f"ppo.batch_size {settings.batch_size} must be a multiple of the {processes} "
            "processes: each rank takes an equal share of an update's prompts"
        )
    local = settings.batch_size // processes
    if local % settings.num_mini_batches:
        raise ValueError(
            f"ppo: the per-rank batch {local} (batch_size {settings.batch_size} / {processes} "
            f"processes) must be a multiple of num_mini_batches {settings.num_mini_batches}"
        )
    mini = local // settings.num_mini_batches
    if settings.whiten_rewards and mini < MIN_WHITENING_BATCH:
        raise ValueError(
            f"ppo: whiten_rewards needs per-rank mini-batches of >= {MIN_WHITENING_BATCH} "
            f"(TRL asserts it); batch_size {settings.batch_size} / {processes} processes / "
            f"num_mini_batches {settings.num_mini_batches} gives {mini}: lower "
            "num_mini_batches, raise batch_size, or turn whitening off"
        )
    return local


class _Collect(TrainerCallback):
    """Keeps every per-update metrics dict TRL logs."""

    def __init__(self) -> None:
        self.logs: list[dict[str, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "objective/kl" in logs:
            self.logs.append(dict(logs))


def value_model_from(policy: PreTrainedModel) -> PreTrainedModel:
    """A value model with the policy's architecture and weights and a fresh scalar head.

    Built from the in-memory state dict, not a saved folder: under several processes
    ``save_pretrained`` writes on rank 0 only, so other ranks would find an empty folder.
    The result (and the RNG draws for the new head) equals a save/``from_pretrained`` round
    trip (checked in the tests). The state dict is cloned: ``from_pretrained`` adopts the
    given tensors, and a critic sharing storage with the policy would train the policy's
    weights with the value loss (this bug moved stages 04 and 06 once).
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    config = copy.deepcopy(policy.config)
    config.num_labels = 1
    config.pad_token_id = policy.config.pad_token_id
    cls = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
    weights = {name: tensor.detach().clone() for name, tensor in policy.state_dict().items()}
    return cls.from_pretrained(None, config=config, state_dict=weights)


def _ddp_safe_trainer():
    """TRL 1.12's ``PPOTrainer`` with a peft policy working under DDP.

    For a peft policy the reference pass runs the policy with its adapter disabled and reads
    ``self.model.policy`` (``null_ref_context`` and ``train``). Under several processes
    ``self.model`` is the ``DistributedDataParallel`` wrapper, which has no ``policy``, so
    TRL fails with an AttributeError. The reference pass is a no-grad forward that needs no
    gradient sync, so exposing the wrapped model's policy on the wrapper is enough.
    """
    from trl.experimental.ppo import PPOTrainer

    class DDPSafePPOTrainer(PPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            inner = self.accelerator.unwrap_model(self.model)
            if inner is not self.model and not hasattr(self.model, "policy"):
                # object.__setattr__: keep it out of the wrapper's registered submodules.
                object.__setattr__(self.model, "policy", inner.policy)

    return DDPSafePPOTrainer


def _is_peft(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # peft is optional for full fine-tuning
        return False
    return isinstance(model, PeftModel)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps: the adapter (and saved heads) of a peft model, else all."""
    if _is_peft(model):
        from peft import get_peft_model_state_dict

        return get_peft_model_state_dict(model)
    return model.state_dict()


def _restore(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    if _is_peft(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, state)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"checkpoint keys the model lacks: {result.unexpected_keys[:5]}")
    else:
        model.load_state_dict(state)


def _chunks(settings: PPOSettings) -> list[int]:
    n, k = settings.n_updates, settings.checkpoint_every
    return [min(k, n - start) for start in range(0, n, k)]


def completed_updates(workdir: str | Path, settings: PPOSettings) -> int:
    """PPO updates covered by a run's complete checkpoints in ``workdir`` (0 if none)."""
    sizes = _chunks(settings)
    return sum(sizes[: _last_complete(Path(workdir), len(sizes)) + 1])


def _chunk_dir(workdir: Path, index: int) -> Path:
    return workdir / f"chunk-{index:04d}"


def _last_complete(workdir: Path, n_chunks: int) -> int:
    """Index of the last chunk whose checkpoint is complete, -1 if none."""
    done = -1
    for i in range(n_chunks):
        if (_chunk_dir(workdir, i) / "log.json").is_file():
            done = i
        else:
            break
    return done


def run_ppo(
    policy: PreTrainedModel,
    tokenizer,
    prompts: Dataset,
    reward: TextRewardAdapter,
    settings: PPOSettings,
    generation: GenerationSettings,
    workdir: str | Path,
    seed: int,
    progress: bool = False,
    on_checkpoint: Callable[[PreTrainedModel, int], dict[str, float]] | None = None,
    value_model: PreTrainedModel | None = None,
) -> tuple[PreTrainedModel, pd.DataFrame]:
    """Train ``policy`` (in place) with PPO on ``prompts`` (column ``input_ids``, all the same
    length) against ``reward``; returns the policy and one row per update (TRL's metrics plus
    the adapter's group means). ``workdir`` holds the checkpoints: reuse it to resume.

    ``on_checkpoint(policy, updates_done)`` runs after each chunk, before its checkpoint is
    written; its values join that chunk's last log row (e.g. ground truth measured during
    training), so they survive a resume like the rest of the log.

    ``value_model``: the critic to train (e.g. a LoRA sequence classifier loaded from the
    policy's base checkpoint); required for a peft policy, else :func:`value_model_from`."""
    from accelerate import PartialState
    from trl.experimental.ppo import PPOConfig

    trainer_class = _ddp_safe_trainer()
    state = PartialState(cpu=not torch.cuda.is_available())
    local_batch = check_batch(settings, state.num_processes)
    bf16 = pin_mixed_precision() == "bf16"

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lengths = {len(x) for x in prompts["input_ids"]}
    if len(lengths) != 1:
        raise ValueError(f"prompts must all have one length (got {sorted(lengths)})")
    if next(iter(lengths)) != reward.context_length:
        raise ValueError("reward.context_length must equal the prompt length")
    limit = getattr(policy.config, "n_positions", None) or getattr(
        policy.config, "max_position_embeddings", None
    )
    if limit is not None and reward.context_length + generation.max_new_tokens > limit:
        raise ValueError(
            f"prompt ({reward.context_length}) + max_new_tokens ({generation.max_new_tokens}) "
            f"tokens exceed the policy's {limit} positions"
        )
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError("PAD must differ from EOS, or EOS is masked out of the PPO loss")
    sizes = _chunks(settings)
    meta = {
        "settings": asdict(settings),
        "generation": asdict(generation),
        "seed": seed,
        "n_prompts": len(prompts),
        "precision": "bf16" if bf16 else "fp32",  # a checkpoint resumes in its own precision
    }
    meta_file = workdir / "run.json"
    if meta_file.is_file() and _with_defaults(json.loads(meta_file.read_text())) != meta:
        raise ValueError(f"{workdir} holds checkpoints of a different run: {meta_file}")
    if state.is_main_process:
        write_json_atomic(meta_file, meta)
    state.wait_for_everyone()

    peft_policy = _is_peft(policy)
    ref = None if peft_policy else copy.deepcopy(policy).eval()
    if value_model is not None:
        value = value_model
    elif peft_policy:  # its saved folder holds the adapter only, not a model to copy
        raise ValueError("a peft (LoRA) policy needs an explicit value_model")
    else:
        value = value_model_from(policy)
    start = _last_complete(workdir, len(sizes)) + 1
    optimizer_state = None
    logs: list[dict[str, Any]] = []
    if start > 0:  # resume
        ck = _chunk_dir(workdir, start - 1)
        _restore(policy, _load(ck / "policy.pt"))
        _restore(value, _load(ck / "value.pt"))
        optimizer_state = _load(ck / "optimizer.pt")
        logs = json.loads((ck / "log.json").read_text())
    bar = tqdm(
        total=settings.n_updates,
        initial=sum(sizes[:start]),
        desc="PPO updates",
        disable=not progress,
        mininterval=5,
    )
    for index in range(start, len(sizes)):
        chunk_seed = seed * 100_003 + index
        set_seed(chunk_seed)
        collect = _Collect()
        with tempfile.TemporaryDirectory(prefix="pluralign-ppo-") as tmp:
            config = PPOConfig(
                output_dir=tmp,
                seed=chunk_seed,
                per_device_train_batch_size=local_batch,
                gradient_accumulation_steps=1,
                local_rollout_forward_batch_size=local_batch,  # one reward call per rank
                num_mini_batches=settings.num_mini_batches,
                num_ppo_epochs=settings.num_ppo_epochs,
                learning_rate=settings.learning_rate,
                lr_scheduler_type="constant",
                kl_coef=settings.kl_coef,
                whiten_rewards=settings.whiten_rewards,
                response_length=generation.max_new_tokens,
                temperature=generation.temperature,
                stop_token="eos",
                total_episodes=sizes[index] * settings.batch_size,
                num_sample_generations=0,
                logging_steps=1,
                save_strategy="no",
                report_to=[],
                bf16=bf16,
                use_cpu=not torch.cuda.is_available(),
                disable_tqdm=True,
            )
            trainer = trainer_class(
                args=config,
                processing_class=tokenizer,
                model=policy,
                ref_model=ref,
                reward_model=reward,
                train_dataset=prompts,
                value_model=value,
                callbacks=[collect],
            )
            quiet(trainer)
            if optimizer_state is not None:
                trainer.optimizer.load_state_dict(optimizer_state)
            n_before = len(reward.history)
            trainer.train()
            optimizer_state = trainer.optimizer.state_dict()
        groups = reward.history[n_before:]
        if len(groups) != len(collect.logs):
            raise RuntimeError("reward calls and PPO updates are out of step")
        for trl_log, group_log in zip(collect.logs, groups, strict=True):
            logs.append({"update": len(logs) + 1, "chunk": index, **trl_log, **group_log})
        if on_checkpoint is not None:
            logs[-1].update(on_checkpoint(policy, len(logs)))
            policy.train()
        if state.is_main_process:
            _save_chunk(_chunk_dir(workdir, index), policy, value, optimizer_state, logs)
        state.wait_for_everyone()
        bar.update(sizes[index])
    bar.close()
    policy.eval()
    return policy, pd.DataFrame(logs)


def _with_defaults(meta: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's run record, read as today's: runs before the precision rule were fp32."""
    return {**meta, "precision": meta.get("precision", "fp32")}


def _load(path: Path) -> Any:
    """Checkpoint tensors written by this module; ``weights_only`` refuses pickled code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _save_chunk(path: Path, policy, value, optimizer_state, logs) -> None:
    def write(tmp: Path) -> None:
        torch.save(_state(policy), tmp / "policy.pt")
        torch.save(_state(value), tmp / "value.pt")
        torch.save(optimizer_state, tmp / "optimizer.pt")
        (tmp / "log.json").write_text(json.dumps(logs))

    save_dir_atomic(path, write)


def clear_checkpoints(workdir: str | Path) -> None:
    """Remove a run's checkpoints (after its results are saved)."""
    shutil.rmtree(workdir, ignore_errors=True)


def train_policy(
    policy: PreTrainedModel,
    tokenizer,
    prompts: Dataset,
    rewards: dict[str, TextScore],
    reference_texts: Sequence[str],
    how: Aggregation,
    settings: PPOSettings,
    generation: GenerationSettings,
    workdir: str | Path,
    seed: int,
    temperature: float = 0.0,
    progress: bool = False,
    on_checkpoint: Callable[[PreTrainedModel, int], dict[str, float]] | None = None,
    value_model: PreTrainedModel | None = None,
) -> tuple[PreTrainedModel, pd.DataFrame, TextRewardAdapter]:
    """PPO on ``rewards`` aggregated by ``how`` (MaxMin or single); each reward is z-scored
    on the reference policy's samples ``reference_texts`` first, so "worst-off" compares
    groups on one scale. Returns (policy, per-update log, adapter). ``temperature`` is the
    soft-min's; ``value_model``: see :func:`run_ppo` (required for a LoRA policy)."""
    norms = {g: Normalizer.fit(fn(list(reference_texts))) for g, fn in rewards.items()}
    context = len(prompts[0]["input_ids"])
    adapter = TextRewardAdapter(tokenizer, context, rewards, norms, how, temperature)
    policy, log = run_ppo(
        policy,
        tokenizer,
        prompts,
        adapter,
        settings,
        generation,
        workdir,
        seed,
        progress,
        on_checkpoint,
        value_model=value_model,
    )
    return policy, log, adapter
