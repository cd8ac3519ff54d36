"""SGDMRT, AdamSRT and AdamS against the update rules of Roburin et al. (arXiv 2006.13382).

The oracle is a plain loop over channels written from the paper's geometric form of the rules
(docs/sphere_optimizers.md), sharing no code with `toymodel.bridge.sphere_optim`: per channel
$\\theta_c\\in\\mathbb R^d$ (a row of ``p.reshape(C, -1)``, or a single entry for tensors not
handled channel-wise), Python floats for the scalars, unit vectors $u=\\theta/\\|\\theta\\|$,
the transport $\\Gamma(m)=\\langle u,u'\\rangle m-\\langle m,u'\\rangle u$ and the rescale
factors written out separately. The oracle can switch rescaling or transport off: those mutants
must be told apart from the optimisers by a wide margin, so the step-for-step tests would fail if
the code dropped either.

Tolerances. Every comparison with the oracle starts from a common state (the optimiser's state
before the step), so bounds do not compound over the 20 steps; they are worst-case rounding
bounds (`step_tol`, Higham's $\\gamma_n$), not measured errors. Exact equality is asserted only
where both sides run the same operations in the same order.
"""
from __future__ import annotations

import copy
import math
import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from toymodel.bridge.sphere_optim import SGDMRT, AdamS, AdamSRT  # noqa: E402

torch.set_num_threads(1)  # tiny nets: one thread is fastest, and the machine is shared
# the authors' code indexes tensors with a list (deprecated since torch 2.9): ours must be silent
pytestmark = pytest.mark.filterwarnings("error")

U = torch.finfo(torch.float64).eps / 2  # unit roundoff of float64, 2**-53
U32 = torch.finfo(torch.float32).eps / 2
STEPS = 20
CLASSES = [AdamSRT, AdamS, SGDMRT]


def gamma(n, u=U):
    """Higham's $\\gamma_n=nu/(1-nu)$: $n$ rounded operations in a chain (a sum of $n$ terms in
    any order) give a relative error at most $\\gamma_n$ (Accuracy and Stability of Numerical
    Algorithms, 2002, §3.1)."""
    return n * u / (1 - n * u)


def step_tol(d, u=U):
    """Normwise bound on the difference between two float implementations of one step of a
    channel of size ``d`` from the same state.

    The longest chain: a channel dot product ($d$ terms, $\\gamma_d$) enters the second moment, and
    three more (norms, $\\langle\\theta,\\theta'\\rangle$, $\\langle m,\\theta'\\rangle$) enter the
    rescale and the transport, each bounded by Cauchy-Schwarz by $\\gamma_d$ times the channel's
    norms; about 20 further rounded operations (moment updates, bias corrections, sqrt, the step's
    division and product, the rescale factor, the transport's products and quotient), some of
    them on $\\theta'$ and $m'$ that already carry the step's error: at most $\\gamma_{4d+20}$ per
    side relative to the norms of the operands, twice for two independent implementations.
    Compared with the norms of the operands (`_assert_close`), which are $O(1)$ here."""
    return 2 * gamma(4 * d + 20, u)


def test_step_tolerance_meets_the_contract():
    # the largest channel of the test net: conv2, 3 * 3 * 3 = 27 entries
    assert step_tol(27) < 1e-12


def _assert_close(got, want, tol, scale, what):
    err = (got - want).abs().max().item()
    assert err <= tol * scale, f"{what}: |diff| = {err:.3g} > {tol:.3g} * {scale:.3g}"


# -- the oracle: per channel, from the paper's equations ----------------------------------------
def _rows(t, layout):
    """Channel ``c`` is row ``c``: output channels (``"channel"``) or entries (``"entry"``)."""
    return t.reshape(t.shape[0], -1) if layout == "channel" else t.reshape(-1, 1)


def _norm(a):
    return math.sqrt(float(a @ a))


