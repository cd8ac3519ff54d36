"""Reliability of scans: damaged stores, refusals before any work, locks, messages, callbacks.

Each test pins one item of docs/reliability.md. Oracle: an uninterrupted scan of the same
arguments, compared bit for bit; a refusal is exit status 2 with one line on stderr that names
the option and the number it would need, and no computation before it (``compute_chunk`` is
replaced by a function that fails the test).
"""
import ast
import importlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

xr = pytest.importorskip("xarray")
pytest.importorskip("zarr")

from toymodel import regimes  # noqa: E402
from toymodel.cli import main as cli_main  # noqa: E402

scan_mod = importlib.import_module("toymodel.scan")
run_mod = importlib.import_module("toymodel._scan_run")  # the runner: compute_chunk, progress
plan_mod = importlib.import_module("toymodel._scan_plan")  # _plan, the limits, memory_limit
store_mod = importlib.import_module("toymodel._store")
progress_mod = importlib.import_module("toymodel._progress")
scan = scan_mod.scan

ALPHAS = (1.0, 2.0, 4.0)
ELRS = np.array([0.05, 0.13, 0.3, 0.6, 2.0, 5.0])
KW = dict(seeds=2, steps=300, tail=60, backend="numpy", progress_bar=False, chunk_size=4)  # 3 chunks
ARGV = ["scan", "--alphas", "1,2,4", "--elrs", "0.05,0.13,0.3,0.6,2,5", "--seeds", "2", "--steps", "300",
        "--tail", "60", "--backend", "numpy", "--no-progress", "--chunk-size", "4"]


def _equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def assert_same_scan(a, b, ignore_attrs=("created",)):
    a, b = a.load(), b.load()
    assert set(a.variables) == set(b.variables)
    for name in a.variables:
        assert _equal(a[name].values, b[name].values), name
    strip = lambda d: {k: v for k, v in d.items() if k not in ignore_attrs}  # noqa: E731
    assert strip(a.attrs) == strip(b.attrs)


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return scan(ALPHAS, ELRS, store=tmp_path_factory.mktemp("ref") / "ref.zarr", **KW).load()


@pytest.fixture
def no_compute(monkeypatch):
    def fail(task):
        raise AssertionError("a chunk was computed before the refusal")
    monkeypatch.setattr(run_mod, "compute_chunk", fail)


@pytest.fixture
def record_compute(monkeypatch):
    computed = []
    real = scan_mod.compute_chunk
    monkeypatch.setattr(run_mod, "compute_chunk", lambda t: computed.append(t.chunk_id) or real(t))
    return computed


def refused(capsys, argv, *needles):
    """Run the CLI, expect exit 2 with one line on stderr containing every needle."""
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


def _chunk_file(store, name, chunk_id):
    marker = json.loads((Path(store) / ".toymodel" / "done" / f"{chunk_id}.json").read_text())
    return Path(store) / marker["files"][name]["path"]


# -- 1. damaged stores ----------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["delete", "truncate", "flip", "marker"])
def test_damaged_chunk_is_found_and_recomputed_bit_for_bit(tmp_path, ref, record_compute, damage):
    path = tmp_path / "s.zarr"
    scan(ALPHAS, ELRS, store=path, **KW)
    f = _chunk_file(path, "final_loss", 1)
    if damage == "delete":
        f.unlink()
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:-5])
    elif damage == "flip":  # same size: only the sha256 sees it
        b = bytearray(f.read_bytes())
        b[-1] ^= 0xFF
        f.write_bytes(bytes(b))
    else:
        (path / ".toymodel" / "done" / "1.json").write_text("{not json")
    if damage in ("delete", "truncate", "marker"):  # the cheap check on opening sees these
        with pytest.raises(ValueError, match="chunk 1"):
            scan_mod.open_scan(path)
        with pytest.raises(ValueError, match="chunk 1"):
            scan_mod.open_scan(path, allow_incomplete=True)
    assert [c for c, _ in scan_mod.verify_scan(path)["damage"]] == [1]
    record_compute.clear()
    with pytest.warns(store_mod.RepairWarning, match="chunk 1"):
        out = scan(ALPHAS, ELRS, store=path, **KW)
    assert record_compute == [1]
    assert_same_scan(ref, out)
    assert scan_mod.verify_scan(path)["damage"] == []


