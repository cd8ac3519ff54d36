"""Torch bridge: SI detection, SphereSGD semantics (T5-T7), official-code parity, metrics, CLI.

Oracles: plain loops written from docs/theory.md §2 (torch.optim.SGD + rescale; the official
``fix_si_pnorm`` / ``fix_si_pnorms`` semantics), the closed form of T6, and a direct measurement
of the angle between parameter vectors. Tiny widths, float64, CPU.
"""
from __future__ import annotations

import copy
import math
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn import functional as F  # noqa: E402

from toymodel.bridge import (ConvNetSI, ResNet18SI, SphereSGD, load_data, parse_elrs,  # noqa: E402
                             si_groups, train, verify_scale_invariance)
from toymodel.bridge.models import build_model  # noqa: E402

ELR = 0.02
torch.set_num_threads(1)  # tiny nets: one thread is fastest, and the CI machine is shared


def _convnet(width=2, seed=0):
    return build_model("convnet-si", width=width, num_classes=10, in_channels=1, seed=seed,
                       dtype=torch.float64)


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
    # fused reductions: to 1e-12; official_reductions: bit for bit (docs/theory.md §2 semantics)
    model = _convnet(width=2)
    ref = copy.deepcopy(model)
    x, y = _batch()
    opt = SphereSGD(si_groups(model), ELR, official_reductions=official)
    ps = [p for p in ref.parameters() if p.requires_grad]
    rho = math.sqrt(sum(float((p.detach() ** 2).sum()) for p in ps))
    sgd = torch.optim.SGD(ps, lr=ELR * rho ** 2)
    for t in range(20):
        xb, yb = x[(t % 3) * 8:(t % 3) * 8 + 8], y[(t % 3) * 8:(t % 3) * 8 + 8]
        _grad_step(model, opt, xb, yb)
        _grad_step(ref, sgd, xb, yb)
        with torch.no_grad():  # the official fix_si_pnorm
            coef = rho / math.sqrt(sum(float((p ** 2).sum()) for p in ps))
            for p in ps:
                p.mul_(coef)
    diff = (_flat(model.parameters()) - _flat(ref.parameters())).abs().max()
    assert float(diff) <= (0.0 if official else 1e-12)
    assert abs(float(_flat(ps).norm()) - rho) <= 1e-12 * rho


@pytest.mark.parametrize("official", [False, True])
def test_per_filter_mode_matches_official_semantics(official):
    model = _convnet(width=2)
    ref = copy.deepcopy(model)
    x, y = _batch()
    opt = SphereSGD(si_groups(model), ELR, constraint="per-filter", official_reductions=official)
    ps = [p for p in ref.parameters() if p.requires_grad]
    n_filters = sum(p.shape[0] for p in ps)
    with torch.no_grad():  # official: si_pnorm_0 = sqrt(sum |theta|^2 / N), fix_si_pnorms
        r = math.sqrt(sum(float((p ** 2).sum()) for p in ps) / n_filters)

        def fix(params):
            for p in params:
                p.mul_(r / torch.norm_except_dim(p, 2, 0))
        fix(ps)
        lr = ELR * sum(float((p ** 2).sum()) for p in ps)
    sgd = torch.optim.SGD(ps, lr=lr)
    assert opt.lr == pytest.approx(lr, rel=1e-12)
    # the undocumented consequence: every filter has individual ELR elr * N_filters
    assert opt.lr / r ** 2 == pytest.approx(ELR * n_filters, rel=1e-12)
    for _ in range(20):
        _grad_step(model, opt, x, y)
        _grad_step(ref, sgd, x, y)
        with torch.no_grad():
            fix(ps)
    diff = (_flat(model.parameters()) - _flat(ref.parameters())).abs().max()
    assert float(diff) <= (0.0 if official else 1e-12)
    rows = torch.cat([p.reshape(p.shape[0], -1).norm(dim=1) for p in model.parameters()
                      if p.requires_grad])
    assert torch.allclose(rows, torch.full_like(rows, r), rtol=1e-12, atol=0)


def test_one_step_angle_is_t6():
    model = _convnet(width=2)
    x, y = _batch()
    groups = si_groups(model)
    params = [p for g in groups for p in g.params]
    opt = SphereSGD(groups, ELR, track=True)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    g = float(_flat([p.grad for p in params]).norm())
    before = _flat(params).clone()
    opt.step()
    after = _flat(params)
    perp = after - (after @ before) / (before @ before) * before
    measured = math.atan2(float(perp.norm()), float(after @ before) / float(before.norm()))
    assert float(opt.last_metrics["angle"]) == pytest.approx(measured, rel=1e-9)
    # T6: tan(angle) = elr * rho * |g| (exact up to BatchNorm's eps, which breaks <g, theta> = 0)
    assert measured == pytest.approx(math.atan(ELR * opt.rho * g), rel=1e-4)


def test_tracking_does_not_change_the_step():
    runs = []
    for track in (False, True):  # the fast path and the general path with metrics
        model = _convnet(width=2)
        x, y = _batch()
        opt = SphereSGD(si_groups(model), ELR, track=track)
        for _ in range(5):
            _grad_step(model, opt, x, y)
        runs.append(_flat(model.parameters()))
    assert float((runs[0] - runs[1]).abs().max()) <= 1e-13


