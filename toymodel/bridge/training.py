r"""Training of an SI network (fixed ELR, or conventional) with metrics computed online, saved as
an xarray Dataset.

Every metric is measured while training (STYLE §6); checkpoints only let a run be resumed.
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

Two modes (`RunSpec.mode`): ``"sphere"`` (default), `SphereSGD` at the fixed total ELR ``elr``
(``momentum`` $\beta$, ``momentum_mode`` ``"official"`` | ``"transport"``), or with
``optimizer="adam"`` `SphereAdam` at the fixed ELR ``elr`` (``betas``; its ELR is $\eta_u/r_u$, the
tangent of a unit's first turn, docs/sphere_optimizers.md), which records the same variables
(``grad_norm`` from the gradient itself, ``individual_elr`` Adam's $\eta/\|\theta_g\|$);
``"full"``, conventional `torch.optim.SGD` (``lr`` $\eta$, ``weight_decay`` $\lambda$,
``momentum``) on every trainable parameter with no projection (`toymodel.bridge._full`), which
adds ``effective_elr`` $\eta/\|\theta\|^2$ (end of epoch; ``tail_effective_elr``, its tail
mean), ``step_effective_elr`` and ``step_si_norm`` (before each step), has no ``elr``
coordinate and stores ``lr``, ``weight_decay``, ``momentum`` as variables. Optional in both:
``bn_update=True`` adds ``test_loss_bn`` / ``test_accuracy_bn`` (eval mode after the BN
statistics are recomputed on the training set, the official ``bn_update``); ``sharpness_every=k``
adds ``hessian_trace``, ``top_eigenvalue`` of the SI parameters and their $\times\|\theta\|^2$
``effective_hessian_trace``, ``effective_top_eigenvalue`` (the Hessian at the unit sphere, T1)
every k epochs and at the last, on a fixed subset of training samples (`_measure.sharpness`).
The training-set options of `toymodel.bridge.data.DataOptions` (``augment``: a seeded crop + flip
of each mini-batch; ``corrupt``: a fraction of wrong labels) are applied by the loop; corrupted
labels add ``train_loss_corrupted`` / ``train_loss_clean``, the epoch's mean per-sample loss over
the corrupted and the clean samples (their sample-weighted mean is ``loss``).

A run is described by one frozen `RunSpec` (validated once, passed whole, STYLE §16); `train`
and the scans of `toymodel.bridge.netscan` build it from their keywords. Everything that can be refused is refused before
the first step: bad values, a learning rate $\eta=\tilde\eta\rho^2$ the parameters' dtype
cannot hold, a network or data set larger than the device's memory.

Modules: this one (`RunSpec`, `run`, `train`: a run from its parts or from names),
`toymodel.bridge._measure` (the metrics of one run), `toymodel.bridge._checks` (the refusals
made before any work), `toymodel.bridge._full` (the conventional optimiser),
`toymodel.bridge.checkpoints` (save, resume, ``init_from``), `toymodel.bridge._parts` (finished
runs kept on disk).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from .._grids import elr_grid
from .._validate import bounded_int, choice, positive_int, tail_within
from . import checkpoints as _ckpt
from . import data as _data
from . import models as _models
from ._checks import (DTYPES, check_fits, check_mode, check_optimizer,
                      check_optimizer_model, resolve_device)
from ._measure import evaluate  # noqa: F401  (re-exported by toymodel.bridge)
from ._runner import fresh_state, loop, optimiser
from .models import HEAD_NORM, build_model
from .optim import CONSTRAINTS

#: torch seeds its generators with an unsigned 64-bit integer; `random_level` adds 10 000
MAX_SEED = 2**63 - 1
#: the loop applies the training-set options of `toymodel.bridge.data.DataOptions` (``augment``,
#: ``corrupt``): `train`, `toymodel.bridge.netscan` and the CLI accept them
DATA_OPTIONS = True


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """What one run does, validated once at construction; `run` receives it whole.

    ``mode="sphere"`` takes ``elr``, ``constraint`` and ``optimizer``: ``"sgd"`` (`SphereSGD`,
    ``momentum`` and ``momentum_mode``) or ``"adam"`` (`SphereAdam`, ``betas``, default
    (0.9, 0.999); ``None`` for SGD); ``mode="full"`` (`torch.optim.SGD`, no projection) takes
    ``lr``, ``weight_decay`` and ``momentum``, and stores ``elr=None`` and ``constraint="none"``
    (`check_mode`, `check_optimizer`). ``seed``
    drives the mini-batch order (`train` also draws the network from it); ``tail`` is the number
    of final epochs the summaries average (``None``: the last 10%, at least one; resolved here,
    so a spec always holds the number used). ``sharpness_every`` (0: never) and ``bn_update``
    add the optional metrics of the module docstring.
    """

    elr: float | None
    epochs: int
    batch_size: int = 128
    constraint: str = "total"
    seed: int = 0
    record_every: int = 1
    eval_every: int = 1
    tail: int | None = None
    mode: str = "sphere"
    lr: float | None = None
    weight_decay: float = 0.0
    momentum: float = 0.0
    sharpness_every: int = 0
    bn_update: bool = False
    momentum_mode: str = "official"
    optimizer: str = "sgd"
    betas: tuple | None = None

    def __post_init__(self):
        def put(name, value):  # the dataclass is frozen: store the checked values once, here
            object.__setattr__(self, name, value)

        for name, value in check_mode(self.mode, self.elr, self.lr, self.weight_decay,
                                      self.momentum, self.constraint, CONSTRAINTS).items():
            put(name, value)
        for name, value in check_optimizer(self.mode, self.optimizer, self.momentum,
                                           self.momentum_mode, self.betas).items():
            put(name, value)
        put("epochs", positive_int("epochs", self.epochs, 1))
        put("batch_size", positive_int("batch_size", self.batch_size, 2))
        put("seed", bounded_int("seed", self.seed, 0, MAX_SEED))
        put("record_every", positive_int("record_every", self.record_every, 1))
        put("eval_every", positive_int("eval_every", self.eval_every, 1))
        put("tail", max(1, self.epochs // 10) if self.tail is None
            else tail_within(self.tail, self.epochs, steps_name=None))
        put("sharpness_every", positive_int("sharpness_every", self.sharpness_every, 0))
        if not isinstance(self.bn_update, bool):
            raise ValueError(f"bn_update must be True or False, got {self.bn_update!r}")

    def replace(self, **changes) -> RunSpec:
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def label(self) -> str:
        """``elr=...`` or ``lr=... wd=...``: the run in a progress bar or a message."""
        if self.mode == "sphere":
            return f"elr={self.elr}" if self.optimizer == "sgd" else f"adam elr={self.elr}"
        return f"lr={self.lr}, weight_decay={self.weight_decay}"


#: the fields added with ``mode="full"``, at their defaults: left out of `scan_params`, so the
#: finished runs of earlier scans still match
_NEW_DEFAULTS = {"mode": "sphere", "lr": None, "weight_decay": 0.0, "momentum": 0.0,
                 "sharpness_every": 0, "bn_update": False, "momentum_mode": "official",
                 "optimizer": "sgd", "betas": None}
def run(model, data, spec: RunSpec | None = None, *, groups=None, progress_bar=True, desc="train",
        attrs=None, **fields):
    """Train ``model`` on ``data`` (`ImageData`, on the model's device) as ``spec`` says (a
    `RunSpec`, or its fields as keywords: ``elr=``, ``epochs=``, ...; `SphereSGD`, or
    `torch.optim.SGD` with ``mode="full"``); returns the metrics Dataset (module docstring).

    ``groups``: SI groups (default ``si_groups(model)``); every trainable parameter must be in one
    but the affine parameters of normalisations (a non-SI trainable parameter raises: freeze it,
    or build the optimiser yourself). ``attrs`` are added to the Dataset's attributes.
    """
    if spec is None:
        spec = RunSpec(**fields)
    elif fields:
        raise TypeError(f"pass either a RunSpec or its fields, not both (got {sorted(fields)})")
    opt, si_params, names = optimiser(model, spec, groups)
    state = fresh_state(model, data, spec, si_params, len(names))
    return loop(model, data, spec, opt, state, names, progress_bar=progress_bar, desc=desc,
                 attrs=attrs)


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


def train(*, elr=None, epochs, model="convnet-si", data="digits", width=8, batch_size=128, seed=0,
          constraint="total", device="cpu", dtype="float32", record_every=1, eval_every=1,
          tail=None, data_root=None, input_size=None, progress_bar=True, mode="sphere", lr=None,
          weight_decay=0.0, momentum=0.0, sharpness_every=0, bn_update=False,
          momentum_mode="official", optimizer="sgd", betas=None, checkpoint_dir=None, checkpoint_every=None, resume=False, init_from=None,
          augment=False, corrupt=0.0, corrupt_seed=_data.CORRUPT_SEED):
    r"""One run from names (``toymodel train``); returns the metrics Dataset.

    Parameters
    ----------
    elr, epochs, batch_size, constraint, seed, record_every, eval_every, tail, mode, lr,
    weight_decay, momentum, sharpness_every, bn_update, momentum_mode, optimizer, betas
        The fields of `RunSpec`: ``mode="sphere"`` trains at the fixed total ELR ``elr`` with
        `SphereSGD` (``optimizer="sgd"``, ``momentum`` $\beta$, ``momentum_mode``
        ``"official"`` | ``"transport"``) or `SphereAdam` (``optimizer="adam"``, ``betas``);
        ``mode="full"`` is conventional SGD with ``lr`` $\eta$, ``weight_decay`` $\lambda$ and
        ``momentum`` $\beta$ (effective ELR $\eta/\|\theta\|^2$ recorded).
    model, data, width, device, dtype, data_root, input_size
        The network (``"convnet-si"``, ``"resnet18-si"``, ``"convnet-si-af"``,
        ``"resnet18-si-af"``) and data set by name, as in `prepare`.
    checkpoint_dir
        Folder of checkpoints (`toymodel.bridge.checkpoints`): one after the last epoch and one
        every ``checkpoint_every`` epochs. A folder that already holds checkpoints is refused
        unless ``resume``.
    resume
        Continue from the last checkpoint in ``checkpoint_dir`` (all `RunSpec` fields but
        ``epochs`` and ``tail``, and the network, must match; none there: start afresh). The
        states of torch's, NumPy's and Python's global generators are restored too. The result
        equals the uninterrupted run bit for bit (same machine and threads).
    init_from
        A checkpoint file (or a bare or official ``state_dict`` file) whose weights and BN
        statistics start this run: a new run (new ELR, new mode), $\rho$ measured from them.
    augment, corrupt, corrupt_seed
        The training-set options (`toymodel.bridge.data.DataOptions`): a seeded random crop
        (4-pixel padding) + horizontal flip of each mini-batch; a fraction ``corrupt`` of the
        training labels replaced by wrong ones (chosen from ``corrupt_seed``), which adds
        ``train_loss_corrupted`` / ``train_loss_clean`` (epoch means over each part). Recorded
        in the attributes (and checked on resume) when on; off, the run is unchanged.
    progress_bar
        Show the epochs on stderr.
    """
    spec = RunSpec(elr=elr, epochs=epochs, batch_size=batch_size, constraint=constraint, seed=seed,
                   record_every=record_every, eval_every=eval_every, tail=tail, mode=mode, lr=lr,
                   weight_decay=weight_decay, momentum=momentum, sharpness_every=sharpness_every,
                   bn_update=bn_update, momentum_mode=momentum_mode, optimizer=optimizer,
                   betas=betas)
    check_optimizer_model(spec.optimizer, model)
    setup = _setup(model, data, width=width, device=device, dtype=dtype, data_root=data_root,
                   input_size=input_size)
    options = _data.DataOptions(augment=augment, corrupt=corrupt, corrupt_seed=corrupt_seed)
    saver, blob = _ckpt.open_run(checkpoint_dir, checkpoint_every, resume)
    check_fits(model, data, width=setup["width"], dtype=dtype, device=device,
               input_size=setup["input_size"], spec=spec)
    names = {k: v for k, v in setup.items() if k != "data_root"}
    names["init_from"] = None if init_from is None else os.path.abspath(os.fspath(init_from))
    names.update(options.record())  # empty when off: older checkpoints still match
    if blob is not None:
        _ckpt.check_compatible(blob, spec, names, saver.latest())
    net, images, attrs = prepare(seed=spec.seed, **setup)
    images = _data.with_options(images, options)
    attrs.update(options.record())
    if init_from is not None:
        _ckpt.load_weights(net, init_from)
        attrs["init_from"] = names["init_from"]
    opt, si_params, groups = optimiser(net, spec, None)
    state = fresh_state(net, images, spec, si_params, len(groups), level=blob is None)
    if blob is not None:
        state = _ckpt.restore(blob, net, opt, state)
        attrs["resumed_from_epoch"] = int(blob["epoch"])
    return loop(net, images, spec, opt, state, groups, progress_bar=progress_bar,
                 desc=spec.label(), attrs=attrs, saver=saver, setup=names)


def parse_elrs(text) -> np.ndarray:
    """``"a:b:N"`` -> N log-spaced values from a to b; ``"x,y,z"`` -> that list; a sequence as given.

    The same grammar as the toy scans (`toymodel._grids.elr_grid`, also `toymodel.scan.elr_grid`),
    so a network ELR scan and a toy scan can be written with one grid."""
    return elr_grid(text)


_SPEC_KEYS = ("epochs", "batch_size", "constraint", "seed", "record_every", "eval_every", "tail",
              "mode", "lr", "weight_decay", "momentum", "sharpness_every", "bn_update",
              "momentum_mode", "optimizer", "betas")


def scan_params(spec: RunSpec, setup: dict) -> dict:
    """What makes two runs of a scan comparable: every parameter but the ELR (and the data
    folder, which only says where the same files are)."""
    params = {k: v for k, v in dataclasses.asdict(spec).items()
              if k != "elr" and not (k in _NEW_DEFAULTS and v == _NEW_DEFAULTS[k])}
    params.update({k: v for k, v in setup.items() if k != "data_root"})
    return params
