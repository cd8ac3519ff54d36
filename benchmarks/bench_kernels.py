"""Benchmark of the batch backends: element-steps/s, ratios to NumPy, % of FP64 peak.

    python benchmarks/bench_kernels.py [--quick] [--out results.json]

One table per workload (d = 2 phase diagram, d = 100, d = 1000 toy and Rayleigh, n = 10 groups
total vs individual). An *element-step* is one coordinate of one trajectory advanced by one step
(B * n * d * steps per run). Baselines are measured in the same run: a naive Python loop (the
uncompiled trajectory code of kernels._trajectory on a tiny sample, extrapolated), NumPy
vectorised (dynamics.summarize_batch), JAX jit(vmap(lax.scan)) when jax is importable, numba CPU,
and the GPU backends when a GPU is present. Compile time (first call on a tiny input) is reported
separately and excluded from the rates; "run s" is the wall time of the timed run (extrapolated for
the Python loop). Every workload uses tail = steps / 10, the ratio of scans (CLI defaults
--steps 20000 --tail 2000); ELRs span c = elr * sum(alpha) in [0.3, 3] (all three regimes).

FLOPs per element-step are counted analytically from the kernel code (flops_per_element); the FP64
peak is cores x clock x FLOPs/cycle (AVX-512: 2 FMA ports x 8 doubles x 2 = 32; AVX2+FMA: 16),
read from os.cpu_count() and /proc/cpuinfo. It is an upper bound: a shared or throttled machine
reaches less.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from toymodel import backend, dynamics  # noqa: E402
from toymodel._deps import has  # noqa: E402
from toymodel.problems import RayleighToy, SphereToy  # noqa: E402

# FLOPs per element-step of the toy kernel's fused step (kernels._trajectory._toy_step): 10
# (gradient 1, |g|^2 2, update 2, |v|^2 2, rescale 1, carried |p|^2 2), tail steps +5 (the chord
# of the angle; the group norms come free from the sums). Rayleigh: 2m per element for the GEMM
# (m = d) plus ~20 for the quotient, gradient, rescale, check and tail statistics.
def flops_per_element(kind, d, tail_frac):
    if kind == "rayleigh":
        return 2 * d + 20
    return 10 + 5 * tail_frac


#: tail window as a fraction of the steps, as in scans (CLI defaults --steps 20000 --tail 2000).
TAIL_FRACTION = 0.1


def cpu_peak():
    """(GFLOP/s FP64 peak, description) from cores x GHz x FLOPs/cycle."""
    cores = os.cpu_count() or 1
    ghz, flags, model = None, "", platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "cpu MHz" and ghz is None:
                    ghz = float(val) / 1000
                elif key == "flags" and not flags:
                    flags = val
                elif key == "model name" and not model:
                    model = val.strip()
    except OSError:
        pass
    ghz = ghz or 2.0
    fpc = 32 if "avx512f" in flags else 16 if ("avx2" in flags and "fma" in flags) else 4
    return cores * ghz * fpc, (f"{model}: {cores} cores x {ghz:.2f} GHz x {fpc} FP64 FLOPs/cycle "
                               f"= {cores * ghz * fpc:.0f} GFLOP/s")


def workloads(quick):
    s = 0.2 if quick else 1.0
    alphas10 = np.geomspace(1.0, 8.0, 10)
    return [
        ("d=2 phase diagram (alphas 1,2,4; total)", SphereToy([1, 2, 4], 2), "total",
         int(1e5 * s), 200, "toy"),
        ("d=100 (alphas 1,2,4; total)", SphereToy([1, 2, 4], 100), "total", int(2000 * s), 100, "toy"),
        ("d=1000 toy (alphas 1,2,4; total)", SphereToy([1, 2, 4], 1000), "total", int(200 * s), 60,
         "toy"),
        ("d=1000 Rayleigh (dense A)", _rayleigh(1000), "total", int(500 * s), 20, "rayleigh"),
        ("n=10 groups, total", SphereToy(alphas10, 2), "total", int(2e4 * s), 200, "toy"),
        ("n=10 groups, individual", SphereToy(alphas10, 2), "individual", int(2e4 * s), 200, "toy"),
    ]


def _rayleigh(m):
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((m, m)))
    return RayleighToy((Q * np.linspace(0.0, 1.0, m)) @ Q.T)


def _inputs(problem, constraint, B):
    th0 = dynamics.initial_states(problem, np.arange(B), constraint)
    # ELRs across the three regimes of the toy: c = elr * sum(alpha) in [0.3, 3]
    elr = np.geomspace(0.3, 3.0, B) / problem.alphas.sum()
    return th0, elr


def _timed(fn, repeat=1):
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def naive_rate(problem, constraint, steps, tail, kind):
    """Element-steps/s of the uncompiled trajectory code (pure Python), 1 trajectory, few steps."""
    from toymodel.kernels import _trajectory as tr

    T = tr.build(lambda f: f)
    th0, elr = _inputs(problem, constraint, 1)
    n, d = th0.shape[1:]
    st = max(2, min(steps, int(2e5 // (n * d * (1 + (2 * d if kind == "rayleigh" else 0))))))
    th = th0[0].copy()
    z = np.zeros((n, d))
    out = np.empty((8, 1))
    acc = np.empty(7)
    t = time.perf_counter()
    if kind == "rayleigh":
        Bs = problem.A - problem.lambda_min * np.eye(d)
        T.rayleigh_run(Bs, th, problem.alphas, elr[0], z, False, st, max(1, st // 10), 1e-8, 1e-300,
                       z.copy(), z.copy(), z.copy(), z.copy(), z.copy(), np.empty(1), acc, out, 0)
    else:
        T.toy_run(th, problem.alphas, elr[0], z, False, constraint == "individual", st,
                  max(1, st // 10), 1e-8, 1e-300, z.copy(), z.copy(), z.copy(), np.empty((3, n)),
                  acc, out, 0)
    return n * d * st / (time.perf_counter() - t)


def jax_rate(problem, constraint, B, steps, tail, kind):
    """jit(vmap(lax.scan)) of the same step (loss/tail statistics reduced in the scan carry)."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    th0, elr = _inputs(problem, constraint, B)
    al = jnp.asarray(problem.alphas)
    indiv = constraint == "individual"
    A = jnp.asarray(problem.A - problem.lambda_min * np.eye(problem.dim)) if kind == "rayleigh" else None

    def grad_loss(th):
        if kind == "rayleigh":
            x = th[0]
            y = A @ x
            sq = x @ x
            F = x @ y / sq
            return F, (2 * (y - F * x) / sq)[None]
        x = th[:, 0]
        perp = jnp.sum(th[:, 1:] ** 2, -1)
        sq = perp + x * x
        coef = 2 * al / sq**2
        g = jnp.concatenate([(-coef * x * perp)[:, None], (coef * x * x)[:, None] * th[:, 1:]], 1)
        return jnp.sum(al * perp / sq), g

    def run(th, e):
        r = jnp.sqrt(jnp.sum(th**2, -1, keepdims=True))
        rho = jnp.sqrt(jnp.sum(th**2))
        lr = e * rho**2

        def body(carry, t):
            th, mean = carry
            F, g = grad_loss(th)
            v = th - lr * g
            v = v * (r / jnp.sqrt(jnp.sum(v**2, -1, keepdims=True)) if indiv
                     else rho / jnp.sqrt(jnp.sum(v**2)))
            k = jnp.maximum(t - (steps - tail) + 1, 1)
            mean = jnp.where(t >= steps - tail, mean + (F - mean) / k, mean)
            return (v, mean), None

        (th, mean), _ = jax.lax.scan(body, (th, 0.0), jnp.arange(steps))
        return mean

    f = jax.jit(jax.vmap(run))
    x0, e0 = jnp.asarray(th0), jnp.asarray(elr)
    t = time.perf_counter()
    f(x0, e0).block_until_ready()
    compile_s = time.perf_counter() - t
    dt = _timed(lambda: f(x0, e0).block_until_ready())
    return B * th0.shape[1] * th0.shape[2] * steps / dt, compile_s


