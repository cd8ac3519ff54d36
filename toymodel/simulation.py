r"""`simulate`: one entry point for every way the toy is trained, each with its own specification.

* fixed ELR on the sphere (``constraint="total"`` or ``"individual"``, the default):
  `toymodel.dynamics.simulate`, projected GD (docs/theory.md T5, T7);
* heavy-ball momentum at a fixed ELR (``momentum=`` $\beta$, ``momentum_mode="official"`` or
  ``"transport"``): `toymodel.momentum.simulate_momentum` (docs/momentum.md T40–T42);
* conventional training (``constraint="none"``, ``lr=`` $\eta$, ``weight_decay=`` $\lambda$): full-space
  GD with weight decay and no projection, `toymodel.conventional.simulate_wd` (docs/conventional.md
  T20).

This module sits above the specifications and only picks one; it holds no dynamics of its own.
"""
from __future__ import annotations

from . import conventional, dynamics, momentum as _momentum


def simulate(problem, elr=None, steps=None, theta0=None, seed=0, constraint="total", radius=1.0,
             record_every=1, shares=None, progress_bar=None, *, lr=None, weight_decay=None,
             momentum=None, momentum_mode=None):
    r"""Run the toy and return its traces (a `toymodel.dynamics.Trajectory`).

    Parameters
    ----------
    problem
        A problem of `toymodel.problems`, or a sequence of curvatures (a `SphereToy`).
    elr
        The total ELR $\tilde\eta>0$ of a run on the sphere (``constraint`` ``"total"`` or
        ``"individual"``).
    steps
        Number of steps (>= 1).
    theta0, seed, radius, record_every, progress_bar
        As in `toymodel.dynamics.simulate` (for ``constraint="none"``, ``radius`` is the initial
        norm).
    constraint
        ``"total"``, ``"individual"`` (fixed ELR on the sphere) or ``"none"`` (conventional
        training: weight decay, no projection).
    shares
        Fixed shares of the individual constraint.
    lr, weight_decay
        $\eta>0$ and $\lambda\ge0$ with $\eta\lambda<1$, for ``constraint="none"`` only; the result
        then also holds the effective ELR $\eta/((1-\eta\lambda)\|\theta_t\|^2)$ of every recorded
        step in ``elr`` (T20).
    momentum, momentum_mode
        Heavy ball $\beta\in[0,1)$ at fixed ELR, with the buffer left as is (``"official"``:
        ``torch.optim.SGD(momentum)`` then the rescale, the default) or transported to the new
        tangent space (``"transport"``, SGD-MRT's rule); the result then also holds the optimizer
        state. ``momentum=0`` is plain projected GD, bit for bit.

    Raises
    ------
    ValueError
        On bad input or a mix of the two modes' arguments, naming the value.
    """
    if constraint == "none":
        if elr is not None or shares is not None:
            raise ValueError("constraint='none' (conventional training) takes lr= and "
                             "weight_decay=, not elr or shares")
        if lr is None or steps is None:
            raise ValueError("constraint='none' (conventional training) needs lr=, weight_decay= "
                             "and steps=")
        return conventional.simulate_wd(problem, lr, 0.0 if weight_decay is None else weight_decay,
                                        steps=steps, seed=seed, record_every=record_every,
                                        theta0=theta0, radius=radius, progress_bar=progress_bar)
    if momentum is not None or momentum_mode is not None:
        if lr is not None or weight_decay is not None or shares is not None:
            raise ValueError("momentum runs at a fixed ELR on the sphere: they take elr, not lr, "
                             "weight_decay or shares")
        if elr is None or steps is None:
            raise ValueError("a momentum run needs elr= and steps=")
        return _momentum.simulate_momentum(
            problem, elr, 0.0 if momentum is None else momentum,
            "official" if momentum_mode is None else momentum_mode, steps=steps, theta0=theta0,
            seed=seed, constraint=constraint, radius=radius, record_every=record_every)
    if lr is not None or weight_decay is not None:
        raise ValueError(f"lr and weight_decay apply to constraint='none' (conventional training) "
                         f"only; a run with constraint={constraint!r} takes elr")
    if elr is None or steps is None:
        raise ValueError("simulate needs elr= and steps= (or constraint='none' with lr=, "
                         "weight_decay= and steps=)")
    return dynamics.simulate(problem, elr, steps, theta0=theta0, seed=seed, constraint=constraint,
                             radius=radius, record_every=record_every, shares=shares,
                             progress_bar=progress_bar)
