r"""The numba-cuda kernel of conventional training (weight decay, no projection; `kernels._wd_step`).

One thread per trajectory, the whole time loop inside the thread, states laid out ``(n, d, B)`` (and
group rows ``(n, B)``) so that a warp reads neighbouring addresses. `run` is shared by
`kernels.numba_cuda.toy_wd` (NumPy in and out, one copy each way) and `kernels.cupy_gpu.toy_wd`
(CuPy arrays, nothing returns to the host); under ``NUMBA_ENABLE_CUDASIM=1`` both run on NumPy.
No flush of subnormals: NVIDIA GPUs handle FP64 subnormals in hardware (as `kernels.numba_cuda`).
"""
from __future__ import annotations

from numba import cuda

from . import _wd_step as _ws

_wd_run = _ws.build(lambda f: cuda.jit(f, device=True)).wd_run

#: threads per block; small batches (and the simulator) use fewer.
THREADS = 128


@cuda.jit
def _toy_wd_kernel(theta, nxt, lr, wd, alphas, steps, tail, low_frac, high_frac, floor, scr, res,
                   ires, gmean, gcnt, gfst, glst, gexact, conv, status, bad_step):
    b = cuda.grid(1)
    if b < theta.shape[2]:
        s, k, c = _wd_run(theta[:, :, b], nxt[:, :, b], alphas[:, b], lr[b], wd[b], steps, tail,
                          low_frac, high_frac, floor, scr[:, :, b], gmean[:, b], gcnt[:, b],
                          gfst[:, b], glst[:, b], gexact[:, b], res, ires, b)
        status[b] = s
        bad_step[b] = k
        conv[b] = c


def run(xp, to_dev, to_host, alloc, theta, lr, weight_decay, alphas, steps, tail,
        conv_rtol=_ws.CONV_RTOL, spike_frac=_ws.SPIKE_FRAC):
    """``B`` runs on the device: ``xp`` the host-side array module of ``theta`` (NumPy, or CuPy),
    ``to_dev`` / ``to_host`` the copies (identities for CuPy), ``alloc(shape, dtype)`` device
    buffers. ``theta`` ``(B, n, d)`` is overwritten; returns the dict of ``summarize_wd_batch``."""
    B, n, d = theta.shape
    dt = theta.dtype
    th = to_dev(xp.ascontiguousarray(xp.moveaxis(theta, 0, -1)))
    al = to_dev(xp.ascontiguousarray(alphas.T))
    lr_, wd_ = to_dev(xp.ascontiguousarray(lr)), to_dev(xp.ascontiguousarray(weight_decay))
    outs = [alloc(a.shape, a.dtype) for a in _ws.allocate(xp, B, n, dt)]
    for j in range(2, 7):   # the group rows (B, n) live as (n, B) on the device
        outs[j] = alloc((n, B), outs[j].dtype)
    tpb = min(THREADS, max(B, 1))
    _toy_wd_kernel[(B + tpb - 1) // tpb, tpb](
        th, alloc((n, d, B), dt), lr_, wd_, al, int(steps), int(tail),
        *_ws.constants(dt, conv_rtol, spike_frac), alloc((3, n, B), dt), *outs)
    outs = [to_host(a) for a in outs]
    for j in range(2, 7):
        outs[j] = xp.ascontiguousarray(outs[j].T)
    theta[...] = xp.moveaxis(to_host(th), -1, 0)
    return _ws.as_dict(theta, *outs)
