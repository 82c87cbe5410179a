"""One base, many LoRA adapters (notebook 05's reward models, EM slots and evaluated
policies on one backbone): each adapter behaves as its own model would."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaForSequenceClassification

from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.training.adapter_bank import AdapterBank, WithoutAdapter
from pluralign.training.llama_proxy import build_llama_proxy
from pluralign.training.lora import policy_lora_config, reward_lora_config, with_lora
from pluralign.training.reward_models import RewardModelSettings, fit_reward_model, score_texts

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning")
TEXTS = ["good good good", "bad bad", "good bad", "fine"]


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=300)


def _classifier(tok, dtype=torch.float32) -> LlamaForSequenceClassification:
    lm = build_llama_proxy(tok, hidden_size=32, n_layers=2, seed=0)
    config = lm.config
    config.num_labels = 1
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config).to(dtype)
    model.model.load_state_dict(lm.model.state_dict())
    return model


def _scores(model, tok) -> torch.Tensor:
    return torch.as_tensor(score_texts(model, tok, TEXTS, 16))


def test_training_one_adapter_leaves_the_others_and_the_base(tok, tmp_path: Path) -> None:
    bank = AdapterBank(_classifier(tok))
    torch.manual_seed(1)
    bank.add("one", reward_lora_config(r=4))
    torch.manual_seed(2)
    bank.add("two", reward_lora_config(r=4))
    a_before, b_before = _scores(bank.use("one"), tok), _scores(bank.use("two"), tok)
    assert not torch.allclose(a_before, b_before)  # each adapter has its own fresh head
    trainable = {n for n, p in bank.use("two").named_parameters() if p.requires_grad}
    assert trainable and all(".two." in n or n.endswith(".two.weight") for n in trainable)
    settings = RewardModelSettings(3.0, 1e-2, 2, 16)
    fit_reward_model(bank.use("two"), tok, ["good good"] * 4, ["bad bad"] * 4, settings, seed=0)
    torch.testing.assert_close(_scores(bank.use("one"), tok), a_before)
    b_after = _scores(bank.use("two"), tok)
    assert b_after[0] - b_after[1] > b_before[0] - b_before[1]  # it learned the preference
    # saved and loaded onto another copy of the base, it scores as it did
    bank.save("two", tmp_path / "two")
    assert (tmp_path / "two" / "adapter_config.json").is_file()
    other = AdapterBank(_classifier(tok))
    other.load("two", tmp_path / "two")
    torch.testing.assert_close(_scores(other.use("two"), tok), b_after)
    scorer = other.scorer("two", lambda m: lambda texts: score_texts(m, tok, texts, 16))
    torch.testing.assert_close(torch.as_tensor(scorer(TEXTS)), b_after)


def test_dropping_frees_adapters_and_the_last_one_waits_for_the_next(tok) -> None:
    bank = AdapterBank(_classifier(tok))
    bank.add("one", reward_lora_config(r=4))
    bank.add("two", reward_lora_config(r=4))
    bank.drop("one")
    assert bank.names == ["two"] and list(bank.model.peft_config) == ["two"]
    bank.drop("two")  # peft cannot hold no adapter: kept until the next arrives
    assert bank.names == []
    bank.add("c", reward_lora_config(r=4))
    assert bank.names == ["c"] and list(bank.model.peft_config) == ["c"]
    with pytest.raises(KeyError, match="no adapter 'two'"):
        bank.use("two")
    with pytest.raises(ValueError, match="already holds"):
        bank.add("c", reward_lora_config(r=4))
    bank.drop("c")  # the last one again: its name cannot come back while peft holds it
    with pytest.raises(ValueError, match="use a new name"):
        bank.add("c", reward_lora_config(r=4))


def test_trainable_weights_are_fp32_on_a_bf16_base(tok) -> None:
    """A ``modules_to_save`` head copied from a bf16 base would train in bf16 (defect 7)."""
    bank = AdapterBank(_classifier(tok, torch.bfloat16))
    model = bank.use(bank.add("one", reward_lora_config(r=4)))
    dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
    assert dtypes == {torch.float32}
    # outside autocast (scoring, TRL's value head) the fp32 head reads the bf16 trunk
    assert torch.isfinite(torch.as_tensor(score_texts(model, tok, TEXTS, 16))).all()
    single = with_lora(_classifier(tok, torch.bfloat16), reward_lora_config(r=4))
    assert torch.isfinite(torch.as_tensor(score_texts(single, tok, TEXTS, 16))).all()
    assert {p.dtype for p in single.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in single.parameters() if not p.requires_grad} == {torch.bfloat16}


def test_the_reference_is_the_policy_without_its_adapter(tok) -> None:
    base = build_llama_proxy(tok, hidden_size=32, n_layers=2, seed=0)
    expected = base(input_ids=torch.tensor([[1, 5, 7]])).logits
    bank = AdapterBank(base)
    policy = bank.use(bank.add("arm", policy_lora_config(r=4)))
    with torch.no_grad():  # move the adapter off the identity
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    ids = torch.tensor([[1, 5, 7]])
    assert not torch.allclose(policy(input_ids=ids).logits, expected)
    ref = WithoutAdapter(policy)
    assert ref.device == policy.device
    torch.testing.assert_close(ref(input_ids=ids).logits, expected)
