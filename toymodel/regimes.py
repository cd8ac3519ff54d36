r"""Regime classification from observed dynamics, one classifier for the toy, the scans and networks.

The classifier never consults `toymodel.theory`: it judges the tail of a run against the
run's *random level* $L_{rand}$ (the loss of a scrambled direction: ``problem.random_loss()``
for a toy, the loss at initialisation for a network). With tail-mean loss $\bar L$:

* ``"invalid"``: the run produced non-finite numbers, a negative tail loss (below
  $-$``conv_rtol``$\cdot L_{rand}$; a scale-invariant toy's loss is $\ge0$, so this is a
  bug in the caller, not a regime) or a random level that is not positive and finite; the reason
  says which;
* ``"convergence"``: $\bar L\le$ ``conv_rtol`` $\cdot L_{rand}$ (default 1e-3): the loss
  went to (numerical) zero, the effective gradient with it;
* ``"unresolved"``: the run has not settled, so no regime can be read off it (the reason says
  why and what to do). Two rules, both applied only to runs that did not converge:

  - *too little motion*: in the equilibrium and divergence regimes the direction turns by a
    macroscopic angle every step (T6, T12: $\arctan\sqrt{c^2-1}$ per step at the equilibrium).
    A run whose tail turned by less than ``MIN_TAIL_ROTATION`` (1 rad) in all, i.e. mean angle per
    step $\times$ tail steps $<1$, is still on its way from the start: typically a tiny ELR, or
    too few steps. `classify_summary` applies it when given ``tail_angle`` and ``tail_steps``;
    `classify` and `explain` when the run records an ``angle`` trace (a toy `Trajectory`);
  - *still trending* (`classify` and `explain`, from the loss trace): split the tail into
    quarters with means $m_1..m_4$; if $|m_4-m_1|>$ ``TREND_RTOL`` $\cdot\bar L$ (5%) and
    $|m_4-m_1|>$ ``TREND_NSIGMA`` (3) times the smaller of the first and last quarters' standard
    deviations (the fluctuation level at either end of the tail), the loss is still falling
    or rising through the tail. Needs a tail of at least 8 records.
* ``"divergence"``: $\bar L\ge$ ``div_frac`` $\cdot L_{rand}$ (default 0.9): the
  optimiser learns nothing; every step turns the weights by a large angle and scrambles them;
* ``"chaotic_equilibrium"``: anything in between: a loss plateau strictly between zero and random.

Why these criteria: the loss is the one observable every setting has (toy, scan summaries,
networks); the effective gradient and the angle per step are reported next to the label but they
grow smoothly through the equilibrium (in the toy $\tan\Delta=\sqrt{c^2-1}$ already reaches
82° at $\tilde\eta=1/\min\alpha$ for α = (1, 2, 4)), so they draw no sharper line; the angle
serves only to tell "not settled yet" from a regime.
The convergence boundary $1/\sum\alpha_i$ is sharp and the labels agree with
`toymodel.theory.predict_regime` away from it; the equilibrium→divergence passage near
$1/\min\alpha_i$ is smooth in the toy, and there the labels and the prediction disagree in a
band whose width depends on ``div_frac``: that disagreement is real, not a bug (docs/theory.md).
"""
from __future__ import annotations

import numpy as np

REGIMES = ("convergence", "chaotic_equilibrium", "divergence")
INVALID = "invalid"
UNRESOLVED = "unresolved"
#: conventional training (weight decay, no projection) that keeps converging and spiking: found by
#: `toymodel.conventional.detect_periodic` (docs/conventional.md T25), not by the tail rules here.
PERIODIC = "periodic"
#: every label; the order is fixed (saved figures index into it), new labels go at the end.
LABELS = REGIMES + (INVALID, UNRESOLVED, PERIODIC)
CONV_RTOL = 1e-3
DIV_FRAC = 0.9
#: radians: a non-converged run whose tail turned by less than this in all has not settled.
MIN_TAIL_ROTATION = 1.0
#: a tail whose last-quarter mean differs from its first-quarter mean by more than this fraction
#: of the tail mean (and by more than ``TREND_NSIGMA`` fluctuations) is still trending.
TREND_RTOL = 0.05
TREND_NSIGMA = 3.0
#: the shortest tail (records) on which the trend rule is applied: quarters of two records.
TREND_MIN_TAIL = 8


def _check_criteria(conv_rtol, div_frac):
    if not (0 < conv_rtol < div_frac < np.inf):
        raise ValueError(f"need 0 < conv_rtol < div_frac, got conv_rtol={conv_rtol!r}, "
                         f"div_frac={div_frac!r}")


