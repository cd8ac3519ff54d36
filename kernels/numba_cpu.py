r"""Numba CPU kernels: ``prange`` over trajectories, summaries reduced in-kernel, no traces.

Entry points `toy`, `rayleigh`, `is_available` with the protocol of `kernels._protocol`
(``BatchInputs`` of NumPy arrays in, preallocated ``BatchOutputs`` filled; ``theta`` in/out; no
RNG; never imports toymodel). The state's dtype (float64 or float32) is the computing dtype of
every operation on the state, as in the specification; the tail accumulators are float64.

The toy has two kernels, chosen by shape (`use_soa`): for small states (``n*d`` up to
`SOA_MAX_ELEMENTS`, the phase diagrams) `toy_soa` runs blocks of `SOA_LANES` trajectories
transposed, lane-vectorised (`kernels._soa`, compiled per shape); otherwise `toy_aos` runs the whole
time loop of one trajectory inside one ``prange`` iteration, its state in L1/L2 cache and its
loops over coordinates vectorised. The Rayleigh kernel (dense A shared by all trajectories) advances all
trajectories together: one BLAS GEMM $Y=S(A-\lambda_1I)$ per step (``S`` stacks states and
twins; the BLAS threads use the cores), then a plain loop over trajectories for the O(m) rest of
the step (a ``prange`` there would compete with the spinning BLAS threads: measured 2x slower).

All kernels flush subnormal numbers to zero (x86-64 MXCSR FTZ/DAZ, set per thread and restored):
a converging run drives coordinates geometrically to 0 and, without the flush, through the
subnormal range where every operation costs ~100 cycles (10x slower runs; the smallest subnormal
times a factor in (0.5, 1) rounds back to itself, so such coordinates stay there for good). The
results change by less than the smallest normal number (2.2e-308), far inside the 1e-12 contract.
"""
from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import cgutils, types
from numba.extending import intrinsic

from . import _momentum_cpu, _momentum_soa, _soa
from . import _momentum_io as _mio
from . import _trajectory as _tr
from ._protocol import BatchInputs, BatchOutputs


def _source_sha256(folder=None) -> str | None:
    """sha256 over the private modules of this package (``_*.py`` in ``folder``, by default this
    module's: the trajectory code every kernel inlines, whatever its split), ``None`` when a source
    cannot be read."""
    try:
        h = hashlib.sha256()
        for path in sorted(Path(folder or Path(__file__).resolve().parent).glob("_*.py")):
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        return h.hexdigest()
    except OSError:
        return None


# On-disk cache (``cache=True``: a first call costs ~7 s of JIT per process, every CLI run and every
# Dask worker) keyed on the trajectory source. numba invalidates a cached function when *its own*
# file changes (it stores a hash of that file in the index), but the kernels inline the functions
# of the private modules (``_trajectory.py``, ``_common.py``, ``_toy_step.py``, ``_rayleigh_step.py``,
# ``_tail.py``, ``_soa.py``, and any later ``_*.py``): after an edit there numba would reload the old
# machine code. So the kernels' ``__qualname__`` carries the sha256 of all of them (`_source_keyed`):
# numba names its cache files after the qualified name, an edit of any private module gives new
# names, a miss and a recompilation, and an edit of this file invalidates as usual. Nothing is
# deleted (the old entries are orphaned: ``rm -r kernels/__pycache__`` reclaims them) and nothing
# global is touched. Rejected: deleting stale files at import (races with processes loading them,
# surprising in an install tree); ``NUMBA_CACHE_DIR`` per hash (process-global, would move every
# other package's cache too); a custom cache locator (numba-internal classes, registered globally).
# Without a readable source the kernels are not cached at all.
_SOURCE_SHA = _source_sha256()
_CACHE = _SOURCE_SHA is not None


def _source_keyed(fn):
    """Name ``fn`` after the kernel sources, so that numba's cache files are keyed on them."""
    if _CACHE:
        fn.__qualname__ = f"{fn.__name__}_src{_SOURCE_SHA[:16]}"
    return fn


# error_model="numpy": x/0 gives inf/nan (turned into a status code), never ZeroDivisionError.
# fastmath reassoc+contract only: lets LLVM vectorise the sums of squares (rounding-level changes,
# within the 1e-12 contract); no nnan/ninf, so NaN and inf checks stay meaningful.
_FAST = {"reassoc", "contract"}
_T = _tr.build(lambda f: njit(f, error_model="numpy", nogil=True, fastmath=_FAST, cache=_CACHE))
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


