r"""The SoA toy's step, generated per shape as straight-line Python over scalars (`_soa` compiles
it): `step_source` (the projected step, T5) and `lazy_step_source` (the deferred step, T51), each a
loop over the block's lanes with the groups and coordinates written out, so that a lane's state
stays in registers through the step. Plain Python, no numba: `unrolled_step` turns a source into
a function whose globals the caller binds (the layout's rows, ``L``, ``sqrt``, ``_asin``, ...)."""
from __future__ import annotations

import math


# -- one step of a block ----------------------------------------------------------------------------
def step_source(n: int, d: int, individual: bool, tail: bool) -> str:
    r"""Python source of ``lane_step(W, A)`` for one shape and setting, unrolled over groups and
    coordinates so that a lane's whole state lives in scalars (registers) through the step.

    One step of the block's ``L`` trajectories: the state rows become $P(\theta-\eta\nabla
    F(\theta))$ (T5) where the lane is alive and the new state is valid; a lane whose new state is
    non-finite or has a zero-norm group gets its status, negated until `mark_failed` records the
    step, and stays frozen; it returns whether any lane failed. In tail steps (``tail``) it leaves
    the loss, share, threshold count, effective gradient norm and angle of the step's start in the
    ``R_TL`` rows for `fold_tail`. Per lane and group $i$, with $x=\theta_{i,0}$,
    $p=\sum_{k\ge1}\theta_{i,k}^2$, $r=p+x^2$: $c=2\alpha_i/r^2$ (one division, $1/r$, shared
    with the loss $\alpha_i p/r$), $g_0=-c\,x\,p$, $g_k=c\,x^2\theta_{i,k}$, $v=\theta_i-\eta g$;
    then the rescale $\rho/\|v\|$ (total) or $r_i/\|v_i\|$ (individual), the status from the
    new group sums, and in tail steps the chord's angle (T6) with reciprocal norms. The operations
    and their order are those of `_toy_step._toy_step` per lane (the spec's, up to the order of
    sums); nothing is float64 for a float32 state.

    A template with loops over ``N`` and ``D`` (unrolled by LLVM) kept the intermediate update and
    group sums in scratch rows of ``W``, stored and reloaded within the lane: written out as
    scalars the step holds them in registers, measured 1.1-1.2x faster in the kernel (2x in
    isolation). The source is generated rather than written per shape; ``R_TH`` is row 0."""
    x = [[f"x{i}_{k}" for k in range(d)] for i in range(n)]
    v = [[f"v{i}_{k}" for k in range(d)] for i in range(n)]
    m = [[f"n{i}_{k}" for k in range(d)] for i in range(n)]
    body = ["lr = W[R_LR * L + l]"]
    body += [f"{x[i][k]} = W[{i * d + k} * L + l]" for i in range(n) for k in range(d)]
    if tail:
        body += ["loss = zero", "gsq = zero", "tot = zero", "smin = dt(math.inf)", "above = zero"]
    for i in range(n):
        xi = x[i]
        body += [f"perp{i} = " + " + ".join(f"{xi[k]} * {xi[k]}" for k in range(1, d)),
                 f"sq{i} = perp{i} + {xi[0]} * {xi[0]}",
                 f"a{i} = W[(R_AL + {i}) * L + l]",
                 f"inv{i} = one / sq{i}",          # one division for the coefficient and the loss
                 f"coef = two * a{i} * inv{i} * inv{i}",
                 f"g0 = -coef * {xi[0]} * perp{i}",
                 f"c2 = coef * {xi[0]} * {xi[0]}",
                 f"{v[i][0]} = {xi[0]} - lr * g0",
                 f"vs{i} = {v[i][0]} * {v[i][0]}"]
        body += ["gs = g0 * g0"] if tail else []
        for k in range(1, d):
            body += [f"gk = c2 * {xi[k]}", f"{v[i][k]} = {xi[k]} - lr * gk",
                     f"vs{i} += {v[i][k]} * {v[i][k]}"]
            body += ["gs += gk * gk"] if tail else []
        if tail:
            body += [f"loss += a{i} * (perp{i} * inv{i})", "gsq += gs", f"tot += sq{i}",
                     f"smin = min(smin, sq{i})", f"above += one if lr * a{i} > sq{i} else zero"]
    # the rescale (T5) and the status of the new state from its group sums
    body.append("totv = zero + " + " + ".join(f"vs{i}" for i in range(n)))
    if not individual:
        body.append("f = W[R_RHO * L + l] / sqrt(totv)")
    for i in range(n):
        body.append(f"fi = W[(R_RAD + {i}) * L + l] / sqrt(vs{i})" if individual else "fi = f")
        body += [f"{m[i][k]} = {v[i][k]} * fi" for k in range(d)]
        body.append(f"s{i} = zero + " + " + ".join(f"{m[i][k]} * {m[i][k]}" for k in range(d)))
    body += ["nonfinite = " + " | ".join(f"(not s{i} < math.inf)" for i in range(n)),
             "zero_norm = " + " | ".join(f"(not s{i} > zero)" for i in range(n)),
             "code = one if nonfinite else (two if zero_norm else zero)",
             "st = W[R_ST * L + l]",
             "alive = st == zero",
             "ok = alive & (code == zero)",
             "fail = alive & (code != zero)",
             "W[R_ST * L + l] = -code if fail else st",
             "failed = failed | fail"]
    if tail:   # chord |theta/|theta| - new/|new||, reciprocal norms instead of divisions (T6)
        body += ["tot_new = zero + " + " + ".join(f"s{i}" for i in range(n)),
                 "ia = one / sqrt(tot)", "ib = one / sqrt(tot_new)", "c2s = zero"]
        body += [f"u = {x[i][k]} * ia - {m[i][k]} * ib\nc2s += u * u"
                 for i in range(n) for k in range(d)]
        body += ["W[R_TL * L + l] = loss",
                 "W[(R_TL + 1) * L + l] = smin * (ia * ia)",
                 "W[(R_TL + 2) * L + l] = above",
                 "W[(R_TL + 3) * L + l] = sqrt(tot * gsq)",
                 "W[(R_TL + 4) * L + l] = two * _asin(min(dt(0.5) * sqrt(c2s), one))"]  # in dtype
    return _lane_source("lane_step", ["two = dt(2.0)", "failed = False"],
                        body + _commit(m, x), "failed")


