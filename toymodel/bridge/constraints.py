r"""Constraints: the product of spheres `SphereSGD` keeps the SI parameters on.

A constraint splits the SI coordinates into *units* and keeps every unit on a sphere of fixed
radius (docs/theory.md §2–3). With $\rho$ the total radius of the SI parameters:

| class | name | a unit is | its radius |
|---|---|---|---|
| `TotalSphere` | `"total"` | all SI parameters together | $\rho$ |
| `GroupSpheres` | `"individual"` | one parameter group $g$ | $r_g$, its norm at construction |
| `FilterSpheres` | `"per-filter"` | filter $j$: row $j$ (output channel) of every tensor of a group | $r=\rho/\sqrt N$, $N$ filters in all |

The optimizer takes the (projected) SGD step and hands the parameters to its constraint, as
geoopt's `RiemannianSGD` hands them to `manifold.retr`; a constraint never sees a learning rate
or a gradient. A constraint object is stateless: what a run needs ($\rho$ and each group's unit
radius, the ``"rho"`` and ``"target"`` keys) lives in the optimizer's parameter groups, so
`state_dict` carries it. Every method takes ``groups``, a list of lists of tensors (the SI
groups' ``"params"``), and ``targets``, one entry per group (the radius of its units, a float
for the constraints here; any picklable value its `rescale_` reads). The interface:

- `setup_(groups, radius, official, labels)` checks the tensors, measures $\rho$, puts the
  parameters on the constraint set and returns ``(rho, targets)``; it raises `ValueError` before
  writing anything;
- `sq_radius(groups, rho, official)`: the $\rho^2$ of the learning rate $\eta=\tilde\eta\rho^2$
  (docs/theory.md T5);
- `rescale_(groups, targets)`: every unit back to its radius, $\theta_u\leftarrow
  r_u\theta_u/\|\theta_u\|$, with fused reductions and device-side factors (no host
  synchronisation);
- `official_rescale_(groups, targets)`: the same with the official code's reductions, bit for
  bit (only where ``official`` is true);
- `sq_partial(tensors)`, `dot_partial(xs, ys)`, `fold(partials)`: squared norms and inner
  products per unit, for the step metrics (docs/theory.md T6);
- `expand(groups, values)`: per-unit values back onto the tensors; with it the base class gives
  `unit_sq` and `transport_` (SGDMRT's transport), needed by transported moments (`SphereAdam`,
  `SphereSGD(momentum_mode="transport")`);
- `n_units(groups)`. A new constraint is one subclass of `Constraint` with these methods.
"""
from __future__ import annotations

import math

import torch

__all__ = [
    "BY_NAME",
    "Constraint",
    "FilterSpheres",
    "GroupSpheres",
    "TotalSphere",
    "as_constraint",
]


# -- reductions shared by the constraints ----------------------------------------------------------
def _sq(params):
    """$\\sum_p\\|p\\|^2$ as a 0-dim tensor (``torch._foreach_norm``; mixed dtypes promote)."""
    return torch.stack(torch._foreach_norm(params)).square().sum()


