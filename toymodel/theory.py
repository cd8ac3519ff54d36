r"""Closed-form results of docs/theory.md (T1–T13), one small pure function per quantity.

Notation: ELR $\tilde\eta=\eta/\rho^2$ (T3), curvatures $\alpha_i>0$,
$c=\tilde\eta\sum_i\alpha_i$ (T12), shares $s_i=\|\theta_i\|^2/\rho^2$ (T7).
Statements tagged [toy] hold for `toymodel.problems.SphereToy`; the others are exact.
Every public function validates its input and raises ``ValueError`` naming the bad value.

Large inputs never raise ``OverflowError``: $\sqrt{c^2-1}$ is computed as
$\sqrt{c-1}\sqrt{c+1}$ and $\sqrt{1-1/c^2}$ as $\sqrt{(1-1/c)(1+1/c)}$, angles with
``arctan`` of those; a quantity whose true value exceeds the float64 range (such as $c$ itself
for $\tilde\eta=10^{300}$, $\alpha=10^{10}$) is returned as ``inf``, without a warning in
`predictions`. The effective gradient norm at the equilibrium is bounded by $\sum\alpha_i$, so
it is always finite.
"""
from __future__ import annotations

import numpy as np

from ._validate import alphas_array, constraint_name, positive_finite, positive_finite_array

REGIMES = ("convergence", "chaotic_equilibrium", "divergence")
#: the classifier's divergence convention, tail loss >= DIV_FRAC x random level
#: (`toymodel.regimes.DIV_FRAC`, kept equal by a test): where the theory has no line of its own
#: (one group, T13) it predicts divergence where its closed-form loss crosses this fraction.
DIV_FRAC = 0.9


def _sqrt_c2m1(c):
    r"""$\sqrt{c^2-1}$ for $c\ge1$ as $\sqrt{c-1}\sqrt{c+1}$: no overflow of $c^2$, and $c-1$
    is exact near 1, where $c^2-1$ would cancel."""
    return np.sqrt(c - 1.0) * np.sqrt(c + 1.0)


# -- §1 scale invariance and the ELR ------------------------------------------------------------
def effective_lr(lr, sq_norm):
    r"""ELR $\tilde\eta = \eta/\|\theta\|^2$ (T3)."""
    return positive_finite("lr", lr) / positive_finite_array("sq_norm", sq_norm)


def effective_grad_norm(grad_norm, norm):
    r"""Effective gradient norm $\|\tilde g\| = \|\theta\|\,\|\nabla F(\theta)\|$ (T2)."""
    return np.asarray(grad_norm, dtype=float) * positive_finite_array("norm", norm)


def sq_norm_after_step(sq_norm, lr, grad_sq_norm):
    r"""Norm growth of an unprojected step: $\|\theta-\eta\nabla F\|^2=\|\theta\|^2+\eta^2\|\nabla F\|^2$ (T4)."""
    lr = positive_finite("lr", lr)
    with np.errstate(over="ignore"):  # beyond the float range the norm is inf, not an error
        return np.asarray(sq_norm, dtype=float) + lr * lr * np.asarray(grad_sq_norm, dtype=float)


def step_angle(elr, eff_grad_norm):
    r"""Angle moved per step on the sphere: $\Delta=\arctan(\tilde\eta\|\tilde g\|)$ (T6)."""
    with np.errstate(over="ignore"):  # arctan(inf) = pi/2 is the right limit
        return np.arctan(positive_finite("elr", elr) * np.asarray(eff_grad_norm, dtype=float))


# -- §3 total vs individual ELR ------------------------------------------------------------------
def shares(sq_norms):
    r"""Shares $s_i=\|\theta_i\|^2/\sum_j\|\theta_j\|^2$ (T7)."""
    sq = positive_finite_array("sq_norms", sq_norms)
    return sq / sq.sum(axis=-1, keepdims=True)


def individual_elr(elr, sq_norms, radius=1.0):
    r"""Individual ELRs $\tilde\eta_i=\eta/\|\theta_i\|^2$ with $\eta=\tilde\eta\rho^2$ (T7).

    When the squared norms sum to $\rho^2$ this is $\tilde\eta/s_i$.
    """
    elr = positive_finite("elr", elr)
    radius = positive_finite("radius", radius)
    with np.errstate(over="ignore"):
        return elr * (radius * radius) / positive_finite_array("sq_norms", sq_norms)


def total_elr(individual_elrs):
    r"""Budget identity $1/\tilde\eta=\sum_i 1/\tilde\eta_i$ (T8), solved for $\tilde\eta$."""
    ie = positive_finite_array("individual_elrs", individual_elrs)
    return 1.0 / (1.0 / ie).sum(axis=-1)


