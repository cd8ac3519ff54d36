r"""The numba CPU kernel of conventional training (weight decay, no projection; `kernels._wd_step`).

``prange`` over trajectories, the whole time loop of one trajectory inside one iteration (its state
stays in L1). Compiled without fastmath: the operations keep the specification's order, so results
equal ``toymodel.conventional.summarize_wd_batch`` to rounding (bit for bit for d = 2 but for the
angle's arcsin).

Subnormals are *not* flushed by default, unlike the fixed-ELR kernels: this mode's specification
relies on gradual underflow (its float64 floor, docs/conventional.md): at $\eta\lambda=5\cdot10^{-4}$
(200 runs, 40 000 steps) flushing changed 139 of 2307 spike onsets and 10 of 478
``group_converged_exactly``, and moved the ``bad_step`` of runs whose norm decays to 0 by a step,
while gradual underflow cost 17 % more time there. ``flush=True`` gives the speed back (its
zero-norm test reads the entries and so does not depend on the flush; the trajectories do). Entry
point: `kernels.numba_cpu.toy_wd`, which builds the kernel here (`build`) with its MXCSR intrinsics
and cache name (this module does not import it: no cycle).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import _wd_step as _ws
from ._trajectory import _rebind

#: the template's globals, bound by `build` (numba freezes globals when it compiles)
get_fpmode = set_fpmode = FTZ_DAZ = wd_run = None

def _toy_wd_kernel(theta, lr, wd, alphas, steps, tail, low_frac, high_frac, floor, flush, res,
                   ires, gmean, gcnt, gfst, glst, gexact, conv, status, bad_step):
    """``B`` conventional toy runs (arrays as `toy_wd`'s, outputs preallocated). A template: `build`
    binds ``wd_run``, ``get_fpmode``, ``set_fpmode`` and ``FTZ_DAZ``."""
    B, n, d = theta.shape
    for b in prange(B):
        mode = get_fpmode()   # per thread: flush subnormals to zero if asked, restored below
        if flush:
            set_fpmode(mode | FTZ_DAZ)
        nxt = np.empty((n, d), theta.dtype)
        scr = np.empty((3, n), theta.dtype)
        s, k, c = wd_run(theta[b], nxt, alphas[b], lr[b], wd[b], steps, tail, low_frac,
                         high_frac, floor, scr, gmean[b], gcnt[b], gfst[b], glst[b], gexact[b],
                         res, ires, b)
        status[b] = s
        bad_step[b] = k
        conv[b] = c
        set_fpmode(mode)


def build(env, qualname):
    """`toy_wd` over a kernel compiled with ``env`` (``get_fpmode``, ``set_fpmode``, ``FTZ_DAZ``: the
    MXCSR intrinsics of `kernels.numba_cpu`; ``cache``: numba's ``cache=``) and named ``qualname``
    (numba names its cache files after it: `kernels.numba_cpu._source_keyed`)."""
    # error_model="numpy": x/0 gives inf/nan (turned into a status code), never ZeroDivisionError
    jit = lambda f: njit(f, error_model="numpy", nogil=True, cache=env["cache"])
    names = {k: env[k] for k in ("get_fpmode", "set_fpmode", "FTZ_DAZ")}
    fn = _rebind(_toy_wd_kernel, {**names, "wd_run": _ws.build(jit).wd_run})
    fn.__qualname__ = qualname
    kernel = njit(fn, parallel=True, error_model="numpy", cache=env["cache"])

    def toy_wd(theta, lr, weight_decay, alphas, steps, tail, conv_rtol=_ws.CONV_RTOL,
               spike_frac=_ws.SPIKE_FRAC, flush=False):
        r"""Conventional training (T20) of ``B`` toy runs: ``theta`` ``(B, n, d)`` (overwritten with
        the final states), ``lr``, ``weight_decay`` ``(B,)``, ``alphas`` ``(B, n)``, C-contiguous, of
        the state's dtype. Returns the dict of ``summarize_wd_batch`` (``traces=False``).
        ``flush=True`` flushes subnormals to zero (faster, but no longer the spec's float64 floor;
        module docstring)."""
        B, n, _ = theta.shape
        dt = theta.dtype
        outs = _ws.allocate(np, B, n, dt)
        kernel(theta, lr, weight_decay, alphas, int(steps), int(tail),
               *_ws.constants(dt, conv_rtol, spike_frac), bool(flush), *outs)
        return _ws.as_dict(theta, *outs)

    return toy_wd
