"""SphereSGD under ordinary torch.optim usage, and its constraints as objects.

Written after torch's own optimizer conventions: parameter groups and per-group options,
schedulers, `state_dict` round trips, closures, `zero_grad(set_to_none)`, steps with missing
gradients, mixed dtypes. The oracle is a plain loop written from docs/theory.md §2 (T5): for each
group $v_g = \\theta_g - \\eta_g d_g$ with the group's *current* lr, then every unit of the
constraint back to its radius, with host sums.

Tolerances. Two computations of the same step from the same state differ only by rounding, and
torch's reduction order (blocking, SIMD width, threads) is not pinned across CPUs, so every bound
is the worst case over summation orders (`step_tol`), not a measured error; the runs are compared
step by step from a common state, so the bound does not compound. Exact equality is asserted only
where both sides run the same operations in the same order in the same process.
"""
from __future__ import annotations

import copy
import math
import os

import pytest

torch = pytest.importorskip("torch")
from torch.nn import functional as F
from torch.optim import lr_scheduler as S

from toymodel.bridge import SphereSGD, si_groups
from toymodel.bridge.constraints import (
    BY_NAME,
    Constraint,
    FilterSpheres,
    GroupSpheres,
    TotalSphere,
)
from toymodel.bridge.models import build_model

ELR = 0.02
U = torch.finfo(torch.float64).eps / 2  # unit roundoff of float64, 2**-53
U32 = torch.finfo(torch.float32).eps / 2


@pytest.fixture(autouse=True, scope="module")
def _one_thread_unless_asked():
    """Tiny nets: one thread is fastest on a shared machine. A thread count asked for
    (OMP_NUM_THREADS, or TOYMODEL_TORCH_THREADS of conftest.py) is kept: the tolerances hold for
    any thread count (they assume no reduction order)."""
    if os.environ.get("OMP_NUM_THREADS") or os.environ.get("TOYMODEL_TORCH_THREADS"):
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def gamma(n, u=U):
    """Higham's $\\gamma_n = nu/(1-nu)$ (Accuracy and Stability of Numerical Algorithms, 2002,
    §3.1): a sum of $n$ rounded non-negative terms (squares), in any order, is within relative
    $\\gamma_n$ of the exact sum."""
    return n * u / (1 - n * u)


def step_tol(n, scale, f, u=U):
    """Per-element bound on two computations of one step $\\theta\\leftarrow r\\,v/\\|v\\|$,
    $v=\\theta-\\eta d$, from the same $\\theta$, $d$, $\\eta$ and radius $r$.

    Each side: $v$ within $2u(|\\theta|+\\eta|d|)$ (product and difference, fused or not); a norm
    of $\\le n$ squares within $\\gamma_n/2+u$ (sum, square root), plus $3u$ from the rounding of
    $v$; the factor $r/\\|v\\|$ one more $u$; the product one more $u$. Two sides: $|\\Delta v|
    \\le 4u\\,s$, $|\\Delta f|/f\\le\\gamma_n+10u$, plus $2u$ for the products:
    $(\\gamma_n+16u)\\,f\\,s$, with $f=r/\\|v\\|$ and $s=\\max(|\\theta|+\\eta|d|)$.
    """
    return (gamma(n, u) + 16 * u) * f * scale


def _convnet(width=2, seed=0):
    return build_model("convnet-si", width=width, num_classes=10, in_channels=1, seed=seed,
                       dtype=torch.float64)


def _batch(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64)
    return x, torch.randint(0, 10, (n,), generator=g)


def _flat(ts):
    return torch.cat([t.detach().reshape(-1) for t in ts])


def _snapshot(ps):
    return [p.detach().clone() for p in ps]


def _restore(ps, values):
    with torch.no_grad():
        for p, v in zip(ps, values):
            p.copy_(v)


def _grads(model, params, x, y):
    for p in params:
        p.grad = None
    F.cross_entropy(model(x), y).backward()


