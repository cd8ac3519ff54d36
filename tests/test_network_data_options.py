"""The training-set options in the training loop: seeded augmentation of each mini-batch, and the
losses of the corrupted and clean samples of a run with corrupted labels (docs/network_scan.md).

Tiny runs only (ConvNetSI width 4 on digits, one torch thread, 1-4 epochs, float64). Oracles: the
same run again (reproducibility), the run without the options (it must not change), the
uninterrupted run (for a resumed one), the per-sample cross-entropies of the logits the network
produced, split by the corruption mask (for ``train_loss_corrupted`` / ``train_loss_clean``).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
xr = pytest.importorskip("xarray")

from torch.nn import functional as F  # noqa: E402

from toymodel.bridge import RunSpec, train, train_scan, training  # noqa: E402
from toymodel.bridge import data as D  # noqa: E402
from toymodel.bridge._measure import _batches, _train_epoch  # noqa: E402
from toymodel.bridge._runner import optimiser  # noqa: E402
from toymodel.cli import main  # noqa: E402

torch.set_num_threads(1)
TINY = dict(width=4, dtype="float64", progress_bar=False)
NEW_VARS = {"train_loss_corrupted", "train_loss_clean"}


def _same(a, b):
    """Bit for bit: every variable and coordinate equal (NaN == NaN), the clock aside."""
    xr.testing.assert_equal(a.drop_vars("train_seconds"), b.drop_vars("train_seconds"))


def _epoch(options, aug_seed=0, mask=None):
    """One epoch of a fresh width-4 network (seed 0) on digits with ``options`` (and the
    corruption mask ``mask``, if given); returns the epoch's metrics, the inputs and logits the
    network saw, the mini-batches and the data."""
    net, images, _ = training.prepare(width=4, dtype="float64")
    images = D.with_options(images, options)
    if mask is not None:
        images = dataclasses.replace(images, corrupted=mask)
    opt = optimiser(net, RunSpec(elr=0.01, epochs=1), None)[0]
    seen = []
    net.register_forward_hook(lambda m, inp, out: seen.append((inp[0].detach(), out.detach())))
    batches = _batches(images.x_train.shape[0], 128, torch.Generator().manual_seed(0))
    aug_gen = None if images.augment is None else images.augment.generator(aug_seed)
    m = _train_epoch(net, opt, images.x_train, images.y_train, batches, augment=images.augment,
                     aug_gen=aug_gen, corrupted=images.corrupted)
    return m, seen, batches, images


# -- augmentation ---------------------------------------------------------------------------------
def test_augmentation_changes_the_batches_reproducibly():
    plain, seen0, b0, images = _epoch(D.DataOptions())
    aug, seen1, b1, _ = _epoch(D.DataOptions(augment=True))
    again, seen2, _, _ = _epoch(D.DataOptions(augment=True))
    other, seen3, _, _ = _epoch(D.DataOptions(augment=True), aug_seed=1)
    # the mini-batch order is the data-order generator's alone: augmentation leaves it unchanged
    assert all(torch.equal(p, q) for p, q in zip(b0, b1))
    for (x0, _), idx in zip(seen0, b0):
        assert torch.equal(x0, images.x_train[idx])
    # the network sees other images, the same ones for the same seed, others for another seed
    assert not any(torch.equal(x0, x1) for (x0, _), (x1, _) in zip(seen0, seen1))
    assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(seen1, seen2))
    assert not any(torch.equal(x1, x3) for (x1, _), (x3, _) in zip(seen1, seen3))
    for key in ("L", "G", "A"):
        np.testing.assert_array_equal(aug[key], again[key])
        assert not np.array_equal(aug[key], plain[key]) and not np.array_equal(aug[key], other[key])
    # evaluation and the random level use the stored images: the same as without augmentation
    a = train(elr=0.02, epochs=1, augment=True, **TINY)
    b = train(elr=0.02, epochs=1, **TINY)
    assert float(a.random_loss) == float(b.random_loss)
    assert float(a.init_loss) == float(b.init_loss)


def test_augmented_runs_are_reproducible_and_seeded_by_the_run():
    a = train(elr=0.02, epochs=2, augment=True, **TINY)
    _same(a, train(elr=0.02, epochs=2, augment=True, **TINY))
    plain = train(elr=0.02, epochs=2, **TINY)
    assert not np.array_equal(a.step_loss, plain.step_loss)
    assert a.attrs["augment"] == 1 and "corrupt_seed" not in a.attrs
    assert not NEW_VARS & set(a.data_vars)


def test_runs_without_the_options_are_unchanged():
    plain = train(elr=0.02, epochs=1, **TINY)
    _same(plain, train(elr=0.02, epochs=1, augment=False, corrupt=0.0, corrupt_seed=5, **TINY))
    assert not NEW_VARS & set(plain.data_vars)
    assert not {"augment", "corrupt", "corrupt_seed", "n_corrupted"} & set(plain.attrs)


# -- label corruption -----------------------------------------------------------------------------
def test_corruption_logs_both_losses_split_by_the_mask():
    m, seen, batches, images = _epoch(D.DataOptions(augment=True, corrupt=0.2))
    mask = images.corrupted
    sums, counts = np.zeros(2), np.zeros(2)
    for (_, logits), idx in zip(seen, batches):  # the logits each step computed its loss from
        each = F.cross_entropy(logits, images.y_train[idx], reduction="none").numpy()
        bad = mask[idx].numpy()
        sums += each[bad].sum(), each[~bad].sum()
        counts += bad.sum(), (~bad).sum()
    assert counts[0] == mask.sum() == round(0.2 * mask.numel()) and counts.sum() == mask.numel()
    # the same per-sample losses summed in another order: ~1e-15 relative in float64
    np.testing.assert_allclose([m["Lc"], m["Lk"]], sums / counts, rtol=1e-12)
    assert m["Lc"] > m["Lk"]  # within one epoch the network already fits the clean labels better
    # no corrupted sample: Lc is NaN and Lk the epoch's loss; every one: the other way round
    plain = _epoch(D.DataOptions())[0]
    epoch_loss = (plain["L"] * plain["w"]).sum() / plain["w"].sum()
    none = _epoch(D.DataOptions(), mask=torch.zeros_like(mask))[0]
    every = _epoch(D.DataOptions(), mask=torch.ones_like(mask))[0]
    assert np.isnan(none["Lc"]) and np.isnan(every["Lk"])
    np.testing.assert_allclose([none["Lk"], every["Lc"]], epoch_loss, rtol=1e-12)
    np.testing.assert_array_equal(none["L"], plain["L"])  # measuring does not touch the steps


def test_corrupted_run_records_both_losses_and_its_options():
    ds = train(elr=0.02, epochs=2, corrupt=0.2, **TINY)
    assert NEW_VARS <= set(ds.data_vars) and ds.train_loss_clean.dims == ("epoch",)
    n, k = ds.attrs["n_train"], ds.attrs["n_corrupted"]
    assert k == round(0.2 * n)
    assert ds.attrs["corrupt"] == 0.2 and ds.attrs["corrupt_seed"] == D.CORRUPT_SEED
    assert ds.attrs["augment"] == 0
    mix = (k * ds.train_loss_corrupted + (n - k) * ds.train_loss_clean) / n
    np.testing.assert_allclose(mix.values, ds.loss.values, rtol=1e-12)
    # another corruption seed corrupts other labels: another run
    other = train(elr=0.02, epochs=2, corrupt=0.2, corrupt_seed=1, **TINY)
    assert not np.array_equal(other.loss, ds.loss)


# -- resume and kept runs -------------------------------------------------------------------------
def test_two_plus_two_resumed_epochs_equal_four_straight_epochs_with_the_options(tmp_path):
    kw = dict(elr=0.02, augment=True, corrupt=0.2, **TINY)
    straight = train(epochs=4, **kw)
    train(epochs=2, checkpoint_dir=tmp_path, **kw)
    assert sorted(os.listdir(tmp_path)) == ["epoch_00002.pt"]
    resumed = train(epochs=4, checkpoint_dir=tmp_path, resume=True, **kw)
    assert resumed.attrs["resumed_from_epoch"] == 2
    _same(straight, resumed)
    assert NEW_VARS <= set(resumed.data_vars)


@pytest.mark.parametrize("change, word", [(dict(augment=False), "augment"),
                                          (dict(corrupt=0.1), "corrupt=0.1"),
                                          (dict(corrupt_seed=1), "corrupt_seed")])
def test_resume_refuses_other_data_options(tmp_path, change, word):
    kw = dict(elr=0.02, augment=True, corrupt=0.2, **TINY)
    train(epochs=1, checkpoint_dir=tmp_path, **kw)
    with pytest.raises(ValueError, match=word):
        train(epochs=2, checkpoint_dir=tmp_path, resume=True, **{**kw, **change})


def test_plain_checkpoint_refuses_a_resume_with_options(tmp_path):
    train(elr=0.02, epochs=1, checkpoint_dir=tmp_path, **TINY)
    with pytest.raises(ValueError, match="augment"):
        train(elr=0.02, epochs=2, checkpoint_dir=tmp_path, resume=True, augment=True, **TINY)


def test_kept_runs_of_a_scan_with_other_options_are_refused(tmp_path):
    parts = tmp_path / "parts"
    a = train_scan("0.02", epochs=1, parts=parts, augment=True, **TINY)
    assert a.attrs["augment"] == 1
    _same(a, train_scan("0.02", epochs=1, parts=parts, augment=True, **TINY))
    with pytest.raises(ValueError, match="other parameters.*augment"):
        train_scan("0.02", epochs=1, parts=parts, **TINY)


# -- command line ---------------------------------------------------------------------------------
def test_cli_train_with_augmentation_and_corruption(tmp_path, capsys):
    out = tmp_path / "a.nc"
    assert main(["train", "--elr", "0.01", "--augment", "--corrupt", "0.2", "--data", "digits",
                 "--width", "4", "--epochs", "1", "--threads", "1", "--no-progress",
                 "--out", str(out)]) == 0
    assert "saved" in capsys.readouterr().out
    ds = xr.load_dataset(out)
    assert NEW_VARS <= set(ds.data_vars) and np.isfinite(ds.train_loss_corrupted).all()
    assert ds.attrs["augment"] == 1 and ds.attrs["corrupt"] == 0.2
    assert ds.attrs["n_corrupted"] == round(0.2 * ds.attrs["n_train"])
