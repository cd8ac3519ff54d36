"""The momentum and weight-decay modes of `toymodel.scan` (docs/scans.md, "Momentum and weight decay").

Oracles: the backend's own batch functions (`backend.summarize_momentum`, `backend.summarize_wd`)
called on one cell's initial state; the classifiers (`regimes.classify_codes`,
`periodic.classify_wd_summary`, `momentum.converged`); the closed forms of docs/momentum.md (T43)
and docs/conventional.md (T21, T25, T26); the fixed-ELR scan at momentum 0; an uninterrupted run of
the same scan for every store and resume test (bit for bit).
"""
import importlib
import json
import math
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

xr = pytest.importorskip("xarray")
pytest.importorskip("zarr")

from _tolerances import finite_time_lyapunov, tolerance

from toymodel import backend, dynamics, periodic, regimes, theory_wd
from toymodel import simulate as tm_simulate
from toymodel._momentum_batch import EXTRA_SUMMARY_NAMES, converged
from toymodel.cli import main as cli_main
from toymodel.problems import SphereToy

scan_mod = importlib.import_module("toymodel.scan")
run_mod = importlib.import_module("toymodel._scan_run")
plan_mod = importlib.import_module("toymodel._scan_plan")
scan = scan_mod.scan

ALPHAS = (1.0, 2.0, 4.0)
ELRS = np.array([0.05, 0.2, 0.5])     # c = 0.35 (converges), 1.4 (below 1 + beta for beta >= 0.5), 3.5
BETAS = np.array([0.0, 0.5, 0.9])
LRS = np.array([0.1, 1.0])
WDS = np.array([0.0, 0.01, 0.1])      # products 0 (plain GD), 1e-3 ... 0.1
SMALL = {"seeds": 2, "steps": 300, "tail": 60, "backend": "numpy", "progress_bar": False}
WD_SMALL = {"seeds": 2, "steps": 1500, "tail": 600, "backend": "numpy", "progress_bar": False}
MOMENTUM_FLOATS = [n for n in dynamics.SUMMARY_NAMES if n != "lyapunov"] + list(EXTRA_SUMMARY_NAMES)
WD_FLOATS = ["tail_loss", "tail_loss_std", "final_loss", "min_loss", "tail_elr", "tail_angle"]


def _equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def assert_same_scan(a, b, ignore_attrs=("created",)):
    """Bit-for-bit equality of two scans (every variable, coordinate and attribute): both take the
    same code path on the same inputs, per-cell operations only (tests/test_scan.py)."""
    a, b = a.load(), b.load()
    assert set(a.variables) == set(b.variables)
    for name in a.variables:
        assert a[name].dims == b[name].dims, name
        assert _equal(a[name].values, b[name].values), name
    strip = lambda d: {k: v for k, v in d.items() if k not in ignore_attrs}
    assert strip(a.attrs) == strip(b.attrs)


# -- momentum: every cell is the backend's call on its own start ----------------------------------------
@pytest.mark.parametrize("mode, optimizer, constraint", [("official", "heavy_ball", "total"),
                                                         ("transport", "heavy_ball", "individual"),
                                                         ("transport", "adam", "total")])
def test_momentum_cells_equal_direct_calls(mode, optimizer, constraint):
    kw = dict(momentum=BETAS, momentum_mode=mode, optimizer=optimizer, constraint=constraint,
              chunk_size=4, **SMALL)
    if optimizer == "adam":
        kw.update(beta2=0.99, eps=1e-2)
    ds = scan(ALPHAS, ELRS, **kw)
    assert ds["tail_loss"].dims == ("elr", "momentum", "config", "seed")
    assert ds.attrs["mode"] == "momentum" and ds.attrs["optimizer"] == optimizer
    p = SphereToy(ALPHAS)
    th0 = dynamics.initial_states(p, [0, 1], constraint)
    for i, elr in enumerate(ELRS):
        for k, beta in enumerate(BETAS):
            for s in range(2):
                ref = backend.summarize_momentum(
                    p, th0[s:s + 1], elr, beta, steps=300, tail=60, momentum_mode=mode,
                    constraint=constraint, optimizer=optimizer, backend="numpy",
                    **({"beta2": 0.99, "eps": 1e-2} if optimizer == "adam" else {}))
                cell = ds.isel(elr=i, momentum=k, config=0, seed=s)
                for name in MOMENTUM_FLOATS + ["status", "bad_step"]:
                    assert _equal(cell[name].values, ref[name][0].astype(cell[name].dtype)), name
                code = regimes.classify_codes(ref["tail_loss"], p.random_loss(),
                                              invalid=ref["status"] != 0,
                                              tail_angle=ref["tail_angle"], tail_steps=60)
                assert int(cell["regime"]) == int(code[0])
                assert int(cell["converged"]) == int(converged(ref)[0])
    assert "lyapunov" not in ds and "predicted_regime" not in ds


