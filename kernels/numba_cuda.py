r"""numba-cuda kernels: one thread per trajectory, the whole time loop inside the thread.

Uses the ``numba-cuda`` package (``import numba.cuda`` resolves to it when installed), not numba's
deprecated built-in target. Same trajectory code as the CPU kernel (`kernels._trajectory`),
compiled as device functions. On the device, states are laid out ``(n, d, B)``: thread ``b``
works on the strided view ``theta[:, :, b]``, so a warp reads 32 neighbouring addresses
(coalesced) for every coordinate.

Entry points `toy`, `rayleigh`, `is_available` with the protocol of `kernels._protocol`
(``BatchInputs`` of NumPy arrays, preallocated ``BatchOutputs``): they copy to the device once,
launch, and copy the results back once. The device
launchers `launch_toy`, `launch_rayleigh_init`, `launch_rayleigh_step`,
`launch_rayleigh_finish` work on device arrays (numba device arrays, CuPy arrays, or NumPy
arrays under the simulator ``NUMBA_ENABLE_CUDASIM=1``) and are shared with `kernels.cupy_gpu`.

The Rayleigh kernel here does an in-thread mat-vec with $A-\lambda_1I$ per step (``2m^2``
flops, ``A`` read through the cache by every thread); `kernels.cupy_gpu` replaces it by one
cuBLAS GEMM per step.
"""
from __future__ import annotations

import numpy as np
from numba import cuda
from numba import float64 as _f64

from . import _momentum_gpu as _mg
from . import _momentum_io as _mio
from . import _trajectory as _tr
from ._protocol import BatchInputs, BatchOutputs

_T = _tr.build(lambda f: cuda.jit(f, device=True))
_toy_run = _T.toy_run
_rayleigh_run = _T.rayleigh_run
_rayleigh_substep = _T.rayleigh_substep
_init_targets = _T.init_targets
_init_acc = _T.init_acc
_twin_init = _T.twin_init
_finish = _T.finish
N_ACC = _tr.N_ACC

#: threads per block; small batches (and the simulator) use fewer.
THREADS = 128


def _grid(B):
    tpb = min(THREADS, max(int(B), 1))
    return (int(B) + tpb - 1) // tpb, tpb


@cuda.jit
def _toy_kernel(theta, elr, alphas, twin_dirs, use_twin, individual, steps, tail, eps, tiny,
                nxt, tw, twn, scr, out, status, bad_step):
    b = cuda.grid(1)
    if b < theta.shape[2]:
        acc = cuda.local.array(7, _f64)
        j = b if use_twin else 0   # twin buffers are (n, d, 1) dummies without the twin
        s, k = _toy_run(theta[:, :, b], alphas[:, b], elr[b], twin_dirs[:, :, j], use_twin,
                        individual, steps, tail, eps, tiny, nxt[:, :, b], tw[:, :, j],
                        twn[:, :, j], scr[:, :, b], acc, out, b)
        status[b] = s
        bad_step[b] = k


@cuda.jit
def _rayleigh_kernel(Bs, theta, elr, alphas, twin_dirs, use_twin, steps, tail, eps, tiny,
                     y, nxt, tw, ytw, twn, radii, out, status, bad_step):
    b = cuda.grid(1)
    if b < theta.shape[2]:
        acc = cuda.local.array(7, _f64)
        j = b if use_twin else 0
        s, k = _rayleigh_run(Bs, theta[:, :, b], alphas[:, b], elr[b], twin_dirs[:, :, j],
                             use_twin, steps, tail, eps, tiny, y[:, :, b], nxt[:, :, b],
                             tw[:, :, j], ytw[:, :, j], twn[:, :, j], radii[:, b], acc, out, b)
        status[b] = s
        bad_step[b] = k


@cuda.jit
def _rayleigh_init_kernel(S, elr, twin_dirs, use_twin, eps, B, rho, lr, radii, acc, status,
                          bad_step):
    b = cuda.grid(1)
    if b < B:
        r = _init_targets(S[:, :, b], radii[:, b])
        rho[b] = r
        lr[b] = elr[b] * r * r
        _init_acc(acc[:, b])
        status[b] = 0
        bad_step[b] = -1
        if use_twin:
            _twin_init(S[:, :, b], S[:, :, B + b], twin_dirs[:, :, b], False, r, radii[:, b], eps)


