r"""Orbit geometry of fixed-ELR projected GD on the canonical toy (docs/attractors.md, T30–T37).

Notation (docs/theory.md §4): $n$ groups, curvatures $\alpha_i$, total ELR $\tilde\eta$,
$c=\tilde\eta\sum\alpha_i$, shares $s_i$ (T7), individual ELR $\tilde\eta/s_i$ and
$k_i=\tilde\eta\alpha_i/s_i$ (the single-group parameter of T11), step angle
$\Delta=\arccos(1/c)$ of the synchronized equilibrium (T12).

The map commutes with every per-group reflection of $\theta_i$ that fixes the axis $e_1$ and with
$\theta_i\to-\theta_i$, so it acts on the *folded* coordinates (T30)
$$\psi_i=\arctan\frac{\|P_\perp\theta_i\|}{|\theta_{i,1}|}\in[0,\tfrac\pi2],\qquad s_i,$$
where the synchronized 2-cycle of T12 is a *fixed point*
$\psi_i=\Delta/2$, $s_i=\alpha_i/\sum\alpha$. Its linearisation (T31) has the contracting
common mode $\cos2\Delta$ and the neutral pair $e^{\pm2i\Delta}$, each $n-1$ times: the
equilibrium is elliptic, and near $c_{m/p}=\sec(\pi m/p)$ (T32) phase-locked orbits of period
$p$ appear, whose loss lies below $L^*$. Groups may lock together into *clusters* (T33).

What is here (math only: the reference stepper `toymodel.dynamics.step`, no batch backend):

* closed forms: `quotient_coords` (T30), `synchronized_point` (T12/T30), `linear_spectrum`
  (T31), `resonances` (T32), `uniform_sin2_law`, `uniform_loss_moments` (T36, T37);
* `periodic_orbit`: a periodic orbit by Newton's method on the $p$-step folded map, with its
  loss, multipliers and clusters (`PeriodicOrbit`).

The classification of windows is in `toymodel.orbit_classes`, the census that runs many starts
through the backend in `toymodel.census` (which re-exports every name of this module).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import gcd

import numpy as np

from . import dynamics, sphere, theory
from ._validate import alphas_array, positive_finite, positive_int
from .problems import SphereToy, toy_grad, toy_group_losses

__all__ = ["PeriodicOrbit", "quotient_coords", "synchronized_point", "linear_spectrum",
           "resonances", "periodic_orbit", "uniform_sin2_law", "uniform_loss_moments"]

# -- closed forms ------------------------------------------------------------------------------------
def quotient_coords(theta):
    r"""Folded angles and shares of states ``(..., n, d)`` (T30): $\psi_i\in[0,\pi/2]$ with
    $\tan\psi_i=\|P_\perp\theta_i\|/|\theta_{i,1}|$, and $s_i$; two arrays ``(..., n)``.

    $\psi_i$ is $|\varphi_i|$ folded by $\varphi\to-\varphi$ and $\varphi\to\pi-\varphi$; the
    loss is $\sum_i\alpha_i\sin^2\psi_i$.

    Parameters
    ----------
    theta
        States ``(..., n, d)``, any norm.
    """
    theta = np.asarray(theta, dtype=np.float64)
    # the perpendicular norm from its own coordinates: no cancellation in |theta|^2 - x^2
    perp = np.sqrt(np.einsum("...ij,...ij->...i", theta[..., 1:], theta[..., 1:]))
    psi = np.arctan2(perp, np.abs(theta[..., 0]))
    return psi, sphere.shares(theta)


def synchronized_point(alphas, c):
    r"""The synchronized equilibrium as a fixed point of the folded map (T12, T30):
    $\psi_i=\Delta/2=\tfrac12\arccos(1/c)$ and $s_i=\alpha_i/\sum\alpha$; returns ``(psi, shares)``.

    Parameters
    ----------
    alphas
        Curvatures $\alpha_i>0$.
    c
        $c=\tilde\eta\sum\alpha_i>1$.
    """
    a = alphas_array(alphas)
    c = _c_above_one(c)
    return np.full(a.size, 0.5 * np.arccos(1.0 / c)), a / a.sum()


def linear_spectrum(c, n_groups):
    r"""Eigenvalues of the folded one-step map at the synchronized point (T31): the common mode
    $\cos2\Delta=2/c^2-1$ once and $e^{\pm2i\Delta}$ each $n-1$ times, $\Delta=\arccos(1/c)$;
    a complex array of length $2n-1$.

    Parameters
    ----------
    c
        $c=\tilde\eta\sum\alpha_i>1$.
    n_groups
        Number of groups $n\ge1$.
    """
    c = _c_above_one(c)
    n = positive_int("n_groups", n_groups)
    two_delta = 2.0 * np.arccos(1.0 / c)
    pair = np.exp(1j * two_delta)
    return np.concatenate([[np.cos(two_delta) + 0j], np.full(n - 1, pair), np.full(n - 1, pair.conj())])


def resonances(max_period=10):
    r"""Where the neutral modes of T31 turn by a rational $m/p$ of a full turn per step (T32):
    $2\Delta=2\pi m/p$, i.e. $c_{m/p}=\sec(\pi m/p)$, for $p\le$ ``max_period``, $0<m/p<1/2$ in
    lowest terms. Returns a list of ``(m, p, c)`` sorted by ``c``.

    Parameters
    ----------
    max_period
        Largest $p$ listed ($\ge3$).
    """
    q = positive_int("max_period", max_period, minimum=3)
    out = [(m, p, float(1.0 / np.cos(np.pi * m / p)))
           for p in range(3, q + 1) for m in range(1, (p + 1) // 2) if gcd(m, p) == 1 and 2 * m < p]
    return sorted(out, key=lambda t: t[2])


def uniform_sin2_law(dim, on_circle=False):
    r"""Beta parameters $(a,b)$ of $\sin^2\varphi_i$ for a uniformly random direction (T36):
    $\mathrm{Beta}(\tfrac{d-1}2,\tfrac12)$ on $S^{d-1}$ (since $\cos^2\varphi=u_1^2\sim
    \mathrm{Beta}(\tfrac12,\tfrac{d-1}2)$), and the arcsine law $\mathrm{Beta}(\tfrac12,\tfrac12)$
    for a direction uniform on a great circle through $e_1$ (``on_circle``), where the dynamics
    of each group stay (T37).

    Parameters
    ----------
    dim
        Dimension $d\ge2$ of the group.
    on_circle
        The law on a great circle through $e_1$ instead of on $S^{d-1}$.
    """
    d = positive_int("dim", dim, minimum=2)
    return (0.5, 0.5) if on_circle else (0.5 * (d - 1), 0.5)


def uniform_loss_moments(alphas, dim, on_circle=False):
    r"""Mean and variance of the toy loss $\sum_i\alpha_i\sin^2\varphi_i$ at independent uniformly
    random group directions (T36): with $\sin^2\varphi\sim\mathrm{Beta}(a,b)$ (`uniform_sin2_law`),
    mean $\frac{a}{a+b}\sum\alpha_i$ and variance $\frac{ab}{(a+b)^2(a+b+1)}\sum\alpha_i^2$. On a
    great circle (or $d=2$) that is $\sum\alpha_i/2$ (the random level) and $\sum\alpha_i^2/8$;
    on $S^{d-1}$, $\frac{d-1}d\sum\alpha_i$ and $\frac{2(d-1)}{d^2(d+2)}\sum\alpha_i^2$.

    Parameters
    ----------
    alphas
        Curvatures $\alpha_i>0$.
    dim, on_circle
        As in `uniform_sin2_law`.

    Returns
    -------
    tuple
        ``(mean, variance)``.
    """
    a_ = alphas_array(alphas)
    a, b = uniform_sin2_law(dim, on_circle)
    return (float(a / (a + b) * a_.sum()),
            float(a * b / ((a + b) ** 2 * (a + b + 1)) * (a_ ** 2).sum()))


# -- validation -------------------------------------------------------------------------------------
def _c_above_one(c):
    c = positive_finite("c", c)
    if c <= 1.0:
        raise ValueError(f"c = elr*sum(alphas) must exceed 1 (the synchronized equilibrium exists "
                         f"for c > 1 only, T12), got {c!r}")
    return c



def _clusters(psi, logk, tol):
    """Cluster labels ``(B, n)``: each group gets the index of the first group it moves with."""
    _, B, n = psi.shape
    labels = np.tile(np.arange(n), (B, 1))
    for j in range(1, n):
        for i in range(j):
            close = ((np.abs(psi[:, :, i] - psi[:, :, j]).max(0) <= tol)
                     & (np.abs(logk[:, :, i] - logk[:, :, j]).max(0) <= tol)
                     & (labels[:, j] == j))
            labels[close, j] = labels[close, i]
    return labels



# -- periodic orbits by Newton's method ----------------------------------------------------------------
def _pack(psi, s):
    return np.concatenate([psi, s[:-1]])


def _unpack(x, n):
    return x[:n], np.append(x[n:], 1.0 - x[n:].sum())


def _state2(psi, s):
    r = np.sqrt(np.abs(s))
    return np.stack([r * np.cos(psi), r * np.sin(psi)], axis=-1)


def _reduce2(theta):
    """(n, d) -> (n, 2) with the same folded dynamics: (|x_i|, |P_perp theta_i|) per group (T37)."""
    theta = np.asarray(theta, dtype=np.float64)
    perp = np.sqrt(np.einsum("ij,ij->i", theta[:, 1:], theta[:, 1:]))
    return np.stack([np.abs(theta[:, 0]), perp], axis=-1)


def _p_map(x, p, alphas, elr):
    theta = _state2(*_unpack(x, alphas.size))
    for _ in range(p):
        theta = dynamics.step(theta, toy_grad(theta, alphas), elr, "total", 1.0)
    return _pack(*quotient_coords(theta))


@dataclass
class PeriodicOrbit:
    r"""A periodic orbit of the folded map (T30), found by `periodic_orbit`."""

    c: float                 #: $c=\tilde\eta\sum\alpha$
    period: int              #: smallest period $p$ in the folded coordinates (2p or p in $\varphi$)
    psi: np.ndarray          #: folded angles along the orbit, ``(p, n)``, radians
    shares: np.ndarray       #: shares along the orbit, ``(p, n)``
    losses: np.ndarray       #: loss at each point, ``(p,)``
    loss: float              #: mean loss over the period
    loss_ratio: float        #: ``loss`` / $L^*$
    multipliers: np.ndarray  #: eigenvalues of the p-step Jacobian (folded coordinates)
    clusters: list           #: groups locked together (T33), lists of group indices
    residual: float          #: max |f^p(x) - x| at the solution
    alphas: np.ndarray = field(repr=False, default=None)

    @property
    def max_modulus(self) -> float:
        """Largest multiplier modulus: < 1 attracting; 1 (to ~1e-8) along neutral directions."""
        return float(np.abs(self.multipliers).max())

    def state(self, j: int = 0) -> np.ndarray:
        """The orbit's ``j``-th point as a unit-norm state ``(n, 2)``."""
        return _state2(self.psi[j % self.period], self.shares[j % self.period])


