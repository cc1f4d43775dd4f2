"""Run a detector exported by ``export.py`` in ONNX Runtime, in place of the PyTorch model.

:class:`OnnxDetector` has the ``detect`` interface of :class:`models.retinaface.RetinaFace`, so
:func:`engine.inference.detect_image`, ``evaluate.py --checkpoint model.onnx`` and ``tools/detect.py`` run it with
the same pre-processing (resize, BGR mean) and the same post-processing: on a decoded export (boxes, scores,
landmarks) the selection of :func:`models.anchors.select_detections` (score threshold, top-k, NMS, keep-top-k); an
export with NMS in the graph already did that selection with the settings written into it, and other settings are
refused rather than silently ignored.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deploy.onnx_export import DETECTION_COLUMNS, DETECTOR_OUTPUTS, INPUT_NAME, NMS_OUTPUTS, ONNX_FORMAT
from deploy.onnx_runtime import OrtSession
from models.anchors import select_detections
from utils.errors import FaceNASError

#: Torch device types ONNX Runtime runs on (their provider short names are the same words).
DEVICE_TYPES = ("cpu", "cuda")
#: metadata key -> keyword of ``detect`` it fixes, for exports with NMS
BAKED_SETTINGS = {"score_threshold": float, "nms_threshold": float, "top_k": int, "keep_top_k": int}


class OnnxDetector(nn.Module):
    """An exported RetinaFace (``export.py --what detector``) in an ONNX Runtime session.

    Args:
        path: the ``.onnx`` file.
        device: ``cpu`` (CPUExecutionProvider) or ``cuda[:N]`` (CUDAExecutionProvider, onnxruntime-gpu).
        threads: intra-op threads (default: PyTorch's current setting).

    Raises:
        FaceNASError: missing onnxruntime, missing or unreadable file, not a FaceNAS detector export, or a device
            ONNX Runtime cannot use here.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu", threads: int | None = None):
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise FaceNASError(f"{self.path}: ONNX file not found")
        dev = torch.device(device)
        if dev.type not in DEVICE_TYPES:
            raise FaceNASError(f"{self.path}: ONNX Runtime runs on cpu or cuda, not on device {str(dev)!r}")
        try:
            self.runner = OrtSession(self.path, threads, dev.type, device_id=dev.index or 0,
                                     label=str(self.path))
        except FaceNASError as exc:
            message = str(exc)
            hint = " (or use --device cpu)" if dev.type == "cuda" and "no CUDAExecutionProvider" in message else ""
            raise FaceNASError(message if message.startswith(str(self.path)) else f"{self.path}: {message}{hint}") \
                from None
        self.session = self.runner.session
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        self.kind = self.metadata.get("facenas.kind")
        if self.metadata.get("facenas.format") != ONNX_FORMAT:
            raise FaceNASError(f"{self.path}: not a FaceNAS export (no {ONNX_FORMAT!r} metadata); write it with "
                               "export.py")
        if self.kind not in ("detector", "detector_nms"):
            raise FaceNASError(f"{self.path}: a {self.kind} export has no detection outputs; export the detector "
                               "(export.py --what detector)")
        self.output_names = list(NMS_OUTPUTS if self.kind == "detector_nms" else DETECTOR_OUTPUTS)
        have = [output.name for output in self.session.get_outputs()]
        if have != self.output_names:
            raise FaceNASError(f"{self.path}: outputs {have}, expected {self.output_names}")
        self.baked = {key: kind(float(self.metadata[f"facenas.{key}"])) for key, kind in BAKED_SETTINGS.items()
                      if f"facenas.{key}" in self.metadata}
        self.provider = self.runner.provider
        version = self.runner.version
        what = "detector with NMS in the graph" if self.kind == "detector_nms" else "detector"
        self.precision = self.metadata.get("facenas.precision", "float32")
        if self.precision != "float32":
            what = f"{self.precision} {what}"
        self.description = (f"{self.metadata.get('facenas.model', '?')} ONNX {what} "
                            f"({self.path.name}; {self.metadata.get('facenas.weights', 'weights unknown')}; "
                            f"ONNX Runtime {version}, {self.provider})")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The export's outputs for a preprocessed batch, as CPU tensors."""
        array = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        outputs = self.session.run(self.output_names, {INPUT_NAME: array})
        return tuple(torch.from_numpy(np.asarray(out)) for out in outputs)

    @torch.no_grad()
    def detect(self, images: torch.Tensor, score_threshold: float = 0.02, nms_threshold: float = 0.4,
               top_k: int = 5000, keep_top_k: int = 750) -> list[dict[str, torch.Tensor]]:
        """Detections per image in input pixels, descending score, like ``RetinaFace.detect``.

        Raises:
            FaceNASError: for an export with NMS, settings other than those written into the graph.
        """
        if self.kind == "detector_nms":
            self._check_baked(score_threshold=score_threshold, nms_threshold=nms_threshold, top_k=top_k,
                              keep_top_k=keep_top_k)
            return self._split(images.shape[0], self(images)[0])
        boxes, scores, landmarks = self(images)
        return [select_detections(b, s, p, score_threshold, nms_threshold, top_k, keep_top_k)
                for b, s, p in zip(boxes.float(), scores.float(), landmarks.float())]

    def _check_baked(self, **wanted: float) -> None:
        differ = [f"{key} {wanted[key]:g} (the file has {self.baked.get(key)!r})" for key in BAKED_SETTINGS
                  if key not in self.baked or not np.isclose(self.baked[key], wanted[key], rtol=0, atol=1e-9)]
        if differ:
            raise FaceNASError(f"{self.path}: NMS is part of this graph with fixed settings; asked for "
                               f"{', '.join(differ)}: re-export with those settings or without --nms")

    @staticmethod
    def _split(batch: int, detections: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        detections = detections.float()
        if detections.dim() != 2 or detections.shape[1] != DETECTION_COLUMNS:
            raise FaceNASError(f"NMS export returned detections of shape {list(detections.shape)}, expected "
                               f"(N, {DETECTION_COLUMNS})")
        results = []
        for image in range(batch):
            rows = detections[detections[:, 0] == image]
            results.append({"boxes": rows[:, 1:5], "scores": rows[:, 5], "landmarks": rows[:, 6:]})
        return results
