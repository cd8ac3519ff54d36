r"""Figure 10 — where the direction lives on the sphere in each regime (docs/attractors.md, T36, T37).

Long runs of the toy with $\alpha=(1,2,4)$ in $d=3$, many seeds per regime; the last steps of
every run are pooled. (a) Density of the folded angle $\psi_i$ between each group and the axis
$\pm e_1$ (T30): a point at 0 (convergence), a spike at $\Delta/2=\tfrac12\arccos(1/c)$
(the synchronized equilibrium, T12), a broad band (chaotic equilibrium) and the flat density
$2/\pi$ of a direction uniform on its great circle (divergence). (b) $\sin^2\varphi_i$ in the
divergence regime against the arcsine law $\mathrm{Beta}(\tfrac12,\tfrac12)$ of a direction
uniform on a great circle (T37) and the law $\mathrm{Beta}(\tfrac{d-1}2,\tfrac12)$ of a direction
uniform on $S^{d-1}$ (T36), which the dynamics never reach: every group keeps the plane of $e_1$
and its initial direction. (c)–(e) The unit direction of the group with $\alpha=4$ seen along
$e_1$ (its components 2 and 3): a point, the ring of colatitude $\Delta/2$, and diameters (one
great circle per seed).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toymodel.figures import _common as C  # noqa: E402
from toymodel import census, dynamics, theory  # noqa: E402
from toymodel import backend as _backend  # noqa: E402
from toymodel.problems import SphereToy  # noqa: E402

NAME = "fig10_direction_distribution"
TITLE = "The direction on the sphere in each regime"
ALPHAS = (1.0, 2.0, 4.0)
DIM = 3
#: (label, c = elr * sum(alpha)) of the four regimes shown.
REGIMES = (("convergence", 0.7), ("synchronized equilibrium", 1.3), ("chaotic equilibrium", 3.0),
           ("divergence", 210.0))
COLORS = ("#7fbf7b", "#1f3b73", "#9467bd", "#e08080")
CAPTION = ("Direction distributions of the toy with α = (1, 2, 4) in d = 3 (T30, T36, T37). "
           "(a) Density of the angle ψ between each group and the axis ±e₁, pooled over seeds and "
           "the last steps: a point (convergence, c = 0.7), a spike at ½·arccos(1/c) "
           "(synchronized equilibrium, c = 1.3), a broad band (chaotic equilibrium, c = 3), flat "
           "(divergence, c = 210). (b) sin²φ in the divergence regime against the arcsine law of a "
           "direction uniform on a great circle and the Beta(1, ½) law of a direction uniform on "
           "S². (c)–(e) Direction of the α = 4 group seen along e₁, components (u₂, u₃), 32 seeds: a "
           "point, the ring of radius sin(½·arccos(1/c)), diameters (one great circle per seed).")


def compute(quick=False, backend="auto"):
    """Run every regime to its attractor and keep the last ``keep`` states of every seed."""
    seeds, steps, keep = (16, 2000, 200) if quick else (128, 20000, 2000)
    a = np.array(ALPHAS)
    problem = SphereToy(a, dim=DIM)
    theta0 = dynamics.initial_states(problem, range(seeds))
    bins = np.linspace(0.0, 90.0, 91)
    sbins = np.linspace(0.0, 1.0, 51)
    hist, shist, mean_ratio, disc = [], [], [], []
    for _, c in REGIMES:
        elr = c / a.sum()
        th = _backend.summarize(problem, theta0, np.full(seeds, elr), steps=steps - keep, tail=1,
                                backend=backend)["theta_final"]
        win = census.orbit_window(problem, np.asarray(th), elr, keep, keep_states=True)
        psi = np.degrees(win["psi"])
        hist.append(np.histogram(psi.ravel(), bins=bins, density=True)[0])
        shist.append(np.histogram(np.sin(win["psi"]).ravel() ** 2, bins=sbins, density=True)[0])
        mean_ratio.append(win["loss"].mean() / problem.random_loss())
        # the unit direction of the alpha=4 group seen along e1 (components 2, 3), folded by
        # theta -> -theta, every 10th window step of 32 seeds
        u = win["states"][::10, :32, -1, :]
        u = u / np.linalg.norm(u, axis=-1, keepdims=True)
        disc.append((u[..., 1:3] * np.where(u[..., :1] < 0, -1.0, 1.0)).reshape(-1, 2))
    lstar = [theory.equilibrium_loss(c / a.sum(), a) / problem.random_loss() if c > 1 else 0.0
             for _, c in REGIMES]
    data = {"alphas": a, "c": np.array([c for _, c in REGIMES]), "psi_bins": bins,
            "psi_density": np.array(hist), "sin2_bins": sbins, "sin2_density": np.array(shist),
            "mean_loss_ratio": np.array(mean_ratio), "equilibrium_ratio": np.array(lstar),
            "disc": np.array(disc)}
    params = C.provenance(backend=backend, alphas=list(ALPHAS), dim=DIM, seeds=seeds, steps=steps, keep=keep,
                          regimes=[r for r, _ in REGIMES], theory="T12, T30, T36, T37")
    return data, params


def plot(data, params):
    """Draw the figure from the saved data."""
    from scipy import stats

    fig = C.new_figure(figsize=(7.4, 6.0))[0]
    fig.clf()
    gs = fig.add_gridspec(2, 3, height_ratios=[1.0, 1.0], hspace=0.25, wspace=0.3)
    ax = fig.add_subplot(gs[0, :2])
    bins = data["psi_bins"]
    mid = 0.5 * (bins[1:] + bins[:-1])
    names = params["regimes"]
    for k, name in enumerate(names):
        ax.step(mid, data["psi_density"][k], where="mid", color=COLORS[k], lw=1.1,
                label=f"{name} (c = {data['c'][k]:g}): loss = {data['mean_loss_ratio'][k]:.3f}·Σα/2")
    c_sync = data["c"][1]
    ax.axvline(np.degrees(0.5 * np.arccos(1.0 / c_sync)), color=COLORS[1], lw=0.8, ls="--",
               label="½·arccos(1/c) (T12)")
    ax.axhline(1.0 / 90.0, color="k", lw=0.8, ls=":", label="uniform on a great circle (T37)")
    ax.set(yscale="log", xlabel="ψ = angle to the axis ±e₁ (deg)", ylabel="density (1/deg)",
           xlim=(0, 90), ylim=(1e-4, 30.0), title="(a) angle to the minimiser, all groups")
    ax.legend(fontsize=6.2, loc="upper right")

    ax2 = fig.add_subplot(gs[0, 2])
    sb = data["sin2_bins"]
    smid = 0.5 * (sb[1:] + sb[:-1])
    ax2.step(smid, data["sin2_density"][-1], where="mid", color=COLORS[-1], lw=1.1,
             label="divergence (measured)")
    x = np.linspace(0.005, 0.995, 200)
    ax2.plot(x, stats.beta(*census.uniform_sin2_law(params["dim"], on_circle=True)).pdf(x), "k-",
             lw=0.9, label="Beta(½, ½): great circle")
    ax2.plot(x, stats.beta(*census.uniform_sin2_law(params["dim"])).pdf(x), "k--", lw=0.9,
             label=f"Beta({(params['dim'] - 1) / 2:g}, ½): S^{params['dim'] - 1}")
    ax2.set(xlabel="sin²φ", ylabel="density", ylim=(0, 4), title="(b) divergence")
    ax2.legend(fontsize=6.0, loc="upper center")

    for j, k in enumerate((0, 1, 3)):
        axd = fig.add_subplot(gs[1, j])
        u = data["disc"][k]
        axd.plot(u[:, 0], u[:, 1], ".", ms=1.2, color=COLORS[k], alpha=0.5)
        t = np.linspace(0, 2 * np.pi, 200)
        axd.plot(np.cos(t), np.sin(t), color="k", lw=0.6)
        if k == 1:
            r = np.sin(0.5 * np.arccos(1.0 / c_sync))
            axd.plot(r * np.cos(t), r * np.sin(t), color="k", lw=0.6, ls="--")
        axd.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), aspect="equal",
                title=f"({'cde'[j]}) {names[k].split()[0]}")
        axd.axis("off")
    return fig


def main(out_dir, quick=False, backend="auto"):
    """Compute, save ``fig10_direction_distribution.{png,pdf,npz}`` into ``out_dir``; returns the paths."""
    return C.write_figure(NAME, compute, plot, out_dir, quick, backend=backend)


if __name__ == "__main__":
    C.script(main, CAPTION)
