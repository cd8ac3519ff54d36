"""The optimiser choice of network runs: `SphereSGD` with momentum (both modes) and `SphereAdam`
in `toymodel.bridge.train`, `train_scan` and the CLI (docs/sphere_optimizers.md).

Tiny runs only (ConvNetSI width 2-4 on digits, one torch thread, 1-4 epochs, float64). Oracles:
the optimiser itself stepping a copy of the same network on the same mini-batches (a run must be
exactly that loop), the uninterrupted run (for a resumed one), `SphereAdam`'s first-step angle
$\\arctan(\\tilde\\eta\\|g\\|/(\\|g\\|+\\epsilon))$ (for the recorded angle).
"""
from __future__ import annotations

import copy
import json
import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
xr = pytest.importorskip("xarray")
from torch.nn import functional as F  # noqa: E402

from toymodel.bridge import RunSpec, SphereAdam, SphereSGD, netscan, si_groups, train  # noqa: E402
from toymodel.bridge import checkpoints as ck  # noqa: E402
from toymodel.bridge.training import prepare, run, scan_params  # noqa: E402
from toymodel.cli import main  # noqa: E402

torch.set_num_threads(1)
TINY = dict(width=2, progress_bar=False, dtype="float64")
CLI = ["--width", "2", "--epochs", "1", "--threads", "1", "--no-progress", "--dtype", "float64",
       "--batch-size", "512"]
OPTIMIZERS = [dict(momentum=0.9), dict(momentum=0.9, momentum_mode="transport"),
              dict(optimizer="adam"), dict(optimizer="adam", betas=(0.5, 0.99))]


def _same(a, b):
    """Bit for bit: every variable and coordinate equal (NaN == NaN), the clock aside."""
    xr.testing.assert_equal(a.drop_vars("train_seconds"), b.drop_vars("train_seconds"))


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


# -- the options reach the optimiser ----------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, *OPTIMIZERS], ids=["sgd", "official", "transport", "adam",
                                                       "adam-betas"])
def test_a_run_is_the_optimiser_stepping_the_same_batches(kw):
    """Two steps (two mini-batches of one epoch) of `run` equal the optimiser built by hand on a
    copy of the network, bit for bit: the options reach it (the modes differ from the 2nd step)."""
    spec = RunSpec(elr=0.05, epochs=1, batch_size=719, **kw)
    net, data, _ = prepare(seed=0, width=2, dtype="float64")
    twin = copy.deepcopy(net)
    run(net, data, spec, progress_bar=False)
    if spec.optimizer == "adam":
        opt = SphereAdam(si_groups(twin), 0.05, betas=spec.betas)
    else:
        opt = SphereSGD(si_groups(twin), 0.05, momentum=spec.momentum,
                        momentum_mode=spec.momentum_mode, track=True)
    perm = torch.randperm(data.x_train.shape[0], generator=torch.Generator().manual_seed(0))
    for idx in (perm[:719], perm[719:]):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(twin(data.x_train[idx]), data.y_train[idx]).backward()
        opt.step()
    for (name, a), b in zip(net.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_momentum_modes_and_adam_give_different_runs():
    runs = [train(elr=0.05, epochs=1, batch_size=512, **kw, **TINY) for kw in OPTIMIZERS[:3]]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not np.array_equal(runs[a].loss.values, runs[b].loss.values), (a, b)


def test_adam_records_its_own_angle_and_individual_elr():
    """The first step turns the SI vector (one unit: constraint "total") by
    $\\arctan(\\tilde\\eta\\|g\\|/(\\|g\\|+\\epsilon))$; ``individual_elr`` is Adam's
    $\\eta/\\|\\theta_g\\|=\\tilde\\eta/\\sqrt{s_g}$ (lr $=\\tilde\\eta\\rho$)."""
    elr = 0.03
    ds = train(elr=elr, epochs=2, batch_size=512, optimizer="adam", **TINY)
    assert float(ds.step_angle[0]) == pytest.approx(math.atan(elr), rel=1e-6)
    assert float(ds.lr) == pytest.approx(elr * ds.attrs["rho"], rel=1e-12)
    np.testing.assert_allclose(ds.individual_elr, elr / np.sqrt(ds.shares), rtol=1e-10)
    assert ds.attrs["optimizer"] == "adam" and list(ds.attrs["betas"]) == [0.9, 0.999]
    # the gradient itself, not the step, makes the effective gradient norm rho*|grad L|
    assert np.all(ds.grad_norm > 0) and np.isfinite(ds.grad_norm).all()


def test_adam_per_filter_and_individual_constraints_record_their_learning_rates():
    f = train(elr=0.05, epochs=1, batch_size=1024, optimizer="adam", constraint="per-filter",
              **TINY)
    assert f.attrs["filter_individual_elr"] == 0.05 and f.attrs["n_filters"] > 1
    g = train(elr=0.05, epochs=1, batch_size=1024, optimizer="adam", constraint="individual",
              **TINY)
    assert g.lr.dims == ("group",) and g.sizes["group"] == 4  # lr_g = elr * |theta_g|
    np.testing.assert_allclose(g.individual_elr[0], 0.05, rtol=1e-12)


# -- validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, word", [
    (dict(optimizer="rmsprop"), "optimizer must be one of"),
    (dict(momentum_mode="sideways"), "momentum_mode must be one of"),
    (dict(betas=(0.9, 0.99)), "betas=(0.9, 0.99) are SphereAdam's"),
    (dict(optimizer="adam", momentum=0.9), "momentum=0.9 is SphereSGD's"),
    (dict(optimizer="adam", momentum_mode="transport"), "momentum_mode='transport' is SphereSGD's"),
    (dict(optimizer="adam", betas=(0.9, 1.0)), "betas[1]"),
    (dict(optimizer="adam", betas=0.9), "betas must be a pair"),
    (dict(optimizer="adam", elr=None, mode="full", lr=0.1), "optimizer='adam' needs mode='sphere'"),
    (dict(elr=None, mode="full", lr=0.1, momentum=0.9, momentum_mode="transport"),
     "momentum_mode='transport' needs mode='sphere'")])
