"""The scan API, its zarr store and the scan CLI.

Oracles: the reference batch stepper (dynamics.summarize_batch) run cell by cell on the same
initial states, the closed forms of theory.py, the classifier, and an uninterrupted run of the
same scan (for every resume test, compared bit for bit).
"""
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

xr = pytest.importorskip("xarray")
pytest.importorskip("zarr")

from toymodel import dynamics, regimes, theory  # noqa: E402
from toymodel.cli import main as cli_main  # noqa: E402
from toymodel.problems import RayleighToy, SphereToy  # noqa: E402

scan_mod = importlib.import_module("toymodel.scan")
run_mod = importlib.import_module("toymodel._scan_run")  # the runner: it calls compute_chunk
store_mod = importlib.import_module("toymodel._store")
scan = scan_mod.scan

ALPHAS = (1.0, 2.0, 4.0)
ELRS = np.array([0.05, 0.13, 0.3, 0.6, 2.0, 5.0])  # both sides of 1/7 and of 1/1
SMALL = dict(seeds=2, steps=300, tail=60, backend="numpy", progress_bar=False)


def _equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def assert_same_scan(a, b, ignore_attrs=("created",)):
    """Bit-for-bit equality of two scans: every variable, coordinate and attribute.

    Exact on purpose: both runs take the same code path on the same inputs in one process, and
    every cell is computed by per-cell operations in a fixed order whatever the chunk or batch it
    lands in (no cross-cell reduction), so resumed, re-chunked and uninterrupted scans agree to the
    bit (docs/numerics.md).
    """
    a, b = a.load(), b.load()
    assert set(a.variables) == set(b.variables)
    for name in a.variables:
        assert a[name].dims == b[name].dims, name
        assert _equal(a[name].values, b[name].values), name
    strip = lambda d: {k: v for k, v in d.items() if k not in ignore_attrs}  # noqa: E731
    assert strip(a.attrs) == strip(b.attrs)


# -- the grid and its oracle -------------------------------------------------------------------------
def test_every_cell_equals_the_reference_batch_stepper():
    ds = scan(list(ALPHAS), ELRS, **SMALL)
    p = SphereToy(ALPHAS)
    theta0 = dynamics.initial_states(p, [0, 1], "total")
    for i, elr in enumerate(ELRS):
        ref = dynamics.summarize_batch(p, theta0, np.full(2, elr), steps=300, tail=60)
        for name in ("tail_loss", "tail_loss_std", "final_loss", "min_share",
                     "frac_above_threshold", "tail_grad_norm", "tail_angle", "status", "bad_step"):
            assert _equal(ds[name].values[i, 0], ref[name]), (name, elr)
    assert ds.sizes == {"elr": 6, "config": 1, "seed": 2, "group": 3}
    assert "lyapunov" not in ds
    # stored as codes, decoded and reasoned on demand: the labels and reasons of classify_summary
    labels, reasons = regimes.classify_summary(ds["tail_loss"].values, p.random_loss(),
                                               tail_angle=ds["tail_angle"].values, tail_steps=60)
    assert ds["regime"].dtype == np.int8 and "regime_reason" not in ds
    assert (scan_mod.decode_regime(ds["regime"]).values == labels).all()
    assert (scan_mod.regime_reason(ds).values == reasons).all()


def test_theory_variables_and_provenance():
    ds = scan(ALPHAS, ELRS, **SMALL)
    for i, elr in enumerate(ELRS):
        assert scan_mod.decode_regime(ds["predicted_regime"]).values[i, 0] == theory.predict_regime(elr, ALPHAS)
        assert ds["equilibrium_loss"].values[i, 0] == theory.equilibrium_loss(elr, ALPHAS)
    # 1/(1+2+4) is correctly rounded: the literal 1/7 to the bit, on any CPU
    assert float(ds["total_threshold"][0]) == 1 / 7
    assert float(ds["divergence_threshold"][0]) == 1.0
    assert float(ds["random_loss"][0]) == 3.5
    import toymodel
    assert ds.attrs["toymodel_version"] == toymodel.__version__
    assert ds.attrs["backend"] == "numpy" and ds.attrs["dtype"] == "float64"
    assert json.loads(ds.attrs["seeds"]) == [0, 1]
    assert ds.attrs["steps"] == 300 and ds.attrs["tail"] == 60
    assert json.loads(ds.attrs["problems"])[0]["alphas"] == list(ALPHAS)


