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
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal


# -- validation at the public boundary ------------------------------------------------------------
def _as_params(params) -> list:
    """``params`` as a list of distinct floating tensors requiring grad, on one device and dtype."""
    if isinstance(params, torch.Tensor):
        params = [params]
    try:
        ps = list(params)
    except TypeError:
        raise TypeError("params must be an iterable of tensors, got "
                        f"{type(params).__name__}") from None
    if not ps:
        raise ValueError("params must not be empty")
    for i, p in enumerate(ps):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params[{i}] must be a torch.Tensor, got {type(p).__name__}")
        if not p.is_floating_point():
            raise ValueError(f"params[{i}] must be a floating-point tensor, got dtype {p.dtype}")
        if not p.requires_grad:
            raise ValueError(f"params[{i}] (shape {tuple(p.shape)}) does not require grad; the "
                             "Hessian is taken w.r.t. tensors with requires_grad=True")
    if len({id(p) for p in ps}) != len(ps):
        raise ValueError("params must not repeat a tensor")
    kinds = {(p.dtype, p.device) for p in ps}
    if len(kinds) != 1:
        raise ValueError(f"params must share one dtype and device, got {sorted(map(str, kinds))}")
    return ps


def _count(name: str, value, minimum: int = 1, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum \
            or (maximum is not None and value > maximum):
        rng = f"[{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be an integer {rng}, got {value!r}")
    return int(value)


def _callable(name: str, fn):
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    return fn


def _scalar(value, what: str) -> torch.Tensor:
    """The 0-dim loss returned by ``what``; it must depend on the parameters through autograd."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what} must return a scalar torch.Tensor, got {type(value).__name__}")
    if value.numel() != 1:
        raise ValueError(f"{what} must return a scalar (one element), got shape "
                         f"{tuple(value.shape)}")
    if not value.requires_grad:
        raise ValueError(f"{what} returned a tensor that does not require grad (computed under "
                         "torch.no_grad(), or independent of params)")
    return value.reshape(())


# -- flat vectors ----------------------------------------------------------------------------------
def _flat(tensors, params) -> torch.Tensor:
    """Concatenate per-parameter tensors (``None`` = zeros) into one flat vector."""
    return torch.cat([(t if t is not None else torch.zeros_like(p)).reshape(-1)
                      for t, p in zip(tensors, params)])


def _split(v: torch.Tensor, params) -> list:
    """The flat vector ``v`` cut into tensors shaped like ``params``."""
    return [c.view_as(p) for c, p in zip(torch.split(v, [p.numel() for p in params]), params)]


def _rademacher(gen: torch.Generator, n: int) -> torch.Tensor:
    r"""One probe $v\in\{-1,1\}^n$ (CPU, float64), the next draw of ``gen``."""
    bits = torch.randint(0, 2, (n,), generator=gen, dtype=torch.int8)
    return bits.to(torch.float64).mul_(2).sub_(1)


def _generator(seed) -> torch.Generator:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


# -- operators ----------------------------------------------------------------------------------
def _dot(pairs, vs) -> torch.Tensor:
    r"""$\sum_i\langle t_i, v_i\rangle$ over the ``(i, t_i)`` pairs."""
    return sum((t * vs[i]).sum() for i, t in pairs)


def _hvp_operator(loss_fn, params):
    r"""$v\mapsto Hv$ on flat vectors: one forward and one ``create_graph`` backward now, one
    backward per call."""
    with torch.enable_grad():
        loss = _scalar(loss_fn(), "loss_fn()")
        grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    # a gradient that does not depend on the parameters contributes a zero Hessian block
    live = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]

    def matvec(v):
        if not live:
            return torch.zeros_like(v)
        with torch.enable_grad():
            hv = torch.autograd.grad(_dot(live, _split(v, params)), params, retain_graph=True,
                                     allow_unused=True)
        return _flat(hv, params)

    return matvec


def _ggn_quadratic(output_fn, loss_of_output, params):
    r"""$v\mapsto v^\top Gv=(Jv)^\top H_f(Jv)$: one forward and two graph-building backwards now,
    two backwards per call."""
    with torch.enable_grad():
        out = output_fn()
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"output_fn() must return a torch.Tensor, got {type(out).__name__}")
        if not out.is_floating_point() or not out.requires_grad:
            raise ValueError("output_fn() must return a floating tensor that requires grad (got "
                             f"dtype {out.dtype}, requires_grad={out.requires_grad})")
        u = torch.zeros_like(out, requires_grad=True)
        jtu = torch.autograd.grad(out, params, grad_outputs=u, create_graph=True, allow_unused=True)
        z = out.detach().requires_grad_(True)
        gz = torch.autograd.grad(_scalar(loss_of_output(z), "loss_of_output(output)"), z,
                                 create_graph=True)[0]
    live = [(i, t) for i, t in enumerate(jtu) if t is not None and t.requires_grad]
    zero = out.new_zeros(())

    def quad(v):
        if not live or not gz.requires_grad:  # J = 0, or a loss linear in the output (H_f = 0)
            return zero
        with torch.enable_grad():
            jv = torch.autograd.grad(_dot(live, _split(v, params)), u, retain_graph=True)[0]
            hjv = torch.autograd.grad(gz, z, grad_outputs=jv, retain_graph=True)[0]
        return (jv * hjv).sum()

    return quad


def _ggn_operator(output_fn, loss_of_output, params):
    r"""$v\mapsto Gv=J^\top H_f(Jv)$ on flat vectors (double vjp for $Jv$, double backward for
    $H_fJv$, one more vjp for $J^\top$): the matrix-vector form Hutch++ needs."""
    with torch.enable_grad():
        out = output_fn()
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"output_fn() must return a torch.Tensor, got {type(out).__name__}")
        if not out.is_floating_point() or not out.requires_grad:
            raise ValueError("output_fn() must return a floating tensor that requires grad (got "
                             f"dtype {out.dtype}, requires_grad={out.requires_grad})")
        u = torch.zeros_like(out, requires_grad=True)
        jtu = torch.autograd.grad(out, params, grad_outputs=u, create_graph=True, allow_unused=True)
        z = out.detach().requires_grad_(True)
        gz = torch.autograd.grad(_scalar(loss_of_output(z), "loss_of_output(output)"), z,
                                 create_graph=True)[0]
    live = [(i, t) for i, t in enumerate(jtu) if t is not None and t.requires_grad]

    def matvec(v):
        if not live or not gz.requires_grad:  # J = 0, or a loss linear in the output (H_f = 0)
            return torch.zeros_like(v)
        with torch.enable_grad():
            jv = torch.autograd.grad(_dot(live, _split(v, params)), u, retain_graph=True)[0]
            hjv = torch.autograd.grad(gz, z, grad_outputs=jv, retain_graph=True)[0]
            gv = torch.autograd.grad(out, params, grad_outputs=hjv, retain_graph=True,
                                     allow_unused=True)
        return _flat(gv, params)

    return matvec


# -- estimators ---------------------------------------------------------------------------------
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
