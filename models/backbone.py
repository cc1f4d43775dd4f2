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
import copy
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

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


#: ``global_pool`` values: timm's names; ``''`` keeps the unpooled map.
POOL_TYPES = ("avg", "max", "avgmax", "")


class GlobalPool(nn.Module):
    """timm's global pooling choices (``global_pool=``): ``avg``, ``max``, ``avgmax`` (their mean), ``''`` none.

    With ``flatten`` the pooled ``(B, C, 1, 1)`` map becomes ``(B, C)``; without pooling the map passes through.
    """

    def __init__(self, pool_type: str = "avg", flatten: bool = True):
        super().__init__()
        if pool_type not in POOL_TYPES:
            raise ValueError(f"global_pool={pool_type!r} is not supported; use one of "
                             f"{', '.join(repr(p) for p in POOL_TYPES)}")
        self.pool_type = pool_type
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "":
            return x
        if self.pool_type == "avg":
            x = x.mean((2, 3), keepdim=True)
        elif self.pool_type == "max":
            x = x.amax((2, 3), keepdim=True)
        else:
            x = 0.5 * (x.mean((2, 3), keepdim=True) + x.amax((2, 3), keepdim=True))
        return x.flatten(1) if self.flatten else x


def take_indices(num_features: int, indices: int | list[int] | tuple[int, ...] | None) -> tuple[list[int], int]:
    """Feature indices as timm reads ``indices``: None all, an int the last n, a sequence those (negative from the end).

    Returns the absolute indices (in the order given) and the largest of them, like timm's ``feature_take_indices``.
    """
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"indices={indices}: take the last 1 to {num_features} features")
        chosen = list(range(num_features - indices, num_features))
    else:
        chosen = []
        for index in indices:
            absolute = num_features + index if index < 0 else index
            if not 0 <= absolute < num_features:
                raise ValueError(f"feature index {index} is out of range for {num_features} features")
            chosen.append(absolute)
        if not chosen:
            raise ValueError("indices is an empty sequence; give at least one feature index")
    return chosen, max(chosen)


def drop_path_rates(arch: Arch, drop_path_rate: float) -> list[list[float]]:
    """Stochastic-depth probability of every stage block: 0 at the first, rising linearly to the rate at the last.

    The rule of timm's models (``linspace(0, rate, depth)`` over all stage blocks); a block uses its rate only when
    its shortcut is an identity (see :class:`~models.blocks.Block`).
    """
    if not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate={drop_path_rate} must be in [0, 1)")
    depth = sum(len(blocks) for blocks in arch.stages)
    rates, seen = [], 0
    for blocks in arch.stages:
        rates.append([drop_path_rate * (seen + i) / max(1, depth - 1) for i in range(len(blocks))])
        seen += len(blocks)
    return rates


