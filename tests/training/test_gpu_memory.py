"""The LoRA-PPO memory estimate: closed forms checked against real (tiny) models."""

from __future__ import annotations

import pytest
import torch

from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.training.gpu_memory import (
    GIB,
    TRAINABLE_BYTES,
    kv_cache_bytes,
    ppo_memory_estimate,
    training_activation_bytes,
)
from pluralign.training.llama_proxy import build_llama_proxy
from pluralign.training.lora import (
    llama_lora_parameter_count,
    policy_lora_config,
    reward_lora_config,
    trainable_parameters,
    with_lora,
)
from pluralign.training.models import load_sequence_classifier

# peft 0.21.2 reads ``model.is_gradient_checkpointing``, which transformers 5 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")

HIDDEN, LAYERS = 32, 2
LLAMA_7B = {"n_params": 6.74e9, "n_layers": 32, "hidden_size": 4096}
COMPONENTS = {
    "policy_base",
    "reference",
    "value_base",
    "reward_bases",
    "reward_adapters",
    "trainable",
    "activations",
}


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=300)


def _estimate(**overrides) -> dict[str, float]:
    return ppo_memory_estimate(**{**LLAMA_7B, **overrides})


@pytest.mark.parametrize("r", [16, 8])
def test_closed_form_matches_a_real_lora_model(tok, r: int) -> None:
    model = build_llama_proxy(tok, hidden_size=HIDDEN, n_layers=LAYERS)
    trainable, _ = trainable_parameters(with_lora(model, policy_lora_config(r=r)))
    assert trainable == llama_lora_parameter_count(LAYERS, HIDDEN, r)


def test_trainable_memory_matches_real_policy_and_value_models(tok, tmp_path) -> None:
    build_llama_proxy(tok, hidden_size=HIDDEN, n_layers=LAYERS).save_pretrained(tmp_path)
    policy = with_lora(
        build_llama_proxy(tok, hidden_size=HIDDEN, n_layers=LAYERS), policy_lora_config()
    )
    torch.manual_seed(0)
    value = with_lora(load_sequence_classifier(tmp_path, num_labels=1), reward_lora_config())
    n_trainable = trainable_parameters(policy)[0] + trainable_parameters(value)[0]
    est = ppo_memory_estimate(
        n_params=1e6, n_layers=LAYERS, hidden_size=HIDDEN, policy_lora_r=16, reward_lora_r=8
    )
    assert est["trainable"] * GIB == pytest.approx(n_trainable * TRAINABLE_BYTES)


def test_breakdown_sums_to_total() -> None:
    for shared in (False, True):
        est = _estimate(n_reward_models=3, shared_base=shared, gradient_checkpointing=shared)
        assert set(est) == COMPONENTS | {"total"}
        assert all(v >= 0 for v in est.values())
        assert sum(v for k, v in est.items() if k != "total") == pytest.approx(est["total"])


def test_seven_billion_numbers() -> None:
    est = _estimate(n_reward_models=2, policy_lora_r=16, reward_lora_r=8)
    assert est["policy_base"] == pytest.approx(6.74e9 * 2 / 2**30)
    assert est["policy_base"] == pytest.approx(12.55, abs=0.005)  # GiB, as documented
    assert est["reference"] == 0.0  # adapter disabled on the policy's own base
    assert est["value_base"] == pytest.approx(est["policy_base"])
    assert est["reward_bases"] == pytest.approx(2 * est["policy_base"])
    # Policy r=16 + value r=8 adapters on 32 layers x 4 projections + a 4096 value head.
    n_lora = 32 * 4 * (16 + 8) * (4096 + 4096) + 4096
    assert est["trainable"] == pytest.approx(n_lora * 16 / 2**30)
    assert 0.35 < est["trainable"] < 0.4
    # One base carrying K adapters; a 4-bit base is a quarter of bf16.
    assert _estimate(shared_base=True, n_reward_models=4)["reward_bases"] == pytest.approx(
        12.55, abs=0.01
    )
    assert _estimate(weight_bytes=0.5)["policy_base"] == pytest.approx(12.55 / 4, abs=0.01)
    assert _estimate(reference_from_adapters=False)["reference"] == pytest.approx(12.55, abs=0.01)
    assert _estimate(value_shares_policy_base=True)["value_base"] == 0.0
    value_r16 = _estimate(value_lora_r=16)["trainable"] - est["trainable"]
    assert value_r16 == pytest.approx(32 * 4 * 8 * 8192 * 16 / 2**30)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_activations_grow_linearly_in_batch_size(checkpointing: bool) -> None:
    ests = [_estimate(batch_size=b, gradient_checkpointing=checkpointing) for b in (1, 2, 8)]
    one = ests[0]["activations"]
    assert one > 0
    assert [e["activations"] for e in ests] == pytest.approx([one, 2 * one, 8 * one])
    static = {k for k in COMPONENTS if k != "activations"}
    assert all(e[k] == ests[0][k] for e in ests for k in static)
    assert ests[2]["total"] - ests[1]["total"] == pytest.approx(6 * one)


def test_activation_formulas() -> None:
    b, s, h, n = 2, 64, 32, 3
    values = b * s * h
    assert (
        training_activation_bytes(b, s, h, n, gradient_checkpointing=False) == n * 17 * values * 2
    )
    assert (
        training_activation_bytes(b, s, h, n, gradient_checkpointing=True) == (n + 17) * values * 2
    )
    assert kv_cache_bytes(b, s, h, n) == 2 * n * values * 2
    on, off = (_estimate(gradient_checkpointing=c)["activations"] for c in (True, False))
    assert on < off
    # 7B, batch 8 x 1024 tokens, checkpointed: policy + value trunks + fp32 logits.
    trunk = (32 + 17) * 8 * 1024 * 4096 * 2
    assert on == pytest.approx((2 * trunk + 8 * 1024 * 32000 * 4) / 2**30)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_params"):
        _estimate(n_params=0)
    with pytest.raises(ValueError, match="n_reward_models"):
        _estimate(n_reward_models=0)
    with pytest.raises(ValueError, match="r=0"):
        _estimate(policy_lora_r=0)


def test_ppo_update_seconds_matches_the_hand_computation() -> None:
    from pluralign.training.gpu_memory import ppo_update_seconds

    t = ppo_update_seconds(7e9, 8, 256, 256, n_reward_models=2, ppo_epochs=8, mfu=0.5)
    tokens = 8 * 512
    assert t["generation"] == pytest.approx(256 * 7e9 * 2 / 2039e9)
    assert t["scoring"] == pytest.approx(4 * 2 * 7e9 * tokens / (312e12 * 0.5))
    assert t["training"] == pytest.approx(8 * 12 * 7e9 * tokens / (312e12 * 0.5))
    assert t["total"] == pytest.approx(t["generation"] + t["scoring"] + t["training"])
    faster = ppo_update_seconds(7e9, 8, 256, 256, gpu="H100-SXM", mfu=0.5)
    assert faster["total"] < t["total"]
    with pytest.raises(ValueError, match="unknown gpu"):
        ppo_update_seconds(7e9, 8, 256, 256, gpu="TPU")
    with pytest.raises(ValueError, match="mfu"):
        ppo_update_seconds(7e9, 8, 256, 256, mfu=0)
