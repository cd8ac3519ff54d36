"""Torch bridge: SI detection, SphereSGD semantics (T5-T7), official-code parity, metrics, CLI.

Oracles: plain loops written from docs/theory.md §2 (torch.optim.SGD + rescale; the official
``fix_si_pnorm`` / ``fix_si_pnorms`` semantics), the closed form of T6, and a direct measurement
of the angle between parameter vectors. Tiny widths, float64, CPU.

Tolerances are derived, not measured: unit roundoff $u$ times the number of operations times the
scale of the values, with the worst case over summation orders ($\\gamma_n$, Higham 2002 §3.1),
because torch's reduction order (blocking, SIMD width, threads) differs across CPUs and thread
counts. Runs that differ by rounding are compared step by step from a common state, so the bound
of one step applies and nothing compounds. Equality is exact only where both sides run the same
operations in the same order (``official_reductions=True``, a resumed run, a repeated run).
"""
from __future__ import annotations

import copy
import math
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn import functional as F

from toymodel.bridge import (
    ConvNetSI,
    ResNet18SI,
    SphereSGD,
    load_data,
    parse_elrs,
    si_groups,
    train,
    verify_scale_invariance,
)
from toymodel.bridge.models import build_model

ELR = 0.02
U = torch.finfo(torch.float64).eps / 2  # unit roundoff of float64, 2**-53
#: BatchNorm eps for an exactly SI net in float64: var + eps rounds to var
EXACT_SI_EPS = torch.finfo(torch.float64).tiny


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


def gamma(n):
    """$\\gamma_n = nu/(1-nu)$: a sum of $n$ rounded non-negative terms (squares), in any order,
    is within relative $\\gamma_n$ of the exact sum (Higham 2002, §3.1)."""
    return n * U / (1 - n * U)


def _convnet(width=2, seed=0, eps=None):
    model = build_model("convnet-si", width=width, num_classes=10, in_channels=1, seed=seed,
                        dtype=torch.float64)
    if eps is not None:
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eps = eps
    return model


def _batch(n=24, seed=1, size=8, classes=10):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g, dtype=torch.float64)
    return x, torch.randint(0, classes, (n,), generator=g)


def _flat(params):
    return torch.cat([p.detach().flatten() for p in params])


def _grad_step(model, opt, x, y):
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def _trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def _copy_(dst, src):
    with torch.no_grad():
        for d, s in zip(dst, src):
            d.copy_(s)


def _step_scales(ps, lr, rho):
    """From the pre-step values and gradients: $s=\\max(|\\theta|+\\eta|g|)$, the rescale factor
    $f=\\rho/\\|v\\|$ and $t=\\eta\\|g\\|/\\|v\\|$ of $v=\\theta-\\eta g$ (host sums)."""
    v = [p.detach() - lr * p.grad for p in ps]
    nv = math.sqrt(sum(float((x * x).sum()) for x in v))
    s = max(float((p.detach().abs() + lr * p.grad.abs()).max()) for p in ps)
    ng = math.sqrt(sum(float((p.grad ** 2).sum()) for p in ps))
    return s, rho / nv, lr * ng / nv


def step_tol(n, s, f):
    """Two computations of one step $\\theta\\leftarrow r\\,v/\\|v\\|$ from the same $\\theta$,
    gradient, lr and radius that may differ in rounding only: $v$ within $2u\\,s$ each
    (product, difference); each norm of $n$ squares within $\\gamma_n/2+u$, $+3u$ from $v$; the
    factor one more $u$, the product one more $u$: $|\\Delta|\\le(\\gamma_n+16u)\\,f\\,s$ per
    element ($s=\\max(|\\theta|+\\eta|g|)$, $f=r/\\|v\\|$)."""
    return (gamma(n) + 16 * U) * f * s


