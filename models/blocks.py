"""The block zoo of the search space (thesis 3.3.1, SPEC section 3), built from a :class:`BlockSpec`.

Every block is defined here once. ``profile_latency.py`` must run on a device that has PyTorch only, so this file
depends on torch alone and is embedded into that script by ``tools/build_profiler.py`` (a test fails when the copy is
stale). For that reason the small conv/SE modules below use plain ``torch.nn`` rather than ``timm.layers``; their
parameter names follow timm's ``SEModule`` / ``EffectiveSEModule`` so that a test can check them against timm.

Layout of a block: ``body`` (conv + BN [+ act] units, SE where it belongs) -> [``drop_path``] -> ``+ shortcut(x)`` ->
``act`` (only for families whose activation follows the residual sum: BL, KK, KK_Mid). ``drop_path`` (stochastic
depth) exists only on blocks with an identity shortcut and a rate above 0; the latency tables never see it (eval).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from models.naming import BlockSpec, parse_block


def make_act(kind: str | None) -> nn.Module:
    """Activation module: ``LR`` LeakyReLU(0.1) as RetinaFace and DarkNet, ``HS`` HardSwish, ``RE`` ReLU."""
    if kind is None:
        return nn.Identity()
    if kind == "LR":
        return nn.LeakyReLU(0.1, inplace=True)
    if kind == "HS":
        return nn.Hardswish(inplace=True)
    if kind == "RE":
        return nn.ReLU(inplace=True)
    raise ValueError(f"unknown activation {kind!r}")


class ConvBnAct(nn.Module):
    """Conv (no bias) + BatchNorm + optional activation; :meth:`fuse_bn` folds the BatchNorm for deployment."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: str | None = None):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(cout)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    @torch.no_grad()
    def fuse_bn(self) -> None:
        """Fold the BatchNorm into the conv (eval statistics); afterwards ``bn`` is an identity."""
        if isinstance(self.bn, nn.BatchNorm2d):
            self.conv = fuse_conv_bn_eval(self.conv.eval(), self.bn.eval())
            self.bn = nn.Identity()


class SqueezeExcite(nn.Module):
    """SE: global average pool -> 1x1 conv C -> C/r -> ReLU -> 1x1 conv -> C -> sigmoid -> scale (Hu et al.)."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(8, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(scale))))


class EffectiveSqueezeExcite(nn.Module):
    """eSE: global average pool -> one 1x1 conv C -> C -> hard sigmoid -> scale (Lee & Park, CenterMask)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))


def make_se(kind: str | None, channels: int, reduction: int = 4) -> list[nn.Module]:
    """The SE module of ``kind`` as a 0- or 1-element list, ready to splice into a block body."""
    if kind is None:
        return []
    if kind == "se":
        return [SqueezeExcite(channels, reduction)]
    return [EffectiveSqueezeExcite(channels)]


