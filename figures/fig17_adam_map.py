r"""Figure 17 — Adam on the sphere over (lr, β₂): where it converges (docs/momentum.md, T46, T49, T50).

Toy $\alpha=(1,2,4)$, $d=2$, total constraint ($\rho=1$, so ``lr`` is Adam's ELR
$\mathrm{lr}/\rho$), $\beta_1=0.9$, $\tilde\varepsilon=10^{-2}$, both moment modes of
`toymodel.momentum.simulate_adam`: ``"official"`` (AdamS: moments left as they are) and
``"transport"`` (AdamSRT: first moment transported, second rescaled). A run converged when its
tail-mean loss is below 1e-10 and the minimum is linearly stable at its final shares and second
moments (`toymodel.momentum.converged`). The runs go through
`toymodel.backend.summarize_momentum` (``optimizer="adam"``), one call per $\beta_2$.

Left: the first non-converging ``lr`` of every seed (band over seeds, median line) against
$1-\beta_2$, with the frozen-preconditioner bound $E_0$ (T46: necessary as the horizon grows,
at the best shares), the finite-horizon bound of T50 (rigorous for AdamSRT; it meets $E_0$ for
$\beta_2\le0.99$ and is loose above) and the band of the start-share estimates of T49. Middle and
right: the fraction of seeds that converged over $(\mathrm{lr},\beta_2)$.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toymodel.figures import _common as C

from toymodel import adam_theory as AT
from toymodel import backend as _backend
from toymodel import dynamics
from toymodel import momentum as M
from toymodel._progress import progress

NAME = "fig17_adam_map"
TITLE = "Adam on the sphere: the convergence map over (lr, β₂)"
ALPHAS = (1.0, 2.0, 4.0)
BETA1 = 0.9
EPS = 1e-2
MODES = M.MOMENTUM_MODES
CAPTION = ("Adam at fixed ELR on the toy α = (1, 2, 4), d = 2, β₁ = 0.9, ε̃ = 0.01, AdamS "
           "(official) and AdamSRT (transport), 20 000 steps. Left: first non-converging lr of "
           "each seed (band over seeds, median line) against 1 − β₂, with the frozen-"
           "preconditioner bound E₀ (T46, necessary as the horizon grows), the finite-horizon "
           "bound of T50 (rigorous for AdamSRT) and the start-share estimates (T49, grey band). "
           "Middle, right: fraction of seeds converged over (lr, β₂). For β₂ ≤ 0.999 the boundary "
           "does not depend on β₂ and lies below E₀ at a seed-dependent lr set by the shares; for "
           "1 − β₂ ≲ 15/T the second moment has not decayed by the end of the run and runs pass "
           "the criterion far above E₀ (a finite-horizon effect).")


def grids(quick):
    """``(lr, beta2, seeds, steps, tail)`` of the run."""
    e0 = M.adam_eps_threshold(ALPHAS, (BETA1, 0.999), EPS)
    if quick:
        return (e0 * np.geomspace(0.1, 300.0, 6), 1.0 - np.array([1e-1, 1e-2, 1e-3]), [0, 1],
                1500, 200)
    return (e0 * np.geomspace(0.01, 300.0, 81), 1.0 - np.geomspace(1e-1, 1e-4, 25),
            list(range(16)), 20000, 2000)


def first_failure(lr, ok):
    """First grid value of ``lr`` (axis 0 of ``ok``) that did not converge, NaN if all did."""
    bad = ~ok
    return np.where(bad.any(axis=0), lr[np.argmax(bad, axis=0)], np.nan)


def compute(quick=False, backend="auto"):
    """Converged-or-not over (lr, β₂, seed) for both modes, plus the theory's thresholds."""
    lr, beta2, seeds, steps, tail = grids(quick)
    problem = C.SphereToy(ALPHAS)
    th0 = dynamics.initial_states(problem, seeds)
    S = len(seeds)
    theta0, elr = np.tile(th0, (lr.size, 1, 1)), np.repeat(lr, S)
    shares0 = (th0 ** 2).sum(-1) / (th0 ** 2).sum((-2, -1))[:, None]  # (seed, group)
    data = {"lr": lr, "beta2": beta2, "alphas": np.array(ALPHAS),
            "eps_threshold": np.array(M.adam_eps_threshold(ALPHAS, (BETA1, 0.999), EPS)),
            "horizon_threshold": np.array([AT.adam_horizon_threshold(
                ALPHAS, (BETA1, b2), EPS, steps=steps, tail=tail) for b2 in beta2]),
            "share_threshold": np.array([AT.adam_share_threshold(ALPHAS, s, (BETA1, 0.999), EPS)
                                         for s in shares0]),
            "shares0": shares0}
    used = set()
    with progress(total=len(MODES) * beta2.size, desc=NAME, disable=quick) as bar:
        for mode in MODES:
            ok = np.zeros((lr.size, beta2.size, S), np.int8)
            loss = np.zeros((lr.size, beta2.size, S), np.float32)
            sqrt_v = np.zeros((lr.size, beta2.size, S), np.float32)
            for j, b2 in enumerate(beta2):
                res = _backend.summarize_momentum(
                    problem, theta0, elr, BETA1, steps=steps, tail=tail, momentum_mode=mode,
                    constraint="total", optimizer="adam", beta2=float(b2), eps=EPS,
                    backend=backend)
                used.add(res["backend"])
                ok[:, j] = M.converged(res).reshape(lr.size, S)
                loss[:, j] = np.asarray(res["tail_loss"]).reshape(lr.size, S)
                # the bias-corrected second moment at the end, max over groups (T50's w bounds it)
                v_hat = np.asarray(res["v_final"]) / (1.0 - b2 ** steps)  # as the criterion
                sqrt_v[:, j] = np.sqrt(v_hat.max(-1)).reshape(lr.size, S)
                bar.update()
            data[f"converged_{mode}"] = ok
            data[f"tail_loss_{mode}"] = loss
            data[f"sqrt_v_final_{mode}"] = sqrt_v
            data[f"first_failure_{mode}"] = first_failure(lr, ok.astype(bool))  # (beta2, seed)
    # T50's memory estimate: K = lr * sum of squared gradients, calibrated at one cell (smallest
    # lr, longest memory, AdamSRT, median over seeds) from v_T = (1 - b2) b2^T K / lr
    b2 = float(beta2[-1])
    v_t = float(np.median(data["sqrt_v_final_transport"][0, -1])) ** 2
    action = lr[0] * v_t * (1.0 - b2 ** steps) / ((1.0 - b2) * b2 ** steps)
    data["action"] = np.array(action)
    data["memory_estimate"] = np.array([[AT.adam_memory_threshold(s, EPS, b, steps=steps,
                                                                  action=action)
                                         for s in data["share_threshold"]] for b in beta2])
    params = C.provenance(backend=backend, alphas=list(ALPHAS), seeds=seeds, steps=steps,
                          tail=tail, beta1=BETA1, eps=EPS, constraint="total", dim=2,
                          backends_used=sorted(used),
                          criterion="tail loss < 1e-10 and final_stability < 1",
                          dims="converged_*: (lr, beta2, seed); first_failure_*: (beta2, seed)",
                          modes=list(MODES), theory="T46, T49, T50")
    return data, params


