r"""Heavy-ball momentum at a fixed ELR for small states, lane-vectorised (structure of arrays), CPU.

The per-trajectory kernel (`_momentum_step`, `_momentum_cpu`) waits on the latency of a chain of
divisions and square roots over a handful of numbers; here, as in the fixed-ELR toy's `_soa`, a
block of ``L`` trajectories is stored transposed (one row of ``L`` lanes per coordinate and per
per-trajectory value, `_momentum_soa_io.layout`) and every loop over the lanes is innermost with a
fixed trip count, so LLVM vectorises across trajectories. The templates read the shape ``N``,
``D``, ``L``, the settings ``INDIVIDUAL``, ``TRANSPORT`` and the step kind ``TAIL`` / ``LOSS`` as
module constants fixed by `build` (loops over groups and coordinates unroll); the three rules of
`_soa` hold (lane body inside the lane loop, no branch on a lane's data but selects, no library
call: ``sqrt`` is LLVM's intrinsic, the arcsin `_vecmath`'s).

Arithmetic is that of `_momentum_step._hb_update` and `_project` per lane, in the state's dtype,
in the same order up to: the chord uses reciprocal norms and the arcsin of `_vecmath` (in the
state's dtype, as the spec), Welford multiplies by $1/k$, the tail accumulators are float64. The
loss is formed in the tail and every `HIT_EVERY` steps before it (for every lane: ``hit_step`` is
set only where it was unset, so the result is the spec's rule). Heavy ball only; Adam runs the
per-trajectory kernel. A failed lane keeps its last valid state and buffer (frozen, as the spec),
its status and first bad step; padded lanes of a last, partial block repeat its first trajectory.
"""
from __future__ import annotations

import math

import numpy as np

from . import _momentum_soa_io as _io
from . import _soa, _vecmath
from ._momentum_soa_io import (  # noqa: F401  (template constants, rebound by build)
    A_ABOVE,
    A_ANGLE,
    A_BAD,
    A_GRAD,
    A_HIT,
    A_M2,
    A_MEAN,
    A_RADIAL,
    A_SMIN,
    INDIVIDUAL,
    LOSS,
    N_A,
    N_ROWS,
    R_AL,
    R_B,
    R_BETA,
    R_BN,
    R_LR,
    R_NW,
    R_RAD,
    R_RHO,
    R_ST,
    R_SV,
    R_TH,
    R_TL,
    TAIL,
    TRANSPORT,
    D,
    L,
    N,
    sqrt,
)
from ._momentum_step import HIT_EVERY
from ._soa_layout import bind

fold_common = mark_failed = None   # `_soa`'s templates, bound per kernel by `build`

# supplied by `build` (the CPU module's intrinsics, the compiled helpers)
prange = range
get_fpmode = set_fpmode = load_block = store_block = None
step_plain = step_loss = step_tail = None
FTZ_DAZ = 0
_asin = _vecmath._asin


