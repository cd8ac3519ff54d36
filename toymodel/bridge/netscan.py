r"""Network scans: one fixed-ELR run per ELR $\times$ seed, in process or on a Dask cluster, kept
run by run; the engine of `train_scan` and ``toymodel train-scan``.

A scan is planned once (`plan_scan`: every value, the memory, the data files and the learning rate
$\eta=\tilde\eta\rho^2$ of every ELR checked before any run; `NetScanPlan`), described as
independent tasks (`NetTask`: one run and everything it needs, picklable) and computed by the
pure `run_task` (its result depends on the task only: the network is drawn from the run's seed,
the data are loaded afresh). The calling process commits each finished run: it is the single
writer of the parts folder (`toymodel.bridge._parts`, one NetCDF file per ELR and seed, written
atomically), so an interrupted scan resumes with only the missing runs.

On a cluster (``client=``: a ``dask.distributed.Client`` or a scheduler address, as for toy
scans) the tasks go to `toymodel.distributed.run_chunks`, the executor of the toy scans, which
receives `run_task` and never imports the bridge; a worker that dies loses only its running
task, which the scheduler reruns on another worker, and every committed run is already on disk.

**Layout.** Without ``seeds`` (one ``seed``, default 0) the result is the old one: dims ``elr``
(+ ``epoch``, ``step``, ``group``), the run's ``seed`` and ``rho`` as attributes. With ``seeds``
(the toy scans' grammar, `toymodel._grids.seed_spec`: a count ``N`` for seeds ``0..N-1`` or a
list) every variable gains the dim ``seed`` after ``elr`` (int64 coordinate; ``seed`` and
``rho``, which differ per seed, leave the attributes; the attribute ``seeds`` lists them as JSON,
as in a toy scan), and ``regime`` / ``regime_reason`` are per (elr, seed), with the labels of
`toymodel.regimes`.

**Optimisers.** ``optimizer="sgd"`` (`SphereSGD`, ``momentum``, ``momentum_mode``) or ``"adam"``
(`SphereAdam`, ``betas``) is one parameter of the scan like the others: it is in the parts
folder's parameters when not the default, and in the attributes (``optimizer`` always;
``momentum`` and ``momentum_mode`` with momentum; ``betas`` and ``eps`` for Adam).
`concat_optimizers` puts scans with different optimisers side by side along a new dim
``optimizer`` whose coordinates say which is which (one grid, or the union of their grids).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json

import numpy as np
import torch

from .._grids import elr_grid, seed_spec
from .._progress import progress
from .._validate import bounded_int, positive_int
from . import data as _data
from . import models as _models
from . import training as _training
from ._checks import DTYPES, _si_params, check_fits, check_lr, check_optimizer_model
from ._parts import RunParts, part_name
from .groups import si_groups
from .presets import apply_preset


@dataclasses.dataclass(frozen=True)
class NetTask:
    """One run of a scan: its `RunSpec`, the network and data names (`training.prepare`'s
    keywords), the training-set `DataOptions`, and how to run it (torch ``threads``, whether to
    show the run's epoch bar)."""

    spec: _training.RunSpec
    setup: dict
    options: _data.DataOptions
    threads: int | None = None
    progress_bar: bool = False


@contextlib.contextmanager
def _torch_threads(n):
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_task(task: NetTask):
    """Train the run ``task`` describes (network drawn from ``task.spec.seed``) and return its
    metrics Dataset; pure, so a worker can compute it and a rerun gives the same numbers."""
    spec = task.spec
    with _torch_threads(task.threads):
        net, images, attrs = _training.prepare(seed=spec.seed, **task.setup)
        images = _data.with_options(images, task.options)
        return _training.run(net, images, spec, progress_bar=task.progress_bar,
                             desc=f"{spec.label()} seed={spec.seed}",
                             attrs={**attrs, **task.options.record()})


@dataclasses.dataclass(frozen=True)
class NetScanPlan:
    """A checked scan: the ``elrs`` $\\times$ ``seeds`` grid, the common `RunSpec` (``base``, its
    ELR and seed those of the first run), the names (``setup``), the data ``options``, torch
    ``threads``, and whether the result has a ``seed`` dim (``seed_dim``)."""

    elrs: np.ndarray
    seeds: np.ndarray
    seed_dim: bool
    base: _training.RunSpec
    setup: dict
    options: _data.DataOptions
    threads: int | None = None

    @property
    def size(self) -> int:
        return self.elrs.size * self.seeds.size

    def cells(self):
        """``(i, j, elr, seed)`` of every run, ELR-major."""
        for i, elr in enumerate(self.elrs):
            for j, seed in enumerate(self.seeds):
                yield i, j, float(elr), int(seed)

    def task(self, elr: float, seed: int, progress_bar: bool = False) -> NetTask:
        return NetTask(self.base.replace(elr=elr, seed=seed), self.setup, self.options,
                       self.threads, progress_bar)

    def params(self) -> dict:
        """What the runs of this scan share (the parts folder's ``run_params``): every parameter
        but the ELR, the seed when there is a seed dim, and the data folder."""
        params = _training.scan_params(self.base, self.setup)
        if self.seed_dim:
            params.pop("seed")
        params.update(self.options.record())
        return params

    def found(self, folder) -> int:
        """How many of this scan's runs ``folder`` already holds (by file name)."""
        import os
        return sum(os.path.isfile(os.path.join(os.fspath(folder), part_name(e, s)))
                   for _, _, e, s in self.cells())

    def assemble(self, runs: dict):
        """The scan's Dataset from ``runs[(i, j)]`` (module docstring: the layout)."""
        import xarray as xr

        def concat(items, dim):
            return xr.concat(items, dim=dim, combine_attrs="drop_conflicts")

        if not self.seed_dim:
            return concat([runs[(i, 0)] for i in range(self.elrs.size)], "elr")
        rows = [concat([runs[(i, j)].assign_coords(seed=np.int64(s))
                        for j, s in enumerate(self.seeds)], "seed")
                for i in range(self.elrs.size)]
        ds = concat(rows, "elr").transpose("elr", "seed", ...)
        ds.attrs["seeds"] = json.dumps([int(s) for s in self.seeds])
        return ds


def _seeds(seeds, seed):
    if seeds is not None and seed is not None:
        raise ValueError(f"pass seeds= (a seed dim) or seed= (one run per ELR, no seed dim), not "
                         f"both; got seeds={seeds!r} and seed={seed!r}")
    if seeds is None:
        one = bounded_int("seed", 0 if seed is None else seed, 0, _training.MAX_SEED)
        return np.array([one], dtype=np.int64), False
    return seed_spec(seeds)[1](), True


def plan_scan(elrs=None, seeds=None, *, preset=None, augment=None, corrupt=None,
              corrupt_seed=_data.CORRUPT_SEED, threads=None, **kw) -> NetScanPlan:
    """Check a scan and describe it (`NetScanPlan`); nothing is trained. Keywords as `train_scan`.

    Refused here (``ValueError`` naming the value): bad values, an unknown preset, ``seed`` and
    ``seeds`` together, a network or data set larger than the device's memory, a missing CIFAR
    file, an ELR whose learning rate the dtype cannot hold (every ELR, with the first seed's
    network: $\\rho$ differs between seeds by a few percent, and each run checks its own again).
    """
    given = apply_preset(preset, {"elrs": elrs, "augment": augment, "corrupt": corrupt, **kw})
    given = {k: v for k, v in given.items() if v is not None}
    if "elrs" not in given:
        raise ValueError("elrs is required (an 'a:b:N' range, a comma list, a sequence), or a "
                         "preset that sets it")
    if "epochs" not in given:
        raise ValueError("epochs is required (a positive integer), or a preset that sets it")
    grid = elr_grid(given.pop("elrs"))
    seed_list, seed_dim = _seeds(seeds, given.pop("seed", None))
    options = _data.DataOptions(augment=given.pop("augment", False),
                                corrupt=given.pop("corrupt", 0.0), corrupt_seed=corrupt_seed)
    if not options.is_default and not getattr(_training, "DATA_OPTIONS", False):
        raise ValueError(f"augment / corrupt ({options.record()}) need a training loop that applies "
                         "them (toymodel.bridge.training.DATA_OPTIONS); this version's does not")
    spec_kw = {k: given.pop(k) for k in _training._SPEC_KEYS if k in given}
    base = _training.RunSpec(elr=float(grid[0]), seed=int(seed_list[0]), **spec_kw)
    setup = _training._setup(**given)
    check_optimizer_model(base.optimizer, setup["model"])
    check_fits(setup["model"], setup["data"], width=setup["width"], dtype=setup["dtype"],
               device=setup["device"], input_size=setup["input_size"], spec=base)
    _data.check_files(setup["data"], setup["data_root"])
    _, channels, _, classes = _data.SHAPES[setup["data"]]
    probe = _models.build_model(setup["model"], width=setup["width"], num_classes=classes,
                                in_channels=channels, seed=base.seed, dtype=DTYPES[setup["dtype"]])
    check_lr(grid, _si_params(si_groups(probe)))
    threads = None if threads is None else positive_int("threads", threads, 1)
    return NetScanPlan(grid, seed_list, seed_dim, base, setup, options, threads)


def run_scan(plan: NetScanPlan, *, client=None, parts=None, callback=None, progress_bar=True):
    """Compute ``plan`` (in process, or on ``client``), keeping each finished run in ``parts``;
    returns the scan's Dataset. Runs already in ``parts`` (same parameters) are read back, not
    trained; with ``parts`` the result is assembled from its files, so a resumed scan equals an
    uninterrupted one. ``callback(ds)`` is called after each run, in completion order (read-back
    runs first)."""
    owned = False
    if client is not None:  # connect first: an unreachable scheduler is refused before any work
        from ..distributed import connect
        client, owned = connect(client)
    try:
        store = None if parts is None else RunParts(parts, plan.params())
        runs, todo = {}, []
        for i, j, elr, seed in plan.cells():
            ds = None if store is None else store.get(elr, seed)
            if ds is None:
                todo.append(((i, j), plan.task(elr, seed, progress_bar and client is None)))
                continue
            runs[(i, j)] = ds
            if callback is not None:
                callback(ds)
        with progress(total=plan.size, desc="train-scan", disable=not progress_bar,
                      initial=plan.size - len(todo)) as bar:
            def commit(key, ds):
                if store is not None:
                    i, j = key
                    store.put(ds, float(plan.elrs[i]), int(plan.seeds[j]))
                runs[key] = ds
                bar.update(1)
                if callback is not None:
                    callback(ds)

            if client is None:
                for key, task in todo:
                    commit(key, run_task(task))
            else:
                from ..distributed import run_chunks
                run_chunks(client, run_task, todo, commit)
    finally:
        if owned:
            client.close()
    if store is not None:  # read back: the result is the files' content, resumed or not
        runs = {(i, j): store.get(e, s) for i, j, e, s in plan.cells()}
    return plan.assemble(runs)


def train_scan(elrs=None, seeds=None, *, client=None, parts=None, callback=None,
               progress_bar=True, **kw):
    """One fixed-ELR run per ELR and seed; an xarray Dataset (module docstring: the layout).

    Parameters
    ----------
    elrs
        ``"a:b:N"`` (N log-spaced values), ``"x,y,z"`` or a sequence of distinct positive
        numbers (`toymodel._grids.elr_grid`, the toy scans' grammar); may come from ``preset``.
    seeds
        ``None`` (default): one run per ELR with ``seed`` (default 0), all from the same initial
        network, and no ``seed`` dim (the old layout). Otherwise a count ``N`` (seeds
        ``0..N-1``) or a sequence of distinct integers: dims ``elr`` $\\times$ ``seed``; seed $s$
        draws the network and the mini-batch order (and the augmentation) of its runs.
    client
        ``None`` (in process), a ``dask.distributed.Client`` or a scheduler address
        ``"tcp://host:port"``: one task per run on the cluster's workers.
    parts
        A folder keeping each finished run (`toymodel.bridge._parts`); a rerun trains only the
        missing ones; runs made with other parameters raise ``ValueError``.
    callback
        ``callback(ds)`` after each run (trained or read back), in this process.
    progress_bar
        A bar over the runs (and, in process, one over each run's epochs).
    **kw
        The keywords of `toymodel.bridge.train` but ``elr`` (``model``, ``data``, ``width``,
        ``epochs``, ``batch_size``, ``seed``, ``constraint``, ``device``, ``dtype``, ...), and
        ``preset`` (a name of `toymodel.bridge.presets.PRESETS`: fills what is left unset),
        ``augment`` (random crop with 4-pixel padding + horizontal flip, seeded),
        ``corrupt`` (fraction of training labels replaced by wrong ones), ``corrupt_seed``,
        ``threads`` (torch CPU threads of each run).
    """
    plan = plan_scan(elrs, seeds, **kw)
    return run_scan(plan, client=client, parts=parts, callback=callback,
                    progress_bar=progress_bar)


def optimizer_label(ds) -> str:
    """A short name of the optimiser of a run or scan, from its attributes: ``"sgd"``,
    ``"sgd-m0.9-official"``, ``"sgd-m0.9-transport"``, ``"adam-0.9-0.999"``."""
    opt = ds.attrs.get("optimizer", "sgd")
    if opt == "adam":
        b1, b2 = ds.attrs["betas"]
        return f"adam-{float(b1):g}-{float(b2):g}"
    mom = float(ds.attrs.get("momentum", 0.0))
    return f"sgd-m{mom:g}-{ds.attrs.get('momentum_mode', 'official')}" if mom else "sgd"


def concat_optimizers(scans, labels=None, join="exact"):
    """Scans with different optimisers (same seeds), along a new dim ``optimizer``.

    ``labels``: the coordinate (default `optimizer_label` of each scan; they must differ). The
    optimiser parameters become coordinates along the dim: ``optimizer_name`` (``"sgd"`` |
    ``"adam"``), ``momentum``, ``momentum_mode`` (``""`` for Adam), ``beta1``, ``beta2`` (NaN for
    SGD); attributes that differ between the scans are dropped, the rest kept (the optimiser
    attributes always go: the coordinates hold them). ``join="exact"``
    needs one ELR grid; ``"outer"`` takes the union of the grids, a cell a scan did not run
    holding NaN and the regime ``""``.
    """
    import xarray as xr

    scans = list(scans)
    labels = [optimizer_label(ds) for ds in scans] if labels is None else list(labels)
    if len(set(labels)) != len(labels) or len(labels) != len(scans):
        raise ValueError(f"concat_optimizers needs one distinct label per scan, got {labels}")
    if join not in ("exact", "outer"):
        raise ValueError(f"join must be 'exact' or 'outer', got {join!r}")
    grids = [np.asarray(ds.elr.values) for ds in scans]
    if join == "outer":
        union = np.unique(np.concatenate(grids))
        blank = {k: "" for k in ("regime", "regime_reason")}
        scans = [ds.reindex(elr=union, fill_value=blank) for ds in scans]
    elif any(g.shape != grids[0].shape or not np.array_equal(g, grids[0]) for g in grids[1:]):
        raise ValueError("concat_optimizers needs scans over the same ELR grid (or join='outer')")
    coords = {"optimizer_name": [], "momentum": [], "momentum_mode": [], "beta1": [], "beta2": []}
    for ds in scans:
        adam = ds.attrs.get("optimizer", "sgd") == "adam"
        b1, b2 = ds.attrs["betas"] if adam else (np.nan, np.nan)
        coords["optimizer_name"].append("adam" if adam else "sgd")
        coords["momentum"].append(0.0 if adam else float(ds.attrs.get("momentum", 0.0)))
        coords["momentum_mode"].append("" if adam else ds.attrs.get("momentum_mode", "official"))
        coords["beta1"].append(float(b1))
        coords["beta2"].append(float(b2))
    out = xr.concat(scans, dim="optimizer", combine_attrs="drop_conflicts")
    for key in ("optimizer", "momentum", "momentum_mode", "betas", "eps"):
        out.attrs.pop(key, None)  # the coordinates say it per optimizer; one scan's would mislead
    return out.assign_coords(optimizer=labels,
                             **{k: ("optimizer", v) for k, v in coords.items()})
