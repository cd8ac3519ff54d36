r"""``SphereSGD``: SGD on the sphere with a fixed effective learning rate, as a torch optimiser.

One step (T5, T7) with the learning rate $\eta=\tilde\eta\rho^2$:

.. math:: v = \theta - \eta\nabla L(\theta), \qquad \theta \leftarrow \text{rescale}(v)

* ``constraint="total"`` (the paper's training): every SI tensor is multiplied by the one common
  factor $\rho/\|v\|$, $\|\cdot\|$ over all SI parameters; $\rho$ is their initial
  total norm (or ``radius``). Total ELR $\tilde\eta$; the individual ELR of group $g$ is
  $\eta/\|\theta_g\|^2=\tilde\eta/s_g$ and moves with the shares (T7, T9).
* ``constraint="individual"``: group $g$ is multiplied by $r_g/\|v_g\|$ with
  $r_g$ its initial norm: fixed shares, individual ELRs $\tilde\eta/s_g$ fixed.
* ``constraint="per-filter"`` (the official ``--fix_all_elr``): each filter (row ``j`` of every
  tensor of a group: output channel ``j``) is rescaled to one common radius $r$, with
  $r^2=\rho^2/N$ ($N$ filters in all, so the total norm stays $\rho$); the
  filters are put on that radius at construction. The learning rate is
  $\eta=\tilde\eta\sum\|\theta\|^2=\tilde\eta N r^2$, so **each filter has individual ELR**
  $\eta/r^2=N\tilde\eta$: ``elr`` is the total ELR, not the per-filter one (the official
  code does not say so).

Norms are re-measured at every step (docs/theory.md §2, numerics) with ``torch._foreach_norm``; the
rescale factor stays a device tensor (no host synchronisation). Non-SI parameters go in groups
with ``"si": False`` and their own ``"lr"`` (plain SGD; ``lr=0`` freezes them, as the official code
does with ``--noninvlr 0``); the reference models freeze their head with ``requires_grad=False``.

Momentum and weight decay change what "fixed ELR" means and are rejected unless
``allow_nonstandard=True``. Their semantics then: weight decay adds $\lambda\theta$ to the
gradient before the step; since the rescale removes the radial part, a step is the plain step with
ELR $\tilde\eta/(1-\eta\lambda)$. Momentum keeps a heavy-ball buffer
$b\leftarrow\mu b+\nabla L$ (dampening 0, as ``torch.optim.SGD``) and steps along
$-\eta b$; the buffer is *not* transported or rescaled, so the angular step no longer obeys
T6 (the official code warns "fixing ELR with momentum is ambiguous").
"""
from __future__ import annotations

import math

import torch

CONSTRAINTS = ("total", "individual", "per-filter")
#: metrics exposed in ``optimizer.last_metrics`` after a step with ``track=True``
TRACKED = ("sq_norm", "grad_sq", "angle")


def _positive(name, value, allow_zero=False):
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = float("nan")
    ok = math.isfinite(x) and (x >= 0 if allow_zero else x > 0)
    if not ok or isinstance(value, bool):
        rng = "[0, inf)" if allow_zero else "(0, inf)"
        raise ValueError(f"{name} must be a finite number in {rng}, got {value!r}")
    return x


def _as_groups(params):
    """Accept tensors (one SI group), dicts, or objects with ``as_param_group()`` (SIGroup)."""
    if isinstance(params, torch.Tensor):
        raise ValueError("params must be an iterable of tensors or of parameter groups, got a tensor")
    items = list(params)
    if not items:
        raise ValueError("params must not be empty")
    if all(isinstance(p, torch.Tensor) for p in items):
        return [{"params": items}]
    groups = []
    for item in items:
        if hasattr(item, "as_param_group"):
            item = item.as_param_group()
        if not isinstance(item, dict) or "params" not in item:
            raise ValueError(f"each parameter group must be a dict with 'params' or an SIGroup, "
                             f"got {type(item).__name__}")
        groups.append(dict(item))
    return groups


def _group_sq(params):
    """$\\sum_p\\|p\\|^2$ as a 0-dim tensor (``torch._foreach_norm``)."""
    return torch.stack(torch._foreach_norm(params)).square().sum()


def _row_sq(params):
    """Per-filter squared norms $\\sum_p\\|p_j\\|^2$ (row ``j`` = output channel)."""
    return sum(p.reshape(p.shape[0], -1).square().sum(1) for p in params)


