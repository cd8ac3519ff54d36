r"""Figure 16 — the regimes of a real SI network under four fixed-ELR optimisers (fig15 per optimiser).

ConvNetSI trained on scikit-learn's digits on the sphere (total constraint, T5) by plain
`toymodel.bridge.SphereSGD`, SphereSGD with momentum $\beta=0.9$ whose buffer is left as is
(``"official"``) or transported to the new tangent space (``"transport"``), and
`toymodel.bridge.SphereAdam` (betas (0.9, 0.999)), one ``train-scan --seeds`` per optimiser
(``toymodel train-scan --optimizer ... --momentum ... --momentum-mode ...``). For SGD the ELR is
$\eta/\rho^2$ (T3); for SphereAdam it is its own fixed-ELR parameter $\eta_u/r_u$, the tangent of
the angle a unit turns when its moments are aligned (docs/sphere_optimizers.md): the two axes
share a name, not a scale. Each optimiser gets its own grid, cut from one lattice
$10^{k/4}$ so that the grids align.

Panels: per optimiser, the tail loss over the random level against the ELR, one point per seed,
shaded by the regime most seeds get (`toymodel.regimes.classify_summary`), the observed
boundaries as vertical lines half way between the cells on either side (`boundaries`: the last
ELR at which every seed converges and the next one; the first at which a seed diverges and the
one before) and plain SGD's in grey (not on SphereAdam's panel, whose ELR is another scale);
bottom, the four medians overlaid. The combined scan (dim ``optimizer`` x ``elr`` x ``seed``,
`toymodel.bridge.netscan.concat_optimizers`, cells outside an optimiser's grid NaN with regime
``""``) is saved as ``fig16_network_optimizers.nc`` beside the ``.npz``.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toymodel.figures import _common as C  # noqa: E402

NAME = "fig16_network_optimizers"
TITLE = "Where momentum and Adam move the regime boundaries: ConvNetSI on digits"
CAPTION = ("ConvNetSI (width 8, BN without affine, frozen head of norm 10) on sklearn digits, "
           "trained at a fixed ELR on the sphere by plain SphereSGD, SphereSGD with momentum 0.9 "
           "(buffer left as is, 'official', or transported, 'transport') and SphereAdam "
           "(betas 0.9, 0.999; its ELR is the tangent of a unit's turn, not eta/rho^2), 2 seeds "
           "per ELR, 60 epochs. Points: tail loss over the random level per seed; shading: the "
           "regime most seeds get; dashed lines: the observed boundaries (grey: plain SGD's). "
           "Momentum moves the convergence boundary 3-10x down in both modes (last converging "
           "ELR 0.0032 instead of 0.018). The transported buffer then goes almost straight to "
           "the random level and diverges from 0.01; the official buffer holds an equilibrium "
           "up to ELR 3.2, the end of the grid. SphereAdam converges up to 0.32 on its own "
           "scale, holds an equilibrium from 0.56 to 5.6 and diverges at 10.")

#: the optimisers: label (`toymodel.bridge.netscan.optimizer_label`) -> `train_scan` keywords
OPTIMIZERS = {"sgd": {},
              "sgd-m0.9-official": {"momentum": 0.9},
              "sgd-m0.9-transport": {"momentum": 0.9, "momentum_mode": "transport"},
              "adam-0.9-0.999": {"optimizer": "adam", "betas": (0.9, 0.999)}}
TITLES = {"sgd": "SphereSGD", "sgd-m0.9-official": "momentum 0.9, official",
          "sgd-m0.9-transport": "momentum 0.9, transport", "adam-0.9-0.999": "SphereAdam"}
COLORS = {"sgd": "k", "sgd-m0.9-official": "#1f77b4", "sgd-m0.9-transport": "#d62728",
          "adam-0.9-0.999": "#2ca02c"}


def lattice(*ks) -> list:
    """ELRs $10^{k/4}$: grids cut from one lattice share their values exactly."""
    return [float(10.0 ** (k / 4)) for k in ks]


#: each grid spans its optimiser's convergence -> equilibrium -> divergence (pilot runs)
FULL = {"grids": {"sgd": lattice(*range(-10, -2)),
                  "sgd-m0.9-official": lattice(*range(-12, -5), -4, -2, 0, 2),
                  "sgd-m0.9-transport": lattice(*range(-12, -5)),
                  "adam-0.9-0.999": lattice(-6, *range(-4, 5))},
        "seeds": 2, "epochs": 60, "width": 8}
QUICK = {"grids": dict.fromkeys(OPTIMIZERS, lattice(-8, 0)), "seeds": 1, "epochs": 2, "width": 2}


def compute(quick=False, progress_bar=False, parts=None):
    """One ``train-scan --seeds`` per optimiser on digits, concatenated along ``optimizer``.
    ``parts``: a folder keeping the finished runs (one subfolder per optimiser), so an
    interrupted computation resumes."""
    import torch

    from toymodel.bridge.netscan import concat_optimizers, train_scan

    cfg = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these nets are tiny: one thread is fastest on a busy machine
    try:
        scans = [train_scan(cfg["grids"][label], seeds=cfg["seeds"], epochs=cfg["epochs"],
                            width=cfg["width"], model="convnet-si", data="digits", threads=1,
                            progress_bar=progress_bar,
                            parts=None if parts is None else Path(parts) / label, **kw)
                 for label, kw in OPTIMIZERS.items()]
    finally:
        torch.set_num_threads(threads)
    return concat_optimizers(scans, labels=list(OPTIMIZERS), join="outer")


def _codes(labels) -> np.ndarray:
    """Regime codes, -1 where the optimiser did not run that ELR (label ``""``)."""
    labels = np.asarray(labels).astype(str)
    codes = np.full(labels.shape, -1, np.int8)
    ran = labels != ""
    codes[ran] = C.regime_codes(labels[ran])
    return codes


def boundaries(elrs, codes) -> dict:
    """The observed boundaries of one optimiser from its codes ``(elr, seed)`` (-1: not run):
    ``conv_last``, the largest ELR at which every seed converges; ``above_conv``, the next ELR
    run above it; ``eq_first``, the smallest ELR above ``conv_last`` at which a seed is in
    equilibrium; ``div_first``, the smallest at which a seed diverges, and ``div_all``, the
    smallest from which every seed diverges at every larger ELR (NaN where none)."""
    conv, eq, div = (C.REGIME_CODES.index(n) for n in ("convergence", "chaotic_equilibrium",
                                                       "divergence"))
    ran = (codes >= 0).all(1)
    x, c = np.asarray(elrs, float)[ran], codes[ran]
    nan = float("nan")
    all_conv = np.flatnonzero((c == conv).all(1))
    conv_last = x[all_conv[-1]] if all_conv.size else nan
    above = x[x > conv_last] if all_conv.size else x
    eq_at = x[(x > (conv_last if all_conv.size else 0)) & (c == eq).any(1)]
    div_at = x[(c == div).any(1)]
    not_all = np.flatnonzero(~(c == div).all(1))  # cells where some seed does not diverge
    start = not_all[-1] + 1 if not_all.size else 0
    div_all = x[start] if start < x.size else nan
    return {"conv_last": conv_last, "above_conv": above[0] if above.size else nan,
            "eq_first": eq_at[0] if eq_at.size else nan,
            "div_first": div_at[0] if div_at.size else nan, "div_all": div_all}


def arrays(ds) -> tuple[dict, dict]:
    """The figure's data (``(optimizer, elr, seed)`` arrays, the boundaries per optimiser) and
    parameters from the combined scan."""
    ds = ds.transpose("optimizer", "elr", "seed", ...)
    codes = _codes(ds.regime.values)
    bounds = [boundaries(ds.elr.values, codes[i]) for i in range(ds.sizes["optimizer"])]
    data = {"elr": ds.elr.values, "seed": ds.seed.values,
            "optimizer": ds.optimizer.values.astype(str),
            "tail_loss": ds.tail_loss.values, "random_loss": ds.random_loss.values,
            "tail_angle": ds.tail_angle.values, "tail_grad_norm": ds.tail_grad_norm.values,
            "final_test_error": 1 - ds.test_accuracy.isel(epoch=-1).values, "regime": codes,
            **{k: np.array([b[k] for b in bounds]) for k in bounds[0]}}
    params = {k: ds.attrs.get(k) for k in ("model", "width", "data", "batch_size", "epochs")}
    return data, params


def _lines(ax, conv_last, above_conv, div_first, before_div, color, ls="--"):
    """Vertical lines half way (in log ELR) between the cells on either side of a boundary."""
    for lo, hi in ((conv_last, above_conv), (before_div, div_first)):
        if np.isfinite(lo) and np.isfinite(hi):
            ax.axvline(float(np.sqrt(lo * hi)), color=color, ls=ls, lw=0.9, zorder=2)


def _before(x, value):
    below = x[x < value]
    return below[-1] if below.size else float("nan")


def plot(data, params):
    """Draw the five panels from `arrays` (or the ``.npz`` `main` writes)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.4, 7.2))
    axes = fig.subplot_mosaic([["0", "1"], ["2", "3"], ["all", "all"]],
                              height_ratios=[1, 1, 0.9])
    elrs = np.asarray(data["elr"], float)
    labels = [str(s) for s in data["optimizer"]]
    ratio = np.asarray(data["tail_loss"], float) / np.asarray(data["random_loss"], float)
    codes = np.asarray(data["regime"])
    b = {k: np.asarray(data[k], float) for k in ("conv_last", "above_conv", "div_first")}
    ran_all = [(codes[i] >= 0).all(1) for i in range(len(labels))]
    ref = labels.index("sgd") if "sgd" in labels else None
    lo, hi = np.nanmin(ratio), np.nanmax(ratio)
    for i, label in enumerate(labels):
        ax, ran, color = axes[str(i)], ran_all[i], COLORS.get(label, "k")
        x = elrs[ran]
        if x.size:
            C.shade_regimes(ax, x, C.majority(codes[i][ran], axis=1), label=i == 0)
        for j in range(ratio.shape[2]):
            ax.scatter(x, ratio[i][ran][:, j], color=color, s=9, zorder=3,
                       label="one seed" if j == 0 and i == 0 else None)
        ax.plot(x, np.nanmedian(ratio[i][ran], 1), color=color, lw=0.8)
        before = _before(x, b["div_first"][i])
        _lines(ax, b["conv_last"][i], b["above_conv"][i], b["div_first"][i], before, "k")
        if ref is not None and i != ref and not label.startswith("adam"):  # Adam: its own scale
            xr_ = elrs[ran_all[ref]]
            _lines(ax, b["conv_last"][ref], b["above_conv"][ref], b["div_first"][ref],
                   _before(xr_, b["div_first"][ref]), "0.55", ls=":")
        ax.axhline(1.0, color="k", ls="--", lw=0.6)
        ax.set(xscale="log", yscale="log", ylim=(lo / 3, hi * 3), xlim=(elrs.min() / 1.5,
               elrs.max() * 1.5), title=TITLES.get(label, label),
               xlabel="ELR (SphereAdam: its own)" if label.startswith("adam") else "ELR",
               ylabel="tail loss / random level")
        a = axes["all"]
        a.plot(x, np.nanmedian(ratio[i][ran], 1), "o-", color=color, ms=3, lw=1.0,
               label=TITLES.get(label, label))
    axes["0"].legend(fontsize=5.5, loc="lower right")
    a = axes["all"]
    a.axhline(1.0, color="k", ls="--", lw=0.6)
    a.axhline(1e-3, color="k", ls=":", lw=0.6)
    a.text(elrs.max(), 1.2e-3, "convergence threshold", fontsize=6, va="bottom", ha="right")
    a.set(xscale="log", yscale="log", xlabel="ELR", ylabel="median tail loss / random",
          title="the four optimisers overlaid (median over seeds)")
    a.legend(fontsize=5.5, loc="upper left")
    fig.suptitle(f"ConvNetSI (width {params.get('width', '?')}) on {params.get('data', '?')}, "
                 f"{len(data['seed'])} seed(s) per ELR, {params.get('epochs', '?')} epochs, "
                 f"batch {params.get('batch_size', '?')}: four fixed-ELR optimisers", fontsize=9)
    return fig


