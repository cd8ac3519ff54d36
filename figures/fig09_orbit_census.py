r"""Figure 9 — every attractor of fixed-ELR GD on the toy with $\alpha=(1,2,4)$ (docs/attractors.md).

An orbit census (`toymodel.census.orbit_census`): many seeds per value of $c=\tilde\eta\sum\alpha$,
each run to its attractor and classified as synchronized (the T12 equilibrium), periodic (a
phase-locked orbit, T32), quasi-periodic, chaotic or convergence. Top: the basin fraction of each
class against $c$, with the resonances $c_{m/p}=\sec(\pi m/p)$ of T32 marked. Middle: every seed's
tail loss divided by $L^*$ (T12), coloured by class, and the envelope
(`toymodel.census.envelope` of this census). Bottom: the period of the periodic seeds.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toymodel.figures import _common as C  # noqa: E402
from toymodel import census  # noqa: E402

NAME = "fig09_orbit_census"
TITLE = "Orbit census: every attractor and its basin"
ALPHAS = (1.0, 2.0, 4.0)
CAPTION = ("Orbit census of the toy with α = (1, 2, 4) (docs/attractors.md). Top: fraction of "
           "seeds on each attractor class against c = η̃Σα, with the resonances c = sec(πm/p) "
           "(T32; p ≤ 6, and m > 1 up to p = 10) dotted and c = √3 (dashed), where the "
           "synchronized point stops attracting. Middle: tail loss / L* of every seed, coloured "
           "by class, with the envelope measured by the census. Bottom: period (in the folded "
           "coordinates, T30) of the periodic seeds.")
#: one colour per orbit class (index = position in census.ORBITS).
ORBIT_COLORS = {"convergence": "#7fbf7b", "synchronized": "#1f3b73", "periodic": "#d62728",
                "quasi-periodic": "#ff9f1c", "chaotic": "#9467bd", "divergence": "#e08080",
                "unresolved": "#9ecae1", "invalid": "#bbbbbb"}


def _codes(orbit):
    """Orbit labels -> int8 codes (index into ``census.ORBITS``)."""
    lookup = {name: i for i, name in enumerate(census.ORBITS)}
    return np.vectorize(lookup.__getitem__, otypes=[np.int8])(np.asarray(orbit).astype(str))


def compute(quick=False, backend="auto"):
    """Run the census (numba backend when installed)."""
    if quick:
        cs = np.array([1.1, 1.2, 1.3, 1.43, 1.6, 2.0])
        seeds, steps, tail = 8, 3000, 500
    else:
        cs = np.concatenate([np.linspace(1.02, 2.0, 50), np.linspace(2.2, 4.0, 10)])
        seeds, steps, tail = 256, 20000, 2000
    res = census.orbit_census(ALPHAS, cs, seeds=seeds, steps=steps, tail=tail,
                              backend=backend, as_dataset=False)
    env = census.envelope(ALPHAS, cs, census=res)
    data = {"c": cs, "alphas": np.array(ALPHAS),
            "orbit_code": _codes(res["orbit"]),
            "period": res["period"], "clusters": res["clusters"], "loss_ratio": res["loss_ratio"],
            "tail_loss": res["tail_loss"], "lyapunov": res["lyapunov"], "basin": res["basin"],
            "equilibrium_loss": res["equilibrium_loss"], "envelope_lower": env["lower"],
            "envelope_upper": env["upper"]}
    params = C.provenance(backend=backend, alphas=list(ALPHAS), seeds=seeds, steps=steps, tail=tail,
                          orbit_classes=list(census.ORBITS), dims="(c, seed)",
                          backend_used=res["attrs"]["backend"], theory="T12, T30-T35")
    return data, params


def plot(data, params):
    """Draw the figure from the saved data."""
    cs, basin = data["c"], data["basin"]
    names = params["orbit_classes"]
    fig, (ax, ax2, ax3) = C.new_figure(3, 1, figsize=(7.2, 7.4), sharex=True,
                                       gridspec_kw={"height_ratios": [1.3, 1.6, 0.9]})
    order = [n for n in ("convergence", "synchronized", "periodic", "quasi-periodic", "chaotic",
                         "divergence", "unresolved", "invalid") if n in names]
    bottom = np.zeros(cs.size)
    for name in order:
        frac = basin[:, names.index(name)]
        if not frac.any():
            continue
        ax.fill_between(cs, bottom, bottom + frac, step="mid", color=ORBIT_COLORS[name], lw=0,
                        label=name)
        bottom = bottom + frac
    for m, p, c in census.resonances(10):
        # the 1/7..1/10 lines crowd near c = 1; show p <= 6 and the m > 1 ones up to p = 10
        if cs[0] <= c <= cs[-1] and (p <= 6 or m > 1):
            for axis in (ax, ax2, ax3):
                axis.axvline(c, color="k", lw=0.6, ls=":", zorder=1)
            ax.text(c, 1.02, f"{m}/{p}", ha="center", va="bottom", fontsize=6.5)
    if cs[0] <= np.sqrt(3.0) <= cs[-1]:
        # measured: the synchronized point stops attracting here (docs/attractors.md)
        for axis in (ax, ax2):
            axis.axvline(np.sqrt(3.0), color="k", lw=0.9, ls="--", zorder=1)
        ax2.text(np.sqrt(3.0) + 0.01, 0.945, "√3: onset", fontsize=6.5)
    ax.set(ylabel="basin fraction", ylim=(0, 1), xlim=(cs[0] - 0.01, cs[-1] + 0.01))
    ax.set_title(f"orbit census, α = ({', '.join(f'{x:g}' for x in data['alphas'])}), "
                 f"{data['loss_ratio'].shape[1]} seeds per c", pad=16)
    ax.legend(loc="lower left", fontsize=6.5, ncol=3, framealpha=0.9)

    codes = data["orbit_code"]
    S = codes.shape[1]
    for k, name in enumerate(names):
        mask = codes == k
        if not mask.any() or name == "convergence":
            continue
        ax2.plot(np.repeat(cs, S).reshape(-1, S)[mask], data["loss_ratio"][mask], "o", ms=2.0,
                 color=ORBIT_COLORS[name], alpha=0.6, zorder=2)
    lstar = data["equilibrium_loss"]
    ok = lstar > 0
    ax2.fill_between(cs[ok], data["envelope_lower"][ok] / lstar[ok],
                     data["envelope_upper"][ok] / lstar[ok], color="#999999", alpha=0.25, lw=0,
                     step="mid", label="envelope (census)", zorder=0)
    ax2.axhline(1.0, color="k", lw=0.8, label="L* (T12)")
    ax2.set(ylabel="tail loss / L*")
    ax2.legend(loc="lower left", fontsize=6.5)

    per = data["period"].astype(float)
    periodic = codes == names.index("periodic")
    ax3.plot(np.repeat(cs, S).reshape(-1, S)[periodic], per[periodic], "o", ms=2.5,
             color=ORBIT_COLORS["periodic"], alpha=0.6)
    ax3.set(xlabel="c = η̃ Σα (dimensionless)", ylabel="period", yscale="log")
    from matplotlib.ticker import NullFormatter

    ax3.yaxis.set_minor_formatter(NullFormatter())
    ax3.set_yticks([2, 4, 5, 6, 10, 20, 40])
    ax3.set_yticklabels(["2", "4", "5", "6", "10", "20", "40"])
    ax3.set_ylim(1.5, 70)
    return fig


def main(out_dir, quick=False, backend="auto"):
    """Compute, save ``fig09_orbit_census.{png,pdf,npz}`` into ``out_dir``; returns the paths."""
    return C.write_figure(NAME, compute, plot, out_dir, quick, backend=backend)


if __name__ == "__main__":
    C.script(main, CAPTION)
