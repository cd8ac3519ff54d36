r"""Figure 3 — individual ELRs $\tilde\eta_i\alpha_i$ over time in each regime (T7–T10, T12).

Under the total constraint each group moves with its own ELR $\tilde\eta_i=\tilde\eta/s_i$ (T7),
and the shares $s_i$ evolve (T9) under the budget $\sum 1/\tilde\eta_i=1/\tilde\eta$ (T8).
Group ``i`` is below its convergence threshold when $\tilde\eta_i\alpha_i<1$. One run of
`toymodel.simulate` per regime, toy $\alpha=(1,2,4)$:

* $c=\tilde\eta\sum\alpha=0.9$: the shares settle with every group below 1: convergence;
* $c=1.3$: by T8 $\max_i\tilde\eta_i\alpha_i\ge c>1$ at every step (Remark 2, T10); the
  groups synchronise around $\tilde\eta_i\alpha_i=c$ (T12): chaotic equilibrium;
* $\tilde\eta=3>1/\min\alpha$: every group is above threshold at every step: divergence.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toymodel.figures import _common as C  # noqa: E402
from toymodel import regimes, simulate, theory  # noqa: E402
from toymodel.problems import SphereToy  # noqa: E402

NAME = "fig03_individual_elrs"
TITLE = "Individual ELRs over time"
ALPHAS = (1.0, 2.0, 4.0)
CAPTION = ("Individual ELRs η̃ᵢαᵢ over time, one run per regime, toy α = (1, 2, 4) (T7–T10). "
           "The threshold η̃ᵢαᵢ = 1 is dashed. Convergence (c = η̃Σα = 0.9): every group ends below "
           "it. Chaotic equilibrium (c = 1.3): at every step at least one group is above it "
           "(Remark 2), and the groups synchronise around η̃ᵢαᵢ = c (dotted, T12). Divergence "
           "(η̃ = 3 > 1/min α): every group is above it at every step.")


def cases(alphas):
    """The three runs: (regime, total ELR, label)."""
    s = float(np.sum(alphas))
    return (("convergence", 0.9 / s, "c = η̃Σα = 0.9"),
            ("chaotic_equilibrium", 1.3 / s, "c = η̃Σα = 1.3"),
            ("divergence", 3.0 / float(np.min(alphas)), "η̃ = 3/min α"))


def compute(quick=False, backend="auto"):
    """Simulate one run per regime and keep the traces of $\\tilde\\eta_i\\alpha_i$ and the loss."""
    steps, seed = (1500, 0) if quick else (10000, 0)
    problem = SphereToy(ALPHAS)
    a = problem.alphas
    k, loss, observed = [], [], []
    for _, elr, _ in cases(a):
        tr = simulate(problem, elr, steps, seed=seed)
        k.append(tr.individual_elr * a)
        loss.append(tr.loss)
        observed.append(regimes.classify(tr, problem))
    data = {"step": np.arange(steps), "alphas": a,
            "elr": np.array([c[1] for c in cases(a)]),
            "elr_times_alpha": np.stack(k), "loss": np.stack(loss),
            "regime_code": C.regime_codes(observed),
            "predicted_code": C.regime_codes([theory.predict_regime(c[1], a) for c in cases(a)])}
    params = C.provenance(backend=backend, alphas=list(ALPHAS), seed=seed, steps=steps, constraint="total",
                          dims="(case, step, group)", cases=[c[0] for c in cases(a)],
                          regime_codes=list(C.REGIME_CODES), theory="T7-T10, T12")
    return data, params


def plot(data, params):
    """Draw the figure from the saved data."""
    from matplotlib.ticker import FuncFormatter

    a = data["alphas"]
    fig, axes = C.new_figure(1, 3, figsize=(7.4, 3.0))
    t = data["step"] + 1
    colors = ("#1f77b4", "#d62728", "#2ca02c")
    for j, (ax, (regime, elr, label)) in enumerate(zip(axes, cases(a))):
        k = data["elr_times_alpha"][j]
        for i in range(k.shape[1]):
            ax.plot(t, k[:, i], color=colors[i % 3], lw=0.6, alpha=0.85,
                    label=f"group {i + 1} (α = {a[i]:g})")
        ax.axhline(1.0, color="k", ls="--", lw=1.0, label="threshold η̃ᵢαᵢ = 1")
        if regime == "chaotic_equilibrium":
            c = elr * a.sum()
            ax.axhline(c, color="k", ls=":", lw=1.0, label=f"equilibrium η̃ᵢαᵢ = c = {c:g}")
        observed = C.REGIME_CODES[int(data["regime_code"][j])]
        ax.set_facecolor(C.REGIME_COLORS[observed] + "40")
        ax.set(xscale="log", yscale="log", xlabel="step",
               title=f"{C.REGIME_TITLES[regime]}\n{label}")
        ax.text(0.97, 0.03, f"observed: {C.REGIME_TITLES[observed]}", transform=ax.transAxes,
                fontsize=7, ha="right", bbox={"fc": "white", "ec": "none", "alpha": 0.8})
        fmt = FuncFormatter(lambda v, _: f"{v:g}")
        if regime != "divergence":
            ax.yaxis.set_major_formatter(fmt)
            ax.yaxis.set_minor_formatter(fmt)
    axes[0].set_ylabel("individual ELR × curvature  η̃ᵢαᵢ")
    lo, hi = axes[1].get_ylim()
    axes[1].set_ylim(min(lo, 0.5), hi)
    axes[0].legend(loc="upper right", fontsize=6)
    axes[1].legend(loc="upper right", fontsize=6, handles=axes[1].get_lines()[-2:])
    return fig


def main(out_dir, quick=False, backend="auto"):
    """Compute, save ``fig03_individual_elrs.{png,pdf,npz}`` into ``out_dir``; returns the paths."""
    return C.write_figure(NAME, compute, plot, out_dir, quick, backend=backend)


if __name__ == "__main__":
    C.script(main, CAPTION)