def oracle_adam(theta, grad, m, v, t, *, lr, betas, eps, weight_decay, layout, rt=True,
                rescale=True, transport=True):
    """One step of AdamSRT (``rt=True``) or AdamS on one tensor; ``v`` has one entry per channel.
    Returns ``(theta', m', v')`` shaped like the inputs."""
    b1, b2 = betas
    X, G, M = _rows(theta, layout), _rows(grad, layout), _rows(m, layout)
    V = v.reshape(-1)
    n, d = X.shape
    X_new, M_new, V_new = torch.empty_like(X), torch.empty_like(M), torch.empty_like(V)
    for c in range(n):
        x, g = X[c], G[c] + weight_decay * X[c]
        mc = b1 * M[c] + (1 - b1) * g
        vc = b2 * float(V[c]) + (1 - b2) * float(g @ g)  # squared norm of the channel's gradient
        m_hat, v_hat = mc / (1 - b1 ** t), vc / (1 - b2 ** t)
        x_new = x - lr * math.sqrt(d) * m_hat / (math.sqrt(v_hat) + eps)
        if rt and d > 1:
            r, r_new = _norm(x), _norm(x_new)
            u, u_new = x / r, x_new / r_new
            den = r_new ** 2 + eps  # the authors put eps here too
            if transport:  # Gamma(m): the part along u' is removed, u turned into u'
                mc = float(u @ u_new) * mc - float(mc @ u_new) * u
            if rescale:  # m ~ 1/|theta| and v ~ 1/|theta|^2: follow the radius
                mc = (r * r_new / den) * mc
                vc = vc * r ** 2 / den
        X_new[c], M_new[c], V_new[c] = x_new, mc, vc
    return X_new.reshape(theta.shape), M_new.reshape(m.shape), V_new.reshape(v.shape)


def oracle_sgdm(theta, grad, buf, *, lr, momentum, dampening, weight_decay, layout,
                rescale=True, transport=True):
    """One step of SGDMRT on one tensor. Returns ``(theta', buf')``."""
    X, G, B = _rows(theta, layout), _rows(grad, layout), _rows(buf, layout)
    n, d = X.shape
    X_new, B_new = torch.empty_like(X), torch.empty_like(B)
    for c in range(n):
        x = X[c]
        b = momentum * B[c] + (1 - dampening) * (G[c] + weight_decay * x)
        x_new = x - lr * b
        if d > 1:
            r, r_new = _norm(x), _norm(x_new)
            u, u_new = x / r, x_new / r_new
            if transport:
                b = float(u @ u_new) * b - float(b @ u_new) * u
            if rescale:
                b = (r / r_new) * b
        X_new[c], B_new[c] = x_new, b
    return X_new.reshape(theta.shape), B_new.reshape(buf.shape)


# -- problems -----------------------------------------------------------------------------------
class TinyConvBN(nn.Module):
    """Two bias-free convolutions, each followed by BatchNorm without affine (scale invariant per
    output channel), and a linear head (not scale invariant)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(3, affine=False)
        self.conv2 = nn.Conv2d(3, 3, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(3, affine=False)
        self.head = nn.Linear(3 * 2 * 2, 3)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return self.head(torch.flatten(F.relu(self.bn2(self.conv2(x))), 1))


def _net(dtype=torch.float64):
    torch.manual_seed(0)
    return TinyConvBN().to(dtype)


def _batches(n=STEPS, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 2, 6, 6, generator=g, dtype=dtype),
             torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


def _groups(model, **si_options):
    """The authors' convention: the convolutions channel-wise, the head plain."""
    convs = [model.conv1.weight, model.conv2.weight]
    return [{"params": convs, "channel_wise": True, **si_options},
            {"params": list(model.head.parameters())}]


def _layouts(model):
    return {model.conv1.weight: "channel", model.conv2.weight: "channel",
            model.head.weight: "entry", model.head.bias: "entry"}


def _backward(model, batch):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(batch[0]), batch[1]).backward()


def _rotating_weight():
    """Two channels of size 12, each far (about 2.6 rad) from its target: Adam's steps turn each
    channel through a large angle, so the moments must follow the rotation."""
    g = torch.Generator().manual_seed(2)
    target = F.normalize(torch.randn(2, 12, generator=g, dtype=torch.float64), dim=1)
    start = -target + 0.5 * torch.randn(2, 12, generator=g, dtype=torch.float64)
    return nn.Parameter(start.reshape(2, 3, 2, 2).clone()), target


