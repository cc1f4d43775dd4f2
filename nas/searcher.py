"""The search loop (thesis 3.3-3.7): warm-up, then weight steps alternating with architecture steps.

* Warm-up epochs train the weights only, on uniformly random paths.
* Search epochs: every weight step (SGD, train split, augmentation) samples one path from p; after every
  ``arch_every`` weight steps one architecture step (Adam with betas (0, 0.999), a held-out split with validation
  transforms, BatchNorm in train mode) samples two paths (or one), computes ``L = L_train + L_lat`` and turns the
  binary-gate gradients into alpha gradients (:mod:`nas.mixed_edge`).
* A checkpoint is written atomically after every epoch (``last.pth``, plus ``warmup.pth`` at the end of warm-up
  and ``epoch_NNNN.pth`` every ``save_every`` epochs, each written *before* ``last.pth``, so that a kill between the
  writes leaves the extra file and an older ``last.pth`` whose resume writes the extra file again); ``resume``
  continues from any of them with the saved RNG streams, so a resumed search equals an uninterrupted one. Python's
  and NumPy's global generators are seeded from the search seed too, so two runs with one seed store the same
  states. Temporary files of writes killed earlier are deleted when a run starts.
* Under ``torchrun`` the sampled paths are broadcast from rank 0, weight gradients are averaged by DDP and the
  gate gradients by an explicit all-reduce (DDP ignores the alphas).
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.checkpoint import read_checkpoint, rng_state, set_rng_state, write_checkpoint
from engine.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_object,
    convert_sync_batchnorm,
    split_batch,
)
from engine.loaders import make_loader, one_line_worker_errors, resolve_data_root, set_epoch, split_holdout
from engine.speed import autocast_dtype, images_in_format, use_channels_last
from engine.trainer import CosineSchedule, NonFiniteLossError, StepSchedule, compute_loss, format_losses, train_step
from latency.predict import EdgeCosts
from models.loss import MultiBoxLoss
from models.retinaface import RetinaFace
from models.search_space import SearchSpace
from nas.derive import argmax_derive, budget_derive, differing_edges
from nas.distill import distillation_loss
from nas.latency_loss import expected_latency, latency_loss
from nas.sandwich import weight_step_paths
from nas.supernet import SuperNet
from utils.atomic import atomic_write, atomic_write_json, remove_stale_temporaries
from utils.errors import FaceNASError
from utils.figures import pyplot, save_figure
from utils.progress import Progress

CHECKPOINT_FORMAT = "facenas-search/1"
# what a checkpoint without the supernet-training options (before 2026-12-07) was trained with
PRE_REMEDY_SETTINGS = {"lr_schedule": "constant", "lr_warmup_epochs": 0.0, "sandwich": False, "sandwich_random": 2,
                       "distill": 0.0}
# settings a resumed search may change (the thesis resumes from warm-up to try other targets or lambdas)
# (the global batch stays; the number of processes, and with it the per-process share, may change)
RESUMABLE_CHANGES = {"target", "lam", "p1", "loss_form", "arch_lr", "search_epochs", "two_path", "arch_every",
                     "out_dir", "workers", "progress", "resume", "device", "amp", "channels_last", "save_every",
                     "world_size", "batch_per_process", "sync_bn", "derive", "tolerance"}


@dataclass
class SearchSettings:
    """Everything a search run depends on (printed at start, stored in checkpoints and in ``arch.json``).

    ``batch_size`` is the batch of one weight step over all processes; ``world_size`` and ``batch_per_process`` are
    filled in by :class:`Searcher` from the job it runs in.
    """

    target: float
    lam: float = 7.0
    p1: float = 0.5
    loss_form: str = "abs"
    two_path: bool = True
    warmup_epochs: int = 40
    search_epochs: int = 120
    arch_every: int = 5
    batch_size: int = 32
    img_size: int = 640
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    arch_lr: float = 1e-3
    alpha_init_std: float = 1e-3
    holdout_fraction: float = 0.2
    max_steps_per_epoch: int | None = None
    seed: int = 0
    workers: int = 0
    amp: bool = False
    channels_last: bool = True
    device: str = "cpu"
    data_root: str | None = None
    out_dir: str = "search_out"
    progress: bool = True
    save_every: int = 0
    fpn_channels: int | None = None
    world_size: int = 1
    batch_per_process: int = 0
    sync_bn: bool = False
    derive: str = "budget"
    tolerance: float = 0.02
    lr_schedule: str = "constant"
    lr_warmup_epochs: float = 0.0
    sandwich: bool = False
    sandwich_random: int = 2
    distill: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class Searcher:
    """Runs a search for one space, one cost table and one target.

    Args:
        space: the search space.
        costs: per-candidate costs of the space at the table's resolution (:func:`latency.predict.edge_costs`).
        settings: the run's settings.
        dist: this process's place in the job.
        log: logger (console + the run's log file on rank 0).
        table_meta: metadata of the cost table (stored with the result).
    """

    def __init__(self, space: SearchSpace, costs: EdgeCosts, settings: SearchSettings, dist: DistInfo,
                 log: logging.Logger, table_meta: dict[str, Any] | None = None):
        self.space, self.costs, self.s, self.dist, self.log = space, costs, settings, dist, log
        self.table_meta = table_meta or {}
        self.out = Path(settings.out_dir)
        settings.world_size = dist.world_size
        settings.batch_per_process = split_batch(settings.batch_size, dist)
        torch.manual_seed(settings.seed)
        # nothing here draws from them, but checkpoints store their states: seeded, two identical runs store the same
        random.seed(settings.seed)
        np.random.seed(settings.seed)
        self.net = SuperNet(space, settings.alpha_init_std)
        self.detector = RetinaFace(self.net, self.net.channels, settings.fpn_channels).to(dist.device)
        use_channels_last(self.detector, settings.channels_last)
        if settings.sync_bn:
            self.detector = convert_sync_batchnorm(self.detector, dist)
        self.model: nn.Module = self.detector
        if dist.distributed:
            ignored = [f"backbone.{name}" for name in self.net.arch_parameter_names()]
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.detector, ignored)
            self.model = nn.parallel.DistributedDataParallel(
                self.detector, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                find_unused_parameters=True)
        self.criterion = MultiBoxLoss()
        arch_ids = {id(p) for p in self.net.arch_parameters()}
        weights = [p for p in self.detector.parameters() if id(p) not in arch_ids]
        self.weight_opt = torch.optim.SGD(weights, lr=settings.lr, momentum=settings.momentum,
                                          weight_decay=settings.weight_decay)
        self.arch_opt = torch.optim.Adam(self.net.arch_parameters(), lr=settings.arch_lr, betas=(0.0, 0.999),
                                         eps=1e-8, weight_decay=0.0)
        # --amp: float16 + gradient scaling on CUDA, bfloat16 (no scaler) on a CPU (engine.speed)
        self.amp = settings.amp
        self.amp_dtype = autocast_dtype(dist.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=settings.amp and dist.device.type == "cuda")
        self.generator = torch.Generator().manual_seed(settings.seed)
        if settings.distill and not settings.sandwich:
            raise FaceNASError("in-place distillation (--distill) needs the sandwich rule (--sandwich): the largest "
                               "path is the teacher")
        if settings.lr_schedule not in ("constant", "cosine"):
            raise FaceNASError(f"unknown weight lr schedule {settings.lr_schedule!r} (constant, cosine)")
        total = settings.warmup_epochs + settings.search_epochs
        self.schedule: StepSchedule | CosineSchedule = (
            CosineSchedule(self.weight_opt, settings.lr, max(total, 1), settings.lr_warmup_epochs)
            if settings.lr_schedule == "cosine" else StepSchedule(self.weight_opt, settings.lr, (), 1.0,
                                                                  settings.lr_warmup_epochs))
        # weight updates each candidate received (the diagnosis of how evenly the supernet is trained)
        self.updates = [[0] * len(edge.ops) for edge in self.net.edges]
        self.epoch = 0  # next epoch to run
        self.history: list[dict[str, Any]] = []
        self._data: tuple[Any, Any] | None = None
        self._resumed_from: Path | None = None

    # -------------------------------------------------------------------------------------------------- data
    def loaders(self) -> tuple[Any, Any]:
        """The training and held-out loaders, built once (call it early to check the data before writing)."""
        if self._data is None:
            self._data = self._loaders()
        return self._data

    def _loaders(self) -> tuple[Any, Any]:
        """Training and held-out loaders (built once), each process taking its share of the global batch."""
        if self._data is not None:
            return self._data
        from data.augment import TrainTransform, ValTransform
        from data.widerface import WiderFaceDetection

        root = resolve_data_root(self.s.data_root, self.log if self.dist.is_main else None,
                                 verbose=self.dist.is_main)
        train_set = WiderFaceDetection(root, "train", TrainTransform(self.s.img_size), seed=self.s.seed)
        held_set = WiderFaceDetection(root, "train", ValTransform(self.s.img_size, mirror=True), seed=self.s.seed + 1)
        train_idx, held_idx = split_holdout(len(train_set), self.s.holdout_fraction, self.s.seed)
        per_process = self.s.batch_size // self.dist.world_size
        train = make_loader(train_set, per_process, self.dist, seed=self.s.seed, workers=self.s.workers,
                            subset=train_idx)
        held = make_loader(held_set, per_process, self.dist, seed=self.s.seed + 1, workers=self.s.workers,
                           subset=held_idx)
        self._data = train, held
        return self._data

    def steps_per_epoch(self) -> tuple[int, int]:
        """Weight steps per epoch (after ``max_steps_per_epoch``) and the training images they draw from."""
        train, _ = self._loaders()
        steps = len(train) if self.s.max_steps_per_epoch is None else min(len(train), self.s.max_steps_per_epoch)
        return steps, len(train.sampler.indices) if hasattr(train.sampler, "indices") else len(train.dataset)

    # ------------------------------------------------------------------------------------------------- paths
    def _sample(self, kind: str) -> list[tuple[int, tuple[int, ...]]]:
        """Sample on rank 0 (from the checkpointed generator) and broadcast, so every rank runs the same path."""
        paths = self.net.sample_paths(kind, self.generator, self.s.two_path) if self.dist.is_main else None
        if self.dist.distributed:
            paths = broadcast_object(paths, self.dist)
        return paths  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------------- steps
    def _weight_paths(self, warmup: bool) -> list[list[tuple[int, tuple[int, ...]]]]:
        """This weight step's paths, drawn on rank 0 and broadcast (see :func:`nas.sandwich.weight_step_paths`)."""
        kind = "uniform" if warmup else "weights"
        paths = (weight_step_paths(self.net, self.costs, kind, self.generator, self.s.sandwich, self.s.sandwich_random)
                 if self.dist.is_main else None)
        if self.dist.distributed:
            paths = broadcast_object(paths, self.dist)
        return paths  # type: ignore[return-value]

    def weight_step(self, batch: Any, warmup: bool, fraction: float = 0.0) -> dict[str, float]:
        self.schedule.step(self.epoch, fraction)
        paths = self._weight_paths(warmup)
        for path in paths:
            for counts, (active, _) in zip(self.updates, path):
                counts[active] += 1
        trained = [{active for active, _ in column} for column in zip(*paths)]  # per edge, candidates that ran

        def clear() -> None:
            # DDP hands unused parameters zero gradients: drop them so weight decay and momentum skip them
            for edge, ran in zip(self.net.edges, trained):
                for i, op in enumerate(edge.ops):
                    if i not in ran:
                        for p in op.parameters():
                            p.grad = None
            for p in self.net.arch_parameters():
                p.grad = None

        if len(paths) == 1:
            self.net.set_paths(paths[0], "weights")
            out = train_step(self.model, batch, self.criterion, self.weight_opt, self.scaler,
                             device=self.dist.device, amp=self.amp, dist_info=self.dist, epoch=self.epoch,
                             before_step=clear, channels_last=self.s.channels_last)
            return out.losses
        return self._sandwich_step(batch, paths, clear)

    def _sandwich_step(self, batch: Any, paths: list[list[tuple[int, tuple[int, ...]]]],
                       clear: Callable[[], None]) -> dict[str, float]:
        """One optimizer step on the mean loss of several paths (largest first: the distillation teacher)."""
        images, targets = (t.to(self.dist.device, non_blocking=self.dist.device.type == "cuda") for t in batch)
        priors = self.detector.priors(tuple(images.shape[-2:]), images.device)
        images = images_in_format(images, self.s.channels_last)
        self.weight_opt.zero_grad(set_to_none=True)
        teacher = None
        sums: dict[str, float] = {}
        for k, path in enumerate(paths):
            self.net.set_paths(path, "weights")
            with torch.autocast(device_type=images.device.type, dtype=self.amp_dtype, enabled=self.amp):
                predictions = self.model(images)
            losses = self.criterion(predictions, targets, priors)
            total = losses["total"]
            if self.s.distill and k == 0:
                teacher = tuple(t.detach() for t in predictions)
            elif self.s.distill:
                kd = distillation_loss(predictions, teacher, losses["positives"])
                total = total + self.s.distill * kd
                sums["distill"] = sums.get("distill", 0.0) + float(kd.detach()) / (len(paths) - 1)
            if not torch.isfinite(total.detach()):
                raise NonFiniteLossError(f"the loss is not finite at epoch {self.epoch + 1} (sandwich path {k})",
                                         {"total": float(total.detach())}, self.epoch)
            self.scaler.scale(total / len(paths)).backward()
            for key in ("total", "cls", "box", "landmark"):
                sums[key] = sums.get(key, 0.0) + float(losses[key].detach()) / len(paths)
            if k == 0:
                sums["largest"] = float(losses["total"].detach())
            elif k == 1:
                sums["smallest"] = float(losses["total"].detach())
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.weight_opt)
        clear()
        self.scaler.step(self.weight_opt)
        self.scaler.update()
        if self.dist.distributed:
            keys = sorted(sums)
            packed = all_reduce_mean(torch.tensor([sums[k] for k in keys], device=self.dist.device), self.dist)
            sums = dict(zip(keys, packed.tolist()))
        return sums

    def arch_step(self, batch: Any) -> dict[str, float]:
        self.net.set_paths(self._sample("arch"), "arch")
        images, targets = (t.to(self.dist.device) for t in batch)
        losses = compute_loss(self.detector, images, targets, self.criterion, amp=self.amp,
                              channels_last=self.s.channels_last)
        expected = expected_latency(self.net, self.costs, self.s.p1)
        lat_loss = latency_loss(expected, self.s.target, self.s.lam, self.s.loss_form)
        total = losses["total"] + lat_loss
        alphas = self.net.arch_parameters()
        gates = [edge.gates for edge in self.net.edges]
        scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
        grads = torch.autograd.grad(total * scale, gates + alphas, allow_unused=True)
        gate_grads = [torch.zeros(len(e.ops), device=self.dist.device) if g is None else g / scale
                      for g, e in zip(grads[: len(gates)], self.net.edges)]
        if self.dist.distributed:
            packed = all_reduce_mean(torch.cat(gate_grads), self.dist)
            gate_grads = list(packed.split([len(e.ops) for e in self.net.edges]))
        if not all(torch.isfinite(g).all() for g in gate_grads):
            return {"arch_skipped": 1.0}  # an AMP overflow: skip this architecture step
        self.arch_opt.zero_grad(set_to_none=True)
        for edge, alpha_grad, gate_grad in zip(self.net.edges, grads[len(gates):], gate_grads):
            # the latency term's exact gradient, then the ProxylessNAS rule for the detection loss on top
            edge.alpha.grad = torch.zeros_like(edge.alpha) if alpha_grad is None else alpha_grad.detach() / scale
            edge.accumulate_alpha_grad(gate_grad)
        self.arch_opt.step()
        for edge in self.net.edges:
            edge.rescale_pair()
        return {"arch_train": float(losses["total"].detach()), "lat_loss": float(lat_loss.detach()),
                "expected": float(expected.detach())}

    # ------------------------------------------------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        """Run the remaining epochs and write ``arch.json``; returns the result summary."""
        train_loader, held_loader = self.loaders()
        if self.dist.is_main:
            stale = remove_stale_temporaries(self.out)
            if stale:
                self.log.info(f"removed {len(stale)} temporary file(s) of writes killed earlier in {self.out} "
                              f"({', '.join(p.name for p in stale)})")
            if self._resumed_from is not None:
                self._restore_extras(self._resumed_from)
        with one_line_worker_errors():  # a bad image read by a worker: one line, as without workers
            self._epochs(train_loader, held_loader)
        return self.finish()

    def _epochs(self, train_loader: Any, held_loader: Any) -> None:
        """The epoch loop, checkpointing after every epoch."""
        total_epochs = self.s.warmup_epochs + self.s.search_epochs
        self.detector.train()
        while self.epoch < total_epochs:
            epoch, warmup = self.epoch, self.epoch < self.s.warmup_epochs
            set_epoch(train_loader, epoch)
            set_epoch(held_loader, epoch)
            held_iter = iter(held_loader)
            sums: dict[str, float] = {}
            counts: dict[str, int] = {}
            steps = len(train_loader) if self.s.max_steps_per_epoch is None else min(len(train_loader),
                                                                                     self.s.max_steps_per_epoch)
            bar = self._bar(steps, epoch, total_epochs, warmup)
            start = time.time()
            for step, batch in enumerate(train_loader):
                if step >= steps:
                    break
                record = self.weight_step(batch, warmup, step / steps)
                if not warmup and (step + 1) % self.s.arch_every == 0:
                    try:
                        held_batch = next(held_iter)
                    except StopIteration:
                        held_iter = iter(held_loader)
                        held_batch = next(held_iter)
                    record.update(self.arch_step(held_batch))
                for k, v in record.items():
                    sums[k] = sums.get(k, 0.0) + v
                    counts[k] = counts.get(k, 0) + 1
                bar.update(1, self._postfix(sums, counts, warmup))
            bar.close()
            summary = {k: sums[k] / counts[k] for k in sums}
            seconds = time.time() - start
            summary.update(self._status(), epoch=epoch, phase="warmup" if warmup else "search",
                           seconds=round(seconds, 2), weight_steps_per_s=round(min(steps, len(train_loader)) /
                                                                               max(seconds, 1e-9), 3))
            self.history.append(summary)
            self.epoch += 1
            self._log_epoch(summary)
            also = ["warmup.pth"] if warmup and self.epoch == self.s.warmup_epochs else []
            if self.s.save_every and self.epoch % self.s.save_every == 0:
                also.append(f"epoch_{self.epoch:04d}.pth")  # resumable later with --resume OUT/epoch_NNNN.pth
            self.save_checkpoint(also)

    def _status(self) -> dict[str, Any]:
        """Expected latency under the full softmax, the argmax network's cost and its compact description."""
        with torch.no_grad():
            full = float(expected_latency(self.net, self.costs, self.s.p1, use_paths=False))
        choices = self.net.argmax_choices()
        probs = [[round(float(p), 4) for p in e.probs.detach().cpu()] for e in self.net.edges]
        shares = [c / max(1, sum(counts)) for counts in self.updates for c in counts]
        return {"expected_full": full, "argmax_cost": self.costs.of_paths(choices),
                "lr": self.weight_opt.param_groups[0]["lr"], "least_update_share": min(shares, default=0.0),
                "argmax": self.net.describe_argmax(), "probs": probs, "confidence": _confidence(probs)}

    def _bar(self, steps: int, epoch: int, total: int, warmup: bool) -> Progress:
        phase = "warm-up" if warmup else "search"
        return Progress(steps, f"epoch {epoch + 1}/{total} {phase}", "step", self.s.progress and self.dist.is_main)

    def _postfix(self, sums: dict[str, float], counts: dict[str, int], warmup: bool) -> str:
        mean = {k: sums[k] / counts[k] for k in sums}
        text = format_losses(mean, digits=3)
        if not warmup and "expected" in mean:
            unit = self.costs.unit
            text += (f" L_lat {mean['lat_loss']:.3f} E {mean['expected']:.2f}{unit} argmax "
                     f"{self.costs.of_paths(self.net.argmax_choices()):.2f}{unit} "
                     f"[{self.net.describe_argmax()}]")
        return text

    def _log_epoch(self, summary: dict[str, Any]) -> None:
        unit = self.costs.unit
        rate = f", {summary['weight_steps_per_s']:.2f} weight steps/s" if "weight_steps_per_s" in summary else ""
        text = (f"epoch {summary['epoch'] + 1} ({summary['phase']}, {summary['seconds']:.0f} s{rate}): "
                f"{format_losses(summary)}")
        if "expected" in summary:
            text += f", L_lat {summary['lat_loss']:.4f}, E(step) {summary['expected']:.3f} {unit}"
        text += (f", E(full) {summary['expected_full']:.3f} {unit}, argmax {summary['argmax_cost']:.3f} {unit} "
                 f"(target {self.s.target:g}), confidence {summary['confidence']:.2f} [{summary['argmax']}]")
        self.log.info(text)

    # --------------------------------------------------------------------------------------------- checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "space": self.space.to_dict(),
            "settings": asdict(self.s),
            "epoch": self.epoch,
            "detector": self.detector.state_dict(),
            "weight_opt": self.weight_opt.state_dict(),
            "arch_opt": self.arch_opt.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "generator": self.generator.get_state(),
            "rng": rng_state(),
            "history": self.history,
            "updates": self.updates,
        }

    def save_checkpoint(self, also: list[str] | None = None) -> None:
        """Write the names in ``also``, then ``last.pth``, atomically on rank 0 (see the module docstring)."""
        if self.dist.is_main:
            write_checkpoint([self.out / name for name in [*(also or []), "last.pth"]], self.state())
            atomic_write_json(self.out / "history.json", self.history)
        if self.dist.distributed:
            barrier(self.dist)

    def load_checkpoint(self, path: str | Path) -> list[str]:
        """Restore a checkpoint; returns the settings that differ from the checkpoint's (allowed ones only)."""
        state = read_checkpoint(path, CHECKPOINT_FORMAT, "search", "search checkpoint",
                                "a search writes OUT/last.pth and OUT/warmup.pth", self.dist.device)
        if state["space"] != self.space.to_dict():
            raise FaceNASError(f"{path}: was written for search space {state['space'].get('name')!r}, not "
                               f"{self.space.name!r}; resume with the same --space and options")
        # checkpoints written before these settings existed trained with what they now mean by default
        old = {**PRE_REMEDY_SETTINGS, **state["settings"]}
        new = asdict(self.s)
        changed = sorted(k for k in new if k in old and old[k] != new[k] and k != "extra")
        blocked = [k for k in changed if k not in RESUMABLE_CHANGES]
        if blocked:
            shown = ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in blocked)
            raise FaceNASError(f"{path}: cannot resume with changed {shown}; only "
                               f"{', '.join(sorted(RESUMABLE_CHANGES - {'resume', 'out_dir', 'progress'}))} may "
                               "change")
        self.detector.load_state_dict(state["detector"])
        self.weight_opt.load_state_dict(state["weight_opt"])
        self.arch_opt.load_state_dict(state["arch_opt"])
        for group in self.arch_opt.param_groups:
            group["lr"] = self.s.arch_lr
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        if "updates" in state:
            self.updates = [list(map(int, counts)) for counts in state["updates"]]
        self._resumed_from = Path(path)
        return [f"{k} {old[k]!r} -> {new[k]!r}" for k in changed if k not in ("resume", "out_dir", "progress")]

    def _restore_extras(self, path: Path) -> None:
        """Re-create a missing ``warmup.pth`` / ``epoch_NNNN.pth`` that the resumed checkpoint *is* (a copy of its
        bytes is exact); say so when ``warmup.pth`` is missing and the checkpoint is past warm-up."""
        wanted = []
        if self.s.warmup_epochs and self.epoch == self.s.warmup_epochs:
            wanted.append(self.out / "warmup.pth")
        if self.s.save_every and self.epoch and self.epoch % self.s.save_every == 0:
            wanted.append(self.out / f"epoch_{self.epoch:04d}.pth")
        for target in wanted:
            if not target.exists() and target.resolve() != path.resolve():
                data = path.read_bytes()
                atomic_write(target, lambda handle, data=data: handle.write(data))
                self.log.info(f"re-created {target} from {path} (the same epoch {self.epoch} state)")
        warmup = self.out / "warmup.pth"
        if self.s.warmup_epochs and self.epoch > self.s.warmup_epochs and not warmup.exists():
            self.log.warning(f"{warmup} is missing and cannot be re-created exactly from {path} (epoch "
                             f"{self.epoch}, past the warm-up's {self.s.warmup_epochs}); --resume warmup is not "
                             "available for this search")

    # ---------------------------------------------------------------------------------------------- result
    def finish(self) -> dict[str, Any]:
        """Derive the architecture on the budget (and the argmax beside it), write ``arch.json`` (rank 0).

        A warm-up-only run (no search epoch done) has trained no alpha, so it derives nothing: ``arch`` is None.

        Returns:
            ``{"arch", "predicted", "target", "budget", "argmax"}`` (the last two :class:`~nas.derive.Derived`).
        """
        if self.dist.is_main:
            atomic_write_json(self.out / "history.json", self.history)  # also after a kill just before this write
        if self.epoch <= self.s.warmup_epochs:
            return {"arch": None, "predicted": None, "target": self.s.target, "budget": None, "argmax": None}
        log_probs = [torch.log_softmax(e.alpha.detach().double().cpu(), 0).tolist() for e in self.net.edges]
        argmax = argmax_derive(log_probs, self.costs)
        budget = budget_derive(log_probs, self.costs, self.s.target, self.s.tolerance)
        chosen = budget if self.s.derive == "budget" else argmax
        meta = {
            "searched": True,
            "space": self.space.name,
            "target": self.s.target,
            "predicted": chosen.predicted,
            "unit": self.costs.unit,
            "predicted_latency_ms": chosen.predicted if self.costs.unit == "ms" else None,
            "range": [self.costs.smallest, self.costs.largest],
            "derive": {"method": self.s.derive, "tolerance": self.s.tolerance, "budget": budget.to_meta(),
                       "argmax": argmax.to_meta(), "differs_at": differing_edges(
                           budget.choices, argmax.choices, [e.where for e in self.net.edge_info])},
            "table": {k: self.table_meta.get(k) for k in ("path", "device_name", "device", "batch", "resolution",
                                                          "threads", "metric", "calibration")},
            "settings": {k: v for k, v in asdict(self.s).items() if k not in ("progress", "extra")},
            "probabilities": [[round(float(p), 4) for p in e.probs.detach().cpu()] for e in self.net.edges],
        }
        meta["confidence"] = _confidence(meta["probabilities"])
        arch = self.space.arch_from_choices(chosen.choices, f"{self.space.name}_T{self.s.target:g}", meta)
        if self.dist.is_main:
            arch.save(self.out / "arch.json")
            device = self.table_meta.get("device_name") or self.table_meta.get("device") or "unknown device"
            unit, metric = self.costs.unit, self.table_meta.get("metric", "latency")
            title = (f"FaceNAS search of space {self.space.name}: target {self.s.target:g} {unit} ({metric} on "
                     f"{device}); derived ({self.s.derive}) {chosen.predicted:.4g} {unit}")
            _plot_history(self.history, self.s.target, self.costs.unit, self.out / "search.png", title,
                          self.s.warmup_epochs)
        return {"arch": arch, "predicted": chosen.predicted, "target": self.s.target, "budget": budget,
                "argmax": argmax}


