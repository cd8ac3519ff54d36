r"""One trajectory of projected GD with fixed ELR, written once for every compiled target.

The functions below are plain Python over a state *view* ``th`` of shape ``(n, d)`` (``n`` SI
groups in $\mathbb{R}^d$). `build` compiles them with a given decorator: ``numba.njit``
for the CPU kernel (views ``theta[b]``, contiguous) and ``numba.cuda.jit(device=True)`` for the
CUDA kernel (views ``theta[:, :, b]`` of a ``(n, d, B)`` array, so neighbouring threads touch
neighbouring addresses). Nothing here imports numba, numpy or toymodel, draws random numbers or
allocates: every buffer is passed in. The float operations follow
``toymodel.dynamics.summarize_batch`` (the specification) in the same order, so float64 results
agree with it to rounding.

Every operation on the state runs in the state's dtype, as in the spec, so that an overflow in
float32 (of $\eta g$, or of $\|v\|^2$ at ELR 1e30) is flagged by the same status at the same
step: float literals are written ``x.dtype.type(0.0)`` because numba types a bare ``0.0`` or
``2.0`` as float64 and promotes every float32 it touches (the CUDA target too; the CUDA simulator,
running NumPy scalars, would not show it). Only the accumulators ``acc`` are float64.

Notation (docs/theory.md T5, T7): $\eta=\tilde\eta\rho^2$ with $\rho=\|\theta_0\|$; one
step is $v=\theta-\eta\nabla F(\theta)$ rescaled to total norm $\rho$ ("total") or to
the initial group norms $r_i=\|\theta_{0,i}\|$ ("individual").

Accumulators ``acc`` (7 float64 per trajectory) over the tail window: 0 Welford mean of the loss,
1 Welford M2, 2 min share, 3 count of (step, group) with $\eta\alpha_i>\|\theta_i\|^2$ (T10),
4 sum of the effective gradient norm $\|\theta\|\|\nabla F\|$ (T2), 5 sum of the angle (T6),
6 sum of the Lyapunov log-stretch.
"""
from __future__ import annotations

import math
import types
from types import SimpleNamespace

#: number of per-trajectory accumulators, and of summaries written (order of SUMMARY_NAMES).
N_ACC = 7
N_OUT = 8
STATUS_OK, STATUS_NONFINITE, STATUS_ZERO_NORM = 0, 1, 2


def _rescale(v, individual, rho, radii):
    r"""In place: total $v\leftarrow\rho v/\|v\|$; individual $v_i\leftarrow r_i v_i/\|v_i\|$ (T5, §3)."""
    n, d = v.shape
    if individual:
        for i in range(n):
            s = v[i, 0] * v[i, 0]
            for k in range(1, d):
                s += v[i, k] * v[i, k]
            f = radii[i] / math.sqrt(s)
            for k in range(d):
                v[i, k] = v[i, k] * f
    else:
        tot = v.dtype.type(0.0)
        for i in range(n):
            s = v[i, 0] * v[i, 0]
            for k in range(1, d):
                s += v[i, k] * v[i, k]
            tot += s
        f = rho / math.sqrt(tot)
        for i in range(n):
            for k in range(d):
                v[i, k] = v[i, k] * f


