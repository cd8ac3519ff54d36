r"""`SphereSGD`: SGD on the sphere with a fixed effective learning rate, as a torch optimiser.

One step (docs/theory.md T5, T7), with $\eta_g$ the learning rate of parameter group $g$
(``param_groups[g]["lr"]``, $\tilde\eta\rho^2$ at construction) and $d_g$ its step direction (the
gradient; with momentum the buffer $b_g$ below):

$$ v_g = \theta_g - \eta_g d_g, \qquad \theta \leftarrow \text{rescale}(v). $$

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
uses, so per-group learning rates and every torch scheduler work unchanged. The ELR of an SI group
is $\eta_g/\rho^2$: `SphereSGD.elrs` and `SphereSGD.elr` read it from the current ``lr``; the
constructor's ``elr`` is only the initial value (no group stores it, so nothing goes stale).

**Parameter groups.** The SI groups are fixed at construction: they define $\rho$ and the
constraint set. `add_param_group` takes non-SI groups only (``"si": False`` and their own
``"lr"``): plain SGD, like `torch.optim.SGD` (with their ``"momentum"``; tensors without a
gradient are skipped; ``lr=0`` freezes them). A tensor of an SI group must be floating point and
require grad (a frozen one would enter $\rho$ and be rescaled at every step). A tensor of an SI
group without a gradient at a step takes no SGD step but is still rescaled with its unit.

**Momentum** $\beta\in[0,1)$ (``momentum=``, or a group's ``"momentum"``, also changed later by
a scheduler) keeps the heavy-ball buffer of `torch.optim.SGD` (dampening 0, no Nesterov):
$b\leftarrow\beta b+\nabla L$ ($b=\nabla L$ at its first step), and $d=b$. ``momentum_mode``
(global, like the constraint) says what happens to $b$ at the projection:

* ``"official"`` (default): nothing. The step is exactly `torch.optim.SGD(momentum=β)` followed
  by the rescale; $b$ sums gradients tangent at *earlier* points, so it is not tangent at the new
  one, and the angle of a step no longer follows T6.
* ``"transport"``: after the rescale, every unit's buffer is transported to the new point
  $\theta_+$ by SGDMRT's rule (Roburin et al.; docs/sphere_optimizers.md),
  $b\leftarrow(\langle\theta,\theta_+\rangle b-\langle b,\theta_+\rangle\theta)/\|\theta_+\|^2$:
  tangent at $\theta_+$, with the norm ratio $\|\theta\|/\|\theta_+\|=1$ of the sphere. Then
  $\tilde b=\rho b$ is the momentum of the unit sphere, $\tilde b\leftarrow\beta\Gamma(\tilde b)+
  \tilde g$, and a step turns by $\tan\Delta=\tilde\eta\rho\|b\|$ (T6 with $b$ for $\nabla L$;
  per unit). The buffer of a unit covers all its tensors, so once an SI group has momentum every
  SI tensor holds a buffer (zeros until its first gradient; a group with momentum 0 has $b=
  \nabla L$). Needs a constraint with `expand` (the built-in ones).

**Weight decay** $\lambda$ adds $\lambda\theta$ to the gradient before the buffer; it changes the
ELR (a plain step is the one with ELR $\tilde\eta/(1-\eta\lambda)$), so it is rejected unless
``allow_nonstandard=True``, also when a group sets it.

Norms are re-measured at every step (docs/theory.md §2, numerics) with ``torch._foreach_norm``;
the rescale factor stays a device tensor (no host synchronisation).
"""
from __future__ import annotations

import torch

from . import _sphere_base as base
from .constraints import BY_NAME

__all__ = ["SphereSGD"]

#: the constraint names SphereSGD accepts (a `Constraint` object is accepted as well)
CONSTRAINTS = tuple(BY_NAME)
#: metrics exposed in ``optimizer.last_metrics`` after a step with ``track=True``
TRACKED = ("sq_norm", "grad_sq", "angle")
#: what ``momentum_mode`` does to the momentum buffer at the projection
MOMENTUM_MODES = ("official", "transport")


