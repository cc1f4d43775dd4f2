"""RetinaFace on any ``features_only`` backbone: 3-level FPN, SSH context modules and 1x1 heads (SPEC section 8).

Constants follow the reference PyTorch RetinaFace: FPN out channels 64 (mobile0.25) or 256 (ResNet-50), LeakyReLU
0.1 when out channels <= 64 else ReLU, SSH branches C/2 + C/4 + C/4, two anchors per cell, 5 landmarks.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.anchors import make_priors, postprocess
from models.blocks import ConvBnAct


def default_fpn_channels(in_channels: list[int]) -> int:
    """RetinaFace's choice by backbone width: 256 for wide backbones (ResNet-50, TT3), 64 for mobile ones.

    The thesis does not state the FPN width of its searched nets; this rule gives the DGX-1 nets the ResNet-50
    setting they are compared with and the embedded nets the mobile0.25 setting.
    """
    return 256 if max(in_channels) >= 1024 else 64


class FPN(nn.Module):
    """RetinaFace's 3-level feature pyramid: 1x1 laterals, nearest upsample + add, 3x3 merge on the two finer levels.

    The top-down pass is written out level by level: TorchScript indexes a ``ModuleList`` only by a literal.
    """

    def __init__(self, in_channels: list[int], out_channels: int):
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"the FPN takes 3 backbone levels, got {len(in_channels)}")
        act = "LR" if out_channels <= 64 else "RE"
        self.lateral = nn.ModuleList(ConvBnAct(c, out_channels, 1, act=act) for c in in_channels)
        self.merge = nn.ModuleList(ConvBnAct(out_channels, out_channels, 3, act=act) for _ in in_channels[:-1])

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        outs: list[torch.Tensor] = []
        for i, lateral in enumerate(self.lateral):
            outs.append(lateral(features[i]))
        # coarsest first: stride 16 takes the upsampled stride 32, then stride 8 the merged stride 16
        outs[1] = self.merge[1](outs[1] + F.interpolate(outs[2], size=outs[1].shape[-2:], mode="nearest"))
        outs[0] = self.merge[0](outs[0] + F.interpolate(outs[1], size=outs[0].shape[-2:], mode="nearest"))
        return outs


class SSH(nn.Module):
    """Single-stage headless context module: 3x3 (C/2), two 3x3 (C/4), three 3x3 (C/4), concatenated, ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        if channels % 4:
            raise ValueError(f"SSH needs channels divisible by 4, not {channels}")
        act = "LR" if channels <= 64 else "RE"
        quarter = channels // 4
        self.conv3 = ConvBnAct(channels, channels // 2, 3)
        self.conv5_1 = ConvBnAct(channels, quarter, 3, act=act)
        self.conv5_2 = ConvBnAct(quarter, quarter, 3)
        self.conv7_2 = ConvBnAct(quarter, quarter, 3, act=act)
        self.conv7_3 = ConvBnAct(quarter, quarter, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5 = self.conv5_1(x)
        branch7 = self.conv7_2(branch5)
        return F.relu(torch.cat([self.conv3(x), self.conv5_2(branch5), self.conv7_3(branch7)], dim=1))


class Head(nn.Module):
    """1x1 conv predicting ``per_anchor`` values for each anchor; output (B, H*W*anchors, per_anchor)."""

    def __init__(self, channels: int, anchors: int, per_anchor: int):
        super().__init__()
        self.per_anchor = per_anchor
        self.conv = nn.Conv2d(channels, anchors * per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.per_anchor)


class RetinaFace(nn.Module):
    """The detector.

    Args:
        backbone: a module returning the three FPN inputs (strides 8, 16, 32) as a list, e.g.
            ``timm.create_model(name, features_only=True)``.
        in_channels: channels of those three inputs.
        fpn_channels: FPN / SSH width; default by :func:`default_fpn_channels`.
        anchors: anchors per cell (2).
    """

    def __init__(self, backbone: nn.Module, in_channels: list[int], fpn_channels: int | None = None, anchors: int = 2):
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"RetinaFace needs 3 backbone levels, got {len(in_channels)}")
        self.backbone = backbone
        self.fpn_channels = fpn_channels or default_fpn_channels(in_channels)
        self.fpn = FPN(in_channels, self.fpn_channels)
        self.ssh = nn.ModuleList(SSH(self.fpn_channels) for _ in range(3))
        self.class_head = nn.ModuleList(Head(self.fpn_channels, anchors, 2) for _ in range(3))
        self.box_head = nn.ModuleList(Head(self.fpn_channels, anchors, 4) for _ in range(3))
        self.landmark_head = nn.ModuleList(Head(self.fpn_channels, anchors, 10) for _ in range(3))
        self._priors = {}  # (image size, device) -> priors; unannotated so TorchScript leaves it alone

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Raw outputs: box regressions (B, P, 4), class logits (B, P, 2), landmark regressions (B, P, 10).

        Loops run over the module lists with ``enumerate`` (not ``zip``) so that ``torch.jit.script`` takes them.
        """
        levels = self.fpn(list(self.backbone(images)))
        for i, ssh in enumerate(self.ssh):
            levels[i] = ssh(levels[i])
        loc: list[torch.Tensor] = []
        logits: list[torch.Tensor] = []
        landmarks: list[torch.Tensor] = []
        for i, head in enumerate(self.box_head):
            loc.append(head(levels[i]))
        for i, head in enumerate(self.class_head):
            logits.append(head(levels[i]))
        for i, head in enumerate(self.landmark_head):
            landmarks.append(head(levels[i]))
        return torch.cat(loc, dim=1), torch.cat(logits, dim=1), torch.cat(landmarks, dim=1)

    def priors(self, image_size: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Priors for an input size, cached per (size, device)."""
        key = (tuple(image_size), str(device))
        if key not in self._priors:
            self._priors[key] = make_priors(tuple(image_size), device)
        return self._priors[key]

    @torch.no_grad()
    def detect(self, images: torch.Tensor, **kwargs: Any) -> list[dict[str, torch.Tensor]]:
        """Detections in input-pixel coordinates for a preprocessed batch; kwargs go to :func:`postprocess`."""
        loc, logits, landmarks = self(images)
        size = tuple(images.shape[-2:])
        return detections_from_outputs(loc, logits, landmarks, self.priors(size, images.device), size, **kwargs)


def detections_from_outputs(loc: torch.Tensor, logits: torch.Tensor, landmarks: torch.Tensor, priors: torch.Tensor,
                            size: tuple[int, int], **kwargs: Any) -> list[dict[str, torch.Tensor]]:
    """RetinaFace's raw outputs -> detections per image in input pixels (softmax scores, :func:`postprocess`); the
    runtimes that return raw outputs (ncnn) share it."""
    scores = logits.float().softmax(-1)[..., 1]
    return postprocess(loc.float(), scores, landmarks.float(), priors, size, **kwargs)
