"""Conventional training, checkpoints and sharpness of the torch bridge (docs/network_full.md).

Tiny runs only (ConvNetSI width 4 on digits, one thread, 1-4 epochs). Oracles: `torch.optim.SGD`
stepping the same parameters (for ``mode="full"``), the uninterrupted run (for a resumed one),
the norm recursion of SGD + weight decay (T20), the defining sums of BatchNorm's statistics (for
`bn_update`), a run without the optional measurements (they must not touch the trajectory).
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
xr = pytest.importorskip("xarray")

from toymodel import theory_wd  # noqa: E402
from toymodel.bridge import RunSpec, models, train, training  # noqa: E402
from toymodel.bridge import checkpoints as ck  # noqa: E402
from toymodel.bridge._full import TrackedSGD  # noqa: E402
from toymodel.bridge._measure import bn_update, evaluate_bn, sharpness  # noqa: E402
from toymodel.bridge.finetune import finetune_scan  # noqa: E402
from toymodel.bridge.groups import si_groups  # noqa: E402
from toymodel.cli import main  # noqa: E402

torch.set_num_threads(1)
U64 = 2.0**-53
TINY = dict(width=4, progress_bar=False)
SPHERE_VARS = {"loss", "accuracy", "grad_norm", "angle", "si_norm", "cosine_to_init",
               "test_loss", "test_accuracy", "individual_elr", "shares", "group_grad_norm",
               "step_loss", "step_grad_norm", "step_angle", "random_loss", "init_loss",
               "tail_loss", "tail_grad_norm", "tail_angle", "regime", "regime_reason", "lr",
               "train_seconds"}


def _same(a, b):
    """Bit for bit: every variable and coordinate equal (NaN == NaN), the clock aside."""
    xr.testing.assert_equal(a.drop_vars("train_seconds"), b.drop_vars("train_seconds"))


# -- the run specification ------------------------------------------------------------------------
@pytest.mark.parametrize("kw, word", [
    (dict(elr=None), "elr is required"), (dict(elr=0.1, lr=0.1), "lr=0.1"),
    (dict(elr=0.1, weight_decay=1e-3), "weight_decay=0.001"),
    (dict(mode="full", elr=None), "lr is required"), (dict(mode="full", elr=0.1, lr=1), "elr=0.1"),
    (dict(mode="full", elr=None, lr=1, weight_decay=-1), "weight_decay"),
    (dict(mode="full", elr=None, lr=1, weight_decay=float("nan")), "weight_decay"),
    (dict(mode="full", elr=None, lr=-1), "lr"), (dict(elr=0.1, momentum=1.0), "momentum"),
    (dict(mode="full", elr=None, lr=1, constraint="individual"), "constraint='individual'"),
    (dict(mode="adam", elr=0.1), "mode"), (dict(elr=0.1, sharpness_every=-1), "sharpness_every"),
    (dict(elr=0.1, bn_update="yes"), "bn_update")])
def test_bad_specs_are_refused_naming_the_value(kw, word):
    with pytest.raises(ValueError, match=word.replace("(", r"\(")):
        RunSpec(epochs=2, **kw)


def test_full_spec_stores_no_elr_and_no_constraint():
    spec = RunSpec(elr=None, epochs=2, mode="full", lr=0.5, weight_decay=1e-3, momentum=0.9)
    assert spec.constraint == "none" and spec.elr is None and spec.label().startswith("lr=0.5")


def test_scan_parameters_of_sphere_runs_are_unchanged():
    """Finished runs of scans made before ``mode`` existed still match their parameters."""
    params = training.scan_params(RunSpec(elr=0.1, epochs=2), {"model": "convnet-si"})
    assert set(params) == {"epochs", "batch_size", "constraint", "seed", "record_every",
                           "eval_every", "tail", "model"}


# -- conventional training ------------------------------------------------------------------------
def test_tracked_sgd_steps_exactly_as_torch_sgd():
    """Same parameters, same gradients: `TrackedSGD` is `torch.optim.SGD` bit for bit, and its
    angle is the angle between the SI vectors before and after (float64 arccos of the cosine,
    which is accurate to ~sqrt(u)/Δ relative for an angle Δ: 1e-6 here)."""
    nets = [models.build_model("convnet-si-af", width=4, num_classes=10, in_channels=1, seed=3,
                               dtype=torch.float64) for _ in range(2)]
    x = torch.randn(64, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.arange(64) % 10
    groups = si_groups(nets[0])
    si = [p for g in groups for p in g.params]
    others = [p for p in nets[0].parameters() if p.requires_grad and all(p is not q for q in si)]
    tracked = TrackedSGD(groups, others, lr=0.3, weight_decay=0.01, momentum=0.9)
    plain = torch.optim.SGD([p for p in nets[1].parameters() if p.requires_grad], lr=0.3,
                            weight_decay=0.01, momentum=0.9)
    for _ in range(3):
        old = torch.cat([p.detach().flatten() for p in si])
        for net, opt in zip(nets, (tracked, plain)):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        for p, q in zip(nets[0].parameters(), nets[1].parameters()):
            assert torch.equal(p, q)
        new = torch.cat([p.detach().flatten() for p in si])
        cos = float(old @ new / (old.norm() * new.norm()))
        assert float(tracked.last_metrics["angle"]) == pytest.approx(math.acos(cos), rel=1e-6)


def test_full_mode_layout_and_elr_identities():
    ds = train(mode="full", lr=0.2, weight_decay=5e-3, epochs=2, batch_size=256, **TINY)
    assert set(ds.data_vars) == SPHERE_VARS | {"effective_elr", "step_effective_elr",
                                               "step_si_norm", "tail_effective_elr",
                                               "weight_decay", "momentum"}
    assert set(ds.coords) == {"epoch", "step", "group"} and ds.attrs["mode"] == "full"
    # eta / |theta|^2 from the same squared norms: a few roundings in float64 (the norms are
    # float32 sums of ~6000 squares, but both sides use the same ones)
    np.testing.assert_allclose(ds.effective_elr * ds.si_norm**2, 0.2, rtol=1e-12)
    # T8: sum_g 1/elr_g = 1/elr exactly for one common lr (4 terms: 8 roundings)
    np.testing.assert_allclose((1 / ds.individual_elr).sum("group"), 1 / ds.effective_elr,
                               rtol=8 * U64 * 4)
    assert float(ds.tail_effective_elr) == float(ds.effective_elr[-1])  # tail = 1 epoch


def test_weight_decay_norm_recursion_holds_at_every_step():
    r"""T20: with $\nabla L\perp\theta$, $\|\theta'\|=(1-\eta\lambda)\|\theta\|/\cos\Delta$ at
    every step. BatchNorm's eps breaks scale invariance at ~1e-5 relative (docs/bridge.md), the
    only error above float64 rounding: 1e-4."""
    lr, wd = 0.5, 0.02
    ds = train(mode="full", lr=lr, weight_decay=wd, epochs=2, dtype="float64", **TINY)
    norm, angle = ds.step_si_norm.values, ds.step_angle.values
    np.testing.assert_allclose(norm[1:], (1 - lr * wd) * norm[:-1] / np.cos(angle[:-1]), rtol=1e-4)


def test_equilibrium_angle_of_the_network_matches_the_toy_prediction():
    r"""At the norm equilibrium $\cos\Delta=1-\eta\lambda$ (T21). With $\eta\lambda=0.1$ the norm
    settles in a few $1/(4\eta\lambda)$ steps; the tail is the last 10 of 20 epochs ($T=120$
    steps). Telescoping T20, $\langle-\ln\cos\Delta\rangle=-\ln(1-\eta\lambda)+\ln(\|\theta_T\|/
    \|\theta_0\|)/T$: the drift term is bounded by the tail's own norm range, $\ln(\max/\min)/T$
    (plus 1e-4 for BatchNorm's eps). The mean angle lies below (Jensen: a few large steps weigh
    more in $-\ln\cos$); measured 6-9% on digits over seeds, 15% allowed."""
    lr, wd = 1.0, 0.1
    ds = train(mode="full", lr=lr, weight_decay=wd, epochs=20, tail=10, **TINY)
    steps = 10 * ds.attrs["steps_per_epoch"]
    tail, norm = ds.step_angle.values[-steps:], ds.step_si_norm.values[-steps:]
    drift = math.log(norm.max() / norm.min()) / steps + 1e-4
    assert abs(np.mean(-np.log(np.cos(tail))) + math.log(1 - lr * wd)) <= drift
    assert np.mean(tail) == pytest.approx(theory_wd.wd_equilibrium_angle(lr, wd), rel=0.15)


def test_affine_models_train_their_affine_parameters_in_both_modes():
    for kw in (dict(mode="full", lr=0.2, weight_decay=1e-3), dict(elr=0.01)):
        ds = train(model="convnet-si-af", epochs=1, batch_size=512, **kw, **TINY)
        assert "non-si: conv_layers.1.weight,conv_layers.1.bias" in ds.attrs["group_params"]
        assert ds.sizes["group"] == 4 and np.isfinite(ds.loss).all()
    assert models.param_count("resnet18-si-af", width=2, num_classes=10, in_channels=1) == sum(
        p.numel() for p in models.build_model("resnet18-si-af", width=2, num_classes=10,
                                              in_channels=1).parameters())


# -- checkpoints ----------------------------------------------------------------------------------
def test_two_plus_two_resumed_epochs_equal_four_straight_epochs_bit_for_bit(tmp_path):
    kw = dict(elr=0.02, dtype="float64", **TINY)
    straight = train(epochs=4, **kw)
    first = train(epochs=2, checkpoint_dir=tmp_path, **kw)
    assert sorted(os.listdir(tmp_path)) == ["epoch_00002.pt"]
    resumed = train(epochs=4, checkpoint_dir=tmp_path, resume=True, **kw)
    _same(straight, resumed)
    for name in ("loss", "si_norm", "test_loss", "individual_elr", "step_loss"):
        n = first[name].shape[0]
        np.testing.assert_array_equal(first[name], straight[name][:n])
    assert resumed.attrs["resumed_from_epoch"] == 2
    _same(straight, train(epochs=4, checkpoint_dir=tmp_path, resume=True, **kw))  # done: read back


def test_resume_is_bit_for_bit_in_full_mode_with_momentum_and_measurements(tmp_path):
    kw = dict(mode="full", lr=0.3, weight_decay=0.01, momentum=0.9, model="convnet-si-af",
              dtype="float64", sharpness_every=2, bn_update=True, record_every=5, **TINY)
    straight = train(epochs=4, **kw)
    train(epochs=2, checkpoint_dir=tmp_path, checkpoint_every=1, **kw)
    assert sorted(os.listdir(tmp_path)) == ["epoch_00001.pt", "epoch_00002.pt"]
    _same(straight, train(epochs=4, checkpoint_dir=tmp_path, resume=True, **kw))


def test_resume_refuses_other_parameters_and_shorter_runs(tmp_path):
    train(elr=0.02, epochs=2, checkpoint_dir=tmp_path, **TINY)
    with pytest.raises(ValueError, match="elr=0.02.*elr=0.03"):
        train(elr=0.03, epochs=4, checkpoint_dir=tmp_path, resume=True, **TINY)
    with pytest.raises(ValueError, match="width"):
        train(elr=0.02, epochs=4, checkpoint_dir=tmp_path, resume=True, width=2, progress_bar=False)
    with pytest.raises(ValueError, match="epoch 2"):
        train(elr=0.02, epochs=1, checkpoint_dir=tmp_path, resume=True, **TINY)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(elr=0.02, epochs=4, checkpoint_dir=tmp_path, **TINY)
    with pytest.raises(ValueError, match="resume=True need"):
        train(elr=0.02, epochs=4, resume=True, **TINY)
    with pytest.raises(ValueError, match="checkpoint_every must be an integer >= 1, got 0"):
        train(elr=0.02, epochs=4, checkpoint_dir=tmp_path / "b", checkpoint_every=0, **TINY)


def test_init_from_starts_a_new_run_from_the_saved_weights(tmp_path):
    train(elr=0.02, epochs=2, checkpoint_dir=tmp_path, **TINY)
    path = tmp_path / "epoch_00002.pt"
    weights = ck.load(path)["model"]
    rho = math.sqrt(sum(float(v.double().square().sum()) for k, v in weights.items()
                        if k.endswith("weight") and not k.startswith("linear")))
    ds = train(mode="full", lr=0.1, weight_decay=1e-3, epochs=1, init_from=path, **TINY)
    # rho from the loaded weights: float32 norms of ~6000 squares, ~6000 u32 relative at worst
    assert ds.attrs["rho"] == pytest.approx(rho, rel=6000 * 2.0**-24)
    assert float(ds.init_loss) < 0.5 * float(ds.random_loss)  # trained weights, not random ones
    with pytest.raises(ValueError, match="does not fit ConvNetSIAf"):
        train(elr=0.02, epochs=1, model="convnet-si-af", init_from=path, **TINY)
    with pytest.raises(ValueError, match="does not exist"):
        train(elr=0.02, epochs=1, init_from=tmp_path / "missing.pt", **TINY)


def test_cli_checkpoint_resume_is_bit_for_bit(tmp_path, capsys):
    args = ["train", "--elr", "0.02", "--dtype", "float64", "--width", "4", "--threads", "1",
            "--no-progress", "--checkpoint", str(tmp_path / "ck")]
    assert main([*args[:-2], "--epochs", "4", "--out", str(tmp_path / "a.nc")]) == 0
    assert main([*args, "--epochs", "2", "--out", str(tmp_path / "b.nc")]) == 0
    assert main([*args, "--resume", "--epochs", "4", "--out", str(tmp_path / "c.nc")]) == 0
    _same(xr.load_dataset(tmp_path / "a.nc"), xr.load_dataset(tmp_path / "c.nc"))
    capsys.readouterr()
    assert main([*args, "--epochs", "4", "--out", str(tmp_path / "d.nc")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0]
    assert main(["train", "--mode", "full", "--lr", "0.2", "--wd", "0.01", "--momentum", "0.5",
                 "--model", "convnet-si-af", "--epochs", "1", "--width", "4", "--no-progress",
                 "--out", str(tmp_path / "e.nc")]) == 0
    assert "tail_elr" in capsys.readouterr().out


# -- optional measurements ------------------------------------------------------------------------
def test_bn_update_and_sharpness_do_not_touch_the_trajectory():
    plain = train(elr=0.05, epochs=3, batch_size=256, dtype="float64", **TINY)
    more = train(elr=0.05, epochs=3, batch_size=256, dtype="float64", sharpness_every=2,
                 bn_update=True, **TINY)
    _same(plain, more[list(plain.data_vars)].assign_attrs(plain.attrs))
    assert np.isnan(more.top_eigenvalue[0]) and np.isfinite(more.top_eigenvalue[1:]).all()
    np.testing.assert_array_equal(more.effective_top_eigenvalue,
                                  more.top_eigenvalue * more.si_norm**2)
    assert np.isfinite(more.test_accuracy_bn).all()


def test_bn_update_recomputes_the_statistics_of_the_training_set():
    """One batch holding the whole set: the running mean and variance are its mean and unbiased
    variance (float64, sums of 1437*64 terms: ~1e5 u relative)."""
    net = models.build_model("convnet-si", width=4, num_classes=10, in_channels=1, seed=0,
                             dtype=torch.float64)
    x = torch.randn(300, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    bn_update(net, x, batch_size=300)
    with torch.no_grad():
        h = net.conv_layers[0](x)
    bn = net.conv_layers[1]
    np.testing.assert_allclose(bn.running_mean, h.mean((0, 2, 3)), rtol=1e5 * U64, atol=1e-14)
    np.testing.assert_allclose(bn.running_var, h.var((0, 2, 3), unbiased=True), rtol=1e5 * U64)
    assert bn.momentum == 0.1  # restored


def test_evaluate_bn_and_sharpness_restore_the_buffers():
    from toymodel.bridge import load_data
    net = models.build_model("convnet-si", width=4, num_classes=10, in_channels=1, seed=0)
    data = load_data("digits")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loss, acc = evaluate_bn(net, data)
    si = [p for g in si_groups(net) for p in g.params]
    a = sharpness(net, si, data.x_train[:256], data.y_train[:256], seed=0)
    assert a == sharpness(net, si, data.x_train[:256], data.y_train[:256], seed=0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert 0 <= acc <= 1 and math.isfinite(loss) and a[1] > 0


# -- the better-optima experiment -----------------------------------------------------------------
def test_finetune_scan_layout_and_resume(tmp_path, capsys):
    kw = dict(finetune_elr=0.01, pretrain_epochs=1, finetune_epochs=1, width=2,
              progress_bar=False)
    ds = finetune_scan("0.01,0.5", checkpoint_dir=tmp_path, **kw)
    assert ds.sizes == {"elr": 2, "pretrain_epoch": 1, "finetune_epoch": 1, "baseline_epoch": 2}
    for name in ("final_loss", "test_error", "test_error_bn", "top_eigenvalue", "hessian_trace",
                 "effective_hessian_trace", "pretrain_regime"):
        assert name in ds and f"baseline_{name}" in ds or name == "pretrain_regime"
    xr.testing.assert_identical(ds, finetune_scan("0.01,0.5", checkpoint_dir=tmp_path, **kw))
    with pytest.raises(ValueError, match="finetune_elr"):
        finetune_scan("0.01", finetune_elr=-1, pretrain_epochs=1, finetune_epochs=1)
    out = tmp_path / "f.nc"
    assert main(["finetune-scan", "--elrs", "0.01", "--finetune-elr", "0.01", "--width", "2",
                 "--pretrain-epochs", "1", "--finetune-epochs", "1", "--no-progress",
                 "--out", str(out)]) == 0
    assert "baseline" in capsys.readouterr().out and out.is_file()
    assert main(["finetune-scan", "--elrs", "0.01", "--finetune-elr", "0", "--out",
                 str(tmp_path / "g.nc")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finetune_elr" in err[0]