def loop_tol(n, s, f, t, m=None):
    """The fused step against the reference loop from the same $\\theta$ and gradient, each
    measuring its own radius and lr (docs/theory.md §2 semantics).

    Total ($m$ = None): the two $\\rho$ are $n$-term norms ($\\gamma_n+4u$ apart), so the two
    lr $=\\tilde\\eta\\rho^2$ are $2\\gamma_n+10u$ apart; $v$ then differs by $(2\\gamma_n+14u)s$,
    the factors $\\rho/\\|v\\|$ by $2\\gamma_n+12u+(2\\gamma_n+14u)t$ relative ($t=\\eta\\|g\\|/
    \\|v\\|$; SI: $\\|\\theta\\|\\le\\|v\\|$), the products by $2u$: at most
    $(2+t)(2\\gamma_n+14u)\\,f\\,s$. Per filter ($m$ = entries of a filter): the radius $r$ and
    the lr (from the norms after the official initial rescale, rows within $\\gamma_m/2+3u$,
    $3\\gamma_n+\\gamma_m+20u$ apart) add $\\gamma_n+\\gamma_m$ terms: at most
    $(2+t)(3\\gamma_n+\\gamma_m+24u)\\,f\\,s$, with $f$, $t$ the largest over the filters.
    """
    if m is None:
        return (2 + t) * (2 * gamma(n) + 14 * U) * f * s
    return (2 + t) * (3 * gamma(n) + gamma(m) + 24 * U) * f * s


# -- SI detection ------------------------------------------------------------------------------------
def test_import_toymodel_does_not_import_torch():
    code = "import sys, toymodel, toymodel.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_convnet_groups_are_the_four_convs_and_numerically_si():
    model = _convnet(width=2)
    groups = si_groups(model)
    assert [g.names for g in groups] == [[f"conv_layers.{i}.weight"] for i in (0, 3, 7, 11)]
    report = verify_scale_invariance(model, groups, _batch())
    assert all(r["ok"] for r in report), report
    total = si_groups(model, level="total")
    assert len(total) == 1 and len(total[0].params) == 4
    filters = si_groups(model, level="filter")
    assert len(filters) == 2 + 4 + 8 + 16
    picked = [filters[0], filters[5], filters[-1]]
    assert all(r["ok"] for r in verify_scale_invariance(model, picked, _batch()))


def test_resnet_groups_follow_the_residual_stream():
    model = ResNet18SI(width=2, in_channels=1).double()
    groups = {tuple(g.names) for g in si_groups(model)}
    streams = {("conv1.weight", "layer1.0.conv2.weight", "layer1.1.conv2.weight")}
    streams |= {(f"layer{s}.0.shortcut.1.weight", f"layer{s}.0.conv2.weight",
                 f"layer{s}.1.conv2.weight") for s in (2, 3, 4)}
    singles = {(f"layer{s}.{b}.conv1.weight",) for s in (1, 2, 3, 4) for b in (0, 1)}
    assert groups == streams | singles
    report = verify_scale_invariance(model, si_groups(model), _batch(n=32))
    assert all(r["ok"] for r in report), report


def test_resnet_accepts_small_and_cifar_sized_inputs():
    model = ResNet18SI(width=2, in_channels=3).double()
    for size in (8, 32):
        x = torch.randn(4, 3, size, size, dtype=torch.float64)
        assert model(x).shape == (4, 10)


def test_numeric_check_flags_a_non_si_group_and_detection_skips_it():
    model = _convnet(width=2)
    model.linear.requires_grad_(True)
    assert all("linear" not in n for g in si_groups(model, include_frozen=True) for n in g.names)
    head = si_groups(model, patterns=[r"^linear\.weight$"])
    (rep,) = verify_scale_invariance(model, head, _batch())
    # not a rounding bound: the head is 1-homogeneous, so scaling it by 3 changes the logits by
    # a factor 3, far above the check's threshold (1e-3)
    assert not rep["ok"] and rep["output_rel_change"] > 0.1


def test_affine_norm_and_missing_norm():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(1, 3, 3, bias=False)
            self.bn = torch.nn.BatchNorm2d(3)  # affine: its (weight, bias) feed the next conv
            self.b = torch.nn.Conv2d(3, 3, 3, bias=False)
            self.head = torch.nn.Linear(3 * 4 * 4, 2)

        def forward(self, x):
            return self.head(torch.flatten(self.b(self.bn(self.a(x))), 1))

    names = [g.names for g in si_groups(Net())]
    assert names == [["a.weight"]]  # b and bn feed the head without normalisation: not SI


