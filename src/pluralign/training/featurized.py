"""Featurized rewards r(x) = model(phi(x)) trained with the (weighted) Bradley-Terry loss.

The case study of Procaccia et al. (2025) fits a 2-layer MLP (hidden 32) on PCA-reduced
embeddings with Adam (lr 1e-4, batch 512, 500 steps). The loss here is
``bradley_terry.objective`` divided by the number of comparisons, so with one-hot features
and a linear model it has the same minimizer as ``bradley_terry.fit_bt``; the tests use that
as the independent check tying this torch loss to the numpy one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import nn
from tqdm.auto import tqdm


@contextlib.contextmanager
def _local_seed(seed: int | None) -> Iterator[None]:
    """Seed torch's CPU RNG inside the block only; the global RNG state is restored after."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class LinearReward(nn.Module):
    """``r(x) = <theta, phi(x)> (+ b)``: the linear reward of the paper's theory.

    ``seed`` fixes the initialization locally (``None``: the global torch RNG, as usual).
    """

    def __init__(self, dim: int, bias: bool = True, seed: int | None = None) -> None:
        super().__init__()
        with _local_seed(seed):
            self.linear = nn.Linear(dim, 1, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features).squeeze(-1)  # (n, dim) -> (n,)


class MLPReward(nn.Module):
    """Two-layer MLP reward ``r(x) = v . relu(W phi(x) + b) + c`` (the case study's model).

    ``seed`` fixes the initialization locally (``None``: the global torch RNG, as usual).
    """

    def __init__(self, dim: int, hidden: int = 32, seed: int | None = None) -> None:
        super().__init__()
        with _local_seed(seed):
            self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).squeeze(-1)  # (n, dim) -> (n,)


def train_featurized_bt(
    model: nn.Module,
    features: ArrayLike | torch.Tensor,
    winners: ArrayLike | torch.Tensor,
    losers: ArrayLike | torch.Tensor,
    alt_weights: ArrayLike | torch.Tensor | None = None,
    lam: float = 0.0,
    lr: float = 1e-4,
    batch_size: int = 512,
    n_steps: int = 500,
    seed: int = 0,
    progress: bool = False,
) -> list[float]:
    r"""Fit ``model`` in place by Adam on the weighted BT loss; returns the loss of each step.

    With N comparisons ``(a_c beats b_c)``, alternative features ``phi`` (m, d) and weights
    ``w`` (m,) (all ones when ``alt_weights`` is None) the full loss is

    .. math::
        L = \frac{1}{N} \Big[ -\sum_c w_{a_c} w_{b_c} \log \sigma(r(a_c) - r(b_c))
            + \frac{\lambda}{2} \sum_x w_x r(x)^2 \Big],

    i.e. ``bradley_terry.objective(r, win_matrix(winners, losers, m), lam, w) / N``. Each
    step draws ``batch_size`` comparisons uniformly with replacement (a torch.Generator
    seeded by ``seed``) and uses the batch mean for the first term, an unbiased estimate; the
    regularizer is computed exactly over all m alternatives, as the model scores them all
    each step anyway. Below ``batch_size`` comparisons every step is full-batch. Adam is
    nearly invariant to the loss scale, so the 1/N only makes reported losses comparable.
    ``seed`` does not initialize ``model``: use the constructors' ``seed``.
    """
    param = next(model.parameters())
    feats = torch.as_tensor(features, dtype=param.dtype, device=param.device)  # (m, d)
    if feats.ndim != 2:
        raise ValueError(f"features must be a 2-D (m, d) array, got shape {tuple(feats.shape)}")
    m = feats.shape[0]
    win = torch.as_tensor(winners, device=param.device).long()  # (N,)
    los = torch.as_tensor(losers, device=param.device).long()  # (N,)
    if win.ndim != 1 or win.shape != los.shape or win.numel() == 0:
        raise ValueError("winners and losers must be non-empty 1-D arrays of equal length")
    if min(int(win.min()), int(los.min())) < 0 or max(int(win.max()), int(los.max())) >= m:
        raise ValueError(f"winners and losers must be indices into features' {m} rows")
    if bool(torch.any(win == los)):
        raise ValueError("winners and losers must differ (an alternative cannot beat itself)")
    if alt_weights is None:
        w = torch.ones(m, dtype=param.dtype, device=param.device)
    else:
        w = torch.as_tensor(np.asarray(alt_weights), dtype=param.dtype, device=param.device)
        if w.shape != (m,) or not bool(torch.all(torch.isfinite(w))) or bool(torch.any(w < 0)):
            raise ValueError(f"alt_weights must be finite, non-negative, with shape ({m},)")
    if not np.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0, got {lam}")
    if batch_size < 1 or n_steps < 1:
        raise ValueError(f"batch_size and n_steps must be >= 1, got {batch_size}, {n_steps}")

    n = win.numel()
    pair_w = w[win] * w[los]  # (N,)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses: list[float] = []
    for _ in tqdm(range(n_steps), disable=not progress, desc="BT reward", leave=False):
        if batch_size >= n:
            idx = torch.arange(n, device=param.device)
        else:
            idx = torch.randint(n, (batch_size,), generator=gen).to(param.device)  # (B,)
        r = model(feats)  # (m,)
        margin = r[win[idx]] - r[los[idx]]  # (B,)
        nll = -(pair_w[idx] * F.logsigmoid(margin)).mean()
        loss = nll + 0.5 * lam / n * torch.dot(w, r * r)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses
