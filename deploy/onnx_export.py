"""Export backbones and RetinaFace detectors to ONNX, and check the export in ONNX Runtime against PyTorch.

What gets exported is the deploy form (:func:`models.backbone.deploy_form`: eval mode, every BatchNorm folded):

* ``backbone``: the three FPN inputs (strides 8, 16, 32) of a ``features_only`` backbone, outputs ``feat_s8``,
  ``feat_s16``, ``feat_s32``;
* ``detector``: the whole RetinaFace with prior decoding in the graph (:class:`DecodedDetector`), outputs ``boxes``
  (B, P, 4) x1 y1 x2 y2 and ``landmarks`` (B, P, 10) in input pixels and ``scores`` (B, P) face probabilities. The
  priors are computed in the graph from the shapes of the feature maps the heads see, so one file serves every input
  size;
* ``detector`` with NMS (:class:`DetectorWithNms`): the same, followed by the reference post-processing (top-k, score
  threshold, NMS, keep-top-k per image) in the graph; one output ``detections`` (N, 16): image index, x1 y1 x2 y2,
  score, 10 landmark coordinates, in descending score order.

The input ``images`` is float32 NCHW, OpenCV BGR minus (104, 117, 123), as for the PyTorch model. Batch, height and
width are dynamic unless the export is static; ``torchvision.ops.nms`` becomes ONNX ``NonMaxSuppression``.

:func:`check_onnx` runs the file in ONNX Runtime on several input shapes and compares every output with the PyTorch
model it came from (eval mode, BatchNorm not folded: the network as trained). The ONNX file carries ``facenas.*``
metadata (kind, model, NMS settings, input format) that ``engine.onnx_inference`` reads back. The exporter call
itself is :func:`deploy.onnx_graph.export_graph`, the session :class:`deploy.onnx_runtime.OrtSession`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.ops import nms

from data.augment import BGR_MEAN
from deploy.onnx_graph import DEFAULT_OPSET, export_graph
from deploy.onnx_runtime import OrtSession
from models.anchors import MIN_SIZES, STEPS, decode_boxes, decode_landmarks
from models.backbone import deploy_form
from utils.errors import FaceNASError

__all__ = [
    "DecodedDetector", "DetectorWithNms", "ExportedFeatures", "NmsSettings", "check_detections", "check_onnx",
    "check_summary", "export_onnx", "graph_priors", "image_like_input", "onnx_metadata", "ort_session",
]

#: Value of the ``facenas.format`` metadata entry of every exported file.
ONNX_FORMAT = "facenas-onnx/1"
INPUT_NAME = "images"
BACKBONE_OUTPUTS = ("feat_s8", "feat_s16", "feat_s32")
DETECTOR_OUTPUTS = ("boxes", "scores", "landmarks")
NMS_OUTPUTS = ("detections",)
#: Columns of the ``detections`` output of an export with NMS.
DETECTION_COLUMNS = 16


@dataclass(frozen=True)
class NmsSettings:
    """Post-processing baked into an export with NMS (the SPEC section 8 test settings by default).

    Attributes:
        score_threshold: keep scores above this.
        nms_threshold: NMS IoU.
        top_k: candidates per image before NMS.
        keep_top_k: detections per image after NMS.
    """

    score_threshold: float = 0.02
    nms_threshold: float = 0.4
    top_k: int = 5000
    keep_top_k: int = 750

    def validate(self) -> NmsSettings:
        """Raise :class:`FaceNASError` on values outside their ranges; returns ``self``."""
        if not 0 <= self.score_threshold < 1:
            raise FaceNASError(f"score threshold must be in [0, 1), got {self.score_threshold}")
        if not 0 < self.nms_threshold <= 1:
            raise FaceNASError(f"NMS IoU threshold must be in (0, 1], got {self.nms_threshold}")
        if self.top_k < 1 or self.keep_top_k < 1:
            raise FaceNASError(f"top-k and keep-top-k must be >= 1, got {self.top_k} and {self.keep_top_k}")
        return self


# ------------------------------------------------------------------------------------------------ graph parts
def graph_priors(feature_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Priors ``(P, 4)`` cx, cy, w, h in input pixels for the given feature maps (strides 8, 16, 32).

    The same priors, in the same order, as :func:`models.anchors.make_priors` times the input size, but computed
    from the feature maps' own shapes with tensor operations, so a traced graph follows the input size.
    """
    levels = []
    for feature, step, sizes in zip(feature_maps, STEPS, MIN_SIZES):
        height, width = feature.shape[-2], feature.shape[-1]
        ys = (torch.arange(height, device=feature.device, dtype=torch.float32) + 0.5) * step
        xs = (torch.arange(width, device=feature.device, dtype=torch.float32) + 0.5) * step
        sides = torch.tensor(sizes, device=feature.device, dtype=torch.float32)
        # (H, W, anchors): rows, then columns, then the anchors of a cell, as the heads lay out their outputs; built by
        # broadcasting, so the traced graph takes H and W from the tensors rather than from constants
        zeros = torch.zeros_like(ys)[:, None, None] + torch.zeros_like(xs)[None, :, None] + torch.zeros_like(sides)
        cx = zeros + xs[None, :, None]
        cy = zeros + ys[:, None, None]
        side = zeros + sides
        levels.append(torch.stack([cx, cy, side, side], dim=-1).reshape(-1, 4))
    return torch.cat(levels)


