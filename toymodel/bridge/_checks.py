r"""Refusals a network run makes before any work: the device, the memory it needs, learning rates
its dtype cannot hold, trainable parameters outside the SI groups.

Owns `resolve_device`, `check_fits` (data + parameters + one mini-batch of activations + the
metric arrays against the device's total memory), `check_lr` ($\eta=\tilde\eta\rho^2$ finite and
representable), `check_mode` and `check_optimizer` (the optimiser fields of a `RunSpec`) and the
SI-group coverage check; nothing is built or trained here.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

from .._validate import choice, positive_finite, positive_int
from . import data as _data
from . import models as _models
from ._full import affine_only, split_params
from .groups import si_groups
from .optim import MOMENTUM_MODES
from .sphere_optim import _betas

#: ``"sphere"``: `SphereSGD` at a fixed ELR; ``"full"``: `torch.optim.SGD` with no projection
MODES = ("sphere", "full")
#: the optimisers of ``mode="sphere"``: `SphereSGD` (``momentum``, ``momentum_mode``) and
#: `SphereAdam` (``betas``), both at a fixed ELR (docs/sphere_optimizers.md)
OPTIMIZERS = ("sgd", "adam")
#: `SphereAdam`'s default ``betas`` (torch's)
ADAM_BETAS = (0.9, 0.999)
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: copies of every parameter held at once: the parameter, its gradient, the copy kept for
#: ``cosine_to_init``, the copy `random_level` restores, the optimiser's foreach temporaries
_COPIES_PER_PARAM = 5
#: SI groups of the reference networks, at most (ResNet18SI 12, ConvNetSI 4)
_MAX_GROUPS = 12
#: copies of every activation held at once: the forward output autograd keeps, and its
#: gradient in the backward pass
_COPIES_PER_ACTIVATION = 2


def resolve_device(device) -> torch.device:
    """``"cpu"`` | ``"cuda"`` | ``"cuda:N"``; CUDA without a GPU raises ``ValueError``."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA GPU "
                         f"(torch {torch.__version__}); use --device cpu")
    return dev


# -- refusals made before any work -----------------------------------------------------------------
def _device_memory(dev: torch.device):
    """Total memory of ``dev`` in bytes (``None`` where the platform does not say)."""
    if dev.type == "cuda":
        return torch.cuda.get_device_properties(dev).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _human(nbytes) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if nbytes < 1000 or unit == "PB":
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1000


