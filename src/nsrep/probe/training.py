"""Training heads on frozen features with one budget for all, folding them, and the seeds loop."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nsrep.inspection import count_parameters
from nsrep.models.heads import HEADS, create_head
from nsrep.nn.linear import RepLinear
from nsrep.probe.constants import DEFAULT_HEADS
from nsrep.probe.features import FeatureSet, load_features
from nsrep.reparam import reparameterize
from nsrep.train.distributed import pick_device
from nsrep.validation import check_choice


@dataclass(frozen=True)
class ProbeConfig:
    """The budget every head gets: AdamW with a cosine schedule to 0, same epochs, batch and batch order."""

    epochs: int = 100
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.01  # AdamW's default, on linear weights only (not biases, not BN)

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay}")


@dataclass(frozen=True)
class ProbeRun:
    """One head trained on one data set with one seed; accuracies are test top-1 in percent."""

    dataset: str
    head: str
    seed: int
    train_form_top1: float  # the training form (branches, streams) in eval mode
    deployed_top1: float  # the folded plain head
    disagreements: int  # test samples whose predicted class differs between the two forms
    max_rel_logit_diff: float  # max |logit difference| / max |logit| between the two forms
    train_loss: float  # mean training loss of the last epoch
    seconds: float
    train_params: int
    deployed_params: int


def _standardize(features: FeatureSet) -> tuple[Tensor, Tensor]:
    """Train and test features standardised with the train mean and std (constant features: std 1)."""
    mean = features.train_x.astype(np.float64).mean(0)
    std = features.train_x.astype(np.float64).std(0)
    std[std < 1e-12] = 1.0  # e.g. the always-blank corner pixels of digits

    def apply(x: np.ndarray) -> Tensor:
        return torch.from_numpy(((x - mean) / std).astype(np.float32))

    return apply(features.train_x), apply(features.test_x)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on the (branch) weights of linear layers only, the same rule for every head."""
    decay = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear | RepLinear)}
    params = list(model.parameters())
    return [
        {"params": [p for p in params if id(p) in decay], "weight_decay": weight_decay},
        {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0},
    ]


def train_head(
    features: FeatureSet,
    head: str,
    seed: int,
    config: ProbeConfig | None = None,
    *,
    head_options: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
) -> ProbeRun:
    """Train head ``head`` on ``features`` with ``seed``; test top-1 of the training form and of its fold.

    The seed fixes the head's initialisation, the NS partitions and the batch order; the batch order depends on
    the seed only, so every head sees the same batches. The caller's global RNG state is left as it was.
    """
    config = config or ProbeConfig()
    device = torch.device(device)
    x_train, x_test = (t.to(device) for t in _standardize(features))
    y_train = torch.from_numpy(features.train_y).to(device)
    y_test = torch.from_numpy(features.test_y).to(device)
    n = x_train.shape[0]
    batch = min(config.batch_size, n)
    steps_per_epoch = n // batch  # the last partial batch is dropped (a 1-sample batch breaks BatchNorm)
    total = config.epochs * steps_per_epoch
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model = create_head(head, features.in_features, features.num_classes, **(head_options or {})).to(device)
        optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total))
        )
        order = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(config.epochs):
            perm = torch.randperm(n, generator=order).to(device)
            losses = []
            for i in range(steps_per_epoch):
                index = perm[i * batch : (i + 1) * batch]
                loss = F.cross_entropy(model(x_train[index]), y_train[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.detach())
        train_loss = torch.stack(losses).mean().item()
        model.eval()
        deployed = reparameterize(model)
        with torch.no_grad():
            logits, logits_deployed = model(x_test), deployed(x_test)
    pred, pred_deployed = logits.argmax(1), logits_deployed.argmax(1)
    diff = (logits.double() - logits_deployed.double()).abs().max().item()
    scale = logits.double().abs().max().item()
    return ProbeRun(
        dataset=features.name,
        head=head,
        seed=seed,
        train_form_top1=100.0 * (pred == y_test).double().mean().item(),
        deployed_top1=100.0 * (pred_deployed == y_test).double().mean().item(),
        disagreements=int((pred != pred_deployed).sum().item()),
        max_rel_logit_diff=diff / scale if scale > 0 else diff,
        train_loss=train_loss,
        seconds=time.perf_counter() - start,
        train_params=count_parameters(model),
        deployed_params=count_parameters(deployed),
    )


@dataclass(frozen=True)
class ProbeResults:
    """Every run of :func:`run_probe`, with the data sets, heads and seeds in the order they were given."""

    runs: tuple[ProbeRun, ...]
    datasets: tuple[str, ...]
    heads: tuple[str, ...]
    seeds: tuple[int, ...]
    config: ProbeConfig


def run_probe(
    datasets: Sequence[str | os.PathLike | FeatureSet],
    heads: Sequence[str] = DEFAULT_HEADS,
    seeds: Sequence[int] = (0, 1, 2),
    config: ProbeConfig | None = None,
    *,
    head_options: Mapping[str, Mapping[str, Any]] | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> ProbeResults:
    """Train every head on every data set (feature files or :class:`FeatureSet`) with every seed.

    ``head_options`` maps a head name to extra :func:`~nsrep.models.heads.create_head` keywords. A tqdm bar counts
    the runs. Every data set is read and checked before the first run starts.
    """
    config = config or ProbeConfig()
    if not datasets:
        raise ValueError("no data sets: give feature files (.npz) or use the embedded example")
    heads, seeds = tuple(heads), tuple(seeds)
    if not heads:
        raise ValueError(f"no heads; valid: {', '.join(HEADS)}")
    for head in heads:
        check_choice("head", head, HEADS)
    for name in head_options or {}:
        check_choice("head in head_options", name, heads)
    if len(set(heads)) != len(heads) or len(set(seeds)) != len(seeds):
        raise ValueError(f"heads and seeds must not repeat, got heads {heads} and seeds {seeds}")
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"seeds must be one or more non-negative ints, got {seeds}")
    sets = [d if isinstance(d, FeatureSet) else load_features(d) for d in datasets]
    names = [s.name for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"data set names must be unique (they label the table's columns), got {names}")
    dev = resolve_device(device)
    runs = []
    from tqdm.auto import tqdm

    with tqdm(total=len(sets) * len(heads) * len(seeds), desc="probe", unit="run", disable=not progress) as bar:
        for features in sets:
            for head in heads:
                for seed in seeds:
                    bar.set_postfix_str(f"{features.name} / {head} / seed {seed}")
                    options = (head_options or {}).get(head)
                    runs.append(train_head(features, head, seed, config, head_options=options, device=dev))
                    bar.update()
    return ProbeResults(tuple(runs), tuple(names), heads, seeds, config)


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` (CUDA when available), ``cpu`` or ``cuda`` as a ``torch.device``; refuses CUDA where there is none."""
    return device if isinstance(device, torch.device) else pick_device(device)