def test_momentum_naive_threshold_is_T43_and_not_a_prediction():
    ds = scan([ALPHAS, (1.0, 3.0)], ELRS, momentum=BETAS, **SMALL)
    for j, a in enumerate([ALPHAS, (1.0, 3.0)]):
        # (1 + beta) / sum(alpha): the same float expression as momentum_theory.naive_total_threshold
        assert _equal(ds["naive_threshold"].isel(config=j).values, (1.0 + BETAS) / sum(a))
    with pytest.raises(ValueError, match="predict_regime.*momentum"):
        scan_mod.agreement(ds)
    # T43 is necessary for convergence: no cell above the naive threshold converged
    above = ds["elr"] > ds["naive_threshold"]
    assert not ((ds["converged"] == 1) & above).any()
    # the readers work on the new layout
    assert set(np.unique(scan_mod.decode_regime(ds)["regime"].values)) <= set(regimes.LABELS)
    assert scan_mod.regime_reason(ds).dims == ds["regime"].dims


def test_momentum_zero_equals_the_fixed_elr_scan():
    elrs = np.array([0.05, 0.1, 0.13, 0.2, 0.5, 0.9])
    kw = {"seeds": 3, "steps": 400, "tail": 100, "backend": "numpy", "progress_bar": False}
    fixed = scan(ALPHAS, elrs, **kw)
    mom = scan(ALPHAS, elrs, momentum=[0.0], **kw).isel(momentum=0)
    # Bound: at beta = 0 the heavy-ball step is the projected-GD step (buffer = gradient), written
    # with other roundings at most; the two runs then differ by the rounding the tolerances of
    # tests/_tolerances.py bound: 2u (k steps G + tail), G = exp(max(lambda, 0) steps) from each
    # cell's finite-time Lyapunov exponent (the twin of the fixed-ELR spec), the chaos-aware bound
    # (vacuous for the chaotic cells, tight for the converging ones). Measured today: 0 (the same
    # floating-point operations, bit for bit).
    p = SphereToy(ALPHAS)
    th0, dirs = dynamics.initial_states(p, range(3), twin=True)
    B = elrs.size * 3
    lyap = finite_time_lyapunov(p, np.tile(th0, (elrs.size, 1, 1)), np.repeat(elrs, 3), steps=400,
                                twin_dirs=np.tile(dirs, (elrs.size, 1, 1)))
    tol = tolerance(np.float64, p, steps=400, tail=100, lyap_ft=lyap)
    for name in ("tail_loss", "final_loss", "tail_angle", "min_share", "tail_grad_norm"):
        got, ref = mom[name].values.reshape(B), fixed[name].values.reshape(B)
        bound = tol["atol"] + tol["rtol"] * np.abs(ref)
        assert np.all(np.abs(got - ref) <= bound), name
    converging = np.isfinite(tol["rtol"]) & (tol["rtol"] < 1e-6)
    assert converging.sum() >= 6  # the bound is tight somewhere: the converging cells
    assert _equal(mom["status"].values, fixed["status"].values)