def _toy_advance(th, al, lr, individual, rho, radii, new):
    r"""``new`` $\leftarrow P(\theta-\eta\nabla F(\theta))$ for the canonical toy; returns
    $(F(\theta), \|\nabla F(\theta)\|^2)$.

    Per group, $x=\theta_{i,1}$, $p^2=\sum_{k\ge2}\theta_{i,k}^2$, $r^2=p^2+x^2$:
    $F_i=\alpha_i p^2/r^2$, $\partial_1=-2\alpha_i x p^2/r^4$,
    $\partial_k=2\alpha_i x^2\theta_{i,k}/r^4$ (toymodel.problems.SphereToy).
    """
    n, d = th.shape
    zero = th.dtype.type(0.0)
    two = th.dtype.type(2.0)
    loss = zero
    gsq = zero
    for i in range(n):
        x = th[i, 0]
        perp = th[i, 1] * th[i, 1]
        for k in range(2, d):
            perp += th[i, k] * th[i, k]
        sq = perp + x * x
        coef = two * al[i] / (sq * sq)
        loss += al[i] * (perp / sq)
        g0 = -coef * x * perp
        c2 = coef * x * x
        new[i, 0] = x - lr * g0
        gs = g0 * g0
        for k in range(1, d):
            gk = c2 * th[i, k]
            gs += gk * gk
            new[i, k] = th[i, k] - lr * gk
        gsq += gs
    _rescale(new, individual, rho, radii)
    return loss, gsq


def _toy_perp(th, pp):
    r"""``pp`` $\leftarrow p_i^2=\sum_{k\ge2}\theta_{i,k}^2$ per group (the carried state of
    `_toy_step`)."""
    n, d = th.shape
    for i in range(n):
        s = th[i, 1] * th[i, 1]
        for k in range(2, d):
            s += th[i, k] * th[i, k]
        pp[i] = s


def _toy_step(cur, new, al, lr, individual, rho, radii, pp, sv, k_tail, acc):
    r"""One fused step of the canonical toy, ``new`` $\leftarrow P(\theta-\eta\nabla F(\theta))$
    with $\theta=$ ``cur``; returns the status code of ``new`` (as `_check`).

    Same arithmetic as `_toy_advance` + `_check` + `_tail_update` (and so as
    the spec) up to the order of the sums, in two passes over the state instead of six:

    1. gradient, update and the sums $\|\nabla F\|^2$, $\|v_i\|^2$ in one pass, with
       $p_i^2$ of ``cur`` carried in ``pp`` from the previous step (so
       $\|\theta_i\|^2=p_i^2+x_i^2$ needs no pass either);
    2. the rescale (T5), writing $p_i^2$ of ``new`` into ``pp``; the group sums of ``new``
       give the status (a NaN or inf entry makes its group's sum non-finite, entries are bounded
       by the radius so squares do not overflow on their own). In tail steps (``k_tail`` > 0,
       1-based index within the tail) the same pass adds the chord
       $\|\hat\theta-\hat\theta'\|^2$ of the angle (T6) with reciprocals
       $1/\|\theta\|$, $1/\|\theta'\|$ ($\|\theta'\|^2=\sum_i f_i^2\|v_i\|^2$),
       and ``acc`` is updated only when the step is valid.

    ``sv`` is ``n`` floats of scratch. Per group, $x=\theta_{i,1}$, $r^2=p^2+x^2$:
    $F_i=\alpha_i p^2/r^2$, $\partial_1=-2\alpha_i x p^2/r^4$,
    $\partial_k=2\alpha_i x^2\theta_{i,k}/r^4$ (toymodel.problems.SphereToy).
    """
    n, d = cur.shape
    zero = cur.dtype.type(0.0)
    one = cur.dtype.type(1.0)
    two = cur.dtype.type(2.0)
    loss = zero
    gsq = zero
    tot = zero
    totv = zero
    smin = cur.dtype.type(math.inf)
    above = 0.0
    for i in range(n):
        x = cur[i, 0]
        perp = pp[i]
        sq = perp + x * x
        coef = two * al[i] / (sq * sq)
        loss += al[i] * (perp / sq)
        g0 = -coef * x * perp
        c2 = coef * x * x
        v0 = x - lr * g0
        new[i, 0] = v0
        gs = g0 * g0
        vs = v0 * v0
        for k in range(1, d):
            gk = c2 * cur[i, k]
            gs += gk * gk
            vk = cur[i, k] - lr * gk
            new[i, k] = vk
            vs += vk * vk
        gsq += gs
        sv[i] = vs
        totv += vs
        tot += sq
        if sq < smin:
            smin = sq
        if lr * al[i] > sq:
            above += 1.0
    # pass 2: rescale (total: one factor; individual: one per group)
    f = rho / math.sqrt(totv)
    code = STATUS_OK
    c2s = zero
    if k_tail > 0:
        tot_new = zero
        if individual:
            for i in range(n):
                fi = radii[i] / math.sqrt(sv[i])
                tot_new += fi * fi * sv[i]
        else:
            tot_new = f * f * totv
        ia = one / math.sqrt(tot)
        ib = one / math.sqrt(tot_new)
    else:
        ia = zero
        ib = zero
    for i in range(n):
        fi = radii[i] / math.sqrt(sv[i]) if individual else f
        x0 = new[i, 0] * fi
        new[i, 0] = x0
        p = zero
        if k_tail > 0:
            u = cur[i, 0] * ia - x0 * ib
            c2s += u * u
            for k in range(1, d):
                nk = new[i, k] * fi
                new[i, k] = nk
                p += nk * nk
                u = cur[i, k] * ia - nk * ib
                c2s += u * u
        else:
            for k in range(1, d):
                nk = new[i, k] * fi
                new[i, k] = nk
                p += nk * nk
        pp[i] = p
        s = p + x0 * x0
        if not math.isfinite(s):
            code = STATUS_NONFINITE
        elif not s > 0.0 and code == STATUS_OK:
            code = STATUS_ZERO_NORM
    if code != STATUS_OK or k_tail <= 0:
        return code
    _fold_tail(acc, k_tail, loss, smin / tot, above, math.sqrt(tot * gsq), c2s)
    return code


