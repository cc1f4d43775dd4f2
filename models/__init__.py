"""FaceNAS models: blocks, architectures, backbones (registered in timm on import) and the RetinaFace detector.

``import models`` registers the ``facenas_*`` entrypoints in timm's registry.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from torch import nn

from models.arch import Arch
from models.backbone import FaceNASBackbone, deploy_form
from models.facenas_zoo import ALIASES, ZOO, check_state_dict, published_arch, resolve_model_name
from models.naming import BlockSpec, format_block, parse_block
from models.retinaface import RetinaFace
from utils.errors import FaceNASError

__all__ = [
    "ALIASES", "ZOO", "Arch", "BlockSpec", "FaceNASBackbone", "RetinaFace", "build_detector", "check_state_dict",
    "create_backbone", "deploy_form", "format_block", "parse_block", "published_arch", "resolve_model_name",
]

#: timm backbones usable as RetinaFace baselines, with the feature levels at strides 8, 16, 32.
TIMM_BASELINES = {"resnet50": (2, 3, 4)}


def create_backbone(model: str | Path | Arch, features_only: bool = True, **kwargs: Any) -> nn.Module:
    """Create a backbone from a registry name, a thesis spelling (``TT3_NoSE``), an arch JSON path or an :class:`Arch`.

    With ``features_only`` (default) the module returns the three FPN inputs (strides 8, 16, 32).
    """
    if isinstance(model, Arch) or str(model).endswith(".json"):
        if not isinstance(model, Arch) and not Path(model).is_file():
            raise FaceNASError(f"{model}: architecture file not found")
        return timm.create_model("facenas_arch", arch=model, features_only=features_only, **kwargs)
    name = resolve_model_name(str(model))
    if name in TIMM_BASELINES:
        kwargs.setdefault("out_indices", TIMM_BASELINES[name])
        kwargs.setdefault("pretrained", False)  # never download; a local file comes through pretrained_cfg_overlay
        return timm.create_model(name, features_only=features_only, **kwargs)
    if not timm.is_model(name):
        known = ", ".join(sorted(ZOO)) + ", resnet50"
        raise FaceNASError(f"unknown model {model!r}; use a registered name ({known}) or an arch .json file")
    return timm.create_model(name, features_only=features_only, **kwargs)


def build_detector(model: str | Path | Arch, fpn_channels: int | None = None, **kwargs: Any) -> RetinaFace:
    """RetinaFace with the given backbone (see :func:`create_backbone`)."""
    backbone = create_backbone(model, features_only=True, **kwargs)
    return RetinaFace(backbone, backbone.feature_info.channels(), fpn_channels)
