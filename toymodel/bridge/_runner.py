r"""The loop of one network run (`toymodel.bridge.training`): the optimiser of its mode, the state it
carries from epoch to epoch, the epochs with their optional measurements and checkpoints, and the
Dataset at the end. `toymodel.bridge.training.run` and `train` are its public faces.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from .._progress import progress
from . import checkpoints as _ckpt
from ._checks import _check_groups, _si_params, check_lr
from ._full import TrackedSGD, split_params
from ._measure import (SHARPNESS_PROBES, SHARPNESS_SAMPLES, _allocate, _batches, _keep_epoch,
                       _keep_steps, _summarise, _train_epoch, evaluate, evaluate_bn, random_level,
                       sharpness, sharpness_subset)
from .groups import si_groups
from .optim import SphereSGD
from .sphere_adam import SphereAdam

_SHARPNESS_VARS = ("hessian_trace", "effective_hessian_trace", "top_eigenvalue",
                   "effective_top_eigenvalue")


#: the epoch variables of a run with corrupted labels (`toymodel.bridge.data.corrupt_labels`)
_CORRUPT_VARS = ("train_loss_corrupted", "train_loss_clean")


def extra_vars(spec, data=None) -> tuple:
    """``(epoch, step)`` names of the optional variables ``spec`` (and ``data``) record."""
    full = spec.mode == "full"
    epoch = (("effective_elr",) if full else ()) + \
        (("test_loss_bn", "test_accuracy_bn") if spec.bn_update else ()) + \
        (_SHARPNESS_VARS if spec.sharpness_every else ()) + \
        (_CORRUPT_VARS if data is not None and data.corrupted is not None else ())
    return epoch, (("step_effective_elr", "step_si_norm") if full else ())


def _attrs(spec, opt, data, steps_per_epoch, attrs):
    meta = {"mode": spec.mode, "constraint": spec.constraint, "batch_size": spec.batch_size,
            "epochs": spec.epochs,
            "seed": spec.seed, "record_every": spec.record_every, "eval_every": spec.eval_every,
            "tail": spec.tail, "rho": opt.rho, "steps_per_epoch": steps_per_epoch,
            "data": data.name, "n_train": int(data.x_train.shape[0]),
            "n_test": int(data.x_test.shape[0]),
            "group_params": "; ".join(f"{g.get('name', i)}: {','.join(g.get('names', []))}"
                                      for i, g in enumerate(opt.param_groups)),
            "torch_version": torch.__version__}
    if spec.constraint == "per-filter":
        meta["n_filters"] = opt.n_filters
        meta["filter_individual_elr"] = spec.elr * opt.n_filters
    if spec.mode == "sphere":
        meta["optimizer"] = spec.optimizer
        if spec.momentum:
            meta.update(momentum=spec.momentum, momentum_mode=spec.momentum_mode)
        if spec.optimizer == "adam":
            meta.update(betas=list(spec.betas), eps=opt.defaults["eps"])
            if "filter_individual_elr" in meta:  # SphereAdam's ELR is eta_u / r_u on every unit
                meta["filter_individual_elr"] = spec.elr
    if data.corrupted is not None:
        meta["n_corrupted"] = int(data.corrupted.sum())
    if spec.sharpness_every:
        meta.update(sharpness_every=spec.sharpness_every, sharpness_samples=SHARPNESS_SAMPLES,
                    sharpness_probes=SHARPNESS_PROBES)
    meta.update(attrs or {})
    return {k: v for k, v in meta.items() if v is not None}


def optimiser(model, spec, groups):
    """``(optimiser, SI tensors, SI group names)`` of ``spec.mode`` and ``spec.optimizer``. On the
    sphere, the affine parameters of normalisations (the ``*-af`` models) take plain SGD steps at
    the SI groups' lr $\\tilde\\eta\\rho^2$, as the official ``--fix_elr`` (one SGD lr for every
    group; `SphereAdam` refuses them); any other trainable tensor outside the SI groups raises."""
    names = {id(p): n for n, p in model.named_parameters()}
    if spec.mode == "full":
        groups = si_groups(model) if groups is None else list(groups)
        others = split_params(model, groups)[1]
        opt = TrackedSGD(groups, others, lr=spec.lr, weight_decay=spec.weight_decay,
                         momentum=spec.momentum, other_names=[names[id(p)] for p in others])
    else:
        groups, others = _check_groups(model, groups, affine_ok=True)
        check_lr(spec.elr, _si_params(groups))
        if spec.optimizer == "adam":
            if others:
                raise ValueError(f"optimizer='adam' trains SI groups only; the model has trainable "
                                 f"affine parameters {[names[id(p)] for p in others]}")
            opt = SphereAdam(groups, spec.elr, betas=spec.betas, constraint=spec.constraint,
                             track=True)
        else:  # the keywords only when set: the default run is the one of earlier versions
            extra = {"momentum": spec.momentum} if spec.momentum else {}
            if spec.momentum_mode != "official":
                extra["momentum_mode"] = spec.momentum_mode
            opt = SphereSGD(groups, spec.elr, constraint=spec.constraint, track=True, **extra)
        if others:
            opt.add_param_group({"params": others, "si": False, "lr": opt.lr, "name": "non-si",
                                 "names": [names[id(p)] for p in others]})
    si = [g for g in opt.param_groups if g.get("si", True)]
    return opt, [p for g in si for p in g["params"]], [g.get("name", str(i)) for i, g in enumerate(si)]


def fresh_state(model, data, spec, si_params, n_groups, level=True) -> _ckpt.RunState:
    """The metric arrays (NaN), the initial SI vector, the random level (``level``), the
    data-order generator and the augmentation generator (``None`` without augmentation) of a run
    that has done no epoch yet."""
    x, y = data.x_train, data.y_train
    steps_per_epoch = len(_batches(x.shape[0], spec.batch_size, torch.Generator().manual_seed(0)))
    n_records = len(range(0, spec.epochs * steps_per_epoch, spec.record_every))
    ep, st = _allocate(spec.epochs, n_groups, n_records, *extra_vars(spec, data))
    theta0 = torch.cat([p.detach().flatten() for p in si_params]).clone()
    model.train()
    random_loss, init_loss = (random_level(model, si_params, x, y, spec.batch_size, seed=spec.seed)
                              if level else (np.nan, np.nan))
    aug_gen = None if data.augment is None else data.augment.generator(spec.seed)
    return _ckpt.RunState(ep, st, theta0, random_loss, init_loss,
                          torch.Generator().manual_seed(spec.seed), steps_per_epoch,
                          aug_gen=aug_gen)


def loop(model, data, spec, opt, state, names, *, progress_bar, desc, attrs, saver=None,
          setup=None):
    """Train from ``state.epoch`` to ``spec.epochs``, checkpointing through ``saver``."""
    x, y = data.x_train, data.y_train
    si_params = [p for g in opt.param_groups if g.get("si", True) for p in g["params"]]
    if spec.sharpness_every:
        idx = sharpness_subset(x.shape[0], spec.seed, SHARPNESS_SAMPLES).to(x.device)
        probe = (x[idx], y[idx])
    lr = opt.lr if spec.mode == "full" else None
    t0 = time.perf_counter() - state.seconds
    with progress(total=spec.epochs, desc=desc, disable=not progress_bar,
                  initial=state.epoch) as bar:
        for e in range(state.epoch, spec.epochs):
            m = _train_epoch(model, opt, x, y, _batches(x.shape[0], spec.batch_size, state.gen),
                             augment=data.augment, aug_gen=state.aug_gen,
                             corrupted=data.corrupted)
            _keep_steps(state.st, e * state.steps_per_epoch, m, spec.record_every, lr)
            if not (np.all(np.isfinite(m["L"])) and np.all(np.isfinite(m["G"]))):
                state.invalid = f"non-finite loss or gradient in epoch {e + 1} ({spec.label()})"
                break
            ep, last = state.ep, e + 1 == spec.epochs
            _keep_epoch(ep, e, m, opt, si_params, state.theta0)
            if data.corrupted is not None:
                ep["train_loss_corrupted"][e], ep["train_loss_clean"][e] = m["Lc"], m["Lk"]
            if (e + 1) % spec.eval_every == 0 or last:
                ep["test_loss"][e], ep["test_accuracy"][e] = evaluate(model, data.x_test, data.y_test)
                if spec.bn_update:
                    ep["test_loss_bn"][e], ep["test_accuracy_bn"][e] = \
                        evaluate_bn(model, data, spec.batch_size)
            if spec.sharpness_every and ((e + 1) % spec.sharpness_every == 0 or last):
                trace, top = sharpness(model, si_params, *probe, seed=spec.seed)
                rho2 = ep["si_norm"][e] ** 2  # H at the unit sphere: H(θ/|θ|) = |θ|² H(θ) (T1)
                for k, v in zip(_SHARPNESS_VARS, (trace, trace * rho2, top, top * rho2)):
                    ep[k][e] = v
            state.epoch = e + 1
            if saver is not None and saver.due(state.epoch, spec.epochs):
                state.seconds = time.perf_counter() - t0
                saver.save(spec=spec, setup=setup, model=model, opt=opt, state=state)
            bar.update(1)
    state.seconds = time.perf_counter() - t0
    return _dataset(spec, opt, data, state, names, attrs)


def _dataset(spec, opt, data, state, names, attrs):
    import xarray as xr

    summary = _summarise(state.ep, spec, state.steps_per_epoch, state.random_loss, state.invalid)
    ep = state.ep
    dims = {k: (("epoch", "group") if v.ndim == 2 else ("epoch",), v) for k, v in ep.items()}
    lrs = [g["lr"] for g in opt.param_groups if g.get("si", True)]
    lr = lrs[0] if all(x == lrs[0] for x in lrs) else (("group",), np.asarray(lrs))
    scalars = {"random_loss": state.random_loss, "init_loss": state.init_loss, **summary,
               "lr": lr}
    coords = {"epoch": np.arange(1, spec.epochs + 1), "group": names,
              "step": np.arange(0, spec.epochs * state.steps_per_epoch, spec.record_every)}
    if spec.mode == "full":
        scalars.update(weight_decay=spec.weight_decay, momentum=spec.momentum)
    else:
        coords["elr"] = spec.elr
    ds = xr.Dataset({**dims, **{k: (("step",), v) for k, v in state.st.items()}, **scalars,
                     "train_seconds": state.seconds}, coords=coords)
    ds.attrs.update(_attrs(spec, opt, data, state.steps_per_epoch, attrs))
    return ds