def _toy_loss(th, al):
    r"""$F(\theta)=\sum_i\alpha_i p_i^2/r_i^2$ (the toy loss alone)."""
    n, d = th.shape
    loss = th.dtype.type(0.0)
    for i in range(n):
        x = th[i, 0]
        perp = th[i, 1] * th[i, 1]
        for k in range(2, d):
            perp += th[i, k] * th[i, k]
        loss += al[i] * (perp / (perp + x * x))
    return loss


def _rayleigh_advance(x, y, lr, rho, new):
    r"""``new`` $\leftarrow P(x-\eta\nabla F(x))$ for the SI Rayleigh quotient given
    $y=(A-\lambda_1 I)x$ (one group, views of shape ``(1, m)``); returns
    $(F(x), \|\nabla F(x)\|^2)$.

    $F=x^\top y/\|x\|^2$ and $\nabla F=2(y-Fx)/\|x\|^2$, the gradient of
    toymodel.problems.RayleighToy written with the shifted matrix: identical in exact arithmetic,
    and free of the cancellation in $Ax-(x^\top Ax/\|x\|^2)x$ near the minimiser.
    """
    m = x.shape[1]
    sq = x[0, 0] * x[0, 0]
    xy = x[0, 0] * y[0, 0]
    for k in range(1, m):
        sq += x[0, k] * x[0, k]
        xy += x[0, k] * y[0, k]
    loss = xy / sq
    gsq = x.dtype.type(0.0)
    two = x.dtype.type(2.0)
    for k in range(m):
        g = two * (y[0, k] - loss * x[0, k]) / sq
        gsq += g * g
        new[0, k] = x[0, k] - lr * g
    tot = new[0, 0] * new[0, 0]
    for k in range(1, m):
        tot += new[0, k] * new[0, k]
    f = rho / math.sqrt(tot)
    for k in range(m):
        new[0, k] = new[0, k] * f
    return loss, gsq


def _matvec(Bs, x, y):
    r"""$y\leftarrow (A-\lambda_1I)x$ for one trajectory (``x``, ``y`` views ``(1, m)``)."""
    m = x.shape[1]
    zero = y.dtype.type(0.0)
    for k in range(m):
        s = zero
        for j in range(m):
            s += Bs[k, j] * x[0, j]
        y[0, k] = s


