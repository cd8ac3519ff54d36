r"""Conventional training of the canonical toy, one trajectory, written once for every compiled target.

GD with weight decay and no projection (docs/conventional.md T20): with learning rate $\eta$, weight
decay $\lambda$ and decay factor $q=1-\eta\lambda$,
$$\theta\leftarrow q\,\theta-\eta\nabla F(\theta),$$
per group $x=\theta_{i,1}$, $p^2=\sum_{k\ge2}\theta_{i,k}^2$, $r^2=p^2+x^2$:
$F_i=\alpha_ip^2/r^2$, $\partial_1=-2\alpha_ixp^2/r^4$, $\partial_k=2\alpha_ix^2\theta_{i,k}/r^4$.

Plain Python over state views ``(n, d)``, compiled by `build` with ``numba.njit`` (the CPU kernel,
`kernels._wd_cpu`) or ``numba.cuda.jit(device=True)`` (`kernels.numba_cuda`). The specification is
``toymodel.conventional.summarize_wd_batch``; its operations are done here in the same order
(``-coef * x * perp``, ``q * theta - lr * g``, sums over groups left to right, Welford with a
division by ``k``, the angle $2\arcsin(\min(\text{chord}/2,1))$ of unit vectors formed by
division), so results equal it to rounding (bit for bit at d = 2 but for the angle's arcsin). Unlike
the fixed-ELR kernels, *every* accumulator is of the state's dtype, as in that spec (its Welford
mean, M2, minimum and sums are arrays of the state's dtype), and literals are cast with
``dtype.type(...)`` so that a float32 run touches no float64 (`kernels._trajectory` docstring).

Status of a step, as the spec's: 1 if an entry of the new state is not finite, else 2 if a group's
sum of squares is not positive. The state is not rescaled here, so an entry may be finite with an
infinite square: finiteness is read from the entries. The zero test is decided from the entries
too (`_group_positive`), so that it equals the spec's gradual-underflow sum even where the CPU kernel
is asked to flush subnormal results to zero (``flush=True``).
"""
from __future__ import annotations

import math
from types import SimpleNamespace

from ._common import STATUS_NONFINITE, STATUS_OK, STATUS_ZERO_NORM
from ._trajectory import _rebind

#: summaries of one run in ``res`` (state dtype), in the order of ``WD_SUMMARY_NAMES``.
WD_SUMMARY_NAMES = ("tail_loss", "tail_loss_std", "final_loss", "min_loss", "tail_elr", "tail_angle")
#: integer summaries in ``ires``: spike count, first and last onset (-1 if none).
WD_SPIKE_NAMES = ("n_spikes", "first_spike", "last_spike")
#: the spec's default levels (``toymodel.regimes.CONV_RTOL``, ``toymodel.periodic.SPIKE_FRAC``),
#: repeated here because kernels never import toymodel (a test asserts they are equal).
CONV_RTOL = 1e-3
SPIKE_FRAC = 0.05


def _group_positive(new, i, floor):
    r"""Whether group ``i``'s sum of squares is positive in gradual-underflow arithmetic: some entry
    with $|v|\ge$ ``floor``, the smallest value whose square does not round to 0 (`sq_floor`). A
    sum of non-negative rounded squares is positive iff one of them is, which is decided by
    $|v|$ alone, whatever the order of the sum and whether subnormal results are flushed."""
    for k in range(new.shape[1]):
        if abs(new[i, k]) >= floor:
            return True
    return False


def _wd_update(cur, new, al, lr, q, gl, sn, floor):
    r"""``new`` $\leftarrow q\theta-\eta\nabla F(\theta)$ with $\theta=$ ``cur``; writes the group
    losses of ``cur`` into ``gl`` and the group sums of squares of ``new`` into ``sn``. Returns
    (status of ``new``, $\|\theta\|^2$)."""
    n, d = cur.shape
    zero = cur.dtype.type(0.0)
    two = cur.dtype.type(2.0)
    tot = zero
    nonfinite = False
    nonpos = False
    for i in range(n):
        x = cur[i, 0]
        perp = cur[i, 1] * cur[i, 1]
        for k in range(2, d):
            perp += cur[i, k] * cur[i, k]
        sq = perp + x * x
        coef = two * al[i] / (sq * sq)
        gl[i] = al[i] * (perp / sq)
        g0 = -coef * x * perp
        c2 = coef * x * x
        v = q * x - lr * g0
        new[i, 0] = v
        s = v * v
        for k in range(1, d):
            v = q * cur[i, k] - lr * (c2 * cur[i, k])
            new[i, k] = v
            s += v * v
        sn[i] = s
        # the spec's group norm is its own sum x^2 + p^2; for d = 2 the same two roundings as sq
        tot += sq
        if not math.isfinite(s):   # an entry is non-finite, or only a square overflowed
            for k in range(d):
                if not math.isfinite(new[i, k]):
                    nonfinite = True
        elif not s > zero and not _group_positive(new, i, floor):
            nonpos = True
    code = STATUS_NONFINITE if nonfinite else STATUS_ZERO_NORM if nonpos else STATUS_OK
    return code, tot


