r"""Heavy-ball momentum and Adam at a fixed ELR, one trajectory, written once for every target.

Plain Python over state *views* ``(n, d)`` (as `_trajectory`): `build` compiles the functions with
``numba.njit`` for the CPU kernel (`_momentum_cpu`) and ``numba.cuda.jit(device=True)`` for the
CUDA kernel (`_momentum_gpu`). The specification is ``toymodel._momentum_batch.
summarize_momentum_batch`` (docs/momentum.md T40–T48); the float operations below follow it in
the same order up to the order of the sums, in the state's dtype (literals
``x.dtype.type(...)``; module docstring of `_trajectory`), the tail accumulators in float64.

Heavy ball (T40, T42), $\eta=\tilde\eta\rho^2$: $b\leftarrow\beta b+g$,
$\theta'=P(\theta-\eta b)$, then ``"transport"``: $b\leftarrow(\langle\theta_i,\theta'_i\rangle
b_i-\langle b_i,\theta'_i\rangle\theta_i)/\|\theta'_i\|^2$ ("official": $b$ left as is).
Adam (T45, T46), $\mathrm{lr}=\tilde\eta\rho$, $\varepsilon_\theta=\varepsilon/\rho$, step
$t=1,2,\dots$: $m\leftarrow\beta_1m+(1-\beta_1)g$, $v_i\leftarrow\beta_2v_i+(1-\beta_2)\|g_i\|^2$,
$\theta'=P(\theta-\mathrm{lr}\sqrt d\,\hat m/(\sqrt{\hat v_i}+\varepsilon_\theta))$; ``"transport"``
transports $m$ as $b$ and sets $v_i\leftarrow v_ir_i^2/r_i'^2$.

Accumulators ``acc`` (float64, `N_ACC`): 0 Welford mean of the loss, 1 its M2, 2 min share,
3 count of (step, group) above the limit (T43 / T46), 4 sum of $\|\theta\|\|g\|$, 5 sum of the
angle (T6), 6 sum of the radial part of the buffer (T41). `N_OUT` summaries: the 8 of
``SUMMARY_NAMES`` (``lyapunov`` NaN), then ``tail_radial``, ``final_stability``, ``hit_step``.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

from ._common import STATUS_NONFINITE, STATUS_OK, STATUS_ZERO_NORM, _copy, _init_targets
from ._trajectory import _rebind

N_ACC = 7
N_OUT = 11
#: the loss is checked against ``hit_loss`` every this many steps before the tail (the spec's rule)
HIT_EVERY = 16


def _radial(b, th, i, s):
    r"""$|\langle b_i,\theta_i\rangle|/(\|b_i\|r_i)$ (T41, ``s`` $=r_i^2$) with $b_i$ scaled to a unit
    max entry, so that $\|b_i\|^2$ cannot underflow late in a converged run (the spec's form;
    0 for $b_i=0$)."""
    d = th.shape[1]
    zero = th.dtype.type(0.0)
    one = th.dtype.type(1.0)
    bm = abs(b[i, 0])
    for k in range(1, d):
        bm = max(bm, abs(b[i, k]))
    inv = one / (bm if bm > zero else one)
    bd = zero
    bs = zero
    for k in range(d):
        bu = b[i, k] * inv
        bd += bu * th[i, k]
        bs += bu * bu
    return abs(bd) / (math.sqrt(bs if bs > zero else one) * math.sqrt(s))


def _hb_update(cur, new, bc, bn, al, lr, beta, sq, sv, tail, need_loss):
    r"""Heavy ball, pass 1: ``bn`` $=\beta b+g$, ``new`` $=\theta-\eta\,$``bn`` (not yet
    rescaled); ``sq``, ``sv`` $\leftarrow\|\theta_i\|^2$, $\|v_i\|^2$. Returns the loss (0 unless
    ``need_loss``: a division per group saved on most steps), $\|g\|^2$
    and, in tail steps, the count of groups with $\eta\alpha_i>(1+\beta)r_i^2$ (T43) and
    $\max_i|\langle b_i,\theta_i\rangle|/(\|b_i\|r_i)$ (T41; NaN propagates as in ``np.max``)."""
    n, d = cur.shape
    zero = cur.dtype.type(0.0)
    one = cur.dtype.type(1.0)
    two = cur.dtype.type(2.0)
    opb = one + beta
    loss = zero
    gsq = zero
    above = 0.0
    rmax = zero
    nan_seen = False
    for i in range(n):
        x = cur[i, 0]
        perp = zero
        for k in range(1, d):
            perp += cur[i, k] * cur[i, k]
        s = perp + x * x
        coef = two * al[i] / (s * s)
        if need_loss:
            loss += al[i] * (perp / s)
        g0 = -coef * x * perp
        c2 = coef * x * x
        b0 = beta * bc[i, 0] + g0
        bn[i, 0] = b0
        v0 = x - lr * b0
        new[i, 0] = v0
        gs = g0 * g0
        vs = v0 * v0
        for k in range(1, d):
            gk = c2 * cur[i, k]
            bk = beta * bc[i, k] + gk
            bn[i, k] = bk
            vk = cur[i, k] - lr * bk
            new[i, k] = vk
            gs += gk * gk
            vs += vk * vk
        gsq += gs
        sq[i] = s
        sv[i] = vs
        if tail:
            if lr * al[i] > opb * s:
                above += 1.0
            r = _radial(bn, cur, i, s)
            if math.isnan(r):
                nan_seen = True
            elif r > rmax:
                rmax = r
    if nan_seen:
        rmax = cur.dtype.type(math.nan)
    return loss, gsq, above, rmax


def _adam_update(cur, new, mc, mn, vc, vn, al, lr, beta, b2, omb2, c1, c2, sqrtd, eps_t, sq, sv,
                 tail, need_loss):
    r"""Adam, pass 1: ``mn``, ``vn`` the new moments, ``new`` $=\theta-\mathrm{lr}\sqrt d\,
    \hat m/(\sqrt{\hat v}+\varepsilon_\theta)$ (not yet rescaled), with the bias corrections
    ``c1`` $=1-\beta_1^t$, ``c2`` $=1-\beta_2^t$; ``sq``, ``sv`` as `_hb_update`. Returns as
    `_hb_update`, the limit being $(1-\beta_1)\tilde\eta^A_i\alpha_i>1+\beta_1$ (T46) with
    Adam's individual ELR $\mathrm{lr}\sqrt d/(r_i^2(\sqrt{\hat v_i}+\varepsilon_\theta))$ and the
    radial part taken of the old $m$."""
    n, d = cur.shape
    zero = cur.dtype.type(0.0)
    one = cur.dtype.type(1.0)
    two = cur.dtype.type(2.0)
    omb = one - beta
    opb = one + beta
    scale = lr * sqrtd / c1
    loss = zero
    gsq = zero
    above = 0.0
    rmax = zero
    nan_seen = False
    for i in range(n):
        x = cur[i, 0]
        perp = zero
        for k in range(1, d):
            perp += cur[i, k] * cur[i, k]
        s = perp + x * x
        coef = two * al[i] / (s * s)
        if need_loss:
            loss += al[i] * (perp / s)
        g0 = -coef * x * perp
        cc = coef * x * x
        gs = g0 * g0
        for k in range(1, d):
            gk = cc * cur[i, k]
            gs += gk * gk
        gsq += gs
        vi = b2 * vc[i] + omb2 * gs
        vn[i] = vi
        denom = math.sqrt(vi / c2) + eps_t
        f = scale / denom
        r = _radial(mc, cur, i, s) if tail else zero   # T46: the radial part of the old m
        m0 = beta * mc[i, 0] + omb * g0
        mn[i, 0] = m0
        v0 = x - f * m0
        new[i, 0] = v0
        vs = v0 * v0
        for k in range(1, d):
            mk = beta * mc[i, k] + omb * (cc * cur[i, k])
            mn[i, k] = mk
            vk = cur[i, k] - f * mk
            new[i, k] = vk
            vs += vk * vk
        sq[i] = s
        sv[i] = vs
        if tail:
            ke = lr * sqrtd / (s * denom)
            if omb * ke * al[i] > opb:
                above += 1.0
            if math.isnan(r):
                nan_seen = True
            elif r > rmax:
                rmax = r
    if nan_seen:
        rmax = cur.dtype.type(math.nan)
    return loss, gsq, above, rmax


def _project(cur, new, bn, vn, individual, transport, adam, rho, radii, sq, sv, tail):
    r"""Pass 2: rescale ``new`` onto the constraint set (T5), the status of the result (as
    `_common._check`), then with ``transport`` the buffer ``bn`` transported (T42) and, for
    Adam, $v_i\leftarrow v_ir_i^2/r_i'^2$. Returns (status, squared chord between
    $\theta/\|\theta\|$ and $\theta'/\|\theta'\|$ in tail steps, else 0)."""
    n, d = new.shape
    zero = new.dtype.type(0.0)
    totv = zero
    for i in range(n):
        totv += sv[i]
    f = rho / math.sqrt(totv)
    code = STATUS_OK
    totn = zero
    for i in range(n):
        fi = radii[i] / math.sqrt(sv[i]) if individual else f
        sn = zero
        on = zero
        bw = zero
        for k in range(d):
            nk = new[i, k] * fi
            new[i, k] = nk
            sn += nk * nk
            on += cur[i, k] * nk
            bw += bn[i, k] * nk
        totn += sn
        if not math.isfinite(sn):
            code = STATUS_NONFINITE
        elif not sn > zero and code == STATUS_OK:
            code = STATUS_ZERO_NORM
        if transport:
            for k in range(d):
                bn[i, k] = (on * bn[i, k] - bw * cur[i, k]) / sn
            if adam:
                vn[i] = vn[i] * sq[i] / sn
    chord2 = zero
    if tail and code == STATUS_OK:
        tot = zero
        for i in range(n):
            tot += sq[i]
        na = math.sqrt(tot)
        nb = math.sqrt(totn)
        for i in range(n):
            for k in range(d):
                u = cur[i, k] / na - new[i, k] / nb
                chord2 += u * u
    return code, chord2


def _fold(acc, k, loss, sq, above, gsq, chord2, radial):
    r"""Fold tail step ``k`` (1-based) into ``acc``: Welford mean / M2 of the loss, min share
    (T7), the threshold count, $\|\theta\|\|g\|$ (T2), the angle $2\arcsin(\text{chord}/2)$ (T6)
    and the radial part (T41)."""
    n = sq.shape[0]
    tot = sq[0]
    smin = sq[0]
    for i in range(1, n):
        tot += sq[i]
        smin = min(smin, sq[i])
    delta = loss - acc[0]
    acc[0] = acc[0] + delta / k
    acc[1] = acc[1] + delta * (loss - acc[0])
    share = smin / tot
    acc[2] = min(acc[2], share)
    acc[3] += above
    acc[4] += math.sqrt(tot * gsq)
    acc[5] += 2.0 * math.asin(min(math.sqrt(chord2) / 2.0, 1.0))
    acc[6] += radial


def _final(th, al, lr, beta, adam, v, c2, sqrtd, eps_t):
    r"""(loss, stability) of the final state: $\max_i\eta\alpha_i/((1+\beta)r_i^2)$ (T43), for
    Adam $\max_i(1-\beta_1)\tilde\eta^A_i\alpha_i/(1+\beta_1)$ (T46)."""
    n, d = th.shape
    zero = th.dtype.type(0.0)
    one = th.dtype.type(1.0)
    opb = one + beta
    loss = zero
    stab = th.dtype.type(-math.inf)
    for i in range(n):
        perp = zero
        for k in range(1, d):
            perp += th[i, k] * th[i, k]
        s = perp + th[i, 0] * th[i, 0]
        loss += al[i] * (perp / s)
        if adam:
            ke = lr * sqrtd / (s * (math.sqrt(v[i] / c2) + eps_t))
            si = (one - beta) * ke * al[i] / opb
        else:
            si = lr * al[i] / (opb * s)
        stab = max(stab, si)
    return loss, stab


def _write(acc, out, b, tail, n, ok, final_loss, stab, hit):
    """The `N_OUT` summaries of trajectory ``b`` into ``out[:, b]`` (NaN for a failed one)."""
    nan = math.nan
    if not ok:
        for j in range(out.shape[0]):
            out[j, b] = nan
        return
    out[0, b] = acc[0]
    var = acc[1] / tail
    out[1, b] = math.sqrt(max(var, 0.0))
    out[2, b] = final_loss
    out[3, b] = acc[2]
    out[4, b] = acc[3] / (tail * n)
    out[5, b] = acc[4] / tail
    out[6, b] = acc[5] / tail
    out[7, b] = nan
    out[8, b] = acc[6] / tail
    out[9, b] = stab
    out[10, b] = hit


def _zero2(a):
    for i in range(a.shape[0]):
        for k in range(a.shape[1]):
            a[i, k] = a.dtype.type(0.0)


def _zero1(a):
    for i in range(a.shape[0]):
        a[i] = a.dtype.type(0.0)


def build(jit):
    """Compile the functions above with ``jit``; returns a namespace with ``run`` (one whole
    trajectory, below)."""
    init_targets = jit(_init_targets)
    copy = jit(_copy)
    zero2 = jit(_zero2)
    zero1 = jit(_zero1)
    g = {"_radial": jit(_radial)}   # the callers get copies whose globals point at it
    hb_update = jit(_rebind(_hb_update, g))
    adam_update = jit(_rebind(_adam_update, g))
    project = jit(_project)
    fold = jit(_fold)
    final = jit(_final)
    write = jit(_write)

    def run(th, bf, vv, al, elr, beta, steps, tail, transport, individual, adam, b2, omb2, beta2,
            eps, hit_loss, nxt, bn, scr, acc, out, b):
        """Run trajectory ``b`` in place: ``th`` ``(n, d)`` ends as the final (or frozen) state,
        ``bf`` ``(n, d)`` as the heavy-ball buffer or Adam's $m$, ``vv`` ``(n,)`` as Adam's $v$
        (both start at 0); write the `N_OUT` summaries into ``out[:, b]``; return
        (status, bad_step). ``b2``, ``omb2`` are $\beta_2$ and $1-\beta_2$ rounded to the
        dtype, ``beta2`` the float64 value (the spec forms $1-\beta_2^t$ in float64), ``eps``
        Adam's $\varepsilon$ in the dtype. ``nxt``, ``bn`` ``(n, d)`` and ``scr`` ``(4, n)`` are
        scratch of the state's dtype, ``acc`` `N_ACC` float64."""
        n, d = th.shape
        dt = th.dtype.type
        one = dt(1.0)
        radii = scr[0]
        sq = scr[1]
        sv = scr[2]
        vn = scr[3]
        rho = init_targets(th, radii)
        zero2(bf)
        zero1(vv)
        zero1(vn)
        if adam:
            lr = elr * rho
            eps_t = eps / rho
        else:
            lr = elr * rho * rho
            eps_t = eps
        sqrtd = dt(math.sqrt(d))
        for j in range(acc.shape[0]):
            acc[j] = 0.0
        acc[2] = math.inf
        hit = math.inf
        start = steps - tail
        status = 0
        bad = -1
        cur = th
        new = nxt
        bc = bf
        bw = bn
        vc = vv
        vw = vn
        c2 = one
        for t in range(steps):
            k_tail = t - start + 1
            in_tail = k_tail > 0
            # the spec's rule: the loss is checked every HIT_EVERY steps before the tail
            need_loss = in_tail or (t % HIT_EVERY == 0 and hit == math.inf)
            if adam:
                c1 = one - beta ** dt(t + 1)
                c2 = dt(1.0 - beta2 ** float(t + 1))
                loss, gsq, above, radial = adam_update(cur, new, bc, bw, vc, vw, al, lr, beta,
                                                       b2, omb2, c1, c2, sqrtd, eps_t, sq, sv,
                                                       in_tail, need_loss)
            else:
                loss, gsq, above, radial = hb_update(cur, new, bc, bw, al, lr, beta, sq, sv,
                                                     in_tail, need_loss)
            code, chord2 = project(cur, new, bw, vw, individual, transport, adam, rho, radii, sq,
                                   sv, in_tail)
            if code != 0:
                status = code
                bad = t
                break
            if in_tail:
                fold(acc, k_tail, loss, sq, above, gsq, chord2, radial)
            if need_loss and hit == math.inf and loss < hit_loss:
                hit = float(t)
            cur, new = new, cur   # swap buffers instead of copying the state
            bc, bw = bw, bc
            vc, vw = vw, vc
        swaps = steps if status == 0 else bad
        if swaps % 2 == 1:
            copy(cur, th)
            copy(bc, bf)
            for i in range(n):
                vv[i] = vc[i]
        final_loss, stab = final(th, al, lr, beta, adam, vv, c2, sqrtd, eps_t)
        write(acc, out, b, tail, n, status == 0, final_loss, stab, hit)
        return status, bad

    return SimpleNamespace(run=jit(run), N_ACC=N_ACC, N_OUT=N_OUT)
