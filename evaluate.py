"""Evaluate a face detector on WIDER FACE val: Easy / Medium / Hard AP with the official protocol.

Modes:

* ``--pred-dir P``: score a folder of prediction files (``PRED/<event>/<name>.txt``, the official format) against
  the ground-truth ``.mat`` files. Without ``--gt-dir`` the ground truth of ``--data-root`` is used, and without
  ``--data-root`` that of the built-in synthetic dataset.
* ``--checkpoint CKPT``: first run a train.py checkpoint over the val images of ``--data-root`` with the SPEC section
  8 test settings (original size unless ``--test-size``; score > 0.02, top-k 5000, NMS 0.4, keep 750), write one
  prediction file per image into ``--pred-dir`` (default: next to the checkpoint), then score it as above.
* ``--latency``: time the backbone of ``--checkpoint`` or ``--model`` in deploy form (BatchNorm folded) at
  ``--latency-shape B H W`` with the latency-table protocol, printed as ``[B, H, W] on <device>`` like the thesis.

Examples:
    python evaluate.py --pred-dir runs/x/widerface_txt --gt-dir /data/widerface/ground_truth --json ap.json
    python evaluate.py --pred-dir runs/a/widerface_val --pred-dir runs/b/widerface_val --plot pr.png  # overlaid
    python evaluate.py --checkpoint runs/facenas_r12_v3_hs/last.pth --data-root /data/widerface --json ap.json
    python evaluate.py --latency --model R12_V3_HS --latency-shape 1 320 320 --threads 4

The script is a thin shell: :func:`evaluate_from_folders`, :func:`evaluate_checkpoint` and
:func:`measure_backbone_latency` do the work and are importable; :func:`main` parses the arguments and dispatches.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from utils.atomic import atomic_write_json
from utils.errors import FaceNASError, run_cli
from utils.options import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    PROBABILITY,
    OptionParser,
    check_output_dir,
    check_output_file,
    float_range,
    int_range,
)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface; every option states its default."""
    parser = OptionParser(
        prog="evaluate.py",
        description="WIDER FACE val evaluation (official protocol): prints Easy, Medium and Hard AP (%) and their "
                    "mean.",
        epilog="Layout of --data-root and the protocol details: docs/DATA.md.",
    )
    parser.add_argument("--pred-dir", metavar="DIR", action="append", default=None,
                        help="folder of prediction files <event>/<name>.txt (name line, count line, then 'x y w h "
                             "score' lines); a val image without a file counts as zero detections. Repeat it to "
                             "compare folders: each is scored, and --plot overlays their curves as the official "
                             "toolbox does. With --checkpoint (one folder) it is where the predictions are written "
                             "(default: required, except with --checkpoint (CKPT_DIR/widerface_val[_sSIZE]) or "
                             "--latency alone)")
    parser.add_argument("--label", metavar="NAME", action="append", default=None,
                        help="legend name of each --pred-dir, in the same order (default: the model's run folder, "
                             "i.e. the parent of a widerface_val* folder, else the folder name; with --checkpoint "
                             "the checkpoint's model)")
    parser.add_argument("--gt-dir", metavar="DIR", default=None,
                        help="folder holding wider_face_val.mat and wider_{easy,medium,hard}_val.mat (default: "
                             "DATA_ROOT/ground_truth)")
    parser.add_argument("--data-root", metavar="DIR", default=None,
                        help="dataset root in the layout of docs/DATA.md, used for the default --gt-dir (default: the "
                             "built-in synthetic dataset, generated on first use under $FACENAS_CACHE or "
                             "~/.cache/facenas)")
    parser.add_argument("--iou", type=float_range(0, 1, low_open=True), default=0.5, metavar="T",
                        help="IoU threshold for a match; the protocol uses 0.5 (default: 0.5)")
    parser.add_argument("--keep-file-order", action="store_true",
                        help="score boxes in file order even where a prediction file is not sorted by descending "
                             "score, exactly as the official tools do (default: sort such files first and warn)")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write easy, medium, hard and mean AP (fractions 0..1) to this JSON file; with "
                             "several --pred-dir, one such entry per folder under \"folders\" (default: none)")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="also plot the precision-recall curves to this PNG: one panel per setting (Easy, "
                             "Medium, Hard), one curve per folder, titled by the model(s) (default: none)")

    group = parser.add_argument_group("Run a checkpoint first (--checkpoint)")
    group.add_argument("--checkpoint", metavar="CKPT", default=None,
                       help="train.py checkpoint, or a detector exported by export.py (.onnx, float or --int8, run "
                            "in ONNX Runtime; .ncnn.param, run in ncnn) with the same pre- and post-processing, to "
                            "run over the val images of --data-root (default: none)")
    group.add_argument("--test-size", type=int_range(32, also=(0,)), default=0, metavar="PX",
                       help="test scale: short side in pixels with the long side capped at --test-max-size; 0 = "
                            "original size, as in the thesis (default: 0)")
    group.add_argument("--test-max-size", type=POSITIVE_INT, default=2150, metavar="PX",
                       help="cap on the long side when --test-size is set (default: 2150, the reference's)")
    group.add_argument("--score-threshold", type=PROBABILITY, default=0.02,
                       help="minimum score kept (default: 0.02)")
    group.add_argument("--nms", type=PROBABILITY, default=0.4, help="NMS IoU threshold (default: 0.4)")
    group.add_argument("--top-k", type=POSITIVE_INT, default=5000, help="candidates kept before NMS (default: 5000)")
    group.add_argument("--keep-top-k", type=POSITIVE_INT, default=750,
                       help="detections kept after NMS (default: 750)")
    group.add_argument("--device", default="auto",
                       help="where the checkpoint runs: auto, cpu, cuda or cuda:N (default: auto)")

    group = parser.add_argument_group("Backbone latency (--latency)")
    group.add_argument("--latency", action="store_true",
                       help="measure the backbone latency of --checkpoint or --model (default: off)")
    group.add_argument("--model", default=None,
                       help="backbone for --latency without a checkpoint: registry name, thesis spelling "
                            "(R12_V3_HS, mobile0.25, resnet50) or arch .json (default: none)")
    group.add_argument("--latency-shape", type=POSITIVE_INT, nargs=3, default=(1, 640, 640), metavar=("B", "H", "W"),
                       help="input batch, height and width; the thesis used 1 320 320 (Raspberry Pi 4), 1 640 640 "
                            "(Jetson Nano) and 8 640 640 (DGX-1) (default: 1 640 640)")
    group.add_argument("--latency-device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    group.add_argument("--threads", type=POSITIVE_INT, default=None,
                       help="CPU threads while timing (default: PyTorch's current setting)")
    group.add_argument("--warmup", type=NON_NEGATIVE_INT, default=None,
                       help="untimed calls (default: the protocol's, 20 on CPU, 40 on GPU)")
    group.add_argument("--samples", type=POSITIVE_INT, default=None,
                       help="timed calls (default: the protocol's, 50 on CPU, 200 on GPU)")
    return parser