def hb_step(W):
    r"""One heavy-ball step of the block's lanes (T40, T42): $b'=\beta b+g$,
    $\theta'=P(\theta-\eta b')$, with ``TRANSPORT`` $b'$ transported to $\theta'$; state and buffer
    take the new values where the lane is alive and the new state valid, a failing lane gets its
    status negated (`mark_failed` records the step) and stays frozen; returns whether any lane
    failed. With ``LOSS`` the loss of the step's start goes to row ``R_TL``; with ``TAIL`` also the
    share, threshold count (T43), $\|\theta\|\|g\|$, angle (T6) and radial part (T41) for
    `fold_tail`. The radial ratio $|\langle b_i,\theta_i\rangle|/(\|b_i\|r_i)$ is formed of $b_i$
    scaled by $1/\max_k|b_{ik}|$, so its squared norm cannot underflow (the spec's form)."""
    dt = W.dtype.type
    zero = dt(0.0)
    one = dt(1.0)
    two = dt(2.0)
    nan = dt(math.nan)
    failed = False
    for l in range(L):
        lr = W[R_LR * L + l]
        beta = W[R_BETA * L + l]
        opb = one + beta
        totv = zero
        loss = zero
        gsq = zero
        tot = zero
        smin = dt(math.inf)
        above = zero
        rmax = zero
        nan_seen = False
        # pass 1: gradient, new buffer (R_BN rows), update v = theta - lr b' (R_NW), |v_i|^2
        for i in range(N):
            c = (R_TH + i * D) * L + l
            ob = (R_B - R_TH) * L
            obn = (R_BN - R_TH) * L
            onw = (R_NW - R_TH) * L
            x = W[c]
            perp = zero
            for k in range(1, D):
                perp += W[c + k * L] * W[c + k * L]
            s = perp + x * x
            a = W[(R_AL + i) * L + l]
            coef = two * a / (s * s)
            if LOSS:
                loss += a * (perp / s)
            g0 = -coef * x * perp
            c2 = coef * x * x
            b0 = beta * W[c + ob] + g0
            W[c + obn] = b0
            v0 = x - lr * b0
            W[c + onw] = v0
            gs = g0 * g0
            vs = v0 * v0
            bm = abs(b0)
            for k in range(1, D):
                xk = W[c + k * L]
                gk = c2 * xk
                bk = beta * W[c + ob + k * L] + gk
                W[c + obn + k * L] = bk
                vk = xk - lr * bk
                W[c + onw + k * L] = vk
                gs += gk * gk
                vs += vk * vk
                bm = max(bm, abs(bk))
            W[(R_SV + i) * L + l] = vs
            totv += vs
            if TAIL:
                gsq += gs
                tot += s
                smin = min(smin, s)
                above += one if lr * a > opb * s else zero
                inv = one / (bm if bm > zero else one)
                bd = zero
                bs = zero
                for k in range(D):
                    bu = W[c + obn + k * L] * inv
                    bd += bu * W[c + k * L]
                    bs += bu * bu
                r = abs(bd) / (sqrt(bs if bs > zero else one) * sqrt(s))
                nan_seen = nan_seen | (r != r)   # noqa: PLR0124 (NaN test without a call)
                rmax = max(rmax, r)   # a NaN r is kept by nan_seen (np.max propagates it)
        # pass 2: rescale (T5), the status from the new group sums, the transport (T42)
        f = W[R_RHO * L + l] / sqrt(totv)
        nonfinite = False
        zero_norm = False
        totn = zero
        for i in range(N):
            fi = W[(R_RAD + i) * L + l] / sqrt(W[(R_SV + i) * L + l]) if INDIVIDUAL else f
            sn = zero
            on = zero
            bw = zero
            for k in range(D):
                q = (R_NW + i * D + k) * L + l
                nk = W[q] * fi
                W[q] = nk
                sn += nk * nk
                on += W[(R_TH + i * D + k) * L + l] * nk
                bw += W[(R_BN + i * D + k) * L + l] * nk
            totn += sn
            nonfinite = nonfinite | (not sn < math.inf)
            zero_norm = zero_norm | (not sn > zero)
            if TRANSPORT:
                for k in range(D):
                    q = (R_BN + i * D + k) * L + l
                    W[q] = (on * W[q] - bw * W[(R_TH + i * D + k) * L + l]) / sn
        code = one if nonfinite else (two if zero_norm else zero)
        st = W[R_ST * L + l]
        alive = st == zero
        ok = alive & (code == zero)
        fail = alive & (code != zero)
        W[R_ST * L + l] = -code if fail else st
        failed = failed | fail
        if LOSS:
            W[R_TL * L + l] = loss
        if TAIL:
            ia = one / sqrt(tot)
            ib = one / sqrt(totn)
            c2s = zero
            for j in range(N * D):
                u = W[(R_TH + j) * L + l] * ia - W[(R_NW + j) * L + l] * ib
                c2s += u * u
            W[(R_TL + 1) * L + l] = smin / tot
            W[(R_TL + 2) * L + l] = above
            W[(R_TL + 3) * L + l] = sqrt(tot * gsq)
            W[(R_TL + 4) * L + l] = two * _asin(min(dt(0.5) * sqrt(c2s), one))
            W[(R_TL + 5) * L + l] = nan if nan_seen else rmax
        for j in range(N * D):
            th = W[(R_TH + j) * L + l]
            W[(R_TH + j) * L + l] = W[(R_NW + j) * L + l] if ok else th
            bo = W[(R_B + j) * L + l]
            W[(R_B + j) * L + l] = W[(R_BN + j) * L + l] if ok else bo
    return failed


def fold_tail(W, A, invk):
    r"""Fold a tail step's values (``R_TL`` rows) into the float64 accumulators of the lanes still
    valid, as `_momentum_step._fold`: the fixed-ELR toy's fold (`_soa.fold_tail`, bound here as
    ``fold_common``: Welford with ``invk`` $=1/k$, the share, the three sums), then the radial
    ratio's sum (row ``R_TL + 5``); loops of their own, so that a float32 step touches no float64."""
    fold_common(W, A, invk)
    for l in range(L):
        ok = W[R_ST * L + l] == 0.0
        rad = 1.0 * W[(R_TL + 5) * L + l]
        A[A_RADIAL * L + l] += rad if ok else 0.0