def _norm(params):
    """$(\\sum_p\\|p\\|^2)^{1/2}$ as a 0-dim tensor, the fused norm of the rescale."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(params)))


def _row_sq(params):
    """Per-filter squared norms $\\sum_p\\|p_j\\|^2$ (row ``j`` = output channel)."""
    return sum(p.reshape(p.shape[0], -1).square().sum(1) for p in params)


def _row_dot(xs, ys):
    return sum((x * y).reshape(x.shape[0], -1).sum(1) for x, y in zip(xs, ys))


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


def _first_bad(sq):
    """Index of the first entry of ``sq`` that is not positive and finite, else ``None``."""
    bad = torch.nonzero(~(torch.isfinite(sq) & (sq > 0)))
    return int(bad[0, 0]) if bad.numel() else None


def _flat(groups):
    return [p for ps in groups for p in ps]


def _measure(groups, official):
    """Squared norm of each group (floats) and the total norm, fused or official reductions."""
    sq = torch.stack([_sq(ps) for ps in groups])
    total = float(sq.sum().sqrt())
    if official:
        total = math.sqrt(_official_sq(_flat(groups)))
    return sq.tolist(), total


def _radius(total, radius):
    """$\\rho$: the measured total norm, or ``radius`` (already validated by the optimizer)."""
    if not (math.isfinite(total) and total > 0):
        raise ValueError(f"the SI parameters must have a positive finite norm, got {total!r}")
    return total if radius is None else float(radius)


# -- the constraints -------------------------------------------------------------------------------
class Constraint:
    """Base class: a partition of the SI coordinates into units, each kept on a sphere.

    Subclasses set `name` (the string `SphereSGD` accepts for them and stores in its parameter
    groups) and implement the methods below; `official` says whether `official_rescale_`
    reproduces the official code (``SphereSGD(..., official_reductions=True)``).
    """

    name = "constraint"
    official = False

    def setup_(self, groups, radius=None, official=False, labels=None):
        """Check, measure, place on the constraint set; returns ``(rho, targets)``.

        Parameters
        ----------
        groups : lists of tensors, the SI groups.
        radius : $\\rho$ (validated), or ``None`` for the current total norm.
        official : measure with the official code's reductions.
        labels : a name per group for the error messages (default ``"SI group k"``).
        """
        raise NotImplementedError

    def sq_radius(self, groups, rho, official=False):
        """The $\\rho^2$ the ELR refers to: the optimizer sets lr $=\\tilde\\eta\\rho^2$ (T5)."""
        return rho ** 2

    def rescale_(self, groups, targets):
        """Put every unit back on its sphere (fused reductions, no host synchronisation)."""
        raise NotImplementedError

    def official_rescale_(self, groups, targets):
        """`rescale_` with the official code's reductions (only when `official` is true)."""
        raise NotImplementedError(f"constraint {self.name!r} has no official reductions")

    def sq_partial(self, tensors):
        """One group's contributions $\\sum_p\\|p_u\\|^2$ to the squared norms of its units: a
        0-dim tensor when the group lies in one unit, else 1-D; ``tensors`` are shaped like the
        group's tensors (the tensors, or their steps)."""
        raise NotImplementedError

    def dot_partial(self, xs, ys):
        """One group's contributions $\\sum_p\\langle x_u,y_u\\rangle$ to its units, shaped as
        `sq_partial` (``xs``, ``ys`` aligned with the group's tensors)."""
        raise NotImplementedError

    def fold(self, partials):
        """The units' values from every group's partials (1-D tensor, one entry per unit)."""
        return torch.cat([x.reshape(-1) for x in partials])

    def expand(self, groups, values):
        """Per-unit ``values`` (1-D, in the order of `fold`) as one factor per tensor,
        broadcastable against it: ``[[f_p for p in ps] for ps in groups]``."""
        raise NotImplementedError(f"constraint {self.name!r} has no expand")

    def unit_sq(self, groups):
        """$\\|x_u\\|^2$ for every unit (1-D), ``groups`` shaped like the SI groups."""
        return self.fold([self.sq_partial(ps) for ps in groups])

    def transport_(self, groups, olds, bufs):
        r"""SGDMRT's order-1 transport of ``bufs`` from the points ``olds`` to ``groups``, in place,
        unit by unit (docs/sphere_optimizers.md):

        $$ b_u\leftarrow\frac{\langle\theta_u,\theta_{+u}\rangle b_u-\langle b_u,\theta_{+u}\rangle
           \theta_u}{\|\theta_{+u}\|^2}, $$

        tangent at $\theta_{+u}$ for every $b_u$, and $\|\theta_u\|/\|\theta_{+u}\|$ (1 up to
        rounding on the unit's sphere) times the sphere's transport; device-side factors.
        """
        inv = self.unit_sq(groups).reciprocal()
        along = self.fold([self.dot_partial(o, p) for o, p in zip(olds, groups)]) * inv
        off = self.fold([self.dot_partial(b, p) for b, p in zip(bufs, groups)]) * inv
        for os_, bs, fa, fb in zip(olds, bufs, self.expand(groups, along),
                                   self.expand(groups, off)):
            for o, b, x, y in zip(os_, bs, fa, fb):
                b.mul_(x).sub_(o * y)

    @property
    def transportable(self) -> bool:
        """Whether `expand` is implemented (transported moments)."""
        return type(self).expand is not Constraint.expand

    def n_units(self, groups):
        """Number of units (spheres)."""
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"

    def __eq__(self, other):
        return type(self) is type(other)

    def __hash__(self):
        return hash(type(self))