def resolve_gt_dir(gt_dir: str | os.PathLike | None, data_root: str | os.PathLike | None) -> Path:
    """The ground-truth folder: ``gt_dir``, else ``data_root/ground_truth``, else the built-in dataset's."""
    if gt_dir is not None:
        return Path(gt_dir)
    if data_root is None:
        from data.synthetic import ensure_builtin_dataset

        data_root = ensure_builtin_dataset()
    return Path(data_root) / "ground_truth"


def default_label(pred_dir: str | os.PathLike) -> str:
    """Legend name of a prediction folder: its run folder for ``RUN/widerface_val*`` (what train.py and
    ``--checkpoint`` write, the run folder being named after the model), else the folder's own name."""
    path = Path(pred_dir).resolve()
    return path.parent.name if path.name.startswith("widerface_val") and path.parent.name else path.name


def evaluate_from_folders(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, iou: float = 0.5,
                          json_path: str | os.PathLike | None = None,
                          plot_path: str | os.PathLike | None = None, label: str | None = None,
                          title: str | None = None, keep_file_order: bool = False) -> dict:
    """Score a prediction folder, print the AP table and optionally write JSON and a PR-curve plot.

    Args:
        pred_dir: Folder of ``<event>/<name>.txt`` prediction files.
        gt_dir: Folder of the four official ``.mat`` files.
        iou: Match threshold.
        json_path: Where to write ``{"easy", "medium", "hard", "mean", ...}`` (fractions).
        plot_path: Where to write the PR-curve PNG.
        label: the folder's legend name (default :func:`default_label`).
        title: the plot's title (default: WIDER FACE val and the label).
        keep_file_order: Score boxes in file order even in files not sorted by descending score (the official
            tools' behaviour); by default such files are sorted first, with a warning.

    Returns:
        The result of :func:`data.wider_eval.evaluate_folder`.

    Raises:
        FaceNASError: On a missing folder, bad ground truth or a malformed prediction file.
    """
    from data.wider_eval import plot_pr_curves

    for path, what in ((json_path, "--json"), (plot_path, "--plot")):
        if path is not None:
            check_output_file(path, what)
    result = _score_folder(pred_dir, gt_dir, iou, keep_file_order)
    if json_path is not None:
        atomic_write_json(json_path, _json_entry(result, pred_dir, gt_dir, iou))
    if plot_path is not None:
        label = label or default_label(pred_dir)
        plot_pr_curves([(label, result)], plot_path, title=title or f"WIDER FACE val: {label} (IoU {iou:g})")
    return result


