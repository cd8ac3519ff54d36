r"""Closed forms of conventional training with weight decay (docs/conventional.md, T20–T26).

Notation: learning rate $\eta>0$, weight decay $\lambda>0$, their product $\epsilon=\eta\lambda$
and the decay factor $q=1-\eta\lambda$; one step is $\theta\leftarrow q\,\theta-\eta\nabla F(\theta)$,
no projection. The effective ELR of a step is $\tilde\eta=\eta/(q\|\theta\|^2)$ (T20), the
toy's curvatures are $\alpha_i>0$ and $c=\tilde\eta\sum_i\alpha_i$ as in T12.

Every closed form needs $0<\eta\lambda<1$: at $\eta\lambda=0$ there is no stationary norm (T4), at
$\eta\lambda\ge1$ the decay factor $q$ is not positive. Out-of-range input raises ``ValueError``
naming the value. The results depend on $\eta$ and $\lambda$ only through $\eta\lambda$ (T21), except
the stationary norms (T22), which scale with $\eta$.
"""
from __future__ import annotations

import numpy as np

from ._validate import alphas_array, positive_finite


def decay_product(lr, weight_decay) -> float:
    r"""$\epsilon=\eta\lambda$, validated to lie in $(0, 1)$ (T20); raises ``ValueError`` otherwise."""
    lr = positive_finite("lr", lr)
    weight_decay = positive_finite("weight_decay", weight_decay)
    eps = lr * weight_decay
    if not 0.0 < eps < 1.0:
        raise ValueError(f"lr*weight_decay must lie in (0, 1) (the decay factor 1 - lr*weight_decay "
                         f"must be positive), got lr={lr!r}, weight_decay={weight_decay!r} "
                         f"(product {eps!r})")
    return eps


def wd_equilibrium_angle(lr, weight_decay) -> float:
    r"""Angle per step at the stationary point, $\tan\Delta=\sqrt{\eta\lambda(2-\eta\lambda)}/(1-\eta\lambda)$,
    i.e. $\cos\Delta=1-\eta\lambda$ (T21).

    It is T12's $\arctan\sqrt{c^2-1}$ at $c=1/(1-\eta\lambda)$. Computed with ``arctan2`` so that
    $\eta\lambda\to1$ gives $\pi/2$ without dividing by a vanishing $1-\eta\lambda$, and
    $\eta\lambda(2-\eta\lambda)$ instead of $1-(1-\eta\lambda)^2$, which cancels for small $\eta\lambda$.
    """
    eps = decay_product(lr, weight_decay)
    return float(np.arctan2(np.sqrt(eps * (2.0 - eps)), 1.0 - eps))


def wd_equilibrium_elr(lr, weight_decay, alphas) -> float:
    r"""Effective ELR at the stationary point, $\tilde\eta=1/((1-\eta\lambda)\sum_i\alpha_i)$, so
    $c=1/(1-\eta\lambda)$, just above T12's threshold $c=1$ (T21)."""
    eps = decay_product(lr, weight_decay)
    return float(1.0 / ((1.0 - eps) * alphas_array(alphas).sum()))


def wd_equilibrium_loss(lr, weight_decay, alphas) -> float:
    r"""Loss at the stationary point, $L=\eta\lambda\sum_i\alpha_i/2$ (T21).

    T12's $L^*=\tfrac12\sum\alpha_i(1-1/c)$ at $c=1/(1-\eta\lambda)$, where $1-1/c=\eta\lambda$ exactly:
    no higher-order term in $\eta\lambda$. A run from a generic start orbits this point and its
    time-averaged loss is 2–5% (typically 4–5%) higher for $\eta\lambda\lesssim0.1$ (T25,
    docs/conventional.md)."""
    eps = decay_product(lr, weight_decay)
    return float(0.5 * eps * alphas_array(alphas).sum())


def wd_equilibrium_sq_norms(lr, weight_decay, alphas) -> np.ndarray:
    r"""Stationary squared group norms $\|\theta_i\|^2=\eta\alpha_i$ (T22).

    They make every individual criticality $\eta\alpha_i/((1-\eta\lambda)\|\theta_i\|^2)$ equal to
    $1/(1-\eta\lambda)$; the shares are $\alpha_i/\sum\alpha$, those of T12."""
    decay_product(lr, weight_decay)
    return float(lr) * alphas_array(alphas)


def wd_rotation_angle(lr, weight_decay) -> float:
    r"""Argument $\omega=2\Delta$ of the eigenvalues $e^{\pm i\omega}$ of the flip-conjugated map at the
    stationary point of one group (T23); their modulus is exactly 1 (a centre, not an attractor)."""
    return 2.0 * wd_equilibrium_angle(lr, weight_decay)


def wd_elr_growth_steps(lr, weight_decay, ratio) -> float:
    r"""Steps for the ELR to grow by the factor ``ratio`` while the gradient vanishes:
    $\ln(\text{ratio})/(-2\ln(1-\eta\lambda))\approx\ln(\text{ratio})/(2\eta\lambda)$ (T26).

    With the ratio of the ELR before a spike to the ELR after it, this is the converged part of
    a period of the periodic regime; the whole period is this plus the few steps of the spike."""
    eps = decay_product(lr, weight_decay)
    ratio = positive_finite("ratio", ratio)
    # -log1p(-eps) keeps full precision for small eps, where log(1 - eps) would cancel
    return float(np.log(ratio) / (-2.0 * np.log1p(-eps)))


def wd_balance_rate(lr, weight_decay) -> float:
    r"""Long-run mean of $\ln(1+2\tilde\eta_i\ell_i)$ along any bounded run, $-\ln(1-\eta\lambda)$ (T24).

    Here $\ell_i=\alpha_i\sin^2\varphi_i$ is group $i$'s loss and $\tilde\eta_i=\eta/((1-\eta\lambda)\|\theta_i\|^2)$
    its effective ELR; the identity is exact for the toy (the minimiser coordinate is multiplied by
    $(1-\eta\lambda)(1+2\tilde\eta_i\ell_i)$ each step)."""
    return float(-np.log1p(-decay_product(lr, weight_decay)))
