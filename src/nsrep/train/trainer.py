"""The training loop: one run of a :class:`TrainConfig`, resumable, data-parallel, ending in a deployed model.

The run folder (:class:`nsrep.storage.folders.RunFolder`) names and writes the files: the configuration, a
checkpoint rewritten atomically after every epoch, the per-epoch metrics, the summary (final accuracies of
the training and deployed forms) and the deploy folder.
"""

from __future__ import annotations

import hashlib
import math
import random
import resource
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset
from tqdm.auto import tqdm

from nsrep.data.augment import BatchTransform, build_transform
from nsrep.data.datasets import ImageData, describe, load_data
from nsrep.inspection import count_parameters
from nsrep.models import create_model
from nsrep.nn.conv import reference_copy
from nsrep.reparam import reparameterize, unwrap_model, verify_equivalence
from nsrep.storage.data_record import DataRecord, HeldOut
from nsrep.storage.folders import RunFolder
from nsrep.storage.model_record import ModelRecord
from nsrep.train import distributed
from nsrep.train.config import TrainConfig
from nsrep.train.lamb import build_lamb
from nsrep.train.mixing import BatchMix, SoftTargetLoss
from nsrep.train.regularize import equivalent_kernel_l2, unit_parameter_ids

__all__ = [
    "EvalResult",
    "TrainResult",
    "evaluate",
    "lr_factor",
    "param_groups",
    "read_metrics",
    "stored_config",
    "train",
]


@dataclass(frozen=True)
class EvalResult:
    """Loss and top-1/top-5 accuracy (percent) of a model on ``count`` test images."""

    loss: float
    top1: float
    top5: float
    count: int


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced; ``deployed`` is None when the run stopped early."""

    config: TrainConfig
    run_dir: Path | None
    epochs_done: int
    metrics: list[dict[str, Any]]
    train_form: EvalResult | None = None
    deployed_form: EvalResult | None = None
    max_rel_logit_diff: float | None = None  # deployed vs training form (eval) over the whole test set
    fold_check: float | None = None  # deployed vs the unfolded per-branch computation, first test images
    train_params: int = 0
    deploy_params: int = 0
    deployed: nn.Module | None = field(default=None, repr=False)
    deployed_digests: list[str] = field(default_factory=list)  # sha256 of the deployed weights, per rank

    @property
    def finished(self) -> bool:
        return self.deployed is not None


# ------------------------------------------------------------------------------------------ optimisation


def param_groups(
    model: nn.Module, weight_decay: float, decay_norm_and_bias: bool, exclude: Collection[int] = ()
) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights only (tensors with >1 dim) unless ``decay_norm_and_bias``;
    none on the parameters whose ``id`` is in ``exclude`` (decayed through their folded kernel instead)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if (p.ndim > 1 or decay_norm_and_bias) and id(p) not in exclude else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimiser over :func:`param_groups`: SGD (Nesterov when asked and momentum > 0) or LAMB."""
    groups = param_groups(
        model, config.weight_decay, config.decay_norm_and_bias, unit_parameter_ids(model, config.weight_decay_mode)
    )
    if config.optimizer == "lamb":
        return build_lamb(groups, lr=config.lr)
    return torch.optim.SGD(
        groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0
    )