def share_update(shares_, elr, eff_group_grad_norms):
    r"""One step of the share dynamics (T9): $s_i\leftarrow s_i+\tilde\eta^2\|\tilde g_i\|^2/s_i$, renormalised.

    Here $\tilde g_i=\rho\nabla_iF$ is group ``i``'s part of the effective gradient.
    """
    s = positive_finite_array("shares", shares_)
    elr = positive_finite("elr", elr)
    r = np.abs(np.asarray(eff_group_grad_norms, dtype=float)) / np.sqrt(s)  # s_i + (elr r_i)^2
    # The renormalised result is unchanged by a common factor: divide through by
    # big^2 = (elr max r)^2 when the step term dominates, so a huge ELR cannot overflow to inf/inf.
    m = r.max(axis=-1, keepdims=True)
    with np.errstate(over="ignore"):
        big = elr * m
    scale = np.maximum(big, 1.0)
    rel = np.where(m > 0, r / np.where(m > 0, m, 1.0), 0.0) * np.minimum(big, 1.0)
    new = s / scale / scale + rel * rel
    return new / new.sum(axis=-1, keepdims=True)


def group_thresholds(alphas):
    r"""Per-group convergence thresholds $1/\alpha_i$ on the individual ELR (T11)."""
    return 1.0 / alphas_array(alphas)


def total_threshold(alphas):
    r"""Total-ELR convergence threshold $1/\sum_i\alpha_i$ (T10, T12)."""
    return float(1.0 / alphas_array(alphas).sum())


def divergence_threshold(alphas):
    r"""Above $1/\min_i\alpha_i$ every group exceeds its threshold whatever the shares (T10)."""
    return float(1.0 / alphas_array(alphas).min())


def groups_above_threshold(elr, alphas, shares_):
    r"""Which groups have $\tilde\eta_i\alpha_i = \tilde\eta\alpha_i/s_i > 1$ (T10)."""
    a = alphas_array(alphas)
    s = positive_finite_array("shares", shares_)
    return positive_finite("elr", elr) * a / s > 1.0


def remark2_holds(elr, alphas, shares_):
    r"""Remark 2 (T10): if $\tilde\eta>1/\sum\alpha_i$, some group is above its threshold for any shares.

    Returns True when the implication holds for these shares (vacuously below the threshold).
    """
    if positive_finite("elr", elr) <= total_threshold(alphas):
        return True
    return bool(np.any(groups_above_threshold(elr, alphas, shares_), axis=-1).all())


def below_threshold_shares(elr, alphas):
    r"""Shares $s_i=\tilde\eta\alpha_i$ (plus the slack spread evenly) that put every group at or
    below its threshold; they exist iff $\tilde\eta\le1/\sum\alpha_i$ (converse of T10).
    Returns ``None`` above the threshold."""
    a = alphas_array(alphas)
    elr = positive_finite("elr", elr)
    base = elr * a
    if base.sum() > 1.0:
        return None
    return base + (1.0 - base.sum()) / a.size


def random_loss(alphas):
    r"""Random level $\sum_i\alpha_i/2$: the mean toy loss of a scrambled direction (T11–T12) [toy]."""
    return float(alphas_array(alphas).sum() / 2.0)


# -- §4 one group (T11) [toy] ------------------------------------------------------------------------
def angle_map(phi, elr, alpha):
    r"""One step of the single-group angle map $\varphi'=\varphi-\arctan(\tilde\eta\alpha\sin2\varphi)$ (T11)."""
    k = positive_finite("elr", elr) * positive_finite("alpha", alpha)
    return np.asarray(phi, dtype=float) - np.arctan(k * np.sin(2.0 * np.asarray(phi, dtype=float)))


def linear_rate(elr, alpha):
    r"""Multiplier of the linearised map at the minimum: $\varphi'\approx(1-2\tilde\eta\alpha)\varphi$ (T11)."""
    return 1.0 - 2.0 * positive_finite("elr", elr) * positive_finite("alpha", alpha)


def two_cycle_angle(elr, alpha):
    r"""Angle $\varphi^*=\tfrac12\arccos(1/(\tilde\eta\alpha))$ of the stable 2-cycle $\pm\varphi^*$
    for $\tilde\eta\alpha>1$; 0 (the minimum is stable) otherwise (T11)."""
    k = positive_finite("elr", elr) * positive_finite("alpha", alpha)
    # cos 2phi = 1/k  <=>  tan 2phi = sqrt(k^2 - 1): arctan is accurate near k = 1, arccos is not
    return 0.5 * float(np.arctan(_sqrt_c2m1(k))) if k > 1.0 else 0.0


def two_cycle_multiplier(elr, alpha):
    r"""Multiplier of the 2-cycle's 2-step map, $(1-2/(\tilde\eta\alpha)^2)^2$, for $\tilde\eta\alpha>1$ (T11)."""
    k = positive_finite("elr", elr) * positive_finite("alpha", alpha)
    if k <= 1.0:
        raise ValueError(f"elr*alpha must exceed 1 for a 2-cycle to exist, got {k!r}")
    return (1.0 - 2.0 / k / k) ** 2


