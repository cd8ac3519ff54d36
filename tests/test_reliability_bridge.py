"""Reliability of the torch bridge's commands: resumable scans, protected outputs, refusals made
before any training, honest labels, and the run specification.

Tiny runs only (ConvNetSI width 4 on digits, one thread, 1-3 epochs unless a label needs more).
Oracles: an uninterrupted scan (for a resumed one), the file's bytes before a refused command,
the parameter count of a built model (for the up-front estimate).
"""
from __future__ import annotations

import inspect
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
xr = pytest.importorskip("xarray")

from toymodel import regimes  # noqa: E402
from toymodel.bridge import RunSpec, models, run, train, train_scan, training  # noqa: E402
from toymodel.cli import main  # noqa: E402

torch.set_num_threads(1)
TINY = ["--width", "4", "--epochs", "1", "--threads", "1", "--no-progress"]
SCAN = ["train-scan", "--elrs", "0.01,1", "--dtype", "float64", *TINY]


class _Stop(Exception):
    """Stands for Ctrl-C or a crash between two runs of a scan."""


def _stop_after_first(ds):
    raise _Stop(float(ds.elr))


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def _without_clock(ds):
    return ds.drop_vars("train_seconds")


# -- 1. train-scan keeps each finished run and resumes --------------------------------------------
def test_interrupted_scan_keeps_its_runs_and_resumes_bit_for_bit(tmp_path, capsys):
    whole = tmp_path / "whole.nc"
    assert main([*SCAN, "--out", str(whole)]) == 0
    assert not (tmp_path / "whole.nc.parts").exists()  # removed once the result is written

    out = tmp_path / "resumed.nc"
    parts = tmp_path / "resumed.nc.parts"
    with pytest.raises(_Stop):
        train_scan("0.01,1", width=4, epochs=1, dtype="float64", progress_bar=False,
                   parts=parts, callback=_stop_after_first)
    assert sorted(os.listdir(parts)) == ["elr_0.01_seed_0.nc"]
    assert not out.exists()

    calls = []
    real_run = training.run

    def counting_run(*args, **kw):
        calls.append(args[2].elr)
        return real_run(*args, **kw)

    training.run = counting_run
    try:
        assert main([*SCAN, "--out", str(out)]) == 0
    finally:
        training.run = real_run
    assert calls == [1.0]  # only the missing ELR was trained
    assert "resumed: 1 of 2 runs" in capsys.readouterr().out
    assert not parts.exists()
    a, b = xr.load_dataset(whole), xr.load_dataset(out)
    xr.testing.assert_identical(_without_clock(a), _without_clock(b))
    # the library without a parts folder gives the same numbers
    mem = train_scan("0.01,1", width=4, epochs=1, dtype="float64", progress_bar=False)
    for name in ("loss", "step_loss", "tail_loss", "random_loss", "shares", "test_accuracy"):
        np.testing.assert_array_equal(mem[name].values, a[name].values)