def train_transform(config: TrainConfig, data: ImageData) -> BatchTransform:
    """The recipe's training augmentation for ``data`` (its default kind unless the config names one)."""
    return build_transform(
        config.augment or data.augment,
        train=True,
        image_size=config.train_image_size or data.image_size,
        mean=data.mean,
        std=data.std,
        crop_padding=config.crop_padding,
        hflip=config.hflip,
        autoaugment=config.autoaugment,
        randaugment=config.randaugment,
    )


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, config: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of ``config.lr`` at optimiser step ``step``: linear warm-up, then the schedule.

    The warm-up climbs per step from ``warmup_lr`` (step 0 runs at it; timm's ``warmup_lr``) or, without one,
    from ``lr / warmup_steps``, reaching ``lr`` at the first step after it.
    """
    if step < warmup_steps:
        if config.warmup_lr is None:
            return (step + 1) / warmup_steps
        start = config.warmup_lr / config.lr
        return start + (1.0 - start) * step / warmup_steps
    floor = config.min_lr / config.lr
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        epoch = step // max(steps_per_epoch, 1)
        return max(0.1 ** sum(epoch >= m for m in config.step_milestones), floor)
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _top_k_correct(logits: Tensor, labels: Tensor, ks: Sequence[int]) -> list[int]:
    top = logits.topk(max(ks), dim=1).indices
    hits = top == labels[:, None]
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


# ------------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate(
    models: Sequence[nn.Module],
    loader: DataLoader,
    transform: BatchTransform,
    env: distributed.DistEnv,
    *,
    channels_last: bool = False,
    autocast: Any = nullcontext,
    progress: bool = False,
) -> tuple[list[EvalResult], float]:
    """Evaluate models on the same batches; returns their results and the max relative difference of every
    model's logits to the first one's (0.0 for a single model). Sharded over ranks; counts are summed."""
    for m in models:
        m.eval()
    n = len(models)
    sums = torch.zeros(n, 3, dtype=torch.float64)  # loss sum, top-1 hits, top-5 hits
    count, max_diff, max_ref = 0, 0.0, 0.0
    for images, labels in tqdm(loader, desc="eval", leave=False, disable=not progress, unit="batch"):
        images, labels = _to_device(images, labels, env.device, channels_last)
        x = transform(images)
        outputs = []
        for i, m in enumerate(models):
            with autocast():
                logits = m(x).float()
            outputs.append(logits)
            sums[i, 0] += F.cross_entropy(logits, labels, reduction="sum").item()
            top1, top5 = _top_k_correct(logits, labels, (1, min(5, logits.shape[1])))
            sums[i, 1] += top1
            sums[i, 2] += top5
        for other in outputs[1:]:
            max_diff = max(max_diff, (other.double() - outputs[0].double()).abs().max().item())
        max_ref = max(max_ref, outputs[0].double().abs().max().item())
        count += labels.numel()
    totals = distributed.sum_tensor(torch.cat([sums.flatten(), torch.tensor([count], dtype=torch.float64)]), env)
    sums, count = totals[:-1].view(n, 3), int(totals[-1].item())
    diffs = distributed.all_gather_objects((max_diff, max_ref), env)
    rel_diff = max(d for d, _ in diffs) / max(max(r for _, r in diffs), 1e-30)
    results = [
        EvalResult(
            loss=s[0].item() / count, top1=100 * s[1].item() / count, top5=100 * s[2].item() / count, count=count
        )
        for s in sums
    ]
    return results, rel_diff


# ------------------------------------------------------------------------------------------ set-up helpers


def _to_device(images: Tensor, labels: Tensor, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


def _use(setting: bool | str, device: torch.device) -> bool:
    return device.type == "cuda" if setting == "auto" else bool(setting)


def _autocast_factory(enabled: bool, device: torch.device) -> tuple[Any, torch.dtype | None]:
    if not enabled:
        return nullcontext, None
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16
    return (lambda: torch.autocast(device.type, dtype=dtype)), dtype


def _rng_state() -> dict[str, Any]:
    """Every generator a run draws from, as plain Python values (bytes, ints): picklable for all_gather_object
    and loadable with ``torch.load(weights_only=True)``."""
    name, keys, *rest = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state().numpy().tobytes(),
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), *rest],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.numpy().tobytes() for s in torch.cuda.get_rng_state_all()]
    return state


def _byte_tensor(data: bytes) -> Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_byte_tensor(state["torch"]))
    random.setstate(_tuplify(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_byte_tensor(s) for s in state["cuda"]])


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, list | tuple) else value


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _weights_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak-memory measurement (runs of a sweep share one process)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 resets the resident-set high-water mark VmHWM of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_memory_mib(device: torch.device) -> float:
    """Peak memory since the last reset: CUDA allocator peak, else the process's resident-set high-water mark."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # lifetime peak (KiB on Linux)


def stored_config(run_dir: str | Path) -> TrainConfig:
    """The configuration a run folder's checkpoint was trained with."""
    return TrainConfig.from_dict(RunFolder(run_dir).stored_config(), source=f"checkpoint in {str(run_dir)!r}")


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The per-epoch records of a run folder's metrics."""
    return RunFolder(run_dir).read_metrics()


def _loaders(
    data: ImageData, config: TrainConfig, env: distributed.DistEnv
) -> tuple[DataLoader, DistributedSampler, DataLoader]:
    micro_batch, rest = divmod(config.batch_size, env.world_size * config.grad_accum)
    if rest or micro_batch < 1:
        raise ValueError(
            f"batch_size {config.batch_size} must be a multiple of ranks x grad_accum "
            f"({env.world_size} x {config.grad_accum})"
        )
    # DistributedSampler with one replica is a plain seeded shuffle; set_epoch(e) makes epoch e's order a
    # function of (seed, e) only, so a resumed run sees the same batches.
    sampler = DistributedSampler(
        data.train, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=config.seed, drop_last=True
    )
    pin = env.device.type == "cuda"
    common = {"num_workers": config.workers, "pin_memory": pin, "persistent_workers": config.workers > 0}
    train_loader = DataLoader(data.train, batch_size=micro_batch, sampler=sampler, drop_last=True, **common)
    if len(train_loader) < config.grad_accum:
        raise ValueError(
            f"the training set ({len(data.train)} images) is smaller than one batch of {config.batch_size}; "
            "lower --batch-size"
        )
    test_shard = Subset(data.test, range(env.rank, len(data.test), env.world_size))
    # Its own generator: iterating a DataLoader draws a seed from the generator it is given (the global one by
    # default), so evaluating would otherwise shift the training batches' randomness, and how often a run
    # evaluates (eval_every) would change how it trains.
    test_loader = DataLoader(
        test_shard,
        batch_size=config.eval_batch_size,
        shuffle=False,
        generator=torch.Generator().manual_seed(config.seed),
        **common,
    )
    return train_loader, sampler, test_loader


def _micro_batches(loader: DataLoader, accum: int) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(index within the optimiser step, images, labels); a trailing incomplete step is dropped."""
    usable = len(loader) // accum * accum
    for i, (images, labels) in enumerate(loader):
        if i >= usable:
            break
        yield i % accum, images, labels


# ------------------------------------------------------------------------------------------ the run


def train(
    config: TrainConfig,
    run_dir: str | Path | None = None,
    *,
    resume: bool = False,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``config`` (in ``run_dir`` when given), then fold it and evaluate both forms.

    ``resume`` continues the run in ``run_dir`` from its last checkpoint exactly (model, optimiser, schedule,
    scaler and RNG states). ``stop_after`` ends this invocation after that many epochs (for time-limited
    jobs; continue later with ``resume``). Under ``torchrun`` every rank calls this; rank 0 writes files.
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    env = distributed.setup(config.device)
    try:
        with pinned_threads(config.threads):
            return _train(config, run_dir, env, resume=resume, stop_after=stop_after)
    finally:
        distributed.cleanup(env)


@contextmanager
def pinned_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads (None: leave them), then restore the caller's count.

    Results depend on the thread count, so a recipe may pin it; the caller's setting is the caller's.
    """
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class _Run:
    """What one training run holds: built by :func:`_set_up`, advanced epoch by epoch by the steps below."""

    config: TrainConfig
    env: distributed.DistEnv
    folder: RunFolder | None
    data: ImageData
    train_tf: BatchTransform
    eval_tf: BatchTransform
    train_loader: DataLoader
    sampler: DistributedSampler
    test_loader: DataLoader
    model: nn.Module  # the model itself; ``ddp`` is what trains it (the same module without DDP)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    mix: BatchMix | None  # mixup/CutMix and soft targets; None: hard labels (today's cross-entropy)
    autocast: Any
    channels_last: bool
    steps_per_epoch: int
    ddp: nn.Module | None = None
    evaluated: nn.Module | None = None  # what evaluates it: the model, or its compiled wrapper
    start_epoch: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)
    writer: Any = None  # TensorBoard, on the main rank when installed

    @property
    def show(self) -> bool:
        return self.env.is_main and self.config.progress


