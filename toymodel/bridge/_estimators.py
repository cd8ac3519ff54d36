r"""Trace and eigenvalue estimators on a matrix-vector product: Hutchinson, Hutch++, Lanczos.

Owns the estimators behind `toymodel.bridge.sharpness`: `_hutchinson` (Rademacher quadratic
forms), `_hutchpp` (Meyer, Musco, Musco, Woodruff 2021), `_trace` (either, with its standard
error) and `_lanczos` (full reorthogonalisation, restarts on an invariant subspace). They see
only a ``matvec`` (or quadratic form) on flat vectors, never the network.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal

from ._operators import _rademacher


def _hutchinson(quad, params, n_probes: int, gen: torch.Generator) -> np.ndarray:
    r"""$v_k^\top Av_k$ for ``n_probes`` Rademacher probes (one host transfer at the end)."""
    n = sum(p.numel() for p in params)
    like = params[0]
    vals = [quad(_rademacher(gen, n).to(device=like.device, dtype=like.dtype)).detach()
            for _ in range(n_probes)]
    return torch.stack(vals).double().cpu().numpy()


def _mean_and_stderr(samples: np.ndarray, return_stderr: bool):
    r"""Sample mean, and its standard error $s/\sqrt N$ (``ddof=1``; NaN for one probe)."""
    mean = float(samples.mean())
    if not return_stderr:
        return mean
    se = float(samples.std(ddof=1) / math.sqrt(samples.size)) if samples.size > 1 else float("nan")
    return mean, se


METHODS = ("hutch++", "hutchinson")


def _method(method) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def _hutchpp(matvec, params, n_probes: int, gen: torch.Generator):
    r"""Hutch++ (Meyer, Musco, Musco, Woodruff 2021) with ``n_probes`` products in all.

    $k=\lfloor N/3\rfloor$ Rademacher columns $S$ sketch the range: $Q=\operatorname{orth}(AS)$;
    then $\operatorname{tr}A=\operatorname{tr}(Q^\top AQ)+\operatorname{tr}((I-QQ^\top)A(I-QQ^\top))$,
    the first term exact ($k$ products), the second by Hutchinson on the $N-2k$ remaining probes
    projected off $Q$. Unbiased; the variance is that of Hutchinson on the deflated matrix, so a
    Hessian whose mass sits in a few directions (the usual case) is estimated far better than by
    plain Hutchinson with the same $N$. When $k\ge n$ the sketch spans everything and the
    result is exact. Returns ``(estimate, residual samples)`` (the samples give the standard
    error; empty when exact).
    """
    n = sum(p.numel() for p in params)
    like = params[0]
    k = min(n_probes // 3, n)
    probe = lambda: _rademacher(gen, n).to(device=like.device, dtype=like.dtype)  # noqa: E731
    if k == 0:
        return None, _hutchinson(lambda v: v @ matvec(v), params, n_probes, gen)
    if k == n:  # the sketch would be a basis: use the canonical one, exact to rounding
        eye = torch.eye(n, dtype=like.dtype, device=like.device)
        return float(sum(float(eye[i] @ matvec(eye[i])) for i in range(n))), np.zeros(0)
    AS = torch.stack([matvec(probe()) for _ in range(k)], dim=1)
    Q, _ = torch.linalg.qr(AS)
    exact = sum(float(Q[:, j] @ matvec(Q[:, j].contiguous())) for j in range(k))

    def deflated(v):
        w = v - Q @ (Q.T @ v)
        return w @ matvec(w)

    rest = max(n_probes - 2 * k, 1)
    return exact, _hutchinson(deflated, params, rest, gen)


def _trace(matvec, params, n_probes, gen, method, return_stderr):
    """The estimate of one of the METHODS, with its standard error if asked."""
    if method == "hutchinson":
        return _mean_and_stderr(_hutchinson(lambda v: v @ matvec(v), params, n_probes, gen),
                                return_stderr)
    exact, samples = _hutchpp(matvec, params, n_probes, gen)
    if exact is None:  # fewer than 3 probes: plain Hutchinson
        return _mean_and_stderr(samples, return_stderr)
    if samples.size == 0:
        return (exact, 0.0) if return_stderr else exact
    est = _mean_and_stderr(samples, return_stderr)
    return (exact + est[0], est[1]) if return_stderr else exact + est


def _lanczos(matvec, n: int, k: int, max_iter: int, tol: float, gen: torch.Generator, like):
    r"""Lanczos with full reorthogonalisation; returns (Ritz values ascending, Ritz vectors
    $(n, \cdot)$ of the top ``k``, residual bounds of the top ``k``, converged?)."""
    Q = torch.zeros((max_iter, n), dtype=like.dtype, device=like.device)
    alpha, beta = np.zeros(max_iter), np.zeros(max_iter)
    # at least 2k+1 steps (ARPACK's ncv rule) before trusting a small residual: with fewer, a
    # Ritz value can look converged while a larger eigenvalue has not yet entered the Krylov space
    min_iter = min(max_iter, max(2 * k + 1, 20))
    eps = torch.finfo(like.dtype).eps

    def fresh(steps):
        q = torch.randn(n, generator=gen, dtype=torch.float64)
        q = q.to(device=like.device, dtype=like.dtype)
        for _ in range(2):
            q -= Q[:steps].T @ (Q[:steps] @ q)
        return q / q.norm()

    q = fresh(0)
    next_check = min_iter
    for j in range(max_iter):
        Q[j] = q
        w = matvec(q)
        alpha[j] = float(q @ w)
        # classical Gram-Schmidt against every Lanczos vector, twice ("twice is enough", Kahan-
        # Parlett): it subsumes the three-term recurrence and keeps Q orthonormal to rounding, so
        # no spurious copies of converged eigenvalues appear
        for _ in range(2):
            w -= Q[:j + 1].T @ (Q[:j + 1] @ w)
        b = float(w.norm())
        steps = j + 1
        done = steps == max_iter
        if done or steps >= next_check:
            theta, S = eigh_tridiagonal(alpha[:steps], beta[:steps - 1])
            resid = b * np.abs(S[-1, -k:])  # ||H y - theta y|| of each Ritz pair
            scale = max(np.abs(theta).max(), np.finfo(float).tiny)
            if done or bool(np.all(resid <= tol * scale)):
                top = torch.as_tensor(S[:, -k:], dtype=like.dtype, device=like.device)
                vecs = Q[:steps].T @ top
                return theta, vecs, resid, bool(np.all(resid <= tol * scale))
            # re-solving the tridiagonal problem every step would cost O(m^3) per step
            next_check = steps + 1 + steps // 20
        beta[j] = b
        # an invariant subspace (b = 0 to rounding) hides the other eigenvalues of H: restart
        # from a fresh random direction orthogonal to it, with a zero coupling in T
        if b <= math.sqrt(n) * eps * max(np.abs(alpha[:steps]).max(), np.abs(beta[:steps]).max()):
            beta[j] = 0.0
            q = fresh(steps)
        else:
            q = w / b
    raise AssertionError("unreachable")
