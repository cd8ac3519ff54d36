r"""`SphereAdam`: Adam on the sphere at a fixed effective learning rate, as a torch optimiser.

**Adam's effective learning rate** (Roburin et al., arXiv 2006.13382; docs/sphere_optimizers.md).
On a scale-invariant unit $\theta_u$ of radius $r_u$ the gradient is $g=\tilde g/r_u$, with
$\tilde g$ the gradient at $u=\theta_u/r_u$ on the unit sphere, so Adam's moments scale as
$m=\tilde m/r_u$, $\sqrt v=\sqrt{\tilde v}/r_u$ and its step $\eta\,\hat m/(\sqrt{\hat v}+\epsilon)$
moves $u$ by $(\eta/r_u)\,\hat{\tilde m}/(\sqrt{\hat{\tilde v}}+\epsilon r_u)$: Adam's effective
learning rate is $\eta/\|\theta_u\|$, not SGD's $\eta/\|\theta_u\|^2$ (T3).

**Fixed ELR (our definition).** `SphereAdam` with ELR $\tilde\eta$ keeps $\eta_u/\|\theta_u\|=
\tilde\eta$ on every unit $u$ of the constraint (the whole SI vector, a group, or a filter,
`toymodel.bridge.constraints`): its learning rate is $\eta_u=\tilde\eta r_u$ (``"lr"`` of an SI
group $=\tilde\eta\times$ its ``"target"``), and every step is projected back to $r_u$. One step,
per unit, $t$ the step count, $g$ the gradient (zero for a tensor without one):

$$ m\leftarrow\beta_1m+(1-\beta_1)g,\qquad v_u\leftarrow\beta_2v_u+(1-\beta_2)\|g_u\|^2,\qquad
   \theta'_u=\theta_u-\eta_u\frac{m_u/(1-\beta_1^t)}{\sqrt{v_u/(1-\beta_2^t)}+\epsilon}, $$

then $\theta_{+u}=r_u\theta'_u/\|\theta'_u\|$ (the constraint's rescale), and AdamSRT's order-2
rescaling and order-1 transport *to the projected point*:

$$ v_u\leftarrow v_u\frac{\|\theta_u\|^2}{\|\theta_{+u}\|^2},\qquad
   m_u\leftarrow\frac{\langle\theta_u,\theta_{+u}\rangle m_u-\langle m_u,\theta_{+u}\rangle\theta_u}
   {\|\theta_{+u}\|^2}. $$

$v_u$ is one scalar per unit (AdamSRT's channel-wise second moment, its sum $\|g_u\|^2$ rather
than a mean: the $\sqrt d$ of AdamSRT is absorbed, so $\|\theta'_u-\theta_u\|\le\eta_u$ roughly and
the first step turns every unit by exactly $\arctan(\tilde\eta\|g_u\|/(\|g_u\|+\epsilon))$). With
$\tilde m=r_um$, $\tilde v=r_u^2v$ these are Adam's moments on the unit sphere, transported, and
the direction follows the unit-sphere step $u\leftarrow\mathrm{normalize}(u-\tilde\eta\,
\hat{\tilde m}/(\sqrt{\hat{\tilde v}}+\epsilon r_u))$: the radius enters only through $\epsilon
r_u$ (with $\epsilon=0$ the directions do not depend on $\rho$, as T5 for SGD).

**Relation to AdamSRT + rescale.** The step is AdamSRT's with lr $\tilde\eta r_u/\sqrt d$ on a
unit of $d$ entries (one channel). AdamSRT then rescales its moments to the unprojected $\theta'$
($m$ by $\|\theta\|/\|\theta'\|$, $v$ by its square, with $\epsilon$ in the denominators); applying
the same order-1/order-2 rules to the projection $\theta'\to\theta_+$ ($m/k$, $v/k^2$,
$k=r_u/\|\theta'_u\|$) gives exactly the update above when $\epsilon=0$ (tested). A plain
rescale without it would shrink the old moments by $\cos\Delta$ ($m$) and $\cos^2\Delta$ ($v$)
at every step.

Non-SI groups (``"si": False``, their own ``"lr"``, ``"betas"``, ``"eps"``) are plain
`torch.optim.Adam`; tensors without a gradient there are skipped. The SI groups share ``betas``
and ``eps`` (checked at every step: their second moment is per unit).
"""
from __future__ import annotations

