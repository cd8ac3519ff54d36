r"""Tail accumulators and the Lyapunov twin, plain Python (compiled by `_trajectory.build`).

Accumulators ``acc`` (7 float64 per trajectory) over the tail window: 0 Welford mean of the loss,
1 Welford M2, 2 min share, 3 count of (step, group) with $\eta\alpha_i>\|\theta_i\|^2$ (T10),
4 sum of the effective gradient norm $\|\theta\|\|\nabla F\|$ (T2), 5 sum of the angle (T6),
6 sum of the Lyapunov log-stretch; `_finish` turns them into the 8 summaries of SUMMARY_NAMES.
"""
from __future__ import annotations

import math

from ._common import _rescale


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
