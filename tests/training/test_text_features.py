"""Frozen-encoder features on tiny from-scratch encoders (no downloads): the pooled half is
the model's own pooler (BERT) or first token (DistilBERT), the mean half runs over real
tokens only, so a text's features do not depend on what it is batched with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

from pluralign.pipeline.assets import packaged_minilm
from pluralign.training.text_features import encoder_features

HIDDEN = 16
SHORT = "a fine film"
LONG = "the plot is thin but the music works and the actors seem to enjoy every scene"


@pytest.fixture(scope="module")
def bert_tok():
    return AutoTokenizer.from_pretrained(packaged_minilm())


@pytest.fixture(scope="module")
def bert(bert_tok) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=bert_tok.vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=2,
    )
    return BertForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def distilbert(bert_tok) -> DistilBertForSequenceClassification:
    torch.manual_seed(1)
    cfg = DistilBertConfig(
        vocab_size=bert_tok.vocab_size,
        dim=HIDDEN,
        hidden_dim=32,
        n_layers=1,
        n_heads=2,
        max_position_embeddings=64,
        num_labels=2,
    )
    return DistilBertForSequenceClassification(cfg).eval()


def one_text(base, tok, text: str, max_length: int = 64):
    """(first-token state, plain mean of the last hidden states, pooler output or None) of
    one text run alone: no padding anywhere."""
    enc = tok([text], truncation=True, max_length=max_length, return_tensors="pt")
    assert bool(enc["attention_mask"].all())
    with torch.no_grad():
        out = base(**enc)
    last = out.last_hidden_state[0].double()
    pooler = getattr(out, "pooler_output", None)
    return last[0].numpy(), last.mean(0).numpy(), None if pooler is None else pooler[0].numpy()


def test_shape_and_the_two_halves_of_bert_features(bert, bert_tok) -> None:
    texts = [SHORT, LONG, "bad"]
    X = encoder_features(bert, bert_tok, texts, max_length=64)
    assert X.shape == (3, 2 * HIDDEN) and X.dtype == np.float64
    for i, t in enumerate(texts):
        first, mean, pooler = one_text(bert.bert, bert_tok, t)
        np.testing.assert_allclose(X[i, :HIDDEN], pooler, atol=1e-5)  # what the head reads
        np.testing.assert_allclose(X[i, HIDDEN:], mean, atol=1e-5)
        assert np.abs(pooler - first).max() > 1e-3  # the pooler is not the first token
    assert np.abs(X[0] - X[1]).max() > 1e-3  # texts get different features


def test_features_do_not_depend_on_batch_padding(bert, bert_tok) -> None:
    alone = encoder_features(bert, bert_tok, [SHORT], max_length=64)
    padded = encoder_features(bert, bert_tok, [SHORT, LONG], max_length=64)
    # SHORT really was padded in the batch
    enc = bert_tok([SHORT, LONG], padding=True, return_tensors="pt")
    assert int(enc["attention_mask"][0].sum()) < enc["attention_mask"].shape[1]
    np.testing.assert_allclose(padded[0], alone[0], atol=1e-5)
    # batch size does not matter either
    in_ones = encoder_features(bert, bert_tok, [SHORT, LONG, SHORT], 64, batch_size=1)
    in_threes = encoder_features(bert, bert_tok, [SHORT, LONG, SHORT], 64, batch_size=3)
    np.testing.assert_allclose(in_ones, in_threes, atol=1e-5)
    np.testing.assert_allclose(in_threes[2], alone[0], atol=1e-5)


def test_max_length_truncates_like_the_tokenizer(bert, bert_tok) -> None:
    X = encoder_features(bert, bert_tok, [LONG], max_length=6)
    _, mean, pooler = one_text(bert.bert, bert_tok, LONG, max_length=6)
    np.testing.assert_allclose(X[0], np.concatenate([pooler, mean]), atol=1e-5)
    assert np.abs(X - encoder_features(bert, bert_tok, [LONG], max_length=64)).max() > 1e-3


def test_a_model_without_pooler_gives_its_first_token(distilbert, bert_tok) -> None:
    assert not hasattr(distilbert.distilbert, "pooler")
    texts = [LONG, SHORT]
    X = encoder_features(distilbert, bert_tok, texts, max_length=64)
    assert X.shape == (2, 2 * HIDDEN)
    for i, t in enumerate(texts):
        first, mean, pooler = one_text(distilbert.distilbert, bert_tok, t)
        assert pooler is None
        np.testing.assert_allclose(X[i, :HIDDEN], first, atol=1e-5)
        np.testing.assert_allclose(X[i, HIDDEN:], mean, atol=1e-5)


def test_dropout_is_off_and_the_training_mode_comes_back(bert_tok) -> None:
    torch.manual_seed(2)
    cfg = BertConfig(
        vocab_size=bert_tok.vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        hidden_dropout_prob=0.5,
        attention_probs_dropout_prob=0.5,
    )
    model = BertForSequenceClassification(cfg).train()
    one = encoder_features(model, bert_tok, [SHORT, LONG], 64)
    two = encoder_features(model, bert_tok, [SHORT, LONG], 64)
    np.testing.assert_allclose(one, two, atol=1e-6)  # in train mode dropout would differ
    assert model.training and model.bert.training
    model.eval()
    encoder_features(model, bert_tok, [SHORT], 64)
    assert not model.bert.training


def test_no_texts_give_an_empty_matrix(bert, bert_tok) -> None:
    X = encoder_features(bert, bert_tok, [], max_length=64)
    assert X.shape == (0, 2 * HIDDEN)
