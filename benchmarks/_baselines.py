"""Baselines of bench_kernels.py, measured in the same run as the backends.

* `plain_soa`: a plain structure-of-arrays numba kernel of the same toy step (trajectories
  innermost in blocks of 256 lanes, ``n`` and ``d`` at run time, one loop nest per operation over
  arrays of the block, tail loss only, no status checks), compiled two ways: *tuned* (``prange``
  over blocks, numpy error model, fastmath reassoc+contract: what a straightforward lane-vectorised
  rewrite gives with the project's compiler settings, the yardstick of the fused kernel
  kernels/_soa.py, which also computes every summary and status) and with *numba's defaults*
  (``@njit``: one thread, Python's error model, whose division checks keep the lane loops scalar,
  no fastmath). The performance issue's "plain SoA kernel" was measured at 2.8x the per-trajectory
  kernel of its day; on this machine the defaults build runs at ~2x the per-trajectory kernel, the
  tuned one at ~9x (both printed by bench_kernels.py), so the two bracket the issue's baseline;
* `jax_run`: ``jit(vmap(lax.scan))`` of the same step, tail loss only (JAX is optional);
* `python_loop`: the uncompiled trajectory code of kernels._trajectory on one trajectory.
"""
from __future__ import annotations

import math
import time

import numpy as np
from numba import njit, prange

LANES = 256


def _plain_soa_py(theta, elr, alphas, individual, steps, tail, out):
    B, n, d = theta.shape
    start = steps - tail
    for blk in prange((B + LANES - 1) // LANES):
        b0 = blk * LANES
        nl = min(LANES, B - b0)
        th = np.empty((n, d, LANES))
        g = np.empty((n, d, LANES))
        al = np.empty((n, LANES))
        rad = np.empty((n, LANES))
        sq = np.empty((n, LANES))
        perp = np.empty((n, LANES))
        coef = np.empty((n, LANES))
        lr = np.empty(LANES)
        rho = np.empty(LANES)
        tot = np.empty(LANES)
        loss = np.empty(LANES)
        mean = np.zeros(LANES)
        for lane in range(nl):
            s = 0.0
            for i in range(n):
                al[i, lane] = alphas[b0 + lane, i]
                si = 0.0
                for k in range(d):
                    th[i, k, lane] = theta[b0 + lane, i, k]
                    si += th[i, k, lane] ** 2
                rad[i, lane] = math.sqrt(si)
                s += si
            rho[lane] = math.sqrt(s)
            lr[lane] = elr[b0 + lane] * s
        for t in range(steps):
            for i in range(n):                                  # group norms
                perp[i, :nl] = 0.0
                for k in range(1, d):
                    for lane in range(nl):
                        perp[i, lane] += th[i, k, lane] ** 2
                for lane in range(nl):
                    sq[i, lane] = perp[i, lane] + th[i, 0, lane] ** 2
            for i in range(n):                                  # gradient
                for lane in range(nl):
                    coef[i, lane] = 2.0 * al[i, lane] / (sq[i, lane] * sq[i, lane])
                    g[i, 0, lane] = -coef[i, lane] * th[i, 0, lane] * perp[i, lane]
                for k in range(1, d):
                    for lane in range(nl):
                        g[i, k, lane] = coef[i, lane] * th[i, 0, lane] ** 2 * th[i, k, lane]
            if t >= start:                                      # the loss, tail steps only
                loss[:nl] = 0.0
                for i in range(n):
                    for lane in range(nl):
                        loss[lane] += al[i, lane] * perp[i, lane] / sq[i, lane]
                kk = t - start + 1
                for lane in range(nl):
                    mean[lane] += (loss[lane] - mean[lane]) / kk
            for i in range(n):                                  # update
                for k in range(d):
                    for lane in range(nl):
                        th[i, k, lane] -= lr[lane] * g[i, k, lane]
            if individual:                                      # rescale
                for i in range(n):
                    tot[:nl] = 0.0
                    for k in range(d):
                        for lane in range(nl):
                            tot[lane] += th[i, k, lane] ** 2
                    for k in range(d):
                        for lane in range(nl):
                            th[i, k, lane] *= rad[i, lane] / math.sqrt(tot[lane])
            else:
                tot[:nl] = 0.0
                for i in range(n):
                    for k in range(d):
                        for lane in range(nl):
                            tot[lane] += th[i, k, lane] ** 2
                for lane in range(nl):
                    tot[lane] = rho[lane] / math.sqrt(tot[lane])
                for i in range(n):
                    for k in range(d):
                        for lane in range(nl):
                            th[i, k, lane] *= tot[lane]
        for lane in range(nl):
            out[b0 + lane] = mean[lane]
            for i in range(n):
                for k in range(d):
                    theta[b0 + lane, i, k] = th[i, k, lane]


_plain_soa = njit(parallel=True, error_model="numpy", fastmath={"reassoc", "contract"},
                  nogil=True)(_plain_soa_py)
_plain_soa_defaults = njit(_plain_soa_py)   # prange runs as range without parallel=True


def plain_soa(theta0, elr, alphas, constraint, steps, tail, defaults=False):
    """Tail-mean loss per trajectory from the plain SoA kernel (float64): the tuned build, or
    numba's defaults (``defaults=True``)."""
    theta = np.array(theta0, np.float64, copy=True, order="C")
    out = np.empty(theta.shape[0])
    al = np.ascontiguousarray(np.broadcast_to(alphas, theta.shape[:2]), dtype=np.float64)
    kern = _plain_soa_defaults if defaults else _plain_soa
    kern(theta, np.ascontiguousarray(elr, dtype=np.float64), al,
         constraint == "individual", int(steps), int(tail), out)
    return out


def jax_run(problem, constraint, th0, elr, steps, tail, kind):
    """A compiled ``f()`` running jit(vmap(lax.scan)) of the step (tail loss reduced in the scan
    carry) and its compile time."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
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
    return (lambda: f(x0, e0).block_until_ready()), time.perf_counter() - t


def python_loop(problem, constraint, th0, elr, steps, kind):
    """Element-steps/s of the uncompiled trajectory code (pure Python), 1 trajectory, few steps."""
    from toymodel.kernels import _trajectory as tr

    T = tr.build(lambda f: f)
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
