"""Input checks shared by the core's public functions (numpy only).

One place for the rules every public function applies to its arguments, so that a bad
input fails at the boundary with a ``ValueError`` that names the argument, instead of deep
inside numpy (a cast ``TypeError``, a broadcast error, an ``IndexError``) or not at all (NaN
flowing through, a string array cast to numbers). Lists and other array-likes are converted;
only numbers are accepted (a string array would otherwise be parsed by ``np.asarray``).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: dtype kinds accepted as numbers: bool, signed and unsigned integers, floats.
_NUMERIC = "biuf"


def _as_numeric(x: ArrayLike, name: str) -> NDArray[Any]:
    """``np.asarray(x)``, refusing ragged lists and non-numeric dtypes."""
    try:
        a = np.asarray(x)
    except ValueError as e:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular array of numbers: {e}") from None
    if a.dtype.kind not in _NUMERIC:
        what = " (text)" if a.dtype.kind in "US" else ""
        raise ValueError(f"{name} must hold numbers, got dtype {a.dtype}{what}")
    return a


def numeric_array(
    x: ArrayLike,
    name: str,
    *,
    ndim: int | None = None,
    shape: str = "",
    allow_empty: bool = False,
    finite: bool = True,
) -> NDArray[Any]:
    """``x`` as a numeric array (dtype kept: float32 embeddings stay float32) with ``ndim``
    dimensions (``shape`` names them in the message, e.g. ``"(m, d)"``), non-empty unless
    ``allow_empty``, without NaN / inf unless ``finite`` is False."""
    a = _as_numeric(x, name)
    if ndim is not None and a.ndim != ndim:
        desc = f" {shape}" if shape else ""
        raise ValueError(f"{name} must be a {ndim}-D{desc} array, got shape {a.shape}")
    if not allow_empty and a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape})")
    if finite and a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def float_array(
    x: ArrayLike,
    name: str,
    *,
    ndim: int | None = None,
    shape: str = "",
    allow_empty: bool = False,
    finite: bool = True,
) -> NDArray[np.float64]:
    """:func:`numeric_array` as float64."""
    a = numeric_array(x, name, ndim=ndim, shape=shape, allow_empty=allow_empty, finite=finite)
    return a.astype(np.float64, copy=False)


def index_array(x: ArrayLike, name: str, n: int, what: str = "entries") -> NDArray[np.int64]:
    """``x`` as 1-D int64 indices into ``n`` ``what``, each in ``[0, n)`` (negative indices
    are refused: in an index column they are a bug, not a count from the end)."""
    a = np.asarray(x)
    if a.size == 0 and a.dtype.kind == "f":  # np.asarray([]) is float64: an empty index
        a = a.astype(np.int64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of indices, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer indices, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= n):
        raise ValueError(
            f"{name} must be indices in [0, {n}) ({n} {what}), "
            f"got values from {a.min()} to {a.max()}"
        )
    return a.astype(np.int64, copy=False)


def integer(x: Any, name: str, minimum: int | None = None) -> int:
    """``x`` as a Python int (a float such as 3.0 is refused: a count is not a measurement)."""
    try:
        v = operator.index(x)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {x!r}") from None
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v}")
    return v


def number(
    x: Any,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``x`` as a finite float in the interval given by ``low`` / ``high`` (closed unless
    ``*_open``)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {x!r}") from None
    below = low is not None and (v <= low if low_open else v < low)
    above = high is not None and (v >= high if high_open else v > high)
    if not np.isfinite(v) or below or above:
        lo = "(-inf" if low is None else f"{'(' if low_open else '['}{low:g}"
        hi = "inf)" if high is None else f"{high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {lo}, {hi}, got {x!r}")
    return v


def unit_rows(E: NDArray[np.floating], name: str, rtol: float = 1e-6) -> None:
    """Every row of ``E`` has Euclidean norm 1 within ``rtol`` (at least 10 machine epsilons
    of ``E``'s dtype, so unit-normed float16 rows pass), or is exactly 0 (a vector with no
    direction, as an embedder leaves a row it cannot normalize): a dot product of such rows is
    a cosine, as FRFT's rules assume."""
    if E.size == 0:
        return
    tol = max(rtol, 10 * float(np.finfo(E.dtype).eps)) if E.dtype.kind == "f" else rtol
    norms = np.sqrt(np.einsum("nd,nd->n", E, E, dtype=np.float64))
    if not np.all(np.isfinite(norms)):  # NaN or inf in a row (the only way to get here)
        raise ValueError(f"{name} contains NaN or inf")
    bad = np.flatnonzero((norms != 0) & (np.abs(norms - 1.0) > tol))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name} must have unit-norm rows (a dot product is then a cosine): "
            f"{bad.size} of {norms.size} rows are not, e.g. row {i} has norm {norms[i]:.6g}; "
            f"normalize with {name} / np.linalg.norm({name}, axis=1, keepdims=True)"
        )
