r"""Figure 8 — conventional training with weight decay: the (η, λ) phase diagram (T20–T26).

Full-space GD with weight decay, $\theta\leftarrow(1-\eta\lambda)\theta-\eta\nabla F$, on the toy with
$\alpha=(1,2,4)$ from the unit-norm starts of `toymodel.dynamics.initial_states`, over a log grid of
$\eta$ and $\lambda$ (`toymodel.backend.summarize_wd`: the weight-decay kernels, or their NumPy
specification `toymodel.conventional.summarize_wd_batch`; all cells at once). Left: tail loss
divided by the random level, with the iso-$\eta\lambda$ lines: the loss follows them (T21). Middle: the
observed regime (`toymodel.conventional.classify_wd_summary`): *periodic* (spikes after converged
phases, T26) below $\eta\lambda\approx0.1$, the equilibrium plateau above, divergence where
$\eta\lambda\,\sum\alpha/2$ reaches 0.9 of random; below $\eta\lambda\approx10^{-3}$ the runs end exactly
converged (the float64 floor) or are still in their first converged phase. Right: the fixed-ELR tail
loss against $c-1$ (`toymodel.dynamics.summarize_batch` through the backend) beside the conventional
cells placed at $c_{\rm eff}=1/(1-\eta\lambda)$, and the prediction $\eta\lambda\sum\alpha/2=\tfrac12\sum\alpha(1-1/c)$;
the inset shows their ratio (the excess of T25). Cells where a group ended exactly on its minimiser
are marked and left out of the right panel.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toymodel.figures import _common as C  # noqa: E402
from toymodel import backend as _backend, conventional, dynamics, regimes, theory  # noqa: E402
from toymodel.problems import SphereToy  # noqa: E402

NAME = "fig08_conventional"
TITLE = "Conventional training with weight decay: the (η, λ) phase diagram"
ALPHAS = (1.0, 2.0, 4.0)
#: label codes of this figure: the classifier's labels plus the periodic regime (appended last).
LABELS = tuple(dict.fromkeys(regimes.LABELS + (conventional.PERIODIC,)))
COLORS = dict(C.REGIME_COLORS, **{conventional.PERIODIC: "#b2abd2"})
TITLES = dict(C.REGIME_TITLES, **{conventional.PERIODIC: "periodic (spikes)"})
CAPTION = ("Conventional training (GD + weight decay, no projection) of the toy with α = (1, 2, 4) "
           "over a log grid of learning rate η and weight decay λ (T20–T26). Left: tail loss / random "
           "level with the iso-ηλ lines, which the loss follows. Middle: observed regime: periodic "
           "(converge–spike cycles, period ≈ 0.93/ηλ) below ηλ ≈ 0.1, the equilibrium plateau above, "
           "divergence at ηλ ≥ 0.9; below ηλ ≈ 1e-3 runs end exactly converged (float64) or are still "
           "in their first converged phase. Right: fixed-ELR tail loss against c − 1 with the "
           "conventional cells at c = 1/(1 − ηλ) and the prediction ηλΣα/2 = Σα(1 − 1/c)/2; inset: "
           "the conventional tail loss is 3–5% above it for ηλ ≤ 0.1 (T25), on it above.")


def compute(quick=False, engine="auto", backend="auto"):
    """Run every (η, λ, seed) cell in one batch, and the fixed-ELR scan beside it."""
    n_lr, n_wd, seeds, steps, tail = (8, 8, 1, 2000, 1000) if quick else (25, 25, 2, 20000, 8000)
    lrs = np.logspace(-2, 0.5, n_lr)
    wds = np.logspace(-3.5, 0, n_wd)
    problem = SphereToy(ALPHAS)
    L, W = np.meshgrid(lrs, wds, indexing="ij")
    ok = (L * W < 1.0).ravel()  # the decay factor 1 - lr*wd must be positive
    theta0 = dynamics.initial_states(problem, range(seeds))
    cells = int(ok.sum())
    th = np.tile(theta0, (cells, 1, 1))
    lr_b = np.repeat(L.ravel()[ok], seeds)
    wd_b = np.repeat(W.ravel()[ok], seeds)
    res = _backend.summarize_wd(problem, th, lr_b, wd_b, steps=steps, tail=tail, backend=backend)
    labels, _ = conventional.classify_wd_summary(res, problem.random_loss())
    shape = (n_lr, n_wd, seeds)
    tail_loss = np.full(shape, np.nan)
    code = np.full(shape, -1, np.int8)
    exact = np.zeros(shape, bool)
    idx = np.flatnonzero(ok)
    # a group that ended exactly on its minimiser (the float64 floor) no longer spikes
    for name, arr, vals in (("tail_loss", tail_loss, res["tail_loss"]),
                            ("code", code, [LABELS.index(str(x)) for x in labels]),
                            ("exact", exact, res["group_converged_exactly"].any(-1))):
        flat = arr.reshape(-1, seeds)
        flat[idx] = np.asarray(vals).reshape(cells, seeds)
    # the fixed-ELR scan: c = elr * sum(alpha) from just above the threshold to 20
    cs = 1.0 + np.logspace(-3, np.log10(19.0), 12 if quick else 40)
    fixed = C.run_summaries(ALPHAS, cs / sum(ALPHAS), range(seeds), backend=backend, steps=steps, tail=tail,
                            engine=engine, desc=NAME)
    data = {"lr": lrs, "weight_decay": wds, "alphas": np.array(ALPHAS), "tail_loss": tail_loss,
            "regime_code": code, "converged_exactly": exact, "c": cs,
            "fixed_tail_loss": fixed["tail_loss"],
            "fixed_equilibrium_loss": np.array([theory.equilibrium_loss(c / sum(ALPHAS), ALPHAS)
                                                for c in cs])}
    params = C.provenance(backend=backend, alphas=list(ALPHAS), seeds=list(range(seeds)), steps=steps, tail=tail,
                          start="unit-norm initial_states", engine=fixed["engine"],
                          dims="(lr, weight_decay, seed); fixed: (c, seed)",
                          regime_codes=list(LABELS), theory="T20-T26")
    return data, params


def majority(codes, axis=-1):
    """Most frequent code of `LABELS` along ``axis`` (ties to the lower code); -1 where every
    entry is -1 (cells not run: lr*wd >= 1)."""
    codes = np.asarray(codes)
    counts = np.stack([(codes == i).sum(axis=axis) for i in range(len(LABELS))], -1)
    return np.where(counts.sum(-1) > 0, counts.argmax(-1), -1).astype(np.int8)


def plot(data, params):
    """Draw the figure from the saved data."""
    from matplotlib.colors import BoundaryNorm, ListedColormap, LogNorm
    from matplotlib.patches import Patch

    lrs, wds, a = data["lr"], data["weight_decay"], data["alphas"]
    rand = a.sum() / 2
    edges = [np.exp(np.concatenate([[1.5 * np.log(v[0]) - 0.5 * np.log(v[1])],
                                    (np.log(v[1:]) + np.log(v[:-1])) / 2,
                                    [1.5 * np.log(v[-1]) - 0.5 * np.log(v[-2])]])) for v in (lrs, wds)]
    fig, (ax0, ax1, ax2) = C.new_figure(1, 3, figsize=(11.0, 3.7))
    with np.errstate(all="ignore"):  # cells with lr*wd >= 1 are NaN (not run): left blank
        ratio = np.median(data["tail_loss"], axis=-1) / rand
    mesh = ax0.pcolormesh(edges[0], edges[1], np.clip(ratio, 1e-6, None).T,
                          norm=LogNorm(1e-5, 1), cmap="magma", shading="flat", rasterized=True)
    fig.colorbar(mesh, ax=ax0, pad=0.01)
    maj = majority(data["regime_code"])
    names = list(LABELS)
    cmap = ListedColormap(["white"] + [COLORS[n] for n in names])
    norm = BoundaryNorm(np.arange(len(names) + 2) - 1.5, len(names) + 1)
    ax1.pcolormesh(edges[0], edges[1], maj.T, cmap=cmap, norm=norm, shading="flat", rasterized=True)
    exact = data["converged_exactly"].mean(-1) > 0.5
    ii, jj = np.nonzero(exact)
    ax1.plot(lrs[ii], wds[jj], "x", color="k", ms=2.5, mew=0.6)
    x = np.logspace(np.log10(edges[0][0]), np.log10(edges[0][-1]), 50)
    for ax, col in ((ax0, "white"), (ax1, "k")):
        for p in (1e-3, 1e-2, 1e-1, 0.9):
            ax.plot(x, p / x, color=col, lw=0.7, ls="--")
            # label at the middle of the visible part of the line lr * wd = p
            lo = max(edges[0][0], p / edges[1][-1])
            hi = min(edges[0][-1], p / edges[1][0])
            if lo < hi:
                xt = np.sqrt(lo * hi)
                ax.text(xt, p / xt, f"ηλ={p:g}", color=col, fontsize=6, rotation=-33,
                        ha="center", va="bottom")
        ax.set(xscale="log", yscale="log", xlim=(edges[0][0], edges[0][-1]),
               ylim=(edges[1][0], edges[1][-1]), xlabel="learning rate η")
    ax0.set(ylabel="weight decay λ", title="tail loss / random level")
    present = sorted(set(maj[maj >= 0].ravel().tolist()))
    handles = [Patch(color=COLORS[names[i]], label=TITLES[names[i]]) for i in present]
    handles.append(ax1.plot([], [], "x", color="k", ms=3, label="a group ends exactly converged (float64)")[0])
    ax1.legend(handles=handles, loc="lower left", fontsize=6)
    ax1.set_title("observed regime")

    c = data["c"]
    S = data["fixed_tail_loss"].shape[1]
    ax2.plot(np.repeat(c - 1, S), data["fixed_tail_loss"].ravel(), "o", ms=2.5, color="#1f3b73",
             label="fixed ELR: tail loss at c = η̃Σα", zorder=3)
    L, W = np.meshgrid(lrs, wds, indexing="ij")
    eps = L * W
    # cells that show a regime: not those still in a converged phase, or ended by the float64 floor
    shown = [LABELS.index(n) for n in (conventional.PERIODIC,) + regimes.REGIMES[1:]]
    show = (eps < 1) & np.isin(maj, shown) & ~data["converged_exactly"].any(-1)
    ce = 1.0 / (1.0 - eps[show])
    tl = data["tail_loss"][show]
    ax2.plot(np.repeat(ce - 1, tl.shape[-1]), tl.ravel(), ".", ms=2.0, color="#d95f02", alpha=0.5,
             label="weight decay: tail loss at c = 1/(1 − ηλ)", zorder=2)
    fine = np.logspace(-3.2, np.log10(19.0), 300)
    ax2.plot(fine, 0.5 * a.sum() * fine / (1 + fine), color="k", lw=1.0,
             label="ηλΣα/2 = Σα(1 − 1/c)/2  (T12, T21)", zorder=4)
    ax2.axhline(rand, color="k", lw=0.8, ls=":", label=f"random level {rand:g}")
    ax2.set(xscale="log", yscale="log", xlabel="c − 1  (c = 1/(1 − ηλ) for weight decay)",
            ylabel="tail loss", title="fixed ELR vs weight decay", ylim=(1e-4, 10))
    ax2.legend(loc="upper left", fontsize=6)
    # inset: the weight-decay cells against the prediction, on a linear scale (the T25 excess)
    ins = ax2.inset_axes([0.5, 0.1, 0.46, 0.33])
    ins.plot(np.repeat(eps[show], tl.shape[-1]), (tl / (eps[show][:, None] * rand)).ravel(), ".",
             ms=1.5, color="#d95f02", alpha=0.6)
    ins.axhline(1.0, color="k", lw=0.8)
    ins.set_xscale("log")
    ins.set_ylim(0.9, 1.15)
    ins.set_xlabel("ηλ", fontsize=6, labelpad=1)
    ins.set_ylabel("loss / (ηλΣα/2)", fontsize=6, labelpad=1)
    ins.tick_params(labelsize=5.5)
    return fig


def main(out_dir, quick=False, backend="auto"):
    """Compute, save ``fig08_conventional.{png,pdf,npz}`` into ``out_dir``; returns the paths."""
    return C.write_figure(NAME, compute, plot, out_dir, quick, backend=backend)


if __name__ == "__main__":
    C.script(main, CAPTION)
