r"""Scale-invariant parameter groups of a torch model, found from its structure (T1).

A set $S$ of parameters is an SI group if scaling all of them by $c>0$ leaves the loss
unchanged. Structurally: the weights of a conv/linear layer (with its bias, if any) make its output
positively 1-homogeneous; ReLU, pooling, reshapes, dropout and scalar multiples keep that
homogeneity; a sum of two homogeneous values is homogeneous in the *union* of their sets (the
residual stream of a pre-activation ResNet); a normalisation (BatchNorm/InstanceNorm/GroupNorm/
LayerNorm) removes it. `si_groups` traces the model with `torch.fx` and propagates these
sets with a union-find; a set is SI when every path from it ends in a normalisation. Anything the
rules do not know (a custom op, a head feeding the loss) poisons the set: detection errs towards
missing a group, never towards claiming a false one. `verify_scale_invariance` checks the
result numerically.

Levels: ``"layer"`` (one group per set, the default), ``"total"`` (one group of every SI
parameter), ``"filter"`` (output channel ``j`` of every tensor of a set, valid when the set feeds
only per-channel normalisations, i.e. BatchNorm/InstanceNorm, with channels aligned).
"""
from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

LEVELS = ("layer", "filter", "total")

_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm,
          nn.LayerNorm)
_PER_CHANNEL_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)
# positively 1-homogeneous, channel-preserving modules/functions/methods
_KEEP_MODULES = (nn.ReLU, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
                 nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                 nn.AdaptiveMaxPool3d, nn.Identity, nn.Dropout, nn.Dropout2d)
_KEEP_FUNCS = {F.relu, torch.relu, F.leaky_relu, F.max_pool1d, F.max_pool2d, F.max_pool3d,
               F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
               F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.dropout, operator.neg}
_KEEP_METHODS = {"relu", "contiguous", "clone", "detach", "mean", "sum"}
# homogeneous but channels no longer aligned with a later per-channel normalisation
_RESHAPE_MODULES = (nn.Flatten,)
_RESHAPE_FUNCS = {torch.flatten, torch.reshape, operator.getitem}
_RESHAPE_METHODS = {"view", "flatten", "reshape", "permute", "transpose", "squeeze", "unsqueeze"}
_SUMS = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
_SCALARS = {operator.mul, operator.imul, operator.truediv, torch.mul}
_SHAPE_ONLY_METHODS = {"size", "dim"}


@dataclass
class SIGroup:
    """One SI group: parameter tensors (with their names) and, at the filter level, one row index.

    ``as_param_group()`` gives the dict a torch optimizer takes (``filter`` must be ``None``).
    """

    name: str
    names: list
    params: list
    filter: int | None = None
    filter_ok: bool = False
    norms: list = field(default_factory=list)

    def tensors(self):
        """The tensors this group scales (row ``filter`` of each parameter at the filter level)."""
        return self.params if self.filter is None else [p[self.filter] for p in self.params]

    def as_param_group(self) -> dict:
        if self.filter is not None:
            raise ValueError(f"group {self.name!r} is a single filter; optimisers take layer-level "
                             "groups (use constraint='per-filter' for per-filter radii)")
        return {"params": list(self.params), "name": self.name, "names": list(self.names)}

    def __repr__(self):
        n = sum(p.numel() if self.filter is None else p[self.filter].numel() for p in self.params)
        return f"SIGroup({self.name!r}, params={self.names}, numel={n})"


class _UnionFind:
    def __init__(self):
        self.parent, self.poisoned, self.normed, self.filter_ok = {}, {}, {}, {}

    def new(self, key):
        self.parent[key] = key
        self.poisoned[key], self.normed[key], self.filter_ok[key] = False, [], True
        return key

    def find(self, key):
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.poisoned[ra] |= self.poisoned[rb]
            self.normed[ra] += self.normed[rb]
            self.filter_ok[ra] &= self.filter_ok[rb]
        return ra


def _trace(model):
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as err:  # fx raises many types on data-dependent control flow
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx ({err}); pass the SI "
                         "groups explicitly with patterns=[...]") from None


