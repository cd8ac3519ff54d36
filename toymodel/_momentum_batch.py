r"""Many momentum / Adam trajectories at once, reduced to summaries (docs/momentum.md T41–T48).

Owns `summarize_momentum_batch` (the momentum counterpart of `toymodel.dynamics.summarize_batch`,
the specification future momentum kernels match), the convergence criterion `converged` and the
grid over ``(c, momentum, seed)`` `convergence_grid`. Re-exported by `toymodel.momentum`.
"""
from __future__ import annotations

import numpy as np

from . import dynamics, sphere
from ._momentum_checks import CONVERGED_LOSS, check_mode, check_momentum_array
from ._momentum_steps import _gdot, adam_individual_elr, adam_step, heavy_ball_step
from ._validate import alphas_array, positive_finite_array, positive_int, tail_within
from .dynamics import STATUS_OK, SUMMARY_NAMES
from .problems import SphereToy

#: summaries written by `summarize_momentum_batch` besides `toymodel.dynamics.SUMMARY_NAMES`.
EXTRA_SUMMARY_NAMES = ("tail_radial", "final_stability", "hit_step")


# -- many trajectories, summaries only ----------------------------------------------------------------
def summarize_momentum_batch(problem, theta0, elr, momentum, *, steps, tail,
                             momentum_mode="official", constraint="total", alphas=None,
                             optimizer="heavy_ball", beta2=0.999, eps=1e-3,
                             hit_loss=CONVERGED_LOSS, buffer0=None):
    r"""Run ``B`` independent trajectories (each its own ELR, momentum and start) and reduce them
    to per-trajectory summaries: the momentum counterpart of `toymodel.dynamics.summarize_batch`,
    and the specification future momentum kernels match.

    Parameters
    ----------
    problem
        The problem (a `SphereToy` when ``alphas`` is given).
    theta0
        ``(B, n, d)`` starts on the constraint set; their dtype is the computing dtype.
    elr, momentum
        ``(B,)`` (or broadcasting): total ELR and $\beta$ (for Adam: $\mathrm{lr}/\rho$ and
        $\beta_1$). Not validated here (a spec kernel; callers validate).
    steps, tail
        Steps, and the tail window ``[steps - tail, steps)`` of the means.
    momentum_mode
        ``"official"`` or ``"transport"``.
    alphas
        ``(B, n)`` curvatures per trajectory, or ``None`` for the problem's.
    optimizer
        ``"heavy_ball"`` or ``"adam"`` (then ``beta2`` and ``eps``, on the unit sphere, apply).
    buffer0
        ``(B, n, d)`` initial heavy-ball buffers (default zeros), e.g. the ``buffer_final`` of a
        previous call to continue it (heavy ball only).

    Returns
    -------
    dict
        ``(B,)`` arrays named by `toymodel.dynamics.SUMMARY_NAMES` with the same meaning where they
        apply: ``frac_above_threshold`` counts (step, group) pairs above the heavy-ball limit,
        $\eta\alpha_i>(1+\beta)r_i^2$ (T43; for Adam the frozen-preconditioner form
        $(1-\beta_1)\tilde\eta^A_i\alpha_i>1+\beta_1$, T46); ``lyapunov`` is NaN (no twin: the
        optimizer state would need one too). Plus `EXTRA_SUMMARY_NAMES`: ``tail_radial``, the tail
        mean of $\max_i|\langle b_i,\theta_i\rangle|/(\|b_i\|r_i)$ at the start of each step
        (0 up to rounding in ``"transport"`` mode, T42), and ``final_stability``,
        $\max_i\tilde\eta_i\alpha_i/(1+\beta)$ at the final state (T43: a converged run has it
        below 1), and ``hit_step``, the first step (checked every 16 steps before the tail, every
        step in it) whose loss is below ``hit_loss``, ``inf`` if none: the end of a chaotic
        transient (T48). And ``status``, ``bad_step``, ``theta_final``; failed runs are frozen, NaN.
    """
    check_mode(momentum_mode)
    if optimizer not in ("heavy_ball", "adam"):
        raise ValueError(f"optimizer must be one of ('heavy_ball', 'adam'), got {optimizer!r}")
    theta = np.array(theta0, copy=True)
    dt = theta.dtype
    B, n, _ = theta.shape
    if alphas is None:
        alphas = np.broadcast_to(problem.alphas, (B, n))
    alphas = np.asarray(alphas, dtype=dt)
    loss_fn, grad_fn = dynamics._loss_grad_fn(problem, alphas)
    target = dynamics._targets(theta, constraint)
    rho = np.sqrt(sphere.group_sq_norms(theta).sum(-1))
    elr = np.broadcast_to(np.asarray(elr, dtype=dt), (B,))
    beta = np.broadcast_to(np.asarray(momentum, dtype=dt), (B,))
    adam = optimizer == "adam"
    if adam:
        lr = elr * rho
        eps_t = np.asarray(eps, dtype=dt) / rho
        m = np.zeros_like(theta)
        v = np.zeros((B, n), dt)
    else:
        lr = elr * rho * rho
        buf = np.zeros_like(theta) if buffer0 is None else np.array(buffer0, dtype=dt)
    start = steps - tail
    mean, m2, above, gsum, asum, rsum = (np.zeros(B, dt) for _ in range(6))
    min_share, hit = np.full(B, np.inf, dt), np.full(B, np.inf, dt)
    status = np.zeros(B, np.int8)
    bad_step = np.full(B, -1, np.int64)
    alive = np.ones(B, bool)
    with np.errstate(all="ignore"):
        for t in range(steps):
            g = grad_fn(theta)
            if adam:
                b_prev = m
                new, m_new, v_new = adam_step(theta, m, v, g, t + 1, lr, (beta, beta2),
                                              eps_t, momentum_mode, constraint, target)
            else:
                b_prev = beta[:, None, None] * buf + g
                new, buf_new = heavy_ball_step(theta, buf, g, lr, beta, momentum_mode,
                                               constraint, target)
            sq = sphere.group_sq_norms(theta)
            failed = dynamics.flag_failures(new, alive, status, bad_step, t)
            alive &= ~failed
            live3 = alive[:, None, None]
            if t >= start:
                k = t - start + 1
                loss = loss_fn(theta)
                delta = loss - mean
                mean = np.where(alive, mean + delta / k, mean)
                m2 = np.where(alive, m2 + delta * (loss - mean), m2)
                tot = sq.sum(-1)
                min_share = np.where(alive, np.minimum(min_share, sq.min(-1) / tot), min_share)
                if adam:
                    vk = beta2 * v + (1 - beta2) * sphere.group_sq_norms(g)
                    ke = adam_individual_elr(theta, vk, t + 1, lr, beta2, eps_t)
                    hot = (1 - beta[:, None]) * ke * alphas > 1 + beta[:, None]
                else:
                    hot = lr[:, None] * alphas > (1 + beta[:, None]) * sq
                above += np.where(alive, hot.sum(-1), 0)
                gsq = sphere.group_sq_norms(g).sum(-1)
                gsum += np.where(alive, np.sqrt(tot * gsq), 0)
                asum += np.where(alive, sphere.angle_between(theta, new), 0)
                # b_i scaled to a unit max entry: |b_i|^2 r_i^2 underflowed to 0 late in converged
                # runs (0/0 = NaN); the scaled |b_i|^2 lies in [1, d] (0 only for b_i = 0)
                bmax = np.abs(b_prev).max(-1, keepdims=True)
                bu = b_prev / np.where(bmax > 0, bmax, 1.0)
                bsq = sphere.group_sq_norms(bu)
                radial = np.abs(_gdot(bu, theta)) / (np.sqrt(np.where(bsq > 0, bsq, 1.0))
                                                     * np.sqrt(sq))
                rsum += np.where(alive, radial.max(-1), 0)
            if t % 16 == 0 or t >= start:  # the first hit to within 16 steps keeps the loop cheap
                lt = loss if t >= start else loss_fn(theta)
                hit = np.where(alive & (hit == np.inf) & (lt < hit_loss), t, hit)
            theta = np.where(live3, new, theta)
            if adam:
                m = np.where(live3, m_new, m)
                v = np.where(alive[:, None], v_new, v)
            else:
                buf = np.where(live3, buf_new, buf)
        final_loss = loss_fn(theta)
        sq = sphere.group_sq_norms(theta)
        if adam:
            ke = adam_individual_elr(theta, v, steps, lr, beta2, eps_t)
            stab = ((1 - beta[:, None]) * ke * alphas / (1 + beta[:, None])).max(-1)
        else:
            stab = (lr[:, None] * alphas / ((1 + beta[:, None]) * sq)).max(-1)
    out = {
        "tail_loss": mean, "tail_loss_std": np.sqrt(np.maximum(m2 / tail, 0)),
        "final_loss": final_loss, "min_share": min_share, "frac_above_threshold": above / (tail * n),
        "tail_grad_norm": gsum / tail, "tail_angle": asum / tail,
        "lyapunov": np.full(B, np.nan, dt), "tail_radial": rsum / tail, "final_stability": stab,
        "hit_step": hit,
    }
    for name in SUMMARY_NAMES + EXTRA_SUMMARY_NAMES:
        out[name] = np.where(alive, out[name], np.nan).astype(dt)
    out.update(status=status, bad_step=bad_step, theta_final=theta,
               **({"m_final": m, "v_final": v} if adam else {"buffer_final": buf}))
    return out


