"""Network scans on the toy scans' engine: a seed dim, runs kept and resumed, a Dask cluster that
loses a worker, the paper's presets on a CIFAR-shaped stand-in, seeded augmentation and label
corruption, and refusals.

Tiny runs only (ConvNetSI width 4 on digits, one torch thread, 1-2 epochs). Oracles: single runs
of `toymodel.bridge.train` (for every cell of a scan), the in-process scan (for a distributed or
resumed one), direct index arithmetic (for the crops, flips and corrupted labels).
"""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

torch = pytest.importorskip("torch")
xr = pytest.importorskip("xarray")

from toymodel import regimes  # noqa: E402
from toymodel.bridge import data as D  # noqa: E402
from toymodel.bridge import netscan, presets, training  # noqa: E402
from toymodel.cli import main  # noqa: E402

torch.set_num_threads(1)
PLAN = dict(width=4, epochs=1, dtype="float64", threads=1)
KW = dict(PLAN, progress_bar=False)
CLI = ["--width", "4", "--epochs", "1", "--threads", "1", "--no-progress", "--dtype", "float64"]
#: variables whose values a run's numbers determine (not the clock)
NUMBERS = ("loss", "step_loss", "grad_norm", "shares", "test_accuracy", "random_loss",
           "tail_loss", "tail_angle", "lr", "regime", "regime_reason")


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])


def assert_same_runs(a, b):
    # exact on purpose: the same code on the same inputs, one torch thread, on the same machine
    # (same CPU dispatch), float64; runs share no reduction, so nothing depends on their order
    for name in NUMBERS:
        x, y = a[name].values, b[name].values
        assert x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


# -- layout ---------------------------------------------------------------------------------------
def test_single_seed_keeps_the_old_layout_and_equals_single_runs():
    ds = netscan.train_scan("0.01,1", seed=3, **KW)
    assert "seed" not in ds.dims and ds.regime.dims == ("elr",) and ds.attrs["seed"] == 3
    assert "rho" in ds.attrs and "seeds" not in ds.attrs
    for i, elr in enumerate((0.01, 1.0)):
        one = training.train(elr=elr, seed=3, width=4, epochs=1, dtype="float64",
                             progress_bar=False)
        assert_same_runs(ds.isel(elr=i), one)


def test_seed_dim_is_elr_by_seed_with_the_toy_scan_names():
    ds = netscan.train_scan("0.01,1", seeds=[0, 5], **KW)
    single = netscan.train_scan("0.01,1", **KW)
    assert set(ds.data_vars) == set(single.data_vars)  # the same variable names, one more dim
    for name in ds.data_vars:
        assert ds[name].dims[:2] == ("elr", "seed"), name
    assert ds.seed.dtype == np.int64 and ds.seed.values.tolist() == [0, 5]
    assert json.loads(ds.attrs["seeds"]) == [0, 5]
    assert "seed" not in ds.attrs and "rho" not in ds.attrs  # differ per seed
    assert set(np.unique(ds.regime.values)) <= set(regimes.LABELS)
    assert ds.regime_reason.dims == ("elr", "seed")
    for j, seed in enumerate((0, 5)):  # every cell is the single run with its seed
        for i, elr in enumerate((0.01, 1.0)):
            one = training.train(elr=elr, seed=seed, width=4, epochs=1, dtype="float64",
                                 progress_bar=False)
            assert_same_runs(ds.isel(elr=i, seed=j), one)
    # seeds draw different networks: the random level differs, equal along the ELRs
    rl = ds.random_loss.values
    assert rl[0, 0] != rl[0, 1] and np.array_equal(rl[0], rl[1])


def test_seed_grammar_is_the_toy_scans():
    assert netscan.plan_scan("0.01", seeds=3, **PLAN).seeds.tolist() == [0, 1, 2]
    assert netscan.plan_scan("0.01", seeds="4,2", **PLAN).seeds.tolist() == [4, 2]
    p = netscan.plan_scan("0.01", **PLAN)
    assert p.seeds.tolist() == [0] and not p.seed_dim