class FaceNASBackbone(nn.Module):
    """A FaceNAS feature extractor with timm's model API.

    Args:
        arch: the architecture.
        in_chans: input channels (must match ``arch.in_chans``; accepted because timm passes it).
        num_classes: classifier outputs after global pooling; 0 for none (the detector uses features only).
        global_pool: ``avg`` (default), ``max``, ``avgmax`` or ``''`` (no pooling: ``forward_head`` returns the map;
            needs ``num_classes=0``).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, rising linearly over the stage blocks to this rate; only blocks with an
            identity shortcut drop their residual branch (default 0: off, the thesis trains without it).
        output_stride: only 32 is supported (the blocks have no dilated form).

    Raises:
        TypeError: an unknown keyword argument (timm models tend to ignore them; a typo here would go unnoticed).
        ValueError: ``in_chans`` or ``output_stride`` the architecture cannot take, a bad ``global_pool``.
    """

    # timm's create_model records its keyword arguments here for save_for_hf; TorchScript must not compile it
    __jit_unused_properties__ = ["_model_args"]

    def __init__(self, arch: Arch, in_chans: int = 3, num_classes: int = 0, global_pool: str = "avg",
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, output_stride: int = 32, **kwargs: Any):
        super().__init__()
        if kwargs:
            raise TypeError(f"FaceNASBackbone got unexpected keyword argument(s) {', '.join(sorted(kwargs))}; "
                            "it takes in_chans, num_classes, global_pool, drop_rate, drop_path_rate, output_stride")
        if in_chans != arch.in_chans:
            raise ValueError(f"in_chans={in_chans} but architecture {arch.name} takes {arch.in_chans} channels")
        if output_stride != 32:
            raise ValueError(f"output_stride={output_stride} is not supported: FaceNAS backbones have output "
                             "stride 32 only (no dilated blocks)")
        arch.validate()
        self.arch = arch
        self.in_chans = in_chans
        self.drop_path_rate = drop_path_rate
        self.stem, cin = build_stem(arch, in_chans)
        stages = []
        for blocks, rates in zip(arch.stages, drop_path_rates(arch, drop_path_rate)):
            layers = []
            for spec, rate in zip(blocks, rates):
                layers.append(Block(spec, cin, drop_path=rate))
                cin = spec.cout
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.last_conv = build_last_conv(arch, cin)
        self.num_features = self.head_hidden_size = arch.last_conv.cout if arch.last_conv else cin
        self.feature_info = arch.feature_info()
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.num_classes = num_classes
        self.global_pool, self.head = self._make_head(num_classes, global_pool)

    # timm's classifier API -----------------------------------------------------------------------------------
    def _make_head(self, num_classes: int, global_pool: str) -> tuple[GlobalPool, nn.Module]:
        if global_pool == "" and num_classes > 0:
            raise ValueError("global_pool='' (no pooling) needs num_classes=0: the classifier takes pooled features")
        pool = GlobalPool(global_pool)
        return pool, nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    @torch.jit.ignore
    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier with ``num_classes`` outputs (0: none); ``global_pool`` as in the constructor."""
        self.num_classes = num_classes
        self.global_pool, self.head = self._make_head(
            num_classes, self.global_pool.pool_type if global_pool is None else global_pool)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block (stem and stages) in the backward pass instead of keeping its activations: less
        memory, about one more forward pass of time. Features-only wrappers have their own switch (stage-wise)."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay (timm's optimizer factory)."""
        return {"stem": r"^stem", "blocks": r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)",
                "last_conv": r"^last_conv"}

    @property
    def _model_args(self) -> dict[str, Any]:
        return self.__dict__.get("_recorded_model_args", {})

    @_model_args.setter
    def _model_args(self, value: dict[str, Any]) -> None:
        # timm's save_for_hf writes these into config.json; an architecture given as a file path would tie the saved
        # folder to this machine, so the architecture itself is stored (create_model('local-dir:DIR') rebuilds it)
        args = dict(value)
        if "arch" in args:
            args["arch"] = self.arch.to_dict()
        self.__dict__["_recorded_model_args"] = args

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            # the stem too: its full-resolution maps are the largest activations of the whole backbone
            return self.last_conv(checkpoint_blocks(self.stages, checkpoint_blocks(self.stem, x)))
        return self.last_conv(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | tuple[int, ...] | None = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False,
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's feature API: the outputs at :attr:`feature_info` points (stage outputs, then the last conv).

        Args:
            x: input images.
            indices: None all points, an int the last n, a sequence those indices (negative from the end).
            norm: accepted for timm; the backbone has no final norm layer, so it changes nothing.
            stop_early: stop after the last requested point (the returned features are then that point's).
            output_fmt: ``NCHW`` only.
            intermediates_only: return only the list of intermediates.

        Returns:
            ``(forward_features output, intermediates)`` or the intermediates alone.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r}: FaceNAS backbones give NCHW only")
        points = len(self.feature_info)  # the stage outputs, then the last conv when the architecture has one
        chosen, last = take_indices(points, indices)
        stop = last if stop_early else points - 1
        intermediates: list[torch.Tensor] = []
        x = checkpoint_blocks(self.stem, x) if self.grad_checkpointing else self.stem(x)
        for index, stage in enumerate(self.stages):
            if index > stop:
                break
            x = checkpoint_blocks(stage, x) if self.grad_checkpointing else stage(x)
            if index in chosen:
                intermediates.append(x)
        if stop == points - 1:  # every stage ran: the last conv follows (an Identity when there is none)
            x = self.last_conv(x)
            if points > len(self.stages) and stop in chosen:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    @torch.jit.ignore
    def prune_intermediate_layers(self, indices: int | list[int] | tuple[int, ...] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages (and last conv) after the last requested feature point; returns the absolute indices.

        timm's ``features_only=True, feature_cls='getter'`` calls this; ``prune_norm`` is accepted (no norm layer).
        """
        chosen, last = take_indices(len(self.feature_info), indices)
        for index in range(last + 1, len(self.stages)):
            self.stages[index] = nn.Sequential()  # empty: passes its input through, keeps the indices of the rest
        if last < len(self.stages):
            self.last_conv = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[last]["num_chs"]
        if prune_head or last < len(self.feature_info) - 1:
            self.reset_classifier(0, "")
        return chosen

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


def checkpoint_blocks(blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run ``blocks`` (nested Sequentials are opened) with every block recomputed in the backward pass."""
    for block in blocks:
        if isinstance(block, nn.Sequential):
            x = checkpoint_blocks(block, x)
        else:
            x = checkpoint(block, x, use_reentrant=False)
    return x


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
