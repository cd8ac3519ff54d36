r"""Figure 12 — better optima: pre-train at a fixed ELR, fine-tune at one small ELR (the paper's
experiment, ``toymodel finetune-scan``).

ConvNetSI on digits pre-trained at every ELR of a grid that spans the three regimes, each final
checkpoint fine-tuned at one small ELR (`toymodel.bridge.finetune_scan`); the baseline trains at
the small ELR from the start for the same number of epochs (dashed lines). Against the
pre-training ELR, with the pre-training regimes shaded: the train loss after fine-tuning, the test
error (eval mode with the running BatchNorm statistics, and with statistics recomputed on the
training set, the official ``bn_update``), and the sharpness of the optimum reached: the top
Hessian eigenvalue and the Hessian trace of the SI parameters times $\rho^2$ (the Hessian at the
unit sphere).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toymodel.figures import _common as C  # noqa: E402

NAME = "fig12_finetune"
TITLE = "Better optima: pre-training ELR against the optimum reached after fine-tuning"
CAPTION = ("ConvNetSI (width 4) on digits pre-trained at fixed ELRs across the three regimes, "
           "then fine-tuned at one small ELR; against the pre-training ELR (regimes shaded): "
           "train loss, test error (running and recomputed BN statistics) and sharpness "
           "(ρ²·top Hessian eigenvalue, ρ²·Hessian trace) after fine-tuning; dashed: the same "
           "budget at the small ELR from the start.")

FULL = dict(elrs="3e-3:0.3:13", finetune_elr=2e-3, pretrain_epochs=40, finetune_epochs=80, width=4)
QUICK = dict(elrs="0.01,0.1", finetune_elr=0.01, pretrain_epochs=1, finetune_epochs=1, width=2)
_FINAL = ("final_loss", "test_error", "test_error_bn", "top_eigenvalue",
          "effective_top_eigenvalue", "hessian_trace", "effective_hessian_trace")


def compute_dataset(quick=False, progress_bar=False):
    """Run the scan (``toymodel finetune-scan`` on digits); returns its Dataset."""
    import torch

    from toymodel.bridge.finetune import finetune_scan

    cfg = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: one thread is fastest on a busy machine
    try:
        return finetune_scan(seed=0, progress_bar=progress_bar, **cfg)
    finally:
        torch.set_num_threads(threads)


def compute(quick=False, keep=None):
    ds = compute_dataset(quick)
    if keep is not None:
        keep["nc"] = ds
    data = {"elr": ds.elr.values, "regime_code": C.regime_codes(ds.pretrain_regime.values),
            "pretrain_tail_loss": ds.pretrain_tail_loss.values,
            "pretrain_test_error_bn": ds.pretrain_test_error_bn.values,
            "finetune_loss": ds.finetune_loss.values, "baseline_loss": ds.baseline_loss.values}
    data.update({k: ds[k].values for k in _FINAL})
    data.update({f"baseline_{k}": np.asarray(float(ds[f"baseline_{k}"])) for k in _FINAL})
    cfg = QUICK if quick else FULL
    params = C.provenance(**cfg, model="convnet-si", data="digits", seed=0,
                          regime_codes=list(C.REGIME_CODES))
    return data, params


def plot(data, params):
    """Draw the three panels from the saved data."""
    fig, (a0, a1, a2) = C.new_figure(1, 3, figsize=(11.0, 3.6))
    elrs = data["elr"]
    for ax in (a0, a1, a2):
        if elrs.size > 1:
            C.shade_regimes(ax, elrs, data["regime_code"], label=ax is a0)
        ax.set(xscale="log", xlabel="pre-training ELR")
    a0.plot(elrs, data["final_loss"], "o-", color="C0", ms=3, lw=1, label="after fine-tuning")
    a0.axhline(float(data["baseline_final_loss"]), color="C0", ls="--", lw=1,
               label="small ELR from the start")
    a0.set(yscale="log", ylabel="train loss", title="train loss after fine-tuning")
    a0.legend(fontsize=6)
    for key, colour, label in (("test_error", "C1", "running BN statistics"),
                               ("test_error_bn", "C2", "BN statistics recomputed")):
        a1.plot(elrs, 100 * data[key], "o-", color=colour, ms=3, lw=1, label=label)
        a1.axhline(100 * float(data[f"baseline_{key}"]), color=colour, ls="--", lw=1)
    a1.set(ylabel="test error (%)", title="test error after fine-tuning")
    a1.legend(fontsize=6)
    for key, colour, label in (("effective_top_eigenvalue", "C3", "ρ²·λ_max"),
                               ("effective_hessian_trace", "C4", "ρ²·tr H")):
        a2.plot(elrs, np.abs(data[key]), "o-", color=colour, ms=3, lw=1, label=label)
        a2.axhline(abs(float(data[f"baseline_{key}"])), color=colour, ls="--", lw=1)
    a2.set(yscale="log", ylabel="curvature at the unit sphere", title="sharpness of the optimum")
    a2.legend(fontsize=6)
    fig.suptitle(f"ConvNetSI (width {params.get('width', '?')}) on digits: pre-train "
                 f"{params.get('pretrain_epochs', '?')} epochs, fine-tune "
                 f"{params.get('finetune_epochs', '?')} at ELR {params.get('finetune_elr', '?')}",
                 fontsize=9)
    return fig


def main(out_dir, quick=False):
    """Compute, save ``fig12_finetune.{npz,nc,png,pdf}``; returns the paths."""
    return C.write_figure_and_dataset(NAME, compute, plot, out_dir, quick)


if __name__ == "__main__":
    C.script(main, CAPTION)
