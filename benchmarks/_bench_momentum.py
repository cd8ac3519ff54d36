"""The heavy-ball momentum workload of bench_kernels.py: NumPy spec, per-trajectory (AoS) kernel,
lane-vectorised (SoA) kernel, timed in the same run (ratios, never absolute claims)."""
from __future__ import annotations

import time

import numpy as np

from toymodel import dynamics
from toymodel._deps import has
from toymodel._momentum_batch import summarize_momentum_batch
from toymodel.problems import SphereToy


def bench_momentum(quick):
    """B = 10 000 (2 000 quick) of alphas (1, 2, 4), d = 2, 2 000 steps (400 quick), tail 10 %,
    beta = 0.5, c = elr * sum(alpha) in [0.1, 1]; both modes, total constraint."""
    if not has("numba"):
        return None
    from toymodel.kernels import numba_cpu as nc

    prob = SphereToy([1.0, 2.0, 4.0], 2)
    B, steps = (2000, 400) if quick else (10000, 2000)
    tail = steps // 10
    th0 = dynamics.initial_states(prob, np.arange(B))
    elr = np.geomspace(0.1, 1.0, B) / prob.alphas.sum()
    beta = np.full(B, 0.5)
    al = np.ascontiguousarray(np.broadcast_to(prob.alphas, (B, 3)))
    rows = {}
    for mode in ("official", "transport"):
        def kern(fn, m=mode, sl=slice(None), s=steps, tl=tail):
            return fn(th0[sl].copy(), elr[sl].copy(), beta[sl], al[sl], s, tl, m, False,
                      "heavy_ball", 0.999, 1e-3)
        best = {}
        for name, fn in (("aos", nc.toy_momentum_aos), ("soa", nc.toy_momentum_soa)):
            kern(fn, sl=slice(0, 70), s=3, tl=1)   # compile / load from the cache
            best[name] = min(_timed(lambda f=fn: kern(f)) for _ in range(3))
        best["spec"] = _timed(lambda m=mode: summarize_momentum_batch(
            prob, th0, elr, beta, steps=steps, tail=tail, momentum_mode=m))
        rows[mode] = best
    print(f"\n## heavy-ball momentum, B={B}, n=3, d=2, {steps} steps, beta=0.5, total")
    print("| mode | NumPy spec s | AoS kernel s | SoA kernel s | spec/AoS | AoS/SoA | spec/SoA |")
    print("|---|---|---|---|---|---|---|")
    for mode, t in rows.items():
        print(f"| {mode} | {t['spec']:.2f} | {t['aos']:.3f} | {t['soa']:.3f} | "
              f"{t['spec'] / t['aos']:.1f}x | {t['aos'] / t['soa']:.1f}x | "
              f"{t['spec'] / t['soa']:.0f}x |")
    return {"B": B, "steps": steps, "tail": tail, "seconds": rows}


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t
