r"""Figure 5 — phase diagram over ELR × number of groups (T10, T12).

Toys with $n$ groups of curvatures $\alpha_i=i$ ($i=1..n$), total constraint. Left:
tail loss divided by the random level $\sum\alpha/2$ (median over seeds). Right: the regime
the classifier observed (majority over seeds). The convergence boundary $1/\sum\alpha=2/(n(n+1))$
(T10, T12) and the line $1/\min\alpha=1$ are drawn on top: the chaotic-equilibrium band
widens as groups are added, because the budget (T8) lets one group's large share feed the others.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toymodel.figures import _common as C  # noqa: E402
from toymodel import theory  # noqa: E402
from toymodel._progress import progress  # noqa: E402

NAME = "fig05_phase_diagram"
TITLE = "Phase diagram: ELR × number of groups"
CAPTION = ("Phase diagram of the toy with n groups of curvatures αᵢ = i, total constraint. Left: "
           "tail loss / random level Σα/2 (median over seeds); right: observed regime. Lines: the "
           "theory's convergence boundary 1/Σα = 2/(n(n+1)) and 1/min α = 1. The equilibrium band "
           "between them widens with the number of groups.")


def alphas_for(n):
    """Curvatures of the ``n``-group configuration: $\\alpha_i=i$."""
    return tuple(float(i) for i in range(1, n + 1))


def compute(quick=False, engine="auto", backend="auto"):
    """One scan per number of groups (``toymodel.scan`` when available, else ``backend.summarize``)."""
    n_max, n_elr, seeds, steps, tail = (6, 40, 1, 2500, 500) if quick else (12, 160, 3, 20000, 4000)
    elrs = np.logspace(-2.5, 1, n_elr)
    ns = np.arange(1, n_max + 1)
    ratio = np.empty((ns.size, n_elr, seeds))
    codes = np.empty((ns.size, n_elr, seeds), np.int8)
    engines = set()
    with progress(total=ns.size, desc=NAME, disable=quick) as bar:
        for j, n in enumerate(ns):
            a = alphas_for(n)
            res = C.run_summaries(a, elrs, range(seeds), backend=backend, steps=steps, tail=tail, engine=engine)
            ratio[j] = res["tail_loss"] / theory.random_loss(a)
            codes[j] = C.regime_codes(res["regime"])
            engines.add(res["engine"])
            bar.update()
    data = {"elr": elrs, "n_groups": ns, "loss_ratio": ratio, "regime_code": codes,
            "total_threshold": np.array([theory.total_threshold(alphas_for(n)) for n in ns]),
            "divergence_threshold": np.array([theory.divergence_threshold(alphas_for(n))
                                              for n in ns])}
    params = C.provenance(backend=backend, alphas="alpha_i = i, i = 1..n", seeds=list(range(seeds)), steps=steps,
                          tail=tail, constraint="total", engine=sorted(engines),
                          dims="(n_groups, elr, seed)", regime_codes=list(C.REGIME_CODES),
                          theory="T10, T12")
    return data, params


def plot(data, params):
    """Draw the figure from the saved data."""
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    elr, ns = data["elr"], data["n_groups"]
    t = np.log(elr)
    mid = (t[1:] + t[:-1]) / 2
    xe = np.exp(np.concatenate([[2 * t[0] - mid[0]], mid, [2 * t[-1] - mid[-1]]]))
    ye = np.concatenate([ns - 0.5, [ns[-1] + 0.5]])
    fig, (ax0, ax1) = C.new_figure(1, 2, figsize=(7.6, 3.5), sharey=True)
    mesh = ax0.pcolormesh(xe, ye, np.median(data["loss_ratio"], axis=-1), vmin=0, vmax=1,
                          cmap="magma", shading="flat", rasterized=True)
    fig.colorbar(mesh, ax=ax0, pad=0.01)  # the panel title names the quantity; a label here reads as ax1's
    names = C.REGIME_CODES
    cmap = ListedColormap([C.REGIME_COLORS[n] for n in names])
    norm = BoundaryNorm(np.arange(len(names) + 1) - 0.5, len(names))
    ax1.pcolormesh(xe, ye, C.majority(data["regime_code"], axis=-1), cmap=cmap, norm=norm,
                   shading="flat", rasterized=True)
    present = sorted(set(np.unique(data["regime_code"]).tolist()))
    handles = [Patch(color=C.REGIME_COLORS[names[i]], label=f"observed: {C.REGIME_TITLES[names[i]]}")
               for i in present]
    ny = np.linspace(ns[0], ns[-1] + 0.5, 200)  # n >= 1: the curve means nothing below one group
    for ax, col in ((ax0, "white"), (ax1, "k")):
        # 1/Σα for α_i = i, drawn as a curve through the integer rows (theory, T10)
        ax.plot(2.0 / (ny * (ny + 1)), ny, color=col, lw=1.2, ls="--")
        ax.plot(data["total_threshold"], ns, "o", color=col, ms=3)
        ax.axvline(1.0, color=col, lw=1.0, ls="-.")
        ax.set(xscale="log", xlabel="total ELR η̃ (dimensionless)", xlim=(xe[0], xe[-1]),
               ylim=(ye[0], ye[-1]))
    line_handles = [ax1.plot([], [], color="k", ls="--", label="theory 1/Σα = 2/(n(n+1))")[0],
                    ax1.plot([], [], color="k", ls="-.", label="1/min α = 1")[0]]
    ax1.legend(handles=handles + line_handles, loc="lower left", fontsize=6.2)
    ax0.set(ylabel="number of groups n  (αᵢ = i)", title="tail loss / random level")
    ax0.set_yticks(ns)
    ax1.set_title("observed regime")
    return fig


def main(out_dir, quick=False, backend="auto"):
    """Compute, save ``fig05_phase_diagram.{png,pdf,npz}`` into ``out_dir``; returns the paths."""
    return C.write_figure(NAME, compute, plot, out_dir, quick, backend=backend)


if __name__ == "__main__":
    C.script(main, CAPTION)
