"""The core's shared input checks (``pluralign.core._checks``): each names the argument."""

from __future__ import annotations

import numpy as np
import pytest

from pluralign.core._checks import float_array, index_array, integer, number, unit_rows


def test_float_array_converts_lists_and_refuses_what_is_not_numbers() -> None:
    a = float_array([[1, 2], [3, 4]], "X", ndim=2)
    assert a.dtype == np.float64 and a.shape == (2, 2)
    with pytest.raises(ValueError, match=r"X must hold numbers, got dtype <U1 \(text\)"):
        float_array(["1", "2"], "X")
    with pytest.raises(ValueError, match="X must hold numbers, got dtype object"):
        float_array([1.0, None], "X")
    with pytest.raises(ValueError, match="X must be a rectangular array of numbers"):
        float_array([[1.0, 2.0], [3.0]], "X")
    with pytest.raises(ValueError, match=r"X must be a 2-D \(m, d\) array, got shape \(3,\)"):
        float_array([1.0, 2.0, 3.0], "X", ndim=2, shape="(m, d)")
    with pytest.raises(ValueError, match=r"X is empty \(shape \(0,\)\)"):
        float_array([], "X")
    with pytest.raises(ValueError, match="X contains NaN or inf"):
        float_array([1.0, np.inf], "X")
    assert np.isnan(float_array([np.nan], "X", finite=False)[0])


def test_index_array_bounds_and_dtype() -> None:
    assert index_array([], "i", 3).dtype == np.int64  # np.asarray([]) is float64
    with pytest.raises(ValueError, match=r"i must be indices in \[0, 3\) \(3 rows\), got values"):
        index_array([0, 3], "i", 3, "rows")
    with pytest.raises(ValueError, match=r"i must be indices in \[0, 3\)"):
        index_array([-1], "i", 3)
    with pytest.raises(ValueError, match="i must be integer indices, got dtype float64"):
        index_array([0.0, 1.0], "i", 3)
    with pytest.raises(ValueError, match="i must be integer indices, got dtype bool"):
        index_array([True, False], "i", 3)  # a mask, not indices
    with pytest.raises(ValueError, match="i must be a 1-D array of indices"):
        index_array([[0]], "i", 3)


def test_integer_and_number() -> None:
    assert integer(np.int64(3), "k") == 3
    with pytest.raises(ValueError, match=r"k must be an integer, got 2\.0"):
        integer(2.0, "k")
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        integer(0, "k", minimum=1)
    assert number("0.5", "t") == 0.5
    with pytest.raises(ValueError, match=r"t must be a finite number in \(0, 1\), got 1"):
        number(1, "t", low=0, high=1, low_open=True, high_open=True)
    with pytest.raises(ValueError, match=r"t must be a finite number in \[0, inf\), got nan"):
        number(float("nan"), "t", low=0)
    with pytest.raises(ValueError, match="t must be a number, got None"):
        number(None, "t")


def test_unit_rows_tolerance_zero_rows_and_nan() -> None:
    E = np.array([[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]])
    unit_rows(E, "E")
    unit_rows(E * (1 + 9e-7), "E")  # within 1e-6
    with pytest.raises(ValueError, match=r"E must have unit-norm rows.*2 of 3 rows.*row 0"):
        unit_rows(E * 1.01, "E")
    unit_rows((E * (1 + 1e-3)).astype(np.float16), "E")  # 10 eps of float16 ~ 1e-2
    with pytest.raises(ValueError, match="E contains NaN or inf"):
        unit_rows(np.array([[np.nan, 0.0]]), "E")