@cuda.jit
def _rayleigh_step_kernel(t, S, Y, NEW, twin_dirs, use_twin, B, lr, rho, radii, alphas, start,
                          eps, tiny, acc, status, bad_step):
    b = cuda.grid(1)
    if b < B and status[b] == 0:
        tb = B + b if use_twin else b
        j = b if use_twin else 0
        code = _rayleigh_substep(t, S[:, :, b], Y[:, :, b], NEW[:, :, b], S[:, :, tb],
                                 Y[:, :, tb], NEW[:, :, tb], twin_dirs[:, :, j], lr[b], rho[b],
                                 radii[:, b], alphas[:, b], use_twin, start, eps, tiny,
                                 acc[:, b])
        if code != 0:
            status[b] = code
            bad_step[b] = t


@cuda.jit
def _rayleigh_finish_kernel(S, Y, B, use_twin, tail, acc, out, status):
    b = cuda.grid(1)
    if b < B:
        m = S.shape[1]
        sq = S.dtype.type(0.0)   # the final loss in the state's dtype, as the spec
        xy = sq
        for k in range(m):
            sq += S[0, k, b] * S[0, k, b]
            xy += S[0, k, b] * Y[0, k, b]
        _finish(acc[:, b], out, b, tail, 1, use_twin, status[b] == 0, xy / sq)


# -- device launchers (arrays already on the device, layout (n, d, B)) ----------------------------
def launch_toy(theta, elr, alphas, twin_dirs, use_twin, individual, steps, tail, eps, tiny,
               nxt, tw, twn, scr, out, status, bad_step):
    """Launch the toy kernel on device arrays (``theta``/``nxt`` ``(n, d, B)``, ``alphas``
    ``(n, B)``, scratch ``scr`` ``(3, n, B)`` of the state's dtype, twin buffers ``(n, d, B)`` or
    ``(n, d, 1)`` without the twin)."""
    blocks, tpb = _grid(theta.shape[2])
    _toy_kernel[blocks, tpb](theta, elr, alphas, twin_dirs, bool(use_twin), bool(individual),
                             int(steps), int(tail), eps, tiny, nxt, tw, twn, scr, out, status,
                             bad_step)


def launch_rayleigh_init(S, elr, twin_dirs, use_twin, eps, B, rho, lr, radii, acc, status,
                         bad_step):
    """Targets, learning rates, accumulators and twins of a GEMM-driven Rayleigh run
    (``S`` ``(1, m, R)``, the twins in columns ``B..2B-1``)."""
    blocks, tpb = _grid(B)
    _rayleigh_init_kernel[blocks, tpb](S, elr, twin_dirs, bool(use_twin), eps, int(B), rho, lr,
                                       radii, acc, status, bad_step)


def launch_rayleigh_step(t, S, Y, NEW, twin_dirs, use_twin, B, lr, rho, radii, alphas, start,
                         eps, tiny, acc, status, bad_step):
    """Step ``t`` of every live trajectory given ``Y`` = shifted A times ``S`` (from a GEMM)."""
    blocks, tpb = _grid(B)
    _rayleigh_step_kernel[blocks, tpb](int(t), S, Y, NEW, twin_dirs, bool(use_twin), int(B), lr,
                                       rho, radii, alphas, int(start), eps, tiny, acc, status,
                                       bad_step)


def launch_rayleigh_finish(S, Y, B, use_twin, tail, acc, out, status):
    """Final losses and the summaries of a GEMM-driven Rayleigh run."""
    blocks, tpb = _grid(B)
    _rayleigh_finish_kernel[blocks, tpb](S, Y, int(B), bool(use_twin), int(tail), acc, out,
                                         status)


# -- host entry points (NumPy in, NumPy out) -----------------------------------------------------
def _dev(a):
    """A device copy of host array ``a`` (C order; read-only broadcast views are fine)."""
    return cuda.to_device(np.array(a, copy=True, order="C"))


def _to_ndb(a):
    """(B, n, d) host array -> (n, d, B) device array (coalesced per-thread views)."""
    return _dev(np.moveaxis(a, 0, -1))


def _twin_buffers(use_twin, twin_dirs, shape, dtype):
    if use_twin:
        return (_to_ndb(twin_dirs), cuda.device_array(shape, dtype),
                cuda.device_array(shape, dtype))
    dummy = shape[:-1] + (1,)
    z = np.zeros(dummy, dtype)
    return cuda.to_device(z), cuda.to_device(z), cuda.to_device(z)