def test_momentum_refusals():
    with pytest.raises(ValueError, match=r"lyapunov.*momentum"):
        scan(ALPHAS, ELRS, momentum=BETAS, lyapunov=True, **SMALL)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\), got 1.0"):
        scan(ALPHAS, ELRS, momentum=[0.5, 1.0], **SMALL)
    with pytest.raises(ValueError, match="momentum_mode"):
        scan(ALPHAS, ELRS, momentum=BETAS, momentum_mode="sideways", **SMALL)
    with pytest.raises(ValueError, match="only for a momentum scan"):
        scan(ALPHAS, ELRS, optimizer="adam", **SMALL)
    with pytest.raises(ValueError, match="momentum must be distinct"):
        scan(ALPHAS, ELRS, momentum="0.5,0.5", **SMALL)
    ds = scan(ALPHAS, ELRS, momentum="0.1:0.9:3", **SMALL)  # the ELR grammar: log-spaced
    assert np.allclose(ds["momentum"].values, [0.1, 0.3, 0.9], rtol=1e-15)


# -- weight decay ---------------------------------------------------------------------------------------
def test_wd_cells_equal_direct_calls_and_simulate():
    ds = scan(ALPHAS, constraint="none", lr=LRS, weight_decay=WDS, chunk_size=4, **WD_SMALL)
    assert ds["tail_loss"].dims == ("lr", "weight_decay", "config", "seed")
    assert ds["group_tail_loss"].dims == ("lr", "weight_decay", "config", "seed", "group")
    p = SphereToy(ALPHAS)
    for i, lr in enumerate(LRS):
        for k, wd in enumerate(WDS):
            for s in range(2):
                th0 = dynamics.initial_state(p, s, "total")[None]  # simulate_wd's start
                ref = backend.summarize_wd(p, th0, lr, wd, steps=1500, tail=600, backend="numpy")
                cell = ds.isel(lr=i, weight_decay=k, config=0, seed=s)
                for name in WD_FLOATS + ["n_spikes", "first_spike", "last_spike", "status",
                                         "bad_step"]:
                    assert _equal(cell[name].values, ref[name][0].astype(cell[name].dtype)), name
                assert int(cell["converged_exactly"]) == int(ref["converged_exactly"][0])
                assert _equal(cell["group_tail_loss"].values, ref["group_tail_loss"][0])
                assert _equal(cell["group_period"].values, periodic.group_periods(ref)[0])
                labels, _ = periodic.classify_wd_summary(ref, p.random_loss(), tail_steps=600)
                assert regimes.decode(cell["regime"].values) == labels[0]
                n = ref["n_spikes"][0]
                want = (ref["last_spike"][0] - ref["first_spike"][0]) / (n - 1) if n >= 2 else np.nan
                assert _equal(cell["period"].values, np.float64(want))
                eq = ds["equilibrium_loss"].isel(lr=i, weight_decay=k, config=0).item()
                if wd > 0:
                    assert eq == theory_wd.wd_equilibrium_loss(lr, wd, ALPHAS)
                    assert (ds["equilibrium_elr"].isel(lr=i, weight_decay=k, config=0).item()
                            == theory_wd.wd_equilibrium_elr(lr, wd, ALPHAS))
                else:
                    assert math.isnan(eq)  # no stationary norm at weight decay 0 (T4)
    # the start is the one of toymodel.simulate(constraint="none"): one step reads the loss of it
    one = scan(ALPHAS, constraint="none", lr=[0.1], weight_decay=[0.01], seeds=[3], steps=1, tail=1,
               backend="numpy", progress_bar=False)
    tr = tm_simulate(p, constraint="none", lr=0.1, weight_decay=0.01, steps=1, seed=3)
    # the same state through two loss functions (problem.loss, the batch's toy_group_losses):
    # a few roundings of terms <= sum(alpha) = 7: 1e-14 absolute
    assert math.isclose(float(one["tail_loss"].values.item()), tr.loss[0], rel_tol=0, abs_tol=1e-14)
    assert math.isclose(float(one["final_loss"].values.item()), p.loss(tr.theta_final), rel_tol=0,
                        abs_tol=1e-14)


