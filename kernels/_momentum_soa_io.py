r"""Block layout of the lane-vectorised heavy-ball kernel (`_momentum_soa`) and the transposes in
and out of it: plain Python templates bound per kernel by `_momentum_soa.build`, the transposes
called once per block, not vectorised.

A block of ``L`` trajectories lives in ``W`` (the state's dtype, one row of ``L`` lanes per
coordinate and per per-trajectory value, rows of `layout`) and ``A`` (float64 accumulators, rows
``A_*``), as the fixed-ELR SoA kernel (`_soa_layout`).
"""
from __future__ import annotations

import math

#: float64 accumulator rows: Welford mean / M2 of the loss, min share, threshold count, sum of
#: $\|\theta\|\|g\|$, of the angle, of the radial part (T41), the first bad step, ``hit_step``
A_MEAN, A_M2, A_SMIN, A_ABOVE, A_GRAD, A_ANGLE, A_RADIAL, A_BAD, A_HIT = range(9)
N_A = 9
#: values a tail step leaves for `_momentum_soa.fold_tail` (row ``R_TL + j``): loss (also in the
#: loss steps before the tail), share, threshold count, $\|\theta\|\|g\|$, angle, radial part
N_TL = 6

# the constants every template reads, bound per kernel by `_momentum_soa.build` (placeholders)
N = D = L = 1
INDIVIDUAL = TRANSPORT = TAIL = LOSS = False
R_TH = R_B = R_NW = R_BN = R_AL = R_RAD = R_LR = R_RHO = R_BETA = R_ST = R_SV = R_TL = N_ROWS = 0
sqrt = math.sqrt


def layout(n: int, d: int) -> dict:
    """Row offsets of ``W``: the state ``R_TH`` and buffer ``R_B`` (``n*d`` rows each, coordinate
    ``(i, k)`` at ``+ i*d + k``), the new state ``R_NW`` and new buffer ``R_BN`` (same), the
    curvatures ``R_AL`` and group radii ``R_RAD`` (``n`` each), the learning rate ``R_LR``, the
    radius ``R_RHO``, $\\beta$ ``R_BETA``, the status ``R_ST`` (as `_soa_layout.layout`: 0 alive,
    negative in the step it fails), the group sums $\\|v_i\\|^2$ ``R_SV`` (``n``) and a step's
    `N_TL` values ``R_TL``."""
    nd = n * d
    r = {"R_TH": 0, "R_B": nd, "R_NW": 2 * nd, "R_BN": 3 * nd, "R_AL": 4 * nd, "R_RAD": 4 * nd + n}
    r["R_LR"] = 4 * nd + 2 * n
    r["R_RHO"] = r["R_LR"] + 1
    r["R_BETA"] = r["R_LR"] + 2
    r["R_ST"] = r["R_LR"] + 3
    r["R_SV"] = r["R_LR"] + 4
    r["R_TL"] = r["R_SV"] + n
    r["N_ROWS"] = r["R_TL"] + N_TL
    return r


def load_block(theta, elr, beta, alphas, b0, W, A):
    r"""Transpose trajectories ``b0 ..`` into the block (padded lanes repeat ``b0``): states, zero
    buffers, curvatures, radii $r_i$, $\rho$, $\eta=\tilde\eta\rho^2$ and $\beta$ (in the state's
    dtype, as `_common._init_targets`), cleared accumulators."""
    B = theta.shape[0]
    dt = W.dtype.type
    for l in range(L):
        b = b0 + l if b0 + l < B else b0
        tot = dt(0.0)
        for i in range(N):
            W[(R_AL + i) * L + l] = alphas[b, i]
            s = theta[b, i, 0] * theta[b, i, 0]
            for k in range(1, D):
                s += theta[b, i, k] * theta[b, i, k]
            for k in range(D):
                W[(R_TH + i * D + k) * L + l] = theta[b, i, k]
                W[(R_B + i * D + k) * L + l] = dt(0.0)
            W[(R_RAD + i) * L + l] = sqrt(s)
            tot += s
        rho = dt(sqrt(tot))
        W[R_RHO * L + l] = rho
        W[R_LR * L + l] = elr[b] * rho * rho
        W[R_BETA * L + l] = beta[b]
        W[R_ST * L + l] = dt(0.0)
        for j in range(N_A):
            A[j * L + l] = 0.0
        A[A_SMIN * L + l] = math.inf
        A[A_BAD * L + l] = -1.0
        A[A_HIT * L + l] = math.inf


def store_block(theta, buf, W, A, b0, tail, out, status, bad_step):
    r"""Write the block's trajectories back: final (or frozen) states and buffers, status, bad step
    and the `_momentum_step.N_OUT` summaries of `_momentum_step._write` (NaN for a failed
    trajectory; the final loss and stability $\max_i\eta\alpha_i/((1+\beta)r_i^2)$ in the state's
    dtype, as `_momentum_step._final`)."""
    B = theta.shape[0]
    dt = W.dtype.type
    for l in range(min(L, B - b0)):
        b = b0 + l
        lr = W[R_LR * L + l]
        opb = dt(1.0) + W[R_BETA * L + l]
        loss = dt(0.0)
        stab = dt(-math.inf)
        for i in range(N):
            c = (R_TH + i * D) * L + l
            x = W[c]
            perp = dt(0.0)
            for k in range(1, D):
                perp += W[c + k * L] * W[c + k * L]
            for k in range(D):
                theta[b, i, k] = W[c + k * L]
                buf[b, i, k] = W[(R_B + i * D + k) * L + l]
            s = perp + x * x
            a = W[(R_AL + i) * L + l]
            loss += a * (perp / s)
            stab = max(stab, lr * a / (opb * s))
        code = W[R_ST * L + l]
        status[b] = int(code)
        bad_step[b] = int(A[A_BAD * L + l])
        if code != 0.0:
            for j in range(out.shape[0]):
                out[j, b] = math.nan
            continue
        out[0, b] = A[A_MEAN * L + l]
        var = A[A_M2 * L + l] / tail
        out[1, b] = sqrt(max(var, 0.0))
        out[2, b] = loss
        out[3, b] = A[A_SMIN * L + l]
        out[4, b] = A[A_ABOVE * L + l] / (tail * N)
        out[5, b] = A[A_GRAD * L + l] / tail
        out[6, b] = A[A_ANGLE * L + l] / tail
        out[7, b] = math.nan
        out[8, b] = A[A_RADIAL * L + l] / tail
        out[9, b] = stab
        out[10, b] = A[A_HIT * L + l]
