"""Throughput of independent divisions, square roots and FMAs on this CPU (the roofline's ceilings).

    python benchmarks/bench_divsqrt.py [--quick]

numba loops over L1-resident blocks of 256 lanes, ``prange`` over blocks, the lane loop innermost so
that LLVM vectorises it (AVX-512 here): every lane's update depends on its own previous value only,
so the units run at their throughput, not their latency, as in the SoA toy kernel
(kernels/_soa.py). One division (``x = a / x``), one square root (``x = sqrt(c * x)``, the product
hides under the root) or 8 FMAs (``x = x * a + b``, 8 times) per lane and repeat, in float64 and
float32, on one thread and on all. Best of several repeats: other processes load a shared machine,
so the numbers are lower bounds of the hardware's. A fourth loop mixes one division and 8 FMAs
on independent chains: its time against the sum of the parts' says how far the divider and the
FMA pipes overlap (`overlap`), which the roofline of bench_kernels.py needs to add the ceilings.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
from numba import get_num_threads, njit, prange, set_num_threads

LANES = 256
_J = dict(parallel=True, error_model="numpy", fastmath={"contract"}, nogil=True)


@njit(**_J)
def _div(x, reps):
    a = x.dtype.type(1.5)
    for blk in prange(x.shape[0]):
        v = x[blk]
        for _ in range(reps):
            for lane in range(LANES):
                v[lane] = a / v[lane]   # period 2: x, a/x, x, ...


@njit(**_J)
def _sqrt(x, reps):
    c = x.dtype.type(1.5)
    for blk in prange(x.shape[0]):
        v = x[blk]
        for _ in range(reps):
            for lane in range(LANES):
                v[lane] = math.sqrt(c * v[lane])   # converges to c; the product is free


@njit(**_J)
def _fma(x, reps):
    a = x.dtype.type(0.999)
    b = x.dtype.type(0.001)
    for blk in prange(x.shape[0]):
        v = x[blk]
        for _ in range(reps):
            for lane in range(LANES):
                y = v[lane]
                y = y * a + b
                y = y * a + b
                y = y * a + b
                y = y * a + b
                y = y * a + b
                y = y * a + b
                y = y * a + b
                y = y * a + b
                v[lane] = y


@njit(**_J)
def _mix(x, reps):
    """One division and 8 FMAs per lane and repeat, on two independent chains: whether the divider
    and the FMA pipes overlap (the SoA step mixes both)."""
    a = x.dtype.type(1.5)
    p = x.dtype.type(0.999)
    q = x.dtype.type(0.001)
    for blk in prange(x.shape[0]):
        v = x[blk]
        u = np.full(LANES, x.dtype.type(0.5))
        for _ in range(reps):
            for lane in range(LANES):
                v[lane] = a / v[lane]
                y = u[lane]
                y = y * p + q
                y = y * p + q
                y = y * p + q
                y = y * p + q
                y = y * p + q
                y = y * p + q
                y = y * p + q
                y = y * p + q
                u[lane] = y
        v[0] += u[0] * x.dtype.type(0.0)   # keeps the FMA chain live (u is local to the block)


#: operations per lane and repeat of each loop ("mix": lane-repeats of one division and 8 FMAs)
_KERNELS = {"div": (_div, 1), "sqrt": (_sqrt, 1), "fma": (_fma, 8), "mix": (_mix, 1)}


def overlap(ops: dict) -> float:
    """Time of the mixed loop over the sum of its parts' times (1: the divider and the FMAs add up;
    their max over their sum: they overlap fully)."""
    return (1.0 / ops["mix"]) / (1.0 / ops["div"] + 8.0 / ops["fma"])


def measure(dtype=np.float64, threads=None, repeat=5, seconds=0.05) -> dict:
    """Operations per second ``{"div", "sqrt", "fma"}`` (an FMA counts once; 2 FLOPs) on ``threads``
    threads (default: all numba threads)."""
    old = get_num_threads()
    threads = threads or old
    set_num_threads(threads)
    try:
        blocks = 4 * threads
        out = {}
        for name, (fn, per) in _KERNELS.items():
            x = np.random.default_rng(0).uniform(1.0, 2.0, (blocks, LANES)).astype(dtype)
            fn(x, 1)                                   # compile
            reps = 64
            while True:                                # size the run to ~`seconds`
                t = time.perf_counter()
                fn(x, reps)
                if time.perf_counter() - t > seconds or reps > 2**24:
                    break
                reps *= 2
            best = min(_timed(fn, x, reps) for _ in range(repeat))
            out[name] = blocks * LANES * reps * per / best
        return out
    finally:
        set_num_threads(old)


def _timed(fn, x, reps):
    t = time.perf_counter()
    fn(x, reps)
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    rep = 3 if args.quick else 7
    n = get_num_threads()
    print(f"# bench_divsqrt; {os.cpu_count()} CPUs, {n} numba threads; ops/s, best of {rep}")
    print("| op | dtype | 1 thread | all threads |")
    print("|---|---|---:|---:|")
    for dt in (np.float64, np.float32):
        one = measure(dt, 1, rep)
        full = measure(dt, n, rep)
        for op in _KERNELS:
            print(f"| {op} | {np.dtype(dt).name} | {one[op]:.3g} | {full[op]:.3g} |")
        print(f"{np.dtype(dt).name}: the mixed loop takes {overlap(full):.2f} of the sum of its "
              "parts' times (1: divisions and FMAs add up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