def main(out_dir, quick=False, scan=None):
    """Run (or read ``scan``, a combined ``.nc`` this script wrote) and save
    ``fig16_network_optimizers.{npz,png,pdf,nc}`` (the runs train with torch: no toy backend)."""
    import xarray as xr

    out = C.out_path(out_dir)
    parts = None if quick or scan is not None else out / f"{NAME}.parts"
    if scan is None:
        ds = compute(quick, parts=parts)
    else:
        ds = xr.load_dataset(scan)
        if "optimizer" not in ds.dims:
            raise ValueError(f"{scan} has no optimizer dim; make it with this script")
    path_nc = out / f"{NAME}.nc"
    ds.to_netcdf(path_nc)
    data, params = arrays(ds)
    params = C.provenance(**params, quick=bool(quick),
                          scan=None if scan is None else str(scan),
                          grids={k: list(v) for k, v in (QUICK if quick else FULL)["grids"].items()})
    paths = [C.save_data(out, NAME, params, **data)]
    with C.style():
        paths += C.save_figure(plot(data, params), out, NAME)
    if parts is not None:
        shutil.rmtree(parts, ignore_errors=True)  # every run is in the .nc now
    return paths + [path_nc]


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=CAPTION)
    ap.add_argument("--out", default="figures/out")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scan", default=None, help="redraw from a combined .nc this script wrote")
    a = ap.parse_args()
    print("\n".join(map(str, main(a.out, a.quick, scan=a.scan))))
