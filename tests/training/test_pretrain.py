"""Policy pretraining pieces: data that teaches stopping, packing, a tiny end-to-end run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from pluralign.data.text import make_prompts
from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.pipeline.config import load_stage_config
from pluralign.training.generation import sample_continuations
from pluralign.training.models import load_causal_lm, load_tokenizer
from pluralign.training.pretrain import (
    PretrainConfig,
    build_policy,
    heldout_loss,
    pack_blocks,
    prepare_documents,
    split_reviews,
    train_and_evaluate,
)


def test_prepare_documents_cuts_the_requested_fraction() -> None:
    text = "One. Two! Three? Four. Five."
    docs = prepare_documents([text] * 2000, 0.5, 3, np.random.default_rng(0))
    short = [d for d in docs if d != text]
    assert 0.45 < len(short) / len(docs) < 0.55
    assert {d.count(" ") + 1 for d in short} == {1, 2, 3}  # 1..3 sentences
    assert all(text.startswith(d) for d in short)
    with pytest.raises(ValueError, match="short_doc_fraction"):
        prepare_documents([text], 1.5, 3, np.random.default_rng(0))


def test_pack_blocks_puts_eos_between_documents() -> None:
    tok = load_gpt2_tokenizer(max_merges=1000)
    blocks = pack_blocks(tok, ["a b c", "d e", "f g h i"], block_size=4)
    stream = blocks.flatten().tolist()
    assert blocks.shape[1] == 4
    ids = [tok(d, add_special_tokens=False)["input_ids"] for d in ["a b c", "d e", "f g h i"]]
    expected = [t for doc in ids for t in (*doc, tok.eos_token_id)]
    assert stream == expected[: len(stream)]
    with pytest.raises(ValueError, match="do not fill one block"):
        pack_blocks(tok, ["a"], block_size=100)


def test_prompts_start_with_eos_as_bos() -> None:
    tok = load_gpt2_tokenizer(max_merges=1000)
    prompts = make_prompts(tok, ["This movie was great fun to watch", "Bad"], n_tokens=4)
    assert len(prompts) == 1 and prompts[0][0] == tok.eos_token_id and len(prompts[0]) == 5


def test_split_reviews_is_disjoint_and_seeded() -> None:
    a, b = split_reviews(100, 60, 20, seed=1)
    assert not set(a) & set(b) and len(a) == 60 and len(b) == 20
    assert split_reviews(100, 60, 20, seed=1) == (a, b)
    with pytest.raises(ValueError, match="> 100 reviews"):
        split_reviews(100, 90, 20, seed=1)


def _tiny_policy(n_layer: int, block_size: int):
    """A randomly initialised tiny policy and its 500-merge tokenizer."""
    cfg = load_stage_config("policy_pretrain", PretrainConfig, None, "cpu")
    tok = load_gpt2_tokenizer(max_merges=500)
    cfg = dataclasses.replace(cfg, n_layer=n_layer, n_embd=32, n_head=2, block_size=block_size)
    torch.manual_seed(0)
    return build_policy(cfg, tok), tok


def test_heldout_loss_matches_the_model_loss() -> None:
    model, _ = _tiny_policy(n_layer=1, block_size=16)
    blocks = torch.randint(0, 700, (6, 16))
    ours = heldout_loss(model, blocks, batch_size=4)  # two uneven batches
    with torch.no_grad():
        reference = model(input_ids=blocks, labels=blocks).loss.item()  # HF's own shift
    assert ours == pytest.approx(reference, rel=1e-5)


def test_tiny_pretraining_learns_saves_and_reloads(tiny_params: Path, tmp_path: Path) -> None:
    cfg = load_stage_config("policy_pretrain", PretrainConfig, tiny_params)
    assert isinstance(cfg, PretrainConfig) and cfg.profile == "cpu"
    cfg = dataclasses.replace(cfg, max_steps=30)
    result = train_and_evaluate(cfg, tmp_path / "policy")
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5  # it learned something
    assert np.isfinite(result.perplexity) and result.perplexity < 500  # vocab is 758
    assert 0 < result.bits_per_char < 10
    assert len(result.samples) == cfg.n_eval_prompts

    model, tok = load_causal_lm(tmp_path / "policy"), load_tokenizer(tmp_path / "policy")
    assert tok.eos_token_id == 756 and tok.pad_token_id == 757
    assert model.config.vocab_size == len(tok)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    # Sampling is reproducible from its seed and does not disturb the global generator.
    prompts = make_prompts(tok, ["This movie was great fun to watch"] * 3, 4)
    torch.manual_seed(5)
    first = sample_continuations(model, tok, prompts, 5, 0.7, seed=1)
    after = torch.rand(1)
    torch.manual_seed(5)
    assert sample_continuations(model, tok, prompts, 5, 0.7, seed=1) == first
    assert torch.rand(1) == after


def test_paper_profile_loads_a_local_gpt2_standin(tiny_params: Path, tmp_path: Path) -> None:
    """The paper path (``init_from`` a GPT-2 checkpoint) on a tiny local stand-in."""
    from transformers import GPT2Config, GPT2LMHeadModel

    standin = tmp_path / "gpt2-standin"
    GPT2LMHeadModel(
        GPT2Config(vocab_size=600, n_positions=64, n_embd=32, n_layer=1, n_head=2)
    ).save_pretrained(standin)
    cfg = dataclasses.replace(
        load_stage_config("policy_pretrain", PretrainConfig, tiny_params),
        init_from=str(standin),
        max_steps=2,
    )
    tok = load_gpt2_tokenizer(max_merges=cfg.max_merges)
    model = build_policy(cfg, tok)
    assert model.get_input_embeddings().num_embeddings >= len(tok)  # resized for [PAD]
    assert model.config.pad_token_id == tok.pad_token_id
    result = train_and_evaluate(cfg, tmp_path / "policy")
    assert np.isfinite(result.eval_loss)


def test_left_padding_does_not_change_continuations() -> None:
    """Mixed prompt lengths in one batch give what each prompt gives alone (near-greedy)."""
    model, tok = _tiny_policy(n_layer=2, block_size=32)
    prompts = [[tok.eos_token_id, 40, 41], [tok.eos_token_id, 300, 301, 302, 303, 304, 305]]
    together = sample_continuations(model, tok, prompts, 6, temperature=1e-4, seed=0)
    alone = [sample_continuations(model, tok, [p], 6, temperature=1e-4, seed=0)[0] for p in prompts]
    assert together == alone
