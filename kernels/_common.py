r"""Constants and state helpers shared by every trajectory module (plain Python, see `_trajectory`).

The group radii and total radius of a start (`_init_targets`), the projection onto the constraint
set (`_rescale`, T5), the status of a new state (`_check`) and a copy. Every operation on the state
runs in the state's dtype (literals ``x.dtype.type(...)``; module docstring of `_trajectory`).
"""
from __future__ import annotations

import math

#: number of per-trajectory accumulators, and of summaries written (order of SUMMARY_NAMES).
N_ACC = 7
N_OUT = 8
STATUS_OK, STATUS_NONFINITE, STATUS_ZERO_NORM = 0, 1, 2


def _rescale(v, individual, rho, radii):
    r"""In place: total $v\leftarrow\rho v/\|v\|$; individual $v_i\leftarrow r_i v_i/\|v_i\|$ (T5, §3)."""
    n, d = v.shape
    if individual:
        for i in range(n):
            s = v[i, 0] * v[i, 0]
            for k in range(1, d):
                s += v[i, k] * v[i, k]
            f = radii[i] / math.sqrt(s)
            for k in range(d):
                v[i, k] = v[i, k] * f
    else:
        tot = v.dtype.type(0.0)
        for i in range(n):
            s = v[i, 0] * v[i, 0]
            for k in range(1, d):
                s += v[i, k] * v[i, k]
            tot += s
        f = rho / math.sqrt(tot)
        for i in range(n):
            for k in range(d):
                v[i, k] = v[i, k] * f


def _check(new):
    """Status of a new state: 1 if any entry is non-finite, 2 if a group has zero norm, else 0.

    One reduction per group: a NaN or inf entry makes the group's sum of squares non-finite (the
    entries are bounded by the radius after rescaling, so squares cannot overflow on their own)."""
    n, d = new.shape
    code = STATUS_OK
    for i in range(n):
        s = new[i, 0] * new[i, 0]
        for k in range(1, d):
            s += new[i, k] * new[i, k]
        if not math.isfinite(s):
            return STATUS_NONFINITE
        if not s > 0.0:
            code = STATUS_ZERO_NORM
    return code


def _init_targets(th, radii):
    r"""Write the group radii $r_i=\|\theta_{0,i}\|$ into ``radii``; return $\rho=\|\theta_0\|$."""
    n, d = th.shape
    tot = th.dtype.type(0.0)
    for i in range(n):
        s = th[i, 0] * th[i, 0]
        for k in range(1, d):
            s += th[i, k] * th[i, k]
        radii[i] = math.sqrt(s)
        tot += s
    # a no-op when compiled; under the CUDA simulator (this code run as Python) it keeps rho a
    # NumPy scalar, so that rho / 0 gives inf as on the device instead of ZeroDivisionError
    return th.dtype.type(math.sqrt(tot))


def _copy(src, dst):
    n, d = src.shape
    for i in range(n):
        for j in range(d):
            dst[i, j] = src[i, j]
