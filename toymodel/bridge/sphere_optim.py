r"""`SGDMRT`, `AdamSRT`, `AdamS`: SGD-momentum and Adam adapted to the sphere, as torch optimisers.

After Roburin, de Mont-Marin, Bursuc, Marlet, Pérez, Aubry, *Spherical Perspective on Learning
with Batch Norm* (arXiv 2006.13382) and the authors' package (github.com/ymontmarin/adamsrt),
rewritten for current torch. User guide and derivations: docs/sphere_optimizers.md.

**Channels.** A tensor $\theta$ is cut into *channels* $\theta_c\in\mathbb R^d$: ``channel_dims``
lists the dimensions that index the channels, the remaining dimensions run over one channel's
$d$ entries. A channel followed by a normalisation layer is scale invariant: the loss does not
change under $\theta_c\to a\theta_c$, $a>0$, so its gradient $g_c$ is orthogonal to $\theta_c$.
``channel_wise=True`` means ``channel_dims=(0,)`` (the output channels of a convolution followed
by BatchNorm); ``channel_dims=()`` is one channel for the whole tensor (LayerNorm); the default
(``channel_wise=False``, ``channel_dims=None``) makes every entry its own channel ($d=1$), which
is plain Adam / SGD-momentum, as is a group marked ``"si": False`` (ours: the convention of
`SphereSGD`). $\langle a,b\rangle_c$ is the sum of $a\odot b$ over channel $c$.

**AdamSRT** (one step, per channel, $t$ the tensor's step count; as the authors' code
computes it, including $\epsilon$ in the rescale and transport denominators):

$$ m\leftarrow\beta_1m+(1-\beta_1)g,\qquad v_c\leftarrow\beta_2v_c+(1-\beta_2)\|g_c\|^2, $$

$$ \theta'_c=\theta_c-\eta\sqrt d\,
   \frac{m_c/(1-\beta_1^t)}{\sqrt{v_c}/\sqrt{1-\beta_2^t}+\epsilon}, $$

then, when $d>1$, *order-2 rescaling* and *order-1 transport* to the new point:

$$ v_c\leftarrow v_c\frac{\|\theta_c\|^2}{\|\theta'_c\|^2+\epsilon},\qquad
   m_c\leftarrow\frac{\langle\theta_c,\theta'_c\rangle m_c-\langle m_c,\theta'_c\rangle\theta_c}
   {\|\theta'_c\|^2+\epsilon}. $$

$v_c$ is one scalar per channel (the state tensor ``exp_avg_sq`` has size 1 along the summed
dimensions). **AdamS** is the same without rescaling and transport. **SGDMRT**:
$b\leftarrow\mu b+(1-\tau)g$, $\theta'=\theta-\eta b$, then (when $d>1$)
$b_c\leftarrow(\langle\theta_c,\theta'_c\rangle b_c-\langle b_c,\theta'_c\rangle\theta_c)/
\|\theta'_c\|^2$ (no $\epsilon$, as the authors' code). Weight decay $\lambda$ replaces $g$ by
$g+\lambda\theta$ first (without writing into ``p.grad``).

Differences from the authors' code (ours): no deprecated tensor indexing and no ``.data``
(warning-free on torch >= 2.9); ``step(closure)``; ``p.grad`` is left untouched by weight decay;
arguments and per-group options are validated (`ValueError` naming the argument); the channel
layout is read from the group at every step rather than frozen in the state.
"""
from __future__ import annotations

import math
import numbers

import torch

__all__ = ["AdamS", "AdamSRT", "SGDMRT"]


# -- validation -------------------------------------------------------------------------------
def _real(name, value, low, high=None, *, high_open=True):
    """``value`` as a float in ``[low, high)`` (``[low, high]`` when not ``high_open``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    x = float(value) if ok else math.nan
    ok = math.isfinite(x) and x >= low and (high is None or (x < high if high_open else x <= high))
    if not ok:
        hi = "inf)" if high is None else (f"{high:g})" if high_open else f"{high:g}]")
        raise ValueError(f"{name} must be a finite number in [{low:g}, {hi}, got {value!r}")
    return x


def _betas(value):
    try:
        b1, b2 = value
    except (TypeError, ValueError):
        raise ValueError(f"betas must be a pair (beta1, beta2), got {value!r}") from None
    return (_real("betas[0]", b1, 0.0, 1.0), _real("betas[1]", b2, 0.0, 1.0))


def _flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _channel_dims(value):
    """None, or the dimensions as a tuple of ints (range checked per tensor by `_layout`)."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, torch.Tensor)) or not hasattr(value, "__iter__"):
        raise ValueError(f"channel_dims must be None or a sequence of ints, got {value!r}")
    dims = tuple(value)
    if not all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in dims):
        raise ValueError(f"channel_dims must be None or a sequence of ints, got {value!r}")
    return tuple(int(i) for i in dims)


