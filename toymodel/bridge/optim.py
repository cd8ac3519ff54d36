r"""`SphereSGD`: SGD on the sphere with a fixed effective learning rate, as a torch optimiser.

One step (docs/theory.md T5, T7), with $\eta_g$ the learning rate of parameter group $g$
(``param_groups[g]["lr"]``, $\tilde\eta\rho^2$ at construction):

$$ v_g = \theta_g - \eta_g\nabla_g L(\theta), \qquad \theta \leftarrow \text{rescale}(v). $$

The rescale is the *constraint*, an object of `toymodel.bridge.constraints` to which the
optimizer delegates (as geoopt's `RiemannianSGD` delegates to its manifold):

* ``constraint="total"`` (`TotalSphere`, the paper's training): every SI tensor is multiplied by
  the one common factor $\rho/\|v\|$, $\|\cdot\|$ over all SI parameters; $\rho$ is their
  initial total norm (or ``radius``). Total ELR $\tilde\eta$; the individual ELR of group $g$
  is $\eta/\|\theta_g\|^2=\tilde\eta/s_g$ and moves with the shares (T7, T9).
* ``constraint="individual"`` (`GroupSpheres`): group $g$ is multiplied by $r_g/\|v_g\|$ with
  $r_g$ its initial norm: fixed shares, individual ELRs $\tilde\eta/s_g$ fixed.
* ``constraint="per-filter"`` (`FilterSpheres`, the official ``--fix_all_elr``): each filter
  (row ``j`` of every tensor of a group: output channel ``j``) is rescaled to one common radius
  $r$, with $r^2=\rho^2/N$ ($N$ filters in all, so the total norm stays $\rho$); the filters are
  put on that radius at construction. The learning rate is $\eta=\tilde\eta\sum\|\theta\|^2=
  \tilde\eta Nr^2$, so **each filter has individual ELR** $\eta/r^2=N\tilde\eta$: ``elr`` is the
  total ELR, not the per-filter one (the official code does not say so).

**Learning rates.** As in `torch.optim.SGD`, each group's current ``"lr"`` is what every step
uses (the fused path, the tracked path and the official reductions alike), so per-group learning
rates and every torch scheduler work unchanged. The ELR of an SI group is $\eta_g/\rho^2$:
`SphereSGD.elrs` (one per SI group) and `SphereSGD.elr` read it from the current ``lr``; the
constructor's ``elr`` is only the initial value (no group stores it, so nothing goes stale).

**Parameter groups.** The SI groups are fixed at construction: they define $\rho$ and the
constraint set. `add_param_group` takes non-SI groups only (``"si": False`` and their own
``"lr"``) and refuses an SI group. Non-SI groups are plain SGD, like `torch.optim.SGD` (tensors
without a gradient are skipped; ``lr=0`` freezes them, as the official ``--noninvlr 0``). A tensor
of an SI group must be floating point and require grad: a frozen tensor would enter $\rho$ and be
rescaled at every step, so it is refused by name (the reference models' frozen head goes in no
group, or in a non-SI group). A tensor of an SI group without a gradient at a step takes no SGD
step (as a zero gradient) but is still rescaled with its unit.

Norms are re-measured at every step (docs/theory.md §2, numerics) with ``torch._foreach_norm``;
the rescale factor stays a device tensor (no host synchronisation).

Momentum and weight decay change what "fixed ELR" means and are rejected unless
``allow_nonstandard=True``, also when a group sets them (at construction or later, e.g. a
scheduler that cycles the momentum). Their semantics then: weight decay adds $\lambda\theta$ to
the gradient before the step; since the rescale removes the radial part, a step is the plain step
with ELR $\tilde\eta/(1-\eta\lambda)$. Momentum keeps a heavy-ball buffer $b\leftarrow\mu b+
\nabla L$ (dampening 0, as `torch.optim.SGD`) and steps along $-\eta b$; the buffer is *not*
transported or rescaled, so the angular step no longer obeys T6 (the official code warns
"fixing ELR with momentum is ambiguous").
"""
from __future__ import annotations

import math

import torch

from .constraints import BY_NAME, FilterSpheres, as_constraint

__all__ = ["SphereSGD"]

#: the constraint names SphereSGD accepts (a `Constraint` object is accepted as well)
CONSTRAINTS = tuple(BY_NAME)
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


def _flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _is_named(item):
    return (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
            and isinstance(item[1], torch.Tensor))


