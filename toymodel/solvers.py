r"""Numerical counterparts of the closed forms in `toymodel.theory`.

Each function finds by computation (root finding, finite differences, simulation, bisection)
what ``theory.py`` states in closed form, so that each statement is checked two independent ways:

* `two_cycle` — the single-group 2-cycle $\pm\varphi^*$ of the angle map (T11) by
  root finding, and its multiplier from the map's derivative;
* `synchronized_equilibrium` — the n-group equilibrium (T12) as a fixed point of the
  *simulator's* 2-step map (`toymodel.dynamics.step` twice), found by ``scipy.optimize.root``
  from time averages of a simulated run;
* `equilibrium_jacobian` — the spectrum of that 2-step map's Jacobian at the equilibrium;
* `largest_lyapunov` — the largest Lyapunov exponent from a twin trajectory;
* `locate_total_threshold` — the ELR at which convergence stops, by bracketing simulated
  dynamics (no closed form consulted).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

from . import dynamics, regimes, sphere
from ._validate import alphas_array, positive_finite, positive_int, tail_within
from .problems import SphereToy, as_problem


# -- T11: one group ----------------------------------------------------------------------------
def _angle_map_derivative(phi, k):
    r"""$\frac{d}{d\varphi}[\varphi-\arctan(k\sin2\varphi)] = 1-2k\cos2\varphi/(1+k^2\sin^22\varphi)$."""
    return 1.0 - 2.0 * k * np.cos(2 * phi) / (1.0 + (k * np.sin(2 * phi)) ** 2)


def two_cycle(elr, alpha):
    r"""The single-group 2-cycle by root finding: $\varphi^*>0$ with map($\varphi^*$) = $-\varphi^*$,
    i.e. a root of $2\varphi-\arctan(\tilde\eta\alpha\sin2\varphi)$ in $(0,\pi/4]$ (T11).

    Returns ``(phi_star, multiplier, loss)``: the 2-step multiplier is the map's derivative at
    $\varphi^*$ squared (the map is odd), the loss $\alpha\sin^2\varphi^*$.
    Raises ``ValueError`` when $\tilde\eta\alpha\le1$ (no 2-cycle: the minimum is stable).
    """
    k = positive_finite("elr", elr) * positive_finite("alpha", alpha)
    if k <= 1.0:
        raise ValueError(f"elr*alpha must exceed 1 for a 2-cycle, got {k!r}")
    f = lambda p: 2.0 * p - np.arctan(k * np.sin(2.0 * p))  # noqa: E731
    # f < 0 near 0 (slope 2(1-k)) and f(pi/4) = pi/2 - arctan(k) > 0: a sign change brackets phi*
    lo = 1e-3 * np.sqrt(1.0 - 1.0 / k)
    while f(lo) >= 0:
        lo /= 10
    phi = optimize.brentq(f, lo, np.pi / 4, xtol=1e-15, rtol=4 * np.finfo(float).eps)
    return phi, _angle_map_derivative(phi, k) ** 2, float(alpha) * np.sin(phi) ** 2


# -- T12: n groups, total constraint --------------------------------------------------------------
def _state_from_coords(x, n, radius=1.0):
    """(phi_1..phi_n, s_1..s_{n-1}) -> theta of shape (n, 2) on the total sphere."""
    phi, s = x[:n], np.append(x[n:], 1.0 - np.sum(x[n:]))
    r = radius * np.sqrt(np.abs(s))
    return np.stack([r * np.cos(phi), r * np.sin(phi)], axis=-1)


def _coords_from_state(theta):
    n = theta.shape[-2]
    phi = np.arctan2(theta[..., 1], theta[..., 0])
    return np.concatenate([phi, sphere.shares(theta)[: n - 1]])


def _two_step_map(x, problem, elr):
    n = problem.n_groups
    theta = _state_from_coords(x, n)
    for _ in range(2):
        theta = dynamics.step(theta, problem.grad(theta), elr, "total", 1.0)
    return _coords_from_state(theta)


@dataclass
class Equilibrium:
    """The synchronized equilibrium found numerically (T12)."""

    angles: np.ndarray      #: group angles phi_i > 0 of the 2-cycle
    shares: np.ndarray      #: shares s_i
    loss: float             #: loss on the cycle
    grad_norm: float        #: effective gradient norm on the cycle
    residual: float         #: max |2-step map(x) - x| at the root


def synchronized_equilibrium(elr, alphas, seed=0, warmup=3000):
    r"""The synchronized equilibrium as a fixed point of the simulator's 2-step map (T12).

    The guess is the time average, over a simulated run of ``warmup`` steps, of every group's
    $|\varphi_i|$ and share; ``scipy.optimize.root`` then solves
    map∘map(x) = x in the coordinates $(\varphi_1..\varphi_n, s_1..s_{n-1})$ (d = 2 suffices:
    each group moves in the plane of $\theta_i$ and $e_1$).
    """
    a = alphas_array(alphas)
    elr = positive_finite("elr", elr)
    if elr * a.sum() <= 1.0:
        raise ValueError(f"elr*sum(alphas) must exceed 1 for an equilibrium, got {elr * a.sum()!r}")
    problem = SphereToy(a, dim=2)
    n = a.size
    traj = dynamics.simulate(problem, elr, warmup, seed=seed)
    # time averages over the second half of the warm-up: the orbit circles the equilibrium
    half = warmup // 2
    theta = traj.theta_final
    phis, shs = [], []
    for _ in range(half):
        phis.append(np.abs(np.arctan2(theta[:, 1], theta[:, 0])))
        shs.append(sphere.shares(theta))
        theta = dynamics.step(theta, problem.grad(theta), elr, "total", 1.0)
    phi0 = np.mean(phis, axis=0)
    phi0 = np.minimum(phi0, np.pi - phi0)  # the minimiser direction is +-e_1: fold to [0, pi/2]
    x0 = np.concatenate([phi0, np.mean(shs, axis=0)[: n - 1]])
    sol = optimize.root(lambda x: _two_step_map(x, problem, elr) - x, x0, method="hybr",
                        options={"xtol": 1e-14})
    x = sol.x
    resid = float(np.max(np.abs(_two_step_map(x, problem, elr) - x)))
    theta = _state_from_coords(x, n)
    g = problem.grad(theta)
    return Equilibrium(angles=np.abs(x[:n]), shares=sphere.shares(theta),
                       loss=float(problem.loss(theta)),
                       grad_norm=float(np.sqrt(sphere.group_sq_norms(g).sum())), residual=resid)


def equilibrium_jacobian(elr, alphas, h=1e-6, equilibrium=None):
    r"""Eigenvalues of the Jacobian of the 2-step map at the synchronized equilibrium (T12).

    Central differences with step ``h`` in the coordinates of `synchronized_equilibrium`
    (error O(h²)). T12 says the map is neutral there: all moduli equal 1.
    """
    a = alphas_array(alphas)
    eq = equilibrium or synchronized_equilibrium(elr, a)
    problem = SphereToy(a, dim=2)
    n = a.size
    x0 = np.concatenate([eq.angles, eq.shares[: n - 1]])
    J = np.empty((x0.size, x0.size))
    for j in range(x0.size):
        e = np.zeros_like(x0)
        e[j] = h
        J[:, j] = (_two_step_map(x0 + e, problem, elr) - _two_step_map(x0 - e, problem, elr)) / (2 * h)
    return np.linalg.eigvals(J)


def largest_lyapunov(problem, elr, steps=20000, tail=10000, seed=0, constraint="total"):
    r"""Largest Lyapunov exponent per step from a twin trajectory (the ``lyapunov`` summary of
    `toymodel.dynamics.summarize_batch`): tail mean of $\log(\|\delta_{t+1}\|/\|\delta_t\|)$
    with the twin pulled back to distance $\sqrt{\epsilon}\rho$ after every step."""
    problem = as_problem(problem)
    elr = positive_finite("elr", elr)
    steps = positive_int("steps", steps)
    tail = tail_within(tail, steps)
    theta0, w = dynamics.initial_states(problem, [seed], constraint, twin=True)
    out = dynamics.summarize_batch(problem, theta0, np.array([elr]), steps=steps, tail=tail,
                                   constraint=constraint, twin_dirs=w)
    return float(out["lyapunov"][0])


def locate_total_threshold(problem, lo=None, hi=None, steps=20000, tail=2000, rtol=2e-3,
                           points=7, seed=0, summarize=None, *, momentum=None,
                           momentum_mode="official"):
    r"""The ELR at which simulated projected GD stops converging, by bracketing.

    Every round runs ``points`` ELRs log-spaced inside the bracket as one batch, labels each run
    with `toymodel.regimes.classify_summary` (observed dynamics only) and shrinks the bracket
    to the last converging / first non-converging pair; it stops when hi/lo - 1 < ``rtol``.
    The default bracket [1e-3, 1e3]/mean(alpha) only sets the scale; it is checked, not assumed.
    Returns the geometric midpoint of the final bracket.

    ``summarize(problem, theta0, elrs, steps=, tail=)`` runs the batches: by default the NumPy
    specification `toymodel.dynamics.summarize_batch`; `toymodel.thresholds.locate_total_threshold`
    passes a compiled backend (this module, the math layer, knows no backend).

    With ``momentum`` $\beta$ (heavy ball, ``momentum_mode`` ``"official"`` or ``"transport"``)
    the converging set need not be an interval (docs/momentum.md T44, T48):
    `toymodel.momentum.locate_total_threshold` then scans the bracket, refines every crossing and
    returns a `toymodel.momentum.Boundary` (``elr`` the first crossing, ``crossings_elr`` all of
    them, a `MultipleCrossingsWarning` when there are several); ``summarize`` does not apply.
    """
    if momentum is not None:
        if summarize is not None:
            raise ValueError("summarize applies to plain projected GD; with momentum the boundary "
                             "is located by toymodel.momentum.locate_total_threshold")
        from .momentum import locate_total_threshold as _momentum_threshold
        alphas = as_problem(problem).alphas
        return _momentum_threshold(alphas, momentum=momentum, momentum_mode=momentum_mode,
                                   seed=seed, lo=lo, hi=hi, rtol=rtol, steps=steps, tail=tail)
    problem = as_problem(problem)
    scale = float(np.mean(problem.alphas))
    lo = 1e-3 / scale if lo is None else positive_finite("lo", lo)
    hi = 1e3 / scale if hi is None else positive_finite("hi", hi)
    if not lo < hi:
        raise ValueError(f"need lo < hi, got lo={lo!r}, hi={hi!r}")
    points = positive_int("points", points, minimum=1)
    steps = positive_int("steps", steps)
    tail = tail_within(tail, steps)
    run = dynamics.summarize_batch if summarize is None else summarize

    def converges(elrs):
        theta0 = np.repeat(dynamics.initial_state(problem, seed)[None], elrs.size, axis=0)
        out = run(problem, theta0, elrs, steps=steps, tail=tail)
        reason = dynamics.status_reasons(out["status"])
        labels, _ = regimes.classify_summary(out["tail_loss"], problem.random_loss(),
                                             invalid_reason=reason)
        return labels == "convergence"

    ends = converges(np.array([lo, hi]))
    if not ends[0] or ends[1]:
        raise ValueError(f"the bracket [{lo:.4g}, {hi:.4g}] must converge at lo and not at hi "
                         f"(got {bool(ends[0])}, {bool(ends[1])}); widen it or add steps")
    while hi / lo - 1.0 > rtol:
        grid = np.geomspace(lo, hi, points + 2)[1:-1]
        ok = converges(grid)
        # the first failure bounds the threshold from above; the converging ELR before it from below
        first_bad = int(np.argmax(~ok)) if (~ok).any() else points
        lo = grid[first_bad - 1] if first_bad > 0 else lo
        hi = grid[first_bad] if first_bad < points else hi
    return float(np.sqrt(lo * hi))