def test_wd_configs_of_different_shapes_equal_their_single_scans():
    configs = [ALPHAS, (1.0, 3.0), (2.0, 2.0, 3.0)]
    ds = scan(configs, constraint="none", lr=LRS, weight_decay=WDS[1:], **WD_SMALL)
    for j, a in enumerate(configs):
        one = scan(a, constraint="none", lr=LRS, weight_decay=WDS[1:], **WD_SMALL)
        for name in one.data_vars:
            got = ds[name].isel(config=j)
            if "group" in got.dims:
                got = got.isel(group=slice(0, len(a)))
                assert np.isnan(ds[name].isel(config=j, group=slice(len(a), None)).values).all() or \
                    (ds[name].isel(config=j, group=slice(len(a), None)).values == -1).all()
            assert _equal(got.values, one[name].isel(config=0).values), (j, name)


def test_wd_tail_loss_within_10_percent_of_T21():
    # eps = lr*wd = 0.03 and 0.1, each at two learning rates a factor 2 apart, 4 seeds.
    # Tolerance (docs/conventional.md T25, as tests/test_conventional.py): a run orbits the centre
    # and its long-run mean exceeds eps sum(alpha)/2 by its orbit's excess, 4-5% in the chaotic sea
    # (3.8-4.2% measured at eps 0.05-0.1; island orbits and the plateau: within 1.5%); the 6000-step
    # tail holds >= 190 cycles per group at eps 0.03 (period ~0.93/eps ~ 31 steps, T26), so the
    # sampling error of one group's mean is <= 0.2/sqrt(190) ~ 1.5% (cycle-to-cycle CV 0.2), of the
    # three groups' total ~0.9%: 5% + 3 x 1.5% < 10%, and below the closed form by at most the
    # sampling error, 3 x 1.5% < 5%: (0.95, 1.10). Measured: 1.03-1.055.
    lrs, wds = np.array([0.5, 1.0]), np.array([0.03, 0.06, 0.1, 0.2])
    ds = scan(ALPHAS, constraint="none", lr=lrs, weight_decay=wds, seeds=4, steps=12000, tail=6000,
              backend="numpy", progress_bar=False)
    ratio = (ds["tail_loss"] / ds["equilibrium_loss"]).isel(config=0)
    eps = (ds["lr"] * ds["weight_decay"]).values
    for target in (0.03, 0.1):
        il, iw = np.nonzero(np.isclose(eps, target, rtol=1e-12))
        assert il.size == 2
        r = ratio.values[il, iw]  # (2 pairs, 4 seeds)
        assert np.all((r > 0.95) & (r < 1.10)), (target, r)


def test_wd_periodic_label_and_period_at_1e_3():
    # eps = 1e-3 at two learning rates: periodic (T26) in every cell, with a period. The total loss
    # superposes the spike trains of the groups still alive (a group may sit exactly on its
    # minimiser: the float64 floor, T26), so its period lies between the shortest group period / 3
    # and the longest group period: T x (-ln q) per orbit is 0.81-1.02 (T26); over a 10000-step tail
    # (~10 cycles, cycle-to-cycle CV 0.2) the mean of 9 intervals is within 3 x 0.07 ~ 20% of it:
    # [0.81 / 3 / 1.25, 1.02 x 1.25] = [0.2, 1.3].
    lrs, wds = np.array([0.5, 1.0]), np.array([2.5e-4, 5e-4, 1e-3, 2e-3])
    ds = scan(ALPHAS, constraint="none", lr=lrs, weight_decay=wds, seeds=4, steps=20000,
              tail=10000, backend="numpy", progress_bar=False).isel(config=0)
    eps = (ds["lr"] * ds["weight_decay"]).values
    labels = regimes.decode(ds["regime"].values)
    il, iw = np.nonzero(np.isclose(eps, 1e-3, rtol=1e-12))
    assert (labels[il, iw] == regimes.PERIODIC).all(), labels[il, iw]
    scaled = ds["period"].values[il, iw] * -np.log1p(-1e-3)
    assert np.all((scaled >= 0.2) & (scaled <= 1.3)), scaled
    # below 1e-3 the floor ends the cycles of most runs: periodic or converged, never mislabelled
    low = eps < 1e-3 * (1 - 1e-12)
    assert set(labels[low].ravel()) <= {regimes.PERIODIC, "convergence"}
    assert (ds["converged_exactly"].values[low] == 1).any()


