r"""The toy for small states, lane-vectorised: trajectories innermost (structure of arrays), CPU only.

A phase diagram runs many trajectories of a small state (n = 3 groups, d = 2): one trajectory per
loop iteration (`_trajectory`) works on 6 numbers at a time, never fills a vector register, and
waits on the latency of its chain of a division, a square root and a rescale. Here a block of
``L`` trajectories is stored transposed, one row of ``L`` lanes per coordinate and per
per-trajectory constant (``W[row * L + l]``), and every loop over the lanes ``l`` is innermost with a
fixed trip count, so LLVM vectorises across trajectories (8 float64 or 16 float32 lanes per AVX-512
register) and the division and square-root units run at their throughput instead of their latency.

The functions are plain Python *templates* over module constants that `build` fixes per kernel:
``N``, ``D`` (the shape), ``L`` (lanes per block), ``INDIVIDUAL``, ``TWIN``, ``TAIL`` and the row
offsets ``R_*`` of `layout`. With them constant, the loops over groups and coordinates have
constant trip counts and unroll completely, leaving the lane loop innermost. Three rules keep it
vectorisable (each was measured to stop LLVM's vectoriser): (1) the lane body is written inside
the lane loop, not in a helper taking the block arrays (such a call is not inlined); (2) no early
exit and no branch on a lane's data: a lane that fails is masked (``x if ok else y``, a select,
whose operands are computed before it: a helper call inside a conditional expression stays a
branch), not left; (3) no library call: ``s < inf`` tests finiteness (``math.isfinite`` is a call),
``sqrt`` is LLVM's intrinsic (numba's ``math.sqrt`` is a libm call), and the tail's $\arcsin$ and the
twin's $\log$ are those of `_vecmath` (fdlibm's rational approximations, within a few ulp of libm;
the spec's tolerance is far wider).

Arithmetic is that of the fused `_toy_step._toy_step` (and so of the spec, up to the order of sums),
in the state's dtype; differences, all at rounding level: $1/r_i^2$ is formed once per group (for
the coefficient and the loss), the share uses the chord's $1/\|\theta\|$ squared, the Welford
update multiplies by $1/k$, the twin's pull-back direction is $\delta\cdot(1/\|\delta\|)$, and
the accumulators ``A`` (rows ``A_*``: those of `_tail`, then the first bad step) and `_log` are
float64 (the arcsin is taken in the state's dtype, `_asin` or `_asinf`). A failed lane keeps its
last valid state (frozen, as in the spec), its status and first bad step; padded lanes of a last,
partial block repeat its first trajectory, unwritten.

Before the tail, kernels without the twin defer the projection (T51, `lazy_step_source`): the rows
hold an unprojected $u$ whose projection is the spec's state, so a step needs no square root and
no rescale division (one division per group is left). The block is projected (`normalize`) when
a lane has grown ``GROW`` times its squared radius and at the tail's start; the tail's steps, which
the summaries read, are projected ones (`step_source`). A lane whose deferred state is not plainly
valid is handed to the projected step (`lane_redo`), which decides its failure as the spec does;
a block whose ELRs or radii are extreme (`lazy_ok`) keeps the projected step throughout. The
deferred states round differently from the spec's (one step's rounding, never amplified beyond
what the dynamics amplify), measured ~1.3x faster at n = 3, d = 2.
"""
from __future__ import annotations

import numpy as np

from . import _soa_io, _vecmath
from ._soa_io import load_block, store_block  # noqa: F401  (templates, rebound by build)
from ._soa_steps import lazy_step_source, step_source, unrolled_step  # noqa: F401  (generated)
from ._soa_layout import (
    A_ABOVE,
    A_BAD,
    A_LYAP,
    A_M2,
    A_MEAN,
    A_SMIN,
    FTZ_DAZ,
    INDIVIDUAL,
    LAZY,
    N_A,
    N_ROWS,
    R_AL,
    R_LR,
    R_NW,
    R_RAD,
    R_RHO,
    R_K,
    R_ST,
    R_SV,
    R_TH,
    R_TL,
    R_TW,
    R_WD,
    TAIL,
    D,
    L,
    N,
    _log,
    bind,
    get_fpmode,
    layout,
    prange,
    set_fpmode,  # noqa: F401
    sqrt,
    redo_exact,
    step_lazy,
    step_plain,
    step_tail,
    twin_plain,
    twin_tail,
)


