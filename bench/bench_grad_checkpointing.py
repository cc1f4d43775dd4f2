"""Peak training memory with and without ``set_grad_checkpointing`` (a memory benchmark, not a timing one).

Each configuration runs in a fresh Python process, so its peak resident set size (``ru_maxrss``) is its own: build the
model, make the batch, note the RSS, then run training steps (forward, loss, backward) and note the peak again. The
difference is the memory the training step needs on top of the weights and the input; gradient checkpointing
recomputes each block in the backward pass instead of keeping its activations, so that difference should drop.
The activations autograd keeps (``saved_tensors_hooks``) are counted too, a number that does not depend on the
allocator.

    python bench/bench_grad_checkpointing.py                                  # R11_V2_HS, batch 8, 640 px
    python bench/bench_grad_checkpointing.py --model R12_V3_HS --batch 2 --size 320 --detector

Prints one line per configuration and a Markdown table; ``--json FILE`` also writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _child(model_name: str, batch: int, size: int, checkpointing: bool, detector: bool, steps: int) -> dict:
    """One configuration, measured in this (fresh) process."""
    sys.path.insert(0, str(ROOT))
    import torch

    import models

    torch.manual_seed(0)
    if detector:
        net = models.build_detector(model_name)
        net.backbone.set_grad_checkpointing(checkpointing)
    else:
        net = models.create_backbone(model_name, features_only=False, num_classes=2)
        net.set_grad_checkpointing(checkpointing)
    net.train()
    images = torch.randn(batch, 3, size, size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    for _ in range(steps):
        saved = 0
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = net(images)
            loss = sum(o.float().pow(2).mean() for o in out) if isinstance(out, (tuple, list)) else out.pow(2).mean()
        loss.backward()
        net.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"model": model_name, "detector": detector, "batch": batch, "size": size, "checkpointing": checkpointing,
            "rss_before_mib": before / 1024, "peak_rss_mib": peak / 1024, "step_rss_mib": (peak - before) / 1024,
            "saved_activations_mib": saved / 2**20, "threads": torch.get_num_threads(), "torch": torch.__version__}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="R11_V2_HS", help="backbone (default: R11_V2_HS)")
    parser.add_argument("--batch", type=int, default=8, help="images per step (default: 8)")
    parser.add_argument("--size", type=int, default=640, help="square input side in px (default: 640)")
    parser.add_argument("--steps", type=int, default=2, help="training steps per configuration (default: 2)")
    parser.add_argument("--detector", action="store_true",
                        help="measure the whole RetinaFace detector (checkpointing in its backbone) instead of the "
                             "backbone with a small classifier (default: backbone)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per configuration (default: 2)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here (default: none)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(_child(args.model, args.batch, args.size, args.child == "on", args.detector, args.steps)))
        return
    rows = []
    for mode in ("off", "on"):
        cmd = [sys.executable, __file__, "--child", mode, "--model", args.model, "--batch", str(args.batch), "--size",
               str(args.size), "--steps", str(args.steps), "--threads", str(args.threads)]
        cmd += ["--detector"] if args.detector else []
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"grad checkpointing {mode:>3}: peak RSS {row['peak_rss_mib']:.0f} MiB, training step "
              f"+{row['step_rss_mib']:.0f} MiB over model and input, activations kept for backward "
              f"{row['saved_activations_mib']:.0f} MiB")
    what = "RetinaFace + " + args.model if args.detector else args.model + " backbone"
    print(f"\n{what}, batch {args.batch}, {args.size}x{args.size}, CPU, {args.threads} threads, "
          f"{time.strftime('%Y-%m-%d')}, {platform.node()}, {platform.processor() or platform.machine()}, torch "
          f"{rows[0]['torch']}")
    print("| grad checkpointing | peak RSS (MiB) | step over model + input (MiB) | saved activations (MiB) |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {'on' if row['checkpointing'] else 'off'} | {row['peak_rss_mib']:.0f} | {row['step_rss_mib']:.0f} "
              f"| {row['saved_activations_mib']:.0f} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "rows": rows},
                                        indent=2))


if __name__ == "__main__":
    main()
