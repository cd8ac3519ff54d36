r"""Figure 6 — the largest Lyapunov exponent against $c=\tilde\eta\sum\alpha$ (T12).

Toy $\alpha=(1,2,4)$, total constraint. Each run carries a twin started $\epsilon\rho$ away
(direction from `toymodel.dynamics.initial_states` with ``twin=True``), pulled back after every
step; the tail mean of the log stretch is the largest Lyapunov exponent per step (the ``lyapunov``
summary of `toymodel.dynamics.summarize_batch`). Below $c=1$ the runs converge onto the
manifold of minima (every share is a minimum) and the exponent is 0. Just above $c=1$ the
synchronized equilibrium's 2-step Jacobian is neutral (eigenvalues on the unit circle, T12): the
motion is quasi-periodic, exponent $\approx0$. The exponent turns positive near
$c\approx1.75$ and is $\approx0.3$–$0.4$ per step from $c\approx2$ on: chaos,
with narrow periodic windows (one near $c\approx2.1$–$2.2$ in the full-mode grid, where
every seed has exponent 0).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toymodel.figures import _common as C  # noqa: E402
from toymodel import theory  # noqa: E402

NAME = "fig06_lyapunov"
TITLE = "Lyapunov exponent: quasi-periodic, then chaotic"
ALPHAS = (1.0, 2.0, 4.0)
CAPTION = ("Largest Lyapunov exponent per step against c = η̃Σα, toy α = (1, 2, 4), total "
           "constraint (twin-trajectory estimate, every seed a dot, the line the median). c < 1: "
           "convergence onto the neutral manifold of minima (λ = 0). Just above c = 1: "
           "quasi-periodic motion around the synchronized equilibrium (λ ≈ 0). From c ≈ 2: chaos "
           "(λ ≈ 0.3–0.4 per step), with narrow periodic windows (λ = 0, e.g. near c ≈ 2.1). "
           "Background: observed regime; dash-dotted: η̃ = 1/min α.")


def compute(quick=False, engine="auto", backend="auto"):
    """Lyapunov exponents over a log grid of $c$ (scan with ``lyapunov=True`` or ``backend.summarize``)."""
    n_c, seeds, steps, tail = (40, 2, 3000, 1500) if quick else (160, 6, 20000, 8000)
    c = np.logspace(np.log10(0.5), np.log10(20.0), n_c)
    s = float(np.sum(ALPHAS))
    res = C.run_summaries(ALPHAS, c / s, range(seeds), backend=backend, steps=steps, tail=tail, lyapunov=True,
                          engine=engine, progress_bar=not quick, desc=NAME)
    data = {"c": c, "elr": c / s, "alphas": np.array(ALPHAS), "lyapunov": res["lyapunov"],
            "tail_loss": res["tail_loss"], "regime_code": C.regime_codes(res["regime"])}
    params = C.provenance(backend=backend, alphas=list(ALPHAS), seeds=list(range(seeds)), steps=steps, tail=tail,
                          constraint="total", engine=res["engine"], dims="(c, seed)",
                          lyapunov_units="per step (natural log)",
                          regime_codes=list(C.REGIME_CODES), theory="T12")
    return data, params


def plot(data, params):
    """Draw the figure from the saved data."""
    c, lam, a = data["c"], data["lyapunov"], data["alphas"]
    fig, ax = C.new_figure(1, 1, figsize=(6.4, 3.5))
    C.shade_regimes(ax, c, C.majority(data["regime_code"], axis=1))
    S = lam.shape[1]
    ax.plot(np.repeat(c, S), lam.ravel(), "o", ms=2.2, color="#1f3b73", alpha=0.6,
            label=f"simulated ({S} seeds)")
    ax.plot(c, np.median(lam, axis=1), color="#1f3b73", lw=1.0, label="median over seeds")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.axvline(1.0, color="k", lw=0.9, ls=":")
    c_div = theory.divergence_threshold(a) * a.sum()
    ax.axvline(c_div, color="k", lw=0.9, ls="-.")
    ax.text(0.97, 0.42, "c = 1 (1/Σα)", ha="right", rotation=90, fontsize=7.5,
            transform=ax.get_xaxis_transform())
    ax.text(c_div * 0.96, 0.42, "η̃ = 1/min α", ha="right", rotation=90, fontsize=7.5,
            transform=ax.get_xaxis_transform())
    ax.annotate("quasi-periodic\n(λ ≈ 0)", xy=(1.3, 0.0), xytext=(1.05, 0.16), fontsize=7.5,
                arrowprops={"arrowstyle": "->", "lw": 0.7})
    ax.text(3.2, 0.45, "chaotic (λ > 0)", fontsize=7.5)
    ax.set(xscale="log", xlabel="c = η̃Σα (dimensionless)",
           ylabel="largest Lyapunov exponent λ (per step)", xlim=(c[0], c[-1]),
           ylim=(min(-0.05, np.nanmin(lam) - 0.02), max(0.55, np.nanmax(lam) + 0.05)),
           title=f"Lyapunov exponent, α = ({', '.join(f'{x:g}' for x in a)})")
    ax.legend(loc="upper left", fontsize=6.5)
    return fig


def main(out_dir, quick=False, backend="auto"):
    """Compute, save ``fig06_lyapunov.{png,pdf,npz}`` into ``out_dir``; returns the paths."""
    return C.write_figure(NAME, compute, plot, out_dir, quick, backend=backend)


if __name__ == "__main__":
    C.script(main, CAPTION)