@dataclass
class _EpochTotals:
    """One epoch of training on this rank: summed over ranks where the metrics need it."""

    totals: Tensor  # loss sum, correct predictions, images (summed over ranks)
    step_losses: list[Tensor]  # this rank's loss of every optimiser step: spikes show here, not in means
    seconds: float


def _train(
    config: TrainConfig, run_dir: Path | None, env: distributed.DistEnv, *, resume: bool, stop_after: int | None
) -> TrainResult:
    if stop_after is not None and stop_after < 1:
        raise ValueError(f"stop_after must be >= 1, got {stop_after}")
    folder = RunFolder(run_dir) if run_dir is not None else None
    checkpoint = _open_folder(folder, config, resume)  # every rank checks, so all fail alike
    run = _set_up(config, env, folder)
    _restore(run, checkpoint)
    _open_logs(run, fresh=checkpoint is None)
    last_epoch = config.epochs if stop_after is None else min(config.epochs, run.start_epoch + stop_after)
    _reset_peak_memory(env.device)
    for epoch in range(run.start_epoch, last_epoch):
        trained = _train_one_epoch(run, epoch)
        record = _evaluate(run, epoch, trained)
        run.metrics.append(record)
        _save(run, epoch, record)
    return _finish(run, last_epoch)


def _open_folder(folder: RunFolder | None, config: TrainConfig, resume: bool) -> dict[str, Any] | None:
    """Refuse to overwrite a run and to resume a different one; returns the checkpoint to resume from."""
    if folder is None:
        if resume:
            raise ValueError("--resume needs the run folder (--out) of the run to continue")
        return None
    return folder.open(config, resume=resume)


