r"""The phase-diagram figure of a scan (`plot_scan`) and its size limit (`figure_pixels`).

matplotlib is imported inside `plot_scan` only.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import regimes
from ._scan_modes import scan_mode
from ._validate import positive_int

_REGIME_Y = {"convergence": 0, "chaotic_equilibrium": 1, "divergence": 2, regimes.UNRESOLVED: 3,
             regimes.INVALID: 4}
_REGIME_COLOR = {"convergence": "tab:blue", "chaotic_equilibrium": "tab:orange",
                 "divergence": "tab:red", regimes.UNRESOLVED: "tab:gray", regimes.INVALID: "black"}
#: the row of each regime code in the bottom panel (a predicted regime is one of the first three)
_Y_OF_CODE = np.array([_REGIME_Y.get(label, -1) for label in regimes.LABELS])
#: the most pixels a phase-diagram image may have (`figure_pixels`).
MAX_PIXELS = 10**8


def _figure_size(n_configs: int) -> tuple:
    """Inches of the phase diagram: one 5.2 x 6.4 column per configuration."""
    return (5.2 * n_configs, 6.4)


def figure_pixels(n_configs: int, dpi, name: str = "dpi") -> tuple:
    """``(width, height)`` in pixels of `plot_scan` for ``n_configs`` columns saved at ``dpi``;
    ``ValueError`` beyond `MAX_PIXELS` or for a non-positive ``dpi``."""
    dpi = positive_int(name, dpi)
    w, h = (round(x * dpi) for x in _figure_size(n_configs))
    if w * h > MAX_PIXELS:
        best = int((MAX_PIXELS / np.prod(_figure_size(n_configs))) ** 0.5)
        raise ValueError(f"{name} {dpi} would draw a {w} x {h} pixel image ({w * h:.3g} pixels, over "
                         f"the limit {MAX_PIXELS:.0e}); use {name} {best} or less")
    return w, h


def _check_configs(ds, configs) -> list:
    configs = list(range(ds.sizes["config"])) if configs is None else list(configs)
    for j in configs:
        if not (isinstance(j, numbers.Integral) and 0 <= j < ds.sizes["config"]):
            raise ValueError(f"configs must be indices in [0, {ds.sizes['config'] - 1}], got {j!r}")
    return configs


def plot_scan(ds, configs=None):
    r"""The phase diagram of a scan: one column per configuration. A momentum or weight-decay scan
    is drawn as heat maps instead (`_plot_heat_maps`).

    Top: tail loss / random level against the ELR (log x), one dot per seed coloured by the
    observed regime, with the equilibrium curve $L^*/L_{rand}=(\sum\alpha-1/\tilde\eta)/(2L_{rand})$
    (T12). Bottom: observed regime per seed (dots) against ``predicted_regime`` (line). Dashed
    verticals: $1/\sum\alpha_i$ (T10, T12) and $1/\min\alpha_i$ (T10). Returns the figure.
    """
    import matplotlib.pyplot as plt

    configs = _check_configs(ds, configs)
    if scan_mode(ds) != "elr":
        return _plot_heat_maps(ds, configs)
    fig, axes = plt.subplots(2, len(configs), figsize=_figure_size(len(configs)), squeeze=False,
                             sharex="col", gridspec_kw={"height_ratios": [3, 2]})
    elr = ds["elr"].values
    for col, j in enumerate(configs):
        sub = ds.isel(config=j)
        rand = float(sub["random_loss"])
        ratio = sub["tail_loss"].values / rand
        codes = regimes.encode(sub["regime"].values)  # codes, or labels of a decoded dataset
        top, bot = axes[0, col], axes[1, col]
        for name, color in _REGIME_COLOR.items():
            m = codes == regimes.REGIME_CODES[name]
            if m.any():
                ee = np.broadcast_to(elr[:, None], codes.shape)[m]
                top.scatter(ee, np.where(np.isfinite(ratio[m]), ratio[m], 1.0), s=6, color=color,
                            label=name.replace("_", " "), zorder=3)
                bot.scatter(ee, np.full(ee.shape, _REGIME_Y[name]), s=6, color=color, zorder=3)
        eq = sub["equilibrium_loss"].values
        if np.isfinite(eq).any():
            top.plot(elr, eq / rand, color="k", lw=0.8, zorder=4,
                     label=r"theory $(\sum\alpha-1/\tilde\eta)/2$ (T12)")
        top.axhline(regimes.DIV_FRAC, color="tab:red", lw=0.6, ls="-.", zorder=1,
                    label=f"classifier: divergence at {regimes.DIV_FRAC:g} x random")
        pred = _Y_OF_CODE[regimes.encode(sub["predicted_regime"].values)]
        bot.step(elr, pred, where="mid", color="k", lw=1.2, label="predicted (T10, T12)")
        for ax in (top, bot):
            ax.set_xscale("log")
            for thr, style, text in ((float(sub["total_threshold"]), "--", r"$1/\sum\alpha$"),
                                     (float(sub["divergence_threshold"]), ":", r"$1/\min\alpha$")):
                ax.axvline(thr, color="gray", ls=style, lw=1)
                if ax is top:
                    ax.text(thr * 1.06, 0.5, text, ha="left", va="center", fontsize=8,
                            color="gray", transform=ax.get_xaxis_transform())
        alphas = sub["alphas"].values
        alphas = alphas[np.isfinite(alphas)]
        top.set_title(f"config {int(sub['config'])}: {sub['problem'].item()} "
                      f"alphas={np.array2string(alphas, precision=3, separator=',')}", fontsize=9)
        top.set_ylabel("tail loss / random level")
        top.set_ylim(-0.03, 1.1)
        bot.set_yticks(list(_REGIME_Y.values()),
                       ["convergence", "equilibrium", "divergence", "unresolved", "invalid"])
        bot.set_ylim(-0.5, 4.5)
        bot.set_xlabel(r"ELR $\tilde\eta$")
        if col == 0:
            top.legend(fontsize=7, loc="upper left")
            bot.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"fixed-ELR scan: {ds.attrs.get('steps')} steps, tail {ds.attrs.get('tail')}, "
                 f"{ds.attrs.get('constraint')} constraint, backend {ds.attrs.get('backend')}",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _ticks(ax, axis, values, fmt="{:.3g}", most=8):
    """Label an index axis with (at most ``most``) of its parameter values."""
    idx = np.unique(np.linspace(0, len(values) - 1, min(most, len(values))).round().astype(int))
    getattr(ax, f"set_{axis}ticks")(idx, [fmt.format(v) for v in np.asarray(values)[idx]])


def _plot_heat_maps(ds, configs):
    r"""One heat map per configuration over the two parameter axes (index positions, labelled with
    the values). Momentum: the fraction of seeds that converged (``converged``), with the naive
    threshold $(1+\beta)/\sum\alpha$ (T43, an upper bound) marked on every row. Weight decay:
    the seed median of ``tail_loss`` / ``equilibrium_loss`` ($\eta\lambda\sum\alpha/2$, T21,
    T25), with "P" where most seeds are labelled periodic (T26)."""
    import warnings

    import matplotlib.pyplot as plt

    mode = scan_mode(ds)
    ydim, xdim = ("momentum", "elr") if mode == "momentum" else ("weight_decay", "lr")
    fig, axes = plt.subplots(1, len(configs), figsize=_figure_size(len(configs)), squeeze=False)
    xs, ys = ds[xdim].values, ds[ydim].values
    for col, j in enumerate(configs):
        sub, ax = ds.isel(config=j), axes[0, col]
        if mode == "momentum":
            conv = sub["converged"].transpose(ydim, xdim, "seed").values
            done = conv >= 0  # -1: not computed yet (an unfinished store)
            with np.errstate(invalid="ignore"):
                value = (conv == 1).sum(-1) / np.where(done.any(-1), done.sum(-1), np.nan)
            im = ax.imshow(value, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1)
            naive = sub["naive_threshold"].values
            pos = np.interp(np.log(naive), np.log(xs), np.arange(xs.size), left=np.nan, right=np.nan)
            text = ("naive bound (T46)" if ds.attrs.get("optimizer") == "adam"
                    else r"naive $(1+\beta)/\sum\alpha$ (T43)")
            ax.plot(pos, np.arange(ys.size), "w--", lw=1.2, label=text + ", an upper bound")
            label = "fraction of seeds converged"
            ax.legend(fontsize=7, loc="upper right")
        else:
            ratio = (sub["tail_loss"] / sub["equilibrium_loss"]).transpose(ydim, xdim, "seed").values
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: weight decay 0
                value = np.nanmedian(ratio, axis=-1)
            im = ax.imshow(value, origin="lower", aspect="auto", cmap="coolwarm", vmin=0.5, vmax=1.5)
            codes = regimes.encode(sub["regime"].transpose(ydim, xdim, "seed").values)
            periodic = (codes == regimes.REGIME_CODES[regimes.PERIODIC]).mean(-1) > 0.5
            for yy, xx in zip(*np.nonzero(periodic)):
                ax.text(xx, yy, "P", ha="center", va="center", fontsize=7, color="k")
            label = r"median tail loss / $\eta\lambda\sum\alpha/2$ (P: periodic)"
        fig.colorbar(im, ax=ax, label=label, shrink=0.8)
        _ticks(ax, "x", xs)
        _ticks(ax, "y", ys)
        ax.set_xlabel({"elr": r"ELR $\tilde\eta$", "lr": r"learning rate $\eta$"}[xdim])
        ax.set_ylabel({"momentum": r"momentum $\beta$", "weight_decay": r"weight decay $\lambda$"}[ydim])
        alphas = sub["alphas"].values
        ax.set_title(f"config {int(sub['config'])}: alphas="
                     f"{np.array2string(alphas[np.isfinite(alphas)], precision=3, separator=',')}",
                     fontsize=9)
    what = (f"{ds.attrs.get('optimizer')} ({ds.attrs.get('momentum_mode')})" if mode == "momentum"
            else "weight decay, no projection")
    fig.suptitle(f"{mode} scan, {what}\n{ds.attrs.get('steps')} steps, tail {ds.attrs.get('tail')}, "
                 f"backend {ds.attrs.get('backend')}", fontsize=9)
    fig.tight_layout()
    return fig
