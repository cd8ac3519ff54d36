r"""The labelled dataset of a scan: coordinates, the theory's predictions, provenance.

Owns `template`: the ``xarray.Dataset`` of a plan before any cell is computed (per-cell variables
at their fill values; coordinates, predictions and attributes final), which the in-memory result
and the zarr store (`toymodel._store`) both start from. Beside the observed ``regime``
(`toymodel.regimes.classify_summary`), it carries ``predicted_regime`` (T10, T12),
``equilibrium_loss`` $L^*=(\sum\alpha_i-1/\tilde\eta)/2$ (T12), the thresholds
$1/\sum\alpha_i$ and $1/\min\alpha_i$ (T10) and the random level. xarray is imported inside
`template` only.
"""
from __future__ import annotations

import datetime as _dt
import json

import numpy as np

from . import dynamics, regimes, theory
from ._scan_chunk import REGIME_WIDTH
from ._scan_plan import CELL_DIMS, ScanPlan, problem_record
from ._version import __version__
from .problems import SphereToy


def _static_vars(plan: ScanPlan) -> dict:
    """Per-config and per-(elr, config) variables: inputs and the theory's predictions."""
    C = len(plan.configs)
    G = max(p.alphas.size for p in plan.configs)
    alphas = np.full((C, G), np.nan)
    for j, p in enumerate(plan.configs):
        alphas[j, :p.alphas.size] = p.alphas
    E = plan.elrs.size
    constraint = plan.spec.constraint
    eq = np.full((E, C), np.nan)
    pred = np.empty((E, C), dtype=f"<U{REGIME_WIDTH}")
    for j, p in enumerate(plan.configs):
        for i, elr in enumerate(plan.elrs):
            pred[i, j] = theory.predict_regime(elr, p.alphas, constraint)
            if isinstance(p, SphereToy) and constraint == "total":
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
    spec = plan.spec
    return {
        "title": "toymodel fixed-ELR phase-diagram scan",
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
