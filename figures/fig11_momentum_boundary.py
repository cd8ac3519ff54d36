r"""Figure 11 — the convergence boundary of heavy-ball momentum on the sphere (docs/momentum.md, T43–T48).

Toy $\alpha=(1,2,4)$, total constraint, fixed ELR, momentum $\beta\in[0,0.99]$, both buffer
modes of `toymodel.momentum.simulate_momentum`: ``"official"`` (``torch.optim.SGD`` buffer left
as is after the rescale) and ``"transport"`` (SGD-MRT's transport, T42). A run converged when its
tail-mean loss is below 1e-10 and its final shares make the minimum linearly stable
(`toymodel.momentum.converged`).

Left: the first non-converging $c=\tilde\eta\sum\alpha$ of every seed on the grid (band over
seeds, median line) for both modes, against the naive $1+\beta$ (T43: an upper bound, not the
boundary). Middle and right: the $(c,\beta)$ phase diagram, the fraction of seeds that converged.
The boundary is a finite-horizon notion: in the official mode a band of $c$ below $1+\beta$
holds a chaotic transient whose outcome is decided by rounding (T48), so the pixels there are
coin flips, not a curve. With the transport the boundary follows $1+\beta$ up to $\beta\approx0.6$ and
falls below it for $\beta\gtrsim0.8$, where a non-converging attractor appears (docs/momentum.md).
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toymodel.figures import _common as C

from toymodel import backend as _backend, momentum as M
from toymodel._progress import progress

NAME = "fig11_momentum_boundary"
TITLE = "Heavy-ball momentum: the convergence boundary is not (1+β)/Σα"
ALPHAS = (1.0, 2.0, 4.0)
MODES = M.MOMENTUM_MODES
CAPTION = ("Heavy-ball momentum at fixed ELR on the toy α = (1, 2, 4), official (untransported) "
           "and transported buffer. Left: first non-converging c = η̃Σα of each seed (band over "
           "seeds, median line) against the naive 1 + β (T43, an upper bound). Middle, right: "
           "fraction of seeds converged over (c, β). Official mode: a wide band below 1 + β where "
           "convergence is a coin flip decided by rounding (a chaotic transient, T48); transport: "
           "just below 1 + β up to β ≈ 0.6, well below it for β ≥ 0.8 (an attractor, T48).")


def grids(quick):
    """``(c, betas, seeds, steps, tail)`` of the run."""
    if quick:
        return np.linspace(0.6, 2.05, 24), np.array([0.0, 0.5, 0.9, 0.99]), [0, 1], 1500, 200
    betas = np.concatenate([np.linspace(0.0, 0.9, 31), np.linspace(0.92, 0.99, 5)])
    return np.linspace(0.6, 2.05, 146), betas, list(range(6)), 20000, 2000


def first_failure(c, ok):
    r"""First grid value of ``c`` (axis 0 of ``ok``) that did not converge, NaN if all did."""
    bad = ~ok
    idx = np.argmax(bad, axis=0)
    return np.where(bad.any(axis=0), c[idx], np.nan)


def compute(quick=False, backend="auto"):
    """Converged-or-not over (c, β, seed) for both modes (`toymodel.momentum.convergence_grid`
    through `toymodel.backend.summarize_momentum`: the momentum kernels where they run)."""
    c, betas, seeds, steps, tail = grids(quick)
    data = {"c": c, "beta": betas, "alphas": np.array(ALPHAS)}
    with progress(total=len(MODES), desc=NAME, disable=quick) as bar:
        for mode in MODES:
            ok, summ = M.convergence_grid(ALPHAS, c, betas, seeds, momentum_mode=mode,
                                          steps=steps, tail=tail, return_summary=True,
                                          summarize=partial(_backend.summarize_momentum,
                                                            backend=backend))
            data[f"converged_{mode}"] = ok.astype(np.int8)
            data[f"tail_loss_{mode}"] = summ["tail_loss"].astype(np.float32)
            data[f"first_failure_{mode}"] = first_failure(c, ok)  # (beta, seed)
            bar.update()
    params = C.provenance(backend=backend, alphas=list(ALPHAS), seeds=seeds, steps=steps, tail=tail,
                          constraint="total", criterion="tail loss < 1e-10 and final_stability < 1",
                          dims="converged_*: (c, beta, seed); first_failure_*: (beta, seed)",
                          modes=list(MODES), theory="T43, T44, T48")
    return data, params


def _edges(x):
    """Cell edges around the grid values ``x`` (midpoints, the ends extended by half a cell)."""
    x = np.asarray(x, dtype=float)
    mid = (x[1:] + x[:-1]) / 2
    return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


def plot(data, params):
    """Draw the figure from the saved data."""
    c, betas = data["c"], data["beta"]
    fig, axes = C.new_figure(1, 3, figsize=(11.0, 3.6), gridspec_kw={"width_ratios": [1.1, 1, 1]})
    ax = axes[0]
    colors = {"official": "#c0392b", "transport": "#1f3b73"}
    bb = np.linspace(0, 0.99, 100)
    ax.plot(bb, 1 + bb, "k--", lw=1.0, label="naive 1 + β  (T43)")
    for mode in MODES:
        ff = data[f"first_failure_{mode}"]
        lo, hi, med = (np.nanmin(ff, 1), np.nanmax(ff, 1), np.nanmedian(ff, 1))
        ax.fill_between(betas, lo, hi, color=colors[mode], alpha=0.25, lw=0)
        ax.plot(betas, med, "o-", ms=2.5, lw=1.0, color=colors[mode],
                label=f"{mode}: first failure (band over {ff.shape[1]} seeds)")
    ax.set(xlabel="momentum β", ylabel="c = η̃ Σα", xlim=(0, 1), ylim=(0.6, 2.05),
           title="boundary per seed vs naive")
    ax.legend(loc="upper left", fontsize=6.5)
    ce, be = _edges(c), _edges(betas)
    for ax, mode in zip(axes[1:], MODES):
        frac = data[f"converged_{mode}"].mean(-1)  # (c, beta)
        im = ax.pcolormesh(ce, be, frac.T, cmap="viridis", vmin=0, vmax=1, shading="flat",
                           rasterized=True)
        ax.plot(1 + bb, bb, "w--", lw=1.0, label="c = 1 + β")
        ax.axvline(1.0, color="w", lw=0.6, ls=":")
        ax.set(xlabel="c = η̃ Σα", ylabel="momentum β", title=f"{mode} buffer: fraction converged",
               xlim=(ce[0], ce[-1]), ylim=(max(be[0], 0.0), min(be[-1], 1.0)))
        ax.legend(loc="lower right", fontsize=6.5)
    fig.colorbar(im, ax=axes[1:].tolist(), fraction=0.03, pad=0.02, label="fraction of seeds")
    return fig


def main(out_dir, quick=False, backend="auto"):
    """Compute, save ``fig11_momentum_boundary.{png,pdf,npz}`` into ``out_dir``; returns the paths."""
    return C.write_figure(NAME, compute, plot, out_dir, quick, backend=backend)


if __name__ == "__main__":
    C.script(main, CAPTION)
