r"""Conventional training: full-space GD with weight decay, no projection (docs/conventional.md).

One step, with learning rate $\eta$, weight decay $\lambda$ and decay factor $q=1-\eta\lambda$ (T20):
$$\theta\leftarrow q\,\theta-\eta\nabla F(\theta).$$
By T1–T3 this is $q$ times a projected-GD step with the *effective ELR*
$\tilde\eta_t=\eta/(q\|\theta_t\|^2)$, which now changes from step to step; by T4 the squared norm
obeys $\|\theta'\|^2=q^2\|\theta\|^2+\eta^2\|\tilde g\|^2/\|\theta\|^2$. Both hold group by group
when $F$ is scale-invariant in each group (the groups of a toy do not interact at all here: there is
no common projection).

This module is the readable NumPy specification (as `toymodel.dynamics` is for fixed ELR):

* `simulate_wd`: one run with traces, a `ConventionalTrajectory` (the fields of
  `toymodel.dynamics.Trajectory` plus ``elr``);
* `summarize_wd_batch`: many independent runs reduced to summaries, with the spike counts of the
  periodic regime streamed per run and per group;
* `spike_onsets`, `detect_periodic`, `classify_wd`: the periodic regime, label `PERIODIC` (defined
  in `toymodel.periodic`, re-exported here).

Traces are recorded for the state a step starts from, as in `toymodel.dynamics`: ``loss``;
``shares`` (T7); ``individual_elr`` $\eta/(q\|\theta_{t,i}\|^2)$ (T20 per group); ``elr``
$\eta/(q\|\theta_t\|^2)$ (T20); ``grad_norm`` $\|\theta_t\|\|\nabla F(\theta_t)\|$ (T2);
``group_grad_norm``; ``angle`` between $\theta_t$ and $\theta_{t+1}$, equal to
$\arctan(\tilde\eta_t\|\tilde g_t\|)$ (T6 with the effective ELR).

**Float64 floor.** In the converged phase of the periodic regime the loss falls by about
$e^{-1/(\eta\lambda)}$ before the next spike (T26). Once a group's component off the minimiser
underflows, the group sits exactly on the minimiser and never spikes again; in float64 this ends
the periodic regime for $\eta\lambda\lesssim10^{-3}$ (docs/conventional.md). Such a run ends with an
exactly zero gradient (``converged_exactly`` in the summaries).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import regimes, sphere
from ._progress import progress
from ._validate import check_memory, positive_finite, positive_finite_array, positive_int
from .dynamics import Trajectory, flag_failures, initial_state, simulate_bytes
from .problems import SphereToy, as_problem, toy_grad, toy_group_losses

from .periodic import (MIN_SPIKES, PERIODIC, SPIKE_FRAC, Periodicity,  # noqa: F401,E402
                       classify_wd, classify_wd_summary, detect_periodic, group_periods,
                       spike_onsets)

#: summaries of `summarize_wd_batch`, ``(B,)`` arrays, in this order.
SUMMARY_NAMES = ("tail_loss", "tail_loss_std", "final_loss", "min_loss", "tail_elr", "tail_angle",
                 "n_spikes", "first_spike", "last_spike")
#: per-group summaries of `summarize_wd_batch`, ``(B, n)`` arrays.
GROUP_SUMMARY_NAMES = ("group_tail_loss", "group_n_spikes", "group_first_spike", "group_last_spike",
                       "group_converged_exactly")


# -- validation ------------------------------------------------------------------------------------
def _decay(lr, weight_decay):
    """Validated ``(lr, weight_decay)``: lr > 0, weight_decay >= 0, lr*weight_decay < 1."""
    lr = positive_finite("lr", lr)
    try:
        wd = float(weight_decay)
    except (TypeError, ValueError):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}") from None
    if not (np.isfinite(wd) and wd >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if lr * wd >= 1.0:
        raise ValueError(f"lr*weight_decay must be below 1 (the decay factor 1 - lr*weight_decay must "
                         f"be positive), got lr={lr!r}, weight_decay={wd!r} (product {lr * wd!r})")
    return lr, wd


def check_decay_arrays(lr, weight_decay) -> None:
    """Refuse ``(lr, weight_decay)`` arrays unless every lr > 0 is finite, every weight_decay >= 0 is
    finite and every product is below 1, naming the first offending value (or pair)."""
    lr = positive_finite_array("lr", lr)
    try:
        wd = np.asarray(weight_decay, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"weight_decay must be finite numbers >= 0, got {weight_decay!r}") from None
    bad = ~(np.isfinite(wd) & (wd >= 0))
    if bad.any():
        raise ValueError(f"weight_decay must be finite numbers >= 0, got "
                         f"{float(wd.ravel()[np.flatnonzero(bad.ravel())[0]])!r}")
    lr, wd = np.broadcast_arrays(lr, wd)
    over = lr * wd >= 1.0
    if over.any():
        i = np.flatnonzero(over.ravel())[0]
        a, b = float(lr.ravel()[i]), float(wd.ravel()[i])
        raise ValueError(f"lr*weight_decay must be below 1 (the decay factor 1 - lr*weight_decay "
                         f"must be positive), got lr={a!r}, weight_decay={b!r} (product {a * b!r})")


# -- one step --------------------------------------------------------------------------------------
def step_wd(theta, grad, lr, weight_decay):
    r"""One step of GD with weight decay, $\theta\leftarrow(1-\eta\lambda)\theta-\eta\nabla F(\theta)$ (T20).

    ``lr`` and ``weight_decay`` broadcast against the batch axes of ``theta`` ``(..., n, d)``."""
    lr = np.asarray(lr, dtype=theta.dtype)[..., None, None]
    q = 1.0 - lr * np.asarray(weight_decay, dtype=theta.dtype)[..., None, None]
    return q * theta - lr * grad


# -- one run with traces ---------------------------------------------------------------------------
@dataclass
class ConventionalTrajectory(Trajectory):
    """A `toymodel.dynamics.Trajectory` with the effective ELR $\\eta/((1-\\eta\\lambda)\\|\\theta_t\\|^2)$
    of every recorded step in ``elr`` (T20)."""

    elr: np.ndarray = None

    TRACES = Trajectory.TRACES + ("elr",)


def simulate_wd(problem, lr, weight_decay, *, steps, seed=0, record_every=1, theta0=None,
                radius=1.0, progress_bar=None) -> ConventionalTrajectory:
    r"""GD with weight decay on ``problem``, no projection (T20); returns a `ConventionalTrajectory`.

    Parameters
    ----------
    problem
        A problem of `toymodel.problems`, or a sequence of curvatures (a `SphereToy`).
    lr
        The learning rate $\eta>0$.
    weight_decay
        The weight decay $\lambda\ge0$, with $\eta\lambda<1$; $\lambda=0$ is plain GD, whose norm
        grows by T4.
    steps
        Number of steps (>= 1).
    seed
        Seed of the initial state when ``theta0`` is not given (`toymodel.dynamics.initial_state`
        with the total constraint: a direction of $N(0,I)$ of total norm ``radius``).
    record_every
        Keep every k-th step's metrics. Spikes last a few steps: detect the periodic regime on
        ``record_every=1``.
    theta0
        Initial state ``(n, d)``, used as given: without projection its norm is part of the
        dynamics (the stationary norm is $\|\theta_i\|^2=\eta\alpha_i$, T22).
    radius
        Total norm of the drawn initial state (ignored with ``theta0``).
    progress_bar
        Show a progress bar (default: when ``steps`` >= 200000).

    Returns
    -------
    ConventionalTrajectory
        Traces (module docstring) and the final state; ``params`` holds ``lr``, ``weight_decay``,
        ``constraint="none"`` and the problem.

    Raises
    ------
    ValueError
        On bad input, naming the value and the allowed range.
    FloatingPointError
        If the state becomes non-finite or a group's norm underflows to zero (a converged run
        whose norm decays by $(1-\eta\lambda)^t$ for long enough).
    """
    problem = as_problem(problem)
    lr, wd = _decay(lr, weight_decay)
    steps = positive_int("steps", steps)
    record_every = positive_int("record_every", record_every)
    seed = positive_int("seed", seed, minimum=0)
    radius = positive_finite("radius", radius)
    n = problem.n_groups
    n_rec = (steps + record_every - 1) // record_every
    check_memory(simulate_bytes(n, problem.dim, steps, record_every) + 8 * n_rec,  # + the elr trace
                 f"simulate_wd with {steps} steps recorded every {record_every} "
                 f"({n} groups x dim {problem.dim})", "raise record_every, or lower steps")
    if theta0 is None:
        theta = initial_state(problem, seed, "total", radius)
    else:
        theta = np.array(problem.check_theta(theta0, "theta0"), dtype=np.float64)
    radius0 = float(np.sqrt(sphere.group_sq_norms(theta).sum()))
    q = 1.0 - lr * wd
    rec = {name: np.empty((n_rec, n) if name in ("individual_elr", "shares", "group_grad_norm")
                          else n_rec) for name in ConventionalTrajectory.TRACES}
    show = steps >= 200_000 if progress_bar is None else progress_bar
    with np.errstate(all="ignore"), progress(total=steps, desc="simulate_wd", disable=not show) as bar:
        for t in range(steps):
            g = problem.grad(theta)
            new = q * theta - lr * g
            sq_new = sphere.group_sq_norms(new)
            if not (np.all(np.isfinite(new)) and np.all(sq_new > 0)):
                raise FloatingPointError(
                    f"the state became non-finite or a group's norm underflowed to zero at step {t} "
                    f"(lr={lr}, weight_decay={wd}); a converged run loses norm as "
                    f"(1 - lr*weight_decay)^t: run fewer steps")
            if t % record_every == 0:
                k = t // record_every
                sq = sphere.group_sq_norms(theta)
                gsq = sphere.group_sq_norms(g)
                rec["loss"][k] = problem.loss(theta)
                rec["shares"][k] = sq / sq.sum()
                rec["individual_elr"][k] = lr / (q * sq)
                rec["elr"][k] = lr / (q * sq.sum())
                rec["group_grad_norm"][k] = np.sqrt(sq * gsq)
                rec["grad_norm"][k] = np.sqrt(sq.sum() * gsq.sum())
                rec["angle"][k] = sphere.angle_between(theta, new)
            theta = new
            if (t + 1) % 10_000 == 0 or t + 1 == steps:
                bar.update(10_000 if (t + 1) % 10_000 == 0 else (t + 1) % 10_000)
    params = {"lr": lr, "weight_decay": wd, "decay_product": lr * wd, "steps": steps, "seed": seed,
              "constraint": "none", "radius": radius0,
              "record_every": record_every, **problem.describe()}
    return ConventionalTrajectory(step=np.arange(0, steps, record_every), theta_final=theta,
                                  params=params, **rec)


# -- many runs, summaries only ---------------------------------------------------------------------
def summarize_wd_batch(problem, theta0, lr, weight_decay, *, steps, tail, alphas=None,
                       conv_rtol=regimes.CONV_RTOL, spike_frac=SPIKE_FRAC, traces=False):
    r"""Run ``B`` independent conventional runs (T20) and reduce them to summaries.

    The specification for batch kernels, like `toymodel.dynamics.summarize_batch`: inputs are
    already validated, ``theta0`` ``(B, n, d)`` is used as given (its norm matters), ``lr`` and
    ``weight_decay`` are ``(B,)`` with ``lr*weight_decay < 1``, ``alphas`` ``(B, n)`` overrides a
    toy's curvatures.

    Over the tail (steps ``t`` in ``[steps - tail, steps)``, metrics at the state a step starts
    from): ``tail_loss`` / ``tail_loss_std`` (Welford), ``min_loss``, ``tail_elr`` (mean effective
    ELR, T20), ``tail_angle``; ``final_loss`` of $\theta_{steps}$, and ``converged_exactly`` where
    the final gradient is exactly 0 (the float64 floor, module docstring; the loss itself reads 0
    much earlier, once the off-minimiser component squared underflows), per group in
    ``group_converged_exactly``. Spikes (`spike_onsets`, streamed):
    ``n_spikes``, ``first_spike``, ``last_spike`` (steps, -1 if none) of the total loss with levels
    ``conv_rtol`` and ``spike_frac`` times $\sum\alpha/2$; the same per group (``group_*``, levels
    times $\alpha_i/2$), with ``group_tail_loss``. A group's period is
    ``(group_last_spike - group_first_spike) / (group_n_spikes - 1)``.

    With ``traces=True`` also returns ``group_loss_trace`` and ``individual_elr_trace``, ``(steps, B, n)``.
    Also returns ``status``, ``bad_step`` and ``theta_final``; a failing run is frozen and its
    summaries are NaN (counts are kept).
    """
    theta = np.array(theta0, copy=True)
    dt = theta.dtype
    B, n, _ = theta.shape
    if alphas is None:
        alphas = np.broadcast_to(problem.alphas, (B, n))
    alphas = np.asarray(alphas, dtype=dt)
    is_toy = isinstance(problem, SphereToy)
    lr = np.asarray(lr, dtype=dt)
    q = 1.0 - lr * np.asarray(weight_decay, dtype=dt)
    start = steps - tail
    rand_g = alphas / 2.0
    rand = rand_g.sum(-1)
    mean, m2 = np.zeros(B, dt), np.zeros(B, dt)
    gmean = np.zeros((B, n), dt)
    min_loss = np.full(B, np.inf, dt)
    esum, asum = np.zeros(B, dt), np.zeros(B, dt)
    status = np.zeros(B, np.int8)
    bad_step = np.full(B, -1, np.int64)
    alive = np.ones(B, bool)
    armed, g_armed = np.zeros(B, bool), np.zeros((B, n), bool)
    count, g_count = np.zeros(B, np.int64), np.zeros((B, n), np.int64)
    first, last = np.full(B, -1, np.int64), np.full(B, -1, np.int64)
    g_first, g_last = np.full((B, n), -1, np.int64), np.full((B, n), -1, np.int64)
    tr_loss = np.empty((steps, B, n), dt) if traces else None
    tr_elr = np.empty((steps, B, n), dt) if traces else None
    with np.errstate(all="ignore"):
        for t in range(steps):
            if is_toy:
                g = toy_grad(theta, alphas)
                gl = toy_group_losses(theta, alphas)
            else:
                g = problem.grad(theta)
                gl = problem.group_losses(theta)
            new = q[:, None, None] * theta - lr[:, None, None] * g
            sq = sphere.group_sq_norms(theta)
            failed = flag_failures(new, alive, status, bad_step, t)
            if traces:
                tr_loss[t] = gl
                tr_elr[t] = lr[:, None] / (q[:, None] * sq)
            if t >= start:
                k = t - start + 1
                loss = gl.sum(-1)
                delta = loss - mean
                mean = np.where(alive, mean + delta / k, mean)
                m2 = np.where(alive, m2 + delta * (loss - mean), m2)
                gmean = np.where(alive[:, None], gmean + (gl - gmean) / k, gmean)
                min_loss = np.where(alive, np.minimum(min_loss, loss), min_loss)
                esum += np.where(alive, lr / (q * sq.sum(-1)), 0)
                asum += np.where(alive, sphere.angle_between(theta, new), 0)
                # the hysteresis of spike_onsets, one record at a time
                for lvl, x, arm, cnt, fst, lst, ok in (
                        (rand, loss, armed, count, first, last, alive),
                        (rand_g, gl, g_armed, g_count, g_first, g_last, alive[:, None])):
                    onset = (x >= spike_frac * lvl) & arm & ok
                    cnt += onset
                    fst[onset & (fst < 0)] = t
                    lst[onset] = t
                    arm[...] = np.where(x <= conv_rtol * lvl, True, np.where(x >= spike_frac * lvl,
                                                                              False, arm))
            alive &= ~failed
            theta = np.where(alive[:, None, None], new, theta)
        final_loss = (toy_group_losses(theta, alphas) if is_toy else problem.group_losses(theta)).sum(-1)
        # the loss squares the off-minimiser component and underflows long before the state does
        # (|p| < 1e-154); an exactly zero gradient means the component itself underflowed
        final_grad = toy_grad(theta, alphas) if is_toy else problem.grad(theta)
        g_exact = np.all(final_grad == 0, axis=-1)
    out = {"tail_loss": mean, "tail_loss_std": np.sqrt(np.maximum(m2 / tail, 0)),
           "final_loss": final_loss, "min_loss": min_loss, "tail_elr": esum / tail,
           "tail_angle": asum / tail, "group_tail_loss": gmean}
    for name in ("tail_loss", "tail_loss_std", "final_loss", "min_loss", "tail_elr", "tail_angle"):
        out[name] = np.where(alive, out[name], np.nan).astype(dt)
    out["group_tail_loss"] = np.where(alive[:, None], gmean, np.nan).astype(dt)
    out.update(n_spikes=count, first_spike=first, last_spike=last, group_n_spikes=g_count,
               group_first_spike=g_first, group_last_spike=g_last,
               converged_exactly=alive & g_exact.all(-1),
               group_converged_exactly=alive[:, None] & g_exact, status=status,
               bad_step=bad_step, theta_final=theta)
    if traces:
        out.update(group_loss_trace=tr_loss, individual_elr_trace=tr_elr)
    return out


__all__ = ["ConventionalTrajectory", "GROUP_SUMMARY_NAMES", "MIN_SPIKES", "PERIODIC", "Periodicity",
           "SPIKE_FRAC", "SUMMARY_NAMES", "classify_wd", "classify_wd_summary",
           "detect_periodic", "group_periods", "simulate_wd", "spike_onsets", "step_wd",
           "summarize_wd_batch"]
