"""Blocks: shapes, structure (SE placement, shortcut kinds, activations), SE against timm, BN folding."""
from __future__ import annotations

import pytest
import torch
from timm.layers import EffectiveSEModule, SEModule
from torch import nn

from models.blocks import Block, ConvBnAct, EffectiveSqueezeExcite, SqueezeExcite, build_block, fuse_bn
from models.naming import BlockSpec, parse_block
from utils.errors import FaceNASError

FAMILY_NAMES = ["3x3_MBV1Conv_32", "5x5_MBV1Conv_32", "3x3_MBConv3_32", "5x5_MBConv6_32", "3x3_BottleNeckConv4_32",
                "5x5_BottleNeckConv4_32", "3x3_KKConv_32", "3x3_KKConv_Mid_32", "3x3_DKConv_32"]


def _randomise_bn(module: nn.Module) -> None:
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.3, 0.3)


@pytest.mark.parametrize("name", FAMILY_NAMES)
@pytest.mark.parametrize("stride", [1, 2])
def test_block_output_shape_with_odd_input(name: str, stride: int) -> None:
    spec = parse_block(("S_" if stride == 2 else "") + name)
    for shortcut in (["none", "conv"] if stride == 1 else ["none", "conv_pool"]):
        block = Block(BlockSpec(**{**spec.__dict__, "shortcut": shortcut}), cin=16)
        out = block(torch.randn(2, 16, 21, 21))
        assert out.shape == (2, 32, 11 if stride == 2 else 21, 11 if stride == 2 else 21)


def test_identity_shortcut_adds_the_input() -> None:
    block = build_block("3x3_KKConv_Mid_8_Id", cin=8).eval()
    with torch.no_grad():
        for p in block.body.parameters():
            p.zero_()
        block.body[0].bn.running_mean.zero_()
        block.body[0].bn.running_var.fill_(1.0)
        x = torch.randn(1, 8, 5, 5)
        # the body outputs 0, so the block is act(0 + x) = LeakyReLU(x)
        torch.testing.assert_close(block(x), nn.functional.leaky_relu(x, 0.1))


def test_conv_pool_shortcut_is_resnet_d() -> None:
    block = build_block("S_3x3_DKConv_64_1x1ConvPool", cin=32)
    assert isinstance(block.shortcut, nn.Sequential)
    assert isinstance(block.shortcut[0], nn.AvgPool2d) and block.shortcut[0].kernel_size == 2
    assert block.shortcut[1].conv.kernel_size == (1, 1) and block.shortcut[1].conv.stride == (1, 1)


def test_dk_stride_two_is_a_single_conv_and_stride_one_is_1x1_then_3x3() -> None:
    strided = build_block("S_3x3_DKConv_64", cin=32)
    assert len(strided.body) == 1 and strided.body[0].conv.stride == (2, 2)
    plain = build_block("3x3_DKConv_64", cin=32)
    assert [u.conv.kernel_size for u in plain.body] == [(1, 1), (3, 3)]
    assert plain.body[0].conv.out_channels == 32


@pytest.mark.parametrize("name, se_index, se_channels", [
    ("SE_3x3_MBV1Conv_32", 1, 16),            # after the depthwise conv, on cin channels
    ("SE_3x3_MBConv6_32", 2, 96),              # after the depthwise conv, on the expanded channels
    ("SE_3x3_BottleNeckConv4_32", 2, 8),       # after the kxk conv of the bottleneck
    ("SE_3x3_KKConv_32", 2, 32),               # after the second conv
    ("SE_3x3_DKConv_32", 2, 32),               # after the 3x3 conv
])
def test_se_placement(name: str, se_index: int, se_channels: int) -> None:
    block = build_block(name, cin=16)
    se = block.body[se_index]
    assert isinstance(se, SqueezeExcite)
    assert se.fc1.in_channels == se_channels
    ese = build_block("e" + name, cin=16).body[se_index]
    assert isinstance(ese, EffectiveSqueezeExcite) and ese.fc.in_channels == se_channels


def test_bottleneck_se_uses_reduction_8_and_small_blocks_4() -> None:
    assert build_block("SE_3x3_BottleNeckConv4_1024", cin=1024).body[2].fc1.out_channels == 256 // 8
    assert build_block("SE_3x3_KKConv_128", cin=128).body[2].fc1.out_channels == 128 // 4


def test_se_and_ese_match_timm_modules() -> None:
    x = torch.randn(2, 64, 7, 7)
    ours = SqueezeExcite(64, reduction=4)
    theirs = SEModule(64, rd_channels=16)
    theirs.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), theirs(x))
    ours_e = EffectiveSqueezeExcite(64)
    theirs_e = EffectiveSEModule(64)
    theirs_e.load_state_dict(ours_e.state_dict())
    torch.testing.assert_close(ours_e(x), theirs_e(x))


@pytest.mark.parametrize("act, cls", [("LR", nn.LeakyReLU), ("HS", nn.Hardswish), ("RE", nn.ReLU)])
def test_activation_kinds(act: str, cls: type) -> None:
    block = build_block(f"3x3_DKConv_32_{act}" if act != "LR" else "3x3_DKConv_32", cin=32)
    acts = [m for m in block.modules() if isinstance(m, (nn.LeakyReLU, nn.Hardswish, nn.ReLU))]
    assert acts and all(isinstance(m, cls) for m in acts)
    if act == "LR":
        assert all(m.negative_slope == 0.1 for m in acts)


def test_linear_bottleneck_has_no_final_activation() -> None:
    block = build_block("3x3_MBConv6_32", cin=32)
    assert isinstance(block.body[-1].act, nn.Identity) and isinstance(block.act, nn.Identity)
    kk = build_block("3x3_KKConv_32_Id", cin=32)
    assert isinstance(kk.body[-1].act, nn.Identity) and isinstance(kk.act, nn.LeakyReLU)


@pytest.mark.parametrize("name", [n.replace("3x3_", "SE_3x3_", 1) if "Mid" not in n else n for n in FAMILY_NAMES])
def test_bn_folding_keeps_outputs(name: str) -> None:
    block = build_block(name + "_Id", cin=32)
    _randomise_bn(block)
    block.eval()
    x = torch.randn(2, 32, 9, 9)
    with torch.no_grad():
        expected = block(x)
        fuse_bn(block)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in block.modules())
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-4)


def test_zero_block_is_identity_and_maxpool_halves() -> None:
    x = torch.randn(1, 8, 9, 9)
    assert torch.equal(build_block("Zero", cin=8)(x), x)
    assert build_block("3x3_MAXPool", cin=8)(x).shape == (1, 8, 5, 5)


def test_identity_across_channel_change_is_rejected() -> None:
    with pytest.raises(FaceNASError, match="Identity"):
        build_block("3x3_KKConv_64_Id", cin=32)


def test_conv_bn_act_counts() -> None:
    unit = ConvBnAct(4, 6, 3, groups=2)
    assert sum(p.numel() for p in unit.parameters()) == 3 * 3 * 2 * 6 + 2 * 6
