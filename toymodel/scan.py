r"""Phase-diagram scans: grids over ELR × configuration × seed, reduced to labelled summaries.

A *cell* is one trajectory: an ELR $\tilde\eta$ (T3), a configuration (a problem of
`toymodel.problems`, e.g. a `SphereToy` with curvatures
$\alpha_i$) and a seed (which fixes the initial state, `toymodel.dynamics.initial_states`).
Every cell is run by the batch backend (`toymodel.backend.summarize`, the contract of
`toymodel.dynamics.summarize_batch`) and reduced to summaries: no traces are stored.

The grid is cut into rectangular *chunks* (blocks of ELRs × configurations × seeds). One pure
function, `compute_chunk`, computes a chunk from its description alone, so the same chunk
plan gives the same bits in-process, on Dask workers (`toymodel.distributed`) and after a
resume from a zarr store (`toymodel._store`).

Beside the observed ``regime`` (`toymodel.regimes.classify_summary`, which judges the
dynamics only), the dataset carries the theory's predictions for comparison:
``predicted_regime`` (T10, T12), ``equilibrium_loss`` $L^*=(\sum\alpha_i-1/\tilde\eta)/2$
(T12), the thresholds $1/\sum\alpha_i$ and $1/\min\alpha_i$ (T10) and the random level.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import numbers
from dataclasses import dataclass

import numpy as np

from . import dynamics, regimes, theory
from ._progress import progress
from ._validate import constraint_name, distinct, positive_finite_array, positive_int
from .problems import RayleighToy, SphereToy, _Problem, as_problem

__all__ = ["scan", "agreement", "Agreement", "open_scan", "verify_scan", "plot_scan",
           "elr_grid", "plan_chunks", "compute_chunk", "CELL_DIMS", "TARGET_ELEMENT_STEPS"]

CELL_DIMS = ("elr", "config", "seed")
#: work per chunk (trajectories × n × d × steps) the default chunking aims at: about 1–5 s for a
#: compiled CPU kernel on one core (docs/distributed.md, "chunking rule").
TARGET_ELEMENT_STEPS = 2e8
#: never more cells than this in one chunk (memory: every cell holds a few (n, d) states).
MAX_CHUNK_CELLS = 1 << 20
REGIME_WIDTH = max(len(s) for s in regimes.LABELS)
REASON_WIDTH = 64

# -- limits, checked before any work (docs/reliability.md) --------------------------------------------
#: the most work one scan may ask for: cells x steps x n x d (doubled with the Lyapunov twin).
#: 1e15 element-steps is about 50 days of a 2-core CPU at the measured 2.4e8 per second
#: (docs/scans.md): a larger request is a typo, or a scan to split into several.
MAX_ELEMENT_STEPS = 1e15
#: the most (ELR, configuration) pairs: the theory's predictions are computed per pair in Python.
MAX_ELR_CONFIG_PAIRS = 10**7
#: the most chunks of a zarr store (each leaves one completion-marker file).
MAX_STORE_CHUNKS = 10**6
#: seeds are stored as int64.
MAX_SEED = np.iinfo(np.int64).max


# -- inputs ---------------------------------------------------------------------------------------
def elr_grid(spec, name: str = "elrs") -> np.ndarray:
    """ELRs from ``"a:b:N"`` (``N`` log-spaced values from ``a`` to ``b``, both included), a
    comma list ``"0.1,0.2"``, or any sequence of distinct positive numbers; ``name`` is the
    argument's name in error messages."""
    return _elr_spec(spec, name)[1]()


