"""Latency-constrained search of a RetinaFace backbone (FaceNAS, thesis chapter 3).

    python search.py --latency-table rpi4.json --target 210

trains a gated supernet (ProxylessNAS binary gates) on face detection with the loss
``L = L_cls + 2 L_box + L_landmarks + |lambda (E[latency] - T) / T|`` and writes OUT/arch.json, which loads with
``timm.create_model('facenas_arch', arch='OUT/arch.json')`` and trains with ``python train.py --model OUT/arch.json``.

A missing table, or blocks missing from it, are measured on this machine (internal mode) and saved; the table then
describes this machine. To search for another device, profile it there with ``profile_latency.py`` and pass that
file. Without --data-root the built-in synthetic dataset is used. On a CPU the defaults are a short run (about
20 minutes on 2 cores: 8 warm-up + 12 search epochs, cosine weight schedule); see --help for the thesis-scale
settings.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.errors import FaceNASError, run_cli

# The CPU run's schedule was chosen by the ranking study (BENCHMARKS.md H): 8 + 12 epochs with a cosine weight
# schedule lift the supernet's inherited AP from 6-23% (2 + 5 epochs, constant lr) to 39-57%, in about 15 minutes.
CPU_QUICK = {"img_size": 320, "batch_size": 8, "warmup_epochs": 8, "search_epochs": 12, "arch_lr": 0.2,
             "lr": 0.01, "max_steps_per_epoch": None, "lr_schedule": "cosine", "lr_warmup_epochs": 1.0,
             "sandwich": False, "distill": 0.0}
#: Networks measured to calibrate a table that internal mode creates: (fitting, held-out), as profile_latency.py.
CALIBRATION_NETWORKS = (24, 8)
THESIS = {"img_size": 640, "warmup_epochs": 40, "search_epochs": 120, "arch_lr": 1e-3, "lr": 1e-3,
          "lr_schedule": "constant", "lr_warmup_epochs": 0.0, "sandwich": False, "distill": 0.0}
#: A target more than this factor above the largest (or below the smallest) network of the space is refused.
TARGET_FACTOR = 1000.0
#: Smallest training resolution: the backbone's stride-32 level needs at least one cell.
MIN_IMG_SIZE = 32


def build_parser() -> argparse.ArgumentParser:
    from engine.config import HelpFormatter
    from utils.options import (
        NON_NEGATIVE_FLOAT,
        NON_NEGATIVE_INT,
        POSITIVE_FLOAT,
        POSITIVE_INT,
        PROBABILITY,
        SEED,
        OptionParser,
        float_range,
        int_range,
    )

    p = OptionParser(prog="search.py", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config", metavar="FILE", help="YAML file of options (the command line overrides it)")
    g = p.add_argument_group("target")
    g.add_argument("--latency-table", required=True, metavar="FILE",
                   help="latency (or FLOPs/params/acts) table JSON; created here when missing (required)")
    g.add_argument("--target", type=POSITIVE_FLOAT, required=True,
                   help="target (reference) backbone latency T in the table's unit, e.g. ms; must lie within a "
                        f"factor {TARGET_FACTOR:g} of the space's reachable range (required)")
    g.add_argument("--lambda", dest="lam", type=NON_NEGATIVE_FLOAT, default=None,
                   help="weight of the latency loss; 0 searches for accuracy alone (default: the preset's, 7 for "
                        "rpi4/jetson, 0.75 for dgx)")
    g.add_argument("--p1", type=PROBABILITY, default=0.5,
                   help="formula 12 weight of the probability-weighted latency; 1.0 gives formula 11 (default: 0.5)")
    g.add_argument("--loss-form", choices=["abs", "proxyless", "hinge"], default="abs",
                   help="latency loss: abs = formula 10, proxyless = formula 8, hinge = formula 9 (default: abs)")
    g.add_argument("--derive", choices=["budget", "argmax"], default="budget",
                   help="how the final network is chosen: budget = the most probable network whose predicted "
                        "latency is within --tolerance of the target (an exact knapsack over the edges); argmax = "
                        "the most probable candidate of every edge, whatever it costs (ProxylessNAS). arch.json "
                        "records both (default: budget)")
    g.add_argument("--tolerance", type=float_range(0, 1, high_open=True), default=0.02,
                   help="relative half-width of the budget window, 0.02 = +-2%% of the target (default: 0.02)")
    g = p.add_argument_group("search space")
    g.add_argument("--space", default=None,
                   help="experiment (R5, R11, TT3, J15, ...), preset (rpi4, dgx, jetson) or a space .json file "
                        "(default: the table's preset, else the preset named in the table's file name, else rpi4)")
    g.add_argument("--hardswish", action="store_true", help="HardSwish in stages 3-4 and the last conv (_HS)")
    g.add_argument("--pre-stage", default=None, help="fixed pre-stage block, e.g. 3x3_KKConv_Mid_16 "
                                                     "(default: the space's)")
    g.add_argument("--last-channels", type=POSITIVE_INT, default=None,
                   help="last 1x1 conv width (default: the space's)")
    g.add_argument("--single-path", action="store_true",
                   help="one sampled candidate per architecture step with gate gradients over all candidates "
                        "(default: ProxylessNAS two-path sampling)")
    g = p.add_argument_group("schedule (defaults: thesis-scale on a GPU, about 20 minutes on a 2-core CPU)")
    g.add_argument("--warmup-epochs", type=NON_NEGATIVE_INT, default=None,
                   help="weights-only epochs on random paths (default: 40 on GPU, 8 on CPU)")
    g.add_argument("--search-epochs", type=NON_NEGATIVE_INT, default=None,
                   help="search epochs; 0 stops after warm-up without deriving an architecture (continue later "
                        "with --resume warmup) (default: 120 on GPU, 12 on CPU)")
    g.add_argument("--arch-every", type=POSITIVE_INT, default=5,
                   help="weight steps per architecture step (default: 5)")
    g.add_argument("--max-steps-per-epoch", type=POSITIVE_INT, default=None,
                   help="cap on weight steps per epoch, for quick trials (default: the whole split)")
    g.add_argument("--batch-size", type=POSITIVE_INT, default=None,
                   help="images per weight step over all processes, as in train.py; divided among torchrun "
                        "processes, so it must be a multiple of their number (default: the preset's 32 rpi4/jetson, "
                        "24 dgx on GPU; 8 on CPU)")
    g.add_argument("--img-size", type=int_range(MIN_IMG_SIZE), default=None,
                   help="training/search resolution (default: 640 on GPU, 320 on CPU)")
    g.add_argument("--lr", type=POSITIVE_FLOAT, default=None,
                   help="weight SGD learning rate (default: 1e-3, RetinaFace; 0.01 for the short CPU run)")
    g.add_argument("--momentum", type=float_range(0, 1, high_open=True), default=0.9,
                   help="weight SGD momentum (default: 0.9)")
    g.add_argument("--weight-decay", type=NON_NEGATIVE_FLOAT, default=5e-4,
                   help="weight decay of the weights (default: 5e-4)")
    g.add_argument("--arch-lr", type=POSITIVE_FLOAT, default=None,
                   help="Adam learning rate of the alphas, betas (0, 0.999) (default: 1e-3, ProxylessNAS; 0.2 for "
                        "the short CPU run, which has ~100x fewer architecture steps)")
    g.add_argument("--lr-schedule", choices=["constant", "cosine"], default=None,
                   help="weight learning rate over warm-up + search epochs: constant, or cosine decay to 0 at the "
                        "end (both after --lr-warmup-epochs of linear warm-up from 0.1 x lr) (default: constant on "
                        "GPU, as the thesis; cosine on CPU)")
    g.add_argument("--lr-warmup-epochs", type=NON_NEGATIVE_FLOAT, default=None,
                   help="linear warm-up of the weight learning rate, in epochs (default: 0 on GPU, 1 on CPU)")
    g.add_argument("--sandwich", action=argparse.BooleanOptionalAction, default=None,
                   help="sandwich rule: every weight step trains the largest and the smallest network of the space "
                        "(by the table) plus --sandwich-random sampled paths, one optimizer step on their mean loss "
                        "(default: off; on the CPU schedule it trained the middle paths too little, BENCHMARKS.md H)")
    g.add_argument("--sandwich-random", type=NON_NEGATIVE_INT, default=2,
                   help="sampled paths per weight step besides the largest and smallest, with --sandwich (default: 2)")
    g.add_argument("--distill", type=NON_NEGATIVE_FLOAT, default=None, metavar="WEIGHT",
                   help="in-place distillation with --sandwich: the other paths of a step also learn the largest "
                        "path's outputs, with this weight; 0 = off (default: 0: with the CPU budget the largest path "
                        "is the least trained network and a poor teacher, BENCHMARKS.md H)")
    g.add_argument("--holdout-fraction", type=float_range(0, 1, low_open=True, high_open=True), default=0.2,
                   help="share of the training images held out for architecture steps (default: 0.2)")
    g = p.add_argument_group("run")
    g.add_argument("--data-root", default=None, help="WIDER FACE root (docs/DATA.md); default: built-in dataset")
    g.add_argument("--out-dir", default=None, help="output folder (default: runs/search_<space>_T<target>)")
    g.add_argument("--resume", nargs="?", const="last", default=None, metavar="CKPT",
                   help="resume from OUT/last.pth (no value; OUT/warmup.pth when a kill left no last.pth), "
                        "OUT/warmup.pth ('warmup') or a checkpoint path (default: start fresh)")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out-dir that holds an earlier search: its arch.json, checkpoints "
                        "(epoch_*.pth included), history and plot are deleted first (default: refuse and stop)")
    g.add_argument("--save-every", type=NON_NEGATIVE_INT, default=0, metavar="N",
                   help="also keep OUT/epoch_NNNN.pth every N epochs, to resume from that epoch later; 0 keeps only "
                        "last.pth and warmup.pth (default: 0)")
    g.add_argument("--seed", type=SEED, default=0,
                   help="seed of data order, augmentation and path sampling (default: 0)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--sync-bn", action="store_true",
                   help="under torchrun on GPUs, BatchNorm statistics over all processes (SyncBatchNorm); a no-op "
                        "with one process, refused on CPU processes (default: off, per-process statistics)")
    g.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision: float16 autocast + gradient scaling on CUDA, bfloat16 autocast on a CPU "
                        "(about 1.4x faster supernet steps where the CPU has AVX512-BF16/AMX, slower where it "
                        "emulates it; changes the numbers by bfloat16 rounding) (default: on with CUDA, off on CPU)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last (NHWC) memory format for the supernet and its images: about 1.25x faster "
                        "steps on a CPU, the same numbers up to float rounding (default: on)")
    g.add_argument("--workers", type=NON_NEGATIVE_INT, default=None,
                   help="data loader workers (default: 2 on CPU, 4 on GPU)")
    g.add_argument("--calibration-networks", type=NON_NEGATIVE_INT, nargs=2, default=list(CALIBRATION_NETWORKS),
                   metavar=("FIT", "HELD_OUT"),
                   help="when the table is created here: whole networks of the space measured end to end to fit "
                        "the table's calibration (0, or at least 3), and others to score it; each costs about 2 s "
                        "per round on a 2-core x86 at 320 px, 3 rounds (default: "
                        f"{CALIBRATION_NETWORKS[0]} {CALIBRATION_NETWORKS[1]})")
    g.add_argument("--no-calibration", action="store_true",
                   help="when the table is created here, measure its blocks only and fit no calibration (default: "
                        "calibrate, see --calibration-networks)")
    g.add_argument("--table-device", choices=["cpu", "cuda"], default=None,
                   help="device a NEW table is measured on (default: the preset's: cuda for dgx/jetson when "
                        "available, else cpu)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> None:
    from engine.config import parse_args

    args, _ = parse_args(build_parser(), argv)
    from engine.distributed import cleanup, init_distributed
    from engine.run_log import open_log_file, setup_logging

    _check_options(args)
    dist = init_distributed(args.device)
    table_path = Path(args.latency_table)
    space = _space(args, table_path)
    out_dir = Path(args.out_dir or f"runs/search_{space.name}_T{args.target:g}")
    resume = _check_paths(args, table_path, out_dir)
    settings = _settings(args, space, dist, out_dir)  # checks --batch-size and --sync-bn before anything is written
    # Console only until every check has passed: a failed start leaves no run folder behind.
    log = setup_logging(None, dist.is_main, dist.rank)
    table, costs = _table_and_costs(args, table_path, space, dist, log)
    _check_target(args.target, costs, table_path)
    on_gpu = dist.device.type == "cuda"
    from nas.searcher import Searcher

    searcher = Searcher(space, costs, settings, dist, log, {**table.meta, "path": str(table_path)})
    changed = searcher.load_checkpoint(resume) if resume is not None else []
    _check_arch_steps(searcher, settings)
    searcher.loaders()  # the data is read (and checked) before the run folder exists
    if dist.is_main:
        _prepare_out_dir(out_dir, args.overwrite, log)
        open_log_file(log, out_dir / "search.log")
        _print_start(log, space, table, table_path, costs, settings, on_gpu, dist)
    if resume is not None:
        log.info(f"resumed from {resume} at epoch {searcher.epoch}" + (f"; changed: {', '.join(changed)}"
                                                                       if changed else ""))
    result = searcher.run()
    if dist.is_main:
        _print_result(log, result, args, table, table_path, costs.unit, out_dir, on_gpu)
    cleanup(dist)


def _check_options(args: argparse.Namespace) -> None:
    """What the option types cannot see alone (each value is range-checked by its type)."""
    if args.warmup_epochs == 0 and args.search_epochs == 0:
        raise FaceNASError("--warmup-epochs 0 with --search-epochs 0 trains nothing; give at least one epoch")
    fit, _ = args.calibration_networks
    if 0 < fit < 3:
        raise FaceNASError(f"--calibration-networks needs 0 or at least 3 fitting networks, got {fit}")


def _check_arch_steps(searcher, settings) -> None:
    """A search epoch with fewer weight steps than --arch-every would run no architecture step: refuse it up front."""
    if searcher.epoch >= settings.warmup_epochs + settings.search_epochs or settings.search_epochs == 0:
        return
    steps, images = searcher.steps_per_epoch()
    if steps >= settings.arch_every:
        return
    cap = f", --max-steps-per-epoch {settings.max_steps_per_epoch}" if settings.max_steps_per_epoch else ""
    raise FaceNASError(
        f"--arch-every {settings.arch_every} but a search epoch has only {steps} weight step(s) ({images} training "
        f"images, batch {settings.batch_size} = {settings.world_size} process(es) x {settings.batch_per_process}"
        f"{cap}), so the search would run no architecture step at all; use --arch-every {max(1, steps)} or less, or "
        "more steps per epoch (a smaller --batch-size, a larger --max-steps-per-epoch, more training images)")


def _search_files(out_dir: Path) -> list[Path]:
    """The files of an earlier search in ``out_dir`` (result, checkpoints, history, plot)."""
    named = [out_dir / n for n in ("arch.json", "last.pth", "warmup.pth", "history.json", "search.png")]
    return [p for p in named if p.exists()] + sorted(out_dir.glob("epoch_*.pth"))


def _check_paths(args: argparse.Namespace, table_path: Path, out_dir: Path) -> Path | None:
    """Output paths and the run folder's state, checked before any work; returns the checkpoint to resume."""
    from utils.options import check_output_dir, check_output_file

    check_output_dir(out_dir, "--out-dir")
    if not table_path.exists():
        check_output_file(table_path, "--latency-table (a new table is created there)")
    resume = None
    if args.resume == "last":
        resume = out_dir / "last.pth"
        if not resume.is_file():
            # A kill inside the first write of last.pth: the extra checkpoints written just before hold that state.
            extras = [p for p in [out_dir / "warmup.pth", *sorted(out_dir.glob("epoch_*.pth"))] if p.is_file()]
            if not extras:
                raise FaceNASError(f"{resume}: search checkpoint not found (nor warmup.pth or epoch_*.pth beside "
                                   "it); start without --resume, or give the --out-dir of the search to continue")
            resume = extras[-1]
    elif args.resume == "warmup":
        resume = out_dir / "warmup.pth"
    elif args.resume is not None:
        resume = Path(args.resume)
    if resume is not None and not resume.is_file():
        raise FaceNASError(f"{resume}: search checkpoint not found; a search writes OUT/last.pth and OUT/warmup.pth")
    inside = resume is not None and resume.resolve().parent == out_dir.resolve()
    if inside and args.overwrite:
        raise FaceNASError(f"{resume}: --overwrite would delete the checkpoint that --resume reads; drop one of them")
    earlier = _search_files(out_dir) if out_dir.is_dir() else []
    if earlier and not inside and not args.overwrite:
        names = ", ".join(p.name for p in earlier[:4]) + (", ..." if len(earlier) > 4 else "")
        raise FaceNASError(f"{out_dir}: holds an earlier search ({names}); continue it with --resume, start over "
                           "with --overwrite (deletes it), or choose another --out-dir")
    return resume


