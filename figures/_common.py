"""Shared helpers of the figure scripts: style, output files, and the batch runs behind the data.

Every figure computes through `toymodel.backend.summarize` (``backend="auto"``: the fastest
backend installed) or, for ELR scans, through `toymodel.scan.scan` when that module exists
(`run_summaries`). Both paths start from `toymodel.dynamics.initial_states` for the
same seeds, so they give the same numbers up to the backend's rounding.
"""
from __future__ import annotations

import inspect
import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from toymodel import backend as _backend
from toymodel import dynamics, regimes
from toymodel._deps import has
from toymodel._progress import progress
from toymodel._validate import positive_int
from toymodel.problems import SphereToy, toy_group_losses

STYLE = Path(__file__).with_name("toymodel.mplstyle")

#: one colour per regime label, used for shading and for categorical maps.
REGIME_COLORS = {"convergence": "#7fbf7b", "chaotic_equilibrium": "#fdb863",
                 "divergence": "#e08080", "invalid": "#bbbbbb", "unresolved": "#9ecae1",
                 "periodic": "#c2a5cf"}
REGIME_TITLES = {"convergence": "convergence", "chaotic_equilibrium": "chaotic equilibrium",
                 "divergence": "divergence", "invalid": "invalid", "unresolved": "unresolved",
                 "periodic": "periodic"}
#: integer codes for saving labels in .npz files (index into this tuple).
REGIME_CODES = regimes.LABELS
ENGINES = ("auto", "scan", "direct")


# -- style and output -----------------------------------------------------------------------------
@contextmanager
def style():
    """Activate the shared style (``figures/toymodel.mplstyle``) for the figure built inside."""
    import matplotlib.style

    with matplotlib.style.context(str(STYLE)):
        yield


def new_figure(nrows=1, ncols=1, **kw):
    """A pyplot-free `matplotlib.figure.Figure` with subplots: safe under any backend."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=kw.pop("figsize", None))
    axes = fig.subplots(nrows, ncols, **kw)
    return fig, axes


def out_path(out_dir) -> Path:
    """``out_dir`` as a `Path`, created if missing."""
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig, out_dir, name: str) -> list[Path]:
    """Write ``name.png`` and ``name.pdf`` into ``out_dir``; returns the paths."""
    out = out_path(out_dir)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, metadata={"Software": "toymodel figures"} if p.suffix == ".png" else None)
    return paths


def write_figure(name: str, compute, plot, out_dir, quick: bool, backend: str = "auto") -> list[Path]:
    """The body of every ``main``: ``compute(quick, backend=backend)`` (``backend`` only for a
    compute that takes it: the network figures train with torch), save the data, draw and save."""
    takes = "backend" in inspect.signature(compute).parameters
    data, params = compute(quick, backend=backend) if takes else compute(quick)
    paths = [save_data(out_dir, name, dict(params, quick=bool(quick)), **data)]
    with style():
        paths += save_figure(plot(data, params), out_dir, name)
    return paths


def write_figure_and_dataset(name: str, compute, plot, out_dir, quick: bool) -> list[Path]:
    """`write_figure` for a figure whose data are also a labelled dataset: ``compute(quick, keep)``
    puts it in ``keep["nc"]``, written beside the ``.npz`` as ``name.nc`` (the network figures)."""
    keep = {}
    paths = write_figure(name, lambda q: compute(q, keep), plot, out_dir, quick)
    nc = out_path(out_dir) / f"{name}.nc"
    keep["nc"].to_netcdf(nc)
    return paths[:1] + [nc] + paths[1:]


def script(main, caption: str) -> None:
    """Run a figure module as a script: ``python figures/figNN_x.py [--out DIR] [--quick]``."""
    import argparse

    ap = argparse.ArgumentParser(description=caption)
    ap.add_argument("--out", default="figures/out")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    print("\n".join(map(str, main(a.out, a.quick))))


def save_data(out_dir, name: str, params: dict, **arrays) -> Path:
    """Write the data behind a figure to ``name.npz``; ``params`` (JSON) says how it was made."""
    path = out_path(out_dir) / f"{name}.npz"
    np.savez_compressed(path, params=json.dumps(params, default=_jsonable), **arrays)
    return path


def load_data(path) -> tuple[dict, dict]:
    """Read a file written by `save_data`: ``(arrays, params)``."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k != "params"}
        params = json.loads(str(f["params"]))
    return arrays, params


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot save {type(obj).__name__} as JSON")


