"""The plan of a scan: its grid, its chunks, and every refusal made before any work.

Owns `ScanPlan` (configurations × ELRs × seeds, one `CellSpec`, the chunk shape: everything
that determines the bits of a scan), the chunking rule `plan_chunks`, the limits
(`MAX_ELEMENT_STEPS`, `MAX_ELR_CONFIG_PAIRS`, `MAX_STORE_CHUNKS`, memory) and `_plan`, which
turns the arguments of `toymodel.scan.scan` into a validated plan without allocating the grid
first. NumPy only.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from . import regimes
from ._grids import elr_spec, seed_spec
from ._scan_chunk import CellSpec, ChunkTask
from ._validate import memory_limit, positive_int
from ._version import __version__
from .problems import RayleighToy, SphereToy, _Problem

#: the dimensions of every per-cell variable, in this order.
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
    """Everything that determines the bits of a scan, and the chunk grid."""

    configs: tuple
    elrs: np.ndarray
    seeds: np.ndarray
    spec: CellSpec
    chunks: tuple  # (ce, cc, cs)

    @property
    def shape(self) -> tuple:
        return (self.elrs.size, len(self.configs), self.seeds.size)

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
        """The slices ``(elr, config, seed)`` of chunk ``chunk_id`` (C order over the chunk grid)."""
        idx = np.unravel_index(chunk_id, self.grid)
        return tuple(slice(int(i) * c, min((int(i) + 1) * c, n)) for i, c, n in zip(idx, self.chunks, self.shape))

    def task(self, chunk_id: int) -> ChunkTask:
        """Chunk ``chunk_id`` by value: its slice of the grid, and the spec (the same object)."""
        se, sc, ss = self.region(chunk_id)
        return ChunkTask(chunk_id=chunk_id, configs=self.configs[sc], elrs=self.elrs[se],
                         seeds=self.seeds[ss], spec=self.spec)

    def params(self) -> dict:
        """JSON parameters: the manifest of a store; its hash identifies the plan."""
        return {
            "format": FORMAT, "toymodel_version": __version__,
            "configs": [problem_record(p) for p in self.configs],
            "elrs": [float(x).hex() for x in self.elrs],
            "seeds": self.seeds.tolist(), **self.spec.params(),
            "chunks": list(self.chunks), "radius": 1.0,
            "conv_rtol": regimes.CONV_RTOL, "div_frac": regimes.DIV_FRAC,
            "min_tail_rotation": regimes.MIN_TAIL_ROTATION,
        }

    def digest(self) -> str:
        text = json.dumps(self.params(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def cell_vars(self) -> dict:
        """Per-cell variables -> dtype, in write order (`CellSpec.cell_vars`)."""
        return self.spec.cell_vars()

    def bytes_per_cell(self) -> int:
        """Memory of one cell's results (all per-cell variables): 66 B for float64 summaries."""
        return int(sum(dt.itemsize for dt in self.cell_vars().values()))


