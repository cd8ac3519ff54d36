"""``toymodel train`` and ``toymodel train-scan``: fixed-ELR training of SI networks (torch bridge).

Only argparse at import time; torch is imported when a command runs.
"""
from __future__ import annotations

import argparse


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
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)


def _kwargs(args):
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be an integer >= 1, got {args.threads}")
        import torch
        torch.set_num_threads(args.threads)
    return dict(model=args.model, data=args.data, data_root=args.data_root,
                input_size=args.input_size, epochs=args.epochs, width=args.width,
                batch_size=args.batch_size, seed=args.seed, constraint=args.constraint,
                device=args.device, dtype=args.dtype, eval_every=args.eval_every,
                record_every=args.record_every, tail=args.tail, progress_bar=args.progress)


def _check_out(path):
    if not str(path).endswith(".nc"):
        raise ValueError(f"--out must be a NetCDF path ending in .nc, got {path!r}")


def _row(d):
    import numpy as np
    return (f"{float(d.elr):<10.3g} {float(d.tail_loss):<11.4g} {float(d.random_loss):<11.4g} "
            f"{float(d.tail_grad_norm):<11.4g} {np.degrees(float(d.tail_angle)):<9.3g} "
            f"{1 - float(d.test_accuracy[-1]):<9.3f} {str(d.regime.values)}")


_HEAD = (f"{'elr':<10} {'tail_loss':<11} {'random':<11} {'grad_norm':<11} {'angle°':<9} "
         f"{'test_err':<9} regime")


def _cmd_train(args) -> int:
    _check_out(args.out)
    from .training import train
    ds = train(elr=args.elr, **_kwargs(args))
    ds.to_netcdf(args.out)
    print(_HEAD)
    print(_row(ds))
    print(f"saved {args.out}")
    return 0


def _cmd_train_scan(args) -> int:
    _check_out(args.out)
    from .training import parse_elrs, train_scan
    ds = train_scan(parse_elrs(args.elrs), **_kwargs(args))
    ds.to_netcdf(args.out)
    print(_HEAD)
    for i in range(ds.sizes["elr"]):
        print(_row(ds.isel(elr=i)))
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
