"""SphereAdam: Adam at a fixed ELR on the sphere (toymodel/bridge/sphere_adam.py).

Oracles: AdamSRT (whose step SphereAdam takes, with lr $\\tilde\\eta r_u/\\sqrt d$) followed by
the rescale and by AdamSRT's own order-1/order-2 rules applied to that rescale; `torch.optim.Adam`
for the non-SI groups; the closed form of the first step's angle. Tiny ConvNetSI (width 2),
float64, CPU.

Tolerances. Comparisons start from a common state every step (the optimizer's state is copied
into the oracle's before the step), so nothing compounds: every bound is one step's rounding,
derived where it is used (unit roundoff $u$ × operations × the scale of the values).
"""
from __future__ import annotations

import copy
import math
import os

import pytest

torch = pytest.importorskip("torch")
from torch.nn import functional as F
from torch.optim import lr_scheduler as S

from toymodel.bridge import AdamSRT, si_groups
from toymodel.bridge.constraints import Constraint
from toymodel.bridge.models import build_model
from toymodel.bridge.sphere_adam import SphereAdam

U = torch.finfo(torch.float64).eps / 2  # unit roundoff of float64, 2**-53
ELR = 0.05
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


def _batches(n=20, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, size, 1, 8, 8, generator=g, dtype=torch.float64)
    return list(zip(x, torch.randint(0, 10, (n, size), generator=g)))


def _backward(model, batch):
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(batch[0]), batch[1])
    loss.backward()
    return float(loss.detach())


def _rows(name, p):
    """The units of a single-tensor group as the rows of a matrix."""
    return p.detach().reshape(p.shape[0], -1) if name == "per-filter" else p.detach().reshape(1, -1)


def _si_tensors(model):
    return [g.params[0] for g in si_groups(model)]


# -- the invariants --------------------------------------------------------------------------------
@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_units_stay_on_their_radius_and_the_loss_decreases(constraint):
    model = _convnet()
    opt = SphereAdam(si_groups(model), ELR, constraint=constraint)
    ps = _si_tensors(model)
    targets = [g["target"] for g in opt.param_groups]
    batch = _batches(1)[0]  # one batch of random labels, fitted
    losses = []
    for _ in range(20):
        losses.append(_backward(model, batch))
        opt.step()
        for p, r in zip(ps, targets):
            if constraint == "total":
                norms, m = [math.sqrt(sum(float((q.detach() ** 2).sum()) for q in ps))], 1530
            else:
                norms, m = _rows(constraint, p).norm(dim=1).tolist(), _rows(constraint, p).shape[1]
            # rescaled to r (gamma_m/2 + 3u), measured here (gamma_m/2 + u): m entries per unit
            assert all(abs(n - r) <= (gamma(m) + 4 * U) * r for n in norms)
    assert losses[-1] < 0.5 * losses[0]
    assert opt.elrs == pytest.approx([ELR] * 4, rel=2 * U, abs=0)  # lr = elr * r, then / r


@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_first_step_turns_every_unit_by_the_elr(constraint):
    model = _convnet(exact_si=True)
    opt = SphereAdam(si_groups(model), ELR, constraint=constraint, eps=1e-3)
    _backward(model, _batches(1)[0])
    ps = _si_tensors(model)
    before = [p.detach().clone() for p in ps]
    grads = [p.grad.clone() for p in ps]
    opt.step()
    if constraint == "total":
        flat = [torch.cat([x.reshape(-1) for x in xs])[None] for xs in (before, ps, grads)]
        units = [tuple(flat)]
    else:
        units = [(_rows(constraint, a), _rows(constraint, b), _rows(constraint, g))
                 for a, b, g in zip(before, ps, grads)]
    for a, b, g in units:
        cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
        gn = g.norm(dim=1)
        # first step: m_hat = g, sqrt(v_hat) = |g_u|, the step eta r g/(|g|+eps) is tangent (an
        # exactly SI net), so tan(Delta) = elr |g|/(|g|+eps). The measured cosine carries a dot
        # product and two norms of m terms (3 gamma_m + 4u) and the points their step's rounding
        # (u r per entry, below gamma_m): acos turns an error dc into dc / sin(Delta) (twice, for
        # the mean value theorem's point); want carries gamma_m + 4u relative (|g| and atan)
        want = torch.atan(ELR * gn / (gn + 1e-3))
        got = torch.acos(cos.clamp(max=1))
        m = a.shape[1]
        tol = 2 * (4 * gamma(m) + 4 * U) / want.sin() + (gamma(m) + 4 * U) * want
        assert bool(((got - want).abs() <= tol).all())
        assert bool((want > 0.03).all())  # the elr itself, up to |g|/(|g|+eps): a real turn


