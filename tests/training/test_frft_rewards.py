"""FRFT's reward models (pluralign.training.frft_rewards): a fresh linear BT probe on frozen
features, and a fresh backbone reward model whose weights start PPO's critic.

Every check is against something computed independently here: planted Bradley-Terry data
with a known direction, the ridge BT optimality condition written out with a z-score
computed by hand, call counts of a fake feature map, and the weights of the models the
recipe built.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_gpt2
from scipy.special import expit
from transformers import AutoModelForSequenceClassification, GPT2Config

from pluralign.data.preferences import PreferenceRecords
from pluralign.pipeline.assets import load_gpt2_tokenizer
from pluralign.training.frft_rewards import NeuralRewards, ProbeRewards
from pluralign.training.ppo import value_model_from
from pluralign.training.reward_models import RewardModelSettings, score_texts

# --------------------------------------------------------------------------- the probe

D = 4
N_TEXTS = 160
SCALE = np.array([1.0, 10.0, 0.1, 3.0])
SHIFT = np.array([5.0, -3.0, 0.0, 100.0])
THETA = np.array([2.0, -1.0, 0.0, 0.5])  # the planted direction, on z-scored features


class Lookup:
    """featurize: a fixed feature row per text (``t<i>``), counting calls per text."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.X = rng.normal(size=(N_TEXTS, D)) * SCALE + SHIFT
        self.calls: dict[str, int] = {}
        self.batches = 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.batches += 1
        for t in texts:
            self.calls[t] = self.calls.get(t, 0) + 1
        return self.X[[int(t[1:]) for t in texts]]

    @property
    def texts(self) -> list[str]:
        return [f"t{i}" for i in range(N_TEXTS)]

    def z(self, rows) -> np.ndarray:
        """The z-score by hand (population std over every text)."""
        return (self.X[rows] - self.X.mean(0)) / self.X.std(0)


def pairs(lookup: Lookup, n: int, seed: int) -> tuple[PreferenceRecords, np.ndarray, np.ndarray]:
    """n pairs of distinct texts labelled by Bradley-Terry on the planted direction (one
    empty prompt, so the reward models score the bare texts)."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, N_TEXTS, size=(2, n))
    b = np.where(a == b, (b + 1) % N_TEXTS, b)
    margin = (lookup.z(a) - lookup.z(b)) @ THETA
    a_wins = rng.random(n) < expit(margin)
    win, lose = np.where(a_wins, a, b), np.where(a_wins, b, a)
    rec = PreferenceRecords(
        prompts=[""],
        prompt_index=np.zeros(n, dtype=int),
        chosen=[f"t{i}" for i in win],
        rejected=[f"t{i}" for i in lose],
        source=np.full(n, "s"),
        labeler=np.full(n, "l"),
    )
    return rec, win, lose


def theta_of(reward) -> np.ndarray:
    return reward.state["theta"].numpy()


def test_probe_recovers_the_planted_direction_at_the_ridge_optimum() -> None:
    """The fitted head satisfies the ridge BT optimality condition on the by-hand z-scored
    features (lam theta = sum_i sigma(-m_i) z_i), points along the planted direction, and
    orders held-out pairs as the planted reward does; scores are z-features . theta."""
    lookup = Lookup()
    probe = ProbeRewards(lookup, lookup.texts, ridge=1.0)
    rec, win, lose = pairs(lookup, 800, seed=1)
    reward = probe.fit(rec, seed=0)
    theta = theta_of(reward)
    Z = lookup.z(win) - lookup.z(lose)
    grad = 1.0 * theta - Z.T @ expit(-(Z @ theta))
    assert np.abs(grad).max() < 1e-6 * len(rec)
    cos = theta @ THETA / np.linalg.norm(theta) / np.linalg.norm(THETA)
    assert cos > 0.95
    a, b = np.arange(0, N_TEXTS, 2), np.arange(1, N_TEXTS, 2)
    sa = reward.score([f"t{i}" for i in a])
    sb = reward.score([f"t{i}" for i in b])
    np.testing.assert_allclose(sa, lookup.z(a) @ theta, rtol=1e-10, atol=1e-10)
    truth = (lookup.z(a) - lookup.z(b)) @ THETA
    assert np.mean((sa > sb) == (truth > 0)) > 0.9
    assert reward.critic_state is None  # a head is not a critic: PPO resets the critic


def test_probe_fits_are_fresh_heads_and_snapshots_round_trip() -> None:
    """Fitting on A then on B gives B's head, the same as a probe that never saw A, and the
    reward fitted on A still scores as before; load(state) scores identically."""
    lookup = Lookup()
    probe = ProbeRewards(lookup, lookup.texts, ridge=2.0)
    rec_a, *_ = pairs(lookup, 200, seed=2)
    rec_b, *_ = pairs(lookup, 200, seed=3)
    texts = lookup.texts[:50]
    fit_a = probe.fit(rec_a)
    before = fit_a.score(texts)
    fit_b = probe.fit(rec_b)
    alone = ProbeRewards(Lookup(), lookup.texts, ridge=2.0).fit(rec_b)
    np.testing.assert_allclose(theta_of(fit_b), theta_of(alone), rtol=1e-12, atol=1e-12)
    assert not np.allclose(theta_of(fit_a), theta_of(fit_b))
    np.testing.assert_array_equal(fit_a.score(texts), before)
    loaded = probe.load({k: v.clone() for k, v in fit_b.state.items()})
    np.testing.assert_array_equal(loaded.score(texts), fit_b.score(texts))
    assert isinstance(fit_b.state["theta"], torch.Tensor)


def test_probe_featurizes_each_distinct_text_once() -> None:
    """Features are cached by text: the normalization texts, fits and scores (repeated and
    duplicated texts included) call featurize once per distinct text."""
    lookup = Lookup()
    probe = ProbeRewards(lookup, lookup.texts[:100] + lookup.texts[:10], ridge=1.0)
    assert lookup.calls == {t: 1 for t in lookup.texts[:100]}
    rec, *_ = pairs(lookup, 300, seed=4)
    reward = probe.fit(rec)
    reward.score(lookup.texts + lookup.texts[:5])
    probe.fit(rec)
    reward.score(lookup.texts)
    assert lookup.calls == {t: 1 for t in lookup.texts}


def test_probe_refusals() -> None:
    """A ridge that is not a finite number > 0, and no records to fit."""
    lookup = Lookup()
    for ridge in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="ridge must be > 0"):
            ProbeRewards(lookup, lookup.texts, ridge)
    rec, *_ = pairs(lookup, 10, seed=5)
    with pytest.raises(ValueError, match="no records"):
        ProbeRewards(lookup, lookup.texts, 1.0).fit(rec.subset([]))


# --------------------------------------------------------------------------- the neural recipe

SETTINGS = RewardModelSettings(
    num_train_epochs=2.0, learning_rate=3e-3, per_device_train_batch_size=4, max_length=16
)


@pytest.fixture(scope="module")
def tok():
    return load_gpt2_tokenizer(max_merges=300)


class TinyRewardModels:
    """new_model: a 1-layer GPT-2 with a scalar head, the critic's architecture (the
    paper path's rm_backbone = policy); keeps every model it built and its start weights."""

    def __init__(self, tok) -> None:
        self.tok = tok
        self.built: list[tuple[torch.nn.Module, dict]] = []

    def __call__(self):
        cfg = GPT2Config(
            vocab_size=len(self.tok), n_positions=32, n_embd=16, n_layer=1, n_head=2,
            num_labels=1, pad_token_id=self.tok.pad_token_id,
        )  # fmt: skip
        model = AutoModelForSequenceClassification.from_config(cfg)
        self.built.append((model, {k: v.clone() for k, v in model.state_dict().items()}))
        return model


