r"""Figure 7 — the three regimes in a real SI network (the paper's Figure 1, torch bridge).

ConvNetSI trained with `toymodel.bridge.SphereSGD` at fixed total ELR (T5) on scikit-learn's
digits, one run per ELR from the same initial network (``toymodel train-scan``). Panels: train
loss, test error, mean effective gradient norm $\rho\,\mathrm{mean}_b\|\nabla L_b\|$ (T2)
per epoch, and the effective gradient against the loss (one point per epoch). Line colour encodes
the ELR; the legend gives each run's regime from `toymodel.regimes.classify_summary`.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toymodel.figures import _common as C  # noqa: E402

NAME = "fig07_real_network"
TITLE = "A real SI network: ConvNetSI on digits over an ELR grid"
CAPTION = ("ConvNetSI (width 8, BN without affine, frozen head of norm 10) trained on the sphere "
           "with fixed total ELR on sklearn digits. Small ELRs converge (loss → 0, effective "
           "gradient falls), intermediate ELRs hold a loss plateau with a bounded effective "
           "gradient (chaotic equilibrium), large ELRs stay at the random level with an "
           "effective gradient that grows with the ELR (divergence).")

FULL = dict(elrs="1e-3:1:16", epochs=60, width=8)
QUICK = dict(elrs="1e-2,4e-2,0.5", epochs=4, width=2)
_SHORT = {"convergence": "conv", "chaotic_equilibrium": "equil", "divergence": "div",
          "invalid": "invalid"}


def compute(quick=False, progress_bar=False):
    """Run the ELR scan (``toymodel train-scan`` on digits); returns the xarray Dataset."""
    import torch

    from toymodel.bridge import train_scan

    cfg = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these nets are tiny: one thread is fastest (3-7x on a busy machine)
    try:
        ds = train_scan(cfg["elrs"], epochs=cfg["epochs"], width=cfg["width"], model="convnet-si",
                        data="digits", seed=0, progress_bar=progress_bar)
    finally:
        torch.set_num_threads(threads)
    ds.attrs["quick"] = int(bool(quick))
    return ds


def plot(ds):
    """Draw the four panels from a train-scan Dataset (dims ``elr``, ``epoch``)."""
    import matplotlib as mpl

    fig, axes = C.new_figure(2, 2, figsize=(7.4, 5.6))
    (a0, a1), (a2, a3) = axes
    elrs = ds.elr.values
    norm = mpl.colors.LogNorm(vmin=elrs.min(), vmax=elrs.max() if elrs.max() > elrs.min() else elrs.min() * 10)
    cmap = mpl.colormaps["viridis"]
    epoch = ds.epoch.values
    for i, elr in enumerate(elrs):
        d = ds.isel(elr=i)
        color = cmap(norm(elr))
        label = f"{elr:.2g} ({_SHORT.get(str(d.regime.values), '?')})"
        a0.plot(epoch, d.loss, color=color, lw=1.0, label=label)
        err = 1 - d.test_accuracy.values
        ok = np.isfinite(err)
        a1.plot(epoch[ok], 100 * err[ok], color=color, lw=1.0)
        a2.plot(epoch, d.grad_norm, color=color, lw=1.0)
        a3.scatter(d.loss, d.grad_norm, color=color, s=5, alpha=0.7, rasterized=True)
    rand = float(np.mean(ds.random_loss.values))
    for ax in (a0, a3):
        line = ax.axhline if ax is a0 else ax.axvline
        line(rand, color="k", ls="--", lw=0.8)
    a0.text(epoch[-1], rand, "random level", ha="right", va="bottom", fontsize=7)
    a0.set(yscale="log", xlabel="epoch", ylabel="train loss", title="train loss")
    a1.set(xlabel="epoch", ylabel="test error (%)", title="test error", ylim=(0, 100))
    a2.set(yscale="log", xlabel="epoch", ylabel="mean effective gradient norm",
           title="effective gradient ρ·mean‖∇L_b‖")
    a3.set(xscale="log", yscale="log", xlabel="train loss", ylabel="mean effective gradient norm",
           title="effective gradient vs loss")
    a0.legend(title="ELR (regime)", fontsize=5.5, title_fontsize=6, ncol=2, loc="lower left")
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=[a1, a3], label="ELR", shrink=0.8)
    fig.suptitle(f"ConvNetSI (width {ds.attrs.get('width', '?')}) on {ds.attrs.get('data', '?')}, "
                 f"fixed total ELR, batch {ds.attrs.get('batch_size', '?')}", fontsize=9)
    return fig


def main(out_dir, quick=False, scan=None):
    """Run (or read ``scan``, a train-scan ``.nc``) and save ``fig07_real_network.{png,pdf,nc}``."""
    out = C.out_path(out_dir)
    if scan is None:
        ds = compute(quick)
    else:
        import xarray as xr
        ds = xr.load_dataset(scan)
    path_nc = out / f"{NAME}.nc"
    ds.to_netcdf(path_nc)
    with C.style():
        paths = C.save_figure(plot(ds), out, NAME)
    return [path_nc] + paths


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=CAPTION)
    ap.add_argument("--out", default="figures/out")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scan", default=None, help="draw from an existing train-scan .nc")
    a = ap.parse_args()
    print("\n".join(map(str, main(a.out, a.quick, a.scan))))
