"""Train RetinaFace with any FaceNAS / timm backbone on WIDER FACE (or the built-in synthetic dataset).

Presets (``--preset``; explicit options and ``--config`` values always win):

* ``recipe``: the RetinaFace recipe (SPEC section 8): SGD lr 1e-3, momentum 0.9, weight decay 5e-4, 640 px;
  MobileNet-sized backbones (mobile0.25 and the Raspberry Pi / Jetson nets) batch 32, 250 epochs, lr x0.1 at
  epochs 190 and 220; wide backbones (ResNet-50 and the DGX-1 nets, FPN width 256) batch 24, 100 epochs, x0.1 at
  70 and 90.
* ``quick``: a CPU-sized run that finishes in minutes on the built-in data: 320 px, batch 8, 6 epochs, lr 1e-2
  with a one-epoch warm-up, x0.1 for the last epoch, and an evaluation on the val images at the end (about
  66% mean AP on the built-in val set; see bench/RESULTS_train.md).
* ``auto`` (default): ``recipe`` when a GPU is used, ``quick`` on a CPU.

Examples:
    python train.py                                   # quick CPU run on the built-in dataset
    python train.py --model R12_V3_HS --data-root /data/widerface --preset recipe
    torchrun --nproc_per_node 4 train.py --model resnet50 --data-root /data/widerface
    python train.py --resume runs/facenas_r12_v3_hs/last.pth
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.config import HelpFormatter, parse_args, write_config
from utils.errors import FaceNASError, run_cli
from utils.options import (
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SEED,
    OptionParser,
    float_range,
    int_range,
)

if TYPE_CHECKING:  # torch is imported after parsing, so that `--help` and bad options answer at once
    import torch

RECIPES: dict[str, dict[str, Any]] = {
    "mobile": {"img_size": 640, "batch_size": 32, "epochs": 250, "decay_epochs": [190, 220], "lr": 1e-3,
               "warmup_epochs": 0.0, "eval": False},
    "wide": {"img_size": 640, "batch_size": 24, "epochs": 100, "decay_epochs": [70, 90], "lr": 1e-3,
             "warmup_epochs": 0.0, "eval": False},
    "quick": {"img_size": 320, "batch_size": 8, "epochs": 6, "decay_epochs": [5], "lr": 1e-2,
              "warmup_epochs": 1.0, "eval": True},
}
"""Values that depend on the preset (and, for ``recipe``, on the backbone width)."""

#: Smallest training size: the backbone's stride-32 level needs at least one cell.
MIN_IMG_SIZE = 32

# Settings that define a run: on --resume they come from the checkpoint unless given again.
RUN_KEYS = ("model", "fpn_channels", "data_root", "img_size", "batch_size", "epochs", "decay_epochs", "decay_rate",
            "warmup_epochs", "lr", "momentum", "weight_decay", "grad_clip", "seed", "amp", "preset", "save_every",
            "eval", "test_size", "max_steps_per_epoch", "sync_bn", "channels_last", "compile")


def build_parser() -> argparse.ArgumentParser:
    """The command line (timm-style groups); every option states its default."""
    parser = OptionParser(prog="train.py", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="YAML file of option: value pairs (e.g. configs/quick_cpu.yaml); the command line "
                             "overrides it (default: none)")
    parser.add_argument("--preset", choices=("auto", "recipe", "quick"), default="auto",
                        help="default values: 'recipe' = RetinaFace recipe, 'quick' = minutes on a CPU, 'auto' = "
                             "recipe on a GPU and quick on a CPU (default: auto)")

    group = parser.add_argument_group("Model")
    group.add_argument("--model", default="mobile0.25",
                       help="backbone: registry name (facenas_r12_v3_hs), thesis spelling (R12_V3_HS, mobile0.25, "
                            "resnet50) or an architecture .json file written by search.py (default: mobile0.25)")
    group.add_argument("--fpn-channels", type=POSITIVE_INT, default=None, metavar="C",
                       help="FPN/SSH width (default: 256 for backbones with >= 1024 channels, else 64)")
    group.add_argument("--backbone-weights", default=None, metavar="FILE",
                       help="initialise the backbone from a classification checkpoint of the same network (e.g. "
                            "ImageNet weights saved from timm), loaded through timm's pretrained mechanism "
                            "(default: none, random initialisation)")

    group = parser.add_argument_group("Dataset")
    group.add_argument("--data-root", default=None, metavar="DIR",
                       help="WIDER FACE root with train/label.txt and train/images/ (docs/DATA.md) (default: the "
                            "built-in synthetic dataset, generated on first use)")
    group.add_argument("--img-size", type=int_range(MIN_IMG_SIZE), default=None, metavar="PX",
                       help="square training size (default: 640 recipe, 320 quick)")
    group.add_argument("--workers", type=NON_NEGATIVE_INT, default=None, metavar="N",
                       help="DataLoader worker processes per training process (default: min(4, CPU cores))")

    group = parser.add_argument_group("Optimizer (SGD)")
    group.add_argument("--lr", type=POSITIVE_FLOAT, default=None,
                       help="learning rate (default: 1e-3 recipe, 1e-2 quick)")
    group.add_argument("--momentum", type=float_range(0, 1, high_open=True), default=0.9,
                       help="SGD momentum (default: 0.9)")
    group.add_argument("--weight-decay", type=NON_NEGATIVE_FLOAT, default=5e-4, help="weight decay (default: 5e-4)")
    group.add_argument("--grad-clip", type=POSITIVE_FLOAT, default=None, metavar="NORM",
                       help="clip the gradient norm to this value (default: no clipping, as the recipe)")

    group = parser.add_argument_group("Schedule")
    group.add_argument("--epochs", type=POSITIVE_INT, default=None,
                       help="epochs (default: 250 mobile / 100 wide backbones with the recipe, 6 quick)")
    group.add_argument("--batch-size", type=POSITIVE_INT, default=None, metavar="B",
                       help="images per step over all processes, as in search.py; divided among torchrun processes, "
                            "so it must be a multiple of their number (default: 32 mobile / 24 wide with the recipe, "
                            "8 quick)")
    group.add_argument("--decay-epochs", type=POSITIVE_INT, nargs="*", default=None, metavar="E",
                       help="epochs (1-based, as in the recipe) after which the lr is multiplied by --decay-rate "
                            "(default: 190 220 mobile / 70 90 wide with the recipe, 5 quick)")
    group.add_argument("--decay-rate", type=float_range(0, 1, low_open=True), default=0.1,
                       help="lr decay factor (default: 0.1)")
    group.add_argument("--warmup-epochs", type=NON_NEGATIVE_FLOAT, default=None,
                       help="linear lr warm-up from 0.1 x lr over this many epochs (default: 0 recipe, 1 quick)")

    group = parser.add_argument_group("Run")
    group.add_argument("--out-dir", default=None, metavar="DIR",
                       help="run folder for checkpoints, log, config and plots (default: runs/<model>, or "
                            "runs/<model>-quick with the quick preset; the checkpoint's folder with --resume)")
    group.add_argument("--resume", nargs="?", const="", default=None, metavar="CKPT",
                       help="continue a run from a checkpoint; without a path, OUT_DIR/last.pth (default: start "
                            "fresh)")
    group.add_argument("--seed", type=SEED, default=0,
                       help="seed of initialisation, data order and augmentation (default: 0)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto = the GPU of "
                                                        "LOCAL_RANK if CUDA is available, else cpu)")
    group.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                       help="mixed precision: float16 autocast + gradient scaling on CUDA, bfloat16 autocast on a CPU "
                            "(1.3-1.4x faster where the CPU has AVX512-BF16/AMX, slower where it emulates it; "
                            "changes the numbers by bfloat16 rounding) (default: on with CUDA, off on CPU)")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels-last (NHWC) memory format for weights and images: 1.2-1.3x faster steps on a "
                            "CPU, the same numbers up to float rounding (default: on)")
    group.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile the training forward (4-20 s of compiling first, at most a few percent "
                            "faster steps on a CPU; evaluation runs uncompiled) (default: off)")
    group.add_argument("--save-every", type=NON_NEGATIVE_INT, default=10, metavar="N",
                       help="besides last.pth (every epoch) keep epoch_NNNN.pth every N epochs; 0 = never "
                            "(default: 10)")
    group.add_argument("--eval", action=argparse.BooleanOptionalAction, default=None,
                       help="after training, predict the val images and compute WIDER FACE AP (default: on quick, "
                            "off recipe)")
    group.add_argument("--test-size", type=int_range(MIN_IMG_SIZE, also=(0,)), default=0, metavar="PX",
                       help="test scale of that evaluation: short side in px, 0 = original size (default: 0)")
    group.add_argument("--max-steps-per-epoch", type=NON_NEGATIVE_INT, default=0, metavar="N",
                       help="stop each epoch after N steps, for smoke tests and benchmarks; 0 = whole epoch "
                            "(default: 0)")
    group.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=False,
                       help="under torchrun on GPUs, BatchNorm statistics over all processes (SyncBatchNorm); a no-op "
                            "with one process, refused on CPU processes (default: off, per-process statistics)")
    group.add_argument("--threads", type=NON_NEGATIVE_INT, default=0, metavar="N",
                       help="CPU threads for PyTorch per process; 0 = PyTorch's default (one per core). On a busy "
                            "machine 1 can be much faster (default: 0)")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                       help="show a progress bar (default: on)")
    return parser


def recipe_family(model: str, fpn_channels: int | None) -> str:
    """``wide`` for ResNet-50-sized backbones (FPN width 256), else ``mobile``."""
    if fpn_channels is not None:
        return "wide" if fpn_channels > 64 else "mobile"
    import models
    from models.retinaface import default_fpn_channels

    backbone = models.create_backbone(model, features_only=True)
    return "wide" if default_fpn_channels(backbone.feature_info.channels()) > 64 else "mobile"


def resolve_args(args: argparse.Namespace, explicit: set[str], ckpt_args: dict[str, Any] | None,
                 cuda: bool) -> argparse.Namespace:
    """Fill preset-dependent defaults: checkpoint (on resume) < preset < config file < command line."""
    if ckpt_args:
        for key in RUN_KEYS:
            if key not in explicit and key in ckpt_args:
                setattr(args, key, ckpt_args[key])
    preset = args.preset if args.preset != "auto" else ("recipe" if cuda else "quick")
    args.preset_used = preset
    family = recipe_family(args.model, args.fpn_channels) if preset == "recipe" else "quick"
    args.recipe = family
    for key, value in RECIPES[family].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.amp is None:
        args.amp = cuda
    if args.channels_last is None:
        args.channels_last = True
    if args.compile is None:
        args.compile = False
    if args.workers is None:
        args.workers = min(4, os.cpu_count() or 1)
    return args


def _default_out_dir(args: argparse.Namespace) -> Path:
    from engine.checkpoint import model_spec

    spec = model_spec(args.model)
    base = spec["model_name"] or (spec["arch"] or {}).get("name") or Path(str(args.model)).stem
    base = str(base).replace("/", "_")
    return Path("runs") / (f"{base}-quick" if args.preset_used == "quick" else base)


def build_model(model: str, fpn_channels: int | None, backbone_weights: str | None = None) -> torch.nn.Module:
    """The detector, with the backbone optionally initialised from ``backbone_weights``."""
    import models

    if backbone_weights is None:
        return models.build_detector(model, fpn_channels=fpn_channels)
    if not Path(backbone_weights).is_file():
        raise FaceNASError(f"--backbone-weights {backbone_weights}: file not found")
    try:
        return models.build_detector(model, fpn_channels=fpn_channels, pretrained=True,
                                     pretrained_cfg_overlay={"file": str(backbone_weights)})
    except TypeError:
        raise FaceNASError(f"--backbone-weights is not supported for {model} yet (models.create_backbone fixes "
                           "pretrained=False for timm baselines)") from None
    except FaceNASError as exc:
        raise FaceNASError(f"--backbone-weights {backbone_weights}: {exc}") from None
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise FaceNASError(f"--backbone-weights {backbone_weights}: does not fit {model} ({first})") from None


def plot_losses(history: list[dict[str, float]], path: Path, title: str) -> None:
    """Loss curves (total and parts per epoch) to a PNG, written atomically."""
    from utils.figures import pyplot, save_figure

    plt = pyplot()

    epochs = [h["epoch"] + 1 for h in history]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for key, style in (("total", "-"), ("cls", "--"), ("box", "--"), ("landmark", "--")):
        ax.plot(epochs, [h[key] for h in history], style, marker="o" if len(epochs) < 30 else None, label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (epoch mean)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, path, tight=True)


@dataclass
class TrainingRun:
    """What one training run holds between its steps (built by :func:`_set_up`)."""

    args: argparse.Namespace
    dist: Any
    log: Any
    out_dir: Path
    spec: dict[str, Any]
    detector: torch.nn.Module
    model: torch.nn.Module
    loader: Any
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: Any
    data_root: Path
    resume_path: Path | None
    start_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.last, self.cuda = self.out_dir / "last.pth", self.dist.device.type == "cuda"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run training; returns a summary (``history``, ``out_dir``, ``last``, optional ``ap``)."""
    args, explicit = parse_args(build_parser(), list(sys.argv[1:] if argv is None else argv))
    from engine.distributed import cleanup, init_distributed
    from engine.run_log import close_logging

    resume_path, ckpt_args, resume_spec = _resume_source(args, explicit)
    dist_info = init_distributed(args.device)
    try:
        args = resolve_args(args, explicit, ckpt_args, dist_info.device.type == "cuda")
        run = _set_up(args, dist_info, resume_path, resume_spec)
        _log_start(run)
        _train_epochs(run)
        return _finish(run)
    finally:
        barrier_safe(dist_info)
        cleanup(dist_info)
        close_logging()


