r"""Closed forms of heavy-ball momentum and Adam on the sphere (docs/momentum.md T41, T43, T44,
T46, T47): per-group and naive total thresholds, the linearised rate, the transported two-cycle,
the official buffer's radial growth and Adam's epsilon threshold. No simulation; every name is
re-exported by `toymodel.momentum`.
"""
from __future__ import annotations

import math

import numpy as np

from ._momentum_checks import check_betas, check_momentum
from ._validate import alphas_array, positive_finite, positive_int


def heavy_ball_group_thresholds(alphas, momentum) -> np.ndarray:
    r"""Per-group limits of the individual ELR, $(1+\beta)/\alpha_i$ (T43)."""
    return (1.0 + check_momentum(momentum)) / alphas_array(alphas)


def naive_total_threshold(alphas, momentum) -> float:
    r"""The naive total threshold $(1+\beta)/\sum\alpha_i$ (T43 with the budget T8): an upper
    bound on every convergent ELR, *not* the boundary (T44)."""
    return float((1.0 + check_momentum(momentum)) / alphas_array(alphas).sum())


def heavy_ball_rate(k, momentum):
    r"""Spectral radius of the linearised heavy ball on one group, $k=\tilde\eta_i\alpha_i$ (T43):
    the largest $|z|$ with $z^2-(1+\beta-2k)z+\beta=0$; below 1 iff $0<k<1+\beta$."""
    k = np.asarray(k, dtype=np.float64)
    b = check_momentum(momentum)
    tr = 1.0 + b - 2.0 * k
    disc = tr * tr - 4.0 * b
    real = 0.5 * (np.abs(tr) + np.sqrt(np.maximum(disc, 0.0)))
    return np.where(disc >= 0, real, math.sqrt(b))


def heavy_ball_two_cycle_angle(elr, alpha, momentum) -> float:
    r"""The period-2 orbit $\pm\varphi^*$ of one group under the transported heavy ball (T47):
    $\cos2\varphi^*=(1+\beta)/k$, $k=\tilde\eta\alpha>1+\beta$."""
    b = check_momentum(momentum)
    k = positive_finite("elr", elr) * positive_finite("alpha", alpha)
    if k <= 1.0 + b:
        raise ValueError(f"elr*alpha must exceed 1+momentum={1 + b:g} for a 2-cycle, got {k!r}")
    return 0.5 * math.acos((1.0 + b) / k)


def radial_growth_factor(momentum) -> float:
    r"""Steady-state amplification $(1+\beta)/(1-\beta)$ of the norm growth by the official
    (untransported) buffer relative to the transported one (T41)."""
    b = check_momentum(momentum)
    return (1.0 + b) / (1.0 - b)


def adam_eps_threshold(alphas, betas, eps, dim: int = 2) -> float:
    r"""Adam's total ELR ($\mathrm{lr}/\rho$) above which no share configuration makes the minimum
    stable once $\sqrt{\hat v}\ll\varepsilon$ (T46):
    $(1+\beta_1)\,\varepsilon/(\sqrt d\,(1-\beta_1)\sum\alpha_i)$, ``eps`` on the unit sphere."""
    b1, _ = check_betas(betas)
    eps = positive_finite("eps", eps)
    return float((1.0 + b1) * eps / (math.sqrt(positive_int("dim", dim)) * (1.0 - b1)
                                     * alphas_array(alphas).sum()))