@pytest.mark.parametrize("kw, words", [
    (dict(seeds=2, seed=1), ["seeds=2", "seed=1", "not both"]),
    (dict(seeds=[1, 1]), ["seeds", "distinct"]),
    (dict(seeds=-1), ["seeds", "-1"]),
    (dict(seeds="a,b"), ["seeds", "'a'"]),
    (dict(seeds=0), ["seeds", "0"]),
    (dict(preset="cifar-huge"), ["preset", "'cifar-huge'", "paper-fig1"]),
    (dict(corrupt=1.5), ["corrupt", "1.5"]),
    (dict(corrupt=float("nan")), ["corrupt", "nan"]),
    (dict(augment="yes"), ["augment", "'yes'"]),
    (dict(threads=0), ["threads", "0"]),
    (dict(corrupt_seed=-3, corrupt=0.1), ["corrupt_seed", "-3"]),
])
def test_bad_input_is_refused_before_any_run(kw, words, monkeypatch):
    monkeypatch.setattr(training, "run", lambda *a, **k: pytest.fail("trained"))
    with pytest.raises(ValueError) as err:
        netscan.train_scan("0.01", **{**KW, **kw})
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_missing_elrs_or_epochs_are_named():
    with pytest.raises(ValueError, match="elrs is required"):
        netscan.plan_scan(width=4, epochs=1)
    with pytest.raises(ValueError, match="epochs is required"):
        netscan.plan_scan("0.01", width=4)


# -- kept runs, resumed -----------------------------------------------------------------------------
class _Stop(Exception):
    pass


def test_interrupted_seed_scan_resumes_with_only_the_missing_runs(tmp_path, monkeypatch):
    whole = netscan.train_scan("0.01,1", seeds=2, parts=tmp_path / "whole", **KW)
    parts = tmp_path / "p"
    seen = []

    def stop_after_two(ds):
        seen.append(ds)
        if len(seen) == 2:
            raise _Stop

    with pytest.raises(_Stop):
        netscan.train_scan("0.01,1", seeds=2, parts=parts, callback=stop_after_two, **KW)
    assert sorted(os.listdir(parts)) == ["elr_0.01_seed_0.nc", "elr_0.01_seed_1.nc"]
    calls = []
    real = training.run
    monkeypatch.setattr(training, "run", lambda *a, **k: calls.append((a[2].elr, a[2].seed))
                        or real(*a, **k))
    resumed = netscan.train_scan("0.01,1", seeds=2, parts=parts, **KW)
    assert calls == [(1.0, 0), (1.0, 1)]
    xr.testing.assert_identical(whole.drop_vars("train_seconds"),
                                resumed.drop_vars("train_seconds"))
    # other parameters: refused, naming them, nothing written
    with pytest.raises(ValueError, match="epochs=1.*epochs=2"):
        netscan.train_scan("0.01,1", seeds=2, parts=parts, **{**KW, "epochs": 2})


def test_cli_seeds_scan_writes_the_labelled_layout_and_resumes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.nc"
    assert main(["train-scan", "--elrs", "0.01,1", "--seeds", "2", *CLI, "--out", str(out)]) == 0
    ds = xr.load_dataset(out)
    assert ds.regime.dims == ("elr", "seed") and ds.seed.values.tolist() == [0, 1]
    assert not (tmp_path / "s.nc.parts").exists()
    text = capsys.readouterr().out
    assert "seed" in text.splitlines()[0] and text.count("divergence") == 2
    # Ctrl-C after the first run keeps it; the same command resumes
    real = training.run
    seen = []

    def run_then_interrupt(*a, **k):
        if seen:
            raise KeyboardInterrupt
        seen.append(1)
        return real(*a, **k)

    monkeypatch.setattr(training, "run", run_then_interrupt)
    again = tmp_path / "r.nc"
    assert main(["train-scan", "--elrs", "0.01,1", "--seeds", "2", *CLI, "--out", str(again)]) == 130
    assert "kept 1 of 4 runs" in capsys.readouterr().err
    monkeypatch.setattr(training, "run", real)
    assert main(["train-scan", "--elrs", "0.01,1", "--seeds", "2", *CLI, "--out", str(again)]) == 0
    assert "resumed: 1 of 4 runs" in capsys.readouterr().out
    xr.testing.assert_identical(ds.drop_vars("train_seconds"),
                                xr.load_dataset(again).drop_vars("train_seconds"))