def test_patterns_and_bad_levels():
    model = _convnet()
    groups = si_groups(model, patterns=[r"conv_layers\.(0|3)\.", r"conv_layers\.(7|11)\."])
    assert [len(g.params) for g in groups] == [2, 2]
    with pytest.raises(ValueError, match="'blocks'"):
        si_groups(model, level="blocks")
    with pytest.raises(ValueError, match="nothing_here"):
        si_groups(model, patterns=["nothing_here"])
    with pytest.raises(ValueError, match="conv_layers.0.weight"):
        si_groups(model, patterns=["conv", r"layers\.0"])


# -- SphereSGD semantics ---------------------------------------------------------------------------
@pytest.mark.parametrize("official", [False, True])
def test_matches_plain_sgd_then_rescale_loop_over_20_steps(official):
    model = _convnet(width=2)
    ref = copy.deepcopy(model)
    x, y = _batch()
    opt = SphereSGD(si_groups(model), ELR, official_reductions=official)
    ps, mine = _trainable(ref), _trainable(model)
    n = sum(p.numel() for p in ps)
    rho = math.sqrt(sum(float((p.detach() ** 2).sum()) for p in ps))
    sgd = torch.optim.SGD(ps, lr=ELR * rho ** 2)
    for t in range(20):
        xb, yb = x[(t % 3) * 8:(t % 3) * 8 + 8], y[(t % 3) * 8:(t % 3) * 8 + 8]
        if not official:  # the fused run differs by rounding: each step from its state
            _copy_(ps, mine)
        _grad_step(model, opt, xb, yb)
        sgd.zero_grad()
        F.cross_entropy(ref(xb), yb).backward()
        s, f, tan = _step_scales(ps, sgd.param_groups[0]["lr"], rho)
        sgd.step()
        with torch.no_grad():  # the official fix_si_pnorm
            coef = rho / math.sqrt(sum(float((p ** 2).sum()) for p in ps))
            for p in ps:
                p.mul_(coef)
        diff = float((_flat(mine) - _flat(ps)).abs().max())
        # official_reductions: the official operations in the official order, bit for bit
        assert diff <= (0.0 if official else loop_tol(n, s, f, tan))
    # the rescale leaves |theta| within gamma_n/2 + 4u of the optimizer's rho, itself within
    # gamma_n + 4u of this rho; the norm measured here: gamma_n/2 + u
    assert abs(float(_flat(mine).norm()) - rho) <= (2 * gamma(n) + 9 * U) * rho


def _filter_scales(ps, lr, r):
    """`_step_scales` per filter (one tensor per group): $s$, $\\max_j r/\\|v_j\\|$ and
    $\\max_j \\eta\\|g_j\\|/\\|v_j\\|$."""
    s, f, tan = 0.0, 0.0, 0.0
    for p in ps:
        v = (p.detach() - lr * p.grad).reshape(p.shape[0], -1)
        nv, ng = v.norm(dim=1), p.grad.reshape(p.shape[0], -1).norm(dim=1)
        s = max(s, float((p.detach().abs() + lr * p.grad.abs()).max()))
        f, tan = max(f, float((r / nv).max())), max(tan, float((lr * ng / nv).max()))
    return s, f, tan


