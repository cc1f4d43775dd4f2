"""The training step and epoch loop shared by ``train.py`` and the search.

One step: forward under autocast (CUDA mixed precision when enabled), the multibox loss in float32, a check that
the loss is finite on every rank (before any weight changes), backward through the AMP gradient scaler, optional
gradient clipping, optimizer step. The learning rate follows :class:`StepSchedule`, set per iteration.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.distributed import DistInfo, all_reduce_sum, unwrap
from engine.loaders import one_line_worker_errors
from engine.speed import autocast_dtype, images_in_format
from utils.errors import FaceNASError
from utils.progress import Progress

LOSS_KEYS = ("total", "cls", "box", "landmark")


def format_losses(values: dict[str, float], digits: int = 4) -> str:
    """``loss T (cls C, box B, landmark L)`` from a dict of loss means; missing terms print as nan."""
    total, cls, box, landmark = (values.get(k, math.nan) for k in LOSS_KEYS)
    return f"loss {total:.{digits}f} (cls {cls:.{digits}f}, box {box:.{digits}f}, landmark {landmark:.{digits}f})"


class NonFiniteLossError(FaceNASError):
    """The loss became NaN or infinite; raised before the step so the weights are still the last good ones.

    Attributes:
        losses: the offending loss values (floats, possibly nan/inf).
        epoch: epoch (0-based) when it happened, or None.
        step: step within the epoch, or None.
    """

    def __init__(self, message: str, losses: dict[str, float], epoch: int | None = None, step: int | None = None):
        super().__init__(message)
        self.losses = losses
        self.epoch = epoch
        self.step = step


class StepSchedule:
    """Step decay with an optional linear warm-up, set per iteration (RetinaFace's schedule).

    ``lr = base_lr * gamma ** (number of milestones <= epoch)``; during the first ``warmup_epochs`` the rate rises
    linearly from ``warmup_start * base_lr``. The rate is a pure function of the position in training, so the
    state dict holds only the settings and a resumed run follows the same curve.

    Args:
        optimizer: whose parameter groups get the rate.
        base_lr: initial rate.
        milestones: epochs (0-based) at which the rate is multiplied by ``gamma``.
        gamma: decay factor.
        warmup_epochs: warm-up length in epochs (may be fractional; 0 = none).
        warmup_start: starting fraction of ``base_lr`` during warm-up.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, milestones: Sequence[int] = (),
                 gamma: float = 0.1, warmup_epochs: float = 0.0, warmup_start: float = 0.1) -> None:
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.warmup_epochs = float(warmup_epochs)
        self.warmup_start = float(warmup_start)

    def lr_at(self, epoch: int, fraction: float = 0.0) -> float:
        """Rate at ``fraction`` (0..1) of the way through ``epoch``."""
        lr = self.base_lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        position = epoch + fraction
        if position < self.warmup_epochs:
            lr *= self.warmup_start + (1.0 - self.warmup_start) * position / self.warmup_epochs
        return lr

    def step(self, epoch: int, fraction: float = 0.0) -> float:
        """Set and return the rate for this point of training."""
        lr = self.lr_at(epoch, fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def state_dict(self) -> dict[str, Any]:
        """The settings (the rate itself is recomputed from the position)."""
        return {"base_lr": self.base_lr, "milestones": list(self.milestones), "gamma": self.gamma,
                "warmup_epochs": self.warmup_epochs, "warmup_start": self.warmup_start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep the current settings: a resumed run may deliberately change them (e.g. ``--epochs``)."""
        del state


class CosineSchedule:
    """Linear warm-up, then cosine decay to ``final`` x ``base_lr`` at the end of training, set per iteration.

    Same interface as :class:`StepSchedule`; the rate is a pure function of the position, so a resumed run follows
    the same curve.

    Args:
        optimizer: whose parameter groups get the rate.
        base_lr: peak rate (reached at the end of the warm-up).
        total_epochs: length of training in epochs (the decay ends there).
        warmup_epochs: linear warm-up length in epochs (may be fractional; 0 = none).
        warmup_start: starting fraction of ``base_lr`` during warm-up.
        final: fraction of ``base_lr`` at the end.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, total_epochs: float,
                 warmup_epochs: float = 0.0, warmup_start: float = 0.1, final: float = 0.0) -> None:
        if total_epochs <= 0:
            raise ValueError(f"total_epochs must be > 0, got {total_epochs}")
        self.optimizer = optimizer
        self.base_lr = float(base_lr)
        self.total_epochs = float(total_epochs)
        self.warmup_epochs = min(float(warmup_epochs), self.total_epochs)
        self.warmup_start = float(warmup_start)
        self.final = float(final)

    def lr_at(self, epoch: int, fraction: float = 0.0) -> float:
        """Rate at ``fraction`` (0..1) of the way through ``epoch``."""
        position = epoch + fraction
        if position < self.warmup_epochs:
            return self.base_lr * (self.warmup_start + (1.0 - self.warmup_start) * position / self.warmup_epochs)
        span = self.total_epochs - self.warmup_epochs
        progress = min(1.0, (position - self.warmup_epochs) / span) if span > 0 else 1.0
        return self.base_lr * (self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    def step(self, epoch: int, fraction: float = 0.0) -> float:
        """Set and return the rate for this point of training."""
        lr = self.lr_at(epoch, fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr


@dataclass
class StepOutput:
    """Result of one training step: mean loss values over all ranks (floats) and the batch size on this rank."""

    losses: dict[str, float]
    images: int


def compute_loss(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, criterion: nn.Module, *,
                 amp: bool = False, amp_dtype: torch.dtype | None = None,
                 channels_last: bool = False) -> dict[str, torch.Tensor]:
    """Forward a batch (under autocast when ``amp``) and return the criterion's loss dict (with gradients).

    The search's architecture step can call this and back-propagate ``["total"]`` itself.

    Args:
        model: the detector, possibly DDP-wrapped.
        images: ``(B, 3, H, W)`` on the model's device.
        targets: ``(B, M, 15)`` on the same device.
        criterion: :class:`models.loss.MultiBoxLoss` (or compatible).
        amp: run the forward under autocast.
        amp_dtype: autocast dtype (default: float16 on CUDA, bfloat16 on a CPU).
        channels_last: hand the model the images in channels-last layout (its weights should be too, see
            :func:`engine.speed.use_channels_last`).
    """
    device_type = images.device.type
    images = images_in_format(images, channels_last)
    with torch.autocast(device_type=device_type, dtype=amp_dtype or autocast_dtype(images.device), enabled=amp):
        predictions = model(images)
    priors = unwrap(model).priors(tuple(images.shape[-2:]), images.device)
    return criterion(predictions, targets, priors)


def _check_finite(losses: dict[str, torch.Tensor], info: DistInfo | None,
                  epoch: int | None, step: int | None) -> dict[str, float]:
    """Mean loss values over ranks; raises :class:`NonFiniteLossError` on every rank when any rank is not finite."""
    values = torch.stack([losses[k].detach().float() for k in LOSS_KEYS])
    bad = (~torch.isfinite(values)).any().float()
    packed = torch.cat([torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0), bad[None]])
    if info is not None and info.distributed:
        packed = all_reduce_sum(packed, info)
        packed[:-1] /= info.world_size
    local = dict(zip(LOSS_KEYS, values.tolist()))
    if packed[-1].item() > 0:
        where = f" at epoch {epoch + 1}" if epoch is not None else ""
        where += f" step {step + 1}" if step is not None else ""
        shown = ", ".join(f"{k}={v:.4g}" for k, v in local.items())
        raise NonFiniteLossError(f"the loss is not finite{where} ({shown}, or on another rank)", local, epoch, step)
    return dict(zip(LOSS_KEYS, packed[:-1].tolist()))


def train_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], criterion: nn.Module,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None, *,
               device: torch.device | str | None = None, amp: bool = False, amp_dtype: torch.dtype | None = None,
               grad_clip: float | None = None, dist_info: DistInfo | None = None, epoch: int | None = None,
               step: int | None = None, before_step: Callable[[], None] | None = None,
               channels_last: bool = False) -> StepOutput:
    """One optimisation step on one batch.

    Args:
        model: the detector in train mode (possibly DDP-wrapped).
        batch: ``(images, targets)`` from ``detection_collate``.
        criterion: the loss module.
        optimizer: updated in place.
        scaler: AMP gradient scaler (``torch.amp.GradScaler('cuda')``); None or disabled = plain float32 step.
        device: where to move the batch (default: the model's parameters' device).
        amp: run the forward under autocast.
        amp_dtype: autocast dtype (default: float16 on CUDA, with the scaler; bfloat16 on a CPU, no scaler).
        grad_clip: clip the global gradient norm to this value (None = no clipping).
        dist_info: the job; losses are averaged over ranks and a NaN on any rank stops every rank.
        epoch, step: only for the error message.
        before_step: called after backward (gradients unscaled) and before the optimizer step; the search uses it
            to edit gradients (e.g. clear unsampled candidates').
        channels_last: images in channels-last layout (see :func:`compute_loss`).

    Returns:
        :class:`StepOutput`.

    Raises:
        NonFiniteLossError: before backward, so the weights and optimizer state are untouched.
    """
    images, targets = batch
    if device is None:
        device = next(unwrap(model).parameters()).device
    non_blocking = torch.device(device).type == "cuda"
    images = images.to(device, non_blocking=non_blocking)
    targets = targets.to(device, non_blocking=non_blocking)
    losses = compute_loss(model, images, targets, criterion, amp=amp, amp_dtype=amp_dtype, channels_last=channels_last)
    values = _check_finite(losses, dist_info, epoch, step)
    optimizer.zero_grad(set_to_none=True)
    use_scaler = scaler is not None and scaler.is_enabled()
    if use_scaler:
        scaler.scale(losses["total"]).backward()
        scaler.unscale_(optimizer)
    else:
        losses["total"].backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(unwrap(model).parameters(), grad_clip)
    if before_step is not None:
        before_step()
    if use_scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return StepOutput(values, int(images.shape[0]))