def _layout(shape, channel_dims, channel_wise):
    """The dimensions summed over within one channel, and the channel size $d$."""
    ndim = len(shape)
    if channel_dims is None:
        channel_dims = (0,) if channel_wise and ndim else tuple(range(ndim))
    dims = []
    for i in channel_dims:
        if not -ndim <= i < max(ndim, 1) or (ndim == 0 and i != 0):
            raise ValueError(f"channel_dims={tuple(channel_dims)!r} is out of range for a tensor "
                             f"of shape {tuple(shape)}")
        dims.append(i % ndim if ndim else 0)
    if len(set(dims)) != len(dims):
        raise ValueError(f"channel_dims={tuple(channel_dims)!r} repeats a dimension of a tensor "
                         f"of shape {tuple(shape)}")
    summed = tuple(i for i in range(ndim) if i not in dims)
    return summed, math.prod(shape[i] for i in summed)


# -- the channel-wise operations --------------------------------------------------------------
def _group_layout(group, p):
    """`_layout` of tensor ``p`` in ``group``; a group marked ``"si": False`` (the convention of
    `SphereSGD` and `si_groups`) is plain, whatever its channel options."""
    if group.get("si", True) is False:
        return (), 1
    return _layout(p.shape, group["channel_dims"], group["channel_wise"])


def _dot(a, b, summed):
    r"""$\langle a,b\rangle_c$ for every channel, broadcastable against ``a``."""
    # sum(dim=()) would sum over *every* dimension: d = 1 needs the product itself
    return (a * b).sum(dim=summed, keepdim=True) if summed else a * b


def _transport_(m, old, new, denom, summed):
    r"""$m_c\leftarrow(\langle\theta_c,\theta'_c\rangle m_c-\langle m_c,\theta'_c\rangle\theta_c)/
    \mathrm{denom}_c$ in place, with $\mathrm{denom}_c=\|\theta'_c\|^2(+\epsilon)$: tangent at
    $\theta'_c$, scaled by about $\|\theta_c\|/\|\theta'_c\|$ (docs/sphere_optimizers.md)."""
    m_new = _dot(m, new, summed)  # before m is overwritten
    m.mul_(_dot(old, new, summed)).sub_(m_new * old).div_(denom)


def _closure_loss(closure):
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _checked_grad(p, name):
    if p.grad.is_sparse:
        raise RuntimeError(f"{name} does not support sparse gradients")
    return p.grad


class _ChannelOptimizer(torch.optim.Optimizer):
    """Validates each parameter group as it is added (constructor and `add_param_group`)."""

    def add_param_group(self, param_group):
        """Add a parameter group (torch's `Optimizer.add_param_group`), validating its options
        and its ``channel_dims`` against every tensor of the group."""
        super().add_param_group(param_group)
        try:
            self._validate(self.param_groups[-1])
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    def _validate(self, group):
        group["lr"] = _real("lr", group["lr"], 0.0)
        group["weight_decay"] = _real("weight_decay", group["weight_decay"], 0.0)
        group["channel_wise"] = _flag("channel_wise", group["channel_wise"])
        group["channel_dims"] = _channel_dims(group["channel_dims"])
        if "si" in group:
            _flag("si", group["si"])
        for p in group["params"]:
            _group_layout(group, p)