def _confidence(probs: list[list[float]]) -> float:
    """Mean over edges of the largest probability: 1 when every edge has settled on one candidate."""
    return sum(max(p) for p in probs) / len(probs)


def _plot_history(history: list[dict[str, Any]], target: float, unit: str, path: Path, title: str,
                  warmup_epochs: int) -> None:
    """Loss and cost per epoch as a PNG a reader follows without the thesis: titled, warm-up shaded, epoch ticks."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    epochs = [h["epoch"] + 1 for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    marker = "o" if len(epochs) <= 30 else None
    ax1.plot(epochs, [h.get("total", math.nan) for h in history], marker=marker,
             label="detection loss of the weight steps")
    ax1.set_ylabel("loss (epoch mean)")
    ax1.set_title("supernet training")
    ax2.plot(epochs, [h["expected_full"] for h in history], marker=marker,
             label="expected cost of the probabilities (formula 12)")
    ax2.plot(epochs, [h["argmax_cost"] for h in history], marker=marker, label="most probable network (argmax)")
    ax2.axhline(target, color="k", linestyle="--", label=f"target {target:g} {unit}")
    ax2.set_ylabel(f"backbone cost ({unit})")
    ax2.set_title("cost of the network being chosen")
    last = max(epochs, default=1)
    for ax in (ax1, ax2):
        if warmup_epochs > 0:
            # warm-up trains the weights on random paths; the architecture only moves from then on
            ax.axvspan(0.5, min(warmup_epochs, last) + 0.5, color="0.85", zorder=0,
                       label=f"warm-up ({warmup_epochs} epoch{'s' if warmup_epochs != 1 else ''}, weights only)")
        ax.set_xlim(0.5, last + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
