"""What `toymodel.scan` costs besides the kernel: fixed cost per cell, bytes per cell, end-to-end rate.

Everything is measured in the same run on this machine:

* fixed cost: `toymodel.scan` of one step (``steps=1, tail=1``) on 1e5 cells (1000 ELRs x 100
  seeds, alpha = (1, 2, 4), d = 2), in memory: wall / cells, best of ``--repeat``; beside it
  `toymodel.backend.summarize` alone on the same cells (the kernel's own one-step cost), so the
  difference is what the scan adds (plan, initial states, labels, predictions, the dataset);
* bytes per cell: ``ds.nbytes / cells`` of that result in memory, and the same scan written to a
  zarr store: the bytes of its files / cells (apparent size) and ``du`` (disk blocks) / cells;
  one-step summaries compress unusually well, so the end-to-end scan below is written to a store
  too (its wall time there is the store path's rate);
* end to end: a d = 2, n = 3 scan of ``--steps`` steps (``--elrs`` x ``--seeds`` cells) through
  `toymodel.scan` (in memory, every summary, labels, predictions) in element-steps per second
  (cells x n x d x steps / wall), and its ratio to `toymodel.backend.summarize` alone on the same
  cells (the same initial states and ELRs, one call), best of ``--repeat`` each.

The backend is warmed up (JIT compiled) first. Usage:
``python benchmarks/bench_scan.py [--backend auto --steps 2000 --elrs 100 --seeds 200 --repeat 3]``.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time

import numpy as np

ALPHAS = (1.0, 2.0, 4.0)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} logical CPUs, load average {load:.2f} at start"


def best(fn, repeat):
    """Best wall time of ``repeat`` calls, and the last result; each call starts cold (the scan's
    cache of initial states, kept between the chunks of a scan, is emptied first)."""
    import importlib

    cache = importlib.import_module("toymodel._scan_chunk").__dict__.get("_INITIAL", {})
    t_best, out = np.inf, None
    for _ in range(repeat):
        cache.clear()
        t = time.perf_counter()
        out = fn()
        t_best = min(t_best, time.perf_counter() - t)
    return t_best, out


def kernel_inputs(n_elrs, seeds, constraint="total"):
    """The cells of a one-configuration scan as one batch: what `compute_chunk` hands the kernel."""
    from toymodel import dynamics
    from toymodel.scan import elr_grid
    from toymodel.problems import SphereToy

    p = SphereToy(ALPHAS)
    elrs = elr_grid(f"1e-2:10:{n_elrs}")
    theta0 = dynamics.initial_states(p, range(seeds), constraint)
    theta = np.ascontiguousarray(np.broadcast_to(theta0[None], (n_elrs,) + theta0.shape)
                                 .reshape(-1, *theta0.shape[1:]))
    return p, theta, np.repeat(elrs, seeds)


def store_bytes(path) -> tuple:
    apparent = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)
    try:
        blocks = int(subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True,
                                    check=True).stdout.split()[0]) * 1024
    except (OSError, subprocess.CalledProcessError, ValueError):
        blocks = float("nan")
    return apparent, blocks


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--steps", type=int, default=2000, help="steps of the end-to-end scan")
    ap.add_argument("--elrs", type=int, default=100, help="ELRs of the end-to-end scan")
    ap.add_argument("--seeds", type=int, default=200, help="seeds of the end-to-end scan")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    from toymodel import backend
    from toymodel.scan import scan

    print(f"machine: {machine()}")
    print(f"backend: {backend.resolve(args.backend)} (requested {args.backend!r})")
    one = dict(steps=1, tail=1, backend=args.backend, progress_bar=False)
    t = time.perf_counter()
    scan(ALPHAS, "1e-2:10:10", seeds=10, **one)  # JIT compile, imports
    scan(ALPHAS, "1e-2:10:10", seeds=10, steps=20, tail=2, backend=args.backend, progress_bar=False)
    print(f"warm-up (imports, JIT compile): {time.perf_counter() - t:.1f} s")

    # -- fixed cost ----------------------------------------------------------------------------
    E, S = 1000, 100
    cells = E * S
    t_scan, ds = best(lambda: scan(ALPHAS, f"1e-2:10:{E}", seeds=S, **one), args.repeat)
    p, theta, elr = kernel_inputs(E, S)
    t_kern, _ = best(lambda: backend.summarize(p, theta, elr, steps=1, tail=1, backend=args.backend),
                     args.repeat)
    print(f"\nfixed cost, steps=1, {cells:.0e} cells ({E} ELRs x {S} seeds), best of {args.repeat}:")
    print(f"  toymodel.scan            {t_scan * 1e3:8.1f} ms  {t_scan / cells * 1e6:6.3f} us/cell")
    print(f"  backend.summarize alone  {t_kern * 1e3:8.1f} ms  {t_kern / cells * 1e6:6.3f} us/cell")
    print(f"  added by the scan        {(t_scan - t_kern) / cells * 1e6:6.3f} us/cell")

    # -- bytes per cell ------------------------------------------------------------------------
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        path = os.path.join(tmp, "bench.zarr")
        scan(ALPHAS, f"1e-2:10:{E}", seeds=S, store=path, **one)
        apparent, blocks = store_bytes(path)
    print(f"\nbytes per cell ({cells:.0e} cells, steps=1):")
    print(f"  in memory (ds.nbytes / cells)     {ds.nbytes / cells:7.1f} B")
    print(f"  zarr store, file bytes / cells    {apparent / cells:7.1f} B")
    print(f"  zarr store, du / cells            {blocks / cells:7.1f} B")

    # -- end to end ----------------------------------------------------------------------------
    E, S, steps = args.elrs, args.seeds, args.steps
    cells = E * S
    work = cells * len(ALPHAS) * 2 * steps
    run = dict(steps=steps, tail=max(1, steps // 10), backend=args.backend)
    t_scan, _ = best(lambda: scan(ALPHAS, f"1e-2:10:{E}", seeds=S, progress_bar=False, **run),
                     args.repeat)
    p, theta, elr = kernel_inputs(E, S)
    t_kern, _ = best(lambda: backend.summarize(p, theta, elr, **run), args.repeat)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        paths = iter(os.path.join(tmp, f"s{i}.zarr") for i in range(args.repeat))
        t_store, _ = best(lambda: scan(ALPHAS, f"1e-2:10:{E}", seeds=S, progress_bar=False,
                                       store=next(paths), **run), args.repeat)
        apparent, blocks = store_bytes(os.path.join(tmp, "s0.zarr"))
    print(f"\nend to end, d = 2, n = 3, {steps} steps, {cells} cells ({E} ELRs x {S} seeds), "
          f"best of {args.repeat}:")
    print(f"  toymodel.scan            {work / t_scan:10.3e} element-steps/s  ({t_scan:.3f} s)")
    print(f"  toymodel.scan, store     {work / t_store:10.3e} element-steps/s  ({t_store:.3f} s)")
    print(f"  backend.summarize alone  {work / t_kern:10.3e} element-steps/s  ({t_kern:.3f} s)")
    print(f"  scan / summarize rate    {t_kern / t_scan:10.3f}   (store: {t_kern / t_store:.3f})")
    print(f"  zarr store: {apparent / cells:.1f} B/cell in its files, {blocks / cells:.1f} B/cell du")


if __name__ == "__main__":
    main()