def two_cycle_loss(elr, alpha):
    r"""Loss on the single-group 2-cycle, $\alpha\sin^2\varphi^*=(\alpha-1/\tilde\eta)/2$ above threshold, else 0 (T11)."""
    elr = positive_finite("elr", elr)
    alpha = positive_finite("alpha", alpha)
    return 0.5 * (alpha - 1.0 / elr) if elr * alpha > 1.0 else 0.0


# -- §4 n groups, total constraint (T12) [toy] ------------------------------------------------------
def criticality(elr, alphas):
    r"""$c=\tilde\eta\sum_i\alpha_i$ (T12); convergence iff $c\le1$."""
    with np.errstate(over="ignore"):  # c may exceed the float range: then inf
        return float(positive_finite("elr", elr) * alphas_array(alphas).sum())


def equilibrium_loss(elr, alphas):
    r"""Tail loss $L^*=(\sum\alpha_i-1/\tilde\eta)/2$ of the synchronized equilibrium above the
    total threshold, 0 at or below it (T12)."""
    c = criticality(elr, alphas)
    return 0.5 * (float(alphas_array(alphas).sum()) - 1.0 / float(elr)) if c > 1.0 else 0.0


def equilibrium_shares(alphas):
    r"""Shares of the synchronized equilibrium, $s_i=\alpha_i/\sum_j\alpha_j$ (T12)."""
    a = alphas_array(alphas)
    return a / a.sum()


def equilibrium_individual_elr(elr, alphas):
    r"""Individual ELRs at the equilibrium, $\tilde\eta_i=\tilde\eta\sum\alpha/\alpha_i$, so $\tilde\eta_i\alpha_i=c$ (T12)."""
    a = alphas_array(alphas)
    with np.errstate(over="ignore"):
        return positive_finite("elr", elr) * a.sum() / a


def equilibrium_angle(elr, alphas):
    r"""Group angle on the equilibrium cycle, $\varphi_i=\tfrac12\arccos(1/c)$ for $c>1$, else 0 (T12)."""
    c = criticality(elr, alphas)
    return 0.5 * float(np.arctan(_sqrt_c2m1(c))) if c > 1.0 else 0.0


def equilibrium_grad_norm(elr, alphas):
    r"""Effective gradient norm at the equilibrium, $\sum\alpha_i\sqrt{1-1/c^2}$ for $c>1$, else 0 (T12).

    Bounded by $\sum\alpha_i$ (finite for every finite input); computed as
    $\sqrt{(1-1/c)(1+1/c)}$, so a huge $c$ neither overflows nor loses the factor."""
    c = criticality(elr, alphas)
    if c <= 1.0:
        return 0.0
    return float(alphas_array(alphas).sum() * np.sqrt((1.0 - 1.0 / c) * (1.0 + 1.0 / c)))


def equilibrium_step_angle(elr, alphas):
    r"""Angle per step at the equilibrium, $\arctan(\tilde\eta\|\tilde g\|)=\arctan\sqrt{c^2-1}$ (T6, T12);
    tends to $\pi/2$ as $c\to\infty$ (and equals it once $\sqrt{c^2-1}$ exceeds the float range)."""
    c = criticality(elr, alphas)
    return float(np.arctan(_sqrt_c2m1(c))) if c > 1.0 else 0.0


def equilibrium_divergence_elr(alphas, div_frac=DIV_FRAC):
    r"""The ELR at which the equilibrium loss $(\sum\alpha_i-1/\tilde\eta)/2$ reaches the fraction
    $f$ = ``div_frac`` of the random level $\sum\alpha_i/2$: $\tilde\eta=1/((1-f)\sum\alpha_i)$,
    i.e. $c=1/(1-f)$ (10 by default) (T12, T13).

    For one group this is where the 2-cycle's loss (T11) crosses the classifier's divergence
    line: the divergence threshold of T13."""
    a = alphas_array(alphas)
    if not (0.0 < float(div_frac) < 1.0):
        raise ValueError(f"div_frac must be in (0, 1), got {div_frac!r}")
    return float(1.0 / ((1.0 - float(div_frac)) * a.sum()))


# -- §3 individual constraint [exact + toy] -----------------------------------------------------
def individual_constraint_elr(elr, n_groups):
    r"""Under the individual constraint with equal shares every $\tilde\eta_i = n\tilde\eta$ (§3)."""
    return positive_finite("elr", elr) * int(n_groups)


def individual_constraint_thresholds(alphas):
    r"""ELRs $1/(n\alpha_i)$ at which group ``i`` stops converging under the individual constraint
    with equal shares: a staircase, no collective boundary (§3)."""
    a = alphas_array(alphas)
    return 1.0 / (a.size * a)


