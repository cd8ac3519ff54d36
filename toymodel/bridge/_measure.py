r"""What one network run measures, online: per step, per epoch, at the end (`toymodel.bridge.training`).

Owns the mini-batch order (`_batches`), the random level (`random_level`), evaluation
(`evaluate`, and `evaluate_bn` after `bn_update`), the curvature probe (`sharpness`), one epoch
of training with its per-step metrics, their reduction to epoch means and end-of-epoch geometry
(norms, shares, individual ELRs, T7), and the tail summary with its regime
(`toymodel.regimes.classify_summary`). The metric arrays are NumPy; torch runs the steps.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional as F

from ..regimes import classify_summary
from .sharpness import hessian_top_eigenvalues, hessian_trace

#: Hutch++ products of one `sharpness` trace estimate
SHARPNESS_PROBES = 30
#: training samples of the fixed subset on which `sharpness` measures the curvature
SHARPNESS_SAMPLES = 512
#: relative Lanczos residual of the top eigenvalue: it bounds the eigenvalue's relative error by
#: 1e-3 (and the error is ~ residual^2/gap, far smaller), below the epoch-to-epoch spread
SHARPNESS_TOL = 1e-3


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


def _bn_modules(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def bn_update(model, x, batch_size=128) -> None:
    r"""Recompute every BatchNorm's running statistics on ``x`` (one pass, train mode), the
    official ``bn_update``: the statistics are reset, and batch $k$ of $b_k$ samples enters with
    momentum $b_k/(n_k+b_k)$ ($n_k$ samples before it), so the result is the sample-weighted mean
    of the batch means and (unbiased) batch variances, independent of the training history."""
    mods = _bn_modules(model)
    momenta = [m.momentum for m in mods]
    was = model.training
    model.train()
    for m in mods:
        m.reset_running_stats()
    n = 0
    try:
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            if xb.shape[0] < 2:  # train-mode BN cannot normalise one sample
                continue
            for m in mods:
                m.momentum = xb.shape[0] / (n + xb.shape[0])
            model(xb)
            n += xb.shape[0]
    finally:
        for m, mom in zip(mods, momenta):
            m.momentum = mom
        model.train(was)


def evaluate_bn(model, data, batch_size=128):
    """(loss, accuracy) on the test set in eval mode with BN statistics recomputed on the training
    set (`bn_update`); the model's buffers are restored afterwards, so training is unaffected."""
    saved = {k: v.clone() for k, v in model.named_buffers()}
    try:
        bn_update(model, data.x_train, batch_size)
        return evaluate(model, data.x_test, data.y_test)
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(saved[k])


def sharpness_subset(n, seed, size=SHARPNESS_SAMPLES) -> torch.Tensor:
    """The fixed training subset of `sharpness`: ``size`` indices drawn from ``seed``, sorted."""
    gen = torch.Generator().manual_seed(20_000 + seed)
    return torch.randperm(n, generator=gen)[:min(n, size)].sort().values


def sharpness(model, params, x, y, seed=0):
    r"""``(trace, top)``: $\operatorname{tr}H$ (Hutch++, `SHARPNESS_PROBES` products) and the
    largest eigenvalue of $H=
abla^2_	heta L$ (Lanczos), $L$ the mean cross-entropy of the
    batch ``(x, y)`` in train mode (batch statistics, where the loss is SI), $	heta$ = ``params``.
    Probes come from ``seed``; the model's buffers (BN statistics) are restored afterwards."""
    saved = {k: v.clone() for k, v in model.named_buffers()}
    was = model.training
    model.train()
    loss_fn = lambda: F.cross_entropy(model(x), y)  # noqa: E731
    try:
        trace = hessian_trace(loss_fn, params, n_probes=SHARPNESS_PROBES, seed=seed)
        top = hessian_top_eigenvalues(loss_fn, params, k=1, seed=seed, tol=SHARPNESS_TOL)[0]
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(saved[k])
        model.train(was)
    return float(trace), float(top)


# -- one run, in small steps ---------------------------------------------------------------------
_EPOCH_VARS = ("loss", "accuracy", "grad_norm", "angle", "si_norm", "cosine_to_init", "test_loss",
               "test_accuracy")
_GROUP_VARS = ("individual_elr", "shares", "group_grad_norm")
_STEP_VARS = ("step_loss", "step_grad_norm", "step_angle")


def _allocate(epochs, n_groups, n_records, epoch_extra=(), step_extra=()):
    """NaN-filled metric arrays: per epoch, per epoch and group, per kept step; ``*_extra``:
    the optional variables of a run (`toymodel.bridge.training.extra_vars`)."""
    ep = {k: np.full(epochs, np.nan) for k in _EPOCH_VARS + tuple(epoch_extra)}
    ep.update({k: np.full((epochs, n_groups), np.nan) for k in _GROUP_VARS})
    return ep, {k: np.full(n_records, np.nan) for k in _STEP_VARS + tuple(step_extra)}


