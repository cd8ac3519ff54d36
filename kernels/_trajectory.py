r"""One trajectory of projected GD with fixed ELR, written once for every compiled target.

The functions below are plain Python over a state *view* ``th`` of shape ``(n, d)`` (``n`` SI
groups in $\mathbb{R}^d$). `build` compiles them with a given decorator: ``numba.njit``
for the CPU kernel (views ``theta[b]``, contiguous) and ``numba.cuda.jit(device=True)`` for the
CUDA kernel (views ``theta[:, :, b]`` of a ``(n, d, B)`` array, so neighbouring threads touch
neighbouring addresses). Nothing here imports numba, numpy or toymodel, draws random numbers or
allocates: every buffer is passed in. The float operations follow
``toymodel.dynamics.summarize_batch`` (the specification) in the same order, so float64 results
agree with it to rounding.

Every operation on the state runs in the state's dtype, as in the spec, so that an overflow in
float32 (of $\eta g$, or of $\|v\|^2$ at ELR 1e30) is flagged by the same status at the same
step: float literals are written ``x.dtype.type(0.0)`` because numba types a bare ``0.0`` or
``2.0`` as float64 and promotes every float32 it touches (the CUDA target too; the CUDA simulator,
running NumPy scalars, would not show it). Only the accumulators ``acc`` are float64.

Notation (docs/theory.md T5, T7): $\eta=\tilde\eta\rho^2$ with $\rho=\|\theta_0\|$; one
step is $v=\theta-\eta\nabla F(\theta)$ rescaled to total norm $\rho$ ("total") or to
the initial group norms $r_i=\|\theta_{0,i}\|$ ("individual").

The code is split by concern: `_common` (constants, projection, status), `_toy_step` (the toy),
`_rayleigh_step` (the Rayleigh quotient), `_tail` (tail accumulators, Lyapunov twin, summaries);
this module only assembles whole trajectories. Accumulators: see `_tail`.
"""
from __future__ import annotations

import types
from types import SimpleNamespace

from ._common import (
    N_ACC,
    N_OUT,
    STATUS_NONFINITE,
    STATUS_OK,
    STATUS_ZERO_NORM,
    _check,
    _copy,
    _init_targets,
    _rescale,
)
from ._rayleigh_step import _matvec, _rayleigh_advance
from ._tail import _finish, _fold_tail, _init_acc, _tail_update, _twin_init, _twin_pull
from ._toy_step import _toy_advance, _toy_loss, _toy_perp, _toy_step

__all__ = ["N_ACC", "N_OUT", "STATUS_NONFINITE", "STATUS_OK", "STATUS_ZERO_NORM", "build"]


