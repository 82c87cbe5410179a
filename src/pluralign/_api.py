"""The public API's table: which module defines each name exported at the package root.

Kept out of ``pluralign/__init__.py`` so that adding a public name does not edit a file
every pipeline stage runs (Python runs a package's ``__init__`` before any submodule): this
module is imported only when a root name is first looked up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

#: Public name -> the module that defines it.
EXPORTS: dict[str, str] = {
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
    "cross_fitted_hard_em": "pluralign.core.crossfit_em",
    "EMNotConvergedWarning": "pluralign.core.mixture",
    "fit_neural_crossfit_em": "pluralign.training.neural_crossfit",
    "ban_token": "pluralign.training.token_ban",
    # Inverse alignment (Krishna & Sahoo, 2024)
    "frft_select": "pluralign.core.frft",
    "similarities": "pluralign.core.frft",
    "FilteredRefit": "pluralign.training.frft",
    # statistics
    "bootstrap_ci": "pluralign.core.stats",
    "headline": "pluralign.core.stats",
}
#: Public name -> its name in the defining module, where they differ. Empty: a public name
#: is defined under that name, so ``help()`` is titled with the name users call.

__all__ = [
    "EMNotConvergedWarning",
    "FilteredRefit",
    "Normalizer",
    "TextRewardAdapter",
    "aggregate",
    "ban_token",
    "bootstrap_ci",
    "cross_fitted_hard_em",
    "fill_zero_weight",
    "find_clones",
    "fit_bt",
    "fit_em",
    "fit_neural_crossfit_em",
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
    from pluralign.core.crossfit_em import cross_fitted_hard_em
    from pluralign.core.frft import frft_select, similarities
    from pluralign.core.maxmin import Normalizer, aggregate
    from pluralign.core.maxmin_theory import maxmin_policy
    from pluralign.core.mixture import EMNotConvergedWarning, fit_em, run_em, select_n_groups
    from pluralign.core.simulate import label_pairs, simulate_users
    from pluralign.core.stats import bootstrap_ci, headline
    from pluralign.training.frft import FilteredRefit
    from pluralign.training.neural_crossfit import fit_neural_crossfit_em
    from pluralign.training.neural_mixture import fit_neural_em
    from pluralign.training.reward_adapter import TextRewardAdapter
    from pluralign.training.token_ban import ban_token

assert set(__all__) == set(EXPORTS)
