r"""Orbit classes of fixed-ELR projected GD on the toy: which attractor a window of steps is on
(docs/attractors.md, "How the census decides").

Notation as in `toymodel.orbits`: folded angles $\psi_i$ and shares $s_i$ (T30),
$c=\tilde\eta\sum\alpha_i$, $k_i=\tilde\eta\alpha_i/s_i$. `orbit_window` advances states with
the reference stepper (`toymodel.dynamics.step`) and records $(\psi,s)$ and the loss;
`classify_window` labels a batch of windows with a class of `ORBITS` (its docstring states the
rules, the module constants their thresholds); `basin_fractions` turns labels into the fraction
of starts in every class. No batch backend here: `toymodel.census` runs the long part of each
run and re-exports every name of this module.
"""
from __future__ import annotations

import numpy as np

from . import dynamics, regimes, sphere
from ._validate import alphas_array, positive_int
from .orbits import _clusters, quotient_coords
from .problems import toy_grad, toy_group_losses

__all__ = ["ORBITS", "SYNC_TOL", "PERIOD_RTOL", "CLUSTER_TOL", "LYAPUNOV_TOL", "MAX_PERIOD",
           "orbit_window", "classify_window", "basin_fractions"]

#: orbit classes, in a fixed order (saved figures index into it).
ORBITS = ("convergence", "synchronized", "periodic", "quasi-periodic", "chaotic", "divergence",
          "unresolved", "invalid")
#: a window that stays within this max-norm distance (radians and share units) of the
#: synchronized fixed point is "synchronized". At c in [1.1, 1.7] the neutral oscillation left
#: after 20 000 steps has amplitude 0.007-0.05, every lower orbit 0.2-0.4 (docs/attractors.md).
SYNC_TOL = 0.05
#: a window that returns after p steps to within this fraction of its distance from the
#: synchronized point is "periodic" with period p (measured: 0.005-0.009 on the thin tori around the
#: locked orbits, 0.02-0.1 on the tori and sync oscillations that do not lock).
PERIOD_RTOL = 0.01
#: groups whose folded angles and log k stay within this of each other form a cluster (T33).
CLUSTER_TOL = 0.05
#: a largest Lyapunov exponent (per step) above this is "chaotic" (theory.md: |λ| < 0.01 ≈ 0).
LYAPUNOV_TOL = 0.01
#: the longest period looked for; the window is twice as long.
MAX_PERIOD = 64


# -- windows and their classification ------------------------------------------------------------------
def orbit_window(problem, theta, elr, length, keep_states=False):
    r"""Advance states ``(B, n, d)`` by ``length`` steps of projected GD (total constraint, the
    `toymodel.dynamics.step` specification) and return what the classifier reads, per step $t$ of
    the window: ``psi`` and ``shares`` ``(length, B, n)`` (T30), ``loss`` ``(length, B)`` and the
    final states ``theta``; with ``keep_states`` also ``states`` ``(length, B, n, d)``.

    Parameters
    ----------
    problem
        A `toymodel.problems.SphereToy`.
    theta
        States ``(B, n, d)``; their total norms are kept.
    elr
        Total ELR per state (broadcasts to ``(B,)``).
    length
        Steps to take.
    keep_states
        Also return every state of the window.
    """
    theta = np.array(theta, dtype=np.float64, copy=True)
    length = positive_int("length", length)
    B = theta.shape[0]
    elr = np.broadcast_to(np.asarray(elr, dtype=np.float64), (B,))
    sq = sphere.group_sq_norms(theta).sum(-1)
    lr, target = elr * sq, np.sqrt(sq)
    psi = np.empty((length, B, problem.n_groups))
    shares = np.empty_like(psi)
    loss = np.empty((length, B))
    states = np.empty((length,) + theta.shape) if keep_states else None
    with np.errstate(all="ignore"):
        for t in range(length):
            if keep_states:
                states[t] = theta
            psi[t], shares[t] = quotient_coords(theta)
            loss[t] = toy_group_losses(theta, problem.alphas).sum(-1)
            theta = dynamics.step(theta, toy_grad(theta, problem.alphas), lr, "total", target)
    out = {"psi": psi, "shares": shares, "loss": loss, "theta": theta}
    if keep_states:
        out["states"] = states
    return out


