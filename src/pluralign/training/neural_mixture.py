"""EM for a mixture of neural (transformer) reward models over users (MaxMin-RLHF, Alg. 1).

The same EM as ``mixture.fit_em``, with group u's reward ``r_u`` a sequence classifier with
one output instead of ``<theta_u, psi(x)>``:

- M-step: each group's model is trained further (warm start across iterations) with TRL's
  ``RewardTrainer`` on its users' comparisons (hard EM), or on every comparison weighted by
  the users' responsibilities (soft EM, via ``reward_models.WeightedRewardTrainer``).
- E-step: every model scores every distinct text once; the comparison margins go through
  the linear EM's own loop (:func:`pluralign.core.mixture.run_em`: iteration, E-step,
  convergence and bookkeeping), so the two cannot drift apart.

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
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pluralign._typing import FloatArray, IntArray
from pluralign.core.mixture import (
    MixtureScoring,
    describe_last_change,
    prepare_users,
    run_em,
    warn_not_converged,
)
from pluralign.training.reward_models import score_texts, tokenize_pairs, train_reward_model


@dataclass
class NeuralEMResult(MixtureScoring):
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
    initial: IntArray | None = None  # (n_users,) the starting assignment

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

    def margins(self, chosen: Sequence[str], rejected: Sequence[str]) -> FloatArray:
        """(n, K) ``r_u(y_w) - r_u(y_l)``, scoring each distinct text once per model."""
        r = self.rewards(list(chosen) + list(rejected))  # (2n, K)
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
        Maximum EM iterations (one M-step + one E-step each); stopping there unconverged
        gives ``converged=False`` and an ``EMNotConvergedWarning``.
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
        initial=g.copy(),
    )
    weighted = alt_weights is not None or not hard  # else TRL's own (unweighted) loss
    chosen, rejected = list(chosen), list(rejected)
    bar = tqdm(total=int(n_iter) * K, desc="neural EM", disable=not progress, mininterval=5)

    def m_step(it: int, k: int, rows: IntArray | None, w: FloatArray) -> None:
        idx = np.arange(n) if rows is None else rows
        pairs = tokenize_pairs(
            tokenizer,
            [chosen[i] for i in idx],
            [rejected[i] for i in idx],
            max_length,
            w if weighted else None,
        )
        if k == 0:
            res.train_logs.append([])
        args = {**(train_args or {}), "seed": seed + 1000 * (it + 1) + k}
        res.train_logs[-1].append(train_reward_model(models[k], tokenizer, pairs, **args))
        bar.update()

    trace = run_em(
        m_step,
        lambda: res.margins(chosen, rejected),
        uidx,
        c,
        g,
        K,
        hard=hard,
        n_iter=int(n_iter),
        tol=tol,
        warn=False,  # warned below, at the caller's line
    )
    bar.close()
    res.assignment = trace.assignment
    res.responsibilities = trace.responsibilities
    res.weights = trace.weights
    res.log_likelihood = trace.log_likelihood
    res.assignments = trace.assignments
    res.converged = trace.converged
    if not trace.converged:
        warn_not_converged(
            f"fit_neural_em ({'hard' if hard else 'soft'} EM)",
            len(trace.log_likelihood),
            describe_last_change(trace.assignments, g, hard, trace.log_likelihood),
            "Raise n_iter (each M-step is a few epochs of Adam, so groups can keep drifting); "
            "a reward that memorises its pairs needs the cross-fitted E-step "
            "(fit_neural_crossfit_em).",
        )
    return res
