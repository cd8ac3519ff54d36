r"""The labelled dataset of a scan: coordinates, the theory's predictions, provenance.

Owns `template`: the ``xarray.Dataset`` of a plan before any cell is computed (per-cell variables
at their fill values; coordinates, predictions and attributes final), which the in-memory result
and the zarr store (`toymodel._store`) both start from, and the readers of its regimes
(`decode_regime`, `regime_reason`). Beside the observed ``regime``
(`toymodel.regimes.classify_codes`), it carries ``predicted_regime`` (T10, T12, computed for all
ELRs of a configuration at once), ``equilibrium_loss`` $L^*=(\sum\alpha_i-1/\tilde\eta)/2$
(T12), the thresholds $1/\sum\alpha_i$ and $1/\min\alpha_i$ (T10) and the random level.
xarray is imported inside `template` only.

The regimes are int8 codes (`toymodel.regimes.REGIME_CODES`, CF ``flag_values`` /
``flag_meanings`` attributes, -1 for a cell not computed yet): `decode_regime` turns them into
labels and `regime_reason` derives each cell's reason from the summaries; no string is stored.
"""
from __future__ import annotations

import datetime as _dt
import json

import numpy as np

from . import dynamics, momentum_theory, periodic, regimes, theory, theory_wd
from ._scan_chunk import FILLS
from ._scan_plan import FORMAT, ScanPlan, problem_record
from ._version import __version__
from .problems import SphereToy


def _predicted_codes(elrs, alphas, constraint) -> np.ndarray:
    """`toymodel.theory.predict_regime` of every ELR at once, as codes: the same comparisons of
    the same floats, element by element (tested equal to it)."""
    a = np.asarray(alphas, dtype=np.float64)
    if a.size == 1:  # T13
        conv = elrs * a[0] <= 1.0
        div = elrs >= theory.equilibrium_divergence_elr(a)
    elif constraint == "individual":  # §3: every individual ELR is n * elr
        k = a.size * elrs[:, None] * a[None, :]
        conv, div = (k <= 1.0).all(axis=1), (k > 1.0).all(axis=1)
    else:  # T10, T12
        conv, div = elrs <= theory.total_threshold(a), elrs > theory.divergence_threshold(a)
    code = regimes.REGIME_CODES
    return np.where(conv, code["convergence"],
                    np.where(div, code["divergence"], code["chaotic_equilibrium"])).astype(np.int8)


def _equilibrium_loss(elrs, alphas) -> np.ndarray:
    """`toymodel.theory.equilibrium_loss` of every ELR at once (T12), the same floats."""
    total = np.asarray(alphas, dtype=np.float64).sum()
    with np.errstate(over="ignore", divide="ignore"):
        return np.where(elrs * total > 1.0, 0.5 * (total - 1.0 / elrs), 0.0)


def _config_vars(plan: ScanPlan) -> dict:
    """Per-configuration inputs, in every mode."""
    C = len(plan.configs)
    alphas = np.full((C, max(p.alphas.size for p in plan.configs)), np.nan)
    for j, p in enumerate(plan.configs):
        alphas[j, :p.alphas.size] = p.alphas
    return {
        "alphas": (("config", "group"), alphas,
                   {"long_name": "curvatures alpha_i (NaN-padded to the largest group count)"}),
        "n_groups": (("config",), np.array([p.n_groups for p in plan.configs], np.int64), {}),
        "dim": (("config",), np.array([p.dim for p in plan.configs], np.int64), {}),
        "problem": (("config",), np.array([p.kind for p in plan.configs], dtype="<U16"), {}),
        "random_loss": (("config",), np.array([p.random_loss() for p in plan.configs]),
                        {"long_name": "random level: loss of a scrambled direction"}),
    }


def _static_vars(plan: ScanPlan) -> dict:
    """Per-config and per-(parameters, config) variables: inputs and the theory's predictions,
    computed for all ELRs of a configuration at once."""
    if plan.spec.mode == "momentum":
        return {**_config_vars(plan), **_momentum_vars(plan)}
    if plan.spec.mode == "wd":
        return {**_config_vars(plan), **_wd_vars(plan)}
    C = len(plan.configs)
    E = plan.elrs.size
    constraint = plan.spec.constraint
    eq = np.full((E, C), np.nan)
    pred = np.empty((E, C), dtype=np.int8)
    elrs = np.asarray(plan.elrs, dtype=np.float64)
    for j, p in enumerate(plan.configs):
        pred[:, j] = _predicted_codes(elrs, p.alphas, constraint)
        if isinstance(p, SphereToy) and constraint == "total":
            eq[:, j] = _equilibrium_loss(elrs, p.alphas)
    return {
        **_config_vars(plan),
        "total_threshold": (("config",), np.array([theory.total_threshold(p.alphas) for p in plan.configs]),
                            {"long_name": "1/sum(alpha) (T10, T12)"}),
        "divergence_threshold": (("config",),
                                 np.array([theory.divergence_threshold(p.alphas) for p in plan.configs]),
                                 {"long_name": "1/min(alpha) (T10)"}),
        "equilibrium_loss": (("elr", "config"), eq,
                             {"long_name": "(sum(alpha) - 1/elr)/2 above 1/sum(alpha), else 0 (T12; "
                                           "toy, total constraint; NaN otherwise)"}),
        "predicted_regime": (("elr", "config"), pred,
                             {"long_name": "theory.predict_regime (T10, T12), a regime code",
                              **regimes.flag_attrs()}),
    }


