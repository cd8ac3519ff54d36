r"""Figure 4 — total vs individual constraint: one collective boundary vs a staircase (§3, T10, T12).

Toy $\alpha=(1,2,4)$, per-group tail losses $\overline{\alpha_i\sin^2\varphi_i}$ divided by
each group's random level $\alpha_i/2$, against the total ELR.

* Total constraint (one sphere): the shares adapt, so all groups leave zero loss together at
  $1/\sum\alpha$ (T10, T12); above it each group sits near $1-1/c$ (the synchronized
  equilibrium: every group on the cycle $\cos2\varphi_i=1/c$).
* Individual constraint (each group on its own sphere, equal shares): every individual ELR is
  $n\tilde\eta$, the groups decouple and group ``i`` stops converging at
  $1/(n\alpha_i)$ (`toymodel.theory.individual_constraint_thresholds`): a staircase,
  each step on its own 2-cycle with loss fraction $1-1/(n\tilde\eta\alpha_i)$ (T11).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toymodel.figures import _common as C  # noqa: E402
from toymodel import dynamics, theory  # noqa: E402
from toymodel._progress import progress  # noqa: E402
from toymodel.problems import SphereToy  # noqa: E402

NAME = "fig04_total_vs_individual"
TITLE = "Total vs individual constraint"
ALPHAS = (1.0, 2.0, 4.0)
CONSTRAINTS = ("total", "individual")
CAPTION = ("Total vs individual constraint, toy α = (1, 2, 4). Per-group tail loss as a fraction of "
           "the group's random level αᵢ/2 against the total ELR. Total constraint: all groups stop "
           "converging together at 1/Σα (a collective boundary), then sit near the equilibrium "
           "1 − 1/c. Individual constraint: group i stops converging at 1/(nαᵢ) (a staircase), then "
           "sits on its own 2-cycle, 1 − 1/(nη̃αᵢ). Lines: theory; dots: simulation.")


def compute(quick=False, backend="auto"):
    """Per-group tail losses for both constraints over an ELR grid (mean of the last ``keep`` states)."""
    n_elr, seeds, steps, keep = (50, 2, 2500, 60) if quick else (200, 4, 12000, 400)
    elrs = np.logspace(-2, np.log10(3.0), n_elr)
    problem = SphereToy(ALPHAS)
    a = problem.alphas
    out = np.empty((len(CONSTRAINTS), n_elr, seeds, a.size))
    with progress(total=len(CONSTRAINTS), desc=NAME, disable=quick) as bar:
        for j, constraint in enumerate(CONSTRAINTS):
            theta0 = dynamics.initial_states(problem, range(seeds), constraint)
            th = np.tile(theta0, (n_elr, 1, 1))
            states = C.orbit(problem, th, np.repeat(elrs, seeds), backend=backend, steps=steps, keep=keep,
                             constraint=constraint)
            out[j] = C.group_losses(states, a).mean(0).reshape(n_elr, seeds, a.size)
            bar.update()
    data = {"elr": elrs, "alphas": a, "group_tail_loss": out,
            "group_random_loss": a / 2,
            "individual_thresholds": theory.individual_constraint_thresholds(a),
            "total_threshold": np.array(theory.total_threshold(a))}
    params = C.provenance(backend=backend, alphas=list(ALPHAS), seeds=list(range(seeds)), steps=steps, keep=keep,
                          constraints=list(CONSTRAINTS), shares="equal (individual)",
                          dims="(constraint, elr, seed, group)", theory="T10-T12, §3")
    return data, params


def theory_fraction(constraint, elr, alphas):
    """Per-group tail loss / (αᵢ/2) the theory predicts (T11, T12)."""
    a = np.asarray(alphas)
    if constraint == "total":
        c = theory.criticality(elr, a)
        return np.full(a.size, 1.0 - 1.0 / c if c > 1 else 0.0)
    return np.array([theory.two_cycle_loss(a.size * elr, ai) / (ai / 2) for ai in a])


def plot(data, params):
    """Draw the figure from the saved data."""
    elr, a = data["elr"], data["alphas"]
    frac = data["group_tail_loss"] / data["group_random_loss"]
    fig, axes = C.new_figure(1, 2, figsize=(7.4, 3.4), sharey=True)
    colors = ("#1f77b4", "#d62728", "#2ca02c")
    fine = np.logspace(np.log10(elr[0]), np.log10(elr[-1]), 600)
    for j, (ax, constraint) in enumerate(zip(axes, CONSTRAINTS)):
        S = frac.shape[2]
        pred = np.array([theory_fraction(constraint, e, a) for e in fine])
        for i in range(a.size):
            ax.plot(np.repeat(elr, S), frac[j, :, :, i].ravel(), "o", ms=2.0, alpha=0.6,
                    color=colors[i], label=f"group {i + 1} (α = {a[i]:g})")
            ax.plot(fine, pred[:, i], color=colors[i], lw=1.0,
                    ls="-" if constraint == "individual" else "--")
        if constraint == "total":
            ax.axvline(theory.total_threshold(a), color="k", ls=":", lw=1.0)
            ax.text(theory.total_threshold(a) * 0.92, 0.9, "1/Σα", ha="right", fontsize=8)
            ax.plot([], [], color="k", ls="--", lw=1.0, label="theory 1 − 1/c (all groups)")
            ax.set_title("total constraint: collective boundary")
        else:
            for i, thr in enumerate(theory.individual_constraint_thresholds(a)):
                ax.axvline(thr, color=colors[i], ls=":", lw=1.0)
                ax.text(thr * 0.92, 0.93 - 0.08 * i, f"1/(nα{chr(0x2081 + i)})", ha="right", fontsize=7,
                        color=colors[i])
            ax.plot([], [], color="k", lw=1.0, label="theory 1 − 1/(nη̃αᵢ)")
            ax.set_title("individual constraint: staircase")
        ax.set(xscale="log", xlabel="total ELR η̃ (dimensionless)", ylim=(-0.05, 1.08),
               xlim=(elr[0], elr[-1]))
        ax.legend(loc="center left", fontsize=6.5)
    axes[0].set_ylabel("group tail loss / random level αᵢ/2")
    return fig


def main(out_dir, quick=False, backend="auto"):
    """Compute, save ``fig04_total_vs_individual.{png,pdf,npz}`` into ``out_dir``; returns the paths."""
    return C.write_figure(NAME, compute, plot, out_dir, quick, backend=backend)


if __name__ == "__main__":
    C.script(main, CAPTION)
