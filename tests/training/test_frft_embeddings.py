"""FRFT's embeddings (pluralign.training.frft_embeddings): the policy's log-prob profile and
mean hidden state, character TF-IDF, the fitted z-score + unit norm, and held-out source
identification.

Every check is against something computed independently here: token-by-token forward
passes of a tiny GPT-2 without batching or padding, a z-score and cosine computed by hand,
and planted sources (separable, or pure noise).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_gpt2

from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.training.frft_embeddings import (
    Embedding,
    char_tfidf,
    hidden_mean,
    logprob_profile,
    source_id_accuracy,
)


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=300)


@pytest.fixture(scope="module")
def policy(tok):
    return tiny_gpt2(tok, seed=1, init=0.5)  # peaked next-token distributions


# --------------------------------------------------------------------------- log-prob profile


@torch.no_grad()
def brute_force_profile(policy, tok, prompt: str, response: str) -> np.ndarray:
    """One unpadded forward pass of [BOS, prompt, response] (cut at n_positions), then each
    response token's log-prob, entropy and argmax hit read off by a loop."""
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    seq = [tok.bos_token_id, *p, *r][: policy.config.n_positions]
    logits = policy(input_ids=torch.tensor([seq])).logits[0].double()
    lp, ent, top = [], [], []
    for pos in range(1 + len(p), len(seq)):  # the response tokens that survived the cut
        logp = torch.log_softmax(logits[pos - 1], dim=-1)
        lp.append(float(logp[seq[pos]]))
        ent.append(float(-(logp.exp() * logp).sum()))
        top.append(float(int(logits[pos - 1].argmax()) == seq[pos]))
    if not lp:
        return np.zeros(9)
    lp_ = np.array(lp)
    return np.array(
        [lp_.mean(), lp_.std(), lp_.min(), *np.quantile(lp_, [0.1, 0.5, 0.9]),
         np.mean(ent), np.mean(top), np.log(1 + len(lp))]
    )  # fmt: skip


