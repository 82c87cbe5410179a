"""``help()`` of the public names (``pluralign._api.EXPORTS``) explains itself.

With ``from __future__ import annotations`` a signature shows ``how: 'Aggregation'``, the
alias's name, not its values, so the allowed values of every ``Literal`` argument must be
in the docstring; array arguments must state their shape; a public name is defined under
that name (``help`` is titled with what users call).
"""

from __future__ import annotations

import importlib
import inspect
import pydoc
import re
from collections.abc import Callable
from typing import Any, Literal, get_args, get_origin, get_type_hints

import pytest

import pluralign
from pluralign._api import EXPORTS

CORE = sorted(name for name, module in EXPORTS.items() if module.startswith("pluralign.core."))
#: Every public name, the torch-side ones (``TextRewardAdapter``'s ``how``) included.
PUBLIC = sorted(EXPORTS)
#: Modules whose docstrings this round of work covers; the other core modules (mixture,
#: crossfit_em) are checked for Literal values and names only.
SHAPED_MODULES = {
    "pluralign.core.bradley_terry",
    "pluralign.core.clones",
    "pluralign.core.frft",
    "pluralign.core.maxmin",
    "pluralign.core.maxmin_theory",
    "pluralign.core.simulate",
    "pluralign.core.stats",
}


def literal_values(hint: Any) -> list[Any]:
    """Every value of every ``Literal`` inside a type hint (through ``|``, ``Optional``...)."""
    if get_origin(hint) is Literal:
        return list(get_args(hint))
    return [v for arg in get_args(hint) for v in literal_values(arg)]


def callables(obj: Any) -> list[Callable[..., Any]]:
    """The function, or a class's ``__init__`` and public methods."""
    if not inspect.isclass(obj):
        return [obj]
    methods = [m for n, m in vars(obj).items() if callable(m) and not n.startswith("_")]
    methods += [m.__func__ for m in vars(obj).values() if isinstance(m, classmethod)]
    return [obj.__init__, *methods]


def rendered(obj: Any) -> str:
    return pydoc.render_doc(obj, renderer=pydoc.plaintext)


@pytest.mark.parametrize("name", PUBLIC)
def test_help_states_the_allowed_values_of_literal_arguments(name: str) -> None:
    """E.g. ``help(pa.aggregate)`` lists 'single', 'maxmin_batch', ... (quoted, as passed)."""
    obj = getattr(pluralign, name)
    doc = rendered(obj)
    for fn in callables(obj):
        for param, hint in get_type_hints(fn).items():
            for value in literal_values(hint):
                assert repr(value) in doc, f"help({name}) omits {param}={value!r}"


def test_the_check_finds_the_literal_arguments() -> None:
    """The test above is not vacuous: it sees both Literal arguments of the core."""
    found = {
        (name, param): literal_values(hint)
        for name in PUBLIC
        for fn in callables(getattr(pluralign, name))
        for param, hint in get_type_hints(fn).items()
        if literal_values(hint)
    }
    assert found[("aggregate", "how")] == ["single", "maxmin_batch", "maxmin_sample", "softmin"]
    assert found[("frft_select", "rule")] == ["P1", "P2", "P3", "P4", "random"]
    assert found[("TextRewardAdapter", "how")] == found[("aggregate", "how")]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_names_are_defined_under_that_name(name: str) -> None:
    """``help(pa.frft_select)`` is titled ``frft_select``, not the module's old ``select``."""
    obj = getattr(pluralign, name)
    assert obj.__name__ == name
    assert obj is getattr(importlib.import_module(EXPORTS[name]), name)


def array_params(fn: Callable[..., Any]) -> list[str]:
    """Parameters annotated with an array type (``ArrayLike``, ``FloatArray``, ``NDArray``...)."""
    return [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if isinstance(p.annotation, str) and re.search(r"Array|Matrix", p.annotation)
    ]


SHAPE = r"\(\s*\w+\s*(,\s*\w*\s*)*\)"  # (m, d), (n,), (B, K)


@pytest.mark.parametrize("name", [n for n in CORE if EXPORTS[n] in SHAPED_MODULES])
def test_help_states_the_shape_of_array_arguments(name: str) -> None:
    """Each array argument is named on a docstring line that gives a shape, e.g.
    ``rewards : array_like, shape (K, n)``."""
    obj = getattr(pluralign, name)
    for fn in callables(obj):
        doc = inspect.getdoc(fn) or ""
        if fn is getattr(obj, "__init__", None) and inspect.isclass(obj):
            doc = inspect.getdoc(obj) or ""
        for param in array_params(fn):
            line = re.compile(rf"(^|\W){re.escape(param)}(\W.*)?{SHAPE}", re.MULTILINE)
            assert line.search(doc), f"{name}: the docstring gives no shape for {param!r}"


def test_maxmin_policy_says_rewards_are_groups_by_responses() -> None:
    from pluralign.core.maxmin_theory import maxmin_policy

    assert re.search(r"rewards : array_like, shape \(K, n\)", inspect.getdoc(maxmin_policy))


def test_weighted_mle_says_it_fills_zero_weights_and_names_its_box() -> None:
    doc = rendered(pluralign.weighted_mle)
    assert "fill_zero_weight" in doc
    assert "[0, 1]^d" in doc and "low=points.min(axis=0)" in doc
