r"""Figure 2 — the three regimes in a total-ELR scan of the toy with $\alpha=(1,2,4)$ (T10, T12).

Tail loss of projected GD against the total ELR $\tilde\eta$, several seeds per ELR, with the
theory on top: the synchronized equilibrium $L^*=(\sum\alpha-1/\tilde\eta)/2$
(`toymodel.theory.equilibrium_loss`), the random level $\sum\alpha/2$, the convergence
threshold $1/\sum\alpha$ and the every-group-above-threshold line $1/\min\alpha$.
The background is shaded by the regime the classifier (`toymodel.regimes.classify_summary`)
observed at each ELR (majority over seeds); the theory's thresholds are the vertical lines.
The lower panel shows the angle moved per step with the equilibrium's $\arctan\sqrt{c^2-1}$.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toymodel.figures import _common as C  # noqa: E402
from toymodel import theory  # noqa: E402

NAME = "fig02_total_elr_scan"
TITLE = "Total-ELR scan: the three regimes"
ALPHAS = (1.0, 2.0, 4.0)
CAPTION = ("Total-ELR scan of the toy with α = (1, 2, 4) (T10, T12). Top: tail loss of every seed "
           "against the ELR, with the equilibrium curve (Σα − 1/η̃)/2, the random level Σα/2 and "
           "the thresholds 1/Σα and 1/min α; background shaded by the regime the classifier "
           "observed. Bottom: mean angle per step with the equilibrium's arctan√(c² − 1).")


def compute(quick=False, engine="auto", backend="auto"):
    """Run the scan (``toymodel.scan`` when available, else ``backend.summarize``)."""
    n_elr, seeds, steps, tail = (60, 2, 3000, 500) if quick else (300, 6, 20000, 4000)
    elrs = np.logspace(-2, 1, n_elr)
    res = C.run_summaries(ALPHAS, elrs, range(seeds), backend=backend, steps=steps, tail=tail, engine=engine,
                          progress_bar=not quick, desc=NAME)
    data = {"elr": elrs, "alphas": np.array(ALPHAS),
            "tail_loss": res["tail_loss"], "tail_loss_std": res["tail_loss_std"],
            "tail_angle": res["tail_angle"], "min_share": res["min_share"],
            "regime_code": C.regime_codes(res["regime"]),
            "equilibrium_loss": np.array([theory.equilibrium_loss(e, ALPHAS) for e in elrs]),
            "predicted_code": C.regime_codes([theory.predict_regime(e, ALPHAS) for e in elrs])}
    params = C.provenance(backend=backend, alphas=list(ALPHAS), seeds=list(range(seeds)), steps=steps, tail=tail,
                          constraint="total", engine=res["engine"], dims="(elr, seed)",
                          regime_codes=list(C.REGIME_CODES), theory="T10, T12")
    return data, params


def plot(data, params):
    """Draw the figure from the saved data."""
    elr, loss = data["elr"], data["tail_loss"]
    a = data["alphas"]
    fig, (ax, ax2) = C.new_figure(2, 1, figsize=(7.0, 5.2), sharex=True,
                                  gridspec_kw={"height_ratios": [2.2, 1]})
    codes = C.majority(data["regime_code"], axis=1)
    for axis in (ax, ax2):
        C.shade_regimes(axis, elr, codes, label=axis is ax)
    fine = np.logspace(np.log10(elr[0]), np.log10(elr[-1]), 800)
    S = loss.shape[1]
    ax.plot(np.repeat(elr, S), loss.ravel(), "o", ms=2.2, color="#1f3b73", alpha=0.7,
            label=f"simulated tail loss ({S} seeds)", zorder=2)
    ax.plot(fine, [theory.equilibrium_loss(e, a) for e in fine], color="#d62728", lw=1.1,
            label="theory L* = (Σα − 1/η̃)/2  (T12)", zorder=3)
    ax.axhline(theory.random_loss(a), color="k", lw=0.9, ls="--",
               label=f"random level Σα/2 = {theory.random_loss(a):g}", zorder=3)
    for axis in (ax, ax2):
        axis.axvline(theory.total_threshold(a), color="k", lw=0.9, ls=":", zorder=3)
        axis.axvline(theory.divergence_threshold(a), color="k", lw=0.9, ls="-.", zorder=3)
    ax.text(theory.total_threshold(a) * 0.93, 3.0, "1/Σα", ha="right", fontsize=8)
    ax.text(theory.divergence_threshold(a) * 0.93, 1.0, "1/min α", ha="right", fontsize=8)
    ax.set(xscale="log", ylabel="tail loss (same units as F)", ylim=(-0.1, 3.9), xlim=(elr[0], elr[-1]),
           title=f"total-ELR scan, α = ({', '.join(f'{x:g}' for x in a)})")
    ax.legend(loc="upper left", fontsize=6.8)

    ang = np.degrees(data["tail_angle"])
    ax2.plot(np.repeat(elr, S), ang.ravel(), "o", ms=2.2, color="#1f3b73", alpha=0.7, zorder=2)
    ax2.plot(fine, [np.degrees(theory.equilibrium_step_angle(e, a)) for e in fine],
             color="#d62728", lw=1.1, label="theory arctan√(c² − 1)  (T6, T12)", zorder=3)
    ax2.set(xscale="log", xlabel="total ELR η̃ (dimensionless)", ylabel="angle / step (deg)",
            ylim=(-5, 95))
    ax2.set_yticks([0, 30, 60, 90])
    ax2.legend(loc="upper left", fontsize=6.8)
    return fig


def main(out_dir, quick=False, backend="auto"):
    """Compute, save ``fig02_total_elr_scan.{png,pdf,npz}`` into ``out_dir``; returns the paths."""
    return C.write_figure(NAME, compute, plot, out_dir, quick, backend=backend)


if __name__ == "__main__":
    C.script(main, CAPTION)