def compare_folders(pred_dirs: list[str | os.PathLike], gt_dir: str | os.PathLike, iou: float = 0.5,
                    labels: list[str] | None = None, json_path: str | os.PathLike | None = None,
                    plot_path: str | os.PathLike | None = None, keep_file_order: bool = False) -> list[dict]:
    """Score several prediction folders against one ground truth and overlay their PR curves (one per folder).

    Args:
        pred_dirs: the folders, e.g. one per model.
        gt_dir, iou, keep_file_order: as :func:`evaluate_from_folders`.
        labels: legend names, one per folder (default :func:`default_label` of each).
        json_path: ``{"folders": [entry, ...]}``, each entry as the single-folder JSON plus ``label``.
        plot_path: the overlaid PR curves, titled by the labels (the models).

    Returns:
        The results, in the order of ``pred_dirs``.
    """
    from data.wider_eval import plot_pr_curves

    labels = list(labels) if labels else [default_label(p) for p in pred_dirs]
    if len(labels) != len(pred_dirs):
        raise FaceNASError(f"{len(labels)} --label value(s) for {len(pred_dirs)} --pred-dir folder(s); give one "
                           "label per folder, in the same order")
    if len(set(labels)) != len(labels):
        raise FaceNASError(f"the folders need distinct legend names, got {', '.join(labels)}; name them with --label")
    for path, what in ((json_path, "--json"), (plot_path, "--plot")):
        if path is not None:
            check_output_file(path, what)
    results = [_score_folder(p, gt_dir, iou, keep_file_order) for p in pred_dirs]
    if json_path is not None:
        atomic_write_json(json_path, {"folders": [{"label": label, **_json_entry(r, p, gt_dir, iou)}
                                                  for label, r, p in zip(labels, results, pred_dirs)]})
    if plot_path is not None:
        plot_pr_curves(list(zip(labels, results)), plot_path,
                       title=f"WIDER FACE val: {' vs '.join(labels)} (IoU {iou:g})")
    return results


