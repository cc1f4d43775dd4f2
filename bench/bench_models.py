"""Benchmark (not a test): backbone latency of every registered network against the RetinaFace baselines.

Measures each backbone (features_only, eval, inference mode) in training form (BatchNorm separate) and deploy form
(BatchNorm folded; channels_last on GPU), interleaving the networks round by round so that all of them see the same
machine load, and reports the median time and the ratio to MobileNetV1-0.25 (CPU, [1,3,320,320]) or ResNet-50
(GPU, [8,3,640,640]) next to the thesis ratios.

    python bench/bench_models.py                 # CPU, [1,3,320,320]
    python bench/bench_models.py --device cuda   # GPU, [8,3,640,640]
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import models  # noqa: E402  (registers the facenas_* models)
from latency.measure import cpu_model  # noqa: E402
from models.backbone import deploy_form  # noqa: E402

THESIS = {"R12_V3_HS / mobile0.25 (Raspberry Pi 4)": 0.61, "TT3_NoSE / ResNet-50 (V100, batch 8)": 0.725,
          "ResNet-50 / mobile0.25 (Raspberry Pi 4)": 7.5}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default: cpu)")
    parser.add_argument("--batch", type=int, default=None, help="batch (default: 1 on CPU, 8 on GPU)")
    parser.add_argument("--size", type=int, default=None, help="input side (default: 320 on CPU, 640 on GPU)")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default: 15)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's default)")
    parser.add_argument("--models", nargs="*", default=None, help="subset of models (default: all registered)")
    args = parser.parse_args()
    device = args.device
    batch = args.batch or (8 if device == "cuda" else 1)
    size = args.size or (640 if device == "cuda" else 320)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    names = args.models or ["facenas_mobilenetv1_025", "resnet50"] + [
        m for m in timm.list_models("facenas_*") if m not in ("facenas_arch", "facenas_mobilenetv1_025")]
    nets = {}
    for name in names:
        model = models.create_backbone(name).eval().to(device)
        nets[(name, "train")] = model
        nets[(name, "deploy")] = deploy_form(model, channels_last=device == "cuda")
    x = torch.randn(batch, 3, size, size, device=device)
    times: dict[tuple[str, str], list[float]] = {key: [] for key in nets}
    with torch.inference_mode():
        for module in nets.values():  # warm-up (and cudnn autotuning) for every network
            for _ in range(3):
                module(x)
        _sync(device)
        for _ in range(args.rounds):
            for key, module in nets.items():
                inp = x.contiguous(memory_format=torch.channels_last) if key[1] == "deploy" and device == "cuda" else x
                _sync(device)
                start = time.perf_counter()
                module(inp)
                _sync(device)
                times[key].append((time.perf_counter() - start) * 1e3)
    med = {key: statistics.median(v) for key, v in times.items()}
    ref = "resnet50" if device == "cuda" else "facenas_mobilenetv1_025"
    print(f"machine: {cpu_model() if device == 'cpu' else torch.cuda.get_device_name()}, threads "
          f"{torch.get_num_threads()}, torch {torch.__version__}, date {datetime.date.today()}")
    print(f"input [{batch},3,{size},{size}] on {device}; median of {args.rounds} interleaved rounds; "
          f"ratio = time / {ref} (same form)\n")
    print("| backbone | train form ms | deploy form ms | ratio train | ratio deploy |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        tr, de = med[(name, "train")], med[(name, "deploy")]
        print(f"| {name} | {tr:.2f} | {de:.2f} | {tr / med[(ref, 'train')]:.3f} | {de / med[(ref, 'deploy')]:.3f} |")
    print("\nthesis ratios: " + "; ".join(f"{k} = {v}" for k, v in THESIS.items()))


if __name__ == "__main__":
    main()
