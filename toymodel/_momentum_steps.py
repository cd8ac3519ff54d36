r"""One step of heavy-ball momentum and of Adam at fixed ELR (docs/momentum.md T40, T42, T45, T46).

Owns the pure update rules (batched over leading axes) described in `toymodel.momentum`: the
buffer transport of SGD-MRT, the heavy-ball step, the AdamS/AdamSRT step and Adam's individual
ELR. Shared by the traced simulators (`toymodel.momentum`) and the batch
(`toymodel._momentum_batch`); every public name is re-exported by `toymodel.momentum`.
"""
from __future__ import annotations

import math

import numpy as np

from . import dynamics, sphere


def _gdot(a, b):
    """Per-group inner products, shape ``(..., n)``."""
    return np.einsum("...ij,...ij->...i", a, b)


def transport(buf, old, new):
    r"""SGD-MRT's transport of a buffer from ``old`` to ``new``, group by group (T42):
    $(\langle\theta_i,\theta'_i\rangle b_i-\langle b_i,\theta'_i\rangle\theta_i)/\|\theta'_i\|^2$.

    The result is orthogonal to $\theta'_i$; a tangent vector in the plane of
    $\theta_i,\theta'_i$ is rotated with it and scaled by $r_i/r'_i$, so $r_ib_i$ keeps its length;
    the radial part of $b_i$ at $\theta_i$ is removed."""
    return (_gdot(old, new)[..., None] * buf - _gdot(buf, new)[..., None] * old) \
        / _gdot(new, new)[..., None]


def heavy_ball_step(theta, buf, grad, lr, momentum, mode, constraint, target):
    r"""One heavy-ball step at fixed ELR (T40): $b\leftarrow\beta b+g$, $\theta'=P(\theta-\eta b)$,
    then the buffer per ``mode`` (T42). ``lr`` and ``momentum`` broadcast over the batch axes.

    Returns ``(theta', buf')``."""
    buf = np.asarray(momentum)[..., None, None] * buf + grad
    new = dynamics.step(theta, buf, lr, constraint, target)
    if mode == "transport":
        buf = transport(buf, theta, new)
    return new, buf


def adam_step(theta, m, v, grad, k, lr, betas, eps, mode, constraint, target):
    r"""One AdamS / AdamSRT step at fixed ELR (T45): with the group size $d$ and $t=$ ``k``,
    $m\leftarrow\beta_1m+(1-\beta_1)g$, $v_i\leftarrow\beta_2v_i+(1-\beta_2)\|g_i\|^2$,
    $\theta'=P\big(\theta-\mathrm{lr}\sqrt d\,\hat m/(\sqrt{\hat v}+\varepsilon)\big)$ with the bias
    corrections $\hat m=m/(1-\beta_1^t)$, $\hat v=v/(1-\beta_2^t)$; ``"transport"`` then applies
    T42 to $m$ and $v_i\leftarrow v_i\,r_i^2/r_i'^2$ (T46). ``eps`` is in the units of $\theta$
    here. Returns ``(theta', m', v')``."""
    b1 = np.asarray(betas[0], dtype=theta.dtype)[..., None]  # (..., 1): broadcasts over groups
    b2 = betas[1]
    m = b1[..., None] * m + (1.0 - b1[..., None]) * grad
    v = b2 * v + (1.0 - b2) * sphere.group_sq_norms(grad)
    scale = np.asarray(lr)[..., None] * math.sqrt(theta.shape[-1]) / (1.0 - b1 ** k)
    denom = np.sqrt(v / (1.0 - b2 ** k)) + np.asarray(eps)[..., None]
    new = dynamics._rescale(theta - (scale / denom)[..., None] * m, constraint, target)
    if mode == "transport":
        v = v * sphere.group_sq_norms(theta) / sphere.group_sq_norms(new)
        m = transport(m, theta, new)
    return new, m, v


def adam_individual_elr(theta, v, k, lr, beta2, eps):
    r"""Adam's ELR of every group on its own unit sphere (T45):
    $\mathrm{lr}\sqrt d/(r_i^2(\sqrt{\hat v_i}+\varepsilon))$, acting on $\hat m_i$; ``eps`` in
    the units of $\theta$."""
    sq = sphere.group_sq_norms(theta)
    denom = np.sqrt(v / (1.0 - beta2 ** k)) + np.asarray(eps)[..., None]
    return np.asarray(lr)[..., None] * math.sqrt(theta.shape[-1]) / (sq * denom)