def word_records(n: int, seed: int) -> PreferenceRecords:
    rng = np.random.default_rng(seed)
    good = ["great", "fun", "lovely", "superb"]
    bad = ["dull", "awful", "boring", "weak"]
    prompts = ["the film was", "i found it"]
    idx = rng.integers(0, 2, size=n)
    return PreferenceRecords(
        prompts=prompts,
        prompt_index=idx,
        chosen=[" " + str(rng.choice(good)) for _ in range(n)],
        rejected=[" " + str(rng.choice(bad)) for _ in range(n)],
        source=np.full(n, "s"),
        labeler=np.full(n, "l"),
    )


def test_neural_rewards_train_a_fresh_model_whose_weights_start_the_critic(tok) -> None:
    """Each fit trains a new model (built by new_model, moved from its start weights): its
    state is the snapshot and the critic's start, and it loads into the critic PPO builds
    from the policy; load(state) scores as the fitted reward does; a second fit leaves the
    first reward untouched; no records is refused."""
    models = TinyRewardModels(tok)
    recipe = NeuralRewards(models, tok, SETTINGS)
    texts = ["the film was great", "the film was dull", "i found it fun", "i found it weak"]
    first = recipe.fit(word_records(16, 0), seed=0)
    model, start = models.built[0]
    weights = model.state_dict()
    assert first.state.keys() == weights.keys()
    assert all(torch.equal(first.state[k], weights[k]) for k in weights)
    assert first.critic_state is not None
    assert all(torch.equal(first.critic_state[k], weights[k]) for k in weights)
    assert not all(torch.equal(start[k], weights[k]) for k in weights)  # it was trained
    scores = first.score(texts)
    np.testing.assert_allclose(scores, score_texts(model, tok, texts, SETTINGS.max_length))
    critic = value_model_from(tiny_gpt2(tok, seed=0))
    critic.load_state_dict(first.critic_state)  # strict: the critic's architecture
    loaded = recipe.load(first.state)
    assert len(models.built) == 2 and models.built[1][0] is not model
    np.testing.assert_allclose(loaded.score(texts), scores, rtol=1e-6, atol=1e-6)
    second = recipe.fit(word_records(16, 1), seed=1)
    assert len(models.built) == 3
    np.testing.assert_array_equal(first.score(texts), scores)
    assert not np.allclose(second.score(texts), scores)
    with pytest.raises(ValueError, match="no records"):
        recipe.fit(word_records(4, 0).subset([]))