@pytest.mark.parametrize("extra, words", [
    (["--seeds", "2", "--seed", "1"], ["--seed 1", "--seeds 2"]),
    (["--seeds", "x"], ["--seeds", "'x'"]),
    (["--preset", "nope"], ["preset", "'nope'"]),
    (["--corrupt", "2"], ["corrupt", "2.0"]),
    (["--scheduler", "localhost:1"], ["scheduler address", "localhost:1"]),
])
def test_cli_refusals_are_one_line_exit_2(tmp_path, capsys, extra, words):
    assert main(["train-scan", "--elrs", "0.01", *CLI, *extra, "--out", str(tmp_path / "a.nc")]) == 2
    _one_line_error(capsys, *words)
    assert not (tmp_path / "a.nc.parts").exists()


def test_cli_without_elrs_or_preset_names_both(tmp_path, capsys):
    assert main(["train-scan", *CLI, "--out", str(tmp_path / "a.nc")]) == 2
    _one_line_error(capsys, "--elrs", "--preset")


# -- on a Dask cluster ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, \
            distributed.Client(cluster) as c:
        yield c


ELRS3 = "0.01,0.1,1"


def test_distributed_equals_in_process_bit_for_bit(client, tmp_path):
    local = netscan.train_scan(ELRS3, seeds=2, **KW)
    dist = netscan.train_scan(ELRS3, seeds=2, client=client, **KW)
    assert_same_runs(local, dist)
    by_address = netscan.train_scan("0.01", seeds=[1], client=client.scheduler.address, **KW)
    assert_same_runs(local.sel(elr=[0.01], seed=[1]), by_address)


def _lost_tasks(client) -> int:
    """Tasks the scheduler took back from a worker while they were running (its log)."""
    return client.run_on_scheduler(lambda dask_scheduler: sum(
        1 for t in dask_scheduler.transition_log if t[1] == "processing" and t[2] == "released"))


def test_worker_killed_mid_scan_loses_no_run(client, tmp_path):
    kw = {**KW, "epochs": 2}
    lost_before = _lost_tasks(client)
    local = netscan.train_scan(ELRS3, seeds=2, **kw)
    victim = sorted(client.run(os.getpid).values())[0]
    killed = []

    def kill_one(ds):
        if not killed:
            os.kill(victim, signal.SIGKILL)
            killed.append(float(ds.elr))

    parts = tmp_path / "k.parts"
    dist = netscan.train_scan(ELRS3, seeds=2, client=client, parts=parts, callback=kill_one, **kw)
    assert killed
    assert _lost_tasks(client) > lost_before  # the victim was running a run, which was redone
    assert len(os.listdir(parts)) == 6  # every run committed, once
    assert_same_runs(local, dist)
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker
    assert victim not in client.run(os.getpid).values()


def test_cli_scheduler_option_runs_on_the_cluster(client, tmp_path):
    out = tmp_path / "c.nc"
    assert main(["train-scan", "--elrs", "0.01,1", "--seeds", "0,1", *CLI,
                 "--scheduler", client.scheduler.address, "--out", str(out)]) == 0
    local = netscan.train_scan("0.01,1", seeds=2, **KW)
    assert_same_runs(local, xr.load_dataset(out))


