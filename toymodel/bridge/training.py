r"""Fixed-ELR training of an SI network with metrics computed online, saved as an xarray Dataset.

Nothing is reloaded from checkpoints: every metric is measured while training (STYLE §6).
Per optimiser step (every ``record_every``-th step kept, dim ``step``): ``step_loss`` (mini-batch
loss before the step), ``step_grad_norm`` (effective gradient norm $\|\theta\|\|\nabla L_b\|$
of the SI parameters, T2; $=\rho\|\nabla L_b\|$ under the total constraint) and
``step_angle`` (radians turned by the step, T6).
Per epoch (dim ``epoch``): ``loss`` / ``accuracy`` (mean over the epoch's mini-batches, before
each step, as the official code reports), ``grad_norm`` (the paper's *mean effective gradient
norm* $\rho\cdot\mathrm{mean}_b\|\nabla L_b\|$), ``angle`` (mean per step),
``group_grad_norm`` (dim ``group``), and at the end of the epoch ``si_norm``, ``individual_elr``
$\eta/\|\theta_g\|^2$ and ``shares`` (dim ``group``, T7), ``cosine_to_init``; ``test_loss``
/ ``test_accuracy`` in eval mode every ``eval_every`` epochs and at the last (NaN on other epochs).
Run scalars: ``random_loss`` (the random level: train loss at initialisation averaged with 8
random SI directions, `random_level`), ``init_loss``, ``tail_loss``,
``tail_grad_norm``, ``tail_angle`` (means over the last ``tail`` epochs), ``regime`` and
``regime_reason`` from `toymodel.regimes.classify_summary` (the toy's classifier).
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch.nn import functional as F

from .._progress import progress
from .._validate import positive_finite
from ..regimes import classify_summary
from .data import load_data
from .groups import si_groups
from .models import HEAD_NORM, build_model
from .optim import SphereSGD

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def resolve_device(device) -> torch.device:
    """``"cpu"`` | ``"cuda"`` | ``"cuda:N"``; CUDA without a GPU raises ``ValueError``."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA GPU "
                         f"(torch {torch.__version__}); use --device cpu")
    return dev


