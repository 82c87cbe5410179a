"""Chunked PPO (TRL 1.12): a run killed after a checkpoint resumes to the same result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from helpers import tiny_gpt2
from transformers import GPT2LMHeadModel

from pluralign.core.maxmin import Normalizer
from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.training import ppo
from pluralign.training.generation import GenerationSettings
from pluralign.training.ppo import (
    PPOSettings,
    _save_chunk,
    completed_updates,
    run_ppo,
    train_policy,
    value_model_from,
)
from pluralign.training.reward_adapter import TextRewardAdapter

SETTINGS = PPOSettings(n_updates=4, batch_size=8, checkpoint_every=2, learning_rate=1e-3)
GENERATION = GenerationSettings(max_new_tokens=10, temperature=0.7)
SHORT = GenerationSettings(max_new_tokens=8, temperature=0.7)


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=300)


def policy(tok) -> GPT2LMHeadModel:
    return tiny_gpt2(tok, seed=0)


def prompts(tok) -> Dataset:
    texts = ["the movie was", "i think this", "a great film", "what a story"] * 4
    return Dataset.from_dict(
        {"input_ids": [[tok.eos_token_id, *tok(t)["input_ids"][:3]] for t in texts]}
    )


def adapter(tok, how: str = "maxmin_batch") -> TextRewardAdapter:
    rewards = {
        "e": lambda ts: np.array([t.count("e") for t in ts], dtype=float),
        "short": lambda ts: -np.array([len(t) for t in ts], dtype=float),
    }
    norms = {"e": Normalizer(1.0, 1.0), "short": Normalizer(-20.0, 10.0)}
    return TextRewardAdapter(tok, 4, rewards, norms, how)


def probe(model, updates: int) -> dict[str, float]:
    """What a notebook measures at each checkpoint; here the weights it sees."""
    return {"probe_n": float(updates), "probe_w": float(model.lm_head.weight.sum())}


def test_killed_run_resumes_to_the_uninterrupted_result(tok, tmp_path: Path, monkeypatch):
    full, full_log = run_ppo(
        policy(tok),
        tok,
        prompts(tok),
        adapter(tok),
        SETTINGS,
        GENERATION,
        tmp_path / "a",
        0,
        on_checkpoint=probe,
    )
    assert list(full_log["update"]) == [1, 2, 3, 4]
    assert full_log["probe_n"].tolist()[1::2] == [2.0, 4.0]  # after each chunk only
    assert full_log["probe_n"].isna().tolist() == [True, False, True, False]
    assert set(full_log["argmin_group"]) <= {"e", "short"}
    assert full_log["objective/kl"].notna().all()

    real_save = _save_chunk

    def save_then_die(path, *args):
        real_save(path, *args)
        raise KeyboardInterrupt  # killed right after the first checkpoint

    monkeypatch.setattr(ppo, "_save_chunk", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_ppo(
            policy(tok),
            tok,
            prompts(tok),
            adapter(tok),
            SETTINGS,
            GENERATION,
            tmp_path / "b",
            0,
            on_checkpoint=probe,
        )
    assert (tmp_path / "b" / "chunk-0000" / "log.json").is_file()
    assert not (tmp_path / "b" / "chunk-0001").exists()
    assert completed_updates(tmp_path / "b", SETTINGS) == 2
    monkeypatch.setattr(ppo, "_save_chunk", real_save)

    resumed_adapter = adapter(tok)
    resumed, log = run_ppo(
        policy(tok),
        tok,
        prompts(tok),
        resumed_adapter,
        SETTINGS,
        GENERATION,
        tmp_path / "b",
        0,
        on_checkpoint=probe,
    )
    assert len(resumed_adapter.history) == 2  # only the second chunk was trained again
    assert completed_updates(tmp_path / "b", SETTINGS) == 4
    for name, tensor in full.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    cols = ["update", "objective/kl", "objective/scores", "argmin_group", "raw_e", "raw_short"]
    cols += ["probe_n", "probe_w"]
    assert log[cols].equals(full_log[cols])


def test_training_moves_the_policy_and_seeds_matter(tok, tmp_path: Path):
    settings = PPOSettings(n_updates=2, batch_size=8, checkpoint_every=2)
    start = policy(tok).state_dict()
    a, _ = run_ppo(policy(tok), tok, prompts(tok), adapter(tok), settings, SHORT, tmp_path / "a", 0)
    b, _ = run_ppo(policy(tok), tok, prompts(tok), adapter(tok), settings, SHORT, tmp_path / "b", 1)
    key = "transformer.h.0.mlp.c_fc.weight"
    assert not torch.equal(a.state_dict()[key], start[key])
    assert not torch.equal(a.state_dict()[key], b.state_dict()[key])


def test_run_ppo_rejects_bad_setups(tok, tmp_path: Path):
    run_ppo(
        policy(tok),
        tok,
        prompts(tok),
        adapter(tok),
        PPOSettings(1, 8, checkpoint_every=1),
        SHORT,
        tmp_path / "r",
        0,
    )
    with pytest.raises(ValueError, match="different run"):
        run_ppo(
            policy(tok),
            tok,
            prompts(tok),
            adapter(tok),
            PPOSettings(2, 8),
            SHORT,
            tmp_path / "r",
            0,
        )
    # the generation settings are part of the run too: another temperature is another run
    with pytest.raises(ValueError, match="different run"):
        other = GenerationSettings(max_new_tokens=8, temperature=1.0)
        run_ppo(
            policy(tok),
            tok,
            prompts(tok),
            adapter(tok),
            PPOSettings(1, 8, checkpoint_every=1),
            other,
            tmp_path / "r",
            0,
        )
    ragged = Dataset.from_dict({"input_ids": [[1, 2, 3, 4], [1, 2, 3]] * 4})
    with pytest.raises(ValueError, match="one length"):
        run_ppo(policy(tok), tok, ragged, adapter(tok), SETTINGS, GENERATION, tmp_path / "x", 0)
    with pytest.raises(ValueError, match="context_length"):
        bad = TextRewardAdapter(tok, 3, {"n": len}, {"n": Normalizer(0.0, 1.0)}, "single")
        run_ppo(policy(tok), tok, prompts(tok), bad, SETTINGS, GENERATION, tmp_path / "y", 0)
    with pytest.raises(ValueError, match=r"prompt \(4\) \+ max_new_tokens \(29\) .* 32 positions"):
        long = GenerationSettings(max_new_tokens=29, temperature=0.7)
        run_ppo(
            policy(tok), tok, prompts(tok), adapter(tok), PPOSettings(1, 8), long, tmp_path / "z", 0
        )
    with pytest.raises(ValueError, match="multiple of num_mini_batches"):
        PPOSettings(n_updates=1, batch_size=7)
    for bad_settings in ({"n_updates": 0}, {"num_ppo_epochs": 0}, {"checkpoint_every": 0}):
        with pytest.raises(ValueError, match=next(iter(bad_settings))):
            PPOSettings(**{"n_updates": 1, "batch_size": 8, **bad_settings})
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0, temperature=0.7)
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(max_new_tokens=4, temperature=0.0)


def test_generation_settings_reach_trl_and_train_policy_normalizes_on_reference(
    tok, tmp_path: Path, monkeypatch
):
    """``GenerationSettings`` (not PPOSettings) sets TRL's response length and temperature;
    ``train_policy`` z-scores each reward on the reference texts before PPO."""
    import trl.experimental.ppo as trl_ppo

    seen: list[tuple[int, float]] = []

    class RecordingConfig(trl_ppo.PPOConfig):
        def __post_init__(self):
            seen.append((self.response_length, self.temperature))
            super().__post_init__()

    monkeypatch.setattr(trl_ppo, "PPOConfig", RecordingConfig)
    widths: list[int] = []
    rewards = {
        "e": lambda ts: np.array([t.count("e") for t in ts], dtype=float),
        "short": lambda ts: -np.array([len(t) for t in ts], dtype=float),
    }
    reference = ["a short one", "eee and more e", "the end"]
    generation = GenerationSettings(max_new_tokens=6, temperature=0.9)
    real_decode = TextRewardAdapter.decode

    def decode(self, input_ids, attention_mask):
        widths.append(input_ids.shape[1])
        return real_decode(self, input_ids, attention_mask)

    monkeypatch.setattr(TextRewardAdapter, "decode", decode)
    _, log, adapter = train_policy(
        policy(tok),
        tok,
        prompts(tok),
        rewards,
        reference,
        "maxmin_sample",
        PPOSettings(n_updates=1, batch_size=8, checkpoint_every=1),
        generation,
        tmp_path / "w",
        0,
    )
    assert seen == [(6, 0.9)]
    assert widths and set(widths) == {4 + 6}  # [prompt | max_new_tokens] rows
    assert adapter.how == "maxmin_sample" and adapter.context_length == 4
    assert list(log["update"]) == [1]
    for g, fn in rewards.items():
        raw = fn(reference)
        n = adapter.normalizers[g]
        assert (n.mean, n.std) == pytest.approx((raw.mean(), raw.std()), rel=1e-12)


def test_value_model_equals_a_saved_and_reloaded_copy(tok, tmp_path: Path):
    """The in-memory build gives the same weights and RNG draws as the folder round trip
    (which fails under several processes: only rank 0 writes the folder)."""
    from transformers import AutoModelForSequenceClassification

    model = policy(tok)
    torch.manual_seed(3)
    model.save_pretrained(tmp_path / "p")
    expected = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "p", num_labels=1, pad_token_id=model.config.pad_token_id
    )
    after_expected = torch.rand(3)
    torch.manual_seed(3)
    value = value_model_from(model)
    assert torch.equal(torch.rand(3), after_expected)
    assert type(value) is type(expected) and value.config.num_labels == 1
    assert value.config.pad_token_id == tok.pad_token_id
    want = expected.state_dict()
    assert value.state_dict().keys() == want.keys()
    for name, tensor in value.state_dict().items():
        assert torch.equal(tensor, want[name]), name


def test_value_model_shares_no_storage_with_the_policy(tok):
    """``from_pretrained(state_dict=...)`` adopts the tensors it is given; a critic sharing
    them would move the policy with every value-loss step."""
    model = policy(tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    value = value_model_from(model)
    policy_storage = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
    assert not any(
        t.untyped_storage().data_ptr() in policy_storage for t in value.state_dict().values()
    )
    with torch.no_grad():
        for param in value.parameters():
            param.add_(1.0)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def lora_pair(tok, tmp_path: Path):
    """A LoRA policy and a LoRA value model on one saved base, as notebook 05 builds them."""
    from pluralign.training.lora import policy_lora_config, reward_lora_config, with_lora
    from pluralign.training.models import load_causal_lm, load_sequence_classifier

    base = tmp_path / "base"
    if not base.is_dir():
        policy(tok).save_pretrained(base)
    torch.manual_seed(0)
    value = with_lora(load_sequence_classifier(base, num_labels=1), reward_lora_config(r=4))
    return with_lora(load_causal_lm(base), policy_lora_config(r=4)), value


def test_lora_run_resumes_from_adapter_only_checkpoints(tok, tmp_path: Path, monkeypatch):
    pol, val = lora_pair(tok, tmp_path)
    base_before = {k: v.clone() for k, v in pol.state_dict().items() if "lora_" not in k}
    full, full_log = run_ppo(
        pol,
        tok,
        prompts(tok),
        adapter(tok),
        SETTINGS,
        GENERATION,
        tmp_path / "a",
        0,
        value_model=val,
    )
    for name, tensor in full.state_dict().items():  # the base stays frozen
        if name in base_before:
            assert torch.equal(tensor, base_before[name]), name
    saved = torch.load(tmp_path / "a" / "chunk-0001" / "policy.pt", weights_only=True)
    assert saved and all("lora_" in k for k in saved)  # the adapter only, not the base
    assert full_log["objective/kl"].iloc[1:].abs().gt(0).any()  # reference = adapter off

    real_save = _save_chunk

    def save_then_die(path, *args):
        real_save(path, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(ppo, "_save_chunk", save_then_die)
    pol, val = lora_pair(tok, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_ppo(
            pol,
            tok,
            prompts(tok),
            adapter(tok),
            SETTINGS,
            GENERATION,
            tmp_path / "b",
            0,
            value_model=val,
        )
    monkeypatch.setattr(ppo, "_save_chunk", real_save)
    pol, val = lora_pair(tok, tmp_path)
    resumed, log = run_ppo(
        pol,
        tok,
        prompts(tok),
        adapter(tok),
        SETTINGS,
        GENERATION,
        tmp_path / "b",
        0,
        value_model=val,
    )
    for name, tensor in full.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    cols = ["update", "objective/kl", "objective/scores", "argmin_group"]
    assert log[cols].equals(full_log[cols])


def test_lora_policy_needs_an_explicit_value_model(tok, tmp_path: Path):
    pol, _ = lora_pair(tok, tmp_path)
    with pytest.raises(ValueError, match="explicit value_model"):
        run_ppo(pol, tok, prompts(tok), adapter(tok), SETTINGS, GENERATION, tmp_path / "c", 0)