def _check_target(target: float, costs, table_path: Path) -> None:
    """Refuse a target so far outside the reachable range that the latency loss would be flat or overflow."""
    low, high = costs.smallest, costs.largest
    if target > TARGET_FACTOR * high or (low > 0 and target < low / TARGET_FACTOR):
        raise FaceNASError(f"{table_path}: --target {target:g} {costs.unit} is more than {TARGET_FACTOR:g} times "
                           f"outside what the space reaches ({low:.4g} .. {high:.4g} {costs.unit}), so the latency "
                           "loss would be flat or overflow; give a target in the table's unit near that range")


def _prepare_out_dir(out_dir: Path, overwrite: bool, log) -> None:
    """Create the run folder; with --overwrite delete the earlier search first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        old = _search_files(out_dir)
        for path in old:
            path.unlink()
        if old:
            log.info(f"--overwrite: deleted the earlier search in {out_dir} ({', '.join(p.name for p in old)})")


def _space(args: argparse.Namespace, table_path: Path):
    """The search space: --space, else the table's preset, else the preset in the table's file name, else rpi4."""
    from latency.table_format import TableFile
    from models.search_space import PRESETS, get_space

    table = TableFile.load(table_path) if table_path.exists() else None
    space_name = args.space or (table.meta.get("preset") if table else None)
    if space_name is None:
        space_name = next((p for p in PRESETS if p in table_path.stem.lower()), "rpi4")
    overrides = {k: v for k, v in (("pre_stage", args.pre_stage), ("last_channels", args.last_channels))
                 if v is not None}
    return get_space(space_name, hardswish=args.hardswish, **overrides)


def _threads_text(threads: int | None) -> str:
    """'1 thread' / '3 threads' for a table's thread count."""
    return f"{threads} thread{'' if threads == 1 else 's'}"


