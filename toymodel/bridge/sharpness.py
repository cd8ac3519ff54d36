r"""Curvature of a torch loss from matrix-vector products: Hessian trace, top Hessian eigenvalues,
generalised Gauss–Newton (GGN) trace. No matrix is ever formed (docs/sharpness.md).

Notation: $\theta\in\mathbb{R}^n$ is the concatenation of ``params`` (each tensor flattened, in
order), $L(\theta)$ the scalar loss, $H=\nabla^2L(\theta)$ its Hessian. For a network output
$f(\theta)$ (any shape, flattened to $\mathbb{R}^m$) and a loss of the output $\ell(f)$, the GGN is
$G=J^\top H_f J$ with $J=\partial f/\partial\theta\in\mathbb{R}^{m\times n}$ and
$H_f=\nabla_f^2\ell$ (for the mean cross-entropy over $B$ samples, $H_f$ is block diagonal with
blocks $(\mathrm{diag}(p_b)-p_bp_b^\top)/B$, $p_b$ the softmax of sample $b$).

* $Hv$ by double backward: one forward and one ``create_graph`` backward per call, then one more
  backward per product (``retain_graph``), so ``loss_fn`` runs once per call whatever the number
  of products. Train-mode BatchNorm therefore updates its running statistics once per call.
* $Jv$ by the double-vjp trick ($u\mapsto J^\top u$ is linear, so $\partial_u\langle J^\top u,
  v\rangle=Jv$), $H_f(Jv)$ by double backward through $\ell$ at the detached output.
* Hutchinson (`hessian_trace`, `ggn_trace`): $\operatorname{tr}A=\mathbb{E}\,v^\top Av$ for
  Rademacher $v$ ($v_i=\pm1$); one probe has variance $2\|A\|_F^2-2\sum_iA_{ii}^2$, so the mean
  of $N$ probes has standard error $\sqrt{(2\|A\|_F^2-2\sum_iA_{ii}^2)/N}$.
* Lanczos (`hessian_top_eigenvalues`) with full reorthogonalisation: $m$ products and $m$ stored
  vectors of length $n$ for $m$ steps (memory $mn$ in the dtype of ``params``).

Probes and start vectors come from a local ``torch.Generator`` seeded by ``seed`` (on the CPU, so
results do not depend on the device), never from the global RNG. Computations run in the dtype of
``params``; accuracies near float64 rounding need float64 parameters.

Modules: this one (the public estimators), `toymodel.bridge._operators` (the matrix-free
operators and the checks of their inputs), `toymodel.bridge._estimators` (Hutchinson, Hutch++,
Lanczos on a matvec).
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ._estimators import METHODS, _hutchinson, _lanczos, _mean_and_stderr, _method, _trace
from ._operators import (_as_params, _callable, _count, _generator, _ggn_operator, _ggn_quadratic,
                         _hvp_operator)

__all__ = ["METHODS", "ggn_trace", "hessian_top_eigenvalues", "hessian_trace"]


def hessian_trace(loss_fn, params, n_probes: int = 100, seed: int = 0, *,
                  method: str = "hutch++", return_stderr: bool = False):
    r"""Stochastic estimate of $\operatorname{tr}H$, $H=\nabla^2L$ w.r.t. the concatenated
    ``params``: Hutch++ by default (Hutchinson on the deflated matrix), or plain Hutchinson.

    $$\widehat{\operatorname{tr}H}=\frac1N\sum_{k=1}^N v_k^\top Hv_k,\qquad v_k\in\{-1,1\}^n
    \text{ Rademacher},$$
    unbiased with variance $(2\|H\|_F^2-2\sum_iH_{ii}^2)/N$ (exact for diagonal $H$).
    ``loss_fn`` is called once; each probe costs one Hessian-vector product (double backward).

    Parameters
    ----------
    loss_fn
        Callable with no arguments returning the scalar loss $L$ (a tensor with a graph
        to ``params``), e.g. ``lambda: F.cross_entropy(model(x), y)``.
    params
        Iterable of tensors with ``requires_grad=True`` (one dtype and device).
    n_probes
        Number of probes $N\ge1$.
    seed
        Seed of the local generator of the probes (the global RNG is not touched).
    method
        ``"hutch++"`` (default): Hutchinson on the matrix deflated by a sketch of its top range,
        ``n_probes`` products in all (see `_hutchpp`); ``"hutchinson"``: the plain mean of
        ``n_probes`` Rademacher quadratic forms (the formula above).
    return_stderr
        Also return the sample standard error $s/\sqrt N$ of the (residual) Hutchinson part.

    Returns
    -------
    float or tuple
        The estimate, or ``(estimate, stderr)`` with ``return_stderr``.
    """
    loss_fn = _callable("loss_fn", loss_fn)
    params = _as_params(params)
    n_probes = _count("n_probes", n_probes)
    gen = _generator(seed)
    method = _method(method)
    return _trace(_hvp_operator(loss_fn, params), params, n_probes, gen, method, return_stderr)


def ggn_trace(output_fn, loss_of_output, params, n_probes: int = 100, seed: int = 0, *,
              method: str = "hutch++", return_stderr: bool = False):
    r"""Stochastic estimate of the GGN trace $\operatorname{tr}G$, $G=J^\top H_fJ$: Hutch++ by
    default, or plain Hutchinson (the formula below).

    $$\widehat{\operatorname{tr}G}=\frac1N\sum_{k=1}^N(Jv_k)^\top H_f(Jv_k),\qquad
    v_k\in\{-1,1\}^n\text{ Rademacher},$$
    with $J=\partial f/\partial\theta$ (``f = output_fn()``) and $H_f=\nabla_f^2\ell$ (``ℓ =
    loss_of_output``) at the current output; variance $(2\|G\|_F^2-2\sum_iG_{ii}^2)/N$. $G$ is
    positive semi-definite whenever $\ell$ is convex in the output (cross-entropy: $H_f$ has
    blocks $(\mathrm{diag}(p_b)-p_bp_b^\top)/B$ for the batch mean). ``output_fn`` is called
    once; each probe costs one Jacobian-vector product (double vjp) and one output-space
    Hessian-vector product.

    Parameters
    ----------
    output_fn
        Callable with no arguments returning the network output $f$ (any shape), e.g.
        ``lambda: model(x)``.
    loss_of_output
        Callable taking that output and returning the scalar loss $\ell(f)$, e.g.
        ``lambda out: F.cross_entropy(out, y)``. It is called on a detached copy of the output.
    params
        Iterable of tensors with ``requires_grad=True`` (one dtype and device).
    n_probes
        Number of probes $N\ge1$.
    seed
        Seed of the local generator of the probes (the global RNG is not touched).
    method
        ``"hutch++"`` (default): Hutchinson on the matrix deflated by a sketch of its top range,
        ``n_probes`` products in all (see `_hutchpp`); ``"hutchinson"``: the plain mean of
        ``n_probes`` Rademacher quadratic forms (the formula above).
    return_stderr
        Also return the sample standard error $s/\sqrt N$ of the (residual) Hutchinson part.

    Returns
    -------
    float or tuple
        The estimate, or ``(estimate, stderr)`` with ``return_stderr``.
    """
    output_fn = _callable("output_fn", output_fn)
    loss_of_output = _callable("loss_of_output", loss_of_output)
    params = _as_params(params)
    n_probes = _count("n_probes", n_probes)
    gen = _generator(seed)
    method = _method(method)
    if method == "hutchinson":  # quadratic forms only: two backwards per probe, not three
        quad = _ggn_quadratic(output_fn, loss_of_output, params)
        return _mean_and_stderr(_hutchinson(quad, params, n_probes, gen), return_stderr)
    return _trace(_ggn_operator(output_fn, loss_of_output, params), params, n_probes, gen, method,
                  return_stderr)


def hessian_top_eigenvalues(loss_fn, params, k: int = 1, *, seed: int = 0,
                            max_iter: int | None = None, tol: float | None = None,
                            return_vectors: bool = False):
    r"""The ``k`` largest (algebraic) eigenvalues of $H=\nabla^2L$, by Lanczos on Hessian-vector
    products with full reorthogonalisation (the Hessian is never formed).

    After $m$ steps, $Q_m^\top HQ_m=T_m$ (tridiagonal) and the Ritz values $\theta_i$ of $T_m$
    approximate the extreme eigenvalues of $H$; the Ritz pair $(\theta_i, Q_ms_i)$ has residual
    $\|Hy_i-\theta_iy_i\|=\beta_m|s_{m,i}|$, which bounds $|\theta_i-\lambda|$ for some
    eigenvalue $\lambda$ (and the error is $\lesssim\text{residual}^2/\text{gap}$). The iteration
    stops when every top-``k`` residual is $\le$ ``tol`` $\cdot\max_i|\theta_i|$, after at least
    $\min(n, \max(2k+1, 20))$ steps, or after ``max_iter`` steps (then a ``RuntimeWarning``).
    An invariant subspace restarts the iteration from a fresh random vector orthogonal to it, so
    a multiple eigenvalue is found with its multiplicity once the Krylov space is exhausted; a
    multiple eigenvalue among the top ``k`` of a large $H$ may otherwise be returned once.

    Parameters
    ----------
    loss_fn
        Callable with no arguments returning the scalar loss (called once).
    params
        Iterable of tensors with ``requires_grad=True`` (one dtype and device).
    k
        Number of eigenvalues, $1\le k\le n$.
    seed
        Seed of the Gaussian start vector (local generator; the global RNG is not touched).
    max_iter
        At most this many Lanczos steps ($k\le$ ``max_iter``; more than $n$ is cut to
        $n$); default $\min(n, \max(10k, 100))$. Memory: ``max_iter`` vectors of length $n$.
    tol
        Relative residual tolerance (above); default $\max(10^{-6}, 1000\,\varepsilon)$ with
        $\varepsilon$ the machine epsilon of the dtype of ``params`` ($10^{-6}$ in float64,
        $1.2\times10^{-4}$ in float32, where rounding in the products sets a floor).
    return_vectors
        Also return the unit eigenvectors (Ritz vectors).

    Returns
    -------
    numpy.ndarray or tuple
        The eigenvalues, float64 of shape ``(k,)``, in descending order; with
        ``return_vectors``, ``(values, vectors)`` where ``vectors`` is a tensor of shape
        $(n, k)$ (column $i$ for ``values[i]``) in the flattened order of ``params``.
    """
    loss_fn = _callable("loss_fn", loss_fn)
    params = _as_params(params)
    n = sum(p.numel() for p in params)
    k = _count("k", k, 1, n)
    max_iter = min(n, max(10 * k, 100) if max_iter is None else _count("max_iter", max_iter, k))
    if tol is None:
        tol = max(1e-6, 1000 * torch.finfo(params[0].dtype).eps)
    try:
        tol_val = float(tol)
    except (TypeError, ValueError):
        tol_val = float("nan")
    if isinstance(tol, bool) or not (math.isfinite(tol_val) and tol_val > 0):
        raise ValueError(f"tol must be a positive finite number, got {tol!r}")
    tol = tol_val
    gen = _generator(seed)
    matvec = _hvp_operator(loss_fn, params)
    theta, vecs, resid, ok = _lanczos(matvec, n, k, max_iter, tol, gen, params[0])
    if not ok:
        warnings.warn(f"Lanczos did not converge in max_iter={max_iter} steps (relative residuals "
                      f"{(resid / max(np.abs(theta).max(), 1e-300)).tolist()} > tol={tol}); "
                      "raise max_iter", RuntimeWarning, stacklevel=2)
    values = np.ascontiguousarray(theta[::-1][:k], dtype=np.float64)
    return (values, vecs.flip(1)) if return_vectors else values
