r"""The reference projected-GD stepper: the readable NumPy specification every kernel matches.

One step (T5, T7), with $\eta=\tilde\eta\rho^2$ and $\rho=\|\theta_0\|$:

* total constraint: $\theta\leftarrow\rho\,(\theta-\eta\nabla F(\theta))/\|\theta-\eta\nabla F(\theta)\|$;
* individual constraint: every group $\theta_i\leftarrow r_i\,v_i/\|v_i\|$ with
  $v=\theta-\eta\nabla F(\theta)$ and $r_i=\|\theta_{0,i}\|$ (equal shares by default, so
  every individual ELR is $n\tilde\eta$).

Norms are re-measured at every step: the closed form $\|v\|^2=\rho^2+\eta^2\|\nabla F\|^2$
(T4) drifts off the sphere and produced NaN within 200 steps at large ELR (docs/theory.md §2).

Metrics are recorded for the state a step starts from (index ``t`` describes
$\theta_t\to\theta_{t+1}$): ``loss`` $F(\theta_t)$; ``shares`` (T7);
``individual_elr`` $\eta/\|\theta_{t,i}\|^2$ (T7); ``grad_norm`` the effective gradient norm
$\|\theta_t\|\|\nabla F(\theta_t)\|$ (T2); ``group_grad_norm``
$\|\theta_{t,i}\|\|\nabla_iF(\theta_t)\|$ (T9); ``angle`` between $\theta_t$ and
$\theta_{t+1}$, which equals $\arctan(\tilde\eta\|\tilde g\|)$ under the total
constraint (T6).
"""
from __future__ import annotations


import numpy as np

from . import sphere
from ._progress import progress
from ._validate import (
    check_memory,
    constraint_name,
    positive_finite,
    positive_finite_array,
    positive_int,
)
from .problems import SphereToy, as_problem, toy_grad, toy_group_losses
from .trajectory import Trajectory  # noqa: F401  (re-exported: toymodel.dynamics.Trajectory)

#: status codes written by every backend; 0 means the cell is valid.
STATUS_OK, STATUS_NONFINITE, STATUS_ZERO_NORM = 0, 1, 2
INVALID_REASONS = {
    STATUS_NONFINITE: "non-finite state (overflow or NaN) during the run",
    # an overflowing rescale (|v| = inf) also lands here: rho/|v| = 0 zeroes the state
    STATUS_ZERO_NORM: "a group's norm collapsed to zero or the rescaling overflowed",
}
def status_reasons(status) -> np.ndarray:
    """The invalid-cell reason of every status code (``""`` for valid cells), an object array."""
    status = np.asarray(status)
    out = np.full(status.shape, "", dtype=object)
    for code, text in INVALID_REASONS.items():
        out[status == code] = text
    unknown = (status != STATUS_OK) & (out == "")
    out[unknown] = "invalid (status code " + status[unknown].astype(str).astype(object) + ")"
    return out


#: names of the per-trajectory summaries, in the order kernels write them.
SUMMARY_NAMES = ("tail_loss", "tail_loss_std", "final_loss", "min_share", "frac_above_threshold",
                 "tail_grad_norm", "tail_angle", "lyapunov")


#: float64 arrays of the state's shape ``(n, d)`` alive at once in `simulate` (state, gradient,
#: update, rescaled update, the temporaries of the norms); the up-front memory estimate uses it.
_STATE_COPIES = 6
def _bytes_per_record(n: int) -> int:
    """Bytes `simulate` records per kept step: three scalar and three per-group float64 traces."""
    return 8 * (3 + 3 * n)


def simulate_bytes(n_groups: int, dim: int, steps: int, record_every: int = 1) -> int:
    """Estimated peak memory of `simulate`: the traces plus a few copies of the state."""
    n_rec = (steps + record_every - 1) // record_every
    return n_rec * _bytes_per_record(n_groups) + _STATE_COPIES * 8 * n_groups * dim


# -- initial states -------------------------------------------------------------------------------
def _target_radii(n: int, constraint: str, radius: float, shares_) -> np.ndarray:
    if constraint == "total":
        return np.array(radius)
    s = np.full(n, 1.0 / n) if shares_ is None else np.asarray(shares_, dtype=np.float64)
    return radius * np.sqrt(s)


def validate_shares(shares_, n: int):
    """Fixed shares for the individual constraint: ``n`` positive numbers summing to one."""
    if shares_ is None:
        return None
    s = positive_finite_array("shares", shares_, ndim=1)
    if s.size != n or abs(s.sum() - 1.0) > 1e-9:
        raise ValueError(f"shares must be {n} positive numbers summing to 1, got {s.tolist()}")
    return s