def _records_bytes(spec, steps_per_epoch: int, n_groups: int) -> int:
    """The metric arrays of a run (`toymodel.bridge.training`), at most: 15 + 3 per group per
    epoch (8 always, 7 optional), 5 per kept step (3 always, 2 in ``mode="full"``)."""
    n_steps = spec.epochs * steps_per_epoch
    return 8 * ((15 + 3 * n_groups) * spec.epochs + 5 * (-(-n_steps // spec.record_every)))


def check_fits(model, data, *, width, dtype="float32", device="cpu", input_size=None,
               spec=None) -> int:
    """Estimate the memory a run needs and refuse (``ValueError``, with the numbers) when it
    exceeds the device's total memory; return the estimate in bytes. Nothing is built.

    The estimate adds the data (`toymodel.bridge.data.nbytes`), the parameters
    (`toymodel.bridge.models.param_count`, 5 copies), and, given ``spec`` (a `RunSpec`), one
    mini-batch of activations (`toymodel.bridge.models.activation_count`, 2 copies) and the metric
    arrays.
    """
    dev = resolve_device(device)
    itemsize = torch.empty((), dtype=DTYPES[choice("dtype", dtype, DTYPES)]).element_size()
    n_images, channels, side, classes = _data.SHAPES[choice("data", data, _data.DATASETS)]
    size = side if input_size is None else positive_int("input_size", input_size, 4)
    n_params = _models.param_count(model, width=width, num_classes=classes, in_channels=channels)
    parts = {"data": _data.nbytes(data, input_size=input_size, itemsize=itemsize),
             "parameters": _COPIES_PER_PARAM * n_params * itemsize}
    if spec is not None:
        batch = min(spec.batch_size, n_images)
        acts = _models.activation_count(model, width=width, in_channels=channels, size=size)
        parts["activations"] = _COPIES_PER_ACTIVATION * batch * acts * itemsize
        parts["records"] = _records_bytes(spec, -(-n_images // batch), _MAX_GROUPS)
    need, have = sum(parts.values()), _device_memory(dev)
    if have is not None and need > have:
        detail = ", ".join(f"{k} {_human(v)}" for k, v in parts.items())
        raise ValueError(f"{model} width={width} on {data} ({size}x{size}, {dtype}) would need about "
                         f"{_human(need)} of memory ({n_params:.3g} parameters; {detail}), more "
                         f"than the {_human(have)} the device ({dev}) has; lower the width, batch_size, "
                         "input_size or epochs")
    return need


def _si_params(groups) -> list:
    out = []
    for g in groups:
        if hasattr(g, "params"):
            out += list(g.params)
        elif isinstance(g, dict) and g.get("si", True):
            out += list(g["params"])
        elif isinstance(g, torch.Tensor):
            out.append(g)
    return out


def check_lr(elrs, params) -> None:
    r"""Refuse (``ValueError``) every ELR whose learning rate $\eta=\tilde\eta\rho^2$ ($\rho$ the
    total norm of ``params``) is not finite or exceeds the largest value of their dtype: the step
    multiplies the gradient by $\eta$ in that dtype, and torch raises on the conversion."""
    with torch.no_grad():
        rho2 = float(sum(p.detach().double().square().sum() for p in params))
    dtype = params[0].dtype
    big = float(torch.finfo(dtype).max)
    for elr in np.atleast_1d(np.asarray(elrs, dtype=np.float64)):
        lr = float(elr) * rho2  # a Python float: inf on overflow, no exception
        if not (math.isfinite(lr) and lr <= big):
            raise ValueError(f"elr={float(elr)!r} gives the learning rate lr = elr*rho^2 = {lr:.3g} "
                             f"(rho = {math.sqrt(rho2):.4g}), more than {dtype} holds "
                             f"({big:.3g}); elr must be in (0, {big / rho2:.3g}] for this network")


def _check_groups(model, groups, affine_ok=False):
    """The SI groups (default `si_groups`); every trainable tensor must be in one, except, with
    ``affine_ok``, the affine parameters of normalisations: then ``(groups, those tensors)``."""
    groups = si_groups(model) if groups is None else list(groups)
    _, others = split_params(model, groups)
    names = {id(p): n for n, p in model.named_parameters()}
    stray = affine_only(model, others) if affine_ok else [names[id(p)] for p in others]
    if stray:
        raise ValueError(f"trainable parameters outside the SI groups: {stray}; freeze them "
                         "(requires_grad_(False)) or pass groups")
    return (groups, others) if affine_ok else groups


def _in_range(name, value, upper, kind):
    """``value`` as a float in ``[0, upper)`` (NaN fails the comparison), else `ValueError`."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = float("nan")
    if isinstance(value, bool) or not 0 <= x < upper:
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return x


def check_mode(mode, elr, lr, weight_decay, momentum, constraint, constraints) -> dict:
    r"""The optimiser fields of a `RunSpec`, checked together: ``mode="sphere"`` takes ``elr``
    (the fixed total ELR; $\eta=\tilde\eta\rho^2$ follows) and no ``lr`` or weight decay (it
    changes the ELR, docs/bridge.md); ``mode="full"`` takes ``lr`` $\eta$, ``weight_decay``
    $\lambda\ge0$, no ``elr`` (it follows $\eta/\|\theta\|^2$) and no constraint (stored as
    ``"none"``). ``momentum`` $\beta\in[0,1)$ in both (`SphereSGD`'s or `torch.optim.SGD`'s)."""
    out = {"mode": choice("mode", mode, MODES),
           "weight_decay": _in_range("weight_decay", weight_decay, math.inf, "a finite number >= 0"),
           "momentum": _in_range("momentum", momentum, 1, "a number in [0, 1)")}
    if out["mode"] == "sphere":
        if elr is None:
            raise ValueError("elr is required in mode='sphere' (the fixed total ELR), got None; "
                             "or pass mode='full' with lr")
        if lr is not None:
            raise ValueError(f"lr={lr!r} is set by elr in mode='sphere' (lr = elr*rho^2); pass "
                             "elr, or mode='full'")
        if out["weight_decay"]:
            raise ValueError(f"weight_decay={weight_decay!r} changes the fixed ELR; it needs "
                             "mode='full'")
        return dict(out, elr=positive_finite("elr", elr), lr=None,
                    constraint=choice("constraint", constraint, constraints))
    if elr is not None:
        raise ValueError(f"elr={elr!r} is not fixed in mode='full' (it follows lr/|theta|^2); "
                         "pass lr")
    if lr is None:
        raise ValueError("lr is required in mode='full', got None")
    if constraint not in ("total", "none"):
        raise ValueError(f"constraint={constraint!r} applies to mode='sphere'; mode='full' "
                         "projects nothing")
    return dict(out, elr=None, lr=positive_finite("lr", lr), constraint="none")


def check_optimizer(mode, optimizer, momentum, momentum_mode, betas) -> dict:
    r"""The optimiser choice of a `RunSpec`: ``optimizer="sgd"`` (`SphereSGD`; ``momentum``
    $\beta$ with ``momentum_mode`` ``"official"`` | ``"transport"``) or ``"adam"`` (`SphereAdam`,
    ``mode="sphere"`` only, ``betas`` $(\beta_1,\beta_2)\in[0,1)^2$, default (0.9, 0.999), no
    ``momentum``). ``betas`` is ``None`` for SGD; ``mode="full"`` is `torch.optim.SGD`, whose
    buffer is never transported. ``momentum`` is already checked (`check_mode`)."""
    optimizer = choice("optimizer", optimizer, OPTIMIZERS)
    momentum_mode = choice("momentum_mode", momentum_mode, MOMENTUM_MODES)
    if optimizer == "sgd":
        if betas is not None:
            raise ValueError(f"betas={betas!r} are SphereAdam's; pass optimizer='adam' (SGD takes "
                             "momentum)")
        if mode == "full" and momentum_mode != "official":
            raise ValueError(f"momentum_mode={momentum_mode!r} needs mode='sphere' (mode='full' is "
                             "torch.optim.SGD, whose buffer is never projected)")
        return {"optimizer": optimizer, "momentum_mode": momentum_mode, "betas": None}
    if mode != "sphere":
        raise ValueError(f"optimizer='adam' needs mode='sphere' (SphereAdam at a fixed ELR), got "
                         f"mode={mode!r}")
    if momentum:
        raise ValueError(f"momentum={momentum!r} is SphereSGD's; SphereAdam takes betas (its "
                         "first moment is beta1)")
    if momentum_mode != "official":
        raise ValueError(f"momentum_mode={momentum_mode!r} is SphereSGD's; SphereAdam always "
                         "transports its first moment")
    return {"optimizer": optimizer, "momentum_mode": momentum_mode,
            "betas": _betas(ADAM_BETAS if betas is None else betas)}


def check_optimizer_model(optimizer, model) -> None:
    """`SphereAdam` has no rule for the affine parameters of the ``*-af`` models (their plain
    SGD step at the SI groups' lr is SphereSGD's convention, the official ``--fix_elr``)."""
    if optimizer == "adam" and str(model).endswith("-af"):
        raise ValueError(f"optimizer='adam' trains SI groups only; model={model!r} has trainable "
                         "affine parameters (use its model without '-af')")
