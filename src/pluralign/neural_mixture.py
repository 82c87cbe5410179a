"""EM for a mixture of neural (transformer) reward models over users (MaxMin-RLHF, Alg. 1).

The same EM as ``mixture.fit_em``, with group u's reward ``r_u`` a sequence classifier with
one output instead of ``<theta_u, psi(x)>``:

- M-step: each group's model is trained further (warm start across iterations) with TRL's
  ``RewardTrainer`` on its users' comparisons (hard EM), or on every comparison weighted by
  the users' responsibilities (soft EM, via ``reward_trainer.WeightedRewardTrainer``).
- E-step: every model scores every distinct text once; the comparison margins go through
  ``mixture.user_log_likelihoods`` / ``hard_e_step`` / ``soft_e_step``, the very code of the
  linear EM, so the two cannot drift apart.

Unlike the linear M-step (an exact Newton solve), the neural M-step is a few epochs of Adam,
so the objective is not guaranteed to increase; it is recorded per iteration for inspection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from scipy.special import logsumexp
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pluralign.mixture import (
    FloatArray,
    IntArray,
    hard_e_step,
    prepare_users,
    soft_e_step,
    user_log_likelihoods,
)
from pluralign.reward_trainer import score_texts, tokenize_pairs, train_reward_model


@dataclass
class NeuralEMResult:
    """K fitted reward models and the users' groups; group labels 0..K-1 are arbitrary."""

    user_ids: NDArray[Any]  # (n_users,) distinct user ids, sorted
    assignment: IntArray  # (n_users,) the last E-step's groups
    responsibilities: FloatArray  # (n_users, K); one-hot for hard EM
    weights: FloatArray  # (K,) mixture weights
    log_likelihood: list[float]  # sum_h S[h, g(h)] (hard) or sum_h logsumexp (soft), per iteration
    assignments: list[IntArray]  # the assignment after each E-step (for recovery curves)
    models: list[PreTrainedModel]
    tokenizer: PreTrainedTokenizerBase
    max_length: int
    hard: bool
    converged: bool
    train_logs: list[list[dict[str, float]]] = field(default_factory=list)  # per M-step, group

    @property
    def n_iter(self) -> int:
        return len(self.log_likelihood)

    def rewards(self, texts: Sequence[str], batch_size: int = 64) -> FloatArray:
        """(n, K): every group model's reward of every text."""
        return np.stack(
            [
                score_texts(m, self.tokenizer, texts, self.max_length, batch_size)
                for m in self.models
            ],
            axis=1,
        )

    def _scores(self, chosen, rejected, users, alt_weights) -> tuple[NDArray[Any], FloatArray]:
        uidx, ids, c = prepare_users(users, len(chosen), alt_weights)
        margins = _margins(self, chosen, rejected)
        with np.errstate(divide="ignore"):
            log_pi = np.log(self.weights)
        return ids, user_log_likelihoods(margins, uidx, c, ids.size) + log_pi

    def assign(
        self,
        chosen: Sequence[str],
        rejected: Sequence[str],
        users: ArrayLike,
        alt_weights: ArrayLike | None = None,
    ) -> tuple[NDArray[Any], IntArray]:
        """Groups of (held-out) users by the E-step rule: (sorted user ids, groups)."""
        ids, post = self._scores(chosen, rejected, users, alt_weights)
        if self.hard:
            post -= np.log(self.weights)
        return ids, np.argmax(post, axis=1)

    def log_likelihood_of(
        self,
        chosen: Sequence[str],
        rejected: Sequence[str],
        users: ArrayLike,
        alt_weights: ArrayLike | None = None,
    ) -> float:
        """Mixture log-likelihood ``sum_h logsumexp_u(log pi_u + S[h, u])`` of (new) users."""
        return float(logsumexp(self._scores(chosen, rejected, users, alt_weights)[1], axis=1).sum())


def _margins(res: NeuralEMResult, chosen: Sequence[str], rejected: Sequence[str]) -> FloatArray:
    """(n, K) ``r_u(y_w) - r_u(y_l)``, scoring each distinct text once per model."""
    texts = list(chosen) + list(rejected)
    r = res.rewards(texts)  # (2n, K)
    return r[: len(chosen)] - r[len(chosen) :]


def _check_texts(chosen: Sequence[str], rejected: Sequence[str]) -> None:
    if len(chosen) != len(rejected):
        raise ValueError(f"chosen has {len(chosen)} texts but rejected has {len(rejected)}")
    for name, texts in (("chosen", chosen), ("rejected", rejected)):
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"{name}[{i}] is not a non-empty string: {t!r}")