def _train_epoch(model, opt, x, y, batches, augment=None, aug_gen=None, corrupted=None):
    """One pass over ``batches``; the per-step metrics as host arrays (one synchronisation).

    ``augment(xb, aug_gen)`` transforms each mini-batch (`toymodel.bridge.data.Augment`);
    ``corrupted`` (a boolean mask over the training set) adds ``Lc`` / ``Lk``, the epoch's mean
    per-sample loss over the corrupted and the clean samples (NaN where there are none)."""
    losses, corrects, gnorms, angles, ggn, sizes, sqs = [], [], [], [], [], [], []
    if corrupted is not None:
        sums = x.new_zeros(2, dtype=torch.float64)  # (corrupted, clean) sums of per-sample losses
        n_bad = corrupted.new_zeros((), dtype=torch.int64)
    for idx in batches:
        idx = idx.to(x.device)
        xb, yb = x[idx], y[idx]
        if augment is not None:
            xb = augment(xb, aug_gen)
        opt.zero_grad(set_to_none=True)
        out = model(xb)
        loss = F.cross_entropy(out, yb)
        if corrupted is not None:
            with torch.no_grad():
                each = F.cross_entropy(out.detach(), yb, reduction="none").double()
                bad = corrupted[idx]
                sums += torch.stack([each[bad].sum(), each[~bad].sum()])
                n_bad += bad.sum()
        loss.backward()
        opt.step()
        m = opt.last_metrics
        losses.append(loss.detach())
        corrects.append((out.detach().argmax(1) == yb).sum())
        gnorms.append((m["sq_norm"].sum() * m["grad_sq"].sum()).sqrt())
        angles.append(m["angle"])
        ggn.append((m["sq_norm"] * m["grad_sq"]).sqrt())
        sqs.append(m["sq_norm"].sum())
        sizes.append(idx.numel())
    def host(tensors):
        return torch.stack(tensors).double().cpu().numpy()

    res = {"L": host(losses), "G": host(gnorms), "A": host(angles), "ggn": host(ggn).mean(0),
           "S": host(sqs), "correct": float(torch.stack(corrects).sum()),
           "w": np.asarray(sizes, dtype=np.float64)}
    if corrupted is not None:
        n_c, n_k = int(n_bad), int(sum(sizes)) - int(n_bad)
        s_c, s_k = sums.cpu().tolist()
        res["Lc"] = s_c / n_c if n_c else float("nan")
        res["Lk"] = s_k / n_k if n_k else float("nan")
    return res


def _keep_steps(st, first_step, m, record_every, lr=None):
    r"""Write the epoch's steps whose global index is a multiple of ``record_every``; the SI norm
    and $\eta/\|\theta\|^2$ before each step where ``st`` has room for them."""
    steps = first_step + np.arange(m["L"].size)
    keep = steps % record_every == 0
    k = steps[keep] // record_every
    st["step_loss"][k], st["step_grad_norm"][k], st["step_angle"][k] = \
        m["L"][keep], m["G"][keep], m["A"][keep]
    if "step_si_norm" in st:
        st["step_si_norm"][k] = np.sqrt(m["S"][keep])
    if "step_effective_elr" in st:
        st["step_effective_elr"][k] = lr / m["S"][keep]


@torch.no_grad()
def _keep_epoch(ep, e, m, opt, si_params, theta0):
    """Epoch means of the step metrics, and the end-of-epoch geometry (norms, shares, T7)."""
    w = m["w"]
    ep["loss"][e] = float((m["L"] * w).sum() / w.sum())
    ep["accuracy"][e] = m["correct"] / w.sum()
    ep["grad_norm"][e], ep["angle"][e] = m["G"].mean(), m["A"].mean()
    ep["group_grad_norm"][e] = m["ggn"]
    si = [g for g in opt.param_groups if g.get("si", True)]
    sq = torch.stack([torch.stack(torch._foreach_norm(g["params"])).square().sum()
                      for g in si]).double().cpu().numpy()
    theta = torch.cat([p.detach().flatten() for p in si_params])
    ep["cosine_to_init"][e] = float(theta @ theta0) / float(theta.norm() * theta0.norm())
    ep["si_norm"][e] = math.sqrt(sq.sum())
    lrs = np.asarray([float(g["lr"]) for g in si])
    # eta_g / |theta_g|^p: p = 2 for SGD (T7), 1 for Adam (`SphereAdam.elr_power`)
    ep["individual_elr"][e] = lrs / (np.sqrt(sq) if getattr(opt, "elr_power", 2) == 1 else sq)
    ep["shares"][e] = sq / sq.sum()
    if "effective_elr" in ep:
        ep["effective_elr"][e] = opt.lr / sq.sum()


def _summarise(ep, spec, steps_per_epoch, random_loss, invalid):
    """Tail means over the last ``spec.tail`` epochs and the regime (`classify_summary`)."""
    tail = slice(spec.epochs - spec.tail, spec.epochs)
    means = {}
    pairs = [("tail_loss", "loss"), ("tail_grad_norm", "grad_norm"), ("tail_angle", "angle")]
    if "effective_elr" in ep:
        pairs.append(("tail_effective_elr", "effective_elr"))
    for name, var in pairs:
        with np.errstate(all="ignore"):
            means[name] = float("nan") if invalid else float(np.mean(ep[var][tail]))
    labels, reasons = classify_summary(means["tail_loss"], random_loss, invalid_reason=invalid,
                                       tail_angle=means["tail_angle"],
                                       tail_steps=spec.tail * steps_per_epoch)
    return {**means, "regime": str(labels), "regime_reason": str(reasons)}
