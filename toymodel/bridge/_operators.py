r"""Matrix-free curvature operators of a torch loss, and the checks of their inputs.

Owns, on flat vectors $v\in\mathbb{R}^n$ (the concatenation of ``params``): $v\mapsto Hv$ by
double backward (`_hvp_operator`), $v\mapsto v^\top Gv$ and $v\mapsto Gv$ for the GGN
$G=J^\top H_fJ$ by the double-vjp trick (`_ggn_quadratic`, `_ggn_operator`), the Rademacher
probes and the local generator they come from, and the boundary checks of the public
estimators (`toymodel.bridge.sharpness`) and of `toymodel.bridge.gradstats`. Notation: the
docstring of `toymodel.bridge.sharpness`.
"""
from __future__ import annotations

import numbers

import torch


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


def _ggn_products(output_fn, loss_of_output, params):
    r"""The GGN's building blocks at the current output: one forward and two graph-building
    backwards now. Returns ``(out, jv_hjv)`` where ``jv_hjv(v)`` gives $(Jv, H_fJv)$ (two
    backwards per call: double vjp for $Jv$, double backward through $\ell$ for $H_fJv$), or
    ``None`` for a zero GGN ($J=0$, or a loss linear in the output: $H_f=0$)."""
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
    if not live or not gz.requires_grad:
        return out, None

    def jv_hjv(v):
        with torch.enable_grad():
            jv = torch.autograd.grad(_dot(live, _split(v, params)), u, retain_graph=True)[0]
            hjv = torch.autograd.grad(gz, z, grad_outputs=jv, retain_graph=True)[0]
        return jv, hjv

    return out, jv_hjv


def _ggn_quadratic(output_fn, loss_of_output, params):
    r"""$v\mapsto v^\top Gv=(Jv)^\top H_f(Jv)$ (`_ggn_products`)."""
    out, jv_hjv = _ggn_products(output_fn, loss_of_output, params)
    zero = out.new_zeros(())

    def quad(v):
        if jv_hjv is None:
            return zero
        jv, hjv = jv_hjv(v)
        return (jv * hjv).sum()

    return quad


def _ggn_operator(output_fn, loss_of_output, params):
    r"""$v\mapsto Gv=J^\top H_f(Jv)$ on flat vectors (`_ggn_products`, then one more vjp for
    $J^\top$): the matrix-vector form Hutch++ needs."""
    out, jv_hjv = _ggn_products(output_fn, loss_of_output, params)

    def matvec(v):
        if jv_hjv is None:
            return torch.zeros_like(v)
        _, hjv = jv_hjv(v)
        with torch.enable_grad():
            gv = torch.autograd.grad(out, params, grad_outputs=hjv, retain_graph=True,
                                     allow_unused=True)
        return _flat(gv, params)

    return matvec
