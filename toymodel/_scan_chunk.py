"""One chunk of a scan, computed with NumPy arrays only: the pure function every executor runs.

Owns `CellSpec` (how every cell of a scan runs: mode, steps, tail, constraint, dtype, Lyapunov
twin, backend, the optimizer's settings; validated once, at construction), `ChunkTask` (a chunk
described by value, picklable) and `compute_chunk` (its summaries, for every mode of
`toymodel._scan_modes`). No xarray, no store, no cluster here: the same task gives
the same bits in-process, on a Dask worker and after a resume (`toymodel.scan`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import InitVar, dataclass

import numpy as np

from . import dynamics, periodic, regimes
from ._momentum_batch import EXTRA_SUMMARY_NAMES as MOMENTUM_EXTRA
from ._momentum_batch import converged as _converged
from ._momentum_checks import check_mode, check_momentum
from ._scan_modes import MODES
from ._validate import constraint_name, positive_finite, positive_int, tail_within
from .conventional import SUMMARY_NAMES as WD_SUMMARY_NAMES
from .problems import SphereToy

#: the stored fill of every per-cell integer variable: what a cell not computed yet holds (floats: NaN).
#: -1 of the spike steps and counts is also "no spike"; ``regime`` -1 tells a cell not computed.
FILLS = {"status": 0, "bad_step": -1, "regime": regimes.NOT_COMPUTED, "converged": -1,
         "converged_exactly": -1, "n_spikes": -1, "first_spike": -1, "last_spike": -1,
         "group_n_spikes": -1, "group_converged_exactly": -1}
#: the integer summaries of the weight-decay mode (`toymodel.conventional.summarize_wd_batch`).
_WD_INTS = ("n_spikes", "first_spike", "last_spike")
#: per-cell variables of the weight-decay mode with a trailing ``group`` dimension.
WD_GROUP_VARS = ("group_tail_loss", "group_n_spikes", "group_period", "group_converged_exactly")
_INVALID = regimes.REGIME_CODES[regimes.INVALID]
#: the optimizer's settings: CellSpec fields that exist for the momentum mode only.
_MOMENTUM_FIELDS = ("momentum_mode", "optimizer", "beta2", "eps")


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
    $\le$ steps); ``constraint`` ``"total"`` or ``"individual"`` (T7), ``"none"`` in the
    ``"wd"`` mode (no projection); ``dtype`` the computing dtype, ``"float64"`` or ``"float32"``;
    ``lyapunov``: also run the twin trajectory (``"elr"`` mode only); ``backend``: the requested
    name, given unchanged to `toymodel.backend`; ``mode`` one of `toymodel._scan_modes.MODES`;
    ``momentum_mode``, ``optimizer``, ``beta2``, ``eps``: the optimizer of the ``"momentum"`` mode
    (`toymodel.backend.summarize_momentum`).

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
    mode: str = "elr"
    momentum_mode: str = "official"
    optimizer: str = "heavy_ball"
    beta2: float = 0.999
    eps: float = 1e-3

    def __post_init__(self, names, defaults):
        from .backend import BACKENDS

        label = (names or {}).get

        def put(field, value):  # the dataclass is frozen: store the checked values once, here
            object.__setattr__(self, field, value)

        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        steps = positive_int(label("steps", "steps"), self.steps)
        put("steps", steps)
        put("tail", tail_within(self.tail, steps, name=label("tail", "tail"),
                                steps_name=label("steps", "steps"), default="tail" in defaults))
        if self.mode == "wd":
            if self.constraint != "none":
                raise ValueError(f"the weight-decay mode runs without a constraint ('none'), got "
                                 f"constraint={self.constraint!r}")
        else:
            put("constraint", constraint_name(self.constraint))
        if self.backend not in BACKENDS:
            raise ValueError(f"{label('backend', 'backend')} must be one of {BACKENDS}, "
                             f"got {self.backend!r}")
        put("dtype", _dtype(self.dtype).name)
        if not isinstance(self.lyapunov, (bool, np.bool_)):
            raise ValueError(f"lyapunov must be True or False, got {self.lyapunov!r}")
        put("lyapunov", bool(self.lyapunov))
        if self.lyapunov and self.mode != "elr":
            raise ValueError(f"{label('lyapunov', 'lyapunov=True')} is not available in the "
                             f"{self.mode!r} mode: the "
                             f"Lyapunov twin exists for fixed-ELR projected GD only (the optimizer "
                             f"state would need a twin too); drop lyapunov")
        put("momentum_mode", check_mode(self.momentum_mode, label("momentum_mode", "momentum_mode")))
        if self.optimizer not in ("heavy_ball", "adam"):
            raise ValueError(f"{label('optimizer', 'optimizer')} must be one of ('heavy_ball', "
                             f"'adam'), got {self.optimizer!r}")
        put("beta2", check_momentum(self.beta2, label("beta2", "beta2")))
        put("eps", positive_finite(label("eps", "eps"), self.eps))

    @property
    def twin(self) -> int:
        """Trajectories per cell: 2 with the Lyapunov twin, else 1."""
        return 2 if self.lyapunov else 1

    @property
    def summaries(self) -> list:
        """The floating summaries stored per cell: `toymodel.dynamics.SUMMARY_NAMES` (``lyapunov``
        only with the twin; never with momentum) and, with momentum, ``tail_radial``,
        ``final_stability``, ``hit_step`` (`toymodel.momentum.summarize_momentum_batch`); in the
        weight-decay mode the float summaries of `toymodel.conventional.SUMMARY_NAMES`."""
        if self.mode == "wd":
            return [n for n in WD_SUMMARY_NAMES if n not in _WD_INTS]
        base = [n for n in dynamics.SUMMARY_NAMES if self.lyapunov or n != "lyapunov"]
        return base + list(MOMENTUM_EXTRA) if self.mode == "momentum" else base

    def cell_vars(self) -> dict:
        """Per-cell variables -> dtype, in write order: the summaries, ``status``, ``bad_step`` and
        ``regime`` (int8 codes of `toymodel.regimes.REGIME_CODES`); with momentum ``converged``
        (int8 0/1); in the weight-decay mode the spike counts and steps (int64), ``period``,
        ``converged_exactly`` (int8 0/1) and `WD_GROUP_VARS` (with a ``group`` dimension). No
        strings: the labels and the reasons are derived on demand (`toymodel.scan.decode_regime`,
        `regime_reason`)."""
        dt = np.dtype(self.dtype)
        out = {n: dt for n in self.summaries}
        i8, i64 = np.dtype(np.int8), np.dtype(np.int64)
        if self.mode == "wd":
            out.update({n: i64 for n in _WD_INTS}, period=dt, converged_exactly=i8)
        out.update(status=i8, bad_step=i64, regime=i8)
        if self.mode == "momentum":
            out["converged"] = i8
        if self.mode == "wd":
            out.update(group_tail_loss=dt, group_n_spikes=i64, group_period=dt,
                       group_converged_exactly=i8)
        return out

    def group_vars(self) -> tuple:
        """The per-cell variables with a trailing ``group`` dimension."""
        return WD_GROUP_VARS if self.mode == "wd" else ()

    @property
    def state_copies(self) -> int:
        """(n, d) arrays held per trajectory while a chunk runs (memory check): the state and its
        updates, plus the optimizer's moments with momentum."""
        return 6 if self.mode == "momentum" else 4

    def params(self) -> dict:
        """The fields as JSON values (the store's manifest, the plan's hash). A fixed-ELR spec
        writes exactly the fields it always wrote (its stores keep their hash); the optimizer's
        settings are recorded with momentum only."""
        out = dataclasses.asdict(self)
        if self.mode == "elr":
            for k in ("mode",) + _MOMENTUM_FIELDS:
                out.pop(k)
        elif self.mode == "wd":
            for k in _MOMENTUM_FIELDS:
                out.pop(k)
        return out


