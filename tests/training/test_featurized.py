"""The torch BT loss against the numpy MLE, plus training smoke tests on tiny models."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from pluralign.core.bradley_terry import fit_bt, objective, win_matrix
from pluralign.training.featurized import LinearReward, MLPReward, train_featurized_bt


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    # Tiny tensors: intra-op threads only add synchronization, which is slow on a busy box.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def comparisons(m: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=m)
    i = rng.integers(0, m, n)
    j = (i + rng.integers(1, m, n)) % m
    i_wins = rng.uniform(size=n) < 1.0 / (1.0 + np.exp(scores[j] - scores[i]))
    return np.where(i_wins, i, j), np.where(i_wins, j, i)


@pytest.mark.parametrize("lam", [0.0, 1.5])
def test_linear_one_hot_matches_fit_bt(lam):
    # One-hot features and no bias make r(x_k) = theta_k a free reward per alternative, so the
    # torch loss (objective / N) and fit_bt must share the minimizer.
    m, n = 6, 300
    win, los = comparisons(m, n, seed=0)
    w = np.random.default_rng(1).uniform(0.2, 1.0, size=m)
    ref = fit_bt(win_matrix(win, los, m), lam, w)
    model = LinearReward(m, bias=False, seed=0).double()
    feats = torch.eye(m, dtype=torch.float64)
    losses = train_featurized_bt(
        model, feats, win, los, w, lam=lam, lr=0.05, batch_size=n, n_steps=1500
    )
    r = model(feats).detach().numpy()
    if lam == 0:
        r -= np.dot(w, r) / w.sum()  # shift-invariant loss: compare in fit_bt's gauge
    np.testing.assert_allclose(r, ref, atol=1e-3)
    # Full batch: the reported loss is exactly the numpy objective / N at the same rewards.
    final = objective(model(feats).detach().numpy(), win_matrix(win, los, m), lam, w) / n
    assert losses[-1] == pytest.approx(final, rel=1e-3)


def test_mlp_training_changes_every_parameter_and_lowers_loss():
    m, d = 40, 5
    feats = np.random.default_rng(2).normal(size=(m, d)).astype(np.float32)
    win, los = comparisons(m, 2_000, seed=3)
    model = MLPReward(d, seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    losses = train_featurized_bt(
        model, feats, win, los, lam=0.1, lr=1e-2, batch_size=64, n_steps=200, progress=True
    )
    assert len(losses) == 200 and np.all(np.isfinite(losses))
    assert np.mean(losses[-20:]) < np.mean(losses[:20])
    for p0, p in zip(before, model.parameters(), strict=True):
        assert not torch.equal(p0, p)


def test_seeds_make_runs_reproducible_and_leave_global_rng_alone():
    feats = np.random.default_rng(4).normal(size=(10, 3))
    win, los = comparisons(10, 500, seed=5)
    state = torch.get_rng_state()

    def run(seed: int) -> list[float]:
        model = MLPReward(3, hidden=8, seed=1)
        return train_featurized_bt(model, feats, win, los, batch_size=32, n_steps=20, seed=seed)

    assert run(0) == run(0)
    assert run(0) != run(1)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(MLPReward(3, seed=1).net[0].weight, MLPReward(3, seed=1).net[0].weight)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"features": np.ones(4)}, "features must be a 2-D"),
        ({"winners": [0, 1], "losers": [1]}, "equal length"),
        ({"winners": [], "losers": []}, "non-empty"),
        ({"winners": [0, 4], "losers": [1, 2]}, "indices into features' 4 rows"),
        ({"winners": [0, 1], "losers": [0, 2]}, "must differ"),
        ({"alt_weights": np.ones(3)}, r"alt_weights must be .* shape \(4,\)"),
        ({"alt_weights": -np.ones(4)}, "alt_weights must be finite, non-negative"),
        ({"lam": -1.0}, "lam must be"),
        ({"n_steps": 0}, "n_steps must be"),
        ({"batch_size": 0}, "batch_size and n_steps must be"),
    ],
)
def test_rejects_bad_input(kwargs, match):
    args = {"features": np.eye(4), "winners": [0, 1], "losers": [1, 2]} | kwargs
    with pytest.raises(ValueError, match=match):
        train_featurized_bt(LinearReward(4), **args)
