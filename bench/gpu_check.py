"""One-shot GPU check for a machine with CUDA (not a test; CI has no GPU). Run from the repository root:

    python bench/gpu_check.py                   # about 2-4 minutes on one GPU
    python bench/gpu_check.py --out gpu.json    # also keep the numbers

It runs, in order, and prints one line per check (plus a JSON summary):

1. **AMP training throughput**: RetinaFace-MobileNetV1-0.25, batch 32, 640x640, float16 autocast + GradScaler,
   ``--warmup`` untimed steps then ``--steps`` timed steps, each between ``torch.cuda.synchronize()`` calls; the same
   in float32 for comparison, and both again in channels-last memory format (the CPU default since issue 24). Real
   augmented batches of the built-in dataset, held on the GPU.
2. **One-process NCCL DDP**: ``torchrun --nproc_per_node 1 train.py ... --device cuda`` for one step on the built-in
   dataset (the NCCL path of engine/distributed.py and DDP in train.py); checks the checkpoint it writes.
3. **Checkpoint evaluation on the GPU**: ``evaluate.py --checkpoint`` on that checkpoint (the val set of the built-in
   dataset), which exercises inference and the prediction writer on CUDA.
4. **Supernet remedies on CUDA**: a short ``search.py`` with AMP, the sandwich rule, in-place distillation and the
   cosine weight schedule on a FLOPs table of R5_V2 at 640 px (no device table needed).

Exit status 0 when every check passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def amp_throughput(batch: int, size: int, steps: int, warmup: int, amp: bool, channels_last: bool = False) -> dict:
    """Timed training steps of mobile0.25 on the GPU (cudnn.benchmark on, non-blocking copies in train_step)."""
    import torch

    import models
    from bench.bench_train import batches_in_memory
    from data.synthetic import ensure_builtin_dataset
    from engine.speed import use_channels_last
    from engine.trainer import train_step
    from models.loss import MultiBoxLoss

    device = torch.device("cuda", 0)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    detector = use_channels_last(models.build_detector("mobile0.25").to(device).train(), channels_last)
    optimizer = torch.optim.SGD(detector.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    data = [(x.to(device), t.to(device)) for x, t in batches_in_memory(ensure_builtin_dataset(verbose=False), size,
                                                                       batch, 4)]
    times, losses = [], []
    for i in range(warmup + steps):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        out = train_step(detector, data[i % len(data)], MultiBoxLoss(), optimizer, scaler, device=device, amp=amp,
                         channels_last=channels_last)
        torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
        losses.append(out.losses["total"])
    median = statistics.median(times)
    return {"amp": amp, "channels_last": channels_last, "batch": batch, "size": size,
            "median_step_ms": 1000 * median, "images_per_s": batch / median,
            "max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30, "losses_finite": all(
                v == v and abs(v) != float("inf") for v in losses), "scale": scaler.get_scale() if amp else None}


def run(cmd: list[str], timeout: int) -> tuple[int, str]:
    """Run a command from the repository root; returns (exit status, last 3000 characters of output)."""
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, (proc.stdout + proc.stderr)[-3000:]


def run_check(summary: dict, key: str, label: str, cmd: list[str], produced: Callable[[], bool]) -> bool:
    """Run one command-line check, print ok/FAIL with its time, record it under ``summary["checks"][key]``."""
    started = time.perf_counter()
    code, tail = run(cmd, timeout=600)
    passed = code == 0 and produced()
    print(f"[{'ok' if passed else 'FAIL'}] {label} ({time.perf_counter() - started:.0f} s)", flush=True)
    if not passed:
        print(tail)
    summary["checks"][key] = {"passed": passed, "exit": code, "tail": tail[-800:]}
    return passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="throughput batch (default: 32)")
    parser.add_argument("--size", type=int, default=640, help="throughput input side (default: 640)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (default: 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (default: 5)")
    parser.add_argument("--out", default=None, help="write the summary JSON here (default: print only)")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("error: CUDA is not available; this check needs a GPU", file=sys.stderr)
        return 2
    summary: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                     "cuda": torch.version.cuda, "date": datetime.datetime.now().isoformat(timespec="seconds"),
                     "checks": {}}
    print(f"GPU check on {summary['gpu']} (torch {summary['torch']}, CUDA {summary['cuda']})", flush=True)
    ok = True
    for amp, channels_last in ((True, False), (False, False), (True, True), (False, True)):
        key = ("throughput_amp" if amp else "throughput_fp32") + ("_channels_last" if channels_last else "")
        try:
            r = amp_throughput(args.batch, args.size, args.steps, args.warmup, amp, channels_last)
            passed = r["losses_finite"]
            print(f"[{'ok' if passed else 'FAIL'}] mobile0.25 train step, batch {args.batch}, {args.size}x{args.size}, "
                  f"{'AMP fp16' if amp else 'fp32'}{', channels-last' if channels_last else ''}: "
                  f"{r['median_step_ms']:.1f} ms/step, {r['images_per_s']:.0f} img/s, "
                  f"peak {r['max_memory_gib']:.1f} GiB", flush=True)
        except Exception as exc:  # noqa: BLE001 - report and continue with the other checks
            r, passed = {"error": repr(exc)}, False
            print(f"[FAIL] {key}: {exc!r}", flush=True)
        summary["checks"][key] = {**r, "passed": passed}
        ok &= passed

    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp) / "ddp"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "train.py",
               "--device", "cuda", "--preset", "recipe", "--epochs", "1", "--max-steps-per-epoch", "2",
               "--batch-size", "8", "--img-size", "640", "--workers", "2", "--no-progress", "--no-eval",
               "--out-dir", str(out_dir)]

        def trained_with_amp() -> bool:
            log = out_dir / "train.log"
            return (out_dir / "last.pth").is_file() and log.exists() and "AMP on" in log.read_text()

        ok &= run_check(summary, "ddp_nccl", "torchrun 1-process NCCL DDP, 2 AMP steps of train.py", cmd,
                        trained_with_amp)
        if (out_dir / "last.pth").is_file():
            ap_json = Path(tmp) / "ap.json"
            ok &= run_check(summary, "evaluate_cuda", "evaluate.py --checkpoint on CUDA",
                            [sys.executable, "evaluate.py", "--checkpoint", str(out_dir / "last.pth"), "--device",
                             "cuda", "--pred-dir", str(Path(tmp) / "pred"), "--json", str(ap_json)],
                            ap_json.is_file)

        # the supernet remedies of the search on CUDA with AMP (sandwich rule + in-place distillation, cosine lr),
        # on a FLOPs table so that no device table is needed
        flops = Path(tmp) / "flops.json"
        search_dir = Path(tmp) / "search"
        ok &= run_check(summary, "flops_table", "FLOPs table of R5_V2 at 640 px for the search check",
                        [sys.executable, "-m", "latency.analytic", "--metric", "flops", "--space", "R5_V2",
                         "--resolution", "640", "--out", str(flops)], flops.is_file)
        if flops.is_file():
            ok &= run_check(summary, "search_sandwich_amp_run", "search.py --sandwich --distill 1 on CUDA",
                            [sys.executable, "search.py", "--latency-table", str(flops), "--space", "R5_V2",
                             "--target", "1500", "--device", "cuda", "--warmup-epochs", "1", "--search-epochs", "1",
                             "--max-steps-per-epoch", "10", "--batch-size", "16", "--sandwich", "--distill", "1",
                             "--lr-schedule", "cosine", "--lr-warmup-epochs", "0.5", "--no-progress",
                             "--out-dir", str(search_dir)],
                            lambda: (search_dir / "arch.json").is_file())

    summary["passed"] = bool(ok)
    print(json.dumps({k: v for k, v in summary.items() if k != "checks"} | {
        "checks": {k: {kk: vv for kk, vv in v.items() if kk != "tail"} for k, v in summary["checks"].items()}},
        indent=2, default=str))
    if args.out:
        from utils.atomic import atomic_write_json

        atomic_write_json(args.out, summary)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