def _score_folder(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, iou: float,
                  keep_file_order: bool = False) -> dict:
    """Evaluate one folder and print its AP table (warnings on stderr)."""
    from data.wider_eval import SETTINGS, evaluate_folder

    if not 0 < iou <= 1:
        raise FaceNASError(f"--iou must be in (0, 1], got {iou}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_folder(pred_dir, gt_dir, iou_thresh=iou, sort_boxes=not keep_file_order)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    print(f"WIDER FACE val AP (IoU {iou:g}) for {pred_dir} against {gt_dir}:")
    for setting in SETTINGS:
        print(f"  {setting.capitalize():<7}{100 * result[setting]:6.2f} %   ({result['face_counts'][setting]} faces)")
    print(f"  {'Mean':<7}{100 * result['mean']:6.2f} %")
    return result


def _json_entry(result: dict, pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, iou: float) -> dict:
    from data.wider_eval import SETTINGS

    return {
        **{setting: result[setting] for setting in SETTINGS},
        "mean": result["mean"],
        "iou": iou,
        "images": result["num_images"],
        "missing_predictions": result["missing"],
        "faces": result["face_counts"],
        "pred_dir": str(pred_dir),
        "gt_dir": str(gt_dir),
    }


def default_pred_dir(checkpoint: str | os.PathLike, test_size: int = 0) -> Path:
    """Where ``--checkpoint`` mode writes predictions by default: ``CKPT_DIR/widerface_val[_sSIZE]``, for an ONNX
    export ``DIR/STEM_widerface_val[_sSIZE]`` (so it never replaces the checkpoint's own predictions)."""
    suffix = f"_s{test_size}" if test_size else ""
    path = Path(checkpoint).resolve()
    if path.name.endswith(".ncnn.param"):
        return path.parent / f"{path.name[:-len('.ncnn.param')]}_ncnn_widerface_val{suffix}"
    prefix = f"{path.stem}_" if path.suffix.lower() == ".onnx" else ""
    return path.parent / f"{prefix}widerface_val{suffix}"


def evaluate_checkpoint(checkpoint: str | os.PathLike, data_root: str | os.PathLike | None = None,
                        pred_dir: str | os.PathLike | None = None, gt_dir: str | os.PathLike | None = None,
                        settings: object | None = None, device: str = "auto", iou: float = 0.5,
                        json_path: str | os.PathLike | None = None, plot_path: str | os.PathLike | None = None,
                        progress: bool = True, label: str | None = None, keep_file_order: bool = False) -> dict:
    """Run a checkpoint over the val images, write the official prediction layout, then score it.

    Args:
        checkpoint: a train.py checkpoint, or an ONNX detector written by export.py (``.onnx``, run in ONNX Runtime).
        data_root: dataset root (val images under ``val/images``); default the built-in dataset.
        pred_dir: output folder (default :func:`default_pred_dir`); existing files of the same images are replaced.
        gt_dir: ground-truth folder (default ``DATA_ROOT/ground_truth``).
        settings: ``engine.inference.EvalSettings`` (default: the SPEC section 8 test settings).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        iou, json_path, plot_path, keep_file_order: see :func:`evaluate_from_folders`.
        progress: show a progress bar.
        label: legend name of the PR curves (default: the checkpoint's model).

    Returns:
        The evaluation result (see :func:`evaluate_from_folders`).
    """
    import time

    from data.widerface import WiderFaceValImages
    from engine.distributed import resolve_device
    from engine.inference import EvalSettings, load_inference_model, predict_to_folder

    settings = settings or EvalSettings()
    out = Path(pred_dir) if pred_dir is not None else default_pred_dir(checkpoint, settings.test_size)
    check_output_dir(out, "--pred-dir (predictions are written there)")
    for path, what in ((json_path, "--json"), (plot_path, "--plot")):
        if path is not None:
            check_output_file(path, what)
    if data_root is None:
        from data.synthetic import ensure_builtin_dataset

        data_root = ensure_builtin_dataset()
    gt = resolve_gt_dir(gt_dir, data_root)
    dev = resolve_device(device)
    detector, description = load_inference_model(checkpoint, dev)
    images = WiderFaceValImages(data_root, gt if (gt / "wider_face_val.mat").is_file() else None)
    scale = "original size" if not settings.test_size else f"short side {settings.test_size} px (long side <= " \
                                                           f"{settings.max_size})"
    print(f"{checkpoint}: {description} on {dev}, {len(images)} val images at {scale}, score > "
          f"{settings.score_threshold:g}, NMS {settings.nms_threshold:g} -> {out}")
    started = time.perf_counter()
    written = predict_to_folder(detector, images, out, settings, dev, total=len(images), progress=progress)
    print(f"wrote {written} prediction files in {time.perf_counter() - started:.1f} s")
    return evaluate_from_folders(out, gt, iou=iou, json_path=json_path, plot_path=plot_path,
                                 label=label or description, title=f"WIDER FACE val: RetinaFace + {description} "
                                                                   f"(IoU {iou:g})", keep_file_order=keep_file_order)


def measure_backbone_latency(model: str | None = None, checkpoint: str | os.PathLike | None = None,
                             shape: tuple[int, int, int] = (1, 640, 640), device: str = "cpu",
                             threads: int | None = None, warmup: int | None = None,
                             samples: int | None = None) -> dict:
    """Time a backbone in deploy form (BatchNorm folded) and print ``[B, H, W] on <device>: X ms``.

    Args:
        model: backbone name / thesis spelling / arch file (when no checkpoint).
        checkpoint: take the backbone of this checkpoint instead.
        shape: ``(batch, height, width)``.
        device, threads, warmup, samples: see ``latency.measure.measure_module``.

    Returns:
        The measurement dict (``mean_ms``, ``median_ms``, ``p10_ms``, ``p90_ms``, ``n``, ...) plus ``name``,
        ``shape`` and ``device``.
    """
    import torch

    import models
    from latency.measure import cpu_model, measure_module
    from models import deploy_form

    batch, height, width = shape
    if min(shape) < 1:
        raise FaceNASError(f"--latency-shape must be three positive integers, got {list(shape)}")
    if checkpoint is not None:
        from engine.checkpoint import load_detector

        detector, ckpt = load_detector(checkpoint, "cpu")
        name = str(ckpt.get("model"))
    elif model is not None:
        detector = models.build_detector(model)
        name = str(model)
    else:
        raise FaceNASError("--latency needs --checkpoint or --model")
    backbone = deploy_form(detector.backbone)
    result = measure_module(backbone, (batch, 3, height, width), device=device, warmup=warmup, samples=samples,
                            threads=threads)
    dev = torch.device(device)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{cpu_model()}, {result['threads']} threads"
    print(f"{name} backbone (deploy form): {result['mean_ms']:.2f} ms [{batch}, {height}, {width}] on {where} "
          f"(median {result['median_ms']:.2f}, p10 {result['p10_ms']:.2f}, p90 {result['p90_ms']:.2f}, "
          f"n {result['n']}, trimmed mean)")
    return {**result, "name": name, "shape": [batch, height, width], "device": where}


def _check_outputs(args: argparse.Namespace) -> None:
    """Every path this run will write, checked before any work."""
    if args.json is not None:
        check_output_file(args.json, "--json")
    if args.plot is not None:
        check_output_file(args.plot, "--plot")
    if args.checkpoint is not None:
        check_output_dir(args.pred_dir[0] if args.pred_dir else default_pred_dir(args.checkpoint, args.test_size),
                         "--pred-dir (predictions are written there)")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the selected mode(s)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.checkpoint is None and args.pred_dir is None and not args.latency:
        parser.error("give --pred-dir (score predictions), --checkpoint (run a model, then score) or --latency")
    if args.model is not None and not args.latency:
        parser.error("--model is only used with --latency (to evaluate AP, give a --checkpoint)")
    pred_dirs = args.pred_dir or []
    if args.checkpoint is not None and len(pred_dirs) > 1:
        parser.error("--checkpoint writes one prediction folder: give at most one --pred-dir with it")
    if args.label and len(args.label) != max(1, len(pred_dirs)):
        parser.error(f"give one --label per --pred-dir ({len(args.label)} labels for {len(pred_dirs)} folders)")
    if args.latency and args.model is None and str(args.checkpoint).lower().endswith((".onnx", ".ncnn.param")):
        raise FaceNASError(f"{args.checkpoint}: --latency times a PyTorch backbone; for an export give --model "
                           "NAME (runtime timing: docs/DEPLOY.md)")
    _check_outputs(args)
    if args.checkpoint is not None or args.pred_dir is not None:
        if args.checkpoint is not None:
            from engine.inference import EvalSettings

            settings = EvalSettings(test_size=args.test_size, max_size=args.test_max_size,
                                    score_threshold=args.score_threshold, nms_threshold=args.nms, top_k=args.top_k,
                                    keep_top_k=args.keep_top_k)
            evaluate_checkpoint(args.checkpoint, args.data_root, pred_dirs[0] if pred_dirs else None, args.gt_dir,
                                settings, args.device, iou=args.iou, json_path=args.json, plot_path=args.plot,
                                label=args.label[0] if args.label else None, keep_file_order=args.keep_file_order)
        elif len(pred_dirs) == 1:
            gt_dir = resolve_gt_dir(args.gt_dir, args.data_root)
            evaluate_from_folders(pred_dirs[0], gt_dir, iou=args.iou, json_path=args.json, plot_path=args.plot,
                                  label=args.label[0] if args.label else None, keep_file_order=args.keep_file_order)
        else:
            gt_dir = resolve_gt_dir(args.gt_dir, args.data_root)
            compare_folders(pred_dirs, gt_dir, iou=args.iou, labels=args.label, json_path=args.json,
                            plot_path=args.plot, keep_file_order=args.keep_file_order)
    if args.latency:
        measure_backbone_latency(args.model, args.checkpoint, tuple(args.latency_shape), args.latency_device,
                                 args.threads, args.warmup, args.samples)
    return 0


if __name__ == "__main__":
    run_cli(main)
