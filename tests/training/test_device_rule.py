"""The paper profile's device and precision rule, checked on CPU (review of 2026-12,
defects 2, 6 and 7). What CUDA itself does with bf16 cannot be shown here; the smoke run
(``scripts/gpu_smoke.py``) records the precision a GPU chose and trains under it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import tiny_gpt2

from pluralign.pipeline import device as device_rule
from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.pipeline.device import MIXED_PRECISION_ENV, pin_mixed_precision, precision_record
from pluralign.training import models
from pluralign.training.generation import kl_to_reference, sample_rollouts
from pluralign.training.reward_models import reward_config


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=300)


def test_a_launcher_cannot_switch_precision(monkeypatch, tmp_path: Path):
    """``accelerate launch`` with ``mixed_precision: bf16`` exports the variable; without the
    pin, ``bf16=False`` trainers would read it and autocast (defect 7)."""
    monkeypatch.setenv(MIXED_PRECISION_ENV, "bf16")
    args = reward_config(str(tmp_path))
    assert torch.cuda.is_available() or (args.mixed_precision == "no" and not args.bf16)
    assert args.mixed_precision == pin_mixed_precision().replace("fp32", "no")


def test_the_manifest_records_device_and_precision():
    record = precision_record()
    assert record["precision"] in {"bf16", "fp32"}
    assert record["device"].startswith("cuda" if torch.cuda.is_available() else "cpu")


def test_loaded_models_go_to_the_compute_device(monkeypatch, tmp_path: Path, tok):
    """Frozen models follow the device rule (defect 6: they stayed on the CPU). The meta
    device stands in for a GPU; a caller's own ``device_map`` (quantised bases) wins."""
    folder = tmp_path / "policy"
    tiny_gpt2(tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    monkeypatch.setattr(models, "compute_device", lambda: torch.device("meta"))
    model = models.load_causal_lm(folder)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    judge = models.load_sequence_classifier(folder, num_labels=1)
    assert {p.device.type for p in judge.parameters()} == {"meta"}
    placed = models.load_causal_lm(folder, device_map={"": "cpu"})
    assert {p.device.type for p in placed.parameters()} == {"cpu"}


class OnMeta(torch.nn.Module):
    """A model that lives on another device (meta stands in for a GPU): like a real one, it
    refuses inputs from elsewhere, and its outputs hold no data the CPU can read."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.device = torch.device("meta")

    def forward(self, input_ids, attention_mask):
        if input_ids.device != self.device or attention_mask.device != self.device:
            raise RuntimeError(f"Expected all tensors on {self.device}, got {input_ids.device}")
        logits = torch.empty(*input_ids.shape, self.vocab, device=self.device)
        return type("Out", (), {"logits": logits})()


def test_kl_sends_each_model_its_ids_on_its_own_device(tok):
    """After PPO the policy is on the GPU and a reference may not be (defect 2). The
    reference must receive its ids on its own device (before the fix: the device-mismatch
    error) and its log-probs are then copied to the CPU, which a meta tensor cannot do
    (a CUDA one can): reaching that copy is the pass."""
    policy = tiny_gpt2(tok, seed=1)
    prompts = [[tok.eos_token_id, 40, 41], [tok.eos_token_id, 50, 51]]
    roll = sample_rollouts(policy, tok, prompts, 4, 1.0, seed=2)
    with pytest.raises(NotImplementedError, match="meta"):
        kl_to_reference(policy, OnMeta(len(tok)), tok, roll, 1.0)


def test_compute_device_follows_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert device_rule.compute_device() == torch.device("cuda", 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_rule.compute_device() == torch.device("cpu")