@dataclass(frozen=True)
class ChunkTask:
    """A chunk described by value (picklable): what `compute_chunk` needs and nothing else.

    ``axes`` holds the chunk's values of each leading parameter dimension
    (`toymodel._scan_modes.AXES`); it defaults to ``(elrs,)``, the fixed-ELR scan's one axis.
    ``elrs`` is the ELR axis (``None`` in the weight-decay mode); ``n_groups`` the size of the
    scan's ``group`` dimension (default: the largest group count of ``configs``)."""

    chunk_id: int
    configs: tuple
    elrs: np.ndarray
    seeds: np.ndarray
    spec: CellSpec
    axes: tuple = ()
    n_groups: int = 0

    def __post_init__(self):
        if not self.axes:
            object.__setattr__(self, "axes", (self.elrs,))


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


def _flat(a, k, lead, tail_shape) -> np.ndarray:
    """The values ``a`` of leading axis ``k`` broadcast over ``(*lead, *tail_shape)``, flattened."""
    shape = [1] * (len(lead) + len(tail_shape))
    shape[k] = -1
    return np.broadcast_to(np.asarray(a).reshape(shape), tuple(lead) + tuple(tail_shape)).reshape(-1)


def _run_group(spec, rep, theta0, params, alphas, twin):
    """One backend call for a group of configurations of one shape: the contract of the mode."""
    from . import backend as _backend

    if spec.mode == "momentum":
        elr, beta = params
        return _backend.summarize_momentum(
            rep, theta0, elr, beta, steps=spec.steps, tail=spec.tail,
            momentum_mode=spec.momentum_mode, constraint=spec.constraint, alphas=alphas,
            optimizer=spec.optimizer, beta2=spec.beta2, eps=spec.eps, backend=spec.backend)
    if spec.mode == "wd":
        lr, wd = params
        return _backend.summarize_wd(rep, theta0, lr, wd, steps=spec.steps, tail=spec.tail,
                                     alphas=alphas, backend=spec.backend)
    return _backend.summarize(rep, theta0, params[0], steps=spec.steps, tail=spec.tail,
                              constraint=spec.constraint, alphas=alphas, twin_dirs=twin,
                              backend=spec.backend)