def _commit(new, old):
    """The lane's new state where it is ``ok``, its old one elsewhere (``R_TH`` is row 0)."""
    d = len(new[0])
    return [f"W[{i * d + k} * L + l] = {new[i][k]} if ok else {old[i][k]}"
            for i in range(len(new)) for k in range(d)]


def _lane_source(name, prologue, body, returns):
    """Source of ``def name(W, A)``: the dtype's zero and one, ``prologue``, then ``body`` as the
    loop over the lanes (or-reductions over lanes as booleans: a count halves the float32 width)."""
    first = ["dt = W.dtype.type", "zero = dt(0.0)", "one = dt(1.0)", *prologue]
    pro = "".join(f"    {line}\n" for line in first)
    lines = "\n".join(body).replace("\n", "\n        ")
    return (f"def {name}(W, A):\n{pro}    for l in range(L):\n        {lines}\n"
            f"    return {returns}\n")


def unrolled_step(n, d, individual, tail, names, qualname, lazy=False):
    """The function `step_source` (``lazy``: `lazy_step_source`) writes, its globals ``names``
    (the layout's rows, ``L``, ``sqrt``, ``_asin``; ``SHARE_MIN``, ``REDO`` for the deferred
    step), named ``qualname`` (uncompiled: the caller jits it)."""
    if names["R_TH"] != 0:
        raise ValueError("the step sources assume the state rows start the block (R_TH == 0)")
    ns = dict(names, math=math)
    src = lazy_step_source(n, d, individual) if lazy else step_source(n, d, individual, tail)
    exec(compile(src, f"<{qualname}>", "exec"), ns)
    fn = ns["lazy_step" if lazy else "lane_step"]
    fn.__qualname__ = qualname
    return fn