#: status codes of the deferred steps, in the state's dtype: a lane for the exact step, a hidden one
REDO, HIDE = 3.0, 4.0
#: the largest $K_i$ ($2\alpha_i\tilde\eta$, total) of a block that defers its projections
#: (`lazy_ok`)
K_MAX = 2.0 ** 16
#: the deferred step's bounds per dtype (``single``): a block is projected when a lane's |u|^2 has
#: passed GROW times its squared radius; a state is plainly valid below LIMIT times it and with no
#: share under SHARE_MIN (`_soa_steps.lazy_step_source`)
DEFERRED_BOUNDS = {False: dict(GROW=2.0 ** 200, LIMIT=2.0 ** 400, SHARE_MIN=2.0 ** -60),
                   True: dict(GROW=2.0 ** 40, LIMIT=2.0 ** 80, SHARE_MIN=2.0 ** -60)}
#: the squared radii (groups and total) of a block that defers its projections
R2_MIN, R2_MAX = 2.0 ** -20, 2.0 ** 20


def lane_redo(W, A):
    """The exact step (``step_plain``) for the lanes `lazy_step_source` marked ``REDO``, after
    `normalize`: the other live lanes are hidden (status ``HIDE``) and restored; the marked lanes
    take the spec's step, and its failures. Returns whether one failed. Rare: a scalar pass."""
    for l in range(L):
        st = W[R_ST * L + l]
        W[R_ST * L + l] = 0.0 if st == REDO else (HIDE if st == 0.0 else st)
    failed = step_plain(W, A)
    for l in range(L):
        if W[R_ST * L + l] == HIDE:
            W[R_ST * L + l] = 0.0
    return failed


def normalize(W):
    r"""Project every lane's rows onto its constraint set: $u\,\rho/\|u\|$ (total) or
    $u_i\,r_i/\|u_i\|$ (individual); after deferred steps (`lazy_step_source`) and before the
    tail, whose steps project every time. Frozen lanes hold a valid state, so theirs is finite."""
    dt = W.dtype.type
    zero = dt(0.0)
    for l in range(L):
        tot = zero
        for i in range(N):
            s = zero
            for k in range(D):
                s += W[(R_TH + i * D + k) * L + l] * W[(R_TH + i * D + k) * L + l]
            W[(R_SV + i) * L + l] = s
            tot += s
        f = W[R_RHO * L + l] / sqrt(tot)
        for i in range(N):
            fi = W[(R_RAD + i) * L + l] / sqrt(W[(R_SV + i) * L + l]) if INDIVIDUAL else f
            for k in range(D):
                W[(R_TH + i * D + k) * L + l] *= fi


def lazy_ok(W):
    """Whether the block may defer its projections: every lane's $K_i$ (`lazy_step_source`)
    at most ``K_MAX`` (far above the phase diagrams' ELRs; beyond it steps overflow, and the
    projected steps overflow exactly where the spec does) and its squared radii (groups and total)
    within ``[R2_MIN, R2_MAX]``, so that the deferred squares, up to ``GROW`` times larger, stay
    normal in float32 too."""
    ok = True
    for l in range(L):
        for i in range(N):
            r = W[(R_RAD + i) * L + l]
            ok = ok & (W[(R_K + i) * L + l] <= K_MAX) & (r * r >= R2_MIN) & (r * r <= R2_MAX)
        rho = W[R_RHO * L + l]
        ok = ok & (rho * rho <= R2_MAX)
    return ok


def fold_tail(W, A, invk):
    r"""Fold the values of a tail step (``R_TL`` rows, left by `lane_step`) into the float64
    accumulators of the lanes still valid, as `_tail._fold_tail` (Welford with ``invk`` $=1/k$).
    A loop of its own, so that in float32 the step itself touches no float64 and keeps 16 lanes
    per register (mixed, LLVM vectorised it 8 wide: measured 1.25x float64 instead of 2x)."""
    for l in range(L):
        ok = W[R_ST * L + l] == 0.0
        loss = 1.0 * W[R_TL * L + l]
        mean = A[A_MEAN * L + l]
        delta = loss - mean
        mean_new = mean + delta * invk
        A[A_MEAN * L + l] = mean_new if ok else mean
        m2 = A[A_M2 * L + l]
        A[A_M2 * L + l] = m2 + delta * (loss - mean_new) if ok else m2
        share = 1.0 * W[(R_TL + 1) * L + l]
        sm = A[A_SMIN * L + l]
        A[A_SMIN * L + l] = min(sm, share) if ok else sm
        for j in range(3):
            v = 1.0 * W[(R_TL + 2 + j) * L + l]
            A[(A_ABOVE + j) * L + l] += v if ok else 0.0


