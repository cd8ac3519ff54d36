r"""The one calling convention of every kernel module (`numba_cpu`, `numba_cuda`, `cupy_gpu`).

Each module exports the same three entry points:

* ``toy(inputs, outputs)``: the canonical toy (``SphereToy``) for ``B`` trajectories;
* ``rayleigh(inputs, outputs)``: the SI Rayleigh quotient (``RayleighToy``, one group,
  ``inputs.shifted`` $=A-\lambda_1I$);
* ``is_available()``: whether the module can run here (package and, for the GPU modules, device).

``inputs`` is a `BatchInputs`, ``outputs`` a `BatchOutputs`: validated and allocated by the caller
(``toymodel.backend``), arrays of one module (NumPy for ``numba_cpu`` and ``numba_cuda``, CuPy or,
under the CUDA simulator, NumPy for ``cupy_gpu``). The entry points only compute: ``theta`` is
overwritten with the final (or, for a failed trajectory, the frozen) state and the three output
arrays are filled. The njit / cuda.jit kernels behind them keep positional arguments.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._trajectory import N_OUT

__all__ = ["ENTRY_POINTS", "MODE_ENTRY_POINTS", "N_OUT", "BatchInputs", "BatchOutputs", "array_module"]

#: the names every kernel module exports.
ENTRY_POINTS = ("toy", "rayleigh", "is_available")
#: entry points of the other training modes, each exported by the modules that have a kernel for it
#: (``toymodel.backend.MODE_ENTRY``): ``toy_wd`` (conventional training with weight decay, no
#: projection) and ``toy_momentum`` (heavy-ball momentum / Adam at a fixed ELR).
MODE_ENTRY_POINTS = ("toy_wd", "toy_momentum")


class BatchInputs(NamedTuple):
    """One batch of trajectories; every array is C-contiguous and of the computing dtype (float64 or
    float32, the dtype of ``theta``) unless stated."""

    #: ``(B, n, d)`` initial states on the constraint set; in/out.
    theta: Any
    #: ``(B,)`` ELRs $\tilde\eta$ (the kernels form $\eta=\tilde\eta\rho^2$ in the dtype).
    elr: Any
    #: ``(B, n)`` curvatures per trajectory (the toy's loss; the T10 threshold count).
    alphas: Any
    #: ``(B, n, d)`` unit twin directions, or a ``(1, n, d)`` dummy when ``use_twin`` is false.
    twin_dirs: Any
    use_twin: bool
    #: individual (per-group) rather than total constraint; toy only.
    individual: bool
    steps: int
    tail: int
    #: twin offset $\epsilon=\sqrt{\text{machine eps}}$ of the dtype, a scalar of the dtype.
    eps: Any
    #: smallest normal number of the dtype (floor of the twin distance), a scalar of the dtype.
    tiny: Any
    #: ``(m, m)`` shifted matrix $A-\lambda_1I$ for ``rayleigh``; ``None`` for ``toy``.
    shifted: Any = None

    @classmethod
    def of(cls, theta, elr, alphas, twin_dirs=None, *, individual=False, steps, tail,
           shifted=None) -> BatchInputs:
        """Bundle arrays already coerced by the caller; ``use_twin``, the ``(1, n, d)`` dummy twin
        and the spec's constants ``eps``, ``tiny`` follow from ``twin_dirs`` and ``theta.dtype``."""
        dt = np.dtype(theta.dtype)
        fi = np.finfo(dt)
        use_twin = twin_dirs is not None
        if not use_twin:
            twin_dirs = array_module(theta).zeros((1,) + tuple(theta.shape[1:]), dt)
        return cls(theta, elr, alphas, twin_dirs, use_twin, bool(individual), int(steps),
                   int(tail), dt.type(np.sqrt(fi.eps)), dt.type(fi.tiny), shifted)


class BatchOutputs(NamedTuple):
    """Preallocated results of one batch (arrays of the module of ``BatchInputs.theta``)."""

    #: ``(N_OUT, B)`` summaries in the order of ``SUMMARY_NAMES``, dtype of the state.
    out: Any
    #: ``(B,)`` int8 status codes (0 valid, 1 non-finite, 2 zero norm / overflowing rescale).
    status: Any
    #: ``(B,)`` int64 first failing step, -1 for a valid trajectory.
    bad_step: Any

    @classmethod
    def empty(cls, xp, batch: int, dtype) -> BatchOutputs:
        """Outputs for ``batch`` trajectories (``xp``: numpy or cupy); the kernels write every entry."""
        return cls(xp.empty((N_OUT, batch), dtype), xp.zeros(batch, np.int8),
                   xp.full(batch, -1, np.int64))


def array_module(a):
    """``cupy`` for CuPy arrays, ``numpy`` otherwise (NumPy arrays, and the CUDA simulator)."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    return np
