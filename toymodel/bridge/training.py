r"""Fixed-ELR training of an SI network with metrics computed online, saved as an xarray Dataset.

Nothing is reloaded from checkpoints: every metric is measured while training (STYLE §6).
Per optimiser step (every ``record_every``-th step kept, dim ``step``): ``step_loss`` (mini-batch
loss before the step), ``step_grad_norm`` (effective gradient norm $\|\theta\|\|\nabla L_b\|$
of the SI parameters, T2; $=\rho\|\nabla L_b\|$ under the total constraint) and
``step_angle`` (radians turned by the step, T6).
Per epoch (dim ``epoch``): ``loss`` / ``accuracy`` (mean over the epoch's mini-batches, before
each step, as the official code reports), ``grad_norm`` (the paper's *mean effective gradient
norm* $\rho\cdot\mathrm{mean}_b\|\nabla L_b\|$), ``angle`` (mean per step),
``group_grad_norm`` (dim ``group``), and at the end of the epoch ``si_norm``, ``individual_elr``
$\eta/\|\theta_g\|^2$ and ``shares`` (dim ``group``, T7), ``cosine_to_init``; ``test_loss``
/ ``test_accuracy`` in eval mode every ``eval_every`` epochs and at the last (NaN on other epochs).
Run scalars: ``random_loss`` (the random level: train loss at initialisation averaged with 8
random SI directions, `random_level`), ``init_loss``, ``tail_loss``,
``tail_grad_norm``, ``tail_angle`` (means over the last ``tail`` epochs), ``regime`` and
``regime_reason`` from `toymodel.regimes.classify_summary` (the toy's classifier, which also
weighs the tail's total rotation ``tail_angle`` x tail steps: a run that never moved is
``"unresolved"``, not divergent).

A run is described by one frozen `RunSpec` (validated once, passed whole, STYLE §16); `train`
and `train_scan` build it from their keywords. Everything that can be refused is refused before
the first step: bad values, a learning rate $\eta=\tilde\eta\rho^2$ the parameters' dtype
cannot hold, a network or data set larger than the device's memory.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time

import numpy as np
import torch
from torch.nn import functional as F

from .._progress import progress
from .._validate import bounded_int, choice, positive_finite, positive_int
from ..regimes import classify_summary
from . import data as _data
from . import models as _models
from ._parts import RunParts
from .groups import si_groups
from .models import HEAD_NORM, build_model
from .optim import CONSTRAINTS, SphereSGD

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: torch seeds its generators with an unsigned 64-bit integer; `random_level` adds 10 000
MAX_SEED = 2**63 - 1
#: copies of every parameter held at once: the parameter, its gradient, the copy kept for
#: ``cosine_to_init``, the copy `random_level` restores, the optimiser's foreach temporaries
_COPIES_PER_PARAM = 5
#: SI groups of the reference networks, at most (ResNet18SI 12, ConvNetSI 4)
_MAX_GROUPS = 12
#: copies of every activation held at once: the forward output autograd keeps, and its
#: gradient in the backward pass
_COPIES_PER_ACTIVATION = 2


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What one fixed-ELR run does, validated once at construction; `run` receives it whole.

    ``seed`` drives the mini-batch order (`train` also draws the network from it); ``tail``
    is the number of final epochs the summaries average (``None``: the last 10%, at least one;
    resolved here, so a spec always holds the number used).
    """

    elr: float
    epochs: int
    batch_size: int = 128
    constraint: str = "total"
    seed: int = 0
    record_every: int = 1
    eval_every: int = 1
    tail: int | None = None

    def __post_init__(self):
        def put(name, value):  # the dataclass is frozen: store the checked values once, here
            object.__setattr__(self, name, value)

        put("elr", positive_finite("elr", self.elr))
        put("epochs", positive_int("epochs", self.epochs, 1))
        put("batch_size", positive_int("batch_size", self.batch_size, 2))
        put("constraint", choice("constraint", self.constraint, CONSTRAINTS))
        put("seed", bounded_int("seed", self.seed, 0, MAX_SEED))
        put("record_every", positive_int("record_every", self.record_every, 1))
        put("eval_every", positive_int("eval_every", self.eval_every, 1))
        put("tail", max(1, self.epochs // 10) if self.tail is None
            else bounded_int("tail", self.tail, 1, self.epochs))

    def replace(self, **changes) -> RunSpec:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)


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


