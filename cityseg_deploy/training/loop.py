"""The training loop, as plain functions read top to bottom: ``train_one_epoch``, ``evaluate``, ``fit``.

Shape borrowed from torchvision's references/segmentation/train.py.  What ``fit`` adds for this
project: checkpoints in the cityseg format (``best.pt`` by val mIoU, ``last.pt`` with the full
train state), an exactly reproducible ``--resume``, and the run's log, report and curves.

Reproducibility: the shuffling order of epoch ``e`` comes from ``seed + e`` (DistributedSampler,
also with one process), and each sample's augmentation from a generator seeded with
``(seed, e, index)``, so neither depends on DataLoader workers, on process count, nor on how many
epochs ran before a restart.  ``last.pt`` also stores the python, numpy and torch RNG states at the
epoch boundary, so dropout continues the same stream.  With ``torch.use_deterministic_algorithms``
an interrupted-and-resumed run ends with bit-identical weights to an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import shlex
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..data.cityscapes import CityscapesDataset, check_headers
from ..data.transforms import TrainAugment, label_to_tensor, to_tensor
from ..errors import CitysegError
from ..fileio import write_text_atomic
from ..labels import LabelSet, get_label_set
from ..metrics.confusion import ConfusionMatrix
from ..models.checkpoint import ModelMeta, read_checkpoint, save_checkpoint
from ..models.registry import build_model, get_default_cfg, get_entry
from ..runlock import folder_lock
from . import distributed as ddp
from .losses import SegmentationLoss
from .recipe import Recipe, load_recipe, recipe_from_dict
from .report import history_row, plot_curves, report_markdown, write_log_csv
from .resume import (capture_rng_state, check_out_dir, clear_run_files, read_resume_checkpoint,
                     restore_rng_state)
from .schedule import build_optimizer, build_scheduler, poly_power_of, retarget_scheduler


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`fit`; ``str(exc)`` says what was saved and how to resume."""


class NonFiniteLoss(Exception):
    def __init__(self, value: float, epoch: int, step: int) -> None:
        super().__init__(f"loss {value} at epoch {epoch} step {step}")
        self.value, self.epoch, self.step = value, epoch, step


# --------------------------------------------------------------------------- datasets
class TrainSet(Dataset):
    """Cityscapes train split at ``size``, augmented, as (CHW float tensor, HW int64 tensor).

    Each sample's augmentation draws from ``default_rng([seed, epoch, index])``: the same sample
    of the same epoch looks the same in any worker, any process, before or after a resume.
    """

    def __init__(self, base: CityscapesDataset, augment: TrainAugment, mean, std, seed: int) -> None:
        self.base, self.augment, self.mean, self.std, self.seed = base, augment, mean, std, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # workers are not persistent: each epoch's iterator copies this value

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, label = self.augment(image, label, rng)
        return to_tensor(image, self.mean, self.std), label_to_tensor(label)


class EvalSet(Dataset):
    """Cityscapes split at ``size`` without augmentation."""

    def __init__(self, base: CityscapesDataset, mean, std) -> None:
        self.base, self.mean, self.std = base, mean, std

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return to_tensor(image, self.mean, self.std), label_to_tensor(label)