def test_wd_refusals_name_the_value():
    with pytest.raises(ValueError, match=r"lr=20.0, weight_decay=0.1 \(product 2.0\)"):
        scan(ALPHAS, constraint="none", lr=[1.0, 20.0], weight_decay=[0.01, 0.1], **SMALL)
    with pytest.raises(ValueError, match=r"weight_decay must be in \[0, inf\), got -0.1"):
        scan(ALPHAS, constraint="none", lr=[1.0], weight_decay=[-0.1], **SMALL)
    with pytest.raises(ValueError, match="mode needs weight_decay"):
        scan(ALPHAS, constraint="none", lr=[1.0], **SMALL)
    with pytest.raises(ValueError, match="elrs"):
        scan(ALPHAS, ELRS, constraint="none", lr=[1.0], weight_decay=[0.1], **SMALL)
    with pytest.raises(ValueError, match="lr and weight_decay"):
        scan(ALPHAS, ELRS, lr=[1.0], weight_decay=[0.1], **SMALL)
    with pytest.raises(ValueError, match="lyapunov"):
        scan(ALPHAS, constraint="none", lr=[1.0], weight_decay=[0.1], lyapunov=True, **SMALL)


# -- backends: "auto" gives the numpy spec's numbers (the compiled kernels, where they exist, to 1e-12) --
def test_auto_backend_matches_numpy():
    # Short runs in the converging region (c = elr sum(alpha) <= 0.7; weight decay from a start
    # whose ELR is below the threshold): rounding differences are not amplified, so a kernel that
    # rounds differently is off by 2u (k steps + tail) = 2 x 1.1e-16 x (16 x 40 + 10) ~ 1.5e-13 of
    # the values (tests/_tolerances.py): 1e-12 relative and 1e-12 x sum(alpha) absolute.
    kw = {"seeds": 2, "steps": 40, "tail": 10, "progress_bar": False}
    pairs = [(scan(ALPHAS, [0.02, 0.1], momentum=[0.0, 0.5], backend=b, **kw)
              for b in ("numpy", "auto")),
             (scan(ALPHAS, constraint="none", lr=[0.1], weight_decay=[0.01, 0.1], backend=b, **kw)
              for b in ("numpy", "auto"))]
    for ref, got in pairs:
        for name, da in ref.data_vars.items():
            if da.dtype.kind == "f":
                np.testing.assert_allclose(got[name].values, da.values, rtol=1e-12, atol=7e-12,
                                           equal_nan=True, err_msg=name)
            else:
                assert _equal(got[name].values, da.values), name


# -- chunks, stores, resume ----------------------------------------------------------------------------
@given(shape=st.tuples(*[st.integers(1, 5)] * 4), size=st.integers(1, 40))
def test_four_dimensional_chunks_cover_every_cell_exactly_once(shape, size):
    chunks = scan_mod.plan_chunks(shape, 1, size)
    assert len(chunks) == 4
    spec = scan_mod.CellSpec(steps=1, tail=1, constraint="total", dtype="float64", lyapunov=False,
                             backend="numpy", mode="momentum")
    plan = scan_mod.ScanPlan(configs=(None,) * shape[2], elrs=np.ones(shape[0]), seeds=np.arange(shape[3]),
                             spec=spec, chunks=chunks,
                             axes=(("elr", np.ones(shape[0])), ("momentum", np.zeros(shape[1]))))
    seen = np.zeros(shape, int)
    for c in range(plan.n_chunks):
        seen[plan.region(c)] += 1
    assert (seen == 1).all()