def _resume_source(args: argparse.Namespace, explicit: set[str]) -> tuple[Path | None, dict | None, dict | None]:
    """The checkpoint to resume (or ``None``), its settings, and the model it stores unless ``--model`` was given."""
    if args.resume is None:
        return None, None, None
    from engine.checkpoint import load_checkpoint

    if args.resume:
        resume_path = Path(args.resume)
    elif args.out_dir:
        resume_path = Path(args.out_dir) / "last.pth"
        extras = sorted(Path(args.out_dir).glob("epoch_*.pth"))
        if not resume_path.is_file() and extras:
            resume_path = extras[-1]  # a kill inside the first write of last.pth: the epoch file just before holds it
    else:
        raise FaceNASError("--resume without a path needs --out-dir (the run folder holding last.pth)")
    ckpt = load_checkpoint(resume_path)
    # Rebuild from the architecture stored in the checkpoint, so a moved or edited arch file does not matter.
    spec = None if "model" in explicit else {k: ckpt.get(k) for k in ("model", "model_name", "arch")}
    return resume_path, ckpt.get("args") or {}, spec


def _set_up(args: argparse.Namespace, dist_info: Any, resume_path: Path | None,
            resume_spec: dict[str, Any] | None) -> TrainingRun:
    """Run folder, logging, detector, data, optimizer and schedule; the resumed state when resuming."""
    import random

    import numpy as np
    import torch

    from engine.checkpoint import build_from_spec, model_spec, resume_training
    from engine.distributed import barrier, convert_sync_batchnorm, split_batch, sync_batchnorm_applies
    from engine.loaders import make_loader, resolve_data_root
    from engine.run_log import open_log_file, setup_logging
    from engine.speed import use_channels_last
    from engine.trainer import StepSchedule
    from utils.atomic import remove_stale_temporaries
    from utils.options import check_output_dir

    # recorded with the run (checkpoint "args", train.log); not options, so config.yaml leaves them out
    args.world_size, args.batch_per_process = dist_info.world_size, split_batch(args.batch_size, dist_info)
    if args.sync_bn:
        sync_batchnorm_applies(dist_info)  # refuses CPU processes before anything is written
    out_dir = Path(args.out_dir) if args.out_dir else (resume_path.parent if resume_path else _default_out_dir(args))
    args.out_dir = str(out_dir)
    check_output_dir(out_dir, "--out-dir")
    earlier = [p for p in [out_dir / "last.pth", *sorted(out_dir.glob("epoch_*.pth"))] if p.exists()]
    if resume_path is None and earlier:
        raise FaceNASError(f"{earlier[0]} exists: continue that run with --resume {earlier[0]}, or pass a new "
                           "--out-dir")
    # Console only until everything below has been checked: a failed start leaves no run folder behind.
    log = setup_logging(None, dist_info.is_main, dist_info.rank)
    cuda = dist_info.device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # nothing here draws from them, but checkpoints store their states: seeded, identical runs store the same
    random.seed(args.seed)
    np.random.seed(args.seed)
    if cuda:
        torch.backends.cudnn.benchmark = True

    if resume_path is not None and resume_spec is not None:
        spec = resume_spec
        detector = build_from_spec(spec, args.fpn_channels, str(resume_path))
    else:
        spec = model_spec(args.model)
        detector = build_model(args.model, args.fpn_channels, args.backbone_weights if resume_path is None else None)
    args.fpn_channels = detector.fpn_channels
    detector.to(dist_info.device)
    use_channels_last(detector, args.channels_last)

    # Rank 0 generates the built-in dataset if needed; the others wait, then find it complete.
    data_root = resolve_data_root(args.data_root, log) if dist_info.is_main else None
    barrier(dist_info)
    if not dist_info.is_main:
        data_root = resolve_data_root(args.data_root, None, verbose=False)
    from data.augment import TrainTransform
    from data.widerface import WiderFaceDetection

    dataset = WiderFaceDetection(data_root, "train", TrainTransform(args.img_size), seed=args.seed)
    loader = make_loader(dataset, args.batch_per_process, dist_info, shuffle=True, seed=args.seed,
                         workers=args.workers)
    if args.sync_bn:
        detector = convert_sync_batchnorm(detector, dist_info)  # before DDP; same state-dict names as BatchNorm
    model: torch.nn.Module = detector
    if dist_info.distributed:
        model = torch.nn.parallel.DistributedDataParallel(detector, device_ids=[dist_info.device.index] if cuda
                                                          else None)
    if args.compile:
        model = torch.compile(model)  # a wrapper: the state dict and evaluation use the plain detector
    optimizer = torch.optim.SGD(detector.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    # --decay-epochs counts like the reference ("x0.1 at 190"): epochs 0..189 at lr, from index 190 on x0.1.
    schedule = StepSchedule(optimizer, args.lr, args.decay_epochs, args.decay_rate, args.warmup_epochs)
    scaler = torch.amp.GradScaler("cuda", enabled=bool(args.amp and cuda))
    run = TrainingRun(args, dist_info, log, out_dir, spec, detector, model, loader, optimizer, schedule, scaler,
                      data_root, resume_path)
    if resume_path is not None:
        ckpt = resume_training(resume_path, model=detector, optimizer=optimizer, scheduler=schedule, scaler=scaler,
                               spec=spec)
        run.start_epoch = int(ckpt["epoch"]) + 1
        run.history = list(ckpt.get("history") or [])
    if dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        stale = remove_stale_temporaries(out_dir)
        open_log_file(log, out_dir / "train.log")
        if stale:
            log.info(f"removed {len(stale)} temporary file(s) of writes killed earlier in {out_dir} "
                     f"({', '.join(p.name for p in stale)})")
        if resume_path is not None:
            _restore_epoch_file(run, resume_path)
    return run


def _restore_epoch_file(run: TrainingRun, resume_path: Path) -> None:
    """Re-create a missing ``epoch_NNNN.pth`` that the resumed checkpoint *is* (a copy of its bytes is exact)."""
    from utils.atomic import atomic_write

    every = run.args.save_every
    if not every or run.start_epoch % every:
        return
    target = run.out_dir / f"epoch_{run.start_epoch:04d}.pth"
    if not target.exists() and target.resolve() != resume_path.resolve():
        data = resume_path.read_bytes()
        atomic_write(target, lambda handle: handle.write(data))
        run.log.info(f"re-created {target} from {resume_path} (the same epoch {run.start_epoch} state)")


def _log_start(run: TrainingRun) -> None:
    """Write config.yaml and say what will run (main process)."""
    import torch

    args, dist_info = run.args, run.dist
    if not dist_info.is_main:
        return
    steps = len(run.loader) if not args.max_steps_per_epoch else min(len(run.loader), args.max_steps_per_epoch)
    from engine.distributed import describe_world

    write_config(run.out_dir / "config.yaml", {k: v for k, v in vars(args).items()
                                               if k not in ("preset_used", "recipe", "world_size",
                                                            "batch_per_process")})
    how = f"resuming from {run.resume_path} at epoch {run.start_epoch + 1}" if run.resume_path else "new run"
    run.log.info(f"train.py: RetinaFace + {args.model} ({run.spec['model_name'] or 'arch file'}), FPN "
                 f"{args.fpn_channels}, {how}")
    auto = " (auto: " + ("GPU found)" if run.cuda else "no GPU, CPU-sized run; --preset recipe for the full "
                                                      "RetinaFace recipe)") if args.preset == "auto" else ""
    sync = ("on" if dist_info.world_size > 1 else "on, a no-op with one process") if args.sync_bn else "off"
    run.log.info(f"{describe_world(dist_info, args.batch_size)}, SyncBatchNorm {sync}")
    run.log.info(f"preset {args.preset_used}{auto}: {args.epochs} epochs x {steps} steps, batch {args.batch_size}, "
                 f"{args.img_size} px, SGD lr {args.lr:g} "
                 f"momentum {args.momentum:g} wd {args.weight_decay:g}, x{args.decay_rate:g} after epochs "
                 f"{args.decay_epochs}, warm-up {args.warmup_epochs:g} epochs")
    if args.preset == "auto" and args.preset_used == "quick" and args.data_root:
        run.log.warning("WIDER FACE on a CPU with the quick preset: this is a smoke run, not the RetinaFace "
                        "recipe; pass --preset recipe (on a GPU) to reproduce the thesis numbers")
    from engine.speed import describe_speed

    speed = describe_speed(args.channels_last, args.amp, dist_info.device, args.compile)
    run.log.info(f"device {dist_info.device} ({speed}), "
                 f"{len(run.loader.dataset)} training images, seed {args.seed}, workers {args.workers}, "
                 f"{torch.get_num_threads()} threads, out {run.out_dir}")
    if run.start_epoch >= args.epochs:
        run.log.info(f"nothing to do: {run.resume_path} already finished epoch {run.start_epoch} of {args.epochs}")


def _train_epochs(run: TrainingRun) -> None:
    """The epoch loop: train, then checkpoint (``last.pth`` and every ``--save-every``) and plot, each epoch."""
    from engine.checkpoint import save_checkpoint
    from engine.distributed import barrier
    from engine.loaders import set_epoch
    from engine.trainer import NonFiniteLossError, train_one_epoch
    from models.loss import MultiBoxLoss

    args, dist_info, criterion = run.args, run.dist, MultiBoxLoss()
    for epoch in range(run.start_epoch, args.epochs):
        set_epoch(run.loader, epoch)
        try:
            stats = train_one_epoch(run.model, run.loader, criterion, run.optimizer, run.schedule, epoch,
                                    scaler=run.scaler, device=dist_info.device, amp=bool(args.amp),
                                    channels_last=args.channels_last,
                                    dist_info=dist_info, log=run.log if dist_info.is_main else None,
                                    progress=args.progress, max_steps=args.max_steps_per_epoch or None,
                                    epochs=args.epochs)
        except NonFiniteLossError as exc:
            kept = f"the last good checkpoint is {run.last} (epoch {epoch})" if run.last.exists() else \
                "no checkpoint was written yet"
            message = (f"{exc}; training stopped, nothing was saved for this epoch and {kept}. Lower --lr "
                       f"(now {args.lr:g}), add --warmup-epochs or --grad-clip, or turn off --amp, then --resume")
            run.log.error(message)
            raise FaceNASError(message) from None
        run.history.append({"epoch": epoch, **{k: float(stats[k]) for k in ("total", "cls", "box", "landmark", "lr",
                                                                             "seconds", "images_per_s",
                                                                             "steps_per_s")}})
        if dist_info.is_main:
            # the extra file first: a kill between the writes leaves it and an older last.pth, which redoes the epoch
            paths = [run.out_dir / f"epoch_{epoch + 1:04d}.pth"] if args.save_every and \
                (epoch + 1) % args.save_every == 0 else []
            save_checkpoint([*paths, run.last], model=run.detector, spec=run.spec,
                            fpn_channels=run.detector.fpn_channels, epoch=epoch, optimizer=run.optimizer,
                            scheduler=run.schedule, scaler=run.scaler, args=vars(args), history=run.history)
            plot_losses(run.history, run.out_dir / "loss_curve.png", f"RetinaFace + {args.model}")
        barrier(dist_info)


def _finish(run: TrainingRun) -> dict[str, Any]:
    """The closing log line and, when asked, the WIDER FACE evaluation; returns the run summary."""
    summary: dict[str, Any] = {"history": run.history, "out_dir": str(run.out_dir), "last": str(run.last)}
    if run.dist.is_main and run.history:
        first, final = run.history[0]["total"], run.history[-1]["total"]
        run.log.info(f"done: loss {first:.4f} (epoch {run.history[0]['epoch'] + 1}) -> {final:.4f} (epoch "
                     f"{run.history[-1]['epoch'] + 1}); checkpoint {run.last}, curve {run.out_dir / 'loss_curve.png'}")
    if run.args.eval and run.dist.is_main and run.history:
        summary["ap"] = _evaluate(run.detector, run.data_root, run.out_dir, run.args, run.dist.device, run.log)
    return summary


def barrier_safe(dist_info: Any) -> None:
    """Barrier that tolerates a broken process group (on the error path)."""
    from engine.distributed import barrier

    try:
        barrier(dist_info)
    except Exception:  # noqa: BLE001 - another rank may already have failed
        pass


def _evaluate(detector: torch.nn.Module, data_root: Path, out_dir: Path, args: argparse.Namespace,
              device: torch.device, log: Any) -> dict[str, float]:
    """Predict the val set with the trained weights and log the AP (used by the quick preset)."""
    from data.wider_eval import SETTINGS
    from engine.inference import EvalSettings, evaluate_detector
    from utils.atomic import atomic_write_json

    started = time.perf_counter()
    pred_dir = out_dir / "widerface_val"
    result = evaluate_detector(detector.eval(), data_root, pred_dir, EvalSettings(test_size=args.test_size), device,
                               progress=args.progress, log=log)
    ap = {s: float(result[s]) for s in (*SETTINGS, "mean")}
    atomic_write_json(out_dir / "eval.json", {**ap, "pred_dir": str(pred_dir), "test_size": args.test_size})
    log.info("val AP: " + ", ".join(f"{s} {100 * ap[s]:.2f}%" for s in (*SETTINGS, "mean")) +
             f" ({time.perf_counter() - started:.0f} s; {out_dir / 'eval.json'})")
    return ap


if __name__ == "__main__":
    run_cli(main)