def _table_and_costs(args: argparse.Namespace, table_path: Path, space, dist, log):
    """Load the table, or create it here when missing (internal mode: blocks and calibration networks measured on
    this machine); measure what the space needs; its costs."""
    import torch

    from engine.distributed import barrier
    from latency.internal_mode import LatencyTable
    from latency.predict import describe_calibration, edge_costs
    from models.search_space import PRESETS
    from utils.atomic import remove_stale_temporaries

    preset = PRESETS[space.preset]
    if dist.is_main:  # temporaries of an internal-mode fill killed earlier
        remove_stale_temporaries(table_path.parent, [table_path.name])
    created = not table_path.exists()
    if created:
        device = args.table_device or ("cuda" if preset["gpu"] and torch.cuda.is_available() else "cpu")
        if dist.is_main:
            table = LatencyTable.create(table_path, device=device, batch=preset["latency_batch"],
                                        resolution=preset["latency_size"], preset=space.preset, space=space.name)
            log.info(f"{table_path} did not exist: created a new latency table that describes THIS machine "
                     f"({table.meta.get('device_name')}, {device}, {_threads_text(table.meta.get('threads'))}, batch "
                     f"{table.batch}, {table.input_size}x{table.input_size}), not a {preset['device']}. To search for "
                     f"that device, run `python profile_latency.py --preset {space.preset} --out {table_path.name}` "
                     "on it and pass the file here.")
        barrier(dist)
    if dist.is_main:
        table = LatencyTable.load(table_path)
        edge_costs(space, table, measure_missing=True)
        fit, held_out = args.calibration_networks
        if created and table.metric == "latency" and not args.no_calibration and fit:
            log.info(f"calibrating the new table: {fit} + {held_out} random networks of {space.name} measured end "
                     "to end here (--no-calibration skips this)")
            table.calibrate_here([space], fit, held_out, progress=not args.no_progress, log=log.info)
    barrier(dist)
    table = LatencyTable.load(table_path)
    if dist.is_main and table.metric == "latency" and table.calibration is None:
        log.warning(f"{table_path} has no calibration: predicted latencies are plain sums of block entries, which "
                    "under-predict whole networks (by about 15% on a 2-core x86 CPU), so the derived network will "
                    "run slower than the target. Profile the device with profile_latency.py (calibrated by "
                    "default), or refit with tools/latency_report.py --fit-calibration.")
    elif dist.is_main and table.metric == "latency":
        log.info(f"{table_path}: {describe_calibration(table.meta['calibration'])}")
    return table, edge_costs(space, table)