def _wd_angle(cur, new, tot, sn):
    r"""The angle $2\arcsin(\min(\|\hat\theta-\hat\theta'\|/2,1))$ between ``cur`` and ``new``
    (T6), unit vectors by division as ``toymodel.sphere.angle_between``."""
    n, d = cur.shape
    one = cur.dtype.type(1.0)
    two = cur.dtype.type(2.0)
    tot_new = sn[0]
    for i in range(1, n):
        tot_new += sn[i]
    na = math.sqrt(tot)
    nb = math.sqrt(tot_new)
    c2 = cur.dtype.type(0.0)
    for i in range(n):
        u = cur[i, 0] / na - new[i, 0] / nb
        s = u * u
        for k in range(1, d):
            u = cur[i, k] / na - new[i, k] / nb
            s += u * u
        c2 += s
    return two * math.asin(min(math.sqrt(c2) / two, one))


def _wd_groups(gl, al, arm, gmean, gcnt, gfst, glst, kf, t, low_frac, high_frac):
    r"""Fold the tail step ``t`` (``kf``: its 1-based index within the tail, in the dtype) into the
    group means and the per-group spike hysteresis (levels times $\alpha_i/2$); returns the total
    loss $\sum_iF_i$."""
    two = gl.dtype.type(2.0)
    loss = gl.dtype.type(0.0)
    for i in range(gl.shape[0]):
        x = gl[i]
        loss += x
        gmean[i] = gmean[i] + (x - gmean[i]) / kf
        lvl = al[i] / two
        high = x >= high_frac * lvl
        if high and arm[i] != 0:
            gcnt[i] += 1
            if gfst[i] < 0:
                gfst[i] = t
            glst[i] = t
        if x <= low_frac * lvl:
            arm[i] = 1
        elif high:
            arm[i] = 0
    return loss


def _wd_final(th, al, gexact):
    r"""$F(\theta)$ of the final state; ``gexact[i]`` $\leftarrow\nabla_iF(\theta)=0$ exactly (the
    float64 floor: the component off the minimiser underflowed, docs/conventional.md)."""
    n, d = th.shape
    zero = th.dtype.type(0.0)
    two = th.dtype.type(2.0)
    loss = zero
    for i in range(n):
        x = th[i, 0]
        perp = th[i, 1] * th[i, 1]
        for k in range(2, d):
            perp += th[i, k] * th[i, k]
        sq = perp + x * x
        coef = two * al[i] / (sq * sq)
        loss += al[i] * (perp / sq)
        ok = -coef * x * perp == zero
        c2 = coef * x * x
        for k in range(1, d):
            if c2 * th[i, k] != zero:
                ok = False
        gexact[i] = ok
    return loss


def sq_floor(dtype):
    """The smallest positive value of ``dtype`` whose square does not round to 0 with gradual
    underflow (its exact square exceeds half the smallest subnormal; a tie rounds to even, 0)."""
    from fractions import Fraction

    import numpy as np

    dt = np.dtype(dtype)
    half = Fraction(float(np.finfo(dt).smallest_subnormal)) / 2
    x = dt.type(math.sqrt(float(half) if half > 0 else 0.0) or math.ldexp(math.sqrt(2.0), -538))
    while Fraction(float(x)) ** 2 <= half:
        x = np.nextafter(x, dt.type(np.inf))
    while Fraction(float(np.nextafter(x, dt.type(0.0)))) ** 2 > half:
        x = np.nextafter(x, dt.type(0.0))
    return x


# -- host side: outputs and their names ------------------------------------------------------------
def allocate(xp, B, n, dt):
    """The kernels' outputs: ``res`` (6, B), ``ires`` (3, B), the group rows (B, n), ``conv``,
    ``status``, ``bad_step``."""
    return (xp.empty((len(WD_SUMMARY_NAMES), B), dt), xp.empty((3, B), xp.int64),
            xp.empty((B, n), dt), xp.empty((B, n), xp.int64), xp.empty((B, n), xp.int64),
            xp.empty((B, n), xp.int64), xp.empty((B, n), xp.bool_), xp.empty(B, xp.bool_),
            xp.empty(B, xp.int8), xp.empty(B, xp.int64))


