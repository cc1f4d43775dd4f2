"""Prior matching and the RetinaFace multibox loss, vectorised over the whole batch (SPEC section 8).

Targets come from :func:`data.widerface.detection_collate`: ``(B, M, 15)`` rows of ``x1, y1, x2, y2`` (normalised
to 0..1), ten landmark coordinates, and a flag (1 = face with landmarks, -1 = face without, 0 = padding row).

Matching, per image (done for all images at once on the flattened list of real faces):

1. IoU of every face with every prior (priors in corner form).
2. Each face is forced onto its best prior, provided that best IoU reaches ``force_threshold`` (0.2); when two faces
   claim the same prior the later face wins, as in the reference loop.
3. Every other prior takes the face it overlaps most; it is positive when that IoU reaches ``threshold`` (0.35).

Differences from the reference PyTorch RetinaFace, on purpose:

* a face whose best IoU is below 0.2 is really ignored: the reference still re-points that face's best prior at it
  (so the prior could become a positive carrying an unmatched face's box);
* landmark targets are zero (and masked out) wherever there is no positive with landmarks, including images without
  any face; the reference leaves them uninitialised for such images;
* nothing is moved to CUDA by hand: every tensor is created on the device of its inputs.

Loss: cross-entropy over positives and hard negatives (7 negatives per positive, per image, ranked by their
cross-entropy) + 2.0 x Smooth-L1 on the encoded boxes of all positives + Smooth-L1 on the encoded landmarks of the
positives whose face has landmarks. Classification and box terms are divided by the number of positives in the
batch and the landmark term by the number of positives with landmarks (each at least 1). As in the reference, an
image without positives contributes no negatives, so a batch without faces gives a loss of exactly zero.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from models.anchors import encode_boxes, encode_landmarks

MATCH_THRESHOLD = 0.35
FORCE_THRESHOLD = 0.2
NEG_POS_RATIO = 7
LOC_WEIGHT = 2.0


@dataclass
class MatchResult:
    """Per-prior training targets for a batch.

    Attributes:
        labels: int64 ``(B, P)``: 1 for a positive (face) prior, 0 for background.
        box_targets: float32 ``(B, P, 4)`` encoded box offsets of the matched face (zero where ``labels`` is 0).
        landmark_targets: float32 ``(B, P, 10)`` encoded landmark offsets (zero where ``landmark_mask`` is False).
        landmark_mask: bool ``(B, P)``: positive priors whose face has landmarks.
        matched: int64 ``(B, P)``: index (0..M-1) of the face each prior overlaps most, -1 where the image has none.
    """

    labels: torch.Tensor
    box_targets: torch.Tensor
    landmark_targets: torch.Tensor
    landmark_mask: torch.Tensor
    matched: torch.Tensor


def point_form(priors: torch.Tensor) -> torch.Tensor:
    """Priors ``(P, 4)`` ``cx, cy, w, h`` -> corners ``x1, y1, x2, y2``."""
    return torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], dim=1)


@torch.no_grad()
def match(priors: torch.Tensor, targets: torch.Tensor, threshold: float = MATCH_THRESHOLD,
          force_threshold: float = FORCE_THRESHOLD) -> MatchResult:
    """Assign a face (or background) to every prior of every image.

    Args:
        priors: ``(P, 4)`` ``cx, cy, w, h`` normalised (``RetinaFace.priors``).
        targets: ``(B, M, 15)`` padded targets (module docstring); ``M`` may be 0.
        threshold: IoU from which a prior is positive (0.35).
        force_threshold: a face is forced onto its best prior only when that IoU reaches this value (0.2).

    Returns:
        The :class:`MatchResult`.
    """
    priors = priors.float()
    targets = targets.float()
    batch, num_faces = targets.shape[:2]
    num_priors = priors.shape[0]
    device = priors.device
    labels = torch.zeros(batch, num_priors, dtype=torch.long, device=device)
    matched = torch.full((batch, num_priors), -1, dtype=torch.long, device=device)
    box_targets = torch.zeros(batch, num_priors, 4, device=device)
    landmark_targets = torch.zeros(batch, num_priors, 10, device=device)
    landmark_mask = torch.zeros(batch, num_priors, dtype=torch.bool, device=device)

    valid = targets[..., 14] != 0
    image_of, face_of = valid.nonzero(as_tuple=True)  # flattened real faces, grouped by image
    if image_of.numel() == 0:
        return MatchResult(labels, box_targets, landmark_targets, landmark_mask, matched)
    faces = targets[image_of, face_of]  # (G, 15)
    num_real = faces.shape[0]
    overlaps = box_iou(faces[:, :4], point_form(priors))  # (G, P)

    # Best face per (image, prior): the maximum over the faces of that image. scatter_reduce over the flattened face
    # list avoids the (B, M, P) padded tensor, which is large when one image has hundreds of faces.
    rows = image_of[:, None].expand(num_real, num_priors)
    best_overlap = torch.full((batch, num_priors), -1.0, device=device)
    best_overlap.scatter_reduce_(0, rows, overlaps, reduce="amax", include_self=True)
    # First face reaching the maximum (the reference's max() returns the first index on ties).
    face_ids = torch.arange(num_real, device=device)[:, None].expand(num_real, num_priors)
    is_best = overlaps == best_overlap[image_of]
    best_face = torch.full((batch, num_priors), num_real, dtype=torch.long, device=device)
    best_face.scatter_reduce_(0, rows, torch.where(is_best, face_ids, num_real), reduce="amin", include_self=True)

    # Force each face onto its best prior (later faces win on a shared prior, like the reference loop).
    face_best_overlap, face_best_prior = overlaps.max(dim=1)
    forced = face_best_overlap >= force_threshold
    if forced.any():
        flat = image_of[forced] * num_priors + face_best_prior[forced]
        winner = torch.full((batch * num_priors,), -1, dtype=torch.long, device=device)
        winner.scatter_reduce_(0, flat, torch.arange(num_real, device=device)[forced], reduce="amax",
                               include_self=True)
        winner = winner.view(batch, num_priors)
        force_mask = winner >= 0
        best_face = torch.where(force_mask, winner, best_face)
        best_overlap = torch.where(force_mask, torch.full_like(best_overlap, 2.0), best_overlap)

    has_faces = best_face < num_real
    best_face = best_face.clamp_max(num_real - 1)
    positive = has_faces & (best_overlap >= threshold)
    labels = positive.long()
    matched = torch.where(has_faces, face_of[best_face], matched)

    assigned = faces[best_face]  # (B, P, 15)
    prior_grid = priors.expand(batch, num_priors, 4)
    box_targets = torch.where(positive[..., None], encode_boxes(assigned[..., :4], prior_grid), box_targets)
    landmark_mask = positive & (assigned[..., 14] > 0)
    landmark_targets = torch.where(landmark_mask[..., None], encode_landmarks(assigned[..., 4:14], prior_grid),
                                   landmark_targets)
    return MatchResult(labels, box_targets, landmark_targets, landmark_mask, matched)


def hard_negative_mask(class_loss: torch.Tensor, positive: torch.Tensor, ratio: int = NEG_POS_RATIO) -> torch.Tensor:
    """Per image, the ``ratio`` x (number of positives) negatives with the highest classification loss.

    Args:
        class_loss: ``(B, P)`` per-prior cross-entropy (no gradient needed).
        positive: bool ``(B, P)``.
        ratio: negatives per positive (capped at ``P - 1`` as in the reference).

    Returns:
        bool ``(B, P)`` mask of the mined negatives (never overlapping ``positive``).
    """
    loss = class_loss.detach().masked_fill(positive, 0.0)
    order = loss.sort(dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                                            .expand_as(order))
    num_neg = (ratio * positive.sum(dim=1, keepdim=True)).clamp(max=positive.shape[1] - 1)
    return (rank < num_neg) & ~positive


class MultiBoxLoss(nn.Module):
    """RetinaFace training loss (module docstring).

    Args:
        threshold: positive IoU (0.35).
        force_threshold: minimum best IoU for forcing a face onto its best prior (0.2).
        neg_pos_ratio: hard negatives per positive (7).
        loc_weight: weight of the box term (2.0).
    """

    def __init__(self, threshold: float = MATCH_THRESHOLD, force_threshold: float = FORCE_THRESHOLD,
                 neg_pos_ratio: int = NEG_POS_RATIO, loc_weight: float = LOC_WEIGHT) -> None:
        super().__init__()
        self.threshold = threshold
        self.force_threshold = force_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.loc_weight = loc_weight

    def forward(self, predictions: tuple[torch.Tensor, torch.Tensor, torch.Tensor], targets: torch.Tensor,
                priors: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compute the loss.

        Args:
            predictions: the detector's ``(loc (B, P, 4), logits (B, P, 2), landmarks (B, P, 10))``; any dtype,
                the loss is computed in float32 (safe under autocast).
            targets: ``(B, M, 15)`` padded targets on the same device.
            priors: ``(P, 4)`` priors of the input size.

        Returns:
            ``total`` (the scalar to back-propagate), ``cls``, ``box`` (unweighted), ``landmark`` (0-d tensors) and
            ``positives``, ``landmark_positives`` (counts in the batch, 0-d int64).
        """
        loc, logits, landmarks = predictions
        device_type = loc.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            loc, logits, landmarks = loc.float(), logits.float(), landmarks.float()
            if targets.device != loc.device:
                raise ValueError(f"targets are on {targets.device} but predictions on {loc.device}")
            m = match(priors.to(loc.device), targets, self.threshold, self.force_threshold)
            positive = m.labels > 0
            num_pos = positive.sum()
            num_landmark = m.landmark_mask.sum()

            box_loss = F.smooth_l1_loss(loc[positive], m.box_targets[positive], reduction="sum")
            landmark_loss = F.smooth_l1_loss(landmarks[m.landmark_mask], m.landmark_targets[m.landmark_mask],
                                             reduction="sum")
            class_loss = F.cross_entropy(logits.reshape(-1, 2), m.labels.reshape(-1), reduction="none")
            class_loss = class_loss.view(m.labels.shape)
            negatives = hard_negative_mask(class_loss, positive, self.neg_pos_ratio)
            cls_loss = class_loss[positive | negatives].sum()

            pos_norm = num_pos.clamp(min=1).float()
            cls_loss = cls_loss / pos_norm
            box_loss = box_loss / pos_norm
            landmark_loss = landmark_loss / num_landmark.clamp(min=1).float()
            total = cls_loss + self.loc_weight * box_loss + landmark_loss
        return {"total": total, "cls": cls_loss, "box": box_loss, "landmark": landmark_loss,
                "positives": num_pos, "landmark_positives": num_landmark}
