r"""The convergence boundary of heavy-ball momentum along the total ELR (docs/momentum.md T44, T48).

Owns the search for every convergence crossing of one start (`locate_total_threshold`, a
`Boundary`) or of many (`momentum_boundary_band`, a `BoundaryBand`), its
`MultipleCrossingsWarning`, and the box counting of a boundary image (`boundary_box_counts`,
`box_counting_dimension`). Runs go through `toymodel._momentum_batch`; every public name is
re-exported by `toymodel.momentum`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from . import dynamics
from ._momentum_batch import _check_seeds, converged, summarize_momentum_batch
from ._momentum_checks import CONVERGED_LOSS, check_mode, check_momentum
from ._validate import alphas_array, positive_finite, positive_int
from .problems import SphereToy


class MultipleCrossingsWarning(UserWarning):
    """The bracket of a boundary search holds more than one convergence crossing."""


# -- the boundary of one start, and the band over starts -----------------------------------------------
@dataclass
class Boundary:
    r"""The convergence boundary of one initial state along the total ELR (`locate_total_threshold`).

    ``elr`` is the first crossing (the top of the converging interval that starts at the
    bracket's low end); ``crossings_elr`` lists every crossing found, in increasing order, with
    ``directions`` +1 (stops converging) or -1 (converges again); ``hidden`` counts crossings
    that appeared only while refining (a grid can miss pairs of crossings between two points).
    ``grid_elr``/``grid_converged`` are the initial scan. ``c`` properties multiply by $\sum\alpha$.
    """

    elr: float
    crossings_elr: np.ndarray
    directions: np.ndarray
    hidden: int
    grid_elr: np.ndarray
    grid_converged: np.ndarray
    alphas: np.ndarray
    momentum: float
    momentum_mode: str
    seed: int

    @property
    def c(self) -> float:
        r"""The first crossing as $c=\tilde\eta\sum\alpha$."""
        return float(self.elr * self.alphas.sum())

    @property
    def crossings_c(self) -> np.ndarray:
        """Every crossing as $c$."""
        return self.crossings_elr * self.alphas.sum()

    @property
    def is_interval(self) -> bool:
        """True when exactly one crossing was found (the converging ELRs look like an interval)."""
        return self.crossings_elr.size == 1 and self.hidden == 0


def _converges_cells(problem, theta0, elr, beta, mode, steps, tail, tol, stable):
    """Converged-or-not of a batch of runs (the one place the boundary search simulates)."""
    out = summarize_momentum_batch(problem, theta0, elr, beta, steps=steps, tail=tail,
                                   momentum_mode=mode)
    return converged(out, tol, stable)


def _locate_many(a, beta, seeds, mode, c_lo, c_hi, grid, rtol, points, steps, tail, tol, stable,
                 dim):
    """Grid scan then simultaneous refinement of every crossing of every seed (one batch a round)."""
    problem = SphereToy(a, dim=dim)
    th0 = dynamics.initial_states(problem, seeds)
    S = len(seeds)
    suma = a.sum()

    def run(c_vals, seed_idx):
        return _converges_cells(problem, th0[seed_idx], c_vals / suma, beta, mode, steps, tail,
                                tol, stable)

    cg = np.geomspace(c_lo, c_hi, grid)
    okg = run(np.tile(cg, S), np.repeat(np.arange(S), grid)).reshape(S, grid)
    # every sign change of the grid is one bracket [lo, hi] with its direction
    brackets = []  # (seed index, lo, hi, direction: +1 converge->not, -1 not->converge)
    for s in range(S):
        for j in np.flatnonzero(okg[s, 1:] != okg[s, :-1]):
            brackets.append([s, cg[j], cg[j + 1], 1 if okg[s, j] else -1])
    hidden = np.zeros(S, int)
    while brackets and max(hi / lo - 1 for _, lo, hi, _ in brackets) > rtol:
        live = [b for b in brackets if b[2] / b[1] - 1 > rtol]
        cs = np.concatenate([np.geomspace(lo, hi, points + 2)[1:-1] for _, lo, hi, _ in live])
        idx = np.repeat([b[0] for b in live], points)
        ok = run(cs, idx).reshape(len(live), points)
        for b, row, cv in zip(live, ok, cs.reshape(len(live), points)):
            s, lo, hi, dirn = b
            before = dirn == 1  # the outcome at lo
            seq = np.concatenate([[before], row, [not before]])
            changes = np.flatnonzero(seq[1:] != seq[:-1])
            # an odd number of changes always; more than one means crossings the grid missed
            hidden[s] += changes.size - 1
            j = changes[0]
            ends = np.concatenate([[lo], cv, [hi]])
            b[1], b[2] = ends[j], ends[j + 1]
    results = []
    for s in range(S):
        mine = sorted((np.sqrt(lo * hi), d) for t, lo, hi, d in brackets if t == s)
        cx = np.array([m[0] for m in mine])
        dirs = np.array([m[1] for m in mine], int)
        results.append((cx / suma, dirs, int(hidden[s]), cg / suma, okg[s]))
    return results


def _locate_checks(alphas, momentum, momentum_mode, lo, hi, grid, rtol, points, steps, tail):
    a = alphas_array(alphas)
    beta = check_momentum(momentum)
    mode = check_mode(momentum_mode)
    # defaults in c: convergence is certain well below 1 and impossible above 1 + beta (T43, T44)
    c_lo = 0.5 if lo is None else positive_finite("lo", lo) * a.sum()
    c_hi = (1.0 + beta) * 1.02 if hi is None else positive_finite("hi", hi) * a.sum()
    if not c_lo < c_hi:
        raise ValueError(f"need lo < hi, got lo={c_lo / a.sum()!r}, hi={c_hi / a.sum()!r}")
    grid = positive_int("grid", grid, minimum=2)
    points = positive_int("points", points, minimum=1)
    rtol = positive_finite("rtol", rtol)
    steps = positive_int("steps", steps)
    tail = positive_int("tail", tail)
    if tail > steps:
        raise ValueError(f"tail must be <= steps ({steps}), got {tail}")
    return a, beta, mode, c_lo, c_hi, grid, rtol, points, steps, tail


def _boundary(r, a, beta, mode, seed):
    cx, dirs, hidden, gelr, gok = r
    if cx.size == 0:
        raise ValueError(f"seed {seed}: no convergence crossing in the bracket "
                         f"(converged everywhere: {bool(gok.all())}); widen it or add steps")
    return Boundary(elr=float(cx[0]), crossings_elr=cx, directions=dirs, hidden=hidden,
                    grid_elr=gelr, grid_converged=gok, alphas=a, momentum=beta,
                    momentum_mode=mode, seed=seed)


def _warn_multiple(b: Boundary):
    if not b.is_interval:
        warnings.warn(
            f"seed {b.seed}, momentum {b.momentum:g} ({b.momentum_mode}): the bracket holds "
            f"{b.crossings_elr.size + b.hidden} convergence crossings "
            f"(c = {', '.join(f'{x:.4g}' for x in b.crossings_c)}"
            f"{f', +{b.hidden} found while refining' if b.hidden else ''}); the converging "
            f"ELRs are not an interval. Boundary.elr is the first; see Boundary.crossings_elr",
            MultipleCrossingsWarning, stacklevel=3)


def locate_total_threshold(alphas, momentum=0.0, momentum_mode="official", seed=0, lo=None,
                           hi=None, grid=48, rtol=1e-3, points=3, steps=20000, tail=2000,
                           tol=CONVERGED_LOSS, stable=True, dim=2) -> Boundary:
    r"""The total ELR at which heavy-ball momentum from one initial state stops converging,
    reporting every crossing (the converging set need not be an interval, T44).

    First a grid of ``grid`` ELRs log-spaced over ``[lo, hi]`` (one batch) marks every change of
    outcome (converged = tail-mean loss below ``tol``); then every change is refined at once,
    ``points`` ELRs per bracket and round, until ``hi/lo - 1 < rtol``. A change that splits into
    several while refining is counted in `Boundary.hidden`. Unlike
    `toymodel.solvers.locate_total_threshold` nothing assumes one crossing.

    Parameters
    ----------
    alphas
        Curvatures of `SphereToy(alphas, dim)`.
    momentum, momentum_mode
        $\beta\in[0,1)$ and ``"official"`` / ``"transport"`` (`simulate_momentum`).
    seed
        Seed of the initial state (`toymodel.dynamics.initial_state`).
    lo, hi
        Bracket as total ELRs; default $c\in[0.5,\,1.02(1+\beta)]$ (above $1+\beta$ nothing
        converges, T43).
    grid, rtol, points, steps, tail, tol
        Scan resolution, relative width of the final brackets, ELRs per bracket and round, run
        length, tail window, convergence criterion.

    Returns
    -------
    Boundary
        ``elr`` the first crossing (midpoint of its final bracket), every crossing, the grid.

    Warns
    -----
    MultipleCrossingsWarning
        When more than one crossing is found.

    Raises
    ------
    ValueError
        On bad input, or when the bracket holds no crossing.
    """
    args = _locate_checks(alphas, momentum, momentum_mode, lo, hi, grid, rtol, points, steps, tail)
    a, beta, mode = args[:3]
    seed = positive_int("seed", seed, minimum=0)
    r = _locate_many(a, beta, [seed], mode, *args[3:], tol=tol, stable=stable, dim=dim)[0]
    b = _boundary(r, a, beta, mode, seed)
    _warn_multiple(b)
    return b


@dataclass
class BoundaryBand:
    """First crossings of several seeds (`momentum_boundary_band`); ``c_*`` in units of $c$."""

    seeds: list
    boundaries: list
    alphas: np.ndarray
    momentum: float
    momentum_mode: str

    @property
    def c(self) -> np.ndarray:
        """First crossing of every seed, as $c$."""
        return np.array([b.c for b in self.boundaries])

    @property
    def c_min(self) -> float:
        """Lowest crossing of any seed (any direction): below it every seed converges."""
        return float(min(b.crossings_c.min() for b in self.boundaries))

    @property
    def c_max(self) -> float:
        """Highest crossing of any seed: above it no seed converges."""
        return float(max(b.crossings_c.max() for b in self.boundaries))

    @property
    def n_not_interval(self) -> int:
        """Seeds whose converging ELRs are not an interval."""
        return sum(not b.is_interval for b in self.boundaries)


def momentum_boundary_band(alphas, momentum, seeds, momentum_mode="official", lo=None, hi=None,
                           grid=48, rtol=1e-3, points=3, steps=20000, tail=2000,
                           tol=CONVERGED_LOSS, stable=True, dim=2) -> BoundaryBand:
    r"""`locate_total_threshold` for every seed at once (one batch per round); the band
    ``[c_min, c_max]`` holds every crossing of every seed.

    Parameters are those of `locate_total_threshold`, with ``seeds`` a sequence. Warns once
    (`MultipleCrossingsWarning`) naming the seeds whose converging set is not an interval.
    """
    args = _locate_checks(alphas, momentum, momentum_mode, lo, hi, grid, rtol, points, steps, tail)
    a, beta, mode = args[:3]
    seeds = _check_seeds(seeds)
    res = _locate_many(a, beta, seeds, mode, *args[3:], tol=tol, stable=stable, dim=dim)
    bounds = [_boundary(r, a, beta, mode, s) for r, s in zip(res, seeds)]
    band = BoundaryBand(seeds=seeds, boundaries=bounds, alphas=a, momentum=beta,
                        momentum_mode=mode)
    bad = [b.seed for b in bounds if not b.is_interval]
    if bad:
        warnings.warn(f"momentum {beta:g} ({mode}): seeds {bad} have more than one convergence "
                      f"crossing; the band covers all of them", MultipleCrossingsWarning,
                      stacklevel=2)
    return band


# -- box counting ---------------------------------------------------------------------------------
def boundary_box_counts(outcome, scales=None):
    r"""Box counts of the boundary of a boolean 1-D or 2-D image (Sohl-Dickstein's trainability
    fractals). A cell is a boundary cell when its next neighbour along an axis has the other
    outcome; $N(\ell)$ is the number of non-overlapping boxes of $\ell$ cells per side (default
    powers of two up to an eighth of the shorter side) that hold a boundary cell. The box-counting dimension is the slope of
    $\log N(\ell)$ against $\log(1/\ell)$ (`box_counting_dimension`): 0 for isolated points,
    1 for a smooth curve in 2-D (or an interval filled with crossings in 1-D).

    Returns ``(scales, counts)``."""
    x = np.asarray(outcome, dtype=bool)
    if x.ndim not in (1, 2) or min(x.shape) < 2:
        raise ValueError(f"outcome must be a 1-D or 2-D array of at least 2 cells a side, got "
                         f"shape {x.shape}")
    edge = np.zeros(x.shape, bool)
    for ax in range(x.ndim):
        diff = np.diff(x, axis=ax)
        sl = [slice(None)] * x.ndim
        sl[ax] = slice(0, -1)
        edge[tuple(sl)] |= diff
    size = min(x.shape)
    if scales is None:
        # at least 8 boxes a side: coarser boxes count the image's edges more than the boundary
        scales = 2 ** np.arange(0, max(int(np.log2(size)) - 2, 1))
    counts = []
    for l in (int(v) for v in scales):
        shape = [dim // l for dim in x.shape]
        e = edge[tuple(slice(0, k * l) for k in shape)]
        e = e.reshape([v for k in shape for v in (k, l)])
        counts.append(int(e.any(axis=tuple(range(1, 2 * x.ndim, 2))).sum()))
    return np.asarray(scales), np.asarray(counts)


def box_counting_dimension(scales, counts, fit=None) -> float:
    r"""Slope of $\log N$ against $\log(1/\ell)$ over the scales selected by ``fit`` (a slice or
    mask; default all with $N>0$)."""
    s, n = np.asarray(scales, float), np.asarray(counts, float)
    sel = (n > 0) if fit is None else np.zeros(s.size, bool)
    if fit is not None:
        sel[fit] = True
        sel &= n > 0
    return float(np.polyfit(np.log(1.0 / s[sel]), np.log(n[sel]), 1)[0])
