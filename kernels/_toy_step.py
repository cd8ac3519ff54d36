r"""The canonical toy's step (``toymodel.problems.SphereToy``), plain Python over a state view ``(n, d)``.

Per group, $x=\theta_{i,1}$, $p^2=\sum_{k\ge2}\theta_{i,k}^2$, $r^2=p^2+x^2$:
$F_i=\alpha_i p^2/r^2$, $\partial_1=-2\alpha_i x p^2/r^4$,
$\partial_k=2\alpha_i x^2\theta_{i,k}/r^4$. `_toy_step` is the fused step of the CPU and GPU
kernels; `_toy_advance` the plain one (the Lyapunov twin); compiled by `_trajectory.build`.
"""
from __future__ import annotations

import math

from ._common import STATUS_NONFINITE, STATUS_OK, STATUS_ZERO_NORM, _rescale
from ._tail import _fold_tail


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