def _oracle(opt, values, grads):
    """The step from ``values`` (one list per SI group) and ``grads`` (``None`` = no step), with
    each group's current lr and target read from ``opt``: plain loops, host sums. Returns the new
    values, the largest rescale factor $f$ and $s=\\max(|\\theta|+\\eta|d|)$."""
    si = [g for g in opt.param_groups if g["si"]]
    vs, scale = [], 0.0
    for g, ts, ds in zip(si, values, grads):
        row = []
        for t, d in zip(ts, ds):
            t = t.double()
            d = torch.zeros_like(t) if d is None else d.double()
            row.append(t - g["lr"] * d)
            scale = max(scale, float((t.abs() + g["lr"] * d.abs()).max()))
        vs.append(row)
    name = si[0]["constraint"]
    if name == "total":
        f = si[0]["target"] / math.sqrt(sum(float((v * v).sum()) for row in vs for v in row))
        return [[v * f for v in row] for row in vs], f, scale
    if name == "individual":
        fs = [g["target"] / math.sqrt(sum(float((v * v).sum()) for v in row))
              for g, row in zip(si, vs)]
        return [[v * f for v in row] for f, row in zip(fs, vs)], max(fs), scale
    assert name == "per-filter"
    out, fmax = [], 0.0
    for g, row in zip(si, vs):
        rows = sum((v.reshape(v.shape[0], -1) ** 2).sum(1) for v in row).sqrt()
        f = g["target"] / rows
        fmax = max(fmax, float(f.max()))
        out.append([v * f.view((-1,) + (1,) * (v.dim() - 1)) for v in row])
    return out, fmax, scale


def _max_diff(a, b):
    return max(float((x.detach().double() - y.detach().double()).abs().max()) for x, y in zip(a, b))


def _check_step(opt, groups, grads_missing=()):
    """One step of ``opt`` against the oracle, from the current values; returns the tolerance."""
    values = [_snapshot(g) for g in groups]
    grads = [[None if id(p) in grads_missing or p.grad is None else p.grad.clone() for p in g]
             for g in groups]
    expected, f, scale = _oracle(opt, values, grads)
    opt.step()
    n = sum(p.numel() for g in groups for p in g)
    tol = step_tol(n, scale, f)
    got = [p for g in groups for p in g]
    assert _max_diff(got, [e for row in expected for e in row]) <= tol
    return tol


# -- per-group learning rates --------------------------------------------------------------------
@pytest.mark.parametrize("track", [False, True])
def test_a_group_with_lr_zero_keeps_its_direction(track):
    model = _convnet()
    groups = si_groups(model)
    opt = SphereSGD(groups, ELR, track=track)
    opt.param_groups[1]["lr"] = 0.0
    x, y = _batch()
    before = [_flat(g.params) for g in groups]
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    cos = [float(b @ _flat(g.params)) / float(b.norm() * _flat(g.params).norm())
           for b, g in zip(before, groups)]
    # group 1 is only multiplied by the common factor (one rounding u per element, which moves the
    # exact cosine by O(u^2)); the computed cosine carries its dot product and two norms over
    # m = 72 entries: 2*gamma_m + 3u
    m = before[1].numel()
    assert abs(1 - cos[1]) <= 2 * gamma(m) + 3 * U
    assert 1 - cos[0] > 1e-3 and 1 - cos[3] > 1e-3  # the others turn (a step of tan = 0.9)