def bench_backend(name, problem, constraint, B, steps, tail):
    th0, elr = _inputs(problem, constraint, B)
    compile_s = 0.0
    if name != "numpy":   # compile on a tiny input first (same dtypes, so the same signature)
        t = time.perf_counter()
        backend.summarize(problem, th0[:2], elr[:2], steps=2, tail=1, constraint=constraint,
                          backend=name)
        compile_s = time.perf_counter() - t
    run = lambda: backend.summarize(problem, th0, elr, steps=steps, tail=tail,  # noqa: E731
                                    constraint=constraint, backend=name)
    dt = _timed(run)
    if dt < 1.0:   # short runs: best of 3 more, against the noise of a shared machine
        dt = min(dt, _timed(run, repeat=3))
    return B * th0.shape[1] * th0.shape[2] * steps / dt, compile_s, dt


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller batches (about a minute)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    peak, peak_desc = cpu_peak()
    gpus = [b for b in ("cuda", "cupy") if b in backend.available_backends()
            and os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0")]
    print(f"# bench_kernels ({'quick' if args.quick else 'full'}); numpy {np.__version__}; "
          f"python {platform.python_version()}")
    print(f"# CPU FP64 peak estimate: {peak_desc}")
    print(f"# GPU backends: {gpus or 'none (no GPU on this machine)'}; "
          f"JAX: {'yes' if has('jax') else 'not installed'}")
    results = []
    for title, problem, constraint, B, steps, kind in workloads(args.quick):
        tail = max(1, int(steps * TAIL_FRACTION))
        fpe = flops_per_element(kind, problem.dim, tail / steps)
        total = B * problem.n_groups * problem.dim * steps
        rate = naive_rate(problem, constraint, steps, tail, kind)
        rows = [("python loop (extrapolated)", rate, 0.0, total / rate)]
        r_np, _, t_np = bench_backend("numpy", problem, constraint, B, steps, tail)
        rows.append(("numpy (summarize_batch)", r_np, 0.0, t_np))
        if has("jax"):
            try:
                rate, comp = jax_rate(problem, constraint, B, steps, tail, kind)
                rows.append(("jax jit(vmap(scan)) [loss only]", rate, comp, total / rate))
            except Exception as err:   # report, do not fail the benchmark
                print(f"  jax failed: {err}")
        for name in ["numba"] + gpus:
            if name == "numba" and not has("numba"):
                continue
            r, c, t = bench_backend(name, problem, constraint, B, steps, tail)
            rows.append((name, r, c, t))
        n, d = problem.n_groups, problem.dim
        print(f"\n## {title}: B={B} trajectories, n={n}, d={d}, steps={steps}, tail={tail}, "
              f"{fpe:.0f} FLOP/element-step")
        print(f"| method | element-steps/s | x NumPy | GFLOP/s | % CPU FP64 peak | compile s | run s |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for meth, rate, comp, wall in rows:
            gf = rate * fpe / 1e9
            pct = f"{100 * gf / peak:.1f}" if meth not in gpus else "(GPU)"
            print(f"| {meth} | {rate:.3g} | {rate / r_np:.2f} | {gf:.3g} | {pct} | {comp:.2f} | "
                  f"{wall:.3g} |")
            results.append(dict(workload=title, method=meth, B=B, n=n, d=d, steps=steps,
                                tail=tail, rate=rate, ratio_numpy=rate / r_np, gflops=gf,
                                compile_s=comp, run_s=wall))
        sys.stdout.flush()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(peak_gflops=peak, peak=peak_desc, results=results), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
