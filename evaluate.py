"""Evaluate a face detector on WIDER FACE val: Easy / Medium / Hard AP with the official protocol.

Mode available now: score a folder of prediction files (``PRED/<event>/<name>.txt``, the official format) against
the ground-truth ``.mat`` files. Without ``--gt-dir`` the ground truth of ``--data-root`` is used, and without
``--data-root`` that of the built-in synthetic dataset.

Example:
    python evaluate.py --pred-dir runs/x/widerface_txt --gt-dir /data/widerface/ground_truth --json ap.json

The script is a thin shell: :func:`evaluate_from_folders` does the work and is importable; :func:`main` parses the
arguments and dispatches, so other modes (run a checkpoint first, latency) can be added as further options.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from utils.atomic import atomic_write_json
from utils.errors import FaceNASError, run_cli


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface; every option states its default."""
    parser = argparse.ArgumentParser(
        prog="evaluate.py",
        description="WIDER FACE val evaluation (official protocol): prints Easy, Medium and Hard AP (%) and their "
                    "mean.",
        epilog="Layout of --data-root and the protocol details: docs/DATA.md.",
    )
    parser.add_argument("--pred-dir", metavar="DIR", default=None,
                        help="folder of prediction files <event>/<name>.txt (name line, count line, then 'x y w h "
                             "score' lines); a val image without a file counts as zero detections (default: none; "
                             "required)")
    parser.add_argument("--gt-dir", metavar="DIR", default=None,
                        help="folder holding wider_face_val.mat and wider_{easy,medium,hard}_val.mat (default: "
                             "DATA_ROOT/ground_truth)")
    parser.add_argument("--data-root", metavar="DIR", default=None,
                        help="dataset root in the layout of docs/DATA.md, used for the default --gt-dir (default: the "
                             "built-in synthetic dataset, generated on first use under $FACENAS_CACHE or "
                             "~/.cache/facenas)")
    parser.add_argument("--iou", type=float, default=0.5, metavar="T",
                        help="IoU threshold for a match; the protocol uses 0.5 (default: 0.5)")
    parser.add_argument("--json", metavar="FILE", default=None,
                        help="also write easy, medium, hard and mean AP (fractions 0..1) to this JSON file "
                             "(default: none)")
    parser.add_argument("--plot", metavar="FILE.png", default=None,
                        help="also plot the three precision-recall curves to this PNG (default: none)")
    return parser


def resolve_gt_dir(gt_dir: str | os.PathLike | None, data_root: str | os.PathLike | None) -> Path:
    """The ground-truth folder: ``gt_dir``, else ``data_root/ground_truth``, else the built-in dataset's."""
    if gt_dir is not None:
        return Path(gt_dir)
    if data_root is None:
        from data.synthetic import ensure_builtin_dataset

        data_root = ensure_builtin_dataset()
    return Path(data_root) / "ground_truth"


def evaluate_from_folders(pred_dir: str | os.PathLike, gt_dir: str | os.PathLike, iou: float = 0.5,
                          json_path: str | os.PathLike | None = None,
                          plot_path: str | os.PathLike | None = None) -> dict:
    """Score a prediction folder, print the AP table and optionally write JSON and a PR-curve plot.

    Args:
        pred_dir: Folder of ``<event>/<name>.txt`` prediction files.
        gt_dir: Folder of the four official ``.mat`` files.
        iou: Match threshold.
        json_path: Where to write ``{"easy", "medium", "hard", "mean", ...}`` (fractions).
        plot_path: Where to write the PR-curve PNG.

    Returns:
        The result of :func:`data.wider_eval.evaluate_folder`.

    Raises:
        FaceNASError: On a missing folder, bad ground truth or a malformed prediction file.
    """
    from data.wider_eval import SETTINGS, evaluate_folder, plot_pr_curves

    if not 0 < iou <= 1:
        raise FaceNASError(f"--iou must be in (0, 1], got {iou}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate_folder(pred_dir, gt_dir, iou_thresh=iou)
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    print(f"WIDER FACE val AP (IoU {iou:g}) for {pred_dir} against {gt_dir}:")
    for setting in SETTINGS:
        print(f"  {setting.capitalize():<7}{100 * result[setting]:6.2f} %   ({result['face_counts'][setting]} faces)")
    print(f"  {'Mean':<7}{100 * result['mean']:6.2f} %")
    if json_path is not None:
        atomic_write_json(json_path, {
            **{setting: result[setting] for setting in SETTINGS},
            "mean": result["mean"],
            "iou": iou,
            "images": result["num_images"],
            "missing_predictions": result["missing"],
            "faces": result["face_counts"],
            "pred_dir": str(pred_dir),
            "gt_dir": str(gt_dir),
        })
    if plot_path is not None:
        plot_pr_curves(result, plot_path, title=f"WIDER FACE val: {Path(pred_dir).name}")
    return result


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the selected mode."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.pred_dir is None:
        parser.error("--pred-dir is required")
    gt_dir = resolve_gt_dir(args.gt_dir, args.data_root)
    evaluate_from_folders(args.pred_dir, gt_dir, iou=args.iou, json_path=args.json, plot_path=args.plot)
    return 0


if __name__ == "__main__":
    run_cli(main)
