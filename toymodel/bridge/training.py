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

Modules: this one (`RunSpec`, `run`, `train`, `train_scan`: a run from its parts or from names),
`toymodel.bridge._measure` (the metrics of one run), `toymodel.bridge._checks` (the refusals
made before any work), `toymodel.bridge._parts` (finished runs kept on disk).
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from .._grids import elr_grid
from .._progress import progress
from .._validate import bounded_int, choice, positive_finite, positive_int, tail_within
from . import data as _data
from . import models as _models
from ._checks import DTYPES, _check_groups, _si_params, check_fits, check_lr, resolve_device
from ._measure import (_allocate, _batches, _keep_epoch, _keep_steps, _summarise, _train_epoch,
                       evaluate, random_level)
from ._parts import RunParts
from .groups import si_groups
from .models import HEAD_NORM, build_model
from .optim import CONSTRAINTS, SphereSGD

#: torch seeds its generators with an unsigned 64-bit integer; `random_level` adds 10 000
MAX_SEED = 2**63 - 1


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
            else tail_within(self.tail, self.epochs, steps_name=None))

    def replace(self, **changes) -> RunSpec:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)


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

    The same grammar as the toy scans (`toymodel._grids.elr_grid`, also `toymodel.scan.elr_grid`),
    so a network ELR scan and a toy scan can be written with one grid."""
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
