r"""Agreement statistics: how often a scan's regimes and tail losses match the theory's predictions.

Owns `agreement` (the fraction of judged cells whose ``regime`` equals ``predicted_regime``,
returned as an `Agreement` that carries the counts left out), `convergence_boundary` (the
ELR where the theory's convergence stops: T12 under the total constraint, §3 under the
individual one) and `loss_agreement` (the fraction of equilibrium cells whose tail loss lies in
the orbit envelope of `toymodel.census.envelope`, returned as a `LossAgreement`). `agreement`
works on any dataset with the scan's variables (xarray operations only); `loss_agreement` also
runs an orbit census per configuration through the backend.
"""
from __future__ import annotations

import numpy as np

from . import census, regimes
from ._scan_modes import scan_mode

_CELL = ("elr", "config", "seed")


def _fixed_elr_only(ds, what: str) -> None:
    """Refuse a momentum or weight-decay scan: the theory these statistics compare with (T10, T12)
    is that of fixed-ELR projected GD, and those datasets carry no ``predicted_regime``."""
    mode = scan_mode(ds)
    if mode != "elr":
        apply = {"momentum": "the fraction of converged cells (ds.converged) against "
                             "naive_threshold, an upper bound (docs/momentum.md T43, T44)",
                 "wd": "tail_loss against equilibrium_loss (T21, T25) and the periodic cells with "
                       "their period (T26)"}.get(mode, "nothing")
        raise ValueError(f"{what} compares with theory.predict_regime, which applies to fixed-ELR "
                         f"scans only; this is a {mode!r} scan: compare {apply} instead")


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
    _fixed_elr_only(ds, "agreement")
    window = float(window)
    if not (0.0 <= window < 1.0):
        raise ValueError(f"window must be in [0, 1), got {window!r}")
    regime = _codes(ds["regime"])  # labels or int8 codes alike
    match = regime == _codes(ds["predicted_regime"])
    unresolved = regime == regimes.REGIME_CODES[regimes.UNRESOLVED]
    invalid = regime == regimes.REGIME_CODES[regimes.INVALID]
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


def _codes(da):
    """A variable of regime labels or int8 codes, as codes (`toymodel.regimes.encode`)."""
    return da.copy(data=regimes.encode(da.values))


def convergence_boundary(ds):
    r"""Per configuration, the ELR where the theory's convergence stops: $1/\sum\alpha_i$
    (total constraint, T12) or $1/(n\max\alpha_i)$ (individual constraint, §3)."""
    _fixed_elr_only(ds, "convergence_boundary")
    if ds.attrs.get("constraint", "total") == "individual":
        return 1.0 / (ds["n_groups"] * ds["alphas"].max("group"))
    return ds["total_threshold"]


class LossAgreement(float):
    """The fraction `loss_agreement` returns (a ``float``), with the counts behind it: ``compared``
    cells, of which ``inside`` the envelope, and the equilibrium cells left out: ``unresolved`` and
    ``invalid``; ``seeds`` is the number of starts of each envelope's census."""

    def __new__(cls, value, compared=0, inside=0, unresolved=0, invalid=0, seeds=0):
        obj = super().__new__(cls, value)
        obj.compared, obj.inside, obj.seeds = compared, inside, seeds
        obj.unresolved, obj.invalid = unresolved, invalid
        return obj

    @property
    def outside(self) -> int:
        return self.compared - self.inside

    @property
    def left_out(self) -> int:
        return self.unresolved + self.invalid

    def __repr__(self):
        return (f"LossAgreement({float(self):.6g}, compared={self.compared}, inside={self.inside}, "
                f"unresolved={self.unresolved}, invalid={self.invalid}, seeds={self.seeds})")


def _equilibrium_cells(ds):
    r"""``(elr, config)`` mask of the equilibrium window of the toy under the total constraint:
    $1<c=\tilde\eta\sum\alpha_i$ and ``predicted_regime`` ``"chaotic_equilibrium"`` (T10, T12:
    $\tilde\eta\le1/\min\alpha_i$; one group: T13). All False under the individual constraint
    and for configurations that are not a `toymodel.problems.SphereToy`."""
    pred = _labels(ds["predicted_regime"].transpose("elr", "config"))
    above = (ds["elr"] > ds["total_threshold"]).transpose("elr", "config").values
    toy = ds["problem"].values.astype(str) == "sphere_toy"
    return ((pred == "chaotic_equilibrium") & above & toy[None, :]
            & (ds.attrs.get("constraint", "total") == "total"))


