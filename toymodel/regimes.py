r"""Regime classification from observed dynamics, one classifier for the toy, the scans and networks.

The classifier never consults `toymodel.theory`: it judges the tail of a run against the
run's *random level* $L_{rand}$ (the loss of a scrambled direction: ``problem.random_loss()``
for a toy, the loss at initialisation for a network). With tail-mean loss $\bar L$:

* ``"invalid"``: the run produced non-finite numbers (the reason says which);
* ``"convergence"``: $\bar L\le$ ``conv_rtol`` $\cdot L_{rand}$ (default 1e-3): the loss
  went to (numerical) zero, the effective gradient with it;
* ``"divergence"``: $\bar L\ge$ ``div_frac`` $\cdot L_{rand}$ (default 0.9): the
  optimiser learns nothing; every step turns the weights by a large angle and scrambles them;
* ``"chaotic_equilibrium"``: anything in between: a loss plateau strictly between zero and random.

Why these criteria: the loss is the one observable every setting has (toy, scan summaries,
networks); the effective gradient and the angle per step are reported next to the label but they
grow smoothly through the equilibrium (in the toy $\tan\Delta=\sqrt{c^2-1}$ already reaches
82° at $\tilde\eta=1/\min\alpha$ for α = (1, 2, 4)), so they draw no sharper line.
The convergence boundary $1/\sum\alpha_i$ is sharp and the labels agree with
`toymodel.theory.predict_regime` away from it; the equilibrium→divergence passage near
$1/\min\alpha_i$ is smooth in the toy, and there the labels and the prediction disagree in a
band whose width depends on ``div_frac``: that disagreement is real, not a bug (docs/theory.md).
"""
from __future__ import annotations

import numpy as np

REGIMES = ("convergence", "chaotic_equilibrium", "divergence")
INVALID = "invalid"
LABELS = REGIMES + (INVALID,)
CONV_RTOL = 1e-3
DIV_FRAC = 0.9


def _check_criteria(conv_rtol, div_frac):
    if not (0 < conv_rtol < div_frac < np.inf):
        raise ValueError(f"need 0 < conv_rtol < div_frac, got conv_rtol={conv_rtol!r}, "
                         f"div_frac={div_frac!r}")


def classify_summary(tail_loss, random_loss, *, invalid_reason=None, conv_rtol=CONV_RTOL,
                     div_frac=DIV_FRAC):
    """Vectorised classifier on summaries: returns ``(labels, reasons)`` string arrays.

    ``tail_loss`` and ``random_loss`` broadcast; ``invalid_reason`` (same shape, ``""`` where
    valid) marks cells a kernel could not compute. A NaN tail loss without a reason is invalid with
    reason ``"non-finite tail loss"``; a NaN never reaches a regime label.
    """
    _check_criteria(conv_rtol, div_frac)
    loss = np.asarray(tail_loss, dtype=np.float64)
    rand = np.broadcast_to(np.asarray(random_loss, dtype=np.float64), loss.shape)
    ratio = loss / rand
    labels = np.where(ratio <= conv_rtol, "convergence",
                      np.where(ratio >= div_frac, "divergence", "chaotic_equilibrium")).astype("<U19")
    reasons = np.empty(loss.shape, dtype=object)
    reasons[...] = ""
    bad = ~np.isfinite(ratio)
    if invalid_reason is not None:
        given = np.broadcast_to(np.asarray(invalid_reason, dtype=object), loss.shape)
        marked = np.vectorize(bool, otypes=[bool])(given) if given.size else np.zeros(loss.shape, bool)
        reasons = np.where(marked, given, reasons)
        bad = bad | marked
    reasons = np.where(bad & (reasons == ""), "non-finite tail loss", reasons)
    labels = np.where(bad, INVALID, labels)
    return labels, reasons.astype(str)


def classify(trajectory, problem=None, *, tail=None, random_level=None, conv_rtol=CONV_RTOL,
             div_frac=DIV_FRAC) -> str:
    """The regime of one run, from the tail of its loss trace (criteria in the module docstring).

    ``trajectory`` needs a ``loss`` trace (a `toymodel.dynamics.Trajectory`, or any object
    or mapping with one, such as a network run's dataset). The random level is ``random_level`` if
    given, else ``problem.random_loss()``, else the first recorded loss (a network's loss at
    initialisation). ``tail`` defaults to the last 10% of the records.
    """
    loss, tail, random_level = _tail_and_level(trajectory, problem, tail, random_level)
    label, _ = classify_summary(loss[-tail:].mean(), random_level, conv_rtol=conv_rtol,
                                div_frac=div_frac)
    return str(label)


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
    """The label plus the observables behind it (tail loss / random level, effective gradient, angle)."""
    loss, tail, rand = _tail_and_level(trajectory, problem, tail, random_level)
    label, _ = classify_summary(loss[-tail:].mean(), rand, conv_rtol=conv_rtol, div_frac=div_frac)
    out = {"regime": str(label),
           "tail_loss": float(loss[-tail:].mean()), "random_level": float(rand),
           "loss_ratio": float(loss[-tail:].mean() / rand)}
    for name in ("grad_norm", "angle"):
        if hasattr(trajectory, name):
            out["tail_" + name] = float(np.mean(getattr(trajectory, name)[-tail:]))
    if hasattr(trajectory, "shares"):
        out["min_share"] = float(np.min(trajectory.shares[-tail:]))
    return out
