r"""Bounds on |kernel - spec| derived from the arithmetic they bound (docs/backends.md).

Two implementations that round differently (order of sums, FMA contraction, vector width,
reciprocals for divisions) each put at most $k\,u$ of relative error into the state per step ($u$
the unit roundoff of the dtype, $k$ = `ops_per_step` the roundings on one coordinate's dependency
chain). An error injected at step $t$ grows at most like the twin's separation, by
$e^{\lambda(steps-t)}\le G=e^{\max(\lambda,0)\,steps}$ with $\lambda$ the finite-time Lyapunov
exponent of the whole run (`finite_time_lyapunov`: the spec's own ``lyapunov`` with
``tail = steps``); the tail means add ``tail`` roundings of their own. Converging runs have
$G\approx1$ (each rounding counts once); expanding ones (a start near an unstable point, chaos)
get the chaos-aware $u\,e^{\lambda\,steps}$.
"""
import math

import numpy as np

from toymodel import dynamics
from toymodel.problems import RayleighToy

NAMES = dynamics.SUMMARY_NAMES


def unit_roundoff(dt) -> float:
    """$u$ = half the machine epsilon: the relative error of one correctly rounded operation."""
    return float(np.finfo(dt).eps) / 2


def ops_per_step(problem) -> int:
    r"""$k$: roundings on the dependency chain of one state coordinate in one step (a $j$-term sum
    contributes $j$, in any order). Toy: $\|v\|^2$ over the $nd$ coordinates, plus ~10 for the
    group sums, the gradient coefficient, the update $x-\eta g$ and the rescale ($\sqrt{}$, /, ×).
    Rayleigh: the mat-vec row ($m$ terms) and $\|x\|^2$ ($m$), plus the same ~10."""
    if isinstance(problem, RayleighToy):
        return 2 * problem.dim + 10
    return problem.n_groups * problem.dim + 10


def value_scale(problem, alphas=None) -> float:
    r"""The size of the summaries' terms, for absolute errors of values that cancel towards 0:
    the toy loss and effective gradient norm are at most $\sum_i\alpha_i$; the Rayleigh loss is a
    difference of $O(\max|\lambda(A)|)$ terms."""
    if isinstance(problem, RayleighToy):
        return max(1.0, float(np.abs(problem.eigenvalues).max()))
    a = problem.alphas if alphas is None else np.asarray(alphas)
    return max(1.0, float(np.max(np.sum(a, axis=-1))))


def finite_time_lyapunov(problem, theta0, elr, *, steps, constraint="total", alphas=None,
                         twin_dirs):
    r"""$\lambda$ per trajectory over the whole run: the spec's ``lyapunov`` with ``tail = steps``
    (the mean log-stretch of the twin's separation, so the separation grows by $e^{\lambda\,steps}$)."""
    return dynamics.summarize_batch(problem, theta0, elr, steps=steps, tail=steps,
                                    constraint=constraint, alphas=alphas,
                                    twin_dirs=twin_dirs)["lyapunov"]


def tolerance(dt, problem, *, steps, tail, alphas=None, lyap_ft=0.0):
    r"""Bounds on |kernel - spec| per trajectory: a dict of ``rtol``, ``atol``, ``lyap`` arrays.

    * state and summaries, relative: $2u\,(k\,steps\,G+tail)$ with $G=e^{\max(\lambda,0)\,steps}$:
      two implementations × at most $k\,u$ per step, each injection amplified by at most the
      run's growth $G$ (1 for converging runs: errors are not amplified, each rounding counts once;
      the chaos-aware $u\,e^{\lambda\,steps}$ for expanding ones), plus the ``tail`` roundings of
      the Welford mean / sums and their float32 accumulators in the spec;
    * absolute: the same times `value_scale` (angles, std, gradient norms of converged runs are
      differences of terms of that size);
    * ``lyapunov``: each step's $\log(\|\delta\|/\epsilon\rho)$ has absolute error
      $\|\Delta\delta\|/\|\delta\|\le 4k\,u/(\epsilon e^{\ell})$ (two states, the twin and the
      trajectory, × two implementations, each off by $k\,u\,\rho$; $\epsilon=\sqrt{2u}$; the
      separation $\|\delta\|=\epsilon\rho e^{\ell}$ shrinks in a contracting step $\ell<0$), plus the
      state error times the scale (the stretch moves with the state). ``lyap`` is the constant
      $4k\,u/\epsilon$; `assert_matches` multiplies it by $e^{\max(-\lambda,0)}$ with $\lambda$
      the spec's tail mean of $\ell$ (converging runs contract by a constant factor per step).
    """
    u = unit_roundoff(dt)
    k = ops_per_step(problem)
    grow = np.exp(np.minimum(np.maximum(np.nan_to_num(np.asarray(lyap_ft, float)), 0.0) * steps,
                             700.0))
    rtol = 2 * u * (k * steps * grow + tail)
    scale = value_scale(problem, alphas)
    return {"rtol": rtol, "atol": rtol * scale, "lyap": 4 * k * u / math.sqrt(2 * u),
            "lyap_state": rtol * scale}


def close(name, got, ref, rtol, atol=0.0):
    """|got - ref| <= atol + rtol |ref| elementwise (per-trajectory bounds), NaN where the spec has NaN."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    lead = (slice(None),) + (None,) * (ref.ndim - 1)
    rtol = np.broadcast_to(np.asarray(rtol, float), ref.shape[:1])[lead]
    atol = np.broadcast_to(np.asarray(atol, float), ref.shape[:1])[lead]
    both_nan = np.isnan(got) & np.isnan(ref)
    err = np.where(both_nan, 0.0, np.abs(got - ref))
    bound = atol + rtol * np.abs(np.nan_to_num(ref))
    bad = ~(err <= bound)
    assert not bad.any(), (f"{name}: |kernel - spec| = {err[bad]} exceeds the derived bound "
                           f"{np.broadcast_to(bound, err.shape)[bad]} (got {got[bad]}, spec {ref[bad]})")


def assert_matches(got, ref, tol):
    """Same status and bad_step (exact), summaries and final state within ``tol`` (`tolerance`)."""
    np.testing.assert_array_equal(got["status"], ref["status"])
    np.testing.assert_array_equal(got["bad_step"], ref["bad_step"])
    for nm in NAMES:
        if nm == "lyapunov":
            contraction = np.exp(np.maximum(-np.nan_to_num(np.asarray(ref[nm], float)), 0.0))
            close(nm, got[nm], ref[nm], 0.0, tol["lyap"] * contraction + tol["lyap_state"])
        else:
            close(nm, got[nm], ref[nm], tol["rtol"], tol["atol"])
    # coordinates are at most rho = 1 (the initial states are on the unit sphere)
    close("theta_final", got["theta_final"], ref["theta_final"], tol["rtol"], tol["rtol"])