def _records_bytes(spec: RunSpec, steps_per_epoch: int, n_groups: int) -> int:
    """The metric arrays of a run (module docstring): 8 + 3 per group per epoch, 3 per kept step."""
    n_steps = spec.epochs * steps_per_epoch
    return 8 * ((8 + 3 * n_groups) * spec.epochs + 3 * (-(-n_steps // spec.record_every)))


def check_fits(model, data, *, width, dtype="float32", device="cpu", input_size=None,
               spec: RunSpec | None = None) -> int:
    """Estimate the memory a run needs and refuse (``ValueError``, with the numbers) when it
    exceeds the device's total memory; return the estimate in bytes. Nothing is built.

    The estimate adds the data (`toymodel.bridge.data.nbytes`), the parameters
    (`toymodel.bridge.models.param_count`, 5 copies), and, given ``spec``, one mini-batch of
    activations (`toymodel.bridge.models.activation_count`, 2 copies) and the metric arrays.
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


def _check_groups(model, groups) -> list:
    groups = si_groups(model) if groups is None else list(groups)
    in_groups = {id(p) for g in groups for p in (g.params if hasattr(g, "params") else g["params"])}
    stray = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in in_groups]
    if stray:
        raise ValueError(f"trainable parameters outside the SI groups: {stray}; freeze them "
                         "(requires_grad_(False)) or pass groups")
    return groups


# -- measurements --------------------------------------------------------------------------------
def _batches(n, batch_size, gen):
    perm = torch.randperm(n, generator=gen)
    out = [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    # train-mode BatchNorm cannot normalise a single sample: fold a last batch of one into the previous
    if len(out) > 1 and out[-1].numel() < 2:
        out[-2] = torch.cat([out[-2], out.pop()])
    return out


@torch.no_grad()
def _train_loss(model, x, y, batch_size):
    """Mean train loss, train-mode BN (batch statistics), BN buffers restored afterwards."""
    saved = {k: v.clone() for k, v in model.named_buffers()}
    total = x.new_zeros(())
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        if xb.shape[0] < 2:
            continue
        total += F.cross_entropy(model(xb), yb, reduction="sum")
    for k, v in model.named_buffers():
        v.copy_(saved[k])
    return float(total) / x.shape[0]


@torch.no_grad()
def random_level(model, params, x, y, batch_size, n_draws=8, seed=0):
    r"""The random level $L_{rand}$: mean train loss over the initial SI direction and
    ``n_draws`` isotropic random ones (each SI tensor redrawn as a Gaussian, seeded by ``seed``).

    The network analogue of the toy's ``random_loss()`` (the mean of the loss over the sphere):
    a divergent run scrambles the direction every step and sits at this level. One draw (the
    initialisation alone) fluctuates by ~10% between seeds, as much as the classifier's
    ``div_frac`` margin, hence the average. Returns ``(random_level, init_loss)``.
    """
    saved = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(10_000 + seed)
    init = _train_loss(model, x, y, batch_size)
    losses = [init]
    try:
        for _ in range(n_draws):
            for p in params:
                z = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                p.copy_((z * (p.norm().double().cpu() / z.norm())).to(p))
            losses.append(_train_loss(model, x, y, batch_size))
    finally:
        for p, s in zip(params, saved):
            p.copy_(s)
    return float(np.mean(losses)), init


@torch.no_grad()
def evaluate(model, x, y, batch_size=1024):
    """(loss, accuracy) in eval mode (BN running statistics), as the official ``eval``."""
    was = model.training
    model.eval()
    loss, correct = x.new_zeros(()), 0
    for i in range(0, x.shape[0], batch_size):
        out = model(x[i:i + batch_size])
        loss += F.cross_entropy(out, y[i:i + batch_size], reduction="sum")
        correct += int((out.argmax(1) == y[i:i + batch_size]).sum())
    model.train(was)
    return float(loss) / x.shape[0], correct / x.shape[0]


# -- one run, in small steps ---------------------------------------------------------------------
_EPOCH_VARS = ("loss", "accuracy", "grad_norm", "angle", "si_norm", "cosine_to_init", "test_loss",
               "test_accuracy")
_GROUP_VARS = ("individual_elr", "shares", "group_grad_norm")
_STEP_VARS = ("step_loss", "step_grad_norm", "step_angle")


def _allocate(epochs, n_groups, n_records):
    """NaN-filled metric arrays: per epoch, per epoch and group, per kept step."""
    ep = {k: np.full(epochs, np.nan) for k in _EPOCH_VARS}
    ep.update({k: np.full((epochs, n_groups), np.nan) for k in _GROUP_VARS})
    return ep, {k: np.full(n_records, np.nan) for k in _STEP_VARS}


def _train_epoch(model, opt, x, y, batches):
    """One pass over ``batches``; the per-step metrics as host arrays (one synchronisation)."""
    losses, corrects, gnorms, angles, ggn, sizes = [], [], [], [], [], []
    for idx in batches:
        idx = idx.to(x.device)
        xb, yb = x[idx], y[idx]
        opt.zero_grad(set_to_none=True)
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        loss.backward()
        opt.step()
        m = opt.last_metrics
        losses.append(loss.detach())
        corrects.append((out.detach().argmax(1) == yb).sum())
        gnorms.append((m["sq_norm"].sum() * m["grad_sq"].sum()).sqrt())
        angles.append(m["angle"])
        ggn.append((m["sq_norm"] * m["grad_sq"]).sqrt())
        sizes.append(idx.numel())
    def host(tensors):
        return torch.stack(tensors).double().cpu().numpy()

    return {"L": host(losses), "G": host(gnorms), "A": host(angles), "ggn": host(ggn).mean(0),
            "correct": float(torch.stack(corrects).sum()), "w": np.asarray(sizes, dtype=np.float64)}


def _keep_steps(st, first_step, m, record_every):
    """Write the epoch's steps whose global index is a multiple of ``record_every``."""
    steps = first_step + np.arange(m["L"].size)
    keep = steps % record_every == 0
    k = steps[keep] // record_every
    st["step_loss"][k], st["step_grad_norm"][k], st["step_angle"][k] = \
        m["L"][keep], m["G"][keep], m["A"][keep]


@torch.no_grad()
def _keep_epoch(ep, e, m, opt, si_params, theta0):
    """Epoch means of the step metrics, and the end-of-epoch geometry (norms, shares, T7)."""
    w = m["w"]
    ep["loss"][e] = float((m["L"] * w).sum() / w.sum())
    ep["accuracy"][e] = m["correct"] / w.sum()
    ep["grad_norm"][e], ep["angle"][e] = m["G"].mean(), m["A"].mean()
    ep["group_grad_norm"][e] = m["ggn"]
    sq = torch.stack([torch.stack(torch._foreach_norm(g["params"])).square().sum()
                      for g in opt.param_groups]).double().cpu().numpy()
    theta = torch.cat([p.detach().flatten() for p in si_params])
    ep["cosine_to_init"][e] = float(theta @ theta0) / float(theta.norm() * theta0.norm())
    ep["si_norm"][e] = math.sqrt(sq.sum())
    ep["individual_elr"][e] = opt.lr / sq
    ep["shares"][e] = sq / sq.sum()


def _summarise(ep, spec, steps_per_epoch, random_loss, invalid):
    """Tail means over the last ``spec.tail`` epochs and the regime (`classify_summary`)."""
    tail = slice(spec.epochs - spec.tail, spec.epochs)
    means = {}
    for name, var in (("tail_loss", "loss"), ("tail_grad_norm", "grad_norm"), ("tail_angle", "angle")):
        with np.errstate(all="ignore"):
            means[name] = float("nan") if invalid else float(np.mean(ep[var][tail]))
    labels, reasons = classify_summary(means["tail_loss"], random_loss, invalid_reason=invalid,
                                       tail_angle=means["tail_angle"],
                                       tail_steps=spec.tail * steps_per_epoch)
    return {**means, "regime": str(labels), "regime_reason": str(reasons)}


def _attrs(spec, opt, data, steps_per_epoch, attrs):
    meta = {"constraint": spec.constraint, "batch_size": spec.batch_size, "epochs": spec.epochs,
            "seed": spec.seed, "record_every": spec.record_every, "eval_every": spec.eval_every,
            "tail": spec.tail, "rho": opt.rho, "steps_per_epoch": steps_per_epoch,
            "data": data.name, "n_train": int(data.x_train.shape[0]),
            "n_test": int(data.x_test.shape[0]),
            "group_params": "; ".join(f"{g.get('name', i)}: {','.join(g.get('names', []))}"
                                      for i, g in enumerate(opt.param_groups)),
            "torch_version": torch.__version__}
    if spec.constraint == "per-filter":
        meta["n_filters"] = opt.n_filters
        meta["filter_individual_elr"] = spec.elr * opt.n_filters
    meta.update(attrs or {})
    return {k: v for k, v in meta.items() if v is not None}


def run(model, data, spec: RunSpec | None = None, *, groups=None, progress_bar=True, desc="train",
        attrs=None, **fields):
    """Train ``model`` on ``data`` (`ImageData`, on the model's device) with `SphereSGD` as
    ``spec`` says (a `RunSpec`, or its fields as keywords: ``elr=``, ``epochs=``, ...); returns
    the metrics Dataset (module docstring).

    ``groups``: SI groups (default ``si_groups(model)``); every trainable parameter must be in one
    (a non-SI trainable parameter raises: freeze it, or build the optimiser yourself).
    ``attrs`` are added to the Dataset's attributes.
    """
    import xarray as xr

    if spec is None:
        spec = RunSpec(**fields)
    elif fields:
        raise TypeError(f"pass either a RunSpec or its fields, not both (got {sorted(fields)})")
    groups = _check_groups(model, groups)
    check_lr(spec.elr, _si_params(groups))
    opt = SphereSGD(groups, spec.elr, constraint=spec.constraint, track=True)
    si_params = [p for g in opt.param_groups for p in g["params"]]
    names = [g.get("name", str(i)) for i, g in enumerate(opt.param_groups)]
    x, y = data.x_train, data.y_train
    steps_per_epoch = len(_batches(x.shape[0], spec.batch_size, torch.Generator().manual_seed(0)))
    rec_steps = np.arange(0, spec.epochs * steps_per_epoch, spec.record_every)
    ep, st = _allocate(spec.epochs, len(names), rec_steps.size)
    theta0 = torch.cat([p.detach().flatten() for p in si_params]).clone()
    model.train()
    random_loss, init_loss = random_level(model, si_params, x, y, spec.batch_size, seed=spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    invalid = ""
    t0 = time.perf_counter()
    with progress(total=spec.epochs, desc=desc, disable=not progress_bar) as bar:
        for e in range(spec.epochs):
            m = _train_epoch(model, opt, x, y, _batches(x.shape[0], spec.batch_size, gen))
            _keep_steps(st, e * steps_per_epoch, m, spec.record_every)
            if not (np.all(np.isfinite(m["L"])) and np.all(np.isfinite(m["G"]))):
                invalid = f"non-finite loss or gradient in epoch {e + 1} (elr={spec.elr})"
                break
            _keep_epoch(ep, e, m, opt, si_params, theta0)
            if (e + 1) % spec.eval_every == 0 or e + 1 == spec.epochs:
                ep["test_loss"][e], ep["test_accuracy"][e] = evaluate(model, data.x_test, data.y_test)
            bar.update(1)
    seconds = time.perf_counter() - t0
    summary = _summarise(ep, spec, steps_per_epoch, random_loss, invalid)
    dims = {k: (("epoch", "group") if v.ndim == 2 else ("epoch",), v) for k, v in ep.items()}
    ds = xr.Dataset(
        {**dims, **{k: (("step",), v) for k, v in st.items()},
         "random_loss": random_loss, "init_loss": init_loss, "tail_loss": summary["tail_loss"],
         "tail_grad_norm": summary["tail_grad_norm"], "tail_angle": summary["tail_angle"],
         "regime": summary["regime"], "regime_reason": summary["regime_reason"],
         "lr": opt.lr, "train_seconds": seconds},
        coords={"epoch": np.arange(1, spec.epochs + 1), "step": rec_steps, "group": names,
                "elr": spec.elr})
    ds.attrs.update(_attrs(spec, opt, data, steps_per_epoch, attrs))
    return ds


# -- from names ----------------------------------------------------------------------------------
def _setup(model="convnet-si", data="digits", *, width=8, device="cpu", dtype="float32",
           data_root=None, input_size=None) -> dict:
    """The network and data keywords of `train`, checked (names, width, input size)."""
    choice("model", model, _models.MODELS)
    choice("data", data, _data.DATASETS)
    choice("dtype", dtype, DTYPES)
    size = None if input_size is None else positive_int("input_size", input_size, 4)
    return {"model": model, "data": data, "width": positive_int("width", width, 1),
            "device": device, "dtype": dtype, "data_root": data_root, "input_size": size}


def prepare(model="convnet-si", data="digits", *, width=8, seed=0, device="cpu", dtype="float32",
            data_root=None, input_size=None):
    """Build ``(model, data, attrs)`` from names; the model is drawn from ``seed``.

    Refuses, before building anything, a network or data set larger than the device's memory
    (`check_fits`)."""
    setup = _setup(model, data, width=width, device=device, dtype=dtype, data_root=data_root,
                   input_size=input_size)
    seed = bounded_int("seed", seed, 0, MAX_SEED)
    dev = resolve_device(device)
    check_fits(model, data, width=setup["width"], dtype=dtype, device=dev, input_size=input_size)
    images = _data.load_data(data, root=data_root, input_size=setup["input_size"],
                             dtype=DTYPES[dtype], device=dev, seed=seed)
    net = _network(setup, seed, images, dev)
    attrs = {"model": model, "width": width, "device": str(dev), "dtype": dtype,
             "head_norm": HEAD_NORM, "input_size": int(images.x_train.shape[-1])}
    return net, images, attrs


def _network(setup, seed, images, dev):
    return build_model(setup["model"], width=setup["width"], num_classes=images.num_classes,
                       in_channels=images.in_channels, seed=seed, dtype=DTYPES[setup["dtype"]],
                       device=dev)


def train(*, elr, epochs, model="convnet-si", data="digits", width=8, batch_size=128, seed=0,
          constraint="total", device="cpu", dtype="float32", record_every=1, eval_every=1,
          tail=None, data_root=None, input_size=None, progress_bar=True):
    """One fixed-ELR run from names (``toymodel train``); returns the metrics Dataset."""
    spec = RunSpec(elr=elr, epochs=epochs, batch_size=batch_size, constraint=constraint, seed=seed,
                   record_every=record_every, eval_every=eval_every, tail=tail)
    setup = _setup(model, data, width=width, device=device, dtype=dtype, data_root=data_root,
                   input_size=input_size)
    check_fits(model, data, width=setup["width"], dtype=dtype, device=device,
               input_size=setup["input_size"], spec=spec)
    net, images, attrs = prepare(seed=spec.seed, **setup)
    return run(net, images, spec, progress_bar=progress_bar, desc=f"elr={spec.elr:.3g}", attrs=attrs)


def parse_elrs(text) -> np.ndarray:
    """``"a:b:N"`` -> N log-spaced values from a to b; ``"x,y,z"`` -> that list; a sequence as given.

    The same grammar as the toy scans (`toymodel.scan.elr_grid`), so a network ELR scan and a
    toy scan can be written with one grid."""
    from ..scan import elr_grid

    return elr_grid(text)


_SPEC_KEYS = ("epochs", "batch_size", "constraint", "seed", "record_every", "eval_every", "tail")


def scan_params(spec: RunSpec, setup: dict) -> dict:
    """What makes two runs of a scan comparable: every parameter but the ELR (and the data
    folder, which only says where the same files are)."""
    params = {k: v for k, v in dataclasses.asdict(spec).items() if k != "elr"}
    params.update({k: v for k, v in setup.items() if k != "data_root"})
    return params


def train_scan(elrs, *, progress_bar=True, parts=None, callback=None, **kw):
    """One run per ELR from the same initial network (same ``seed``), concatenated along ``elr``.

    ``kw``: the keywords of `train` but ``elr``. Every ELR is checked (`check_lr`) before the
    first run. ``parts``: a folder keeping each finished run (`toymodel.bridge._parts`):
    a run already there, made with the same parameters, is read back instead of trained again
    (an interrupted scan resumes where it stopped); runs made with other parameters raise
    ``ValueError``. With ``parts``, the result is assembled from those files, so a resumed scan
    equals an uninterrupted one. ``callback(ds)`` is called after each run (trained or read back).
    """
    import xarray as xr

    elrs = parse_elrs(elrs)
    base = RunSpec(elr=float(elrs[0]), **{k: kw.pop(k) for k in _SPEC_KEYS if k in kw})
    specs = [base.replace(elr=float(e)) for e in elrs]
    setup = _setup(**kw)
    check_fits(setup["model"], setup["data"], width=setup["width"], dtype=setup["dtype"],
               device=setup["device"], input_size=setup["input_size"], spec=base)
    net, images, attrs = prepare(seed=base.seed, **setup)
    check_lr(elrs, _si_params(si_groups(net)))
    store = None if parts is None else RunParts(parts, scan_params(base, setup))
    found = 0 if store is None else sum(store.has(s.elr, s.seed) for s in specs)
    runs = []
    with progress(total=len(specs), desc="train-scan", disable=not progress_bar,
                  initial=found) as bar:
        for spec in specs:
            ds = None if store is None else store.get(spec.elr, spec.seed)
            if ds is None:
                if net is None:
                    net = _network(setup, spec.seed, images, resolve_device(setup["device"]))
                ds = run(net, images, spec, progress_bar=progress_bar, desc=f"elr={spec.elr:.3g}",
                         attrs=attrs)
                net = None  # trained: the next ELR starts from a fresh copy of the initial network
                if store is not None:
                    store.put(ds, spec.elr, spec.seed)
                bar.update(1)
            runs.append(ds if store is None else spec)
            if callback is not None:
                callback(ds)
    if store is not None:
        runs = [store.get(s.elr, s.seed) for s in runs]
    return xr.concat(runs, dim="elr", combine_attrs="drop_conflicts")