def _settings(args: argparse.Namespace, space, dist, out_dir: Path):
    """Search settings: the CPU quick run or thesis scale, under what the command line gave."""
    from engine.distributed import split_batch, sync_batchnorm_applies
    from models.search_space import PRESETS
    from nas.searcher import SearchSettings

    preset = PRESETS[space.preset]
    on_gpu = dist.device.type == "cuda"
    base = dict(THESIS, batch_size=preset["batch"]) if on_gpu else dict(CPU_QUICK)
    chosen = {k: getattr(args, k) if getattr(args, k) is not None else base.get(k) for k in
              ("img_size", "batch_size", "warmup_epochs", "search_epochs", "arch_lr", "lr", "max_steps_per_epoch",
               "lr_schedule", "lr_warmup_epochs", "sandwich", "distill")}
    if chosen["distill"] and not chosen["sandwich"]:
        raise FaceNASError(f"--distill {chosen['distill']:g} needs the sandwich rule (the largest path is the "
                           "teacher): add --sandwich or pass --distill 0")
    per_process = split_batch(chosen["batch_size"], dist)
    if args.sync_bn:
        sync_batchnorm_applies(dist)  # refuses CPU processes now, not at the first step
    if args.arch_every < 1:
        raise FaceNASError(f"--arch-every must be >= 1, got {args.arch_every}")
    return SearchSettings(
        target=args.target, lam=args.lam if args.lam is not None else preset["lambda"], p1=args.p1,
        loss_form=args.loss_form, two_path=not args.single_path, arch_every=args.arch_every,
        momentum=args.momentum, weight_decay=args.weight_decay, holdout_fraction=args.holdout_fraction,
        seed=args.seed, workers=args.workers if args.workers is not None else (4 if on_gpu else 2),
        amp=args.amp if args.amp is not None else on_gpu, channels_last=args.channels_last, device=str(dist.device),
        data_root=args.data_root,
        out_dir=str(out_dir), progress=not args.no_progress, save_every=args.save_every,
        world_size=dist.world_size, batch_per_process=per_process, sync_bn=args.sync_bn, derive=args.derive,
        tolerance=args.tolerance, sandwich_random=args.sandwich_random, **chosen)


