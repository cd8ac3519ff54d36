r"""Agreement statistics: how often a scan's observed regimes match the theory's predictions.

Owns `agreement` (the fraction of judged cells whose ``regime`` equals ``predicted_regime``,
returned as an `Agreement` that carries the counts left out) and `convergence_boundary` (the
ELR where the theory's convergence stops: T12 under the total constraint, §3 under the
individual one). Works on any dataset with the scan's variables; xarray operations only.
"""
from __future__ import annotations

import numpy as np

from . import regimes


class Agreement(float):
    """The fraction `agreement` returns (a ``float``), with the counts behind it: ``compared``
    cells, and the cells left out: ``unresolved``, ``invalid`` and ``in_window``."""

    def __new__(cls, value, compared=0, unresolved=0, invalid=0, in_window=0):
        obj = super().__new__(cls, value)
        obj.compared, obj.unresolved, obj.invalid, obj.in_window = compared, unresolved, invalid, in_window
        return obj

    @property
    def left_out(self) -> int:
        return self.unresolved + self.invalid + self.in_window

    def __repr__(self):
        return (f"Agreement({float(self):.6g}, compared={self.compared}, unresolved={self.unresolved}, "
                f"invalid={self.invalid}, in_window={self.in_window})")


def agreement(ds, window: float = 0.0, by_config: bool = False):
    r"""Fraction of the judged cells whose observed ``regime`` equals ``predicted_regime``.

    Left out, and counted: cells labelled ``"unresolved"`` (they moved too little over the tail
    for the classifier to judge, `toymodel.regimes.classify_summary`) or ``"invalid"`` (the
    kernel could not compute them), and cells within the relative ``window`` of the convergence
    boundary, where convergence is slow and a finite run cannot decide:
    $|\tilde\eta/\tilde\eta_c-1|\le$ ``window`` with $\tilde\eta_c=1/\sum\alpha_i$ under the total
    constraint (T12) and $1/(n\max\alpha_i)$, the first step of the staircase, under the individual
    one (§3). Returns an `Agreement` (a float with the counts ``compared``, ``unresolved``,
    ``invalid``, ``in_window``), or with ``by_config=True`` a DataArray over ``config`` with
    those counts as coordinates (NaN where no cell is compared).
    """
    window = float(window)
    if not (0.0 <= window < 1.0):
        raise ValueError(f"window must be in [0, 1), got {window!r}")
    regime = ds["regime"]
    match = regime == ds["predicted_regime"]
    unresolved = regime == regimes.UNRESOLVED
    invalid = regime == regimes.INVALID
    near = (abs(ds["elr"] / convergence_boundary(ds) - 1.0) <= window).broadcast_like(match)
    keep = ~unresolved & ~invalid & ~near
    cell = ("elr", "seed")
    num = (match & keep).sum(cell)
    den = keep.sum(cell)
    counts = {"compared": den, "unresolved": (unresolved & ~near).sum(cell),
              "invalid": (invalid & ~near & ~unresolved).sum(cell), "in_window": near.sum(cell)}
    if by_config:
        frac = (num / den.where(den > 0))
        return frac.assign_coords({k: v.astype(np.int64) for k, v in counts.items()})
    total = int(den.sum())
    totals = {k: int(v.sum()) for k, v in counts.items()}
    if total == 0:
        raise ValueError(f"no cell left to compare (window={window}: {totals['in_window']} cells "
                         f"within the window, {totals['unresolved']} unresolved, "
                         f"{totals['invalid']} invalid)")
    return Agreement(float(num.sum()) / total, **totals)


def convergence_boundary(ds):
    r"""Per configuration, the ELR where the theory's convergence stops: $1/\sum\alpha_i$
    (total constraint, T12) or $1/(n\max\alpha_i)$ (individual constraint, §3)."""
    if ds.attrs.get("constraint", "total") == "individual":
        return 1.0 / (ds["n_groups"] * ds["alphas"].max("group"))
    return ds["total_threshold"]
