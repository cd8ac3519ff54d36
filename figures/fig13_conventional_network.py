r"""Figure 13 — conventional training of a real SI network placed on the fixed-ELR regime map.

ConvNetSI on digits trained with plain `torch.optim.SGD` + weight decay in the full parameter
space (``toymodel train --mode full``, no projection) over a grid of learning rates $\eta$ and
products $\eta\lambda$, beside the fixed-ELR scan of the same network (``train-scan``). Left: the
fixed-ELR map (tail loss / random level against the ELR, shaded by the classifier's regime) with
each conventional run placed at its tail effective ELR $\eta/\|\theta\|^2$, coloured by its own
regime. Middle: the effective ELR per epoch: runs with equal $\eta\lambda$ (one colour) approach
one value whatever the split of the product (T21). Right: the angle per step over the tail against
$\eta\lambda$: the mean angle, the angle $\arccos\exp\langle\ln\cos\Delta\rangle$ fixed by the norm
balance ($=\arccos(1-\eta\lambda)$ for a run whose norm has settled, docs/conventional.md §1), and
the prediction $\arctan(\sqrt{\eta\lambda(2-\eta\lambda)}/(1-\eta\lambda))$
(`toymodel.theory_wd.wd_equilibrium_angle`).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toymodel.figures import _common as C  # noqa: E402
from toymodel import theory_wd  # noqa: E402

NAME = "fig13_conventional_network"
TITLE = "Conventional training (SGD + weight decay) of ConvNetSI on the fixed-ELR regime map"
CAPTION = ("ConvNetSI (width 4) on digits trained conventionally (SGD + weight decay, no "
           "projection) over a grid of η and ηλ, placed at its tail effective ELR η/‖θ‖² on the "
           "fixed-ELR regime map of the same network; the effective ELR of runs with equal ηλ "
           "converges to one value; the angle per step at the norm equilibrium against the "
           "prediction arctan(√(ηλ(2−ηλ))/(1−ηλ)).")

FULL = dict(elrs="1e-3:1:13", fixed_epochs=40, lrs=(0.3, 1.0, 3.0),
            products=(3e-3, 1e-2, 3e-2, 1e-1), epochs=60, width=4)
QUICK = dict(elrs="0.01,0.1", fixed_epochs=2, lrs=(0.5, 2.0), products=(0.05,), epochs=3,
             width=2)


def _conventional(cfg, progress_bar):
    from toymodel.bridge import train

    runs = []
    for p in cfg["products"]:
        for lr in cfg["lrs"]:
            ds = train(mode="full", lr=lr, weight_decay=p / lr, epochs=cfg["epochs"],
                       tail=max(1, cfg["epochs"] // 4), width=cfg["width"], seed=0,
                       progress_bar=progress_bar)
            runs.append(ds.expand_dims(run=[len(runs)]))
    return runs


def _tail_log_cos(ds):
    """$\\langle-\\ln\\cos\\Delta\\rangle$ over the tail steps of one run (every step recorded)."""
    spe, tail = ds.attrs["steps_per_epoch"], ds.attrs["tail"]
    angles = ds.step_angle.values.reshape(-1)[-tail * spe:]
    return float(np.mean(-np.log(np.cos(angles))))


def compute_datasets(quick=False, progress_bar=False):
    """``(fixed-ELR scan, conventional runs concatenated along run)``."""
    import torch
    import xarray as xr

    from toymodel.bridge import train_scan

    cfg = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: one thread is fastest on a busy machine
    try:
        fixed = train_scan(cfg["elrs"], epochs=cfg["fixed_epochs"], width=cfg["width"], seed=0,
                           progress_bar=progress_bar)
        conv = xr.concat(_conventional(cfg, progress_bar), dim="run",
                         combine_attrs="drop_conflicts")
    finally:
        torch.set_num_threads(threads)
    return fixed, conv


def compute(quick=False, keep=None):
    fixed, conv = compute_datasets(quick)
    if keep is not None:
        keep["nc"] = _netcdf(fixed, conv)
    lr, wd = conv.lr.values, conv.weight_decay.values
    data = {"fixed_elr": fixed.elr.values, "fixed_tail_loss": fixed.tail_loss.values,
            "fixed_regime_code": C.regime_codes(fixed.regime.values),
            "fixed_random_loss": fixed.random_loss.values,
            "lr": lr, "weight_decay": wd, "product": lr * wd,
            "tail_effective_elr": conv.tail_effective_elr.values,
            "tail_loss": conv.tail_loss.values, "random_loss": conv.random_loss.values,
            "regime_code": C.regime_codes(conv.regime.values),
            "tail_angle": conv.tail_angle.values,
            "tail_log_cos": np.array([_tail_log_cos(conv.isel(run=i)) for i in range(lr.size)]),
            "predicted_angle": np.array([theory_wd.wd_equilibrium_angle(a, b)
                                         for a, b in zip(lr, wd)]),
            "effective_elr": conv.effective_elr.values, "test_error": 1 - conv.test_accuracy.values[:, -1]}
    cfg = QUICK if quick else FULL
    params = C.provenance(**{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
                          model="convnet-si", data="digits", seed=0, tail="last 25% of epochs",
                          regime_codes=list(C.REGIME_CODES))
    return data, params


def _netcdf(fixed, conv):
    keep = ["tail_loss", "random_loss", "regime", "tail_angle", "tail_grad_norm"]
    summary = fixed[keep].rename({k: f"fixed_{k}" for k in keep}).rename({"elr": "fixed_elr"})
    return conv.merge(summary, combine_attrs="drop_conflicts")


def plot(data, params):
    """Draw the three panels from the saved data."""
    import matplotlib as mpl

    fig, (a0, a1, a2) = C.new_figure(1, 3, figsize=(11.0, 3.6))
    elrs, codes = data["fixed_elr"], data["fixed_regime_code"]
    rand = float(np.mean(data["fixed_random_loss"]))
    if elrs.size > 1:
        C.shade_regimes(a0, elrs, codes)
    a0.plot(elrs, data["fixed_tail_loss"] / rand, "k.-", lw=1, label="fixed ELR (sphere)")
    products = np.unique(data["product"])
    cmap = mpl.colormaps["plasma"]
    colour = {p: cmap(i / max(len(products) - 1, 1) * 0.85) for i, p in enumerate(products)}
    markers = dict(zip(np.unique(data["lr"]), "os^Dv"))
    for i in range(data["lr"].size):
        name = C.REGIME_CODES[int(data["regime_code"][i])]
        a0.scatter(data["tail_effective_elr"][i], data["tail_loss"][i] / data["random_loss"][i],
                   marker=markers[data["lr"][i]], s=28, color=C.REGIME_COLORS[name],
                   edgecolors=colour[data["product"][i]], linewidths=1.2, zorder=3)
        a1.plot(np.arange(1, data["effective_elr"].shape[1] + 1), data["effective_elr"][i],
                color=colour[data["product"][i]], lw=1,
                ls=("-", "--", ":", "-.", "-")[list(markers).index(data["lr"][i])])
    for lr, m in markers.items():
        a0.scatter([], [], marker=m, color="w", edgecolors="k", label=f"η = {lr:g}")
    a0.set(xscale="log", yscale="log", xlabel="ELR (fixed) / tail effective ELR η/‖θ‖²",
           ylabel="tail loss / random level", title="on the fixed-ELR regime map")
    a0.legend(fontsize=6, loc="lower right")
    for p in products:
        a1.plot([], [], color=colour[p], label=f"ηλ = {p:g}")
    a1.set(yscale="log", xlabel="epoch", ylabel="effective ELR η/‖θ‖²",
           title="equal ηλ → equal effective ELR")
    a1.legend(fontsize=6)
    p_line = np.logspace(np.log10(products.min() / 2), np.log10(min(products.max() * 2, 0.9)), 60)
    a2.plot(p_line, np.degrees([theory_wd.wd_equilibrium_angle(x, 1.0) for x in p_line]), "k-",
            lw=1, label="prediction (T21)")
    a2.scatter(data["product"], np.degrees(data["tail_angle"]), s=18, marker="o",
               facecolors="none", edgecolors="C0", label="mean angle per step (tail)")
    a2.scatter(data["product"], np.degrees(np.arccos(np.exp(-data["tail_log_cos"]))), s=14,
               marker="x", color="C3", label="arccos exp⟨ln cos Δ⟩ (tail)")
    a2.set(xscale="log", yscale="log", xlabel="ηλ", ylabel="angle per step (deg)",
           title="angle at the norm equilibrium")
    a2.legend(fontsize=6)
    fig.suptitle("ConvNetSI (width %s) on digits: SGD + weight decay, no projection"
                 % params.get("width", "?"), fontsize=9)
    return fig


def main(out_dir, quick=False):
    """Compute, save ``fig13_conventional_network.{npz,nc,png,pdf}``; returns the paths."""
    return C.write_figure_and_dataset(NAME, compute, plot, out_dir, quick)


if __name__ == "__main__":
    C.script(main, CAPTION)