def test_ctrl_c_in_the_cli_keeps_the_finished_runs(tmp_path, capsys, monkeypatch):
    real_run = training.run
    seen = []

    def run_then_interrupt(*args, **kw):
        if seen:
            raise KeyboardInterrupt
        seen.append(1)
        return real_run(*args, **kw)

    monkeypatch.setattr(training, "run", run_then_interrupt)
    out = tmp_path / "scan.nc"
    assert main([*SCAN, "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "kept 1 of 2 runs" in err and "resume" in err
    assert os.listdir(tmp_path / "scan.nc.parts") == ["elr_0.01_seed_0.nc"]
    assert not out.exists()


def test_resume_refuses_runs_made_with_other_parameters(tmp_path, capsys):
    parts = tmp_path / "scan.nc.parts"
    with pytest.raises(_Stop):
        train_scan("0.01,1", width=4, epochs=1, dtype="float64", progress_bar=False, parts=parts,
                   callback=_stop_after_first)
    before = (parts / "elr_0.01_seed_0.nc").read_bytes()
    assert main([*SCAN, "--epochs", "2", "--out", str(tmp_path / "scan.nc")]) == 2  # last wins
    line = _one_line_error(capsys, "epochs=1", "epochs=2", "scan.nc.parts")
    assert "delete" in line
    assert (parts / "elr_0.01_seed_0.nc").read_bytes() == before


# -- 2. existing results are not overwritten without --overwrite ----------------------------------
@pytest.mark.parametrize("cmd", [["train", "--elr", "0.01"], ["train-scan", "--elrs", "0.01"]])
def test_existing_out_is_refused_unless_overwrite(tmp_path, capsys, cmd):
    out = tmp_path / "old.nc"
    out.write_bytes(b"precious results")
    assert main([*cmd, *TINY, "--out", str(out)]) == 2
    _one_line_error(capsys, "old.nc", "exists", "--overwrite")
    assert out.read_bytes() == b"precious results"
    assert main([*cmd, *TINY, "--out", str(out), "--overwrite"]) == 0
    assert xr.load_dataset(out).sizes["epoch"] == 1


# -- 3. the destination is checked before any training --------------------------------------------
@pytest.mark.parametrize("cmd", [["train", "--elr", "0.01"], ["train-scan", "--elrs", "0.01,1"]])
@pytest.mark.parametrize("dest, word", [
    ("/etc/passwd/a.nc", "/etc/passwd"), ("{tmp}/missing/a.nc", "does not exist"),
    ("{tmp}/a.txt", ".nc"), ("{tmp}/adir.nc", "directory"),
])
def test_bad_destination_is_refused_before_training(tmp_path, capsys, monkeypatch, cmd, dest, word):
    (tmp_path / "adir.nc").mkdir()

    def no_training(*args, **kw):
        raise AssertionError("trained before checking --out")

    monkeypatch.setattr(training, "run", no_training)
    assert main([*cmd, *TINY, "--out", dest.format(tmp=tmp_path)]) == 2
    _one_line_error(capsys, "--out", word)


# -- 4. refusals up front, one line, exit 2 -------------------------------------------------------
def test_elr_whose_learning_rate_overflows_is_refused(tmp_path, capsys):
    assert main(["train", "--elr", "1e300", *TINY, "--out", str(tmp_path / "a.nc")]) == 2
    line = _one_line_error(capsys, "elr=1e+300", "float32", "elr must be in (0, ")
    bound = float(line.rsplit("(0, ", 1)[1].split("]")[0])
    assert 1e30 < bound < 3.5e38
    assert main(["train", "--elr", "1e308", "--dtype", "float64", *TINY,
                 "--out", str(tmp_path / "a.nc")]) == 2
    _one_line_error(capsys, "elr=1e+308", "float64")
    # in a scan, every ELR is checked before the first run: nothing is trained or kept
    assert main(["train-scan", "--elrs", "0.01,1e300", *TINY, "--out", str(tmp_path / "s.nc")]) == 2
    _one_line_error(capsys, "elr=1e+300")
    assert not (tmp_path / "s.nc.parts").exists()


def test_too_wide_a_network_is_refused_with_the_memory_it_needs(tmp_path, capsys):
    assert main(["train", "--elr", "0.01", *TINY[2:], "--width", "100000",
                 "--out", str(tmp_path / "a.nc")]) == 2
    n = models.param_count("convnet-si", width=100000, num_classes=10, in_channels=1)
    _one_line_error(capsys, "width=100000", f"{n:.3g} parameters", "TB", "lower the width")


@pytest.mark.parametrize("name", ["convnet-si", "resnet18-si"])
def test_parameter_and_activation_estimates_match_built_models(name):
    for width in (1, 2, 3):
        for channels, classes in ((1, 10), (3, 100)):
            net = models.build_model(name, width=width, num_classes=classes, in_channels=channels)
            built = sum(p.numel() for p in net.parameters())
            assert models.param_count(name, width=width, num_classes=classes,
                                      in_channels=channels) == built
    net = models.build_model(name, width=3, num_classes=10, in_channels=1)
    seen = [0]
    for m in net.modules():
        if not list(m.children()):
            m.register_forward_hook(lambda mod, i, o: seen.__setitem__(0, seen[0] + o.numel()))
    net(torch.zeros(2, 1, 8, 8))
    est = models.activation_count(name, width=3, in_channels=1, size=8)
    assert seen[0] / 2 <= est <= 1.1 * seen[0] / 2  # over-counts only the logits


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_dataset_shapes_for_the_estimate_match_the_loader(name):
    from toymodel.bridge import data
    d = data.load_data(name)
    n, channels, side, classes = data.SHAPES[name]
    assert d.x_train.shape[0] + d.x_test.shape[0] == n and d.num_classes == classes
    assert d.x_train.shape[1:] == (channels, side, side)


@pytest.mark.parametrize("extra, word", [
    (["--epochs", "0"], "epochs"), (["--batch-size", "1"], "batch_size"),
    (["--seed", "-1"], "seed"), (["--seed", str(2**64)], "seed"), (["--tail", "5"], "tail"),
    (["--threads", "0"], "--threads"), (["--input-size", "2"], "input_size"),
    (["--input-size", "100000"], "memory"), (["--record-every", "0"], "record_every"),
    (["--eval-every", "0"], "eval_every"), (["--epochs", str(10**13)], "memory"),
    (["--device", "tpu"], "'tpu'"), (["--width", "0"], "width"),
])
def test_bad_values_exit_2_with_one_line(tmp_path, capsys, extra, word):
    args = ["train", "--elr", "0.01", *TINY, *extra, "--out", str(tmp_path / "a.nc")]
    assert main(args) == 2
    _one_line_error(capsys, word)


@pytest.mark.parametrize("elr", ["nan", "-1", "inf", "0"])
def test_bad_elr_exit_2_with_one_line(tmp_path, capsys, elr):
    assert main(["train", "--elr", elr, *TINY, "--out", str(tmp_path / "a.nc")]) == 2
    _one_line_error(capsys, "elr")


# -- 5. honest labels -----------------------------------------------------------------------------
def test_a_run_that_never_moved_is_unresolved_not_divergent():
    ds = train(elr=1e-300, epochs=2, width=4, progress_bar=False)
    assert float(ds.tail_angle) == 0.0
    assert str(ds.regime.values) == regimes.UNRESOLVED
    assert "per step" in str(ds.regime_reason.values)


def test_converging_and_diverging_digits_runs_keep_their_labels():
    conv = train(elr=0.01, epochs=40, width=4, tail=3, progress_bar=False)
    div = train(elr=1.0, epochs=3, width=4, progress_bar=False)
    for ds, want in ((conv, "convergence"), (div, "divergence")):
        assert str(ds.regime.values) == want, (want, float(ds.tail_loss), float(ds.tail_angle))
        # the same label as the loss rule alone: the motion rule does not touch a moving run
        assert str(regimes.classify_summary(float(ds.tail_loss), float(ds.random_loss))[0]) == want


# -- 6. one run specification, validated once; shared validators ----------------------------------
def test_run_spec_is_frozen_validated_and_passed_whole():
    spec = RunSpec(elr=0.05, epochs=3, batch_size=256)
    assert spec.tail == 1 and spec.constraint == "total"
    with pytest.raises(AttributeError):
        spec.elr = 1.0
    with pytest.raises(ValueError, match="tail must be an integer in \\[1, 3\\], got 4"):
        RunSpec(elr=0.05, epochs=3, tail=4)
    with pytest.raises(ValueError, match="constraint"):
        spec.replace(constraint="sphere")
    net, data, _ = training.prepare(width=4, dtype="float64")
    a = run(net, data, spec, progress_bar=False)
    net, data, _ = training.prepare(width=4, dtype="float64")
    b = run(net, data, elr=0.05, epochs=3, batch_size=256, progress_bar=False)
    xr.testing.assert_identical(_without_clock(a), _without_clock(b))
    with pytest.raises(TypeError, match="not both"):
        run(net, data, spec, elr=0.1)
    assert len(inspect.signature(run).parameters) <= 8
    assert len(inspect.getsource(run).splitlines()) <= 70


def test_result_layout_is_unchanged():
    ds = train(elr=0.05, epochs=1, width=4, batch_size=512, progress_bar=False)
    assert set(ds.data_vars) == {
        "loss", "accuracy", "grad_norm", "angle", "si_norm", "cosine_to_init", "test_loss",
        "test_accuracy", "individual_elr", "shares", "group_grad_norm", "step_loss",
        "step_grad_norm", "step_angle", "random_loss", "init_loss", "tail_loss", "tail_grad_norm",
        "tail_angle", "regime", "regime_reason", "lr", "train_seconds"}
    assert set(ds.coords) == {"epoch", "step", "group", "elr"}
    assert {"constraint", "batch_size", "epochs", "seed", "record_every", "eval_every", "tail",
            "rho", "steps_per_epoch", "data", "n_train", "n_test", "group_params",
            "torch_version", "model", "width", "device", "dtype", "head_norm",
            "input_size"} <= set(ds.attrs)


def test_bridge_has_no_private_copies_of_the_shared_validators():
    import toymodel._cli_bridge as cli
    from toymodel.bridge import data
    for module in (training, models, data, cli):
        src = inspect.getsource(module)
        for copy in ("def _int(", "def _check_width(", "must be an integer >="):
            assert copy not in src, (module.__name__, copy)
