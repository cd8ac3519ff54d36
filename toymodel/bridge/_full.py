r"""Conventional training in the full parameter space: `torch.optim.SGD` with the sphere runs' metrics.

``mode="full"`` of `toymodel.bridge.training`: plain SGD (+ weight decay $\lambda$, + heavy-ball
momentum $\beta$, `torch.optim.SGD`'s semantics) on every trainable parameter, with no
projection. The SI weights $\theta$ then move off any sphere and their norm sets the effective
learning rate $\tilde\eta_t=\eta/\|\theta_t\|^2$ (docs/conventional.md T20; the network analogue of
the toy's ``constraint="none"``). `TrackedSGD` is that optimiser; after each step it leaves the
quantities of `toymodel.bridge.optim.SphereSGD`'s ``last_metrics`` (``sq_norm``, ``grad_sq``
per SI group before the step, and the ``angle`` the SI vector turned), so one training loop
measures both modes with the same names.

The angle is measured, not predicted: with $u=\theta/\|\theta\|$ and $u'$ after the step,
$\Delta=2\arctan(\|u-u'\|/\|u+u'\|)$, accurate for small and large angles alike (the
``arccos`` of the cosine loses half the digits near 0).
"""
from __future__ import annotations

import torch

__all__ = ["TrackedSGD", "affine_only", "split_params"]

#: the torch.nn normalisation base classes whose affine parameters are not SI
_NORMS = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)


def split_params(model, groups):
    """``(si, others)``: the SI tensors of ``groups`` (`SIGroup` objects or dicts) and every other
    trainable tensor of ``model``."""
    si = [p for g in groups for p in (g.params if hasattr(g, "params") else g["params"])]
    ids = {id(p) for p in si}
    return si, [p for p in model.parameters() if p.requires_grad and id(p) not in ids]


def affine_only(model, params) -> list:
    """The names of ``params`` that are not the affine scale/shift of a normalisation layer."""
    affine = {id(p) for m in model.modules() if isinstance(m, _NORMS)
              for p in m.parameters(recurse=False)}
    names = {id(p): n for n, p in model.named_parameters()}
    return [names.get(id(p), "?") for p in params if id(p) not in affine]


class TrackedSGD(torch.optim.SGD):
    r"""`torch.optim.SGD` on the SI groups (one param group each, ``"si": True``) and the other
    trainable tensors (one group ``"si": False``), recording the metrics of a step.

    Parameters
    ----------
    groups
        The SI groups (`SIGroup` objects, or dicts with ``"params"`` and ``"name"``).
    others
        Other trainable tensors (the affine BatchNorm parameters), trained with the same
        ``lr``, ``weight_decay`` and ``momentum``, as the official ``torch.optim.SGD(model.
        parameters(), ...)``; ``other_names`` label them in the run's attributes.
    lr, weight_decay, momentum
        $\eta>0$, $\lambda\ge0$, $\beta\in[0,1)$ (validated by the caller, `RunSpec`).

    Attributes
    ----------
    rho : the total norm of the SI tensors at construction.
    lr : the learning rate of the SI groups (read from the groups, so schedulers show).
    last_metrics : ``sq_norm`` and ``grad_sq`` (per SI group, before the step; ``grad_sq`` is
        $\|\nabla_gL\|^2$ of the loss alone, without the decay term) and ``angle``.
    """

    def __init__(self, groups, others=(), *, lr, weight_decay=0.0, momentum=0.0,
                 other_names=()):
        pg = [{"params": list(g.params) if hasattr(g, "params") else list(g["params"]),
               "name": g.name if hasattr(g, "name") else str(g.get("name", i)),
               "names": list(getattr(g, "names", None) or []) if hasattr(g, "params")
               else list(g.get("names", [])), "si": True}
              for i, g in enumerate(groups)]
        if others:
            pg.append({"params": list(others), "name": "non-si", "names": list(other_names),
                       "si": False})
        super().__init__(pg, lr=lr, momentum=momentum, weight_decay=weight_decay)
        with torch.no_grad():
            self.rho = float(sum(p.detach().double().square().sum()
                                 for g in self._si() for p in g["params"])) ** 0.5
        self.last_metrics = {}

    def _si(self):
        return [g for g in self.param_groups if g.get("si", True)]

    @property
    def lr(self) -> float:
        lrs = [g["lr"] for g in self._si()]
        if any(x != lrs[0] for x in lrs):
            raise ValueError(f"the SI groups have different learning rates {lrs}")
        return lrs[0]

    def step(self, closure=None):
        """One `torch.optim.SGD` step, then the metrics of it (module docstring)."""
        with torch.no_grad():
            si = [g["params"] for g in self._si()]
            sq = torch.stack([torch.stack(torch._foreach_norm(ps)).square().sum() for ps in si])
            gsq = torch.stack([sum((p.grad.square().sum() for p in ps if p.grad is not None),
                                   sq.new_zeros(())) for ps in si])
            old = [p.detach().clone() for ps in si for p in ps]
        loss = super().step(closure)
        with torch.no_grad():
            new = [p for ps in si for p in ps]
            a, b = old[0].new_zeros(()), old[0].new_zeros(())
            na = torch.stack(torch._foreach_norm(old)).square().sum().sqrt()
            nb = torch.stack(torch._foreach_norm(new)).square().sum().sqrt()
            for p, q in zip(old, new):  # |u - u'|^2 and |u + u'|^2 of the unit vectors
                a = a + (p / na - q / nb).square().sum()
                b = b + (p / na + q / nb).square().sum()
            self.last_metrics = {"sq_norm": sq, "grad_sq": gsq,
                                 "angle": 2 * torch.atan2(a.sqrt(), b.sqrt())}
        return loss