def _batches(n, batch_size, gen):
    perm = torch.randperm(n, generator=gen)
    out = [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    # train-mode BatchNorm cannot normalise a single sample: fold a last batch of one into the previous
    if len(out) > 1 and out[-1].numel() < 2:
        out[-2] = torch.cat([out[-2], out.pop()])
    return out


@torch.no_grad()
def _train_loss(model, x, y, batch_size):
    """Mean train loss, train-mode BN (batch statistics), BN buffers restored afterwards."""
    saved = {k: v.clone() for k, v in model.named_buffers()}
    total = x.new_zeros(())
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        if xb.shape[0] < 2:
            continue
        total += F.cross_entropy(model(xb), yb, reduction="sum")
    for k, v in model.named_buffers():
        v.copy_(saved[k])
    return float(total) / x.shape[0]


@torch.no_grad()
def random_level(model, params, x, y, batch_size, n_draws=8, seed=0):
    r"""The random level $L_{rand}$: mean train loss over the initial SI direction and
    ``n_draws`` isotropic random ones (each SI tensor redrawn as a Gaussian, seeded by ``seed``).

    The network analogue of the toy's ``random_loss()`` (the mean of the loss over the sphere):
    a divergent run scrambles the direction every step and sits at this level. One draw (the
    initialisation alone) fluctuates by ~10% between seeds, as much as the classifier's
    ``div_frac`` margin, hence the average. Returns ``(random_level, init_loss)``.
    """
    saved = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(10_000 + seed)
    init = _train_loss(model, x, y, batch_size)
    losses = [init]
    try:
        for _ in range(n_draws):
            for p in params:
                z = torch.randn(p.shape, generator=gen, dtype=torch.float64)
                p.copy_((z * (p.norm().double().cpu() / z.norm())).to(p))
            losses.append(_train_loss(model, x, y, batch_size))
    finally:
        for p, s in zip(params, saved):
            p.copy_(s)
    return float(np.mean(losses)), init


@torch.no_grad()
def evaluate(model, x, y, batch_size=1024):
    """(loss, accuracy) in eval mode (BN running statistics), as the official ``eval``."""
    was = model.training
    model.eval()
    loss, correct = x.new_zeros(()), 0
    for i in range(0, x.shape[0], batch_size):
        out = model(x[i:i + batch_size])
        loss += F.cross_entropy(out, y[i:i + batch_size], reduction="sum")
        correct += int((out.argmax(1) == y[i:i + batch_size]).sum())
    model.train(was)
    return float(loss) / x.shape[0], correct / x.shape[0]


def run(model, data, *, elr, epochs, batch_size=128, constraint="total", seed=0, record_every=1,
        eval_every=1, tail=None, groups=None, progress_bar=True, desc="train", attrs=None):
    """Train ``model`` on ``data`` (`ImageData`, on the model's device) with
    `SphereSGD` at fixed ``elr``; returns the metrics Dataset (module docstring).

    ``groups``: SI groups (default ``si_groups(model)``); every trainable parameter must be in one
    (a non-SI trainable parameter raises: freeze it, or build the optimiser yourself).
    ``seed`` drives the mini-batch order. ``tail``: epochs averaged for the summaries (default
    the last 10%).
    """
    import xarray as xr

    epochs = _int("epochs", epochs, 1)
    batch_size = _int("batch_size", batch_size, 2)
    record_every = _int("record_every", record_every, 1)
    eval_every = _int("eval_every", eval_every, 1)
    seed = _int("seed", seed, 0)
    tail = max(1, epochs // 10) if tail is None else _int("tail", tail, 1)
    if tail > epochs:
        raise ValueError(f"tail must be an integer in [1, {epochs}], got {tail!r}")
    groups = si_groups(model) if groups is None else list(groups)
    in_groups = {id(p) for g in groups for p in (g.params if hasattr(g, "params") else g["params"])}
    stray = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in in_groups]
    if stray:
        raise ValueError(f"trainable parameters outside the SI groups: {stray}; freeze them "
                         "(requires_grad_(False)) or pass groups")
    opt = SphereSGD(groups, elr, constraint=constraint, track=True)
    si_params = [p for g in opt.param_groups for p in g["params"]]
    names = [g.get("name", str(i)) for i, g in enumerate(opt.param_groups)]
    theta0 = torch.cat([p.detach().flatten() for p in si_params]).clone()
    x, y = data.x_train, data.y_train
    n = x.shape[0]
    model.train()
    random_loss, init_loss = random_level(model, si_params, x, y, batch_size, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(_batches(n, batch_size, torch.Generator().manual_seed(0)))
    n_steps = epochs * steps_per_epoch
    rec_steps = np.arange(0, n_steps, record_every)
    ng = len(names)
    nan = lambda *shape: np.full(shape, np.nan)  # noqa: E731
    ep = {k: nan(epochs) for k in ("loss", "accuracy", "grad_norm", "angle", "si_norm",
                                  "cosine_to_init", "test_loss", "test_accuracy")}
    ep.update({k: nan(epochs, ng) for k in ("individual_elr", "shares", "group_grad_norm")})
    st = {k: nan(rec_steps.size) for k in ("step_loss", "step_grad_norm", "step_angle")}
    invalid = ""
    t0 = time.perf_counter()
    step = 0
    with progress(total=epochs, desc=desc, disable=not progress_bar) as bar:
        for e in range(epochs):
            losses, corrects, gnorms, angles, ggn = [], [], [], [], []
            sizes = []
            for idx in _batches(n, batch_size, gen):
                idx = idx.to(x.device)
                xb, yb = x[idx], y[idx]
                opt.zero_grad(set_to_none=True)
                out = model(xb)
                loss = F.cross_entropy(out, yb)
                loss.backward()
                opt.step()
                m = opt.last_metrics
                gsq_tot = m["sq_norm"].sum() * m["grad_sq"].sum()
                losses.append(loss.detach())
                corrects.append((out.detach().argmax(1) == yb).sum())
                gnorms.append(gsq_tot.sqrt())
                angles.append(m["angle"])
                ggn.append((m["sq_norm"] * m["grad_sq"]).sqrt())
                sizes.append(idx.numel())
                step += 1
            # one host synchronisation per epoch
            L = torch.stack(losses).double().cpu().numpy()
            G = torch.stack(gnorms).double().cpu().numpy()
            A = torch.stack(angles).double().cpu().numpy()
            w = np.asarray(sizes, dtype=np.float64)
            s0 = e * steps_per_epoch
            for j in range(len(L)):
                if (s0 + j) % record_every == 0:
                    k = (s0 + j) // record_every
                    st["step_loss"][k], st["step_grad_norm"][k], st["step_angle"][k] = L[j], G[j], A[j]
            if not (np.all(np.isfinite(L)) and np.all(np.isfinite(G))):
                invalid = f"non-finite loss or gradient in epoch {e + 1} (elr={elr})"
                break
            ep["loss"][e] = float((L * w).sum() / w.sum())
            ep["accuracy"][e] = float(torch.stack(corrects).sum()) / w.sum()
            ep["grad_norm"][e], ep["angle"][e] = G.mean(), A.mean()
            ep["group_grad_norm"][e] = torch.stack(ggn).double().mean(0).cpu().numpy()
            with torch.no_grad():
                sq = torch.stack([torch.stack(torch._foreach_norm(g["params"])).square().sum()
                                  for g in opt.param_groups]).double().cpu().numpy()
                theta = torch.cat([p.detach().flatten() for p in si_params])
                cos = float(theta @ theta0) / float(theta.norm() * theta0.norm())
            ep["si_norm"][e] = math.sqrt(sq.sum())
            ep["individual_elr"][e] = opt.lr / sq
            ep["shares"][e] = sq / sq.sum()
            ep["cosine_to_init"][e] = cos
            if (e + 1) % eval_every == 0 or e + 1 == epochs:
                ep["test_loss"][e], ep["test_accuracy"][e] = evaluate(model, data.x_test, data.y_test)
            bar.update(1)
    seconds = time.perf_counter() - t0
    sl = slice(epochs - tail, epochs)
    with np.errstate(all="ignore"):
        tail_loss = float(np.mean(ep["loss"][sl])) if not invalid else float("nan")
        tail_grad = float(np.mean(ep["grad_norm"][sl])) if not invalid else float("nan")
        tail_angle = float(np.mean(ep["angle"][sl])) if not invalid else float("nan")
    labels, reasons = classify_summary(tail_loss, random_loss, invalid_reason=invalid)
    dims_ep = {k: (("epoch", "group") if v.ndim == 2 else ("epoch",), v) for k, v in ep.items()}
    ds = xr.Dataset(
        {**dims_ep,
         **{k: (("step",), v) for k, v in st.items()},
         "random_loss": random_loss, "init_loss": init_loss, "tail_loss": tail_loss, "tail_grad_norm": tail_grad,
         "tail_angle": tail_angle, "regime": str(labels), "regime_reason": str(reasons),
         "lr": opt.lr, "train_seconds": seconds},
        coords={"epoch": np.arange(1, epochs + 1), "step": rec_steps, "group": names,
                "elr": float(elr)})
    meta = {"constraint": constraint, "batch_size": batch_size, "epochs": epochs, "seed": seed,
            "record_every": record_every, "eval_every": eval_every, "tail": tail,
            "rho": opt.rho, "steps_per_epoch": steps_per_epoch, "data": data.name,
            "n_train": int(n), "n_test": int(data.x_test.shape[0]),
            "group_params": "; ".join(f"{g.get('name', i)}: {','.join(g.get('names', []))}"
                                      for i, g in enumerate(opt.param_groups)),
            "torch_version": torch.__version__}
    if constraint == "per-filter":
        meta["n_filters"] = opt.n_filters
        meta["filter_individual_elr"] = float(elr) * opt.n_filters
    meta.update(attrs or {})
    ds.attrs.update({k: v for k, v in meta.items() if v is not None})
    return ds


def prepare(model="convnet-si", data="digits", *, width=8, seed=0, device="cpu", dtype="float32",
            data_root=None, input_size=None):
    """Build ``(model, data, attrs)`` from names; the model is drawn from ``seed``."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    dev = resolve_device(device)
    seed = _int("seed", seed, 0)
    images = load_data(data, root=data_root, input_size=input_size, dtype=DTYPES[dtype],
                       device=dev, seed=seed)
    net = build_model(model, width=_int("width", width, 1), num_classes=images.num_classes,
                      in_channels=images.in_channels, seed=seed, dtype=DTYPES[dtype], device=dev)
    attrs = {"model": model, "width": width, "device": str(dev), "dtype": dtype,
             "head_norm": HEAD_NORM, "input_size": int(images.x_train.shape[-1])}
    return net, images, attrs


def train(*, elr, epochs, model="convnet-si", data="digits", width=8, batch_size=128, seed=0,
          constraint="total", device="cpu", dtype="float32", record_every=1, eval_every=1,
          tail=None, data_root=None, input_size=None, progress_bar=True):
    """One fixed-ELR run from names (``toymodel train``); returns the metrics Dataset."""
    elr = positive_finite("elr", elr)
    net, images, attrs = prepare(model, data, width=width, seed=seed, device=device, dtype=dtype,
                                 data_root=data_root, input_size=input_size)
    return run(net, images, elr=elr, epochs=epochs, batch_size=batch_size, constraint=constraint,
               seed=seed, record_every=record_every, eval_every=eval_every, tail=tail,
               progress_bar=progress_bar, desc=f"elr={elr:.3g}", attrs=attrs)


def parse_elrs(text) -> np.ndarray:
    """``"a:b:N"`` -> N log-spaced values from a to b; ``"x,y,z"`` -> that list; a sequence as given.

    The same grammar as the toy scans (`toymodel.scan.elr_grid`), so a network ELR scan and a
    toy scan can be written with one grid."""
    from ..scan import elr_grid

    return elr_grid(text)


def train_scan(elrs, *, progress_bar=True, **kw):
    """One run per ELR from the same initial network (same ``seed``), concatenated along ``elr``."""
    import xarray as xr

    elrs = parse_elrs(elrs)
    runs = []
    with progress(total=elrs.size, desc="train-scan", disable=not progress_bar) as bar:
        for elr in elrs:
            runs.append(train(elr=float(elr), progress_bar=progress_bar, **kw))
            bar.update(1)
    return xr.concat(runs, dim="elr", combine_attrs="drop_conflicts")