def _official_sq(params):
    """The official code's squared norm: ``sum((p ** 2).sum().item() for p in params)``, summed on
    the host in parameter order (bit for bit what ``fix_si_pnorm`` computes before its sqrt)."""
    return sum((p ** 2).sum().item() for p in params)


def _official_row_fix(params, r):
    """The official ``fix_si_pnorms``: every filter to radius ``r`` via ``torch.norm_except_dim``."""
    for p in params:
        p.mul_(r / torch.norm_except_dim(p, 2, 0))


def _row_scale_(params, factor):
    for p in params:
        p.mul_(factor.view((-1,) + (1,) * (p.dim() - 1)))


class SphereSGD(torch.optim.Optimizer):
    r"""Projected SGD with fixed ELR (module docstring; T5, T7).

    Parameters
    ----------
    params : tensors (one SI group), parameter-group dicts, or `SIGroup` objects
        (from `toymodel.bridge.si_groups`). A dict with ``"si": False`` is a non-SI group
        trained by plain SGD with its own ``"lr"`` (required).
    elr : the total effective learning rate $\tilde\eta>0$.
    constraint : ``"total"`` | ``"individual"`` | ``"per-filter"``.
    radius : $\rho$; default the current total norm of the SI parameters. When given, the
        SI parameters are rescaled onto it at construction (keeping their shares).
    momentum, weight_decay : 0 unless ``allow_nonstandard=True`` (semantics in the module docstring).
    track : compute per-step metrics into ``last_metrics`` (pre-step squared norms and squared
        gradient norms per group, and the angle moved, T6); off by default (cheaper step).
    official_reductions : reproduce the official code bit for bit (``"total"`` and
        ``"per-filter"``): norms as Python sums of ``(p ** 2).sum().item()`` in parameter order,
        one host float as the rescale factor, ``p.add_`` / ``p.mul_`` tensor by tensor, and the
        per-filter learning rate from the norms after the initial rescale. Slower (one host
        synchronisation per tensor); the default fused reductions agree with it to ~1e-15.
    """

    def __init__(self, params, elr, constraint="total", radius=None, *, momentum=0.0,
                 weight_decay=0.0, allow_nonstandard=False, track=False,
                 official_reductions=False):
        elr = _positive("elr", elr)
        if constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {constraint!r}")
        momentum = _positive("momentum", momentum, allow_zero=True)
        weight_decay = _positive("weight_decay", weight_decay, allow_zero=True)
        if (momentum or weight_decay) and not allow_nonstandard:
            raise ValueError(f"momentum={momentum!r} and weight_decay={weight_decay!r} break the "
                             "fixed-ELR dynamics; pass allow_nonstandard=True to use them "
                             "(semantics in the SphereSGD docstring)")
        if momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        groups = _as_groups(params)
        for g in groups:
            g.setdefault("si", True)
            if not g["si"]:
                if "lr" not in g:
                    raise ValueError(f"non-SI group {g.get('name', '')!r} needs its own 'lr' "
                                     "(0 freezes it)")
                g["lr"] = _positive("lr of a non-SI group", g["lr"], allow_zero=True)
        defaults = dict(elr=elr, constraint=constraint, momentum=momentum,
                        weight_decay=weight_decay, lr=0.0, si=True)
        super().__init__(groups, defaults)
        self.track = bool(track)
        self.official_reductions = bool(official_reductions)
        if self.official_reductions and (constraint == "individual" or track or momentum
                                          or weight_decay):
            raise ValueError("official_reductions reproduces the official code's two modes: "
                             "constraint 'total' or 'per-filter', without track, momentum or "
                             f"weight decay; got constraint={constraint!r}, track={track!r}, "
                             f"momentum={momentum!r}, weight_decay={weight_decay!r}")
        self.last_metrics = {}
        si = self._si_groups()
        if not si:
            raise ValueError("no SI parameter group: pass at least one group without 'si': False")
        for g in si:
            if g["constraint"] != constraint or g["elr"] != elr:
                raise ValueError("elr and constraint are global: set them on SphereSGD, not per group")
        self._setup(si, radius)

    # -- construction ------------------------------------------------------------------------------
    def _si_groups(self):
        return [g for g in self.param_groups if g["si"]]

    @torch.no_grad()
    def _setup(self, si, radius):
        sq = torch.stack([_group_sq(g["params"]) for g in si])
        total = float(sq.sum().sqrt())
        if self.official_reductions:
            total = math.sqrt(_official_sq([p for g in si for p in g["params"]]))
        if not (math.isfinite(total) and total > 0):
            raise ValueError(f"the SI parameters must have a positive finite norm, got {total!r}")
        rho = total if radius is None else _positive("radius", radius)
        constraint = si[0]["constraint"]
        if constraint == "per-filter":
            rows = []
            for g in si:
                n_rows = {p.shape[0] for p in g["params"]}
                if len(n_rows) != 1 or any(p.dim() == 0 for p in g["params"]):
                    raise ValueError(f"per-filter needs the tensors of a group to share their "
                                     f"output size, got shapes {[tuple(p.shape) for p in g['params']]}")
                rows.append(n_rows.pop())
            n_filters = sum(rows)
            r = rho / math.sqrt(n_filters)
            if self.official_reductions:  # si_pnorm_0 = sqrt(sum |p|^2 / N), then fix_si_pnorms
                r = math.sqrt(_official_sq([p for g in si for p in g["params"]]) / n_filters)
            for g in si:
                if self.official_reductions:
                    _official_row_fix(g["params"], r)
                else:
                    _row_scale_(g["params"], r / _row_sq(g["params"]).sqrt())
                g["target"] = r
            self.n_filters = n_filters
        else:
            scale = rho / total
            for g, s in zip(si, sq.tolist()):
                if radius is not None:
                    torch._foreach_mul_(g["params"], scale)
                g["target"] = rho if constraint == "total" else math.sqrt(s) * scale
            self.n_filters = None
        lr = si[0]["elr"] * rho ** 2
        if self.official_reductions:
            if constraint == "per-filter":  # official: lr = elr * (sum |p|^2 after the rescale)
                lr = si[0]["elr"] * _official_sq([p for g in si for p in g["params"]])
        for g in si:
            g["rho"] = rho
            g["lr"] = lr

    # -- the step ----------------------------------------------------------------------------------
    @property
    def rho(self) -> float:
        return self._si_groups()[0]["rho"]

    @property
    def lr(self) -> float:
        return self._si_groups()[0]["lr"]

    def _direction(self, g):
        """Parameters with a gradient and the step direction (gradient, + WD, + momentum)."""
        ps = [p for p in g["params"] if p.grad is not None]
        ds = [p.grad for p in ps]
        if g["weight_decay"]:
            ds = torch._foreach_add(ds, ps, alpha=g["weight_decay"])
        if g["momentum"]:
            bufs = []
            for p, d in zip(ps, ds):
                st = self.state[p]
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = d.detach().clone()
                else:
                    st["momentum_buffer"].mul_(g["momentum"]).add_(d)
                bufs.append(st["momentum_buffer"])
            ds = bufs
        return ps, ds

    def _fast_plan(self):
        """(params, lr, rho) when the plain total-constraint step applies, else ``None``.

        Rebuilt when the parameter groups change (``add_param_group``, ``load_state_dict``): the
        cache key is the list of group dicts and the values the step depends on.
        """
        groups = self.param_groups
        key = tuple((id(g), g["lr"], g.get("target"), g["momentum"], g["weight_decay"], g["si"],
                     g["constraint"], len(g["params"])) for g in groups)
        if getattr(self, "_plan_key", None) != key:
            plain = all(g["si"] and g["constraint"] == "total" and not g["momentum"]
                        and not g["weight_decay"] for g in groups)
            self._plan = ([p for g in groups for p in g["params"]], groups[0]["lr"],
                          groups[0]["target"]) if plain else None
            self._plan_key = key
        return self._plan

    def step(self, closure=None):
        """One projected step; returns ``closure()`` if given (like ``torch.optim.SGD``)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            if self.official_reductions:
                self._step_official()
                return loss
            plan = None if self.track else self._fast_plan()
            if plan is not None:
                ps, lr, rho = plan
                grads = [p.grad for p in ps]
                if all(g is not None for g in grads):  # `None in grads` calls Tensor.__eq__: ~40 us
                    # the common case in three foreach calls: v = theta - lr*g; theta = rho*v/|v|
                    torch._foreach_add_(ps, grads, alpha=-lr)
                    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(ps)))
                    torch._foreach_mul_(ps, norm.reciprocal_().mul_(rho))
                    return loss
            self._step_general()
        return loss

    def _step_official(self):
        """The official code's step: ``SGD.step`` (tensor by tensor on CPU), then
        ``fix_si_pnorm`` (total) or ``fix_si_pnorms`` (per-filter)."""
        si = self._si_groups()
        for g in self.param_groups:
            if g["si"] or g["lr"]:
                for p in g["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-g["lr"])
        ps = [p for g in si for p in g["params"]]
        if si[0]["constraint"] == "total":
            coef = si[0]["target"] / math.sqrt(_official_sq(ps))
            for p in ps:
                p.mul_(coef)
        else:
            _official_row_fix(ps, si[0]["target"])

    def _step_general(self):
        si = []
        for g in self.param_groups:
            ps, ds = self._direction(g)
            if not g["si"]:
                if ps and g["lr"]:
                    torch._foreach_add_(ps, ds, alpha=-g["lr"])
                continue
            si.append((g, ps, ds))
        if self.track:
            self._track_before(si)
        for g, ps, ds in si:
            if ps:
                torch._foreach_add_(ps, ds, alpha=-g["lr"])
        constraint = si[0][0]["constraint"]
        if constraint == "total":
            allp = [p for g, _, _ in si for p in g["params"]]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(allp)))
            torch._foreach_mul_(allp, norm.reciprocal_().mul_(si[0][0]["target"]))
        elif constraint == "individual":
            for g, _, _ in si:
                torch._foreach_mul_(g["params"], g["target"] / _group_sq(g["params"]).sqrt())
        else:
            for g, _, _ in si:
                _row_scale_(g["params"], g["target"] / _row_sq(g["params"]).sqrt())

    def _track_before(self, si):
        """Pre-step pieces of the metrics and the exact angle of the step (T6).

        With $a=\\|\\theta\\|^2$, $b=\\langle\\theta,d\\rangle$, $c=\\|d\\|^2$ of a rescaled
        unit (all SI parameters, a group, or a filter), $v=\\theta-\\eta d$ has radial part
        $(a-\\eta b)/\\sqrt a$ and tangential part $\\eta\\sqrt{c-b^2/a}$, so its angle to
        $\\theta$ is ``atan2`` of the two ($\\arctan(\\tilde\\eta\\rho\\|d\\|)$ when
        $b=0$, T6). Units keep their norms, so the angle of the whole SI vector satisfies
        $1-\\cos\\Delta=\\sum_u s_u(1-\\cos\\Delta_u)$, $s_u$ the shares of the units.
        """
        sq, gsq, dots = [], [], []
        constraint = si[0][0]["constraint"]
        per_filter = constraint == "per-filter"
        for g, ps, ds in si:
            if per_filter:
                a = _row_sq(g["params"])
                c = _row_sq(ds) if ds else torch.zeros_like(a)
                b = sum((p * d).reshape(p.shape[0], -1).sum(1) for p, d in zip(ps, ds)) \
                    if ds else torch.zeros_like(a)
            else:
                a = _group_sq(g["params"])
                c = _group_sq(ds) if ds else torch.zeros_like(a)
                b = sum((p * d).sum() for p, d in zip(ps, ds)) if ds else torch.zeros_like(a)
            sq.append(a)
            gsq.append(c)
            dots.append(b)
        lr = si[0][0]["lr"]
        if per_filter:
            a_u, b_u, c_u = torch.cat(sq), torch.cat(dots), torch.cat(gsq)
            group_sq = torch.stack([x.sum() for x in sq])
            group_gsq = torch.stack([x.sum() for x in gsq])
        else:
            a_u, b_u, c_u = torch.stack(sq), torch.stack(dots), torch.stack(gsq)
            group_sq, group_gsq = a_u, c_u
        if constraint == "total":
            a_u, b_u, c_u = a_u.sum(0, keepdim=True), b_u.sum(0, keepdim=True), c_u.sum(0, keepdim=True)
        along = (a_u - lr * b_u) / a_u.sqrt()
        perp = lr * (c_u - b_u.square() / a_u).clamp_min(0).sqrt()
        delta = torch.atan2(perp, along)
        shares = a_u / a_u.sum()
        angle = 2 * torch.asin(((shares * torch.sin(delta / 2).square()).sum()).sqrt().clamp(max=1))
        self.last_metrics = {"sq_norm": group_sq, "grad_sq": group_gsq, "angle": angle}