def test_configs_of_different_shapes_equal_their_single_scans():
    rayleigh = RayleighToy(np.diag([0.0, 1.0, 3.0]))
    configs = [list(ALPHAS), [1.0, 3.0], SphereToy([2.0, 2.0, 2.0], dim=3), rayleigh, [0.5, 8.0]]
    ds = scan(configs, ELRS[:4], **SMALL)
    assert ds.sizes["config"] == 5 and ds.sizes["group"] == 3
    assert np.isnan(ds["alphas"].values[1, 2]) and ds["alphas"].values[1, 1] == 3.0
    assert ds["n_groups"].values.tolist() == [3, 2, 3, 1, 2]
    assert ds["dim"].values.tolist() == [2, 2, 3, 3, 2]
    for j, cfg in enumerate(configs):
        one = scan(cfg, ELRS[:4], **SMALL)
        for name in ("tail_loss", "min_share", "regime", "status"):
            assert _equal(ds[name].values[:, j], one[name].values[:, 0]), (j, name)
        assert float(ds["random_loss"][j]) == float(one["random_loss"][0])


def test_results_do_not_depend_on_the_chunking():
    a = scan([ALPHAS, [1.0, 3.0]], ELRS, **SMALL)
    b = scan([ALPHAS, [1.0, 3.0]], ELRS, chunk_size=1, **SMALL)
    c = scan([ALPHAS, [1.0, 3.0]], ELRS, chunk_size=(4, 1, 1), **SMALL)
    for name in ("tail_loss", "final_loss", "regime", "tail_angle"):
        assert _equal(a[name].values, b[name].values) and _equal(a[name].values, c[name].values)


def test_lyapunov_and_float32():
    ds = scan(ALPHAS, ELRS[:3], lyapunov=True, dtype="float32", **SMALL)
    assert ds["tail_loss"].dtype == np.float32 and ds["lyapunov"].dtype == np.float32
    p = SphereToy(ALPHAS)
    theta0, dirs = dynamics.initial_states(p, [0, 1], "total", twin=True)
    ref = dynamics.summarize_batch(p, theta0.astype(np.float32), np.full(2, ELRS[2]), steps=300,
                                   tail=60, twin_dirs=dirs.astype(np.float32))
    assert _equal(ds["lyapunov"].values[2, 0], ref["lyapunov"])
    assert np.isfinite(ds["lyapunov"].values).all()


def test_invalid_cells_are_flagged_not_crashing(monkeypatch):
    import toymodel.backend as backend

    real = backend.summarize

    def poisoned(*args, **kw):
        out = real(*args, **kw)
        out["status"][0] = dynamics.STATUS_NONFINITE
        out["status"][1] = dynamics.STATUS_ZERO_NORM
        for name in dynamics.SUMMARY_NAMES:
            out[name][:2] = np.nan
        return out

    monkeypatch.setattr(backend, "summarize", poisoned)
    ds = scan(ALPHAS, ELRS[:2], **SMALL)
    labels, reasons = scan_mod.decode_regime(ds["regime"]).values, scan_mod.regime_reason(ds).values
    assert labels[0, 0, 0] == "invalid"
    assert reasons[0, 0, 0] == dynamics.INVALID_REASONS[dynamics.STATUS_NONFINITE]
    assert reasons[0, 0, 1] == dynamics.INVALID_REASONS[dynamics.STATUS_ZERO_NORM]
    assert labels[1, 0, 0] != "invalid"


def test_agreement_counts_against_a_hand_made_dataset():
    elr = np.array([0.1, 0.14, 0.5, 2.0])
    obs = np.array([["convergence", "convergence"], ["convergence", "chaotic_equilibrium"],
                    ["chaotic_equilibrium", "divergence"], ["divergence", "invalid"]])
    pred = np.array(["convergence", "convergence", "chaotic_equilibrium", "divergence"])
    ds = xr.Dataset({"regime": (("elr", "config", "seed"), obs[:, None, :]),
                     "predicted_regime": (("elr", "config"), pred[:, None]),
                     "total_threshold": (("config",), [1 / 7])}, coords={"elr": elr})
    # the invalid cell is left out
    assert scan_mod.agreement(ds) == pytest.approx(5 / 7)
    # 0.14 is within 5% of 1/7: its two cells are left out
    assert scan_mod.agreement(ds, window=0.05) == pytest.approx(4 / 5)
    assert scan_mod.agreement(ds, by_config=True).values.tolist() == pytest.approx([5 / 7])
    with pytest.raises(ValueError, match="window"):
        scan_mod.agreement(ds, window=1.5)


