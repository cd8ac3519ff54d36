"""``toymodel scan`` and ``toymodel plot-scan``: phase-diagram scans from the command line.

Registered by `toymodel.cli.build_parser`; xarray, zarr, matplotlib and dask are imported
inside the commands only.
"""
from __future__ import annotations

import argparse
import os

import numpy as np


def _seeds_arg(text: str):
    text = text.strip()
    if "," in text:
        return [t.strip() for t in text.split(",") if t.strip()]
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--seeds must be a count N or a comma list of seeds, got {text!r}") from None


def _cmd_scan(args) -> int:
    from .scan import agreement, scan

    alphas = args.alphas
    configs = alphas[0] if len(alphas) == 1 else alphas
    out = args.out
    if out is not None and os.path.splitext(out)[1] not in (".zarr", ".nc"):
        raise ValueError(f"--out must end in .zarr (resumable store) or .nc (NetCDF), got {out!r}")
    store = out if out is not None and out.endswith(".zarr") else None
    ds = scan(configs, args.elrs, seeds=_seeds_arg(args.seeds), steps=args.steps, tail=args.tail,
              constraint=args.constraint, backend=args.backend, dtype=args.dtype, store=store,
              lyapunov=args.lyapunov, client=args.scheduler, chunk_size=args.chunk_size,
              progress_bar=args.progress, dim=args.dim)
    if out is not None and store is None:
        ds.to_netcdf(out)
    _print_summary(ds, agreement)
    if out is not None:
        print(f"saved {out}")
    return 0


def _print_summary(ds, agreement) -> None:
    from .scan import convergence_boundary

    n = int(np.prod([ds.sizes[d] for d in ("elr", "config", "seed")]))
    print(f"{n} cells ({ds.sizes['elr']} ELRs x {ds.sizes['config']} configs x "
          f"{ds.sizes['seed']} seeds), backend {ds.attrs.get('backend')}, dtype {ds.attrs.get('dtype')}")
    agree = agreement(ds, window=0.0, by_config=True).values
    agree5 = agreement(ds, window=0.05, by_config=True).values
    boundary = np.atleast_1d(convergence_boundary(ds).values)
    for j in range(ds.sizes["config"]):
        sub = ds.isel(config=j)
        labels, counts = np.unique(sub["regime"].values.astype(str), return_counts=True)
        alphas = sub["alphas"].values
        text = ", ".join(f"{lab} {c}" for lab, c in zip(labels, counts))
        print(f"config {j} alphas={alphas[np.isfinite(alphas)].tolist()}: {text}; agreement with "
              f"predict_regime {agree[j]:.3f} (excluding +-5% around the convergence boundary "
              f"{boundary[j]:.4g}: {agree5[j]:.3f})")


def _cmd_plot_scan(args) -> int:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .scan import open_scan, plot_scan

    ds = open_scan(args.store, allow_incomplete=args.allow_incomplete).load()
    out = args.out or os.path.splitext(os.path.normpath(args.store))[0] + ".png"
    fig = plot_scan(ds, configs=args.config)
    fig.savefig(out, dpi=args.dpi)
    plt.close(fig)
    print(f"saved {out}")
    return 0


def register(sub) -> None:
    """Add ``scan`` and ``plot-scan`` to the ``toymodel`` command line."""
    from .backend import BACKENDS

    p = sub.add_parser("scan", help="phase-diagram scan over ELR x configuration x seed",
                       description="Run every (ELR, configuration, seed) cell and store the "
                                   "summaries; re-running the same command resumes an "
                                   "interrupted .zarr store.")
    p.add_argument("--alphas", action="append", required=True,
                   help="group curvatures, e.g. 1,2,4; repeat the option for several configurations")
    p.add_argument("--elrs", required=True,
                   help="'a:b:N' for N log-spaced ELRs from a to b, or a comma list")
    p.add_argument("--seeds", default="4", help="a count N (seeds 0..N-1) or a comma list (default 4)")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--tail", type=int, default=2000)
    p.add_argument("--dim", type=int, default=2, help="dimension d of each group (default 2)")
    p.add_argument("--constraint", choices=("total", "individual"), default="total")
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    p.add_argument("--out", default=None, help="a .zarr store (written chunk by chunk, resumable) "
                                               "or a .nc file")
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
    p.add_argument("--dpi", type=int, default=120)
    p.add_argument("--allow-incomplete", action="store_true",
                   help="draw an unfinished store (missing cells are left out)")
    p.set_defaults(func=_cmd_plot_scan)
