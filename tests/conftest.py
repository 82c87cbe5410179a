"""Shared fixtures: a tiny params file that runs every stage in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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
