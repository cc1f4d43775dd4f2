"""Calibration images for INT8 quantization: training images of a dataset, prepared as the detector sees them.

The images are the first ``count`` of ``ROOT/train/images`` in name order (training images, so the val set the AP
is measured on stays unseen), read as BGR, minus the BGR mean, NCHW float32 batches of one, at their own size (a
dynamic export is evaluated at the images' own size) or resized to a static export's input.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.augment import BGR_MEAN
from utils.errors import FaceNASError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def calibration_files(data_root: str | os.PathLike | None, count: int, offset: int = 0) -> list[Path]:
    """``count`` training images of ``data_root`` (default: the built-in dataset) in name order, from ``offset``."""
    if count < 1:
        raise FaceNASError(f"--calibration-images must be >= 1, got {count}")
    if data_root is None:
        from data.synthetic import ensure_builtin_dataset

        data_root = ensure_builtin_dataset()
    folder = Path(data_root) / "train" / "images"
    if not folder.is_dir():
        raise FaceNASError(f"{folder}: no training images to calibrate INT8 on; give --data-root with train/images "
                           "(docs/DATA.md)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FaceNASError(f"{folder}: no .jpg/.png images to calibrate INT8 on")
    return files[offset:offset + count]


def calibration_batches(data_root: str | os.PathLike | None, count: int, size: Sequence[int] | None = None,
                        offset: int = 0) -> list[np.ndarray]:
    """``count`` inputs ``(1, 3, H, W)`` from image ``offset`` on: at each image's own size, or resized to ``size``
    (H, W). The check of an INT8 export takes the images after the calibration ones."""
    import cv2

    from data.widerface import read_image

    batches = []
    for path in calibration_files(data_root, count, offset):
        image = read_image(path)
        if size is not None:
            image = cv2.resize(image, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
        array = image.astype(np.float32) - np.asarray(BGR_MEAN, np.float32)
        batches.append(np.ascontiguousarray(array.transpose(2, 0, 1))[None])
    return batches