# --------------------------------------------------------------------------- devices, precision
def resolve_device(name: str | None, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """``None`` → CUDA when visible, else CPU; ``cpu`` / ``cuda`` / ``cuda:N`` / ``mps`` checked."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CitysegError(f"--device {name!r}: unknown device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CitysegError(f"--device {name}: no CUDA GPU is visible to PyTorch "
                               f"(torch {torch.__version__}); use --device cpu")
        index = local_rank if distributed else (device.index or 0)
        if index >= torch.cuda.device_count():
            raise CitysegError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    if device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise CitysegError(f"--device {name}: MPS is not available here; use --device cpu")
        return device
    if device.type != "cpu":
        raise CitysegError(f"--device {name!r}: training runs on cpu, cuda[:N] or mps")
    return device


def resolve_amp(mode: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use a GradScaler).  ``auto``: bf16 where the GPU has it, else
    fp16 + GradScaler; off on CPU (CPU autocast is slower than fp32 for training on most CPUs)."""
    if mode == "off":
        return None, False
    if device.type == "cuda":
        bf16_ok = torch.cuda.is_bf16_supported()
        if mode == "auto":
            return (torch.bfloat16, False) if bf16_ok else (torch.float16, True)
        if mode == "bf16":
            if not bf16_ok:
                raise CitysegError("recipe key 'amp': bf16 is not supported by this GPU; use fp16 or auto")
            return torch.bfloat16, False
        return torch.float16, True
    if mode == "auto":
        return None, False
    if mode == "bf16":
        return torch.bfloat16, False
    raise CitysegError(f"recipe key 'amp': fp16 needs a CUDA GPU (device is {device}); "
                       "use bf16, auto or off")


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# --------------------------------------------------------------------------- seeds, batch norm
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def freeze_batchnorm(model: nn.Module) -> None:
    """Put BN layers in eval mode (running statistics fixed) while the rest trains."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


# --------------------------------------------------------------------------- one epoch
def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    loader: DataLoader, device: torch.device, epoch: int, *, step: int = 0,
                    scheduler=None, scaler: torch.amp.GradScaler | None = None,
                    amp_dtype: torch.dtype | None = None, grad_clip: float | None = None,
                    freeze_bn: bool = False, env: ddp.DistEnv = ddp.DistEnv(),
                    progress: bool = True, desc: str = "",
                    on_step: Callable[[int, float, float], None] | None = None) -> dict[str, float]:
    """One pass over ``loader``; ``scheduler`` (if given) steps every iteration.

    Returns ``{"loss" (mean over images, all processes), "step" (global optimiser steps so far),
    "images", "seconds", "images_per_s", "lr"}``.  A non-finite loss raises :class:`NonFiniteLoss`
    before the weights are touched (on every process at once).
    """
    from tqdm import tqdm

    model.train()
    if freeze_bn:
        freeze_batchnorm(model)
    channels_last = device.type == "cuda"
    total_loss, images = 0.0, 0
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True,
               disable=not (progress and env.is_main))
    for image, target in bar:
        image = image.to(device, non_blocking=True)
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        target = target.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            output = model(image)
            loss = criterion(output, target)
        value = float(loss.detach())
        bad = not math.isfinite(value)
        if ddp.any_process(bad, env, device):
            raise NonFiniteLoss(value, epoch, step + 1)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None and scaler.is_enabled():
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        step += 1
        total_loss += value * image.shape[0]
        images += image.shape[0]
        lr = optimizer.param_groups[0]["lr"]
        elapsed = time.perf_counter() - start
        rate = images * env.world_size / max(elapsed, 1e-9)
        bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}", refresh=False)
        if on_step is not None:
            on_step(step, value, lr)
    bar.close()
    seconds = time.perf_counter() - start
    mean_loss = ddp.all_reduce_mean(total_loss / max(images, 1), env, device)
    return {"loss": mean_loss, "step": step, "images": images * env.world_size, "seconds": seconds,
            "images_per_s": images * env.world_size / max(seconds, 1e-9),
            "lr": optimizer.param_groups[0]["lr"]}


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, num_classes: int,
             class_names=None, *, amp_dtype: torch.dtype | None = None,
             progress: bool = False, env: ddp.DistEnv = ddp.DistEnv()) -> dict:
    """Validation metrics (DESIGN.md's contract) from one confusion matrix summed over processes."""
    from tqdm import tqdm

    ddp.broadcast_buffers(model, env)  # every shard scored with the weights rank 0 saves
    model = ddp.unwrap(model)
    model.eval()
    confusion = ConfusionMatrix(num_classes, device=device)
    for image, target in tqdm(loader, desc="val", unit="batch", leave=False,
                              disable=not (progress and env.is_main)):
        image = image.to(device, non_blocking=True)
        if device.type == "cuda":
            image = image.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            output = model(image)
        if isinstance(output, dict):
            output = output["out"]
        confusion.update(output.argmax(1), target.to(device, non_blocking=True))
    confusion.reduce_from_all_processes()
    return confusion.compute(class_names)


# --------------------------------------------------------------------------- fit: helpers
def load_init_weights(model: nn.Module, path: str) -> tuple[int, list[str]]:
    """Copy every tensor of checkpoint ``path`` whose name and shape fit ``model``.

    Fine-tuning from another label set (a 21-class COCO DeepLabV3, say) keeps the backbone and
    head and re-initialises the classifiers whose class count differs.  Returns (copied, skipped).
    """
    payload = read_checkpoint(path)
    own = model.state_dict()
    fits = {k: v for k, v in payload["state_dict"].items() if k in own and own[k].shape == v.shape}
    if not fits:
        raise CitysegError(f"init_weights {path}: none of its tensors fit this architecture "
                           f"(it holds a {payload['meta'].get('arch')!r} checkpoint); "
                           "convert or choose matching weights")
    model.load_state_dict(fits, strict=False)
    skipped = sorted(set(own) - set(fits))
    return len(fits), skipped


def _as_recipe(recipe: Recipe | str | Path | dict) -> Recipe:
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, dict):
        return recipe_from_dict(recipe)
    return load_recipe(recipe)


def _compact_metrics(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("num_classes", "classes", "per_pixel", "jaccard",
                                    "per_class_iou", "miou", "category_iou", "confusion")
            if k in metrics}


# --------------------------------------------------------------------------- fit, step by step
@dataclass
class RunPlan:
    """What a run is, settled from the recipe before any process group starts or file is written."""

    recipe: Recipe
    meta: ModelMeta
    label_set: LabelSet
    train_size: tuple[int, ...]
    val_size: tuple[int, ...]
    crop: tuple[int, ...]
    device: torch.device
    amp_dtype: torch.dtype | None
    use_scaler: bool
    data_root: str | Path
    out_dir: Path
    overrides: dict[str, Any] | None

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"


def plan_run(recipe: Recipe, data_root: str | Path, out_dir: Path, device: str | None,
             overrides: dict[str, Any] | None) -> RunPlan:
    """Where and how to run: device, precision, label set, sizes and the model's meta."""
    run_env = ddp.env_from_torchrun()
    device_t = resolve_device(device, run_env.local_rank, run_env.enabled)
    amp_dtype, use_scaler = resolve_amp(recipe.amp, device_t)
    entry = get_entry(recipe.model)
    cfg = get_default_cfg(recipe.model)
    label_set = get_label_set(recipe.label_set or cfg["label_set"])
    train_size = tuple(recipe.train_size or cfg["input_size"])
    arch_args = dict(recipe.arch_args)
    if recipe.uses_aux:
        if entry.family != "deeplabv3":
            raise CitysegError(f"recipe key 'aux_loss_weight': {recipe.model} has no auxiliary "
                               "head (only DeepLabV3 does); set it to 0")
        arch_args["aux_loss"] = True
    meta = ModelMeta.for_arch(recipe.model, label_set=label_set.name, input_size=list(train_size),
                              **arch_args)
    return RunPlan(recipe=recipe, meta=meta, label_set=label_set, train_size=train_size,
                   val_size=tuple(recipe.val_size or train_size),
                   crop=tuple(recipe.augment.crop or train_size), device=device_t,
                   amp_dtype=amp_dtype, use_scaler=use_scaler, data_root=data_root,
                   out_dir=out_dir, overrides=overrides)


def open_splits(plan: RunPlan) -> tuple[CityscapesDataset, CityscapesDataset]:
    """The train and val splits, every file's header checked before the first step."""
    base_train = CityscapesDataset(plan.data_root, "train", label_set=plan.label_set,
                                   size=plan.train_size)
    base_val = CityscapesDataset(plan.data_root, "val", label_set=plan.label_set, size=plan.val_size)
    check_headers(base_train.samples, "train")
    check_headers(base_val.samples, "val")
    return base_train, base_val


def _fresh_counters() -> dict[str, Any]:
    return {"epoch": 0, "step": 0, "history": [], "best_miou": -1.0, "best_epoch": None,
            "bad_epochs": 0, "seconds": 0.0}


@dataclass
class Run:
    """A run's live objects and the counters ``last.pt`` saves: what the steps of :func:`fit` share."""

    plan: RunPlan
    env: ddp.DistEnv
    model: nn.Module          # the bare model: what checkpoints save
    train_model: nn.Module    # what trains: DDP-wrapped when distributed
    train_set: TrainSet
    sampler: DistributedSampler
    train_loader: DataLoader
    val_loader: DataLoader
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sched_when: str | None    # "step" | "epoch" | None (see build_scheduler)
    scaler: torch.amp.GradScaler
    state: dict[str, Any] = field(default_factory=_fresh_counters)  # saved in last.pt as is
    best_metrics: dict | None = None
    last_metrics: dict | None = None
    saved_epoch: int | None = None  # the epoch boundary last.pt holds (set as it is written)
    tb: Any = None            # TensorBoard writer on rank 0, when tensorboard imports

    @property
    def total_steps(self) -> int:
        return len(self.train_loader) * self.plan.recipe.epochs

    def train_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.plan.use_scaler else None,
                "rng": capture_rng_state(), **self.state}

    def extra(self, metrics: dict | None) -> dict[str, Any]:
        """The checkpoint meta's ``extra``: metrics, position, and what the run was started with."""
        plan, state = self.plan, self.state
        return {"val": metrics, "epoch": state["epoch"], "step": state["step"],
                "recipe": plan.recipe.to_dict(), "overrides": dict(plan.overrides or {}),
                "data_root": str(plan.data_root),
                "world_size": self.env.world_size, "train_seconds": state["seconds"]}

    def log_step(self, step: int, loss: float, lr: float) -> None:
        if self.tb is not None and (step % 10 == 0 or step == 1):
            self.tb.add_scalar("train/loss", loss, step)
            self.tb.add_scalar("train/lr", lr, step)


