"""``toymodel train`` and ``toymodel train-scan``: fixed-ELR training of SI networks (torch bridge).

Only argparse at import time; torch is imported when a command runs. Everything is checked before
the first step: the output path (``--out`` must not exist unless ``--overwrite``), every value,
the learning rate each ELR gives, the memory the network needs. ``train-scan`` keeps each
finished run in ``OUT.parts/`` (one file per ELR and seed, written atomically), so rerunning the
same command after an interruption or a failure trains only what is missing; the folder is
removed once ``OUT`` is written. ``train-scan --seeds`` adds a seed dim and ``--scheduler``
runs one task per run on a Dask cluster (`toymodel.bridge.netscan`); ``--preset NAME``
(`toymodel.bridge.presets`) fills the options not given. ``--optimizer sgd|adam`` (with
``--momentum``, ``--momentum-mode`` or ``--betas``) chooses `SphereSGD` or `SphereAdam` on both.
"""
from __future__ import annotations

import argparse
import shutil
import sys


def _common(p):
    p.add_argument("--preset", default=None,
                   help="paper-fig1 | resnet18-si: the paper's settings for every option not given "
                        "(docs/network_scan.md)")
    p.add_argument("--model", default=None, choices=("convnet-si", "resnet18-si"),
                   help="default convnet-si")
    p.add_argument("--data", default=None,
                   choices=("digits", "cifar10", "cifar100", "synthetic", "synthetic-cifar"),
                   help="default digits; synthetic-cifar: a CIFAR-shaped stand-in (tests)")
    p.add_argument("--data-root", default=None,
                   help="folder holding cifar-10-batches-py/ or cifar-100-python/ "
                        "(default $TOYMODEL_DATA or ~/.cache/toymodel/data); never downloads")
    p.add_argument("--input-size", type=int, default=None, help="resize images to N x N")
    p.add_argument("--epochs", type=int, default=None, help="default 60")
    p.add_argument("--width", type=int, default=None,
                   help="channels c of the first layer (default 8; paper: 32)")
    p.add_argument("--batch-size", type=int, default=None, help="default 128")
    p.add_argument("--seed", type=int, default=None, help="initial network and batch order "
                                                           "(default 0)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="seeded random crop (4-pixel padding) + horizontal flip of the train set")
    p.add_argument("--corrupt", type=float, default=None, metavar="P",
                   help="replace a seeded fraction P of the training labels by wrong ones; logs "
                        "train_loss_corrupted / train_loss_clean")
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
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"),
                   help="sgd: SphereSGD (--momentum, --momentum-mode); adam: SphereAdam at the "
                        "fixed ELR (--betas; its ELR is the tangent of a unit's first turn)")
    p.add_argument("--momentum", type=float, default=0.0, help="heavy-ball momentum in [0, 1)")
    p.add_argument("--momentum-mode", default="official", choices=("official", "transport"),
                   help="SphereSGD's buffer at the projection: left as is (official) or "
                        "transported to the new tangent space")
    p.add_argument("--betas", default=None, metavar="B1,B2",
                   help="SphereAdam's betas (default 0.9,0.999)")


def _betas_arg(text):
    """``"b1,b2"`` -> a pair of floats (their range is checked by the run's specification)."""
    if text is None:
        return None
    try:
        b1, b2 = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--betas must be two numbers B1,B2 (e.g. 0.9,0.999), got {text!r}") from None
    return (b1, b2)


def _check_out(args) -> str:
    from ._validate import output_path
    return output_path("--out", args.out, suffixes=(".nc",), overwrite=args.overwrite,
                       overwrite_hint="--overwrite")


#: defaults of the options a preset may set, applied after the preset
_BUILTIN = {"model": "convnet-si", "data": "digits", "epochs": 60, "width": 8, "batch_size": 128}


