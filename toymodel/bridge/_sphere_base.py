r"""What `SphereSGD` and `SphereAdam` share: parameter groups, $\rho$, the constraint, the ELRs.

A fixed-ELR optimizer on the sphere has *SI groups*, fixed at construction (they define $\rho$ and
the constraint set, `toymodel.bridge.constraints`), and *non-SI groups* (``"si": False``, their own
``"lr"``, plain torch updates). Each SI group stores ``"rho"``, ``"target"`` (the radius of its
units), ``"constraint"`` (the constraint's name) and its current ``"lr"``; no group stores the
constructor's ``elr`` (the ELR is read from the current ``lr``, so schedulers work unchanged). A
subclass says how the lr scales with the radius (`_lr_scale`, `_elr_of`) and validates its own
options (`_check_options`).
"""
from __future__ import annotations

import math

import torch

from .constraints import FilterSpheres, as_constraint


def positive(name, value, allow_zero=False):
    """``value`` as a float in ``(0, inf)`` (``[0, inf)`` with ``allow_zero``), else `ValueError`
    naming it."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = float("nan")
    ok = math.isfinite(x) and (x >= 0 if allow_zero else x > 0)
    if not ok or isinstance(value, bool):
        rng = "[0, inf)" if allow_zero else "(0, inf)"
        raise ValueError(f"{name} must be a finite number in {rng}, got {value!r}")
    return x


def flag(name, value):
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


def label(k, group):
    return f"param_groups[{k}]" + (f" ({group['name']!r})" if "name" in group else "")


class SphereOptimizer(torch.optim.Optimizer):
    """Base class: SI groups on a constraint set at a fixed ELR, non-SI groups plain."""

    official_reductions = False

    def _build(self, params, elr, radius, defaults):
        """Build the groups (torch's constructor) and validate them, measure $\\rho$, set each SI
        lr; ``self.constraint`` is set before."""
        elr = positive("elr", elr)
        radius = None if radius is None else positive("radius", radius)
        self._building = True
        super().__init__(_as_groups(params), {**defaults, "constraint": self.constraint.name})
        self._building = False
        si = self._si_groups()
        if not si:
            raise ValueError("no SI parameter group: pass at least one group without 'si': False")
        self._setup(si, radius, elr)

    # -- hooks -------------------------------------------------------------------------------------
    def _lr_scale(self, groups, rho, targets):
        """The factor $c_g$ of each SI group's lr $=\\tilde\\eta c_g$."""
        raise NotImplementedError

    def _elr_of(self, group):
        """The current ELR of an SI group, from its ``lr``."""
        raise NotImplementedError

    def _check_options(self, group, label):
        """Validate (and coerce) the subclass's options of a group."""

    # -- parameter groups --------------------------------------------------------------------------
    def add_param_group(self, param_group):
        """Add a parameter group (torch's `Optimizer.add_param_group`, validated).

        After construction only non-SI groups can be added: ``{"params": ..., "si": False,
        "lr": ...}``. An SI group raises `ValueError`: the SI groups define $\\rho$ and the
        constraint set, fixed at construction (pass every SI group to the constructor).
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        lab = label(len(self.param_groups), group)
        if "params" not in group:
            raise ValueError(f"{lab} needs 'params', got keys {sorted(group)}")
        params = group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(f"'params' of {lab} must be an ordered collection (a list), got a set")
        params = list(params)
        if params and all(_is_named(p) for p in params):  # torch's named parameters
            group["param_names"] = [n for n, _ in params]
            params = [p for _, p in params]
        for i, p in enumerate(params):
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"'params' of {lab} must be tensors, got a "
                                f"{type(p).__name__} at position {i}")
        group["params"] = params
        if "si" not in group:
            if not self._building:
                raise ValueError(f"add_param_group: {lab} needs 'si': False (only non-SI groups "
                                 "can be added after construction) and its own 'lr'")
            group["si"] = True
        if not isinstance(group["si"], bool):
            raise TypeError(f"'si' of {lab} must be True or False, got {group['si']!r}")
        if group["si"]:
            self._check_si_group(group, lab)
        else:
            if "lr" not in group:
                raise ValueError(f"non-SI group {lab} needs its own 'lr' (0 freezes it)")
            if "elr" in group:
                raise ValueError(f"non-SI group {lab} takes 'lr', not 'elr' (its update is plain)")
            group["lr"] = positive(f"lr of non-SI group {lab}", group["lr"], allow_zero=True)
        self._check_options(group, lab)
        super().add_param_group(group)
        self._plan_key = None

    def _check_si_group(self, group, lab):
        if not self._building:
            raise ValueError(f"add_param_group: {lab} is an SI group, but the SI groups are fixed "
                             "at construction (they define rho and the constraint set); pass "
                             f"every SI group to {type(self).__name__}(...), or add this one with "
                             "'si': False and its own 'lr'")
        if "lr" in group:
            raise ValueError(f"SI group {lab} got 'lr'={group['lr']!r}: an SI group's lr follows "
                             "from its ELR; set its 'elr' instead (or 'si': False for a non-SI "
                             "group)")
        if "elr" in group:
            group["elr"] = positive(f"elr of {lab}", group["elr"])
        if "constraint" in group:
            if as_constraint(group["constraint"]) != self.constraint:
                raise ValueError(f"the constraint is global: set it on {type(self).__name__}, not "
                                 f"per group; {lab} has {group['constraint']!r}, the optimizer "
                                 f"{self.constraint.name!r}")
            group["constraint"] = self.constraint.name
        ps = group["params"]
        if not ps:
            raise ValueError(f"SI group {lab} has no parameters")
        names = _tensor_names(group)
        ints = [f"{n}: {p.dtype}" for n, p in zip(names, ps) if not p.is_floating_point()]
        if ints:
            raise TypeError(f"the tensors of SI group {lab} must be floating point, got "
                            f"{', '.join(ints)}")
        frozen = [n for n, p in zip(names, ps) if not p.requires_grad]
        if frozen:
            raise ValueError(f"SI group {lab} has tensors with requires_grad=False: "
                             f"{', '.join(frozen)}; a frozen tensor would enter rho and be "
                             "rescaled at every step. Pass only trainable SI tensors "
                             "(si_groups(model)), or put these in a group with 'si': False")

    def _si_groups(self):
        return [g for g in self.param_groups if g["si"]]

    @torch.no_grad()
    def _setup(self, si, radius, elr):
        groups = [g["params"] for g in si]
        labels = [label(k, g) for k, g in enumerate(self.param_groups) if g["si"]]
        rho, targets = self.constraint.setup_(groups, radius, self.official_reductions, labels)
        for g, t, c in zip(si, targets, self._lr_scale(groups, rho, targets)):
            g["rho"] = rho
            g["target"] = t
            g["lr"] = g.pop("elr", elr) * c

    def load_state_dict(self, state_dict):
        """torch's `load_state_dict`; the constraint follows the saved one (by name)."""
        super().load_state_dict(state_dict)
        names = {g["constraint"] for g in self.param_groups if g["si"]}
        if len(names) != 1:
            raise ValueError(f"the SI groups of the state dict have constraints {sorted(names)}; "
                             f"{type(self).__name__} has one constraint")
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
        state.update(constraint=self.constraint, _building=False, _plan_key=None)
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
        """The current ELR of every SI group, from its ``lr``."""
        return [self._elr_of(g) for g in self._si_groups()]

    @property
    def n_units(self) -> int:
        """Number of spheres of the constraint (1, the SI groups, or the filters)."""
        return self.constraint.n_units([g["params"] for g in self._si_groups()])

    @property
    def n_filters(self):
        """$N$, the number of filters, under ``"per-filter"``; else ``None``."""
        return self.n_units if isinstance(self.constraint, FilterSpheres) else None