def _rotating_loss(w, target):
    # -cos(angle to the target), per channel: invariant to the scale of each channel
    return -(F.normalize(w.reshape(2, -1), dim=1) * target).sum()


# -- step for step against the oracle -----------------------------------------------------------
ADAM = dict(lr=0.02, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-3)
SGDM = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=1e-3)


@pytest.mark.parametrize("cls, rt", [(AdamSRT, True), (AdamS, False)])
def test_adam_variants_follow_the_published_rule_step_for_step(cls, rt):
    model = _net()
    opt = cls(_groups(model), **ADAM)
    layouts = _layouts(model)
    for t, batch in enumerate(_batches(), start=1):
        _backward(model, batch)
        before = {}
        for p in layouts:
            s = opt.state[p]
            m = s["exp_avg"].clone() if s else torch.zeros_like(p)
            v = s["exp_avg_sq"].clone() if s else torch.zeros(_rows(p, layouts[p]).shape[0],
                                                              dtype=p.dtype)
            before[p] = (p.detach().clone(), p.grad.clone(), m, v)
        opt.step()
        for p, layout in layouts.items():
            x, g, m, v = before[p]
            x_ref, m_ref, v_ref = oracle_adam(x, g, m, v.reshape(-1), t, **ADAM, layout=layout,
                                              rt=rt)
            s = opt.state[p]
            assert s["step"] == t
            d = _rows(x, layout).shape[1]
            tol = step_tol(d)
            _assert_close(p.detach(), x_ref, tol, x.norm() + (x - x_ref).norm(), f"theta t={t}")
            _assert_close(s["exp_avg"], m_ref, tol, m.norm() + g.norm() + m_ref.norm(),
                          f"m t={t}")
            # v and every factor applied to it are positive: a relative bound per channel
            v_got = s["exp_avg_sq"].reshape(-1)
            assert v_got.numel() == _rows(x, layout).shape[0]  # one scalar per channel
            assert ((v_got - v_ref).abs() <= tol * v_ref).all(), f"v t={t}"


def test_sgdmrt_follows_the_published_rule_step_for_step():
    model = _net()
    opt = SGDMRT(_groups(model), **SGDM)
    layouts = _layouts(model)
    for t, batch in enumerate(_batches(), start=1):
        _backward(model, batch)
        before = {}
        for p in layouts:
            s = opt.state[p]
            b = s["momentum_buffer"].clone() if s else torch.zeros_like(p)
            before[p] = (p.detach().clone(), p.grad.clone(), b)
        opt.step()
        for p, layout in layouts.items():
            x, g, b = before[p]
            x_ref, b_ref = oracle_sgdm(x, g, b, **SGDM, layout=layout)
            tol = step_tol(_rows(x, layout).shape[1])
            _assert_close(p.detach(), x_ref, tol, x.norm() + (x - x_ref).norm(), f"theta t={t}")
            _assert_close(opt.state[p]["momentum_buffer"], b_ref, tol,
                          b.norm() + g.norm() + b_ref.norm(), f"buffer t={t}")


# -- the rule matters: mutants are told apart ---------------------------------------------------
def _max_oracle_gap(opt_cls, options, steps, **mutation):
    """Largest one-step gap, from a common state, between the optimiser and a (mutated) oracle
    on the rotating problem, relative to the norms the tolerance uses."""
    w, target = _rotating_weight()
    opt = opt_cls([w], channel_wise=True, **options)
    gap = 0.0
    for t in range(1, steps + 1):
        w.grad = None
        _rotating_loss(w, target).backward()
        x, g = w.detach().clone(), w.grad.clone()
        s = opt.state[w]
        if opt_cls is SGDMRT:
            b = s["momentum_buffer"].clone() if s else torch.zeros_like(w)
            opt.step()
            x_ref, b_ref = oracle_sgdm(x, g, b, **options, layout="channel", **mutation)
            scale = b.norm() + g.norm() + b_ref.norm()
            gap = max(gap, ((opt.state[w]["momentum_buffer"] - b_ref).abs().max() / scale).item())
        else:
            m = s["exp_avg"].clone() if s else torch.zeros_like(w)
            v = s["exp_avg_sq"].reshape(-1).clone() if s else torch.zeros(2, dtype=w.dtype)
            opt.step()
            x_ref, m_ref, v_ref = oracle_adam(x, g, m, v, t, **options, layout="channel",
                                              **mutation)
            scale = m.norm() + g.norm() + m_ref.norm()
            gap = max(gap, ((opt.state[w]["exp_avg"] - m_ref).abs().max() / scale).item(),
                      ((opt.state[w]["exp_avg_sq"].reshape(-1) - v_ref).abs() / v_ref).max().item())
        gap = max(gap, ((w.detach() - x_ref).abs().max() / (x.norm() + (x - x_ref).norm())).item())
    return gap