def compute_chunk(task: ChunkTask) -> dict:
    """Summaries of every cell of one chunk, arrays of shape ``(*axes, cc, cs)`` (``(ce, cc, cs)``
    for a fixed-ELR scan; a trailing ``group`` dimension for `WD_GROUP_VARS`).

    Configurations of equal shape share one backend call (the toy's curvatures go per
    trajectory); the initial states come from the seeds alone (`toymodel.dynamics.initial_states`;
    the weight-decay mode starts from the unit-norm states of the total constraint, as
    `toymodel.conventional.simulate_wd`), so a cell's inputs never depend on the chunking.
    Returns the per-cell variables plus ``"_backend"`` (the backends that ran); ``regime`` holds
    `toymodel.regimes.classify_codes` of the summaries (invalid where ``status != 0``; in the
    weight-decay mode `toymodel.periodic.PERIODIC` where `toymodel.periodic.classify_wd_summary`
    finds it).
    """
    spec = task.spec
    dt = np.dtype(spec.dtype)
    lead = tuple(a.size for a in task.axes)
    cc, cs = len(task.configs), task.seeds.size
    shape = lead + (cc, cs)
    G = task.n_groups or max(p.n_groups for p in task.configs)
    groups: dict = {}
    for j, p in enumerate(task.configs):
        groups.setdefault(_problem_key(p), []).append(j)
    # one group of every configuration (the usual chunk): each result fills its variable whole, so
    # it becomes the variable (no prefilled array, no copy); otherwise prefill and place per group
    whole = len(groups) == 1
    labels = ("regime", "period", "converged", "group_period")   # set by `_label` or per group
    cell_dtypes = spec.cell_vars()
    out = {}
    for name, vdt in cell_dtypes.items():
        if whole and name not in labels and name not in spec.group_vars():
            continue
        full = shape + ((G,) if name in spec.group_vars() else ())
        fill = np.nan if vdt.kind == "f" else FILLS[name]
        out[name] = np.full(full, fill, vdt)
    start = "total" if spec.mode == "wd" else spec.constraint
    twin_run = spec.lyapunov
    used, res_names = set(), [n for n in cell_dtypes if n not in labels]
    for members in groups.values():
        rep = task.configs[members[0]]
        g = len(members)
        init = [_initial_states(task.configs[j], task.seeds, start, twin_run) for j in members]
        states = np.stack([s[0] if twin_run else s for s in init])  # (g, cs, n, d)
        n, d = states.shape[-2:]
        theta0 = np.ascontiguousarray(np.broadcast_to(states[(None,) * len(lead)],
                                                      lead + (g, cs, n, d)).reshape(-1, n, d),
                                      dtype=dt)
        twin = None
        if twin_run:
            dirs = np.stack([s[1] for s in init])
            twin = np.ascontiguousarray(np.broadcast_to(dirs[(None,) * len(lead)],
                                                        lead + (g, cs, n, d)).reshape(-1, n, d),
                                        dtype=dt)
        params = [np.ascontiguousarray(_flat(a, k, lead, (g, cs)), dtype=np.float64)
                  for k, a in enumerate(task.axes)]
        alphas = None
        if isinstance(rep, SphereToy):
            a = np.stack([task.configs[j].alphas for j in members])  # (g, n)
            alphas = np.ascontiguousarray(np.broadcast_to(a[(None,) * len(lead) + (slice(None), None)],
                                                          lead + (g, cs, n)).reshape(-1, n), dtype=dt)
        res = _run_group(spec, rep, theta0, params, alphas, twin)
        used.add(res["backend"])  # the backend that ran (the backend resolved the name once)
        if spec.mode == "wd":
            res = dict(res, group_period=periodic.group_periods(res))
        for name in res_names + (["group_period"] if spec.mode == "wd" else []):
            vals = np.asarray(res[name])
            if name in spec.group_vars():
                out[name][..., members, :, :n] = vals.reshape(lead + (g, cs, n)).astype(
                    out[name].dtype, copy=False)
            elif whole:
                out[name] = vals.reshape(lead + (g, cs)).astype(cell_dtypes[name], copy=False)
            else:
                out[name][..., members, :] = vals.reshape(lead + (g, cs)).astype(out[name].dtype,
                                                                                 copy=False)
    _label(task, out)
    out["_backend"] = ",".join(sorted(used))
    return out


def _label(task, out) -> None:
    """The whole-array labels of a chunk, no per-cell Python (the reasons are derived from the
    stored numbers on demand): ``regime``; with momentum ``converged``; with weight decay the
    periodic label and ``period``."""
    spec = task.spec
    rand = np.array([p.random_loss() for p in task.configs])[:, None]
    out["regime"] = regimes.classify_codes(out["tail_loss"], rand, invalid=out["status"] != 0,
                                           tail_angle=out["tail_angle"], tail_steps=spec.tail)
    if spec.mode == "momentum":
        out["converged"] = _converged(out).astype(np.int8)
    elif spec.mode == "wd":
        # classify_wd_summary, vectorised: the tail holds at least MIN_SPIKES spikes of the loss
        spiking = (out["n_spikes"] >= periodic.MIN_SPIKES) & (out["regime"] != _INVALID)
        out["regime"][spiking] = regimes.REGIME_CODES[periodic.PERIODIC]
        cnt, span = out["n_spikes"], out["last_spike"] - out["first_spike"]
        with np.errstate(invalid="ignore", divide="ignore"):
            out["period"] = np.where(cnt >= 2, span / np.maximum(cnt - 1, 1), np.nan).astype(
                out["period"].dtype)