class ExportedFeatures(nn.Module):
    """A ``features_only`` backbone returning its levels as a tuple (ONNX outputs ``feat_s8/16/32``)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.backbone(images))


class DecodedDetector(nn.Module):
    """RetinaFace with the priors decoded in the graph: ``boxes`` and ``landmarks`` in input pixels, ``scores``.

    The detector's own ``forward`` runs unchanged; forward hooks on its SSH modules, present during the call only,
    record the feature maps the heads see, whose shapes give the priors (:func:`graph_priors`).
    """

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        levels: list[torch.Tensor] = []
        # hooks only for this call: the wrapped detector is left as it was
        handles = [ssh.register_forward_hook(lambda module, inputs, output: levels.append(output))
                   for ssh in self.detector.ssh]
        try:
            loc, logits, landmarks = self.detector(images)
        finally:
            for handle in handles:
                handle.remove()
        priors = graph_priors(levels)
        scores = logits.softmax(-1)[..., 1]
        return decode_boxes(loc, priors), scores, decode_landmarks(landmarks, priors)


class DetectorWithNms(nn.Module):
    """:class:`DecodedDetector` followed by the reference post-processing, per image, in the graph.

    Like :func:`models.anchors.postprocess`: the ``top_k`` best scores, those above ``score_threshold``, NMS at
    ``nms_threshold``, the ``keep_top_k`` best survivors. The images of a batch go through one NMS with their boxes
    shifted apart (never overlapping), so the batch stays dynamic.

    Returns:
        ``detections`` (N, 16): image index, x1, y1, x2, y2, score, 10 landmark coordinates (pixels), in descending
        score order.
    """

    def __init__(self, detector: nn.Module, settings: NmsSettings = NmsSettings()):
        super().__init__()
        self.decoded = DecodedDetector(detector)
        self.settings = settings.validate()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        s = self.settings
        boxes, scores, landmarks = self.decoded(images)
        # equal scores in index order, as in select_detections: ONNX TopK (what a traced sort becomes) does that by
        # its specification; the exporter cannot write a sort with stable=True
        order = scores.argsort(dim=1, descending=True) if torch.jit.is_tracing() else \
            scores.argsort(dim=1, descending=True, stable=True)
        order = order[:, :s.top_k]
        scores = scores.gather(1, order)
        boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
        landmarks = landmarks.gather(1, order[..., None].expand(-1, -1, 10))
        image = torch.arange(scores.shape[0], device=scores.device)[:, None] + torch.zeros_like(order)
        above = scores > s.score_threshold
        scores, boxes, landmarks, image = scores[above], boxes[above], landmarks[above], image[above]
        # shift image i's boxes by i * (2 max|coordinate| + 1): boxes of different images never overlap. The zero
        # keeps the maximum defined when no candidate is left (a traced graph cannot branch on that)
        span = torch.cat([boxes.reshape(-1).abs(), boxes.new_zeros(1)]).max() * 2 + 1
        kept = nms(boxes + (image.to(boxes.dtype) * span)[:, None], scores, s.nms_threshold)
        kept_image = image[kept]
        # rank of each survivor within its image (survivors come in descending score order)
        same = (kept_image[:, None] == torch.arange(images.shape[0], device=images.device)[None, :]).to(torch.int64)
        rank = (same.cumsum(0) * same).sum(1)
        kept = kept[rank <= s.keep_top_k]
        return torch.cat([image[kept, None].to(boxes.dtype), boxes[kept], scores[kept, None], landmarks[kept]], 1)


# -------------------------------------------------------------------------------------------------- export
def export_module(kind: str, model: nn.Module, nms_settings: NmsSettings | None = None) -> tuple[nn.Module, tuple]:
    """The module to trace for ``kind`` (``backbone`` or ``detector``) and its output names.

    Args:
        kind: what ``model`` is: a ``features_only`` backbone or a RetinaFace.
        model: the network (any form; the caller folds BatchNorm first for the deploy form).
        nms_settings: for a detector, put NMS in the graph with these settings.
    """
    if kind == "backbone":
        if nms_settings is not None:
            raise FaceNASError("NMS belongs to a detector export, not to a backbone")
        return ExportedFeatures(model).eval(), BACKBONE_OUTPUTS
    if kind == "detector":
        if not all(hasattr(model, part) for part in ("ssh", "box_head", "class_head")):
            raise FaceNASError(f"{type(model).__name__} is not a RetinaFace detector")
        if nms_settings is not None:
            return DetectorWithNms(model, nms_settings).eval(), NMS_OUTPUTS
        return DecodedDetector(model).eval(), DETECTOR_OUTPUTS
    raise FaceNASError(f"unknown export kind {kind!r}; use backbone or detector")


def dynamic_axes(output_names: Sequence[str], dynamic: bool) -> dict[str, dict[int, str]] | None:
    """The ``dynamic_axes`` argument of ``torch.onnx.export`` (``None`` for a static export)."""
    if not dynamic:
        return None
    axes: dict[str, dict[int, str]] = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
    for name in output_names:
        if name.startswith("feat_s"):
            axes[name] = {0: "batch", 2: f"height_{name[5:]}", 3: f"width_{name[5:]}"}
        elif name == "detections":
            axes[name] = {0: "num_detections"}
        else:
            axes[name] = {0: "batch", 1: "priors"}
    return axes


def onnx_metadata(kind: str, model_name: str, nms_settings: NmsSettings | None, dynamic: bool,
                  input_shape: Sequence[int], opset: int, **extra: Any) -> dict[str, str]:
    """The ``facenas.*`` metadata entries of an exported file (strings, as ONNX stores them)."""
    meta = {
        "facenas.format": ONNX_FORMAT,
        "facenas.kind": "detector_nms" if nms_settings is not None else kind,
        "facenas.model": str(model_name),
        "facenas.input": f"{INPUT_NAME}: float32 NCHW, OpenCV BGR minus mean {tuple(BGR_MEAN)}, no scaling",
        "facenas.dynamic": "batch,height,width" if dynamic else "none",
        "facenas.trace_shape": "x".join(str(int(v)) for v in input_shape),
        "facenas.opset": str(int(opset)),
        "facenas.deploy_form": "BatchNorm folded",
        "facenas.torch_version": torch.__version__,
    }
    if nms_settings is not None:
        meta.update({f"facenas.{key}": repr(value) for key, value in vars(nms_settings).items()})
    meta.update({f"facenas.{key}": str(value) for key, value in extra.items()})
    return meta


def export_onnx(model: nn.Module, kind: str, input_shape: Sequence[int] = (1, 3, 640, 640), dynamic: bool = True,
                nms_settings: NmsSettings | None = None, opset: int = DEFAULT_OPSET, model_name: str = "",
                deploy: bool = True, metadata: dict[str, Any] | None = None) -> bytes:
    """Export a backbone or detector to ONNX and return the file's bytes (checked with ``onnx.checker``).

    Args:
        model: a ``features_only`` backbone or a RetinaFace; it is not modified.
        kind: ``backbone`` or ``detector``.
        input_shape: the trace input (B, 3, H, W); with ``dynamic`` any batch and size run afterwards.
        dynamic: dynamic batch, height and width (default); ``False`` fixes ``input_shape``.
        nms_settings: for a detector, NMS in the graph with these settings (default: no NMS).
        opset: ONNX opset.
        model_name: recorded in the metadata.
        deploy: export the deploy form (BatchNorm folded; default).
        metadata: more ``facenas.*`` metadata entries.
    """
    import onnx

    if len(input_shape) != 4 or min(input_shape) < 1:
        raise FaceNASError(f"input shape must be four positive integers B 3 H W, got {list(input_shape)}")
    source = deploy_form(model) if deploy else model
    module, output_names = export_module(kind, source.eval(), nms_settings)
    graph = export_graph(module, torch.zeros(tuple(int(v) for v in input_shape)), [INPUT_NAME], output_names, opset,
                         dynamic_axes(output_names, dynamic), model_name or type(model).__name__)
    proto = onnx.load_model_from_string(graph)
    meta = onnx_metadata(kind, model_name, nms_settings, dynamic, input_shape, opset, **(metadata or {}))
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"FaceNAS {meta['facenas.kind']} export of {model_name or type(model).__name__}"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


# --------------------------------------------------------------------------------------------------- check
def image_like_input(shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """A random input in the detector's input range: uniform 0..255 BGR pixels minus the BGR mean."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(tuple(int(v) for v in shape), generator=generator) * 255
    return pixels - torch.tensor(BGR_MEAN, dtype=torch.float32).view(1, 3, 1, 1)