def _preset(args) -> dict:
    """The preset options: the given ones, the rest from ``--preset``, then `_BUILTIN`; the
    data options (augment, corrupt) only when on, and ``elrs`` only from a preset."""
    from .bridge import training
    from .bridge.data import corrupt_fraction
    from .bridge.presets import apply_preset
    given = {k: getattr(args, k) for k in ("model", "data", "epochs", "width", "batch_size",
                                           "augment", "corrupt")}
    filled = apply_preset(args.preset, given)
    out = {k: (v if filled.get(k) is None else filled[k]) for k, v in _BUILTIN.items()}
    out.update({k: filled[k] for k in ("augment", "corrupt", "elrs") if filled.get(k)})
    if "corrupt" in out:
        out["corrupt"] = corrupt_fraction(out["corrupt"])  # the bad value named before all else
    if ({"augment", "corrupt"} & set(out)) and not getattr(training, "DATA_OPTIONS", False):
        raise ValueError("--augment / --corrupt need a training loop that applies them "
                         "(toymodel.bridge.training.DATA_OPTIONS); this version's does not")
    return out


def _kwargs(args):
    if args.threads is not None:
        from ._validate import positive_int
        threads = positive_int("--threads", args.threads, 1)
        import torch
        torch.set_num_threads(threads)
    kw = dict(data_root=args.data_root, input_size=args.input_size,
              seed=0 if args.seed is None else args.seed, constraint=args.constraint,
              device=args.device, dtype=args.dtype, eval_every=args.eval_every,
              record_every=args.record_every, tail=args.tail, progress_bar=args.progress,
              optimizer=args.optimizer, momentum=args.momentum, momentum_mode=args.momentum_mode,
              betas=_betas_arg(args.betas))
    kw.update(_preset(args))
    kw.pop("elrs", None)
    return kw


def _row(d, seed=""):
    import numpy as np
    return (f"{float(d.elr):<10.3g} {seed:<6}{float(d.tail_loss):<11.4g} "
            f"{float(d.random_loss):<11.4g} {float(d.tail_grad_norm):<11.4g} "
            f"{np.degrees(float(d.tail_angle)):<9.3g} {1 - float(d.test_accuracy[-1]):<9.3f} "
            f"{str(d.regime.values)}")


def _print_table(ds):
    seeded = "seed" in ds.dims
    print(f"{'elr':<10} {'seed' if seeded else '':<6}{'tail_loss':<11} {'random':<11} "
          f"{'grad_norm':<11} {'angle°':<9} {'test_err':<9} regime")
    for i in range(ds.sizes["elr"]) if "elr" in ds.dims else [None]:
        row = ds if i is None else ds.isel(elr=i)
        for j in range(row.sizes["seed"]) if seeded else [None]:
            d = row if j is None else row.isel(seed=j)
            print(_row(d, "" if j is None else str(int(d.seed))))
            if str(d.regime_reason.values):
                print(f"{'':<16} {d.regime_reason.values}")


def _need_torch(command: str) -> None:
    """The torch extra is optional: say how to get it instead of a bare ModuleNotFoundError."""
    from ._deps import require
    require("torch", f"toymodel {command}")


def _cmd_train(args) -> int:
    out = _check_out(args)
    _need_torch("train")
    from .bridge._parts import write_netcdf_atomic
    from .bridge.training import train
    ds = train(elr=args.elr, **_kwargs(args), **_full_mode_kwargs(args))
    write_netcdf_atomic(ds, out)
    (_print_full if args.mode == "full" else _print_table)(ds)
    print(f"saved {args.out}")
    return 0


def _cmd_train_scan(args) -> int:
    out = _check_out(args)
    _need_torch("train-scan")
    from ._cli_scan import _seeds_arg
    from .bridge._parts import write_netcdf_atomic
    from .bridge.netscan import plan_scan, run_scan
    kw = _kwargs(args)
    elrs = args.elrs if args.elrs is not None else _preset(args).get("elrs")
    if elrs is None:
        raise ValueError("the following arguments are required: --elrs (or --preset NAME)")
    if args.seeds is not None:
        if args.seed is not None:
            raise ValueError(f"--seed {args.seed} and --seeds {args.seeds} exclude each other: "
                             "--seeds N (or a list) adds a seed dim, --seed S is one seed")
        kw.pop("seed")
    progress_bar = kw.pop("progress_bar")
    plan = plan_scan(elrs, None if args.seeds is None else _seeds_arg(args.seeds),
                     threads=args.threads, **kw)
    parts = out + ".parts"
    found = plan.found(parts)
    done = []
    try:
        ds = run_scan(plan, client=args.scheduler, parts=parts, callback=done.append,
                      progress_bar=progress_bar)
    except KeyboardInterrupt:
        if done:
            print(f"toymodel train-scan: kept {len(done)} of {plan.size} runs in {parts}; "
                  "rerun the same command to resume", file=sys.stderr)
        raise
    except ConnectionError as err:  # an unreachable scheduler: refused before any work
        raise ValueError(str(err)) from None
    except ValueError as err:
        if not done:
            raise
        raise ValueError(f"{err} (kept {len(done)} of {plan.size} runs in {parts}; rerun the same "
                         "command to resume)") from None
    write_netcdf_atomic(ds, out)
    shutil.rmtree(parts, ignore_errors=True)  # every run is in OUT now
    _print_table(ds)
    if found:
        print(f"resumed: {found} of {plan.size} runs read back from {parts}")
    print(f"saved {args.out}")
    return 0