SCHEDULERS = {
    "LambdaLR per group": lambda o: S.LambdaLR(o, [lambda e: 0.5 ** e, lambda e: 1.0,
                                                   lambda e: float(e % 2), lambda e: 1.0 + e]),
    "StepLR": lambda o: S.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o: S.MultiStepLR(o, milestones=[1, 3], gamma=0.3),
    "ExponentialLR": lambda o: S.ExponentialLR(o, gamma=0.7),
    "CosineAnnealingLR": lambda o: S.CosineAnnealingLR(o, T_max=3),
    "LinearLR": lambda o: S.LinearLR(o, start_factor=0.25, total_iters=3),
    "OneCycleLR per group": lambda o: S.OneCycleLR(
        o, max_lr=[g["lr"] * k for k, g in zip((1, 2, 0.5, 3), o.param_groups)], total_steps=8,
        cycle_momentum=False),
    "CyclicLR": lambda o: S.CyclicLR(o, base_lr=[0.1 * g["lr"] for g in o.param_groups],
                                     max_lr=[g["lr"] for g in o.param_groups], step_size_up=2,
                                     cycle_momentum=False),
    "ReduceLROnPlateau": lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=0),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_fast_and_tracked_paths_follow_every_group_lr(name):
    model = _convnet()
    groups = [g.params for g in si_groups(model)]
    ps = [p for g in groups for p in g]
    fast, tracked = SphereSGD(si_groups(model), ELR), SphereSGD(si_groups(model), ELR, track=True)
    scheds = [SCHEDULERS[name](o) for o in (fast, tracked)]
    x, y = _batch()
    seen = set()
    for t in range(6):
        xb, yb = x[(t % 3) * 8:(t % 3) * 8 + 8], y[(t % 3) * 8:(t % 3) * 8 + 8]
        _grads(model, ps, xb, yb)
        lrs = [g["lr"] for g in fast.param_groups]
        assert lrs == [g["lr"] for g in tracked.param_groups]
        seen.add(len(set(lrs)))
        start = _snapshot(ps)
        values = [_snapshot(g) for g in groups]
        grads = [[p.grad.clone() for p in g] for g in groups]
        expected, f, scale = _oracle(fast, values, grads)
        expected = [e for row in expected for e in row]
        tol = step_tol(len(_flat(ps)), scale, f)  # one step from a common state: no compounding
        fast.step()
        after_fast = _snapshot(ps)
        _restore(ps, start)
        tracked.step()
        assert _max_diff(after_fast, expected) <= tol
        assert _max_diff(ps, expected) <= tol
        assert _max_diff(ps, after_fast) <= tol
        _restore(ps, after_fast)
        for s in scheds:
            s.step(float(t)) if isinstance(s, S.ReduceLROnPlateau) else s.step()
    if "per group" in name:
        assert max(seen) > 1  # the groups really had different learning rates


def test_a_group_elr_at_construction_sets_its_lr():
    model = _convnet()
    dicts = [g.as_param_group() for g in si_groups(model)]
    dicts[2]["elr"] = 0.5 * ELR
    opt = SphereSGD(dicts, ELR)
    base = opt.rho ** 2
    assert [g["lr"] for g in opt.param_groups] == [ELR * base, ELR * base, 0.5 * ELR * base,
                                                   ELR * base]
    x, y = _batch()
    _grads(model, [p for g in dicts for p in g["params"]], x, y)
    _check_step(opt, [g["params"] for g in dicts])


# -- the elr property ----------------------------------------------------------------------------
def test_elr_reads_the_current_lr_under_a_scheduler():
    model = _convnet()
    opt = SphereSGD(si_groups(model), ELR)
    sched = S.StepLR(opt, step_size=1, gamma=0.5)
    # lr = elr * rho**2 then lr / rho**2: three roundings
    assert opt.elr == pytest.approx(ELR, rel=3 * U, abs=0)
    x, y = _batch()
    _grads(model, [p for g in opt.param_groups for p in g["params"]], x, y)
    opt.step()
    sched.step()
    assert opt.elr == opt.param_groups[0]["lr"] / opt.rho ** 2
    assert opt.elr == pytest.approx(ELR / 2, rel=3 * U, abs=0)
    assert all("elr" not in g for g in opt.param_groups)  # no stale copy in the groups
    opt.param_groups[2]["lr"] /= 2
    assert opt.elrs == [g["lr"] / g["rho"] ** 2 for g in opt.param_groups]
    assert opt.elrs[2] == pytest.approx(ELR / 4, rel=4 * U, abs=0)
    with pytest.raises(ValueError, match="different learning rates"):
        _ = opt.elr
    with pytest.raises(AttributeError):
        opt.elr = 1.0


# -- add_param_group ------------------------------------------------------------------------------
def test_add_param_group_refuses_an_si_group():
    model = _convnet()
    groups = si_groups(model)
    opt = SphereSGD(groups[:3], ELR)
    rho = opt.rho
    for group in ({"params": groups[3].params, "si": True}, {"params": groups[3].params}):
        with pytest.raises(ValueError, match="add_param_group") as err:
            opt.add_param_group(group)
    assert "'si': False" in str(err.value)
    assert len(opt.param_groups) == 3
    x, y = _batch()
    ps = [p for g in groups for p in g.params]
    _grads(model, ps, x, y)
    opt.step()  # the three groups stay on their sphere, the fourth conv is untouched
    kept = [p for g in groups[:3] for p in g.params]
    # rescaled to rho (gamma_n/2 + 3u), measured here (gamma_n/2 + u), n = 378 weights
    assert abs(float(_flat(kept).norm()) - rho) <= (gamma(_flat(kept).numel()) + 8 * U) * rho


