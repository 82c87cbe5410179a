"""pluralign: social-choice-aware RLHF (clone-robust rewards, MaxMin-RLHF, inverse alignment).

The names below are the library a researcher reuses outside the notebooks::

    import pluralign as pa
    r, w = pa.weighted_mle(X, P, lam=0.1)              # clone-robust reward (Voronoi weights)
    em = pa.fit_em(chosen, rejected, users, n_groups=2)  # mixture of BT rewards by EM
    reward, worst = pa.aggregate(R, "maxmin_sample")    # MaxMin over group rewards

Every name is loaded on first use (PEP 562), so ``import pluralign`` imports nothing heavy
and no stage depends on modules it does not use; the math (``pluralign.core``) never
imports torch. Importing the package has no side effects (no seeding, no logging setup, no
hub access). Layers: ``core`` (math) < ``data`` < ``training`` (torch, TRL) <
``experiments`` (one module per notebook); ``pipeline`` is the plumbing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # Bradley-Terry and the clone-robust weighted MLE (Procaccia, Schiffer, Zhang, 2025)
    "fit_bt": "pluralign.core.bradley_terry",
    "win_matrix": "pluralign.core.bradley_terry",
    "voronoi_weights": "pluralign.core.clones",
    "find_clones": "pluralign.core.clones",
    "standard_mle": "pluralign.core.clones",
    "weighted_mle": "pluralign.core.clones",
    "fill_zero_weight": "pluralign.core.clones",
    # MaxMin-RLHF (Chakraborty et al., 2024)
    "fit_em": "pluralign.core.mixture",
    "select_n_groups": "pluralign.core.mixture",
    "run_em": "pluralign.core.mixture",
    "aggregate": "pluralign.core.maxmin",
    "Normalizer": "pluralign.core.maxmin",
    "maxmin_policy": "pluralign.core.maxmin_theory",
    "simulate_users": "pluralign.core.simulate",
    "label_pairs": "pluralign.core.simulate",
    "TextRewardAdapter": "pluralign.training.reward_adapter",
    "fit_neural_em": "pluralign.training.neural_mixture",
    # Inverse alignment (Krishna & Sahoo, 2024)
    "frft_select": "pluralign.core.frft",
    "similarities": "pluralign.core.frft",
    "FilteredRefit": "pluralign.training.frft",
    # statistics
    "bootstrap_ci": "pluralign.core.stats",
    "headline": "pluralign.core.stats",
}
_RENAMED = {"frft_select": "select"}

__all__ = [
    "FilteredRefit",
    "Normalizer",
    "TextRewardAdapter",
    "__version__",
    "aggregate",
    "bootstrap_ci",
    "fill_zero_weight",
    "find_clones",
    "fit_bt",
    "fit_em",
    "fit_neural_em",
    "frft_select",
    "headline",
    "label_pairs",
    "maxmin_policy",
    "run_em",
    "select_n_groups",
    "similarities",
    "simulate_users",
    "standard_mle",
    "voronoi_weights",
    "weighted_mle",
    "win_matrix",
]

if TYPE_CHECKING:  # static view for type checkers and IDEs; not executed
    from pluralign.core.bradley_terry import fit_bt, win_matrix
    from pluralign.core.clones import (
        fill_zero_weight,
        find_clones,
        standard_mle,
        voronoi_weights,
        weighted_mle,
    )
    from pluralign.core.frft import select as frft_select
    from pluralign.core.frft import similarities
    from pluralign.core.maxmin import Normalizer, aggregate
    from pluralign.core.maxmin_theory import maxmin_policy
    from pluralign.core.mixture import fit_em, run_em, select_n_groups
    from pluralign.core.simulate import label_pairs, simulate_users
    from pluralign.core.stats import bootstrap_ci, headline
    from pluralign.training.frft import FilteredRefit
    from pluralign.training.neural_mixture import fit_neural_em
    from pluralign.training.reward_adapter import TextRewardAdapter


assert set(__all__) == {"__version__", *_EXPORTS}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pluralign' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
