r"""Numba CPU kernels: ``prange`` over trajectories, summaries reduced in-kernel, no traces.

Contract shared by every module of `kernels` (inputs already validated by
``toymodel.backend``; outputs preallocated; no RNG; never imports toymodel):

* ``theta`` ``(B, n, d)``, in/out: initial states on the constraint set, overwritten with the final
  (or, for a failed trajectory, the frozen) state. Its dtype (float64 or float32) is the
  computing dtype of the state; accumulators are float64.
* ``elr`` ``(B,)``, ``alphas`` ``(B, n)``, ``twin_dirs`` ``(B, n, d)`` unit directions (or any
  ``(1, n, d)`` array when ``use_twin`` is false), ``individual`` (bool), ``steps``, ``tail``,
  ``eps`` (the twin offset, sqrt of machine eps of the dtype), ``tiny`` (smallest normal number).
* outputs ``out`` ``(8, B)`` (summaries in the order of ``SUMMARY_NAMES``), ``status`` ``(B,)`` int8,
  ``bad_step`` ``(B,)`` int64.

The toy kernel runs the whole time loop of one trajectory inside one ``prange`` iteration, so its
state stays in L1/L2 cache. The Rayleigh kernel (dense A shared by all trajectories) advances all
trajectories together: one BLAS GEMM $Y=S(A-\lambda_1I)$ per step (``S`` stacks states and
twins; the BLAS threads use the cores), then a plain loop over trajectories for the O(m) rest of
the step (a ``prange`` there would compete with the spinning BLAS threads: measured 2x slower).

Both kernels flush subnormal numbers to zero (x86-64 MXCSR FTZ/DAZ, set per thread and restored):
a converging run drives coordinates geometrically to 0 and, without the flush, through the
subnormal range where every operation costs ~100 cycles (10x slower runs; the smallest subnormal
times a factor in (0.5, 1) rounds back to itself, so such coordinates stay there for good). The
results change by less than the smallest normal number (2.2e-308), far inside the 1e-12 contract.
"""
from __future__ import annotations

import platform

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import cgutils, types
from numba.extending import intrinsic

from . import _trajectory as _tr


def _drop_stale_cache():
    """Key numba's on-disk cache on both kernel sources.

    ``cache=True`` saves the compiled kernels (a first call costs ~7 s of JIT per process: every
    CLI run and every Dask worker). numba invalidates a cached function only when *its own* file
    changes, but the kernels here inline the functions of ``_trajectory.py``: after an edit there
    they would keep the old code. So the cache files of both modules are deleted whenever the
    hash of the two sources differs from the one recorded beside them. Best effort: a read-only
    install (where numba caches elsewhere and nothing is edited) is left alone.
    """
    import hashlib
    from pathlib import Path

    here = Path(__file__).resolve().parent
    cache = here / "__pycache__"
    digest = hashlib.sha256(b"".join((here / f).read_bytes()
                                     for f in ("_trajectory.py", "numba_cpu.py"))).hexdigest()
    stamp = cache / "numba_cpu.sources-sha256"
    try:
        if stamp.read_text() == digest:
            return
    except OSError:
        pass
    try:
        for f in list(cache.glob("numba_cpu.*.nb[ci]")) + list(cache.glob("_trajectory.*.nb[ci]")):
            f.unlink(missing_ok=True)
        cache.mkdir(exist_ok=True)
        stamp.write_text(digest)
    except OSError:
        pass


_drop_stale_cache()

# error_model="numpy": x/0 gives inf/nan (turned into a status code), never ZeroDivisionError.
# fastmath reassoc+contract only: lets LLVM vectorise the sums of squares (rounding-level changes,
# within the 1e-12 contract); no nnan/ninf, so NaN and inf checks stay meaningful.
_FAST = {"reassoc", "contract"}
_T = _tr.build(lambda f: njit(f, error_model="numpy", nogil=True, fastmath=_FAST, cache=True))
_toy_run = _T.toy_run
_rayleigh_substep = _T.rayleigh_substep
_init_targets = _T.init_targets
_init_acc = _T.init_acc
_twin_init = _T.twin_init
_finish = _T.finish
N_OUT = _tr.N_OUT

#: MXCSR bits flush-to-zero (15) and denormals-are-zero (6) of x86-64 SSE/AVX arithmetic.
_FTZ_DAZ = np.uint32(0x8040)
_X86 = platform.machine().lower() in ("x86_64", "amd64")


def _mxcsr_call(builder, name, ptr):
    fnty = ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    builder.call(fn, [builder.bitcast(ptr, ir.IntType(8).as_pointer())])