def test_add_param_group_needs_si_false_and_an_lr():
    model = _convnet()
    opt = SphereSGD(si_groups(model), ELR)
    head = list(model.linear.parameters())
    with pytest.raises(ValueError, match="'si': False"):
        opt.add_param_group({"params": head, "lr": 0.1})
    with pytest.raises(ValueError, match="'lr'"):
        opt.add_param_group({"params": head, "si": False})
    with pytest.raises(ValueError, match="-1"):
        opt.add_param_group({"params": head, "si": False, "lr": -1})
    assert len(opt.param_groups) == 4


def test_an_added_non_si_group_is_plain_sgd_with_its_lr():
    model = _convnet()
    model.linear.requires_grad_(True)
    groups = si_groups(model)
    opt = SphereSGD(groups, ELR)
    opt.add_param_group({"params": list(model.linear.parameters()), "si": False, "lr": 0.1})
    sched = S.StepLR(opt, step_size=1, gamma=0.5)
    x, y = _batch()
    for lr in (0.1, 0.05):
        _grads(model, list(model.parameters()), x, y)
        w0, g = model.linear.weight.detach().clone(), model.linear.weight.grad.clone()
        _check_step(opt, [gr.params for gr in groups])
        # w0 - lr*g: a product and a difference on each side (fused or not)
        assert bool(((model.linear.weight - (w0 - lr * g)).abs()
                     <= 2 * U * (w0.abs() + lr * g.abs())).all())
        sched.step()


# -- requires_grad ------------------------------------------------------------------------------
def test_frozen_tensors_in_an_si_group_are_refused_by_name():
    model = _convnet()
    before = _snapshot(model.parameters())
    with pytest.raises(ValueError, match=r"tensor 4 \(shape \(10, 16\)\), tensor 5 \(shape"):
        SphereSGD(model.parameters(), ELR)
    with pytest.raises(ValueError, match=r"requires_grad=False: 'linear\.weight', 'linear\.bias'"):
        SphereSGD(model.named_parameters(), ELR)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # the trainable tensors alone are the total group, the same optimizer as si_groups(...)
    runs = []
    for total in (False, True):
        m = _convnet()
        ps = [p for p in m.parameters() if p.requires_grad]
        opt = SphereSGD(si_groups(m, level="total") if total else ps, ELR)
        _grads(m, ps, *_batch())
        opt.step()
        runs.append(_flat(m.parameters()))
    assert torch.equal(runs[0], runs[1])  # the same operations in the same order


def test_frozen_tensors_in_a_non_si_group_are_untouched():
    model = _convnet()
    head = _snapshot(model.linear.parameters())
    groups = si_groups(model)
    opt = SphereSGD(groups + [{"params": list(model.linear.parameters()), "si": False,
                               "lr": 0.1}], ELR)
    x, y = _batch()
    for _ in range(2):
        _grads(model, [p for g in groups for p in g.params], x, y)
        _check_step(opt, [g.params for g in groups])
    assert all(torch.equal(a, b) for a, b in zip(head, model.linear.parameters()))