def _structural_classes(model):
    """Propagate homogeneity classes through the fx graph; returns (union-find, class members)."""
    gm = _trace(model)
    modules = dict(gm.named_modules())
    uf = _UnionFind()
    info = {}  # node -> (class key or None, channels aligned?)
    members = {}  # class key -> list of parameter names (of the module that created it)

    def cls(arg):
        return info.get(arg, (None, True)) if isinstance(arg, torch.fx.Node) else (None, True)

    def poison(arg):
        key, _ = cls(arg)
        if key is not None:
            uf.poisoned[uf.find(key)] = True

    for node in gm.graph.nodes:
        args = [a for a in node.args if isinstance(a, torch.fx.Node)]
        args += [a for a in node.kwargs.values() if isinstance(a, torch.fx.Node)]
        out = (None, True)
        target = node.target
        if node.op == "call_module":
            mod = modules[target]
            if isinstance(mod, _WEIGHTED):
                for a in args:
                    poison(a)
                names = [f"{target}.{n}" for n, p in mod.named_parameters(recurse=False)]
                key = uf.new(target)
                members[key] = names
                out = (key, True)
            elif isinstance(mod, _NORMS):
                key, aligned = cls(args[0])
                if key is not None:
                    root = uf.find(key)
                    uf.normed[root].append(target)
                    uf.filter_ok[root] &= aligned and isinstance(mod, _PER_CHANNEL_NORMS)
                if getattr(mod, "weight", None) is not None or getattr(mod, "bias", None) is not None:
                    key = uf.new(target)
                    members[key] = [f"{target}.{n}" for n, _ in mod.named_parameters(recurse=False)]
                    out = (key, True)
            elif isinstance(mod, _KEEP_MODULES):
                out = cls(args[0])
            elif isinstance(mod, _RESHAPE_MODULES):
                out = (cls(args[0])[0], False)
            else:
                for a in args:
                    poison(a)
        elif node.op == "call_function" and target in _SUMS:
            (ka, aa), (kb, ab) = cls(node.args[0]), cls(node.args[1])
            if ka is not None and kb is not None:
                out = (uf.union(ka, kb), aa and ab)
            else:  # x + constant is not homogeneous
                poison(node.args[0])
                poison(node.args[1])
        elif node.op == "call_function" and target in _SCALARS:
            a, b = node.args[0], node.args[1]
            if isinstance(b, (int, float)) and b > 0 and isinstance(a, torch.fx.Node):
                out = cls(a)
            elif isinstance(a, (int, float)) and a > 0 and isinstance(b, torch.fx.Node) \
                    and target is not operator.truediv:
                out = cls(b)
            else:
                for x in args:
                    poison(x)
        elif node.op == "call_function" and target in _KEEP_FUNCS:
            out = cls(node.args[0])
        elif node.op == "call_function" and target in _RESHAPE_FUNCS:
            out = (cls(node.args[0])[0], False)
        elif node.op == "call_method" and target in _KEEP_METHODS:
            out = cls(node.args[0])
        elif node.op == "call_method" and target in _RESHAPE_METHODS:
            out = (cls(node.args[0])[0], False)
        elif node.op == "call_method" and target in _SHAPE_ONLY_METHODS:
            out = (None, True)
        elif node.op in ("placeholder",):
            out = (None, True)
        else:  # output, get_attr, unknown functions: consuming a class breaks its invariance
            for a in args:
                poison(a)
            for a in node.args:
                if isinstance(a, (tuple, list)):
                    for x in a:
                        poison(x)
        info[node] = out
    return uf, members


def _by_patterns(model, patterns):
    named = [(n, p) for n, p in model.named_parameters()]
    groups = []
    for pat in patterns:
        try:
            rx = re.compile(pat)
        except (re.error, TypeError):
            raise ValueError(f"patterns must be regular expressions, got {pat!r}") from None
        hit = [(n, p) for n, p in named if rx.search(n)]
        if not hit:
            raise ValueError(f"pattern {pat!r} matches no parameter of {type(model).__name__}")
        groups.append(SIGroup(pat, [n for n, _ in hit], [p for _, p in hit]))
    seen = {}
    for g in groups:
        for n in g.names:
            if n in seen:
                raise ValueError(f"parameter {n!r} matches patterns {seen[n]!r} and {g.name!r}")
            seen[n] = g.name
    return groups


