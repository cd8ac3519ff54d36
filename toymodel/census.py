r"""The orbit census: every attractor fixed-ELR projected GD reaches on the toy, run in batches
through `toymodel.backend` (docs/attractors.md, T30–T37).

Notation (docs/theory.md §4): $n$ groups, curvatures $\alpha_i$, total ELR $\tilde\eta$,
$c=\tilde\eta\sum\alpha_i$, shares $s_i$ (T7), $L^*$ the synchronized equilibrium's loss (T12).

What is here:

* `orbit_census`: per (c, seed) the orbit class, period, clusters, tail loss / $L^*$, and per c
  the basin fraction of every class (an ``xarray.Dataset`` when xarray is installed, else a dict);
* `characterize`: runs one start, classifies it and refines what it finds (`OrbitReport`);
* `envelope`: the range of attractor losses at each c, measured by an independent census, and
  `within_envelope` to test tail losses against it.

The math it builds on is re-exported here, so ``toymodel.census.<name>`` reaches every name of the
orbit toolkit: the folded coordinates, closed forms and Newton refinement of `toymodel.orbits`
(`quotient_coords`, `synchronized_point`, `linear_spectrum`, `resonances`, `periodic_orbit`,
`uniform_sin2_law`, `uniform_loss_moments`) and the window classifier of
`toymodel.orbit_classes` (`ORBITS`, `orbit_window`, `classify_window`, `basin_fractions` and the
thresholds).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from . import backend as _backend
from . import dynamics, regimes, theory
from ._deps import has
from ._validate import alphas_array, positive_finite_array, positive_int
from .orbit_classes import (CLUSTER_TOL, LYAPUNOV_TOL, MAX_PERIOD, ORBITS, PERIOD_RTOL, SYNC_TOL,
                            basin_fractions, classify_window, orbit_window)
from .orbits import (PeriodicOrbit, linear_spectrum, periodic_orbit, quotient_coords, resonances,
                     synchronized_point, uniform_loss_moments, uniform_sin2_law)
from .problems import SphereToy

__all__ = ["ORBITS", "PeriodicOrbit", "OrbitReport", "quotient_coords", "synchronized_point",
           "linear_spectrum", "resonances", "orbit_window", "classify_window", "orbit_census",
           "basin_fractions", "periodic_orbit", "characterize", "envelope", "within_envelope",
           "uniform_sin2_law", "uniform_loss_moments", "SYNC_TOL", "PERIOD_RTOL", "CLUSTER_TOL",
           "LYAPUNOV_TOL", "MAX_PERIOD", "ENVELOPE_SEED0", "ENVELOPE_RTOL"]

#: first seed of `envelope`'s own census: far from the seeds users start from (0, 1, ...), so an
#: envelope tested against simulations never shares their starts.
ENVELOPE_SEED0 = 1_000_000
#: relative floor of the envelope's margin: residual transients and the phase of a periodic orbit
#: in a finite tail move a tail mean by up to ~1e-3 of L* at 20 000 steps (docs/attractors.md).
ENVELOPE_RTOL = 2e-3


# -- validation -------------------------------------------------------------------------------------
def _c_values(c_values):
    if isinstance(c_values, str):
        raise ValueError(f"c_values must be numbers, got the string {c_values!r}")
    return positive_finite_array("c_values", np.atleast_1d(c_values), ndim=1)


def _seed_list(seeds, name="seeds"):
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        return list(range(positive_int(name, seeds)))
    try:
        out = [positive_int("seed", s, minimum=0) for s in seeds]
    except TypeError:
        raise ValueError(f"{name} must be a count >= 1 or a sequence of integers >= 0, "
                         f"got {seeds!r}") from None
    if not out:
        raise ValueError(f"{name} must not be empty, got {seeds!r}")
    return out


def _nonneg(name, value):
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = np.nan
    if not (np.isfinite(x) and x >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return x


def _steps_tail(steps, tail):
    steps = positive_int("steps", steps)
    tail = positive_int("tail", tail)
    if tail > steps:
        raise ValueError(f"tail must be an integer in [1, steps={steps}], got {tail}")
    return steps, tail


# -- the census -----------------------------------------------------------------------------------------
def orbit_census(alphas, c_values, seeds=64, steps=20000, tail=2000, *, dim=2, theta0=None,
                 backend="auto", max_period=MAX_PERIOD, sync_tol=SYNC_TOL, period_rtol=PERIOD_RTOL,
                 cluster_tol=CLUSTER_TOL, lyapunov_tol=LYAPUNOV_TOL, as_dataset=None):
    r"""Run every (c, seed) to its attractor and say which attractor it is (docs/attractors.md).

    Each run is projected GD at the total ELR $\tilde\eta=c/\sum\alpha_i$ from
    `toymodel.dynamics.initial_states` (with the Lyapunov twin), through
    `toymodel.backend.summarize`; then $2\cdot$ ``max_period`` further steps are classified by
    `classify_window`.

    Parameters
    ----------
    alphas
        Curvatures $\alpha_i>0$ of a `toymodel.problems.SphereToy`.
    c_values
        Values of $c=\tilde\eta\sum\alpha_i$ (positive, 1-D).
    seeds
        A count ($0..S-1$) or a sequence of seeds $\ge0$.
    steps, tail
        Steps per run and the tail the summaries average over ($1\le$ ``tail`` $\le$ ``steps``).
    dim
        Dimension $d\ge2$ of every group.
    theta0
        Optional initial states ``(S, n, d)`` instead of ``seeds`` (put on the unit total sphere);
        the ``seed`` coordinate then indexes them.
    backend
        `toymodel.backend` name (``"auto"``: numba when installed).
    max_period
        Longest period looked for.
    sync_tol, period_rtol, cluster_tol, lyapunov_tol
        The thresholds of `classify_window` (module constants by default). The approach to the
        synchronized point is slow (amplitude $\propto t^{-1/2}$, docs/attractors.md): runs much
        shorter than 20 000 steps, or $c$ near the onset of chaos, may need a larger ``sync_tol``.
    as_dataset
        Return an ``xarray.Dataset`` (``True``), a dict of arrays (``False``), or the former when
        xarray is installed (``None``).

    Returns
    -------
    xarray.Dataset or dict
        Per (``c``, ``seed``): ``orbit``, ``period``, ``clusters``, ``regime``, ``tail_loss``,
        ``tail_loss_std``, ``loss_ratio`` (tail loss / $L^*$), ``orbit_loss``, ``amplitude``,
        ``lyapunov``, ``min_share``; per (``c``, ``seed``, ``group``): ``cluster_of``, and
        ``theta_final`` (the state after ``steps``, with a ``coord`` axis); per ``c``:
        ``elr``, ``equilibrium_loss`` ($L^*$, T12; 0 for $c\le1$) and ``basin``
        (``c`` × ``orbit_class``, `basin_fractions`). Parameters in ``attrs``.

    Raises
    ------
    ValueError
        On bad input, naming the value.
    """
    a = alphas_array(alphas)
    cs = _c_values(c_values)
    steps, tail = _steps_tail(steps, tail)
    dim = positive_int("dim", dim, minimum=2)
    max_period = positive_int("max_period", max_period)
    tols = {k: _nonneg(k, v) for k, v in (("sync_tol", sync_tol), ("period_rtol", period_rtol),
                                           ("cluster_tol", cluster_tol),
                                           ("lyapunov_tol", lyapunov_tol))}
    if as_dataset not in (None, True, False):
        raise ValueError(f"as_dataset must be True, False or None, got {as_dataset!r}")
    if as_dataset and not has("xarray"):
        raise ImportError("as_dataset=True needs the optional package 'xarray': pip install 'toymodel[scan]'")
    name = _backend.resolve(backend)
    problem = SphereToy(a, dim=dim)
    if theta0 is None:
        seed_list = _seed_list(seeds)
        th, dirs = dynamics.initial_states(problem, seed_list, twin=True)
        seed_coord = np.array(seed_list, np.int64)
    else:
        th = problem.check_theta(theta0, "theta0")
        if th.ndim != 3:
            raise ValueError(f"theta0 must have shape (S, {a.size}, {dim}), got {th.shape}")
        th = dynamics.project(th.astype(np.float64), "total")
        w = np.random.default_rng(0).standard_normal(th.shape)
        dirs = w / np.linalg.norm(w, axis=(1, 2), keepdims=True)
        seed_coord = np.arange(th.shape[0], dtype=np.int64)
    C, S, n = cs.size, th.shape[0], a.size
    rand = problem.random_loss()
    res = {k: np.empty((C, S)) for k in ("tail_loss", "tail_loss_std", "lyapunov", "min_share",
                                         "tail_angle", "amplitude", "orbit_loss")}
    res.update(orbit=np.empty((C, S), "<U14"), regime=np.empty((C, S), "<U19"),
               period=np.empty((C, S), np.int64), clusters=np.empty((C, S), np.int64),
               cluster_of=np.empty((C, S, n), np.int64), theta_final=np.empty((C, S, n, dim)))
    rows = max(1, 8192 // S)  # whole c rows per batch: memory stays flat
    for lo in range(0, C, rows):
        cc = cs[lo:lo + rows]
        elr = np.repeat(cc / a.sum(), S)
        out = _backend.summarize(problem, np.tile(th, (cc.size, 1, 1)), elr, steps=steps, tail=tail,
                                 twin_dirs=np.tile(dirs, (cc.size, 1, 1)), backend=name)
        out = {k: np.asarray(v) for k, v in out.items() if k != "backend"}
        labels, _ = regimes.classify_summary(out["tail_loss"], rand,
                                             invalid_reason=dynamics.status_reasons(out["status"]),
                                             tail_angle=out["tail_angle"], tail_steps=tail)
        win = orbit_window(problem, np.nan_to_num(out["theta_final"], nan=1.0), elr, 2 * max_period)
        cls = classify_window(win, a, np.repeat(cc, S), regime=labels, lyapunov=out["lyapunov"],
                              max_period=max_period, **tols)
        sl = slice(lo, lo + cc.size)
        for k in ("tail_loss", "tail_loss_std", "lyapunov", "min_share", "tail_angle"):
            res[k][sl] = out[k].reshape(cc.size, S)
        res["regime"][sl] = labels.reshape(cc.size, S)
        for k in ("orbit", "period", "clusters", "amplitude", "orbit_loss"):
            res[k][sl] = cls[k].reshape(cc.size, S)
        res["cluster_of"][sl] = cls["cluster_of"].reshape(cc.size, S, n)
        res["theta_final"][sl] = out["theta_final"].reshape(cc.size, S, n, dim)
    elrs = cs / a.sum()
    lstar = np.array([theory.equilibrium_loss(e, a) for e in elrs])
    with np.errstate(all="ignore"):
        res["loss_ratio"] = np.where(lstar[:, None] > 0, res["tail_loss"] / lstar[:, None], np.nan)
    res.update(c=cs, seed=seed_coord, elr=elrs, equilibrium_loss=lstar,
               basin=basin_fractions(res["orbit"]))
    attrs = {"alphas": a.tolist(), "dim": dim, "steps": steps, "tail": tail, "backend": name,
             "max_period": max_period, **tols, "random_loss": rand,
             "orbit_classes": list(ORBITS)}
    if as_dataset is False or (as_dataset is None and not has("xarray")):
        res["attrs"] = attrs
        return res
    return _to_dataset(res, attrs, n)


def _to_dataset(res, attrs, n):
    import xarray as xr

    cell = ("c", "seed")
    data = {k: (cell, res[k]) for k in ("orbit", "period", "clusters", "regime", "tail_loss",
                                         "tail_loss_std", "loss_ratio", "orbit_loss", "amplitude",
                                         "lyapunov", "min_share", "tail_angle")}
    data["cluster_of"] = (cell + ("group",), res["cluster_of"])
    data["theta_final"] = (cell + ("group", "coord"), res["theta_final"])
    data["elr"] = (("c",), res["elr"])
    data["equilibrium_loss"] = (("c",), res["equilibrium_loss"])
    data["basin"] = (("c", "orbit_class"), res["basin"])
    ds = xr.Dataset(data, coords={"c": res["c"], "seed": res["seed"], "group": np.arange(n),
                                  "orbit_class": list(ORBITS)})
    ds.attrs.update({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in attrs.items()})
    return ds


def _get(res, name):
    """A variable of a census result as a NumPy array (Dataset or dict)."""
    v = res[name]
    return np.asarray(getattr(v, "values", v))


@dataclass
class OrbitReport:
    """What `characterize` found for one start."""

    orbit: str                #: class (`ORBITS`)
    period: int               #: window period (0 if none)
    clusters: list            #: groups moving together in the window (T33)
    tail_loss: float          #: tail mean loss of the run
    loss_ratio: float         #: tail loss / L*
    lyapunov: float           #: largest Lyapunov exponent per step
    amplitude: float          #: max distance of the window from the synchronized point
    refined: PeriodicOrbit | None  #: the periodic orbit Newton found (periodic/synchronized only)
    distance: float = np.nan  #: max-norm distance in (psi, s) from the run's state to ``refined``
    theta: np.ndarray = field(repr=False, default=None)  #: the state after the run


def characterize(alphas, c, seed=0, steps=20000, tail=2000, *, theta0=None, dim=2, backend="auto",
                 max_period=MAX_PERIOD):
    r"""Run one start to its attractor, classify it (`orbit_census` rules) and, when it is periodic,
    refine the orbit with `periodic_orbit`; returns an `OrbitReport`.

    A run on a thin torus around a periodic orbit (a window period that is a multiple of the
    orbit's, a tail loss off the orbit's) refines to the orbit inside the torus: ``distance`` says
    how far the run is from it (~0.01 for the slow neutral drift inside a cluster, T33).

    Parameters are those of `orbit_census` for a single ``c`` and a single ``seed`` (or one state
    ``theta0`` of shape ``(n, d)``).
    """
    a = alphas_array(alphas)
    if theta0 is not None:
        t0 = np.asarray(theta0, dtype=np.float64)
        if t0.ndim != 2:
            raise ValueError(f"theta0 must be one state of shape ({a.size}, d), got {t0.shape}")
        dim = t0.shape[-1]
        kw = {"theta0": t0[None]}
    else:
        kw = {"seeds": [positive_int("seed", seed, minimum=0)]}
    res = orbit_census(a, [c], steps=steps, tail=tail, dim=dim, backend=backend,
                       max_period=max_period, as_dataset=False, **kw)
    orbit, period = str(res["orbit"][0, 0]), int(res["period"][0, 0])
    lab = res["cluster_of"][0, 0]
    refined, theta = None, res["theta_final"][0, 0]
    distance = np.nan
    if orbit in ("periodic", "synchronized") and period > 0:
        try:
            refined = periodic_orbit(a, c, theta, period)
        except ValueError:
            refined = None  # a torus around an orbit, which Newton cannot pin from here
    if refined is not None:
        x = np.concatenate(quotient_coords(theta))
        distance = float(min(np.abs(x - np.concatenate([refined.psi[j], refined.shares[j]])).max()
                             for j in range(refined.period)))
    return OrbitReport(orbit=orbit, period=period,
                       clusters=[np.flatnonzero(lab == g).tolist() for g in np.unique(lab)],
                       tail_loss=float(res["tail_loss"][0, 0]),
                       loss_ratio=float(res["loss_ratio"][0, 0]),
                       lyapunov=float(res["lyapunov"][0, 0]),
                       amplitude=float(res["amplitude"][0, 0]), refined=refined,
                       distance=distance, theta=theta)


# -- the envelope -------------------------------------------------------------------------------------
def envelope(alphas, c_values, *, seeds=128, steps=20000, tail=2000, dim=2, backend="auto",
             widen=2.0, rtol=ENVELOPE_RTOL, census=None):
    r"""The range of tail losses fixed-ELR GD settles to at each $c$: $[L_{lo}, L_{hi}]$
    (docs/attractors.md, "The envelope").

    $L_{lo}$ is the lowest and $L_{hi}$ the highest tail loss over an orbit census of ``seeds``
    starts (seeds `ENVELOPE_SEED0`, `ENVELOPE_SEED0` + 1, ...: independent of the seeds a
    user runs), anchored by the theory: both ends include $L^*$ (T12) for $c>1$ and 0 for $c\le1$.
    Each end is pushed out by a margin: ``widen`` standard deviations of the chaotic and
    quasi-periodic tail means at that $c$ (their tail means scatter from start to start), and at
    least ``rtol`` $\cdot L^*$ (finite-tail phase of a periodic orbit and residual transients).
    For $c$ below the chaos onset (~1.74 for α = (1, 2, 4)) $L_{hi}=L^*$ up to that margin; above
    it the chaotic attractor's mean lies 1–2% *above* $L^*$ (measured), and $L_{hi}$ says so.

    Parameters
    ----------
    alphas, c_values, steps, tail, dim, backend
        As in `orbit_census`; the envelope is for runs of that length and tail.
    seeds
        Number of starts of the census behind the envelope (a rare basin, visited by fewer than
        about 1/``seeds`` of the starts, may be missed).
    widen
        Standard deviations of the chaotic tail means added on each side (>= 0).
    rtol
        Relative floor of the margin (>= 0).
    census
        A census from `orbit_census` to use instead of running one (same ``c_values``).

    Returns
    -------
    dict
        ``c``, ``lower``, ``upper``, ``equilibrium_loss`` (arrays over ``c``) and ``seeds``.
    """
    a = alphas_array(alphas)
    cs = _c_values(c_values)
    widen, rtol = _nonneg("widen", widen), _nonneg("rtol", rtol)
    if census is None:
        count = positive_int("seeds", seeds)
        census = orbit_census(a, cs, seeds=range(ENVELOPE_SEED0, ENVELOPE_SEED0 + count),
                              steps=steps, tail=tail, dim=dim, backend=backend, as_dataset=False)
    if not np.allclose(_get(census, "c"), cs):
        raise ValueError("census was run at other c values than c_values")
    loss, orbit = _get(census, "tail_loss"), _get(census, "orbit").astype(str)
    lstar = np.array([theory.equilibrium_loss(c / a.sum(), a) for c in cs])
    lower, upper = np.empty(cs.size), np.empty(cs.size)
    for i in range(cs.size):
        ok = np.isfinite(loss[i]) & ~np.isin(orbit[i], (regimes.INVALID, regimes.UNRESOLVED))
        vals = np.append(loss[i][ok], lstar[i])
        spread = orbit[i][ok]
        wander = loss[i][ok][np.isin(spread, ("chaotic", "quasi-periodic", "divergence"))]
        margin = max(widen * (wander.std(ddof=1) if wander.size > 1 else 0.0), rtol * lstar[i])
        lower[i] = max(vals.min() - margin, 0.0)
        upper[i] = vals.max() + margin
    return {"c": cs, "lower": lower, "upper": upper, "equilibrium_loss": lstar,
            "seeds": int(_get(census, "seed").size)}


def within_envelope(tail_loss, env, atol=0.0):
    r"""Which tail losses ``(C, ...)`` lie in the envelope of their $c$: a boolean array of the
    same shape.

    Parameters
    ----------
    tail_loss
        Tail losses, one row per $c$ of ``env`` (in its order).
    env
        The dict of `envelope`.
    atol
        Absolute slack on both ends.
    """
    loss = np.asarray(tail_loss, dtype=np.float64)
    lo = np.asarray(env["lower"]).reshape((-1,) + (1,) * (loss.ndim - 1))
    hi = np.asarray(env["upper"]).reshape((-1,) + (1,) * (loss.ndim - 1))
    if loss.shape[0] != lo.shape[0]:
        raise ValueError(f"tail_loss must have one row per c ({lo.shape[0]}), got shape {loss.shape}")
    return (loss >= lo - atol) & (loss <= hi + atol)
