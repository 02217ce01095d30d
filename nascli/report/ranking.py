"""Rank correlations between a proxy's scores and measured accuracies, with their p-values
(scipy.stats: Kendall's τ-b and Spearman's ρ, two-sided)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats


class Correlation(NamedTuple):
    statistic: float
    pvalue: float


def _undefined(x: np.ndarray, y: np.ndarray) -> bool:
    return len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0])


def _checked(function, x: Sequence[float], y: Sequence[float]) -> Correlation:
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if _undefined(a, b):  # a constant input has no ranks to correlate
        return Correlation(math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = function(a, b)
    return Correlation(float(result.statistic), float(result.pvalue))


def kendall(x: Sequence[float], y: Sequence[float]) -> Correlation:
    """Kendall's τ-b (ties in either variable handled) and its p-value; NaN when undefined."""
    return _checked(stats.kendalltau, x, y)


def spearman(x: Sequence[float], y: Sequence[float]) -> Correlation:
    """Spearman's ρ (average ranks for ties) and its p-value; NaN when undefined."""
    return _checked(stats.spearmanr, x, y)
