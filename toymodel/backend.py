"""THE one place that picks a compute backend for batch runs.

``backend="auto" | "numpy" | "numba" | "cuda" | "cupy"``. (Skeleton: only NumPy so far; the
kernels issue adds the compiled backends behind the same :func:`summarize`.)
"""
from __future__ import annotations

from . import dynamics

BACKENDS = ("auto", "numpy", "numba", "cuda", "cupy")


def resolve(backend: str = "auto", *arrays) -> str:
    """The concrete backend name for ``backend`` (validated)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return "numpy" if backend == "auto" else backend


def summarize(problem, theta0, elr, *, steps, tail, constraint="total", alphas=None,
              twin_dirs=None, backend="auto"):
    """Per-trajectory summaries of ``B`` runs (contract: :func:`toymodel.dynamics.summarize_batch`)."""
    name = resolve(backend, theta0)
    if name != "numpy":
        raise ValueError(f"backend {name!r} is not implemented yet")
    return dynamics.summarize_batch(problem, theta0, elr, steps=steps, tail=tail,
                                    constraint=constraint, alphas=alphas, twin_dirs=twin_dirs)
