"""Export a FaceNAS backbone or RetinaFace detector to ONNX, checked in ONNX Runtime against PyTorch.

The source is a registered name or thesis spelling (``R12_V3_HS``, ``mobile0.25``, ``resnet50``; random weights), an
architecture file (``arch.json``; random weights) or a ``train.py`` checkpoint. What is written is the deploy form
(BatchNorm folded), with dynamic batch, height and width unless ``--static``:

* ``--what detector`` (default): outputs ``boxes`` (B, P, 4) and ``landmarks`` (B, P, 10) in input pixels and
  ``scores`` (B, P), the priors decoded in the graph; with ``--nms`` one output ``detections`` (N, 16): image index,
  x1 y1 x2 y2, score, 10 landmark coordinates, after top-k, score threshold, NMS and keep-top-k per image;
* ``--what backbone``: the three FPN inputs ``feat_s8``, ``feat_s16``, ``feat_s32``.

The input ``images`` is float32 NCHW, OpenCV BGR minus (104, 117, 123). Before anything is written the file runs in
ONNX Runtime on three input shapes and is compared with the PyTorch model; the largest difference is printed, and a
difference above ``--tolerance`` is an error (nothing is written). ``evaluate.py --checkpoint model.onnx`` and
``tools/detect.py --checkpoint model.onnx`` run a detector export. Deployment notes: docs/DEPLOY.md.

Examples:
    python export.py --checkpoint runs/facenas_r12_v3_hs/last.pth                # detector next to the checkpoint
    python export.py --model R12_V3_HS --what backbone --size 320 320 --out r12_backbone.onnx
    python export.py --checkpoint runs/x/last.pth --nms --static --size 320 320  # fixed shape, NMS in the graph
    python export.py --checkpoint runs/x/last.pth --int8                         # INT8 for ONNX Runtime
    python export.py --checkpoint runs/x/last.pth --format ncnn                  # ncnn .param/.bin (+ .json)

With ``--int8`` the checked float graph is quantized after training (static, QDQ; :mod:`deploy.quantize`) with
activation ranges from ``--calibration-images`` training images, and checked against PyTorch again with the looser
``--int8-tolerance``; measure what INT8 costs in accuracy with ``evaluate.py --checkpoint FILE_int8.onnx``.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from utils.errors import FaceNASError, run_cli


def build_parser() -> argparse.ArgumentParser:
    """The command line; every option states its default."""
    parser = argparse.ArgumentParser(prog="export.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", metavar="NAME|ARCH.json", default=None,
                        help="registered name, thesis spelling or architecture file, exported with random weights "
                             "(default: none; give --model or --checkpoint)")
    source.add_argument("--checkpoint", metavar="CKPT", default=None,
                        help="train.py checkpoint (default: none; give --model or --checkpoint)")
    parser.add_argument("--format", choices=("onnx", "ncnn"), default="onnx",
                        help="onnx: one .onnx file (ONNX Runtime, OpenVINO, TensorRT); ncnn: the .ncnn.param / "
                             ".ncnn.bin pair converted by pnnx (fp32 weights) plus a .ncnn.json, the detector up to "
                             "its head convolutions, size-generic; needs pip install ncnn pnnx (default: onnx)")
    parser.add_argument("--what", choices=("detector", "backbone"), default="detector",
                        help="the whole detector with prior decoding, or the backbone's three feature maps "
                             "(default: detector)")
    parser.add_argument("--out", metavar="FILE.onnx", default=None,
                        help="output file (default: CKPT_DIR/CKPT_STEM_WHAT[_nms][_int8].onnx for a checkpoint, "
                             "runs/exports/NAME_WHAT[_nms][_int8].onnx for --model)")
    parser.add_argument("--size", type=int, nargs=2, default=(640, 640), metavar=("H", "W"),
                        help="input height and width of the trace (with --static: the only size) (default: 640 640)")
    parser.add_argument("--batch", type=int, default=1,
                        help="batch of the trace (with --static: the only batch) (default: 1)")
    parser.add_argument("--static", action="store_true",
                        help="fixed batch, height and width instead of dynamic ones (default: off, all dynamic)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")
    parser.add_argument("--fpn-channels", type=int, default=None,
                        help="FPN / SSH width for --model (default: 256 for backbones with >= 1024 channels, else "
                             "64; a checkpoint keeps its own)")

    group = parser.add_argument_group("NMS in the graph (--what detector --nms)")
    group.add_argument("--nms", action="store_true",
                       help="put top-k, score threshold, NMS and keep-top-k into the graph (default: off; the graph "
                            "ends with decoded boxes, scores and landmarks)")
    group.add_argument("--score-threshold", type=float, default=0.02, help="minimum score kept (default: 0.02)")
    group.add_argument("--nms-threshold", type=float, default=0.4, help="NMS IoU threshold (default: 0.4)")
    group.add_argument("--top-k", type=int, default=5000, help="candidates per image before NMS (default: 5000)")
    group.add_argument("--keep-top-k", type=int, default=750, help="detections per image after NMS (default: 750)")

    group = parser.add_argument_group("INT8 (--int8): post-training static quantization for ONNX Runtime")
    group.add_argument("--int8", action="store_true",
                       help="write the network quantized to INT8 (QDQ, int8 per-channel weights, uint8 activations, "
                            "ranges calibrated on training images) instead of float32; the float export is checked "
                            "first, then the INT8 one against PyTorch (default: off)")
    group.add_argument("--calibration-images", type=int, default=64,
                       help="training images the activation ranges are calibrated on (default: 64)")
    group.add_argument("--calibration-method", choices=("minmax", "entropy", "percentile"), default="entropy",
                       help="how ranges are taken from the calibration activations; entropy and percentile resize "
                            "the calibration images to --size, minmax takes them at their own size (default: "
                            "entropy: on mobile0.25 it lost 0.7-1.5 AP points where minmax lost 3.7-3.8; on "
                            "R12_V3_HS the two are within a point, BENCHMARKS.md section I)")
    group.add_argument("--int8-keep-float", nargs="*", default=[], metavar="NODES",
                       help="nodes left in float: 'first' (the first convolution), 'heads' (class, box and landmark "
                            "heads), 'decode' (the prior decoding) or substrings of node names (default: none; a "
                            "detector's prior decoding always stays in float: pixel coordinates on an 8-bit grid "
                            "cost the small faces)")
    group.add_argument("--data-root", default=None,
                       help="dataset whose train/images calibrate INT8 (default: the built-in synthetic dataset)")
    group.add_argument("--int8-tolerance", type=float, default=0.1,
                       help="largest allowed scaled |INT8 - PyTorch| of any output; INT8 is never exact, this only "
                            "catches a quantization that broke the network (its AP is what evaluate.py measures) "
                            "(default: 0.1)")

    group = parser.add_argument_group("The check in ONNX Runtime")
    group.add_argument("--check-shapes", nargs="+", metavar="BxHxW", default=None,
                       help="input shapes to compare on, e.g. 1x640x640 2x480x320 (default: three shapes around "
                            "--size, batch 1 and 2; with --static --size three times, with different inputs)")
    group.add_argument("--tolerance", type=float, default=1e-4,
                       help="largest allowed |ONNX - PyTorch| / max(1, largest |PyTorch value|) of any output "
                            "(default: 1e-4)")
    group.add_argument("--threads", type=int, default=None,
                       help="ONNX Runtime and PyTorch threads for the check (default: PyTorch's current setting)")
    return parser


def default_check_shapes(batch: int, height: int, width: int, static: bool) -> list[tuple[int, int, int, int]]:
    """Three input shapes for the check: the trace shape, a smaller non-square batch of two and an odd size."""
    if static:
        return [(batch, 3, height, width)] * 3

    def multiple_of_32(value: float) -> int:
        return max(32, round(value / 32) * 32)

    def odd(value: int) -> int:
        return max(33, value if value % 2 else value + 1)

    return [(batch, 3, height, width), (2, 3, multiple_of_32(height / 2), multiple_of_32(width * 0.75)),
            (1, 3, odd(height * 3 // 4), odd(width // 2))]


def parse_shape(text: str) -> tuple[int, int, int, int]:
    """``BxHxW`` (or ``HxW`` for batch 1) -> ``(B, 3, H, W)``."""
    match = re.fullmatch(r"(?:(\d+)x)?(\d+)x(\d+)", text.strip())
    if not match or min(int(v) for v in match.groups(default="1")) < 1:
        raise FaceNASError(f"--check-shapes: {text!r} is not BxHxW or HxW with positive integers (e.g. 2x480x320)")
    batch, height, width = (int(v) for v in match.groups(default="1"))
    return batch, 3, height, width


def default_out(args: argparse.Namespace, name: str) -> Path:
    """Where the file goes without ``--out`` (for ncnn: the ``.ncnn.param``; the other files share its stem)."""
    ending = ".ncnn.param" if getattr(args, "format", "onnx") == "ncnn" else ".onnx"
    suffix = f"_{args.what}" + ("_nms" if args.nms else "") + ("_int8" if args.int8 else "") + ending
    if args.checkpoint is not None:
        checkpoint = Path(args.checkpoint)
        return checkpoint.with_name(checkpoint.stem + suffix)
    stem = Path(name).stem if name.endswith(".json") else re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    return Path("runs") / "exports" / (stem + suffix)


def load_source(args: argparse.Namespace):
    """The PyTorch model to export (eval mode) and a description: ``(model, name, where the weights come from)``."""
    import models

    if args.checkpoint is not None:
        from engine.checkpoint import load_detector

        detector, ckpt = load_detector(args.checkpoint, "cpu")
        weights = f"{args.checkpoint} (epoch {int(ckpt['epoch']) + 1})"
        name = str(ckpt.get("model"))
    else:
        if Path(args.model).suffix in (".pth", ".pt", ".ckpt"):
            raise FaceNASError(f"{args.model}: looks like a checkpoint; give it with --checkpoint")
        if args.fpn_channels is not None and (args.fpn_channels < 4 or args.fpn_channels % 4):
            raise FaceNASError(f"--fpn-channels must be a positive multiple of 4, got {args.fpn_channels}")
        if args.what == "backbone":
            return models.create_backbone(args.model).eval(), str(args.model), "random weights"
        detector = models.build_detector(args.model, fpn_channels=args.fpn_channels)
        weights, name = "random weights", str(args.model)
    model = detector.backbone if args.what == "backbone" else detector
    return model.eval(), name, weights


def main(argv: list[str] | None = None) -> int:
    """Export, check in ONNX Runtime, then write."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.nms and args.what != "detector":
        parser.error("--nms needs --what detector")
    if args.format == "ncnn" and (args.what != "detector" or args.nms or args.int8):
        parser.error("--format ncnn writes the detector without NMS in float32 (ncnn ports run NMS in their own "
                     "code, and the ncnn pip packages have no INT8 calibration tools): drop --what backbone / --nms "
                     "/ --int8")
    if args.checkpoint is not None and args.fpn_channels is not None:
        parser.error("--fpn-channels is for --model; a checkpoint keeps the FPN width it was trained with")
    if min(args.size) < 1 or args.batch < 1:
        raise FaceNASError(f"--size and --batch must be positive, got {list(args.size)} and {args.batch}")
    if args.opset < 11:
        raise FaceNASError(f"--opset must be >= 11 (NMS, dynamic resize), got {args.opset}")
    if not args.tolerance > 0:
        raise FaceNASError(f"--tolerance must be > 0, got {args.tolerance}")
    if args.int8 and (args.calibration_images < 1 or not args.int8_tolerance > 0):
        raise FaceNASError(f"--calibration-images must be >= 1 and --int8-tolerance > 0, got "
                           f"{args.calibration_images} and {args.int8_tolerance}")
    if (args.int8_keep_float or args.data_root) and not args.int8:
        parser.error("--int8-keep-float and --data-root calibrate INT8: add --int8")
    if args.threads is not None and args.threads < 1:
        raise FaceNASError(f"--threads must be >= 1, got {args.threads}")
    shapes = [parse_shape(text) for text in args.check_shapes] if args.check_shapes else \
        default_check_shapes(args.batch, args.size[0], args.size[1], args.static)
    trace = (args.batch, 3, args.size[0], args.size[1])
    if args.static and any(shape != trace for shape in shapes):
        raise FaceNASError(f"--static fixes the input at {list(trace)}; --check-shapes must all be that shape")

    import torch

    from deploy.onnx_export import NmsSettings, check_onnx, check_summary, export_onnx, largest_difference
    from utils.atomic import atomic_write

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = NmsSettings(args.score_threshold, args.nms_threshold, args.top_k, args.keep_top_k).validate() \
        if args.nms else None
    model, name, weights = load_source(args)
    out = Path(args.out) if args.out else default_out(args, name)
    if args.format == "ncnn":
        return write_ncnn(args, model, name, weights, out, trace, shapes)
    data = export_onnx(model, args.what, trace, dynamic=not args.static, nms_settings=settings, opset=args.opset,
                       model_name=name, metadata={"weights": weights})
    print(f"{name} {args.what}{' with NMS' if settings else ''} ({weights}), deploy form (BatchNorm folded), "
          f"opset {args.opset}, {'static ' + 'x'.join(map(str, trace)) if args.static else 'dynamic batch/H/W'}: "
          f"{len(data) / 2**20:.1f} MiB")
    rows = check_onnx(data, model, args.what, shapes, settings, args.tolerance, threads=args.threads)
    print("ONNX Runtime against PyTorch (eval mode, BatchNorm not folded), image-like inputs:")
    print(check_summary(rows))
    worst = largest_difference(rows)
    summary = (f"largest difference {worst['max_abs_diff']:.3e} ({worst['output']}, input "
               f"{'x'.join(map(str, worst['input']))}; scaled {worst['scaled_diff']:.2e}, tolerance "
               f"{args.tolerance:g})")
    failed = [row for row in rows if not row["ok"]]
    if failed:
        first = failed[0]
        what = first.get("note") or (f"max |ONNX - PyTorch| {first['max_abs_diff']:.3e}, scaled "
                                     f"{first['scaled_diff']:.2e} > tolerance {args.tolerance:g}")
        raise FaceNASError(f"the ONNX export does not match PyTorch: {first['output']} on input "
                           f"{'x'.join(map(str, first['input']))}: {what}; nothing written to {out}")
    if args.int8:
        data, summary = quantize_and_check(args, model, name, data, trace, shapes, settings)
    atomic_write(out, lambda handle: handle.write(data))
    print(f"{summary}; wrote {out}")
    return 0