@pytest.mark.parametrize("official", [False, True])
def test_per_filter_mode_matches_official_semantics(official):
    model = _convnet(width=2)
    ref = copy.deepcopy(model)
    x, y = _batch()
    opt = SphereSGD(si_groups(model), ELR, constraint="per-filter", official_reductions=official)
    ps, mine = _trainable(ref), _trainable(model)
    n_filters = sum(p.shape[0] for p in ps)
    n, m = sum(p.numel() for p in ps), max(p[0].numel() for p in ps)  # weights, filter size
    with torch.no_grad():  # official: si_pnorm_0 = sqrt(sum |theta|^2 / N), fix_si_pnorms
        r = math.sqrt(sum(float((p ** 2).sum()) for p in ps) / n_filters)

        def fix(params):
            for p in params:
                p.mul_(r / torch.norm_except_dim(p, 2, 0))
        fix(ps)
        lr = ELR * sum(float((p ** 2).sum()) for p in ps)
    sgd = torch.optim.SGD(ps, lr=lr)
    # fused: elr * rho**2 with rho measured before the initial rescale (gamma_n + 8u) against the
    # host sum after it (rows within gamma_m + 7u, sums gamma_n twice): 3 gamma_n + gamma_m + 20u
    lr_rel = 0.0 if official else 3 * gamma(n) + gamma(m) + 20 * U
    assert abs(opt.lr - lr) <= lr_rel * lr
    # the undocumented consequence: every filter has individual ELR elr * N_filters (lr as above,
    # r**2 within gamma_n + 3u of rho**2 / N, one division)
    assert abs(opt.lr / r ** 2 - ELR * n_filters) <= (lr_rel + gamma(n) + 5 * U) * ELR * n_filters
    for _ in range(20):
        if not official:  # the fused run differs by rounding: each step from its state
            _copy_(ps, mine)
        _grad_step(model, opt, x, y)
        sgd.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        s, f, tan = _filter_scales(ps, lr, r)
        sgd.step()
        with torch.no_grad():
            fix(ps)
        diff = float((_flat(mine) - _flat(ps)).abs().max())
        # official_reductions: the official operations in the official order, bit for bit
        assert diff <= (0.0 if official else loop_tol(n, s, f, tan, m))
    rows = torch.cat([p.detach().reshape(p.shape[0], -1).norm(dim=1) for p in mine])
    # each filter rescaled to the optimizer's r (gamma_m/2 + 3u), which is within gamma_n + 10u of
    # this r; the row norms measured here: gamma_m/2 + u
    assert float((rows - r).abs().max()) <= (gamma(n) + gamma(m) + 14 * U) * r


def test_one_step_angle_is_t6():
    model = _convnet(width=2, eps=EXACT_SI_EPS)  # exactly SI: <g, theta> = 0 up to rounding
    x, y = _batch()
    groups = si_groups(model)
    params = [p for g in groups for p in g.params]
    n = sum(p.numel() for p in params)
    opt = SphereSGD(groups, ELR, track=True)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grad = _flat([p.grad for p in params])
    before = _flat(params).clone()
    opt.step()
    after = _flat(params)
    perp = after - (after @ before) / (before @ before) * before
    measured = math.atan2(float(perp.norm()), float(after @ before) / float(before.norm()))
    tan = math.tan(measured)
    # measured: the projection cancels the radial part of `after` (dot products within
    # gamma_n |after||before|), so |perp| is within (2 gamma_n + 5u)/sin + gamma_n/2 + u relative and
    # the radial part within gamma_n/cos + gamma_n/2 + 2u; the tracked angle (n-term norms and
    # <theta, d>, atan2, sin, asin) within (1 + tan) gamma_n + 14u
    rel = ((2 * gamma(n) + 5 * U) / math.sin(measured)
           + gamma(n) * (2 + tan + 1 / math.cos(measured)) + 18 * U)
    assert abs(float(opt.last_metrics["angle"]) - measured) <= rel * measured
    # T6: tan = elr * rho * |g| when <g, theta> = 0. The computed gradient's radial fraction cos_phi
    # (measured, plus gamma_n) changes tan by <= tan cos_phi / (1 - tan cos_phi) + cos_phi**2 relative;
    # rho is |theta| within gamma_n/2 + 3u, |g| measured within gamma_n/2 + u, lr two roundings
    cos_phi = abs(float(before @ grad)) / float(before.norm() * grad.norm()) + gamma(n)
    t6 = math.atan(ELR * opt.rho * float(grad.norm()))
    rel_t6 = rel + gamma(n) + 6 * U + tan * cos_phi / (1 - tan * cos_phi) + cos_phi ** 2
    assert abs(measured - t6) <= rel_t6 * t6


