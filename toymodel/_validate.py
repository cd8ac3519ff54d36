"""Validation at the public boundary: every message names the value and the allowed range.

Kernels and private helpers never validate; the public wrappers call these first (STYLE §10).
"""
from __future__ import annotations

import numbers

import numpy as np

CONSTRAINTS = ("total", "individual")


def positive_finite(name: str, value) -> float:
    """Return ``value`` as a float if it is a positive finite number, else raise ``ValueError``."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}") from None
    if not np.isfinite(x) or x <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return x


def positive_finite_array(name: str, value, ndim: int | None = None) -> np.ndarray:
    """Return a float64 array whose entries are all positive and finite."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an array of positive finite numbers, got {value!r}") from None
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        first = float(arr.ravel()[np.flatnonzero(bad.ravel())[0]])
        raise ValueError(f"{name} must be positive and finite (allowed range (0, inf)), got {first!r}")
    return arr


def alphas_array(alphas) -> np.ndarray:
    """Curvatures alpha_i > 0 of the groups, as a 1-D float64 array."""
    if isinstance(alphas, str):
        alphas = parse_floats("alphas", alphas)
    return positive_finite_array("alphas", alphas, ndim=1)


def positive_int(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` as an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def tail_within(tail, steps: int, name: str = "tail", steps_name: str | None = "steps",
                default: bool = False) -> int:
    """Return ``tail`` as an int in ``[1, steps]``: the window a run's summaries average over is
    at most the run. The one check of "tail <= steps" (scan, backend, solvers, regimes, bridge).

    ``name`` is the argument's name in the message (the CLI's ``--tail``); ``steps_name`` labels
    the bound (``"--steps"``: ``[1, --steps=10]``; ``None``: the number alone, ``[1, 10]``);
    ``default`` says the value is a default the user never gave, and how to change it.
    """
    try:
        value = positive_int(name, tail)
    except ValueError:
        value = None
    if value is None or value > steps:
        bound = f"{steps}" if steps_name is None else f"{steps_name}={steps}"
        why = f", the default of {name}: pass {name} with a value up to {steps}" if default else ""
        raise ValueError(f"{name} must be an integer in [1, {bound}], got {tail!r}{why}")
    return value


def constraint_name(constraint: str) -> str:
    """Check the constraint name: ``"total"`` or ``"individual"``."""
    if constraint not in CONSTRAINTS:
        raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {constraint!r}")
    return constraint


def parse_floats(name: str, text: str) -> np.ndarray:
    """Parse ``"1,2,4"`` into a float array, with a message naming ``name`` on failure."""
    try:
        return np.array([float(t) for t in text.split(",") if t.strip()], dtype=np.float64)
    except ValueError:
        raise ValueError(f"{name} must be a comma-separated list of numbers, got {text!r}") from None


def bounded_int(name: str, value, minimum: int, maximum: int) -> int:
    """Return ``value`` as an int in ``[minimum, maximum]`` (the range in the message)."""
    try:
        x = positive_int(name, value, minimum)
    except ValueError:
        x = None
    if x is None or x > maximum:
        raise ValueError(f"{name} must be an integer in [{minimum}, {maximum}], got {value!r}")
    return x


def choice(name: str, value, choices) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def distinct(name: str, values) -> None:
    """Raise ``ValueError`` naming the entries of ``values`` that occur more than once."""
    arr = np.asarray(values)
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        dups = ", ".join(f"{v!r} ({c} times)" for v, c in zip(uniq[counts > 1].tolist()[:5],
                                                              counts[counts > 1].tolist()[:5]))
        more = "" if (counts > 1).sum() <= 5 else f" and {(counts > 1).sum() - 5} more"
        raise ValueError(f"{name} must be distinct, got duplicates: {dups}{more}")


def writable_parent(name: str, path) -> str:
    """The absolute path of ``path`` after checking that its parent is an existing, writable
    directory (checked before any work, so a bad destination never costs a computation)."""
    import os

    text = os.fspath(path)
    full = os.path.abspath(text)
    parent = os.path.dirname(full)
    probe = parent
    while not os.path.exists(probe):  # the nearest existing ancestor says what is wrong
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"{name}: {probe} is a file, not a directory, got {text!r}")
    if probe != parent:
        raise ValueError(f"{name}: the directory {parent} does not exist (create it first), got {text!r}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: the directory {parent} is not writable, got {text!r}")
    return full


def output_path(name: str, path, suffixes=(".nc", ".zarr"), overwrite: bool = False,
                overwrite_hint: str = "overwrite=True") -> str:
    """Check an output destination before any work: a known suffix, a writable parent directory,
    nothing of the wrong kind at the path (a ``.zarr`` store is a directory, anything else a file),
    and no existing file unless ``overwrite``. Returns the absolute path."""
    import os

    text = os.fspath(path)
    ext = os.path.splitext(text.rstrip("/"))[1]
    if ext not in suffixes:
        raise ValueError(f"{name} must end in {' or '.join(suffixes)}, got {text!r}")
    full = writable_parent(name, text.rstrip("/") or text)
    if ext == ".zarr":
        if os.path.exists(full) and not os.path.isdir(full):
            raise ValueError(f"{name}: {full} is a file, not a zarr store directory; choose another path")
    elif os.path.isdir(full):
        raise ValueError(f"{name}: {full} is a directory, not a {ext} file; choose another path")
    elif os.path.exists(full) and not overwrite:
        raise ValueError(f"{name}: {full} exists; pass {overwrite_hint} to replace it, or choose "
                         f"another path")
    return full


def memory_limit():
    """Bytes of physical memory of this machine (``os.sysconf``), or ``None`` where unknown.

    The up-front size checks refuse work that could never fit; they do not reserve anything."""
    import os
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # not POSIX, or the name is unknown here
        return None


def format_bytes(nbytes: float) -> str:
    """``1.5 GiB``-style size, binary units."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(nbytes) < 1024 or unit == "PiB":
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1024.0
    return f"{nbytes:.3g} PiB"  # pragma: no cover


def check_memory(nbytes: float, what: str, hint: str = "") -> None:
    """Raise ``ValueError`` if ``what`` would need more than the machine's physical memory."""
    limit = memory_limit()
    if limit is not None and nbytes > limit:
        raise ValueError(f"{what} would need about {format_bytes(nbytes)} of memory, more than the "
                         f"{format_bytes(limit)} this machine has" + (f"; {hint}" if hint else ""))