# -- momentum and weight decay per group ---------------------------------------------------------
def test_a_group_weight_decay_needs_allow_nonstandard():
    model = _convnet()
    dicts = [g.as_param_group() for g in si_groups(model)]
    dicts[1]["weight_decay"] = 0.5
    with pytest.raises(ValueError, match="weight_decay=0.5"):
        SphereSGD(dicts, ELR)
    opt = SphereSGD([g.as_param_group() for g in si_groups(model)], ELR)
    opt.param_groups[1]["weight_decay"] = 0.5  # as a scheduler would
    before = _snapshot(model.parameters())
    _grads(model, [p for p in model.parameters() if p.requires_grad], *_batch())
    with pytest.raises(ValueError, match="allow_nonstandard"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing written
    SphereSGD(dicts, ELR, allow_nonstandard=True).step()
    # momentum needs no flag any more (tests/test_sphere_momentum.py), neither per group
    dicts[1].pop("weight_decay")
    dicts[1]["momentum"] = 0.5
    SphereSGD(dicts, ELR).step()


def test_momentum_state_is_a_heavy_ball_buffer_per_tensor():
    model = _convnet()
    groups = [g.params for g in si_groups(model)]
    ps = [p for g in groups for p in g]
    dicts = [{"params": g, "momentum": 0.9 if k == 0 else 0.0} for k, g in enumerate(groups)]
    opt = SphereSGD(dicts, ELR)
    x, y = _batch()
    buf = None
    for _ in range(3):
        _grads(model, ps, x, y)
        g0 = groups[0][0].grad.clone()
        buf = g0 if buf is None else 0.9 * buf + g0
        d = [[buf]] + [[p.grad.clone() for p in g] for g in groups[1:]]
        expected, f, scale = _oracle(opt, [_snapshot(g) for g in groups], d)
        opt.step()
        assert _max_diff(ps, [e for row in expected for e in row]) <= step_tol(
            len(_flat(ps)), scale, f)
        # the buffer: the same two elementwise operations (0.9 * b, + g) on each side
        assert torch.equal(opt.state[groups[0][0]]["momentum_buffer"], buf)
    assert all(p not in opt.state for g in groups[1:] for p in g)


# -- bad arguments --------------------------------------------------------------------------------
def _zero_filter_model():
    model = _convnet()
    with torch.no_grad():
        model.conv_layers[3].weight[1].zero_()
    return model


BAD = {
    "empty group": (lambda m: ([{"params": []}], {}), ValueError, "no parameters"),
    "empty params": (lambda m: ([], {}), ValueError, "empty"),
    "a tensor": (lambda m: (m.conv_layers[0].weight, {}), TypeError, "Tensor"),
    "integer tensor": (lambda m: ([torch.ones(3, dtype=torch.int64)], {}), TypeError, "int64"),
    "a float": (lambda m: ([1.0], {}), TypeError, "float"),
    "a set": (lambda m: ([{"params": {m.conv_layers[0].weight}}], {}), TypeError, "set"),
    "si not bool": (lambda m: ([{"params": [m.conv_layers[0].weight], "si": "yes"}], {}),
                    TypeError, "'yes'"),
    "si group lr": (lambda m: ([{"params": [m.conv_layers[0].weight], "lr": 0.1}], {}),
                    ValueError, "'lr'"),
    "group elr": (lambda m: ([{"params": [m.conv_layers[0].weight], "elr": -1.0}], {}),
                  ValueError, "-1.0"),
    "group constraint": (lambda m: ([{"params": [m.conv_layers[0].weight],
                                      "constraint": "individual"}], {}), ValueError, "global"),
    "constraint type": (lambda m: (si_groups(m), {"constraint": 3}), TypeError, "int 3"),
    "constraint name": (lambda m: (si_groups(m), {"constraint": "sphere"}), ValueError, "'sphere'"),
    "track": (lambda m: (si_groups(m), {"track": "yes"}), TypeError, "track"),
    "non-leaf": (lambda m: ([m.conv_layers[0].weight * 2], {}), ValueError, "non-leaf"),
    "no si group": (lambda m: ([{"params": [m.conv_layers[0].weight], "si": False, "lr": 0.1}],
                               {}), ValueError, "no SI parameter group"),
    "zero filter": (lambda m: (si_groups(_zero_filter_model()), {"constraint": "per-filter"}),
                    ValueError, "filter 1 of param_groups\\[1\\]"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_arguments_raise_value_or_type_errors_naming_them(case):
    make, exc, word = BAD[case]
    model = _convnet()
    params, kw = make(model)
    with pytest.raises(exc, match=word):
        SphereSGD(params, kw.pop("elr", ELR), **kw)


def test_zero_filter_and_zero_group_are_refused_before_anything_is_written():
    model = _zero_filter_model()
    before = _snapshot(model.parameters())
    with pytest.raises(ValueError, match="filter 1"):
        SphereSGD(si_groups(model), ELR, constraint="per-filter")
    with pytest.raises(ValueError, match="filter 1"):
        SphereSGD(si_groups(model), ELR, constraint="per-filter", official_reductions=True)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no NaN written
    with torch.no_grad():
        model.conv_layers[3].weight.zero_()
    with pytest.raises(ValueError, match=r"param_groups\[1\]"):
        SphereSGD(si_groups(model), ELR, constraint="individual")


# -- torch conventions ----------------------------------------------------------------------------
@pytest.mark.parametrize("momentum, mode", [(0.0, "official"), (0.9, "official"),
                                            (0.9, "transport")])
def test_state_dict_round_trip_with_a_scheduler_resumes_bit_for_bit(momentum, mode):
    lambdas = [lambda e: 0.9 ** e, lambda e: 1.0, lambda e: 1.0 / (1 + e), lambda e: 1.0,
               lambda e: 0.5]

    def build(model, **kw):
        model.linear.requires_grad_(True)
        groups = si_groups(model) + [{"params": [model.linear.weight], "si": False, "lr": 0.05}]
        opt = SphereSGD(groups, kw.pop("elr", ELR), momentum=momentum,
                        momentum_mode=kw.pop("momentum_mode", mode), **kw)
        return opt, S.LambdaLR(opt, lambdas)

    def steps(model, opt, sched, n):
        x, y = _batch()
        for _ in range(n):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()

    model = _convnet()
    opt, sched = build(model)
    steps(model, opt, sched, 3)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), sched.state_dict()))
    steps(model, opt, sched, 3)
    expected = _flat(model.parameters())

    other = _convnet(seed=5)
    other.load_state_dict(saved[0])
    # other values on purpose (the state overrides them), loaded in torch's order: optimizer and
    # scheduler built, then the optimizer's state, then the scheduler's
    opt2, sched2 = build(other, elr=3 * ELR, radius=2.0, constraint="individual",
                         momentum_mode="transport" if mode == "official" else "official")
    other.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    assert isinstance(opt2.constraint, TotalSphere) and opt2.rho == opt.rho
    assert opt2.momentum_mode == mode
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in saved[1]["param_groups"]]
    steps(other, opt2, sched2, 3)
    assert torch.equal(_flat(other.parameters()), expected)  # the same operations, same order


