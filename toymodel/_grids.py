"""ELR and seed grids from their text or sequence forms: the one grammar of toy scans
(`toymodel.scan`) and network scans (`toymodel.bridge.train_scan`).

* ELRs: ``"a:b:N"`` (``N`` log-spaced values from ``a`` to ``b``, both included), a comma list
  ``"0.1,0.2"``, or a sequence of distinct positive finite numbers;
* seeds: a count ``N`` (``0..N-1``), a comma list, or a sequence of distinct integers in
  ``[0, MAX_SEED]``.

The ``*_spec`` forms return ``(count, build)``: the size is known, and checked against the
scan's limits, before the grid is allocated.
"""
from __future__ import annotations

import numbers

import numpy as np

from ._validate import distinct, positive_finite_array, positive_int

#: seeds are stored as int64.
MAX_SEED = np.iinfo(np.int64).max


def elr_grid(spec, name: str = "elrs") -> np.ndarray:
    """ELRs from ``"a:b:N"`` (``N`` log-spaced values from ``a`` to ``b``, both included), a
    comma list ``"0.1,0.2"``, or any sequence of distinct positive numbers; ``name`` is the
    argument's name in error messages."""
    return elr_spec(spec, name)[1]()


def elr_spec(spec, name: str = "elrs"):
    """``(count, build)``: the number of ELRs, known before the grid is allocated, and a function
    that builds and checks it."""
    if isinstance(spec, str):
        text = spec.strip()
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError(f"{name} must look like 'start:stop:count', got {spec!r}")
            try:
                a, b, n = float(parts[0]), float(parts[1]), int(parts[2])
            except ValueError:
                raise ValueError(f"{name} must look like 'start:stop:count' (two numbers and an "
                                 f"integer), got {spec!r}") from None
            a = positive_finite_array(f"{name} start", [a])[0]
            b = positive_finite_array(f"{name} stop", [b])[0]
            n = positive_int(f"{name} count", n)
            if n > 1 and a == b:
                raise ValueError(f"{name} must be distinct, got {spec!r}: start = stop gives "
                                 f"{a!r} {n} times; use {parts[0]}:{parts[1]}:1")

            def build():
                grid = np.geomspace(a, b, n) if n > 1 else np.array([a])
                distinct(name, grid)  # a range so narrow that float64 rounds neighbours together
                return grid
            return n, build
        try:
            spec = [float(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"{name} must be 'start:stop:count' or a comma list, got {spec!r}") from None
    arr = positive_finite_array(name, np.atleast_1d(spec), ndim=1)
    distinct(name, arr)
    return arr.size, lambda: arr


def seed_grid(seeds, name: str = "seeds") -> np.ndarray:
    """``N`` -> ``0..N-1``; a sequence of distinct non-negative integers as given (int64)."""
    return seed_spec(seeds, name)[1]()


def seed_spec(seeds, name: str = "seeds"):
    """``(count, build)`` as `elr_spec`: a count ``N`` is checked before ``0..N-1`` is allocated."""
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        n = positive_int(f"{name} (a count)", seeds)
        return n, lambda: np.arange(n, dtype=np.int64)
    if isinstance(seeds, str):
        seeds = [t for t in seeds.split(",") if t.strip()]
    try:
        vals = [positive_int(f"{name} entries", int(s) if not isinstance(s, float) else s, minimum=0)
                for s in seeds]
    except (TypeError, ValueError) as err:
        if isinstance(err, ValueError) and "must be an integer" in str(err):
            raise
        raise ValueError(f"{name} must be a count or a sequence of non-negative integers, "
                         f"got {seeds!r}") from None
    too_big = [v for v in vals if v > MAX_SEED]
    if too_big:
        raise ValueError(f"{name} entries must be integers in [0, {MAX_SEED}] (stored as int64), "
                         f"got {too_big[0]}")
    if not vals:
        raise ValueError(f"{name} must be a non-empty sequence of distinct integers, got {seeds!r}")
    distinct(name, vals)
    return len(vals), lambda: np.asarray(vals, dtype=np.int64)
