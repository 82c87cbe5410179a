"""The sentiment judge: label mapping, disjoint splits, and the paper path on a stand-in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

import pluralign.experiments.sentiment_judge as sentiment_judge
from pluralign.experiments.sentiment_judge import Config, build_splits, train_and_evaluate
from pluralign.pipeline.assets import AssetError, packaged_minilm
from pluralign.pipeline.config import load_stage_config
from pluralign.training.models import load_tokenizer
from pluralign.training.sentiment import SentimentJudge, positive_index


def test_positive_index_reads_the_label_names() -> None:
    assert positive_index({0: "NEGATIVE", 1: "POSITIVE"}) == 1
    assert positive_index({0: "POSITIVE", 1: "NEGATIVE"}) == 0
    assert positive_index({0: "LABEL_0", 1: "LABEL_1"}) == 1  # distilbert-imdb style
    with pytest.raises(ValueError, match="no positive label"):
        positive_index({0: "cat", 1: "dog"})


def test_splits_are_disjoint_and_seeded(tiny_params: Path) -> None:
    cfg = load_stage_config("sentiment_judge", Config, tiny_params)
    assert isinstance(cfg, Config)
    assert (cfg.imdb, cfg.rotten_tomatoes) == ("packaged", "packaged")
    a, b = build_splits(cfg), build_splits(cfg)
    assert a.train_text == b.train_text
    train = set(a.train_text)
    for texts, labels in a.eval_sets.values():
        assert not train & set(texts)
        assert set(labels) <= {0, 1}
    assert len(a.train_text) == cfg.train_imdb + cfg.train_rotten_tomatoes
    with pytest.raises(ValueError, match="rotten_tomatoes: asked for"):
        build_splits(dataclasses.replace(cfg, train_rotten_tomatoes=9000))


def test_splits_refuse_an_unpinned_hub_rotten_tomatoes(
    tiny_params: Path, host_lookups: list[str], monkeypatch
) -> None:
    """The Rotten Tomatoes source is its own param now; a hub name needs ``@revision``
    (IMDB is replaced by a small stand-in: only the second source is under test)."""
    cfg = load_stage_config("sentiment_judge", Config, tiny_params)
    n = cfg.train_imdb + cfg.eval_imdb
    imdb = Dataset.from_dict(
        {"text": [f"review {i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
    )
    monkeypatch.setattr(sentiment_judge, "load_imdb", lambda name: imdb)
    name = "cornell-movie-review-data/rotten_tomatoes"
    with pytest.raises(AssetError, match=rf"pin a revision \({name}@<commit or tag>\)"):
        build_splits(dataclasses.replace(cfg, rotten_tomatoes=name))
    assert host_lookups == []


@pytest.fixture
def distilbert_standin(tmp_path: Path) -> Path:
    """A tiny DistilBERT classifier named like lvwerra/distilbert-imdb (labels NEG/POS)."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    tokenizer = load_tokenizer(packaged_minilm())
    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size,
        dim=32,
        hidden_dim=64,
        n_layers=1,
        n_heads=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    folder = tmp_path / "distilbert-imdb-standin"
    DistilBertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_paper_path_only_evaluates_a_ready_classifier(
    tiny_params: Path, distilbert_standin: Path, tmp_path: Path
) -> None:
    cfg = dataclasses.replace(
        load_stage_config("sentiment_judge", Config, tiny_params),
        base_model=str(distilbert_standin),
        max_steps=0,
    )
    result = train_and_evaluate(cfg, tmp_path / "judge")
    assert result.log_history == [] and result.train_seconds == 0.0
    assert set(result.accuracy) == {"imdb", "rotten_tomatoes"}
    judge = SentimentJudge.from_pretrained(tmp_path / "judge")
    probs = judge.positive_prob(["great film", "terrible film", "ok"])
    assert probs.shape == (3,) and np.all((probs >= 0) & (probs <= 1))
    # Batching does not change scores.
    judge.batch_size = 1
    np.testing.assert_allclose(
        judge.positive_prob(["great film", "terrible film", "ok"]), probs, rtol=1e-5, atol=1e-6
    )