def build_run_model(plan: RunPlan, env: ddp.DistEnv, checkpoint: dict | None, *,
                    clear_out_dir: bool, say: Callable[[str], None]) -> tuple[nn.Module, nn.Module]:
    """(model, model to train): starting weights (resumed, init_weights or fresh) on the device."""
    recipe = plan.recipe
    if plan.device.type == "cuda":
        torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()
    seed_everything(recipe.seed)  # same initial weights on every process; DDP broadcasts rank 0's anyway
    model = build_model(plan.meta.arch, **plan.meta.arch_args)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["state_dict"])
    elif recipe.init_weights:
        copied, skipped = load_init_weights(model, recipe.init_weights)
        say(f"init_weights: {copied} tensors from {recipe.init_weights}"
            + (f", {len(skipped)} re-initialised ({', '.join(skipped[:4])}"
               f"{', ...' if len(skipped) > 4 else ''})" if skipped else ""))
    if clear_out_dir and env.rank == 0:
        clear_run_files(plan.out_dir)  # no old report.md/curves beside new weights, even if killed
    model.to(plan.device)
    if plan.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    train_model = ddp.wrap_model(model, env, plan.device)
    torch.manual_seed(recipe.seed + env.rank)  # distinct dropout streams per process
    return model, train_model


def build_loaders(plan: RunPlan, env: ddp.DistEnv, base_train: CityscapesDataset,
                  base_val: CityscapesDataset) -> tuple[TrainSet, DistributedSampler, DataLoader, DataLoader]:
    """(train set, its sampler, train loader, val loader): each process its shard."""
    recipe = plan.recipe
    augment = TrainAugment(crop=plan.crop, scale=tuple(recipe.augment.scale),
                           hflip=recipe.augment.hflip, jitter=recipe.augment.jitter, seed=None)
    train_set = TrainSet(base_train, augment, plan.meta.mean, plan.meta.std, recipe.seed)
    val_set = EvalSet(base_val, plan.meta.mean, plan.meta.std)
    sampler = DistributedSampler(train_set, num_replicas=env.world_size, rank=env.rank,
                                 shuffle=True, seed=recipe.seed)
    per_rank = len(sampler)
    pin = plan.device.type == "cuda"
    train_loader = DataLoader(train_set, batch_size=recipe.batch_size, sampler=sampler,
                              num_workers=recipe.workers, pin_memory=pin,
                              drop_last=per_rank >= recipe.batch_size)
    val_loader = DataLoader(val_set, batch_size=recipe.batch_size,
                            sampler=ddp.ShardSampler(len(val_set), env),
                            num_workers=recipe.workers, pin_memory=pin)
    return train_set, sampler, train_loader, val_loader


