"""RetinaFace priors, box / landmark encoding and post-processing (SPEC section 8).

Priors are ``(cx, cy, w, h)`` normalised by the image size, level by level (steps 8, 16, 32), row-major, two square
anchors per cell (min sizes [16, 32], [64, 128], [256, 512]); 16,800 of them at 640x640. Offsets are encoded with
variances (0.1, 0.2) as in the reference RetinaFace.
"""
from __future__ import annotations

import math

import torch
from torchvision.ops import nms

STEPS = (8, 16, 32)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
VARIANCES = (0.1, 0.2)


def feature_sizes(image_size: tuple[int, int]) -> list[tuple[int, int]]:
    """Feature-map (height, width) at each FPN level for an input (height, width): ceil(side / step)."""
    return [(math.ceil(image_size[0] / s), math.ceil(image_size[1] / s)) for s in STEPS]


def make_priors(image_size: tuple[int, int] | int, device: torch.device | str | None = None) -> torch.Tensor:
    """All priors for an input size, shape (P, 4) ``cx, cy, w, h`` in [0, 1] units.

    Args:
        image_size: (height, width) or one side of a square.
        device: where to create them.
    """
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    levels = []
    for (fh, fw), step, sizes in zip(feature_sizes((height, width)), STEPS, MIN_SIZES):
        ys, xs = torch.meshgrid(torch.arange(fh, device=device, dtype=torch.float32),
                                torch.arange(fw, device=device, dtype=torch.float32), indexing="ij")
        cx = ((xs + 0.5) * step / width).reshape(-1, 1).expand(-1, len(sizes))
        cy = ((ys + 0.5) * step / height).reshape(-1, 1).expand(-1, len(sizes))
        w = torch.tensor([s / width for s in sizes], device=device).expand_as(cx)
        h = torch.tensor([s / height for s in sizes], device=device).expand_as(cx)
        levels.append(torch.stack([cx, cy, w, h], dim=-1).reshape(-1, 4))
    return torch.cat(levels)


def encode_boxes(boxes: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Encode corner boxes ``(..., 4)`` x1 y1 x2 y2 against matching priors ``(..., 4)`` into regression targets."""
    centre = ((boxes[..., :2] + boxes[..., 2:]) / 2 - priors[..., :2]) / (VARIANCES[0] * priors[..., 2:])
    size = torch.log(((boxes[..., 2:] - boxes[..., :2]) / priors[..., 2:]).clamp_min(1e-6)) / VARIANCES[1]
    return torch.cat([centre, size], dim=-1)


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_boxes`: regression outputs ``(..., 4)`` -> corner boxes x1 y1 x2 y2."""
    centre = priors[..., :2] + loc[..., :2] * VARIANCES[0] * priors[..., 2:]
    size = priors[..., 2:] * torch.exp(loc[..., 2:] * VARIANCES[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def encode_landmarks(landmarks: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Encode five points ``(..., 10)`` (x, y pairs) as offsets from the prior centre in prior-size units."""
    points = landmarks.reshape(*landmarks.shape[:-1], 5, 2)
    offsets = (points - priors[..., None, :2]) / (VARIANCES[0] * priors[..., None, 2:])
    return offsets.reshape(landmarks.shape)


def decode_landmarks(pred: torch.Tensor, priors: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_landmarks`."""
    offsets = pred.reshape(*pred.shape[:-1], 5, 2)
    points = priors[..., None, :2] + offsets * VARIANCES[0] * priors[..., None, 2:]
    return points.reshape(pred.shape)


def postprocess(
    loc: torch.Tensor,
    scores: torch.Tensor,
    landmarks: torch.Tensor,
    priors: torch.Tensor,
    image_size: tuple[int, int],
    score_threshold: float = 0.02,
    nms_threshold: float = 0.4,
    top_k: int = 5000,
    keep_top_k: int = 750,
) -> list[dict[str, torch.Tensor]]:
    """Detections per image: decode, keep score > threshold, top-k, NMS (torchvision), keep-top-k.

    Args:
        loc: (B, P, 4) box regressions.
        scores: (B, P) face probabilities.
        landmarks: (B, P, 10) landmark regressions.
        priors: (P, 4).
        image_size: (height, width) in pixels of the network input, to scale boxes back to pixels.
        score_threshold: minimum face score (SPEC: 0.02).
        nms_threshold: NMS IoU (SPEC: 0.4).
        top_k: candidates kept before NMS.
        keep_top_k: detections kept after NMS.

    Returns:
        One dict per image with ``boxes`` (N, 4) x1 y1 x2 y2 pixels, ``scores`` (N,), ``landmarks`` (N, 10) pixels,
        in descending score order.
    """
    height, width = image_size
    box_scale = loc.new_tensor([width, height, width, height])
    point_scale = loc.new_tensor([width, height] * 5)
    boxes_all = decode_boxes(loc, priors) * box_scale
    points_all = decode_landmarks(landmarks, priors) * point_scale
    return [select_detections(boxes, score, points, score_threshold, nms_threshold, top_k, keep_top_k)
            for boxes, score, points in zip(boxes_all, scores, points_all)]


def select_detections(boxes: torch.Tensor, scores: torch.Tensor, landmarks: torch.Tensor,
                      score_threshold: float = 0.02, nms_threshold: float = 0.4, top_k: int = 5000,
                      keep_top_k: int = 750) -> dict[str, torch.Tensor]:
    """One image's detections from its decoded candidates: score > threshold, top-k, NMS, keep-top-k.

    The selection half of :func:`postprocess`, also used on the decoded outputs of an ONNX export.

    Args:
        boxes: (P, 4) x1 y1 x2 y2.
        scores: (P,) face probabilities.
        landmarks: (P, 10).
        score_threshold, nms_threshold, top_k, keep_top_k: see :func:`postprocess`.
    """
    keep = torch.nonzero(scores > score_threshold).squeeze(1)
    keep = keep[scores[keep].argsort(descending=True, stable=True)[:top_k]]  # ties in index order, as ONNX TopK
    boxes, scores, landmarks = boxes[keep], scores[keep], landmarks[keep]
    kept = nms(boxes.float(), scores.float(), nms_threshold)[:keep_top_k]
    return {"boxes": boxes[kept], "scores": scores[kept], "landmarks": landmarks[kept]}