def _check(new):
    """Status of a new state: 1 if any entry is non-finite, 2 if a group has zero norm, else 0.

    One reduction per group: a NaN or inf entry makes the group's sum of squares non-finite (the
    entries are bounded by the radius after rescaling, so squares cannot overflow on their own)."""
    n, d = new.shape
    code = STATUS_OK
    for i in range(n):
        s = new[i, 0] * new[i, 0]
        for k in range(1, d):
            s += new[i, k] * new[i, k]
        if not math.isfinite(s):
            return STATUS_NONFINITE
        if not s > 0.0:
            code = STATUS_ZERO_NORM
    return code


def _init_targets(th, radii):
    r"""Write the group radii $r_i=\|\theta_{0,i}\|$ into ``radii``; return $\rho=\|\theta_0\|$."""
    n, d = th.shape
    tot = th.dtype.type(0.0)
    for i in range(n):
        s = th[i, 0] * th[i, 0]
        for k in range(1, d):
            s += th[i, k] * th[i, k]
        radii[i] = math.sqrt(s)
        tot += s
    # a no-op when compiled; under the CUDA simulator (this code run as Python) it keeps rho a
    # NumPy scalar, so that rho / 0 gives inf as on the device instead of ZeroDivisionError
    return th.dtype.type(math.sqrt(tot))


def _init_acc(acc):
    for j in range(acc.shape[0]):
        acc[j] = 0.0
    acc[2] = math.inf


def _fold_tail(acc, k, loss, share, above, eff_grad, chord2):
    r"""Fold tail step ``k`` (1-based) into ``acc``: Welford mean/M2 of the loss, min share (T7),
    threshold count (T10), effective gradient norm (T2) and the angle
    $2\arcsin(\text{chord}/2)$ between the state and the next one (T6)."""
    delta = loss - acc[0]
    acc[0] = acc[0] + delta / k
    acc[1] = acc[1] + delta * (loss - acc[0])
    if share < acc[2]:
        acc[2] = share
    acc[3] += above
    acc[4] += eff_grad
    acc[5] += 2.0 * math.asin(min(math.sqrt(chord2) / 2.0, 1.0))


def _tail_update(acc, k, th, new, loss, gsq, lr, al):
    r"""Fold step ``k`` (1-based within the tail) into ``acc``: Welford mean/M2 of the loss, min share
    (T7), threshold count $\eta\alpha_i>\|\theta_i\|^2$ (T10), effective gradient norm (T2),
    angle $2\arcsin(\|\hat\theta-\hat\theta'\|/2)$ between $\theta$ and the new state (T6)."""
    n, d = th.shape
    zero = th.dtype.type(0.0)
    tot = zero
    smin = th.dtype.type(math.inf)
    above = 0.0
    tot_new = zero
    for i in range(n):
        s = th[i, 0] * th[i, 0]
        sn = new[i, 0] * new[i, 0]
        for j in range(1, d):
            s += th[i, j] * th[i, j]
            sn += new[i, j] * new[i, j]
        tot += s
        tot_new += sn
        if s < smin:
            smin = s
        if lr * al[i] > s:
            above += 1.0
    na = math.sqrt(tot)
    nb = math.sqrt(tot_new)
    c2 = zero
    for i in range(n):
        for j in range(d):
            u = th[i, j] / na - new[i, j] / nb
            c2 += u * u
    _fold_tail(acc, k, loss, smin / tot, above, math.sqrt(tot * gsq), c2)


