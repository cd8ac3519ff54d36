r"""The block layout and the constants of the SoA templates (`_soa`, `_soa_io`), plain Python.

A block of ``L`` trajectories lives in two flat arrays: ``W`` (the state's dtype, one row of ``L``
lanes per coordinate and per per-trajectory value, rows `layout`) and ``A`` (float64, the
accumulators, rows ``A_*``). The templates read the shape constants and row offsets as module
globals; `bind` makes a copy of a template with them fixed (numba freezes globals at compile time,
so they become literals and the loops over groups and coordinates unroll).
"""
from __future__ import annotations

import math
import types

from . import _vecmath

A_MEAN, A_M2, A_SMIN, A_ABOVE, A_GRAD, A_ANGLE, A_LYAP, A_BAD = range(8)
N_A = 8

# the constants every template reads, bound per kernel by `build` (placeholders here)
N = D = L = 1
INDIVIDUAL = TWIN = TAIL = False
R_TH = R_NW = R_AL = R_RAD = R_LR = R_RHO = R_ST = R_SV = R_TL = R_TW = R_WD = R_K = R_BD = N_ROWS = 0
# supplied by `build` from the CPU module (prange, the MXCSR intrinsics) and compiled per kernel
prange = range
sqrt = math.sqrt   # bound to LLVM's sqrt intrinsic: numba's math.sqrt is a libm call, vectorised
                   # only where LLVM proves the argument non-negative
FTZ_DAZ = 0
get_fpmode = set_fpmode = step_plain = step_tail = twin_plain = twin_tail = None
step_lazy = redo_exact = None
LAZY = False
GROW = LIMIT = SHARE_MIN = 1.0   # the deferred step's bounds (`_soa.build`)
_asin, _log = _vecmath._asin, _vecmath._log


def layout(n: int, d: int) -> dict:
    """Row offsets of the block array ``W`` (each row holds ``L`` lanes): the state ``R_TH``
    (``n*d`` rows, coordinate ``(i, k)`` at ``R_TH + i*d + k``), the update / new state / twin
    scratch ``R_NW`` (same layout), the curvatures ``R_AL`` and group radii ``R_RAD`` (``n`` each),
    the learning rate ``R_LR``, the radius ``R_RHO``, the status ``R_ST`` (0 alive, 1 or 2 failed,
    negative in the step it fails: `mark_failed` records the step), the group sums ``R_SV`` (``n``),
    a tail step's five values ``R_TL`` (`fold_tail`), the twin ``R_TW`` and its unit direction
    ``R_WD`` (``n*d`` each), and the deferred step's coefficients ``R_K`` (``n``) and bounds
    ``R_BD`` (``3n``; `_soa_steps.lazy_step_source`).
    The status sits in ``W``, in
    the state's dtype (0, ±1, ±2 are exact), so that a float32 step touches no float64 and
    vectorises 16 lanes wide."""
    nd = n * d
    r = {"R_TH": 0, "R_NW": nd, "R_AL": 2 * nd, "R_RAD": 2 * nd + n, "R_LR": 2 * nd + 2 * n,
         "R_RHO": 2 * nd + 2 * n + 1, "R_ST": 2 * nd + 2 * n + 2, "R_SV": 2 * nd + 2 * n + 3}
    r["R_TL"] = r["R_SV"] + n
    r["R_TW"] = r["R_TL"] + 5
    r["R_WD"] = r["R_TW"] + nd
    r["R_K"] = r["R_WD"] + nd
    r["R_BD"] = r["R_K"] + n
    r["N_ROWS"] = r["R_BD"] + 3 * n
    return r


def bind(fn, names, qualname=None):
    """A copy of template ``fn`` whose globals resolve ``names`` (numba freezes globals at compile
    time: the constants become literals, the helpers the compiled ones)."""
    glob = dict(fn.__globals__)
    glob.update(names)
    out = types.FunctionType(fn.__code__, glob, fn.__name__, fn.__defaults__, fn.__closure__)
    out.__qualname__ = qualname or fn.__qualname__
    return out
