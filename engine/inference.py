"""Running a trained detector on images: test-time preprocessing, detection, and the WIDER FACE prediction folder.

Test settings follow SPEC section 8 and the reference ``test_widerface.py``: the image at its original size by
default (``test_size=0``), or scaled so its short side is ``test_size`` with the long side capped at ``max_size``
(the reference's 1600 / 2150); the BGR mean (104, 117, 123) subtracted; score > 0.02, top-k 5000 before NMS, NMS IoU
0.4, keep 750 after it. Boxes are returned in original-image pixels.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from data.augment import BGR_MEAN
from utils.progress import track

TEST_MAX_SIZE = 2150


@dataclass(frozen=True)
class EvalSettings:
    """Test-time settings (SPEC section 8).

    Attributes:
        test_size: short side in pixels, 0 = original size.
        max_size: cap on the long side when ``test_size`` > 0.
        score_threshold: minimum face score kept.
        nms_threshold: NMS IoU.
        top_k: candidates before NMS.
        keep_top_k: detections after NMS.
    """

    test_size: int = 0
    max_size: int = TEST_MAX_SIZE
    score_threshold: float = 0.02
    nms_threshold: float = 0.4
    top_k: int = 5000
    keep_top_k: int = 750

    def postprocess_kwargs(self) -> dict[str, float | int]:
        """Keyword arguments for ``RetinaFace.detect``."""
        return {"score_threshold": self.score_threshold, "nms_threshold": self.nms_threshold, "top_k": self.top_k,
                "keep_top_k": self.keep_top_k}


def load_inference_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, str]:
    """A ``train.py`` checkpoint, or a detector exported by ``export.py`` (``.onnx``, run in ONNX Runtime by
    :class:`engine.onnx_inference.OnnxDetector`; ``.ncnn.param``, run in ncnn by
    :class:`engine.ncnn_inference.NcnnDetector`), ready for :func:`detect_image`; and a description for the log.

    Raises:
        FaceNASError: a file that is neither (names it).
    """
    if Path(path).suffix.lower() == ".onnx":
        from engine.onnx_inference import OnnxDetector

        detector = OnnxDetector(path, device)
        return detector, detector.description
    if Path(path).name.endswith((".ncnn.param", ".ncnn.bin", ".ncnn.json")):
        from engine.ncnn_inference import NcnnDetector

        detector = NcnnDetector(path, device)
        return detector, detector.description
    from engine.checkpoint import load_detector

    detector, ckpt = load_detector(path, device)
    return detector, f"{ckpt.get('model')} (epoch {int(ckpt['epoch']) + 1})"


def scale_for_test(height: int, width: int, test_size: int, max_size: int = TEST_MAX_SIZE) -> float:
    """Resize factor of the reference test script (1.0 for original size)."""
    if test_size <= 0:
        return 1.0
    scale = test_size / min(height, width)
    if round(scale * max(height, width)) > max_size:
        scale = max_size / max(height, width)
    return scale


def preprocess(image: np.ndarray, scale: float = 1.0) -> torch.Tensor:
    """BGR uint8 ``(H, W, 3)`` -> float32 ``(1, 3, H', W')`` resized by ``scale``, mean subtracted."""
    import cv2

    if scale != 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    array = image.astype(np.float32) - np.asarray(BGR_MEAN, np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


@torch.no_grad()
def detect_image(detector: nn.Module, image: np.ndarray, settings: EvalSettings = EvalSettings(),
                 device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Detect faces in one BGR image.

    Returns:
        ``boxes`` (N, 4) ``x1, y1, x2, y2``, ``scores`` (N,), ``landmarks`` (N, 10), in original-image pixels and
        descending score order.
    """
    height, width = image.shape[:2]
    scale = scale_for_test(height, width, settings.test_size, settings.max_size)
    batch = preprocess(image, scale).to(device)
    result = detector.detect(batch, **settings.postprocess_kwargs())[0]
    return {key: (value.float() / scale).cpu().numpy() if key != "scores" else value.float().cpu().numpy()
            for key, value in result.items()}


def predict_to_folder(detector: nn.Module, images: Iterable[tuple[np.ndarray, str, str]], pred_dir: str | Path,
                      settings: EvalSettings = EvalSettings(), device: torch.device | str = "cpu",
                      total: int | None = None, progress: bool = True,
                      log: logging.Logger | None = None) -> int:
    """Write ``pred_dir/<event>/<name>.txt`` for every image (also when nothing is detected).

    Args:
        detector: in eval mode, on ``device``.
        images: ``(BGR image, event, name)`` items, e.g. ``data.widerface.WiderFaceValImages``.
        pred_dir: output folder.
        settings: test settings.
        device: where the detector runs.
        total: number of images, for the progress bar.
        progress: show a progress bar.
        log: receives a summary line.

    Returns:
        The number of files written.
    """
    from data.wider_eval import write_prediction_file

    detector.eval()
    written = 0
    faces = 0
    for image, event, name in track(images, total=total, desc="predict", unit="image", enabled=progress):
        found = detect_image(detector, image, settings, device)
        boxes = found["boxes"]
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1) if len(boxes) else \
            np.zeros((0, 4), np.float32)
        write_prediction_file(pred_dir, event, name, xywh, found["scores"])
        written += 1
        faces += len(boxes)
    if log is not None:
        log.info(f"wrote {written} prediction files ({faces} detections) to {pred_dir}")
    return written


def evaluate_detector(detector: nn.Module, data_root: str | Path, pred_dir: str | Path,
                      settings: EvalSettings = EvalSettings(), device: torch.device | str = "cpu",
                      gt_dir: str | Path | None = None, progress: bool = True,
                      log: logging.Logger | None = None) -> dict:
    """Predict every val image of ``data_root`` into ``pred_dir`` and score it with the official protocol.

    Args:
        gt_dir: folder of the official ``.mat`` files; default ``data_root/ground_truth``.

    Returns:
        The evaluator's result (``easy``, ``medium``, ``hard``, ``mean``, ``curves``, ...).
    """
    from data.wider_eval import evaluate_folder
    from data.widerface import WiderFaceValImages

    gt = Path(gt_dir) if gt_dir is not None else Path(data_root) / "ground_truth"
    images = WiderFaceValImages(data_root, gt if gt_dir is not None or (gt / "wider_face_val.mat").is_file()
                                else None)
    predict_to_folder(detector, images, pred_dir, settings, device, total=len(images), progress=progress, log=log)
    return evaluate_folder(pred_dir, gt)
