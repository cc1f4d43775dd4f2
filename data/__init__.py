"""Data for FaceNAS: WIDER FACE readers and Datasets, augmentation, the built-in synthetic dataset, evaluation.

Modules: :mod:`data.widerface` (annotation readers/writers, ``WiderFaceDetection``, ``detection_collate``, val
image iterator), :mod:`data.augment` (``TrainTransform``, ``ValTransform``), :mod:`data.synthetic`
(``ensure_builtin_dataset``) and :mod:`data.wider_eval` (official AP evaluation). The main entry points are
re-exported here lazily, so ``import data.wider_eval`` does not pull in torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ImageAnnotation": "data.widerface",
    "WiderFaceDetection": "data.widerface",
    "WiderFaceValImages": "data.widerface",
    "detection_collate": "data.widerface",
    "list_val_images": "data.widerface",
    "read_image": "data.widerface",
    "read_retinaface_labels": "data.widerface",
    "read_wider_split_txt": "data.widerface",
    "TrainTransform": "data.augment",
    "ValTransform": "data.augment",
    "ensure_builtin_dataset": "data.synthetic",
    "evaluate_folder": "data.wider_eval",
    "evaluate_predictions": "data.wider_eval",
    "load_ground_truth": "data.wider_eval",
    "write_prediction_file": "data.wider_eval",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'data' has no attribute '{name}'")