ROT_ADAM = dict(lr=0.05, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0)
ROT_SGDM = dict(lr=0.5, momentum=0.9, dampening=0.0, weight_decay=0.0)


@pytest.mark.parametrize("opt_cls, options, mutation", [
    (AdamSRT, ROT_ADAM, {}),
    (AdamSRT, ROT_ADAM, {"transport": False}),
    (AdamSRT, ROT_ADAM, {"rescale": False}),
    (AdamSRT, ROT_ADAM, {"rt": False}),
    (SGDMRT, ROT_SGDM, {}),
    (SGDMRT, ROT_SGDM, {"transport": False}),
    (SGDMRT, ROT_SGDM, {"rescale": False}),
], ids=["adamsrt", "adamsrt-no-transport", "adamsrt-no-rescale", "adamsrt-as-adams",
        "sgdmrt", "sgdmrt-no-transport", "sgdmrt-no-rescale"])
def test_oracle_without_rescale_or_transport_is_told_apart(opt_cls, options, mutation):
    gap = _max_oracle_gap(opt_cls, options, steps=5, **mutation)
    if not mutation:
        assert gap <= step_tol(12)
    else:
        # a mutant misses by more than 1e-4 (measured: 9e-3 to 1e-1), 1e10 times the tolerance
        assert gap > 1e-4, gap


def test_adamsrt_and_adams_part_after_the_first_step_on_a_rotating_problem():
    runs = {}
    for cls in (AdamSRT, AdamS):
        w, target = _rotating_weight()
        opt = cls([w], channel_wise=True, lr=0.05, betas=(0.9, 0.99))
        trace = []
        for _ in range(5):
            opt.zero_grad()
            _rotating_loss(w, target).backward()
            opt.step()
            trace.append(w.detach().clone())
        runs[cls] = trace
    # the first step is the same computation (the transport acts on the moments only)
    assert torch.equal(runs[AdamSRT][0], runs[AdamS][0])
    rel = (runs[AdamSRT][-1] - runs[AdamS][-1]).norm() / runs[AdamS][-1].norm()
    assert rel > 1e-3, rel


def test_sgdmrt_parts_from_plain_momentum_on_a_rotating_problem():
    runs = {}
    for channel_wise in (True, False):
        w, target = _rotating_weight()
        opt = SGDMRT([w], channel_wise=channel_wise, lr=0.5, momentum=0.9)
        for _ in range(5):
            opt.zero_grad()
            _rotating_loss(w, target).backward()
            opt.step()
        runs[channel_wise] = w.detach().clone()
    assert (runs[True] - runs[False]).norm() / runs[False].norm() > 1e-3


# -- geometry -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [AdamSRT, AdamS])
def test_first_adam_step_moves_each_channel_by_lr_sqrt_d(cls):
    # first step: m_hat = g, v_hat = |g_c|^2, so the step is lr sqrt(d) g_c / (|g_c| + eps)
    w, target = _rotating_weight()
    opt = cls([w], channel_wise=True, lr=0.01, eps=0.0)
    _rotating_loss(w, target).backward()
    before = w.detach().reshape(2, -1).clone()
    opt.step()
    moved = (w.detach().reshape(2, -1) - before).norm(dim=1)
    # |g_c| and the moved distance are each a d = 12 term sum (gamma_12), with ~10 rounded
    # operations in between: gamma_40 relative
    torch.testing.assert_close(moved, torch.full_like(moved, 0.01 * math.sqrt(12)),
                               rtol=gamma(40), atol=0)


@pytest.mark.parametrize("cls, key, options", [(AdamSRT, "exp_avg", ROT_ADAM),
                                               (SGDMRT, "momentum_buffer", ROT_SGDM)])
