r"""Gradient statistics over the mini-batches of a data set, per SI group (docs/sharpness.md).

The quantities of the official code's ``get_info`` (gradient mean and spread across batches,
distance to the initial weights) with the project's per-group metrics (T2, T3, T7). Notation:
$\theta$ the concatenation of ``params``, split into groups $\theta_j$ (layers, or filters: row
$j$ of each tensor of a layer) with $\|\theta\|^2=\sum_j\|\theta_j\|^2$; $g_b=\nabla L_b(\theta)$
the gradient of mini-batch $b=1..K$, $\bar g=\frac1K\sum_bg_b$ and
$\sigma_i^2=\frac1{K-1}\sum_b(g_{b,i}-\bar g_i)^2$ per coordinate ($K-1$ as ``torch.std``, the
official code). With the learning rate $\eta$, the total ELR is $\tilde\eta=\eta/\|\theta\|^2$
(T3) and the individual ELRs $\tilde\eta_j=\eta/\|\theta_j\|^2$ (T7) satisfy, under the total
constraint (one common step size $\eta$),
$$\sum_j\frac1{\tilde\eta_j}=\frac{\sum_j\|\theta_j\|^2}{\eta}=\frac1{\tilde\eta}.$$
"""
from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import torch
from torch.nn import functional as F

from .groups import SIGroup, si_groups
from ._operators import _as_params, _callable, _count, _scalar, _split


def _batches(n: int, batch_size: int) -> list:
    """Consecutive index slices (no shuffling, as the official ``shuffle_train=False``); a last
    batch of one sample joins the previous one (train-mode BatchNorm cannot normalise it)."""
    edges = list(range(0, n, batch_size)) + [n]
    if len(edges) > 2 and edges[-1] - edges[-2] < 2:
        edges.pop(-2)
    return [slice(a, b) for a, b in pairwise(edges)]


def _norm_groups(model, params, groups):
    """``(params, names, owner, rows)``: tensor ``i`` lies whole in group ``owner[i]``, or its row
    ``r`` in group ``rows[i][r]`` (filter-level groups). Checks that the groups partition params."""
    pnames = {id(p): n for n, p in model.named_parameters()}
    if groups is None:
        if params is None:
            groups = si_groups(model)
            if not groups:
                raise ValueError(f"si_groups found no SI group in {type(model).__name__}; pass "
                                 "params (or groups) explicitly")
        else:
            ps = _as_params(params)
            groups = [SIGroup(pnames.get(id(p), f"params[{i}]"), [pnames.get(id(p), "")], [p])
                      for i, p in enumerate(ps)]
    items = []  # (name, tensors, row or None)
    for i, g in enumerate(groups):
        if isinstance(g, SIGroup):
            items.append((g.name, list(g.params), g.filter))
        elif isinstance(g, dict) and "params" in g:
            items.append((str(g.get("name", i)), list(g["params"]), None))
        elif isinstance(g, torch.Tensor):
            items.append((pnames.get(id(g), str(i)), [g], None))
        else:
            try:
                items.append((str(i), list(g), None))
            except TypeError:
                raise TypeError(f"groups[{i}] must be an SIGroup, a dict with 'params' or a list "
                                f"of tensors, got {type(g).__name__}") from None
    if not items:
        raise ValueError("groups must not be empty")
    if params is None:
        params = list({id(t): t for _, ts, _ in items for t in ts}.values())
    params = _as_params(params)
    index = {id(p): i for i, p in enumerate(params)}
    rows = [None] * len(params)  # per tensor: None, or the group of each row
    owner = [None] * len(params)
    label = lambda i: pnames.get(id(params[i]), f"params[{i}]")  # noqa: E731
    for gi, (name, ts, row) in enumerate(items):
        for t in ts:
            if id(t) not in index:
                raise ValueError(f"group {name!r} holds a tensor that is not in params "
                                 f"(shape {tuple(t.shape)})")
            i = index[id(t)]
            if row is None:
                if owner[i] is not None or rows[i] is not None:
                    raise ValueError(f"parameter {label(i)!r} is in more than one group "
                                     f"(group {name!r} among them); groups must partition params")
                owner[i] = gi
            else:
                if owner[i] is not None:
                    raise ValueError(f"parameter {label(i)!r} is in more than one group "
                                     f"(group {name!r} among them); groups must partition params")
                rows[i] = rows[i] or [None] * params[i].shape[0]
                if rows[i][row] is not None:
                    raise ValueError(f"row {row} of parameter {label(i)!r} is in groups "
                                     f"{items[rows[i][row]][0]!r} and {name!r}")
                rows[i][row] = gi
    for i in range(len(params)):
        if owner[i] is None and (rows[i] is None or None in rows[i]):
            raise ValueError(f"parameter {label(i)!r} of params (or a row of it) is in no group; "
                             "groups must partition params")
    return params, [name for name, _, _ in items], owner, rows


