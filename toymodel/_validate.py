"""Validation at the public boundary: every message names the value and the allowed range.

Kernels and private helpers never validate; the public wrappers call these first (STYLE §10).
"""
from __future__ import annotations

import numbers

import numpy as np

CONSTRAINTS = ("total", "individual")


def positive_finite(name: str, value) -> float:
    """Return ``value`` as a float if it is a positive finite number, else raise ``ValueError``."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}") from None
    if not np.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return x


def positive_finite_array(name: str, value, ndim: int | None = None) -> np.ndarray:
    """Return a float64 array whose entries are all positive and finite."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of positive finite numbers, got {value!r}") from None
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        first = float(arr.ravel()[np.flatnonzero(bad.ravel())[0]])
        raise ValueError(f"{name} must be positive and finite (allowed range (0, inf)), got {first!r}")
    return arr


def alphas_array(alphas) -> np.ndarray:
    """Curvatures alpha_i > 0 of the groups, as a 1-D float64 array."""
    if isinstance(alphas, str):
        alphas = parse_floats("alphas", alphas)
    return positive_finite_array("alphas", alphas, ndim=1)


def positive_int(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` as an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def constraint_name(constraint: str) -> str:
    """Check the constraint name: ``"total"`` or ``"individual"``."""
    if constraint not in CONSTRAINTS:
        raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {constraint!r}")
    return constraint


def parse_floats(name: str, text: str) -> np.ndarray:
    """Parse ``"1,2,4"`` into a float array, with a message naming ``name`` on failure."""
    try:
        return np.array([float(t) for t in text.split(",") if t.strip()], dtype=np.float64)
    except ValueError:
        raise ValueError(f"{name} must be a comma-separated list of numbers, got {text!r}") from None