def set_up(plan: RunPlan, env: ddp.DistEnv, base_train: CityscapesDataset,
           base_val: CityscapesDataset, checkpoint: dict | None, *, clear_out_dir: bool,
           say: Callable[[str], None]) -> Run:
    """Model, data loaders, loss, optimiser, schedule and scaler, as a fresh run starts them."""
    recipe = plan.recipe
    model, train_model = build_run_model(plan, env, checkpoint, clear_out_dir=clear_out_dir, say=say)
    train_set, sampler, train_loader, val_loader = build_loaders(plan, env, base_train, base_val)
    criterion = SegmentationLoss(recipe.loss, dice_weight=recipe.dice_weight,
                                 aux_weight=recipe.aux_loss_weight)
    optimizer = build_optimizer(recipe, train_model)
    scheduler, sched_when = build_scheduler(recipe, optimizer, len(train_loader) * recipe.epochs)
    scaler = torch.amp.GradScaler(plan.device.type, enabled=plan.use_scaler)
    return Run(plan=plan, env=env, model=model, train_model=train_model, train_set=train_set,
               sampler=sampler, train_loader=train_loader, val_loader=val_loader,
               criterion=criterion, optimizer=optimizer, scheduler=scheduler,
               sched_when=sched_when, scaler=scaler)