def write_ncnn(args: argparse.Namespace, model, name: str, weights: str, out: Path, trace: tuple[int, ...],
               shapes: list[tuple[int, int, int, int]]) -> int:
    """Convert with pnnx into a scratch folder, check in ncnn against PyTorch, then move the three files in place."""
    import shutil
    import tempfile

    from deploy.ncnn_export import check_ncnn, export_ncnn
    from deploy.onnx_export import check_summary, largest_difference
    from engine.ncnn_inference import ncnn_files

    param, _ = ncnn_files(out)
    stem = Path(str(param)[:-len(".ncnn.param")])
    with tempfile.TemporaryDirectory(prefix="facenas_ncnn_", dir=stem.parent if stem.parent.is_dir() else None) \
            as folder:
        scratch = Path(folder) / stem.name
        export_ncnn(model, scratch, trace, name, weights, dynamic=not args.static)
        print(f"{name} detector for ncnn ({weights}), deploy form (BatchNorm folded), pnnx fp32 weights, "
              f"{'static ' + 'x'.join(map(str, trace)) if args.static else 'size-generic'}: outputs the 9 head maps")
        rows = check_ncnn(f"{scratch}.ncnn.param", model, shapes, args.tolerance, threads=args.threads)
        print("ncnn against PyTorch (eval mode, BatchNorm not folded), image-like inputs, raw outputs:")
        print(check_summary(rows).replace("ONNX - PyTorch", "ncnn - PyTorch"))
        worst = largest_difference(rows)
        failed = [row for row in rows if not row["ok"]]
        if failed:
            first = failed[0]
            raise FaceNASError(f"the ncnn conversion does not match PyTorch: {first['output']} on input "
                               f"{'x'.join(map(str, first['input']))}: scaled difference {first['scaled_diff']:.2e} > "
                               f"tolerance {args.tolerance:g}; nothing written to {param}")
        stem.parent.mkdir(parents=True, exist_ok=True)
        for ending in (".ncnn.bin", ".ncnn.json", ".ncnn.param"):  # the .param last: its presence means complete
            shutil.move(f"{scratch}{ending}", f"{stem}{ending}")
    print(f"largest difference {worst['max_abs_diff']:.3e} ({worst['output']}, input "
          f"{'x'.join(map(str, worst['input']))}); wrote {stem}.ncnn.param, .ncnn.bin, .ncnn.json")
    return 0