# -- conventional training, checkpoints, sharpness (toymodel train) ------------------------------
_AFFINE_MODELS = ("convnet-si-af", "resnet18-si-af")


def _full_mode_options(p):
    """``toymodel train``'s options for ``--mode full``, checkpoints, sharpness and BN-updated
    test metrics (`toymodel.bridge.training.train`), and the affine models."""
    for action in p._actions:  # the affine variants join the models of `_common`
        if action.dest == "model" and action.choices:
            action.choices = tuple(action.choices) + _AFFINE_MODELS
    p.add_argument("--mode", default="sphere", choices=("sphere", "full"),
                   help="sphere: fixed ELR (SphereSGD); full: torch.optim.SGD, no projection")
    p.add_argument("--lr", type=float, default=None, help="learning rate (--mode full)")
    p.add_argument("--wd", type=float, default=0.0, help="weight decay (--mode full)")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="keep checkpoints in DIR (after the last epoch, and every "
                        "--checkpoint-every epochs)")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="K")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in --checkpoint DIR (bit for bit)")
    p.add_argument("--init-from", default=None, metavar="FILE",
                   help="start from the weights of a checkpoint file (a new run)")
    p.add_argument("--sharpness-every", type=int, default=0, metavar="K",
                   help="record the Hessian trace and top eigenvalue every K epochs (0: never)")
    p.add_argument("--bn-update", action="store_true",
                   help="also test with BN statistics recomputed on the training set")


def _full_mode_kwargs(args) -> dict:
    return dict(mode=args.mode, lr=args.lr, weight_decay=args.wd,
                checkpoint_dir=args.checkpoint, checkpoint_every=args.checkpoint_every,
                resume=args.resume, init_from=args.init_from,
                sharpness_every=args.sharpness_every, bn_update=args.bn_update)


def _print_full(ds):
    import numpy as np
    print(f"{'lr':<10} {'wd':<10} {'tail_loss':<11} {'tail_elr':<11} {'angle°':<9} "
          f"{'test_err':<9} regime")
    print(f"{float(ds.lr):<10.3g} {float(ds.weight_decay):<10.3g} {float(ds.tail_loss):<11.4g} "
          f"{float(ds.tail_effective_elr):<11.4g} {np.degrees(float(ds.tail_angle)):<9.3g} "
          f"{1 - float(ds.test_accuracy[-1]):<9.3f} {ds.regime.values}")


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train an SI network at fixed ELR (torch bridge)")
    p.add_argument("--elr", type=float, default=None,
                   help="total effective learning rate (required unless --mode full)")
    _common(p)
    _full_mode_options(p)
    p.set_defaults(func=_cmd_train)

    p = subparsers.add_parser("train-scan", help="fixed-ELR runs over an ELR grid (torch bridge)")
    p.add_argument("--elrs", default=None,
                   help="'a:b:N' (N log-spaced values) or 'x,y,...' (required unless --preset)")
    p.add_argument("--seeds", default=None,
                   help="a count N (seeds 0..N-1) or a comma list: a seed dim, as in toy scans")
    p.add_argument("--scheduler", default=None,
                   help="a Dask scheduler address tcp://host:port: one task per run on its workers")
    _common(p)
    p.set_defaults(func=_cmd_train_scan)