def test_bad_optimizer_options_are_refused_naming_the_value(kw, word):
    kw = {"elr": 0.1, **kw}
    with pytest.raises(ValueError, match=word.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        RunSpec(epochs=2, **kw)


def test_adam_refuses_affine_models_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="convnet-si-af"):
        train(elr=0.1, epochs=1, model="convnet-si-af", optimizer="adam", **TINY)
    with pytest.raises(ValueError, match="convnet-si-af"):
        netscan.plan_scan("0.1", epochs=1, model="convnet-si-af", optimizer="adam", width=2)


def test_spec_defaults_and_scan_parameters_of_sgd_runs_are_unchanged():
    spec = RunSpec(elr=0.1, epochs=2)
    assert (spec.optimizer, spec.momentum_mode, spec.betas) == ("sgd", "official", None)
    assert set(scan_params(spec, {"model": "convnet-si"})) == {
        "epochs", "batch_size", "constraint", "seed", "record_every", "eval_every", "tail", "model"}
    adam = scan_params(RunSpec(elr=0.1, epochs=2, optimizer="adam"), {})
    assert adam["optimizer"] == "adam" and adam["betas"] == (0.9, 0.999)
    assert RunSpec(elr=0.1, epochs=2, optimizer="adam", betas=[0.5, 0.9]).betas == (0.5, 0.9)


# -- checkpoints ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [OPTIMIZERS[1], OPTIMIZERS[2]], ids=["transport", "adam"])
def test_two_plus_two_resumed_epochs_equal_four_straight_epochs_bit_for_bit(tmp_path, kw):
    kw = dict(elr=0.05, batch_size=512, **kw, **TINY)
    straight = train(epochs=4, **kw)
    train(epochs=2, checkpoint_dir=tmp_path, **kw)
    resumed = train(epochs=4, checkpoint_dir=tmp_path, resume=True, **kw)
    assert resumed.attrs["resumed_from_epoch"] == 2
    _same(straight, resumed)
    other = ({"optimizer": "sgd", "betas": None} if kw.get("optimizer") == "adam" else
             {"optimizer": "adam", "momentum": 0.0, "momentum_mode": "official"})
    with pytest.raises(ValueError, match="optimizer="):  # another optimiser: refused
        train(epochs=4, checkpoint_dir=tmp_path, resume=True, **{**kw, **other})


def test_a_checkpoint_written_before_the_optimizer_fields_still_resumes(tmp_path):
    kw = dict(elr=0.05, batch_size=512, **TINY)
    straight = train(epochs=2, **kw)
    train(epochs=1, checkpoint_dir=tmp_path, **kw)
    path = ck.Checkpoints(tmp_path).latest()
    blob = torch.load(path, weights_only=True)
    for k in ("momentum_mode", "optimizer", "betas"):
        del blob["spec"][k]
    torch.save(blob, path)
    _same(straight, train(epochs=2, checkpoint_dir=tmp_path, resume=True, **kw))