# -- AdamSRT + rescale, with AdamSRT's rules applied to the rescale --------------------------------
@pytest.mark.parametrize("constraint", CONSTRAINTS)
def test_equals_adamsrt_then_rescale_with_its_moment_rules(constraint):
    """One unit per AdamSRT channel: per-filter = ``channel_wise`` on single-tensor groups,
    individual and total (one tensor) = ``channel_dims=()``. With $\\epsilon=0$ (AdamSRT puts
    $\\epsilon$ also in its rescale denominators), AdamSRT's step + the rescale $\\theta_+=k\\theta'$
    + $m/k$, $v/k^2$ (AdamSRT's own rules for a radius change by $k$) is SphereAdam's step."""
    model = _convnet()
    ps = _si_tensors(model)[-1:] if constraint == "total" else _si_tensors(model)
    opt = SphereAdam([{"params": [p]} for p in ps], ELR, eps=0.0, constraint=constraint,
                     betas=(0.8, 0.95))
    layout = {"channel_wise": True} if constraint == "per-filter" else {"channel_dims": ()}
    srt = AdamSRT([{"params": [p], "lr": g["lr"] / math.sqrt(_rows(constraint, p).shape[1])}
                   for p, g in zip(ps, opt.param_groups)], betas=(0.8, 0.95), eps=0.0, **layout)
    for t, batch in enumerate(_batches()):
        _backward(model, batch)
        start = [p.detach().clone() for p in ps]
        state = copy.deepcopy(opt.state_dict()["state"])
        opt.step()
        ours = [(p.detach().clone(), opt.state[p]["exp_avg"], opt.state[p]["exp_avg_sq"])
                for p in ps]
        with torch.no_grad():
            for p, s0, k in zip(ps, start, range(len(ps))):
                p.copy_(s0)
                if t:  # the common state: SphereAdam's, in AdamSRT's layout
                    srt.state[p]["exp_avg"].copy_(state[k]["exp_avg"])
                    srt.state[p]["exp_avg_sq"].view(-1).copy_(state[k]["exp_avg_sq"].view(-1))
            srt.step()
            for p, g, (th, m, v) in zip(ps, opt.param_groups, ours):
                shape = (-1,) + (1,) * (p.dim() - 1) if constraint == "per-filter" else ()
                k = (g["target"] / _rows(constraint, p).norm(dim=1)).view(shape)
                p.mul_(k)
                m_ref = srt.state[p]["exp_avg"] / k
                v_ref = srt.state[p]["exp_avg_sq"].view(v.shape) / k.reshape(v.shape) ** 2
                d = _rows(constraint, p).shape[1]
                # one step of two implementations from one state: AdamSRT's chain (step, moments,
                # rescale, transport: 2 gamma_{4d+20}, tests/test_sphere_optimizers.py), the
                # rescale here and the division by k (gamma_d + 4u): 2 gamma_{5d+30} relative to
                # the scale of each quantity (r for theta, |m_u| and v_u for the moments)
                tol = 2 * gamma(5 * d + 30)
                assert float((p - th).abs().max()) <= tol * g["target"]
                assert float((m_ref - m).abs().max()) <= tol * float(m.norm())
                assert float((v_ref - v).abs().max()) <= tol * float(v.max())
                p.copy_(th)
    assert srt.state[ps[0]]["step"] == 20


