"""A RetinaFace detector for ncnn: the network up to its head convolutions, converted by pnnx, checked against
PyTorch.

What is converted is :class:`HeadMaps`: backbone, FPN, SSH and the nine 1x1 head convolutions (boxes, classes,
landmarks at strides 8, 16, 32), outputs ``out0``-``out8`` in that order, each ``(anchors x values, H, W)``. The
layout change, prior decoding, softmax and NMS are left out of the graph, as ncnn ports of RetinaFace do; they run in
:func:`head_maps_to_outputs` and :func:`models.retinaface.detections_from_outputs`. Converted with a second input
shape, the graph follows the input size, so the detector is evaluated at each image's own size like the PyTorch one.

Files: ``STEM.ncnn.param``, ``STEM.ncnn.bin`` (fp32 weights) and ``STEM.ncnn.json`` (format, model, weights, anchor
layout, conversion settings) that :class:`engine.ncnn_inference.NcnnDetector` reads back.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deploy.ncnn_runtime import NcnnSession, convert_to_ncnn
from deploy.onnx_export import compare_output, image_like_input
from models.backbone import deploy_form
from utils.errors import FaceNASError

#: Value of the ``format`` entry of every ``.ncnn.json``.
NCNN_FORMAT = "facenas-ncnn/1"
#: Values per anchor of the three head groups, in output order.
GROUPS = (("boxes", 4), ("classes", 2), ("landmarks", 10))


class HeadMaps(nn.Module):
    """RetinaFace up to its head convolutions: nine maps, boxes / classes / landmarks x strides 8, 16, 32."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        if not all(hasattr(detector, part) for part in ("ssh", "box_head", "class_head", "landmark_head")):
            raise FaceNASError(f"{type(detector).__name__} is not a RetinaFace detector")
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        d = self.detector
        levels = d.fpn(list(d.backbone(images)))
        levels = [ssh(level) for ssh, level in zip(d.ssh, levels)]
        return tuple(head.conv(level) for heads in (d.box_head, d.class_head, d.landmark_head)
                     for head, level in zip(heads, levels))


def head_maps_to_outputs(maps: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The nine maps ``(B, A*k, H, W)`` -> RetinaFace's raw outputs ``(B, P, 4)``, ``(B, P, 2)``, ``(B, P, 10)``
    (rows, then columns, then anchors, as ``models.retinaface.Head`` lays them out)."""
    if len(maps) != 9:
        raise FaceNASError(f"expected 9 head maps, got {len(maps)}")
    outputs = []
    for group, (_, values) in enumerate(GROUPS):
        levels = [m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, values) for m in maps[3 * group:3 * group + 3]]
        outputs.append(torch.cat(levels, dim=1))
    return outputs[0], outputs[1], outputs[2]


def export_ncnn(detector: nn.Module, stem: str | os.PathLike, input_shape: Sequence[int] = (1, 3, 640, 640),
                model_name: str = "", weights: str = "", dynamic: bool = True) -> dict[str, Any]:
    """Convert a detector (deploy form: BatchNorm folded) into ``STEM.ncnn.param/.bin/.json``; returns the json.

    Args:
        detector: a RetinaFace; not modified.
        stem: output path without the ``.ncnn.*`` suffixes.
        input_shape: the trace input.
        model_name, weights: recorded in the json.
        dynamic: convert with a second input shape so that the graph follows the input size (default).
    """
    stem = Path(stem)
    module = HeadMaps(deploy_form(detector).eval()).eval()
    batch, channels, height, width = (int(v) for v in input_shape)
    second = (batch, channels, max(32, height // 2 // 32 * 32 + 32), max(32, width * 3 // 4 // 32 * 32)) \
        if dynamic else None
    convert_to_ncnn(module, input_shape, stem.parent, second, name=stem.name)
    for stray in (".pt", ".pnnx.param", ".pnnx.bin", ".pnnx.onnx", "_pnnx.py", "_ncnn.py", ".pnnxsim.onnx"):
        Path(str(stem) + stray).unlink(missing_ok=True)  # pnnx's intermediate files
    meta = {"format": NCNN_FORMAT, "kind": "detector_head_maps", "model": str(model_name), "weights": str(weights),
            "anchors": int(detector.box_head[0].conv.out_channels // 4), "outputs": [
                f"{group}_s{stride}" for group, _ in GROUPS for stride in (8, 16, 32)],
            "input": "in0: float32 CHW, OpenCV BGR minus mean (104, 117, 123), no scaling",
            "dynamic": bool(dynamic), "trace_shape": [batch, channels, height, width], "precision": "float32",
            "deploy_form": "BatchNorm folded", "torch_version": torch.__version__}
    Path(str(stem) + ".ncnn.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta


def check_ncnn(param: str | os.PathLike, reference: nn.Module, shapes: Sequence[Sequence[int]],
               tolerance: float = 1e-4, seed: int = 0, threads: int | None = None) -> list[dict[str, Any]]:
    """Run a converted detector in ncnn on each input shape and compare its raw outputs (boxes, class logits,
    landmarks) with the PyTorch ``reference`` (eval mode, not folded); rows as :func:`deploy.onnx_export.check_onnx`.
    """
    session = NcnnSession(param, threads, label=str(param))
    rows = []
    for index, shape in enumerate(shapes):
        x = image_like_input(shape, seed + index)
        got = head_maps_to_outputs([torch.from_numpy(a) for a in session.outputs(session.run(x.numpy()))])
        with torch.no_grad():
            expected = reference.eval()(x)
        for name, ref, out in zip(("boxes", "logits", "landmarks"), expected, got):
            rows.append({"input": [int(v) for v in shape], **compare_output(name, ref, out, tolerance)})
    return rows