def as_dict(theta, res, ires, gmean, gcnt, gfst, glst, gexact, conv, status, bad_step):
    """The outputs under the specification's names (``summarize_wd_batch``, ``traces=False``)."""
    out = {nm: res[j] for j, nm in enumerate(WD_SUMMARY_NAMES)}
    out.update({nm: ires[j] for j, nm in enumerate(WD_SPIKE_NAMES)})
    out.update(group_tail_loss=gmean, group_n_spikes=gcnt, group_first_spike=gfst,
               group_last_spike=glst, converged_exactly=conv, group_converged_exactly=gexact,
               status=status, bad_step=bad_step, theta_final=theta)
    return out


def constants(dtype, conv_rtol=CONV_RTOL, spike_frac=SPIKE_FRAC):
    """``(low_frac, high_frac, floor)`` as scalars of ``dtype``: the spike levels (the spec forms
    ``conv_rtol * level`` in the state's dtype) and `sq_floor`."""
    import numpy as np

    dt = np.dtype(dtype)
    if dt not in _FLOORS:
        _FLOORS[dt] = sq_floor(dt)
    return dt.type(conv_rtol), dt.type(spike_frac), _FLOORS[dt]


_FLOORS: dict = {}


def build(jit):
    """Compile the functions with ``jit``; returns a namespace with ``wd_run`` (a whole trajectory)."""
    update = jit(_rebind(_wd_update, {"_group_positive": jit(_group_positive)}))
    angle = jit(_wd_angle)
    groups = jit(_wd_groups)
    final = jit(_wd_final)

    def wd_run(th, nxt, al, lr, wd, steps, tail, low_frac, high_frac, floor, scr, gmean, gcnt,
               gfst, glst, gexact, res, ires, b):
        """Run trajectory ``b`` in place (``th`` ends as the final, or frozen, state); write its
        summaries into ``res[:, b]`` (``WD_SUMMARY_NAMES``), ``ires[:, b]`` (``WD_SPIKE_NAMES``) and
        the group rows ``gmean``..``gexact``; return (status, bad_step, converged_exactly).
        ``scr`` is ``(3, n)`` scratch of the dtype (group losses, new group sums, armed flags)."""
        n = th.shape[0]
        dt = th.dtype.type
        zero = dt(0.0)
        gl = scr[0]
        sn = scr[1]
        arm = scr[2]
        q = dt(1.0) - lr * wd
        rand = al[0] / dt(2.0)
        for i in range(n):
            if i > 0:
                rand += al[i] / dt(2.0)
            gmean[i] = zero
            gcnt[i] = 0
            gfst[i] = -1
            glst[i] = -1
            arm[i] = 0
        mean = zero
        m2 = zero
        lo = dt(math.inf)
        esum = zero
        asum = zero
        armed = False
        cnt = 0
        fst = -1
        lst = -1
        start = steps - tail
        status = 0
        bad = -1
        done = steps
        cur = th
        new = nxt
        for t in range(steps):
            code, tot = update(cur, new, al, lr, q, gl, sn, floor)
            if t >= start:
                kf = dt(t - start + 1)
                loss = groups(gl, al, arm, gmean, gcnt, gfst, glst, kf, t, low_frac, high_frac)
                delta = loss - mean
                mean = mean + delta / kf
                m2 = m2 + delta * (loss - mean)
                if loss < lo or math.isnan(loss):   # np.minimum propagates NaN
                    lo = loss
                esum += lr / (q * tot)
                asum += angle(cur, new, tot, sn)
                high = loss >= high_frac * rand
                if high and armed:
                    cnt += 1
                    if fst < 0:
                        fst = t
                    lst = t
                if loss <= low_frac * rand:
                    armed = True
                elif high:
                    armed = False
            if code != 0:
                status = code
                bad = t
                done = t
                break
            cur, new = new, cur   # swap buffers instead of copying the state
        if done % 2 == 1:   # an odd number of completed steps leaves the state in ``nxt``
            for i in range(n):
                for k in range(th.shape[1]):
                    th[i, k] = cur[i, k]
        fl = final(th, al, gexact)
        ok = status == 0
        conv = ok
        for i in range(n):
            gexact[i] = gexact[i] and ok
            conv = conv and gexact[i]
            if not ok:
                gmean[i] = dt(math.nan)
        ires[0, b] = cnt
        ires[1, b] = fst
        ires[2, b] = lst
        if not ok:
            for j in range(res.shape[0]):
                res[j, b] = dt(math.nan)
            return status, bad, conv
        res[0, b] = mean
        var = m2 / dt(tail)
        res[1, b] = math.sqrt(max(var, zero))
        res[2, b] = fl
        res[3, b] = lo
        res[4, b] = esum / dt(tail)
        res[5, b] = asum / dt(tail)
        return status, bad, conv

    return SimpleNamespace(wd_run=jit(wd_run))