def periodic_orbit(alphas, c, theta, period, *, xtol=1e-13, h=1e-7):
    r"""Refine a near-periodic state to a periodic orbit of the folded map (T30) by Newton's method.

    Solves $f^p(x)=x$ in $x=(\psi_1..\psi_n, s_1..s_{n-1})$ with ``scipy.optimize.root`` (hybrid
    Powell), where $f$ is one projected-GD step (`toymodel.dynamics.step`) followed by the fold;
    any $d$ reduces exactly to $d=2$ (each group keeps its great circle, T37). The minimal period
    of the solution is reported (a divisor of ``period`` when the guess was a multiple).
    Multipliers come from central differences with step ``h`` (error $O(h^2)$).

    Parameters
    ----------
    alphas
        Curvatures $\alpha_i>0$.
    c
        $c=\tilde\eta\sum\alpha_i>1$.
    theta
        A state ``(n, d)`` on or near the orbit.
    period
        The period $p\ge1$ to solve for.

    Returns
    -------
    PeriodicOrbit

    Raises
    ------
    ValueError
        On bad input, or if Newton's method does not converge (residual above 1e-9): the start
        was not near a periodic orbit of that period.
    """
    from scipy import optimize

    a = alphas_array(alphas)
    c = _c_above_one(c)
    p = positive_int("period", period)
    problem = SphereToy(a, dim=max(2, np.asarray(theta).shape[-1]))
    th = problem.check_theta(theta, "theta")
    if th.ndim != 2:
        raise ValueError(f"theta must be one state of shape ({a.size}, d), got {th.shape}")
    elr = c / a.sum()
    th2 = _reduce2(th)
    th2 = th2 / np.sqrt((th2 ** 2).sum())
    x0 = _pack(*quotient_coords(th2))
    sol = optimize.root(lambda x: _p_map(x, p, a, elr) - x, x0, method="hybr",
                        options={"xtol": xtol})
    x = sol.x
    resid = float(np.max(np.abs(_p_map(x, p, a, elr) - x)))
    if not np.isfinite(resid) or resid > 1e-9:
        raise ValueError(f"no periodic orbit of period {p} near this state at c={c!r} "
                         f"(Newton residual {resid:.3g}); try another period or a longer run")
    for q in range(1, p):
        if p % q == 0 and np.max(np.abs(_p_map(x, q, a, elr) - x)) < 1e-8:
            p = q
            break
    m = x.size
    J = np.empty((m, m))
    for j in range(m):
        e = np.zeros(m)
        e[j] = h
        J[:, j] = (_p_map(x + e, p, a, elr) - _p_map(x - e, p, a, elr)) / (2 * h)
    psis, shs, losses = [], [], []
    theta2 = _state2(*_unpack(x, a.size))
    for _ in range(p):
        ps, ss = quotient_coords(theta2)
        psis.append(ps)
        shs.append(ss)
        losses.append(float(toy_group_losses(theta2, a).sum()))
        theta2 = dynamics.step(theta2, toy_grad(theta2, a), elr, "total", 1.0)
    psis, shs, losses = np.array(psis), np.array(shs), np.array(losses)
    logk = np.log(elr * a / shs)
    lab = _clusters(psis[:, None, :], logk[:, None, :], 1e-7)[0]
    clusters = [np.flatnonzero(lab == g).tolist() for g in np.unique(lab)]
    loss = float(losses.mean())
    return PeriodicOrbit(c=c, period=p, psi=psis, shares=shs, losses=losses, loss=loss,
                         loss_ratio=loss / theory.equilibrium_loss(elr, a),
                         multipliers=np.linalg.eigvals(J), clusters=clusters, residual=resid,
                         alphas=a)