def fit_neural_em(
    chosen: Sequence[str],
    rejected: Sequence[str],
    users: ArrayLike,
    n_groups: int,
    make_model: Callable[[int], PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    *,
    hard: bool = True,
    n_iter: int = 5,
    seed: int = 0,
    init: ArrayLike | None = None,
    alt_weights: ArrayLike | None = None,
    max_length: int = 128,
    tol: float = 1e-4,
    train_args: dict[str, Any] | None = None,
    progress: bool = False,
) -> NeuralEMResult:
    """Hard (paper) or soft EM over K neural BT reward models.

    Parameters
    ----------
    chosen, rejected : sequence of str, length n
        The preferred and the other response of each comparison (prompt included if any).
    users : array_like, shape (n,)
        User id of each comparison.
    make_model : callable
        ``make_model(k)`` returns group k's fresh model with ``num_labels=1``; it is called
        under ``torch.manual_seed(seed + k)`` so new heads are reproducible.
    hard : bool
        Hard EM trains each model on its users' comparisons; soft EM trains every model on all
        comparisons weighted by responsibility (K times the compute).
    n_iter : int
        Maximum EM iterations (one M-step + one E-step each).
    init : array_like, shape (n_users,), optional
        Initial group of each user (sorted ids); default round robin, as in the paper.
    alt_weights : array_like, shape (n,), optional
        Per-comparison weights c_i (e.g. clone-robust ``w(y_w) w(y_l)``), in M- and E-step.
    tol : float
        Soft EM stops when the objective improves by less than ``tol * (1 + |L|)``.
    train_args : dict, optional
        ``RewardConfig`` overrides for every M-step (epochs, lr, batch size, ...); the seed is
        set per iteration and group from ``seed``.
    progress : bool
        A tqdm bar over the M-step trainings (iterations x groups).
    """
    _check_texts(chosen, rejected)
    n = len(chosen)
    uidx, ids, c = prepare_users(users, n, alt_weights)
    K = int(n_groups)
    if n_groups != K or not 1 <= K <= ids.size:
        raise ValueError(f"n_groups must be an integer in [1, {ids.size}] (users), got {n_groups}")
    if int(n_iter) != n_iter or n_iter < 1:
        raise ValueError(f"n_iter must be an integer >= 1, got {n_iter}")
    if init is None:
        g = np.arange(ids.size) % K
    else:
        g = np.asarray(init, dtype=np.int64)
        if g.shape != (ids.size,) or g.min() < 0 or g.max() >= K:
            raise ValueError(f"init must hold {ids.size} groups in [0, {K}), got {g!r}")
    counts = np.bincount(uidx, minlength=ids.size)
    models = []
    for k in range(K):
        torch.manual_seed(seed + k)
        model = make_model(k)
        if getattr(model.config, "num_labels", None) != 1:
            raise ValueError(f"make_model({k}) must return a model with num_labels=1")
        models.append(model)
    res = NeuralEMResult(
        user_ids=ids,
        assignment=g,
        responsibilities=np.eye(K)[g],
        weights=np.bincount(g, minlength=K) / ids.size,
        log_likelihood=[],
        assignments=[],
        models=models,
        tokenizer=tokenizer,
        max_length=max_length,
        hard=hard,
        converged=False,
    )
    weighted = alt_weights is not None or not hard
    chosen, rejected = list(chosen), list(rejected)
    bar = tqdm(total=int(n_iter) * K, desc="neural EM", disable=not progress, mininterval=5)
    for it in range(int(n_iter)):
        gamma = res.responsibilities
        logs = []
        for k, model in enumerate(models):  # M-step
            rows = np.flatnonzero(g[uidx] == k) if hard else np.arange(n)
            w = c[rows] * gamma[uidx[rows], k] if weighted else None
            pairs = tokenize_pairs(
                tokenizer, [chosen[i] for i in rows], [rejected[i] for i in rows], max_length, w
            )
            args = {**(train_args or {}), "seed": seed + 1000 * (it + 1) + k}
            logs.append(train_reward_model(model, tokenizer, pairs, **args))
            bar.update()
        res.train_logs.append(logs)
        S = user_log_likelihoods(_margins(res, chosen, rejected), uidx, c, ids.size)  # E-step
        if hard:
            res.log_likelihood.append(float(S[np.arange(ids.size), g].sum()))
            new = hard_e_step(S, counts)
            res.assignments.append(new.copy())
            done = np.array_equal(new, g)
            g = new
            res.responsibilities = np.eye(K)[g]
            res.weights = np.bincount(g, minlength=K) / ids.size
        else:
            gamma, ll_h = soft_e_step(S, res.weights)
            res.log_likelihood.append(float(ll_h.sum()))
            res.responsibilities, res.weights = gamma, gamma.mean(axis=0)
            g = np.argmax(gamma, axis=1)
            res.assignments.append(g.copy())
            lls = res.log_likelihood
            done = len(lls) > 1 and lls[-1] - lls[-2] < tol * (1.0 + abs(lls[-1]))
        res.assignment = g
        if done:
            res.converged = True
            break
    bar.close()
    return res