def _set_up(config: TrainConfig, env: distributed.DistEnv, folder: RunFolder | None) -> _Run:
    """Data, transforms and loaders; the model (same initial weights on every rank), optimiser, schedule."""
    data = load_data(config.data, **config.data_kwargs())
    kind = config.augment or data.augment
    aug = {"image_size": data.image_size, "mean": data.mean, "std": data.std}
    train_tf = train_transform(config, data)
    eval_tf = build_transform(kind, train=False, **aug)
    train_loader, sampler, test_loader = _loaders(data, config, env)

    _seed_everything(config.seed)  # same initial weights on every rank
    model = create_model(**config.model_kwargs(), num_classes=data.num_classes, in_chans=data.in_chans)
    channels_last = _use(config.channels_last, env.device)
    model.to(env.device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = build_optimizer(model, config)
    steps_per_epoch = len(train_loader) // config.grad_accum
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = min(round(config.warmup_epochs * steps_per_epoch), total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step, total_steps=total_steps, warmup_steps=warmup_steps, config=config, steps_per_epoch=steps_per_epoch
        ),
    )
    autocast, amp_dtype = _autocast_factory(_use(config.amp, env.device), env.device)
    return _Run(
        config=config,
        env=env,
        folder=folder,
        data=data,
        train_tf=train_tf,
        eval_tf=eval_tf,
        train_loader=train_loader,
        sampler=sampler,
        test_loader=test_loader,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(env.device.type, enabled=amp_dtype == torch.float16),
        criterion=_criterion(config),
        mix=_batch_mix(config, data.num_classes),
        autocast=autocast,
        channels_last=channels_last,
        steps_per_epoch=steps_per_epoch,
    )


def _soft_targets(config: TrainConfig) -> bool:
    """Whether the run trains on soft targets (mixing or BCE); plain cross-entropy keeps the hard labels."""
    return config.mixup > 0 or config.cutmix > 0 or config.loss != "cross-entropy"


def _criterion(config: TrainConfig) -> nn.Module:
    if _soft_targets(config):  # label smoothing is then in the targets (BatchMix)
        return SoftTargetLoss(config.loss, config.bce_target_threshold)
    return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)


def _batch_mix(config: TrainConfig, num_classes: int) -> BatchMix | None:
    if not _soft_targets(config):
        return None
    return BatchMix(num_classes, mixup=config.mixup, cutmix=config.cutmix, smoothing=config.label_smoothing)


def _restore(run: _Run, checkpoint: dict[str, Any] | None) -> None:
    """Continue from ``checkpoint`` (weights, optimiser, schedule, scaler, RNG) or seed a fresh run; then wrap
    the model for data parallelism (DDP broadcasts rank 0's weights, which are final only now)."""
    env = run.env
    if checkpoint is not None:
        unwrap_model(run.model).load_state_dict(checkpoint["model"])
        run.optimizer.load_state_dict(checkpoint["optimizer"])
        run.scheduler.load_state_dict(checkpoint["scheduler"])
        run.scaler.load_state_dict(checkpoint["scaler"])
        run.start_epoch, run.metrics = checkpoint["epoch"], list(checkpoint["metrics"])
        rng = checkpoint["rng"]
        if len(rng) == env.world_size:
            _set_rng_state(rng[env.rank])
        else:  # another world size: the run continues, but not bit-for-bit
            _seed_everything(run.config.seed + 1000 * run.start_epoch + env.rank)
    else:
        _seed_everything(run.config.seed + env.rank)  # ranks draw different augmentations and partitions
    run.ddp = DistributedDataParallel(run.model) if env.distributed else run.model
    run.evaluated = run.model
    if _use(run.config.compile, env.device):
        # compiled wrappers around the same module: checkpoints, folding and the fold check read run.model itself
        run.ddp = torch.compile(run.ddp)
        run.evaluated = run.ddp if run.ddp._orig_mod is run.model else torch.compile(run.model)