def ort_session(onnx_bytes: bytes, threads: int | None = None, provider: str | None = None) -> OrtSession:
    """An ONNX Runtime session for an exported file (:class:`deploy.onnx_runtime.OrtSession`, default CPU)."""
    return OrtSession(onnx_bytes, threads, provider, label="the export")


def compare_output(name: str, ref: torch.Tensor, got: Any, tolerance: float) -> dict[str, Any]:
    """One output against its PyTorch reference: largest difference, scaled by max(1, largest |reference|)."""
    got = torch.as_tensor(got)
    row: dict[str, Any] = {"output": name, "shape": list(ref.shape)}
    if tuple(got.shape) != tuple(ref.shape):
        return {**row, "max_abs_diff": float("inf"), "max_abs_ref": None, "scaled_diff": float("inf"), "ok": False,
                "note": f"the runtime gave shape {list(got.shape)}"}
    diff = (got.double() - ref.double()).abs().max().item() if ref.numel() else 0.0
    scale = ref.abs().max().item() if ref.numel() else 0.0
    scaled = diff / max(1.0, scale)
    return {**row, "max_abs_diff": diff, "max_abs_ref": scale, "scaled_diff": scaled, "ok": scaled <= tolerance}


def check_onnx(onnx_bytes: bytes, reference: nn.Module, kind: str, shapes: Sequence[Sequence[int]],
               nms_settings: NmsSettings | None = None, tolerance: float = 1e-4, seed: int = 0,
               threads: int | None = None, inputs: Sequence[torch.Tensor] | None = None) -> list[dict[str, Any]]:
    """Run an export in ONNX Runtime on each input shape and compare it with the PyTorch ``reference``.

    The reference runs in eval mode as given (not folded), wrapped like the export (:func:`export_module`), on the
    same image-like input (:func:`image_like_input`; or the given ``inputs``, e.g. real images, instead of ``shapes``).
    An output matches when its largest absolute difference, divided by ``max(1, largest absolute reference value)``,
    is at most ``tolerance``: absolute for scores and
    small features, relative for pixel coordinates and large activations. An export with NMS is checked with
    :func:`check_detections` (float rounding may break ties between equal scores differently, so the two NMS results
    need not be the same list).

    Returns:
        One row per shape and output: ``input`` (the input shape), ``output``, ``shape``, ``max_abs_diff``,
        ``max_abs_ref``, ``scaled_diff``, ``ok`` (and ``note`` when something does not match).
    """
    module, names = export_module(kind, reference.eval(), nms_settings)
    session = ort_session(onnx_bytes, threads)
    rows = []
    examples = list(inputs) if inputs is not None else [image_like_input(shape, seed + i) for i, shape in
                                                          enumerate(shapes)]
    for x in examples:
        shape = tuple(x.shape)
        got = session.outputs(session.run(x.numpy()))
        with torch.no_grad():
            if nms_settings is not None:
                decoded = module.decoded(x)
                row = check_detections(torch.as_tensor(got[0]), decoded, module(x), nms_settings, tolerance)
                rows.append({"input": [int(v) for v in shape], **row})
                continue
            expected = module(x)
        for name, ref, out in zip(names, expected, got):
            rows.append({"input": [int(v) for v in shape], **compare_output(name, ref, out, tolerance)})
    return rows


