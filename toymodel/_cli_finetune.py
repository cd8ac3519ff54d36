"""``toymodel finetune-scan``: pre-train at every ELR of a grid, fine-tune each at one small ELR.

Only argparse at import time; torch is imported when the command runs. The output path is checked
before any work (``--out`` must not exist unless ``--overwrite``), every value before the first
step. With ``--checkpoint DIR`` every run keeps its checkpoints there and rerunning the same
command resumes (finished runs are read back); without it they live in a temporary folder.
"""
from __future__ import annotations

import argparse

_MODELS = ("convnet-si", "resnet18-si", "convnet-si-af", "resnet18-si-af")


def _cmd_finetune_scan(args) -> int:
    from ._deps import require
    from ._validate import output_path, positive_int
    out = output_path("--out", args.out, suffixes=(".nc",), overwrite=args.overwrite,
                      overwrite_hint="--overwrite")
    require("torch", "toymodel finetune-scan")
    if args.threads is not None:
        import torch
        torch.set_num_threads(positive_int("--threads", args.threads, 1))
    from .bridge._parts import write_netcdf_atomic
    from .bridge.finetune import finetune_scan
    ds = finetune_scan(args.elrs, finetune_elr=args.finetune_elr,
                       pretrain_epochs=args.pretrain_epochs, finetune_epochs=args.finetune_epochs,
                       model=args.model, data=args.data, width=args.width,
                       batch_size=args.batch_size, seed=args.seed, constraint=args.constraint,
                       device=args.device, dtype=args.dtype, data_root=args.data_root,
                       input_size=args.input_size, checkpoint_dir=args.checkpoint,
                       progress_bar=args.progress)
    write_netcdf_atomic(ds, out)
    _print_table(ds)
    print(f"saved {args.out}")
    return 0


def _print_table(ds):
    print(f"{'pretrain elr':<13} {'regime':<20} {'final_loss':<11} {'test_err':<9} "
          f"{'err_bn':<9} {'top_eig·ρ²':<11} {'trace·ρ²':<11}")

    def row(label, regime, d, pre=""):
        print(f"{label:<13} {regime:<20} {float(d[pre + 'final_loss']):<11.4g} "
              f"{float(d[pre + 'test_error']):<9.3f} {float(d[pre + 'test_error_bn']):<9.3f} "
              f"{float(d[pre + 'effective_top_eigenvalue']):<11.4g} "
              f"{float(d[pre + 'effective_hessian_trace']):<11.4g}")

    for i in range(ds.sizes["elr"]):
        d = ds.isel(elr=i)
        row(f"{float(d.elr):.3g}", str(d.pretrain_regime.values), d)
    row("baseline", f"(elr {ds.attrs['finetune_elr']:.3g} only)", ds, "baseline_")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "finetune-scan", help="pre-train over an ELR grid, fine-tune each at one small ELR "
                              "(torch bridge; the paper's better-optima experiment)")
    p.add_argument("--elrs", required=True, help="pre-training ELRs: 'a:b:N' or 'x,y,...'")
    p.add_argument("--finetune-elr", type=float, required=True,
                   help="the small ELR of every fine-tuning run and of the baseline")
    p.add_argument("--pretrain-epochs", type=int, default=40)
    p.add_argument("--finetune-epochs", type=int, default=40)
    p.add_argument("--model", default="convnet-si", choices=_MODELS)
    p.add_argument("--data", default="digits", choices=("digits", "cifar10", "cifar100", "synthetic"))
    p.add_argument("--data-root", default=None, help="folder of the CIFAR pickles; never downloads")
    p.add_argument("--input-size", type=int, default=None, help="resize images to N x N")
    p.add_argument("--width", type=int, default=8, help="channels c of the first layer")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="initial network and batch order")
    p.add_argument("--constraint", default="total", choices=("total", "individual", "per-filter"))
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="keep every run's checkpoints in DIR; rerunning resumes")
    p.add_argument("--out", required=True, help="output NetCDF file (.nc)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=_cmd_finetune_scan)
