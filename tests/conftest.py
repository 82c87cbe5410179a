"""Shared fixtures: a tiny params file that runs every stage in seconds."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import yaml
from transformers import GPT2Config, GPT2LMHeadModel

TINY_PARAMS = {
    "profile": "cpu",
    "policy_pretrain": {
        "seed": 0,
        "n_layer": 1,
        "n_embd": 32,
        "n_head": 2,
        "block_size": 32,
        "short_doc_fraction": 0.5,
        "short_max_sentences": 3,
        "logging_steps": 1,
        "n_eval_prompts": 6,
        "prompt_tokens": 4,
        "max_new_tokens": 6,
        "temperature": 0.7,
        "cpu": {
            "init_from": "scratch",
            "tokenizer": "packaged",
            "max_merges": 500,
            "imdb": "packaged",
            "train_docs": 120,
            "eval_docs": 20,
            "batch_size": 4,
            "max_steps": 8,
            "learning_rate": 3.0e-3,
            "warmup_steps": 1,
            "weight_decay": 0.0,
            "bf16": False,
        },
        "paper": {"init_from": "gpt2", "tokenizer": "gpt2", "max_merges": None},
    },
    "sentiment_judge": {
        "seed": 0,
        "max_length": 32,
        "eval_max_length": 64,
        "warmup_ratio": 0.1,
        "eval_batch_size": 16,
        "cpu": {
            "base_model": "packaged-minilm",
            "imdb": "packaged",
            "train_imdb": 24,
            "train_rotten_tomatoes": 8,
            "eval_imdb": 16,
            "eval_rotten_tomatoes": 8,
            "batch_size": 8,
            "max_steps": 2,
            "learning_rate": 1.0e-4,
            "bf16": False,
        },
    },
    "clone_theory": {
        "seed": 0,
        "lam": 0.1,
        "n_samples": 20_000,
        "clone_k": 4,
        "clone_eps": 0.01,
        "delta": 0.05,
        "eps_grid": [0.05, 0.005],
        "k_max": 2,
        "n_reps": 1,
        "dim": 1,
        "m_grid": [10, 30],
        "grid_size": 50,
        "cluster_share": 0.7,
        "n_characterization": 6,
        "grid_per_axis": 3,
    },
    "weighted_mle": {
        "seed": 0,
        "imdb": "packaged",
        "encoder": "packaged",
        "snippets_per_theme": 6,
        "min_words": 8,
        "max_words": 30,
        "clone_theme": "visuals",
        "clones_per_snippet": 1,
        "clone_eps": 0.5,
        "pca_dim": 3,
        "n_comparisons": 200,
        "hidden": 8,
        "lr": 1.0e-4,
        "lr_deviation": 1.0e-2,
        "batch_size": 64,
        "n_steps": 10,
        "n_seeds": 2,
        "lam": 0.0,
        "tabular_lam": 1.0,
        "n_samples": 5_000,
        "n_samples_grid": [2_000],
    },
    "em_mixtures": {
        "seed": 0,
        "lam": 1.0,
        "n_restarts": 1,
        "n_seeds": 2,
        "planted_dim": 3,
        "planted_alternatives": 20,
        "planted_scale": 4.0,
        "planted_users": 8,
        "planted_heldout_users": 4,
        "planted_per_user_grid": [3, 6],
        "planted_per_user": 5,
        "planted_eta_grid": [0.25, 0.5],
        "planted_eta": 0.25,
        "select_true_k": 2,
        "select_candidates": [1, 2],
        "theory_responses": 5,
        "theory_dim": 2,
        "theory_scale": 2.0,
        "theory_beta": 0.5,
        "theory_eta_grid": [0.1, 0.5],
        "imdb": "packaged",
        "encoder": "packaged",
        "text_reviews": 300,
        "text_snippets": 20,
        "text_min_words": 4,
        "text_max_words": 40,
        "text_users_per_group": [2, 2, 2],
        "text_heldout_per_group": [1, 1, 1],
        "text_per_user_grid": [3, 5],
        "text_beta": 2.0,
        "text_pca_dims": [4],
        "neural_backbone": "packaged-minilm",
        "neural_per_user": 2,
        "neural_n_iter": 1,
        "neural_epochs": 1.0,
        "neural_lr": 5.0e-5,
        "neural_batch_size": 8,
        "neural_max_length": 32,
    },
    "maxmin_gpt2": {
        "seed": 0,
        "policy": "00_policy_pretrain",
        "judge": "00_sentiment_judge",
        "imdb": "packaged",
        "prompt_tokens": 4,
        "max_new_tokens": 6,
        "temperature": 0.7,
        "n_pref_prompts": 20,
        "n_ppo_prompts": 8,
        "n_eval_prompts": 6,
        "users_majority": 4,
        "users_minority": 2,
        "ratio_grid": [1, 2],
        "comparisons_per_user": 3,
        "label_beta": 3.0,
        "rm_backbone": "00_policy_pretrain",
        "rm_epochs": 1.0,
        "rm_lr": 1.0e-4,
        "rm_batch_size": 8,
        "rm_max_length": 16,
        "em_iters": 1,
        "ppo_updates": 2,
        "ppo_batch_size": 4,
        "ppo_mini_batches": 2,
        "ppo_epochs": 1,
        "ppo_lr": 1.0e-4,
        "kl_coef": 0.05,
        "kl_coef_high": 0.3,
        "softmin_temperature": 0.5,
        "checkpoint_every": 1,
        "seeds": [0],
        "n_boot": 50,
    },
    "inverse_alignment": {
        "seed": 0,
        "policy": "00_policy_pretrain",
        "judge": "00_sentiment_judge",
        "imdb": "packaged",
        "offline_data": "synthetic",
        "offline_revision": None,
        "prompt_tokens": 4,
        "max_new_tokens": 6,
        "temperature": 0.7,
        "n_offline_prompts": 12,
        "n_ppo_prompts": 8,
        "n_eval_prompts": 6,
        "n_ood_prompts": 6,
        "source_temperatures": [0.7, 1.3],
        "labeler_mix": {
            "sft_t0.7": {"sentiment": 0.7, "length": 0.3},
            "sft_t1.3": {"length": 0.5, "readability": 0.5},
            "human": {"readability": 0.6, "sentiment": 0.4},
            "perturbed": {"length": 0.5, "readability": 0.5},
        },
        "label_noise": 0.1,
        "truth": "sentiment",
        "rm_backbone": "00_policy_pretrain",
        "rm_epochs": 1.0,
        "rm_lr": 1.0e-4,
        "rm_batch_size": 8,
        "rm_max_length": 16,
        "rules": ["P1", "P2", "P3", "P4", "random"],
        "select_k": 6,
        "select_threshold": 0.5,
        "refit_every": 1,
        "refit_lr": 1.0e-4,
        "refit_epochs": 1.0,
        "ppo_updates": 2,
        "ppo_batch_size": 4,
        "ppo_mini_batches": 2,
        "ppo_epochs": 1,
        "ppo_lr": 1.0e-4,
        "kl_coef": 0.05,
        "checkpoint_every": 1,
        "seeds": [0, 1],
        "convergence_margin": 0.05,
        "n_boot": 50,
    },
    "maxmin_tulu2": {
        "seed": 0,
        "majority": "P1A",
        "minority": "P1B",
        "users_majority": 4,
        "users_minority": 2,
        "comparisons_per_user": 3,
        "label_beta": 3.0,
        "rm_lora_r": 4,
        "policy_lora_r": 4,
        "em_iters": 1,
        "ppo_mini_batches": 2,
        "kl_coef": 0.05,
        "target_kl": 0.1,
        "seeds": [0, 1],
        "launcher": None,
        "judge": "ground_truth",
        "judge_model": None,
        "n_boot": 50,
        "cpu": {
            "policy": "llama_proxy",
            "policy_revision": None,
            "proxy_hidden_size": 16,
            "proxy_layers": 1,
            "proxy_heads": 2,
            "proxy_intermediate_size": 32,
            "proxy_pretrain_steps": 4,
            "load_in_bits": None,
            "bf16": False,
            "gradient_checkpointing": False,
            "preference_data": "synthetic",
            "psoups_revision": None,
            "psoups_files": {},
            "psoups_columns": {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"},
            "ppo_prompts": "imdb",
            "ppo_prompts_revision": None,
            "ppo_prompt_column": "text",
            "eval_prompts": "imdb",
            "eval_prompts_revision": None,
            "eval_prompts_split": "test",
            "eval_prompt_column": "text",
            "prompt_tokens": 4,
            "max_new_tokens": 6,
            "temperature": 0.7,
            "n_pref_prompts": 20,
            "n_ppo_prompts": 8,
            "n_eval_prompts": 6,
            "rm_epochs": 1.0,
            "rm_lr": 1.0e-3,
            "rm_batch_size": 8,
            "rm_max_length": 16,
            "ppo_updates": 2,
            "ppo_batch_size": 4,
            "ppo_epochs": 1,
            "ppo_lr": 1.0e-3,
            "whiten_rewards": False,
            "checkpoint_every": 1,
        },
        "paper": {"policy": "allenai/tulu-2-7b", "load_in_bits": 8},
    },
}


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def tiny_params(tmp_path: Path) -> Path:
    """A params file whose stages finish in seconds on 2 CPU cores."""
    import copy

    return write_params(tmp_path / "params.yaml", copy.deepcopy(TINY_PARAMS))


@pytest.fixture(scope="session")
def project_root() -> Path:
    return Path(__file__).resolve().parents[1]


def tiny_gpt2(tok, seed: int, init: float = 0.02) -> GPT2LMHeadModel:
    """A 1-layer GPT-2; ``init`` > default makes the next-token distributions peaked, so
    an off-by-one or a wrong temperature changes the log-probs by a lot."""
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=32,
        n_embd=16,
        n_layer=1,
        n_head=2,
        initializer_range=init,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = GPT2LMHeadModel(cfg).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model


@pytest.fixture
def host_lookups(monkeypatch) -> list[str]:
    """Host names looked up during the test; any but localhost fails. A local load must not
    reach the network, and datasets swallows the error of its download-count ping, so tests
    assert on the record rather than rely on the raise."""
    seen: list[str] = []
    real = socket.getaddrinfo

    def record(host, *args, **kwargs):
        seen.append(str(host))
        if host not in ("localhost", "127.0.0.1", "::1", None):
            raise socket.gaierror(f"test: no lookup of {host!r}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", record)
    return seen
