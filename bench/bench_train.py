"""Benchmark (not a test): RetinaFace training throughput, and AP on the built-in val set after a fixed CPU budget.

1. Throughput: images per second of a full training step (forward, multibox loss, backward, SGD) of RetinaFace-
   MobileNetV1-0.25 at each ``--batches`` size and ``--img-size`` (default 32 and 8 at 640x640), on real augmented
   batches of the built-in dataset held in memory (data loading is not timed). ``--warmup`` untimed steps first,
   then ``--steps`` timed steps; the median step time gives images/s.
2. Budget: for each ``--budget-models`` network, train from scratch with the quick preset (320 px, batch 8, SGD lr
   1e-2 with a one-epoch warm-up, x0.1 for the last 20% of the budget) for ``--budget-min`` minutes of wall time,
   then evaluate on the built-in val set at original size (SPEC section 8 test settings) and report Easy / Medium /
   Hard AP.

    python bench/bench_train.py                           # both parts, CPU (about 25 minutes on 2 cores)
    python bench/bench_train.py --skip-budget --device cuda --batches 32   # throughput on a GPU (AMP on)

Results go to ``--out`` (JSON) and a Markdown summary is printed; ``bench/RESULTS_train.md`` records a run.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models  # noqa: E402
from engine.distributed import resolve_device  # noqa: E402
from engine.trainer import StepSchedule, train_step  # noqa: E402
from latency.measure import cpu_model  # noqa: E402
from models.loss import MultiBoxLoss  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches_in_memory(root: Path, img_size: int, batch: int, count: int, seed: int = 0) -> list:
    """``count`` augmented training batches of the built-in dataset, collated."""
    from data.augment import TrainTransform
    from data.widerface import WiderFaceDetection, detection_collate

    dataset = WiderFaceDetection(root, "train", TrainTransform(img_size), seed=seed)
    out = []
    for b in range(count):
        items = [dataset[(b * batch + i) % len(dataset)] for i in range(batch)]
        out.append(detection_collate(items))
    return out


def throughput(model_name: str, batch: int, img_size: int, steps: int, warmup: int, device: torch.device,
               amp: bool, root: Path) -> dict:
    """Median training-step time and images/s of one network at one batch size."""
    torch.manual_seed(0)
    detector = models.build_detector(model_name).to(device).train()
    optimizer = torch.optim.SGD(detector.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    criterion = MultiBoxLoss()
    data = batches_in_memory(root, img_size, batch, min(steps + warmup, 4))
    times = []
    for i in range(warmup + steps):
        images, targets = data[i % len(data)]
        _sync(device)
        start = time.perf_counter()
        train_step(detector, (images, targets), criterion, optimizer, scaler, device=device, amp=amp)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"model": model_name, "batch": batch, "img_size": img_size, "steps": steps, "warmup": warmup,
            "step_s": times, "median_step_s": median, "images_per_s": batch / median, "amp": amp}


def budget_run(model_name: str, minutes: float, root: Path, device: torch.device, out_dir: Path, seed: int = 0,
               img_size: int = 320, batch: int = 8, lr: float = 1e-2) -> dict:
    """Train for a wall-time budget with the quick settings, then evaluate AP on the built-in val set."""
    from data.augment import TrainTransform
    from data.widerface import WiderFaceDetection
    from engine.inference import EvalSettings, evaluate_detector
    from engine.loaders import make_loader, set_epoch

    torch.manual_seed(seed)
    detector = models.build_detector(model_name).to(device)
    dataset = WiderFaceDetection(root, "train", TrainTransform(img_size), seed=seed)
    loader = make_loader(dataset, batch, seed=seed, workers=0)
    optimizer = torch.optim.SGD(detector.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = StepSchedule(optimizer, lr, (), 0.1, warmup_epochs=1.0)
    criterion = MultiBoxLoss()
    budget = minutes * 60.0
    started = time.perf_counter()
    steps = 0
    epoch = 0
    losses = []
    decayed = False
    done = False
    while not done:
        set_epoch(loader, epoch)
        for i, batch_data in enumerate(loader):
            elapsed = time.perf_counter() - started
            if elapsed >= budget:
                done = True
                break
            lr_now = schedule.step(epoch, i / len(loader))
            if elapsed >= 0.8 * budget:
                decayed = True
                for group in optimizer.param_groups:
                    group["lr"] = lr_now * 0.1
            out = train_step(detector, batch_data, criterion, optimizer, device=device)
            losses.append(out.losses["total"])
            steps += 1
        epoch += 1 if not done else 0
    train_s = time.perf_counter() - started
    eval_started = time.perf_counter()
    result = evaluate_detector(detector.eval(), root, out_dir / f"pred_{model_name}", EvalSettings(), device,
                               progress=False)
    k = max(1, len(losses) // 10)
    return {"model": model_name, "budget_min": minutes, "train_s": train_s, "steps": steps, "images": steps * batch,
            "epochs": steps * batch / len(dataset), "img_size": img_size, "batch": batch, "lr": lr,
            "decayed": decayed, "loss_first10pct": statistics.mean(losses[:k]),
            "loss_last10pct": statistics.mean(losses[-k:]), "eval_s": time.perf_counter() - eval_started,
            **{s: float(result[s]) for s in ("easy", "medium", "hard", "mean")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    parser.add_argument("--model", default="mobile0.25", help="throughput network (default: mobile0.25)")
    parser.add_argument("--batches", type=int, nargs="*", default=[32, 8], help="throughput batch sizes "
                                                                                  "(default: 32 8)")
    parser.add_argument("--img-size", type=int, default=640, help="throughput input side (default: 640)")
    parser.add_argument("--steps", type=int, default=3, help="timed throughput steps (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed throughput steps (default: 1)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                        help="mixed precision in the throughput part (default: on with CUDA)")
    parser.add_argument("--budget-min", type=float, default=10.0, help="training minutes per network (default: 10)")
    parser.add_argument("--budget-models", nargs="*", default=["mobile0.25", "R12_V3_HS"],
                        help="networks of the budget part (default: mobile0.25 R12_V3_HS)")
    parser.add_argument("--skip-throughput", action="store_true", help="skip part 1 (default: run it)")
    parser.add_argument("--skip-budget", action="store_true", help="skip part 2 (default: run it)")
    parser.add_argument("--out", default="bench/results/train.json", help="JSON output (default: "
                                                                          "bench/results/train.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    amp = device.type == "cuda" if args.amp is None else args.amp
    from data.synthetic import ensure_builtin_dataset
    from utils.atomic import atomic_write_json

    root = ensure_builtin_dataset()
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
               "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               "torch": torch.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "load_avg_start": os.getloadavg() if hasattr(os, "getloadavg") else None}
    report: dict = {"machine": machine, "throughput": [], "budget": []}
    print(f"# bench_train: {machine['cpu']} ({machine['cores']} cores, {machine['threads']} threads), "
          f"{machine['gpu'] or 'no GPU'}, torch {machine['torch']}, {machine['date']}, "
          f"load {machine['load_avg_start']}")
    out = Path(args.out)
    if not args.skip_throughput:
        for batch in args.batches:
            r = throughput(args.model, batch, args.img_size, args.steps, args.warmup, device, amp, root)
            report["throughput"].append(r)
            print(f"| {args.model} | batch {batch} | {args.img_size}x{args.img_size} | {device} | AMP {amp} | "
                  f"{r['median_step_s']:.2f} s/step | {r['images_per_s']:.2f} img/s |", flush=True)
            atomic_write_json(out, report)
    if not args.skip_budget:
        for name in args.budget_models:
            with tempfile.TemporaryDirectory() as tmp:  # the prediction files are not kept
                r = budget_run(name, args.budget_min, root, device, Path(tmp))
            report["budget"].append(r)
            print(f"| {name} | {args.budget_min:g} min | {r['steps']} steps ({r['epochs']:.1f} epochs) | loss "
                  f"{r['loss_first10pct']:.2f} -> {r['loss_last10pct']:.2f} | AP easy {100 * r['easy']:.2f} medium "
                  f"{100 * r['medium']:.2f} hard {100 * r['hard']:.2f} mean {100 * r['mean']:.2f} | eval "
                  f"{r['eval_s']:.0f} s |", flush=True)
            atomic_write_json(out, report)
    report["machine"]["load_avg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    atomic_write_json(out, report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