# -- scans and their layout -----------------------------------------------------------------------
def test_scan_layout_carries_the_optimizer_and_parts_tell_them_apart(tmp_path):
    parts = tmp_path / "parts"
    adam = netscan.train_scan("0.05,0.5", epochs=1, batch_size=512, optimizer="adam",
                              betas=(0.8, 0.99), parts=parts, threads=1, **TINY)
    assert adam.attrs["optimizer"] == "adam" and list(adam.attrs["betas"]) == [0.8, 0.99]
    stored = json.loads(xr.open_dataset(next(parts.iterdir())).attrs["run_params"])
    assert stored["optimizer"] == "adam" and stored["betas"] == [0.8, 0.99]
    with pytest.raises(ValueError, match="optimizer"):  # an SGD scan cannot reuse Adam's runs
        netscan.train_scan("0.05,0.5", epochs=1, batch_size=512, parts=parts, **TINY)
    one = train(elr=0.5, epochs=1, batch_size=512, optimizer="adam", betas=(0.8, 0.99), **TINY)
    np.testing.assert_array_equal(adam.loss.sel(elr=0.5), one.loss)
    mom = netscan.train_scan("0.05,0.5", seeds=1, epochs=1, batch_size=512, momentum=0.9,
                             momentum_mode="transport", threads=1, **TINY)
    assert (mom.attrs["momentum"], mom.attrs["momentum_mode"]) == (0.9, "transport")
    sgd = netscan.train_scan("0.05,0.5", seeds=1, epochs=1, batch_size=512, threads=1, **TINY)
    assert sgd.attrs["optimizer"] == "sgd" and "momentum_mode" not in sgd.attrs
    both = netscan.concat_optimizers([sgd, mom, adam.expand_dims(seed=[0])])
    assert both.optimizer.values.tolist() == ["sgd", "sgd-m0.9-transport", "adam-0.8-0.99"]
    assert both.momentum.values.tolist() == [0.0, 0.9, 0.0]
    assert both.momentum_mode.values.tolist() == ["official", "transport", ""]
    assert both.beta1.values[2] == 0.8 and np.isnan(both.beta1.values[0])
    assert both.regime.dims == ("optimizer", "elr", "seed")
    assert not {"optimizer", "momentum", "momentum_mode", "betas"} & set(both.attrs)
    outer = netscan.concat_optimizers([sgd, mom.isel(elr=[1])], join="outer")
    assert outer.regime.sel(optimizer="sgd-m0.9-transport").values[:, 0].tolist() == [
        "", str(mom.regime.values[1, 0])]
    assert np.isnan(outer.tail_loss.sel(optimizer="sgd-m0.9-transport", elr=0.05)).all()
    np.testing.assert_array_equal(both.loss.sel(optimizer="sgd"), sgd.loss)
    with pytest.raises(ValueError, match="distinct"):
        netscan.concat_optimizers([sgd, sgd])
    with pytest.raises(ValueError, match="same ELR grid"):
        netscan.concat_optimizers([sgd, mom.isel(elr=[0])])


# -- the command line -----------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["train", "train-scan"])
@pytest.mark.parametrize("args, word", [
    (["--optimizer", "rmsprop"], "--optimizer"), (["--momentum-mode", "sideways"], "--momentum-mode"),
    (["--optimizer", "adam", "--momentum", "0.9"], "momentum=0.9 is SphereSGD's"),
    (["--betas", "0.9"], "--betas must be two numbers"),
    (["--optimizer", "adam", "--betas", "0.9,1.5"], "betas[1]"),
    (["--momentum", "0.9", "--momentum-mode", "transport", "--betas", "0.9,0.99"], "betas=")])
def test_cli_bad_optimizer_options_exit_2_with_one_line(tmp_path, capsys, cmd, args, word):
    grid = ["--elr", "0.1"] if cmd == "train" else ["--elrs", "0.1"]
    out = tmp_path / "x.nc"
    try:
        code = main([cmd, *grid, *CLI, *args, "--out", str(out)])
    except SystemExit as err:  # argparse's choices: its own one-line error and exit
        code = err.code
    assert code == 2
    _one_line_error(capsys, word)
    assert not out.exists() and not os.path.exists(str(out) + ".parts")


def test_cli_train_and_train_scan_take_the_optimizer(tmp_path, capsys):
    run_nc, scan_nc = tmp_path / "run.nc", tmp_path / "scan.nc"
    assert main(["train", "--elr", "0.1", *CLI, "--momentum", "0.9", "--momentum-mode",
                 "transport", "--out", str(run_nc)]) == 0
    assert main(["train-scan", "--elrs", "0.05,0.5", *CLI, "--optimizer", "adam", "--betas",
                 "0.8,0.99", "--out", str(scan_nc)]) == 0
    capsys.readouterr()
    one, scan = xr.load_dataset(run_nc), xr.load_dataset(scan_nc)
    assert (one.attrs["momentum"], one.attrs["momentum_mode"]) == (0.9, "transport")
    assert scan.attrs["optimizer"] == "adam" and scan.attrs["betas"].tolist() == [0.8, 0.99]
    direct = train(elr=0.05, epochs=1, batch_size=512, optimizer="adam", betas=(0.8, 0.99), **TINY)
    np.testing.assert_array_equal(scan.loss.sel(elr=0.05), direct.loss)


def test_a_scan_read_back_from_its_parts_keeps_every_label_whole(tmp_path):
    """A part's file fixes its strings' width ("convergence": 11 characters); the scan assembled
    from parts must not inherit it and cut "chaotic_equilibrium" when it is written."""
    from toymodel.bridge._parts import RunParts

    store = RunParts(tmp_path / "parts", {"epochs": 1})
    for elr, label in ((0.01, "convergence"), (0.1, "chaotic_equilibrium")):
        store.put(xr.Dataset({"regime": ((), label)}, coords={"elr": elr}), elr, 0)
    scan = xr.concat([store.get(0.01, 0), store.get(0.1, 0)], dim="elr")
    scan.to_netcdf(tmp_path / "scan.nc")
    back = xr.load_dataset(tmp_path / "scan.nc")
    assert back.regime.values.tolist() == ["convergence", "chaotic_equilibrium"]
