"""Run a trained detector on an image or a folder of images and draw boxes, scores and the five landmarks.

Example:
    python tools/detect.py --checkpoint runs/facenas_r12_v3_hs/last.pth --input photos/ --out-dir detections/
    python tools/detect.py --checkpoint runs/facenas_r12_v3_hs/last_detector.onnx --input photos/

Each input image ``NAME.EXT`` becomes ``OUT_DIR/NAME.jpg`` (boxes in green, score above the box, landmarks: eyes
blue/red, nose green, mouth corners yellow/cyan as in RetinaFace's demo) and, with ``--save-txt``, ``OUT_DIR/NAME.txt``
in the WIDER FACE prediction format. Folders are searched recursively; the sub-folder structure is kept.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from utils.errors import FaceNASError, run_cli  # noqa: E402
from utils.options import PROBABILITY, OptionParser, check_output_dir, int_range  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
LANDMARK_COLOURS = ((255, 0, 0), (0, 0, 255), (0, 255, 0), (0, 255, 255), (255, 255, 0))  # BGR


def build_parser() -> argparse.ArgumentParser:
    """The command line; every option states its default."""
    parser = OptionParser(prog="tools/detect.py", description=__doc__)
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="checkpoint written by train.py, or a detector exported by export.py (.onnx, run in "
                             "ONNX Runtime; .ncnn.param, run in ncnn) (required)")
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="an image file or a folder of images (searched recursively) (required)")
    parser.add_argument("--out-dir", default="detections", metavar="DIR",
                        help="where the drawn images go (default: detections)")
    parser.add_argument("--vis-threshold", type=PROBABILITY, default=0.5, metavar="S",
                        help="draw detections with a score of at least S (default: 0.5)")
    parser.add_argument("--test-size", type=int_range(32, also=(0,)), default=0, metavar="PX",
                        help="resize so the short side is PX (long side at most 2150); 0 = original size "
                             "(default: 0)")
    parser.add_argument("--nms", type=PROBABILITY, default=0.4, help="NMS IoU threshold (default: 0.4)")
    parser.add_argument("--save-txt", action="store_true",
                        help="also write NAME.txt with 'x y w h score' lines (all detections above 0.02) "
                             "(default: off)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    return parser


def find_images(path: Path) -> list[tuple[Path, Path]]:
    """``(image file, path relative to the input)`` pairs for a file or a folder."""
    if path.is_file():
        return [(path, Path(path.name))]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FaceNASError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return [(p, p.relative_to(path)) for p in files]
    raise FaceNASError(f"{path}: no such file or folder")


def draw_detections(image: np.ndarray, boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray,
                    threshold: float = 0.5) -> np.ndarray:
    """A copy of ``image`` (BGR) with the detections of score >= ``threshold`` drawn on it."""
    import cv2

    out = image.copy()
    thickness = max(1, round(min(out.shape[:2]) / 400))
    for box, score, points in zip(boxes, scores, landmarks):
        if score < threshold:
            continue
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), (0, 255, 0), thickness)
        cv2.putText(out, f"{score:.2f}", (x1, max(y1 - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness,
                    (255, 255, 255), thickness, cv2.LINE_AA)
        for (px, py), colour in zip(points.reshape(5, 2), LANDMARK_COLOURS):
            cv2.circle(out, (int(round(px)), int(round(py))), thickness + 1, colour, -1)
    return out


def main(argv: list[str] | None = None) -> int:
    """Detect and draw; prints one line per image."""
    import cv2

    from data.wider_eval import format_prediction_text
    from data.widerface import read_image
    from engine.distributed import resolve_device
    from engine.inference import EvalSettings, detect_image, load_inference_model
    from utils.atomic import atomic_write, atomic_write_text

    args = build_parser().parse_args(argv)
    out_dir = check_output_dir(args.out_dir, "--out-dir")
    images = find_images(Path(args.input))
    device = resolve_device(args.device)
    detector, description = load_inference_model(args.checkpoint, device)
    settings = EvalSettings(test_size=args.test_size, nms_threshold=args.nms)
    print(f"{description} on {device}: {len(images)} image(s) -> {out_dir}")
    for path, rel in images:
        image = read_image(path)
        found = detect_image(detector, image, settings, device)
        drawn = draw_detections(image, found["boxes"], found["scores"], found["landmarks"], args.vis_threshold)
        ok, encoded = cv2.imencode(".jpg", drawn)
        if not ok:
            raise FaceNASError(f"{path}: could not encode the output image")
        target = out_dir / rel.with_suffix(".jpg")
        atomic_write(target, lambda handle, data=encoded: handle.write(data.tobytes()))
        shown = int((found["scores"] >= args.vis_threshold).sum())
        if args.save_txt:
            boxes = found["boxes"]
            xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1) if len(boxes) else \
                np.zeros((0, 4))
            atomic_write_text(target.with_suffix(".txt"), format_prediction_text(rel.stem, xywh, found["scores"]))
        print(f"{rel}: {shown} face(s) >= {args.vis_threshold:g} ({len(found['scores'])} candidates) -> {target}")
    return 0


if __name__ == "__main__":
    run_cli(main)
