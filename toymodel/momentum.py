r"""Heavy-ball momentum and Adam on the sphere at fixed ELR: the NumPy specification (docs/momentum.md).

Notation of docs/theory.md: ``theta`` ``(..., n, d)``, groups $\theta_i$ of norm $r_i$, total
radius $\rho$, shares $s_i=r_i^2/\rho^2$, total ELR $\tilde\eta$, $c=\tilde\eta\sum\alpha_i$.
Tags T40–T48 are those of docs/momentum.md.

**Heavy ball** (`heavy_ball_step`, T40–T42). With $\eta=\tilde\eta\rho^2$ one step is
$$b\leftarrow\beta b+\nabla F(\theta),\qquad \theta\leftarrow P(\theta-\eta b),$$
exactly ``torch.optim.SGD(lr=eta, momentum=beta)`` followed by the rescale $P$ of
`toymodel.dynamics` (total or individual constraint). The buffer $b$ is then

* ``"official"``: left as it is (the official code of Kodryan et al. rescales the weights only);
  it keeps a radial part that changes the group norms (T41);
* ``"transport"``: carried to the tangent space of the new point by the rule of SGD-MRT
  (Roburin, de Mont-Marin et al.), per group, with $\theta'$ the rescaled new point (T42):
  $b_i\leftarrow(\langle\theta_i,\theta'_i\rangle b_i-\langle b_i,\theta'_i\rangle\theta_i)/\|\theta'_i\|^2$.

**Adam** (`adam_step`, T45–T46): the AdamS/AdamSRT form of the official code, one scalar second
moment per group, with ``elr`` $=\mathrm{lr}/\rho$ and ``eps`` given on the unit sphere
($\varepsilon/\rho$ in the units of $\theta$), so the direction sequence depends on neither
$\rho$ nor the units. ``"transport"`` transports the first moment (T42) and rescales the second
by $r_i^2/r_i'^2$; ``"official"`` leaves both as they are.

With ``momentum=0`` the heavy ball *is* `toymodel.dynamics.step` (``0*b + g`` is exact in IEEE
arithmetic), so `simulate_momentum` reproduces `toymodel.dynamics.simulate` bit for bit.

The implementation is split by concern; this module owns the traced single-run simulators
(`simulate_momentum`, `simulate_adam`, `MomentumTrajectory`) and re-exports the rest, so every
``toymodel.momentum.<name>`` is the public API: the checks and constants
(`toymodel._momentum_checks`), the steps (`toymodel._momentum_steps`), the closed forms
(`toymodel.momentum_theory`), the batch, `converged` and `convergence_grid`
(`toymodel._momentum_batch`), and the boundary search and box counting
(`toymodel._momentum_boundary`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import dynamics, sphere
from ._momentum_batch import (
    EXTRA_SUMMARY_NAMES,
    converged,
    convergence_grid,
    summarize_momentum_batch,
)
from ._momentum_boundary import (
    Boundary,
    BoundaryBand,
    MultipleCrossingsWarning,
    boundary_box_counts,
    box_counting_dimension,
    locate_total_threshold,
    momentum_boundary_band,
)
from ._momentum_checks import (
    CONVERGED_LOSS,
    MOMENTUM_MODES,
    check_betas,
    check_mode,
    check_momentum,
    check_momentum_array,
)
from ._momentum_steps import adam_individual_elr, adam_step, heavy_ball_step, transport
from ._validate import check_memory, constraint_name, positive_finite, positive_int
from .dynamics import Trajectory
from .momentum_theory import (
    adam_eps_threshold,
    heavy_ball_group_thresholds,
    heavy_ball_rate,
    heavy_ball_two_cycle_angle,
    naive_total_threshold,
    radial_growth_factor,
)
from .problems import as_problem

__all__ = [
    # constants and checks
    "MOMENTUM_MODES", "EXTRA_SUMMARY_NAMES", "CONVERGED_LOSS", "check_momentum",
    "check_momentum_array", "check_mode", "check_betas",
    # closed forms
    "heavy_ball_group_thresholds", "naive_total_threshold", "heavy_ball_rate",
    "heavy_ball_two_cycle_angle", "radial_growth_factor", "adam_eps_threshold",
    # one step
    "transport", "heavy_ball_step", "adam_step", "adam_individual_elr",
    # one trajectory
    "MomentumTrajectory", "simulate_momentum", "simulate_adam",
    # batches and grids
    "summarize_momentum_batch", "converged", "convergence_grid",
    # the boundary
    "MultipleCrossingsWarning", "Boundary", "BoundaryBand", "locate_total_threshold",
    "momentum_boundary_band", "boundary_box_counts", "box_counting_dimension",
]


# -- one trajectory with traces -------------------------------------------------------------------
@dataclass
class MomentumTrajectory(Trajectory):
    """A `toymodel.dynamics.Trajectory` plus the optimizer's final state (``buffer`` for the
    heavy ball; ``m``, ``v``, ``step`` for Adam), enough to continue the run."""

    optimizer_state: dict = field(default_factory=dict)


def _start(problem, theta0, seed, constraint, radius):
    if theta0 is None:
        return dynamics.initial_state(problem, seed, constraint, radius)
    return dynamics.project(problem.check_theta(theta0, "theta0").astype(np.float64), constraint,
                            radius)


def _run_traced(problem, theta, steps, record_every, advance, elr_of, what):
    """Shared loop of the traced simulators: ``advance(theta, g, t) -> new``; ``elr_of(theta)``
    the individual-ELR trace."""
    n_rec = (steps + record_every - 1) // record_every
    n = problem.n_groups
    rec = {name: np.empty((n_rec, n) if name in ("individual_elr", "shares", "group_grad_norm")
                          else n_rec) for name in Trajectory.TRACES}
    with np.errstate(all="ignore"):
        for t in range(steps):
            g = problem.grad(theta)
            elr_t = elr_of(theta) if t % record_every == 0 else None
            new = advance(theta, g, t)
            sq_new = sphere.group_sq_norms(new)
            if not (np.all(np.isfinite(new)) and np.all(sq_new > 0)):
                raise FloatingPointError(
                    f"the state became non-finite or a group reached zero norm at step {t} "
                    f"({what}); lower the ELR")
            if t % record_every == 0:
                k = t // record_every
                sq = sphere.group_sq_norms(theta)
                gsq = sphere.group_sq_norms(g)
                rec["loss"][k] = problem.loss(theta)
                rec["shares"][k] = sq / sq.sum()
                rec["individual_elr"][k] = elr_t
                rec["group_grad_norm"][k] = np.sqrt(sq * gsq)
                rec["grad_norm"][k] = np.sqrt(sq.sum() * gsq.sum())
                rec["angle"][k] = sphere.angle_between(theta, new)
            theta = new
    return theta, rec


def _common_checks(problem, elr, steps, record_every, radius, seed, constraint):
    """Validate the arguments shared by the traced simulators (and size the traces)."""
    problem = as_problem(problem)
    out = (problem, positive_finite("elr", elr), positive_int("steps", steps),
           positive_int("record_every", record_every), positive_finite("radius", radius),
           positive_int("seed", seed, minimum=0), constraint_name(constraint))
    check_memory(dynamics.simulate_bytes(problem.n_groups, problem.dim, steps, record_every),
                 f"a run of {steps} steps recorded every {record_every}",
                 "raise record_every, or lower steps or the dimension")
    return out


def simulate_momentum(problem, elr, momentum=0.0, momentum_mode="official", steps=1000,
                      theta0=None, seed=0, constraint="total", radius=1.0, record_every=1,
                      buffer0=None) -> MomentumTrajectory:
    r"""Heavy-ball momentum at fixed ELR (T40–T42); the `toymodel.dynamics.simulate` of momentum.

    Parameters
    ----------
    problem
        A problem of `toymodel.problems`, or a sequence of curvatures (a `SphereToy`, d = 2).
    elr
        The total ELR $\tilde\eta>0$; ``lr`` $=\eta=\tilde\eta\rho^2$ (T40).
    momentum
        $\beta\in[0,1)$; ``0`` is plain projected GD, identical to `toymodel.dynamics.simulate`.
    momentum_mode
        ``"official"`` (buffer left as is after the rescale: ``torch.optim.SGD(momentum=β)``
        + rescale) or ``"transport"`` (SGD-MRT's transport, T42).
    steps, theta0, seed, constraint, radius, record_every
        As in `toymodel.dynamics.simulate`.
    buffer0
        Initial buffer ``(n, d)`` (default zeros, as torch's first step), e.g. the
        ``optimizer_state["buffer"]`` of a previous run to continue it.

    Returns
    -------
    MomentumTrajectory
        The traces of `toymodel.dynamics.Trajectory` (``individual_elr`` = $\eta/r_i^2$, the
        ELR acting on the unit-sphere buffer $r_ib_i$, T40) and ``optimizer_state["buffer"]``.

    Raises
    ------
    ValueError
        On bad input (``momentum`` outside [0, 1), unknown ``momentum_mode``, ...), naming it.
    FloatingPointError
        If the state becomes non-finite or a group reaches zero norm.
    """
    problem, elr, steps, record_every, radius, seed, constraint = _common_checks(
        problem, elr, steps, record_every, radius, seed, constraint)
    beta = check_momentum(momentum)
    mode = check_mode(momentum_mode)
    theta = _start(problem, theta0, seed, constraint, radius)
    target = dynamics._targets(theta, constraint)
    lr = elr * float(sphere.group_sq_norms(theta).sum())  # as dynamics.simulate measures it
    if buffer0 is None:
        buf = np.zeros_like(theta)
    else:
        buf = np.asarray(buffer0, dtype=np.float64)
        if buf.shape != theta.shape or not np.all(np.isfinite(buf)):
            raise ValueError(f"buffer0 must be a finite array of shape {theta.shape}, "
                             f"got shape {buf.shape}")
    state = {"buffer": buf}

    def advance(th, g, t):
        new, state["buffer"] = heavy_ball_step(th, state["buffer"], g, lr, beta, mode,
                                               constraint, target)
        return new

    theta, rec = _run_traced(problem, theta, steps, record_every, advance,
                             lambda th: lr / sphere.group_sq_norms(th),
                             f"elr={elr}, momentum={beta}, {mode}")
    params = {"elr": elr, "lr": lr, "steps": steps, "seed": seed, "constraint": constraint,
              "radius": radius, "record_every": record_every, "optimizer": "heavy_ball",
              "momentum": beta, "momentum_mode": mode, **problem.describe()}
    return MomentumTrajectory(step=np.arange(0, steps, record_every), theta_final=theta,
                              params=params, optimizer_state={"buffer": state["buffer"]}, **rec)


def simulate_adam(problem, elr, betas=(0.9, 0.999), eps=1e-3, mode="transport", steps=1000,
                  theta0=None, seed=0, constraint="total", radius=1.0,
                  record_every=1) -> MomentumTrajectory:
    r"""AdamS (``mode="official"``) or AdamSRT (``"transport"``) at fixed ELR (T45–T46).

    Parameters
    ----------
    problem
        A problem of `toymodel.problems`, or a sequence of curvatures.
    elr
        Adam's total ELR $\mathrm{lr}/\rho>0$ (T45); ``lr`` $=\tilde\eta\rho$.
    betas
        $(\beta_1,\beta_2)$, each in [0, 1).
    eps
        $\tilde\varepsilon>0$ on the unit sphere; the step uses $\varepsilon=\tilde\varepsilon/\rho$,
        so the run does not depend on ``radius`` (T45).
    mode
        ``"official"``: moments left as they are (AdamS); ``"transport"``: first moment
        transported (T42), second moment rescaled by $r_i^2/r_i'^2$ (AdamSRT).
    steps, theta0, seed, constraint, radius, record_every
        As in `toymodel.dynamics.simulate`.

    Returns
    -------
    MomentumTrajectory
        ``individual_elr`` is Adam's adaptive ELR $\mathrm{lr}\sqrt d/(r_i^2(\sqrt{\hat v_i}+\varepsilon))$
        of the state a step starts from, after the moment update of that step (T45);
        ``optimizer_state`` holds ``m``, ``v``, ``step``.

    Raises
    ------
    ValueError
        On bad input, naming it.
    FloatingPointError
        If the state becomes non-finite or a group reaches zero norm.
    """
    problem, elr, steps, record_every, radius, seed, constraint = _common_checks(
        problem, elr, steps, record_every, radius, seed, constraint)
    b1, b2 = check_betas(betas)
    eps = positive_finite("eps", eps)
    mode = check_mode(mode, "mode")
    theta = _start(problem, theta0, seed, constraint, radius)
    target = dynamics._targets(theta, constraint)
    rho = float(np.sqrt(sphere.group_sq_norms(theta).sum()))
    lr, eps_theta = elr * rho, eps / rho
    state = {"m": np.zeros_like(theta), "v": np.zeros(problem.n_groups), "k": 0}

    def advance(th, g, t):
        state["k"] = t + 1
        new, state["m"], state["v"] = adam_step(th, state["m"], state["v"], g, t + 1, lr,
                                                (b1, b2), eps_theta, mode, constraint, target)
        return new

    def elr_of(th):
        # the ELR of the step about to be taken: v after this step's update, as the step uses it
        g = problem.grad(th)
        v = b2 * state["v"] + (1.0 - b2) * sphere.group_sq_norms(g)
        return adam_individual_elr(th, v, state["k"] + 1, lr, b2, eps_theta)

    theta, rec = _run_traced(problem, theta, steps, record_every, advance, elr_of,
                             f"adam elr={elr}, betas=({b1}, {b2}), {mode}")
    params = {"elr": elr, "lr": lr, "steps": steps, "seed": seed, "constraint": constraint,
              "radius": radius, "record_every": record_every, "optimizer": "adam",
              "betas": [b1, b2], "eps": eps, "mode": mode, **problem.describe()}
    return MomentumTrajectory(step=np.arange(0, steps, record_every), theta_final=theta,
                              params=params, optimizer_state={"m": state["m"], "v": state["v"],
                                                              "step": state["k"]}, **rec)