def _interrupted_then_resumed(tmp_path, monkeypatch, call):
    ref = call(tmp_path / "ref.zarr")
    path = tmp_path / "cut.zarr"

    def stop(chunk_id, n_done):
        if n_done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        call(path, _after_chunk=stop)
    assert len(os.listdir(path / ".toymodel" / "done")) == 2
    with pytest.raises(ValueError, match="incomplete"):
        scan_mod.open_scan(path)
    computed = []
    real = scan_mod.compute_chunk
    monkeypatch.setattr(run_mod, "compute_chunk", lambda t: computed.append(t.chunk_id) or real(t))
    out = call(path)
    n_chunks = json.loads((path / ".toymodel" / "manifest.json").read_text())["n_chunks"]
    assert len(computed) == n_chunks - 2 and len(set(computed)) == len(computed)
    assert_same_scan(ref, out)
    assert_same_scan(ref, scan_mod.open_scan(path))
    return ref


@pytest.mark.parametrize("mode", ["momentum", "wd"])
def test_store_round_trip_and_resume(tmp_path, monkeypatch, mode):
    if mode == "momentum":
        def call(store, **hooks):
            return scan([ALPHAS, (1.0, 3.0)], ELRS, momentum=BETAS, momentum_mode="transport",
                        chunk_size=4, store=store, **SMALL, **hooks)
    else:
        def call(store, **hooks):
            return scan([ALPHAS, (1.0, 3.0)], constraint="none", lr=LRS, weight_decay=WDS,
                        chunk_size=4, store=store, **WD_SMALL, **hooks)
    ref = _interrupted_then_resumed(tmp_path, monkeypatch, call)
    mem = call(None)
    assert_same_scan(mem, ref, ignore_attrs=("created", "complete"))
    manifest = json.loads((tmp_path / "ref.zarr" / ".toymodel" / "manifest.json").read_text())
    assert manifest["params"]["mode"] == mode
    assert scan_mod.verify_scan(tmp_path / "ref.zarr")["damage"] == []


def test_dask_workers_equal_local_for_both_modes(tmp_path):
    # exact, as tests/test_distributed.py: a worker process runs the same code on the same per-cell
    # inputs (the ChunkTask, with its axes, pickled), with no cross-cell reduction
    distributed = pytest.importorskip("dask.distributed")
    calls = [({"momentum": BETAS, "optimizer": "adam"}, (ALPHAS, ELRS), SMALL),
             ({"constraint": "none", "lr": LRS, "weight_decay": WDS}, (ALPHAS,), WD_SMALL)]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, \
            distributed.Client(cluster) as client:
        for i, (mode_kw, args, kw) in enumerate(calls):
            local = scan(*args, chunk_size=4, **mode_kw, **kw)
            dist = scan(*args, chunk_size=4, client=client, store=tmp_path / f"{i}.zarr",
                        **mode_kw, **kw)
            assert_same_scan(local, dist, ignore_attrs=("created", "complete"))


def test_manifest_refuses_another_mode_or_its_parameters(tmp_path):
    fixed = tmp_path / "fixed.zarr"
    scan(ALPHAS, ELRS, store=fixed, **SMALL)
    with pytest.raises(ValueError, match=r"other parameters.*mode.*momentum"):
        scan(ALPHAS, ELRS, momentum=BETAS, store=fixed, **SMALL)
    mom = tmp_path / "mom.zarr"
    scan(ALPHAS, ELRS, momentum=BETAS, store=mom, **SMALL)
    with pytest.raises(ValueError, match="differs in:.* momentum"):
        scan(ALPHAS, ELRS, momentum=BETAS[:2], store=mom, **SMALL)
    with pytest.raises(ValueError, match="momentum_mode"):
        scan(ALPHAS, ELRS, momentum=BETAS, momentum_mode="transport", store=mom, **SMALL)
    with pytest.raises(ValueError, match="optimizer"):
        scan(ALPHAS, ELRS, momentum=BETAS, optimizer="adam", store=mom, **SMALL)
    with pytest.raises(ValueError, match="other parameters"):
        scan(ALPHAS, ELRS, store=mom, **SMALL)
    wd = tmp_path / "wd.zarr"
    scan(ALPHAS, constraint="none", lr=LRS, weight_decay=WDS, store=wd, **SMALL)
    with pytest.raises(ValueError, match="differs in:.*weight_decay"):
        scan(ALPHAS, constraint="none", lr=LRS, weight_decay=WDS[1:], store=wd, **SMALL)