def _as_groups(params):
    """Tensors or ``(name, tensor)`` pairs (one SI group), dicts, or objects with
    ``as_param_group()`` (`SIGroup`)."""
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an iterable of tensors, (name, tensor) pairs, "
                        f"parameter-group dicts or SIGroups, got a {torch.typename(params)}")
    try:
        items = list(params)
    except TypeError:
        raise TypeError(f"params must be an iterable of tensors, (name, tensor) pairs, "
                        f"parameter-group dicts or SIGroups, got {params!r}") from None
    if not items:
        raise ValueError("params must not be empty")
    if all(isinstance(p, torch.Tensor) for p in items) or all(_is_named(p) for p in items):
        return [{"params": items}]
    groups = []
    for item in items:
        if hasattr(item, "as_param_group"):
            item = item.as_param_group()
        if not isinstance(item, dict):
            raise TypeError(f"params must be tensors, (name, tensor) pairs, or parameter groups "
                            f"(dicts with 'params', SIGroups), got a {type(item).__name__} "
                            "among them")
        groups.append(dict(item))
    return groups


def _tensor_names(group):
    """A readable name for each tensor of a group: its parameter name when known."""
    names = group.get("param_names") or group.get("names")
    if names is not None and len(names) == len(group["params"]):
        return [repr(n) for n in names]
    return [f"tensor {i} (shape {tuple(p.shape)})" for i, p in enumerate(group["params"])]