def _momentum_vars(plan: ScanPlan) -> dict:
    r"""``naive_threshold`` per (momentum, config): the linear-stability bound of the minimum, an
    upper bound on every convergent ELR, *not* the boundary (docs/momentum.md T43, T44, T46)."""
    spec = plan.spec
    betas = dict(plan.axes)["momentum"]
    naive = np.full((betas.size, len(plan.configs)), np.nan)
    for j, p in enumerate(plan.configs):
        for i, b in enumerate(betas.tolist()):
            if spec.optimizer == "adam":  # T46: the frozen-preconditioner heavy ball, total budget
                if spec.constraint == "total":
                    naive[i, j] = momentum_theory.adam_eps_threshold(p.alphas, (b, spec.beta2),
                                                                     spec.eps, p.dim)
            elif spec.constraint == "total":  # T43 with the budget T8
                naive[i, j] = momentum_theory.naive_total_threshold(p.alphas, b)
            else:  # every individual ELR is n * elr (§3): each group below its limit (T43)
                naive[i, j] = momentum_theory.heavy_ball_group_thresholds(p.alphas, b).min() / p.n_groups
    what = {"heavy_ball": "(1+beta)/sum(alpha) (T43; individual constraint: (1+beta)/(n max alpha))",
            "adam": "(1+beta1) eps/(sqrt(d) (1-beta1) sum(alpha)) (T46; total constraint only, NaN "
                    "otherwise)"}[spec.optimizer]
    return {"naive_threshold": (("momentum", "config"), naive,
                                {"long_name": f"naive linear-stability threshold of the ELR, {what}: "
                                              f"an upper bound on convergent ELRs, not the boundary "
                                              f"(docs/momentum.md T44)"})}


def _wd_vars(plan: ScanPlan) -> dict:
    r"""Per (lr, weight_decay, config): the stationary point of T21, $L=\eta\lambda\sum\alpha/2$
    and $\tilde\eta=1/((1-\eta\lambda)\sum\alpha)$ (NaN at $\lambda=0$: no stationary norm)."""
    ax = dict(plan.axes)
    lrs, wds = ax["lr"], ax["weight_decay"]
    shape = (lrs.size, wds.size, len(plan.configs))
    loss, elr = np.full(shape, np.nan), np.full(shape, np.nan)
    for j, p in enumerate(plan.configs):
        for i, lr in enumerate(lrs.tolist()):
            for k, wd in enumerate(wds.tolist()):
                if wd > 0:
                    loss[i, k, j] = theory_wd.wd_equilibrium_loss(lr, wd, p.alphas)
                    elr[i, k, j] = theory_wd.wd_equilibrium_elr(lr, wd, p.alphas)
    dims = ("lr", "weight_decay", "config")
    return {"equilibrium_loss": (dims, loss, {"long_name": "lr*weight_decay*sum(alpha)/2, the loss "
                                              "at the stationary point (T21); runs orbit it, 2-8% "
                                              "above (T25); NaN at weight_decay 0"}),
            "equilibrium_elr": (dims, elr, {"long_name": "1/((1-lr*weight_decay) sum(alpha)), the "
                                            "effective ELR at the stationary point (T21)"})}