def test_transported_moment_is_tangent_at_the_new_point(cls, key, options):
    w, target = _rotating_weight()
    opt = cls([w], channel_wise=True, **options)
    for _ in range(5):
        opt.zero_grad()
        _rotating_loss(w, target).backward()
        opt.step()
        m, x = opt.state[w][key].reshape(2, -1), w.detach().reshape(2, -1)
        # <m', theta'> = (<x,x'><m,x'> - <m,x'><x,x'>) / (|x'|^2 + eps) is zero in exact
        # arithmetic, eps or not; its rounding: three d = 12 term dot products in the transport
        # and one here, each within gamma_12 of |m| |theta'| (Cauchy-Schwarz), and ~10 products
        # and quotients: gamma_60 relative to |m'| |theta'|
        cos = (m * x).sum(1) / (m.norm(dim=1) * x.norm(dim=1))
        assert cos.abs().max() <= gamma(60), cos


# -- layouts ------------------------------------------------------------------------------------
def _run_fixed_grads(cls, shape, transform, grads, **options):
    """``cls`` on a tensor of ``shape`` fed the given gradients; returns the final tensor."""
    g = torch.Generator().manual_seed(3)
    w = nn.Parameter(transform(torch.randn(shape, generator=g, dtype=torch.float64)).clone())
    opt = cls([w], **options)
    for grad in grads:
        w.grad = transform(grad).clone()
        opt.step()
    return w.detach()


@pytest.mark.parametrize("cls", [AdamSRT, SGDMRT])
@pytest.mark.parametrize("dims, transform", [
    ((1,), lambda t: t.transpose(0, 1).contiguous()),
    ((-3,), lambda t: t),
    ((0, 1), lambda t: t.reshape(12, 5)),
    ((), lambda t: t.reshape(1, -1)),
], ids=["dim1", "negative", "two-dims", "layernorm"])
def test_channel_dims_is_a_channel_layout(cls, dims, transform):
    # channel_dims on a (3, 4, 5) tensor == channel_wise on the tensor laid out as (channels, d)
    shape = (3, 4, 5) if dims != (1,) else (4, 3, 5)
    g = torch.Generator().manual_seed(4)
    grads = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(6)]
    options = dict(lr=0.01) if cls is AdamSRT else dict(lr=0.1, momentum=0.9)
    got = _run_fixed_grads(cls, shape, lambda t: t, grads, channel_dims=dims, **options)
    want = _run_fixed_grads(cls, shape, transform, grads, channel_wise=True, **options)
    want = want.reshape(got.shape) if dims != (1,) else want.transpose(0, 1)
    # same formulas, sums taken in another memory order: 6 steps of step_tol (each step's
    # error is carried to the next, growth factor ~1 over 6 small steps), d <= 60
    _assert_close(got, want, 6 * step_tol(60), got.norm(), "layout")


@pytest.mark.parametrize("cls", CLASSES)
def test_a_group_marked_not_si_is_plain(cls):
    # "si": False (SphereSGD's convention) overrides channel_wise: the same operations as the
    # plain layout, so bitwise equal
    g = torch.Generator().manual_seed(7)
    grads = [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(4)]
    a = _run_fixed_grads(cls, (3, 4), lambda t: t, grads, channel_wise=False, lr=0.01)
    w = nn.Parameter(torch.randn(3, 4, generator=torch.Generator().manual_seed(3),
                                 dtype=torch.float64))
    opt = cls([{"params": [w], "si": False, "channel_dims": (7,)}], channel_wise=True, lr=0.01)
    for grad in grads:
        w.grad = grad.clone()
        opt.step()
    assert torch.equal(w, a)
    with pytest.raises(TypeError, match="si"):
        cls([{"params": [w], "si": "no"}])


