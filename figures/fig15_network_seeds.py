r"""Figure 15 — the three regimes of a real SI network across seeds (fig07 with seed bands).

ConvNetSI trained with `toymodel.bridge.SphereSGD` at fixed total ELR (T5) on scikit-learn's
digits, one run per ELR and seed (``toymodel train-scan --seeds``; seed $s$ draws the network
and the mini-batch order). Panels: train loss, test error and mean effective gradient norm
$\rho\,\mathrm{mean}_b\|\nabla L_b\|$ (T2) per epoch, the median over seeds as a line and the
range over seeds as a band; and the tail loss over the random level against the ELR, one point
per seed, shaded by the regime most seeds get (`toymodel.regimes.classify_summary`).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toymodel.figures import _common as C  # noqa: E402

NAME = "fig15_network_seeds"
TITLE = "A real SI network across seeds: ConvNetSI on digits, ELR × seed"
CAPTION = ("ConvNetSI (width 8, BN without affine, frozen head of norm 10) trained on the sphere "
           "with fixed total ELR on sklearn digits, 3 seeds per ELR (network and batch order). "
           "Lines: median over seeds; bands: range over seeds. Away from the boundaries every "
           "seed gets the same regime: the converging runs agree closely, the equilibrium "
           "plateau varies in height but stays between the converged and the random level, the "
           "divergent runs sit at the random level. Next to the convergence boundary the seed "
           "decides (critical slowing down): at ELR 0.0215 two seeds converge and one holds the "
           "plateau for all 60 epochs.")

FULL = dict(elrs="1e-3:1:10", seeds=3, epochs=60, width=8)
QUICK = dict(elrs="1e-2,4e-2,0.5", seeds=2, epochs=3, width=2)


def compute(quick=False, progress_bar=False, client=None):
    """Run the ELR × seed scan (``toymodel train-scan --seeds`` on digits); the xarray Dataset."""
    import torch

    from toymodel.bridge.netscan import train_scan

    cfg = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these nets are tiny: one thread is fastest on a busy machine
    try:
        return train_scan(cfg["elrs"], seeds=cfg["seeds"], epochs=cfg["epochs"],
                          width=cfg["width"], model="convnet-si", data="digits",
                          progress_bar=progress_bar, client=client, threads=1)
    finally:
        torch.set_num_threads(threads)


def arrays(ds) -> tuple[dict, dict]:
    """The figure's data (``(elr, seed, epoch)`` arrays) and parameters from a seed scan."""
    ds = ds.transpose("elr", "seed", ...)
    data = {"elr": ds.elr.values, "seed": ds.seed.values, "epoch": ds.epoch.values,
            "loss": ds.loss.values, "test_error": 1 - ds.test_accuracy.values,
            "grad_norm": ds.grad_norm.values, "tail_loss": ds.tail_loss.values,
            "random_loss": ds.random_loss.values,
            "regime": C.regime_codes(ds.regime.values)}
    params = {k: ds.attrs.get(k) for k in ("model", "width", "data", "batch_size", "epochs")}
    return data, params


def _band(ax, x, y, color, log=False):
    """Median over seeds (axis 0 of ``y``) as a line, the range over seeds as a band."""
    ok = np.isfinite(y).all(0)
    lo, mid, hi = np.nanmin(y, 0), np.nanmedian(y, 0), np.nanmax(y, 0)
    ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=0.25, lw=0)
    return ax.plot(x[ok], mid[ok], color=color, lw=1.0)[0]


def plot(data, params):
    """Draw the four panels from `arrays` (or the ``.npz`` `main` writes)."""
    import matplotlib as mpl

    fig, axes = C.new_figure(2, 2, figsize=(7.4, 5.6))
    (a0, a1), (a2, a3) = axes
    elrs, epoch = np.asarray(data["elr"]), np.asarray(data["epoch"])
    hi = elrs.max() if elrs.max() > elrs.min() else elrs.min() * 10
    norm = mpl.colors.LogNorm(vmin=elrs.min(), vmax=hi)
    cmap = mpl.colormaps["viridis"]
    majority = C.majority(np.asarray(data["regime"]), axis=1)
    for i, elr in enumerate(elrs):
        color = cmap(norm(elr))
        name = C.REGIME_CODES[int(majority[i])]
        line = _band(a0, epoch, np.asarray(data["loss"])[i], color)
        line.set_label(f"{elr:.2g} ({C.REGIME_TITLES[name]})")
        _band(a1, epoch, 100 * np.asarray(data["test_error"])[i], color)
        _band(a2, epoch, np.asarray(data["grad_norm"])[i], color)
    rand = np.asarray(data["random_loss"], dtype=float)
    a0.axhline(float(np.mean(rand)), color="k", ls="--", lw=0.8)
    a0.text(epoch[-1], float(np.mean(rand)), "random level", ha="right", va="bottom", fontsize=7)
    ratio = np.asarray(data["tail_loss"], dtype=float) / rand
    C.shade_regimes(a3, elrs, majority)
    for j in range(ratio.shape[1]):
        a3.scatter(elrs, ratio[:, j], color="k", s=8, zorder=3,
                   label="one seed" if j == 0 else None)
    a3.plot(elrs, np.nanmedian(ratio, 1), color="k", lw=0.8)
    a3.axhline(1.0, color="k", ls="--", lw=0.8)
    a0.set(yscale="log", xlabel="epoch", ylabel="train loss", title="train loss")
    a1.set(xlabel="epoch", ylabel="test error (%)", title="test error", ylim=(0, 100))
    a2.set(yscale="log", xlabel="epoch", ylabel="mean effective gradient norm",
           title="effective gradient ρ·mean‖∇L_b‖")
    a3.set(xscale="log", yscale="log", xlabel="ELR", ylabel="tail loss / random level",
           title="regime per ELR (points: seeds)")
    a0.legend(title="ELR (most seeds)", fontsize=5.5, title_fontsize=6, ncol=2, loc="lower left")
    a3.legend(fontsize=5.5, loc="lower right")
    fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=[a1, a2], label="ELR", shrink=0.8)
    fig.suptitle(f"ConvNetSI (width {params.get('width', '?')}) on {params.get('data', '?')}, "
                 f"{len(data['seed'])} seeds per ELR, fixed total ELR, batch "
                 f"{params.get('batch_size', '?')}", fontsize=9)
    return fig


def main(out_dir, quick=False, scan=None, client=None):
    """Run (or read ``scan``, a ``train-scan --seeds`` ``.nc``) and save
    ``fig15_network_seeds.{npz,png,pdf,nc}``: the figure's data, the figure, the whole scan."""
    out = C.out_path(out_dir)
    if scan is None:
        ds = compute(quick, client=client)
    else:
        import xarray as xr
        ds = xr.load_dataset(scan)
        if "seed" not in ds.dims:
            raise ValueError(f"{scan} has no seed dim; make it with toymodel train-scan --seeds")
    path_nc = out / f"{NAME}.nc"
    ds.to_netcdf(path_nc)
    data, params = arrays(ds)
    params = C.provenance(**params, quick=bool(quick), scan=None if scan is None else str(scan))
    paths = [C.save_data(out, NAME, params, **data)]
    with C.style():
        paths += C.save_figure(plot(data, params), out, NAME)
    return paths + [path_nc]


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=CAPTION)
    ap.add_argument("--out", default="figures/out")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scan", default=None, help="draw from an existing train-scan --seeds .nc")
    ap.add_argument("--scheduler", default=None, help="a Dask scheduler address for the runs")
    a = ap.parse_args()
    print("\n".join(map(str, main(a.out, a.quick, a.scan, a.scheduler))))