# -- integer codes: a scan stores one byte per cell, decoded to the labels on demand ------------------
#: label -> code, the label's index in `LABELS` (fixed order, new labels at the end: a stored code
#: keeps its meaning).
REGIME_CODES = {label: i for i, label in enumerate(LABELS)}
#: the code of a cell not computed yet (an unfinished store); it decodes to ``""``.
NOT_COMPUTED = -1
#: ``_DECODE[code]``: index -1 (`NOT_COMPUTED`) is the last entry, ``""``.
_DECODE = np.array(LABELS + ("",))
_CONV, _CHAOS, _DIV = (REGIME_CODES[r] for r in REGIMES)
_INVALID, _UNRESOLVED = REGIME_CODES[INVALID], REGIME_CODES[UNRESOLVED]


def flag_attrs() -> dict:
    """CF attributes of a variable of regime codes: ``flag_values`` (int8 0..5) and
    ``flag_meanings`` (the `LABELS`, blank-separated, in code order)."""
    return {"flag_values": np.arange(len(LABELS), dtype=np.int8), "flag_meanings": " ".join(LABELS),
            "comment": f"{NOT_COMPUTED}: not computed yet (an unfinished store)"}


def encode(labels) -> np.ndarray:
    """Regime labels -> int8 codes (`REGIME_CODES`; ``""`` -> `NOT_COMPUTED`); an integer array
    is taken as codes already and returned as int8. Vectorised: one comparison per label."""
    arr = np.asarray(labels)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < NOT_COMPUTED or arr.max() >= len(LABELS)):
            raise ValueError(f"regime codes must be in [{NOT_COMPUTED}, {len(LABELS) - 1}], got "
                             f"{int(arr.min())}..{int(arr.max())}")
        return arr.astype(np.int8, copy=False)
    arr = arr.astype(str)
    out = np.full(arr.shape, NOT_COMPUTED, np.int8)
    for label, code in REGIME_CODES.items():
        out[arr == label] = code
    unknown = (out == NOT_COMPUTED) & (arr != "")
    if unknown.any():
        raise ValueError(f"unknown regime labels {sorted(set(arr[unknown].tolist()))}; known: {LABELS}")
    return out


def decode(codes) -> np.ndarray:
    """int8 codes -> label strings (``<U19``; `NOT_COMPUTED` -> ``""``); strings pass unchanged."""
    arr = np.asarray(codes)
    if arr.dtype.kind in "US":
        return arr.astype(str)
    codes = encode(arr)
    return _DECODE[codes.reshape(-1)].reshape(codes.shape)  # 0-d stays an array


def classify_codes(tail_loss, random_loss, *, invalid=None, tail_angle=None, tail_steps=None,
                   conv_rtol=CONV_RTOL, div_frac=DIV_FRAC) -> np.ndarray:
    """The labels of `classify_summary` as int8 codes (`REGIME_CODES`), without the reasons:
    whole-array operations only, for the scans (`summary_reasons` derives the reasons later).

    ``invalid`` is a boolean mask (same shape) of cells a kernel could not compute (a scan's
    ``status != 0``); the other arguments as in `classify_summary`."""
    _check_criteria(conv_rtol, div_frac)
    if (tail_angle is None) != (tail_steps is None):
        raise ValueError("give tail_angle and tail_steps together (the rotation over the tail is "
                         f"their product), got tail_angle={tail_angle!r}, tail_steps={tail_steps!r}")
    loss, rand = np.broadcast_arrays(np.asarray(tail_loss, dtype=np.float64),
                                     np.asarray(random_loss, dtype=np.float64))
    with np.errstate(all="ignore"):
        ratio = loss / rand
        codes = np.where(ratio <= conv_rtol, _CONV, np.where(ratio >= div_frac, _DIV, _CHAOS))
        codes = codes.astype(np.int8)
        if tail_angle is not None:
            if (isinstance(tail_steps, bool) or not isinstance(tail_steps, (int, np.integer))
                    or tail_steps < 1):
                raise ValueError(f"tail_steps must be an integer >= 1, got {tail_steps!r}")
            angle = np.broadcast_to(np.asarray(tail_angle, dtype=np.float64), codes.shape)
            codes[(codes != _CONV) & np.isfinite(angle) & (angle * tail_steps < MIN_TAIL_ROTATION)] = _UNRESOLVED
        bad = ~(np.isfinite(rand) & (rand > 0)) | ~np.isfinite(loss) | (loss < -conv_rtol * rand)
    if invalid is not None:
        bad = bad | np.asarray(invalid, dtype=bool)
    codes[bad] = _INVALID
    return codes


