"""Vector instructions of the compiled SoA toy step, counted from its x86 assembly (bench_kernels'
roofline): what the step issues per element-step, beside the FLOPs counted from its source.

The steps (`kernels._soa.unrolled_step`, float64, total constraint, no twin: the deferred step of
T51 before the tail, the projected one in it) are compiled with the kernel's settings and its assembly read: LLVM vectorises the lane loop into one body over
``width`` lanes (8 for zmm, 4 for ymm), so every vector instruction of the body counts
``width / (n d)`` per element-step of the lanes it covers. Arithmetic (add, mul, FMA, compare,
min/max, logic) is counted apart from divisions and square roots (the divider) and from moves,
loads and broadcasts (not counted).
"""
from __future__ import annotations

import collections
import re

_MOVES = re.compile(r"^v?(mov|broadcast|extract|insert|perm|shuf|unpck|gather|scatter|kmov|pbroad)")
_DIV = re.compile(r"^vdiv[ps][ds]$")
_SQRT = re.compile(r"^vsqrt[ps][ds]$")


def step_counts(n: int, d: int, tail: bool):
    """``(arith, div, sqrt)`` vector instructions per element-step of the step's lane body, or
    ``None`` where the assembly cannot be read (no numba, not x86, not vectorised)."""
    try:
        from numba import njit
        from numba import types as nt

        from toymodel.kernels import _soa, _vecmath
        from toymodel.kernels import numba_cpu as nc
    except Exception:   # the count is optional
        return None
    const = dict(nc._SOA_ENV, **_soa.layout(n, d), N=n, D=d, L=nc.SOA_LANES, INDIVIDUAL=False,
                 TWIN=False)
    jit = lambda f: njit(f, error_model="numpy", fastmath=nc._SOA_FAST, nogil=True)  # noqa: E731
    g = dict(const, _asin=jit(_soa.bind(_vecmath._asin, nc._SOA_ENV, "bench_asin")), _log=None,
             REDO=_soa.REDO, **_soa.DEFERRED_BOUNDS[False])
    # the steps before the tail are the deferred ones (T51) in kernels without the twin
    step = jit(_soa.unrolled_step(n, d, False, tail, g, f"bench_step_{n}_{d}_{tail}",
                                  lazy=not tail))
    sig = (nt.Array(nt.float64, 1, "C"), nt.Array(nt.float64, 1, "C"))
    step.compile(sig)
    asm = step.inspect_asm(sig)
    counts = {"zmm": collections.Counter(), "ymm": collections.Counter()}
    for line in asm.splitlines():
        if not line.startswith("\t"):
            continue
        op = line.split()[0]
        for reg in counts:
            if f"%{reg}" in line:
                counts[reg][op] += 1
                break
    c = counts["zmm"] or counts["ymm"]
    div = sum(v for k, v in c.items() if _DIV.match(k))
    sqrt = sum(v for k, v in c.items() if _SQRT.match(k))
    arith = sum(v for k, v in c.items() if not (_MOVES.match(k) or _DIV.match(k) or _SQRT.match(k)))
    # one body per step: the divisions it must hold (n reciprocals; in tail steps the rescale, two
    # reciprocal norms and the arcsin's) tell one body from an unrolled or duplicated one
    expect = n + (4 if tail else 0)
    if div == 0 or div % expect:
        return None
    # a body advances ``width`` lanes by one step of n d coordinates, and each of its vector
    # instructions does ``width`` lane-operations: lane-operations per element-step
    per = 1.0 / ((div // expect) * n * d)
    return arith * per, div * per, sqrt * per