class AdamSRT(_ChannelOptimizer):
    r"""Adam with channel-wise second moment, order-2 rescaling and order-1 transport (module
    docstring; docs/sphere_optimizers.md).

    Parameters
    ----------
    params : tensors or parameter-group dicts, as for `torch.optim.Adam`. A group may override
        every option below; the authors' convention is one group of the tensors followed by a
        normalisation layer with ``channel_wise=True`` and one group of the others. A group
        marked ``"si": False`` (as for `SphereSGD`) is plain Adam whatever its channel options.
    lr : the learning rate $\eta\ge0$; a channel of size $d$ steps by about $\eta\sqrt d$.
    betas : $(\beta_1,\beta_2)$, each in $[0,1)$.
    eps : $\epsilon\ge0$, added to the denominator of the step and of the rescale/transport.
    weight_decay : $\lambda\ge0$, L2 penalty added to the gradient ($g+\lambda\theta$).
    channel_dims : the dimensions that index the channels (negative indices allowed); ``None``
        uses ``channel_wise``.
    channel_wise : with ``channel_dims=None``: ``True`` is ``channel_dims=(0,)``, ``False``
        (default) every entry is a channel, i.e. plain Adam.
    rt : rescale the second moment and transport the first (``False`` is `AdamS`).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 channel_dims=None, channel_wise=False, rt=True):
        defaults = dict(lr=_real("lr", lr, 0.0), betas=_betas(betas), eps=_real("eps", eps, 0.0),
                        weight_decay=_real("weight_decay", weight_decay, 0.0),
                        channel_dims=_channel_dims(channel_dims),
                        channel_wise=_flag("channel_wise", channel_wise), rt=_flag("rt", rt))
        super().__init__(params, defaults)

    def _validate(self, group):
        super()._validate(group)
        group["betas"] = _betas(group["betas"])
        group["eps"] = _real("eps", group["eps"], 0.0)
        group["rt"] = _flag("rt", group["rt"])

    @torch.no_grad()
    def step(self, closure=None):
        """One step for every tensor with a gradient; returns ``closure()`` if given."""
        loss = _closure_loss(closure)
        for group in self.param_groups:
            b1, b2 = group["betas"]
            eps, wd = group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = _checked_grad(p, type(self).__name__)
                if wd:
                    g = g.add(p, alpha=wd)
                summed, d = _group_layout(group, p)
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(_dot(p, p, summed))
                state["step"] += 1
                t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                # the channel's squared norm, not its mean: the 1/d is folded into lr * sqrt(d)
                v.mul_(b2).add_(_dot(g, g, summed), alpha=1 - b2)
                denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(eps)
                transport = group["rt"] and d > 1
                old = p.clone() if transport else None
                p.addcdiv_(m / (1 - b1 ** t), denom, value=-group["lr"] * math.sqrt(d))
                if transport:
                    new_sq = _dot(p, p, summed).add_(eps)
                    v.mul_(_dot(old, old, summed)).div_(new_sq)
                    _transport_(m, old, p, new_sq, summed)
        return loss


class AdamS(AdamSRT):
    r"""`AdamSRT` without rescaling and transport: Adam with one second-moment scalar per
    channel and steps of $\eta\sqrt d$ (docs/sphere_optimizers.md).

    Parameters
    ----------
    params, lr, betas, eps, weight_decay, channel_dims, channel_wise : as `AdamSRT`. A group
        cannot set ``rt=True`` (use `AdamSRT`).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 channel_dims=None, channel_wise=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         channel_dims=channel_dims, channel_wise=channel_wise, rt=False)

    def _validate(self, group):
        super()._validate(group)
        if group["rt"]:
            raise ValueError("AdamS never rescales or transports: a group set rt=True "
                             "(use AdamSRT)")


class SGDMRT(_ChannelOptimizer):
    r"""SGD with heavy-ball momentum whose buffer is transported (and rescaled) to the new
    point of each channel (module docstring; docs/sphere_optimizers.md).

    Parameters
    ----------
    params : tensors or parameter-group dicts, as for `torch.optim.SGD`; a group may override
        every option below. A group marked ``"si": False`` is plain SGD with momentum.
    lr : the learning rate $\eta\ge0$.
    momentum : $\mu\ge0$.
    dampening : $\tau\in[0,1]$: the gradient enters the buffer as $(1-\tau)g$, from the first
        step on (the authors' convention; `torch.optim.SGD` starts its buffer at $g$, the same
        when $\tau=0$).
    weight_decay : $\lambda\ge0$, L2 penalty added to the gradient.
    channel_dims, channel_wise : the channel layout, as `AdamSRT`; the default (every entry a
        channel) is plain SGD with momentum.
    """

    def __init__(self, params, lr=1e-1, momentum=0, dampening=0, weight_decay=0,
                 channel_dims=None, channel_wise=False):
        defaults = dict(lr=_real("lr", lr, 0.0), momentum=_real("momentum", momentum, 0.0),
                        dampening=_real("dampening", dampening, 0.0, 1.0, high_open=False),
                        weight_decay=_real("weight_decay", weight_decay, 0.0),
                        channel_dims=_channel_dims(channel_dims),
                        channel_wise=_flag("channel_wise", channel_wise))
        super().__init__(params, defaults)

    def _validate(self, group):
        super()._validate(group)
        group["momentum"] = _real("momentum", group["momentum"], 0.0)
        group["dampening"] = _real("dampening", group["dampening"], 0.0, 1.0, high_open=False)

    @torch.no_grad()
    def step(self, closure=None):
        """One step for every tensor with a gradient; returns ``closure()`` if given."""
        loss = _closure_loss(closure)
        for group in self.param_groups:
            mu, tau, wd = group["momentum"], group["dampening"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = _checked_grad(p, type(self).__name__)
                if wd:
                    g = g.add(p, alpha=wd)
                summed, d = _group_layout(group, p)
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(g, alpha=1 - tau)
                old = p.clone() if d > 1 else None
                p.add_(buf, alpha=-group["lr"])
                if d > 1:
                    _transport_(buf, old, p, _dot(p, p, summed), summed)
        return loss