def build(jit):
    """Compile the trajectory functions with ``jit`` (a decorator for callable-from-kernel functions).

    Returns a namespace with ``toy_run`` (a whole toy trajectory), ``rayleigh_run`` (a whole
    Rayleigh trajectory with an in-thread mat-vec, for GPUs) and ``rayleigh_substep`` (one step of
    one Rayleigh trajectory given $y=(A-\\lambda_1I)x$ from a batched matrix product).
    """
    rescale = jit(_rescale)
    check = jit(_check)
    init_targets = jit(_init_targets)
    init_acc = jit(_init_acc)
    copy = jit(_copy)
    finish = jit(_finish)
    matvec = jit(_matvec)
    # module-level helpers that call other helpers get a copy whose globals point at the compiled ones
    g = {"_rescale": rescale, "_fold_tail": jit(_fold_tail)}
    tail_update = jit(_rebind(_tail_update, g))
    toy_advance = jit(_rebind(_toy_advance, g))
    toy_loss = jit(_toy_loss)
    toy_perp = jit(_toy_perp)
    toy_step = jit(_rebind(_toy_step, g))
    rayleigh_advance = jit(_rayleigh_advance)
    twin_pull = jit(_rebind(_twin_pull, g))
    twin_init = jit(_rebind(_twin_init, g))

    def toy_run(th, al, elr, w, use_twin, individual, steps, tail, eps, tiny,
                nxt, tw, twn, scr, acc, out, b):
        """Run trajectory ``b`` in place (``th`` ends as the final or frozen state); write its
        summaries; return (status, bad_step). ``scr`` is ``(3, n)`` scratch of the state's dtype
        (group radii, carried $p_i^2$, group sums of the update)."""
        n = th.shape[0]
        radii = scr[0]
        pp = scr[1]
        sv = scr[2]
        rho = init_targets(th, radii)
        toy_perp(th, pp)
        lr = elr * rho * rho
        init_acc(acc)
        if use_twin:
            twin_init(th, tw, w, individual, rho, radii, eps)
        start = steps - tail
        status = 0
        bad = -1
        cur = th
        new = nxt
        for t in range(steps):
            code = toy_step(cur, new, al, lr, individual, rho, radii, pp, sv, t - start + 1, acc)
            if code != 0:
                status = code
                bad = t
                break
            if use_twin:
                toy_advance(tw, al, lr, individual, rho, radii, twn)
                lg = twin_pull(new, twn, tw, w, individual, rho, radii, eps, tiny)
                if t >= start:
                    acc[6] += lg
            cur, new = new, cur   # swap buffers instead of copying the state
        if status == 0 and steps % 2 == 1:
            copy(cur, th)
        elif status != 0 and bad % 2 == 1:
            copy(cur, th)
        finish(acc, out, b, tail, n, use_twin, status == 0, toy_loss(th, al))
        return status, bad

    def rayleigh_substep(t, x, y, new, tw, ytw, twn, w, lr, rho, radii, al, use_twin, start,
                         eps, tiny, acc):
        """One step of one Rayleigh trajectory given ``y`` = shifted A times ``x`` (and ``ytw`` for
        the twin ``tw``); ``x`` becomes the new state. Returns the status code of the step."""
        loss, gsq = rayleigh_advance(x, y, lr, rho, new)
        code = check(new)
        if code != 0:
            return code
        if t >= start:
            tail_update(acc, t - start + 1, x, new, loss, gsq, lr, al)
        if use_twin:
            rayleigh_advance(tw, ytw, lr, rho, twn)
            lg = twin_pull(new, twn, tw, w, False, rho, radii, eps, tiny)
            if t >= start:
                acc[6] += lg
        copy(new, x)
        return 0

    rayleigh_substep_c = jit(rayleigh_substep)

    def rayleigh_run(Bs, x, al, elr, w, use_twin, steps, tail, eps, tiny,
                     y, new, tw, ytw, twn, radii, acc, out, b):
        """A whole Rayleigh trajectory in one thread (mat-vec per step); returns (status, bad_step)."""
        rho = init_targets(x, radii)
        lr = elr * rho * rho
        init_acc(acc)
        if use_twin:
            twin_init(x, tw, w, False, rho, radii, eps)
        start = steps - tail
        status = 0
        bad = -1
        for t in range(steps):
            matvec(Bs, x, y)
            if use_twin:
                matvec(Bs, tw, ytw)
            code = rayleigh_substep_c(t, x, y, new, tw, ytw, twn, w, lr, rho, radii, al,
                                      use_twin, start, eps, tiny, acc)
            if code != 0:
                status = code
                bad = t
                break
        matvec(Bs, x, y)
        sq = x.dtype.type(0.0)
        xy = sq
        for k in range(x.shape[1]):
            sq += x[0, k] * x[0, k]
            xy += x[0, k] * y[0, k]
        finish(acc, out, b, tail, 1, use_twin, status == 0, xy / sq)
        return status, bad

    # nested functions see the compiled helpers as closure variables (frozen at compile time)
    toy_run_c = jit(toy_run)
    rayleigh_run_c = jit(rayleigh_run)
    return SimpleNamespace(toy_run=toy_run_c, rayleigh_run=rayleigh_run_c,
                           rayleigh_substep=rayleigh_substep_c, init_targets=init_targets,
                           init_acc=init_acc, twin_init=twin_init, finish=finish)


def _rebind(fn, names):
    """A copy of ``fn`` whose globals resolve ``names`` to the compiled helpers (numba freezes
    globals at compile time, so each target gets its own copy)."""
    glob = dict(fn.__globals__)
    glob.update(names)
    return types.FunctionType(fn.__code__, glob, fn.__name__, fn.__defaults__, fn.__closure__)
