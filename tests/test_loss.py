"""Matching and MultiBoxLoss on hand-checked cases, and against a per-image loop written from the protocol."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from models.anchors import decode_boxes, decode_landmarks, encode_boxes, make_priors
from models.loss import MultiBoxLoss, hard_negative_mask, match, point_form


def _face(x1, y1, x2, y2, landmarks: bool = True) -> list[float]:
    """A target row; landmarks are five points inside the box (or -1 with flag -1)."""
    if landmarks:
        w, h = x2 - x1, y2 - y1
        pts = [x1 + 0.3 * w, y1 + 0.4 * h, x1 + 0.7 * w, y1 + 0.4 * h, x1 + 0.5 * w, y1 + 0.55 * h,
               x1 + 0.35 * w, y1 + 0.75 * h, x1 + 0.65 * w, y1 + 0.75 * h]
        return [x1, y1, x2, y2, *pts, 1.0]
    return [x1, y1, x2, y2, *([-1.0] * 10), -1.0]


def _targets(images: list[list[list[float]]]) -> torch.Tensor:
    """Pad per-image face lists the way detection_collate does."""
    m = max((len(faces) for faces in images), default=0)
    out = torch.zeros(len(images), m, 15)
    for i, faces in enumerate(images):
        if faces:
            out[i, : len(faces)] = torch.tensor(faces)
    return out


def test_prior_identical_to_face_is_positive_with_exact_targets():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.05, 0.05], [0.9, 0.9, 0.1, 0.1]])
    targets = _targets([[_face(0.4, 0.4, 0.6, 0.6)]])
    m = match(priors, targets)
    assert m.labels.tolist() == [[1, 0, 0]]
    # The face coincides with prior 0: zero offsets, log(1) = 0 sizes.
    assert torch.allclose(m.box_targets[0, 0], torch.zeros(4), atol=1e-6)
    assert m.landmark_mask.tolist() == [[True, False, False]]
    # Landmark targets decode back to the face's points.
    points = decode_landmarks(m.landmark_targets[0, :1], priors[:1])
    assert torch.allclose(points, targets[0, 0, 4:14][None], atol=1e-5)
    assert torch.count_nonzero(m.box_targets[0, 1:]) == 0 and torch.count_nonzero(m.landmark_targets[0, 1:]) == 0


def test_threshold_and_forcing():
    # Face 0.4..0.6; prior A: same centre, side 0.3 -> IoU 0.04/0.09 = 0.444 (positive by threshold);
    # prior B: same centre, side 0.4 -> IoU 0.25 (below 0.35: negative unless forced).
    priors = torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.5, 0.5, 0.4, 0.4]])
    m = match(priors, _targets([[_face(0.4, 0.4, 0.6, 0.6)]]))
    assert m.labels.tolist() == [[1, 0]]
    # Only prior B: its IoU 0.25 is < 0.35 but >= 0.2, so the face is forced onto it.
    m = match(priors[1:], _targets([[_face(0.4, 0.4, 0.6, 0.6)]]))
    assert m.labels.tolist() == [[1]]
    # Side 0.5 -> IoU 0.16 < 0.2: not forced, the face is ignored.
    m = match(torch.tensor([[0.5, 0.5, 0.5, 0.5]]), _targets([[_face(0.4, 0.4, 0.6, 0.6)]]))
    assert m.labels.tolist() == [[0]]


def test_two_faces_one_best_prior_later_face_wins_and_other_prior_keeps_its_best_face():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.52, 0.5, 0.2, 0.2]])
    # Both faces' best prior is prior 0 (IoU 1.0 and 0.95); prior 1 overlaps face 1 more (0.86 vs 0.82).
    faces = [_face(0.4, 0.4, 0.6, 0.6), _face(0.405, 0.4, 0.605, 0.6, landmarks=False)]
    m = match(priors, _targets([faces]))
    assert m.labels.tolist() == [[1, 1]]
    assert m.matched.tolist() == [[1, 1]]  # prior 0 forced to the later face (reference loop order)
    assert m.landmark_mask.tolist() == [[False, False]]  # face 1 has no landmarks
    assert torch.count_nonzero(m.landmark_targets) == 0


def test_faces_without_landmarks_and_images_without_faces():
    priors = make_priors(64)
    targets = _targets([[_face(0.1, 0.1, 0.5, 0.5, landmarks=False)], [], [_face(0.5, 0.5, 0.9, 0.9)]])
    m = match(priors, targets)
    assert m.labels[0].sum() > 0 and not m.landmark_mask[0].any()
    assert m.labels[1].sum() == 0 and not m.landmark_mask[1].any() and (m.matched[1] == -1).all()
    assert torch.count_nonzero(m.box_targets[1]) == 0 and torch.count_nonzero(m.landmark_targets[1]) == 0
    assert m.landmark_mask[2].sum() == m.labels[2].sum() > 0
    # Box targets of positives decode back to the face box.
    pos = m.labels[2].bool()
    decoded = decode_boxes(m.box_targets[2][pos], priors[pos])
    assert torch.allclose(decoded, targets[2, 0, :4].expand_as(decoded), atol=1e-5)


def test_batch_without_any_face_gives_zero_finite_loss_and_gradients():
    priors = make_priors(64)
    p = priors.shape[0]
    preds = [torch.randn(2, p, 4, requires_grad=True), torch.randn(2, p, 2, requires_grad=True),
             torch.randn(2, p, 10, requires_grad=True)]
    for targets in (torch.zeros(2, 0, 15), torch.zeros(2, 3, 15)):
        losses = MultiBoxLoss()(tuple(preds), targets, priors)
        assert all(math.isfinite(float(losses[k].detach())) for k in ("total", "cls", "box", "landmark"))
        assert float(losses["total"].detach()) == 0.0
        losses["total"].backward()
        assert all(torch.isfinite(t.grad).all() for t in preds)


def test_hard_negative_mining_picks_the_highest_losses_per_image():
    loss = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.3, 0.8], [0.9, 0.1, 0.2, 0.3, 0.4, 0.5]])
    positive = torch.tensor([[True, False, False, False, False, False], [False] * 6])
    neg = hard_negative_mask(loss, positive, ratio=2)
    assert neg[0].tolist() == [False, True, False, False, False, True]  # 0.9 and 0.8
    assert not neg[1].any()  # no positives -> no negatives (reference)
    neg = hard_negative_mask(loss, positive, ratio=7)  # capped at P - 1 = 5: all negatives of image 0
    assert neg[0].tolist() == [False, True, True, True, True, True]


def test_loss_value_matches_hand_computation():
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.05, 0.05], [0.9, 0.9, 0.1, 0.1],
                           [0.2, 0.8, 0.1, 0.1]])
    targets = _targets([[_face(0.42, 0.4, 0.6, 0.62)]])
    loc = torch.tensor([[[0.1, -0.2, 0.3, 0.0], [0.0] * 4, [0.0] * 4, [0.0] * 4]])
    logits = torch.tensor([[[0.0, 1.0], [0.0, 3.0], [2.0, 0.0], [0.0, 0.5]]])
    land = torch.zeros(1, 4, 10)
    crit = MultiBoxLoss(neg_pos_ratio=2)
    out = crit((loc, logits, land), targets, priors)
    box_t = encode_boxes(targets[0, 0, :4], priors[0])
    expect_box = F.smooth_l1_loss(loc[0, 0], box_t, reduction="sum")
    ce = F.cross_entropy(logits[0], torch.tensor([1, 0, 0, 0]), reduction="none")
    # Negatives ranked by CE: prior 1 (logit 3 for face) then prior 3; prior 2 is easy.
    expect_cls = ce[0] + ce[1] + ce[3]
    m = match(priors, targets)
    expect_land = F.smooth_l1_loss(land[0, 0], m.landmark_targets[0, 0], reduction="sum")
    assert torch.allclose(out["box"], expect_box)
    assert torch.allclose(out["cls"], expect_cls)
    assert torch.allclose(out["landmark"], expect_land)
    assert torch.allclose(out["total"], expect_cls + 2.0 * expect_box + expect_land)
    assert int(out["positives"]) == 1 and int(out["landmark_positives"]) == 1


def _loop_match(priors: torch.Tensor, faces: torch.Tensor, threshold=0.35, force=0.2):
    """One image at a time, written from the protocol (not from the vectorised code)."""
    p = priors.shape[0]
    labels = torch.zeros(p, dtype=torch.long)
    matched = torch.full((p,), -1, dtype=torch.long)
    if len(faces) == 0:
        return labels, matched
    iou = box_iou(faces[:, :4], point_form(priors))
    best_face_overlap, best_face = iou.max(0)
    best_prior_overlap, best_prior = iou.max(1)
    for j in range(len(faces)):
        if best_prior_overlap[j] >= force:
            best_face[best_prior[j]] = j
            best_face_overlap[best_prior[j]] = 2.0
    labels = (best_face_overlap >= threshold).long()
    return labels, best_face


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_match_equals_per_image_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    priors = make_priors((96, 128))
    images = []
    for i in range(5):
        n = [0, 1, 3, 7, 12][i]
        xy = torch.rand(n, 2, generator=gen) * 0.8
        wh = torch.rand(n, 2, generator=gen) * 0.3 + 0.02
        rows = []
        for k in range(n):
            x1, y1 = xy[k].tolist()
            x2, y2 = (xy[k] + wh[k]).clamp(max=1).tolist()
            rows.append(_face(x1, y1, x2, y2, landmarks=bool(k % 2)))
        images.append(rows)
    targets = _targets(images)
    m = match(priors, targets)
    for i, rows in enumerate(images):
        faces = torch.tensor(rows).reshape(-1, 15)
        labels, best = _loop_match(priors, faces)
        assert torch.equal(m.labels[i], labels)
        if rows:
            assert torch.equal(m.matched[i], best)
            pos = labels.bool()
            flags = faces[best[pos], 14]
            assert torch.equal(m.landmark_mask[i][pos], flags > 0)
            assert torch.allclose(m.box_targets[i][pos], encode_boxes(faces[best[pos], :4], priors[pos]), atol=1e-5)


def test_loss_is_float32_under_autocast_and_with_half_predictions():
    priors = make_priors(64)
    p = priors.shape[0]
    targets = _targets([[_face(0.2, 0.2, 0.6, 0.7)]])
    preds = (torch.randn(1, p, 4).bfloat16(), torch.randn(1, p, 2).bfloat16(), torch.randn(1, p, 10).bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = MultiBoxLoss()(preds, targets, priors)
    assert out["total"].dtype == torch.float32 and math.isfinite(float(out["total"]))