def provenance(backend: str = "auto", **params) -> dict:
    """Parameters plus the package version and the backend ``backend`` resolves to."""
    import toymodel

    return {"toymodel_version": toymodel.__version__,
            "backend": _backend.resolve(backend), **params}


# -- regimes ----------------------------------------------------------------------------------------
def regime_codes(labels) -> np.ndarray:
    """Regime label strings -> int8 codes (index into `REGIME_CODES`)."""
    labels = np.asarray(labels).astype(str)
    codes = np.full(labels.shape, -1, np.int8)
    for i, name in enumerate(REGIME_CODES):
        codes[labels == name] = i
    if np.any(codes < 0):
        raise ValueError(f"unknown regime labels {sorted(set(labels[codes < 0].tolist()))}")
    return codes


def majority(codes, axis=-1) -> np.ndarray:
    """Most frequent regime code along ``axis`` (ties go to the lower code)."""
    codes = np.asarray(codes)
    counts = np.stack([(codes == i).sum(axis=axis) for i in range(len(REGIME_CODES))], -1)
    return counts.argmax(-1).astype(np.int8)


def shade_regimes(ax, x, codes, log=True, alpha=0.35, label=True):
    """Shade the x-range of each run of equal regime codes along ``x`` (sorted); label each span once."""
    x = np.asarray(x, dtype=float)
    t = np.log(x) if log else x
    mid = (t[1:] + t[:-1]) / 2
    edges = np.concatenate([[t[0] - (mid[0] - t[0])], mid, [t[-1] + (t[-1] - mid[-1])]])
    edges = np.exp(edges) if log else edges
    seen = set()
    start = 0
    for i in range(1, len(codes) + 1):
        if i == len(codes) or codes[i] != codes[start]:
            name = REGIME_CODES[int(codes[start])]
            ax.axvspan(edges[start], edges[i], color=REGIME_COLORS[name], alpha=alpha, lw=0,
                       zorder=0, label=(f"observed: {REGIME_TITLES[name]}"
                                        if label and name not in seen else None))
            seen.add(name)
            start = i


# -- batch runs -------------------------------------------------------------------------------------
def _scan_available() -> bool:
    """The scan module always ships, but it builds an xarray Dataset: without xarray (a core-only
    install) the figures compute through ``backend.summarize`` directly."""
    return has("xarray")