def test_a_repaired_store_is_not_marked_complete_until_it_is(tmp_path, ref):
    path = tmp_path / "s.zarr"
    scan(ALPHAS, ELRS, store=path, **KW)
    for c in (0, 2):
        _chunk_file(path, "tail_loss", c).unlink()

    def stop(chunk_id, n_done):
        raise KeyboardInterrupt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", store_mod.RepairWarning)
        with pytest.raises(KeyboardInterrupt):
            scan(ALPHAS, ELRS, store=path, _after_chunk=stop, **KW)
    with store_mod.quiet_zarr():
        assert xr.open_zarr(path).attrs.get("complete") == 0
    with pytest.raises(ValueError, match="incomplete"):
        scan_mod.open_scan(path)
    assert_same_scan(ref, scan(ALPHAS, ELRS, store=path, **KW))


def test_cli_verify_exit_codes(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    assert cli_main(ARGV + ["--out", str(path)]) == 0
    capsys.readouterr()
    assert cli_main(["scan", "--verify", str(path)]) == 0
    assert "intact (3 of 3 chunks" in capsys.readouterr().out
    _chunk_file(path, "final_loss", 2).unlink()
    refused(capsys, ["scan", "--verify", str(path)], "chunk 2", "final_loss", "is missing")
    (path / ".toymodel" / "done" / "2.json").unlink()  # now merely incomplete
    assert cli_main(["scan", "--verify", str(path)]) == 1
    assert "2 of 3 chunks done" in capsys.readouterr().out
    refused(capsys, ["scan", "--verify", str(tmp_path / "nothing.zarr")], "not a toymodel scan store")


def test_cli_rerun_of_a_damaged_store_warns_in_one_line(tmp_path, capsys, ref):
    path = tmp_path / "s.zarr"
    assert cli_main(ARGV + ["--out", str(path)]) == 0
    f = _chunk_file(path, "final_loss", 2)
    f.write_bytes(f.read_bytes()[:10])
    capsys.readouterr()
    refused(capsys, ["plot-scan", str(path)], "chunk 2", "damaged")  # not a Zstd traceback
    assert cli_main(ARGV + ["--out", str(path)]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning:" in err and "chunk 2" in err and "recomputing" in err
    assert_same_scan(ref, scan_mod.open_scan(path), ignore_attrs=("created", "backend_requested"))


# -- 2. results are never overwritten without --overwrite ------------------------------------------
def test_cli_refuses_to_overwrite_an_nc_file_unless_asked(tmp_path, capsys, no_compute):
    out = tmp_path / "r.nc"
    out.write_bytes(b"precious")
    refused(capsys, ARGV + ["--out", str(out)], "exists", "--overwrite")
    assert out.read_bytes() == b"precious"


def test_cli_overwrite_replaces_atomically(tmp_path, capsys, monkeypatch):
    out = tmp_path / "r.nc"
    out.write_bytes(b"precious")

    def broken(self, path, *a, **k):  # dies half-way through writing its file
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken)
    try:  # an I/O error: one line and exit 2, or the exception (cli.main decides)
        assert cli_main(ARGV + ["--out", str(out), "--overwrite"]) == 2
        assert "disk full" in capsys.readouterr().err
    except OSError as err:
        assert "disk full" in str(err)
    assert out.read_bytes() == b"precious" and sorted(os.listdir(tmp_path)) == ["r.nc"]
    monkeypatch.undo()
    assert cli_main(ARGV + ["--out", str(out), "--overwrite"]) == 0
    ds = xr.open_dataset(out)
    assert ds.sizes["elr"] == 6 and sorted(os.listdir(tmp_path)) == ["r.nc"]
    ds.close()


# -- 3. the destination is checked before any work ---------------------------------------------------
def test_cli_bad_destination_is_refused_before_any_work(tmp_path, capsys, no_compute):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.nc").mkdir()
    (tmp_path / "file.zarr").write_text("x")
    (tmp_path / "plain.zarr").mkdir()
    cases = [(tmp_path / "missing" / "x.nc", "--out: the directory", "does not exist"),
             (tmp_path / "afile" / "x.zarr", "--out:", "afile is a file, not a directory"),
             (tmp_path / "afile" / "deeper" / "x.nc", "--out:", "afile is a file, not a directory"),
             (tmp_path / "adir.nc", "--out:", "is a directory"),
             (tmp_path / "file.zarr", "--out:", "is a file, not a zarr store"),
             (tmp_path / "plain.zarr", "plain.zarr exists and is not a toymodel scan store"),
             (tmp_path / "x.txt", "--out must end in .zarr or .nc")]
    for out, *needles in cases:
        refused(capsys, ARGV + ["--out", str(out)], *needles)
    assert not (tmp_path / "missing").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_cli_unwritable_destination_is_refused(tmp_path, capsys, no_compute):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        refused(capsys, ARGV + ["--out", str(ro / "x.nc")], "not writable")
    finally:
        ro.chmod(0o755)


def test_api_store_in_a_missing_directory_is_refused(tmp_path, no_compute):
    with pytest.raises(ValueError, match="does not exist"):
        scan(ALPHAS, ELRS, store=tmp_path / "no" / "s.zarr", **KW)


# -- 4. one writer per store; no stray temporaries ----------------------------------------------------
def test_a_second_writer_is_refused_naming_the_holder(tmp_path, ref):
    path = tmp_path / "s.zarr"
    plan = plan_mod._plan(ALPHAS, ELRS, 2, 300, 60, "total", "numpy", "float64", False, 4, 2)
    holder = store_mod.ScanStore.open_or_create(path, plan, lambda: scan_mod.template(plan))
    try:
        with pytest.raises(store_mod.StoreLockedError, match=f"process {os.getpid()}"):
            scan(ALPHAS, ELRS, store=path, **KW)
    finally:
        holder.close()
    assert_same_scan(ref, scan(ALPHAS, ELRS, store=path, **KW))


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, ref):
    path = tmp_path / "s.zarr"
    scan(ALPHAS, ELRS, store=path, **KW)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (path / ".toymodel" / "lock").write_text(f"{dead.pid}\n")  # left by a killed writer
    (path / ".toymodel" / "done" / "1.json").unlink()
    (path / ".toymodel" / "done" / f"1.json.tmp-{dead.pid}-0123abcd").write_text("{")
    assert_same_scan(ref, scan(ALPHAS, ELRS, store=path, **KW))
    assert not [n for n in os.listdir(path / ".toymodel" / "done") if ".tmp-" in n]


