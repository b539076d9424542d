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
import random
import shlex
import shutil
import time
import warnings
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
from ..labels import get_label_set
from ..metrics.confusion import ConfusionMatrix
from ..models.checkpoint import ModelMeta, read_checkpoint, save_checkpoint
from ..models.registry import build_model, get_default_cfg, get_entry
from . import distributed as ddp
from .losses import SegmentationLoss
from .recipe import Recipe, load_recipe, recipe_from_dict
from .report import history_row, plot_curves, report_markdown, write_log_csv


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


# --------------------------------------------------------------------------- RNG state
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states, in weights_only-loadable types."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- optimiser, schedule
def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adam":
        return torch.optim.Adam(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                           weight_decay=recipe.weight_decay)


class PolyFactor:
    """The poly schedule's lr factor ``max(0, 1 - step / total) ** power``.

    A callable object rather than a lambda so that its ``total`` is an attribute: LambdaLR saves
    and restores it with the scheduler state, and :func:`retarget_scheduler` can change it when a
    resumed run asks for more (or fewer) epochs.
    """

    def __init__(self, total: int, power: float) -> None:
        self.total, self.power = max(1, int(total)), float(power)

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.total) ** self.power


def build_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer, total_steps: int):
    """(scheduler or None, when it steps: "step" | "epoch" (with val mIoU) | None)."""
    if recipe.scheduler == "poly":
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, PolyFactor(total_steps, recipe.poly_power)), "step"
    if recipe.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps)), "step"
    if recipe.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=recipe.plateau_factor, patience=recipe.plateau_patience), "epoch"
    return None, None


def retarget_scheduler(scheduler: Any, total_steps: int, *, poly_power: float | None = None) -> int | None:
    """Point a just-restored per-step schedule at ``total_steps``; return the old total if it changed.

    ``poly_power``: the resumed run's poly exponent (a ``--set poly_power=...`` on resume);
    the restored factor's own power is kept when None.  Changing it is reported by
    :func:`poly_power_of` before/after, not by the return value.

    Why: on ``--resume`` with another epoch count (or batch size) the restored state still holds
    the old run's length (cosine's ``T_max``, the poly factor's ``total``) and the optimiser holds
    the lr of the old run's last step; a finished 2-epoch run resumed to 3 epochs would train at
    lr 0.  The state is restored first (step count, base lrs), then the total is set to the new
    one and the current lr recomputed in closed form, so training continues exactly where a fresh
    run of the new length would be at this step.  Poly's lr is always re-derived (bit-identical
    when nothing changed; also right for a checkpoint from before ``PolyFactor``, which saved no
    total); cosine's only when the total changed.  Epoch schedules (ReduceLROnPlateau) are left
    as restored.
    """
    total = max(1, int(total_steps))
    old: int | None = None
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) and all(
            isinstance(f, PolyFactor) for f in scheduler.lr_lambdas):
        old = scheduler.lr_lambdas[0].total
        for factor in scheduler.lr_lambdas:
            factor.total = total
            if poly_power is not None:
                factor.power = float(poly_power)
        lrs = [base * factor(scheduler.last_epoch)
               for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    elif isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
        old, scheduler.T_max = scheduler.T_max, total
        if old == total:
            return None  # keep the restored (recursively computed) lr: exact resume
        lrs = [scheduler.eta_min + (base - scheduler.eta_min)
               * (1 + math.cos(math.pi * scheduler.last_epoch / total)) / 2
               for base in scheduler.base_lrs]
    else:
        return None
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)
    return old if old != total else None