def test_radius_does_not_change_the_directions_when_eps_is_zero():
    """Fixed ELR: from the same directions and the same unit-sphere moments ($\\tilde m=rm$,
    $\\tilde v=r^2v$) and gradients ($\\tilde g=rg$, an SI loss), a step at radius 7 moves the
    directions as a step at radius 1 (T5 for Adam; $\\epsilon=0$ because it acts as $\\epsilon r$).
    The gradients are the net's at radius 1, divided by 7 (exact for an SI loss)."""
    model = _convnet()
    ones = _si_tensors(model)
    sevens = [p.detach().clone().requires_grad_() for p in ones]
    opts = [SphereAdam([{"params": [p]} for p in ps], ELR, eps=0.0, radius=r)
            for ps, r in ((ones, 1.0), (sevens, 7.0))]
    for batch in _batches(10):
        with torch.no_grad():  # the common state, scaled to radius 7
            for a, b in zip(ones, sevens):
                b.copy_(7 * a)
                if opts[0].state[a]:
                    sa, sb = opts[0].state[a], opts[1].state[b]
                    sb["exp_avg"].copy_(sa["exp_avg"] / 7)
                    sb["exp_avg_sq"].copy_(sa["exp_avg_sq"] / 49)
        _backward(model, batch)
        for a, b in zip(ones, sevens):
            b.grad = a.grad / 7
        opts[0].step()
        opts[1].step()
        # each side: the scaled inputs (u each), the moments, root, bias corrections, division and
        # step (~10u of the step), the rescale (gamma_n/2 + 3u); twice; coordinates <= 1
        tol = 2 * (gamma(1530) + 14 * U)
        assert max(float((a.detach() - b.detach() / 7).abs().max())
                   for a, b in zip(ones, sevens)) <= tol
    assert float(_flat(ones).norm()) == pytest.approx(1.0, abs=gamma(1530) + 8 * U)


def _flat(ps):
    return torch.cat([p.detach().reshape(-1) for p in ps])


# -- torch conventions -----------------------------------------------------------------------------
def test_a_non_si_group_is_torch_adam():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, generator=gen, dtype=torch.float64).requires_grad_()
    w_ref = w.detach().clone().requires_grad_()
    si = torch.randn(5, 2, generator=gen, dtype=torch.float64).requires_grad_()
    opt = SphereAdam([{"params": [si]}, {"params": [w], "si": False, "lr": 0.01,
                                         "betas": (0.8, 0.9), "eps": 1e-6}], ELR)
    ref = torch.optim.Adam([w_ref], lr=0.01, betas=(0.8, 0.9), eps=1e-6)
    for _ in range(10):
        g = torch.randn(4, 3, generator=gen, dtype=torch.float64)
        w.grad, w_ref.grad = g.clone(), g.clone()
        si.grad = torch.randn(5, 2, generator=gen, dtype=torch.float64)
        opt.step()
        ref.step()
    # fixed gradients: no feedback; each step ~10 roundings of |w| + lr |step| (|step| <~ 1 /
    # sqrt(1 - beta2)), on each side, 10 steps: 200 u (|w| + 10 lr)
    w, w_ref = w.detach(), w_ref.detach()
    assert float((w - w_ref).abs().max()) <= 200 * U * (float(w_ref.abs().max()) + 0.1)


def _train(model, opt, sched, batches):
    for batch in batches:
        opt.zero_grad()
        F.cross_entropy(model(batch[0]), batch[1]).backward()
        opt.step()
        sched.step()


def test_state_dict_round_trip_resumes_bit_for_bit():
    def build(model, **kw):
        model.linear.requires_grad_(True)
        groups = si_groups(model) + [{"params": [model.linear.weight], "si": False, "lr": 0.01}]
        opt = SphereAdam(groups, kw.pop("elr", ELR), constraint=kw.pop("constraint", "per-filter"),
                         **kw)
        return opt, S.StepLR(opt, step_size=2, gamma=0.5)

    batches = _batches(6)
    model = _convnet()
    opt, sched = build(model)
    _train(model, opt, sched, batches[:3])
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), sched.state_dict()))
    elr_saved = opt.elr
    _train(model, opt, sched, batches[3:])
    other = _convnet(seed=5)
    opt2, sched2 = build(other, elr=1.0, radius=3.0, constraint="total")  # the state overrides
    other.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    assert opt2.constraint.name == "per-filter" and opt2.elr == elr_saved
    _train(other, opt2, sched2, batches[3:])
    # the same operations in the same order from the same state: exact
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
    assert opt2.elr == opt.elr
    # three StepLR halvings of lr = elr r, then / r: five roundings
    assert opt.elr == pytest.approx(ELR / 8, rel=5 * U, abs=0)