def mark_failed(W, A, t):
    """Record step ``t`` as the bad step of the lanes that failed in it (a rare, scalar pass)."""
    for l in range(L):
        st = W[R_ST * L + l]
        if st < 0.0:
            W[R_ST * L + l] = -st
            A[A_BAD * L + l] = t


def lane_twin(W, A, eps, tiny):
    r"""The Lyapunov twin of every lane, after `lane_step` (spec: summarize_batch): advance the
    twin by the same map, $\delta=$ twin' − new, add $\log(\max(\|\delta\|,\text{tiny})/\epsilon\rho)$
    in tail steps, and pull the twin back to $P(\text{new}+\epsilon\rho\,\delta/\|\delta\|)$ (along
    the unit direction ``w`` when the twins merged or $\delta$ is NaN); frozen with its lane."""
    dt = W.dtype.type
    zero = dt(0.0)
    one = dt(1.0)
    two = dt(2.0)
    for l in range(L):
        lr = W[R_LR * L + l]
        rho = W[R_RHO * L + l]
        er = eps * rho
        totv = zero
        for i in range(N):
            c = (R_TW + i * D) * L + l
            o = (R_NW - R_TW) * L     # the R_NW row of the same coordinate
            x = W[c]
            perp = W[c + L] * W[c + L]
            for k in range(2, D):
                perp += W[c + k * L] * W[c + k * L]
            sq = perp + x * x
            coef = two * W[(R_AL + i) * L + l] / (sq * sq)
            v0 = x - lr * (-coef * x * perp)
            W[c + o] = v0
            vs = v0 * v0
            c2 = coef * x * x
            for k in range(1, D):
                vk = W[c + k * L] - lr * (c2 * W[c + k * L])
                W[c + o + k * L] = vk
                vs += vk * vk
            W[(R_SV + i) * L + l] = vs
            totv += vs
        f = rho / sqrt(totv)
        dist2 = zero
        for i in range(N):
            fi = W[(R_RAD + i) * L + l] / sqrt(W[(R_SV + i) * L + l]) if INDIVIDUAL else f
            for k in range(D):
                q = (R_NW + i * D + k) * L + l
                u = W[q] * fi - W[(R_TH + i * D + k) * L + l]
                W[q] = u
                dist2 += u * u
        dist = sqrt(dist2)
        inv = one / dist
        along = dist > zero      # false for merged twins and for NaN
        tot = zero
        for i in range(N):
            s = zero
            for k in range(D):
                j = i * D + k
                dj = W[(R_NW + j) * L + l] * inv if along else W[(R_WD + j) * L + l]
                p = W[(R_TH + j) * L + l] + er * dj
                W[(R_NW + j) * L + l] = p
                s += p * p
            W[(R_SV + i) * L + l] = s
            tot += s
        f = rho / sqrt(tot)
        alive = W[R_ST * L + l] == zero
        for i in range(N):
            fi = W[(R_RAD + i) * L + l] / sqrt(W[(R_SV + i) * L + l]) if INDIVIDUAL else f
            for k in range(D):
                j = i * D + k
                tw = W[(R_TW + j) * L + l]
                W[(R_TW + j) * L + l] = W[(R_NW + j) * L + l] * fi if alive else tw
        if TAIL:
            m = tiny if dist < tiny else dist    # NaN stays NaN, as np.maximum
            stretch = _log(1.0 * (m / er))   # float64 (numba's float() of a float32 is a call)
            A[A_LYAP * L + l] += stretch if alive else 0.0


def no_twin(W, A, eps, tiny):
    """Stands in for `lane_twin` in kernels without the twin."""
    return None