# -- presets on the CIFAR-shaped stand-in -----------------------------------------------------------
def test_presets_are_the_papers_settings():
    fig1 = presets.PRESETS["paper-fig1"].values
    assert (fig1["model"], fig1["width"], fig1["data"], fig1["batch_size"], fig1["augment"]) == \
        ("convnet-si", 32, "cifar10", 128, False)
    assert fig1["elrs"] == (1e-5, 1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 5e-2, 1e-1)
    res = presets.PRESETS["resnet18-si"].values
    assert (res["model"], res["width"], res["data"]) == ("resnet18-si", 64, "cifar10")
    # a preset fills what is unset only
    filled = presets.apply_preset("paper-fig1", {"width": 4, "data": None})
    assert filled["width"] == 4 and filled["data"] == "cifar10"
    with pytest.raises(ValueError, match="unknown keywords"):
        presets.Preset("x", "", {"lr": 1})


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_each_preset_runs_one_tiny_epoch_on_the_stand_in(name):
    preset = presets.PRESETS[name]
    ds = netscan.train_scan([preset.values["elrs"][0]], preset=name, data="synthetic-cifar",
                            width=4 if name == "paper-fig1" else 1, epochs=1, progress_bar=False,
                            threads=1)
    assert ds.attrs["model"] == preset.values["model"] and ds.attrs["data"] == "synthetic-cifar"
    assert ds.attrs["batch_size"] == 128 and ds.attrs["input_size"] == 32
    assert ds.attrs["steps_per_epoch"] == 3  # 320 images in batches of 128, the last of 64
    assert np.isfinite(ds.loss.values).all() and str(ds.regime.values[0]) in regimes.LABELS


def test_cli_preset_fills_the_options_not_given(tmp_path):
    out = tmp_path / "p.nc"
    assert main(["train-scan", "--preset", "paper-fig1", "--data", "synthetic-cifar", "--elrs",
                 "1e-3", *CLI, "--out", str(out)]) == 0
    ds = xr.load_dataset(out)
    assert (ds.attrs["model"], ds.attrs["width"], ds.attrs["batch_size"]) == ("convnet-si", 4, 128)


def test_cli_preset_grid_is_the_papers(tmp_path, monkeypatch):
    planned = []

    class _Planned(Exception):
        pass

    def fake_run_scan(plan, **k):
        planned.append(plan)
        raise _Planned

    monkeypatch.setattr(netscan, "run_scan", fake_run_scan)
    with pytest.raises(_Planned):
        main(["train-scan", "--preset", "paper-fig1", "--data", "synthetic-cifar", *CLI,
              "--out", str(tmp_path / "q.nc")])
    assert planned[0].elrs.tolist() == list(presets.PAPER_ELRS)


def test_stand_in_is_cifar_shaped_and_seeded():
    a, b = D.load_data("synthetic-cifar", seed=1), D.load_data("synthetic-cifar", seed=1)
    assert a.x_train.shape == (320, 3, 32, 32) and a.x_test.shape == (160, 3, 32, 32)
    assert a.num_classes == 10 and torch.equal(a.x_train, b.x_train)
    n, c, side, k = D.SHAPES["synthetic-cifar"]
    assert (n, c, side, k) == (480, 3, 32, 10)


# -- augmentation and label corruption (data side) --------------------------------------------------
def test_augmentation_is_a_seeded_crop_of_the_padded_image_and_a_flip():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float64).reshape(2, 3, 8, 8).repeat(50, 1, 1, 1)
    aug = D.Augment(pad=4, fill=(-1.0, -2.0, -3.0))
    out = aug(x, D.Augment.generator(7))
    again = aug(x, D.Augment.generator(7))
    assert torch.equal(out, again) and not torch.equal(out, aug(x, D.Augment.generator(8)))
    padded = torch.tensor([-1.0, -2.0, -3.0], dtype=x.dtype).reshape(1, 3, 1, 1).expand(
        100, 3, 16, 16).clone()
    padded[..., 4:12, 4:12] = x
    flips = 0
    for b in range(100):  # every output is one window of the padded image, maybe mirrored
        windows = [padded[b, :, i:i + 8, j:j + 8] for i in range(9) for j in range(9)]
        plain = any(torch.equal(out[b], w) for w in windows)
        mirrored = any(torch.equal(out[b], w.flip(-1)) for w in windows)
        assert plain or mirrored, b
        flips += mirrored and not plain
    # flips ~ Binomial(100, 1/2) (a symmetric window can count as plain): 5 sigma is +-25
    assert 20 <= flips <= 75


