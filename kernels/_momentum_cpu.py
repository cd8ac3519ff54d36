r"""The numba CPU kernel of heavy-ball momentum / Adam at a fixed ELR (`_momentum_step`).

``prange`` over trajectories, one whole trajectory per iteration (its state in L1), subnormals
flushed to zero per thread as in every kernel of `numba_cpu` (whose intrinsics `build` receives:
importing them here would be an import cycle). Compiled with fastmath ``contract`` only (FMA): no
reassociation, which could overflow a float32 product where the spec does not (docs/backends.md,
the SoA kernel), so that statuses equal the spec's at the dtype edges.
"""
from __future__ import annotations

import numpy as np

from . import _momentum_step as _ms
from ._soa_layout import bind

N_ACC = _ms.N_ACC
N_OUT = _ms.N_OUT
_FAST = {"contract"}


def momentum_kernel(theta, buf, v, elr, beta, alphas, steps, tail, transport, individual, adam,
                    b2, omb2, beta2, eps, hit_loss, out, status, bad_step):
    """Template of the kernel (`build` binds ``prange``, ``run`` and the FP-mode intrinsics):
    ``theta``, ``buf`` ``(B, n, d)`` and ``v`` ``(B, n)`` in/out, ``out`` ``(N_OUT, B)``."""
    B, n, d = theta.shape
    for b in prange(B):  # noqa: F821 (bound by build)
        mode = get_fpmode()  # noqa: F821
        set_fpmode(mode | FTZ_DAZ)  # noqa: F821
        nxt = np.empty((n, d), theta.dtype)
        bn = np.empty((n, d), theta.dtype)
        scr = np.empty((4, n), theta.dtype)
        acc = np.empty(N_ACC, np.float64)
        s, k = run(theta[b], buf[b], v[b], alphas[b], elr[b], beta[b], steps, tail,  # noqa: F821
                   transport, individual, adam, b2, omb2, beta2, eps, hit_loss, nxt, bn, scr,
                   acc, out, b)
        status[b] = s
        bad_step[b] = k
        set_fpmode(mode)  # noqa: F821


def build(njit, env, qualname):
    """The parallel kernel: helpers compiled by ``njit(f, ...)`` uncached (linked into the kernel),
    the kernel cached under ``qualname`` (numba names its cache files after it); ``env`` supplies
    ``prange``, ``get_fpmode``, ``set_fpmode``, ``FTZ_DAZ``."""
    M = _ms.build(lambda f: njit(f, error_model="numpy", fastmath=_FAST, nogil=True))
    kern = bind(momentum_kernel, dict(env, run=M.run), qualname)
    return njit(kern, parallel=True, error_model="numpy", fastmath=_FAST, cache=env["cache"])