def _first_return(X, amplitude, max_period, rtol):
    """Smallest p in [1, max_period] with max_t |X[t+p] - X[t]| <= rtol * amplitude (0: none)."""
    W, B = X.shape[:2]
    period = np.zeros(B, np.int64)
    for p in range(1, min(max_period, W // 2) + 1):
        d = np.abs(X[p:] - X[:-p]).max(axis=(0, 2))
        hit = (period == 0) & (d <= rtol * amplitude)
        period[hit] = p
    return period


def classify_window(window, alphas, c, *, regime, lyapunov, max_period=MAX_PERIOD,
                    sync_tol=SYNC_TOL, period_rtol=PERIOD_RTOL, cluster_tol=CLUSTER_TOL,
                    lyapunov_tol=LYAPUNOV_TOL):
    r"""Orbit classes of ``B`` windows (`orbit_window`) at ``c`` ``(B,)``, given each run's
    ``regime`` label (`toymodel.regimes.classify_summary`) and ``lyapunov`` exponent.

    Rules, in order (docs/attractors.md, "How the census decides"):

    1. ``convergence``, ``divergence``, ``unresolved``, ``invalid``: the regime label, as is;
    2. ``synchronized``: the window stays within ``sync_tol`` (max-norm in $(\psi,s)$) of the
       synchronized point (T30);
    3. ``periodic``: the window, in cluster-reduced coordinates (each group replaced by its
       cluster's share-weighted angle and total share, T33), returns after $p\le$ ``max_period``
       steps to within ``period_rtol`` times its distance from the synchronized point
       (``period`` = the smallest such $p$);
    4. ``chaotic`` if ``lyapunov`` > ``lyapunov_tol``, else ``quasi-periodic``.

    Returns a dict of ``(B,)`` arrays: ``orbit`` (str), ``period`` (0 unless periodic; 1 for
    synchronized), ``clusters`` (number of clusters, T33; 0 for convergence/divergence/invalid),
    ``cluster_of`` ``(B, n)`` (index of the first group of each group's cluster), ``amplitude``
    (max distance from the synchronized point), ``orbit_loss`` (mean loss over whole periods
    of the window; NaN unless periodic or synchronized).

    Parameters
    ----------
    window
        The dict of `orbit_window`.
    alphas
        Curvatures $\alpha_i>0$.
    c
        $c$ per window (broadcasts to ``(B,)``).
    regime, lyapunov
        Per window: the regime label and the largest Lyapunov exponent per step.
    max_period, sync_tol, period_rtol, cluster_tol, lyapunov_tol
        The rules' thresholds (the module constants of the same names in capitals).
    """
    a = alphas_array(alphas)
    psi, shares, loss = window["psi"], window["shares"], window["loss"]
    W, B, n = psi.shape
    c = np.broadcast_to(np.asarray(c, dtype=np.float64), (B,))
    regime = np.broadcast_to(np.asarray(regime).astype(str), (B,))
    lyapunov = np.broadcast_to(np.asarray(lyapunov, dtype=np.float64), (B,))
    above = c > 1.0
    with np.errstate(all="ignore"):
        psi_s = np.where(above, 0.5 * np.arccos(1.0 / np.where(above, c, 2.0)), 0.0)
        X = np.concatenate([psi, shares], axis=-1)
        Xs = np.concatenate([np.repeat(psi_s[:, None], n, 1), np.tile(a / a.sum(), (B, 1))], -1)
        amplitude = np.abs(X - Xs[None]).max(axis=(0, 2))
        elr = c / a.sum()
        logk = np.log(elr[None, :, None] * a / shares)
    labels = _clusters(psi, logk, cluster_tol)
    # returns are judged on the cluster-reduced coordinates (T33): within a cluster the groups
    # drift slowly along neutral directions, which the reduced orbit does not see
    same = (labels[:, :, None] == labels[:, None, :]).astype(np.float64)   # (B, n, n)
    s_red = np.einsum("bij,tbj->tbi", same, shares)
    psi_red = np.einsum("bij,tbj->tbi", same, shares * psi) / s_red
    with np.errstate(all="ignore"):
        period = _first_return(np.concatenate([psi_red, s_red], axis=-1), amplitude, max_period,
                               period_rtol)
    n_clusters = np.array([np.unique(row).size for row in labels])
    orbit = np.where(lyapunov > lyapunov_tol, "chaotic", "quasi-periodic").astype("<U14")
    orbit = np.where(period > 0, "periodic", orbit)
    sync = above & (amplitude <= sync_tol)
    orbit = np.where(sync, "synchronized", orbit)
    passthrough = np.isin(regime, ("convergence", "divergence", regimes.UNRESOLVED, regimes.INVALID))
    orbit = np.where(passthrough, regime, orbit)
    period = np.where(sync, 1, np.where(orbit == "periodic", period, 0))
    reps = np.maximum(W // np.maximum(period, 1), 1) * np.maximum(period, 1)
    idx = np.arange(W)[:, None] < reps[None, :]
    orbit_loss = np.where(period > 0, (loss * idx).sum(0) / reps, np.nan)
    none = np.isin(orbit, ("convergence", "divergence", regimes.INVALID))
    return {"orbit": orbit, "period": period.astype(np.int64),
            "clusters": np.where(none, 0, n_clusters).astype(np.int64), "cluster_of": labels,
            "amplitude": amplitude, "orbit_loss": orbit_loss}


def basin_fractions(orbit):
    r"""Fraction of the seeds in every class of `ORBITS`: ``orbit`` ``(C, S)`` labels ->
    ``(C, len(ORBITS))``; every row sums to 1 (the classes are exhaustive and exclusive)."""
    orbit = np.asarray(orbit).astype(str)
    if orbit.ndim != 2 or orbit.shape[1] == 0:
        raise ValueError(f"orbit must be a (c, seed) array of labels, got shape {orbit.shape}")
    unknown = sorted(set(orbit.ravel().tolist()) - set(ORBITS))
    if unknown:
        raise ValueError(f"unknown orbit labels {unknown}; expected labels from {ORBITS}")
    return np.stack([(orbit == name).mean(axis=1) for name in ORBITS], axis=-1)