@intrinsic
def _get_fpmode(typingctx):
    """The calling thread's MXCSR (0 off x86-64)."""
    def codegen(context, builder, signature, args):
        if not _X86:
            return ir.Constant(ir.IntType(32), 0)
        ptr = cgutils.alloca_once(builder, ir.IntType(32))
        _mxcsr_call(builder, "llvm.x86.sse.stmxcsr", ptr)
        return builder.load(ptr)
    return types.uint32(), codegen


@intrinsic
def _set_fpmode(typingctx, value):
    """Load ``value`` into the calling thread's MXCSR (a no-op off x86-64)."""
    def codegen(context, builder, signature, args):
        if _X86:
            ptr = cgutils.alloca_once(builder, ir.IntType(32))
            builder.store(args[0], ptr)
            _mxcsr_call(builder, "llvm.x86.sse.ldmxcsr", ptr)
        return context.get_dummy_value()
    return types.void(types.uint32), codegen


@njit(parallel=True, error_model="numpy", fastmath=_FAST, cache=True)
def toy_kernel(theta, elr, alphas, twin_dirs, use_twin, individual, steps, tail, eps, tiny,
               out, status, bad_step):
    """The canonical toy for ``B`` trajectories (see the module docstring for the contract)."""
    B, n, d = theta.shape
    for b in prange(B):
        mode = _get_fpmode()   # per thread: flush subnormals to zero, restored below
        _set_fpmode(mode | _FTZ_DAZ)
        nxt = np.empty((n, d), theta.dtype)
        tw = np.empty((n, d), theta.dtype)
        twn = np.empty((n, d), theta.dtype)
        scr = np.empty((3, n), theta.dtype)
        acc = np.empty(_tr.N_ACC, np.float64)
        wb = twin_dirs[b] if use_twin else twin_dirs[0]
        s, k = _toy_run(theta[b], alphas[b], elr[b], wb, use_twin, individual, steps, tail, eps,
                        tiny, nxt, tw, twn, scr, acc, out, b)
        status[b] = s
        bad_step[b] = k
        _set_fpmode(mode)


@njit(parallel=True, error_model="numpy", fastmath=_FAST, cache=True)
def rayleigh_kernel(theta, Bs, elr, alphas, twin_dirs, use_twin, steps, tail, eps, tiny,
                    out, status, bad_step):
    r"""The SI Rayleigh quotient (``theta`` ``(B, 1, m)``, ``Bs`` = $A-\lambda_1I$ ``(m, m)``)."""
    B, _, m = theta.shape
    R = 2 * B if use_twin else B
    S = np.empty((R, m), theta.dtype)
    Y = np.empty((R, m), theta.dtype)
    NEW = np.empty((R, m), theta.dtype)
    rho = np.empty(B, np.float64)
    lr = np.empty(B, np.float64)
    radii = np.empty((B, 1), theta.dtype)
    acc = np.empty((B, _tr.N_ACC), np.float64)
    start = steps - tail
    for b in prange(B):
        S[b] = theta[b, 0]
        rho[b] = _init_targets(theta[b], radii[b])
        lr[b] = elr[b] * rho[b] * rho[b]
        _init_acc(acc[b])
        status[b] = 0
        bad_step[b] = -1
        if use_twin:
            _twin_init(theta[b], S[B + b:B + b + 1], twin_dirs[b], False, rho[b], radii[b], eps)
    # the per-step work (O(m) per trajectory) runs on the calling thread, with subnormals
    # flushed: a prange here would fight the BLAS threads of the GEMM (O(m^2)) for the cores
    mode = _get_fpmode()
    _set_fpmode(mode | _FTZ_DAZ)
    for t in range(steps):
        np.dot(S, Bs, Y)   # Bs is symmetric: row b of Y is (A - lambda_1 I) x_b
        for b in range(B):
            if status[b] == 0:
                wb = twin_dirs[b] if use_twin else twin_dirs[0]
                tb = B + b if use_twin else b
                code = _rayleigh_substep(t, S[b:b + 1], Y[b:b + 1], NEW[b:b + 1],
                                         S[tb:tb + 1], Y[tb:tb + 1], NEW[tb:tb + 1], wb,
                                         lr[b], rho[b], radii[b], alphas[b], use_twin, start,
                                         eps, tiny, acc[b])
                if code != 0:
                    status[b] = code
                    bad_step[b] = t
    _set_fpmode(mode)
    np.dot(S, Bs, Y)
    for b in prange(B):
        sq = 0.0
        xy = 0.0
        for k in range(m):
            sq += S[b, k] * S[b, k]
            xy += S[b, k] * Y[b, k]
        theta[b, 0] = S[b]
        _finish(acc[b], out, b, tail, 1, use_twin, status[b] == 0, xy / sq)