def test_closure_runs_with_grad_enabled_and_its_loss_is_returned():
    x, y = _batch()
    runs = []
    for use_closure in (True, False):
        model = _convnet()
        opt = SphereSGD(si_groups(model), ELR)
        seen = []

        def closure(opt=opt, model=model, seen=seen):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            seen.append(torch.is_grad_enabled())
            return loss

        if use_closure:
            with torch.no_grad():
                loss = opt.step(closure)
            assert seen == [True] and loss.requires_grad and loss.ndim == 0
        else:
            closure()
            assert opt.step() is None
        runs.append(_flat(model.parameters()))
    assert torch.equal(runs[0], runs[1])  # the same operations in the same order


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("track", [False, True])
def test_zero_grad_then_step_only_rescales(set_to_none, track):
    model = _convnet()
    groups = [g.params for g in si_groups(model)]
    opt = SphereSGD(si_groups(model), ELR, track=track)
    _grads(model, [p for g in groups for p in g], *_batch())
    opt.zero_grad(set_to_none=set_to_none)
    assert all((p.grad is None) == set_to_none for g in groups for p in g)
    tol = _check_step(opt, groups)  # v = theta: the factor is rho/|theta| = 1 up to rounding
    assert tol < 1e-12


@pytest.mark.parametrize("constraint", ["total", "individual", "per-filter"])
@pytest.mark.parametrize("track", [False, True])
def test_a_tensor_without_gradient_takes_no_step_but_is_rescaled(constraint, track):
    model = _convnet()
    groups = [g.params for g in si_groups(model)]
    opt = SphereSGD([{"params": g} for g in groups], ELR, constraint=constraint, track=track)
    ps = [p for g in groups for p in g]
    x, y = _batch()
    for _ in range(2):
        _grads(model, ps, x, y)
        groups[2][0].grad = None  # conv_layers.7: unused in this step
        _check_step(opt, groups)
    if track:
        assert math.isfinite(float(opt.last_metrics["angle"]))


@pytest.mark.parametrize("constraint", ["total", "individual", "per-filter"])
@pytest.mark.parametrize("track", [False, True])
def test_mixed_dtypes(constraint, track):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 3, generator=gen).requires_grad_()  # float32
    b = torch.randn(4, 5, generator=gen, dtype=torch.float64).requires_grad_()
    opt = SphereSGD([{"params": [a]}, {"params": [b]}], 0.05, constraint=constraint, track=track)
    for _ in range(3):
        a.grad = torch.randn(a.shape, generator=gen)
        b.grad = torch.randn(b.shape, generator=gen, dtype=torch.float64)
        values = [[a.detach().clone()], [b.detach().clone()]]
        expected, f, scale = _oracle(opt, values, [[a.grad], [b.grad]])
        opt.step()
        assert a.dtype == torch.float32 and b.dtype == torch.float64
        # the float32 tensor's step, norm and product round in float32: the bound with u32
        assert _max_diff([a, b], [expected[0][0], expected[1][0]]) <= step_tol(38, scale, f, U32)