def si_groups(model: nn.Module, level: str = "layer", patterns=None,
              include_frozen: bool = False) -> list[SIGroup]:
    """The SI parameter groups of ``model`` (module docstring), in graph order.

    ``level``: ``"layer"`` | ``"filter"`` | ``"total"``. ``patterns``: a list of regular
    expressions over parameter names; each gives one group (no structural detection).
    Frozen parameters (``requires_grad=False``) are left out unless ``include_frozen``.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = dict(model.named_parameters())
    if patterns is not None:
        groups = _by_patterns(model, list(patterns))
    else:
        uf, members = _structural_classes(model)
        roots = {}
        for key, names in members.items():
            root = uf.find(key)
            roots.setdefault(root, []).extend(names)
        groups = []
        for root, names in roots.items():
            if uf.poisoned[root] or not uf.normed[root]:
                continue
            names = [n for n in names if n in params and (include_frozen or params[n].requires_grad)]
            if names:
                mods = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))
                groups.append(SIGroup("+".join(mods), names, [params[n] for n in names],
                                      filter_ok=uf.filter_ok[root], norms=list(uf.normed[root])))
    if level == "total" and groups:
        return [SIGroup("total", [n for g in groups for n in g.names],
                        [p for g in groups for p in g.params])]
    if level == "filter":
        out = []
        for g in groups:
            rows = {p.shape[0] for p in g.params}
            if not g.filter_ok or len(rows) != 1:
                raise ValueError(f"group {g.name!r} is not SI per filter (it feeds "
                                 f"{g.norms or 'no'} normalisation(s) that are not per-channel, "
                                 "or its tensors differ in output size); use level='layer'")
            out += [SIGroup(f"{g.name}[{j}]", g.names, g.params, filter=j) for j in range(rows.pop())]
        return out
    return groups


def _loss_of(model, batch, loss_fn):
    if isinstance(batch, (tuple, list)):
        x, y = batch[0], batch[1]
        out = model(x)
        return out, (loss_fn or F.cross_entropy)(out, y)
    out = model(batch)
    return out, (loss_fn(out) if loss_fn is not None else out.square().mean())


def verify_scale_invariance(model: nn.Module, groups, batch, scale: float = 3.0, loss_fn=None,
                            rtol: float = 1e-3) -> list[dict]:
    r"""Check each group numerically (T1) in train mode on ``batch`` (``x`` or ``(x, y)``).

    For each group: ``output_rel_change`` = max|f(θ with the group × ``scale``) − f(θ)| / max|f(θ)|
    and ``grad_cosine`` = ⟨∇_g L, θ_g⟩ / (‖∇_g L‖‖θ_g‖) (0 for an SI group). ``ok`` when both are
    below ``rtol``. The model's parameters and buffers (BN running stats) are restored afterwards.
    """
    if not (isinstance(scale, (int, float)) and scale > 0 and scale != 1):
        raise ValueError(f"scale must be a positive number other than 1, got {scale!r}")
    groups = [g if isinstance(g, SIGroup) else SIGroup(str(i), [], list(g)) for i, g in
              enumerate(groups)]
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()
    report = []
    try:
        for g in groups:
            model.load_state_dict(saved)
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                req = [p.requires_grad for p in g.params]
                for p in g.params:
                    p.requires_grad_(True)
                out, loss = _loss_of(model, batch, loss_fn)
                grads = torch.autograd.grad(loss, g.params)
                for p, r in zip(g.params, req):
                    p.requires_grad_(r)
            if g.filter is not None:
                grads = [gr[g.filter] for gr in grads]
            ts = [t.detach() for t in g.tensors()]
            dot = sum(float((gr * t).sum()) for gr, t in zip(grads, ts))
            gn = sum(float(gr.square().sum()) for gr in grads) ** 0.5
            tn = sum(float(t.square().sum()) for t in ts) ** 0.5
            model.load_state_dict(saved)
            with torch.no_grad():
                for t in g.tensors():
                    t.mul_(scale)
                out2, _ = _loss_of(model, batch, loss_fn)
            rel = float((out2 - out.detach()).abs().max() / out.detach().abs().max().clamp_min(1e-300))
            cos = abs(dot) / (gn * tn) if gn > 0 and tn > 0 else 0.0
            report.append({"group": g.name, "params": list(g.names), "output_rel_change": rel,
                           "grad_cosine": cos, "ok": bool(rel <= rtol and cos <= rtol)})
    finally:
        model.load_state_dict(saved)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return report
