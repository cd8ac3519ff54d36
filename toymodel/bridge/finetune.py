r"""The paper's "better optima" experiment: pre-train at every ELR of a grid, fine-tune each at one
small ELR, compare the optima reached (docs/network_full.md).

`finetune_scan` runs, for every pre-training ELR $\tilde\eta$ of the grid (spanning the three
regimes), a fixed-ELR run of ``pretrain_epochs`` checkpointed at its end
(`toymodel.bridge.checkpoints`), then a new fixed-ELR run at ``finetune_elr`` of
``finetune_epochs`` started from that checkpoint's weights (``init_from``). The *baseline* is a
run at ``finetune_elr`` from the initial network for ``pretrain_epochs + finetune_epochs``: the
same budget, trained at the small ELR from the start. Every run records the test metrics with
running and with recomputed BN statistics (``bn_update``), and the curvature at its last epoch
(``sharpness_every``): the top Hessian eigenvalue and the Hessian trace of the SI parameters,
raw and $\times\|\theta\|^2$ (the Hessian at the unit sphere).

Result (dim ``elr``, the pre-training ELR): ``pretrain_regime``, ``pretrain_tail_loss``,
``pretrain_test_error``, ``pretrain_test_error_bn``; after fine-tuning ``final_loss`` (the mean
train loss of the last epoch), ``finetune_regime``, ``test_error``, ``test_error_bn``,
``hessian_trace``, ``effective_hessian_trace``, ``top_eigenvalue``, ``effective_top_eigenvalue``;
the curves ``pretrain_loss`` (``pretrain_epoch``) and ``finetune_loss`` (``finetune_epoch``);
the same final quantities of the baseline as ``baseline_*`` scalars (``baseline_regime``, its curve
``baseline_loss``, dim ``baseline_epoch``).

With ``checkpoint_dir`` every run keeps its checkpoints there (``pretrain_elr_<e>/``,
``finetune_elr_<e>/``, ``baseline/``) and a rerun of the same call resumes: finished runs are
read back from their last checkpoint instead of trained again. Without it they live in a
temporary folder removed at the end.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from .._progress import progress
from .._validate import positive_finite, positive_int
from ._checks import _si_params, check_lr
from .checkpoints import Checkpoints
from .groups import si_groups
from .training import parse_elrs, prepare, train

__all__ = ["finetune_scan"]

_FINAL = ("hessian_trace", "effective_hessian_trace", "top_eigenvalue", "effective_top_eigenvalue")


def _final(ds) -> dict:
    """The quantities of a finished run compared across the scan (last epoch)."""
    out = {"final_loss": float(ds.loss[-1]), "test_error": 1 - float(ds.test_accuracy[-1]),
           "test_error_bn": 1 - float(ds.test_accuracy_bn[-1]),
           "finetune_regime": str(ds.regime.values)}
    out.update({k: float(ds[k][-1]) for k in _FINAL})
    return out


def finetune_scan(elrs, *, finetune_elr, pretrain_epochs, finetune_epochs, model="convnet-si",
                  data="digits", width=8, batch_size=128, seed=0, constraint="total",
                  device="cpu", dtype="float32", data_root=None, input_size=None,
                  checkpoint_dir=None, progress_bar=True):
    r"""Pre-train at each ELR of ``elrs``, fine-tune every checkpoint at ``finetune_elr``
    (module docstring); returns the xarray Dataset.

    Parameters
    ----------
    elrs
        The pre-training ELRs: ``"a:b:N"`` (log-spaced), ``"x,y,z"`` or a sequence
        (`toymodel.bridge.parse_elrs`); choose them across the three regimes.
    finetune_elr
        The small ELR $\tilde\eta_{ft}$ of every fine-tuning run and of the baseline.
    pretrain_epochs, finetune_epochs
        Epochs of each stage ($\ge1$); the baseline trains their sum.
    model, data, width, batch_size, seed, constraint, device, dtype, data_root, input_size
        As in `toymodel.bridge.train`; every run starts from the network drawn from ``seed``.
    checkpoint_dir
        Where the runs keep their checkpoints (a rerun resumes); ``None``: a temporary folder.
    progress_bar
        One bar over the pre-training ELRs, and the bars of the runs.
    """
    import xarray as xr

    elrs = parse_elrs(elrs)
    finetune_elr = positive_finite("finetune_elr", finetune_elr)
    pre_n = positive_int("pretrain_epochs", pretrain_epochs, 1)
    ft_n = positive_int("finetune_epochs", finetune_epochs, 1)
    setup = dict(model=model, data=data, width=width, seed=seed, device=device, dtype=dtype,
                 data_root=data_root, input_size=input_size)
    net, _, _ = prepare(**setup)
    check_lr(np.append(elrs, finetune_elr), _si_params(si_groups(net)))  # all refused up front
    del net
    common = dict(setup, batch_size=batch_size, constraint=constraint, bn_update=True,
                  progress_bar=progress_bar, resume=True)
    temp = tempfile.TemporaryDirectory(prefix="toymodel-finetune-") if checkpoint_dir is None \
        else None
    root = temp.name if temp is not None else os.fspath(checkpoint_dir)
    try:
        rows, pre_runs, ft_runs = [], [], []
        with progress(total=elrs.size, desc="finetune-scan", disable=not progress_bar) as bar:
            for e in elrs:
                folder = os.path.join(root, f"pretrain_elr_{float(e)!r}")
                pre = train(elr=float(e), epochs=pre_n, checkpoint_dir=folder, **common)
                ft = train(elr=finetune_elr, epochs=ft_n, sharpness_every=ft_n,
                           init_from=Checkpoints(folder).latest(),
                           checkpoint_dir=os.path.join(root, f"finetune_elr_{float(e)!r}"),
                           **common)
                rows.append({"pretrain_regime": str(pre.regime.values),
                             "pretrain_tail_loss": float(pre.tail_loss),
                             "pretrain_test_error": 1 - float(pre.test_accuracy[-1]),
                             "pretrain_test_error_bn": 1 - float(pre.test_accuracy_bn[-1]),
                             **_final(ft)})
                pre_runs.append(pre.loss.values)
                ft_runs.append(ft.loss.values)
                bar.update(1)
        base = train(elr=finetune_elr, epochs=pre_n + ft_n, sharpness_every=pre_n + ft_n,
                     checkpoint_dir=os.path.join(root, "baseline"), **common)
    finally:
        if temp is not None:
            temp.cleanup()
    out = {k: ("elr", np.asarray([r[k] for r in rows])) for k in rows[0]}
    out["pretrain_loss"] = (("elr", "pretrain_epoch"), np.stack(pre_runs))
    out["finetune_loss"] = (("elr", "finetune_epoch"), np.stack(ft_runs))
    out.update({f"baseline_{k.replace('finetune_', '')}": v for k, v in _final(base).items()})
    out["baseline_loss"] = ("baseline_epoch", base.loss.values)
    ds = xr.Dataset(out, coords={"elr": elrs, "pretrain_epoch": np.arange(1, pre_n + 1),
                                 "finetune_epoch": np.arange(1, ft_n + 1),
                                 "baseline_epoch": np.arange(1, pre_n + ft_n + 1)})
    ds.attrs.update({k: v for k, v in base.attrs.items()
                     if k not in ("epochs", "tail", "init_from", "resumed_from_epoch")})
    ds.attrs.update(finetune_elr=finetune_elr, pretrain_epochs=pre_n, finetune_epochs=ft_n)
    return ds
