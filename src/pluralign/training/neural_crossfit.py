"""Hard EM over neural reward models with a cross-fitted E-step.

:func:`pluralign.training.neural_mixture.fit_neural_em` trains each group's transformer on
its users' comparisons and scores every user on the same comparisons. A transformer
memorises its training pairs, so each user fits the group it started in best and EM stops
after one iteration with nobody moved (notebook 04's audit). Here the loop of
:func:`pluralign.core.crossfit_em.cross_fitted_hard_em` scores each user on comparisons the
models did not train on. One model per (fold, group) slot is warm-started across
iterations, as the in-sample EM warm-starts its group models, so one iteration costs about
what an in-sample iteration does (each comparison trains ``n_folds - 1`` models); the final
model of each group is trained on all of its comparisons.

A fine-tuned transformer is trained to separation on its few comparisons, so its held-out
margins are overconfident; the E-step therefore scores each group's margins at a
temperature fitted on its users' held-out comparisons (``calibrate``, on by default; see
:mod:`pluralign.core.crossfit_em`). ``n_starts > 1`` runs EM from further random starts with
fresh fold models (each start costs a full EM) and keeps the best held-out likelihood.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pluralign._typing import FloatArray, IntArray
from pluralign.core.crossfit_em import CrossFitEMResult, cross_fitted_hard_em
from pluralign.training.reward_models import score_texts, tokenize_pairs, train_reward_model


def fit_neural_crossfit_em(
    chosen: Sequence[str],
    rejected: Sequence[str],
    users: ArrayLike,
    n_groups: int,
    make_model: Callable[[int], PreTrainedModel],
    tokenizer: PreTrainedTokenizerBase,
    *,
    n_folds: int = 2,
    n_iter: int = 10,
    seed: int = 0,
    calibrate: bool = True,
    n_starts: int = 1,
    max_length: int = 128,
    train_args: dict[str, Any] | None = None,
    progress: bool = False,
    activate: Callable[[Any], PreTrainedModel] | None = None,
    release: Callable[[Any], None] | None = None,
) -> CrossFitEMResult[Any]:
    """Cross-fitted hard EM over K transformer BT reward models (TRL's ``RewardTrainer``).

    ``make_model(k)`` returns a fresh model with ``num_labels=1``; it is called under
    ``torch.manual_seed`` from ``seed`` and the slot, so heads are reproducible.
    ``train_args``: ``RewardConfig`` overrides for every M-step. ``calibrate``, ``n_starts``:
    as in :func:`~pluralign.core.crossfit_em.cross_fitted_hard_em`; a later start's fold
    models are fresh (slot ``s * n_folds + f``) and an earlier start's are freed once it
    ends. Returns the generic result with ``models`` = the K final models (group k's trained
    on all of its comparisons).

    ``activate`` and ``release`` let the slots share one base model: ``make_model`` then
    returns a handle (e.g. an adapter name of a
    :class:`~pluralign.training.adapter_bank.AdapterBank`), ``activate(handle)`` returns the
    model to train or score with that handle's weights, and ``release(handle)`` frees a slot
    that an ended start no longer needs. Without them a handle is the model itself."""
    if len(chosen) != len(rejected):
        raise ValueError(f"chosen has {len(chosen)} texts, rejected {len(rejected)}")
    chosen, rejected = list(chosen), list(rejected)
    slots: dict[tuple[int, int], Any] = {}
    calls = [0]
    use = activate or (lambda handle: handle)

    def fit(rows: IntArray, slot: tuple[int, int]) -> PreTrainedModel:
        fold, k = slot
        first = fold - fold % n_folds if fold >= 0 else 0  # this start's first fold model
        for old in [s for s in slots if 0 <= s[0] < first]:  # an earlier start's: done
            (release or _drop)(slots.pop(old))
        if slot not in slots:
            torch.manual_seed(seed + 100 * (fold + 1) + k)
            slots[slot] = make_model(k)
            if getattr(use(slots[slot]).config, "num_labels", None) != 1:
                raise ValueError(f"make_model({k}) must return a model with num_labels=1")
        if rows.size == 0:
            raise ValueError(f"group {k} has no comparisons to train on outside fold {fold}")
        pairs = tokenize_pairs(
            tokenizer, [chosen[i] for i in rows], [rejected[i] for i in rows], max_length
        )
        calls[0] += 1
        args = {**(train_args or {}), "seed": seed + 1000 * calls[0]}
        train_reward_model(use(slots[slot]), tokenizer, pairs, **args)
        return slots[slot]

    def margins(handle: Any, rows: IntArray) -> FloatArray:
        model = use(handle)
        win = score_texts(model, tokenizer, [chosen[i] for i in rows], max_length)
        lose = score_texts(model, tokenizer, [rejected[i] for i in rows], max_length)
        return np.asarray(win, dtype=np.float64) - np.asarray(lose, dtype=np.float64)

    result = cross_fitted_hard_em(
        fit, margins, users, n_groups, n_folds=n_folds, n_iter=n_iter, seed=seed,
        calibrate=calibrate, n_starts=n_starts, progress=progress,
    )  # fmt: skip
    for slot in [s for s in slots if s[0] >= 0]:  # fold models: only the E-steps needed them
        (release or _drop)(slots.pop(slot))
    return result


def _drop(handle: Any) -> None:
    """A slot held by the model itself is freed once nothing refers to it."""
