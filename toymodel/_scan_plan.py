"""The plan of a scan: its grid, its chunks, and every refusal made before any work.

Owns `ScanPlan` (the leading parameter axes of the mode — ELRs; ELRs × momenta; learning rates
× weight decays, `toymodel._scan_modes` — × configurations × seeds, one `CellSpec`, the chunk
shape: everything that determines the bits of a scan), the chunking rule `plan_chunks`, the limits
(`MAX_ELEMENT_STEPS`, `MAX_ELR_CONFIG_PAIRS`, `MAX_STORE_CHUNKS`, memory) and `_plan`, which
turns the arguments of `toymodel.scan.scan` into a validated plan without allocating the grid
first. NumPy only.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from . import periodic, regimes
from ._grids import elr_spec, seed_spec
from ._momentum_checks import CONVERGED_LOSS
from ._scan_chunk import CellSpec, ChunkTask
from ._scan_modes import (
    PARAM_KEYS,
    check_decay_grid,
    nonnegative_spec,
    unit_interval_spec,
)
from ._validate import memory_limit, positive_int
from ._version import __version__
from .problems import RayleighToy, SphereToy, _Problem

#: the dimensions of every per-cell variable of a fixed-ELR scan, in this order (other modes:
#: `ScanPlan.cell_dims`).
CELL_DIMS = ("elr", "config", "seed")
#: the layout of a scan's dataset and store; 2: ``regime`` and ``predicted_regime`` are int8 codes
#: (`toymodel.regimes.REGIME_CODES`) and no reason is stored (format 1: strings, ``regime_reason``).
FORMAT = "toymodel-scan/2"
#: work per chunk (trajectories × n × d × steps) the default chunking aims at: about 1–5 s for a
#: compiled CPU kernel on one core (docs/distributed.md, "chunking rule").
TARGET_ELEMENT_STEPS = 2e8
#: never more cells than this in one chunk (memory: every cell holds a few (n, d) states).
MAX_CHUNK_CELLS = 1 << 20

# -- limits, checked before any work (docs/reliability.md) --------------------------------------------
#: the most work one scan may ask for: cells x steps x n x d (doubled with the Lyapunov twin).
#: 1e15 element-steps is about 50 days of a 2-core CPU at the measured 2.4e8 per second
#: (docs/scans.md): a larger request is a typo, or a scan to split into several.
MAX_ELEMENT_STEPS = 1e15
#: the most (ELR, configuration) pairs: the predictions are held (and stored) per pair, and the
#: plan's hash names every ELR in Python.
MAX_ELR_CONFIG_PAIRS = 10**7
#: the most chunks of a zarr store (each leaves one completion-marker file).
MAX_STORE_CHUNKS = 10**6


# -- configurations -------------------------------------------------------------------------------
def _is_alphas(x) -> bool:
    if isinstance(x, str):
        return True
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return arr.ndim == 1


def _configs(problem_or_alphas, dim) -> list:
    """One problem, one curvature sequence, or a list of either -> list of problems."""
    if isinstance(problem_or_alphas, _Problem) or _is_alphas(problem_or_alphas):
        items = [problem_or_alphas]
    else:
        items = list(problem_or_alphas)
    if not items:
        raise ValueError("problem_or_alphas must name at least one configuration, got an empty list")
    return [p if isinstance(p, _Problem) else SphereToy(p, dim=dim) for p in items]


def problem_record(p) -> dict:
    """A configuration as JSON (`describe`, plus the matrix's sha256 for a Rayleigh toy)."""
    d = p.describe()
    if isinstance(p, RayleighToy):
        d["A_sha256"] = hashlib.sha256(np.ascontiguousarray(p.A).tobytes()).hexdigest()
    return d


# -- the plan -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanPlan:
    """Everything that determines the bits of a scan, and the chunk grid.

    ``axes`` are the leading parameter dimensions, ``((name, values), ...)`` in the order of
    `toymodel._scan_modes.AXES` for ``spec.mode``; they default to ``(("elr", elrs),)``, the
    fixed-ELR scan. ``elrs`` is the ELR axis (``None`` in the weight-decay mode); ``chunks`` has
    one size per dimension of `cell_dims`."""

    configs: tuple
    elrs: np.ndarray
    seeds: np.ndarray
    spec: CellSpec
    chunks: tuple  # (*axes, config, seed)
    axes: tuple = ()

    def __post_init__(self):
        if not self.axes:
            object.__setattr__(self, "axes", (("elr", self.elrs),))

    @property
    def cell_dims(self) -> tuple:
        """The dimensions of every per-cell variable: the axes, ``config``, ``seed``."""
        return tuple(name for name, _ in self.axes) + ("config", "seed")

    @property
    def n_groups(self) -> int:
        """The largest group count of the configurations (the ``group`` dimension)."""
        return max(p.n_groups for p in self.configs)

    @property
    def n_params(self) -> int:
        """Points of the parameter grid (the product of the axes' sizes)."""
        return int(np.prod([v.size for _, v in self.axes]))

    @property
    def shape(self) -> tuple:
        return tuple(v.size for _, v in self.axes) + (len(self.configs), self.seeds.size)

    @property
    def grid(self) -> tuple:
        return tuple(-(-n // c) for n, c in zip(self.shape, self.chunks))

    @property
    def n_chunks(self) -> int:
        return int(np.prod(self.grid))

    @property
    def n_cells(self) -> int:
        return int(np.prod(self.shape))

    def region(self, chunk_id: int) -> tuple:
        """The slices ``(*axes, config, seed)`` of chunk ``chunk_id`` (C order over the chunk grid)."""
        idx = np.unravel_index(chunk_id, self.grid)
        return tuple(slice(int(i) * c, min((int(i) + 1) * c, n)) for i, c, n in zip(idx, self.chunks, self.shape))

    def var_dims(self, name: str) -> tuple:
        """The dimensions of per-cell variable ``name`` (a ``group`` one for `CellSpec.group_vars`)."""
        return self.cell_dims + (("group",) if name in self.spec.group_vars() else ())

    def var_region(self, name: str, region) -> tuple:
        """``region`` (of `region`) for variable ``name``: whole along its ``group`` dimension."""
        return tuple(region) + ((slice(None),) if name in self.spec.group_vars() else ())

    def var_chunks(self, name: str) -> tuple:
        """The storage chunks of variable ``name``: the plan's, and one along ``group``."""
        return tuple(self.chunks) + ((self.n_groups,) if name in self.spec.group_vars() else ())

    def storage_index(self, name: str, chunk_id: int) -> tuple:
        """The index of chunk ``chunk_id`` in the storage-chunk grid of variable ``name``."""
        idx = tuple(int(i) for i in np.unravel_index(chunk_id, self.grid))
        return idx + ((0,) if name in self.spec.group_vars() else ())

    def task(self, chunk_id: int) -> ChunkTask:
        """Chunk ``chunk_id`` by value: its slice of the grid, and the spec (the same object)."""
        *sa, sc, ss = self.region(chunk_id)
        axes = tuple(v[s] for (_, v), s in zip(self.axes, sa))
        elrs = axes[0] if self.axes[0][0] == "elr" else None
        return ChunkTask(chunk_id=chunk_id, configs=self.configs[sc], elrs=elrs,
                         seeds=self.seeds[ss], spec=self.spec, axes=axes,
                         n_groups=self.n_groups if self.spec.group_vars() else 0)

    def params(self) -> dict:
        """JSON parameters: the manifest of a store; its hash identifies the plan. A fixed-ELR
        plan has exactly the keys it always had (its stores still open and resume); the other
        modes add their ``mode``, their axes and their criteria."""
        out = {"format": FORMAT, "toymodel_version": __version__,
               "configs": [problem_record(p) for p in self.configs]}
        out.update({PARAM_KEYS[name]: [float(x).hex() for x in v] for name, v in self.axes})
        out.update({"seeds": self.seeds.tolist(), **self.spec.params(),
                    "chunks": list(self.chunks), "radius": 1.0,
                    "conv_rtol": regimes.CONV_RTOL, "div_frac": regimes.DIV_FRAC,
                    "min_tail_rotation": regimes.MIN_TAIL_ROTATION})
        if self.spec.mode == "momentum":
            out["converged_loss"] = CONVERGED_LOSS
        elif self.spec.mode == "wd":
            out.update(spike_frac=periodic.SPIKE_FRAC, min_spikes=periodic.MIN_SPIKES)
        return out

    def digest(self) -> str:
        text = json.dumps(self.params(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def cell_vars(self) -> dict:
        """Per-cell variables -> dtype, in write order (`CellSpec.cell_vars`)."""
        return self.spec.cell_vars()

    def bytes_per_cell(self) -> int:
        """Memory of one cell's results (all per-cell variables, a ``group`` one counted per group):
        66 B for the float64 summaries of a fixed-ELR scan."""
        groups = self.spec.group_vars()
        return int(sum(dt.itemsize * (self.n_groups if name in groups else 1)
                       for name, dt in self.cell_vars().items()))


def plan_chunks(shape, work_per_cell, chunk_size=None, name: str = "chunk_size") -> tuple:
    """Chunk shape ``(ce, cc, cs)`` for a grid ``shape`` = (ELRs, configs, seeds); in general
    ``(*axes, config, seed)`` sizes for ``shape`` = ``(*axes, configs, seeds)``.

    Rule: ``cells = TARGET_ELEMENT_STEPS / work_per_cell`` (work = n·d·steps, doubled with the
    Lyapunov twin) clipped to [1, MAX_CHUNK_CELLS], or ``chunk_size`` cells when given (an int),
    or an explicit block of sizes. A chunk takes all seeds first, then the parameter axes from
    the last to the first (ELRs for a fixed-ELR scan), then configs.
    """
    shape = tuple(int(n) for n in shape)
    if isinstance(chunk_size, (tuple, list)):
        if len(chunk_size) != len(shape):
            dims = "(elr, config, seed)" if len(shape) == 3 else f"{len(shape)}"
            raise ValueError(f"{name} must be an int or {dims} sizes, got {chunk_size!r}")
        return tuple(min(positive_int(f"{name} entry", c), n) for c, n in zip(chunk_size, shape))
    if chunk_size is None:
        cells = int(np.clip(TARGET_ELEMENT_STEPS // max(work_per_cell, 1), 1, MAX_CHUNK_CELLS))
    else:
        cells = positive_int(name, chunk_size)
    *axes, C, S = shape
    cs = min(S, cells)
    block = cs
    sizes = []
    for n in reversed(axes):
        c = min(n, max(1, cells // block))
        sizes.append(c)
        block *= c
    cc = min(C, max(1, cells // block))
    return tuple(reversed(sizes)) + (cc, cs)


def _axes(mode, elrs, momentum, lr, weight_decay, label):
    """The leading axes of ``mode`` as ``[(name, count, build), ...]``, sizes known before the
    grids are allocated; the arguments of the other modes must be absent."""
    def absent(**given):
        extra = [k for k, v in given.items() if v is not None]
        if extra:
            raise ValueError(f"{' and '.join(label(k) for k in extra)} do(es) not apply to the "
                             f"{mode!r} mode (" + {"elr": "a fixed-ELR scan takes elrs",
                                                   "momentum": "a momentum scan takes elrs and "
                                                               "momentum",
                                                   "wd": "constraint='none' takes lr and "
                                                         "weight_decay"}[mode] + ")")

    def need(**given):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ValueError(f"the {mode!r} mode needs {' and '.join(label(k) for k in missing)}")

    if mode == "wd":
        absent(elrs=elrs, momentum=momentum)
        need(lr=lr, weight_decay=weight_decay)
        return [("lr", *elr_spec(lr, label("lr"))),
                ("weight_decay", *nonnegative_spec(weight_decay, label("weight_decay")))]
    absent(lr=lr, weight_decay=weight_decay)
    need(elrs=elrs)
    axes = [("elr", *elr_spec(elrs, label("elrs")))]
    if mode == "momentum":
        axes.append(("momentum", *unit_interval_spec(momentum, label("momentum"))))
    return axes


def _plan(problem_or_alphas, elrs, seeds, steps, tail, constraint, backend, dtype, lyapunov,
          chunk_size, dim, *, names=None, defaults=(), momentum=None, momentum_mode="official",
          optimizer="heavy_ball", beta2=0.999, eps=1e-3, lr=None, weight_decay=None) -> ScanPlan:
    """The arguments of `toymodel.scan.scan` as a validated `ScanPlan`: the configurations, the
    one `CellSpec`, the grids (their sizes checked against the limits before they are allocated)
    and the chunks. ``names`` maps an argument to its name in messages (the CLI's ``--tail``);
    ``defaults`` lists the arguments the user left at their default (a message then says so).
    The mode: ``"wd"`` with ``constraint="none"``, ``"momentum"`` with ``momentum``, else ``"elr"``."""
    label = (names or {}).get

    def lab(key):
        return label(key, key)

    mode = "wd" if constraint == "none" else "momentum" if momentum is not None else "elr"
    if mode != "momentum":
        settings = {"momentum_mode": (momentum_mode, "official"), "optimizer": (optimizer, "heavy_ball"),
                    "beta2": (beta2, 0.999), "eps": (eps, 1e-3)}
        given = [k for k, (v, d) in settings.items() if v != d]
        if given:
            raise ValueError(f"{', '.join(lab(k) for k in given)}: only for a momentum scan "
                             f"(give {lab('momentum')}), got {', '.join(f'{lab(k)}={settings[k][0]!r}' for k in given)}")
    configs = tuple(_configs(problem_or_alphas, positive_int(lab("dim"), dim)))
    if mode != "elr":
        others = [type(p).__name__ for p in configs if not isinstance(p, SphereToy)]
        if others:
            raise ValueError(f"momentum and weight-decay scans run SphereToy configurations only "
                             f"(the kernels of these modes), got {others[0]}")
    spec = CellSpec(steps=steps, tail=tail, constraint=constraint, dtype=dtype, lyapunov=lyapunov,
                    backend=backend, names=names, defaults=tuple(defaults), mode=mode,
                    momentum_mode=momentum_mode, optimizer=optimizer, beta2=beta2, eps=eps)
    axes = _axes(mode, elrs, momentum, lr, weight_decay, lab)
    n_seeds, make_seeds = seed_spec(seeds, lab("seeds"))
    what = " x ".join(lab(PARAM_KEYS[name] if name == "elr" else name) for name, _, _ in axes)
    _check_work(int(np.prod([n for _, n, _ in axes])), configs, n_seeds, spec, lab, what)
    built = tuple((name, build()) for name, _, build in axes)
    if mode == "wd":
        check_decay_grid(built[0][1], built[1][1], lab("lr"), lab("weight_decay"))
    seeds = make_seeds()
    work = max(p.n_groups * p.dim for p in configs) * spec.steps * spec.twin
    shape = tuple(v.size for _, v in built) + (len(configs), seeds.size)
    chunks = plan_chunks(shape, work, chunk_size, lab("chunk_size"))
    return ScanPlan(configs=configs, elrs=built[0][1] if mode != "wd" else None, seeds=seeds,
                    spec=spec, chunks=chunks, axes=built)


def _check_work(n_elrs, configs, n_seeds, spec: CellSpec, label, what=None) -> None:
    """Refuse a scan beyond `MAX_ELEMENT_STEPS` or `MAX_ELR_CONFIG_PAIRS`, naming what it needs;
    ``n_elrs`` counts the points of the parameter grid (``what`` names its axes)."""
    what = what or label("elrs")
    per_elr_seed = sum(p.n_groups * p.dim for p in configs) * spec.steps * spec.twin
    work = float(n_elrs) * float(n_seeds) * per_elr_seed
    if work > MAX_ELEMENT_STEPS:
        cells = float(n_elrs) * len(configs) * n_seeds
        raise ValueError(
            f"this scan needs {work:.3g} element-steps ({cells:.3g} cells x {spec.steps} steps x n x d"
            f"{' x 2 for the Lyapunov twin' if spec.lyapunov else ''}), over the limit "
            f"{MAX_ELEMENT_STEPS:.0e} (about {MAX_ELEMENT_STEPS / 2.4e8 / 86400:.0f} days of a "
            f"2-core CPU); scan fewer {what}, {label('seeds')} or {label('steps')}, or "
            f"split the scan")
    pairs = float(n_elrs) * len(configs)
    if pairs > MAX_ELR_CONFIG_PAIRS:
        kind = "(ELR, configuration)" if what == label("elrs") else f"({what}, configuration)"
        raise ValueError(f"this scan has {pairs:.3g} {kind} pairs, over the limit "
                         f"{MAX_ELR_CONFIG_PAIRS:.0e} (the theory's predictions are held per pair); "
                         f"scan fewer {what} or split the scan")


def _gb(x) -> str:
    return f"{x / 1e9:.3g} GB"


def check_memory(plan: ScanPlan, in_memory: bool, label=lambda k: k,
                 store_hint="store='NAME.zarr'") -> None:
    """Refuse a scan whose result (in memory) or chunk (always) needs more memory than the
    machine has, and a store of more than `MAX_STORE_CHUNKS` chunks."""
    mem = memory_limit()
    per_cell = plan.bytes_per_cell()
    if in_memory and mem is not None:
        need = plan.n_cells * per_cell + plan.n_params * len(plan.configs) * (1 + 8)  # predictions
        if need > mem:
            raise ValueError(
                f"the result would need {_gb(need)} in memory ({plan.n_cells:.3g} cells x {per_cell} B), "
                f"more than this machine's {_gb(mem)}; write it to a zarr store ({store_hint}: memory "
                f"is then per chunk) or scan fewer cells")
    if mem is not None:
        n, d = (max(p.n_groups for p in plan.configs), max(p.dim for p in plan.configs))
        # a chunk holds its results and, while it runs, a few (n, d) states per trajectory
        cells = int(np.prod(plan.chunks))
        need = cells * (per_cell + 8 * n * d * plan.spec.state_copies * plan.spec.twin)
        if need > mem:
            raise ValueError(f"a chunk of {cells} cells would need {_gb(need)}, more than this "
                             f"machine's {_gb(mem)}; pass a smaller {label('chunk_size')}")
    if not in_memory and plan.n_chunks > MAX_STORE_CHUNKS:
        least = -(-plan.n_cells // MAX_STORE_CHUNKS)
        raise ValueError(f"the store would hold {plan.n_chunks} chunks, over the limit "
                         f"{MAX_STORE_CHUNKS:.0e} (one completion marker file each); pass a "
                         f"{label('chunk_size')} of at least {least} cells")
