r"""Closed-form limits of Adam on the sphere at fixed ELR (docs/momentum.md T46, T49, T50).

Notation of docs/momentum.md: Adam's total ELR $\tilde\eta_A=\mathrm{lr}/\rho$ (``elr``), the
unit-sphere $\tilde\varepsilon$ (``eps``), $(\beta_1,\beta_2)$, group size $d$, shares $s_i$.
Write $a=(1-\beta_1)\,\tilde\eta_A\sqrt d/(1+\beta_1)$. By T46 the minimum is linearly stable at
the shares $s$ and bias-corrected unit-sphere second moments $\hat{\tilde v}_i$ iff every group
satisfies (the ``final_stability`` $<1$ of `toymodel.momentum.converged`, written with
$\hat v_i=\hat{\tilde v}_i/r_i^2$ and $\rho=1$)
$$a\,\alpha_i<\varepsilon s_i+\sqrt{s_i}\,\sqrt{\hat{\tilde v}_i}.$$
`adam_share_threshold` is this at $\hat v=0$ and given shares; `adam_horizon_threshold` bounds
$\hat{\tilde v}$ at the end of a finite run that passes the tail-loss criterion (T50);
`adam_memory_threshold` estimates where the second moment's memory lets runs pass it (T50).
"""
from __future__ import annotations

import math

import numpy as np

from ._momentum_checks import CONVERGED_LOSS, check_betas
from ._validate import alphas_array, positive_finite, positive_int

__all__ = ["adam_horizon_threshold", "adam_memory_threshold", "adam_second_moment_bound",
           "adam_share_threshold"]


def adam_share_threshold(alphas, shares, betas, eps, dim: int = 2) -> float:
    r"""The largest $\tilde\eta_A$ at which the minimum is stable at the shares ``shares`` once
    $\hat v\to0$ (T49): $(1+\beta_1)\,\varepsilon\,\min_i(s_i/\alpha_i)/(\sqrt d\,(1-\beta_1))$.

    With $s\propto\alpha$ (the best shares) it is `toymodel.momentum.adam_eps_threshold` (T46);
    with the shares of a start it is the limit a run reaches if its shares do not move."""
    a = alphas_array(alphas)
    s = np.asarray(shares, dtype=np.float64)
    if s.shape != a.shape or not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError(f"shares must be {a.size} positive finite numbers, got {shares!r}")
    b1, _ = check_betas(betas)
    eps = positive_finite("eps", eps)
    return float((1.0 + b1) * eps * np.min(s / a)
                 / (math.sqrt(positive_int("dim", dim)) * (1.0 - b1)))


def adam_second_moment_bound(alphas, beta2, *, steps, tail, tol=CONVERGED_LOSS) -> np.ndarray:
    r"""Upper bound $w_i$ on $\sqrt{\hat{\tilde v}_i}$ after ``steps`` steps of a transported
    run (AdamSRT) whose tail-mean loss over the last ``tail`` steps is below ``tol`` (T50):
    $$w_i^2=\frac{\beta_2^{\,\mathrm{tail}}\,\alpha_i^2+(1-\beta_2)\,4\alpha_i\,\mathrm{tail}\cdot\mathrm{tol}}{1-\beta_2^{\,\mathrm{steps}}}.$$
    Per group, shape ``(n,)``. Uses $|\tilde g_i|=\alpha_i|\sin2\varphi_i|\le\alpha_i$ before the
    tail and $|\tilde g_i|^2\le4\alpha_iL_i$, $\sum_{\rm tail}L\le\mathrm{tail}\cdot\mathrm{tol}$ in it."""
    a = alphas_array(alphas)
    _, b2 = check_betas((0.0, beta2))
    steps, tail = positive_int("steps", steps), positive_int("tail", tail)
    if tail > steps:
        raise ValueError(f"tail must be <= steps ({steps}), got {tail}")
    tol = positive_finite("tol", tol)
    # -expm1(steps*log(b2)) = 1 - b2**steps without cancellation when b2**steps is near 1
    bias = -math.expm1(steps * math.log(b2)) if b2 > 0 else 1.0
    return np.sqrt((b2 ** tail * a ** 2 + (1.0 - b2) * 4.0 * a * tail * tol) / bias)


