"""One chunk of a scan, computed with NumPy arrays only: the pure function every executor runs.

Owns `CellSpec` (how every cell of a scan runs: steps, tail, constraint, dtype, Lyapunov twin,
backend; validated once, at construction), `ChunkTask` (a chunk described by value, picklable)
and `compute_chunk` (its summaries). No xarray, no store, no cluster here: the same task gives
the same bits in-process, on a Dask worker and after a resume (`toymodel.scan`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import InitVar, dataclass

import numpy as np

from . import dynamics, regimes
from ._validate import constraint_name, positive_int, tail_within
from .problems import SphereToy

#: the stored fill of every per-cell integer variable: what a cell not computed yet holds (floats: NaN).
FILLS = {"status": 0, "bad_step": -1, "regime": regimes.NOT_COMPUTED}


def _dtype(dtype, name: str = "dtype") -> np.dtype:
    # np.dtype(None) is float64, and a dtype compares equal to anything np.dtype() accepts: so
    # compare names, and only of a real dtype
    try:
        dt = None if dtype is None else np.dtype(dtype)
    except (TypeError, ValueError):
        dt = None
    if dt is None or dt.name not in ("float64", "float32"):
        raise ValueError(f"{name} must be 'float64' or 'float32', got {dtype!r}")
    return dt


@dataclass(frozen=True)
class CellSpec:
    r"""How every cell (one trajectory) of a scan runs, validated once at construction and then
    passed whole: to the plan, to every `ChunkTask`, into the store's manifest.

    ``steps`` per trajectory and the ``tail`` window the summaries average over ($1\le$ tail
    $\le$ steps); ``constraint`` ``"total"`` or ``"individual"`` (T7); ``dtype`` the computing
    dtype, ``"float64"`` or ``"float32"``; ``lyapunov``: also run the twin trajectory;
    ``backend``: the requested name, given unchanged to `toymodel.backend.summarize`.

    ``names`` (the CLI's option names, e.g. ``{"tail": "--tail"}``) and ``defaults`` (the
    arguments the user left at their default) only shape the messages; they are not stored.
    """

    steps: int
    tail: int
    constraint: str
    dtype: str
    lyapunov: bool
    backend: str
    names: InitVar[dict | None] = None
    defaults: InitVar[tuple] = ()

    def __post_init__(self, names, defaults):
        from .backend import BACKENDS

        label = (names or {}).get

        def put(field, value):  # the dataclass is frozen: store the checked values once, here
            object.__setattr__(self, field, value)

        steps = positive_int(label("steps", "steps"), self.steps)
        put("steps", steps)
        put("tail", tail_within(self.tail, steps, name=label("tail", "tail"),
                                steps_name=label("steps", "steps"), default="tail" in defaults))
        put("constraint", constraint_name(self.constraint))
        if self.backend not in BACKENDS:
            raise ValueError(f"{label('backend', 'backend')} must be one of {BACKENDS}, "
                             f"got {self.backend!r}")
        put("dtype", _dtype(self.dtype).name)
        if not isinstance(self.lyapunov, (bool, np.bool_)):
            raise ValueError(f"lyapunov must be True or False, got {self.lyapunov!r}")
        put("lyapunov", bool(self.lyapunov))

    @property
    def twin(self) -> int:
        """Trajectories per cell: 2 with the Lyapunov twin, else 1."""
        return 2 if self.lyapunov else 1

    @property
    def summaries(self) -> list:
        """The summaries stored per cell (`toymodel.dynamics.SUMMARY_NAMES`, ``lyapunov`` only
        with the twin)."""
        return [n for n in dynamics.SUMMARY_NAMES if self.lyapunov or n != "lyapunov"]

    def cell_vars(self) -> dict:
        """Per-cell variables -> dtype, in write order: the summaries, ``status``, ``bad_step`` and
        ``regime`` (int8 codes of `toymodel.regimes.REGIME_CODES`). No strings: the labels and
        the reasons are derived on demand (`toymodel.scan.decode_regime`, `regime_reason`)."""
        dt = np.dtype(self.dtype)
        out = {n: dt for n in self.summaries}
        out.update(status=np.dtype(np.int8), bad_step=np.dtype(np.int64), regime=np.dtype(np.int8))
        return out

    def params(self) -> dict:
        """The fields as JSON values (the store's manifest, the plan's hash)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ChunkTask:
    """A chunk described by value (picklable): what `compute_chunk` needs and nothing else."""

    chunk_id: int
    configs: tuple
    elrs: np.ndarray
    seeds: np.ndarray
    spec: CellSpec


