r"""CuPy backend: CuPy arrays end to end; nothing returns to the host between steps.

Entry points `toy`, `rayleigh`, `is_available` with the protocol of `kernels._protocol`; the
arrays of ``BatchInputs``/``BatchOutputs`` are CuPy arrays (array type in = array type out). The
per-trajectory work runs in the numba-cuda kernels of `kernels.numba_cuda` launched directly on
the CuPy buffers (``__cuda_array_interface__``). For the Rayleigh quotient every step is one
cuBLAS GEMM $Y=(A-\lambda_1I)S$ over all states and twins (``cupy.matmul``) followed by one
elementwise kernel launch, which is how a dense $A$ reaches a good fraction of the FP64 peak at
large ``m``.

The functions take the array module ``xp`` from their inputs, so under the CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``) the same code runs on NumPy arrays in the tests.
"""
from __future__ import annotations

from . import _momentum_gpu as _mg
from . import _momentum_io as _mio
from . import numba_cuda as _nc
from ._protocol import BatchInputs, BatchOutputs, array_module


def _to_ndb(xp, a):
    return xp.ascontiguousarray(xp.moveaxis(a, 0, -1))


def _own(xp, a):
    """A writable C-contiguous copy (inputs may be read-only broadcast views)."""
    return xp.array(a, copy=True, order="C")


def toy(inputs: BatchInputs, outputs: BatchOutputs) -> None:
    """The toy on device arrays; ``inputs.theta`` ``(B, n, d)`` is overwritten with the final states."""
    i = inputs
    theta = i.theta
    xp = array_module(theta)
    B, n, d = theta.shape
    dt = theta.dtype
    th = _to_ndb(xp, theta)
    if i.use_twin:
        w, tw, twn = _to_ndb(xp, i.twin_dirs), xp.empty((n, d, B), dt), xp.empty((n, d, B), dt)
    else:
        w = tw = twn = xp.zeros((n, d, 1), dt)
    _nc.launch_toy(th, _own(xp, i.elr), _own(xp, i.alphas.T), w, i.use_twin, i.individual,
                   i.steps, i.tail, i.eps, i.tiny, xp.empty((n, d, B), dt), tw, twn,
                   xp.empty((3, n, B), dt), *outputs)
    theta[...] = xp.moveaxis(th, -1, 0)


def rayleigh(inputs: BatchInputs, outputs: BatchOutputs) -> None:
    r"""The SI Rayleigh quotient on device arrays: GEMM per step, then one elementwise launch."""
    i, (out, status, bad_step) = inputs, outputs
    theta = i.theta
    xp = array_module(theta)
    B, _, m = theta.shape
    dt = theta.dtype
    use_twin, eps, tiny = i.use_twin, i.eps, i.tiny
    R = 2 * B if use_twin else B
    S = xp.empty((1, m, R), dt)
    S[0, :, :B] = theta[:, 0, :].T
    Y = xp.empty((1, m, R), dt)
    NEW = xp.empty((1, m, R), dt)
    w = _to_ndb(xp, i.twin_dirs) if use_twin else xp.zeros((1, m, 1), dt)
    rho = xp.empty(B, dt)   # rho and the learning rate in the state's dtype, as the spec
    lr = xp.empty(B, dt)
    radii = xp.empty((1, B), dt)
    acc = xp.empty((_nc.N_ACC, B), xp.float64)
    al = _own(xp, i.alphas.T)
    Bs = _own(xp, i.shifted)
    el = _own(xp, i.elr)
    _nc.launch_rayleigh_init(S, el, w, use_twin, eps, B, rho, lr, radii, acc, status, bad_step)
    start = i.steps - i.tail
    for t in range(i.steps):
        xp.matmul(Bs, S[0], out=Y[0])
        _nc.launch_rayleigh_step(t, S, Y, NEW, w, use_twin, B, lr, rho, radii, al, start, eps,
                                 tiny, acc, status, bad_step)
    xp.matmul(Bs, S[0], out=Y[0])
    _nc.launch_rayleigh_finish(S, Y, B, use_twin, i.tail, acc, out, status)
    theta[:, 0, :] = S[0, :, :B].T


def is_available() -> bool:
    """True when CuPy sees a CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:   # no cupy, no driver, or no device
        return False


def toy_momentum(theta, elr, beta, alphas, steps, tail, momentum_mode, individual, optimizer,
                 beta2, eps, hit_loss=_mio.HIT_LOSS):
    """Heavy ball / Adam on CuPy arrays (the numba-cuda kernel of `_momentum_gpu` launched on
    them; nothing returns to the host); ``theta`` ``(B, n, d)`` is overwritten."""
    xp = array_module(theta)
    same = lambda a: a   # the arrays already live on the device
    return _mg.run(xp, same, same, xp.empty, theta, elr, beta, alphas, steps, tail,
                   momentum_mode, individual, optimizer, beta2, eps, hit_loss)


def toy_wd(theta, lr, weight_decay, alphas, steps, tail, **levels):
    """GD with weight decay on CuPy arrays (the numba-cuda kernel of `_wd_gpu` launched on them;
    nothing returns to the host); ``theta`` ``(B, n, d)`` is overwritten."""
    from . import _wd_gpu

    xp = array_module(theta)
    same = lambda a: a   # the arrays already live on the device
    return _wd_gpu.run(xp, same, same, xp.empty, theta, lr, weight_decay, alphas, steps, tail,
                       **levels)


__all__ = ["is_available", "rayleigh", "toy", "toy_momentum", "toy_wd"]
