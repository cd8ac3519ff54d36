"""SphereSGD with momentum: ``momentum_mode="official"`` and ``"transport"`` (docs/bridge.md).

Oracles: `torch.optim.SGD(momentum=β)` itself, followed by a rescale written here unit by unit
with host sums ("official"), and by SGDMRT's transport to the projected point, written here too
("transport"). Tiny ConvNetSI (width 2, n = 1530 SI weights), float64, CPU.

Tolerances. Trajectories compared over 20 steps run at ELR 1e-3 with β = 0.9: far below the
chaotic range of this net (an effective step ELR/(1-β) = 1e-2, angles of ~1e-2 rad per step, the
loss decreasing), so the linearised map does not expand and a rounding difference is not
amplified beyond the heavy-ball's transient factor $1/(1-\\beta)=10$. Each step the two sides
differ only by their reductions (the oracle's host sums against torch's fused norms and dot
products): at most `step_tol` $=(\\gamma_n+16u)fs\\approx2\\cdot10^{-13}$ (tests/test_optim.py,
$s\\le1$, $f\\approx1$), one more $\\gamma_n$ for the transport's three unit reductions. Twenty such
injections, amplified at most tenfold: $20\\cdot10\\cdot4\\cdot10^{-13}<10^{-10}$ (`TRAJ_TOL`).
"""
from __future__ import annotations

import math
import os

import pytest

torch = pytest.importorskip("torch")
from torch.nn import functional as F
from torch.optim import lr_scheduler as S

from toymodel.bridge import SphereSGD, si_groups
from toymodel.bridge.constraints import Constraint
from toymodel.bridge.models import build_model

U = torch.finfo(torch.float64).eps / 2  # unit roundoff of float64, 2**-53
ELR, BETA, STEPS = 1e-3, 0.9, 20
TRAJ_TOL = 1e-10  # module docstring: 20 steps x 10 (heavy ball) x 4e-13 per step
CONSTRAINTS = ["total", "individual", "per-filter"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread_unless_asked():
    """Tiny nets: one thread is fastest on a shared machine (the bounds assume no order)."""
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("TOYMODEL_TORCH_THREADS"):
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def gamma(n):
    """Higham's $\\gamma_n=nu/(1-nu)$: a sum of $n$ rounded terms, in any order, is within
    $\\gamma_n\\sum|x_i|$ of the exact sum (2002, §3.1)."""
    return n * U / (1 - n * U)


def _convnet(seed=0, exact_si=False):
    model = build_model("convnet-si", width=2, num_classes=10, in_channels=1, seed=seed,
                        dtype=torch.float64)
    if exact_si:  # BatchNorm's eps below float64 resolution: gradients exactly tangent
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eps = torch.finfo(torch.float64).tiny
    return model


def _batches(n=STEPS, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, size, 1, 8, 8, generator=g, dtype=torch.float64)
    return list(zip(x, torch.randint(0, 10, (n, size), generator=g)))


def _si(model):
    return [g.params for g in si_groups(model)]


def _backward(model, batch):
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(batch[0]), batch[1])
    loss.backward()
    return float(loss.detach())


def _units(name, groups):
    """Each unit of the constraint as a list of views into ``groups`` (lists of tensors)."""
    if name == "total":
        return [[p for ps in groups for p in ps]]
    if name == "individual":
        return [list(ps) for ps in groups]
    return [[p[j] for p in ps] for ps in groups for j in range(ps[0].shape[0])]


def _dot(xs, ys):
    return sum(float((x * y).sum()) for x, y in zip(xs, ys))


@torch.no_grad()
def _rescale(name, groups, radius):
    """The oracle's rescale: every unit to ``radius`` (a float per unit), host sums."""
    for unit, r in zip(_units(name, groups), radius):
        f = r / math.sqrt(_dot(unit, unit))
        for x in unit:
            x.mul_(f)


@torch.no_grad()
def _transport(name, olds, news, bufs):
    """The oracle's SGDMRT transport to the projected point, unit by unit, host sums."""
    for o, n, b in zip(_units(name, olds), _units(name, news), _units(name, bufs)):
        a, c, nn = _dot(o, n), _dot(b, n), _dot(n, n)
        for bo, bb in zip(o, b):
            bb.copy_((a * bb - c * bo) / nn)


def _radii(opt, name, groups):
    """The unit radii of ``opt`` in the order of `_units`."""
    targets = [g["target"] for g in opt.param_groups if g["si"]]
    if name == "total":
        return targets[:1]
    if name == "individual":
        return targets
    return [t for t, ps in zip(targets, groups) for _ in range(ps[0].shape[0])]