def _copy_back(d_theta, theta, d_out, out, d_status, status, d_bad, bad_step):
    theta[...] = np.moveaxis(d_theta.copy_to_host(), -1, 0)
    out[...] = d_out.copy_to_host()
    status[...] = d_status.copy_to_host()
    bad_step[...] = d_bad.copy_to_host()


def toy(inputs: BatchInputs, outputs: BatchOutputs) -> None:
    """The canonical toy on the GPU, NumPy in and out (``inputs.theta`` ends as the final states)."""
    i, (out, status, bad_step) = inputs, outputs
    theta = i.theta
    B, n, d = theta.shape
    dt = theta.dtype
    d_theta = _to_ndb(theta)
    d_w, d_tw, d_twn = _twin_buffers(i.use_twin, i.twin_dirs, (n, d, B), dt)
    d_out = cuda.device_array(out.shape, out.dtype)
    d_status = cuda.device_array(B, np.int8)
    d_bad = cuda.device_array(B, np.int64)
    launch_toy(d_theta, _dev(i.elr), _dev(i.alphas.T), d_w, i.use_twin, i.individual, i.steps,
               i.tail, i.eps, i.tiny, cuda.device_array((n, d, B), dt), d_tw, d_twn,
               cuda.device_array((3, n, B), dt), d_out, d_status, d_bad)
    _copy_back(d_theta, theta, d_out, out, d_status, status, d_bad, bad_step)


def rayleigh(inputs: BatchInputs, outputs: BatchOutputs) -> None:
    """The one-thread-per-trajectory Rayleigh kernel (``theta`` ``(B, 1, m)``), NumPy in and out."""
    i, (out, status, bad_step) = inputs, outputs
    theta = i.theta
    B, n, m = theta.shape
    dt = theta.dtype
    d_theta = _to_ndb(theta)
    d_w, d_tw, d_twn = _twin_buffers(i.use_twin, i.twin_dirs, (n, m, B), dt)
    d_ytw = cuda.device_array(d_tw.shape, dt)
    d_out = cuda.device_array(out.shape, out.dtype)
    d_status = cuda.device_array(B, np.int8)
    d_bad = cuda.device_array(B, np.int64)
    blocks, tpb = _grid(B)
    _rayleigh_kernel[blocks, tpb](
        _dev(i.shifted), d_theta, _dev(i.elr), _dev(i.alphas.T), d_w, bool(i.use_twin),
        int(i.steps), int(i.tail), i.eps, i.tiny, cuda.device_array((n, m, B), dt),
        cuda.device_array((n, m, B), dt), d_tw, d_ytw, d_twn, cuda.device_array((n, B), dt),
        d_out, d_status, d_bad)
    _copy_back(d_theta, theta, d_out, out, d_status, status, d_bad, bad_step)


def is_available() -> bool:
    """True when a CUDA device (or the simulator) can run these kernels."""
    try:
        return bool(cuda.is_available())
    except Exception:   # a broken driver install reports through many exception types
        return False


# -- momentum / Adam at a fixed ELR (kernels._momentum_step, _momentum_gpu) ----------------------
def toy_momentum(theta, elr, beta, alphas, steps, tail, momentum_mode, individual, optimizer,
                 beta2, eps, hit_loss=_mio.HIT_LOSS):
    """Heavy ball / Adam on the GPU, one thread per trajectory, NumPy in and out (contract:
    ``summarize_momentum_batch``; ``theta`` ``(B, n, d)`` overwritten); returns the spec's dict."""
    return _mg.run(np, _dev, lambda a: a.copy_to_host(), cuda.device_array, theta, elr, beta,
                   alphas, steps, tail, momentum_mode, individual, optimizer, beta2, eps,
                   hit_loss)


# -- conventional training: weight decay, no projection (kernels._wd_step, _wd_gpu) ---------------
def toy_wd(theta, lr, weight_decay, alphas, steps, tail, **levels):
    """GD with weight decay on the GPU, one thread per trajectory, NumPy in and out (contract:
    ``summarize_wd_batch``; ``theta`` ``(B, n, d)`` overwritten); returns the spec's dict."""
    from . import _wd_gpu  # compiled on first use

    return _wd_gpu.run(np, _dev, lambda a: a.copy_to_host(), cuda.device_array, theta, lr,
                       weight_decay, alphas, steps, tail, **levels)


__all__ = ["toy", "rayleigh", "launch_toy", "launch_rayleigh_init", "launch_rayleigh_step",
           "launch_rayleigh_finish", "is_available", "toy_momentum", "toy_wd"]
