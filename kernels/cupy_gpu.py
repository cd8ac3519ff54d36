r"""CuPy backend: CuPy arrays end to end; nothing returns to the host between steps.

Inputs and outputs are CuPy arrays (array type in = array type out) with the contract of
`kernels.numba_cpu`. The per-trajectory work runs in the numba-cuda kernels of
`kernels.numba_cuda` launched directly on the CuPy buffers (``__cuda_array_interface__``).
For the Rayleigh quotient every step is one cuBLAS GEMM $Y=(A-\lambda_1I)S$ over all states
and twins (``cupy.matmul``) followed by one elementwise kernel launch, which is how a dense
$A$ reaches a good fraction of the FP64 peak at large ``m``.

The functions take the array module ``xp`` from their inputs, so under the CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) the same code runs on NumPy arrays in the tests.
"""
from __future__ import annotations

from . import numba_cuda as _nc


def _xp(a):
    """``cupy`` for CuPy arrays, ``numpy`` otherwise (the simulator path)."""
    if type(a).__module__.split(".")[0] == "cupy":
        import cupy

        return cupy
    import numpy

    return numpy


def _to_ndb(xp, a):
    return xp.ascontiguousarray(xp.moveaxis(a, 0, -1))


def _own(xp, a):
    """A writable C-contiguous copy (inputs may be read-only broadcast views)."""
    return xp.array(a, copy=True, order="C")


def toy(theta, elr, alphas, twin_dirs, use_twin, individual, steps, tail, eps, tiny, out,
        status, bad_step):
    """The toy on device arrays; ``theta`` ``(B, n, d)`` is overwritten with the final states."""
    xp = _xp(theta)
    B, n, d = theta.shape
    dt = theta.dtype
    th = _to_ndb(xp, theta)
    if use_twin:
        w, tw, twn = _to_ndb(xp, twin_dirs), xp.empty((n, d, B), dt), xp.empty((n, d, B), dt)
    else:
        w = tw = twn = xp.zeros((n, d, 1), dt)
    _nc.launch_toy(th, _own(xp, elr), _own(xp, alphas.T), w, use_twin,
                   individual, steps, tail, eps, tiny, xp.empty((n, d, B), dt), tw, twn,
                   xp.empty((3, n, B), dt), out, status, bad_step)
    theta[...] = xp.moveaxis(th, -1, 0)


def rayleigh(theta, Bs, elr, alphas, twin_dirs, use_twin, steps, tail, eps, tiny, out, status,
             bad_step):
    r"""The SI Rayleigh quotient on device arrays: GEMM per step, then one elementwise launch."""
    xp = _xp(theta)
    B, _, m = theta.shape
    dt = theta.dtype
    R = 2 * B if use_twin else B
    S = xp.empty((1, m, R), dt)
    S[0, :, :B] = theta[:, 0, :].T
    Y = xp.empty((1, m, R), dt)
    NEW = xp.empty((1, m, R), dt)
    w = _to_ndb(xp, twin_dirs) if use_twin else xp.zeros((1, m, 1), dt)
    rho = xp.empty(B, xp.float64)
    lr = xp.empty(B, xp.float64)
    radii = xp.empty((1, B), dt)
    acc = xp.empty((_nc.N_ACC, B), xp.float64)
    al = _own(xp, alphas.T)
    Bs = _own(xp, Bs)
    el = _own(xp, elr)
    _nc.launch_rayleigh_init(S, el, w, use_twin, eps, B, rho, lr, radii, acc, status, bad_step)
    start = steps - tail
    for t in range(steps):
        xp.matmul(Bs, S[0], out=Y[0])
        _nc.launch_rayleigh_step(t, S, Y, NEW, w, use_twin, B, lr, rho, radii, al, start, eps,
                                 tiny, acc, status, bad_step)
    xp.matmul(Bs, S[0], out=Y[0])
    _nc.launch_rayleigh_finish(S, Y, B, use_twin, tail, acc, out, status)
    theta[:, 0, :] = S[0, :, :B].T


def is_available() -> bool:
    """True when CuPy sees a CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:   # no cupy, no driver, or no device
        return False