def restore_train_state(run: Run, checkpoint: dict[str, Any], say: Callable[[str], None]) -> None:
    """Continue where ``last.pt`` stopped: optimiser, schedule (retargeted to this run's length and
    poly power), scaler, counters, RNG states, and the metrics of the last and best epochs."""
    plan, recipe, optimizer, scheduler = run.plan, run.plan.recipe, run.optimizer, run.scheduler
    ts = checkpoint["train_state"]
    optimizer.load_state_dict(ts["optimizer"])
    old_total: int | None = None  # the restored schedule's length, when --resume changed it
    if scheduler is not None and ts.get("scheduler") is not None:
        scheduler.load_state_dict(ts["scheduler"])
        if run.sched_when == "step":  # state restored; now the new run's length (and power)
            old_power = poly_power_of(scheduler)
            old_total = retarget_scheduler(scheduler, run.total_steps, poly_power=recipe.poly_power)
            if old_power is not None and old_power != recipe.poly_power:
                say(f"lr schedule (poly) power changed from {old_power:g} to "
                    f"{recipe.poly_power:g}; continuing at step {ts.get('step', 0)} with lr "
                    f"{optimizer.param_groups[0]['lr']:.2e}")
    if plan.use_scaler and ts.get("scaler"):
        run.scaler.load_state_dict(ts["scaler"])
    for key in run.state:
        run.state[key] = ts.get(key, run.state[key])
    restore_rng_state(ts["rng"])
    run.last_metrics = checkpoint["meta"].get("extra", {}).get("val")
    if plan.best_path.is_file():
        run.best_metrics = read_checkpoint(plan.best_path)["meta"].get("extra", {}).get("val")
    say(f"resuming {plan.last_path} at epoch {run.state['epoch']} (step {run.state['step']})")
    if old_total is not None:
        new_total = run.total_steps
        say(f"lr schedule ({recipe.scheduler}) "
            f"{'extended' if new_total > old_total else 'shortened'} from {old_total} to "
            f"{new_total} steps for {recipe.epochs} epochs; continuing at step "
            f"{run.state['step']} with lr {optimizer.param_groups[0]['lr']:.2e}")


def open_run_folder(run: Run, *, fresh: bool) -> None:
    """Rank 0 makes the folder and the TensorBoard writer; a fresh run saves the epoch-0 boundary,
    so that Ctrl-C in epoch 1 still leaves a resumable run."""
    plan = run.plan
    if run.env.is_main:
        plan.out_dir.mkdir(parents=True, exist_ok=True)
        run.tb = _summary_writer(plan.out_dir / "tensorboard")
        if fresh:
            plan.meta.extra = run.extra(None)
            save_checkpoint(plan.last_path, run.model, plan.meta, train_state=run.train_state())
    ddp.barrier(run.env)