class TotalSphere(Constraint):
    r"""All SI parameters on one sphere of radius $\rho$ (the paper's training, T5, T7).

    One common factor $\rho/\|v\|$, the norm over every SI tensor; the shares of the groups
    move (T9). With ``radius`` the parameters are multiplied by $\rho/\|\theta\|$ at setup,
    which keeps the shares.
    """

    name = "total"
    official = True

    def setup_(self, groups, radius=None, official=False, labels=None):
        _, total = _measure(groups, official)
        rho = _radius(total, radius)
        if radius is not None:
            scale = rho / total
            for ps in groups:
                torch._foreach_mul_(ps, scale)
        return rho, [rho] * len(groups)

    def rescale_(self, groups, targets):
        ps = _flat(groups)
        torch._foreach_mul_(ps, _norm(ps).reciprocal_().mul_(targets[0]))

    def official_rescale_(self, groups, targets):
        ps = _flat(groups)
        coef = targets[0] / math.sqrt(_official_sq(ps))
        for p in ps:
            p.mul_(coef)

    def sq_partial(self, tensors):
        return _sq(tensors)

    def dot_partial(self, xs, ys):
        return sum((x * y).sum() for x, y in zip(xs, ys))

    def fold(self, partials):
        return torch.stack(partials).sum(0, keepdim=True)

    def expand(self, groups, values):
        return [[values[0]] * len(ps) for ps in groups]

    def n_units(self, groups):
        return 1


class GroupSpheres(Constraint):
    r"""Group $g$ on its own sphere of radius $r_g$, its norm at construction (times
    $\rho/\|\theta\|$ when ``radius`` is given): fixed shares, fixed individual ELRs
    $\tilde\eta/s_g$ (docs/theory.md §3, T7)."""

    name = "individual"

    def setup_(self, groups, radius=None, official=False, labels=None):
        labels = labels or [f"SI group {k}" for k in range(len(groups))]
        sq, total = _measure(groups, official)
        for lab, s in zip(labels, sq):  # a zero group has no direction: r_g/|v_g| = 0/0
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"constraint 'individual' needs every SI group to have a "
                                 f"positive finite norm, got {math.sqrt(s)!r} for {lab}")
        rho = _radius(total, radius)
        scale = rho / total
        if radius is not None:
            for ps in groups:
                torch._foreach_mul_(ps, scale)
        return rho, [math.sqrt(s) * scale for s in sq]

    def rescale_(self, groups, targets):
        for ps, t in zip(groups, targets):
            torch._foreach_mul_(ps, _norm(ps).reciprocal_().mul_(t))

    def sq_partial(self, tensors):
        return _sq(tensors)

    def dot_partial(self, xs, ys):
        return sum((x * y).sum() for x, y in zip(xs, ys))

    def fold(self, partials):
        return torch.stack(partials)

    def expand(self, groups, values):
        return [[values[k]] * len(ps) for k, ps in enumerate(groups)]

    def n_units(self, groups):
        return len(groups)