def _group_sq(tensors, owner, rows, n_groups):
    r"""$\sum_{\text{pieces of }j}\|\cdot\|^2$ per group $j$, as a float64 tensor of shape (G,)."""
    out = torch.zeros(n_groups, dtype=torch.float64, device=tensors[0].device)
    for t, o, r in zip(tensors, owner, rows):
        if o is not None:
            out[o] += t.double().square().sum()
        else:
            idx = torch.as_tensor(r, device=t.device)
            out.index_add_(0, idx, t.double().reshape(t.shape[0], -1).square().sum(1))
    return out


def gradient_statistics(model, params, data_x, data_y, loss=None, batch_size: int = 128, *,
                        lr=None, init_params=None, groups=None, train_mode: bool = True) -> dict:
    r"""Gradient statistics of ``params`` over the mini-batches of ``(data_x, data_y)``.

    Batches are consecutive slices of ``batch_size`` samples (no shuffling; a last batch of one
    sample joins the previous one). The model runs in train mode by default (BatchNorm on batch
    statistics, as during training); its mode, buffers (BN running statistics) and ``.grad``
    fields are left as they were. Accumulation is online in float64 (Welford), so memory is
    $O(n)$ whatever the number of batches.

    Parameters
    ----------
    model
        The ``torch.nn.Module``; ``loss(model(x_b), y_b)`` is the loss of batch $b$.
    params
        Tensors whose gradients are measured (requiring grad); ``None``: the tensors of
        ``groups``, or the SI parameters `si_groups` finds when ``groups`` is also ``None``.
    data_x, data_y
        Inputs and targets, indexed along the first dimension.
    loss
        ``loss(output, target)`` returning the scalar mean batch loss; default
        ``torch.nn.functional.cross_entropy``.
    batch_size
        Samples per batch ($\ge1$).
    lr
        The learning rate $\eta$ of the optimiser (``SphereSGD.lr``); ``None`` makes ``elr``
        and ``individual_elr`` NaN.
    init_params
        The initial values of ``params`` (same order and shapes) for ``l2_to_init``
        and ``cosine_to_init``; ``None`` makes them NaN.
    groups
        The groups $\theta_j$: `SIGroup`s (``si_groups(model, level)`` at any level,
        ``"filter"`` included), dicts with ``"params"``, or lists of tensors; they must
        partition ``params``. Default: each tensor of ``params`` is a group, or the layer-level
        `si_groups` when ``params`` is ``None`` too.
    train_mode
        Run the model in train mode (``False``: eval mode, BN running statistics).

    Returns
    -------
    dict
        Float entries ``loss`` (mean batch loss), ``n_batches`` ($K$, int),
        ``grad_mean_norm`` $\|\bar g\|$ (the official ``gm_norm``), ``grad_std_norm``
        $\|\sigma\|=(\sum_i\sigma_i^2)^{1/2}$ (``gs_norm``; NaN when $K=1$), ``batch_grad_norm``
        $\frac1K\sum_b\|g_b\|$ (``gnorm_m``), ``si_norm`` $\|\theta\|$, ``grad_norm``
        $\|\theta\|\frac1K\sum_b\|g_b\|$ (the mean effective gradient norm, T2, as in `train`),
        ``elr`` $\tilde\eta=\eta/\|\theta\|^2$, ``l2_to_init`` $\|\theta-\theta_0\|$ (the
        official ``l2_init``), ``cosine_to_init``
        $\cos(\theta,\theta_0)$; and per group (``numpy`` arrays of shape ``(G,)``, in the order of
        ``group``, the list of group names): ``group_norm`` $\|\theta_j\|$, ``shares``
        $\|\theta_j\|^2/\|\theta\|^2$ (T7), ``individual_elr`` $\eta/\|\theta_j\|^2$ (T7),
        ``effective_grad_norm`` $\|\theta_j\|\|\bar g_j\|$ (T2, of the mean gradient) and
        ``group_grad_norm`` $\frac1K\sum_b\|\theta_j\|\|g_{b,j}\|$ (as in `train`).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    loss = _callable("loss", F.cross_entropy if loss is None else loss)
    for name, d in (("data_x", data_x), ("data_y", data_y)):
        if not isinstance(d, torch.Tensor) or d.ndim == 0:
            got = "a 0-dim tensor" if isinstance(d, torch.Tensor) else type(d).__name__
            raise TypeError(f"{name} must be a torch.Tensor with a batch dimension, got {got}")
    if data_x.shape[0] != data_y.shape[0]:
        raise ValueError(f"data_x and data_y must have the same number of samples, got "
                         f"{data_x.shape[0]} and {data_y.shape[0]}")
    if data_x.shape[0] < 1:
        raise ValueError("data_x must hold at least one sample")
    batch_size = _count("batch_size", batch_size)
    if lr is not None:
        try:
            lr_val = float(lr)
        except (TypeError, ValueError):
            lr_val = float("nan")
        if isinstance(lr, bool) or not (math.isfinite(lr_val) and lr_val > 0):
            raise ValueError(f"lr must be a positive finite number or None, got {lr!r}")
        lr = lr_val
    params, names, owner, rows = _norm_groups(model, params, groups)
    G = len(names)
    theta0 = None
    if init_params is not None:
        init = list(init_params) if not isinstance(init_params, torch.Tensor) else [init_params]
        if len(init) != len(params) or any(not isinstance(a, torch.Tensor) or a.shape != p.shape
                                           for a, p in zip(init, params)):
            raise ValueError("init_params must be tensors with the shapes of params, got shapes "
                             f"{[tuple(getattr(a, 'shape', ())) for a in init]} for "
                             f"{[tuple(p.shape) for p in params]}")
        theta0 = torch.cat([a.detach().reshape(-1).to(params[0].device, torch.float64)
                            for a in init])

    with torch.no_grad():
        theta = [p.detach() for p in params]
        flat = torch.cat([t.reshape(-1).double() for t in theta])
        sq_g = _group_sq(theta, owner, rows, G)
    batches = _batches(data_x.shape[0], batch_size)
    saved = {k: v.detach().clone() for k, v in model.named_buffers()}
    was_training = model.training
    model.train(train_mode)
    mean = torch.zeros_like(flat)
    m2 = torch.zeros_like(flat)
    losses, gnorms, ggn = [], [], []
    try:
        for K, sl in enumerate(batches, start=1):
            with torch.enable_grad():
                lb = _scalar(loss(model(data_x[sl]), data_y[sl]), "loss(model(x), y)")
                grads = torch.autograd.grad(lb, params, allow_unused=True)
            grads = [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]
            with torch.no_grad():
                g = torch.cat([t.reshape(-1).double() for t in grads])
                # Welford's update: no catastrophic cancellation in sum g^2 - K mean^2
                delta = g - mean
                mean += delta / K
                m2 += delta * (g - mean)
                losses.append(lb.detach().double())
                gnorms.append(g.norm())
                ggn.append((sq_g * _group_sq(grads, owner, rows, G)).sqrt())
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(saved[k])
        model.train(was_training)
    K = len(batches)
    with torch.no_grad():
        sq = float(flat.square().sum())
        gbar_g = _group_sq(_split(mean, params), owner, rows, G)
        out = {
            "loss": float(torch.stack(losses).mean()),
            "n_batches": K,
            "grad_mean_norm": float(mean.norm()),
            "grad_std_norm": math.sqrt(float(m2.sum()) / (K - 1)) if K > 1 else float("nan"),
            "batch_grad_norm": float(torch.stack(gnorms).mean()),
            "si_norm": math.sqrt(sq),
            "group": names,
        }
        out["grad_norm"] = out["si_norm"] * out["batch_grad_norm"]
        out["elr"] = lr / sq if lr is not None else float("nan")
        sqn = sq_g.cpu().numpy()
        out["group_norm"] = np.sqrt(sqn)
        out["shares"] = sqn / sq
        out["individual_elr"] = lr / sqn if lr is not None else np.full(G, np.nan)
        out["effective_grad_norm"] = np.sqrt(sqn * gbar_g.cpu().numpy())
        out["group_grad_norm"] = torch.stack(ggn).mean(0).cpu().numpy()
        if theta0 is not None:
            out["l2_to_init"] = float((flat - theta0).norm())
            out["cosine_to_init"] = float(flat @ theta0) / (math.sqrt(sq) * float(theta0.norm()))
        else:
            out["l2_to_init"] = out["cosine_to_init"] = float("nan")
    return out
