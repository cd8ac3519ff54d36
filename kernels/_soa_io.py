r"""Transposing a block of trajectories in and out of the SoA layout (`_soa_layout`), plain Python
templates bound per kernel by `_soa.build`; called once per block, not vectorised."""
from __future__ import annotations

import math

from ._soa_layout import (  # noqa: F401  (rebound)
    GROW,
    LIMIT,
    SHARE_MIN,
    A_ABOVE,
    A_ANGLE,
    A_BAD,
    A_GRAD,
    A_LYAP,
    A_M2,
    A_MEAN,
    A_SMIN,
    INDIVIDUAL,
    N_A,
    N_ROWS,
    R_AL,
    R_LR,
    R_NW,
    R_RAD,
    R_RHO,
    R_ST,
    R_SV,
    R_TH,
    R_TL,
    R_TW,
    R_BD,
    R_K,
    R_WD,
    TAIL,
    TWIN,
    D,
    L,
    N,
    sqrt,
)


def load_block(theta, elr, alphas, twin_dirs, b0, eps, W, A):
    r"""Transpose trajectories ``b0 ..`` into the block (padded lanes repeat ``b0``): states,
    curvatures, radii $r_i$, $\rho$, $\eta=\tilde\eta\rho^2$, the deferred step's coefficients and
    bounds (in the state's dtype), cleared
    accumulators, and with ``TWIN`` the twin's start $P(\theta_0+\epsilon\rho w)$."""
    B = theta.shape[0]
    dt = W.dtype.type
    for l in range(L):
        b = b0 + l if b0 + l < B else b0
        tot = dt(0.0)
        for i in range(N):
            W[(R_AL + i) * L + l] = alphas[b, i]
            s = dt(0.0)
            for k in range(D):
                v = theta[b, i, k]
                W[(R_TH + i * D + k) * L + l] = v
                s += v * v
            W[(R_RAD + i) * L + l] = sqrt(s)
            tot += s
        rho = dt(sqrt(tot))
        W[R_RHO * L + l] = rho
        W[R_LR * L + l] = elr[b] * rho * rho
        for i in range(N):   # 2 alpha_i eta / r_i^2 (individual) or / rho^2 (total)
            r = W[(R_RAD + i) * L + l]
            W[(R_K + i) * L + l] = dt(2.0) * W[(R_AL + i) * L + l] * (
                W[R_LR * L + l] / (r * r) if INDIVIDUAL else dt(elr[b]))
            # the deferred step's bounds on its squared norms: per group (individual) or, in the
            # first two rows, on the total's
            r2 = r * r if INDIVIDUAL else rho * rho
            W[(R_BD + 3 * i) * L + l] = r2 * dt(LIMIT)
            W[(R_BD + 3 * i + 1) * L + l] = r2 * dt(GROW)
            W[(R_BD + 3 * i + 2) * L + l] = r2 * dt(SHARE_MIN)
        W[R_ST * L + l] = dt(0.0)
        for j in range(N_A):
            A[j * L + l] = 0.0
        A[A_SMIN * L + l] = math.inf
        A[A_BAD * L + l] = -1.0
        if TWIN:
            er = eps * rho
            totw = dt(0.0)
            for i in range(N):
                s = dt(0.0)
                for k in range(D):
                    j = i * D + k
                    w = twin_dirs[b, i, k]
                    v = theta[b, i, k] + er * w
                    W[(R_WD + j) * L + l] = w
                    W[(R_TW + j) * L + l] = v
                    s += v * v
                W[(R_SV + i) * L + l] = s
                totw += s
            f = rho / sqrt(totw)
            for i in range(N):
                fi = W[(R_RAD + i) * L + l] / sqrt(W[(R_SV + i) * L + l]) if INDIVIDUAL else f
                for k in range(D):
                    W[(R_TW + i * D + k) * L + l] *= fi


def store_block(theta, W, A, b0, tail, out, status, bad_step):
    """Write the block's trajectories back: final (or frozen) states, status, bad step and the 8
    summaries of `_tail._finish` (NaN for a failed trajectory; the final loss in the state's dtype)."""
    B = theta.shape[0]
    dt = W.dtype.type
    for l in range(min(L, B - b0)):
        b = b0 + l
        loss = dt(0.0)
        for i in range(N):
            c = (R_TH + i * D) * L + l
            x = W[c]
            perp = W[c + L] * W[c + L]
            for k in range(2, D):
                perp += W[c + k * L] * W[c + k * L]
            for k in range(D):
                theta[b, i, k] = W[c + k * L]
            loss += W[(R_AL + i) * L + l] * (perp / (perp + x * x))
        code = W[R_ST * L + l]
        status[b] = int(code)
        bad_step[b] = int(A[A_BAD * L + l])
        if code != 0.0:
            for j in range(out.shape[0]):
                out[j, b] = math.nan
            continue
        out[0, b] = A[A_MEAN * L + l]
        var = A[A_M2 * L + l] / tail
        out[1, b] = sqrt(var if var > 0.0 else 0.0)
        out[2, b] = loss
        out[3, b] = A[A_SMIN * L + l]
        out[4, b] = A[A_ABOVE * L + l] / (tail * N)
        out[5, b] = A[A_GRAD * L + l] / tail
        out[6, b] = A[A_ANGLE * L + l] / tail
        out[7, b] = A[A_LYAP * L + l] / tail if TWIN else math.nan