def greedy_text(policy, tok, prompt: str, n: int) -> str:
    """n greedy tokens after [BOS, prompt], decoded."""
    ids = [tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(policy(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return tok.decode(ids[-n:])


def test_logprob_profile_matches_a_token_by_token_computation(tok, policy) -> None:
    """Batched (batch_size 2: padding and a batch boundary) features equal an unpadded
    per-record loop: mean / std / min / quantiles of the response tokens' log-probs,
    mean entropy, argmax share, log(1 + response tokens); a response cut at the policy's
    32 positions counts only its kept tokens; the policy's training mode is restored."""
    greedy = greedy_text(policy, tok, "the film", 6)
    prompts = ["the film", "a long and winding story about", "i think", "the film"]
    responses = [
        " was a great fun to watch",
        " nothing",
        " " + " ".join(["very"] * 40),  # cut at n_positions
        greedy,
    ]
    policy.train()
    got = logprob_profile(policy, tok, prompts, responses, batch_size=2)
    assert policy.training
    policy.eval()  # no dropout in the reference passes
    assert got.shape == (4, 9) and got.dtype == np.float64
    for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        np.testing.assert_allclose(got[i], brute_force_profile(policy, tok, p, r), atol=2e-5)
    n_resp = [len(tok(r, add_special_tokens=False)["input_ids"]) for r in responses[:2]]
    np.testing.assert_allclose(got[:2, 8], np.log1p(n_resp))
    n_prompt = len(tok(prompts[2], add_special_tokens=False)["input_ids"])
    assert got[2, 8] == pytest.approx(np.log1p(32 - 1 - n_prompt))
    # the greedy continuation: most tokens are the argmax (decoding and re-encoding can split
    # some differently); a random text's rarely are
    assert got[3, 7] >= 0.5 and got[3, 7] > got[0, 7]
    assert np.all(got[:, 2] <= got[:, 0]) and np.all(got[:, 0] <= 0)


def test_logprob_profile_empty_response_and_refusals(tok, policy) -> None:
    """An empty response gives a row of zeros (and does not disturb its batch mates);
    prompts and responses must pair up."""
    got = logprob_profile(policy, tok, ["the film", "i think"], ["", " it was fine"])
    assert got[0].tolist() == [0.0] * 9
    np.testing.assert_allclose(
        got[1], brute_force_profile(policy, tok, "i think", " it was fine"), atol=2e-5
    )
    with pytest.raises(ValueError, match="2 prompts for 1 responses"):
        logprob_profile(policy, tok, ["a", "b"], ["c"])


def test_hidden_mean_matches_unpadded_forward_passes(tok, policy) -> None:
    """Mean last hidden state over prompt + response tokens, batched with right padding,
    equals one unpadded pass per text; the tokenizer's padding side is restored."""
    prompts = ["the film", "a long and winding story about", "i"]
    responses = [" was fun", " two friends and a dog who", " think"]
    side = tok.padding_side
    got = hidden_mean(policy, tok, prompts, responses, batch_size=2)
    assert tok.padding_side == side
    assert got.shape == (3, policy.config.n_embd)
    with torch.no_grad():
        for i, (p, r) in enumerate(zip(prompts, responses, strict=True)):
            ids = tok(p + r)["input_ids"]
            h = policy.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0]
            np.testing.assert_allclose(got[i], h.mean(0).double().numpy(), atol=1e-5)


def test_char_tfidf_is_seeded_and_sized() -> None:
    """(n, dims) rows, the same text gives the same row, and a refit with the same seed
    gives the same map."""
    texts = [f"the movie number {i} was {'good' if i % 2 else 'bad'} and long" for i in range(30)]
    fn = char_tfidf(texts, dims=5, seed=0)
    out = fn(texts[:3] + texts[:1])
    assert out.shape == (4, 5) and out.dtype == np.float64
    np.testing.assert_allclose(out[0], out[3])
    np.testing.assert_allclose(char_tfidf(texts, dims=5, seed=0)(texts[:3]), out[:3])


# --------------------------------------------------------------------------- Embedding


def table_raw(table: dict[str, list[float]]):
    """Raw features looked up by response (prompts must be 'p')."""

    def raw(prompts, responses):
        assert all(p == "p" for p in prompts)
        return np.array([table[r] for r in responses], dtype=np.float64)

    return raw


def test_embedding_is_a_fitted_z_score_then_unit_norm() -> None:
    """fit: z-score with the fitted texts' mean and population std (a constant column
    divides by 1), unit rows; a later call reuses the fitted statistics; the dot product of
    two embeddings is the cosine of the standardized feature rows, computed by a loop."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(7, 4)) * [1.0, 10.0, 0.1, 3.0] + [5.0, -3.0, 0.0, 100.0]
    X[:, 2] = 2.0  # constant (exactly representable): contributes 0
    table = {f"r{i}": list(row) for i, row in enumerate(X)}
    table["new"] = [6.0, 1.0, 7.0, 90.0]
    emb = Embedding("t", table_raw(table))
    fitted = emb.fit(["p"] * 7, [f"r{i}" for i in range(7)])
    assert fitted.dtype == np.float32
    mean = [sum(X[:, j]) / 7 for j in range(4)]
    std = [np.sqrt(sum((X[i, j] - mean[j]) ** 2 for i in range(7)) / 7) for j in range(4)]
    std[2] = 1.0
    Z = [[(X[i, j] - mean[j]) / std[j] for j in range(4)] for i in range(7)]
    for i in range(7):
        assert np.linalg.norm(fitted[i]) == pytest.approx(1.0, abs=1e-6)
        assert fitted[i, 2] == 0.0
        for j in range(7):
            cos = sum(a * b for a, b in zip(Z[i], Z[j], strict=True)) / np.sqrt(
                sum(a * a for a in Z[i]) * sum(b * b for b in Z[j])
            )
            assert float(fitted[i] @ fitted[j]) == pytest.approx(cos, abs=1e-6)
    new = emb(["p"], ["new"])[0]
    z_new = [(table["new"][j] - mean[j]) / std[j] for j in range(4)]
    np.testing.assert_allclose(new, np.array(z_new) / np.linalg.norm(z_new), atol=1e-6)
    again = emb(["p", "p"], ["r3", "r5"])
    np.testing.assert_allclose(again, fitted[[3, 5]], atol=1e-7)  # not refitted


def test_embedding_refuses_to_embed_before_fit_and_keeps_a_zero_row() -> None:
    """Calling an unfitted embedding raises; a row equal to the mean stays zero (no
    division by a zero norm)."""
    emb = Embedding("t", table_raw({"a": [1.0, 2.0], "b": [3.0, 6.0], "c": [2.0, 4.0]}))
    with pytest.raises(RuntimeError, match="not fitted"):
        emb(["p"], ["a"])
    out = emb.fit(["p"] * 3, ["a", "b", "c"])
    assert out[2].tolist() == [0.0, 0.0] and np.all(np.isfinite(out))


def test_a_constant_feature_that_does_not_average_exactly_contributes_nothing() -> None:
    """A constant raw column is no information: it must z-score to 0 (as
    pluralign.core.stats.column_stats does by testing equality), whatever the rounding of
    its mean; otherwise every cosine gets a common offset."""
    emb = Embedding("t", table_raw({"a": [0.1, 1.0], "b": [0.1, 2.0], "c": [0.1, 3.0]}))
    out = emb.fit(["p"] * 3, ["a", "b", "c"])
    np.testing.assert_allclose(out, [[0.0, -1.0], [0.0, 0.0], [0.0, 1.0]], atol=1e-6)


# --------------------------------------------------------------------------- source identification


def planted_sources(separation: float, seed: int):
    """40 prompts x 3 sources, 5 features: the source's one-hot times ``separation`` plus
    unit Gaussian noise; groups = prompts."""
    rng = np.random.default_rng(seed)
    n_prompts, names = 40, np.array(["human", "sft", "perturbed"])
    source = np.tile(names, n_prompts)
    groups = np.repeat(np.arange(n_prompts), 3)
    onehot = np.zeros((source.size, 5))
    onehot[np.arange(source.size), np.tile(np.arange(3), n_prompts)] = 1.0
    return separation * onehot + rng.normal(size=onehot.shape), source, groups


def test_source_id_accuracy_separates_planted_sources_and_not_noise() -> None:
    """Well-separated sources are identified almost always; features without the source
    are near chance (1/3; loose bound); a single source is refused."""
    X, source, groups = planted_sources(6.0, 0)
    assert source_id_accuracy(X, source, groups, folds=4) >= 0.95
    X, source, groups = planted_sources(0.0, 1)
    assert source_id_accuracy(X, source, groups, folds=4) < 0.5
    with pytest.raises(ValueError, match="at least two sources"):
        source_id_accuracy(X[:4], ["a"] * 4, groups[:4], folds=2)
