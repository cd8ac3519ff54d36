"""``toymodel figures``: regenerate every figure script under ``figures/`` (PNG + PDF + data).

Each ``figures/figNN_<name>.py`` exposes ``main(out_dir, quick=False)`` (the toy figures also
``backend="auto"``, which ``--backend`` sets). Figures whose optional
dependencies are missing (``fig07`` needs torch) are skipped with a message, not failed.
"""
from __future__ import annotations

import importlib
import inspect
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

#: optional packages a figure needs, by figure number prefix.
_NEEDS = {name: ("torch",) for name in ("fig07", "fig12", "fig13", "fig14", "fig15")}
_NEEDS["fig16"] = ("torch",)  # fig16_network_optimizers: SphereSGD / SphereAdam runs


def _figures_package():
    """Import the figure scripts, installed as ``toymodel.figures`` (the repository's ``figures/``)."""
    try:
        return importlib.import_module("toymodel.figures")
    except ModuleNotFoundError as err:
        if err.name != "toymodel.figures":
            raise
        raise ImportError("the figure scripts (toymodel.figures) are not installed; install the "
                          "package from a checkout of the repository (pip install -e .)") from None


def select(available, only):
    """The figure modules to run: all, or those named in ``only`` (``fig02`` or ``fig02_total_elr_scan``)."""
    if not only:
        return list(available)
    chosen = []
    for key in (k.strip() for k in only.split(",") if k.strip()):
        hits = [name for name in available if name == key or name.split("_")[0] == key]
        if not hits:
            raise ValueError(f"--only: unknown figure {key!r}; available: {', '.join(available)}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def missing_requirements(name):
    """Optional packages the figure ``name`` needs that are not installed."""
    needs = _NEEDS.get(name.split("_")[0], ())
    return [pkg for pkg in needs if importlib.util.find_spec(pkg) is None]


def check_folder(option, path):
    """Refuse an output folder that is a file, or sits under one, before any figure runs."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a file, not a folder; give a folder name")
    parent = p
    while not parent.exists():  # the first existing ancestor is where mkdir will start
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {str(path)!r} lies under the file {str(parent)!r}")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{option} {str(path)!r}: {str(parent)!r} is not writable")


def _cmd_figures(args) -> int:
    check_folder("--out", args.out)
    if args.gallery:
        check_folder("--gallery", args.gallery)
    os.environ.setdefault("MPLBACKEND", "Agg")
    from . import backend as _backend
    from ._progress import progress

    pkg = _figures_package()
    names = select(pkg.FIGURES, args.only)
    if args.backend == "auto" and args.quick:
        # quick grids take seconds in NumPy, less than compiling the Numba kernels would
        args.backend = "numpy"
    return _run(names, args, _backend, progress)


def _run(names, args, _backend, progress) -> int:
    out = Path(args.out)
    gallery = Path(args.gallery) if args.gallery else None
    failed, skipped = [], []
    mode = "quick" if args.quick else "full"
    print(f"toymodel figures: {len(names)} figure(s), {mode} mode, backend "
          f"{_backend.resolve(args.backend)}, into {out}/", file=sys.stderr)
    with progress(total=len(names), desc="figures") as bar:
        say = getattr(bar, "write", None) or (lambda msg: print(msg, file=sys.stderr))
        for name in names:
            if hasattr(bar, "set_postfix_str"):
                bar.set_postfix_str(name)
            missing = missing_requirements(name)
            if missing:
                skipped.append(name)
                say(f"  {name}: skipped (needs {', '.join(missing)}: "
                    f"pip install 'toymodel[{missing[0]}]')")
                bar.update()
                continue
            t0 = time.perf_counter()
            try:
                mod = importlib.import_module(f"toymodel.figures.{name}")
                # the toy figures take the backend as a parameter; the network ones train with torch
                takes = "backend" in inspect.signature(mod.main).parameters
                paths = (mod.main(out, quick=args.quick, backend=args.backend) if takes
                         else mod.main(out, quick=args.quick))
            except Exception as err:  # one broken figure must not hide the others
                failed.append(name)
                say(f"  {name}: FAILED: {type(err).__name__}: {err}")
                bar.update()
                continue
            if gallery is not None:
                gallery.mkdir(parents=True, exist_ok=True)
                for p in map(Path, paths):
                    if p.suffix == ".png":
                        shutil.copy2(p, gallery / p.name)
            say(f"  {name}: {time.perf_counter() - t0:.1f} s -> "
                f"{', '.join(Path(p).name for p in paths)}")
            bar.update()
    print(f"toymodel figures: {len(names) - len(failed) - len(skipped)} written, "
          f"{len(skipped)} skipped, {len(failed)} failed", file=sys.stderr)
    return 1 if failed else 0


def register(subparsers) -> None:
    """Add the ``figures`` subcommand."""
    from .backend import BACKENDS

    p = subparsers.add_parser(
        "figures", help="regenerate the theory figures (PNG + PDF + data) with a progress display",
        description="Run every figures/figNN_<name>.py: each writes NAME.png, NAME.pdf and the "
                    "data behind it (NAME.npz, parameters included) into --out.")
    p.add_argument("--quick", action="store_true",
                   help="small grids and short runs (under a minute in all); default: full mode")
    p.add_argument("--out", default="figures/out", help="output folder (default: figures/out)")
    p.add_argument("--only", default=None,
                   help="comma-separated figures to run, e.g. fig02,fig05 (default: all)")
    p.add_argument("--gallery", default=None, metavar="DIR",
                   help="also copy the PNGs into DIR (the docs gallery is docs/img)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="compute backend for the batch runs (default: the fastest installed; "
                        "NumPy in --quick mode, where compiling kernels would cost more than "
                        "the runs)")
    p.set_defaults(func=_cmd_figures)