def test_tracking_does_not_change_the_step():
    model = _convnet(width=2)
    x, y = _batch()
    fast = SphereSGD(si_groups(model), ELR)
    tracked = SphereSGD(si_groups(model), ELR, track=True)
    ps = _trainable(model)
    n = sum(p.numel() for p in ps)
    for _ in range(5):
        for p in ps:
            p.grad = None
        F.cross_entropy(model(x), y).backward()
        start = [p.detach().clone() for p in ps]
        s, f, _ = _step_scales(ps, fast.lr, fast.rho)
        fast.step()
        after_fast = _flat(ps)
        _copy_(ps, start)
        tracked.step()
        # the same adds and rescale; the bound lets their reduction orders differ
        assert float((_flat(ps) - after_fast).abs().max()) <= step_tol(n, s, f)


def test_total_and_individual_coincide_for_one_group():
    model = _convnet(width=2)
    x, y = _batch()
    total = SphereSGD(si_groups(model, level="total"), ELR)
    individual = SphereSGD(si_groups(model, level="total"), ELR, constraint="individual")
    ps = _trainable(model)
    n = sum(p.numel() for p in ps)
    for _ in range(20):
        for p in ps:
            p.grad = None
        F.cross_entropy(model(x), y).backward()
        start = [p.detach().clone() for p in ps]
        s, f, _ = _step_scales(ps, total.lr, total.rho)
        total.step()
        after_total = _flat(ps)
        _copy_(ps, start)
        individual.step()
        # one sphere both ways: two rescales (step_tol) to targets that are measured norms of the
        # same n weights (gamma_n + 4u apart)
        tol = step_tol(n, s, f) + (gamma(n) + 4 * U) * f * s
        assert float((_flat(ps) - after_total).abs().max()) <= tol


def test_individual_keeps_every_group_norm():
    model = _convnet(width=2)
    groups = si_groups(model)
    norms0 = [float(_flat(g.params).norm()) for g in groups]
    opt = SphereSGD(groups, 0.5, constraint="individual")
    x, y = _batch()
    for _ in range(5):
        _grad_step(model, opt, x, y)
    # target: a measured norm (gamma_m/2 + 3u); the rescale (gamma_m/2 + 3u); measured here twice
    # (gamma_m/2 + u each); m = the group's size. Nothing accumulates: every step rescales to the
    # same target
    for g, n0 in zip(groups, norms0):
        m = sum(p.numel() for p in g.params)
        assert abs(float(_flat(g.params).norm()) - n0) <= (2 * gamma(m) + 8 * U) * n0


def test_radius_rescales_at_construction_and_direction_is_radius_free():
    models = [_convnet(width=2, eps=EXACT_SI_EPS) for _ in range(2)]  # exactly SI in float64
    x, y = _batch()
    groups = [si_groups(m) for m in models]
    opts = [SphereSGD(groups[0], 1e-3), SphereSGD(groups[1], 1e-3, radius=7.0)]
    ps = [[p for g in gs for p in g.params] for gs in groups]
    n = sum(p.numel() for p in ps[0])
    # the factor 7/|theta| (a measured norm: gamma_n/2 + 3u; quotient, product: 2u); measured here:
    # gamma_n/2 + u
    assert abs(float(_flat(ps[1]).norm()) - 7.0) <= (gamma(n) + 6 * U) * 7.0
    c = 7.0 / opts[0].rho
    for t in range(10):
        xb, yb = x[(t % 3) * 8:(t % 3) * 8 + 8], y[(t % 3) * 8:(t % 3) * 8 + 8]
        _copy_(ps[1], [c * p.detach() for p in ps[0]])  # the same direction at radius 7
        for model, opt in zip(models, opts):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
        lr = opts[0].lr
        theta, g_a = _flat(ps[0]), _flat([p.grad for p in ps[0]])
        g_b = _flat([p.grad for p in ps[1]])
        mismatch = float((c * g_b - g_a).norm())  # the network's SI in floating point
        nv, ng, nt = float((theta - lr * g_a).norm()), float(g_a.norm()), float(theta.norm())
        for opt in opts:
            opt.step()
        dirs = [_flat(p) / _flat(p).norm() for p in ps]
        # T5: v_b / c = theta - (lr_b / c**2) (c g_b) and lr_b / c**2 = lr_a within 8u, so the two v
        # differ by lr |mismatch| + 8u lr |g| + 5u (|theta| + lr |g|) (the scaling by c, products,
        # differences); a unit vector moves by <= 2 |dv| / |v|; the rescale and the normalisation
        # here: gamma_n + 6u per entry
        tol = 2 * (lr * mismatch + 8 * U * lr * ng + 5 * U * (nt + lr * ng)) / nv + gamma(n) + 6 * U
        assert float((dirs[0] - dirs[1]).abs().max()) <= tol