def _print_result(log, result: dict, args: argparse.Namespace, table, table_path: Path, unit: str, out_dir: Path,
                  on_gpu: bool) -> None:
    arch = result["arch"]
    if arch is None:
        log.info(f"warm-up only (no search epoch): no architecture derived; {out_dir / 'warmup.pth'} continues it "
                 f"with --resume warmup --search-epochs N --out-dir {out_dir}")
        return
    log.info("\n" + arch.describe())
    metric = table.meta.get("metric", "latency")
    for name, derived in (("budget", result["budget"]), ("argmax", result["argmax"])):
        gap = 100 * (derived.predicted / args.target - 1)
        mark = " <- written" if name == args.derive else ""
        log.info(f"derive {name:<6}: predicted backbone {metric} {derived.predicted:.3f} {unit} ({gap:+.1f}% of the "
                 f"target {args.target:g} {unit}), log-probability {derived.log_prob:.2f}{mark}")
    differs = arch.meta["derive"]["differs_at"]
    log.info(f"the two derives differ at {len(differs)} of {len(result['budget'].choices)} edges"
             + (f" ({', '.join(differs)})" if differs else "") + f"; predictions for {table.meta.get('device_name')}")
    if result["budget"].message:
        log.warning(f"budget derive: {result['budget'].message}")
    confidence = arch.meta["confidence"]
    if confidence < 0.5:
        log.info(f"the probabilities have not settled (mean largest probability {confidence:.2f}): more search "
                 f"epochs (--resume --search-epochs N) make the derived network a surer choice")
    log.info(f"wrote {out_dir / 'arch.json'}; next: python train.py --model {out_dir / 'arch.json'}")
    if not on_gpu:
        log.info("scale up: with WIDER FACE and GPUs run e.g. `torchrun --nproc_per_node 8 search.py "
                 f"--latency-table {table_path.name} --target {args.target:g} --data-root WIDER_ROOT` "
                 "(thesis settings: 640 px, batch 32, 40 warm-up + 120 search epochs, arch lr 1e-3)")


