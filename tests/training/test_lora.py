"""LoRA on the Llama proxy and on GPT-2: what trains, what is frozen, what merges."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_gpt2
from peft import PeftModel
from transformers import BitsAndBytesConfig, LlamaForCausalLM, LlamaForSequenceClassification

from pluralign.pipeline.assets import AssetError, load_gpt2_tokenizer
from pluralign.training import lora
from pluralign.training.llama_proxy import build_llama_proxy
from pluralign.training.lora import (
    BackboneSpec,
    llama_lora_parameter_count,
    load_base_policy,
    lora_classifier,
    lora_parameter_count,
    lora_policy,
    lora_target_modules,
    policy_lora_config,
    quantization_config,
    reward_lora_config,
    save_adapter,
    trainable_parameters,
    with_lora,
)
from pluralign.training.models import load_sequence_classifier

HIDDEN, LAYERS = 32, 2
# peft 0.21.2 reads ``model.is_gradient_checkpointing``, which transformers 5 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=300)


@pytest.fixture(scope="module")
def folder(tok, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("llama_proxy")
    build_llama_proxy(tok, hidden_size=HIDDEN, n_layers=LAYERS, seed=0).save_pretrained(path)
    return path


@pytest.fixture
def batch(tok) -> dict[str, torch.Tensor]:
    prompts = [[tok.eos_token_id, 40, 41, 42, 43], [tok.eos_token_id, 50, 51]]
    return tok.pad({"input_ids": prompts}, return_tensors="pt")


def _proxy(tok) -> LlamaForCausalLM:
    return build_llama_proxy(tok, hidden_size=HIDDEN, n_layers=LAYERS, seed=0)


def _adapted_shapes(model, targets: list[str]) -> list[tuple[int, int]]:
    """(d_in, d_out) of every module a LoRA config with ``targets`` adapts, read off the model."""
    shapes = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in targets:
            d_in, d_out = module.weight.shape[::-1]
            if model.config.model_type == "gpt2":  # Conv1D stores (in, out)
                d_in, d_out = d_out, d_in
            shapes.append((d_in, d_out))
    return shapes


def _lm_loss(model, batch) -> torch.Tensor:
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return model(**batch, labels=labels).loss


def _one_adam_step(model, loss_fn) -> dict[str, torch.Tensor]:
    """One Adam step on the trainable parameters; returns every parameter before the step."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    loss_fn(model).backward()
    optimizer.step()
    model.eval()
    return before


def _changed(model, before: dict[str, torch.Tensor]) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


# --------------------------------------------------------------------------- configuration


def test_target_modules_by_architecture(tok) -> None:
    assert lora_target_modules(_proxy(tok)) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert lora_target_modules(tiny_gpt2(tok, seed=0)) == ["c_attn"]
    with pytest.raises(ValueError, match="model_type='bert'"):
        lora_target_modules(SimpleNamespace(config=SimpleNamespace(model_type="bert")))
    with pytest.raises(ValueError, match="no LoRA targets"):
        lora_target_modules(torch.nn.Linear(2, 2))


def test_configs_carry_the_paper_ranks_and_stay_reusable(tok) -> None:
    policy, reward = policy_lora_config(), reward_lora_config()
    assert (policy.r, policy.lora_alpha, policy.lora_dropout) == (16, 32, 0.05)
    assert policy.task_type == "CAUSAL_LM" and policy.modules_to_save is None
    assert (reward.r, reward.task_type, reward.modules_to_save) == (8, "SEQ_CLS", ["score"])
    assert policy.target_modules is None  # chosen from the model by with_lora
    assert policy_lora_config(targets=["q_proj"]).target_modules == {"q_proj"}
    with pytest.raises(ValueError, match="r=0"):
        policy_lora_config(r=0)
    with_lora(_proxy(tok), policy)
    assert policy.target_modules is None  # the caller's config is not mutated
    assert lora_parameter_count([(3, 5), (2, 2)], r=2) == 2 * 8 + 2 * 4
    with pytest.raises(ValueError, match="r=0"):
        lora_parameter_count([(3, 5)], r=0)


# --------------------------------------------------------------------------- policy (causal LM)


