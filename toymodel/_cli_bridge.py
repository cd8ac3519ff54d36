"""``toymodel train`` and ``toymodel train-scan``: fixed-ELR training of SI networks (torch bridge).

Only argparse at import time; torch is imported when a command runs. Everything is checked before
the first step: the output path (``--out`` must not exist unless ``--overwrite``), every value,
the learning rate each ELR gives, the memory the network needs. ``train-scan`` keeps each
finished run in ``OUT.parts/`` (one file per ELR and seed, written atomically), so rerunning the
same command after an interruption or a failure trains only what is missing; the folder is
removed once ``OUT`` is written.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys


def _common(p):
    p.add_argument("--model", default="convnet-si", choices=("convnet-si", "resnet18-si"))
    p.add_argument("--data", default="digits", choices=("digits", "cifar10", "cifar100", "synthetic"))
    p.add_argument("--data-root", default=None,
                   help="folder holding cifar-10-batches-py/ or cifar-100-python/ "
                        "(default $TOYMODEL_DATA or ~/.cache/toymodel/data); never downloads")
    p.add_argument("--input-size", type=int, default=None, help="resize images to N x N")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--width", type=int, default=8, help="channels c of the first layer (paper: 32)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="initial network and batch order")
    p.add_argument("--constraint", default="total", choices=("total", "individual", "per-filter"))
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--eval-every", type=int, default=1,
                   help="evaluate the test set every k epochs (and at the last)")
    p.add_argument("--record-every", type=int, default=1, help="keep every k-th step's trace")
    p.add_argument("--tail", type=int, default=None, help="epochs averaged for the regime "
                                                          "(default: last 10%%)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 is fastest on a busy machine)")
    p.add_argument("--out", required=True, help="output NetCDF file (.nc)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def _check_out(args) -> str:
    from ._validate import output_path
    return output_path("--out", args.out, suffixes=(".nc",), overwrite=args.overwrite,
                       overwrite_hint="--overwrite")


def _kwargs(args):
    if args.threads is not None:
        from ._validate import positive_int
        threads = positive_int("--threads", args.threads, 1)
        import torch
        torch.set_num_threads(threads)
    return dict(model=args.model, data=args.data, data_root=args.data_root,
                input_size=args.input_size, epochs=args.epochs, width=args.width,
                batch_size=args.batch_size, seed=args.seed, constraint=args.constraint,
                device=args.device, dtype=args.dtype, eval_every=args.eval_every,
                record_every=args.record_every, tail=args.tail, progress_bar=args.progress)


def _row(d):
    import numpy as np
    return (f"{float(d.elr):<10.3g} {float(d.tail_loss):<11.4g} {float(d.random_loss):<11.4g} "
            f"{float(d.tail_grad_norm):<11.4g} {np.degrees(float(d.tail_angle)):<9.3g} "
            f"{1 - float(d.test_accuracy[-1]):<9.3f} {str(d.regime.values)}")


_HEAD = (f"{'elr':<10} {'tail_loss':<11} {'random':<11} {'grad_norm':<11} {'angle°':<9} "
         f"{'test_err':<9} regime")


def _print_table(ds):
    print(_HEAD)
    for i in range(ds.sizes["elr"]) if "elr" in ds.dims else [None]:
        d = ds if i is None else ds.isel(elr=i)
        print(_row(d))
        if str(d.regime_reason.values):
            print(f"{'':<10} {d.regime_reason.values}")


def _need_torch(command: str) -> None:
    """The torch extra is optional: say how to get it instead of a bare ModuleNotFoundError."""
    from ._deps import require
    require("torch", f"toymodel {command}")


def _cmd_train(args) -> int:
    out = _check_out(args)
    _need_torch("train")
    from .bridge._parts import write_netcdf_atomic
    from .bridge.training import train
    ds = train(elr=args.elr, **_kwargs(args))
    write_netcdf_atomic(ds, out)
    _print_table(ds)
    print(f"saved {args.out}")
    return 0


def _cmd_train_scan(args) -> int:
    out = _check_out(args)
    _need_torch("train-scan")
    from .bridge._parts import part_name, write_netcdf_atomic
    from .bridge.training import parse_elrs, train_scan
    elrs = parse_elrs(args.elrs)
    parts = out + ".parts"
    found = sum(os.path.isfile(os.path.join(parts, part_name(e, args.seed))) for e in elrs)
    done = []
    try:
        ds = train_scan(elrs, parts=parts, callback=done.append, **_kwargs(args))
    except KeyboardInterrupt:
        if done:
            print(f"toymodel train-scan: kept {len(done)} of {elrs.size} runs in {parts}; "
                  "rerun the same command to resume", file=sys.stderr)
        raise
    except ValueError as err:
        if not done:
            raise
        raise ValueError(f"{err} (kept {len(done)} of {elrs.size} runs in {parts}; rerun the same "
                         "command to resume)") from None
    write_netcdf_atomic(ds, out)
    shutil.rmtree(parts, ignore_errors=True)  # every run is in OUT now
    _print_table(ds)
    if found:
        print(f"resumed: {found} of {elrs.size} runs read back from {parts}")
    print(f"saved {args.out}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train an SI network at fixed ELR (torch bridge)")
    p.add_argument("--elr", type=float, required=True, help="total effective learning rate")
    _common(p)
    p.set_defaults(func=_cmd_train)

    p = subparsers.add_parser("train-scan", help="fixed-ELR runs over an ELR grid (torch bridge)")
    p.add_argument("--elrs", required=True, help="'a:b:N' (N log-spaced values) or 'x,y,...'")
    _common(p)
    p.set_defaults(func=_cmd_train_scan)