def test_closure_zero_grad_and_missing_grads():
    model = _convnet()
    opt = SphereAdam(si_groups(model), ELR)
    ps = _si_tensors(model)
    batch = _batches(1)[0]

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(batch[0]), batch[1])
        loss.backward()
        assert torch.is_grad_enabled()
        return loss

    with torch.no_grad():
        loss = opt.step(closure)
    assert loss.requires_grad and all(opt.state[p]["step"] == 1 for p in ps)
    # a tensor without a gradient counts as a zero gradient (the moments belong to its unit):
    # here its own unit ("individual"), whose v_u decays by beta2 with no new term, then the
    # rescale ratio |theta|^2/|theta_+|^2 = 1 within 2 gamma_m + 14u (two norms on the sphere)
    ind = SphereAdam(si_groups(model), ELR, constraint="individual")
    for t in range(2):
        _backward(model, batch)
        if t:
            ps[2].grad = None
            v_before = ind.state[ps[2]]["exp_avg_sq"].clone()
            theta_before = ps[2].detach().clone()
        ind.step()
    m = ps[2].numel()
    v = ind.state[ps[2]]["exp_avg_sq"]
    assert abs(float(v - 0.999 * v_before)) <= (2 * gamma(m) + 16 * U) * float(v)
    assert ind.state[ps[2]]["step"] == 2 and not torch.equal(ps[2].detach(), theta_before)
    # zero_grad(set_to_none) on a fresh optimizer: m = v = 0, the step 0 / (0 + eps) = 0: only
    # the rescale, by rho / |theta| = 1 up to rounding (gamma_n + 4u)
    for set_to_none in (True, False):
        fresh = SphereAdam(si_groups(model), ELR)
        _backward(model, batch)
        fresh.zero_grad(set_to_none=set_to_none)
        before = [p.detach().clone() for p in ps]
        fresh.step()
        assert max(float((a - p.detach()).abs().max()) for a, p in zip(before, ps)) <= (
            gamma(1530) + 4 * U) * max(float(a.abs().max()) for a in before)


class _NoExpand(Constraint):
    name = "no-expand"


@pytest.mark.parametrize("kwargs, words", [
    ({"elr": 0.0}, ["elr", "0.0"]), ({"elr": float("nan")}, ["elr", "nan"]),
    ({"betas": (1.0, 0.9)}, ["betas[0]", "1.0"]), ({"betas": (0.9, -0.1)}, ["betas[1]", "-0.1"]),
    ({"betas": 0.9}, ["betas", "0.9"]), ({"eps": -1e-8}, ["eps", "-1e-08"]),
    ({"constraint": "sphere"}, ["constraint", "'sphere'"]),
    ({"constraint": _NoExpand()}, ["expand"]), ({"radius": -1.0}, ["radius", "-1.0"]),
])
def test_bad_arguments_are_named(kwargs, words):
    args = {"elr": ELR, **kwargs}
    with pytest.raises(ValueError) as err:
        SphereAdam(si_groups(_convnet()), **args)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_bad_groups_are_named():
    model = _convnet()
    dicts = [g.as_param_group() for g in si_groups(model)]
    with pytest.raises(ValueError, match=r"param_groups\[0\].*'lr'"):
        SphereAdam([{**dicts[0], "lr": 0.1}] + dicts[1:], ELR)
    with pytest.raises(ValueError, match=r"param_groups\[1\].*betas\[1\]"):
        SphereAdam([dicts[0], {**dicts[1], "betas": (0.9, 1.5)}] + dicts[2:], ELR)
    opt = SphereAdam(dicts, ELR)
    with pytest.raises(ValueError, match="'si': False"):
        opt.add_param_group({"params": [model.linear.weight], "lr": 0.1})
    opt.param_groups[1]["betas"] = (0.5, 0.999)  # the SI groups share the second moment's units
    _backward(model, _batches(1)[0])
    with pytest.raises(ValueError, match="share betas and eps"):
        opt.step()