def _body(spec: BlockSpec, cin: int) -> tuple[list[nn.Module], bool]:
    """Layers of the block body and whether the activation follows the residual sum."""
    k, s, cout, act = spec.kernel, spec.stride, spec.cout, spec.act
    family = spec.family
    if family == "MBV1":
        # depthwise kxk + act -> [SE] -> pointwise + act (MobileNetV1, RetinaFace's mobile0.25)
        return [ConvBnAct(cin, cin, k, s, groups=cin, act=act), *make_se(spec.se, cin),
                ConvBnAct(cin, cout, 1, act=act)], False
    if family == "MBV2":
        # 1x1 expand + act -> depthwise kxk + act -> [SE] -> 1x1 project, linear bottleneck (no act)
        hidden = spec.expansion * cin
        return [ConvBnAct(cin, hidden, 1, act=act), ConvBnAct(hidden, hidden, k, s, groups=hidden, act=act),
                *make_se(spec.se, hidden), ConvBnAct(hidden, cout, 1)], False
    if family == "BL":
        # ResNet-B bottleneck: stride on the kxk conv; SE after it with r = 8 as TResNet does in bottlenecks
        mid = cout // spec.expansion
        return [ConvBnAct(cin, mid, 1, act=act), ConvBnAct(mid, mid, k, s, act=act), *make_se(spec.se, mid, 8),
                ConvBnAct(mid, cout, 1)], True
    if family == "KK":
        return [ConvBnAct(cin, cout, k, s, act=act), ConvBnAct(cout, cout, k), *make_se(spec.se, cout)], True
    if family == "KK_Mid":
        # one kxk conv; its activation follows the sum as in the full KK block
        return [ConvBnAct(cin, cout, k, s)], True
    if family == "DK":
        if s == 2:
            # DarkNet downsampling form: the single strided kxk conv, no SE
            return [ConvBnAct(cin, cout, k, 2, act=act)], False
        return [ConvBnAct(cin, cout // 2, 1, act=act), ConvBnAct(cout // 2, cout, k, act=act),
                *make_se(spec.se, cout)], False
    if family == "Conv":
        return [ConvBnAct(cin, cout, k, s, act=act)], False
    if family == "MaxPool":
        return [nn.MaxPool2d(k, 2, k // 2)], False
    if family == "Zero":
        return [], False
    raise ValueError(f"unknown family {family!r}")


def make_shortcut(kind: str, cin: int, cout: int) -> nn.Module | None:
    """Residual branch: ``identity``, ``conv`` (1x1 conv + BN), ``conv_pool`` (ResNet-D 2x2 avg-pool + 1x1 conv)."""
    if kind == "none":
        return None
    if kind == "identity":
        return nn.Identity()
    if kind == "conv":
        return ConvBnAct(cin, cout, 1)
    # ceil_mode keeps odd sizes in step with the padded stride-2 convs of the main path
    return nn.Sequential(nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False), ConvBnAct(cin, cout, 1))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al.): in training, zero a sample's residual branch with probability ``rate``.

    The kept branches are scaled by ``1 / (1 - rate)`` so the expected output stays the same; in eval mode it is the
    identity. Written here instead of importing ``timm.layers.DropPath`` because this file must stay torch-only.
    """

    def __init__(self, rate: float):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop-path rate must be in [0, 1), got {rate}")
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        # one draw per sample, broadcast over channels and space
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate:.3f}"


class Block(nn.Module):
    """One block of the search space, built from its spec (the input channels may come from the spec or the caller).

    Args:
        spec: the block; ``spec.cin`` is used unless ``cin`` is given.
        cin: input channels when the spec does not state them.
        drop_path: stochastic-depth rate of the residual branch; used only with an identity shortcut (a block that
            changes shape, or has no shortcut, has no branch to drop).
    """

    def __init__(self, spec: BlockSpec, cin: int | None = None, drop_path: float = 0.0):
        super().__init__()
        cin = spec.cin if cin is None else cin
        if cin is None:
            raise ValueError(f"block {spec.name} needs its input channels")
        self.spec = spec.with_input(cin, spec.size).validate()
        layers, act_after_sum = _body(self.spec, cin)
        self.body = nn.Sequential(*layers)
        self.shortcut = make_shortcut(self.spec.shortcut, cin, self.spec.cout)
        self.act = make_act(self.spec.act) if act_after_sum else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 and self.spec.shortcut == "identity" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.drop_path is not None:
            out = self.drop_path(out)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.act(out)


def fuse_bn(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm of ``module``'s :class:`ConvBnAct` units into their convs, in place; returns it.

    The module must be in eval mode: folding uses the running statistics.
    """
    for unit in module.modules():
        if isinstance(unit, ConvBnAct):
            unit.fuse_bn()
    return module


def build_block(name_or_spec: str | BlockSpec, cin: int | None = None) -> Block:
    """Build a block from its name (see :mod:`models.naming`) or spec."""
    spec = parse_block(name_or_spec) if isinstance(name_or_spec, str) else name_or_spec
    return Block(spec, cin)