def _twin_pull(new, twn, tw, w, individual, rho, radii, eps, tiny):
    r"""Lyapunov twin bookkeeping (spec: summarize_batch): $\delta=$ twin' − new,
    returns $\log(\max(\|\delta\|,\text{tiny})/(\epsilon\rho))$ and writes the pulled-back twin
    $P(\text{new}+\epsilon\rho\,\delta/\|\delta\|)$ into ``tw`` (along ``w`` if the twins merged).
    A NaN distance propagates into the log (as np.maximum does) and re-seeds the twin along ``w``."""
    n, d = new.shape
    zero = new.dtype.type(0.0)
    dist2 = zero
    for i in range(n):
        s = zero
        for j in range(d):
            u = twn[i, j] - new[i, j]
            s += u * u
        dist2 += s
    dist = math.sqrt(dist2)
    er = eps * rho
    m = tiny if dist < tiny else dist
    out = math.log(m / er)
    if dist > 0.0:
        for i in range(n):
            for j in range(d):
                tw[i, j] = new[i, j] + er * ((twn[i, j] - new[i, j]) / dist)
    else:
        for i in range(n):
            for j in range(d):
                tw[i, j] = new[i, j] + er * w[i, j]
    _rescale(tw, individual, rho, radii)
    return out


def _twin_init(th, tw, w, individual, rho, radii, eps):
    r"""The twin's start $P(\theta_0+\epsilon\rho w)$."""
    n, d = th.shape
    er = eps * rho
    for i in range(n):
        for j in range(d):
            tw[i, j] = th[i, j] + er * w[i, j]
    _rescale(tw, individual, rho, radii)


def _copy(src, dst):
    n, d = src.shape
    for i in range(n):
        for j in range(d):
            dst[i, j] = src[i, j]


def _finish(acc, out, b, tail, n, use_twin, ok, final_loss):
    """Write the 8 summaries of trajectory ``b`` into ``out[:, b]`` (NaN for a failed trajectory)."""
    nan = math.nan
    if not ok:
        for j in range(out.shape[0]):
            out[j, b] = nan
        return
    out[0, b] = acc[0]
    var = acc[1] / tail
    out[1, b] = math.sqrt(var if var > 0.0 else 0.0)
    out[2, b] = final_loss
    out[3, b] = acc[2]
    out[4, b] = acc[3] / (tail * n)
    out[5, b] = acc[4] / tail
    out[6, b] = acc[5] / tail
    out[7, b] = acc[6] / tail if use_twin else nan


