"""``maxmin_tulu2`` (notebook 05): MaxMin-RLHF at 7B scale, or its cpu Llama proxy."""

from __future__ import annotations

from dataclasses import dataclass

from pluralign.config import StageConfig


@dataclass(frozen=True, kw_only=True)
class Config(StageConfig):
    """Single-reward vs MaxMin LoRA PPO on P-SOUPS preference dimensions.

    One code path for both profiles: ``policy`` is ``llama_proxy`` (a small Llama-2-shaped
    model pretrained here with notebook 00's recipe) or a hub model such as
    ``allenai/tulu-2-7b``; the data are built offline or loaded from pinned hub revisions.
    """

    # ---- models
    policy: str
    """``llama_proxy`` (pretrained in this stage) or a hub causal LM (``allenai/tulu-2-7b``)."""
    policy_revision: str | None
    """Pinned commit/tag of a hub policy (``None`` for the proxy)."""
    proxy_hidden_size: int
    proxy_layers: int
    proxy_heads: int
    proxy_intermediate_size: int
    proxy_pretrain_steps: int
    """Steps of notebook 00's recipe (``policy_pretrain`` params) for the proxy."""
    load_in_bits: int | None
    """8 or 4: bitsandbytes quantisation of the frozen bases (GPU only); ``None``: bf16/fp32."""
    bf16: bool
    gradient_checkpointing: bool

    # ---- data
    preference_data: str
    """``synthetic`` (pairs of proxy samples labelled by simulated users of the dimensions)
    or a P-SOUPS folder/hub dataset with one data file per dimension (``psoups_files``)."""
    psoups_revision: str | None
    psoups_files: dict[str, str]
    """Dimension -> data file inside ``preference_data`` (hub/folder profile only)."""
    psoups_columns: dict[str, str]
    """Standard column (prompt/chosen/rejected) -> the file's column."""
    ppo_prompts: str
    """``imdb`` (review openings, cpu) or a hub instruction set (``vicgalle/alpaca-gpt4``)."""
    ppo_prompts_revision: str | None
    ppo_prompt_column: str
    eval_prompts: str
    """``imdb`` or a hub evaluation set (Koala: ``HuggingFaceH4/koala``)."""
    eval_prompts_revision: str | None
    eval_prompts_split: str
    eval_prompt_column: str
    prompt_tokens: int
    """Prompt length in tokens (prompts are cut or left-padded to it: PPO batches one length)."""
    max_new_tokens: int
    temperature: float
    n_pref_prompts: int
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
    rm_epochs: float
    rm_lr: float
    rm_batch_size: int
    rm_max_length: int
    em_iters: int

    # ---- PPO
    ppo_updates: int
    ppo_batch_size: int
    ppo_mini_batches: int
    ppo_epochs: int
    ppo_lr: float
    kl_coef: float
    target_kl: float
    """The paper's adaptive-KL target; TRL 1.12's PPO has a constant ``kl_coef`` only, so
    this is recorded, reported and not used (see the notebook)."""
    whiten_rewards: bool
    checkpoint_every: int
    seeds: list[int]
    launcher: str | None
    """``None``: train in the notebook's process (cpu, one GPU). Else an accelerate config
    (``configs/accelerate/multi_gpu.yaml``, ``deepspeed_zero3.yaml``): each PPO run is then
    ``accelerate launch --config_file <launcher> -m pluralign.maxmin_tulu2 <arm spec>``."""

    # ---- evaluation
    judge: str
    """``ground_truth`` (the dimensions' rule-based scores), ``reward_model`` (each group's
    reward model trained on its own data) or ``endpoint`` (an OpenAI-compatible chat model;
    URL and key from PLURALIGN_JUDGE_URL / PLURALIGN_JUDGE_KEY, never from params)."""
    judge_model: str | None
    """The endpoint's model name (``endpoint`` judge only)."""
    n_boot: int