def train_and_validate(run: Run, *, progress: bool) -> tuple[dict[str, float], dict]:
    """Epoch ``run.state["epoch"] + 1``: (train stats, val metrics); a per-epoch schedule steps."""
    plan, recipe, epoch = run.plan, run.plan.recipe, run.state["epoch"]
    run.sampler.set_epoch(epoch)
    run.train_set.set_epoch(epoch)
    try:
        stats = train_one_epoch(
            run.train_model, run.criterion, run.optimizer, run.train_loader, plan.device, epoch + 1,
            step=run.state["step"], scheduler=run.scheduler if run.sched_when == "step" else None,
            scaler=run.scaler, amp_dtype=plan.amp_dtype, grad_clip=recipe.grad_clip,
            freeze_bn=recipe.freeze_bn, env=run.env, progress=progress,
            desc=f"epoch {epoch + 1}/{recipe.epochs}", on_step=run.log_step)
    except NonFiniteLoss as bad:
        kept = (f"{plan.last_path} (after epoch {run.state['epoch']})" if plan.last_path.is_file()
                else "none")
        raise CitysegError(
            f"loss became {bad.value} at epoch {bad.epoch} step {bad.step}; last good "
            f"checkpoint: {kept}; lower the learning rate (--lr) or set amp: off, "
            "then continue with --resume") from None
    metrics = evaluate(run.train_model, run.val_loader, plan.device, plan.label_set.num_classes,
                       plan.label_set.class_names, amp_dtype=plan.amp_dtype, env=run.env)
    if run.sched_when == "epoch":
        run.scheduler.step(metrics["miou"])
    return stats, metrics


def record_epoch(run: Run, stats: dict[str, float], metrics: dict) -> bool:
    """Count the finished epoch into the run's state and history; True when val mIoU improved."""
    state = run.state
    state["epoch"], state["step"] = state["epoch"] + 1, stats["step"]
    state["seconds"] += stats["seconds"]
    state["history"].append(history_row(
        epoch=state["epoch"], step=stats["step"], train_loss=stats["loss"], lr=stats["lr"],
        metrics=metrics, images_per_s=stats["images_per_s"], seconds=stats["seconds"]))
    run.last_metrics = _compact_metrics(metrics)
    improved = metrics["miou"] > state["best_miou"]
    if improved:
        state["best_miou"], state["best_epoch"], state["bad_epochs"] = metrics["miou"], state["epoch"], 0
        run.best_metrics = run.last_metrics
    else:
        state["bad_epochs"] += 1
    return improved


def save_epoch(run: Run, stats: dict[str, float], metrics: dict, *, improved: bool,
               say: Callable[[str], None]) -> None:
    """Rank 0, after each epoch: best.pt (when improved), last.pt, the run files, TensorBoard, a line."""
    plan, epoch = run.plan, run.state["epoch"]
    plan.meta.extra = run.extra(run.last_metrics)
    if improved:
        save_checkpoint(plan.best_path, run.model, plan.meta)
    save_checkpoint(plan.last_path, run.model, plan.meta, train_state=run.train_state())
    run.saved_epoch = epoch  # what last.pt holds now, whatever interrupts the rest
    write_run_files(run, stopped_early=False)
    if run.tb is not None:
        for key in ("per_pixel", "miou"):
            run.tb.add_scalar(f"val/{key}", metrics[key], epoch)
        for key, value in metrics["jaccard"].items():
            run.tb.add_scalar(f"val/jaccard_{key}", value, epoch)
        run.tb.add_scalar("train/epoch_loss", stats["loss"], epoch)
        run.tb.flush()
    say(f"epoch {epoch}/{plan.recipe.epochs}: loss {stats['loss']:.4f}  val mIoU "
        f"{100 * metrics['miou']:.2f}%  per-pixel {100 * metrics['per_pixel']:.2f}%  "
        f"lr {stats['lr']:.2e}  {stats['images_per_s']:.1f} img/s"
        + ("  (best)" if improved else ""))