class FilterSpheres(Constraint):
    r"""Every filter on a sphere of one common radius $r=\rho/\sqrt N$ (the official
    ``--fix_all_elr``; docs/bridge.md, "Per-filter mode").

    Filter $j$ of a group is row $j$ (output channel) of *every* tensor of the group (a residual
    stream adds them before one per-channel normalisation), so the tensors of a group must share
    their first dimension. The filters are put on the radius at setup. lr $=\tilde\eta\rho^2
    =\tilde\eta Nr^2$, so each filter moves with ELR $N\tilde\eta$. With the official
    reductions the rescale is the official one, tensor by tensor (``torch.norm_except_dim``), and
    $\rho^2$ of the learning rate is the official host sum after the initial rescale.
    """

    name = "per-filter"
    official = True

    def setup_(self, groups, radius=None, official=False, labels=None):
        labels = labels or [f"SI group {k}" for k in range(len(groups))]
        rows = []
        for lab, ps in zip(labels, groups):
            n_rows = {p.shape[0] if p.dim() else None for p in ps}
            if len(n_rows) != 1 or None in n_rows:
                raise ValueError(f"constraint 'per-filter' needs the tensors of a group to share "
                                 f"their output size, got shapes {[tuple(p.shape) for p in ps]} "
                                 f"in {lab}")
            rows.append(n_rows.pop())
        # a zero filter has no direction: r / |v_j| = inf would write NaN into the model
        row_sq = [_row_sq(ps) for ps in groups]
        for lab, ps, rs in zip(labels, groups, row_sq):
            checks = [(lab, rs)] if not official else [  # official: filters tensor by tensor
                (f"{lab}, tensor {i}", p.reshape(p.shape[0], -1).square().sum(1))
                for i, p in enumerate(ps)]
            for where, sq in checks:
                j = _first_bad(sq)
                if j is not None:
                    raise ValueError(f"constraint 'per-filter' needs every filter to have a "
                                     f"positive finite norm, got {math.sqrt(float(sq[j]))!r} "
                                     f"for filter {j} of {where}")
        n = sum(rows)
        _, total = _measure(groups, official)
        rho = _radius(total, radius)
        r = rho / math.sqrt(n)
        if official:
            if radius is None:  # the official si_pnorm_0 = sqrt(sum |p|^2 / N), then fix_si_pnorms
                r = math.sqrt(_official_sq(_flat(groups)) / n)
            for ps in groups:
                _official_row_fix(ps, r)
        else:
            for ps, rs in zip(groups, row_sq):
                _row_scale_(ps, r / rs.sqrt())
        return rho, [r] * len(groups)

    def sq_radius(self, groups, rho, official=False):
        # official: lr = elr * (sum |p|^2 after the initial rescale) = elr * N r^2 up to rounding
        return _official_sq(_flat(groups)) if official else rho ** 2

    def rescale_(self, groups, targets):
        for ps, t in zip(groups, targets):
            _row_scale_(ps, t / _row_sq(ps).sqrt())

    def official_rescale_(self, groups, targets):
        for ps, t in zip(groups, targets):
            _official_row_fix(ps, t)

    def sq_partial(self, tensors):
        return _row_sq(tensors)

    def dot_partial(self, xs, ys):
        return _row_dot(xs, ys)

    def fold(self, partials):
        return torch.cat(partials)

    def expand(self, groups, values):
        out, start = [], 0
        for ps in groups:
            rows = values[start:start + ps[0].shape[0]]
            start += ps[0].shape[0]
            out.append([rows.view((-1,) + (1,) * (p.dim() - 1)) for p in ps])
        return out

    def n_units(self, groups):
        return sum(ps[0].shape[0] for ps in groups)


#: the constraint names `SphereSGD` accepts, mapped to their classes
BY_NAME = {c.name: c for c in (TotalSphere, GroupSpheres, FilterSpheres)}


def as_constraint(constraint) -> Constraint:
    """A `Constraint` from itself or from its name (``"total"``, ``"individual"``,
    ``"per-filter"``); `ValueError` for an unknown name, `TypeError` for anything else."""
    if isinstance(constraint, Constraint):
        return constraint
    if isinstance(constraint, str):
        if constraint not in BY_NAME:
            raise ValueError(f"constraint must be one of {tuple(BY_NAME)} or a Constraint, "
                             f"got {constraint!r}")
        return BY_NAME[constraint]()
    raise TypeError(f"constraint must be a name in {tuple(BY_NAME)} or a Constraint object, "
                    f"got {type(constraint).__name__} {constraint!r}")