def _attrs(plan: ScanPlan) -> dict:
    spec = plan.spec
    return {
        "title": "toymodel fixed-ELR phase-diagram scan",
        "format": FORMAT,
        "toymodel_version": __version__,
        "backend_requested": spec.backend,
        "backend": "",
        "dtype": spec.dtype,
        "seeds": json.dumps(plan.seeds.tolist()),
        "steps": spec.steps,
        "tail": spec.tail,
        "constraint": spec.constraint,
        "lyapunov": int(spec.lyapunov),
        "radius": 1.0,
        "problems": json.dumps([problem_record(p) for p in plan.configs]),
        "classifier": json.dumps({"conv_rtol": regimes.CONV_RTOL, "div_frac": regimes.DIV_FRAC,
                                  "min_tail_rotation": regimes.MIN_TAIL_ROTATION,
                                  "random_level": "problem.random_loss()"}),
        "chunks": json.dumps(list(plan.chunks)),
        "plan_hash": plan.digest(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **_mode_attrs(plan),
    }


#: the title of each mode's dataset.
_TITLES = {"elr": "toymodel fixed-ELR phase-diagram scan",
           "momentum": "toymodel momentum phase-diagram scan (fixed ELR, heavy ball or Adam)",
           "wd": "toymodel conventional-training scan (weight decay, no projection)"}


#: what the per-cell variables of the other modes mean (fixed-ELR ones: docs/scans.md).
_CELL_ATTRS = {
    "converged": {"long_name": "1 where the run converged: tail loss below 1e-10 and final_stability "
                               "< 1 (toymodel.momentum.converged); -1 not computed yet"},
    "converged_exactly": {"long_name": "1 where the final gradient is exactly 0 (the float64 floor "
                                       "of the periodic regime, docs/conventional.md T26)"},
    "period": {"long_name": "mean interval between the spikes of the total loss in the tail, "
                            "(last_spike - first_spike)/(n_spikes - 1), NaN with fewer than 2"},
    "group_period": {"long_name": "the same per group (toymodel.periodic.group_periods)"},
    "tail_elr": {"long_name": "tail mean of the effective ELR lr/((1-lr*weight_decay)|theta|^2) (T20)"},
}


def _mode_attrs(plan: ScanPlan) -> dict:
    """The mode and its settings (none for a fixed-ELR scan: its attributes are those it always had)."""
    spec = plan.spec
    if spec.mode == "elr":
        return {}
    out = {"title": _TITLES[spec.mode], "mode": spec.mode}
    if spec.mode == "momentum":
        out.update(momentum_mode=spec.momentum_mode, optimizer=spec.optimizer, beta2=spec.beta2,
                   eps=spec.eps)
    else:
        out["classifier_periodic"] = json.dumps({"min_spikes": periodic.MIN_SPIKES,
                                                 "spike_frac": periodic.SPIKE_FRAC,
                                                 "low": "conv_rtol x random level"})
    return out


def template(plan: ScanPlan, lazy: bool = True):
    """The scan's ``xarray.Dataset`` before any cell is computed: per-cell variables hold their fill
    values (a zero-memory broadcast when ``lazy``), coordinates, predictions and attrs are final."""
    import xarray as xr

    G = max(p.alphas.size for p in plan.configs)
    data = {}
    for name, dt in plan.cell_vars().items():
        shape = plan.shape + ((G,) if name in plan.spec.group_vars() else ())
        fill = np.array(np.nan if dt.kind == "f" else FILLS[name], dtype=dt)
        arr = np.broadcast_to(fill, shape) if lazy else np.full(shape, fill, dtype=dt)
        data[name] = (plan.var_dims(name), arr, _CELL_ATTRS.get(name, {}))
    for name, (dims, arr, attrs) in _static_vars(plan).items():
        data[name] = (dims, arr, attrs)
    coords = {name: values for name, values in plan.axes}
    coords.update(config=np.arange(len(plan.configs)), seed=plan.seeds, group=np.arange(G))
    ds = xr.Dataset(data, coords=coords)
    ds["status"].attrs["flag_meanings"] = json.dumps({"0": "ok", **{str(k): v for k, v in
                                                                   dynamics.INVALID_REASONS.items()}})
    ds["regime"].attrs.update(long_name="observed regime (toymodel.regimes.classify_codes), a code; "
                                        "labels: toymodel.scan.decode_regime", **regimes.flag_attrs())
    ds.attrs.update(_attrs(plan))
    return ds


def _is_dataset(obj) -> bool:
    return hasattr(obj, "data_vars")


def decode_regime(obj):
    """Regime codes as labels. A Dataset: a copy whose ``regime`` and ``predicted_regime`` hold the
    label strings (``<U19``; ``""`` for a cell not computed yet), their flag attributes dropped; a
    DataArray (or array) of codes: the same, decoded. Labels pass unchanged. Loads what it decodes."""
    if not _is_dataset(obj):
        return _decode_array(obj)
    return obj.assign({name: _decode_array(obj[name]) for name in ("regime", "predicted_regime")
                       if name in obj})


def _decode_array(da):
    if not hasattr(da, "dims"):
        return regimes.decode(da)
    return _relabel(da, regimes.decode(da.values),
                    {k: v for k, v in da.attrs.items() if k not in regimes.flag_attrs()})


def _relabel(da, values, attrs):
    """``da`` with new values and attrs, and no storage encoding (a code's fill does not fit strings)."""
    out = da.copy(data=values)
    out.attrs, out.encoding = attrs, {}
    return out


def regime_reason(ds):
    """Why each cell has its label, derived from the stored numbers (a DataArray of strings like
    ``regime``): ``""`` for a regime; an unresolved cell: the angle it moved per step
    (``tail_angle``); an invalid cell: the kernel's reason for its ``status``
    (`toymodel.dynamics.status_reasons`), else what its tail loss or random level shows
    (`toymodel.regimes.summary_reasons`). Loads the cells it reads."""
    regime = ds["regime"]
    dims = regime.dims

    def cell(name):
        return ds[name].broadcast_like(regime).transpose(*dims).values

    status = cell("status") if "status" in ds else None
    reasons = regimes.summary_reasons(
        regimes.encode(regime.values), cell("tail_loss"), cell("random_loss"),
        invalid_reason=None if status is None else dynamics.status_reasons(status),
        tail_angle=cell("tail_angle") if "tail_angle" in ds else None)
    return _relabel(regime, reasons.astype(str),
                    {"long_name": "why the cell has its regime label (derived, not stored)"}
                    ).rename("regime_reason")
