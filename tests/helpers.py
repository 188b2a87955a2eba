"""Shared test helpers: real training steps before folding, and the float64/float32 equivalence check."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import nsrep
from nsrep.nn.conv import reference_copy
from nsrep.train.config import TrainConfig

F64_TOL = 1e-10
F32_TOL = 1e-4

# A training run that takes seconds: a width-1/8 ResNet-18 on the synthetic data.
TINY = {
    "data": "synthetic",
    "arch": "resnet18",
    "width_mult": 0.125,
    "epochs": 2,
    "batch_size": 32,
    "eval_batch_size": 64,
    "lr": 0.02,
    "warmup_epochs": 0.5,
    "workers": 0,
    "progress": False,
}


def tiny_config(**changes) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, **changes})


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): file_digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def train_steps(
    model: nn.Module, make_input, steps: int = 3, lr: float = 0.01, loss_fn=None, calibrate: int = 2
) -> None:
    """A few SGD steps in train mode, then BN running statistics re-estimated on ``calibrate`` batches.

    The steps move weights and statistics away from their init. Re-estimating the statistics (cumulative
    average, as after a real training run) keeps a deep net's eval outputs at a sane scale: after only three
    momentum-0.1 updates a 100-layer net's running statistics are mostly the init values and its eval output
    overflows float32. ``lr`` is kept modest for the same reason: at 0.05 on random labels a ResNet-34's eval
    output reaches 5e5 and float32 itself (deployed float32 vs exact float64) is 5e-5 off, so a float32
    comparison would measure the conditioning, not the fold. A wrong fold still gives O(1) errors.
    """
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(steps):
        out = model(make_input())
        loss = loss_fn(out) if loss_fn else (out.float() ** 2).mean() + out.float().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if calibrate:
        recalibrate_bn(model, make_input, calibrate)


@torch.no_grad()
def recalibrate_bn(model: nn.Module, make_input, batches: int) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    for _ in range(batches):
        model(make_input())
    for bn, momentum in zip(bns, momenta, strict=True):
        bn.momentum = momentum


def classification_loss(num_classes: int):
    def loss(out):
        target = torch.arange(out.shape[0]) % num_classes
        return F.cross_entropy(out, target)

    return loss


def assert_folds(model: nn.Module, make_input) -> nn.Module:
    """Check the eval-mode training form against its folded form in float64 and float32; return the f64 fold.

    The training form runs the per-branch reference implementation (every branch's own layers, unfolded):
    the fast path's eval mode itself applies folded kernels, so comparing with it alone would be circular.
    The fast path's eval is checked against the deployed form as well.
    """
    model64 = model.double()
    deployed = nsrep.reparameterize(model64)
    x = make_input().double()
    unfolded64 = reference_copy(model64)
    eq = nsrep.verify_equivalence(unfolded64, deployed, x)
    assert eq.max_rel_error <= F64_TOL, f"float64: {eq}"
    eq_fast = nsrep.verify_equivalence(model64, deployed, x)
    assert eq_fast.max_rel_error <= F64_TOL, f"float64, fast eval: {eq_fast}"

    unfolded32 = reference_copy(model64).float()
    deployed32 = nsrep.reparameterize(copy.deepcopy(model64).float())
    eq32 = nsrep.verify_equivalence(unfolded32, deployed32, x.float())
    assert eq32.max_rel_error <= F32_TOL, f"float32: {eq32}"
    return deployed
