"""RetinaFace on FaceNAS backbones: priors, encoding, head shapes, post-processing, deploy form."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import models
from models.anchors import (
    decode_boxes,
    decode_landmarks,
    encode_boxes,
    encode_landmarks,
    make_priors,
    postprocess,
)
from models.backbone import deploy_form


def test_prior_count_and_layout_at_640() -> None:
    priors = make_priors(640)
    assert priors.shape == (16800, 4)
    # first level: step 8, min sizes 16 and 32, row-major cells, two anchors per cell
    torch.testing.assert_close(priors[0], torch.tensor([4 / 640, 4 / 640, 16 / 640, 16 / 640]))
    torch.testing.assert_close(priors[1], torch.tensor([4 / 640, 4 / 640, 32 / 640, 32 / 640]))
    torch.testing.assert_close(priors[2, :2], torch.tensor([12 / 640, 4 / 640]))
    torch.testing.assert_close(priors[-1], torch.tensor([624 / 640, 624 / 640, 512 / 640, 512 / 640]))


def test_priors_follow_non_square_inputs() -> None:
    priors = make_priors((320, 480))
    assert priors.shape[0] == 2 * (40 * 60 + 20 * 30 + 10 * 15)
    assert priors[:, 0].max() < 1 and priors[:, 1].max() < 1


def test_box_and_landmark_encoding_round_trip() -> None:
    priors = make_priors(320)[:500]
    boxes = torch.rand(500, 2) * 0.5
    boxes = torch.cat([boxes, boxes + 0.05 + torch.rand(500, 2) * 0.3], dim=1)
    torch.testing.assert_close(decode_boxes(encode_boxes(boxes, priors), priors), boxes, atol=1e-5, rtol=1e-5)
    points = torch.rand(500, 10)
    torch.testing.assert_close(decode_landmarks(encode_landmarks(points, priors), priors), points,
                               atol=1e-5, rtol=1e-5)
    # a box equal to its prior encodes to zero
    prior_boxes = torch.cat([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], dim=1)
    assert encode_boxes(prior_boxes, priors).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["R12_V3_HS", "mobile0.25", "J15_HS"])
def test_detector_output_shapes(name: str) -> None:
    detector = models.build_detector(name)
    loc, logits, landmarks = detector(torch.randn(2, 3, 640, 640))
    assert loc.shape == (2, 16800, 4) and logits.shape == (2, 16800, 2) and landmarks.shape == (2, 16800, 10)
    assert detector.fpn_channels == 64


def test_wide_backbones_get_the_resnet50_fpn_width() -> None:
    assert models.build_detector("TT3_NoSE").fpn_channels == 256
    detector = models.build_detector("resnet50")
    assert detector.fpn_channels == 256
    assert isinstance(detector.fpn.lateral[0].act, nn.ReLU)
    assert isinstance(models.build_detector("R12_V3_HS").fpn.lateral[0].act, nn.LeakyReLU)


def test_ssh_branch_widths() -> None:
    ssh = models.build_detector("R12_V3_HS").ssh[0]
    assert (ssh.conv3.conv.out_channels, ssh.conv5_2.conv.out_channels, ssh.conv7_3.conv.out_channels) == (32, 16, 16)


def test_postprocess_keeps_confident_boxes_and_applies_nms() -> None:
    priors = make_priors(64)
    count = priors.shape[0]
    loc = torch.zeros(1, count, 4)
    expected = torch.cat([priors[10, :2] - priors[10, 2:] / 2, priors[10, :2] + priors[10, 2:] / 2])
    shifted = expected + torch.tensor([0.02, 0.0, 0.02, 0.0])
    loc[0, 12] = encode_boxes(shifted, priors[12])  # prior 12 predicts a box overlapping prior 10's (IoU ~0.6)
    scores = torch.full((1, count), 0.01)
    scores[0, 10] = 0.9
    scores[0, 12] = 0.8
    scores[0, count - 1] = 0.5
    scores[0, 20] = 0.015  # below the 0.02 score threshold
    out = postprocess(loc, scores, torch.zeros(1, count, 10), priors, (64, 64), nms_threshold=0.4)[0]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.5])
    expected = expected * 64
    torch.testing.assert_close(out["boxes"][0], expected)
    assert out["landmarks"].shape == (2, 10)


def test_detect_returns_pixel_boxes_in_descending_order() -> None:
    detector = models.build_detector("R12_V3_HS").eval()
    results = detector.detect(torch.randn(2, 3, 96, 128), keep_top_k=20)
    assert len(results) == 2
    for result in results:
        assert len(result["scores"]) <= 20
        assert torch.all(result["scores"][:-1] >= result["scores"][1:])


def test_detector_deploy_form_matches_within_1e_4() -> None:
    detector = models.build_detector("R11_V2_HS")
    for bn in detector.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    detector.eval()
    deployed = deploy_form(detector, channels_last=True)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        for a, b in zip(detector(x), deployed(x.contiguous(memory_format=torch.channels_last))):
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["R12_V3_HS", "resnet50"])
def test_detector_scripts_traces_and_exports(name: str, one_thread) -> None:
    detector = models.build_detector(name).eval()
    x = torch.randn(1, 3, 64, 80)
    scripted = torch.jit.script(detector)
    with torch.no_grad():
        expected = detector(x)
        for form in (scripted, torch.jit.trace(detector, x), torch.export.export(detector, (x,)).module()):
            for a, b in zip(form(x), expected):
                torch.testing.assert_close(a, b)
        other = torch.randn(1, 3, 96, 64)  # the scripted detector at another input size
        for a, b in zip(scripted(other), detector(other)):
            torch.testing.assert_close(a, b)


def test_fpn_takes_three_levels() -> None:
    from models.retinaface import FPN

    with pytest.raises(ValueError, match="3 backbone levels"):
        FPN([16, 32], 64)