def lazy_step_source(n: int, d: int, individual: bool) -> str:
    r"""Python source of ``lazy_step(W, A)``: a step of the block's lanes with the projection
    deferred (T51), for the steps before the tail of kernels without the twin.

    The toy's loss is invariant to the scale of each group and its gradient is homogeneous of
    degree $-1$: $\nabla F(c\,u)=\nabla F(u)/c$. So the projected step $\theta'=P(\theta-\eta
    \nabla F(\theta))$ with $\theta=c\,u$, $c=\rho/\|u\|$, is $\theta'=P(u')$ for
    $u'=u-\eta\,(\|u\|^2/\rho^2)\,\nabla F(u)$ (per group with $r_i/\|u_i\|$ under the individual
    constraint): the rows hold $u$, never projected, and no root or division of the rescale is
    needed. Per group, with $x=u_{i,0}$, $p=\sum_{k\ge1}u_{i,k}^2$, $s=p+x^2$ and
    $K_i=2\alpha_i\eta/\rho^2=2\alpha_i\tilde\eta$ (total) or $2\alpha_i\eta/r_i^2$ (individual;
    the ``R_K`` rows):
    $h=K_i\,x\,(\|u\|^2/s)/s$ (total, in that order: every factor stays near the scale of its
    own quantity; $K_i\,x/s$ individual), $u'_0=x+h\,p$,
    $u'_k=u_k-h\,x\,u_k$. Exact arithmetic gives the spec's states; rounding differs at the level
    of one step's (the spec rounds the projected state every step).

    $\|u\|$ only grows ($\nabla F(u)\perp u$): the step returns ``(redo, grow)``, ``grow`` when a
    valid lane's $\|u\|^2$ (a group's, individual) passed ``GROW`` times its radius squared, and
    the caller then projects the block (`normalize`), so that the squares stay far from
    overflow; ``redo`` when a lane's new state was not plainly valid, which the exact step then
    takes (`lane_redo`): the deferred step never decides a failure.
    """
    x = [[f"x{i}_{k}" for k in range(d)] for i in range(n)]
    v = [[f"v{i}_{k}" for k in range(d)] for i in range(n)]
    body = [f"{x[i][k]} = W[{i * d + k} * L + l]" for i in range(n) for k in range(d)]
    for i in range(n):
        xi = x[i]
        body += [f"perp{i} = " + " + ".join(f"{xi[k]} * {xi[k]}" for k in range(1, d)),
                 f"sq{i} = perp{i} + {xi[0]} * {xi[0]}"]
    if not individual:
        body.append("tot = zero + " + " + ".join(f"sq{i}" for i in range(n)))
    for i in range(n):
        xi = x[i]
        body.append(f"inv = one / sq{i}")
        body.append(f"h = W[(R_K + {i}) * L + l] * {xi[0]} * inv" if individual else
                    f"h = W[(R_K + {i}) * L + l] * {xi[0]} * (tot * inv) * inv")
        body += [f"{v[i][0]} = {xi[0]} + h * perp{i}", f"hx = h * {xi[0]}",
                 f"vs{i} = {v[i][0]} * {v[i][0]}"]
        for k in range(1, d):
            body += [f"{v[i][k]} = {xi[k]} - hx * {xi[k]}", f"vs{i} += {v[i][k]} * {v[i][k]}"]
    # a lane whose new state is not plainly valid is not committed but marked for the exact step
    # (`lane_redo`): non-finite or zero, past LIMIT times its squared radius, or a group's share
    # (individual: its squared norm over its radius's) below SHARE_MIN. Where the spec fails, its
    # state's squares have overflowed or a share has underflowed; the deferred ones (scaled by
    # |u|/rho >= 1) are then past these bounds, so a failure is always decided by the exact step
    # (one comparison per bound: ``not x <= b`` holds for NaN too, ``x < b`` for none)
    # (the bounds times the squared radii are the R_BD rows, `load_block`)
    if individual:
        for i in range(n):
            b = f"W[(R_BD + {3 * i}) * L + l]"
            g = f"W[(R_BD + {3 * i + 1}) * L + l]"
            z = f"W[(R_BD + {3 * i + 2}) * L + l]"
            body += [(f"bad = (not (vs{i} <= {b})) | (vs{i} < {z})" if i == 0 else
                      f"bad = bad | (not (vs{i} <= {b})) | (vs{i} < {z})"),
                     f"big = big | (vs{i} > {g})" if i else f"big = vs{i} > {g}"]
    else:
        body += ["totv = zero + " + " + ".join(f"vs{i}" for i in range(n)),
                 "small = totv * share_min",
                 "bad = (not (totv <= W[R_BD * L + l])) | (not (totv > zero)) | "
                 + " | ".join(f"(vs{i} < small)" for i in range(n)),
                 "big = totv > W[(R_BD + 1) * L + l]"]
    body += ["st = W[R_ST * L + l]",
             "alive = st == zero",
             "ok = alive & (not bad)",
             "again = alive & bad",
             "W[R_ST * L + l] = redo_code if again else st",
             "redo = redo | again",
             "grow = grow | (ok & big)"]
    return _lane_source("lazy_step", ["share_min = dt(SHARE_MIN)", "redo_code = dt(REDO)",
                                      "redo = False", "grow = False"],
                        body + _commit(v, x), "redo, grow")