def _max_diff(a, b):
    return max(float((x.detach() - y.detach()).abs().max()) for x, y in zip(a, b))


def _group_dicts(groups, momenta):
    return [{"params": ps, **({} if m is None else {"momentum": m})}
            for ps, m in zip(groups, momenta)]


# -- the two modes against their oracles -----------------------------------------------------------
@pytest.mark.parametrize("mode", ["official", "transport"])
@pytest.mark.parametrize("constraint", CONSTRAINTS)
@pytest.mark.parametrize("momenta", [None, (0.9, 0.0, 0.5, 0.9)], ids=["global", "per-group"])
def test_momentum_is_torch_sgd_then_rescale_then_transport(mode, constraint, momenta):
    ours, ref = _convnet(), _convnet()
    mine, theirs = _si(ours), _si(ref)
    dicts = _group_dicts(mine, momenta or [None] * 4)
    opt = SphereSGD(dicts, ELR, constraint=constraint, momentum=BETA, momentum_mode=mode)
    lrs = [g["lr"] for g in opt.param_groups]
    betas = momenta or [BETA] * 4
    sgd = torch.optim.SGD([{"params": ps, "lr": lr, "momentum": b}
                           for ps, lr, b in zip(theirs, lrs, betas)])
    radius = _radii(opt, constraint, mine)
    _rescale(constraint, theirs, radius)  # the reference starts on the constraint set too
    # two rescales of the same tensors (norms of <= n = 1530 squares): (gamma_n + 8u) |theta|
    start = [p for ps in theirs for p in ps]
    assert _max_diff([p for ps in mine for p in ps], start) <= (gamma(1530) + 8 * U) * max(
        float(p.detach().abs().max()) for p in start)
    losses = []
    for batch in _batches():
        losses.append(_backward(ours, batch))
        _backward(ref, batch)
        olds = [[p.detach().clone() for p in ps] for ps in theirs]
        sgd.step()
        _rescale(constraint, theirs, radius)
        if mode == "transport":
            bufs = [[sgd.state[p]["momentum_buffer"] if b else p.grad.clone() for p in ps]
                    for ps, b in zip(theirs, betas)]  # momentum 0: the buffer is the gradient
            _transport(constraint, olds, theirs, bufs)
        opt.step()
    assert losses[-1] < losses[0]  # the convergence regime of the module docstring
    assert _max_diff([p for ps in mine for p in ps], [p for ps in theirs for p in ps]) <= TRAJ_TOL
    for ps, qs, b in zip(mine, theirs, betas):
        for p, q in zip(ps, qs):
            if b:
                assert _max_diff([opt.state[p]["momentum_buffer"]],
                                 [sgd.state[q]["momentum_buffer"]]) <= TRAJ_TOL
            elif mode == "official":
                assert p not in opt.state  # momentum 0: no buffer, as torch
            else:
                assert "momentum_buffer" in opt.state[p]  # the unit's buffer covers it


def _tangency(name, groups, bufs):
    """Per unit: $|\\langle b,\\theta\\rangle|$, the bound of the transport's rounding on it, and
    $|\\cos(b,\\theta)|$.

    The transported $b_+=(Ab-B\\theta)/C$ is exactly tangent; computed, $A$, $B$, $C$ carry
    $\\gamma_m$ times $\\|\\theta\\|\\|\\theta_+\\|$, $\\|b\\|\\|\\theta_+\\|$, $\\|\\theta_+\\|^2$
    ($m$ entries in the unit, Cauchy-Schwarz) and the elementwise update 3u, so
    $|\\langle b_+,\\theta_+\\rangle|\\le(2\\gamma_m+6u)\\|b\\|r+(\\gamma_m+u)\\|b_+\\|r$; measuring it
    here adds $\\gamma_m\\|b_+\\|r$. With $\\|b\\|\\le\\|b_+\\|/\\cos\\Delta\\le2\\|b_+\\|$ (Γ scales the
    out-of-plane part by $\\cos\\Delta$, $\\Delta\\ll1$ here): $(6\\gamma_m+14u)\\|b_+\\|r$.
    """
    out = []
    for t, b in zip(_units(name, groups), _units(name, bufs)):
        m = sum(x.numel() for x in t)
        nt, nb = math.sqrt(_dot(t, t)), math.sqrt(_dot(b, b))
        d = abs(_dot(b, t))
        out.append((d, (6 * gamma(m) + 14 * U) * nb * nt, d / (nb * nt)))
    return out


