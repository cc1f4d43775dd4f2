"""The backbone module built from an :class:`~models.arch.Arch`, with timm's ``feature_info`` and a deploy form.

Module layout (what timm's ``features_only`` wrapper walks, with ``flatten_sequential=True``)::

    stem       Sequential(first conv, pre-stage blocks..., [MaxPool])
    stages     Sequential(stage 0, stage 1, ...), each a Sequential of blocks
    last_conv  the 1x1 conv (or Identity)
    head       global pool + optional linear classifier (unused by the detector; timm convention)

:func:`build_stem` and :func:`build_last_conv` are the one builder of the fixed parts, shared with the supernet
(:class:`nas.supernet.SuperNet`), and :meth:`models.arch.Arch.fpn_stage_taps` the one FPN-tap rule.

torch only, like the blocks, so ``profile_latency.py`` can build whole backbones too.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from models.arch import MAXPOOL, Arch
from models.blocks import Block, fuse_bn


def build_stem(arch: Arch, in_chans: int = 3) -> tuple[nn.Sequential, int]:
    """First conv, pre-stage blocks and the optional MaxPool as one ``Sequential``; returns it and its width."""
    cin, stem = in_chans, []
    for spec in [arch.first_conv, *arch.pre_stage]:
        stem.append(Block(spec, cin))
        cin = spec.cout
    if arch.maxpool:
        stem.append(Block(MAXPOOL, cin))
    return nn.Sequential(*stem), cin


def build_last_conv(arch: Arch, cin: int) -> nn.Module:
    """The last 1x1 conv (the FPN's stride-32 input), or ``Identity`` when the architecture has none."""
    return nn.Identity() if arch.last_conv is None else Block(arch.last_conv, cin)


class FaceNASBackbone(nn.Module):
    """A FaceNAS feature extractor.

    Args:
        arch: the architecture.
        in_chans: input channels (must match ``arch.in_chans``; accepted because timm passes it).
        num_classes: classifier outputs after global average pooling; 0 for none (the detector uses features only).
        drop_rate: dropout before the classifier.
        **kwargs: ignored timm builder arguments.
    """

    def __init__(self, arch: Arch, in_chans: int = 3, num_classes: int = 0, drop_rate: float = 0.0, **kwargs: Any):
        super().__init__()
        if in_chans != arch.in_chans:
            raise ValueError(f"in_chans={in_chans} but architecture {arch.name} takes {arch.in_chans} channels")
        arch.validate()
        self.arch = arch
        self.in_chans = in_chans
        self.stem, cin = build_stem(arch, in_chans)
        stages = []
        for blocks in arch.stages:
            layers = []
            for spec in blocks:
                layers.append(Block(spec, cin))
                cin = spec.cout
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.last_conv = build_last_conv(arch, cin)
        self.num_features = self.head_hidden_size = arch.last_conv.cout if arch.last_conv else cin
        self.feature_info = arch.feature_info()
        self.drop_rate = drop_rate
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # timm's classifier API -----------------------------------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str = "avg") -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_conv(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3))
        if self.drop_rate:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The three FPN inputs (strides 8, 16, 32) without timm's wrapper."""
        taps, last = self.arch.fpn_stage_taps()
        outs = []
        x = self.stem(x)
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in taps:
                outs.append(x)
        if last:
            outs.append(self.last_conv(x))
        return outs


def deploy_form(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """Inference copy of ``model``: eval mode, every BatchNorm folded into its conv, optionally channels_last.

    FaceNAS blocks fold their own :class:`~models.blocks.ConvBnAct` units and keep their module type. Any other
    conv -> BatchNorm pair (timm's ResNet-50 baseline, for one) is folded through a ``torch.fx`` trace, which returns
    a ``GraphModule`` carrying the original ``feature_info``; a model fx cannot trace keeps those BatchNorms.
    Equal to the training form in eval mode up to float rounding (tested to 1e-4).
    """
    deployed = _fold_foreign_bn(fuse_bn(copy.deepcopy(model).eval()))
    if channels_last:
        deployed = deployed.to(memory_format=torch.channels_last)
    return deployed


def _fold_foreign_bn(module: nn.Module) -> nn.Module:
    """Fold BatchNorms left outside FaceNAS units with ``torch.fx``; this project's modules keep their type."""
    if not any(isinstance(m, nn.BatchNorm2d) for m in module.modules()):
        return module
    if type(module).__module__.split(".")[0] == "models":  # ours: keep methods (decode, post-process), go inside
        for name, child in module.named_children():
            setattr(module, name, _fold_foreign_bn(child))
        return module
    from torch.fx.experimental.optimization import fuse

    try:
        traced = fuse(module)
    except Exception:  # noqa: BLE001 - untraceable control flow: keep the unfolded, still-correct module
        return module
    if hasattr(module, "feature_info"):
        traced.feature_info = module.feature_info
    return traced.eval()