def plan_chunks(shape, work_per_cell, chunk_size=None, name: str = "chunk_size") -> tuple:
    """Chunk shape ``(ce, cc, cs)`` for a grid ``shape`` = (ELRs, configs, seeds).

    Rule: ``cells = TARGET_ELEMENT_STEPS / work_per_cell`` (work = n·d·steps, doubled with the
    Lyapunov twin) clipped to [1, MAX_CHUNK_CELLS], or ``chunk_size`` cells when given (an int),
    or an explicit ``(ce, cc, cs)``. A chunk takes all seeds first, then ELRs, then configs.
    """
    E, C, S = shape
    if isinstance(chunk_size, (tuple, list)):
        if len(chunk_size) != 3:
            raise ValueError(f"{name} must be an int or (elr, config, seed) sizes, got {chunk_size!r}")
        return tuple(min(positive_int(f"{name} entry", c), n) for c, n in zip(chunk_size, shape))
    if chunk_size is None:
        cells = int(np.clip(TARGET_ELEMENT_STEPS // max(work_per_cell, 1), 1, MAX_CHUNK_CELLS))
    else:
        cells = positive_int(name, chunk_size)
    cs = min(S, cells)
    ce = min(E, max(1, cells // cs))
    cc = min(C, max(1, cells // (cs * ce)))
    return (ce, cc, cs)


def _plan(problem_or_alphas, elrs, seeds, steps, tail, constraint, backend, dtype, lyapunov,
          chunk_size, dim, *, names=None, defaults=()) -> ScanPlan:
    """The arguments of `toymodel.scan.scan` as a validated `ScanPlan`: the configurations, the
    one `CellSpec`, the grids (their sizes checked against the limits before they are allocated)
    and the chunks. ``names`` maps an argument to its name in messages (the CLI's ``--tail``);
    ``defaults`` lists the arguments the user left at their default (a message then says so)."""
    label = (names or {}).get

    configs = tuple(_configs(problem_or_alphas, positive_int(label("dim", "dim"), dim)))
    spec = CellSpec(steps=steps, tail=tail, constraint=constraint, dtype=dtype, lyapunov=lyapunov,
                    backend=backend, names=names, defaults=tuple(defaults))
    n_elrs, make_elrs = elr_spec(elrs, label("elrs", "elrs"))
    n_seeds, make_seeds = seed_spec(seeds, label("seeds", "seeds"))
    _check_work(n_elrs, configs, n_seeds, spec, lambda key: label(key, key))
    elrs, seeds = make_elrs(), make_seeds()
    work = max(p.n_groups * p.dim for p in configs) * spec.steps * spec.twin
    chunks = plan_chunks((elrs.size, len(configs), seeds.size), work, chunk_size,
                         label("chunk_size", "chunk_size"))
    return ScanPlan(configs=configs, elrs=elrs, seeds=seeds, spec=spec, chunks=chunks)


def _check_work(n_elrs, configs, n_seeds, spec: CellSpec, label) -> None:
    """Refuse a scan beyond `MAX_ELEMENT_STEPS` or `MAX_ELR_CONFIG_PAIRS`, naming what it needs."""
    per_elr_seed = sum(p.n_groups * p.dim for p in configs) * spec.steps * spec.twin
    work = float(n_elrs) * float(n_seeds) * per_elr_seed
    if work > MAX_ELEMENT_STEPS:
        cells = float(n_elrs) * len(configs) * n_seeds
        raise ValueError(
            f"this scan needs {work:.3g} element-steps ({cells:.3g} cells x {spec.steps} steps x n x d"
            f"{' x 2 for the Lyapunov twin' if spec.lyapunov else ''}), over the limit "
            f"{MAX_ELEMENT_STEPS:.0e} (about {MAX_ELEMENT_STEPS / 2.4e8 / 86400:.0f} days of a "
            f"2-core CPU); scan fewer {label('elrs')}, {label('seeds')} or {label('steps')}, or "
            f"split the scan")
    pairs = float(n_elrs) * len(configs)
    if pairs > MAX_ELR_CONFIG_PAIRS:
        raise ValueError(f"this scan has {pairs:.3g} (ELR, configuration) pairs, over the limit "
                         f"{MAX_ELR_CONFIG_PAIRS:.0e} (the theory's predictions are held per pair); "
                         f"scan fewer {label('elrs')} or split the scan")


def _gb(x) -> str:
    return f"{x / 1e9:.3g} GB"


def check_memory(plan: ScanPlan, in_memory: bool, label=lambda k: k,
                 store_hint="store='NAME.zarr'") -> None:
    """Refuse a scan whose result (in memory) or chunk (always) needs more memory than the
    machine has, and a store of more than `MAX_STORE_CHUNKS` chunks."""
    mem = memory_limit()
    per_cell = plan.bytes_per_cell()
    if in_memory and mem is not None:
        need = plan.n_cells * per_cell + plan.elrs.size * len(plan.configs) * (1 + 8)  # predictions
        if need > mem:
            raise ValueError(
                f"the result would need {_gb(need)} in memory ({plan.n_cells:.3g} cells x {per_cell} B), "
                f"more than this machine's {_gb(mem)}; write it to a zarr store ({store_hint}: memory "
                f"is then per chunk) or scan fewer cells")
    if mem is not None:
        n, d = (max(p.n_groups for p in plan.configs), max(p.dim for p in plan.configs))
        # a chunk holds its results and, while it runs, a few (n, d) states per trajectory
        cells = int(np.prod(plan.chunks))
        need = cells * (per_cell + 8 * n * d * 4 * plan.spec.twin)
        if need > mem:
            raise ValueError(f"a chunk of {cells} cells would need {_gb(need)}, more than this "
                             f"machine's {_gb(mem)}; pass a smaller {label('chunk_size')}")
    if not in_memory and plan.n_chunks > MAX_STORE_CHUNKS:
        least = -(-plan.n_cells // MAX_STORE_CHUNKS)
        raise ValueError(f"the store would hold {plan.n_chunks} chunks, over the limit "
                         f"{MAX_STORE_CHUNKS:.0e} (one completion marker file each); pass a "
                         f"{label('chunk_size')} of at least {least} cells")