def _transport_tol(name, olds, bufs):
    """Two computations of $(Ab-B\\theta)/C$ from the same $b$, $\\theta$, $\\theta_+$: $A/C$ and
    $B/C$ within $(2\\gamma_m+2u)$ times $1$ and $\\|b\\|/r$ on each side ($m$-term sums,
    Cauchy-Schwarz), the elementwise update $3u$: per element at most
    $(4\\gamma_m+10u)(\\max|b|+\\|b\\|\\max|\\theta|/r)$, the largest over the units."""
    out = 0.0
    for t, b in zip(_units(name, olds), _units(name, bufs)):
        m = sum(x.numel() for x in t)
        big_b, big_t = max(float(x.abs().max()) for x in b), max(float(x.abs().max()) for x in t)
        nb, r = math.sqrt(_dot(b, b)), math.sqrt(_dot(t, t))
        out = max(out, (4 * gamma(m) + 10 * U) * (big_b + nb * big_t / r))
    return out


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_transported_buffer_is_tangent_after_every_step(constraint):
    model = _convnet()
    groups = _si(model)
    opt = SphereSGD(si_groups(model), 0.05, constraint=constraint, momentum=BETA,
                    momentum_mode="transport")
    for t, batch in enumerate(_batches(8)):
        _backward(model, batch)
        if t == 3:
            groups[2][0].grad = None  # no gradient: its buffer is not updated, but transported
            olds = [[p.detach().clone() for p in ps] for ps in groups]
            # torch's update b <- beta b + g, skipped without a gradient (the same operations)
            expected = [[opt.state[p]["momentum_buffer"].clone() if p.grad is None else
                         BETA * opt.state[p]["momentum_buffer"] + p.grad for p in ps]
                        for ps in groups]
        opt.step()
        bufs = [[opt.state[p]["momentum_buffer"] for p in ps] for ps in groups]
        for d, tol, _ in _tangency(constraint, [[p.detach() for p in ps] for ps in groups], bufs):
            assert d <= tol
        if t == 3:
            tol = _transport_tol(constraint, olds, expected)
            _transport(constraint, olds, [[p.detach() for p in ps] for ps in groups], expected)
            assert _max_diff([b for bs in bufs for b in bs],
                             [e for es in expected for e in es]) <= tol


def test_the_modes_differ_measurably():
    """If the transport were switched off, "transport" would be "official": told apart here."""
    runs = {}
    for mode in ("official", "transport"):
        model = _convnet()
        opt = SphereSGD(si_groups(model), ELR, momentum=BETA, momentum_mode=mode)
        for batch in _batches(10):
            _backward(model, batch)
            opt.step()
        groups = _si(model)
        bufs = [[opt.state[p]["momentum_buffer"] for p in ps] for ps in groups]
        (d, tol, cos), = _tangency("total", [[p.detach() for p in ps] for ps in groups], bufs)
        runs[mode] = [p.detach().clone() for ps in groups for p in ps], d, tol, cos
    assert runs["transport"][1] <= runs["transport"][2]  # tangent to rounding
    # the untransported buffer sums gradients tangent at earlier points: a radial part 1e10
    # times the rounding bound
    assert runs["official"][3] > 1e-3 and runs["official"][1] > 1e10 * runs["official"][2]
    assert _max_diff(runs["official"][0], runs["transport"][0]) > 1e4 * TRAJ_TOL