def test_an_interrupted_creation_leaves_no_temporary(tmp_path, monkeypatch):
    real = store_mod._atomic_write_json

    def interrupted(path, obj):
        if path.endswith("manifest.json"):
            raise KeyboardInterrupt
        real(path, obj)

    monkeypatch.setattr(store_mod, "_atomic_write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scan(ALPHAS, ELRS, store=tmp_path / "s.zarr", **KW)
    assert os.listdir(tmp_path) == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path, ref):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".s.zarr.tmp-{dead.pid}-0123abcd"
    live = tmp_path / f".s.zarr.tmp-{os.getppid()}-0123abcd"  # a live process: left alone
    stale_nc = tmp_path / f".r.nc.tmp-{dead.pid}-0123abcd"
    for d in (stale, live):
        (d / "tail_loss").mkdir(parents=True)
    stale_nc.write_text("half")
    assert_same_scan(ref, scan(ALPHAS, ELRS, store=tmp_path / "s.zarr", **KW))
    assert not stale.exists() and live.exists()
    assert store_mod.remove_stale_temporaries(tmp_path / "r.nc") == [str(stale_nc)]


# -- 5. refusals up front ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needles", [
    (["--elrs", "0.1:1:100000000000"], ["element-steps (4e+11 cells x 20000 steps", "4.8e+16", "over the limit 1e+15"]),
    (["--seeds", "99999999999999999999", "--steps", "300", "--tail", "60"], ["element-steps"]),
    (["--seeds", "99999999999999999999,1"], ["--seeds entries", "9223372036854775807",
                                             "99999999999999999999"]),
    (["--seeds", "1,x"], ["--seeds must be"]),
    (["--seeds", "3,1,3"], ["--seeds must be distinct", "3 (2 times)"]),
    (["--seeds", "0"], ["--seeds (a count) must be an integer >= 1, got 0"]),
    (["--steps", "10"], ["--tail must be an integer in [1, --steps=10], got 2000, the default of --tail",
                         "--tail with a value up to 10"]),
    (["--elrs", "0.1,0.2,0.1"], ["--elrs must be distinct", "0.1 (2 times)"]),
    (["--elrs", "0.1:0.1:5"], ["--elrs must be distinct", "0.1:0.1:1"]),
    (["--elrs", "0.1:1"], ["--elrs must look like 'start:stop:count'"]),
    (["--chunk-size", "0"], ["--chunk-size must be an integer >= 1"]),
    (["--dim", "0"], ["--dim must be an integer >= 1"]),
])
def test_cli_refusals_name_the_option_and_the_number(capsys, no_compute, argv, needles):
    base = ["scan", "--alphas", "1,2,4", "--elrs", "0.05:5:6", "--backend", "numpy", "--no-progress"]
    refused(capsys, base + argv, *needles)