@intrinsic
def _f64_bits(typingctx, x):
    """The bits of a float64 as int64 (an LLVM bitcast: vectorises, unlike a call)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@intrinsic
def _bits_f64(typingctx, i):
    """The float64 with the bits of an int64 (an LLVM bitcast)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@intrinsic
def _sqrt(typingctx, x):
    """LLVM's ``llvm.sqrt`` (NaN below 0, no errno): numba's ``math.sqrt`` is a libm call, which
    LLVM vectorises only where it proves the argument non-negative."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        lty = context.get_value_type(x)
        fn = builder.module.declare_intrinsic("llvm.sqrt", [lty])
        return builder.call(fn, args)
    return x(x), codegen


@njit(parallel=True, error_model="numpy", fastmath=_FAST, cache=_CACHE)
@_source_keyed
def _toy_kernel(theta, elr, alphas, twin_dirs, use_twin, individual, steps, tail, eps, tiny,
                out, status, bad_step):
    """The canonical toy for ``B`` trajectories (the fields of `BatchInputs`/`BatchOutputs`)."""
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


@njit(parallel=True, error_model="numpy", fastmath=_FAST, cache=_CACHE)
@_source_keyed
def _rayleigh_kernel(theta, Bs, elr, alphas, twin_dirs, use_twin, steps, tail, eps, tiny,
                     out, status, bad_step):
    r"""The SI Rayleigh quotient (``theta`` ``(B, 1, m)``, ``Bs`` = $A-\lambda_1I$ ``(m, m)``)."""
    B, _, m = theta.shape
    R = 2 * B if use_twin else B
    S = np.empty((R, m), theta.dtype)
    Y = np.empty((R, m), theta.dtype)
    NEW = np.empty((R, m), theta.dtype)
    rho = np.empty(B, theta.dtype)   # the spec forms rho and the learning rate in the state's dtype
    lr = np.empty(B, theta.dtype)
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
        sq = theta.dtype.type(0.0)
        xy = sq
        for k in range(m):
            sq += S[b, k] * S[b, k]
            xy += S[b, k] * Y[b, k]
        theta[b, 0] = S[b]
        _finish(acc[b], out, b, tail, 1, use_twin, status[b] == 0, xy / sq)


# -- the lane-vectorised toy kernel for small states (kernels._soa) ---------------------------------
#: trajectories per block of the SoA kernel: 8 AVX-512 registers of float64 lanes (4 of float32);
#: 32 to 256 measured the same within the noise (docs/benchmarks.md)
SOA_LANES = 64
#: the SoA kernel runs states of at most this many elements n*d: its loops over groups and
#: coordinates unroll completely up to about there (1.1-5.6x the per-trajectory kernel at n*d = 32,
#: 0.64x at (3, 12), 0.55x at (3, 16); docs/benchmarks.md) ...
SOA_MAX_ELEMENTS = 32
#: ... for batches of at least one full block: below that the per-trajectory kernel is as fast and
#: needs no compilation for the shape (the SoA kernel is compiled per (n, d) in ~3-7 s, then cached)
SOA_MIN_BATCH = SOA_LANES
#: contract (FMA) only: the lanes need no reassociation (nothing is summed across lanes), and
#: reassociating ``lr * (c * x)`` into ``(lr * c) * x`` overflows where the spec does not (float32 at
#: ELR 1e37-1e38: measured status mismatches)
_SOA_FAST = {"contract"}
_SOA_ENV = {"prange": prange, "get_fpmode": _get_fpmode, "set_fpmode": _set_fpmode,
            "FTZ_DAZ": _FTZ_DAZ, "sqrt": _sqrt, "_f64_bits": _f64_bits, "_bits_f64": _bits_f64}
_SOA_KERNELS: dict = {}


def _soa_kernel(n: int, d: int, individual: bool, twin: bool, single: bool = False):
    """The SoA kernel for shape ``(n, d)`` (built once per process, cached on disk by numba under a
    name that carries the shape, the setting and the source hash)."""
    key = (n, d, individual, twin, single)
    kern = _SOA_KERNELS.get(key)
    if kern is None:
        name = (f"toy_soa_n{n}_d{d}_{'individual' if individual else 'total'}"
                f"{'_twin' if twin else ''}_{'f32' if single else 'f64'}_L{SOA_LANES}")
        if _CACHE:
            name += f"_src{_SOURCE_SHA[:16]}"
        helper = lambda f: njit(f, error_model="numpy", fastmath=_SOA_FAST, nogil=True)  # noqa: E731
        kern = _soa.build(helper, lambda f: njit(f, parallel=True, error_model="numpy",
                                                 fastmath=_SOA_FAST, nogil=True, cache=_CACHE),
                          n=n, d=d, individual=individual, twin=twin, single=single,
                          lanes=SOA_LANES,
                          env=_SOA_ENV, qualname=name)
        _SOA_KERNELS[key] = kern
    return kern


def use_soa(batch: int, n: int, d: int) -> bool:
    """Whether `toy` runs the SoA kernel for ``batch`` trajectories of shape ``(n, d)``."""
    return n * d <= SOA_MAX_ELEMENTS and batch >= SOA_MIN_BATCH


# -- entry points (kernels._protocol) ------------------------------------------------------------
def toy(inputs: BatchInputs, outputs: BatchOutputs) -> None:
    """The canonical toy for ``B`` trajectories; ``inputs.theta`` ends as the final states.

    Small states of large batches (`use_soa`) run lane-vectorised (`toy_soa`), the others one
    trajectory per ``prange`` iteration (`toy_aos`); both equal the specification."""
    B, n, d = inputs.theta.shape
    (toy_soa if use_soa(B, n, d) else toy_aos)(inputs, outputs)


def toy_aos(inputs: BatchInputs, outputs: BatchOutputs) -> None:
    """`toy` with one trajectory per ``prange`` iteration (any shape; the faster one above
    `SOA_MAX_ELEMENTS`)."""
    i = inputs
    _toy_kernel(i.theta, i.elr, i.alphas, i.twin_dirs, bool(i.use_twin), bool(i.individual),
                int(i.steps), int(i.tail), i.eps, i.tiny, *outputs)


def toy_soa(inputs: BatchInputs, outputs: BatchOutputs) -> None:
    """`toy` lane-vectorised over blocks of `SOA_LANES` trajectories (kernels._soa; any shape, but
    compiled per ``(n, d)`` and fastest for small ``n*d``)."""
    i = inputs
    _, n, d = i.theta.shape
    kern = _soa_kernel(int(n), int(d), bool(i.individual), bool(i.use_twin),
                       i.theta.dtype == np.float32)
    kern(i.theta, i.elr, i.alphas, i.twin_dirs, int(i.steps), int(i.tail), i.eps, i.tiny,
         *outputs)


def rayleigh(inputs: BatchInputs, outputs: BatchOutputs) -> None:
    r"""The SI Rayleigh quotient (``theta`` ``(B, 1, m)``, ``inputs.shifted`` $=A-\lambda_1I$)."""
    i = inputs
    _rayleigh_kernel(i.theta, i.shifted, i.elr, i.alphas, i.twin_dirs, bool(i.use_twin),
                     int(i.steps), int(i.tail), i.eps, i.tiny, *outputs)


def is_available() -> bool:
    """True: numba imported, and its CPU target needs nothing else."""
    return True


# -- momentum / Adam at a fixed ELR (kernels._momentum_step, _momentum_cpu, _momentum_soa) ---------
_MOMENTUM = []
_MOMENTUM_SOA: dict = {}


def toy_momentum(theta, elr, beta, alphas, steps, tail, momentum_mode, individual, optimizer,
                 beta2, eps, hit_loss=_mio.HIT_LOSS):
    """Heavy ball / Adam for ``B`` trajectories (contract: ``summarize_momentum_batch``; C-contiguous
    arrays of the computing dtype, ``theta`` ``(B, n, d)`` overwritten); returns the spec's dict.
    Heavy ball where `use_soa` (the toy's rule) runs `toy_momentum_soa`, else `toy_momentum_aos`."""
    B, n, d = theta.shape
    soa = optimizer == "heavy_ball" and use_soa(B, n, d)
    return (toy_momentum_soa if soa else toy_momentum_aos)(theta, elr, beta, alphas, steps, tail,
        momentum_mode, individual, optimizer, beta2, eps, hit_loss)


def toy_momentum_aos(theta, elr, beta, alphas, steps, tail, momentum_mode, individual, optimizer,
                     beta2, eps, hit_loss=_mio.HIT_LOSS):
    """`toy_momentum` with one trajectory per ``prange`` iteration (any shape, both optimizers)."""
    consts = _mio.constants(theta.dtype, momentum_mode, optimizer, beta2, eps, hit_loss)
    if not _MOMENTUM:   # compiled (or loaded from the cache) on first use, ~10 s cold
        name = "toy_momentum_kernel" + (f"_src{_SOURCE_SHA[:16]}" if _CACHE else "")
        env = {"prange": prange, "get_fpmode": _get_fpmode, "set_fpmode": _set_fpmode,
               "FTZ_DAZ": _FTZ_DAZ, "cache": _CACHE}
        _MOMENTUM.append(_momentum_cpu.build(njit, env, name))
    B, n, _ = theta.shape
    buf, v = np.empty_like(theta), np.empty((B, n), theta.dtype)
    out = np.empty((_momentum_cpu.N_OUT, B), theta.dtype)
    status, bad = np.empty(B, np.int8), np.empty(B, np.int64)
    _MOMENTUM[0](theta, buf, v, elr, beta, alphas, int(steps), int(tail), consts[0],
                 bool(individual), *consts[1:], out, status, bad)
    return _mio.result(out, status, bad, theta, buf, v, consts[1])


def _momentum_soa_kernel(n: int, d: int, individual: bool, transport: bool, single: bool):
    """The heavy-ball SoA kernel for ``(n, d)`` (built once per process, cached as `_soa_kernel`)."""
    key = (n, d, individual, transport, single)
    if key not in _MOMENTUM_SOA:
        name = (f"hb_soa_n{n}_d{d}_{'individual' if individual else 'total'}_"
                f"{'transport' if transport else 'official'}_{'f32' if single else 'f64'}"
                f"_L{SOA_LANES}" + (f"_src{_SOURCE_SHA[:16]}" if _CACHE else ""))
        _MOMENTUM_SOA[key] = _momentum_soa.build(
            njit, _SOA_FAST, _CACHE, n=n, d=d, individual=individual, transport=transport,
            single=single, lanes=SOA_LANES, env=_SOA_ENV, qualname=name)
    return _MOMENTUM_SOA[key]


def toy_momentum_soa(theta, elr, beta, alphas, steps, tail, momentum_mode, individual, optimizer,
                     beta2, eps, hit_loss=_mio.HIT_LOSS):
    """`toy_momentum` lane-vectorised over blocks of `SOA_LANES` trajectories (kernels._momentum_soa;
    heavy ball only, any shape and batch, but compiled per ``(n, d)`` and fastest for small ``n*d``)."""
    consts = _mio.constants(theta.dtype, momentum_mode, optimizer, beta2, eps, hit_loss)
    if consts[1]:
        raise ValueError("toy_momentum_soa runs heavy ball only, got optimizer='adam' "
                         "(toy_momentum runs Adam per trajectory)")
    B, n, d = theta.shape
    kern = _momentum_soa_kernel(int(n), int(d), bool(individual), consts[0],
                                theta.dtype == np.float32)
    buf, out = np.empty_like(theta), np.empty((_momentum_cpu.N_OUT, B), theta.dtype)
    status, bad = np.empty(B, np.int8), np.empty(B, np.int64)
    kern(theta, buf, elr, beta, alphas, int(steps), int(tail), consts[6], out, status, bad)
    return _mio.result(out, status, bad, theta, buf, None, False)


# -- conventional training: weight decay, no projection (kernels._wd_step, _wd_cpu) ---------------
_WD = []


def toy_wd(theta, lr, weight_decay, alphas, steps, tail, **levels):
    """GD with weight decay for ``B`` toy runs (contract: ``summarize_wd_batch``; C-contiguous arrays
    of the computing dtype, ``theta`` ``(B, n, d)`` overwritten); returns the spec's dict.
    ``levels``: ``conv_rtol``, ``spike_frac``, ``flush`` (`kernels._wd_cpu`)."""
    if not _WD:   # compiled (or loaded from the cache) on first use
        from . import _wd_cpu

        env = {"get_fpmode": _get_fpmode, "set_fpmode": _set_fpmode, "FTZ_DAZ": _FTZ_DAZ,
               "cache": _CACHE}
        _WD.append(_wd_cpu.build(env, "toy_wd_kernel" + (f"_src{_SOURCE_SHA[:16]}" if _CACHE else "")))
    return _WD[0](theta, lr, weight_decay, alphas, steps, tail, **levels)


__all__ = ["is_available", "rayleigh", "toy", "toy_aos", "toy_momentum", "toy_momentum_aos",
           "toy_momentum_soa", "toy_soa", "toy_wd", "use_soa"]