def adam_horizon_threshold(alphas, betas, eps, *, steps, tail, tol=CONVERGED_LOSS,
                           dim: int = 2) -> float:
    r"""Adam's total ELR above which no transported run (AdamSRT, total constraint, $\rho=1$)
    of ``steps`` steps can pass `toymodel.momentum.converged` (T50): the root in
    $\tilde\eta_A$ of $\sum_i s_i^*=1$, where $s_i^*$ solves T49 with equality at
    $\sqrt{\hat{\tilde v}_i}=w_i$ (`adam_second_moment_bound`),
    $\sqrt{s_i^*}=\big(\sqrt{w_i^2+4\varepsilon a\alpha_i}-w_i\big)/(2\varepsilon)$.

    A rigorous necessary condition of the finite-horizon criterion; it tends to
    `toymodel.momentum.adam_eps_threshold` when $\beta_2^{\,\mathrm{tail}}\ll\varepsilon^2/\alpha_i^2$
    and is loose above (it grants every step before the tail the largest gradient)."""
    a_ = alphas_array(alphas)
    b1, b2 = check_betas(betas)
    eps = positive_finite("eps", eps)
    w = adam_second_moment_bound(a_, b2, steps=steps, tail=tail, tol=tol)
    per_elr = (1.0 - b1) * math.sqrt(positive_int("dim", dim)) / (1.0 + b1)  # a = per_elr * elr

    def total_share(elr):
        # the root of eps*s + w*sqrt(s) = a*alpha, written so w >> eps does not cancel
        q = 4.0 * eps * per_elr * elr * a_
        root = q / (np.sqrt(w * w + q) + w) / (2.0 * eps)
        return float(np.sum(root * root))

    lo, hi = 0.0, 1.0
    while total_share(hi) < 1.0:  # total_share grows without bound, as elr^2 for large elr
        lo, hi = hi, 2.0 * hi
    for _ in range(200):  # bisection to the float64 resolution of the root
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if total_share(mid) < 1.0 else (lo, mid)
    return lo


def adam_memory_threshold(base, eps, beta2, *, steps, action) -> float:
    r"""Estimate (T50, not a bound) of the largest ELR at which a run still passes the criterion
    after ``steps`` steps because its second moment has not decayed: the root of
    $$\tilde\eta=b\,\Big(1+\frac{\sqrt{\hat v_T}}{\varepsilon}\Big),\qquad
    \hat v_T=\frac{K}{\tilde\eta}\,\frac{(1-\beta_2)\,\beta_2^{T}}{1-\beta_2^{T}},$$
    with $b$ = ``base`` (the limit at $\hat v=0$, e.g. `adam_share_threshold`) and
    $K$ = ``action``: the squared gradient summed over the transient is $K/\tilde\eta$, all of it
    early (measured, docs/momentum.md). Tends to ``base`` when $(1-\beta_2)T\gg1$."""
    base, eps, action = (positive_finite(n, x) for n, x in
                         (("base", base), ("eps", eps), ("action", action)))
    _, b2 = check_betas((0.0, beta2))
    steps = positive_int("steps", steps)
    if b2 == 0.0:
        return base
    decay = math.exp(steps * math.log(b2))
    c = math.sqrt(action * (1.0 - b2) * decay / -math.expm1(steps * math.log(b2))) / eps
    # y = sqrt(elr) solves y^3 - base*y - base*c = 0: one positive root, above sqrt(base)
    lo, hi = math.sqrt(base), math.sqrt(base) + c + 1.0
    while hi ** 3 - base * hi - base * c < 0:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if mid ** 3 - base * mid - base * c < 0 else (lo, mid)
    return lo * lo