def test_cli_requires_alphas_and_elrs_unless_verifying(capsys):
    refused(capsys, ["scan", "--elrs", "0.1"], "--alphas", "--verify")


def test_huge_grids_are_refused_before_allocating(no_compute):
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="element-steps"):
        scan(ALPHAS, "0.1:1:100000000000", progress_bar=False)
    with pytest.raises(ValueError, match="element-steps"):
        scan(ALPHAS, ELRS, seeds=10**12, progress_bar=False)
    assert time.monotonic() - t0 < 5


def test_memory_limits_in_memory_and_per_chunk(tmp_path, monkeypatch, capsys, ref):
    monkeypatch.setattr(plan_mod, "memory_limit", lambda: 100_000)
    # 6 ELRs x 500 seeds x 66 B = 198 kB
    with pytest.raises(ValueError, match=r"in memory .*more than this machine's .*zarr store"):
        scan(ALPHAS, ELRS, **{**KW, "seeds": 500})
    refused(capsys, ARGV[:6] + ["500"] + ARGV[7:], "in memory", "--out NAME.zarr")
    # a store needs memory per chunk only: 4 cells fit
    assert_same_scan(ref, scan(ALPHAS, ELRS, store=tmp_path / "s.zarr", **KW))
    with pytest.raises(ValueError, match="a chunk of 2000 cells"):
        scan(ALPHAS, ELRS, **{**KW, "seeds": 1000, "chunk_size": 2000}, store=tmp_path / "b.zarr")


def test_store_chunk_count_and_pair_limits(tmp_path, monkeypatch, no_compute):
    monkeypatch.setattr(plan_mod, "MAX_STORE_CHUNKS", 2)
    with pytest.raises(ValueError, match="3 chunks, over the limit.*chunk_size of at least 6 cells"):
        scan(ALPHAS, ELRS, store=tmp_path / "s.zarr", **KW)
    assert not (tmp_path / "s.zarr").exists()
    monkeypatch.setattr(plan_mod, "MAX_ELR_CONFIG_PAIRS", 5)
    with pytest.raises(ValueError, match=r"6 \(ELR, configuration\) pairs"):
        scan(ALPHAS, ELRS, **KW)


