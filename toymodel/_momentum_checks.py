"""Argument checks and constants shared by the momentum specification (`toymodel.momentum`).

Owns ``MOMENTUM_MODES``, ``CONVERGED_LOSS`` and the validators of momenta, modes and Adam's betas
used by the simulators, the batch (`toymodel._momentum_batch`), the boundary search
(`toymodel._momentum_boundary`) and the closed forms (`toymodel.momentum_theory`).
"""
from __future__ import annotations

import numbers

import numpy as np

#: what happens to the optimizer's moments after the rescale (`toymodel.momentum`'s docstring).
MOMENTUM_MODES = ("official", "transport")
#: tail-mean loss below which a run counts as converged (the task's reference criterion).
CONVERGED_LOSS = 1e-10


def check_momentum(value, name: str = "momentum") -> float:
    """``value`` as a float in ``[0, 1)``, else ``ValueError`` naming it and the range."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    x = float(value) if ok else float("nan")
    if not (np.isfinite(x) and 0.0 <= x < 1.0):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return x


def check_momentum_array(value, name: str = "momentum") -> np.ndarray:
    """An array of momenta, every entry in ``[0, 1)``."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers in [0, 1), got {value!r}") from None
    bad = ~(np.isfinite(arr) & (arr >= 0) & (arr < 1))
    if bad.any():
        first = float(arr.ravel()[np.flatnonzero(bad.ravel())[0]])
        raise ValueError(f"{name} must be in [0, 1), got {first!r}")
    return arr


def check_mode(mode, name: str = "momentum_mode") -> str:
    """``"official"`` or ``"transport"``, else ``ValueError`` naming the bad value."""
    if not isinstance(mode, str) or mode not in MOMENTUM_MODES:
        raise ValueError(f"{name} must be one of {MOMENTUM_MODES}, got {mode!r}")
    return mode


def check_betas(betas) -> tuple[float, float]:
    """Adam's ``(beta1, beta2)``, each in ``[0, 1)``."""
    try:
        b1, b2 = betas
    except (TypeError, ValueError):
        raise ValueError(f"betas must be a pair (beta1, beta2) in [0, 1), got {betas!r}") from None
    return check_momentum(b1, "betas[0]"), check_momentum(b2, "betas[1]")
