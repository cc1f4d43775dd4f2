"""Benchmark (not a timing one): every registered backbone and three detectors exported to ONNX with dynamic
batch / height / width, run in ONNX Runtime on three input shapes and compared with PyTorch.

Backbones: the three FPN feature maps of every ``facenas_*`` network and timm's ResNet-50 baseline. Detectors
(mobile0.25, R12_V3_HS, TT3_NoSE): decoded outputs (boxes, scores, landmarks in pixels) and the export with NMS in
the graph. Random weights (no weights are shipped), deploy form (BatchNorm folded) exported, compared with the eval-mode
training form on image-like inputs (uniform 0..255 BGR minus the mean). Prints one row per export with the largest
absolute difference on each shape; ``scaled`` divides it by max(1, largest |PyTorch value|), the quantity
``--tolerance`` bounds (as ``export.py`` does). Exit status 1 when any export fails its check.

    python bench/bench_export.py                                   # all, trace 320x320, the three default shapes
    python bench/bench_export.py --backbones facenas_r12_v3_hs --detectors mobile0.25 --shapes 1x64x64 2x96x64
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import timm  # noqa: E402
import torch  # noqa: E402

import models  # noqa: E402  (registers the facenas_* models)
from deploy.onnx_export import NmsSettings, check_onnx, export_onnx, largest_difference  # noqa: E402
from export import parse_shape  # noqa: E402
from latency.measure import cpu_model  # noqa: E402
from utils.atomic import atomic_write_json, atomic_write_text  # noqa: E402
from utils.errors import run_cli  # noqa: E402
from utils.progress import Progress  # noqa: E402

DETECTORS = ("mobile0.25", "R12_V3_HS", "TT3_NoSE")
SHAPES = ("1x320x320", "2x256x384", "1x241x161")


def registered_backbones() -> list[str]:
    """Every registered FaceNAS network and the ResNet-50 baseline."""
    return [name for name in timm.list_models("facenas_*") if name != "facenas_arch"] + ["resnet50"]


def run_one(name: str, kind: str, nms: bool, trace: tuple[int, ...], shapes: list[tuple[int, ...]],
            tolerance: float) -> dict:
    """Export one network and check it; returns the report row."""
    torch.manual_seed(0)
    model = (models.create_backbone(name) if kind == "backbone" else models.build_detector(name)).eval()
    settings = NmsSettings() if nms else None
    started = time.perf_counter()
    data = export_onnx(model, kind, trace, dynamic=True, nms_settings=settings, model_name=name)
    export_s = time.perf_counter() - started
    rows = check_onnx(data, model, kind, shapes, settings, tolerance)
    per_shape = {}
    for row in rows:
        key = "x".join(str(v) for v in (row["input"][0], *row["input"][2:]))
        previous = per_shape.get(key)
        if previous is None or row["max_abs_diff"] > previous["max_abs_diff"]:
            per_shape[key] = row
    worst = largest_difference(rows)
    return {"name": name, "kind": kind + (" + NMS" if nms else ""), "mib": round(len(data) / 2**20, 2),
            "export_s": round(export_s, 2), "ok": all(row["ok"] for row in rows),
            "max_abs_diff": worst["max_abs_diff"], "scaled_diff": worst["scaled_diff"],
            "per_shape": {key: {"output": row["output"], "max_abs_diff": row["max_abs_diff"],
                                "scaled_diff": row["scaled_diff"], "ok": row["ok"],
                                **({"agreement": row["agreement"]} if "agreement" in row else {})}
                          for key, row in per_shape.items()},
            "rows": rows}


def markdown(results: list[dict], shapes: list[str], header: dict) -> str:
    lines = [f"# ONNX export check ({header['date']})", "",
             f"{header['cpu']}, torch {header['torch']}, onnxruntime {header['onnxruntime']}, trace "
             f"{header['trace']}, dynamic batch/H/W, deploy form exported, tolerance {header['tolerance']:g} "
             "(scaled difference). Cells: largest |ONNX Runtime - PyTorch| over the outputs on that input "
             "(B x H x W); NMS rows: largest difference of a detection from its PyTorch candidate, and the share of "
             "PyTorch's own NMS detections found.", "",
             "| network | export | MiB | " + " | ".join(shapes) + " | scaled max | check |",
             "|---|---|---:|" + "---:|" * len(shapes) + "---:|---|"]
    for result in results:
        cells = []
        for shape in shapes:
            cell = result["per_shape"].get(shape)
            text = f"{cell['max_abs_diff']:.2e}" if cell else "-"
            if cell and "agreement" in cell:
                text += f" ({100 * cell['agreement']:.0f}%)"
            cells.append(text)
        lines.append(f"| {result['name']} | {result['kind']} | {result['mib']} | " + " | ".join(cells) +
                     f" | {result['scaled_diff']:.1e} | {'ok' if result['ok'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="*", default=None,
                        help="backbones to export (default: every registered facenas_* network and resnet50)")
    parser.add_argument("--detectors", nargs="*", default=list(DETECTORS),
                        help=f"detectors, each exported plain and with NMS (default: {' '.join(DETECTORS)})")
    parser.add_argument("--size", type=int, default=320, help="side of the trace input (default: 320)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), metavar="BxHxW",
                        help=f"check inputs (default: {' '.join(SHAPES)})")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest allowed scaled difference (default: 1e-4)")
    parser.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime threads (default: torch's)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "export_cpu"),
                        help="writes OUT.json and OUT.md (default: bench/results/export_cpu)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import onnxruntime

    shapes = [parse_shape(text) for text in args.shapes]
    shape_keys = ["x".join(str(v) for v in (s[0], *s[2:])) for s in shapes]
    backbones = registered_backbones() if args.backbones is None else args.backbones
    jobs = [(name, "backbone", False) for name in backbones]
    jobs += [(name, "detector", nms) for name in args.detectors for nms in (False, True)]
    trace = (1, 3, args.size, args.size)
    results = []
    bar = Progress(len(jobs), "export + check", "export")
    for name, kind, nms in jobs:
        result = run_one(name, kind, nms, trace, shapes, args.tolerance)
        results.append(result)
        bar.update(1, text=f"{name} {result['kind']}: {result['scaled_diff']:.1e}")
    bar.close()
    header = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
              "trace": "x".join(map(str, trace)), "shapes": shape_keys, "tolerance": args.tolerance}
    text = markdown(results, shape_keys, header)
    print(text)
    atomic_write_json(args.out + ".json", {**header, "results": results})
    atomic_write_text(args.out + ".md", text)
    failed = [f"{r['name']} {r['kind']}" for r in results if not r["ok"]]
    print(f"{len(results) - len(failed)} of {len(results)} exports match PyTorch within {args.tolerance:g}"
          + (f"; FAILED: {', '.join(failed)}" if failed else "") + f"; wrote {args.out}.json and .md")
    return 1 if failed else 0


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main()))
