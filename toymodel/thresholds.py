"""Threshold location on a compiled backend: the batch-layer face of `toymodel.solvers`.

`toymodel.solvers.locate_total_threshold` bisects with whatever batch runner it is handed (the
NumPy specification by default: the math layer knows no backend). This module hands it
`toymodel.backend.summarize`, so the same bisection runs on numba, CUDA or CuPy.
"""
from __future__ import annotations

from functools import partial

from . import backend as _backend
from . import solvers


def locate_total_threshold(problem, lo=None, hi=None, steps=20000, tail=2000, rtol=2e-3,
                           points=7, seed=0, backend="auto"):
    """`toymodel.solvers.locate_total_threshold` with its batches run by ``backend`` (any name of
    `toymodel.backend.BACKENDS`; ``"auto"`` picks numba when it is installed)."""
    if backend not in _backend.BACKENDS:
        raise ValueError(f"backend must be one of {_backend.BACKENDS}, got {backend!r}")
    return solvers.locate_total_threshold(problem, lo, hi, steps=steps, tail=tail, rtol=rtol,
                                          points=points, seed=seed,
                                          summarize=partial(_backend.summarize, backend=backend))
