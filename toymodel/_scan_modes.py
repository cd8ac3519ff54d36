r"""The training modes a scan runs, and the grids of their parameters. NumPy only.

Three modes, one cell = one trajectory from the seed's initial state:

* ``"elr"`` (the default): projected GD at a fixed ELR $\tilde\eta$ (T3), dims
  ``(elr, config, seed)``, `toymodel.backend.summarize`;
* ``"momentum"``: heavy ball (or Adam, ``optimizer="adam"``, with $\beta_1$ on the momentum axis) at
  a fixed ELR (docs/momentum.md T41–T48), dims ``(elr, momentum, config, seed)``,
  `toymodel.backend.summarize_momentum`; the buffer starts at zero;
* ``"wd"``: conventional training, full-space GD with weight decay and no projection
  (``constraint="none"``, docs/conventional.md T20–T26), dims ``(lr, weight_decay, config, seed)``,
  `toymodel.backend.summarize_wd`, from the unit-norm start `toymodel.conventional.simulate_wd`
  uses (`toymodel.dynamics.initial_state` with the total constraint).

Owns the names (`MODES`, `AXES`), the parameter grids `unit_interval_spec` (momenta in [0, 1))
and `nonnegative_spec` (weight decays >= 0), the up-front check of $\eta\lambda<1$
(`check_decay_grid`) and the mode of a dataset (`scan_mode`).
"""
from __future__ import annotations

import numpy as np

from ._grids import elr_spec
from ._validate import distinct

#: the modes of a scan.
MODES = ("elr", "momentum", "wd")
#: the leading parameter dimensions of each mode, in order (then ``config``, ``seed``).
AXES = {"elr": ("elr",), "momentum": ("elr", "momentum"), "wd": ("lr", "weight_decay")}
#: the manifest key of each parameter axis ("elrs" as the fixed-ELR scan always wrote it).
PARAM_KEYS = {"elr": "elrs", "momentum": "momentum", "lr": "lr", "weight_decay": "weight_decay"}


def scan_mode(ds) -> str:
    """The mode of a scan's dataset: its ``mode`` attribute (fixed-ELR scans have none: ``"elr"``)."""
    return str(ds.attrs.get("mode", "elr"))


def _values_spec(spec, name: str, upper, allowed: str):
    """``(count, build)`` of numbers in ``[0, upper)`` (``upper=None``: ``[0, inf)``): ``"a:b:N"``
    (N log-spaced, as `toymodel._grids.elr_spec`: positive ends), ``"x,y,z"`` or a sequence."""
    if isinstance(spec, str) and ":" in spec:
        n, build = elr_spec(spec, name)

        def checked():
            return _check_values(build(), name, upper, allowed)
        # the ends are the extremes of a geometric grid: check them before allocating
        _check_values(np.array([float(t) for t in spec.split(":")[:2]]), name, upper, allowed)
        return n, checked
    if isinstance(spec, str):
        try:
            spec = [float(t) for t in spec.split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"{name} must be 'start:stop:count' or a comma list of numbers in "
                             f"{allowed}, got {spec!r}") from None
    try:
        arr = np.atleast_1d(np.asarray(spec, dtype=np.float64))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers in {allowed}, got {spec!r}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers in {allowed}, "
                         f"got {spec!r}")
    arr = _check_values(arr, name, upper, allowed)
    distinct(name, arr)
    return arr.size, lambda: arr


def _check_values(arr, name, upper, allowed):
    bad = ~np.isfinite(arr) | (arr < 0) | ((arr >= upper) if upper is not None else False)
    if bad.any():
        raise ValueError(f"{name} must be in {allowed}, got {float(arr[np.flatnonzero(bad)[0]])!r}")
    return arr


def unit_interval_spec(spec, name: str = "momentum"):
    """``(count, build)`` of momenta $\\beta\\in[0,1)$: a sequence, ``"x,y,z"`` or ``"a:b:N"``."""
    return _values_spec(spec, name, 1.0, "[0, 1)")


def nonnegative_spec(spec, name: str = "weight_decay"):
    """``(count, build)`` of weight decays $\\lambda\\ge0$: a sequence, ``"x,y,z"`` or ``"a:b:N"``."""
    return _values_spec(spec, name, None, "[0, inf)")


def check_decay_grid(lrs, wds, lr_name: str = "lr", wd_name: str = "weight_decay") -> None:
    r"""Refuse a grid with a pair $\eta\lambda\ge1$ (the decay factor $1-\eta\lambda$ must be
    positive, T20), naming the first offending pair."""
    lr_max = float(np.max(lrs))
    bad = np.flatnonzero(lr_max * np.asarray(wds) >= 1.0)
    if bad.size:
        wd = float(np.asarray(wds)[bad[0]])
        lr = float(np.asarray(lrs)[np.flatnonzero(np.asarray(lrs) * wd >= 1.0)[0]])
        raise ValueError(f"{lr_name}*{wd_name} must be below 1 for every pair of the grid (the decay "
                         f"factor 1 - lr*weight_decay must be positive), got {lr_name}={lr!r}, "
                         f"{wd_name}={wd!r} (product {lr * wd!r})")