def project(theta, constraint: str, radius: float = 1.0, shares_=None) -> np.ndarray:
    """Put ``theta`` on the constraint set: total norm ``radius``, or group norms ``radius*sqrt(shares)``."""
    n = theta.shape[-2]
    target = _target_radii(n, constraint, radius, shares_)
    if constraint == "total":
        return sphere.project_total(theta, target)
    return sphere.project_individual(theta, target)


def initial_state(problem, seed: int = 0, constraint: str = "total", radius: float = 1.0,
                  shares=None) -> np.ndarray:
    r"""The initial state for ``seed``: $\theta_0\sim N(0,I)$ of shape ``(n, d)``, projected onto
    the constraint set. Depends on ``seed`` and the problem's shape only, so every ELR of a scan
    and every backend starts from the same point."""
    problem = as_problem(problem)
    check_memory(2 * 8 * problem.n_groups * problem.dim,
                 f"an initial state of {problem.n_groups} x {problem.dim} float64",
                 "lower the dimension")
    z = np.random.default_rng(seed).standard_normal((problem.n_groups, problem.dim))
    return project(z, constraint, radius, shares)


def initial_states(problem, seeds, constraint: str = "total", radius: float = 1.0, shares=None,
                   twin: bool = False):
    """Stacked `initial_state` for several seeds, shape ``(S, n, d)``.

    With ``twin=True`` also returns unit perturbation directions ``(S, n, d)`` for the Lyapunov
    twin, drawn from the same generator right after the state.
    """
    problem = as_problem(problem)
    shape = (problem.n_groups, problem.dim)
    states, dirs = [], []
    for s in seeds:
        rng = np.random.default_rng(int(s))
        states.append(project(rng.standard_normal(shape), constraint, radius, shares))
        w = rng.standard_normal(shape)
        dirs.append(w / np.linalg.norm(w))
    states = np.stack(states)
    return (states, np.stack(dirs)) if twin else states


# -- one step ------------------------------------------------------------------------------------
def _loss_grad_fn(problem, alphas=None):
    """(loss, grad) callables over ``(..., n, d)``; ``alphas`` (B, n) overrides the toy's."""
    if isinstance(problem, SphereToy) and alphas is not None:
        a = np.asarray(alphas)
        return (lambda th: toy_group_losses(th, a).sum(-1)), (lambda th: toy_grad(th, a))
    return problem.loss, problem.grad


def _rescale(v, constraint: str, target):
    """Rescale ``v`` to the total radius ``target`` ``(...)`` or to the group radii ``target`` ``(..., n)``."""
    if constraint == "total":
        return sphere.project_total(v, target)
    return sphere.project_individual(v, target)


def step(theta, grad, lr, constraint: str, target):
    r"""One projected step from ``theta`` given its gradient (T5/T7): $v=\theta-\eta\nabla F$
    rescaled to the constraint set (see `_rescale`)."""
    return _rescale(theta - np.asarray(lr)[..., None, None] * grad, constraint, target)


def _targets(theta0, constraint):
    sq = sphere.group_sq_norms(theta0)
    if constraint == "total":
        return np.sqrt(sq.sum(-1))
    return np.sqrt(sq)