def _open_logs(run: _Run, *, fresh: bool) -> None:
    """The main rank writes the configuration (of a fresh run), the metrics so far and opens TensorBoard."""
    if run.env.is_main and run.folder is not None:
        run.folder.path.mkdir(parents=True, exist_ok=True)
        if fresh:
            run.folder.write_config(run.config)
        run.folder.write_metrics(run.metrics)  # a resumed run drops lines of epochs after its checkpoint
        run.writer = run.folder.tensorboard()
    if run.env.is_main:
        tqdm.write(f"{describe(run.data)}; {run.env.world_size} process(es) on {run.env.device}", file=sys.stderr)


def _train_one_epoch(run: _Run, epoch: int) -> _EpochTotals:
    """One pass over this rank's shard of the training set: micro-batches, accumulation, optimiser steps."""
    config, env, ddp = run.config, run.env, run.ddp
    decay_folded = config.weight_decay_mode == "equivalent" and config.weight_decay > 0
    run.sampler.set_epoch(epoch)
    ddp.train()
    started = time.perf_counter()
    loss_sum, hits, seen = torch.zeros((), device=env.device), torch.zeros((), device=env.device), 0
    step_losses: list[Tensor] = []
    step_loss = torch.zeros((), device=env.device)
    images_per_step = run.train_loader.batch_size * config.grad_accum
    bar = tqdm(
        total=run.steps_per_epoch * images_per_step,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="img",
        unit_scale=True,
        disable=not run.show,
        leave=False,
        file=sys.stderr,
    )
    for micro, images, labels in _micro_batches(run.train_loader, config.grad_accum):
        images, labels = _to_device(images, labels, env.device, run.channels_last)
        x = run.train_tf(images)
        targets = labels
        if run.mix is not None:
            x, targets = run.mix(x, labels)
        last_micro = micro == config.grad_accum - 1
        sync = ddp.no_sync() if env.distributed and not last_micro else nullcontext()
        with sync:
            with run.autocast():
                logits = ddp(x)
                loss = run.criterion(logits.float(), targets)
            # the equivalent-kernel decay is a loss term (SGD's decay is wd * w, i.e. wd/2 ||w||²);
            # metrics keep the data loss alone
            penalty = 0.5 * config.weight_decay * equivalent_kernel_l2(run.model) if decay_folded else 0.0
            run.scaler.scale((loss + penalty) / config.grad_accum).backward()
        loss_sum += loss.detach() * labels.numel()
        step_loss = (step_loss if micro else 0) + loss.detach() / config.grad_accum
        hits += (logits.detach().argmax(1) == labels).sum()
        seen += labels.numel()
        if last_micro:
            step_losses.append(step_loss)
            _optimizer_step(run)
        bar.update(labels.numel())
        if run.show and (bar.n // images_per_step) % config.log_every == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{run.optimizer.param_groups[0]['lr']:.3g}")
    bar.close()
    seconds = time.perf_counter() - started
    totals = distributed.sum_tensor(torch.stack([loss_sum, hits, torch.tensor(float(seen), device=env.device)]), env)
    return _EpochTotals(totals=totals, step_losses=step_losses, seconds=seconds)


def _optimizer_step(run: _Run) -> None:
    """Clip (when asked), step the optimiser through the gradient scaler, advance the schedule."""
    if run.config.clip_grad is not None:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_(run.model.parameters(), run.config.clip_grad)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()


def _evaluate(run: _Run, epoch: int, trained: _EpochTotals) -> dict[str, Any]:
    """Test-set accuracy after the epoch (BN statistics averaged over ranks first); the epoch's metrics."""
    env, config = run.env, run.config
    distributed.average_buffers(run.model, env)  # every rank folds the same BN statistics
    totals = trained.totals
    record: dict[str, Any] = {
        "epoch": epoch + 1,
        "train_loss": totals[0].item() / totals[2].item(),
        "train_top1": 100 * totals[1].item() / totals[2].item(),
    }
    if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
        (result,), _ = evaluate(
            [run.evaluated],
            run.test_loader,
            run.eval_tf,
            env,
            channels_last=run.channels_last,
            autocast=run.autocast,
            progress=run.show,
        )
        record.update(test_loss=result.loss, test_top1=result.top1, test_top5=result.top5)
    return {
        **record,
        "lr": run.optimizer.param_groups[0]["lr"],
        "epoch_seconds": trained.seconds,
        "images_per_second": totals[2].item() / trained.seconds,
        "peak_memory_mib": _peak_memory_mib(env.device),
        "step_losses": [round(v, 5) for v in torch.stack(trained.step_losses).tolist()] if trained.step_losses else [],
    }


def _save(run: _Run, epoch: int, record: dict[str, Any]) -> None:
    """Gather every rank's RNG state; the main rank reports the epoch and writes checkpoint and metrics."""
    env, config = run.env, run.config
    rng = distributed.all_gather_objects(_rng_state(), env)
    if not env.is_main:
        return
    scores = (
        f"test top-1 {record['test_top1']:.2f}%  top-5 {record['test_top5']:.2f}%  " if "test_top1" in record else ""
    )
    tqdm.write(
        f"epoch {epoch + 1}/{config.epochs}  loss {record['train_loss']:.4f}  {scores}"
        f"{record['images_per_second']:.0f} img/s",
        file=sys.stderr,
    )
    if run.folder is not None:
        model = unwrap_model(run.model)
        run.folder.save_checkpoint(
            {
                "config": config.to_dict(),
                "model_record": ModelRecord.of(model).to_dict(),
                "data": _data_record(run.data, config.data, config.eval_crop_pct).to_dict(),
                "epoch": epoch + 1,
                "model": model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "scaler": run.scaler.state_dict(),
                "rng": rng,
                "metrics": run.metrics,
                "world_size": env.world_size,
            }
        )
        run.folder.write_metrics(run.metrics)
    if run.writer is not None:
        for key, value in record.items():
            if key != "epoch":
                run.writer.add_scalar(key, value, epoch + 1)


def _data_record(data: ImageData, source: str, crop_pct: float) -> DataRecord:
    """What the run read and what a deployed model's user needs to feed it (checkpoint and ``preprocess.json``)."""
    split = HeldOut(data.val_fraction, data.split_seed) if data.held_out else None
    return DataRecord(
        source=source,  # the --data the run read: a folder path, or "digits" / "synthetic"
        kind=data.name,
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        input_size=data.image_size,
        mean=data.mean,
        std=data.std,
        class_names=data.class_names,
        split=split,
        # an image folder's evaluation resize (image_size / crop_pct), so `nsrep eval` tests as the run did
        crop_pct=crop_pct if data.name == "imagefolder" else None,
    )


def _finish(run: _Run, last_epoch: int) -> TrainResult:
    """Close the logs; when every epoch is done, fold the trained model, evaluate both forms on the same
    batches, check the fold against the per-branch computation and save the deployed form and the summary."""
    if run.writer is not None:
        run.writer.close()
    config, env = run.config, run.env
    run_dir = run.folder.path if run.folder is not None else None
    result = TrainResult(config=config, run_dir=run_dir, epochs_done=last_epoch, metrics=run.metrics)
    result.train_params = count_parameters(run.model)
    if last_epoch < config.epochs:
        return result
    model = unwrap_model(run.model).eval()
    deployed = reparameterize(model).to(env.device)
    # float32 without autocast: the comparison is about folding, not about reduced precision
    (train_form, deployed_form), rel_diff = evaluate([model, deployed], run.test_loader, run.eval_tf, env)
    result.train_form, result.deployed_form, result.max_rel_logit_diff = train_form, deployed_form, rel_diff
    result.deploy_params = count_parameters(deployed)
    # the default eval path applies per-branch folded kernels; the per-branch reference path checks the fold
    # against the computation that training differentiates, on the first test images
    images, _ = next(iter(run.test_loader))
    reference = reference_copy(model)
    check = run.eval_tf(images[:64].to(env.device))
    result.fold_check = verify_equivalence(reference, deployed, check).max_rel_error
    result.deployed = deployed.cpu()
    result.deployed_digests = distributed.all_gather_objects(_weights_digest(result.deployed), env)
    if len(set(result.deployed_digests)) != 1:
        raise RuntimeError(f"ranks folded different deployed weights: {result.deployed_digests}")
    if env.is_main and run.folder is not None:
        run.folder.deploy.write(result.deployed, data_record=_data_record(run.data, config.data, config.eval_crop_pct))
        summary = {
            "train_form": asdict(train_form),
            "deployed_form": asdict(deployed_form),
            "max_rel_logit_diff": rel_diff,
            "fold_check_rel_error": result.fold_check,
            "train_params": result.train_params,
            "deploy_params": result.deploy_params,
            "epochs": result.epochs_done,
            "train_seconds": sum(m["epoch_seconds"] for m in result.metrics),
            "world_size": env.world_size,
            "deployed_sha256_per_rank": result.deployed_digests,
        }
        run.folder.write_summary(summary)
    return result