def test_total_and_individual_coincide_for_one_group():
    runs = []
    for constraint in ("total", "individual"):
        model = _convnet(width=2)
        x, y = _batch()
        opt = SphereSGD(si_groups(model, level="total"), ELR, constraint=constraint)
        for _ in range(20):
            _grad_step(model, opt, x, y)
        runs.append(_flat(model.parameters()))
    assert float((runs[0] - runs[1]).abs().max()) <= 1e-12


def test_individual_keeps_every_group_norm():
    model = _convnet(width=2)
    groups = si_groups(model)
    norms0 = [float(_flat(g.params).norm()) for g in groups]
    opt = SphereSGD(groups, 0.5, constraint="individual")
    x, y = _batch()
    for _ in range(5):
        _grad_step(model, opt, x, y)
    norms = [float(_flat(g.params).norm()) for g in groups]
    np.testing.assert_allclose(norms, norms0, rtol=1e-12)


def test_radius_rescales_at_construction_and_direction_is_radius_free():
    runs = []
    for radius in (None, 7.0):
        model = _convnet(width=2)
        for m in model.modules():  # BatchNorm's eps breaks exact SI (1e-5 relative): remove it
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eps = 1e-15
        x, y = _batch()
        groups = si_groups(model)
        opt = SphereSGD(groups, 1e-3, radius=radius)
        ps = [p for g in groups for p in g.params]
        if radius is not None:
            assert float(_flat(ps).norm()) == pytest.approx(radius, rel=1e-12)
        for _ in range(10):
            _grad_step(model, opt, x, y)
        v = _flat(ps)
        runs.append(v / v.norm())
    assert float((runs[0] - runs[1]).abs().max()) <= 1e-10  # T5: directions depend on elr only


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
    assert torch.equal(_flat(other.parameters()), expected)


def test_weight_decay_semantics_documented():
    lam = 0.3
    runs = []
    for wd in (lam, 0.0):
        model = _convnet(width=2)
        x, y = _batch()
        groups = si_groups(model)
        rho = float(_flat([p for g in groups for p in g.params]).norm())
        lr = ELR * rho ** 2
        elr = ELR if wd else ELR / (1 - lr * lam)
        opt = SphereSGD(groups, elr, weight_decay=wd, allow_nonstandard=bool(wd))
        _grad_step(model, opt, x, y)
        runs.append(_flat(model.parameters()))
    assert float((runs[0] - runs[1]).abs().max()) <= 1e-12


def test_non_si_group_trained_with_its_own_lr():
    model = _convnet(width=2)
    model.linear.requires_grad_(True)
    head0 = model.linear.weight.detach().clone()
    groups = si_groups(model) + [{"params": list(model.linear.parameters()), "si": False, "lr": 0.1}]
    opt = SphereSGD(groups, ELR)
    x, y = _batch()
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    expected = head0 - 0.1 * model.linear.weight.grad
    opt.step()
    assert torch.allclose(model.linear.weight, expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("kwargs, word", [
    ({"elr": -0.1}, "-0.1"), ({"elr": float("nan")}, "nan"), ({"constraint": "sphere"}, "'sphere'"),
    ({"momentum": 0.9}, "momentum=0.9"), ({"weight_decay": 5e-4}, "weight_decay=0.0005"),
    ({"radius": 0.0}, "radius"), ({"momentum": 1.5, "allow_nonstandard": True}, "1.5"),
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
    np.testing.assert_allclose(parse_elrs("1e-4:1:5"), [1e-4, 1e-3, 1e-2, 1e-1, 1])


# -- training, metrics, CLI ------------------------------------------------------------------------
def test_train_records_metrics_with_the_project_vocabulary(tmp_path):
    ds = train(elr=ELR, epochs=3, data="synthetic", width=2, batch_size=64, dtype="float64",
               record_every=2, eval_every=2, progress_bar=False)
    assert ds.sizes["epoch"] == 3 and ds.sizes["group"] == 4
    assert ds.sizes["step"] == math.ceil(3 * ds.attrs["steps_per_epoch"] / 2)
    for name in ("loss", "accuracy", "grad_norm", "angle", "si_norm", "cosine_to_init"):
        assert np.all(np.isfinite(ds[name].values)), name
    np.testing.assert_allclose(ds.si_norm, ds.attrs["rho"], rtol=1e-12)
    np.testing.assert_allclose(ds.shares.sum("group"), 1.0, rtol=1e-12)
    # T7/T8: individual ELRs are elr / shares, and sum(1/individual_elr) = 1/elr
    np.testing.assert_allclose(ds.individual_elr, ELR / ds.shares, rtol=1e-10)
    np.testing.assert_allclose((1 / ds.individual_elr).sum("group"), 1 / ELR, rtol=1e-10)
    # T6 per step (BatchNorm's eps: relative 1e-4)
    np.testing.assert_allclose(np.tan(ds.step_angle), ELR * ds.step_grad_norm, rtol=1e-4)
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
    kw = dict(elr=0.05, epochs=1, data="synthetic", width=1, batch_size=64, progress_bar=False)
    a, b = train(**kw), train(**kw)
    np.testing.assert_array_equal(a.step_loss.values, b.step_loss.values)
    c = train(constraint="per-filter", **kw)
    assert c.attrs["filter_individual_elr"] == pytest.approx(0.05 * c.attrs["n_filters"])


def test_classifier_labels_a_tiny_scan():
    ds = train(elr=30.0, epochs=4, data="synthetic", width=2, batch_size=64, progress_bar=False)
    assert float(ds.tail_loss) > 0.5 * float(ds.random_loss)  # scrambled every step
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
        np.testing.assert_allclose(rows.numpy(), r, rtol=1e-12)
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