def poly_power_of(scheduler: Any) -> float | None:
    """The exponent of a poly schedule (None for any other schedule)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) and scheduler.lr_lambdas and all(
            isinstance(f, PolyFactor) for f in scheduler.lr_lambdas):
        return scheduler.lr_lambdas[0].power
    return None


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


# --------------------------------------------------------------------------- fit
RUN_FILES = ("best.pt", "last.pt", "log.csv", "report.md", "curves.png", "tensorboard")


def clear_run_files(out_dir: Path) -> list[str]:
    """Delete what a run writes (and their hidden temporaries) from ``out_dir``; return the names.

    Why: ``--overwrite`` used to replace files one by one as the new run reached them, so an
    interrupted run left the old ``report.md`` and ``curves.png`` beside the new weights.
    """
    removed = []
    if not out_dir.is_dir():
        return removed
    for entry in out_dir.iterdir():
        name = entry.name
        if name in RUN_FILES or any(name.startswith(f".{f}.") for f in RUN_FILES):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
            removed.append(name)
    return sorted(removed)


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


def saved_overrides(out_dir: str | Path) -> dict[str, Any] | None:
    """The command-line overrides the run in ``out_dir`` was started (or last resumed) with.

    None when there is no ``last.pt`` (nothing to resume; :func:`fit` says so) or when it predates
    saving them.  Read before the recipe is built, so ``--resume`` alone rebuilds the same recipe.
    """
    path = Path(out_dir) / "last.pt"
    if not path.is_file():
        return None
    saved = (read_checkpoint(path)["meta"].get("extra") or {}).get("overrides")
    return dict(saved) if isinstance(saved, dict) else None


def _check_resume_fits(path: Path, saved: ModelMeta, meta: ModelMeta) -> None:
    for key in ("arch", "label_set", "arch_args"):
        if getattr(saved, key) != getattr(meta, key):
            raise CitysegError(
                f"{path}: cannot resume: the checkpoint has {key} {getattr(saved, key)!r} but the "
                f"recipe asks for {getattr(meta, key)!r}; use the run's own recipe or a new --out")


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
    (:func:`saved_overrides`).

    Ctrl-C: ``last.pt`` always holds the state at the **last completed epoch boundary** (it is
    written at the start and after every epoch); the interrupted epoch's steps are dropped, and
    :class:`TrainingInterrupted` says how to resume.  A nan/inf loss raises a CitysegError and
    leaves that last good checkpoint untouched.

    Returns ``{"best": metrics, "best_epoch", "last": metrics, "epochs_run", "step", "seconds",
    "stopped_early", "out_dir", "best_path", "last_path"}``.
    """
    recipe = _as_recipe(recipe)
    say = (lambda msg: None) if log is None else log
    out_dir = Path(out_dir)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"

    # -- where and how to run
    run_env = ddp.env_from_torchrun()
    device_t = resolve_device(device, run_env.local_rank, run_env.enabled)
    amp_dtype, use_scaler = resolve_amp(recipe.amp, device_t)
    entry = get_entry(recipe.model)
    cfg = get_default_cfg(recipe.model)
    label_set = get_label_set(recipe.label_set or cfg["label_set"])
    train_size = tuple(recipe.train_size or cfg["input_size"])
    val_size = tuple(recipe.val_size or train_size)
    crop = tuple(recipe.augment.crop or train_size)
    arch_args = dict(recipe.arch_args)
    if recipe.uses_aux:
        if entry.family != "deeplabv3":
            raise CitysegError(f"recipe key 'aux_loss_weight': {recipe.model} has no auxiliary "
                               "head (only DeepLabV3 does); set it to 0")
        arch_args["aux_loss"] = True
    meta = ModelMeta.for_arch(recipe.model, label_set=label_set.name, input_size=list(train_size),
                              **arch_args)

    # -- data (errors about missing splits come before any process group or file)
    base_train = CityscapesDataset(data_root, "train", label_set=label_set, size=train_size)
    base_val = CityscapesDataset(data_root, "val", label_set=label_set, size=val_size)
    check_headers(base_train.samples, "train")  # every file, before the first step
    check_headers(base_val.samples, "val")
    if resume and not last_path.is_file():
        raise CitysegError(f"{last_path}: nothing to resume (no last.pt in {out_dir}); "
                           "start without --resume")
    if not resume and last_path.is_file() and not overwrite:
        raise CitysegError(f"{out_dir}: already holds a training run (last.pt); continue it with "
                           "--resume, or choose another --out (or --overwrite)")
    if not resume and not overwrite and out_dir.is_dir() and any(out_dir.iterdir()):
        raise CitysegError(f"{out_dir}: not empty; train into a new or empty folder, or pass "
                           "--overwrite to replace the run files there")
    if out_dir.exists() and not out_dir.is_dir():
        raise CitysegError(f"--out {out_dir}: a file is in the way; give a folder path")
    checkpoint = read_checkpoint(last_path) if resume else None
    if checkpoint is not None:
        _check_resume_fits(last_path, ModelMeta.from_dict(checkpoint.get("meta"), where=str(last_path)), meta)
        if "train_state" not in checkpoint:
            raise CitysegError(f"{last_path}: holds no train state to resume from; start a new run")

    env = ddp.init_distributed(device_t.type)
    tb = None
    try:
        if device_t.type == "cuda":
            torch.backends.cudnn.benchmark = not torch.are_deterministic_algorithms_enabled()

        # -- model (same initial weights on every process; DDP broadcasts rank 0's anyway)
        seed_everything(recipe.seed)
        model = build_model(meta.arch, **meta.arch_args)
        if checkpoint is not None:
            model.load_state_dict(checkpoint["state_dict"])
        elif recipe.init_weights:
            copied, skipped = load_init_weights(model, recipe.init_weights)
            say(f"init_weights: {copied} tensors from {recipe.init_weights}"
                + (f", {len(skipped)} re-initialised ({', '.join(skipped[:4])}"
                   f"{', ...' if len(skipped) > 4 else ''})" if skipped else ""))
        if overwrite and not resume and env.rank == 0:
            clear_run_files(out_dir)  # no old report.md/curves beside new weights, even if killed
        model.to(device_t)
        if device_t.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        train_model = ddp.wrap_model(model, env, device_t)
        torch.manual_seed(recipe.seed + env.rank)  # distinct dropout streams per process

        # -- data loaders
        augment = TrainAugment(crop=crop, scale=tuple(recipe.augment.scale),
                               hflip=recipe.augment.hflip, jitter=recipe.augment.jitter, seed=None)
        train_set = TrainSet(base_train, augment, meta.mean, meta.std, recipe.seed)
        val_set = EvalSet(base_val, meta.mean, meta.std)
        sampler = DistributedSampler(train_set, num_replicas=env.world_size, rank=env.rank,
                                     shuffle=True, seed=recipe.seed)
        per_rank = len(sampler)
        pin = device_t.type == "cuda"
        train_loader = DataLoader(train_set, batch_size=recipe.batch_size, sampler=sampler,
                                  num_workers=recipe.workers, pin_memory=pin,
                                  drop_last=per_rank >= recipe.batch_size)
        val_loader = DataLoader(val_set, batch_size=recipe.batch_size,
                                sampler=ddp.ShardSampler(len(val_set), env),
                                num_workers=recipe.workers, pin_memory=pin)
        steps_per_epoch = len(train_loader)

        # -- optimisation
        criterion = SegmentationLoss(recipe.loss, dice_weight=recipe.dice_weight,
                                     aux_weight=recipe.aux_loss_weight)
        optimizer = build_optimizer(recipe, train_model)
        scheduler, sched_when = build_scheduler(recipe, optimizer, steps_per_epoch * recipe.epochs)
        scaler = torch.amp.GradScaler(device_t.type, enabled=use_scaler)

        state: dict[str, Any] = {"epoch": 0, "step": 0, "history": [], "best_miou": -1.0,
                                 "best_epoch": None, "bad_epochs": 0, "seconds": 0.0}
        best_metrics = last_metrics = None
        old_total: int | None = None  # the restored schedule's length, when --resume changed it
        if checkpoint is not None:
            ts = checkpoint["train_state"]
            optimizer.load_state_dict(ts["optimizer"])
            if scheduler is not None and ts.get("scheduler") is not None:
                scheduler.load_state_dict(ts["scheduler"])
                if sched_when == "step":  # state restored; now the new run's length (and power)
                    old_power = poly_power_of(scheduler)
                    old_total = retarget_scheduler(scheduler, steps_per_epoch * recipe.epochs,
                                                   poly_power=recipe.poly_power)
                    if old_power is not None and old_power != recipe.poly_power:
                        say(f"lr schedule (poly) power changed from {old_power:g} to "
                            f"{recipe.poly_power:g}; continuing at step {ts.get('step', 0)} with lr "
                            f"{optimizer.param_groups[0]['lr']:.2e}")
            if use_scaler and ts.get("scaler"):
                scaler.load_state_dict(ts["scaler"])
            for key in state:
                state[key] = ts.get(key, state[key])
            restore_rng_state(ts["rng"])
            last_metrics = checkpoint["meta"].get("extra", {}).get("val")
            if best_path.is_file():
                best_metrics = read_checkpoint(best_path)["meta"].get("extra", {}).get("val")
            say(f"resuming {last_path} at epoch {state['epoch']} (step {state['step']})")
            if old_total is not None:
                new_total = steps_per_epoch * recipe.epochs
                say(f"lr schedule ({recipe.scheduler}) "
                    f"{'extended' if new_total > old_total else 'shortened'} from {old_total} to "
                    f"{new_total} steps for {recipe.epochs} epochs; continuing at step "
                    f"{state['step']} with lr {optimizer.param_groups[0]['lr']:.2e}")

        def train_state() -> dict[str, Any]:
            return {"optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict() if use_scaler else None,
                    "rng": capture_rng_state(), **state}

        def extra(metrics: dict | None) -> dict[str, Any]:
            return {"val": metrics, "epoch": state["epoch"], "step": state["step"],
                    "recipe": recipe.to_dict(), "overrides": dict(overrides or {}),
                    "data_root": str(data_root),
                    "world_size": env.world_size, "train_seconds": state["seconds"]}

        def write_run_files(*, stopped_early: bool) -> None:
            """log.csv, curves.png and report.md from the history so far (each written atomically)."""
            write_log_csv(out_dir / "log.csv", state["history"])
            plot_curves(out_dir / "curves.png", state["history"], title=f"{recipe.model} ({label_set.name})")
            recipe_dict = {**recipe.to_dict(), "label_set": label_set.name, "train_size": list(train_size)}
            write_text_atomic(out_dir / "report.md", report_markdown(
                name=recipe.model, recipe=recipe_dict, best=best_metrics,
                best_epoch=state["best_epoch"], history=state["history"], data_root=str(data_root),
                device=str(device_t), world_size=env.world_size, seconds=state["seconds"],
                stopped_early=stopped_early))

        if env.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            tb = _summary_writer(out_dir / "tensorboard")
            if checkpoint is None:  # the epoch-0 boundary: Ctrl-C in epoch 1 still leaves a resumable run
                meta.extra = extra(None)
                save_checkpoint(last_path, model, meta, train_state=train_state())
        ddp.barrier(env)

        # -- epochs
        stopped_early = False
        epoch = saved_epoch = state["epoch"]
        try:
            while epoch < recipe.epochs:
                sampler.set_epoch(epoch)
                train_set.set_epoch(epoch)

                def on_step(step: int, loss: float, lr: float) -> None:
                    if tb is not None and (step % 10 == 0 or step == 1):
                        tb.add_scalar("train/loss", loss, step)
                        tb.add_scalar("train/lr", lr, step)

                try:
                    stats = train_one_epoch(
                        train_model, criterion, optimizer, train_loader, device_t, epoch + 1,
                        step=state["step"], scheduler=scheduler if sched_when == "step" else None,
                        scaler=scaler, amp_dtype=amp_dtype, grad_clip=recipe.grad_clip,
                        freeze_bn=recipe.freeze_bn, env=env, progress=progress,
                        desc=f"epoch {epoch + 1}/{recipe.epochs}", on_step=on_step)
                except NonFiniteLoss as bad:
                    kept = (f"{last_path} (after epoch {state['epoch']})" if last_path.is_file()
                            else "none")
                    raise CitysegError(
                        f"loss became {bad.value} at epoch {bad.epoch} step {bad.step}; last good "
                        f"checkpoint: {kept}; lower the learning rate (--lr) or set amp: off, "
                        "then continue with --resume") from None
                metrics = evaluate(train_model, val_loader, device_t, label_set.num_classes,
                                   label_set.class_names, amp_dtype=amp_dtype, env=env)
                if sched_when == "epoch":
                    scheduler.step(metrics["miou"])
                epoch += 1
                state["epoch"], state["step"] = epoch, stats["step"]
                state["seconds"] += stats["seconds"]
                state["history"].append(history_row(
                    epoch=epoch, step=stats["step"], train_loss=stats["loss"], lr=stats["lr"],
                    metrics=metrics, images_per_s=stats["images_per_s"], seconds=stats["seconds"]))
                last_metrics = _compact_metrics(metrics)
                improved = metrics["miou"] > state["best_miou"]
                if improved:
                    state["best_miou"], state["best_epoch"], state["bad_epochs"] = metrics["miou"], epoch, 0
                    best_metrics = last_metrics
                else:
                    state["bad_epochs"] += 1
                if env.is_main:
                    meta.extra = extra(last_metrics)
                    if improved:
                        save_checkpoint(best_path, model, meta)
                    save_checkpoint(last_path, model, meta, train_state=train_state())
                    write_run_files(stopped_early=False)
                    if tb is not None:
                        for key in ("per_pixel", "miou"):
                            tb.add_scalar(f"val/{key}", metrics[key], epoch)
                        for key, value in metrics["jaccard"].items():
                            tb.add_scalar(f"val/jaccard_{key}", value, epoch)
                        tb.add_scalar("train/epoch_loss", stats["loss"], epoch)
                        tb.flush()
                    say(f"epoch {epoch}/{recipe.epochs}: loss {stats['loss']:.4f}  val mIoU "
                        f"{100 * metrics['miou']:.2f}%  per-pixel {100 * metrics['per_pixel']:.2f}%  "
                        f"lr {stats['lr']:.2e}  {stats['images_per_s']:.1f} img/s"
                        + ("  (best)" if improved else ""))
                ddp.barrier(env)
                saved_epoch = epoch
                patience = recipe.early_stop_patience
                if patience and state["bad_epochs"] >= patience and epoch < recipe.epochs:
                    stopped_early = True
                    say(f"early stop: no better val mIoU for {patience} epochs "
                        f"(best {100 * state['best_miou']:.2f}% at epoch {state['best_epoch']})")
                    break
        except KeyboardInterrupt:
            raise TrainingInterrupted(
                f"interrupted in epoch {saved_epoch + 1}; {last_path} holds the state after epoch "
                f"{saved_epoch} (the interrupted epoch's steps are not kept); continue with: "
                f"cityseg train --recipe RECIPE --data {shlex.quote(str(data_root))} "
                f"--out {shlex.quote(str(out_dir))} --resume (the run's own options are "
                "saved with it)") from None

        if env.is_main and state["history"] and stopped_early:
            write_run_files(stopped_early=True)  # the report names the early stop
        return {"best": best_metrics, "best_epoch": state["best_epoch"], "last": last_metrics,
                "epochs_run": state["epoch"], "step": state["step"], "seconds": state["seconds"],
                "stopped_early": stopped_early, "out_dir": str(out_dir),
                "best_path": str(best_path), "last_path": str(last_path)}
    finally:
        if tb is not None:
            tb.close()
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