def simulate(problem, elr, steps, theta0=None, seed=0, constraint="total", radius=1.0,
             record_every=1, shares=None, progress_bar=None) -> Trajectory:
    r"""Projected GD with fixed ELR on ``problem`` (T5, T7); returns a `Trajectory`.

    Parameters
    ----------
    problem
        A problem of `toymodel.problems`, or a sequence of curvatures (a `SphereToy`).
    elr
        The total ELR $\tilde\eta>0$; the learning rate is $\eta=\tilde\eta\rho^2$.
    steps
        Number of steps (>= 1).
    theta0
        Initial state ``(n, d)``, projected onto the constraint set. Default: drawn from ``seed``
        by `initial_state`.
    seed
        Seed of the initial state when ``theta0`` is not given.
    constraint
        ``"total"`` (one sphere of radius ``radius``) or ``"individual"`` (each group on its own
        sphere of radius ``radius*sqrt(shares_i)``, equal shares by default).
    radius
        The radius $\rho$ of the constraint set.
    record_every
        Keep every k-th step's metrics.
    shares
        Fixed shares of the individual constraint (``n`` positive numbers summing to 1).
    progress_bar
        Show a progress bar (default: when ``steps`` >= 200000).

    Returns
    -------
    Trajectory
        Traces and the final state, with the run's parameters.

    Raises
    ------
    ValueError
        On bad input, naming the value and the allowed range.
    FloatingPointError
        If the state becomes non-finite or a group reaches zero norm.
    """
    problem = as_problem(problem)
    elr = positive_finite("elr", elr)
    steps = positive_int("steps", steps)
    record_every = positive_int("record_every", record_every)
    radius = positive_finite("radius", radius)
    seed = positive_int("seed", seed, minimum=0)
    constraint = constraint_name(constraint)
    shares = validate_shares(shares, problem.n_groups)
    if shares is not None and constraint == "total":
        raise ValueError("shares fixes the group norms and applies to constraint='individual' only")
    # refuse up front what cannot fit, instead of a MemoryError after minutes (or at the start)
    check_memory(simulate_bytes(problem.n_groups, problem.dim, steps, record_every),
                 f"simulate with {steps} steps recorded every {record_every} "
                 f"({problem.n_groups} groups x dim {problem.dim})",
                 "raise record_every, or lower steps or the dimension")
    if theta0 is None:
        theta = initial_state(problem, seed, constraint, radius, shares)
    else:
        theta = project(problem.check_theta(theta0, "theta0").astype(np.float64), constraint,
                        radius, shares)
    target = _targets(theta, constraint)
    lr = elr * float(sphere.group_sq_norms(theta).sum())  # = elr * radius**2, as the kernels measure it
    n_rec = (steps + record_every - 1) // record_every
    n = problem.n_groups
    rec = {name: np.empty((n_rec, n) if name in ("individual_elr", "shares", "group_grad_norm")
                          else n_rec) for name in Trajectory.TRACES}
    show = steps >= 200_000 if progress_bar is None else progress_bar
    with np.errstate(all="ignore"), progress(total=steps, desc="simulate", disable=not show) as bar:
        for t in range(steps):
            g = problem.grad(theta)
            new = step(theta, g, lr, constraint, target)
            sq_new = sphere.group_sq_norms(new)
            if not (np.all(np.isfinite(new)) and np.all(sq_new > 0)):
                raise FloatingPointError(
                    f"the state became non-finite or a group reached zero norm at step {t} "
                    f"(elr={elr}); lower the ELR or use float64")
            if t % record_every == 0:
                k = t // record_every
                sq = sphere.group_sq_norms(theta)
                gsq = sphere.group_sq_norms(g)
                rec["loss"][k] = problem.loss(theta)
                rec["shares"][k] = sq / sq.sum()
                rec["individual_elr"][k] = lr / sq
                rec["group_grad_norm"][k] = np.sqrt(sq * gsq)
                rec["grad_norm"][k] = np.sqrt(sq.sum() * gsq.sum())
                rec["angle"][k] = sphere.angle_between(theta, new)
            theta = new
            if (t + 1) % 10_000 == 0 or t + 1 == steps:
                bar.update(10_000 if (t + 1) % 10_000 == 0 else (t + 1) % 10_000)
    params = {"elr": elr, "lr": lr, "steps": steps, "seed": seed, "constraint": constraint,
              "radius": radius, "record_every": record_every, **problem.describe()}
    return Trajectory(step=np.arange(0, steps, record_every), theta_final=theta, params=params,
                      **rec)


# -- many trajectories, summaries only (the NumPy backend, and the kernel contract) ---------------------
def flag_failures(new, alive, status, bad_step, t: int) -> np.ndarray:
    """The batch specifications' failure check of step ``t``: among the ``alive`` trajectories,
    those whose next state ``new`` ``(B, n, d)`` is non-finite (`STATUS_NONFINITE`) or has a group
    of zero norm (`STATUS_ZERO_NORM`) get their code in ``status`` and ``t`` in ``bad_step`` (both
    updated in place); returns their mask. The caller freezes them (``alive &= ~failed``)."""
    fail_nf = ~np.all(np.isfinite(new), axis=(-2, -1)) & alive
    fail_zero = ~np.all(sphere.group_sq_norms(new) > 0, axis=-1) & alive & ~fail_nf
    for code, fail in ((STATUS_NONFINITE, fail_nf), (STATUS_ZERO_NORM, fail_zero)):
        status[fail] = code
        bad_step[fail] = t
    return fail_nf | fail_zero


