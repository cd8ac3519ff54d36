r"""The periodic regime of conventional training: converge, spike, converge, ... (docs/conventional.md
T25, T26).

Weight decay shrinks the norm while the loss sits at zero, so the effective ELR grows until it
crosses the convergence threshold; the loss spikes and the cycle repeats. This module detects the
cycle from recorded losses (`spike_onsets`, `detect_periodic`), labels it (`PERIODIC`, in
`toymodel.regimes.LABELS`) and reads periods off batch summaries (`group_periods`); the dynamics
live in `toymodel.conventional`.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import regimes
from ._validate import positive_finite, positive_int
from .problems import SphereToy, as_problem

#: the regime label of the periodic regime (`toymodel.regimes.PERIODIC`).
PERIODIC = regimes.PERIODIC
#: a spike: loss at or above ``SPIKE_FRAC`` x random level, after a converged phase (loss at or below
#: `toymodel.regimes.CONV_RTOL` x random level). A toy group's spikes reach 30–100% of its own random
#: level $\alpha_i/2$ (docs/conventional.md, T26).
SPIKE_FRAC = 0.05
#: fewest spikes for the label `PERIODIC`.
MIN_SPIKES = 3


# -- the periodic regime ---------------------------------------------------------------------------
def spike_onsets(signal, low, high):
    r"""Boolean mask of spike onsets along axis 0: $x_t\ge$ ``high`` while the last record outside
    (``low``, ``high``) before $t$ was $\le$ ``low`` (a converged phase).

    A hysteresis: a spike counts only after the signal went back down to ``low``, so a noisy plateau
    between the two levels never counts, and the first high values of a run (its start, not a spike
    after convergence) do not either. ``low``, ``high`` broadcast against ``signal[0]``."""
    x = np.asarray(signal, dtype=np.float64)
    below, above = x <= low, x >= high
    event = np.where(below, -1, np.where(above, 1, 0))
    idx = np.arange(x.shape[0]).reshape((-1,) + (1,) * (x.ndim - 1))
    last = np.maximum.accumulate(np.where(event != 0, idx, -1), axis=0)
    prev = np.concatenate([np.full((1,) + x.shape[1:], -1), last[:-1]], axis=0)
    prev_event = np.where(prev >= 0, np.take_along_axis(event, np.maximum(prev, 0), axis=0), 0)
    return above & (prev_event == -1)


class Periodicity(NamedTuple):
    """Result of `detect_periodic`."""

    #: at least ``min_spikes`` spikes, and the last one no later than two longest intervals before
    #: the end of the window (the cycle has not stopped).
    is_periodic: bool
    #: mean interval between consecutive spike onsets, in steps (NaN with fewer than two spikes).
    period: float
    #: the steps of the spike onsets.
    spikes: np.ndarray


def _random_level(trajectory, problem, random_level, loss):
    if random_level is not None:
        return positive_finite("random_level", random_level)
    if problem is not None:
        return float(as_problem(problem).random_loss())
    params = getattr(trajectory, "params", None)
    if isinstance(params, dict) and params.get("problem") == SphereToy.kind and "alphas" in params:
        return float(np.sum(params["alphas"]) / 2.0)
    return positive_finite("the first recorded loss (random level)", loss[0])


def detect_periodic(trajectory, problem=None, *, random_level=None, tail=None,
                    conv_rtol=regimes.CONV_RTOL, spike_frac=SPIKE_FRAC, min_spikes=MIN_SPIKES):
    r"""Detect the periodic regime (converge, spike, converge, ...) on the recorded loss.

    A *spike* is an onset of `spike_onsets` with ``low`` $=$ ``conv_rtol`` $\cdot L_{rand}$ (the
    classifier's convergence level, 1e-3) and ``high`` $=$ ``spike_frac`` $\cdot L_{rand}$ (5%).
    The run is periodic if its window holds at least ``min_spikes`` spikes and the last one lies no
    more than two longest intervals before the window's end. The period is the mean interval.

    Parameters
    ----------
    trajectory
        A `ConventionalTrajectory` (or any object with ``loss`` and ``step`` traces, or a mapping
        with a ``"loss"`` entry, or a 1-D loss array, whose records are then steps 0, 1, ...).
    problem
        Gives the random level $L_{rand}$; else ``random_level``, else the toy's $\sum\alpha/2$
        from ``trajectory.params``, else the first recorded loss.
    tail
        Analyse the last ``tail`` records only (default: all; the hysteresis already ignores the
        start of a run).
    conv_rtol, spike_frac, min_spikes
        The levels and the count above.

    Returns
    -------
    Periodicity
        ``(is_periodic, period, spikes)``: spikes as steps.

    Notes
    -----
    The groups of a toy spike independently (T20), so the total loss carries the superposition of
    their spike trains: with $m$ groups in the periodic regime, each of period $T$ (T26), the
    measured period is about $T/m$, less when spikes overlap, and a group with
    $\alpha_i<0.17\sum\alpha$ may spike below ``spike_frac`` of the total random level.
    `summarize_wd_batch` counts per group.
    """
    if isinstance(trajectory, dict):
        loss = np.asarray(trajectory["loss"], dtype=np.float64)
        steps = np.asarray(trajectory.get("step", np.arange(loss.size)))
    elif hasattr(trajectory, "loss"):
        loss = np.asarray(trajectory.loss, dtype=np.float64)
        steps = np.asarray(getattr(trajectory, "step", np.arange(loss.size)))
    else:
        loss = np.asarray(trajectory, dtype=np.float64)
        steps = np.arange(loss.size)
    if loss.ndim != 1 or loss.size == 0:
        raise ValueError(f"the loss trace must be a non-empty 1-D array, got shape {loss.shape}")
    min_spikes = positive_int("min_spikes", min_spikes, minimum=1)
    if not 0 < conv_rtol < spike_frac:
        raise ValueError(f"need 0 < conv_rtol < spike_frac, got conv_rtol={conv_rtol!r}, "
                         f"spike_frac={spike_frac!r}")
    rand = _random_level(trajectory, problem, random_level, loss)
    if tail is not None:
        tail = positive_int("tail", tail)
        if tail > loss.size:
            raise ValueError(f"tail must be an integer in [1, {loss.size}], got {tail!r}")
        loss, steps = loss[-tail:], steps[-tail:]
    onsets = steps[spike_onsets(loss, conv_rtol * rand, spike_frac * rand)]
    if onsets.size < 2:
        return Periodicity(False, float("nan"), onsets)
    gaps = np.diff(onsets)
    # spikes go on to the end: a run that stopped spiking (it converged for good) is not periodic
    ongoing = steps[-1] - onsets[-1] <= 2 * gaps.max()
    return Periodicity(bool(onsets.size >= min_spikes and ongoing), float(gaps.mean()), onsets)


def classify_wd(trajectory, problem=None, *, tail=None, **kw) -> str:
    """The regime of a conventional run: `PERIODIC` if `detect_periodic` finds it (on the whole
    trace), else `toymodel.regimes.classify` on the tail (``kw`` go to `detect_periodic`)."""
    if detect_periodic(trajectory, problem, **kw).is_periodic:
        return PERIODIC
    return regimes.classify(trajectory, problem, tail=tail)


def classify_wd_summary(summary, random_level, *, tail_steps=None, min_spikes=MIN_SPIKES):
    """Labels of `summarize_wd_batch` results: `PERIODIC` where the tail holds at least
    ``min_spikes`` spikes of the total loss, else `toymodel.regimes.classify_summary` on the tail
    loss (with the too-little-motion rule when ``tail_steps`` is given). Returns ``(labels, reasons)``."""
    kw = {} if tail_steps is None else {"tail_angle": summary["tail_angle"], "tail_steps": tail_steps}
    labels, reasons = regimes.classify_summary(summary["tail_loss"], random_level, **kw)
    periodic = (np.asarray(summary["n_spikes"]) >= min_spikes) & (labels != regimes.INVALID)
    labels = np.where(periodic, PERIODIC, labels).astype("<U19")
    reasons = np.where(periodic, "", reasons)
    return labels, reasons


def group_periods(summary) -> np.ndarray:
    """Mean spike interval of every group from `summarize_wd_batch` summaries, ``(B, n)`` steps
    (NaN for groups with fewer than two spikes in the tail)."""
    cnt = np.asarray(summary["group_n_spikes"])
    span = np.asarray(summary["group_last_spike"]) - np.asarray(summary["group_first_spike"])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt >= 2, span / np.maximum(cnt - 1, 1), np.nan)


__all__ = ["MIN_SPIKES", "PERIODIC", "Periodicity", "SPIKE_FRAC", "classify_wd", "classify_wd_summary",
           "detect_periodic", "group_periods", "spike_onsets"]