import math

import torch

from . import _sphere_base as base
from .sphere_optim import _betas, _real

__all__ = ["SphereAdam"]


class SphereAdam(base.SphereOptimizer):
    r"""Adam on the sphere with fixed ELR $\tilde\eta$: $\eta_u=\tilde\eta\|\theta_u\|$ on every
    unit, one second-moment scalar per unit, the first moment transported and the second rescaled
    to the projected point (module docstring; docs/sphere_optimizers.md).

    Parameters
    ----------
    params : tensors or ``(name, tensor)`` pairs (one SI group), parameter-group dicts, or
        `SIGroup` objects, as for `SphereSGD`. An SI group may set its initial ``"elr"``; a dict
        with ``"si": False`` is plain `torch.optim.Adam` with its own ``"lr"`` (required) and
        optionally its own ``"betas"`` and ``"eps"``.
    elr : the initial ELR $\tilde\eta>0$: the tangent of the angle of a unit's first step.
    betas : $(\beta_1,\beta_2)$, each in $[0,1)$.
    eps : $\epsilon\ge0$, added to $\sqrt{\hat v_u}$ (it acts as $\epsilon\|\theta_u\|$ on the
        unit sphere).
    constraint : ``"total"`` (default) | ``"individual"`` | ``"per-filter"``, or a `Constraint`
        with `expand`: its units are the spheres and the second-moment units.
    radius : $\rho$; default the current total norm of the SI parameters (as `SphereSGD`).
    track : compute per-step metrics into ``last_metrics`` (as `SphereSGD`'s: the squared norms
        of every SI group before the step and of its gradient, and the angle the SI vector
        turned, measured); off by default.

    Attributes
    ----------
    constraint : the `Constraint` object.
    rho, lr, elr, elrs, n_units, n_filters : read-only, from the parameter groups.
    last_metrics : the metrics of the last tracked step.
    """

    #: the power $p$ of the radius in the effective learning rate $\eta/\|\theta\|^p$ (T3 for
    #: SGD: 2; Adam: 1), for the ``individual_elr`` a training run records
    elr_power = 1

    def __init__(self, params, elr, betas=(0.9, 0.999), eps=1e-8, constraint="total",
                 radius=None, *, track=False):
        self.track = base.flag("track", track)
        self.last_metrics = {}
        self.constraint = base.as_constraint(constraint)
        if not self.constraint.transportable:
            raise ValueError(f"SphereAdam needs a constraint with expand(); "
                             f"{self.constraint!r} has none")
        self._build(params, elr, radius, {"betas": _betas(betas), "eps": _real("eps", eps, 0.0)})

    def __getstate__(self):
        state = super().__getstate__()
        state.update(track=self.track, last_metrics={})
        return state

    # -- hooks of the base class -------------------------------------------------------------------
    def _lr_scale(self, groups, rho, targets):
        return list(targets)  # lr = elr * r_u: the radius of the group's units

    def _elr_of(self, group):
        return group["lr"] / group["target"]

    def _check_options(self, group, label):
        if "betas" in group:
            try:
                group["betas"] = _betas(group["betas"])
            except ValueError as err:
                raise ValueError(f"{label}: {err}") from None
        if "eps" in group:
            group["eps"] = _real(f"eps of {label}", group["eps"], 0.0)

    @property
    def elr(self) -> float:
        """The current ELR $\\eta_g/r_g$ of the SI groups (`ValueError` if they differ by more than
        $8u$ relative: the rounding of $\\eta_g=\\tilde\\eta r_g$ and of the quotient is $2u$)."""
        elrs = self.elrs
        if max(elrs) - min(elrs) > 4 * torch.finfo(torch.float64).eps * max(elrs):
            raise ValueError(f"the SI groups have different ELRs {elrs}; read elrs")
        return elrs[0]

    # -- the step ----------------------------------------------------------------------------------
    def _checked(self):
        """Re-validate the groups (a scheduler may have changed them); the SI groups' options."""
        si = self._si_groups()
        for k, g in enumerate(self.param_groups):
            lab = base.label(k, g)
            base.positive(f"lr of {lab}", g["lr"], allow_zero=True)
            self._check_options(g, lab)
            if g["si"] and g["constraint"] != self.constraint.name:
                raise ValueError(f"{lab} has constraint {g['constraint']!r}, SphereAdam "
                                 f"{self.constraint.name!r}")
        shared = {(tuple(g["betas"]), g["eps"]) for g in si}
        if len(shared) != 1:
            raise ValueError(f"the SI groups must share betas and eps (one second moment per "
                             f"unit), got {sorted(shared)}")
        return si

    @torch.no_grad()
    def step(self, closure=None):
        """One step; returns ``closure()`` if given (like `torch.optim.Adam`)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        si = self._checked()
        for g in self.param_groups:
            if not g["si"]:
                self._plain_adam(g)
        self._sphere_step(si)
        return loss

    def _sphere_step(self, si):
        c = self.constraint
        groups = [g["params"] for g in si]
        b1, b2 = si[0]["betas"]
        eps = si[0]["eps"]
        grads = [[torch.zeros_like(p) if p.grad is None else _dense(p) for p in ps]
                 for ps in groups]
        olds = [[p.detach().clone() for p in ps] for ps in groups]
        old_sq = c.unit_sq(groups)
        for g, ps, ds, fs in zip(si, groups, grads, c.expand(groups, c.unit_sq(grads))):
            for p, d, f in zip(ps, ds, fs):
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    st["exp_avg_sq"] = torch.zeros(f.shape, dtype=p.dtype, device=p.device)
                st["step"] += 1
                t, m, v = st["step"], st["exp_avg"], st["exp_avg_sq"]
                m.lerp_(d, 1 - b1)
                v.mul_(b2).add_(f, alpha=1 - b2)
                denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(eps)
                p.addcdiv_(m, denom, value=-g["lr"] / (1 - b1 ** t))
        c.rescale_(groups, [g["target"] for g in si])
        for ps, fs in zip(groups, c.expand(groups, old_sq / c.unit_sq(groups))):
            for p, f in zip(ps, fs):
                self.state[p]["exp_avg_sq"].mul_(f)
        c.transport_(groups, olds, [[self.state[p]["exp_avg"] for p in ps] for ps in groups])
        if self.track:
            self.last_metrics = _metrics(groups, olds, grads)

    def _plain_adam(self, g):
        """`torch.optim.Adam`'s single-tensor update (no weight decay, no amsgrad)."""
        b1, b2 = g["betas"]
        for p in g["params"]:
            if p.grad is None:
                continue
            d = _dense(p)
            st = self.state[p]
            if not st:
                st["step"] = 0
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["step"] += 1
            t, m, v = st["step"], st["exp_avg"], st["exp_avg_sq"]
            m.lerp_(d, 1 - b1)
            v.mul_(b2).addcmul_(d, d, value=1 - b2)
            denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(g["eps"])
            p.addcdiv_(m, denom, value=-g["lr"] / (1 - b1 ** t))


def _metrics(groups, olds, grads) -> dict:
    r"""``sq_norm`` and ``grad_sq`` per SI group (before the step), and the ``angle`` turned by
    the whole SI vector, $2\arctan(\|u-u'\|/\|u+u'\|)$ of its directions before and after: exact
    for small and large angles (the ``arccos`` of a cosine loses half the digits near 0)."""
    def sq(ts):
        return torch.stack(torch._foreach_norm(ts)).square().sum()

    old, new = [p for ps in olds for p in ps], [p for ps in groups for p in ps]
    na, nb = sq(old).sqrt(), sq(new).sqrt()
    a, b = na.new_zeros(()), na.new_zeros(())
    for p, q in zip(old, new):
        a = a + (p / na - q / nb).square().sum()
        b = b + (p / na + q / nb).square().sum()
    return {"sq_norm": torch.stack([sq(ps) for ps in olds]),
            "grad_sq": torch.stack([sq(ds) for ds in grads]),
            "angle": 2 * torch.atan2(a.sqrt(), b.sqrt())}


def _dense(p):
    if p.grad.is_sparse:
        raise RuntimeError("SphereAdam does not support sparse gradients")
    return p.grad