def _edges(x, log=True):
    """Cell edges around the sorted grid values ``x`` (geometric midpoints when ``log``)."""
    t = np.log(np.asarray(x, dtype=float)) if log else np.asarray(x, dtype=float)
    mid = (t[1:] + t[:-1]) / 2
    e = np.concatenate([[t[0] - (mid[0] - t[0])], mid, [t[-1] + (t[-1] - mid[-1])]])
    return np.exp(e) if log else e


def plot(data, params):
    """Draw the figure from the saved data."""
    lr, one_minus = data["lr"], 1.0 - data["beta2"]
    e0, hz = float(data["eps_threshold"]), data["horizon_threshold"]
    sh = data["share_threshold"]
    fig, axes = C.new_figure(1, 3, figsize=(11.5, 3.7), gridspec_kw={"width_ratios": [1.1, 1, 1]})
    ax = axes[0]
    colors = {"official": "#c0392b", "transport": "#1f3b73"}
    ax.axhspan(sh.min(), sh.max(), color="0.6", alpha=0.3, lw=0,
               label=f"start-share estimates (T49, {sh.size} seeds)")
    ax.axhline(e0, color="k", ls="--", lw=1.0, label="E₀: frozen-preconditioner bound (T46)")
    ax.axhline(np.median(sh), color="0.4", ls=":", lw=1.0)
    ax.plot(one_minus, hz, "k-", lw=1.0, label="finite-horizon bound (T50, AdamSRT)")
    ax.plot(one_minus, np.median(data["memory_estimate"], 1), color="0.35", ls="-.", lw=1.2,
            label=f"memory estimate (T50, K = {float(data['action']):.1f}), median")
    for mode in MODES:
        ff = data[f"first_failure_{mode}"]
        with np.errstate(all="ignore"):  # a β₂ where every seed converged on the grid: NaN
            lo, hi, med = (np.nanmin(ff, 1), np.nanmax(ff, 1), np.nanmedian(ff, 1))
        ax.fill_between(one_minus, lo, hi, color=colors[mode], alpha=0.25, lw=0)
        ax.plot(one_minus, med, "o-", ms=2.5, lw=1.0, color=colors[mode],
                label=f"{mode}: first failure (band over {ff.shape[1]} seeds)")
    ax.set(xscale="log", yscale="log", xlabel="1 − β₂", ylabel="lr (= ELR, ρ = 1)",
           ylim=(lr[0], lr[-1]), xlim=(one_minus.max() * 1.2, one_minus.min() / 1.2),
           title="boundary per seed vs theory")
    ax.legend(loc="upper left", fontsize=6)
    xe, ye = _edges(lr), _edges(one_minus)
    for ax, mode in zip(axes[1:], MODES):
        frac = data[f"converged_{mode}"].mean(-1)  # (lr, beta2)
        im = ax.pcolormesh(xe, ye, frac.T, cmap="viridis", vmin=0, vmax=1, shading="flat",
                           rasterized=True)
        ax.axvline(e0, color="w", ls="--", lw=1.0, label="E₀ (T46)")
        ax.plot(np.minimum(hz, xe[-1]), one_minus, "w-", lw=1.0, label="T50 bound")
        ax.set(xscale="log", yscale="log", xlabel="lr", ylabel="1 − β₂",
               title=f"{mode} (Adam{'SRT' if mode == 'transport' else 'S'}): fraction converged",
               xlim=(xe[0], xe[-1]), ylim=(ye[0], ye[-1]))
        ax.legend(loc="lower left", fontsize=6, facecolor="0.25", labelcolor="w", framealpha=0.8)
    fig.colorbar(im, ax=axes[1:].tolist(), fraction=0.03, pad=0.02, label="fraction of seeds")
    return fig


def main(out_dir, quick=False, backend="auto"):
    """Compute, save ``fig17_adam_map.{png,pdf,npz}`` into ``out_dir``; returns the paths."""
    return C.write_figure(NAME, compute, plot, out_dir, quick, backend=backend)


if __name__ == "__main__":
    C.script(main, CAPTION)