def test_deepcopy_keeps_the_constraint_and_the_flags():
    model = _convnet()
    opt = SphereSGD(si_groups(model), ELR, constraint="per-filter", track=True)
    model2, opt2 = copy.deepcopy((model, opt))
    assert isinstance(opt2.constraint, FilterSpheres) and opt2.track
    x, y = _batch()
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        F.cross_entropy(m(x), y).backward()
        o.step()
    # the same operations in the same order on equal copies: exact
    assert torch.equal(_flat(model.parameters()), _flat(model2.parameters()))
    assert torch.equal(opt.last_metrics["angle"], opt2.last_metrics["angle"])


# -- constraints as objects -----------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BY_NAME))
def test_a_name_and_its_constraint_object_are_the_same_optimizer(name):
    runs = []
    for constraint in (name, BY_NAME[name]()):
        model = _convnet()
        opt = SphereSGD(si_groups(model), ELR, constraint=constraint)
        x, y = _batch()
        for _ in range(3):
            _grads(model, list(model.parameters())[:4], x, y)
            opt.step()
        assert opt.constraint == BY_NAME[name]() and opt.constraint.name == name
        assert all(g["constraint"] == name for g in opt.param_groups)
        runs.append(_flat(model.parameters()))
    assert torch.equal(runs[0], runs[1])  # the same operations in the same order
    assert BY_NAME == {"total": TotalSphere, "individual": GroupSpheres, "per-filter": FilterSpheres}


class TensorSpheres(Constraint):
    """Every tensor on its own sphere: a new constraint is one class."""

    name = "per-tensor"

    def setup_(self, groups, radius=None, official=False, labels=None):
        norms = [[float(p.norm()) for p in ps] for ps in groups]
        total = math.sqrt(sum(n * n for ns in norms for n in ns))
        rho = total if radius is None else radius
        for ps in groups:
            torch._foreach_mul_(ps, rho / total)
        return rho, [[n * rho / total for n in ns] for ns in norms]

    def rescale_(self, groups, targets):
        for ps, ts in zip(groups, targets):
            for p, t in zip(ps, ts):
                p.mul_(t / p.norm())

    def sq_partial(self, tensors):
        return torch.stack([t.square().sum() for t in tensors])

    def dot_partial(self, xs, ys):
        return torch.stack([(x * y).sum() for x, y in zip(xs, ys)])

    def n_units(self, groups):
        return sum(len(ps) for ps in groups)


def test_a_new_constraint_is_one_class():
    model = _convnet()
    groups = si_groups(model, patterns=[r"conv_layers\.(0|3)\.", r"conv_layers\.(7|11)\."])
    ps = [p for g in groups for p in g.params]
    norms0 = [float(p.detach().norm()) for p in ps]
    opt = SphereSGD(groups, ELR, constraint=TensorSpheres(), track=True)
    assert opt.n_units == 4 and opt.n_filters is None
    x, y = _batch()
    for _ in range(3):
        _grads(model, ps, x, y)
        opt.step()
        assert 0 < float(opt.last_metrics["angle"]) < math.pi
    # each tensor: its target from a measured norm (gamma_m/2 + u), the rescale (gamma_m/2 + 3u),
    # the measurement here (gamma_m/2 + u), m = its size (<= 1152)
    for p, n0 in zip(ps, norms0):
        assert abs(float(p.detach().norm()) - n0) <= (1.5 * gamma(p.numel()) + 6 * U) * n0
    state = copy.deepcopy(opt.state_dict())
    assert state["param_groups"][0]["constraint"] == "per-tensor"
    opt.load_state_dict(state)
    assert isinstance(opt.constraint, TensorSpheres)
    with pytest.raises(ValueError, match="official_reductions"):
        SphereSGD(si_groups(model), ELR, constraint=TensorSpheres(), official_reductions=True)