def _motion_reasons(angle) -> np.ndarray:
    """``"moved X° per step in the tail; ..."`` for each angle (radians), at most 63 characters."""
    deg = np.degrees(np.asarray(angle, dtype=np.float64))
    shown = np.char.mod("%.2g", deg).astype(object)
    shown[~((deg >= 1e-3) | (deg == 0))] = "<0.001"
    return "moved " + shown + "° per step in the tail; run longer or raise the ELR"


def summary_reasons(codes, tail_loss, random_loss, *, invalid_reason=None, tail_angle=None,
                    conv_rtol=CONV_RTOL) -> np.ndarray:
    """The reason of every cell labelled ``codes`` (`classify_codes`), an object array: ``""`` for
    a regime; for an unresolved cell the angle it moved per step; for an invalid cell the first that
    applies of ``invalid_reason`` (the kernel's, ``""`` where none), a random level that is not
    positive and finite, a non-finite tail loss, a negative tail loss. Only flagged cells are formatted."""
    codes = np.asarray(codes)
    loss, rand = np.broadcast_arrays(np.asarray(tail_loss, dtype=np.float64),
                                     np.asarray(random_loss, dtype=np.float64))
    reasons = np.full(codes.shape, "", dtype=object)
    still = codes == _UNRESOLVED
    if tail_angle is not None and still.any():
        reasons[still] = _motion_reasons(np.broadcast_to(tail_angle, codes.shape)[still])
    bad = codes == _INVALID
    if not bad.any():
        return reasons
    given = (np.broadcast_to(np.asarray(invalid_reason, dtype=object), codes.shape)[bad]
             if invalid_reason is not None else np.full(int(bad.sum()), "", dtype=object))
    lo, ra = loss[bad], rand[bad]
    text = np.where(given.astype(bool), given, "")
    with np.errstate(all="ignore"):
        rules = ((~(np.isfinite(ra) & (ra > 0)),
                  lambda i: f"random level must be positive and finite, got {float(ra[i])!r}"),
                 (~np.isfinite(lo), lambda i: "non-finite tail loss"),
                 (lo < -conv_rtol * ra, lambda i: f"negative tail loss {float(lo[i]):.6g}; losses must be >= 0"))
    for hit, say in rules:
        for i in np.flatnonzero(hit & (text == "")):
            text[i] = say(i)
    reasons[bad] = text
    return reasons


def classify_summary(tail_loss, random_loss, *, invalid_reason=None, tail_angle=None,
                     tail_steps=None, conv_rtol=CONV_RTOL, div_frac=DIV_FRAC):
    """Vectorised classifier on summaries: returns ``(labels, reasons)`` string arrays.

    ``tail_loss`` and ``random_loss`` broadcast; ``invalid_reason`` (same shape, ``""`` where
    valid) marks cells a kernel could not compute. A NaN tail loss without a reason is invalid with
    reason ``"non-finite tail loss"``; a NaN never reaches a regime label. A tail loss below
    ``-conv_rtol`` times the random level, or a random level that is not positive and finite, is
    invalid too (rounding may leave a converged loss a hair below zero; more is a bug).

    ``tail_angle`` (the mean angle per step over the tail, radians, broadcast like ``tail_loss``)
    and ``tail_steps`` (the number of steps in the tail, an int) are given together or not at all;
    with them, a valid cell that did not converge and turned by less than `MIN_TAIL_ROTATION`
    over the tail is ``"unresolved"`` (module docstring).

    The labels are `classify_codes` decoded, the reasons `summary_reasons`.
    """
    shape = np.broadcast_shapes(np.shape(tail_loss), np.shape(random_loss))
    marked = None
    if invalid_reason is not None:
        marked = np.broadcast_to(np.asarray(invalid_reason, dtype=object), shape).astype(bool)
    codes = classify_codes(tail_loss, random_loss, invalid=marked, tail_angle=tail_angle,
                           tail_steps=tail_steps, conv_rtol=conv_rtol, div_frac=div_frac)
    reasons = summary_reasons(codes, tail_loss, random_loss, invalid_reason=invalid_reason,
                              tail_angle=tail_angle, conv_rtol=conv_rtol)
    return decode(codes), reasons.astype(str)


def _trend(tail_loss):
    """Relative change ``(m4 - m1) / mean`` of a tail that is still trending, else ``None``."""
    if tail_loss.size < TREND_MIN_TAIL:
        return None
    scale = np.max(np.abs(tail_loss))
    if not (np.isfinite(scale) and scale > 0):
        return None
    x = tail_loss / scale  # scaled to [-1, 1]: the variance of a loss near 1e300 cannot overflow
    q = np.array_split(x, 4)
    change = q[-1].mean() - q[0].mean()
    level = abs(x.mean())
    noise = min(q[0].std(), q[-1].std())
    if abs(change) > TREND_RTOL * level and abs(change) > TREND_NSIGMA * noise:
        return change / level
    return None


