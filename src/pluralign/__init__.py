"""pluralign: social-choice-aware RLHF (clone-robust rewards, MaxMin-RLHF, inverse alignment).

The library a researcher reuses outside the notebooks is exported here::

    import pluralign as pa
    r, w = pa.weighted_mle(X, P, lam=0.1)              # clone-robust reward (Voronoi weights)
    em = pa.fit_em(chosen, rejected, users, n_groups=2)  # mixture of BT rewards by EM
    reward, worst = pa.aggregate(R, "maxmin_sample")    # MaxMin over group rewards

``dir(pluralign)`` lists every name (the table is ``pluralign._api``). Each is loaded on
first use (PEP 562), so ``import pluralign`` imports nothing heavy and no stage depends on
modules it does not use; the math (``pluralign.core``) never imports torch. Importing the
package has no side effects (no seeding, no logging setup, no hub access). Layers: ``core``
(math) < ``data`` < ``training`` (torch, TRL) < ``experiments`` (one module per notebook);
``pipeline`` is the plumbing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the static view for type checkers and IDEs; not executed
    from pluralign._api import *  # noqa: F403

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name.startswith("_") and name != "__all__":  # submodules and dunders: the import system
        raise AttributeError(f"module 'pluralign' has no attribute {name!r}")
    _api = importlib.import_module("pluralign._api")
    if name == "__all__":
        return ["__version__", *_api.__all__]
    if name not in _api.EXPORTS:
        raise AttributeError(f"module 'pluralign' has no attribute {name!r}")
    value = getattr(importlib.import_module(_api.EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(["__version__", *importlib.import_module("pluralign._api").__all__])