# -- validation -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    (dict(elrs=[0.1, -1.0]), "elrs"), (dict(elrs="1:2"), "start:stop:count"),
    (dict(elrs="a,b"), "elrs"), (dict(seeds=0), "seeds"), (dict(seeds=[1, 1]), "distinct"),
    (dict(seeds=[-1]), "seed"), (dict(steps=0), "steps"), (dict(tail=500), "tail"),
    (dict(dtype="float16"), "dtype"), (dict(backend="gpu"), "backend"),
    (dict(constraint="both"), "constraint"), (dict(chunk_size=0), "chunk_size"),
    (dict(chunk_size=(1, 2)), "chunk_size"), (dict(lyapunov="yes"), "lyapunov"),
])
def test_bad_input_raises_naming_the_value(kw, match):
    args = dict(elrs=ELRS, seeds=2, steps=300, tail=60, progress_bar=False)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        scan(ALPHAS, **args)


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="alphas"):
        scan([1.0, -2.0], ELRS, **SMALL)
    with pytest.raises(ValueError, match="empty"):
        scan([], ELRS, **SMALL)


def test_elr_grid():
    g = scan_mod.elr_grid("1e-2:10:400")
    # geomspace pins both ends (observed exact); rel 1e-14 ~ 45 ulp
    assert g.size == 400
    assert g[0] == pytest.approx(1e-2, rel=1e-14) and g[-1] == pytest.approx(10, rel=1e-14)
    # log of 1-4 ulp (libm or SVML) on |log g| <= 4.7, differenced: <= ~5e-15 absolute, / 0.0173
    # -> ~3e-13 relative (observed 4.4e-14); rtol 1e-10 leaves 300x over the bound
    assert np.allclose(np.diff(np.log(g)), np.log(1e3) / 399, rtol=1e-10, atol=0)
    assert scan_mod.elr_grid("0.1, 0.2").tolist() == [0.1, 0.2]
    assert scan_mod.elr_grid([0.3]).tolist() == [0.3]


@given(shape=st.tuples(st.integers(1, 9), st.integers(1, 4), st.integers(1, 5)),
       size=st.one_of(st.integers(1, 60), st.tuples(st.integers(1, 9), st.integers(1, 4),
                                                   st.integers(1, 5))))
def test_chunks_cover_every_cell_exactly_once(shape, size):
    chunks = scan_mod.plan_chunks(shape, 1, size)
    spec = scan_mod.CellSpec(steps=1, tail=1, constraint="total", dtype="float64", lyapunov=False,
                             backend="numpy")
    plan = scan_mod.ScanPlan(configs=(None,) * shape[1], elrs=np.ones(shape[0]),
                             seeds=np.arange(shape[2]), spec=spec, chunks=chunks)
    hits = np.zeros(shape, int)
    for c in range(plan.n_chunks):
        hits[plan.region(c)] += 1
    assert (hits == 1).all()
    if isinstance(size, int):
        assert np.prod(chunks) <= max(size, 1)


def test_default_chunk_rule_follows_the_work_per_cell():
    assert scan_mod.plan_chunks((400, 1, 4), 6 * 20000) == (400, 1, 4)
    small = scan_mod.plan_chunks((400, 1, 4), 1000 * 100000)
    assert small == (1, 1, 2)  # 2e8 / 1e8 = 2 cells
    big = scan_mod.plan_chunks((10**6, 2, 4), 1)
    assert np.prod(big) <= scan_mod.MAX_CHUNK_CELLS


# -- the store ---------------------------------------------------------------------------------------
STORE_KW = dict(seeds=2, steps=300, tail=60, backend="numpy", progress_bar=False, chunk_size=4)


def test_store_equals_in_memory_and_reopens(tmp_path):
    mem = scan(ALPHAS, ELRS, **STORE_KW)
    ds = scan(ALPHAS, ELRS, store=tmp_path / "a.zarr", **STORE_KW)
    assert_same_scan(mem, ds, ignore_attrs=("created", "complete"))
    assert ds.attrs["complete"] == 1
    again = scan_mod.open_scan(tmp_path / "a.zarr")
    assert_same_scan(ds, again)
    # plain xarray reads it too
    with store_mod.quiet_zarr():
        plain = xr.open_zarr(tmp_path / "a.zarr")
    assert _equal(plain["tail_loss"].values, mem["tail_loss"].values)


def test_keyboard_interrupt_then_resume_is_identical(tmp_path, monkeypatch):
    ref = scan(ALPHAS, ELRS, store=tmp_path / "ref.zarr", **STORE_KW)
    path = tmp_path / "cut.zarr"

    def stop(chunk_id, n_done):
        if n_done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan(ALPHAS, ELRS, store=path, _after_chunk=stop, **STORE_KW)
    assert len(os.listdir(path / ".toymodel" / "done")) == 2
    with pytest.raises(ValueError, match="incomplete"):
        scan_mod.open_scan(path)
    computed = []
    real = scan_mod.compute_chunk
    monkeypatch.setattr(run_mod, "compute_chunk", lambda t: computed.append(t.chunk_id) or real(t))
    out = scan(ALPHAS, ELRS, store=path, **STORE_KW)
    n_chunks = json.loads((path / ".toymodel" / "manifest.json").read_text())["n_chunks"]
    assert len(computed) == n_chunks - 2 and len(set(computed)) == len(computed)
    assert_same_scan(ref, out)
    computed.clear()
    assert_same_scan(ref, scan(ALPHAS, ELRS, store=path, **STORE_KW))  # complete: nothing to do
    assert computed == []


