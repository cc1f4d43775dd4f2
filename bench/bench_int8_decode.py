"""What keeping a detector's prior decoding in float costs in ONNX Runtime INT8 latency (issue 23).

``export.py --int8`` always leaves the decoding (every node outside ``/detector/``) in float because quantized box
coordinates cost up to 4 Hard AP points (BENCHMARKS.md section I). This bench times the two INT8 graphs of each
detector side by side, interleaved, at one input size and thread count: everything quantized, and the decoding in
float (the default). Weights are random: latency does not depend on their values.

Usage::

    python bench/bench_int8_decode.py --models R12_V3_HS mobilenetv1_0.25 --size 320 --threads 1 \\
        --out bench/results/int8/decode_cost
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.errors import run_cli  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """Command line of the bench."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["R12_V3_HS", "mobilenetv1_0.25"], help="detectors to time")
    parser.add_argument("--size", type=int, default=320, help="square input side in pixels")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--method", default="entropy", help="calibration method (minmax, entropy, percentile)")
    parser.add_argument("--calibration-images", type=int, default=16, help="built-in training images to calibrate")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median of round minima counts)")
    parser.add_argument("--samples", type=int, default=50, help="timed calls per graph and round")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls per graph and round")
    parser.add_argument("--out", type=Path, default=Path("bench/results/int8/decode_cost"),
                        help="writes OUT.json and OUT.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Export, quantize twice, time interleaved, write the report."""
    args = build_parser().parse_args(argv)
    import torch

    import models
    from deploy.calibration import calibration_batches
    from deploy.onnx_export import export_onnx
    from deploy.quantize import quantize_int8
    from latency.measure import machine_meta, measure_interleaved
    from latency.runtimes import build_runtime_module

    torch.manual_seed(0)
    shape = (1, 3, args.size, args.size)
    calibration = calibration_batches(None, args.calibration_images, shape[2:])
    rows = []
    for name in args.models:
        detector = models.build_detector(name).eval()
        data = export_onnx(detector, "detector", shape, dynamic=False, model_name=name)
        graphs = {"fp32": data,
                  "int8, all quantized": quantize_int8(data, calibration, args.method, []),
                  "int8, decode in float": quantize_int8(data, calibration, args.method, ["decode"])}
        # the sessions and the interleaved protocol of the latency tables (ONNX Runtime, estimator min)
        sessions = {label: build_runtime_module(blob, "onnxruntime", args.threads) for label, blob in graphs.items()}
        measured = measure_interleaved(sessions, shape, args.rounds, estimator="min", device="cpu",
                                       warmup=args.warmup, samples=args.samples, threads=args.threads)
        times = {label: result["measured_ms"] for label, result in measured.items()}
        rows.append({"model": name, **{label: round(ms, 4) for label, ms in times.items()},
                     "decode_cost_pct": round(100 * (times["int8, decode in float"] / times["int8, all quantized"]
                                                     - 1), 2)})
        print(rows[-1], flush=True)
    meta = machine_meta("cpu", batch=1, resolution=args.size, threads=args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "settings": vars(args) | {"out": str(args.out)},
                                                         "rows": rows}, indent=1, default=str))
    lines = ["| model | ORT fp32 ms | INT8, all quantized ms | INT8, decode in float ms | cost of float decode |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['fp32']:.3f} | {r['int8, all quantized']:.3f} | {r['int8, decode in float']:.3f} "
              f"| {r['decode_cost_pct']:+.1f}% |" for r in rows]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main()))