@pytest.mark.parametrize("mode", ["official", "transport"])
def test_fast_and_tracked_paths_agree_with_momentum(mode):
    models = [_convnet(exact_si=True), _convnet(exact_si=True)]
    opts = [SphereSGD(si_groups(m), 0.01, momentum=BETA, momentum_mode=mode, track=tr)
            for m, tr in zip(models, (False, True))]
    for batch in _batches(5):
        for m, o in zip(models, opts):
            _backward(m, batch)
            o.step()
    # both paths run the same buffer, step, rescale and transport operations: exact
    ps = [list(m.parameters()) for m in models]
    assert all(torch.equal(a, b) for a, b in zip(*ps))
    for a, b in zip(*ps):
        if a.requires_grad:
            assert torch.equal(opts[0].state[a]["momentum_buffer"],
                               opts[1].state[b]["momentum_buffer"])
    metrics = opts[1].last_metrics
    angle = float(metrics["angle"])
    assert 0 < angle < math.pi / 2
    if mode == "transport":
        # the buffer is tangent (cosine with theta c <= 6 gamma_n + 14u, `_tangency`), so T6
        # holds with b for the gradient: tan(angle) = lr |b| / rho = elr rho |b|, with |b|^2 the
        # tracked grad_sq itself. The tracked angle: atan2 of unit sums of n terms against rho^2
        # (theta on the sphere within gamma_n + 6u), 4 gamma_n + 8u relative in all; the radial
        # part shortens the parallel component by tan(angle) c relative, moving the angle by at
        # most angle tan(angle) c (d atan(t) = dt / (1 + t^2), t / (1 + t^2) <= angle)
        o, n = opts[1], 1530
        t6 = math.atan(o.elr * o.rho * math.sqrt(float(metrics["grad_sq"].sum())))
        tol = (4 * gamma(n) + 8 * U + math.tan(angle) * (6 * gamma(n) + 14 * U)) * angle
        assert abs(angle - t6) <= tol


# -- torch conventions -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["official", "transport"])
def test_a_scheduler_may_cycle_the_momentum(mode):
    model = _convnet()
    opt = SphereSGD(si_groups(model), ELR, momentum=0.95, momentum_mode=mode)
    sched = S.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=6,
                         base_momentum=0.8, max_momentum=0.95)
    seen = set()
    for batch in _batches(5):
        _backward(model, batch)
        opt.step()
        sched.step()
        seen.add(opt.param_groups[0]["momentum"])
    assert len(seen) > 2 and all(0.8 <= m <= 0.95 for m in seen)
    opt.param_groups[1]["momentum"] = 1.0
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"momentum of param_groups\[1\].*1\.0"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing written


class _NoExpand(Constraint):
    """A constraint without `expand`: it cannot carry transported buffers."""

    name = "no-expand"

    def setup_(self, groups, radius=None, official=False, labels=None):
        rho = math.sqrt(sum(float((p * p).sum()) for ps in groups for p in ps))
        return rho, [rho] * len(groups)


@pytest.mark.parametrize("kwargs, words", [
    ({"momentum": -0.1}, ["momentum", "-0.1"]), ({"momentum": 1.0}, ["momentum", "1.0"]),
    ({"momentum": float("nan")}, ["momentum", "nan"]), ({"momentum": True}, ["momentum", "True"]),
    ({"momentum": "0.9x"}, ["momentum", "'0.9x'"]),
    ({"momentum_mode": "nesterov"}, ["momentum_mode", "'nesterov'"]),
    ({"momentum_mode": None}, ["momentum_mode", "None"]),
    ({"momentum_mode": "Transport"}, ["momentum_mode", "'Transport'"]),
    ({"momentum_mode": "transport", "constraint": _NoExpand()}, ["transport", "expand"]),
    ({"momentum": 0.9, "official_reductions": True}, ["official_reductions", "momentum=0.9"]),
])
def test_bad_momentum_arguments_are_named(kwargs, words):
    with pytest.raises(ValueError) as err:
        SphereSGD(si_groups(_convnet()), ELR, **kwargs)
    assert all(w in str(err.value) for w in words), str(err.value)


@pytest.mark.parametrize("key, value, word", [("momentum", 1.5, "1.5"),
                                              ("momentum_mode", "transport", "global"),
                                              ("momentum_mode", "heavy", "'heavy'")])
def test_bad_group_momentum_options_are_named(key, value, word):
    dicts = [g.as_param_group() for g in si_groups(_convnet())]
    dicts[1][key] = value
    with pytest.raises(ValueError, match=r"param_groups\[1\]") as err:
        SphereSGD(dicts, ELR)
    assert word in str(err.value)


def test_momentum_mode_follows_the_state_dict_and_old_state_dicts_are_official():
    model = _convnet()
    opt = SphereSGD(si_groups(model), ELR, momentum=BETA, momentum_mode="transport")
    _backward(model, _batches(1)[0])
    opt.step()
    state = opt.state_dict()
    other = SphereSGD(si_groups(_convnet()), ELR, momentum=BETA)
    other.load_state_dict(state)
    assert other.momentum_mode == "transport"
    for g in state["param_groups"]:  # a state dict saved before momentum_mode existed
        g.pop("momentum_mode")
    other.load_state_dict(state)
    assert other.momentum_mode == "official"
    assert all(g["momentum_mode"] == "official" for g in other.param_groups)