def _labels(da) -> np.ndarray:
    """The regime labels of a variable that holds labels or int8 regime codes."""
    values = np.asarray(da.values)
    if values.dtype.kind in "iu":  # codes (`toymodel.regimes.REGIME_CODES`)
        return regimes.decode(values)
    return values.astype(str)


def loss_agreement(ds, seeds: int = 128, *, backend: str = "auto"):
    r"""Fraction of the equilibrium cells of a toy scan whose tail loss lies in the orbit envelope
    (`toymodel.census.envelope`, docs/attractors.md): the statistic that replaces "tail loss equals
    $L^*$" (T12), which the lower periodic orbits and the chaotic attractor break.

    The cells compared are those of the equilibrium window under the total constraint:
    $1<c=\tilde\eta\sum\alpha_i$ and $\tilde\eta\le1/\min\alpha_i$ (``predicted_regime`` is
    ``"chaotic_equilibrium"``, T10, T12), for every configuration that is a `SphereToy`. For each
    configuration the envelope is measured once at all its $c$ of the window, by a census of
    ``seeds`` starts of its own (seeds from `toymodel.census.ENVELOPE_SEED0`: never the scan's),
    with the scan's ``steps``, ``tail`` and ``dim``; configurations with the same curvatures and
    dimension share it. Left out, and counted: cells labelled ``"unresolved"``, and ``"invalid"``
    ones (or with a non-finite tail loss).

    Parameters
    ----------
    ds
        A scan dataset (`toymodel.scan.scan`, `toymodel.scan.open_scan`).
    seeds
        Starts per $c$ of each envelope's census.
    backend
        `toymodel.backend` name the census runs on.

    Returns
    -------
    LossAgreement
        A float (the fraction inside) with the counts ``compared``, ``inside``, ``outside``,
        ``unresolved``, ``invalid``.

    Raises
    ------
    ValueError
        If the scan has no equilibrium cell of a toy under the total constraint, or every one is
        left out.
    """
    _fixed_elr_only(ds, "loss_agreement")
    keep, unresolved, invalid = _loss_cells(ds)
    if not (keep | unresolved | invalid).any():
        raise ValueError(f"no equilibrium cell to compare: loss_agreement needs a SphereToy scan "
                         f"under the total constraint with an ELR in (1/sum(alpha), 1/min(alpha)] "
                         f"(constraint={ds.attrs.get('constraint', 'total')!r})")
    if not keep.any():
        raise ValueError(f"no equilibrium cell left to compare ({int(unresolved.sum())} unresolved, "
                         f"{int(invalid.sum())} invalid)")
    steps, tail = int(ds.attrs["steps"]), int(ds.attrs["tail"])
    elrs = ds["elr"].values
    loss = ds["tail_loss"].transpose(*_CELL).values.astype(np.float64)
    # alphas are NaN-padded to the largest group count: a row's first n_groups entries are its own
    alphas = ds["alphas"].transpose("config", "group").values
    n_groups, dims = ds["n_groups"].values, ds["dim"].values
    shared = {}  # configurations with the same curvatures and dimension share one envelope
    for j in np.flatnonzero(keep.any(axis=(0, 2))):
        shared.setdefault((tuple(alphas[j, :n_groups[j]].tolist()), int(dims[j])), []).append(j)
    inside = 0
    for (a, dim), configs in shared.items():
        rows = np.flatnonzero(keep[:, configs].any(axis=(1, 2)))   # each distinct c once
        env = census.envelope(a, elrs[rows] * sum(a), seeds=seeds, steps=steps, tail=tail, dim=dim,
                              backend=backend)
        k = keep[rows][:, configs]
        inside += int((census.within_envelope(np.where(k, loss[rows][:, configs], np.nan), env)
                       & k).sum())
    compared = int(keep.sum())
    return LossAgreement(inside / compared, compared=compared, inside=inside,
                         unresolved=int(unresolved.sum()), invalid=int(invalid.sum()),
                         seeds=int(seeds))


def _loss_cells(ds):
    """``(elr, config, seed)`` masks of the equilibrium cells (`_equilibrium_cells`) that
    `loss_agreement` compares, and of those it leaves out as unresolved and as invalid (label
    ``"invalid"`` or a non-finite tail loss)."""
    window = _equilibrium_cells(ds)[:, :, None]
    regime = _labels(ds["regime"].transpose(*_CELL))
    finite = np.isfinite(ds["tail_loss"].transpose(*_CELL).values)
    invalid = window & ((regime == regimes.INVALID) | ~finite)
    unresolved = window & (regime == regimes.UNRESOLVED) & ~invalid
    return window & ~invalid & ~unresolved, unresolved, invalid