@pytest.mark.parametrize("dtype", ["bogus", None, "int64", "float16", 3])
def test_bad_dtype_is_a_value_error(dtype, no_compute):
    with pytest.raises(ValueError, match="dtype must be 'float64' or 'float32'"):
        scan(ALPHAS, ELRS, dtype=dtype, **KW)


def test_api_seed_and_elr_messages():
    with pytest.raises(ValueError, match="seeds entries must be integers in"):
        scan(ALPHAS, ELRS, seeds=[2**63, 1], progress_bar=False)
    with pytest.raises(ValueError, match="elrs must be distinct"):
        scan_mod.elr_grid([0.1, 0.2, 0.1])
    with pytest.raises(ValueError, match="elrs must be distinct"):
        scan_mod.elr_grid("1:1.0000000000000002:10")  # float64 rounds the neighbours together


def test_unreachable_scheduler_is_refused_fast(tmp_path, capsys, monkeypatch, no_compute):
    dist = pytest.importorskip("toymodel.distributed")
    pytest.importorskip("distributed")
    monkeypatch.setattr(dist, "CONNECT_TIMEOUT_S", 0.5)
    t0 = time.monotonic()
    out = tmp_path / "s.zarr"
    refused(capsys, ARGV + ["--scheduler", "tcp://127.0.0.1:1", "--out", str(out)],
            "no Dask scheduler answered at tcp://127.0.0.1:1 within 0.5 s")
    assert time.monotonic() - t0 < 15
    assert not out.exists()  # refused before the store was made