def test_state_dict_round_trip_resumes_identically():
    x, y = _batch()
    model = _convnet(width=2)
    opt = SphereSGD(si_groups(model), ELR)
    for _ in range(5):
        _grad_step(model, opt, x, y)
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opt.state_dict())
    for _ in range(5):
        _grad_step(model, opt, x, y)
    expected = _flat(model.parameters())

    other = _convnet(width=2, seed=5)
    other.load_state_dict(saved_model)
    opt2 = SphereSGD(si_groups(other), 3 * ELR, radius=2.0)  # wrong on purpose: the state overrides
    opt2.load_state_dict(saved_opt)
    assert opt2.rho == opt.rho and opt2.lr == opt.lr
    other.load_state_dict(saved_model)
    for _ in range(5):
        _grad_step(other, opt2, x, y)
    # the same operations in the same order from the same state: exact
    assert torch.equal(_flat(other.parameters()), expected)


def test_weight_decay_semantics_documented():
    lam = 0.3
    model = _convnet(width=2)
    x, y = _batch()
    ps = _trainable(model)
    n = sum(p.numel() for p in ps)
    rho = math.sqrt(sum(float((p.detach() ** 2).sum()) for p in ps))
    lr = ELR * rho ** 2
    decayed = SphereSGD(si_groups(model), ELR, weight_decay=lam, allow_nonstandard=True)
    plain = SphereSGD(si_groups(model), ELR / (1 - lr * lam))
    F.cross_entropy(model(x), y).backward()
    start = [p.detach().clone() for p in ps]
    s, f, _ = _step_scales(ps, plain.lr, plain.rho)
    g_max = float(_flat([p.grad for p in ps]).abs().max())
    decayed.step()
    after = _flat(ps)
    _copy_(ps, start)
    plain.step()
    # (1 - lr lam) theta - lr g is the plain v with lr' = lr / (1 - lr lam), scaled: the same
    # rescaled point. Rounding: two rescales (step_tol); the decayed v (g + lam theta, then
    # theta - lr (...)) 3u (|theta| + lr |g| + lr lam |theta|) more; lr' from this test's rho
    # (2 gamma_n + 12u from the optimizer's lr) through 1 - lr lam, then 4 roundings: relative eps
    eps = (lr * lam * (2 * gamma(n) + 12 * U) + 2 * U) / (1 - lr * lam) + 4 * U
    tol = step_tol(n, s, f) + f * (eps * plain.lr * g_max + 3 * U * s * (1 + lr * lam))
    assert float((_flat(ps) - after).abs().max()) <= tol


def test_non_si_group_trained_with_its_own_lr():
    model = _convnet(width=2)
    model.linear.requires_grad_(True)
    head0 = model.linear.weight.detach().clone()
    groups = si_groups(model) + [{"params": list(model.linear.parameters()), "si": False, "lr": 0.1}]
    opt = SphereSGD(groups, ELR)
    x, y = _batch()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    grad = model.linear.weight.grad.clone()
    expected = head0 - 0.1 * grad
    opt.step()
    # head0 - 0.1 g: a product and a difference on each side (torch may fuse them)
    assert bool(((model.linear.weight - expected).abs()
                 <= 2 * U * (head0.abs() + 0.1 * grad.abs())).all())


@pytest.mark.parametrize("kwargs, word", [
    ({"elr": -0.1}, "-0.1"), ({"elr": float("nan")}, "nan"), ({"constraint": "sphere"}, "'sphere'"),
    ({"momentum": 1.0}, "momentum"), ({"weight_decay": 5e-4}, "weight_decay=0.0005"),
    ({"radius": 0.0}, "radius"), ({"momentum": 1.5}, "1.5"),
    ({"momentum_mode": "nesterov"}, "'nesterov'"),
])
def test_sphere_sgd_rejects_bad_input(kwargs, word):
    model = _convnet()
    args = {"elr": ELR, **kwargs}
    with pytest.raises(ValueError, match=word.replace("(", r"\(").replace(".", r"\.")):
        SphereSGD(si_groups(model), **args)


