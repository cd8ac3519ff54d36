r"""The SI Rayleigh quotient's step (``toymodel.problems.RayleighToy``), plain Python over views ``(1, m)``.

Compiled by `_trajectory.build`; the CPU kernel forms $y=(A-\lambda_1I)x$ for all trajectories
with one GEMM, the GPU kernel with `_matvec` per thread.
"""
from __future__ import annotations

import math


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