def _elr_spec(spec, name: str = "elrs"):
    """``(count, build)``: the number of ELRs, known before the grid is allocated, and a function
    that builds and checks it."""
    if isinstance(spec, str):
        text = spec.strip()
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError(f"{name} must look like 'start:stop:count', got {spec!r}")
            try:
                a, b, n = float(parts[0]), float(parts[1]), int(parts[2])
            except ValueError:
                raise ValueError(f"{name} must look like 'start:stop:count' (two numbers and an "
                                 f"integer), got {spec!r}") from None
            a = positive_finite_array(f"{name} start", [a])[0]
            b = positive_finite_array(f"{name} stop", [b])[0]
            n = positive_int(f"{name} count", n)
            if n > 1 and a == b:
                raise ValueError(f"{name} must be distinct, got {spec!r}: start = stop gives "
                                 f"{a!r} {n} times; use {parts[0]}:{parts[1]}:1")

            def build():
                grid = np.geomspace(a, b, n) if n > 1 else np.array([a])
                distinct(name, grid)  # a range so narrow that float64 rounds neighbours together
                return grid
            return n, build
        try:
            spec = [float(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"{name} must be 'start:stop:count' or a comma list, got {spec!r}") from None
    arr = positive_finite_array(name, np.atleast_1d(spec), ndim=1)
    distinct(name, arr)
    return arr.size, lambda: arr


def _seeds(seeds, name: str = "seeds") -> np.ndarray:
    """``N`` -> ``0..N-1``; a sequence of distinct non-negative integers as given."""
    return _seed_spec(seeds, name)[1]()


def _seed_spec(seeds, name: str = "seeds"):
    """``(count, build)`` as `_elr_spec`: a count ``N`` is checked before ``0..N-1`` is allocated."""
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        n = positive_int(f"{name} (a count)", seeds)
        return n, lambda: np.arange(n, dtype=np.int64)
    if isinstance(seeds, str):
        seeds = [t for t in seeds.split(",") if t.strip()]
    try:
        vals = [positive_int(f"{name} entries", int(s) if not isinstance(s, float) else s, minimum=0)
                for s in seeds]
    except (TypeError, ValueError) as err:
        if isinstance(err, ValueError) and "must be an integer" in str(err):
            raise
        raise ValueError(f"{name} must be a count or a sequence of non-negative integers, "
                         f"got {seeds!r}") from None
    too_big = [v for v in vals if v > MAX_SEED]
    if too_big:
        raise ValueError(f"{name} entries must be integers in [0, {MAX_SEED}] (stored as int64), "
                         f"got {too_big[0]}")
    if not vals:
        raise ValueError(f"{name} must be a non-empty sequence of distinct integers, got {seeds!r}")
    distinct(name, vals)
    return len(vals), lambda: np.asarray(vals, dtype=np.int64)


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


def _dtype(dtype) -> np.dtype:
    # np.dtype(None) is float64, and a dtype compares equal to anything np.dtype() accepts: so
    # compare names, and only of a real dtype
    try:
        dt = None if dtype is None else np.dtype(dtype)
    except (TypeError, ValueError):
        dt = None
    if dt is None or dt.name not in ("float64", "float32"):
        raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    return dt


def _problem_key(p) -> tuple:
    """Configurations that can share one kernel call: toys of equal (n, d); a Rayleigh toy alone."""
    if isinstance(p, SphereToy):
        return ("sphere_toy", p.n_groups, p.dim)
    return ("single", id(p))


def _problem_record(p) -> dict:
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
    steps: int
    tail: int
    constraint: str
    dtype: str
    lyapunov: bool
    backend: str
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

    def task(self, chunk_id: int) -> "ChunkTask":
        se, sc, ss = self.region(chunk_id)
        return ChunkTask(chunk_id=chunk_id, configs=self.configs[sc], elrs=self.elrs[se],
                         seeds=self.seeds[ss], steps=self.steps, tail=self.tail,
                         constraint=self.constraint, dtype=self.dtype, lyapunov=self.lyapunov,
                         backend=self.backend)

    def params(self) -> dict:
        """JSON parameters: the manifest of a store; its hash identifies the plan."""
        from . import __version__
        return {
            "format": "toymodel-scan/1", "toymodel_version": __version__,
            "configs": [_problem_record(p) for p in self.configs],
            "elrs": [float(x).hex() for x in self.elrs],
            "seeds": self.seeds.tolist(), "steps": self.steps, "tail": self.tail,
            "constraint": self.constraint, "dtype": self.dtype, "lyapunov": self.lyapunov,
            "backend": self.backend, "chunks": list(self.chunks), "radius": 1.0,
            "conv_rtol": regimes.CONV_RTOL, "div_frac": regimes.DIV_FRAC,
            "min_tail_rotation": regimes.MIN_TAIL_ROTATION,
        }

    def digest(self) -> str:
        text = json.dumps(self.params(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def cell_vars(self) -> dict:
        """Per-cell variables -> dtype, in write order."""
        dt = np.dtype(self.dtype)
        names = [n for n in dynamics.SUMMARY_NAMES if self.lyapunov or n != "lyapunov"]
        out = {n: dt for n in names}
        out.update(status=np.dtype(np.int8), bad_step=np.dtype(np.int64),
                   regime=np.dtype(f"<U{REGIME_WIDTH}"), regime_reason=np.dtype(f"<U{REASON_WIDTH}"))
        return out

    def bytes_per_cell(self) -> int:
        """Memory of one cell's results (all per-cell variables)."""
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
    """Validate every argument and check the work against the limits, all before allocating
    the grid. ``names`` maps an argument to its name in messages (the CLI's ``--tail``);
    ``defaults`` lists the arguments the user left at their default (a message then says so)."""
    from .backend import BACKENDS
    name = (names or {}).get

    def label(key):
        return name(key, key)

    configs = tuple(_configs(problem_or_alphas, positive_int(label("dim"), dim)))
    steps = positive_int(label("steps"), steps)
    tail = positive_int(label("tail"), tail)
    if tail > steps:
        why = (f", the default of {label('tail')}: pass {label('tail')} with a value up to {steps}"
               if "tail" in defaults else "")
        raise ValueError(f"{label('tail')} must be in [1, {label('steps')}={steps}], got {tail}{why}")
    n_elrs, make_elrs = _elr_spec(elrs, label("elrs"))
    n_seeds, make_seeds = _seed_spec(seeds, label("seeds"))
    constraint = constraint_name(constraint)
    if backend not in BACKENDS:
        raise ValueError(f"{label('backend')} must be one of {BACKENDS}, got {backend!r}")
    dt = _dtype(dtype)
    if not isinstance(lyapunov, (bool, np.bool_)):
        raise ValueError(f"lyapunov must be True or False, got {lyapunov!r}")
    twin = 2 if lyapunov else 1
    _check_work(n_elrs, configs, n_seeds, steps, twin, label)
    elrs, seeds = make_elrs(), make_seeds()
    work = max(p.n_groups * p.dim for p in configs) * steps * twin
    chunks = plan_chunks((elrs.size, len(configs), seeds.size), work, chunk_size, label("chunk_size"))
    return ScanPlan(configs=configs, elrs=elrs, seeds=seeds, steps=steps, tail=tail,
                    constraint=constraint, dtype=dt.name, lyapunov=bool(lyapunov),
                    backend=backend, chunks=chunks)


def _check_work(n_elrs, configs, n_seeds, steps, twin, label) -> None:
    """Refuse a scan beyond `MAX_ELEMENT_STEPS` or `MAX_ELR_CONFIG_PAIRS`, naming what it needs."""
    per_elr_seed = sum(p.n_groups * p.dim for p in configs) * steps * twin
    work = float(n_elrs) * float(n_seeds) * per_elr_seed
    if work > MAX_ELEMENT_STEPS:
        cells = float(n_elrs) * len(configs) * n_seeds
        raise ValueError(
            f"this scan needs {work:.3g} element-steps ({cells:.3g} cells x {steps} steps x n x d"
            f"{' x 2 for the Lyapunov twin' if twin == 2 else ''}), over the limit "
            f"{MAX_ELEMENT_STEPS:.0e} (about {MAX_ELEMENT_STEPS / 2.4e8 / 86400:.0f} days of a "
            f"2-core CPU); scan fewer {label('elrs')}, {label('seeds')} or {label('steps')}, or "
            f"split the scan")
    pairs = float(n_elrs) * len(configs)
    if pairs > MAX_ELR_CONFIG_PAIRS:
        raise ValueError(f"this scan has {pairs:.3g} (ELR, configuration) pairs, over the limit "
                         f"{MAX_ELR_CONFIG_PAIRS:.0e} (the theory's predictions are computed per pair); "
                         f"scan fewer {label('elrs')} or split the scan")


def _machine_memory() -> int | None:
    """Physical memory in bytes (``None`` where the system does not say)."""
    import os
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _gb(x) -> str:
    return f"{x / 1e9:.3g} GB"


def _check_memory(plan: ScanPlan, in_memory: bool, label=lambda k: k, store_hint="store='NAME.zarr'") -> None:
    """Refuse a scan whose result (in memory) or chunk (always) needs more memory than the
    machine has, and a store of more than `MAX_STORE_CHUNKS` chunks."""
    mem = _machine_memory()
    per_cell = plan.bytes_per_cell()
    if in_memory and mem is not None:
        need = plan.n_cells * per_cell + plan.elrs.size * len(plan.configs) * (REGIME_WIDTH * 4 + 8)
        if need > mem:
            raise ValueError(
                f"the result would need {_gb(need)} in memory ({plan.n_cells:.3g} cells x {per_cell} B), "
                f"more than this machine's {_gb(mem)}; write it to a zarr store ({store_hint}: memory "
                f"is then per chunk) or scan fewer cells")
    if mem is not None:
        n, d = (max(p.n_groups for p in plan.configs), max(p.dim for p in plan.configs))
        # a chunk holds its results and, while it runs, a few (n, d) states per trajectory
        cells = int(np.prod(plan.chunks))
        need = cells * (per_cell + 8 * n * d * 4 * (2 if plan.lyapunov else 1))
        if need > mem:
            raise ValueError(f"a chunk of {cells} cells would need {_gb(need)}, more than this "
                             f"machine's {_gb(mem)}; pass a smaller {label('chunk_size')}")
    if not in_memory and plan.n_chunks > MAX_STORE_CHUNKS:
        least = -(-plan.n_cells // MAX_STORE_CHUNKS)
        raise ValueError(f"the store would hold {plan.n_chunks} chunks, over the limit "
                         f"{MAX_STORE_CHUNKS:.0e} (one completion marker file each); pass a "
                         f"{label('chunk_size')} of at least {least} cells")


# -- one chunk: the pure function every executor runs ------------------------------------------------
@dataclass(frozen=True)
class ChunkTask:
    """A chunk described by value (picklable): what `compute_chunk` needs and nothing else."""

    chunk_id: int
    configs: tuple
    elrs: np.ndarray
    seeds: np.ndarray
    steps: int
    tail: int
    constraint: str
    dtype: str
    lyapunov: bool
    backend: str


def compute_chunk(task: ChunkTask) -> dict:
    """Summaries of every cell of one chunk, arrays of shape ``(ce, cc, cs)``.

    Configurations of equal shape share one `toymodel.backend.summarize` call (the toy's
    curvatures go per trajectory); the initial states come from the seeds alone
    (`toymodel.dynamics.initial_states`), so a cell's inputs never depend on the chunking.
    Returns the per-cell variables plus ``"_backend"`` (the backend that ran).
    """
    from . import backend as _backend

    dt = np.dtype(task.dtype)
    ce, cc, cs = task.elrs.size, len(task.configs), task.seeds.size
    names = [n for n in dynamics.SUMMARY_NAMES if task.lyapunov or n != "lyapunov"]
    out = {n: np.full((ce, cc, cs), np.nan, dt) for n in names}
    out["status"] = np.zeros((ce, cc, cs), np.int8)
    out["bad_step"] = np.full((ce, cc, cs), -1, np.int64)
    groups: dict = {}
    for j, p in enumerate(task.configs):
        groups.setdefault(_problem_key(p), []).append(j)
    used = set()
    for members in groups.values():
        rep = task.configs[members[0]]
        g = len(members)
        init = [dynamics.initial_states(task.configs[j], task.seeds, task.constraint,
                                        twin=task.lyapunov) for j in members]
        states = np.stack([s[0] if task.lyapunov else s for s in init])  # (g, cs, n, d)
        n, d = states.shape[-2:]
        theta0 = np.ascontiguousarray(np.broadcast_to(states[None], (ce, g, cs, n, d)).reshape(-1, n, d),
                                        dtype=dt)
        twin = None
        if task.lyapunov:
            dirs = np.stack([s[1] for s in init])
            twin = np.ascontiguousarray(np.broadcast_to(dirs[None], (ce, g, cs, n, d)).reshape(-1, n, d),
                                        dtype=dt)
        elr = np.ascontiguousarray(np.broadcast_to(task.elrs[:, None, None], (ce, g, cs)).reshape(-1),
                                   dtype=np.float64)
        alphas = None
        if isinstance(rep, SphereToy):
            a = np.stack([task.configs[j].alphas for j in members])  # (g, n)
            alphas = np.ascontiguousarray(np.broadcast_to(a[None, :, None, :], (ce, g, cs, n)).reshape(-1, n),
                                          dtype=dt)
        used.add(_backend.resolve(task.backend, theta0, problem=rep))
        res = _backend.summarize(rep, theta0, elr, steps=task.steps, tail=task.tail,
                                 constraint=task.constraint, alphas=alphas, twin_dirs=twin,
                                 backend=task.backend)
        for name in names + ["status", "bad_step"]:
            vals = np.asarray(res[name]).reshape(ce, g, cs)
            out[name][:, members, :] = vals.astype(out[name].dtype, copy=False)
    rand = np.array([p.random_loss() for p in task.configs])[None, :, None]
    labels, reasons = regimes.classify_summary(out["tail_loss"], rand,
                                               invalid_reason=dynamics.status_reasons(out["status"]),
                                               tail_angle=out["tail_angle"], tail_steps=task.tail)
    out["regime"] = labels.astype(f"<U{REGIME_WIDTH}")
    out["regime_reason"] = np.array([r[:REASON_WIDTH] for r in reasons.ravel()],
                                    dtype=f"<U{REASON_WIDTH}").reshape(reasons.shape)
    out["_backend"] = ",".join(sorted(used))
    return out


# -- the dataset ----------------------------------------------------------------------------------
def _static_vars(plan: ScanPlan) -> dict:
    """Per-config and per-(elr, config) variables: inputs and the theory's predictions."""
    C = len(plan.configs)
    G = max(p.alphas.size for p in plan.configs)
    alphas = np.full((C, G), np.nan)
    for j, p in enumerate(plan.configs):
        alphas[j, :p.alphas.size] = p.alphas
    E = plan.elrs.size
    eq = np.full((E, C), np.nan)
    pred = np.empty((E, C), dtype=f"<U{REGIME_WIDTH}")
    for j, p in enumerate(plan.configs):
        for i, elr in enumerate(plan.elrs):
            pred[i, j] = theory.predict_regime(elr, p.alphas, plan.constraint)
            if isinstance(p, SphereToy) and plan.constraint == "total":
                eq[i, j] = theory.equilibrium_loss(elr, p.alphas)
    return {
        "alphas": (("config", "group"), alphas,
                   {"long_name": "curvatures alpha_i (NaN-padded to the largest group count)"}),
        "n_groups": (("config",), np.array([p.n_groups for p in plan.configs], np.int64), {}),
        "dim": (("config",), np.array([p.dim for p in plan.configs], np.int64), {}),
        "problem": (("config",), np.array([p.kind for p in plan.configs], dtype="<U16"), {}),
        "random_loss": (("config",), np.array([p.random_loss() for p in plan.configs]),
                        {"long_name": "random level: loss of a scrambled direction"}),
        "total_threshold": (("config",), np.array([theory.total_threshold(p.alphas) for p in plan.configs]),
                            {"long_name": "1/sum(alpha) (T10, T12)"}),
        "divergence_threshold": (("config",),
                                 np.array([theory.divergence_threshold(p.alphas) for p in plan.configs]),
                                 {"long_name": "1/min(alpha) (T10)"}),
        "equilibrium_loss": (("elr", "config"), eq,
                             {"long_name": "(sum(alpha) - 1/elr)/2 above 1/sum(alpha), else 0 (T12; "
                                           "toy, total constraint; NaN otherwise)"}),
        "predicted_regime": (("elr", "config"), pred, {"long_name": "theory.predict_regime (T10, T12)"}),
    }


def _attrs(plan: ScanPlan) -> dict:
    from . import __version__
    return {
        "title": "toymodel fixed-ELR phase-diagram scan",
        "toymodel_version": __version__,
        "backend_requested": plan.backend,
        "backend": "",
        "dtype": plan.dtype,
        "seeds": json.dumps(plan.seeds.tolist()),
        "steps": plan.steps,
        "tail": plan.tail,
        "constraint": plan.constraint,
        "lyapunov": int(plan.lyapunov),
        "radius": 1.0,
        "problems": json.dumps([_problem_record(p) for p in plan.configs]),
        "classifier": json.dumps({"conv_rtol": regimes.CONV_RTOL, "div_frac": regimes.DIV_FRAC,
                                  "min_tail_rotation": regimes.MIN_TAIL_ROTATION,
                                  "random_level": "problem.random_loss()"}),
        "chunks": json.dumps(list(plan.chunks)),
        "plan_hash": plan.digest(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def template(plan: ScanPlan, lazy: bool = True):
    """The scan's ``xarray.Dataset`` before any cell is computed: per-cell variables hold their fill
    values (a zero-memory broadcast when ``lazy``), coordinates, predictions and attrs are final."""
    import xarray as xr

    shape = plan.shape
    fills = {np.dtype(np.int8): 0, np.dtype(np.int64): -1}
    data = {}
    for name, dt in plan.cell_vars().items():
        fill = np.array(np.nan if dt.kind == "f" else ("" if dt.kind == "U" else fills[dt]), dtype=dt)
        arr = np.broadcast_to(fill, shape) if lazy else np.full(shape, fill, dtype=dt)
        data[name] = (CELL_DIMS, arr)
    for name, (dims, arr, attrs) in _static_vars(plan).items():
        data[name] = (dims, arr, attrs)
    ds = xr.Dataset(data, coords={"elr": plan.elrs, "config": np.arange(len(plan.configs)),
                                  "seed": plan.seeds,
                                  "group": np.arange(max(p.alphas.size for p in plan.configs))})
    ds["status"].attrs["flag_meanings"] = json.dumps({"0": "ok", **{str(k): v for k, v in
                                                                   dynamics.INVALID_REASONS.items()}})
    ds.attrs.update(_attrs(plan))
    return ds


# -- the public entry point ---------------------------------------------------------------------------
def scan(problem_or_alphas, elrs, seeds=4, steps=20000, tail=2000, constraint="total",
         backend="auto", dtype="float64", store=None, lyapunov=False, client=None,
         chunk_size=None, progress_bar=True, dim=2, *, _after_chunk=None, _after_write=None):
    r"""Run every cell of the grid ELR × configuration × seed and return an ``xarray.Dataset``.

    Parameters
    ----------
    problem_or_alphas
        A problem, a curvature sequence (a `SphereToy` of dimension ``dim``),
        or a list of them (the ``config`` dimension). Configurations of different shapes are
        run in separate kernel calls.
    elrs
        ELRs $\tilde\eta$ (T3): a sequence, ``"a:b:N"`` (N log-spaced) or ``"x,y,z"``.
    seeds
        A count ``N`` (seeds ``0..N-1``) or a sequence of distinct non-negative integers;
        the initial state depends on the seed, the problem's shape and the constraint only.
    steps, tail
        Steps per trajectory and the tail window the summaries average over.
    constraint
        ``"total"`` or ``"individual"`` (T7).
    backend
        Passed unchanged to `toymodel.backend.summarize`.
    dtype
        ``"float64"`` or ``"float32"``: the computing dtype.
    store
        Path of a zarr store (``"scan.zarr"``): chunks are written as they finish and the same
        call resumes an interrupted scan (see `toymodel._store`); a store made with other
        parameters, or being written by another live process, raises ``ValueError``; a finished
        chunk whose files no longer match its completion marker (deleted, truncated, altered) is
        recomputed, with a ``RepairWarning``. The returned dataset then reads lazily from the store.
    lyapunov
        Also estimate the largest Lyapunov exponent (a twin trajectory per cell).
    client
        ``None`` (in-process), a ``dask.distributed.Client`` or a scheduler address
        ``"tcp://host:port"``: chunks run on the Dask workers, the results are written here.
    chunk_size
        Cells per chunk (int) or ``(elr, config, seed)`` sizes; default from the work
        per cell (`plan_chunks`).
    progress_bar
        Show cells done / total (a resumed scan starts at the cells already done).

    Bad input, and a scan beyond the limits (`MAX_ELEMENT_STEPS`, the machine's memory for an
    in-memory result or for one chunk, `MAX_STORE_CHUNKS`), raise ``ValueError`` before any work,
    with the number the scan would need (docs/reliability.md).

    Returns
    -------
    xarray.Dataset
        Dims ``(elr, config, seed)``; per-cell ``tail_loss``, ``tail_loss_std``,
        ``final_loss``, ``min_share``, ``frac_above_threshold``, ``tail_grad_norm``, ``tail_angle``
        (``lyapunov``), ``status``, ``bad_step``, ``regime``, ``regime_reason``; per configuration
        ``alphas`` (dim ``group``), ``random_loss``, ``total_threshold``, ``divergence_threshold``;
        per (elr, config) ``equilibrium_loss`` and ``predicted_regime``; provenance in attrs.
    """
    plan = _plan(problem_or_alphas, elrs, seeds, steps, tail, constraint, backend, dtype,
                 lyapunov, chunk_size, dim)
    return _run(plan, store=store, client=client, progress_bar=progress_bar,
                after_chunk=_after_chunk, after_write=_after_write)


def _run(plan, store=None, client=None, progress_bar=True, after_chunk=None, after_write=None,
         names=None):
    """Run a validated plan: check its memory, connect to the cluster, open (and check) the store,
    compute the chunks not yet done, finish. Everything that can be refused is refused before the
    first chunk is computed.

    ``after_chunk(chunk_id, chunks_done)`` is called after each chunk is committed and
    ``after_write(chunk_id, variable)`` after each variable of a chunk is written to the store:
    the fault-injection tests stop or kill the process there. ``names`` as in `_plan`.
    """
    def label(key):
        return (names or {}).get(key, key)

    _check_memory(plan, in_memory=store is None, label=label,
                  store_hint=(names or {}).get("store", "store='NAME.zarr'"))
    owned = False
    if client is not None:  # connect first: an unreachable scheduler is refused before any work
        from .distributed import connect
        client, owned = connect(client)
    try:
        if store is None:
            sink = _MemorySink(template(plan, lazy=False), plan)
            todo = list(range(plan.n_chunks))
        else:
            from ._store import ScanStore
            sink = ScanStore.open_or_create(store, plan, lambda: template(plan, lazy=True),
                                            on_write=after_write)
        try:
            if store is not None:
                todo = _trusted_todo(sink, plan)
            return _compute(plan, sink, todo, client, progress_bar, after_chunk)
        finally:
            sink.close()
    finally:
        if owned:
            client.close()


def _trusted_todo(sink, plan) -> list:
    """The chunks to compute: those without a marker, and those whose files no longer match it
    (deleted, truncated, altered), which are discarded first with a `RepairWarning`."""
    import warnings

    from ._store import RepairWarning, describe_damage

    done, damage = sink.check(full=True)
    if damage:
        warnings.warn(RepairWarning(f"{sink.path}: {describe_damage(damage)}; recomputing "
                                    f"{'it' if len(damage) == 1 else f'these {len(damage)} chunks'}"),
                      stacklevel=3)
        sink.discard([c for c, _ in damage])
    todo = [c for c in range(plan.n_chunks) if c not in done]
    if todo:
        sink.mark_incomplete()
    return todo


def _compute(plan, sink, todo, client, progress_bar, after_chunk):
    """Compute ``todo`` (in process or on ``client``), committing each chunk to ``sink``."""
    done_cells = plan.n_cells - sum(_cells(plan, c) for c in todo)
    # the bar starts at the cells already done; its rate (and ETA) counts the new work only
    with progress(total=plan.n_cells, desc="scan cells", disable=not progress_bar,
                  initial=done_cells) as bar:
        counter = [plan.n_chunks - len(todo)]

        def commit(chunk_id, result):
            sink.write(chunk_id, plan.region(chunk_id), result)
            bar.update(_cells(plan, chunk_id))
            counter[0] += 1
            if after_chunk is not None:
                after_chunk(chunk_id, counter[0])

        tasks = ((c, plan.task(c)) for c in todo)
        if client is None:
            for c, task in tasks:
                commit(c, compute_chunk(task))
        else:
            from .distributed import run_chunks
            run_chunks(client, compute_chunk, tasks, commit)
    return sink.finish()


def _cells(plan, chunk_id) -> int:
    return int(np.prod([s.stop - s.start for s in plan.region(chunk_id)]))


class _MemorySink:
    """Writes chunk results into an in-memory dataset (``store=None``)."""

    def __init__(self, ds, plan):
        self.ds, self.plan, self.backends = ds, plan, set()

    def write(self, chunk_id, region, result):
        for name in self.plan.cell_vars():
            self.ds[name].values[region] = result[name]
        self.backends.update(b for b in result["_backend"].split(",") if b)

    def finish(self):
        self.ds.attrs["backend"] = ",".join(sorted(self.backends))
        return self.ds

    def close(self):
        pass


# -- comparing labels with the theory -------------------------------------------------------------------
class Agreement(float):
    """The fraction `agreement` returns (a ``float``), with the counts behind it: ``compared``
    cells, and the cells left out: ``unresolved``, ``invalid`` and ``in_window``."""

    def __new__(cls, value, compared=0, unresolved=0, invalid=0, in_window=0):
        obj = super().__new__(cls, value)
        obj.compared, obj.unresolved, obj.invalid, obj.in_window = compared, unresolved, invalid, in_window
        return obj

    @property
    def left_out(self) -> int:
        return self.unresolved + self.invalid + self.in_window

    def __repr__(self):
        return (f"Agreement({float(self):.6g}, compared={self.compared}, unresolved={self.unresolved}, "
                f"invalid={self.invalid}, in_window={self.in_window})")


def agreement(ds, window: float = 0.0, by_config: bool = False):
    r"""Fraction of the judged cells whose observed ``regime`` equals ``predicted_regime``.

    Left out, and counted: cells labelled ``"unresolved"`` (they moved too little over the tail
    for the classifier to judge, `toymodel.regimes.classify_summary`) or ``"invalid"`` (the
    kernel could not compute them), and cells within the relative ``window`` of the convergence
    boundary, where convergence is slow and a finite run cannot decide:
    $|\tilde\eta/\tilde\eta_c-1|\le$ ``window`` with $\tilde\eta_c=1/\sum\alpha_i$ under the total
    constraint (T12) and $1/(n\max\alpha_i)$, the first step of the staircase, under the individual
    one (§3). Returns an `Agreement` (a float with the counts ``compared``, ``unresolved``,
    ``invalid``, ``in_window``), or with ``by_config=True`` a DataArray over ``config`` with
    those counts as coordinates (NaN where no cell is compared).
    """
    window = float(window)
    if not (0.0 <= window < 1.0):
        raise ValueError(f"window must be in [0, 1), got {window!r}")
    regime = ds["regime"]
    match = regime == ds["predicted_regime"]
    unresolved = regime == regimes.UNRESOLVED
    invalid = regime == regimes.INVALID
    near = (abs(ds["elr"] / convergence_boundary(ds) - 1.0) <= window).broadcast_like(match)
    keep = ~unresolved & ~invalid & ~near
    cell = ("elr", "seed")
    num = (match & keep).sum(cell)
    den = keep.sum(cell)
    counts = {"compared": den, "unresolved": (unresolved & ~near).sum(cell),
              "invalid": (invalid & ~near & ~unresolved).sum(cell), "in_window": near.sum(cell)}
    if by_config:
        frac = (num / den.where(den > 0))
        return frac.assign_coords({k: v.astype(np.int64) for k, v in counts.items()})
    total = int(den.sum())
    totals = {k: int(v.sum()) for k, v in counts.items()}
    if total == 0:
        raise ValueError(f"no cell left to compare (window={window}: {totals['in_window']} cells "
                         f"within the window, {totals['unresolved']} unresolved, "
                         f"{totals['invalid']} invalid)")
    return Agreement(float(num.sum()) / total, **totals)


def convergence_boundary(ds):
    r"""Per configuration, the ELR where the theory's convergence stops: $1/\sum\alpha_i$
    (total constraint, T12) or $1/(n\max\alpha_i)$ (individual constraint, §3)."""
    if ds.attrs.get("constraint", "total") == "individual":
        return 1.0 / (ds["n_groups"] * ds["alphas"].max("group"))
    return ds["total_threshold"]


def open_scan(path, allow_incomplete: bool = False):
    """Open a scan store written by `scan` (lazy ``xarray.Dataset``); an unfinished store
    raises ``ValueError`` unless ``allow_incomplete``, and a damaged one (a chunk file missing or
    of the wrong size) raises ``ValueError`` naming the chunks, whatever ``allow_incomplete``:
    re-running the scan recomputes them."""
    from ._store import open_store
    return open_store(path, allow_incomplete=allow_incomplete)


def verify_scan(path) -> dict:
    """Check every finished chunk of a scan store against the size and sha256 its completion
    marker records: ``{"path", "n_chunks", "done", "damage"}``, ``damage`` a list of
    ``(chunk_id, what)`` (empty for an intact store)."""
    from ._store import verify_store
    return verify_store(path)


# -- the phase-diagram figure ---------------------------------------------------------------------------
_REGIME_Y = {"convergence": 0, "chaotic_equilibrium": 1, "divergence": 2, regimes.UNRESOLVED: 3,
             regimes.INVALID: 4}
_REGIME_COLOR = {"convergence": "tab:blue", "chaotic_equilibrium": "tab:orange",
                 "divergence": "tab:red", regimes.UNRESOLVED: "tab:gray", regimes.INVALID: "black"}
#: the most pixels a phase-diagram image may have (`figure_pixels`).
MAX_PIXELS = 10**8


def _figure_size(n_configs: int) -> tuple:
    """Inches of the phase diagram: one 5.2 x 6.4 column per configuration."""
    return (5.2 * n_configs, 6.4)


def figure_pixels(n_configs: int, dpi, name: str = "dpi") -> tuple:
    """``(width, height)`` in pixels of `plot_scan` for ``n_configs`` columns saved at ``dpi``;
    ``ValueError`` beyond `MAX_PIXELS` or for a non-positive ``dpi``."""
    dpi = positive_int(name, dpi)
    w, h = (round(x * dpi) for x in _figure_size(n_configs))
    if w * h > MAX_PIXELS:
        best = int((MAX_PIXELS / np.prod(_figure_size(n_configs))) ** 0.5)
        raise ValueError(f"{name} {dpi} would draw a {w} x {h} pixel image ({w * h:.3g} pixels, over "
                         f"the limit {MAX_PIXELS:.0e}); use {name} {best} or less")
    return w, h


def plot_scan(ds, configs=None):
    r"""The phase diagram of a scan: one column per configuration.

    Top: tail loss / random level against the ELR (log x), one dot per seed coloured by the
    observed regime, with the equilibrium curve $L^*/L_{rand}=(\sum\alpha-1/\tilde\eta)/(2L_{rand})$
    (T12). Bottom: observed regime per seed (dots) against ``predicted_regime`` (line). Dashed
    verticals: $1/\sum\alpha_i$ (T10, T12) and $1/\min\alpha_i$ (T10). Returns the figure.
    """
    import matplotlib.pyplot as plt

    configs = list(range(ds.sizes["config"])) if configs is None else list(configs)
    for j in configs:
        if not (isinstance(j, numbers.Integral) and 0 <= j < ds.sizes["config"]):
            raise ValueError(f"configs must be indices in [0, {ds.sizes['config'] - 1}], got {j!r}")
    fig, axes = plt.subplots(2, len(configs), figsize=_figure_size(len(configs)), squeeze=False,
                             sharex="col", gridspec_kw={"height_ratios": [3, 2]})
    elr = ds["elr"].values
    for col, j in enumerate(configs):
        sub = ds.isel(config=j)
        rand = float(sub["random_loss"])
        ratio = sub["tail_loss"].values / rand
        labels = sub["regime"].values.astype(str)
        top, bot = axes[0, col], axes[1, col]
        for name, color in _REGIME_COLOR.items():
            m = labels == name
            if m.any():
                ee = np.broadcast_to(elr[:, None], labels.shape)[m]
                top.scatter(ee, np.where(np.isfinite(ratio[m]), ratio[m], 1.0), s=6, color=color,
                            label=name.replace("_", " "), zorder=3)
                bot.scatter(ee, np.full(ee.shape, _REGIME_Y[name]), s=6, color=color, zorder=3)
        eq = sub["equilibrium_loss"].values
        if np.isfinite(eq).any():
            top.plot(elr, eq / rand, color="k", lw=0.8, zorder=4,
                     label=r"theory $(\sum\alpha-1/\tilde\eta)/2$ (T12)")
        top.axhline(regimes.DIV_FRAC, color="tab:red", lw=0.6, ls="-.", zorder=1,
                    label=f"classifier: divergence at {regimes.DIV_FRAC:g} x random")
        pred = np.array([_REGIME_Y[str(p)] for p in sub["predicted_regime"].values])
        bot.step(elr, pred, where="mid", color="k", lw=1.2, label="predicted (T10, T12)")
        for ax in (top, bot):
            ax.set_xscale("log")
            for thr, style, text in ((float(sub["total_threshold"]), "--", r"$1/\sum\alpha$"),
                                     (float(sub["divergence_threshold"]), ":", r"$1/\min\alpha$")):
                ax.axvline(thr, color="gray", ls=style, lw=1)
                if ax is top:
                    ax.text(thr * 1.06, 0.5, text, ha="left", va="center", fontsize=8,
                            color="gray", transform=ax.get_xaxis_transform())
        alphas = sub["alphas"].values
        alphas = alphas[np.isfinite(alphas)]
        top.set_title(f"config {int(sub['config'])}: {sub['problem'].item()} "
                      f"alphas={np.array2string(alphas, precision=3, separator=',')}", fontsize=9)
        top.set_ylabel("tail loss / random level")
        top.set_ylim(-0.03, 1.1)
        bot.set_yticks(list(_REGIME_Y.values()),
                       ["convergence", "equilibrium", "divergence", "unresolved", "invalid"])
        bot.set_ylim(-0.5, 4.5)
        bot.set_xlabel(r"ELR $\tilde\eta$")
        if col == 0:
            top.legend(fontsize=7, loc="upper left")
            bot.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"fixed-ELR scan: {ds.attrs.get('steps')} steps, tail {ds.attrs.get('tail')}, "
                 f"{ds.attrs.get('constraint')} constraint, backend {ds.attrs.get('backend')}",
                 fontsize=10)
    fig.tight_layout()
    return fig
