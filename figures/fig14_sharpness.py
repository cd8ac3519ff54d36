r"""Figure 14 — sharpness along a fixed-ELR scan of a real SI network, per regime.

ConvNetSI on digits, one fixed-ELR run per ELR from the same initial network (``train-scan`` with
``sharpness_every``): every few epochs the top eigenvalue $\lambda_{\max}$ and the trace of the
Hessian of the train loss in the SI parameters (a fixed subset of 512 training samples, train-mode
BatchNorm; Lanczos and Hutch++, `toymodel.bridge.hessian_top_eigenvalues` /
`hessian_trace`), multiplied by $\rho^2=\|\theta\|^2$: the Hessian at the unit sphere, which
does not depend on $\rho$ (T1; the official notebook's reduced trace). Left: $\rho^2\lambda_{\max}$
per epoch. Middle: the last values against the ELR with the regimes shaded, and the stability
line $2/\tilde\eta$ (a step of ELR $\tilde\eta$ along a direction of curvature
$\rho^2\lambda$ is stable while $\tilde\eta\rho^2\lambda<2$). Right: the last
$\rho^2\lambda_{\max}$ against the final train loss, since a lower loss alone flattens the
cross-entropy.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toymodel.figures import _common as C  # noqa: E402

NAME = "fig14_sharpness"
TITLE = "Sharpness along a fixed-ELR scan of ConvNetSI, per regime"
CAPTION = ("ConvNetSI (width 4) on digits at fixed total ELR: top Hessian eigenvalue and Hessian "
           "trace of the SI parameters times ρ² (the Hessian at the unit sphere) every 5 epochs; "
           "their last values against the ELR with the regimes shaded and the stability line "
           "2/ELR; and against the final train loss. In the convergence regime a higher ELR ends "
           "flatter, well below 2/ELR.")

FULL = dict(elrs="1e-3:1:13", epochs=40, width=4, sharpness_every=5)
QUICK = dict(elrs="0.01,0.1", epochs=2, width=2, sharpness_every=1)
_VARS = ("top_eigenvalue", "effective_top_eigenvalue", "hessian_trace", "effective_hessian_trace")


def compute_dataset(quick=False, progress_bar=False):
    """Run the scan (``train-scan --sharpness-every``); returns its Dataset."""
    import torch

    from toymodel.bridge import train_scan

    cfg = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: one thread is fastest on a busy machine
    try:
        return train_scan(cfg["elrs"], epochs=cfg["epochs"], width=cfg["width"], seed=0,
                          sharpness_every=cfg["sharpness_every"], progress_bar=progress_bar)
    finally:
        torch.set_num_threads(threads)


def compute(quick=False, keep=None):
    ds = compute_dataset(quick)
    if keep is not None:
        keep["nc"] = ds
    measured = np.isfinite(ds.top_eigenvalue.values).all(0)  # the epochs with a measurement
    data = {"elr": ds.elr.values, "sharpness_epoch": ds.epoch.values[measured],
            "regime_code": C.regime_codes(ds.regime.values), "tail_loss": ds.tail_loss.values,
            "final_loss": ds.loss.values[:, -1], "random_loss": ds.random_loss.values,
            "si_norm": ds.si_norm.values[:, -1]}
    data.update({k: ds[k].values[:, measured] for k in _VARS})
    cfg = QUICK if quick else FULL
    params = C.provenance(**cfg, model="convnet-si", data="digits", seed=0,
                          sharpness_samples=int(ds.attrs["sharpness_samples"]),
                          sharpness_probes=int(ds.attrs["sharpness_probes"]),
                          regime_codes=list(C.REGIME_CODES))
    return data, params


def plot(data, params):
    """Draw the three panels from the saved data."""
    import matplotlib as mpl

    fig, (a0, a1, a2) = C.new_figure(1, 3, figsize=(11.0, 3.6))
    elrs = data["elr"]
    norm = mpl.colors.LogNorm(vmin=elrs.min(), vmax=max(elrs.max(), elrs.min() * 10))
    cmap = mpl.colormaps["viridis"]
    top, trace = data["effective_top_eigenvalue"], data["effective_hessian_trace"]
    for i, elr in enumerate(elrs):
        a0.plot(data["sharpness_epoch"], np.abs(top[i]), ".-", color=cmap(norm(elr)), lw=1,
                ms=3)
    a0.set(yscale="log", xlabel="epoch", ylabel="ρ²·λ_max", title="top eigenvalue per epoch")
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=a0, label="ELR", pad=0.01)
    if elrs.size > 1:
        C.shade_regimes(a1, elrs, data["regime_code"])
    a1.plot(elrs, np.abs(top[:, -1]), "o-", color="C0", ms=3, lw=1, label="ρ²·λ_max")
    a1.plot(elrs, np.abs(trace[:, -1]), "s--", color="C1", ms=3, lw=1, label="|ρ²·tr H|")
    a1.plot(elrs, 2 / elrs, "k:", lw=1, label="2 / ELR")
    a1.set(xscale="log", yscale="log", xlabel="ELR", ylabel="curvature at the unit sphere",
           title="last epoch, per regime")
    a1.legend(fontsize=6, loc="upper left")
    for i, elr in enumerate(elrs):
        name = C.REGIME_CODES[int(data["regime_code"][i])]
        a2.scatter(data["final_loss"][i], abs(top[i, -1]), color=cmap(norm(elr)), s=22,
                   edgecolors=C.REGIME_COLORS[name], linewidths=1.5)
    a2.set(xscale="log", yscale="log", xlabel="final train loss", ylabel="ρ²·λ_max (last epoch)",
           title="sharpness against the loss reached")
    fig.suptitle("ConvNetSI (width %s) on digits, fixed total ELR: Hessian of the SI parameters"
                 % params.get("width", "?"), fontsize=9)
    return fig


def main(out_dir, quick=False):
    """Compute, save ``fig14_sharpness.{npz,nc,png,pdf}``; returns the paths."""
    return C.write_figure_and_dataset(NAME, compute, plot, out_dir, quick)


if __name__ == "__main__":
    C.script(main, CAPTION)
