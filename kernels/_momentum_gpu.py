r"""The numba-cuda kernel of heavy-ball momentum / Adam at a fixed ELR (`_momentum_step`).

One thread per trajectory, the whole time loop inside it. On the device the arrays are laid out
batch-last (``theta``, ``buf`` ``(n, d, B)``, ``v`` ``(n, B)``, ``out`` ``(N_OUT, B)``) so that a
warp reads neighbouring addresses, as `numba_cuda`'s toy kernel. `launch` works on device arrays
(numba device arrays, CuPy arrays, or NumPy arrays under ``NUMBA_ENABLE_CUDASIM=1``); `run`
is the whole call for an array module ``xp`` (NumPy through `numba_cuda.toy_momentum`, CuPy
through `cupy_gpu.toy_momentum`).
"""
from __future__ import annotations

import numpy as np
from numba import cuda
from numba import float64 as _f64

from . import _momentum_io as _mio
from . import _momentum_step as _ms

_M = _ms.build(lambda f: cuda.jit(f, device=True))
_run = _M.run
N_ACC = _ms.N_ACC
N_OUT = _ms.N_OUT
#: threads per block; small batches (and the simulator) use fewer.
THREADS = 128


@cuda.jit
def _kernel(theta, buf, v, elr, beta, alphas, steps, tail, transport, individual, adam, b2,
            omb2, beta2, eps, hit_loss, nxt, bn, scr, out, status, bad_step):
    b = cuda.grid(1)
    if b < theta.shape[2]:
        acc = cuda.local.array(N_ACC, _f64)
        s, k = _run(theta[:, :, b], buf[:, :, b], v[:, b], alphas[:, b], elr[b], beta[b], steps,
                    tail, transport, individual, adam, b2, omb2, beta2, eps, hit_loss,
                    nxt[:, :, b], bn[:, :, b], scr[:, :, b], acc, out, b)
        status[b] = s
        bad_step[b] = k


def launch(theta, buf, v, elr, beta, alphas, steps, tail, consts, individual, nxt, bn, scr,
           out, status, bad_step):
    """Launch the kernel on device arrays (batch-last layout; ``consts`` from
    `_momentum_io.constants`; scratch ``nxt``, ``bn`` ``(n, d, B)``, ``scr`` ``(4, n, B)``)."""
    B = theta.shape[2]
    tpb = min(THREADS, max(int(B), 1))
    transport, adam, b2, omb2, beta2, eps, hit_loss = consts
    _kernel[(int(B) + tpb - 1) // tpb, tpb](theta, buf, v, elr, beta, alphas, int(steps),
                                            int(tail), bool(transport), bool(individual),
                                            bool(adam), b2, omb2, float(beta2), eps, hit_loss,
                                            nxt, bn, scr, out, status, bad_step)


def run(xp, to_device, to_host, empty, theta, elr, beta, alphas, steps, tail, momentum_mode,
        individual, optimizer, beta2, eps, hit_loss):
    """The whole call on arrays of ``xp``: transpose to the batch-last layout, move with
    ``to_device``, launch, bring back with ``to_host`` (identities for CuPy; ``empty(shape,
    dtype)`` allocates on the device); ``theta`` ``(B, n, d)`` is overwritten with the final
    states. Returns the spec's dict (`_momentum_io.result`)."""
    consts = _mio.constants(theta.dtype, momentum_mode, optimizer, beta2, eps, hit_loss)
    B, n, d = theta.shape
    dt = theta.dtype

    def dev(a):   # a batch-last, C-contiguous device copy
        return to_device(xp.ascontiguousarray(xp.moveaxis(a, 0, -1)))

    d_theta = dev(theta)
    d_buf = empty((n, d, B), dt)
    d_v = empty((n, B), dt)
    d_out = empty((N_OUT, B), dt)
    d_status = empty(B, np.int8)
    d_bad = empty(B, np.int64)
    launch(d_theta, d_buf, d_v, to_device(xp.array(elr, copy=True, order="C")),
           to_device(xp.array(beta, copy=True, order="C")), dev(alphas), steps, tail, consts,
           individual, empty((n, d, B), dt), empty((n, d, B), dt), empty((4, n, B), dt), d_out,
           d_status, d_bad)
    theta[...] = xp.moveaxis(to_host(d_theta), -1, 0)
    buf = xp.ascontiguousarray(xp.moveaxis(to_host(d_buf), -1, 0))
    v = xp.ascontiguousarray(to_host(d_v).T)
    return _mio.result(to_host(d_out), to_host(d_status), to_host(d_bad), theta, buf, v,
                       consts[1])