_CHILD = textwrap.dedent("""
    import os, signal, sys, time
    import numpy as np
    import importlib
    S = importlib.import_module("toymodel.scan")  # toymodel.scan is the function
    mode, path = sys.argv[1], sys.argv[2]
    hooks = {{}}
    if mode == "torn":   # die in the middle of writing the third chunk's arrays
        def hook(chunk_id, name):
            if len(os.listdir(os.path.join(path, ".toymodel", "done"))) == 2 and name == "final_loss":
                os.kill(os.getpid(), signal.SIGKILL)
        hooks["_after_write"] = hook
    else:                # slow down so the parent can kill us from outside
        hooks["_after_chunk"] = lambda c, n: time.sleep(0.25)
    S.scan((1.0, 2.0, 4.0), np.array({elrs}), seeds=2, steps=300, tail=60, backend="numpy",
           progress_bar=False, chunk_size=4, store=path, **hooks)
""").format(elrs=ELRS.tolist())


def _run_child(mode, path):
    return subprocess.Popen([sys.executable, "-c", _CHILD, mode, str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("mode", ["torn", "external"])
def test_sigkill_mid_scan_then_resume_is_identical(tmp_path, mode):
    path = tmp_path / "killed.zarr"
    proc = _run_child(mode, path)
    if mode == "external":
        done = path / ".toymodel" / "done"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if done.exists() and len(os.listdir(done)) >= 2:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    n_done = len(os.listdir(path / ".toymodel" / "done"))
    n_chunks = json.loads((path / ".toymodel" / "manifest.json").read_text())["n_chunks"]
    assert 2 <= n_done < n_chunks
    resumed = scan(ALPHAS, ELRS, store=path, **STORE_KW)
    assert_same_scan(scan(ALPHAS, ELRS, store=tmp_path / "ref.zarr", **STORE_KW), resumed)


def test_store_with_other_parameters_is_refused(tmp_path):
    path = tmp_path / "s.zarr"
    scan(ALPHAS, ELRS, store=path, **STORE_KW)
    before = sorted(os.listdir(path))
    with pytest.raises(ValueError, match="steps"):
        scan(ALPHAS, ELRS, store=path, **{**STORE_KW, "steps": 301})
    with pytest.raises(ValueError, match="elrs"):
        scan(ALPHAS, ELRS[:3], store=path, **STORE_KW)
    assert sorted(os.listdir(path)) == before
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="not a toymodel scan store"):
        scan(ALPHAS, ELRS, store=tmp_path / "other", **STORE_KW)


# -- the command line ---------------------------------------------------------------------------------
def test_cli_scan_resume_and_plot(tmp_path, capsys):
    out = tmp_path / "cli.zarr"
    argv = ["scan", "--alphas", "1,2,4", "--alphas", "1,3", "--elrs", "0.05:5:6", "--seeds", "2",
            "--steps", "300", "--tail", "60", "--backend", "numpy", "--out", str(out),
            "--no-progress", "--chunk-size", "4"]
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert "24 cells" in text and "agreement" in text
    ds = scan_mod.open_scan(out)
    ref = scan([ALPHAS, [1.0, 3.0]], "0.05:5:6", **STORE_KW)
    assert _equal(ds["tail_loss"].values, ref["tail_loss"].values)
    assert cli_main(argv) == 0  # complete store: resumes with nothing to do
    assert cli_main(["plot-scan", str(out), "--out", str(tmp_path / "fig.png")]) == 0
    assert (tmp_path / "fig.png").stat().st_size > 10_000
    assert cli_main([("301" if a == "300" else a) for a in argv]) == 2
    assert "other parameters" in capsys.readouterr().err


def test_cli_bad_input_exits_2(tmp_path, capsys):
    assert cli_main(["scan", "--alphas", "1,2", "--elrs", "1:2", "--no-progress"]) == 2
    assert "start:stop:count" in capsys.readouterr().err
    assert cli_main(["scan", "--alphas", "1,2", "--elrs", "0.1", "--out", "x.txt"]) == 2
    assert cli_main(["plot-scan", str(tmp_path / "missing.zarr")]) == 2