def summarize_batch(problem, theta0, elr, *, steps, tail, constraint="total", alphas=None,
                    twin_dirs=None):
    r"""Run ``B`` independent trajectories and reduce them to per-trajectory summaries.

    This is the specification of the batch kernels of `kernels` (which must agree with it to
    1e-12 in float64 on identical inputs). Inputs are already validated: ``theta0`` ``(B, n, d)`` on
    the constraint set, ``elr`` ``(B,)``, ``alphas`` ``(B, n)`` (curvatures per trajectory; they
    define the toy's loss and the threshold count), ``twin_dirs`` ``(B, n, d)`` unit directions or
    ``None``. The dtype of ``theta0`` is the computing dtype.

    Over the tail window (steps ``t`` in ``[steps - tail, steps)``, metrics at the state a step
    starts from):

    * ``tail_loss``, ``tail_loss_std``: Welford mean and population std of the loss;
    * ``final_loss``: loss of $\theta_{steps}$;
    * ``min_share``: smallest share seen;
    * ``frac_above_threshold``: fraction of (step, group) pairs with $\eta\alpha_i>\|\theta_i\|^2$,
      i.e. individual ELR above $1/\alpha_i$ (T10);
    * ``tail_grad_norm``, ``tail_angle``: means of the effective gradient norm and of the angle;
    * ``lyapunov``: with ``twin_dirs``, the largest Lyapunov exponent per step from a twin started
      at $P(\theta_0+\epsilon\rho w)$, $\epsilon=\sqrt{\text{machine eps}}$, advanced with
      the same map and pulled back to distance $\epsilon\rho$ along $\delta$ after every
      step; the tail mean of $\log(\|\delta\|/(\epsilon\rho))$. NaN without ``twin_dirs``.

    Returns a dict of ``(B,)`` arrays named by `SUMMARY_NAMES`, plus ``status`` (int8,
    `INVALID_REASONS`), ``bad_step`` (first failing step or -1) and ``theta_final``. A
    trajectory that fails is frozen and its summaries are NaN.
    """
    theta = np.array(theta0, copy=True)
    dt = theta.dtype
    B, n, _ = theta.shape
    if alphas is None:
        alphas = np.broadcast_to(problem.alphas, (B, n))
    alphas = np.asarray(alphas, dtype=dt)
    loss_fn, grad_fn = _loss_grad_fn(problem, alphas)
    target = _targets(theta, constraint)
    rho = np.sqrt(sphere.group_sq_norms(theta).sum(-1))
    lr = np.asarray(elr, dtype=dt) * rho * rho
    start = steps - tail
    mean = np.zeros(B, dt)
    m2 = np.zeros(B, dt)
    min_share = np.full(B, np.inf, dt)
    above = np.zeros(B, dt)
    gsum = np.zeros(B, dt)
    asum = np.zeros(B, dt)
    lsum = np.zeros(B, dt)
    status = np.zeros(B, np.int8)
    bad_step = np.full(B, -1, np.int64)
    alive = np.ones(B, bool)
    eps = np.sqrt(np.finfo(dt).eps)
    twin = None
    if twin_dirs is not None:
        twin_dirs = np.asarray(twin_dirs, dtype=dt)
        twin = _rescale(theta + (eps * rho)[:, None, None] * twin_dirs, constraint, target)
    with np.errstate(all="ignore"):
        for t in range(steps):
            g = grad_fn(theta)
            new = step(theta, g, lr, constraint, target)
            sq = sphere.group_sq_norms(theta)
            failed = flag_failures(new, alive, status, bad_step, t)
            alive &= ~failed
            if t >= start:
                k = t - start + 1
                loss = loss_fn(theta)
                delta = loss - mean
                mean = np.where(alive, mean + delta / k, mean)
                m2 = np.where(alive, m2 + delta * (loss - mean), m2)
                tot = sq.sum(-1)
                min_share = np.where(alive, np.minimum(min_share, sq.min(-1) / tot), min_share)
                above += np.where(alive, (lr[:, None] * alphas > sq).sum(-1), 0)
                gsq = sphere.group_sq_norms(g).sum(-1)
                gsum += np.where(alive, np.sqrt(tot * gsq), 0)
                asum += np.where(alive, sphere.angle_between(theta, new), 0)
            if twin is not None:
                twin_new = step(twin, grad_fn(twin), lr, constraint, target)
                d = twin_new - new
                dist = np.sqrt(sphere.group_sq_norms(d).sum(-1))
                if t >= start:
                    lsum += np.where(alive, np.log(np.maximum(dist, np.finfo(dt).tiny) / (eps * rho)), 0)
                # pull the twin back to distance eps*rho along delta (along w if the twins merged)
                dirn = np.where((dist > 0)[:, None, None], d / np.where(dist > 0, dist, 1)[:, None, None],
                                twin_dirs)
                pulled = _rescale(new + (eps * rho)[:, None, None] * dirn, constraint, target)
                twin = np.where(alive[:, None, None], pulled, twin)
            theta = np.where(alive[:, None, None], new, theta)
        final_loss = loss_fn(theta)
    var = m2 / tail
    out = {
        "tail_loss": mean, "tail_loss_std": np.sqrt(np.maximum(var, 0)), "final_loss": final_loss,
        "min_share": min_share, "frac_above_threshold": above / (tail * n),
        "tail_grad_norm": gsum / tail, "tail_angle": asum / tail,
        "lyapunov": lsum / tail if twin is not None else np.full(B, np.nan, dt),
    }
    for name in SUMMARY_NAMES:
        out[name] = np.where(alive, out[name], np.nan).astype(dt)
    out.update(status=status, bad_step=bad_step, theta_final=theta)
    return out