class SphereSGD(torch.optim.Optimizer):
    r"""Projected SGD with fixed ELR (module docstring; docs/theory.md T5, T7).

    Parameters
    ----------
    params : tensors or ``(name, tensor)`` pairs (one SI group), parameter-group dicts, or
        `SIGroup` objects (from `toymodel.bridge.si_groups`). A dict may set ``"elr"`` (that SI
        group's initial ELR, default ``elr``), ``"momentum"`` and ``"weight_decay"``; a dict with
        ``"si": False`` is a non-SI group trained by plain SGD with its own ``"lr"`` (required).
        An SI group takes no ``"lr"`` at construction: its lr is $\tilde\eta\rho^2$.
    elr : the initial total effective learning rate $\tilde\eta>0$ of the SI groups.
    constraint : ``"total"`` | ``"individual"`` | ``"per-filter"``, or a `Constraint` object
        (`toymodel.bridge.constraints`).
    radius : $\rho$; default the current total norm of the SI parameters. When given, the
        SI parameters are rescaled onto it at construction (keeping their shares).
    momentum, weight_decay : 0 unless ``allow_nonstandard=True`` (semantics in the module docstring).
    allow_nonstandard : allow momentum and weight decay (globally or per group).
    track : compute per-step metrics into ``last_metrics`` (pre-step squared norms and squared
        gradient norms per group, and the angle moved, T6); off by default (cheaper step).
    official_reductions : reproduce the official code bit for bit (``"total"`` and
        ``"per-filter"``): norms as Python sums of ``(p ** 2).sum().item()`` in parameter order,
        one host float as the rescale factor, ``p.add_`` / ``p.mul_`` tensor by tensor, and the
        per-filter learning rate from the norms after the initial rescale. Slower (one host
        synchronisation per tensor); the default fused reductions differ from it by rounding
        only (docs/bridge.md).

    Attributes
    ----------
    constraint : the `Constraint` object.
    rho, lr, elr, elrs, n_units, n_filters : read-only, from the parameter groups (below).
    last_metrics : the metrics of the last tracked step (``TRACKED``).
    """

    def __init__(self, params, elr, constraint="total", radius=None, *, momentum=0.0,
                 weight_decay=0.0, allow_nonstandard=False, track=False,
                 official_reductions=False):
        elr = _positive("elr", elr)
        self.constraint = as_constraint(constraint)
        momentum = _positive("momentum", momentum, allow_zero=True)
        weight_decay = _positive("weight_decay", weight_decay, allow_zero=True)
        self.allow_nonstandard = _flag("allow_nonstandard", allow_nonstandard)
        self.track = _flag("track", track)
        self.official_reductions = _flag("official_reductions", official_reductions)
        if (momentum or weight_decay) and not allow_nonstandard:
            raise ValueError(f"momentum={momentum!r} and weight_decay={weight_decay!r} break the "
                             "fixed-ELR dynamics; pass allow_nonstandard=True to use them "
                             "(semantics in the SphereSGD docstring)")
        if momentum >= 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        radius = None if radius is None else _positive("radius", radius)
        if official_reductions and (not self.constraint.official or track or momentum
                                    or weight_decay):
            raise ValueError("official_reductions reproduces the official code's two modes: "
                             "constraint 'total' or 'per-filter', without track, momentum or "
                             f"weight decay; got constraint={self.constraint.name!r}, "
                             f"track={track!r}, momentum={momentum!r}, "
                             f"weight_decay={weight_decay!r}")
        self._building = True
        defaults = {"momentum": momentum, "weight_decay": weight_decay,
                    "constraint": self.constraint.name}
        super().__init__(_as_groups(params), defaults)
        self._building = False
        self.last_metrics = {}
        si = self._si_groups()
        if not si:
            raise ValueError("no SI parameter group: pass at least one group without 'si': False")
        self._setup(si, radius, elr)

    # -- parameter groups --------------------------------------------------------------------------
    def add_param_group(self, param_group):
        """Add a parameter group (torch's `Optimizer.add_param_group`, validated).

        After construction only non-SI groups can be added: ``{"params": ..., "si": False,
        "lr": ...}``. An SI group raises `ValueError`: the SI groups define $\\rho$ and the
        constraint set, fixed at construction (pass every SI group to `SphereSGD`).
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        k = len(self.param_groups)
        label = f"param_groups[{k}]" + (f" ({group['name']!r})" if "name" in group else "")
        if "params" not in group:
            raise ValueError(f"{label} needs 'params', got keys {sorted(group)}")
        params = group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(f"'params' of {label} must be an ordered collection (a list), got a "
                            "set")
        params = list(params)
        if params and all(_is_named(p) for p in params):  # torch's named parameters
            group["param_names"] = [n for n, _ in params]
            params = [p for _, p in params]
        for i, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"'params' of {label} must be tensors, got a "
                                f"{type(p).__name__} at position {i}")
        group["params"] = params
        if "si" not in group:
            if not self._building:
                raise ValueError(f"add_param_group: {label} needs 'si': False (only non-SI groups "
                                 "can be added after construction) and its own 'lr'")
            group["si"] = True
        si = group["si"]
        if not isinstance(si, bool):
            raise TypeError(f"'si' of {label} must be True or False, got {si!r}")
        if si:
            self._check_si_group(group, label)
        else:
            if "lr" not in group:
                raise ValueError(f"non-SI group {label} needs its own 'lr' (0 freezes it)")
            if "elr" in group:
                raise ValueError(f"non-SI group {label} takes 'lr', not 'elr' (it is plain SGD)")
            group["lr"] = _positive(f"lr of non-SI group {label}", group["lr"], allow_zero=True)
        for key in ("momentum", "weight_decay"):
            if key in group:
                group[key] = _positive(f"{key} of {label}", group[key], allow_zero=True)
        self._check_hyper(group, label)
        super().add_param_group(group)
        self._plan_key = None

    def _check_si_group(self, group, label):
        if not self._building:
            raise ValueError(f"add_param_group: {label} is an SI group, but the SI groups are fixed "
                             "at construction (they define rho and the constraint set); pass "
                             "every SI group to SphereSGD(...), or add this one with 'si': False "
                             "and its own 'lr'")
        if "lr" in group:
            raise ValueError(f"SI group {label} got 'lr'={group['lr']!r}: an SI group's lr is "
                             "elr * rho**2; set its 'elr' instead (or 'si': False for a non-SI "
                             "group)")
        if "elr" in group:
            group["elr"] = _positive(f"elr of {label}", group["elr"])
        if "constraint" in group:
            if as_constraint(group["constraint"]) != self.constraint:
                raise ValueError(f"the constraint is global: set it on SphereSGD, not per group; "
                                 f"{label} has {group['constraint']!r}, SphereSGD "
                                 f"{self.constraint.name!r}")
            group["constraint"] = self.constraint.name
        ps = group["params"]
        if not ps:
            raise ValueError(f"SI group {label} has no parameters")
        names = _tensor_names(group)
        ints = [f"{n}: {p.dtype}" for n, p in zip(names, ps) if not p.is_floating_point()]
        if ints:
            raise TypeError(f"the tensors of SI group {label} must be floating point, got "
                            f"{', '.join(ints)}")
        frozen = [n for n, p in zip(names, ps) if not p.requires_grad]
        if frozen:
            raise ValueError(f"SI group {label} has tensors with requires_grad=False: "
                             f"{', '.join(frozen)}; a frozen tensor would enter rho and be "
                             "rescaled at every step. Pass only trainable SI tensors "
                             "(si_groups(model)), or put these in a group with 'si': False")

    def _check_hyper(self, group, label):
        """The fixed-ELR guards, at construction, in `add_param_group` and when a group changes."""
        mom, wd = group.get("momentum", 0.0), group.get("weight_decay", 0.0)
        if (mom or wd) and not self.allow_nonstandard:
            raise ValueError(f"{label} has momentum={mom!r} and weight_decay={wd!r}, which break "
                             "the fixed-ELR dynamics; pass allow_nonstandard=True to use them")
        if not 0 <= mom < 1:
            raise ValueError(f"momentum of {label} must be in [0, 1), got {mom!r}")
        if self.official_reductions and (mom or wd):
            raise ValueError(f"official_reductions has no momentum or weight decay; {label} has "
                             f"momentum={mom!r}, weight_decay={wd!r}")

    def _si_groups(self):
        return [g for g in self.param_groups if g["si"]]

    @torch.no_grad()
    def _setup(self, si, radius, elr):
        groups = [g["params"] for g in si]
        labels = [f"param_groups[{k}]" + (f" ({g['name']!r})" if "name" in g else "")
                  for k, g in enumerate(self.param_groups) if g["si"]]
        rho, targets = self.constraint.setup_(groups, radius, self.official_reductions, labels)
        base = self.constraint.sq_radius(groups, rho, self.official_reductions)
        for g, t in zip(si, targets):
            g["rho"] = rho
            g["target"] = t
            g["lr"] = g.pop("elr", elr) * base

    def load_state_dict(self, state_dict):
        """torch's `load_state_dict`; the constraint follows the saved one (by name)."""
        super().load_state_dict(state_dict)
        names = {g["constraint"] for g in self.param_groups if g["si"]}
        if len(names) != 1:
            raise ValueError(f"the SI groups of the state dict have constraints {sorted(names)}; "
                             "SphereSGD has one constraint")
        name = names.pop()
        if name != self.constraint.name:
            self.constraint = as_constraint(name)
        if self.official_reductions and not self.constraint.official:
            raise ValueError(f"official_reductions has no constraint {name!r}")
        for g in self.param_groups:
            g.pop("elr", None)  # state dicts of earlier versions kept the initial elr per group
        self._plan_key = None

    def __getstate__(self):
        state = super().__getstate__()
        state.update(constraint=self.constraint, track=self.track, _building=False,
                     official_reductions=self.official_reductions,
                     allow_nonstandard=self.allow_nonstandard, last_metrics={})
        return state

    # -- read-only views ---------------------------------------------------------------------------
    @property
    def rho(self) -> float:
        """$\\rho$, the total radius of the SI parameters."""
        return self._si_groups()[0]["rho"]

    @property
    def lr(self) -> float:
        """The current learning rate of the SI groups (`ValueError` if they differ)."""
        lrs = [g["lr"] for g in self._si_groups()]
        if any(x != lrs[0] for x in lrs):
            raise ValueError(f"the SI groups have different learning rates {lrs}; read "
                             "param_groups[k]['lr'] (or elrs)")
        return lrs[0]

    @property
    def elrs(self) -> list:
        """The current ELR $\\eta_g/\\rho^2$ of every SI group (T5), from its ``lr``."""
        return [g["lr"] / g["rho"] ** 2 for g in self._si_groups()]

    @property
    def elr(self) -> float:
        """The current total ELR $\\eta/\\rho^2$ (`ValueError` if the SI groups' lrs differ)."""
        return self.lr / self.rho ** 2

    @property
    def n_units(self) -> int:
        """Number of spheres of the constraint (1, the SI groups, or the filters)."""
        return self.constraint.n_units([g["params"] for g in self._si_groups()])

    @property
    def n_filters(self):
        """$N$, the number of filters, under ``"per-filter"``; else ``None``."""
        return self.n_units if isinstance(self.constraint, FilterSpheres) else None

    # -- the step ----------------------------------------------------------------------------------
    def _plan(self):
        """What the step needs, rebuilt (and the groups re-validated) when a group changes.

        The key holds each group's identity and every value the step reads, so a scheduler's
        new ``lr``, ``add_param_group`` and ``load_state_dict`` all rebuild it.
        """
        groups = self.param_groups
        key = tuple((id(g), g["lr"], g["momentum"], g["weight_decay"], g["si"], g.get("target"),
                     g["constraint"], len(g["params"])) for g in groups)
        if getattr(self, "_plan_key", None) != key:
            for k, g in enumerate(groups):
                label = f"param_groups[{k}]"
                _positive(f"lr of {label}", g["lr"], allow_zero=True)
                self._check_hyper(g, label)
                if g["si"] and g["constraint"] != self.constraint.name:
                    raise ValueError(f"{label} has constraint {g['constraint']!r}, SphereSGD "
                                     f"{self.constraint.name!r}")
            si = [g for g in groups if g["si"]]
            plain = not any(g["momentum"] or g["weight_decay"] for g in groups)
            buckets = {}  # lr -> tensors: one foreach call per distinct learning rate
            for g in groups:
                if g["lr"]:
                    buckets.setdefault(float(g["lr"]), []).extend(g["params"])
            self._plan_value = (plain, [(ps, lr) for lr, ps in buckets.items()], [g["params"] for g in si],
                                [g["target"] for g in si])
            self._plan_key = key
        return self._plan_value

    def step(self, closure=None):
        """One projected step; returns ``closure()`` if given (like `torch.optim.SGD`)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            plain, buckets, si_params, targets = self._plan()
            if self.official_reductions:
                self._step_official(si_params, targets)
                return loss
            if plain and not self.track:
                grads = [[p.grad for p in ps] for ps, _ in buckets]
                # `None in grads` would call Tensor.__eq__ (~40 us): test identity
                if all(d is not None for ds in grads for d in ds):
                    # the common case: v = theta - lr*g (one foreach call per lr), then rescale
                    for (ps, lr), ds in zip(buckets, grads):
                        torch._foreach_add_(ps, ds, alpha=-lr)
                    self.constraint.rescale_(si_params, targets)
                    return loss
            self._step_general(si_params, targets)
        return loss

    def _step_official(self, si_params, targets):
        """The official code's step: ``SGD.step`` (tensor by tensor on CPU), then
        ``fix_si_pnorm`` (total) or ``fix_si_pnorms`` (per-filter)."""
        for g in self.param_groups:
            if g["si"] or g["lr"]:
                for p in g["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-g["lr"])
        self.constraint.official_rescale_(si_params, targets)

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

    def _step_general(self, si_params, targets):
        si = []
        for g in self.param_groups:
            ps, ds = self._direction(g)
            if g["si"]:
                si.append((g, ps, ds))
            elif ps and g["lr"]:
                torch._foreach_add_(ps, ds, alpha=-g["lr"])
        if self.track:
            self._track_before(si)
        for g, ps, ds in si:
            if ps and g["lr"]:
                torch._foreach_add_(ps, ds, alpha=-g["lr"])
        self.constraint.rescale_(si_params, targets)

    def _track_before(self, si):
        """Pre-step pieces of the metrics and the exact angle of the step (T6).

        With $a=\\|\\theta\\|^2$, $b=\\langle\\theta,\\delta\\rangle$, $c=\\|\\delta\\|^2$ of a
        unit of the constraint (all SI parameters, a group, or a filter) and its step
        $\\delta=\\eta_g d$, $v=\\theta-\\delta$ has radial part $(a-b)/\\sqrt a$ and tangential
        part $\\sqrt{c-b^2/a}$, so its angle to $\\theta$ is ``atan2`` of the two
        ($\\arctan(\\tilde\\eta\\rho\\|d\\|)$ when $b=0$, T6). Units keep their norms, so the
        angle of the whole SI vector satisfies $1-\\cos\\Delta=\\sum_u s_u(1-\\cos\\Delta_u)$,
        $s_u$ the shares of the units.
        """
        c_ = self.constraint
        sq, gsq, dots, lrs = [], [], [], []
        for g, ps, ds in si:
            params = g["params"]
            if len(ps) != len(params):  # a tensor without a gradient takes no step: d = 0
                given = {id(p): d for p, d in zip(ps, ds)}
                ds = [given[id(p)] if id(p) in given else torch.zeros_like(p) for p in params]
            sq.append(c_.sq_partial(params))
            gsq.append(c_.sq_partial(ds))
            dots.append(c_.dot_partial(params, ds))
            lrs.append(float(g["lr"]))
        a_u = c_.fold(sq)
        if all(lr == lrs[0] for lr in lrs):  # one lr (the common case): scale the units once
            w, b_u, c_u = lrs[0], c_.fold(dots), c_.fold(gsq)
        else:  # delta = lr_g d_g group by group
            w = 1.0
            b_u = c_.fold([lr * b for lr, b in zip(lrs, dots)])
            c_u = c_.fold([lr * lr * c for lr, c in zip(lrs, gsq)])
        along = (a_u - w * b_u) / a_u.sqrt()
        perp = w * (c_u - b_u.square() / a_u).clamp_min(0).sqrt()
        delta = torch.atan2(perp, along)
        shares = a_u / a_u.sum()
        angle = 2 * torch.asin(((shares * torch.sin(delta / 2).square()).sum()).sqrt().clamp(max=1))
        per_group = (torch.stack if all(x.dim() == 0 for x in sq) else
                     lambda xs: torch.stack([x.sum() for x in xs]))
        self.last_metrics = {"sq_norm": per_group(sq), "grad_sq": per_group(gsq), "angle": angle}