def check_detections(detections: torch.Tensor, decoded: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                     reference: torch.Tensor, settings: NmsSettings, tolerance: float = 1e-4) -> dict[str, Any]:
    """Check an NMS output against PyTorch's decoded candidates: is it a correct result of the reference NMS?

    Each detection must be one of PyTorch's candidates (the ``top_k`` best above the score threshold of its image)
    to ``tolerance`` (scaled as in :func:`check_onnx`); per image the detections come in descending score order, at
    most ``keep_top_k``, no two overlapping by more than the NMS threshold, and every candidate left out is
    suppressed by a kept detection of at least its score, or ranks below ``keep_top_k`` kept ones: a greedy NMS
    result, whatever the order of equal scores.

    Args:
        detections: (N, 16) from the export.
        decoded: PyTorch's ``boxes``, ``scores``, ``landmarks`` for the same input.
        reference: PyTorch's own NMS output, for the agreement figure.
        settings: the NMS settings of the export.
        tolerance: as in :func:`check_onnx`.

    Returns:
        A row: ``output``, ``shape``, ``max_abs_diff`` (detections against their matching candidates),
        ``max_abs_ref``, ``scaled_diff``, ``agreement`` (share of PyTorch's detections found), ``ok``, ``note``.
    """
    from torchvision.ops import box_iou

    boxes, scores, landmarks = (t.double() for t in decoded)
    detections = detections.double()
    row: dict[str, Any] = {"output": "detections", "shape": list(detections.shape), "max_abs_ref": None}
    problems: list[str] = []
    if detections.dim() != 2 or detections.shape[1] != DETECTION_COLUMNS:
        return {**row, "max_abs_diff": float("inf"), "scaled_diff": float("inf"), "agreement": 0.0, "ok": False,
                "note": f"expected (N, {DETECTION_COLUMNS}) detections"}
    eps = 1e-6
    worst_abs = worst_scaled = 0.0
    found = 0
    for image in range(boxes.shape[0]):
        mine = detections[detections[:, 0] == image]
        order = scores[image].argsort(descending=True)[:settings.top_k]
        order = order[scores[image, order] > settings.score_threshold]
        candidates = torch.cat([boxes[image, order], scores[image, order, None], landmarks[image, order]], 1)
        scale = max(1.0, candidates.abs().max().item()) if len(candidates) else 1.0
        if len(mine) > settings.keep_top_k:
            problems.append(f"image {image}: {len(mine)} detections > keep-top-k {settings.keep_top_k}")
        if len(mine) > 1 and bool((mine[1:, 5] > mine[:-1, 5] + eps).any()):
            problems.append(f"image {image}: scores not in descending order")
        if not len(mine) or not len(candidates):
            if len(mine) != len(candidates):
                problems.append(f"image {image}: {len(mine)} detections from {len(candidates)} candidates")
            continue
        matched = torch.zeros(len(candidates), dtype=torch.bool)
        unmatched = 0
        for chunk in mine[:, 1:].split(64):  # columns: box, score, landmarks, as the candidates
            best, where = (chunk[:, None, :] - candidates[None, :, :]).abs().amax(-1).min(1)
            worst_abs = max(worst_abs, best.max().item())
            worst_scaled = max(worst_scaled, best.max().item() / scale)
            matched[where[best <= tolerance * scale]] = True
            unmatched += int((best > tolerance * scale).sum())
        if unmatched:
            problems.append(f"image {image}: {unmatched} detections match no PyTorch candidate")
        if len(mine) > 1:
            overlap = box_iou(mine[:, 1:5], mine[:, 1:5]).triu(1)
            if overlap.max().item() > settings.nms_threshold + eps:
                problems.append(f"image {image}: two kept boxes overlap by IoU {overlap.max().item():.3f}")
        left_out = candidates[~matched]
        if len(left_out):
            iou = box_iou(left_out[:, :4], mine[:, 1:5])
            stronger = mine[:, 5][None, :] >= left_out[:, 4:5] - eps
            suppressed = ((iou > settings.nms_threshold - eps) & stronger).any(1)
            if len(mine) >= settings.keep_top_k:  # full: what ranks below the last kept one may stay out
                suppressed |= left_out[:, 4] <= mine[:, 5].min() + eps
            if not bool(suppressed.all()):
                problems.append(f"image {image}: {int((~suppressed).sum())} candidates neither kept nor suppressed")
        theirs = reference[reference[:, 0] == image].double()
        if len(theirs) and len(mine):
            gap = (theirs[:, None, 1:] - mine[None, :, 1:]).abs().amax(-1).min(1).values
            found += int((gap <= tolerance * scale).sum())
    return {**row, "max_abs_diff": worst_abs, "scaled_diff": worst_scaled,
            "agreement": found / len(reference) if len(reference) else 1.0, "ok": not problems,
            "note": "; ".join(problems)}


def check_summary(rows: Sequence[dict[str, Any]]) -> str:
    """One line per input shape: the largest difference of each output (and the NMS agreement)."""
    lines = []
    for shape in dict.fromkeys(tuple(row["input"]) for row in rows):
        parts = []
        for row in rows:
            if tuple(row["input"]) != shape:
                continue
            text = f"{row['output']} {row['max_abs_diff']:.2e}"
            if "agreement" in row:
                text += f" ({row['shape'][0]} detections, {100 * row['agreement']:.1f}% of PyTorch's NMS output found)"
            parts.append(text + ("" if row["ok"] else f" FAIL {row.get('note', '')}".rstrip()))
        lines.append(f"  [{', '.join(str(v) for v in shape)}]: max |ONNX - PyTorch| " + ", ".join(parts))
    return "\n".join(lines)


def largest_difference(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The row with the largest scaled difference (what the check is decided on)."""
    return max(rows, key=lambda row: row["scaled_diff"])
