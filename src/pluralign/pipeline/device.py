"""Where models run and in which precision: one rule for every stage, whatever the launcher.

Two questions every loader and trainer asks, answered here once:

* **device**: the process's CUDA device when a GPU is visible (``LOCAL_RANK``'s under
  ``accelerate launch``), else the CPU. Frozen models (judges, reward models, encoders,
  references) are put there when they load; a model left on the CPU while PPO moves the
  policy to the GPU costs hours of CPU work and crashes a KL between the two.
* **precision**: bf16 mixed precision on a CUDA GPU that computes bf16, fp32 otherwise.
  ``transformers`` reads ``ACCELERATE_MIXED_PRECISION`` (which ``accelerate launch`` sets
  from its config file) whenever ``bf16=False``, so without :func:`pin_mixed_precision` the
  same notebook would train in fp32 in JupyterLab and autocast to bf16 under a launcher.
  Trainable heads and LoRA weights stay fp32 (:func:`pluralign.training.lora.with_lora`).

The rule's outcome is recorded in every run manifest (:func:`precision_record`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

#: The environment variable ``accelerate launch`` and ``transformers`` read.
MIXED_PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"


def compute_device() -> torch.device:
    """This process's accelerator: ``cuda:<LOCAL_RANK>`` when CUDA is visible, else CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def use_bf16() -> bool:
    """bf16 mixed precision: on a CUDA GPU that computes bf16 natively (Ampere and later)."""
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def precision() -> str:
    """``"bf16"`` or ``"fp32"``, by :func:`use_bf16`."""
    return "bf16" if use_bf16() else "fp32"


def pin_mixed_precision() -> str:
    """Make the rule win over a launcher's ``mixed_precision``; returns the precision.

    Call before building a ``transformers``/TRL trainer: ``TrainingArguments`` and
    ``Accelerator`` both fall back to this variable when ``bf16`` is off."""
    chosen = precision()
    os.environ[MIXED_PRECISION_ENV] = "bf16" if chosen == "bf16" else "no"
    return chosen


def precision_record() -> dict[str, Any]:
    """What a manifest records: the device, the precision the rule chose, the GPU's name."""
    device = compute_device()
    return {
        "device": str(device),
        "precision": precision(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