def train_one_epoch(model: nn.Module, loader: Iterable, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    schedule: StepSchedule | None, epoch: int, *, scaler: torch.amp.GradScaler | None = None,
                    device: torch.device | str = "cpu", amp: bool = False, amp_dtype: torch.dtype | None = None,
                    grad_clip: float | None = None, dist_info: DistInfo | None = None,
                    log: logging.Logger | None = None, progress: bool = True, max_steps: int | None = None,
                    epochs: int | None = None, channels_last: bool = False) -> dict[str, float]:
    """Train for one epoch (call ``engine.loaders.set_epoch(loader, epoch)`` first).

    Args:
        model, criterion, optimizer, scaler, device, amp, amp_dtype, grad_clip, dist_info, channels_last: see
            :func:`train_step`.
        loader: batches of ``(images, targets)``.
        schedule: sets the rate each step (None = leave it).
        epoch: 0-based epoch.
        log: receives a summary line.
        progress: show a progress bar (main process only).
        max_steps: stop after this many steps (benchmarks, tests).
        epochs: total epochs, for the bar's label.

    Returns:
        Mean losses of the epoch (``total``, ``cls``, ``box``, ``landmark``), ``lr`` at its end, ``images``,
        ``seconds``, ``images_per_s`` and ``steps_per_s`` (all ranks together).
    """
    model.train()
    info = dist_info or DistInfo()
    steps = len(loader) if hasattr(loader, "__len__") else None
    if max_steps is not None:
        steps = min(steps, max_steps) if steps is not None else max_steps
    label = f"epoch {epoch + 1}/{epochs}" if epochs else f"epoch {epoch + 1}"
    bar = Progress(steps or 0, label, "step", enabled=progress and info.is_main)
    sums = dict.fromkeys(LOSS_KEYS, 0.0)
    count = 0
    images = 0
    lr = schedule.lr_at(epoch) if schedule is not None else optimizer.param_groups[0]["lr"]
    started = time.perf_counter()
    try:
        with one_line_worker_errors():  # a bad image read by a worker: one line, as without workers
            for i, batch in enumerate(loader):
                if steps is not None and i >= steps:
                    break
                if schedule is not None:
                    lr = schedule.step(epoch, i / steps if steps else 0.0)
                out = train_step(model, batch, criterion, optimizer, scaler, device=device, amp=amp,
                                 amp_dtype=amp_dtype, grad_clip=grad_clip, dist_info=info, epoch=epoch, step=i,
                                 channels_last=channels_last)
                for key in LOSS_KEYS:
                    sums[key] += out.losses[key]
                count += 1
                images += out.images * info.world_size
                bar.update(1, f"loss={out.losses['total']:.3f}, cls={out.losses['cls']:.3f}, "
                              f"box={out.losses['box']:.3f}, lmk={out.losses['landmark']:.3f}, lr={lr:.2g}")
    finally:
        bar.close()
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    means = {k: (v / count if count else math.nan) for k, v in sums.items()}
    result = {**means, "lr": lr, "images": images, "seconds": seconds,
              "images_per_s": images / seconds if seconds > 0 else 0.0,
              "steps_per_s": count / seconds if seconds > 0 else 0.0}
    if log is not None:
        log.info(f"{label}: {format_losses(means)}, lr {lr:.3g}, {images} images in {seconds:.1f} s "
                 f"({result['images_per_s']:.1f} img/s, {result['steps_per_s']:.2f} steps/s)")
    return result
