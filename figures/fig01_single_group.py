r"""Figure 1 — one SI group: the angle map and its bifurcation diagram (T11).

For one group of the toy, $F=\alpha\sin^2\varphi$, projected GD with ELR $\tilde\eta$ moves
the angle by $\varphi'=\varphi-\arctan(\tilde\eta\alpha\sin2\varphi)$ (T11). Left: that map for
a few values of $k=\tilde\eta\alpha$; its intersections with $\varphi'=-\varphi$ are the
2-cycle. Right: the asymptotic angles of the simulated dynamics (the stepper of
`toymodel.dynamics`, several initial angles per ELR) against $k$, with the analytic
branch $\pm\tfrac12\arccos(1/k)$ of `toymodel.theory.two_cycle_angle` on top.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toymodel.figures import _common as C  # noqa: E402
from toymodel import dynamics, theory  # noqa: E402
from toymodel.problems import SphereToy  # noqa: E402

NAME = "fig01_single_group"
TITLE = "One group: angle map and bifurcation diagram"
CAPTION = ("One SI group (T11). Left: the angle map φ' = φ − arctan(η̃α·sin 2φ) for several "
           "η̃α; the 2-cycle sits where the map crosses φ' = −φ. Right: bifurcation diagram, the "
           "asymptotic angle of the simulated dynamics against η̃α, with the analytic 2-cycle "
           "±½·arccos(1/(η̃α)) overlaid: convergence to φ = 0 iff η̃α < 1.")


def compute(quick=False, backend="auto"):
    """Asymptotic angles of the simulated single-group dynamics over a log grid of $k=\\tilde\\eta\\alpha$."""
    alpha = 1.0
    n_k, seeds, steps, keep = (120, 4, 1500, 8) if quick else (500, 8, 6000, 16)
    k = np.logspace(np.log10(0.2), np.log10(30.0), n_k)
    problem = SphereToy([alpha])
    theta0 = dynamics.initial_states(problem, range(seeds))
    th = np.tile(theta0, (n_k, 1, 1))
    elr = np.repeat(k / alpha, seeds)
    states = C.orbit(problem, th, elr, backend=backend, steps=steps, keep=keep)  # (keep, K*S, 1, 2)
    phi = C.phi_degrees(states[:, :, 0]).reshape(keep, n_k, seeds)
    branch = np.degrees([theory.two_cycle_angle(e, alpha) for e in k / alpha])
    params = C.provenance(backend=backend, alpha=alpha, seeds=list(range(seeds)), steps=steps, keep=keep,
                          constraint="total", dim=2, theory="T11")
    return {"k": k, "phi_deg": np.moveaxis(phi, 0, -1), "branch_deg": branch}, params


def plot(data, params):
    """Draw the figure from the saved data."""
    k, phi, branch = data["k"], data["phi_deg"], data["branch_deg"]
    fig, (ax0, ax1) = C.new_figure(1, 2, figsize=(7.2, 3.4))
    grid = np.linspace(-90.0, 90.0, 721)
    for kk, color in zip((0.5, 1.5, 3.0, 10.0), ("#2ca02c", "#1f77b4", "#9467bd", "#9467bd")):
        ls = "-" if kk != 10.0 else ":"
        ax0.plot(grid, np.degrees(theory.angle_map(np.radians(grid), kk, 1.0)), color=color,
                 ls=ls, label=f"η̃α = {kk:g}")
    ax0.plot(grid, grid, color="0.5", lw=0.8, ls="--", label="φ' = φ (fixed points)")
    ax0.plot(grid, -grid, color="k", lw=0.8, ls="--", label="φ' = −φ (2-cycles)")
    ax0.set(xlabel="angle φ to the minimum (degrees)", ylabel="next angle φ' (degrees)",
            title="angle map (T11)", xlim=(-90, 90), ylim=(-100, 100))
    ax0.legend(loc="upper left", fontsize=6.5)

    kk = np.broadcast_to(k[:, None, None], phi.shape).ravel()
    ax1.plot(kk, phi.ravel(), ".", ms=2.5, color="#1f77b4", alpha=0.7, rasterized=True,
             label="simulated (last steps, several φ₀)")
    above = k > 1
    for sign in (1, -1):
        ax1.plot(k[above], sign * branch[above], color="#d62728", lw=0.9, ls="--", zorder=3,
                 label="theory ±½·arccos(1/(η̃α))" if sign == 1 else None)
    ax1.plot(k[~above], 0 * k[~above], color="#d62728", lw=0.9, ls="--", zorder=3)
    ax1.axvline(1.0, color="k", lw=0.8, ls=":")
    ax1.text(0.97, 0.02, "threshold η̃α = 1", rotation=90, ha="right", va="bottom",
             transform=ax1.get_xaxis_transform(), fontsize=7)
    ax1.text(0.35, 30, "convergence", ha="center", fontsize=7.5, color="#2ca02c")
    ax1.text(8, 5, "2-cycle ±φ*", ha="center", fontsize=7.5, color="#d62728")
    ax1.set(xscale="log", xlabel="η̃α = ELR × curvature (dimensionless)",
            ylabel="asymptotic angle φ (degrees)", title="bifurcation diagram",
            ylim=(-50, 50))
    ax1.legend(loc="upper left", fontsize=6.5)
    return fig


def main(out_dir, quick=False, backend="auto"):
    """Compute, save ``fig01_single_group.{png,pdf,npz}`` into ``out_dir``; returns the paths."""
    return C.write_figure(NAME, compute, plot, out_dir, quick, backend=backend)


if __name__ == "__main__":
    C.script(main, CAPTION)