def quantize_and_check(args: argparse.Namespace, model, name: str, data: bytes, trace: tuple[int, ...],
                       shapes: list[tuple[int, int, int, int]], settings) -> tuple[bytes, str]:
    """The checked float export quantized to INT8, and the INT8 check's summary line.

    The check compares the INT8 graph without NMS (the same quantization, NMS only selects) with PyTorch, output
    by output, because an INT8 NMS result differs from the float one by design.
    """
    import json

    import torch

    from deploy.calibration import calibration_batches
    from deploy.onnx_export import check_onnx, check_summary, export_onnx, largest_difference
    from deploy.quantize import CONV_OPS, quantization_settings, quantize_int8

    # histogram calibrators (entropy, percentile) stack their activations: one input size for all images
    fixed = trace[2:] if args.static or args.calibration_method != "minmax" else None
    calibration = calibration_batches(args.data_root, args.calibration_images, fixed)
    # a detector's prior decoding always stays in float: boxes in input pixels on a per-tensor 8-bit grid move by
    # several pixels, which cost R12_V3_HS 3.6 Hard AP points (BENCHMARKS.md section I); it is a few element-wise ops
    keep_float = list(dict.fromkeys((["decode"] if args.what == "detector" else []) + list(args.int8_keep_float)))
    quant = quantization_settings(args.calibration_method, keep_float, "training images",
                                  len(calibration))
    meta = {"facenas.precision": "int8", "facenas.quantization": json.dumps(quant, sort_keys=True)}
    op_types = CONV_OPS if settings is not None else None  # tensors after NMS vary in size: convolutions only
    int8 = quantize_int8(data, calibration, args.calibration_method, keep_float, meta, op_types)
    checked = int8 if settings is None else quantize_int8(
        export_onnx(model, args.what, trace, dynamic=not args.static, opset=args.opset, model_name=name),
        calibration, args.calibration_method, keep_float, op_types=op_types)
    kept = ", ".join(keep_float) or "nothing"
    print(f"INT8: static QDQ, int8 per-channel weights, uint8 activations, {args.calibration_method} ranges from "
          f"{len(calibration)} training images; kept in float: {kept}; {len(int8) / 2**20:.1f} MiB")
    # real images the calibration did not see (random pixels lie outside every calibrated range)
    held_out = calibration_batches(args.data_root, 3, trace[2:] if args.static else None, len(calibration))
    seen = "training images after the calibration ones" if held_out else "calibration images (there are no others)"
    rows = check_onnx(checked, model, args.what, shapes, None, args.int8_tolerance, threads=args.threads,
                      inputs=[torch.from_numpy(x) for x in (held_out or calibration[:3])])
    print(f"INT8 ONNX Runtime against PyTorch on {seen}" + (", the same quantization without NMS" if settings
                                                            else "") + ":")
    print(check_summary(rows))
    worst = largest_difference(rows)
    if not all(row["ok"] for row in rows):
        raise FaceNASError(f"the INT8 export is far from PyTorch: {worst['output']} scaled difference "
                           f"{worst['scaled_diff']:.3f} > --int8-tolerance {args.int8_tolerance:g}; keep layers in "
                           "float (--int8-keep-float first heads) or calibrate on more images; nothing written")
    return int8, (f"INT8 largest difference {worst['max_abs_diff']:.3e} ({worst['output']}, input "
                  f"{'x'.join(map(str, worst['input']))}; scaled {worst['scaled_diff']:.3f}, tolerance "
                  f"{args.int8_tolerance:g}; AP: evaluate.py --checkpoint on the file)")


if __name__ == "__main__":
    run_cli(main)
