"""Array aliases shared by every layer (choix keeps its in ``choix/typing.py``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]
#: A ground truth or learned reward of texts: ``texts -> (n,) scores``.
TextScore = Callable[[list[str]], FloatArray]