def toy_blocks(theta, elr, alphas, twin_dirs, steps, tail, eps, tiny, out, status, bad_step):
    """The kernel: ``prange`` over blocks of ``L`` trajectories, the whole time loop inside (the
    arguments of `_trajectory`'s ``toy_run``, twin constant per kernel)."""
    B = theta.shape[0]
    start = steps - tail
    for blk in prange((B + L - 1) // L):
        mode = get_fpmode()   # per thread: flush subnormals to zero (numba_cpu), restored below
        set_fpmode(mode | FTZ_DAZ)
        b0 = blk * L
        W = np.empty(N_ROWS * L, theta.dtype)
        A = np.empty(N_A * L, np.float64)
        load_block(theta, elr, alphas, twin_dirs, b0, eps, W, A)
        lazy = LAZY and lazy_ok(W)   # projections deferred before the tail (no twin, sane ELRs)
        for t in range(steps):
            if t < start:
                if lazy:
                    redo, grow = step_lazy(W, A)
                    if redo or grow:
                        normalize(W)
                    failed = redo_exact(W, A) if redo else False
                else:
                    failed = step_plain(W, A)
                    twin_plain(W, A, eps, tiny)
            else:
                if lazy and t == start:
                    normalize(W)
                failed = step_tail(W, A)
                fold_tail(W, A, 1.0 / (t - start + 1))
                twin_tail(W, A, eps, tiny)
            if failed:
                mark_failed(W, A, t)
        store_block(theta, W, A, b0, tail, out, status, bad_step)
        set_fpmode(mode)


def build(jit, pjit, *, n, d, individual, twin, single, lanes, env, qualname):
    """Compile the kernel `toy_blocks` for one shape ``(n, d)``, constraint, twin setting and dtype
    (``single``: float32 states, whose arcsin is `_vecmath._asinf`; the kernel runs that dtype only).

    ``jit`` compiles the helpers (uncached: linked into the kernel's cached code), ``pjit`` the
    kernel (parallel, cached); ``env`` supplies ``prange``, ``get_fpmode``, ``set_fpmode``,
    ``FTZ_DAZ``, ``sqrt`` and the bitcasts ``_f64_bits``, ``_bits_f64``; ``qualname`` names the
    kernel (numba's cache files are named after it: it must differ for every shape and setting)."""
    const = dict(env, **layout(n, d), N=n, D=d, L=lanes, INDIVIDUAL=bool(individual),
                 TWIN=bool(twin), **DEFERRED_BOUNDS[bool(single)])
    asin = _vecmath._asinf if single else _vecmath._asin

    def own(name):
        # every helper is named after its kernel: numba's symbol names carry the qualified name
        # and a per-process counter, so helpers of two kernels compiled in different processes
        # and loaded from the cache into one would otherwise share a symbol, and one kernel would
        # call the other's helper (compiled for another shape): NaN, heap corruption
        return f"{qualname}__{name}"
    g = dict(const, _log=jit(bind(_vecmath._log, env, own("log"))),
             _asin=jit(bind(asin, env, own("asin"))))
    fns = dict(const)
    for tail in (False, True):
        sfx = "tail" if tail else "plain"
        fns[f"step_{sfx}"] = jit(unrolled_step(n, d, individual, tail, g, own(f"step_{sfx}")))
        fns[f"twin_{sfx}"] = jit(bind(lane_twin if twin else no_twin, dict(g, TAIL=tail),
                                      own(f"twin_{sfx}")))
    fns["LAZY"] = not twin
    fns["step_lazy"] = jit(unrolled_step(n, d, individual, False, dict(g, REDO=REDO),
                                         own("step_lazy"), lazy=True))
    fns["redo_exact"] = jit(bind(lane_redo, dict(const, REDO=REDO, HIDE=HIDE,
                                                  step_plain=fns["step_plain"]), own("redo_exact")))
    fns["normalize"] = jit(bind(normalize, const, own("normalize")))
    fns["lazy_ok"] = jit(bind(lazy_ok, dict(const, K_MAX=K_MAX, R2_MIN=R2_MIN, R2_MAX=R2_MAX),
                              own("lazy_ok")))
    fns["mark_failed"] = jit(bind(mark_failed, const, own("mark_failed")))
    fns["fold_tail"] = jit(bind(fold_tail, const, own("fold_tail")))
    fns["load_block"] = jit(bind(_soa_io.load_block, const, own("load_block")))
    fns["store_block"] = jit(bind(_soa_io.store_block, const, own("store_block")))
    return pjit(bind(toy_blocks, fns, qualname))