def test_plot_scan_refuses_a_huge_image(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    scan(ALPHAS, ELRS, store=path, **KW)
    refused(capsys, ["plot-scan", str(path), "--dpi", "100000"],
            "--dpi 100000 would draw a 520000 x 640000 pixel image", "--dpi 1733 or less")
    refused(capsys, ["plot-scan", str(path), "--dpi", "0"], "--dpi must be an integer >= 1")
    assert not (tmp_path / "s.png").exists()


# -- 6. messages ----------------------------------------------------------------------------------------
def test_a_resumed_bar_starts_at_the_done_work(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"

    def stop(chunk_id, n_done):
        if n_done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        scan(ALPHAS, ELRS, store=path, _after_chunk=stop, **KW)
    seen = []
    real = run_mod.progress

    def spy(**kw):
        seen.append(kw)
        return real(**kw)

    monkeypatch.setattr(run_mod, "progress", spy)
    scan(ALPHAS, ELRS, store=path, **KW)
    assert seen[0]["initial"] == 8 and seen[0]["total"] == 12


def test_the_bar_rates_new_work_only():
    tqdm = pytest.importorskip("tqdm")  # noqa: F841
    with progress_mod.progress(total=12, initial=8, desc="x") as bar:
        assert bar.n == 8 and bar.format_dict["initial"] == 8
    plain = progress_mod._Plain(12, "x", initial=8)
    plain._start -= 2.0  # 2 s ago; one new cell since: 2 s per cell, 3 left
    plain.n = 9
    assert plain.eta() == pytest.approx(6.0, rel=0.05)


def test_ctrl_c_says_how_to_resume(tmp_path, capsys, monkeypatch):
    real = scan_mod.compute_chunk
    calls = []

    def interrupted(task):
        calls.append(task.chunk_id)
        if len(calls) % 2 == 0:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(run_mod, "compute_chunk", interrupted)
    path = tmp_path / "s.zarr"
    assert cli_main(ARGV + ["--out", str(path)]) == 130
    err = capsys.readouterr().err
    assert "1 of 3 chunks are saved" in err and "run the same command to resume" in err
    assert cli_main(ARGV + ["--out", str(tmp_path / "r.nc")]) == 130
    assert "nothing was saved" in capsys.readouterr().err


def test_summary_counts_the_cells_left_out(capsys, monkeypatch):
    real = regimes.classify_codes

    def some_unresolved(*a, **k):
        codes = real(*a, **k).copy()
        codes.flat[0] = regimes.REGIME_CODES[regimes.UNRESOLVED]
        return codes

    monkeypatch.setattr(regimes, "classify_codes", some_unresolved)
    assert cli_main(ARGV) == 0
    # one cell per chunk (3 chunks) relabelled
    assert "over 9 cells; left out 3 unresolved and 0 invalid cells" in capsys.readouterr().out


def test_agreement_leaves_out_unresolved_and_invalid_cells():
    elr = np.array([0.1, 0.14, 0.5, 2.0])
    obs = np.array([["convergence", "unresolved"], ["unresolved", "chaotic_equilibrium"],
                    ["chaotic_equilibrium", "divergence"], ["divergence", "invalid"]])
    pred = np.array(["convergence", "convergence", "chaotic_equilibrium", "divergence"])
    ds = xr.Dataset({"regime": (("elr", "config", "seed"), obs[:, None, :]),
                     "predicted_regime": (("elr", "config"), pred[:, None]),
                     "total_threshold": (("config",), [1 / 7])}, coords={"elr": elr})
    a = scan_mod.agreement(ds)
    assert a == pytest.approx(3 / 5) and (a.compared, a.unresolved, a.invalid, a.in_window) == (5, 2, 1, 0)
    w = scan_mod.agreement(ds, window=0.05)  # 0.14 is within 5% of 1/7
    assert w == pytest.approx(3 / 4) and (w.compared, w.unresolved, w.invalid, w.in_window) == (4, 1, 1, 2)
    by = scan_mod.agreement(ds, by_config=True)
    assert by.values.tolist() == pytest.approx([3 / 5])
    assert int(by["unresolved"][0]) == 2 and int(by["compared"][0]) == 5
    only = ds.assign(regime=ds["regime"].where(False, "unresolved"))
    with pytest.raises(ValueError, match="8 unresolved"):
        scan_mod.agreement(only)
    assert np.isnan(scan_mod.agreement(only, by_config=True).values).all()


def test_scan_passes_the_tail_rotation_to_the_classifier(monkeypatch):
    seen = []
    real = regimes.classify_codes

    def spy(*a, **k):
        seen.append(k)
        return real(*a, **k)

    monkeypatch.setattr(regimes, "classify_codes", spy)
    ds = scan(ALPHAS, ELRS, **KW)
    assert all(k["tail_steps"] == 60 and k["tail_angle"].shape[-1] == 2 for k in seen)
    assert _equal(np.concatenate([k["tail_angle"] for k in seen]), ds["tail_angle"].values)


# -- 7. explicit callbacks; the executor does not import the scan ---------------------------------------
def test_no_module_global_hooks_and_explicit_callbacks(tmp_path):
    assert not hasattr(scan_mod, "_AFTER_CHUNK_HOOK") and not hasattr(store_mod, "_WRITE_HOOK")
    writes, chunks = [], []
    scan(ALPHAS, ELRS, store=tmp_path / "s.zarr", _after_write=lambda c, n: writes.append((c, n)),
         _after_chunk=lambda c, n: chunks.append((c, n)), **KW)
    plan = plan_mod._plan(ALPHAS, ELRS, 2, 300, 60, "total", "numpy", "float64", False, 4, 2)
    assert writes == [(c, n) for c in range(3) for n in plan.cell_vars()]
    assert chunks == [(0, 1), (1, 2), (2, 3)]


def test_distributed_never_imports_the_scan():
    src = Path(importlib.import_module("toymodel.distributed").__file__).read_text()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom):
            assert (node.module or "") not in ("scan", "toymodel.scan"), ast.unparse(node)
            assert not (node.level and node.module is None and any(a.name == "scan" for a in node.names))
        if isinstance(node, ast.Import):
            assert all(a.name != "toymodel.scan" for a in node.names)


def test_run_chunks_is_a_generic_executor():
    distributed = pytest.importorskip("distributed")
    from toymodel.distributed import run_chunks

    got = {}
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=1,
                            dashboard_address=None) as client:
        run_chunks(client, abs, ((k, -k) for k in range(7)), got.__setitem__, max_in_flight=2)
    assert got == {k: k for k in range(7)}