def test_bad_inputs_elsewhere(tmp_path):
    with pytest.raises(ValueError, match="'mnist'"):
        load_data("mnist")
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_data("cifar10", root=tmp_path)
    with pytest.raises(ValueError, match="'1:2'"):
        parse_elrs("1:2")
    with pytest.raises(ValueError, match="-1"):
        parse_elrs("-1,2")
    with pytest.raises(ValueError, match="width"):
        ConvNetSI(width=0)
    with pytest.raises(ValueError, match="'tpu'"):
        train(elr=0.1, epochs=1, data="synthetic", device="tpu")
    with pytest.raises(ValueError, match="epochs"):
        train(elr=0.1, epochs=0, data="synthetic", width=1, progress_bar=False)
    # geomspace: 10 ** (log10(a) + k step), exponents of size <= 4 within 4u * 4 (log10, the
    # linspace product and sum), so values within ln(10) * 16u, plus u from the power
    np.testing.assert_allclose(parse_elrs("1e-4:1:5"), [1e-4, 1e-3, 1e-2, 1e-1, 1],
                               rtol=(16 * math.log(10) + 1) * U, atol=0)


# -- training, metrics, CLI ------------------------------------------------------------------------
def test_train_records_metrics_with_the_project_vocabulary(tmp_path):
    ds = train(elr=ELR, epochs=3, data="synthetic", width=2, batch_size=64, dtype="float64",
               record_every=2, eval_every=2, progress_bar=False)
    assert ds.sizes["epoch"] == 3 and ds.sizes["group"] == 4
    assert ds.sizes["step"] == math.ceil(3 * ds.attrs["steps_per_epoch"] / 2)
    for name in ("loss", "accuracy", "grad_norm", "angle", "si_norm", "cosine_to_init"):
        assert np.all(np.isfinite(ds[name].values)), name
    n = sum(p.numel() for p in _trainable(_convnet(width=2)))  # the same net: 1530 SI weights
    # after a rescale |theta| is within gamma_n/2 + 4u of rho; the recorded norm (per-group foreach
    # norms, squared, summed) within gamma_n/2 + 3u
    np.testing.assert_allclose(ds.si_norm, ds.attrs["rho"], rtol=gamma(n) + 8 * U, atol=0)
    # 4 quotients by their computed sum (gamma_3), then summed (gamma_3)
    np.testing.assert_allclose(ds.shares.sum("group"), 1.0, rtol=2 * gamma(4) + U, atol=0)
    # T7/T8: individual ELRs are elr / shares, and sum(1/individual_elr) = 1/elr. Both sides are
    # elr times rho**2 / sum(sq): the squared norms within gamma_n + 6u of |theta|**2, which is
    # within gamma_n + 8u of rho**2, and 6 roundings; the sum over 4 groups: gamma_4 more
    rtol = 2 * gamma(n) + 20 * U
    np.testing.assert_allclose(ds.individual_elr, ELR / ds.shares, rtol=rtol, atol=0)
    np.testing.assert_allclose((1 / ds.individual_elr).sum("group"), 1 / ELR,
                               rtol=rtol + gamma(4), atol=0)
    # T6 per step. Not a rounding bound: BatchNorm's eps (1e-5) makes the net SI only up to the
    # radial fraction cos_phi = <g, theta> / (|g||theta|) ~ eps / var of the gradient (1.1e-5 at
    # initialisation here), which moves tan(angle) by ~ tan cos_phi + cos_phi**2 / 2 relative
    # (tan <= ~1 at this ELR; measured at most 7.6e-6). 1e-4 allows cos_phi up to 1e-4 during
    # training; test_one_step_angle_is_t6 checks T6 to rounding on an exactly SI net
    np.testing.assert_allclose(np.tan(ds.step_angle), ELR * ds.step_grad_norm, rtol=1e-4, atol=0)
    assert np.isnan(ds.test_loss.values[0]) and np.isfinite(ds.test_loss.values[1:]).all()
    assert str(ds.regime.values) in ("convergence", "chaotic_equilibrium", "divergence")
    assert ds.random_loss > 0
    path = tmp_path / "run.nc"
    ds.to_netcdf(path)
    import xarray as xr
    back = xr.load_dataset(path)
    np.testing.assert_array_equal(back.loss.values, ds.loss.values)
    assert back.attrs["constraint"] == "total" and float(back.elr) == ELR