def write_run_files(run: Run, *, stopped_early: bool) -> None:
    """log.csv, curves.png and report.md from the history so far (each written atomically)."""
    plan, state, recipe = run.plan, run.state, run.plan.recipe
    write_log_csv(plan.out_dir / "log.csv", state["history"])
    plot_curves(plan.out_dir / "curves.png", state["history"],
                title=f"{recipe.model} ({plan.label_set.name})")
    recipe_dict = {**recipe.to_dict(), "label_set": plan.label_set.name,
                   "train_size": list(plan.train_size)}
    write_text_atomic(plan.out_dir / "report.md", report_markdown(
        name=recipe.model, recipe=recipe_dict, best=run.best_metrics,
        best_epoch=state["best_epoch"], history=state["history"], data_root=str(plan.data_root),
        device=str(plan.device), world_size=run.env.world_size, seconds=state["seconds"],
        stopped_early=stopped_early))


def should_stop_early(run: Run, say: Callable[[str], None]) -> bool:
    """True (and says why) when val mIoU has not improved for ``early_stop_patience`` epochs."""
    recipe, state = run.plan.recipe, run.state
    patience = recipe.early_stop_patience
    if patience and state["bad_epochs"] >= patience and state["epoch"] < recipe.epochs:
        say(f"early stop: no better val mIoU for {patience} epochs "
            f"(best {100 * state['best_miou']:.2f}% at epoch {state['best_epoch']})")
        return True
    return False


def train_epochs(run: Run, *, progress: bool, say: Callable[[str], None]) -> bool:
    """Train from the restored epoch to ``recipe.epochs``; True when early stopping ended it.

    Ctrl-C becomes :class:`TrainingInterrupted`, naming the epoch boundary ``last.pt`` holds.
    """
    if run.saved_epoch is None:
        run.saved_epoch = run.state["epoch"]
    phase = "train"
    try:
        while run.state["epoch"] < run.plan.recipe.epochs:
            phase = "train"
            stats, metrics = train_and_validate(run, progress=progress)
            phase = "save"
            improved = record_epoch(run, stats, metrics)
            if run.env.is_main:
                save_epoch(run, stats, metrics, improved=improved, say=say)
            else:
                run.saved_epoch = run.state["epoch"]
            ddp.barrier(run.env)
            phase = "boundary"
            if should_stop_early(run, say):
                return True
    except KeyboardInterrupt:
        # Why the phase: the old message counted epochs from a variable set after the whole
        # boundary, so a Ctrl-C while the report and curves were written (last.pt already
        # holding epoch e) said "interrupted in epoch e; last.pt holds epoch e-1".
        plan, saved = run.plan, run.saved_epoch
        if phase == "train":
            where, lost = (f"interrupted in epoch {saved + 1}",
                           " (the interrupted epoch's steps are not kept)")
        elif saved < run.state["epoch"]:
            where, lost = (f"interrupted while saving epoch {run.state['epoch']}",
                           f" (epoch {run.state['epoch']}'s training is not kept)")
        else:
            where, lost = f"interrupted after epoch {saved}", ""
        raise TrainingInterrupted(
            f"{where}; {plan.last_path} holds the state after epoch "
            f"{saved}{lost}; continue with: "
            f"cityseg train --recipe RECIPE --data {shlex.quote(str(plan.data_root))} "
            f"--out {shlex.quote(str(plan.out_dir))} --resume (the run's own options are "
            "saved with it)") from None
    return False


def run_summary(run: Run, *, stopped_early: bool) -> dict[str, Any]:
    plan, state = run.plan, run.state
    return {"best": run.best_metrics, "best_epoch": state["best_epoch"], "last": run.last_metrics,
            "epochs_run": state["epoch"], "step": state["step"], "seconds": state["seconds"],
            "stopped_early": stopped_early, "out_dir": str(plan.out_dir),
            "best_path": str(plan.best_path), "last_path": str(plan.last_path)}