def converged(summary, tol: float = CONVERGED_LOSS, stable: bool = True) -> np.ndarray:
    r"""Valid runs whose tail-mean loss is below ``tol`` (the task's criterion, 1e-10) and, with
    ``stable`` (default), whose final shares make the minimum linearly stable,
    ``final_stability`` < 1 (T43).

    Why both: near $c=1+\beta$ a run can reach a loss of $10^{-300}$ with one group exactly on
    its axis (the angle underflowed to 0 while that group was stable) and the shares since moved
    so that group is above its limit: a floating-point fixed point that exact arithmetic would
    leave (T48). The loss criterion alone then reports convergence above $1+\beta$."""
    loss = np.asarray(summary["tail_loss"])
    ok = (np.asarray(summary["status"]) == STATUS_OK) & np.isfinite(loss) & (loss < tol)
    if stable:
        ok &= np.asarray(summary["final_stability"]) < 1.0
    return ok


# -- grids over (c, beta, seed) --------------------------------------------------------------------------
def _check_seeds(seeds):
    seeds = [positive_int("seed", s, minimum=0) for s in np.atleast_1d(seeds).tolist()]
    if not seeds:
        raise ValueError("seeds must not be empty")
    return seeds


def convergence_grid(alphas, c, momentum, seeds, *, momentum_mode="official", steps=20000,
                     tail=2000, tol=CONVERGED_LOSS, stable=True, dim=2, chunk=8192,
                     return_summary=False, summarize=None):
    r"""Converged-or-not of every ``(c, momentum, seed)`` on `SphereToy(alphas, dim)`, shape
    ``(C, M, S)`` (``c`` $=\tilde\eta\sum\alpha$, so ``elr = c/sum(alphas)``).

    Every cell starts at `toymodel.dynamics.initial_state` of its seed with a zero buffer; the runs
    go through `summarize_momentum_batch` in chunks of ``chunk`` trajectories, or through
    ``summarize`` (the same signature and keys, e.g. ``functools.partial(
    toymodel.backend.summarize_momentum, backend="numba")`` for the compiled kernels). With
    ``return_summary=True`` also returns the summaries reshaped to ``(C, M, S)``.
    """
    a = alphas_array(alphas)
    c = positive_finite_array("c", np.atleast_1d(np.asarray(c, dtype=np.float64)), ndim=1)
    betas = np.atleast_1d(check_momentum_array(momentum))
    seeds = _check_seeds(seeds)
    mode = check_mode(momentum_mode)
    steps = positive_int("steps", steps)
    tail = tail_within(tail, steps)
    run = summarize_momentum_batch if summarize is None else summarize
    problem = SphereToy(a, dim=dim)
    th0 = dynamics.initial_states(problem, seeds)
    C, M, S = c.size, betas.size, len(seeds)
    cc, bb, ss = np.meshgrid(c / a.sum(), betas, np.arange(S), indexing="ij")
    cc, bb, ss = cc.ravel(), bb.ravel(), ss.ravel()
    names = SUMMARY_NAMES + EXTRA_SUMMARY_NAMES + ("status",)
    res = {name: np.empty(cc.size, np.int8 if name == "status" else np.float64) for name in names}
    chunk = positive_int("chunk", chunk)
    for lo in range(0, cc.size, chunk):
        sl = slice(lo, lo + chunk)
        out = run(problem, th0[ss[sl]], cc[sl], bb[sl], steps=steps, tail=tail,
                  momentum_mode=mode)
        for name in names:
            res[name][sl] = out[name]
    ok = converged(res, tol, stable).reshape(C, M, S)
    if return_summary:
        return ok, {k: v.reshape(C, M, S) for k, v in res.items()}
    return ok