def test_train_is_reproducible_and_per_filter_records_its_elr():
    kw = {"elr": 0.05, "epochs": 1, "data": "synthetic", "width": 1, "batch_size": 64,
          "progress_bar": False}
    a, b = train(**kw), train(**kw)
    # the same operations in the same order in one process: exact
    np.testing.assert_array_equal(a.step_loss.values, b.step_loss.values)
    c = train(constraint="per-filter", **kw)
    assert c.attrs["filter_individual_elr"] == 0.05 * c.attrs["n_filters"]  # the same product


def test_classifier_labels_a_tiny_scan():
    ds = train(elr=30.0, epochs=4, data="synthetic", width=2, batch_size=64, progress_bar=False)
    # regime criteria, not rounding bounds: the divergent regime scrambles the direction every step
    assert float(ds.tail_loss) > 0.5 * float(ds.random_loss)
    assert np.degrees(float(ds.tail_angle)) > 60


def test_cli_train_and_scan(tmp_path, capsys):
    from toymodel.cli import main
    out = tmp_path / "run.nc"
    assert main(["train", "--data", "synthetic", "--width", "1", "--epochs", "1", "--elr", "0.01",
                 "--no-progress", "--out", str(out)]) == 0
    assert out.exists()
    scan = tmp_path / "scan.nc"
    assert main(["train-scan", "--data", "synthetic", "--width", "1", "--epochs", "1",
                 "--elrs", "1e-2:1:2", "--no-progress", "--out", str(scan)]) == 0
    import xarray as xr
    ds = xr.load_dataset(scan)
    assert ds.sizes["elr"] == 2 and ds.regime.dims == ("elr",)
    assert main(["train", "--elr", "0.01", "--data", "synthetic", "--out", "run.txt"]) == 2
    assert "run.txt" in capsys.readouterr().err


def test_per_filter_on_a_residual_stream_fixes_each_channel_across_the_stream():
    model = ResNet18SI(width=1, in_channels=1).double()
    groups = si_groups(model)
    opt = SphereSGD(groups, ELR, constraint="per-filter")
    x, y = _batch(n=16)
    for _ in range(3):
        _grad_step(model, opt, x, y)
    r = opt.param_groups[0]["target"]
    for g in groups:  # channel j of every tensor of a stream together has norm r
        rows = sum(p.detach().reshape(p.shape[0], -1).square().sum(1) for p in g.params).sqrt()
        # rescaled to r (m-term sums: gamma_m/2 + 3u), measured here (gamma_m/2 + u), m = the size
        # of a filter of the stream
        m = sum(p[0].numel() for p in g.params)
        np.testing.assert_allclose(rows.numpy(), r, rtol=gamma(m) + 4 * U, atol=0)
    assert opt.n_filters == sum(g.params[0].shape[0] for g in groups)


def test_cifar_reader_uses_the_torchvision_layout_without_torchvision(tmp_path):
    import pickle
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [0, 1, 9]}
        with open(base / name, "wb") as f:
            pickle.dump(batch, f)
    data = load_data("cifar10", root=tmp_path, dtype=torch.float64)
    assert data.x_train.shape == (15, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32)
    assert data.num_classes == 10 and data.y_test.tolist() == [0, 1, 9]
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        load_data("cifar100", root=tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="'cuda'"):
        train(elr=0.1, epochs=1, data="synthetic", device="cuda", progress_bar=False)


def test_official_reductions_only_for_the_official_modes():
    model = _convnet(width=2)
    with pytest.raises(ValueError, match="official_reductions"):
        SphereSGD(si_groups(model), ELR, constraint="individual", official_reductions=True)
    with pytest.raises(ValueError, match="official_reductions"):
        SphereSGD(si_groups(model), ELR, track=True, official_reductions=True)
