"""Run a detector converted by ``export.py --format ncnn`` in ncnn, in place of the PyTorch model.

:class:`NcnnDetector` has the ``detect`` interface of :class:`models.retinaface.RetinaFace`, so
:func:`engine.inference.detect_image`, ``evaluate.py --checkpoint model.ncnn.param`` and ``tools/detect.py`` run it
with the same pre-processing and, after ncnn's head maps are laid out and decoded
(:func:`deploy.ncnn_export.head_maps_to_outputs`, :func:`models.retinaface.detections_from_outputs`), the same
post-processing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from deploy.ncnn_export import NCNN_FORMAT, head_maps_to_outputs
from deploy.ncnn_runtime import NcnnSession
from models.anchors import make_priors
from models.retinaface import detections_from_outputs
from utils.errors import FaceNASError


def ncnn_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(param, json)`` of a converted detector given any of its files or their common stem."""
    path = Path(path)
    name = path.name
    for suffix in (".ncnn.param", ".ncnn.bin", ".ncnn.json", ".param", ".bin"):
        if name.endswith(suffix):
            name = name[:-len(suffix)]
            break
    stem = path.with_name(name)
    return Path(f"{stem}.ncnn.param"), Path(f"{stem}.ncnn.json")


class NcnnDetector(nn.Module):
    """A RetinaFace converted by ``export.py --format ncnn`` in an ncnn ``Net`` (CPU).

    Args:
        path: the ``.ncnn.param`` file (its ``.ncnn.bin`` and ``.ncnn.json`` beside it).
        device: ``cpu`` only.
        threads: ncnn threads (default: PyTorch's current setting).

    Raises:
        FaceNASError: ncnn missing, missing files, or not a FaceNAS ncnn export.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu", threads: int | None = None):
        super().__init__()
        param, info = ncnn_files(path)
        if torch.device(device).type != "cpu":
            raise FaceNASError(f"{param}: ncnn runs on the CPU here; use --device cpu")
        if not info.is_file():
            raise FaceNASError(f"{info}: not found; an ncnn detector needs the .ncnn.json that export.py --format ncnn "
                               "writes beside the .param/.bin pair")
        try:
            self.metadata = json.loads(info.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FaceNASError(f"{info}: not readable JSON ({exc})") from None
        if self.metadata.get("format") != NCNN_FORMAT or self.metadata.get("kind") != "detector_head_maps":
            raise FaceNASError(f"{info}: not a FaceNAS ncnn detector (format {self.metadata.get('format')!r}); "
                               "write it with export.py --format ncnn")
        self.path = param
        self.session = NcnnSession(param, threads, label=str(param))
        if len(self.session.output_names) != 9:
            raise FaceNASError(f"{param}: {len(self.session.output_names)} outputs, expected the 9 head maps")
        self.kind = "ncnn"
        self.precision = self.metadata.get("precision", "float32")
        self.description = (f"{self.metadata.get('model', '?')} ncnn detector ({param.name}; "
                            f"{self.metadata.get('weights') or 'weights unknown'}; {self.session.describe()})")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """RetinaFace's raw outputs (boxes, class logits, landmarks) for a preprocessed batch, as CPU tensors."""
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        maps = [torch.from_numpy(a) for a in self.session.outputs(self.session.run(array))]
        return head_maps_to_outputs(maps)

    @torch.no_grad()
    def detect(self, images: torch.Tensor, score_threshold: float = 0.02, nms_threshold: float = 0.4,
               top_k: int = 5000, keep_top_k: int = 750) -> list[dict[str, torch.Tensor]]:
        """Detections per image in input pixels, descending score, like ``RetinaFace.detect``."""
        loc, logits, landmarks = self(images)
        size = tuple(images.shape[-2:])
        return detections_from_outputs(loc, logits, landmarks, make_priors(size), size,
                                       score_threshold=score_threshold, nms_threshold=nms_threshold, top_k=top_k,
                                       keep_top_k=keep_top_k)
