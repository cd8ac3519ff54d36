"""Distributed scans: strong scaling 1 -> 2 workers, per-chunk overhead, scheduler overhead.

Everything is measured in the same run on this machine, against the in-process scan of the same
chunk plan (the baseline):

* strong scaling: the same grid of compute-bound chunks (>= 1 s each by default) on a
  ``LocalCluster`` with 1 and with 2 worker processes (1 thread each); speed-up = T1 / T2;
* overhead vs ideal: (T_workers * workers - T_local) / (T_workers * workers), the share of the
  distributed wall time not explained by the in-process compute time (an ideal cluster has
  T_workers = T_local / workers); on a shared machine this also counts other users' load;
* workers idle: 1 - (sum of the tasks' compute times) / (workers * wall), from Dask's task
  stream: the scheduler's own overhead (dispatch, transfer, gather, commit) plus load imbalance,
  insensitive to how fast the cores happen to be;
* per-chunk overhead: the same comparison with tiny chunks (1 cell, a few steps), divided by the
  number of chunks: the fixed cost of one task (submit, schedule, pickle, gather, commit).

Workers are warmed up first (imports, and JIT compilation for compiled backends), and that time is
reported separately. The backend is the one ``--backend`` names (default ``auto``).

Usage: ``python benchmarks/bench_distributed.py [--steps 100000 --chunk-cells 256 --chunks 12]``.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

# One compute thread per worker process (and in the in-process baseline), so the scaling measured
# is Dask's and not numba's prange: must be set before numba is imported; workers inherit it.
if "--numba-threads" in sys.argv:
    os.environ["NUMBA_NUM_THREADS"] = sys.argv[sys.argv.index("--numba-threads") + 1]
else:
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return f"{cpu}, {os.cpu_count()} logical CPUs, load average {load[0]:.2f} at start"


def cluster(n):
    import distributed
    return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                    host="127.0.0.1", dashboard_address="127.0.0.1:0")


def timed_scan(kw, client=None, repeat=1):
    """Best wall time of ``repeat`` scans; with a client also the workers' busy fraction
    (sum of task compute times / (workers x wall)) of that run, from Dask's task stream."""
    from toymodel.scan import scan
    best, busy = np.inf, np.nan
    for _ in range(repeat):
        if client is None:
            t = time.perf_counter()
            scan(**kw)
            wall = time.perf_counter() - t
            b = np.nan
        else:
            from distributed import get_task_stream
            with get_task_stream(client) as ts:
                t = time.perf_counter()
                scan(client=client, **kw)
                wall = time.perf_counter() - t
            comp = sum(ss["stop"] - ss["start"] for task in ts.data for ss in task["startstops"]
                       if ss["action"] == "compute")
            b = comp / (len(client.nthreads()) * wall)
        if wall < best:
            best, busy = wall, b
    return (best, busy) if client is not None else best


def warm_up(client, kw):
    """Run one tiny chunk on every worker (imports, JIT) and return the wall time."""
    from toymodel._scan_plan import _plan
    from toymodel.scan import compute_chunk
    plan = _plan(kw["problem_or_alphas"], kw["elrs"][:1], 1, 10, 1, "total", kw["backend"],
                 kw["dtype"], False, 1, 2)
    t = time.perf_counter()
    client.run(compute_chunk, plan.task(0))
    return time.perf_counter() - t


def main(argv=None) -> int:
    import distributed

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alphas", default="1,2,4")
    p.add_argument("--steps", type=int, default=100000, help="steps per cell in the big chunks")
    p.add_argument("--chunk-cells", type=int, default=256, help="cells per big chunk")
    p.add_argument("--chunks", type=int, default=12, help="number of big chunks")
    p.add_argument("--tiny-chunks", type=int, default=200, help="number of 1-cell chunks")
    p.add_argument("--backend", default="auto")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--numba-threads", default=os.environ["NUMBA_NUM_THREADS"],
                   help="NUMBA_NUM_THREADS for this process and the workers (default 1)")
    args = p.parse_args(argv)
    alphas = [float(a) for a in args.alphas.split(",")]
    n_cells = args.chunk_cells * args.chunks
    big = dict(problem_or_alphas=alphas, elrs=np.geomspace(0.05, 5.0, n_cells), seeds=1,
               steps=args.steps, tail=max(1, args.steps // 10), backend=args.backend,
               dtype=args.dtype, chunk_size=args.chunk_cells, progress_bar=False)
    tiny = dict(big, elrs=np.geomspace(0.05, 5.0, args.tiny_chunks), steps=20, tail=2,
                chunk_size=1)
    print(f"machine: {machine()}")
    print(f"workload: alphas={alphas}, d=2; big: {args.chunks} chunks x {args.chunk_cells} cells x "
          f"{args.steps} steps; tiny: {args.tiny_chunks} chunks x 1 cell x 20 steps; "
          f"backend {args.backend}, {args.dtype}, NUMBA_NUM_THREADS={os.environ['NUMBA_NUM_THREADS']}")
    timed_scan(dict(tiny, elrs=tiny["elrs"][:2]))  # imports and JIT in this process
    t_local = timed_scan(big, repeat=args.repeat)
    t_tiny_local = timed_scan(tiny, repeat=args.repeat)
    print(f"in-process: big {t_local:.2f} s ({t_local / args.chunks:.2f} s per chunk), "
          f"tiny {t_tiny_local * 1e3 / args.tiny_chunks:.2f} ms per chunk")
    rows = []
    for n in (1, 2):
        with cluster(n) as c, distributed.Client(c) as client:
            t_warm = warm_up(client, big)
            t_big, busy = timed_scan(big, client, args.repeat)
            t_tiny, _ = timed_scan(tiny, client, args.repeat)
        overhead = (t_big * n - t_local) / (t_big * n)
        per_chunk = (t_tiny - t_tiny_local) / args.tiny_chunks
        rows.append((n, t_warm, t_big, t_local / t_big, overhead, 1 - busy, per_chunk))
    t1 = rows[0][2]
    print()
    print("| workers | warm-up (s) | big scan (s) | speed-up vs in-process | speed-up vs 1 worker "
          "| overhead vs ideal | workers idle | per-chunk overhead (ms) |")
    print("|---|---|---|---|---|---|---|---|")
    for n, t_warm, t_big, sp, ov, idle, pc in rows:
        print(f"| {n} | {t_warm:.2f} | {t_big:.2f} | {sp:.2f}x | {t1 / t_big:.2f}x | {ov * 100:.1f}% "
              f"| {idle * 100:.1f}% | {pc * 1e3:.1f} |")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