def _judge(trajectory, problem, tail, random_level, conv_rtol, div_frac):
    """Label and reason of one run: `classify_summary` on the tail mean, then the trend rule."""
    loss, tail, rand = _tail_and_level(trajectory, problem, tail, random_level)
    window = loss[-tail:]
    kw = {}
    angle = _angle_trace(trajectory)
    if angle is not None:
        steps = tail
        params = getattr(trajectory, "params", None)
        if isinstance(params, dict):  # records are every k-th step: the tail spans tail*k steps
            steps = tail * int(params.get("record_every", 1))
        kw = {"tail_angle": float(np.mean(angle[-tail:])), "tail_steps": steps}
    label, reason = classify_summary(window.mean(), rand, conv_rtol=conv_rtol, div_frac=div_frac,
                                     **kw)
    label, reason = str(label), str(reason)
    if label in (REGIMES[1], REGIMES[2]):
        change = _trend(window)
        if change is not None:
            label = UNRESOLVED
            reason = (f"loss still {'falling' if change < 0 else 'rising'} by "
                      f"{abs(change) * 100:.2g}% through the tail; run longer")
    return label, reason, loss, tail, rand


def _angle_trace(trajectory):
    """The per-step angle trace of a toy `Trajectory` (or look-alike), else ``None``.

    Datasets and mappings (network runs) are skipped: their ``angle`` is a per-epoch mean, and a
    tail of epochs is not a number of steps."""
    if isinstance(trajectory, dict) or hasattr(trajectory, "data_vars"):
        return None
    angle = getattr(trajectory, "angle", None)
    if angle is None:
        return None
    angle = np.asarray(angle, dtype=np.float64)
    return angle if angle.ndim == 1 and angle.size else None


def classify(trajectory, problem=None, *, tail=None, random_level=None, conv_rtol=CONV_RTOL,
             div_frac=DIV_FRAC) -> str:
    """The regime of one run, from the tail of its loss trace (criteria in the module docstring).

    ``trajectory`` needs a ``loss`` trace (a `toymodel.dynamics.Trajectory`, or any object
    or mapping with one, such as a network run's dataset). The random level is ``random_level`` if
    given, else ``problem.random_loss()``, else the first recorded loss (a network's loss at
    initialisation). ``tail`` defaults to the last 10% of the records. The ``"unresolved"`` rules
    apply: too little motion (when the run records an ``angle`` trace) and a still-trending loss.
    `explain` gives the reason.
    """
    return _judge(trajectory, problem, tail, random_level, conv_rtol, div_frac)[0]


def _tail_and_level(trajectory, problem, tail, random_level):
    """The validated loss trace, tail length and random level that `classify` judges by."""
    loss = np.asarray(trajectory["loss"] if isinstance(trajectory, dict) or hasattr(trajectory, "data_vars")
                      else trajectory.loss, dtype=np.float64)
    if loss.ndim != 1 or loss.size == 0:
        raise ValueError(f"the loss trace must be a non-empty 1-D array, got shape {loss.shape}")
    if tail is None:
        tail = max(1, loss.size // 10)
    if not (isinstance(tail, (int, np.integer)) and 1 <= tail <= loss.size):
        raise ValueError(f"tail must be an integer in [1, {loss.size}], got {tail!r}")
    if random_level is None:
        random_level = problem.random_loss() if problem is not None else float(loss[0])
    if not (np.isfinite(random_level) and random_level > 0):
        raise ValueError(f"random_level must be a positive finite number, got {random_level!r}")
    return loss, tail, random_level


def explain(trajectory, problem=None, *, tail=None, random_level=None, conv_rtol=CONV_RTOL,
            div_frac=DIV_FRAC) -> dict:
    """The label, its reason (``""`` for a regime) and the observables behind it (tail loss /
    random level, effective gradient, angle, rotation over the tail)."""
    label, reason, loss, tail, rand = _judge(trajectory, problem, tail, random_level, conv_rtol,
                                             div_frac)
    out = {"regime": label, "reason": reason,
           "tail_loss": float(loss[-tail:].mean()), "random_level": float(rand),
           "loss_ratio": float(loss[-tail:].mean() / rand)}
    for name in ("grad_norm", "angle"):
        if hasattr(trajectory, name):
            out["tail_" + name] = float(np.mean(getattr(trajectory, name)[-tail:]))
    if hasattr(trajectory, "shares"):
        out["min_share"] = float(np.min(trajectory.shares[-tail:]))
    return out