def test_fixed_elr_manifest_keeps_its_keys():
    # the keys a fixed-ELR store has always recorded: with the same values the plan's hash is the
    # same, so a store written before the new modes still opens and resumes
    plan = plan_mod._plan(ALPHAS, ELRS, 2, 300, 60, "total", "numpy", "float64", False, None, 2)
    assert set(plan.params()) == {"format", "toymodel_version", "configs", "elrs", "seeds", "steps",
                                  "tail", "constraint", "dtype", "lyapunov", "backend", "chunks",
                                  "radius", "conv_rtol", "div_frac", "min_tail_rotation"}
    assert plan.params()["format"] == "toymodel-scan/2"


# -- the command line -----------------------------------------------------------------------------------
def test_cli_momentum_and_wd_scans(tmp_path, capsys):
    out = tmp_path / "m.zarr"
    argv = ["scan", "--alphas", "1,2,4", "--elrs", "0.05,0.2,0.5", "--momentum", "0,0.5,0.9",
            "--momentum-mode", "transport", "--seeds", "2", "--steps", "300", "--tail", "60",
            "--backend", "numpy", "--no-progress", "--chunk-size", "4", "--out", str(out)]
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert "18 cells" in text and "naive threshold" in text and "converged" in text
    assert "agreement with predict_regime" not in text
    ref = scan(ALPHAS, ELRS, momentum=BETAS, momentum_mode="transport", **SMALL)
    assert _equal(scan_mod.open_scan(out)["tail_loss"].values, ref["tail_loss"].values)
    assert cli_main(argv) == 0  # complete: nothing to do
    assert cli_main(["plot-scan", str(out), "--out", str(tmp_path / "m.png")]) == 0
    assert (tmp_path / "m.png").stat().st_size > 10_000
    argv[argv.index("transport")] = "official"
    assert cli_main(argv) == 2 and "momentum_mode" in capsys.readouterr().err

    out = tmp_path / "w.zarr"
    argv = ["scan", "--alphas", "1,2,4", "--constraint", "none", "--lr", "0.1,1", "--wd", "0,0.01,0.1",
            "--seeds", "2", "--steps", "1500", "--tail", "600", "--backend", "numpy", "--no-progress",
            "--out", str(out)]
    assert cli_main(argv) == 0
    text = capsys.readouterr().out
    assert "12 cells" in text and "lr*wd*sum(alpha)/2" in text and "periodic:" in text
    assert "agreement with predict_regime" not in text
    assert cli_main(["plot-scan", str(out), "--out", str(tmp_path / "w.png")]) == 0
    assert cli_main(["scan", "--verify", str(out)]) == 0


@pytest.mark.parametrize("args, words", [
    (["--elrs", "0.1", "--momentum", "1.5"], ["--momentum", "[0, 1)", "1.5"]),
    (["--elrs", "0.1", "--momentum", "0.5", "--beta2", "1"], ["--beta2", "[0, 1)", "1.0"]),
    (["--elrs", "0.1", "--momentum", "0.5", "--eps", "0"], ["--eps", "positive", "0.0"]),
    (["--elrs", "0.1", "--optimizer", "adam"], ["--optimizer", "--momentum"]),
    (["--elrs", "0.1", "--momentum", "0.5", "--lyapunov"], ["--lyapunov", "momentum"]),
    (["--constraint", "none", "--lr", "1,20", "--wd", "0.1"], ["--lr=20.0", "--wd=0.1", "below 1"]),
    (["--constraint", "none", "--lr", "1", "--wd", "-1"], ["--wd", "[0, inf)", "-1.0"]),
    (["--constraint", "none", "--lr", "1"], ["--wd"]),
    (["--constraint", "none", "--lr", "1", "--wd", "0.1", "--elrs", "0.1"], ["--elrs"]),
    (["--elrs", "0.1", "--lr", "1"], ["--lr"]),
])
def test_cli_bad_mode_values_exit_2(args, words, capsys):
    assert cli_main(["scan", "--alphas", "1,2", "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)
