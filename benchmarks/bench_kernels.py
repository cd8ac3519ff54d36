"""Benchmark of the batch backends: element-steps/s, ratios to baselines measured in the same run.

    python benchmarks/bench_kernels.py [--quick] [--only d=2] [--out results.json]

One table per workload (d = 2 phase diagram, d = 100, d = 1000 toy and Rayleigh, n = 10 groups
total vs individual). An *element-step* is one coordinate of one trajectory advanced by one step
(B * n * d * steps per run). Rows, all in the same run: a naive Python loop (the uncompiled
trajectory code, a few steps of one trajectory, extrapolated), NumPy (dynamics.summarize_batch,
the specification), JAX jit(vmap(lax.scan)) when jax is importable (tail loss only), a plain SoA
numba kernel of the same step (benchmarks/_baselines.py, tail loss only), numba's per-trajectory
toy kernel (numba_cpu.toy_aos), numba as dispatched (backend "numba": the lane-vectorised SoA
kernel for small states), numba in float32, with the Lyapunov twin, and the GPU backends when a GPU
is present. Every method is timed in interleaved rounds (best of them; other processes load a
shared machine), compilation excluded and reported separately. The "ratios" line under each table
divides numba's rate by the others'.

Then: the roofline (FLOPs, divisions and square roots per element-step counted from the kernels'
code, the ceilings they imply from benchmarks/bench_divsqrt.py measured in this run, the fraction
reached); the regime labels of float32 against float64 on a phase diagram; the end-to-end rate of
``toymodel.scan`` on the d = 2 workload's cells at 2000 steps (the issue's end-to-end workload),
with the plain baselines, the kernel alone and the scan on the per-trajectory kernel re-measured on
the same cells and steps. Every workload uses tail = steps / 10 (the scans' ratio)
and ELRs spanning c = elr * sum(alpha) in [0.3, 3] (all three regimes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import _asm_counts  # noqa: E402
import _baselines  # noqa: E402
import _bench_momentum  # noqa: E402
import bench_divsqrt  # noqa: E402

from toymodel import backend, dynamics, regimes, theory  # noqa: E402
from toymodel._deps import has  # noqa: E402
from toymodel.problems import RayleighToy, SphereToy  # noqa: E402

PLAIN = "plain SoA numba [loss only]"
PLAIN_DEFAULTS = "plain SoA numba, @njit defaults [loss only]"
#: the issue's calibration of its plain SoA kernel: 5.6e8 element-steps/s against 2.0e8 for the
#: per-trajectory kernel and 1.55e8 for the scan end to end, on the filer's 2-core machine
ISSUE_PLAIN_OVER_KERNEL = 5.6e8 / 2.0e8
ISSUE_SCAN_OVER_PLAIN = 1.55e8 / 5.6e8

#: tail window as a fraction of the steps, as in scans (CLI defaults --steps 20000 --tail 2000).
TAIL_FRACTION = 0.1


def op_counts(kernel, n, d, tail_frac=TAIL_FRACTION):
    """(FLOPs, divisions, square roots) per element-step of a toy kernel, counted from its code
    (total constraint, no twin; an FMA is 2 FLOPs, div and sqrt are counted apart).

    ``"soa"`` (kernels/_soa.py), per trajectory-step: the steps before the tail are deferred
    (``lazy_step_source``, T51): per group 6d + 2 FLOPs (|p|^2, r^2, the coefficient h, update,
    |v|^2) and 1 division (1/r^2), per trajectory 2n + 3 (sums, bounds), no root; the tail steps
    are projected (``step_source``): per group 10d + 4 FLOPs (|p|^2, r^2, coefficient, gradient,
    update, |v|^2, rescale, |new|^2), n + 1 divisions (1/r^2 per group, the rescale), 1 sqrt, plus
    per group 2d + 5 FLOPs (loss, |g|^2, sums), per trajectory 5nd + 41 FLOPs (chord, Welford,
    share, the arcsin polynomial, sums), 3 divisions (two reciprocal norms, arcsin) and 5 roots
    (two norms, chord, arcsin, gradient norm). ``"aos"`` (_toy_step._toy_step): per group 10d + 11 FLOPs and 2 divisions
    (coefficient and loss, every step), per trajectory 1 division and 1 sqrt; tail steps add
    5nd FLOPs (chord), 4 divisions and 4 roots (plus a libm arcsin). ``"plain"`` (the baseline of
    _baselines.py): per group 10d FLOPs and 1 division, per trajectory 1 division and 1 sqrt; tail
    steps add per group 3 FLOPs and 1 division (the loss), per trajectory 3 FLOPs and 1 division
    (the running mean)."""
    if kernel == "plain":
        flops, div, sq = 10 * d * n, n + 1, 1
        tflops, tdiv, tsq = 3 * n + 3, n + 1, 0
    elif kernel == "soa":   # deferred steps; the tail's are projected (their extra over these)
        flops, div, sq = (6 * d + 2) * n + 2 * n + 3, n, 0
        tflops = (10 * d + 4) * n + (2 * d + 5) * n + 5 * n * d + 41 - flops
        tdiv, tsq = n + 1 + 3 - div, 1 + 5
    else:
        flops, div, sq = (10 * d + 11) * n, 2 * n + 1, 1
        tflops, tdiv, tsq = 5 * n * d + 30, 4, 4
    e = n * d
    return ((flops + tail_frac * tflops) / e, (div + tail_frac * tdiv) / e,
            (sq + tail_frac * tsq) / e)


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


def _inputs(problem, constraint, B, twin=False):
    out = dynamics.initial_states(problem, np.arange(B), constraint, twin=twin)
    # ELRs across the three regimes of the toy: c = elr * sum(alpha) in [0.3, 3]
    elr = np.geomspace(0.3, 3.0, B) / problem.alphas.sum()
    return (out[0], elr, out[1]) if twin else (out, elr)


def _rounds(fns, rounds, max_total=20.0):
    """Best wall time of every callable over interleaved rounds (a slow one repeats less)."""
    best = {k: np.inf for k in fns}
    spent = {k: 0.0 for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            if spent[k] > max_total and np.isfinite(best[k]):
                continue
            t = time.perf_counter()
            f()
            dt = time.perf_counter() - t
            best[k] = min(best[k], dt)
            spent[k] += dt
    return best


def _kernel_call(entry, problem, th0, elr, steps, tail, constraint, twin=None):
    """A call of a numba_cpu toy entry point (toy_aos / toy_soa) on fresh buffers."""
    from toymodel.kernels._protocol import BatchInputs, BatchOutputs

    dt = th0.dtype
    B = th0.shape[0]
    al = np.ascontiguousarray(np.broadcast_to(problem.alphas, th0.shape[:2]), dtype=dt)
    el = np.ascontiguousarray(elr, dtype=dt)

    def run():
        inputs = BatchInputs.of(th0.copy(), el, al, twin, individual=constraint == "individual",
                                steps=steps, tail=tail)
        entry(inputs, BatchOutputs.empty(np, B, dt))
    return run


def bench_workload(title, problem, constraint, B, steps, kind, gpus, rounds):
    tail = max(1, int(steps * TAIL_FRACTION))
    th0, elr, w = _inputs(problem, constraint, B, twin=True)
    n, d = problem.n_groups, problem.dim
    fns, compile_s = {}, {}

    def add(name, make_fn, warm=None):
        t = time.perf_counter()
        fn = make_fn()
        (warm or fn)()
        compile_s[name] = time.perf_counter() - t
        fns[name] = fn

    def summ(name, x0=th0, **kw):
        return lambda: (lambda: backend.summarize(problem, x0, elr, steps=steps, tail=tail,
                                                  constraint=constraint, backend=name, **kw))

    def tiny(name, x0=th0, **kw):   # the compile call: same dtypes, so the timed call reuses it
        return lambda: backend.summarize(problem, x0[:80], elr[:80], steps=2, tail=1,
                                         constraint=constraint, backend=name, **kw)

    fns["numpy (summarize_batch)"] = summ("numpy")()
    compile_s["numpy (summarize_batch)"] = 0.0
    if has("jax"):
        try:
            f, c = _baselines.jax_run(problem, constraint, th0, elr, steps, tail, kind)
            fns["jax jit(vmap(scan)) [loss only]"], compile_s["jax jit(vmap(scan)) [loss only]"] = f, c
        except Exception as err:   # report, do not fail the benchmark
            print(f"  jax failed: {err}")
    numba_name = "numba"
    if has("numba"):
        from toymodel.kernels import numba_cpu as nc

        if kind == "toy":
            add("plain SoA numba [loss only]", lambda: lambda: _baselines.plain_soa(
                th0, elr, problem.alphas, constraint, steps, tail),
                lambda: _baselines.plain_soa(th0[:80], elr[:80], problem.alphas, constraint, 2, 1))
            add(PLAIN_DEFAULTS, lambda: lambda: _baselines.plain_soa(
                th0, elr, problem.alphas, constraint, steps, tail, defaults=True),
                lambda: _baselines.plain_soa(th0[:80], elr[:80], problem.alphas, constraint, 2, 1,
                                             defaults=True))
            add("numba per-trajectory kernel", lambda: _kernel_call(
                nc.toy_aos, problem, th0, elr, steps, tail, constraint))
            numba_name = f"numba ({'SoA' if nc.use_soa(B, n, d) else 'per-trajectory'} kernel)"
        add(numba_name, summ("numba"), tiny("numba"))
        if kind == "toy":
            add("numba float32", summ("numba", th0.astype(np.float32)),
                tiny("numba", th0.astype(np.float32)))
            add("numba + Lyapunov twin", summ("numba", twin_dirs=w), tiny("numba", twin_dirs=w[:80]))
    for g in gpus:
        add(g, summ(g), tiny(g))
    slow = {k: f for k, f in fns.items() if k.startswith("numpy")}
    best = _rounds({k: f for k, f in fns.items() if k not in slow}, rounds)
    best.update(_rounds(slow, 2))
    total = B * n * d * steps
    rates = {k: total / t for k, t in best.items()}
    rates["python loop (extrapolated)"] = _baselines.python_loop(problem, constraint, th0, elr,
                                                                 steps, kind)
    return dict(title=title, B=B, n=n, d=d, steps=steps, tail=tail, kind=kind, rates=rates,
                compile_s=compile_s, numba=numba_name, total=total)


def print_workload(res, peak, gpus):
    n, d, kind, rates = res["n"], res["d"], res["kind"], res["rates"]
    fpe = (2 * d + 20) if kind == "rayleigh" else op_counts(
        "soa" if "SoA" in res["numba"] else "aos", n, d)[0]
    print(f"\n## {res['title']}: B={res['B']} trajectories, n={n}, d={d}, steps={res['steps']}, "
          f"tail={res['tail']}, {fpe:.1f} FLOP/element-step")
    print("| method | element-steps/s | x NumPy | GFLOP/s | % CPU FP64 peak | compile s | run s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    r_np = rates["numpy (summarize_batch)"]
    order = ["python loop (extrapolated)"] + [k for k in rates if k != "python loop (extrapolated)"]
    for meth in order:
        rate = rates[meth]
        gf = rate * fpe / 1e9
        pct = "(GPU)" if meth in gpus else f"{100 * gf / peak:.1f}"
        print(f"| {meth} | {rate:.3g} | {rate / r_np:.2f} | {gf:.3g} | {pct} | "
              f"{res['compile_s'].get(meth, 0.0):.2f} | {res['total'] / rate:.3g} |")
    nb = rates.get(res["numba"])
    if nb is None:
        return
    parts = [f"{res['numba']} / {k} = {nb / rates[k]:.2f}" for k in rates
             if k in ("numba per-trajectory kernel", PLAIN, PLAIN_DEFAULTS,
                      "jax jit(vmap(scan)) [loss only]", "numpy (summarize_batch)")]
    if "numba float32" in rates:
        parts.append(f"float32 / float64 = {rates['numba float32'] / nb:.2f}")
    print("\nratios (same run): " + "; ".join(parts))


def roofline(results, ceil):
    """The toy kernels against their division/sqrt and FLOP ceilings on this CPU, then the SoA
    kernel against the bound of what its compiled step issues (`_asm_counts`)."""
    print("\n## Roofline (float64, all threads; ceilings from bench_divsqrt in this run: "
          f"div {ceil['div']:.3g}/s, sqrt {ceil['sqrt']:.3g}/s, FMA {ceil['fma']:.3g}/s)")
    print("| workload | kernel | FLOP/el-step | div/el-step | sqrt/el-step | div+sqrt ceiling | "
          "FLOP ceiling | measured | % of the lower ceiling |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    soa = []
    for res in results:
        if res["kind"] != "toy" or res["constraint"] != "total" or res["n"] != 3:
            continue
        kern = "soa" if "SoA" in res["numba"] else "aos"
        rows = [(kern, res["rates"][res["numba"]])]
        if kern == "soa":
            rows.append(("plain", res["rates"][PLAIN]))
            soa.append(res)
        for kern, rate in rows:
            fl, dv, sq = op_counts(kern, res["n"], res["d"])
            c_div = 1.0 / (dv / ceil["div"] + sq / ceil["sqrt"])   # one divide/sqrt unit per core
            c_flop = 2 * ceil["fma"] / fl
            print(f"| d={res['d']} | {kern} | {fl:.1f} | {dv:.3f} | {sq:.3f} | {c_div:.3g} | "
                  f"{c_flop:.3g} | {rate:.3g} | {100 * rate / min(c_div, c_flop):.0f} |")
    if not soa:
        return
    over = bench_divsqrt.overlap(ceil) if "mix" in ceil else float("nan")
    print("\nWhat the SoA step issues, counted from its compiled assembly (`_asm_counts`: vector "
          "arithmetic apart from divisions and roots, moves not counted; per element-step in lane-"
          "operations, tail steps weighted by the tail fraction). Issue ceiling: every arithmetic "
          "instruction at the FMA rate; additive bound: issue, division and sqrt times summed (the "
          f"mixed loop of bench_divsqrt took {over:.2f} of the sum of its parts' times in this run)")
    print("| workload | arith/el-step | div/el-step | sqrt/el-step | issue ceiling | div+sqrt "
          "ceiling | additive bound | measured | % of the additive bound |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for res in soa:
        plain = _asm_counts.step_counts(res["n"], res["d"], tail=False)
        tail = _asm_counts.step_counts(res["n"], res["d"], tail=True)
        if plain is None or tail is None:
            print(f"| d={res['d']} | assembly not readable here | | | | | | | |")
            continue
        w = res["tail"] / res["steps"]
        ar, dv, sq = ((1 - w) * p + w * t for p, t in zip(plain, tail))
        c_issue = ceil["fma"] / ar
        c_div = 1.0 / (dv / ceil["div"] + sq / ceil["sqrt"])
        bound = 1.0 / (1.0 / c_issue + 1.0 / c_div)
        rate = res["rates"][res["numba"]]
        print(f"| d={res['d']} | {ar:.2f} | {dv:.3f} | {sq:.3f} | {c_issue:.3g} | {c_div:.3g} | "
              f"{bound:.3g} | {rate:.3g} | {100 * rate / bound:.0f} |")


def label_agreement(quick):
    """Regime labels (classify_summary, as the scan) of float32 against float64 on a d = 2 phase
    diagram, and a control: float64 through the two CPU kernels, which differ by rounding only."""
    from toymodel.kernels import numba_cpu as nc

    alphas = np.array([1.0, 2.0, 4.0])
    prob = SphereToy(alphas, 2)
    n_elr, seeds, steps = (200, 20, 2000) if quick else (200, 20, 20000)
    tail = steps // 10
    lo, hi = theory.total_threshold(alphas), theory.equilibrium_divergence_elr(alphas)
    elrs = np.geomspace(0.3 * lo, 2.0 * hi, n_elr)
    th0 = dynamics.initial_states(prob, np.arange(seeds))
    th = np.ascontiguousarray(np.broadcast_to(th0[None], (n_elr, seeds, 3, 2)).reshape(-1, 3, 2))
    e = np.repeat(elrs, seeds)

    def labels(tail_loss, status, tail_angle):
        return regimes.classify_summary(tail_loss, prob.random_loss(), tail_angle=tail_angle,
                                        invalid_reason=dynamics.status_reasons(status),
                                        tail_steps=tail)[0]
    lab, loss = {}, {}
    for dt in (np.float64, np.float32):
        r = backend.summarize(prob, th.astype(dt), e, steps=steps, tail=tail, backend="numba")
        lab[dt], loss[dt] = labels(r["tail_loss"], r["status"], r["tail_angle"]), r["tail_loss"]
    from toymodel.kernels._protocol import BatchInputs, BatchOutputs
    inputs = BatchInputs.of(th.copy(), e.copy(), np.tile(alphas, (e.size, 1)), steps=steps, tail=tail)
    out = BatchOutputs.empty(np, e.size, np.float64)
    nc.toy_aos(inputs, out)
    lab_aos = labels(out.out[0], out.status, out.out[6])
    away = (np.abs(e / lo - 1) > 0.02) & (np.abs(e / hi - 1) > 0.02)
    ratio = loss[np.float64] / prob.random_loss()
    off = away & (np.abs(ratio / regimes.DIV_FRAC - 1) > 0.02) & \
        (np.abs(ratio / regimes.CONV_RTOL - 1) > 0.02)
    same = lab[np.float64] == lab[np.float32]
    ctrl = lab[np.float64] == lab_aos
    print(f"\n## float32 vs float64 regime labels ({n_elr} ELRs x {seeds} seeds, steps={steps}, "
          f"tail={tail}; boundaries: 1/sum(alpha) = {lo:.4g}, divergence ELR = {hi:.4g})")
    print(f"identical outside +-2% of the ELR boundaries: {same[away].mean():.4%} of {away.sum()} "
          f"cells (control, float64 SoA vs float64 per-trajectory kernel: {ctrl[away].mean():.4%})")
    print(f"also outside +-2% of the loss criteria (conv_rtol, div_frac): {same[off].mean():.4%} of "
          f"{off.sum()} (control {ctrl[off].mean():.4%})")
    # the phase boundaries as the float64 labels draw them: per label transition along the ELR
    # axis, the first ELR whose majority label over the seeds is the next regime (the divergence
    # label sets in near c = 9.1 here, not at the predicted c = 10: chaotic tails sit above L*)
    order = {r: k for k, r in enumerate(regimes.REGIMES)}
    grid = lab[np.float64].reshape(n_elr, seeds)
    rank = np.array([[order.get(x, -1) for x in row] for row in grid])
    majority = np.array([np.bincount(r[r >= 0], minlength=3).argmax() if (r >= 0).any() else -1
                         for r in rank])
    observed = [elrs[k + 1] for k in range(n_elr - 1)
                if majority[k] >= 0 and majority[k + 1] > majority[k]]
    near_obs = np.zeros(e.size, bool)
    for b in observed:
        near_obs |= np.abs(e / b - 1) <= 0.02
    away_obs = away & ~near_obs
    obs_c = ", ".join(f"{b * alphas.sum():.3f}" for b in observed)
    print(f"identical outside +-2% of the predicted and of the observed boundaries (c = {obs_c}): "
          f"{same[away_obs].mean():.4%} of {away_obs.sum()} (control {ctrl[away_obs].mean():.4%})")
    diff = np.flatnonzero(~same & away)
    if diff.size:
        c = e[diff] * alphas.sum()
        print(f"differing cells: {diff.size}, c in [{c.min():.3f}, {c.max():.3f}], tail loss / "
              f"random level in [{ratio[diff].min():.3f}, {ratio[diff].max():.3f}]")
    return dict(f32_away=float(same[away].mean()), control_away=float(ctrl[away].mean()),
                f32_away_observed=float(same[away_obs].mean()),
                f32_off_criteria=float(same[off].mean()))


#: steps of the end-to-end scan: the issue's end-to-end workload (the d = 2 cells, 2000 steps)
SCAN_STEPS = 2000


def scan_end_to_end(res, rounds=3):
    """``toymodel.scan`` on the d = 2 workload's cells (ELRs x 100 seeds) at `SCAN_STEPS` steps,
    tail steps / 10, against the plain SoA baselines, the kernel alone and the scan on the
    per-trajectory kernel, all on the same cells and steps, interleaved in this run."""
    try:
        import toymodel
    except Exception as err:   # the scan is optional here
        print(f"\nscan end-to-end: not measured ({err})")
        return None
    from toymodel.kernels import numba_cpu as nc

    seeds, steps = 100, SCAN_STEPS
    tail = max(1, int(steps * TAIL_FRACTION))
    elrs = np.geomspace(0.3, 3.0, res["B"] // seeds) / 7.0
    alphas = [1.0, 2.0, 4.0]
    kw = dict(seeds=seeds, steps=steps, tail=tail, backend="numba", progress_bar=False)
    prob = SphereToy(alphas, 2)
    # the scan's own cells: ELR-major, then seeds (one configuration)
    th0 = dynamics.initial_states(prob, np.arange(seeds), "total")
    th0 = np.ascontiguousarray(np.broadcast_to(th0, (elrs.size,) + th0.shape).reshape(-1, 3, 2))
    elr = np.repeat(elrs, seeds)

    def scan(per_trajectory=False):
        keep = nc.SOA_MAX_ELEMENTS
        nc.SOA_MAX_ELEMENTS = 0 if per_trajectory else keep   # the dispatch's shape rule, off
        try:
            toymodel.scan(alphas, elrs, **kw)
        finally:
            nc.SOA_MAX_ELEMENTS = keep
    fns = {"scan": scan,
           "scan, per-trajectory kernel": lambda: scan(per_trajectory=True),
           "kernel alone": lambda: backend.summarize(prob, th0, elr, steps=steps, tail=tail,
                                                     backend="numba"),
           PLAIN: lambda: _baselines.plain_soa(th0, elr, alphas, "total", steps, tail),
           PLAIN_DEFAULTS: lambda: _baselines.plain_soa(th0, elr, alphas, "total", steps, tail,
                                                        defaults=True)}
    toymodel.scan(alphas, elrs[:4], **dict(kw, steps=2, tail=1))   # compiled and cached already
    best = _rounds(fns, rounds, max_total=30.0)
    el = elr.size * 6 * steps
    r = {k: el / t for k, t in best.items()}
    rate, old = r["scan"], r["scan, per-trajectory kernel"]
    plain, plain_d = r[PLAIN], r[PLAIN_DEFAULTS]
    old_kernel = res["rates"]["numba per-trajectory kernel"]
    issue_plain = ISSUE_PLAIN_OVER_KERNEL * old_kernel
    print(f"\n## Scan end to end (toymodel.scan, {elrs.size} ELRs x {seeds} seeds = {elr.size} "
          f"cells, {steps} steps, tail {tail}; best of {rounds} interleaved rounds)")
    print("| method | element-steps/s | scan / it |")
    print("|---|---:|---:|")
    for k, v in r.items():
        print(f"| {k} | {v:.3g} | {rate / v:.2f} |")
    print(f"\nend-to-end / plain SoA kernel: {rate / plain:.2f} (tuned), {rate / plain_d:.2f} "
          f"(numba defaults); / the kernel alone: {rate / r['kernel alone']:.2f}; the scan on the "
          f"per-trajectory kernel: {old / plain:.2f} x plain (tuned), {old / plain_d:.2f} x plain "
          f"(defaults); the SoA scan is {rate / old:.2f} x it")
    print(f"the plain baselines over the per-trajectory kernel (d=2 table): tuned "
          f"{res['rates'][PLAIN] / old_kernel:.2f}, defaults "
          f"{res['rates'][PLAIN_DEFAULTS] / old_kernel:.2f}; the issue's plain SoA kernel: "
          f"{ISSUE_PLAIN_OVER_KERNEL:.2f} (its scan {ISSUE_SCAN_OVER_PLAIN:.2f} x it). Scaled to the "
          f"issue's baseline ({ISSUE_PLAIN_OVER_KERNEL:.2f} x this run's per-trajectory kernel, "
          f"{issue_plain:.3g}/s) the end-to-end rate is {rate / issue_plain:.2f} x it")
    return dict(rates=r, steps=steps, over_plain=rate / plain, over_plain_defaults=rate / plain_d,
                over_kernel=rate / r["kernel alone"], over_issue_baseline=rate / issue_plain)


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller batches (a few minutes)")
    p.add_argument("--only", help="run the workloads whose title starts with this")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    peak, peak_desc = cpu_peak()
    gpus = [b for b in ("cuda", "cupy") if b in backend.available_backends()
            and os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0")]
    print(f"# bench_kernels ({'quick' if args.quick else 'full'}); numpy {np.__version__}; "
          f"python {platform.python_version()}; load average {os.getloadavg()[0]:.2f}")
    print(f"# CPU FP64 peak estimate: {peak_desc}")
    print(f"# GPU backends: {gpus or 'none (no GPU on this machine)'}; "
          f"JAX: {'yes' if has('jax') else 'not installed'}")
    ceil = bench_divsqrt.measure(np.float64, repeat=3 if args.quick else 5)
    results = []
    for title, problem, constraint, B, steps, kind in workloads(args.quick):
        if args.only and not title.startswith(args.only):
            continue
        res = bench_workload(title, problem, constraint, B, steps, kind, gpus,
                             3 if args.quick else 5)
        res["constraint"] = constraint
        print_workload(res, peak, gpus)
        results.append(res)
        sys.stdout.flush()
    roofline(results, ceil)
    extra = {"momentum": _bench_momentum.bench_momentum(args.quick)} if not args.only else {}
    if results and results[0]["title"].startswith("d=2") and has("numba"):
        extra["scan_rate"] = scan_end_to_end(results[0], 2 if args.quick else 3)
        extra["f32_label_agreement"] = label_agreement(args.quick)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(peak_gflops=peak, peak=peak_desc, ceilings=ceil, results=results,
                           **extra), f, indent=1, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