def _print_start(log, space, table, table_path, costs, settings, on_gpu: bool, dist) -> None:
    from engine.distributed import describe_world
    from engine.speed import describe_speed

    unit = costs.unit
    log.info(f"space {space.name} (preset {space.preset}): {len(costs.edges)} MixedEdges, "
             f"{sum(len(c) for c in costs.edges)} candidates, pre-stage {space.pre_stage}, "
             f"MaxPool {'on' if space.maxpool else 'off'}, last conv {space.last_channels}")
    log.info(f"table {table_path}: {table.meta.get('metric', 'latency')} on {table.meta.get('device_name')} "
             f"({table.meta.get('device')}), batch {table.batch}, {table.input_size}x{table.input_size}, "
             f"calibration x{table.scale:g}")
    log.info(f"reachable {costs.smallest:.3f} .. {costs.largest:.3f} {unit} (fixed parts {costs.fixed:.3f})")
    if settings.target < costs.smallest:
        log.warning(f"target {settings.target:g} {unit} is below the smallest network of this space on this device "
                    f"({costs.smallest:.3f} {unit}): the search will push every edge to its cheapest candidate")
    elif settings.target > costs.largest:
        log.warning(f"target {settings.target:g} {unit} is above the largest network of this space on this device "
                    f"({costs.largest:.3f} {unit}): the latency loss then pulls every edge toward its most expensive "
                    "candidate, so expect a network near the largest (how near depends on the search length); "
                    "lower --target or use a wider space")
    sync = ("on" if dist.world_size > 1 else "on, a no-op with one process") if settings.sync_bn else "off"
    log.info(f"{describe_world(dist, settings.batch_size)}, SyncBatchNorm {sync}, "
             f"{describe_speed(settings.channels_last, settings.amp, dist.device)}")
    log.info(f"settings ({'GPU' if on_gpu else 'CPU quick run'}): " + ", ".join(
        f"{k}={v}" for k, v in vars(settings).items() if k not in ("extra", "progress", "data_root", "out_dir")))


if __name__ == "__main__":
    sys.exit(run_cli(main))