def test_policy_lora_trains_only_the_closed_form_adapter(tok) -> None:
    base = _proxy(tok)
    n_base = sum(p.numel() for p in base.parameters())
    shapes = _adapted_shapes(base, lora_target_modules(base))
    assert len(shapes) == 4 * LAYERS
    model = with_lora(base, policy_lora_config())
    assert isinstance(model, PeftModel)
    trainable, total = trainable_parameters(model)
    assert (
        trainable
        == lora_parameter_count(shapes, 16)
        == llama_lora_parameter_count(LAYERS, HIDDEN, 16)
    )
    assert trainable == 16 * (HIDDEN + HIDDEN) * 4 * LAYERS
    assert total == n_base + trainable
    assert (trainable, total) == model.get_nb_trainable_parameters()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)


def test_fresh_adapter_is_the_identity_and_disabling_it_gives_the_reference(tok, batch) -> None:
    base = _proxy(tok)
    with torch.no_grad():
        expected = base(**batch).logits
    model = with_lora(base, policy_lora_config())  # injects adapters into ``base``
    model.train()  # dropout on the LoRA branch only: B = 0 keeps it silent
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, expected, rtol=0, atol=1e-6)
        with model.disable_adapter():
            torch.testing.assert_close(model(**batch).logits, expected, rtol=0, atol=1e-6)