def test_augmentation_pads_with_a_black_pixel():
    d = D.load_data("digits", augment=True)
    # digits are standardised by the train mean m and std s: black (0) is -m/s
    assert d.augment.fill == d.pixel_zero and d.pixel_zero[0] < 0
    assert D.load_data("synthetic-cifar", augment=True).augment.fill == (0.0,)


def test_label_corruption_replaces_an_exact_seeded_fraction_by_wrong_labels():
    clean = D.load_data("digits")
    d = D.load_data("digits", corrupt=0.25)
    mask = d.corrupted.numpy()
    assert mask.sum() == round(0.25 * clean.y_train.numel())
    y0, y1 = clean.y_train.numpy(), d.y_train.numpy()
    assert (y1[mask] != y0[mask]).all() and (y1[~mask] == y0[~mask]).all()
    assert ((0 <= y1) & (y1 < 10)).all()
    # the default seed is fixed: independent of the run's seed, the same for every run
    again = D.load_data("digits", corrupt=0.25, seed=5)
    assert torch.equal(again.y_train, d.y_train)
    other = D.load_data("digits", corrupt=0.25, corrupt_seed=1)
    assert not torch.equal(other.corrupted, d.corrupted)
    assert D.load_data("digits", corrupt=0.0).corrupted is None
    full = D.load_data("digits", corrupt=1.0)
    assert full.corrupted.all() and (full.y_train != clean.y_train).all()
    assert torch.equal(clean.x_train, d.x_train) and torch.equal(clean.y_test, d.y_test)


@pytest.mark.skipif(getattr(training, "DATA_OPTIONS", False),
                    reason="the training loop applies the data options")
def test_data_options_are_refused_while_the_loop_cannot_apply_them(tmp_path, capsys):
    with pytest.raises(ValueError, match="augment"):
        netscan.train_scan("0.01", augment=True, **KW)
    assert main(["train", "--elr", "0.01", "--corrupt", "0.1", *CLI,
                 "--out", str(tmp_path / "a.nc")]) == 2
    _one_line_error(capsys, "--corrupt", "DATA_OPTIONS")


@pytest.mark.skipif(not getattr(training, "DATA_OPTIONS", False),
                    reason="needs the training loop to apply the data options")
def test_augmented_corrupted_runs_are_reproducible_and_log_both_losses():
    a = netscan.train_scan("0.01", seeds=1, augment=True, corrupt=0.2, **KW)
    b = netscan.train_scan("0.01", seeds=1, augment=True, corrupt=0.2, **KW)
    plain = netscan.train_scan("0.01", seeds=1, **KW)
    assert_same_runs(a, b)
    assert not np.array_equal(a.loss.values, plain.loss.values)
    assert {"train_loss_corrupted", "train_loss_clean"} <= set(a.data_vars)
    assert a.attrs["augment"] == 1 and a.attrs["corrupt"] == 0.2
    # the epoch loss is the sample-weighted mean of its two parts
    n = a.attrs["n_train"]
    k = round(0.2 * n)
    mix = (k * a.train_loss_corrupted + (n - k) * a.train_loss_clean) / n
    # both sides sum the same per-sample losses in different orders: ~1e-15 relative in float64
    np.testing.assert_allclose(mix.values, a.loss.values, rtol=1e-12)
