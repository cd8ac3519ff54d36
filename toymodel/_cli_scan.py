"""``toymodel scan`` and ``toymodel plot-scan``: phase-diagram scans from the command line.

Registered by `toymodel.cli.build_parser`; xarray, zarr, matplotlib and dask are imported
inside the commands only.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings

import numpy as np

#: the option each scan argument comes from, for messages (`toymodel._scan_plan._plan`)
_NAMES = {"elrs": "--elrs", "seeds": "--seeds", "steps": "--steps", "tail": "--tail", "dim": "--dim",
          "chunk_size": "--chunk-size", "backend": "--backend", "store": "--out NAME.zarr",
          "momentum": "--momentum", "momentum_mode": "--momentum-mode", "optimizer": "--optimizer",
          "beta2": "--beta2", "eps": "--eps", "lr": "--lr", "weight_decay": "--wd",
          "lyapunov": "--lyapunov"}
#: the library's defaults of the optimizer's settings (the CLI leaves them unset unless given)
_OPTIMIZER_DEFAULTS = {"momentum_mode": "official", "optimizer": "heavy_ball", "beta2": 0.999,
                       "eps": 1e-3}
#: defaults applied here, so that a message can say a value is a default the user never gave
_DEFAULTS = {"seeds": "4", "steps": 20000, "tail": 2000}
#: starts per c of the orbit envelope the summary compares tail losses with (`loss_agreement`):
#: fewer than the library's 128, so that the summary stays a fraction of the scan's own time
_ENVELOPE_SEEDS = 64


def _seeds_arg(text: str):
    text = text.strip()
    if "," in text:
        return [t.strip() for t in text.split(",") if t.strip()]
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--seeds must be a count N or a comma list of seeds, got {text!r}") from None


@contextlib.contextmanager
def _warnings_as_lines(command: str):
    """Show warnings (a damaged chunk being recomputed) as one line each, like the errors."""
    from ._store import RepairWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", RepairWarning)

        def show(message, category, filename, lineno, file=None, line=None):
            print(f"toymodel {command}: warning: {message}", file=sys.stderr)

        warnings.showwarning = show
        yield


def _interrupted(out, store) -> str:
    if store is None:
        where = ("an .nc file is written only at the end" if out else "nothing is written without --out")
        return (f"toymodel scan: interrupted; nothing was saved ({where}); use --out NAME.zarr for a "
                f"scan that keeps its finished chunks and resumes")
    from ._store import META, check_markers
    try:
        import json
        with open(os.path.join(store, META, "manifest.json")) as f:
            n_chunks = json.load(f)["n_chunks"]
        done = len(check_markers(store, full=False)[0])
    except (OSError, ValueError, KeyError):
        return "toymodel scan: interrupted before the store was created; run the same command to start again"
    return (f"toymodel scan: interrupted; {done} of {n_chunks} chunks are saved in {store}: "
            f"run the same command to resume")


def _cmd_verify(path) -> int:
    from ._store import describe_damage
    from .scan import verify_scan

    rep = verify_scan(path)
    if rep["damage"]:
        raise ValueError(f"{path} is damaged: {describe_damage(rep['damage'], limit=20)}; re-run the "
                         f"scan that wrote it (the same command) to recompute the damaged chunks")
    if rep["done"] < rep["n_chunks"]:
        print(f"{path}: intact but incomplete ({rep['done']} of {rep['n_chunks']} chunks done); "
              f"re-run the same scan to finish it")
        return 1
    print(f"{path}: intact ({rep['done']} of {rep['n_chunks']} chunks verified: sizes and sha256)")
    return 0


def _cmd_scan(args) -> int:
    from ._scan_plan import _plan
    from ._scan_run import _run
    from ._store import remove_stale_temporaries, write_netcdf_atomic
    from ._validate import output_path
    from .scan import agreement, decode_regime

    if args.verify is not None:
        return _cmd_verify(args.verify)
    wd_mode = args.constraint == "none"
    need = [("--alphas", args.alphas)] + ([("--lr", args.lr), ("--wd", args.wd)] if wd_mode
                                          else [("--elrs", args.elrs)])
    missing = [opt for opt, v in need if v is None]
    if missing:
        raise ValueError(f"the following arguments are required: {', '.join(missing)} "
                         f"({'--constraint none takes --lr and --wd; ' if wd_mode else ''}"
                         f"or --verify STORE to check a store)")
    defaults = {k for k in _DEFAULTS if getattr(args, k) is None}
    for k in defaults:
        setattr(args, k, _DEFAULTS[k])
    alphas = args.alphas
    configs = alphas[0] if len(alphas) == 1 else alphas
    out = store = None
    if args.out is not None:  # checked before any work: a bad destination costs nothing
        out = output_path("--out", args.out, (".zarr", ".nc"), overwrite=args.overwrite,
                          overwrite_hint="--overwrite")
        remove_stale_temporaries(out)
        store = out if out.endswith(".zarr") else None
    plan = _plan(configs, args.elrs, _seeds_arg(args.seeds), steps=args.steps, tail=args.tail,
                 constraint=args.constraint, backend=args.backend, dtype=args.dtype,
                 lyapunov=args.lyapunov, chunk_size=args.chunk_size, dim=args.dim,
                 names=_NAMES, defaults=defaults, momentum=args.momentum, lr=args.lr,
                 weight_decay=args.wd,
                 **{k: d if getattr(args, k) is None else getattr(args, k)
                    for k, d in _OPTIMIZER_DEFAULTS.items()})
    try:
        with _warnings_as_lines("scan"):
            ds = _run(plan, store=store, client=args.scheduler, progress_bar=args.progress,
                      names=_NAMES)
            if out is not None and store is None:
                write_netcdf_atomic(ds, out)
    except KeyboardInterrupt:
        print(_interrupted(out, store), file=sys.stderr)
        return 130
    except ConnectionError as err:  # an unreachable scheduler: refused before any work
        raise ValueError(str(err)) from None
    if plan.spec.mode == "momentum":
        _print_momentum_summary(ds)
    elif plan.spec.mode == "wd":
        _print_wd_summary(ds)
    else:
        _print_summary(decode_regime(ds), agreement)  # it counts labels (76 B per cell while it runs)
    if out is not None:
        print(f"saved {args.out}")
    return 0


def _print_summary(ds, agreement) -> None:
    from .scan import convergence_boundary

    n = int(np.prod([ds.sizes[d] for d in ("elr", "config", "seed")]))
    print(f"{n} cells ({ds.sizes['elr']} ELRs x {ds.sizes['config']} configs x "
          f"{ds.sizes['seed']} seeds), backend {ds.attrs.get('backend')}, dtype {ds.attrs.get('dtype')}")
    agree = agreement(ds, window=0.0, by_config=True)
    agree5 = agreement(ds, window=0.05, by_config=True).values
    boundary = np.atleast_1d(convergence_boundary(ds).values)
    fmt = lambda x: "n/a" if not np.isfinite(x) else f"{x:.3f}"  # noqa: E731
    for j in range(ds.sizes["config"]):
        sub = ds.isel(config=j)
        labels, counts = np.unique(sub["regime"].values.astype(str), return_counts=True)
        alphas = sub["alphas"].values
        text = ", ".join(f"{lab} {c}" for lab, c in zip(labels, counts))
        a = agree.isel(config=j)
        left = int(a["unresolved"]) + int(a["invalid"])
        left_text = (f"; left out {int(a['unresolved'])} unresolved and {int(a['invalid'])} invalid "
                     f"cells" if left else "")
        print(f"config {j} alphas={alphas[np.isfinite(alphas)].tolist()}: {text}; agreement with "
              f"predict_regime {fmt(float(a))} over {int(a['compared'])} cells{left_text} (excluding "
              f"+-5% around the convergence boundary {boundary[j]:.4g}: {fmt(agree5[j])})")
    _print_loss_agreement(ds)


def _header(ds, dims, words) -> None:
    n = int(np.prod([ds.sizes[d] for d in dims]))
    sizes = " x ".join(f"{ds.sizes[d]} {w}" for d, w in zip(dims, words))
    print(f"{n} cells ({sizes}), backend {ds.attrs.get('backend')}, dtype {ds.attrs.get('dtype')}")


def _regime_counts(codes) -> str:
    from . import regimes

    labels, counts = np.unique(regimes.decode(codes[codes != regimes.NOT_COMPUTED]), return_counts=True)
    return ", ".join(f"{lab} {c}" for lab, c in zip(labels, counts))


def _alphas_text(sub) -> str:
    a = sub["alphas"].values
    return str(a[np.isfinite(a)].tolist())


def _print_momentum_summary(ds) -> None:
    """What applies to a momentum scan: no theory predicts its regimes (predict_regime is T10's), so
    per momentum the fraction of converged cells, the largest ELR with a converged seed, and the
    naive threshold, an upper bound on it (docs/momentum.md T43, T44, T46)."""
    _header(ds, ("elr", "momentum", "config", "seed"), ("ELRs", "momenta", "configs", "seeds"))
    print(f"optimizer {ds.attrs.get('optimizer')}, momentum mode {ds.attrs.get('momentum_mode')}, "
          f"{ds.attrs.get('constraint')} constraint; converged: tail loss < 1e-10 and final shares "
          f"linearly stable (no prediction of the boundary is made: the naive threshold is an "
          f"upper bound)")
    for j in range(ds.sizes["config"]):
        sub = ds.isel(config=j)
        print(f"config {j} alphas={_alphas_text(sub)}: {_regime_counts(sub['regime'].values)}")
        conv = sub["converged"].transpose("momentum", "elr", "seed").values
        elrs = sub["elr"].values
        for i, beta in enumerate(sub["momentum"].values.tolist()):
            c = conv[i] == 1
            top = f"{elrs[c.any(-1)].max():.4g}" if c.any() else "none"
            print(f"  momentum {beta:g}: converged {int(c.sum())} of {c.size} cells "
                  f"({c.mean():.3f}); largest ELR with a converged seed {top}; naive threshold "
                  f"{float(sub['naive_threshold'].values[i]):.4g} (an upper bound)")


#: periodic (lr, weight_decay) pairs the summary lists by name before it only counts the rest
_LIST_PERIODIC = 10


def _print_wd_summary(ds) -> None:
    """What applies to a weight-decay scan: the tail loss against the stationary loss
    lr*wd*sum(alpha)/2 (T21; runs orbit it 2-8% above, T25) and the periodic cells with their
    period (T26)."""
    from . import regimes

    _header(ds, ("lr", "weight_decay", "config", "seed"), ("lrs", "weight decays", "configs", "seeds"))
    periodic_code = regimes.REGIME_CODES[regimes.PERIODIC]
    for j in range(ds.sizes["config"]):
        sub = ds.isel(config=j)
        print(f"config {j} alphas={_alphas_text(sub)}: {_regime_counts(sub['regime'].values)}")
        ratio = (sub["tail_loss"] / sub["equilibrium_loss"]).transpose(*sub["regime"].dims).values
        # T21 is the loss of a run that has not converged: converged cells (the float64 floor,
        # or runs still in their first converged phase) are counted, not averaged
        conv = sub["regime"].values == regimes.REGIME_CODES["convergence"]
        ok = np.isfinite(ratio) & ~conv
        if ok.any():
            print(f"  tail loss / (lr*wd*sum(alpha)/2) (T21): median {np.median(ratio[ok]):.4f} over "
                  f"{int(ok.sum())} non-converged cells with wd > 0 (range {ratio[ok].min():.4g} to "
                  f"{ratio[ok].max():.4g}; {int((conv & np.isfinite(ratio)).sum())} converged cells "
                  f"left out); T25: 2-8% above in the periodic regime")
        per = sub["regime"].transpose("lr", "weight_decay", "seed").values == periodic_code
        period = sub["period"].transpose("lr", "weight_decay", "seed").values
        pairs = list(zip(*np.nonzero(per.any(-1))))
        print(f"  periodic: {int(per.sum())} of {per.size} cells, at {len(pairs)} (lr, wd) pairs")
        for il, iw in pairs[:_LIST_PERIODIC]:
            print(f"    lr {float(sub['lr'][il]):.4g}, wd {float(sub['weight_decay'][iw]):.4g}: "
                  f"{int(per[il, iw].sum())} of {per.shape[-1]} seeds, period (steps between "
                  f"spikes of the total loss) median {np.median(period[il, iw][per[il, iw]]):.4g}")
        if len(pairs) > _LIST_PERIODIC:
            print(f"    ... and {len(pairs) - _LIST_PERIODIC} more pairs")


def _print_loss_agreement(ds) -> None:
    """The line on tail losses against the orbit envelope, when the scan has equilibrium cells of
    a toy under the total constraint that were judged (`toymodel.scan.loss_agreement`)."""
    from ._scan_agreement import _loss_cells
    from .backend import BackendUnavailable, resolve
    from .scan import loss_agreement

    if not _loss_cells(ds)[0].any():
        return
    backend = ds.attrs.get("backend_requested", "auto")
    try:
        resolve(backend)
    except BackendUnavailable:  # the scan ran on workers elsewhere: the census runs here
        backend = "auto"
    la = loss_agreement(ds, seeds=_ENVELOPE_SEEDS, backend=backend)
    left = (f"; left out {la.unresolved} unresolved and {la.invalid} invalid cells"
            if la.left_out else "")
    print(f"tail loss within the orbit envelope (toymodel.census.envelope, {la.seeds} starts per c) "
          f"for {la.inside} of {la.compared} equilibrium cells ({float(la):.3f}){left}")


def _cmd_plot_scan(args) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ._validate import writable_parent
    from .scan import figure_pixels, open_scan, plot_scan

    out = args.out or os.path.splitext(os.path.normpath(args.store))[0] + ".png"
    writable_parent("--out", out)
    ds = open_scan(args.store, allow_incomplete=args.allow_incomplete)
    figure_pixels(len(args.config) if args.config else ds.sizes["config"], args.dpi, "--dpi")
    fig = plot_scan(ds.load(), configs=args.config)
    fig.savefig(out, dpi=args.dpi)
    plt.close(fig)
    print(f"saved {out}")
    return 0


def register(sub) -> None:
    """Add ``scan`` and ``plot-scan`` to the ``toymodel`` command line."""
    from .backend import BACKENDS

    p = sub.add_parser("scan", help="phase-diagram scan over ELR (x momentum, or lr x weight decay) "
                                    "x configuration x seed",
                       description="Run every (ELR, configuration, seed) cell and store the "
                                   "summaries; re-running the same command resumes an "
                                   "interrupted .zarr store.")
    p.add_argument("--alphas", action="append", default=None,
                   help="group curvatures, e.g. 1,2,4; repeat the option for several configurations "
                        "(required unless --verify)")
    p.add_argument("--elrs", default=None,
                   help="'a:b:N' for N log-spaced ELRs from a to b, or a comma list of distinct "
                        "values (required unless --verify)")
    p.add_argument("--seeds", default=None, help="a count N (seeds 0..N-1) or a comma list (default 4)")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default 20000)")
    p.add_argument("--tail", type=int, default=None,
                   help="steps the summaries average over, at most --steps (default 2000)")
    p.add_argument("--dim", type=int, default=2, help="dimension d of each group (default 2)")
    p.add_argument("--constraint", choices=("total", "individual", "none"), default="total",
                   help="'none': conventional training, GD with weight decay over --lr x --wd")
    p.add_argument("--momentum", default=None,
                   help="momenta in [0, 1): a comma list (e.g. 0,0.5,0.9) or 'a:b:N' (log-spaced): "
                        "a heavy-ball (or Adam beta1) axis at each fixed ELR")
    p.add_argument("--momentum-mode", choices=("official", "transport"), default=None,
                   help="the buffer after the rescale: left as is (official, the default) or "
                        "transported (with --momentum)")
    p.add_argument("--optimizer", choices=("heavy_ball", "adam"), default=None,
                   help="heavy_ball (default) or adam, whose beta1 is --momentum")
    p.add_argument("--beta2", type=float, default=None, help="Adam's beta2 in [0, 1) (default 0.999)")
    p.add_argument("--eps", type=float, default=None,
                   help="Adam's epsilon on the unit sphere, > 0 (default 1e-3)")
    p.add_argument("--lr", default=None,
                   help="learning rates for --constraint none: 'a:b:N' (log-spaced) or a comma list")
    p.add_argument("--wd", default=None,
                   help="weight decays >= 0 for --constraint none: 'a:b:N' or a comma list; every "
                        "lr*wd must be below 1")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--out", default=None, help="a .zarr store (written chunk by chunk, resumable) "
                                               "or a .nc file; checked before any work")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing .nc file (a .zarr store is resumed, never replaced)")
    p.add_argument("--verify", default=None, metavar="STORE",
                   help="check every finished chunk of a .zarr store against its recorded sha256 "
                        "and exit: 0 intact, 1 intact but incomplete, 2 damaged (naming the chunks)")
    p.add_argument("--scheduler", default=None,
                   help="a Dask scheduler address tcp://host:port: run the chunks on its workers")
    p.add_argument("--lyapunov", action="store_true", help="estimate the largest Lyapunov exponent")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="cells per chunk (default: about 2e8 element-steps per chunk)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=_cmd_scan)

    p = sub.add_parser("plot-scan", help="draw the phase diagram of a scan store")
    p.add_argument("store", help="a .zarr store written by `toymodel scan`")
    p.add_argument("--out", default=None, help="image file (default: the store's name with .png)")
    p.add_argument("--config", type=int, action="append", default=None,
                   help="configuration index to draw (repeatable; default all)")
    p.add_argument("--dpi", type=int, default=120, help="resolution (the image may have at most "
                                                          "1e8 pixels)")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="draw an unfinished store (missing cells are left out)")
    p.set_defaults(func=_cmd_plot_scan)