@pytest.mark.parametrize("make_ours, make_torch", [
    (lambda p: AdamSRT(p, lr=0.01, betas=(0.8, 0.9), weight_decay=1e-2),
     lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.9), weight_decay=1e-2, foreach=False)),
    (lambda p: AdamS(p, lr=0.01, eps=1e-3),
     lambda p: torch.optim.Adam(p, lr=0.01, eps=1e-3, foreach=False)),
    (lambda p: SGDMRT(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2, foreach=False)),
], ids=["adamsrt", "adams", "sgdmrt"])
def test_tensors_not_handled_channel_wise_are_plain_adam_or_sgd(make_ours, make_torch):
    g = torch.Generator().manual_seed(5)
    start = torch.randn(4, 3, generator=g, dtype=torch.float64)
    grads = [torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(STEPS)]
    a, b = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    ours, theirs = make_ours([a]), make_torch([b])
    for grad in grads:
        a.grad, b.grad = grad.clone(), grad.clone()
        ours.step()
        theirs.step()
    # elementwise formulas, ~12 rounded operations per step in another order; the gradients do
    # not depend on the parameters, so the per-step errors add up (weight decay feeds back a
    # factor 1 + lr * wd ~ 1): STEPS * 2 * gamma_12, relative to the scale of the entries
    _assert_close(a.detach(), b.detach(), STEPS * 2 * gamma(12), start.abs().max() + 1, "plain")


# -- torch conventions --------------------------------------------------------------------------
def _make(cls, params, **extra):
    options = dict(ADAM) if cls is not SGDMRT else dict(SGDM)
    options.update(extra)
    return cls(params, **options)


@pytest.mark.parametrize("cls", CLASSES)
def test_param_groups_are_independent_optimisers(cls):
    # one optimiser with two groups == one optimiser per group: the same operations, bitwise
    a, b = _net(), _net()
    opt = _make(cls, _groups(a, lr=0.03))
    g1, g2 = _groups(b, lr=0.03)
    opts = [_make(cls, [g1]), _make(cls, [g2])]
    assert opt.param_groups[0]["lr"] == 0.03 and opt.param_groups[1]["lr"] != 0.03
    for batch in _batches(4):
        for model, optimisers in ((a, [opt]), (b, opts)):
            _backward(model, batch)
            for o in optimisers:
                o.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("cls", CLASSES)
def test_state_dict_round_trip_is_exact(cls):
    model = _net()
    opt = _make(cls, _groups(model))
    batches = _batches(8)
    for batch in batches[:4]:
        _backward(model, batch)
        opt.step()
    clone = copy.deepcopy(model)
    reloaded = _make(cls, _groups(clone), lr=0.5)  # the options come from the state dict
    reloaded.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert reloaded.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for batch in batches[4:]:
        for m, o in ((model, opt), (clone, reloaded)):
            _backward(m, batch)
            o.step()
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)
    for (k, s), (k2, s2) in zip(opt.state_dict()["state"].items(),
                                reloaded.state_dict()["state"].items()):
        assert k == k2 and s.keys() == s2.keys()
        for key in s:
            assert torch.equal(torch.as_tensor(s[key]), torch.as_tensor(s2[key])), key


@pytest.mark.parametrize("cls", CLASSES)
def test_closure_is_evaluated_with_gradients_and_its_loss_returned(cls):
    a, b = _net(), _net()
    batch = _batches(1)[0]
    oa, ob = _make(cls, _groups(a)), _make(cls, _groups(b))

    def closure():
        oa.zero_grad()
        loss = F.cross_entropy(a(batch[0]), batch[1])
        loss.backward()
        return loss

    with torch.no_grad():  # the closure must still build a graph
        loss = oa.step(closure)
    _backward(b, batch)
    assert ob.step() is None
    assert torch.equal(loss, F.cross_entropy(_net()(batch[0]), batch[1]))
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("cls", CLASSES)
def test_zero_grad_set_to_none_and_missing_grads_skip_tensors(cls):
    model = _net()
    opt = _make(cls, _groups(model))
    opt.zero_grad(set_to_none=True)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()  # no gradient at all: nothing moves, no state
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert len(opt.state) == 0
    # only conv1 has gradients at steps 1 and 3: the others stay, conv1 counts two steps
    w = model.conv1.weight
    fresh = copy.deepcopy(model)
    ref = _make(cls, [{"params": [fresh.conv1.weight], "channel_wise": True}])
    g = torch.Generator().manual_seed(6)
    grads = [torch.randn(w.shape, generator=g, dtype=w.dtype) for _ in range(2)]
    for step in range(4):
        opt.zero_grad(set_to_none=True)
        if step % 2 == 0:
            w.grad = grads[step // 2].clone()
        opt.step()
    for grad in grads:
        fresh.conv1.weight.grad = grad.clone()
        ref.step()
    assert torch.equal(w, fresh.conv1.weight)
    assert list(opt.state) == [w]
    if cls is not SGDMRT:
        assert opt.state[w]["step"] == 2
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before) if p is not w)