def _problem_key(p) -> tuple:
    """Configurations that can share one kernel call: toys of equal (n, d); a Rayleigh toy alone."""
    if isinstance(p, SphereToy):
        return ("sphere_toy", p.n_groups, p.dim)
    return ("single", id(p))


#: the initial states of the last chunks, by (n, d, constraint, twin, seeds): they depend on these
#: alone (`toymodel.dynamics.initial_states`), every chunk of a row of ELRs has the same seeds, and
#: each seed costs ~20 us of Python (its own generator): a pure cache, small entries only.
_INITIAL: dict = {}
_INITIAL_ENTRIES, _INITIAL_MAX_BYTES = 4, 16 << 20


def _initial_states(problem, seeds, constraint: str, twin: bool):
    """`toymodel.dynamics.initial_states`, read-only, from `_INITIAL` when a chunk before had them."""
    seeds = np.asarray(seeds)
    key = (problem.n_groups, problem.dim, constraint, twin, seeds.dtype.str, seeds.tobytes())
    hit = _INITIAL.get(key)
    if hit is None:
        hit = dynamics.initial_states(problem, seeds, constraint, twin=twin)
        for a in (hit if twin else (hit,)):
            a.flags.writeable = False
        if sum(a.nbytes for a in (hit if twin else (hit,))) <= _INITIAL_MAX_BYTES:
            while len(_INITIAL) >= _INITIAL_ENTRIES:
                _INITIAL.pop(next(iter(_INITIAL)), None)
            _INITIAL[key] = hit
    return hit


def compute_chunk(task: ChunkTask) -> dict:
    """Summaries of every cell of one chunk, arrays of shape ``(ce, cc, cs)``.

    Configurations of equal shape share one `toymodel.backend.summarize` call (the toy's
    curvatures go per trajectory); the initial states come from the seeds alone
    (`toymodel.dynamics.initial_states`), so a cell's inputs never depend on the chunking.
    Returns the per-cell variables plus ``"_backend"`` (the backends that ran); ``regime`` holds
    `toymodel.regimes.classify_codes` of the summaries (invalid where ``status != 0``).
    """
    from . import backend as _backend

    spec = task.spec
    dt = np.dtype(spec.dtype)
    ce, cc, cs = task.elrs.size, len(task.configs), task.seeds.size
    names = spec.summaries
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
        init = [_initial_states(task.configs[j], task.seeds, spec.constraint, spec.lyapunov)
                for j in members]
        states = np.stack([s[0] if spec.lyapunov else s for s in init])  # (g, cs, n, d)
        n, d = states.shape[-2:]
        theta0 = np.ascontiguousarray(np.broadcast_to(states[None], (ce, g, cs, n, d)).reshape(-1, n, d),
                                      dtype=dt)
        twin = None
        if spec.lyapunov:
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
        res = _backend.summarize(rep, theta0, elr, steps=spec.steps, tail=spec.tail,
                                 constraint=spec.constraint, alphas=alphas, twin_dirs=twin,
                                 backend=spec.backend)
        used.add(res["backend"])  # the backend that ran (summarize resolved the name once)
        for name in names + ["status", "bad_step"]:
            vals = np.asarray(res[name]).reshape(ce, g, cs)
            out[name][:, members, :] = vals.astype(out[name].dtype, copy=False)
    # whole-array labelling, no per-cell Python: the reasons are derived from these on demand
    rand = np.array([p.random_loss() for p in task.configs])[None, :, None]
    out["regime"] = regimes.classify_codes(out["tail_loss"], rand, invalid=out["status"] != 0,
                                           tail_angle=out["tail_angle"], tail_steps=spec.tail)
    out["_backend"] = ",".join(sorted(used))
    return out