def predict_group_convergence(elr, alphas, constraint="individual"):
    r"""Which groups converge. Individual constraint: $n\tilde\eta\alpha_i<1$ (staircase).
    Total constraint: all groups iff $c\le 1$, none otherwise (T10, T12)."""
    a = alphas_array(alphas)
    elr = positive_finite("elr", elr)
    if constraint_name(constraint) == "individual":
        return a.size * elr * a < 1.0
    return np.full(a.size, criticality(elr, a) <= 1.0)


def predict_regime(elr, alphas, constraint="total", *, div_frac=DIV_FRAC):
    r"""The regime the theory predicts: ``"convergence"``, ``"chaotic_equilibrium"`` or ``"divergence"``.

    One group (T13; both constraints coincide, the only share is 1): convergence iff
    $k=\tilde\eta\alpha\le1$; above, the run sits on the stable 2-cycle of T11 whose loss is
    the fraction $1-1/k$ of the random level, never chaotic and never unstable, so "divergence" is
    the classifier's convention: loss $\ge f$ = ``div_frac`` of random, i.e. $k\ge1/(1-f)$
    (`equilibrium_divergence_elr`); ``"chaotic_equilibrium"`` (the non-converged plateau) in between.

    Total constraint (T10, T12): convergence iff $\tilde\eta\le1/\sum\alpha_i$; divergence when
    $\tilde\eta>1/\min\alpha_i$ (every group above its threshold whatever the shares); chaotic
    equilibrium in between. Individual constraint (§3): every $\tilde\eta_i=n\tilde\eta$;
    convergence when every group is below $1/\alpha_i$, divergence when every group is above,
    and ``"chaotic_equilibrium"`` on the staircase steps in between (there the groups above
    threshold sit on periodic 2-cycles: a non-converged equilibrium, but not chaotic).
    """
    a = alphas_array(alphas)
    elr = positive_finite("elr", elr)
    constraint = constraint_name(constraint)
    if not (0.0 < float(div_frac) < 1.0):
        raise ValueError(f"div_frac must be in (0, 1), got {div_frac!r}")
    if a.size == 1:
        if elr * a[0] <= 1.0:
            return "convergence"
        return "divergence" if elr >= equilibrium_divergence_elr(a, div_frac) else "chaotic_equilibrium"
    if constraint == "individual":
        k = a.size * elr * a
        if np.all(k <= 1.0):
            return "convergence"
        return "divergence" if np.all(k > 1.0) else "chaotic_equilibrium"
    if elr <= total_threshold(a):
        return "convergence"
    return "divergence" if elr > divergence_threshold(a) else "chaotic_equilibrium"


def predictions(elr, alphas):
    """Every prediction for one ELR and configuration, keyed by the function that computes it.

    Angles are in radians; values beyond the float64 range are ``inf`` (module docstring)."""
    a = alphas_array(alphas)
    elr = positive_finite("elr", elr)
    with np.errstate(over="ignore"):
        if not np.isfinite(a.sum()):
            raise ValueError(f"alphas must sum to a finite number (below {np.finfo(float).max:.3g}), "
                             f"got {a.tolist()}")
        return _predictions(elr, a)


def _predictions(elr, a):
    return {
        "elr": elr,
        "alphas": a.tolist(),
        "criticality": criticality(elr, a),
        "group_thresholds": group_thresholds(a).tolist(),
        "total_threshold": total_threshold(a),
        "divergence_threshold": divergence_threshold(a),
        "equilibrium_divergence_elr": equilibrium_divergence_elr(a),
        "random_loss": random_loss(a),
        "equilibrium_loss": equilibrium_loss(elr, a),
        "equilibrium_shares": equilibrium_shares(a).tolist(),
        "equilibrium_individual_elr": equilibrium_individual_elr(elr, a).tolist(),
        "equilibrium_grad_norm": equilibrium_grad_norm(elr, a),
        "equilibrium_angle": equilibrium_angle(elr, a),
        "equilibrium_step_angle": equilibrium_step_angle(elr, a),
        "two_cycle_angle": [two_cycle_angle(elr, ai) for ai in a],
        "individual_constraint_thresholds": individual_constraint_thresholds(a).tolist(),
        "predict_regime": predict_regime(elr, a, "total"),
        "predict_regime_individual": predict_regime(elr, a, "individual"),
    }


# conventional training (weight decay, no projection): closed forms of docs/conventional.md
from .theory_wd import (decay_product, wd_balance_rate, wd_elr_growth_steps,  # noqa: E402,F401
                        wd_equilibrium_angle, wd_equilibrium_elr, wd_equilibrium_loss,
                        wd_equilibrium_sq_norms, wd_rotation_angle)