def check_hit(W, A, t, hit_loss):
    """``hit_step`` $\\leftarrow t$ where the lane is still valid after step ``t``, has none yet and
    the loss of the step's start is below ``hit_loss`` (compared in the state's dtype)."""
    for l in range(L):
        ok = W[R_ST * L + l] == 0.0
        h = A[A_HIT * L + l]
        A[A_HIT * L + l] = t if ok & (h == math.inf) & (W[R_TL * L + l] < hit_loss) else h


def hb_blocks(theta, buf, elr, beta, alphas, steps, tail, hit_loss, out, status, bad_step):
    """The kernel: ``prange`` over blocks of ``L`` trajectories, the whole time loop inside;
    ``theta`` in/out, ``buf`` out (the final buffers), ``out`` ``(N_OUT, B)``."""
    B = theta.shape[0]
    start = steps - tail
    for blk in prange((B + L - 1) // L):
        mode = get_fpmode()   # per thread: flush subnormals to zero (numba_cpu), restored below
        set_fpmode(mode | FTZ_DAZ)
        b0 = blk * L
        W = np.empty(N_ROWS * L, theta.dtype)
        A = np.empty(N_A * L, np.float64)
        load_block(theta, elr, beta, alphas, b0, W, A)
        for t in range(steps):
            if t >= start:
                failed = step_tail(W)
                fold_tail(W, A, 1.0 / (t - start + 1))
                check_hit(W, A, float(t), hit_loss)
            elif t % HIT_EVERY == 0:
                failed = step_loss(W)
                check_hit(W, A, float(t), hit_loss)
            else:
                failed = step_plain(W)
            if failed:
                mark_failed(W, A, t)
        store_block(theta, buf, W, A, b0, tail, out, status, bad_step)
        set_fpmode(mode)


def build(njit, fastmath, cache, *, n, d, individual, transport, single, lanes, env, qualname):
    """Compile `hb_blocks` for one shape ``(n, d)``, constraint, mode and dtype (``single``: float32,
    whose arcsin is `_vecmath._asinf`) with ``njit`` and ``fastmath``: the helpers uncached (linked
    into the kernel), the kernel parallel and cached (``cache``) under ``qualname``, which must
    differ per setting; ``env`` supplies ``prange``, ``get_fpmode``, ``set_fpmode``, ``FTZ_DAZ``,
    ``sqrt`` (as `_soa.build`)."""
    def jit(f):
        return njit(f, error_model="numpy", fastmath=fastmath, nogil=True)

    const = dict(_io.layout(n, d), N=n, D=d, L=lanes, INDIVIDUAL=bool(individual),
                 TRANSPORT=bool(transport), sqrt=env["sqrt"])
    # every helper named after its kernel: numba mangles symbols from the qualified name and a
    # per-process counter, so two cached kernels loaded into one process could otherwise link each
    # other's helpers of the same name (measured: a kernel running another shape's step)
    asin = _vecmath._asinf if single else _vecmath._asin
    g = dict(const, _asin=jit(bind(asin, env, f"{qualname}__asin")))
    fns = dict(env, **const)
    for sfx, loss, tail in (("plain", False, False), ("loss", True, False), ("tail", True, True)):
        fns[f"step_{sfx}"] = jit(bind(hb_step, dict(g, LOSS=loss, TAIL=tail),
                                      f"{qualname}__step_{sfx}"))
    # the fixed-ELR toy's templates where the step is the same, bound to this layout's rows and
    # accumulators
    shared = dict(const, A_MEAN=_io.A_MEAN, A_M2=_io.A_M2, A_SMIN=_io.A_SMIN,
                  A_ABOVE=_io.A_ABOVE, A_BAD=_io.A_BAD)
    fns["mark_failed"] = jit(bind(_soa.mark_failed, shared, f"{qualname}__mark_failed"))
    fold_common = jit(bind(_soa.fold_tail, shared, f"{qualname}__fold_common"))
    fns["fold_tail"] = jit(bind(fold_tail, dict(const, fold_common=fold_common),
                                f"{qualname}__fold_tail"))
    for nm, fn in (("check_hit", check_hit), ("load_block", _io.load_block),
                   ("store_block", _io.store_block)):
        fns[nm] = jit(bind(fn, const, f"{qualname}__{nm}"))
    return njit(bind(hb_blocks, fns, qualname), parallel=True, error_model="numpy",
                fastmath=fastmath, nogil=True, cache=cache)