def _momentum(name, value):
    """$\\beta\\in[0,1)$, else `ValueError` naming it."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = float("nan")
    if isinstance(value, bool) or not 0 <= x < 1:  # NaN fails the comparison
        raise ValueError(f"{name} must be a finite number in [0, 1), got {value!r}")
    return x


def _mode(name, value):
    if not isinstance(value, str) or value not in MOMENTUM_MODES:
        raise ValueError(f"{name} must be one of {MOMENTUM_MODES}, got {value!r}")
    return value


class SphereSGD(base.SphereOptimizer):
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
    momentum : $\beta\in[0,1)$, the heavy-ball momentum of `torch.optim.SGD` (default 0).
    momentum_mode : ``"official"`` (the buffer is left as is: `torch.optim.SGD` + rescale) or
        ``"transport"`` (the buffer is transported to the new tangent space after the rescale);
        module docstring.
    weight_decay : $\lambda\ge0$, 0 unless ``allow_nonstandard=True``.
    allow_nonstandard : allow weight decay (globally or per group). Momentum no longer needs it.
    track : compute per-step metrics into ``last_metrics`` (pre-step squared norms and squared
        norms of the step direction per group, and the angle moved, T6); off by default.
    official_reductions : reproduce the official code bit for bit (``"total"`` and
        ``"per-filter"``, no momentum, weight decay or tracking): norms as Python sums of
        ``(p ** 2).sum().item()`` in parameter order, one host float as the rescale factor,
        ``p.add_`` / ``p.mul_`` tensor by tensor, and the per-filter learning rate from the norms
        after the initial rescale. Slower; the default fused reductions differ from it by
        rounding only (docs/bridge.md).

    Attributes
    ----------
    constraint : the `Constraint` object.
    momentum_mode : ``"official"`` or ``"transport"`` (follows a loaded state dict).
    rho, lr, elr, elrs, n_units, n_filters : read-only, from the parameter groups.
    last_metrics : the metrics of the last tracked step (``TRACKED``).
    """

    def __init__(self, params, elr, constraint="total", radius=None, *, momentum=0.0,
                 momentum_mode="official", weight_decay=0.0, allow_nonstandard=False,
                 track=False, official_reductions=False):
        self.constraint = base.as_constraint(constraint)
        momentum = _momentum("momentum", momentum)
        self.momentum_mode = _mode("momentum_mode", momentum_mode)
        weight_decay = base.positive("weight_decay", weight_decay, allow_zero=True)
        self.allow_nonstandard = base.flag("allow_nonstandard", allow_nonstandard)
        self.track = base.flag("track", track)
        self.official_reductions = base.flag("official_reductions", official_reductions)
        if weight_decay and not allow_nonstandard:
            raise ValueError(f"weight_decay={weight_decay!r} changes the fixed ELR; pass "
                             "allow_nonstandard=True to use it (semantics in the SphereSGD "
                             "docstring)")
        if official_reductions and (not self.constraint.official or track or momentum
                                    or weight_decay):
            raise ValueError("official_reductions reproduces the official code's two modes: "
                             "constraint 'total' or 'per-filter', without track, momentum or "
                             f"weight decay; got constraint={self.constraint.name!r}, "
                             f"track={track!r}, momentum={momentum!r}, "
                             f"weight_decay={weight_decay!r}")
        self._check_transportable()
        self.last_metrics = {}
        self._build(params, elr, radius,
                    {"momentum": momentum, "weight_decay": weight_decay,
                     "momentum_mode": self.momentum_mode})

    def _check_transportable(self):
        if self.momentum_mode == "transport" and not self.constraint.transportable:
            raise ValueError(f"momentum_mode='transport' needs a constraint with expand(); "
                             f"{self.constraint!r} has none")

    # -- hooks of the base class -------------------------------------------------------------------
    def _lr_scale(self, groups, rho, targets):
        return [self.constraint.sq_radius(groups, rho, self.official_reductions)] * len(groups)

    def _elr_of(self, group):
        return group["lr"] / group["rho"] ** 2

    def _check_options(self, group, label):
        if "momentum" in group:
            group["momentum"] = _momentum(f"momentum of {label}", group["momentum"])
        if "weight_decay" in group:
            group["weight_decay"] = base.positive(f"weight_decay of {label}",
                                                  group["weight_decay"], allow_zero=True)
        if "momentum_mode" in group:
            _mode(f"momentum_mode of {label}", group["momentum_mode"])
        self._check_hyper(group, label)

    def _check_hyper(self, group, label):
        """The guards, at construction, in `add_param_group` and when a group changes."""
        mom, wd = group.get("momentum", 0.0), group.get("weight_decay", 0.0)
        if wd and not self.allow_nonstandard:
            raise ValueError(f"{label} has weight_decay={wd!r}, which changes the fixed ELR; "
                             "pass allow_nonstandard=True to use it")
        _momentum(f"momentum of {label}", mom)
        mode = group.get("momentum_mode", self.momentum_mode)
        if mode != self.momentum_mode:
            raise ValueError(f"momentum_mode is global: set it on SphereSGD, not per group; "
                             f"{label} has {mode!r}, SphereSGD {self.momentum_mode!r}")
        if self.official_reductions and (mom or wd):
            raise ValueError(f"official_reductions has no momentum or weight decay; {label} has "
                             f"momentum={mom!r}, weight_decay={wd!r}")

    def load_state_dict(self, state_dict):
        """torch's `load_state_dict`; the constraint and ``momentum_mode`` follow the saved ones."""
        super().load_state_dict(state_dict)
        for g in self.param_groups:  # state dicts of earlier versions: the buffer left as is
            g.setdefault("momentum_mode", "official")
        modes = {g["momentum_mode"] for g in self.param_groups}
        if len(modes) != 1:
            raise ValueError(f"the groups of the state dict have momentum modes {sorted(modes)}; "
                             "SphereSGD has one")
        self.momentum_mode = _mode("momentum_mode", modes.pop())
        self._check_transportable()

    def __getstate__(self):
        state = super().__getstate__()
        state.update(track=self.track, official_reductions=self.official_reductions,
                     allow_nonstandard=self.allow_nonstandard, momentum_mode=self.momentum_mode,
                     last_metrics={})
        return state

    @property
    def elr(self) -> float:
        """The current total ELR $\\eta/\\rho^2$ (`ValueError` if the SI groups' lrs differ)."""
        return self.lr / self.rho ** 2

    # -- the step ----------------------------------------------------------------------------------
    def _plan(self):
        """What the step needs, rebuilt (and the groups re-validated) when a group changes.

        The key holds each group's identity and every value the step reads, so a scheduler's
        new ``lr`` or ``momentum``, ``add_param_group`` and ``load_state_dict`` all rebuild it.
        """
        groups = self.param_groups
        key = tuple((id(g), g["lr"], g["momentum"], g["weight_decay"], g["momentum_mode"],
                     g["si"], g.get("target"), g["constraint"], len(g["params"]))
                    for g in groups)
        if getattr(self, "_plan_key", None) != key:
            for k, g in enumerate(groups):
                lab = f"param_groups[{k}]"
                base.positive(f"lr of {lab}", g["lr"], allow_zero=True)
                self._check_hyper(g, lab)
                if g["si"] and g["constraint"] != self.constraint.name:
                    raise ValueError(f"{lab} has constraint {g['constraint']!r}, SphereSGD "
                                     f"{self.constraint.name!r}")
            si = [g for g in groups if g["si"]]
            plain = not any(g["momentum"] or g["weight_decay"] for g in groups)
            transport = self.momentum_mode == "transport" and any(g["momentum"] for g in si)
            buckets = {}  # lr -> tensors: one foreach call per distinct learning rate
            for g in groups:
                if g["lr"]:
                    buckets.setdefault(float(g["lr"]), []).extend(g["params"])
            self._plan_value = (plain, transport, [(ps, lr) for lr, ps in buckets.items()],
                                [g["params"] for g in si], [g["target"] for g in si])
            self._plan_key = key
        return self._plan_value

    def step(self, closure=None):
        """One projected step; returns ``closure()`` if given (like `torch.optim.SGD`)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            plain, transport, buckets, si_params, targets = self._plan()
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
            self._step_general(si_params, targets, transport)
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

    def _direction(self, g, transport):
        """Parameters with a gradient and their step direction: the gradient (+ weight decay),
        or the momentum buffer updated as `torch.optim.SGD` does (``foreach``)."""
        ps = [p for p in g["params"] if p.grad is not None]
        ds = [p.grad for p in ps]
        if g["weight_decay"]:
            ds = torch._foreach_add(ds, ps, alpha=g["weight_decay"])
        if g["momentum"] or (transport and g["si"]):
            old = [(p, d) for p, d in zip(ps, ds) if "momentum_buffer" in self.state[p]]
            for p, d in zip(ps, ds):
                if "momentum_buffer" not in self.state[p]:  # torch: the first buffer is d
                    self.state[p]["momentum_buffer"] = d.detach().clone()
            if old:
                bufs = [self.state[p]["momentum_buffer"] for p, _ in old]
                torch._foreach_mul_(bufs, g["momentum"])
                torch._foreach_add_(bufs, [d for _, d in old])
            ds = [self.state[p]["momentum_buffer"] for p in ps]
        return ps, ds

    def _step_general(self, si_params, targets, transport):
        if transport:  # a unit's buffer covers all its tensors: zeros until a first gradient
            for p in (p for ps in si_params for p in ps):
                if "momentum_buffer" not in self.state[p]:
                    self.state[p]["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
            olds = [[p.detach().clone() for p in ps] for ps in si_params]
        si = []
        for g in self.param_groups:
            ps, ds = self._direction(g, transport)
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
        if transport:
            bufs = [[self.state[p]["momentum_buffer"] for p in ps] for ps in si_params]
            self.constraint.transport_(si_params, olds, bufs)

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