def test_a_step_moves_only_the_adapter_and_merging_keeps_the_logits(tok, batch) -> None:
    model = with_lora(_proxy(tok), policy_lora_config())
    before = _one_adam_step(model, lambda m: _lm_loss(m, batch))
    changed = _changed(model, before)
    lora_b = {n for n in before if ".lora_B." in n}
    # Gradients reach A only through B, which starts at 0: after one step only B moved.
    assert changed == lora_b and len(lora_b) == 4 * LAYERS
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    with torch.no_grad():
        adapted = model(**batch).logits
        with model.disable_adapter():
            assert not torch.allclose(model(**batch).logits, adapted, atol=1e-6)
        merged = model.merge_and_unload()
        assert isinstance(merged, LlamaForCausalLM)
        assert not any("lora" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(**batch).logits, adapted, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- reward model


def test_reward_lora_trains_adapter_and_fresh_head(tok, folder: Path, batch) -> None:
    torch.manual_seed(0)
    rm = load_sequence_classifier(folder, num_labels=1)
    n_base = sum(p.numel() for p in rm.parameters())
    model = with_lora(rm, reward_lora_config())
    trainable, total = trainable_parameters(model)
    head = HIDDEN  # score: hidden -> 1, no bias
    assert trainable == llama_lora_parameter_count(LAYERS, HIDDEN, 8) + head
    assert total == n_base + trainable  # the frozen original head stays beside its copy
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n for n in names if "lora_" not in n} == {
        "base_model.model.score.modules_to_save.default.weight"
    }

    def margin_loss(m) -> torch.Tensor:  # Bradley-Terry: row 0 preferred over row 1
        scores = m(**batch).logits.squeeze(-1)
        return -torch.nn.functional.logsigmoid(scores[0] - scores[1])

    before = _one_adam_step(model, margin_loss)
    changed = _changed(model, before)
    assert changed <= names
    assert "base_model.model.score.modules_to_save.default.weight" in changed
    assert any(".lora_B." in n for n in changed)
    with torch.no_grad():
        scores = model(**batch).logits
        merged = model.merge_and_unload()
        assert isinstance(merged, LlamaForSequenceClassification)
        torch.testing.assert_close(merged(**batch).logits, scores, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- GPT-2


def test_gpt2_policy_adapts_the_fused_attention(tok, batch) -> None:
    base = tiny_gpt2(tok, seed=0)
    shapes = _adapted_shapes(base, ["c_attn"])
    assert shapes == [(16, 48)]  # 1 layer, hidden 16, fused q/k/v
    with torch.no_grad():
        expected = base(**batch).logits
    model = with_lora(base, policy_lora_config())
    trainable, _ = trainable_parameters(model)
    assert trainable == lora_parameter_count(shapes, 16) == 16 * (16 + 48)
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, expected, rtol=0, atol=1e-6)
    before = _one_adam_step(model, lambda m: _lm_loss(m, batch))
    assert _changed(model, before) == {n for n in before if ".lora_B." in n}
    with torch.no_grad():
        adapted = model(**batch).logits
        merged = model.merge_and_unload()
        torch.testing.assert_close(merged(**batch).logits, adapted, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- quantisation


def test_quantization_config_validates_bits() -> None:
    assert quantization_config(None) is None
    for bits in (0, 2, 16, "8"):
        with pytest.raises(ValueError, match="use None"):
            quantization_config(bits)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only error")
def test_quantization_on_this_cpu_machine_says_why() -> None:
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        quantization_config(4)


def test_quantization_errors_and_configs(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="8-bit loading needs a CUDA GPU"):
        quantization_config(8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(lora, "_bitsandbytes_installed", lambda: False)
    with pytest.raises(RuntimeError, match="pip install bitsandbytes"):
        quantization_config(4)
    monkeypatch.setattr(lora, "_bitsandbytes_installed", lambda: True)
    eight = quantization_config(8)
    assert isinstance(eight, BitsAndBytesConfig)
    assert eight.load_in_8bit and not eight.load_in_4bit
    four = quantization_config(4)
    assert four.load_in_4bit and not four.load_in_8bit
    assert four.bnb_4bit_quant_type == "nf4"
    assert four.bnb_4bit_compute_dtype == torch.bfloat16


# --------------------------------------------------------------------------- LoRA backbones (05)


def test_backbone_spec_has_one_source_and_no_revision_field() -> None:
    """The revision lives in the source (``name@commit``), resolved by the one source rule."""
    assert [f.name for f in dataclasses.fields(BackboneSpec)] == [
        "source",
        "load_in_bits",
        "bf16",
        "gradient_checkpointing",
    ]
    assert BackboneSpec("x").kwargs() == {}
    assert BackboneSpec("x", bf16=True).kwargs() == {"dtype": torch.bfloat16}
    assert dataclasses.asdict(BackboneSpec("a/b@c0ffee")) == {
        "source": "a/b@c0ffee",
        "load_in_bits": None,
        "bf16": False,
        "gradient_checkpointing": False,
    }


def test_backbone_spec_refuses_an_unpinned_hub_name(tok, host_lookups) -> None:
    spec = BackboneSpec("allenai/tulu-2-7b")
    with pytest.raises(AssetError, match=r"allenai/tulu-2-7b@<commit or tag>"):
        load_base_policy(spec, tok.pad_token_id)
    with pytest.raises(AssetError, match="pin a revision"):
        lora_classifier(spec, tok.pad_token_id, r=4)
    assert host_lookups == []


def test_backbone_loaders_on_a_local_proxy(tok, folder: Path, batch, tmp_path: Path) -> None:
    spec = BackboneSpec(str(folder))
    base = load_base_policy(spec, tok.pad_token_id)
    assert isinstance(base, LlamaForCausalLM)
    assert base.config.pad_token_id == base.generation_config.pad_token_id == tok.pad_token_id
    assert trainable_parameters(base)[0] == sum(p.numel() for p in base.parameters())

    policy = lora_policy(spec, tok.pad_token_id, r=4)
    assert isinstance(policy, PeftModel)
    assert trainable_parameters(policy)[0] == llama_lora_parameter_count(LAYERS, HIDDEN, 4)
    with torch.no_grad():  # a fresh adapter: the base policy's logits
        torch.testing.assert_close(policy(**batch).logits, base(**batch).logits, rtol=0, atol=1e-6)

    torch.manual_seed(0)
    rm = lora_classifier(spec, tok.pad_token_id, r=4)
    assert rm.config.pad_token_id == tok.pad_token_id
    trainable = {n for n, p in rm.named_parameters() if p.requires_grad}
    assert "base_model.model.score.modules_to_save.default.weight" in trainable
    _one_adam_step(rm, lambda m: m(**batch).logits.sum())
    saved = save_adapter(rm, tmp_path / "rm")
    assert (saved / "adapter_config.json").is_file()
    reloaded = lora_classifier(spec, tok.pad_token_id, r=4, adapter_dir=saved)
    assert not reloaded.training
    assert not any(p.requires_grad for p in reloaded.parameters())  # for scoring only
    rm.eval()
    with torch.no_grad():  # the trained adapter and head come back
        torch.testing.assert_close(reloaded(**batch).logits, rm(**batch).logits, rtol=0, atol=1e-6)

    saved_policy = save_adapter(policy, tmp_path / "policy")
    again = lora_policy(spec, tok.pad_token_id, r=4, adapter_dir=saved_policy)
    assert isinstance(again, PeftModel)
    assert not any(p.requires_grad for p in again.parameters())
