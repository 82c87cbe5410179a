"""Helpers shared by the test modules (fixtures are in conftest.py).

``TINY_PARAMS`` is the real ``params.yaml`` with ``tiny_overrides.yaml`` merged over it by
the loader's own deep merge, so a new param needs no copy here: only sizes are overridden.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import GPT2Config, GPT2LMHeadModel

from pluralign.pipeline.config import deep_merge

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
GUARD = TESTS / "netguard"


def _tiny() -> dict[str, Any]:
    real = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    tiny = yaml.safe_load((TESTS / "tiny_overrides.yaml").read_text(encoding="utf-8"))
    return deep_merge(real, tiny)


TINY_PARAMS: dict[str, Any] = _tiny()


def tiny_params_copy() -> dict[str, Any]:
    return copy.deepcopy(TINY_PARAMS)


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def run_guarded(args: list[str], cwd: Path, extra_env: dict | None = None, timeout: int = 900):
    """Run a command with the network guard active in it and in papermill's kernel; returns
    (the finished process, the non-loopback connection attempts it logged)."""
    log = cwd / "netguard.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(GUARD), os.environ.get("PYTHONPATH", "")]),
        "NETGUARD_LOG": str(log),
        **(extra_env or {}),
    }
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, (log.read_text().splitlines() if log.exists() else [])


def run_stage(
    stage: str,
    params_file: Path,
    output_root: Path,
    cwd: Path,
    profile: str | None = None,
    extra_env: dict | None = None,
):
    """``python -m pluralign.pipeline.runner notebooks/<stage>.ipynb`` under the guard."""
    args = [
        sys.executable,
        "-m",
        "pluralign.pipeline.runner",
        str(ROOT / "notebooks" / f"{stage}.ipynb"),
        "--params-file",
        str(params_file),
        "--output-root",
        str(output_root),
    ]
    if profile is not None:
        args += ["--profile", profile]
    return run_guarded(args, cwd, extra_env)


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