def build(jit):
    """Compile the trajectory functions with ``jit`` (a decorator for callable-from-kernel functions).

    Returns a namespace with ``toy_run`` (a whole toy trajectory), ``rayleigh_run`` (a whole
    Rayleigh trajectory with an in-thread mat-vec, for GPUs) and ``rayleigh_substep`` (one step of
    one Rayleigh trajectory given $y=(A-\\lambda_1I)x$ from a batched matrix product).
    """
    rescale = jit(_rescale)
    check = jit(_check)
    init_targets = jit(_init_targets)
    init_acc = jit(_init_acc)
    copy = jit(_copy)
    finish = jit(_finish)
    matvec = jit(_matvec)
    # module-level helpers that call other helpers get a copy whose globals point at the compiled ones
    g = {"_rescale": rescale, "_fold_tail": jit(_fold_tail)}
    tail_update = jit(_rebind(_tail_update, g))
    toy_advance = jit(_rebind(_toy_advance, g))
    toy_loss = jit(_toy_loss)
    toy_perp = jit(_toy_perp)
    toy_step = jit(_rebind(_toy_step, g))
    rayleigh_advance = jit(_rayleigh_advance)
    twin_pull = jit(_rebind(_twin_pull, g))
    twin_init = jit(_rebind(_twin_init, g))

    def toy_run(th, al, elr, w, use_twin, individual, steps, tail, eps, tiny,
                nxt, tw, twn, scr, acc, out, b):
        """Run trajectory ``b`` in place (``th`` ends as the final or frozen state); write its
        summaries; return (status, bad_step). ``scr`` is ``(3, n)`` scratch of the state's dtype
        (group radii, carried $p_i^2$, group sums of the update)."""
        n = th.shape[0]
        radii = scr[0]
        pp = scr[1]
        sv = scr[2]
        rho = init_targets(th, radii)
        toy_perp(th, pp)
        lr = elr * rho * rho
        init_acc(acc)
        if use_twin:
            twin_init(th, tw, w, individual, rho, radii, eps)
        start = steps - tail
        status = 0
        bad = -1
        cur = th
        new = nxt
        for t in range(steps):
            code = toy_step(cur, new, al, lr, individual, rho, radii, pp, sv, t - start + 1, acc)
            if code != 0:
                status = code
                bad = t
                break
            if use_twin:
                toy_advance(tw, al, lr, individual, rho, radii, twn)
                lg = twin_pull(new, twn, tw, w, individual, rho, radii, eps, tiny)
                if t >= start:
                    acc[6] += lg
            cur, new = new, cur   # swap buffers instead of copying the state
        if status == 0 and steps % 2 == 1:
            copy(cur, th)
        elif status != 0 and bad % 2 == 1:
            copy(cur, th)
        finish(acc, out, b, tail, n, use_twin, status == 0, toy_loss(th, al))
        return status, bad

    def rayleigh_substep(t, x, y, new, tw, ytw, twn, w, lr, rho, radii, al, use_twin, start,
                         eps, tiny, acc):
        """One step of one Rayleigh trajectory given ``y`` = shifted A times ``x`` (and ``ytw`` for
        the twin ``tw``); ``x`` becomes the new state. Returns the status code of the step."""
        loss, gsq = rayleigh_advance(x, y, lr, rho, new)
        code = check(new)
        if code != 0:
            return code
        if t >= start:
            tail_update(acc, t - start + 1, x, new, loss, gsq, lr, al)
        if use_twin:
            rayleigh_advance(tw, ytw, lr, rho, twn)
            lg = twin_pull(new, twn, tw, w, False, rho, radii, eps, tiny)
            if t >= start:
                acc[6] += lg
        copy(new, x)
        return 0

    rayleigh_substep_c = jit(rayleigh_substep)

    def rayleigh_run(Bs, x, al, elr, w, use_twin, steps, tail, eps, tiny,
                     y, new, tw, ytw, twn, radii, acc, out, b):
        """A whole Rayleigh trajectory in one thread (mat-vec per step); returns (status, bad_step)."""
        rho = init_targets(x, radii)
        lr = elr * rho * rho
        init_acc(acc)
        if use_twin:
            twin_init(x, tw, w, False, rho, radii, eps)
        start = steps - tail
        status = 0
        bad = -1
        for t in range(steps):
            matvec(Bs, x, y)
            if use_twin:
                matvec(Bs, tw, ytw)
            code = rayleigh_substep_c(t, x, y, new, tw, ytw, twn, w, lr, rho, radii, al,
                                      use_twin, start, eps, tiny, acc)
            if code != 0:
                status = code
                bad = t
                break
        matvec(Bs, x, y)
        sq = x.dtype.type(0.0)
        xy = sq
        for k in range(x.shape[1]):
            sq += x[0, k] * x[0, k]
            xy += x[0, k] * y[0, k]
        finish(acc, out, b, tail, 1, use_twin, status == 0, xy / sq)
        return status, bad

    # nested functions see the compiled helpers as closure variables (frozen at compile time)
    toy_run_c = jit(toy_run)
    rayleigh_run_c = jit(rayleigh_run)
    return SimpleNamespace(toy_run=toy_run_c, rayleigh_run=rayleigh_run_c,
                           rayleigh_substep=rayleigh_substep_c, init_targets=init_targets,
                           init_acc=init_acc, twin_init=twin_init, finish=finish)


def _rebind(fn, names):
    """A copy of ``fn`` whose globals resolve ``names`` to the compiled helpers (numba freezes
    globals at compile time, so each target gets its own copy)."""
    glob = dict(fn.__globals__)
    glob.update(names)
    return types.FunctionType(fn.__code__, glob, fn.__name__, fn.__defaults__, fn.__closure__)