@pytest.mark.parametrize("cls", CLASSES)
def test_weight_decay_leaves_the_gradient_alone(cls):
    model = _net()
    opt = _make(cls, _groups(model), weight_decay=0.1)
    _backward(model, _batches(1)[0])
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


@pytest.mark.parametrize("cls", CLASSES)
def test_float32_runs_warning_free(cls):
    model = _net(torch.float32)
    opt = _make(cls, _groups(model))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for batch in _batches(3, torch.float32):
            _backward(model, batch)
            opt.step()
    state = opt.state[model.conv2.weight]
    assert all(t.dtype == torch.float32 for t in state.values() if torch.is_tensor(t))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("cls", CLASSES)
def test_sparse_gradients_are_refused(cls):
    w = nn.Parameter(torch.randn(3, 2, dtype=torch.float64))
    opt = _make(cls, [w])
    w.grad = torch.randn(3, 2, dtype=torch.float64).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()


def test_scheduler_changes_the_step():
    w, target = _rotating_weight()
    opt = AdamSRT([w], lr=0.1, channel_wise=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.0)
    _rotating_loss(w, target).backward()
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.0
    before = w.detach().clone()
    opt.step()
    assert torch.equal(w, before)


# -- bad arguments ------------------------------------------------------------------------------
_W = nn.Parameter(torch.zeros(3, 2, 2, 2))

BAD = [
    (AdamSRT, dict(lr=-1e-3), "lr"),
    (AdamSRT, dict(lr=float("nan")), "lr"),
    (AdamSRT, dict(betas=(1.0, 0.9)), "betas"),
    (AdamSRT, dict(betas=(0.9, -0.1)), "betas"),
    (AdamSRT, dict(betas=0.9), "betas"),
    (AdamSRT, dict(eps=-1e-8), "eps"),
    (AdamSRT, dict(weight_decay=-1.0), "weight_decay"),
    (AdamSRT, dict(channel_dims=(4,)), "channel_dims"),
    (AdamSRT, dict(channel_dims=(0, -4)), "channel_dims"),
    (AdamSRT, dict(channel_dims="0"), "channel_dims"),
    (AdamSRT, dict(channel_dims=(0.5,)), "channel_dims"),
    (AdamSRT, dict(channel_dims=0), "channel_dims"),
    (AdamS, dict(lr=-1.0), "lr"),
    (AdamS, dict(channel_dims=(-5,)), "channel_dims"),
    (SGDMRT, dict(lr=-0.1), "lr"),
    (SGDMRT, dict(momentum=-0.9), "momentum"),
    (SGDMRT, dict(dampening=1.5), "dampening"),
    (SGDMRT, dict(weight_decay=-1e-4), "weight_decay"),
    (SGDMRT, dict(channel_dims=(1, 1)), "channel_dims"),
]


@pytest.mark.parametrize("cls, kwargs, name", BAD,
                         ids=[f"{c.__name__}-{n}-{i}" for i, (c, _, n) in enumerate(BAD)])
def test_bad_arguments_raise_value_error_naming_them(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls([_W], **kwargs)
    # the same option in a parameter group, at construction and in add_param_group
    with pytest.raises(ValueError, match=name):
        cls([{"params": [_W], **kwargs}])
    opt = cls([nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match=name):
        opt.add_param_group({"params": [_W], **kwargs})
    assert len(opt.param_groups) == 1


def test_flags_must_be_booleans_and_adams_never_transports():
    with pytest.raises(TypeError, match="channel_wise"):
        AdamSRT([_W], channel_wise=1)
    with pytest.raises(TypeError, match="rt"):
        AdamSRT([_W], rt="yes")
    with pytest.raises(ValueError, match="rt=True"):
        AdamS([{"params": [_W], "rt": True}])