def run_summaries(alphas, elrs, seeds, *, steps, tail, constraint="total", lyapunov=False,
                  engine="auto", backend="auto", progress_bar=False, desc="runs") -> dict:
    """Summaries of projected GD on ``SphereToy(alphas)`` for every ELR × seed, arrays ``(E, S)``.

    ``engine="scan"`` calls `toymodel.scan.scan`; ``"direct"`` calls
    `toymodel.backend.summarize` on the stacked initial states of
    `toymodel.dynamics.initial_states`; ``"auto"`` uses the scan when the module exists.
    Returns `toymodel.dynamics.SUMMARY_NAMES` plus
    ``regime`` (label strings, from `toymodel.regimes.classify_summary`) and ``engine``.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    elrs = np.asarray(elrs, dtype=np.float64)
    if elrs.ndim != 1 or elrs.size == 0 or not np.all(np.isfinite(elrs) & (elrs > 0)):
        raise ValueError(f"elrs must be a non-empty 1-D array of positive finite numbers, got {elrs!r}")
    seeds = [positive_int("seed", s, minimum=0) for s in seeds]
    if engine == "auto":
        engine = "scan" if _scan_available() else "direct"
    if engine == "scan":
        out = _via_scan(alphas, elrs, seeds, steps=steps, tail=tail, constraint=constraint,
                        lyapunov=lyapunov, backend=backend, progress_bar=progress_bar)
    else:
        out = _via_summarize(alphas, elrs, seeds, steps=steps, tail=tail, constraint=constraint,
                             lyapunov=lyapunov, backend=backend, progress_bar=progress_bar,
                             desc=desc)
    out["engine"] = engine
    return out


def _via_summarize(alphas, elrs, seeds, *, steps, tail, constraint, lyapunov, backend,
                   progress_bar, desc):
    problem = SphereToy(alphas)
    theta0, dirs = dynamics.initial_states(problem, seeds, constraint, twin=True)
    E, S = elrs.size, len(seeds)
    out = {name: np.empty((E, S)) for name in dynamics.SUMMARY_NAMES}
    status = np.empty((E, S), np.int8)
    # chunks of whole ELR rows keep memory flat and give the progress bar something to count
    rows = max(1, 4096 // max(S, 1))
    with progress(total=E, desc=desc, disable=not progress_bar) as bar:
        for lo in range(0, E, rows):
            e = elrs[lo:lo + rows]
            th = np.tile(theta0, (e.size, 1, 1))
            res = _backend.summarize(problem, th, np.repeat(e, S), steps=steps, tail=tail,
                                     constraint=constraint,
                                     twin_dirs=np.tile(dirs, (e.size, 1, 1)) if lyapunov else None,
                                     backend=backend)
            for name in dynamics.SUMMARY_NAMES:
                out[name][lo:lo + e.size] = np.asarray(res[name]).reshape(e.size, S)
            status[lo:lo + e.size] = np.asarray(res["status"]).reshape(e.size, S)
            bar.update(e.size)
    out["regime"], _ = regimes.classify_summary(out["tail_loss"], problem.random_loss(),
                                                invalid_reason=dynamics.status_reasons(status))
    out["status"] = status
    return out


def _via_scan(alphas, elrs, seeds, *, steps, tail, constraint, lyapunov, backend, progress_bar):
    from toymodel.scan import scan

    ds = scan([list(np.asarray(alphas, dtype=float))], elrs, seeds=list(seeds), steps=steps,
              tail=tail, constraint=constraint, backend=backend, lyapunov=lyapunov,
              progress_bar=progress_bar)
    ds = ds.isel(config=0)
    out = {name: np.asarray(ds[name].transpose("elr", "seed").values, dtype=np.float64)
           for name in dynamics.SUMMARY_NAMES if name in ds}
    if not lyapunov:
        out["lyapunov"] = np.full_like(out["tail_loss"], np.nan)
    out["status"] = np.asarray(ds["status"].transpose("elr", "seed").values).astype(np.int8)
    out["regime"] = regimes.decode(ds["regime"].transpose("elr", "seed").values)  # codes -> labels
    return out


def orbit(problem, theta0, elr, *, steps, keep, constraint="total", backend="auto"):
    """The last ``keep`` states of ``steps`` projected-GD steps, shape ``(keep, B, n, d)``.

    Runs `toymodel.backend.summarize` for ``steps - keep`` steps, then one step at a time
    (a restart from a state on the constraint set reproduces the run: same radii, same ``lr``).
    """
    steps = positive_int("steps", steps)
    keep = positive_int("keep", keep)
    if keep >= steps:
        raise ValueError(f"keep must be smaller than steps={steps}, got {keep}")
    elr = np.asarray(elr, dtype=np.float64)
    run = dict(constraint=constraint, backend=backend, tail=1)
    theta = _backend.summarize(problem, theta0, elr, steps=steps - keep, **run)["theta_final"]
    states = []
    for _ in range(keep):
        theta = _backend.summarize(problem, theta, elr, steps=1, **run)["theta_final"]
        states.append(np.asarray(theta))
    return np.stack(states)


def group_losses(states, alphas) -> np.ndarray:
    r"""Per-group toy losses $\alpha_i\sin^2\varphi_i$ of states ``(..., n, d)``."""
    return toy_group_losses(np.asarray(states), np.asarray(alphas, dtype=float))


def phi_degrees(states) -> np.ndarray:
    r"""Signed angle $\varphi\in(-90°, 90°]$ of each 2-D group to the minimiser axis $\pm e_1$."""
    states = np.asarray(states)
    return np.degrees(np.arctan(states[..., 1] / states[..., 0]))