def fit(recipe: Recipe | str | Path | dict, data_root: str | Path, out_dir: str | Path, *,
        device: str | None = None, resume: bool = False, overwrite: bool = False,
        progress: bool = True, log: Callable[[str], None] | None = print,
        overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``recipe`` on the Cityscapes root ``data_root``, writing the run to ``out_dir``.

    Writes ``best.pt`` (highest val mIoU), ``last.pt`` (with optimiser, scheduler, scaler,
    epoch/step, history and RNG states), ``log.csv``, ``tensorboard/``, ``report.md`` and
    ``curves.png`` — every one of them after every epoch, atomically, so an interrupted run's
    folder shows its report and curves up to the last finished epoch.  ``resume=True``
    continues from ``out_dir/last.pt``; without it an ``out_dir`` that already holds ``last.pt``
    is refused unless ``overwrite``.  ``overrides`` (the command line's ``--epochs``/``--set``
    ...) are saved with the run so that ``--resume`` alone continues it as it was started
    (:func:`~cityseg_deploy.training.resume.saved_overrides`).

    Ctrl-C: ``last.pt`` always holds the state at the **last completed epoch boundary** (it is
    written at the start and after every epoch); the interrupted epoch's steps are dropped, and
    :class:`TrainingInterrupted` says how to resume.  A nan/inf loss raises a CitysegError and
    leaves that last good checkpoint untouched.

    Returns ``{"best": metrics, "best_epoch", "last": metrics, "epochs_run", "step", "seconds",
    "stopped_early", "out_dir", "best_path", "last_path"}``.

    The steps, in order: :func:`plan_run`, :func:`open_splits`, the folder and checkpoint checks,
    :func:`set_up`, :func:`restore_train_state` (on resume), :func:`open_run_folder`,
    :func:`train_epochs`, :func:`run_summary`.
    """
    recipe = _as_recipe(recipe)
    say = (lambda msg: None) if log is None else log
    plan = plan_run(recipe, data_root, Path(out_dir), device, overrides)
    # errors about missing splits, the folder and the checkpoint come before any process group or file
    base_train, base_val = open_splits(plan)
    check_out_dir(plan.out_dir, resume=resume, overwrite=overwrite)
    with contextlib.ExitStack() as held:
        if int(os.environ.get("RANK", "0")) == 0:  # the writing rank holds the run folder
            held.enter_context(folder_lock(plan.out_dir, what="train", remove=True))
        return _fit_locked(plan, base_train, base_val, resume=resume, overwrite=overwrite,
                           progress=progress, say=say)


def _fit_locked(plan: RunPlan, base_train: CityscapesDataset, base_val: CityscapesDataset, *,
                resume: bool, overwrite: bool, progress: bool,
                say: Callable[[str], None]) -> dict[str, Any]:
    """:func:`fit` past its checks, with the run folder locked."""
    checkpoint = read_resume_checkpoint(plan.last_path, plan.meta) if resume else None
    env = ddp.init_distributed(plan.device.type)
    run: Run | None = None
    try:
        run = set_up(plan, env, base_train, base_val, checkpoint,
                     clear_out_dir=overwrite and not resume, say=say)
        if checkpoint is not None:
            restore_train_state(run, checkpoint, say)
        open_run_folder(run, fresh=checkpoint is None)
        stopped_early = train_epochs(run, progress=progress, say=say)
        if env.is_main and run.state["history"] and stopped_early:
            write_run_files(run, stopped_early=True)  # the report names the early stop
        return run_summary(run, stopped_early=stopped_early)
    finally:
        if run is not None and run.tb is not None:
            run.tb.close()
        ddp.cleanup(env)


_TB_WARNED = False


def _summary_writer(folder: Path):
    """A TensorBoard SummaryWriter, or None (warned once) when tensorboard cannot be imported."""
    global _TB_WARNED
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as exc:  # ImportError, or a broken tensorboard/protobuf install
        if not _TB_WARNED:
            warnings.warn(f"TensorBoard logging off ({type(exc).__name__}: {exc}); "
                          "pip install tensorboard to get it", stacklevel=2)
            _TB_WARNED = True
        return None
    return SummaryWriter(log_dir=str(folder))
