"""Every registered FaceNAS model through the checks timm's own tests/test_models.py applies to timm's models.

timm's test file is not in its wheel and nothing is downloaded at test time, so the checks are written here in our
words, from what that file checks: forward, backward, the default cfg, features (list, getter, fx),
``forward_intermediates``, an fx trace scripted with TorchScript, TorchScript of the model itself, and the timm model
API around them (``global_pool``, ``drop_path_rate``, ``set_grad_checkpointing``, unknown arguments). Inputs are
128 px instead of the 640 px default input size, to keep the suite fast; the pool-size check scales accordingly and one
model runs at the full 640 px.
"""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import timm
import torch
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import models
from data.augment import resize_subtract_mean
from models.backbone import FaceNASBackbone, take_indices
from models.blocks import Block, DropPath

ALL_MODELS = timm.list_models("facenas_*")
SIZE = 128
BATCH = 2


def _input(size: int = SIZE, batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


def test_every_registered_model_is_covered() -> None:
    # 21 published networks + facenas_arch; a new entrypoint joins every test below automatically
    assert len(ALL_MODELS) == 22 and "facenas_arch" in ALL_MODELS


# ------------------------------------------------------------------------------------------- forward / backward
@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_and_backward(name: str, one_thread) -> None:
    model = timm.create_model(name).eval()
    with torch.no_grad():
        out = model(_input())
    assert out.shape == (BATCH, model.num_features) and torch.isfinite(out).all()

    model = timm.create_model(name, num_classes=42).train()
    out = model(_input())
    assert out.shape == (BATCH, 42)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:3]}"
    assert sum(p.grad.numel() for p in model.parameters()) == sum(p.numel() for p in model.parameters())
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------- default cfg
@pytest.mark.parametrize("name", ALL_MODELS)
def test_default_cfg(name: str, one_thread) -> None:
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    state = model.state_dict()
    channels, height, width = cfg["input_size"]
    assert channels == 3 and state[cfg["first_conv"] + ".weight"].shape[1] == channels
    assert isinstance(state[cfg["first_conv"] + ".weight"], torch.Tensor)
    assert len(cfg["mean"]) == len(cfg["std"]) == 3 and cfg["crop_pct"] == 1.0 and cfg["crop_mode"] == "squash"
    # RetinaFace's mean colour in RGB order, unscaled pixels: timm's (x / 255 - mean) / std = 255 x - (123, 117, 104)
    assert tuple(round(m * 255) for m in cfg["mean"]) == (123, 117, 104) and cfg["std"] == (1 / 255,) * 3
    assert cfg["input_size"] == (3, 640, 640) and "x.flip(1)" in " ".join(cfg["notes"])
    assert cfg["license"] and cfg["interpolation"] and cfg["classifier"] == "head"
    # pool_size is the unpooled feature map at input_size (stride 32); checked at 128 px, scaled
    assert tuple(cfg["pool_size"]) == (height // 32, width // 32)
    x = _input()
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
    assert features.shape[1] == model.num_features
    assert tuple(features.shape[-2:]) == tuple(p * SIZE // height for p in cfg["pool_size"])
    assert pre_logits.shape == (BATCH, model.head_hidden_size)

    # reset_classifier: a classifier whose weight is the cfg's classifier, none, then no pooling either
    model.reset_classifier(5)
    assert model.num_classes == 5 and cfg["classifier"] + ".weight" in model.state_dict()
    assert model.get_classifier() is model.head
    with torch.no_grad():
        assert model(x).shape == (BATCH, 5)
        model.reset_classifier(0)
        assert model(x).shape == (BATCH, model.num_features)
        model.reset_classifier(0, "")
        assert model(x).shape == features.shape
        unpooled = timm.create_model(name, num_classes=0, global_pool="").eval()
        assert unpooled(x).shape == features.shape


def test_full_size_forward_matches_pool_size(one_thread) -> None:
    model = timm.create_model("facenas_mobilenetv1_025").eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, *model.pretrained_cfg["input_size"]))
    assert tuple(features.shape[-2:]) == tuple(model.pretrained_cfg["pool_size"]) == (20, 20)


# ------------------------------------------------------------------------------------------------- features
@pytest.mark.parametrize("feature_cls", ["list", "getter", "fx"])
@pytest.mark.parametrize("name", ALL_MODELS)
def test_features_only(name: str, feature_cls: str, one_thread) -> None:
    model = timm.create_model(name, features_only=True, feature_cls=feature_cls).eval()
    assert model.feature_info.reduction() == [8, 16, 32]
    with torch.no_grad():
        outs = model(_input())
    assert len(outs) == len(model.feature_info.channels()) == 3
    for channels, reduction, out in zip(model.feature_info.channels(), model.feature_info.reduction(), outs):
        assert out.shape == (BATCH, channels, math.ceil(SIZE / reduction), math.ceil(SIZE / reduction))
    # the same weights give the same maps through every wrapper (the plain backbone's own pyramid as reference)
    plain = timm.create_model(name).eval()
    loaded = plain.load_state_dict(_unwrap_state(model), strict=False)
    assert not loaded.unexpected_keys and not [k for k in loaded.missing_keys if not k.startswith("head")]
    with torch.no_grad():
        for ours, theirs in zip(plain.forward_pyramid(_input_fixed()), model(_input_fixed())):
            torch.testing.assert_close(ours, theirs)


def _input_fixed() -> torch.Tensor:
    return torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def _unwrap_state(features: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's state-dict names inside timm's feature wrappers (stem_0 -> stem.0, model.x -> x)."""
    out = {}
    for key, value in features.state_dict().items():
        key = key.removeprefix("model.").removeprefix("graph_module.")
        for flat in ("stem_", "stages_"):
            if key.startswith(flat):
                key = key.replace("_", ".", 1)
        out[key] = value
    return out


# ------------------------------------------------------------------------------------------ intermediates
@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_intermediates(name: str, one_thread) -> None:
    model = timm.create_model(name).eval()
    info = model.feature_info
    x = _input()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert len(intermediates) == len(info) >= 3
        for entry, out in zip(info, intermediates):
            assert out.shape == (BATCH, entry["num_chs"], math.ceil(SIZE / entry["reduction"]),
                                 math.ceil(SIZE / entry["reduction"]))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape for t in last_two] == [t.shape for t in intermediates[-2:]]
        fpn = model.forward_intermediates(x, indices=list(model.arch.fpn_indices()), norm=True,
                                          intermediates_only=True)
        for ours, theirs in zip(fpn, model.forward_pyramid(x)):
            torch.testing.assert_close(ours, theirs)
        negative = model.forward_intermediates(x, indices=[-1], intermediates_only=True, stop_early=True)
        torch.testing.assert_close(negative[0], intermediates[-1])
        model.set_grad_checkpointing()
        again, _ = model.forward_intermediates(x)
        torch.testing.assert_close(again, final, rtol=1e-4, atol=1e-5)


def test_take_indices_follows_timm() -> None:
    from timm.models._features import feature_take_indices

    for indices in (None, 1, 3, [0, 2], [-1], (1, -2)):
        ours = take_indices(5, indices)
        theirs = feature_take_indices(5, list(indices) if isinstance(indices, tuple) else indices)
        assert ours == theirs, indices
    with pytest.raises(ValueError, match="out of range"):
        take_indices(4, [4])
    with pytest.raises(ValueError, match="last 1 to 4"):
        take_indices(4, 0)


# ------------------------------------------------------------------------------------------ fx / TorchScript
def _fx_model(model: nn.Module, train: bool = False) -> nn.Module:
    """timm's way: an fx graph of the whole model ending at its last node (train or eval graph)."""
    from timm.layers import get_notrace_functions, get_notrace_modules

    tracer = {"leaf_modules": list(get_notrace_modules()), "autowrap_functions": list(get_notrace_functions())}
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer)
    return create_feature_extractor(model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_fx_trace_then_torchscript(name: str, one_thread) -> None:
    model = timm.create_model(name).eval()
    x = _input(64, 1)
    scripted = torch.jit.script(_fx_model(model))
    with torch.no_grad():
        (out,) = scripted(x).values()
        torch.testing.assert_close(out, model(x))
    # the traced training graph back-propagates into every parameter
    model = timm.create_model(name, num_classes=7).train()
    (out,) = _fx_model(model, train=True)(x).values()
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_torchscript_of_the_model(name: str, one_thread) -> None:
    model = timm.create_model(name, scriptable=True).eval()
    scripted = torch.jit.script(model)
    x = _input(64, 1)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
        torch.testing.assert_close(scripted.forward_features(x), model.forward_features(x))


# ---------------------------------------------------------------------------------------------- model API
def test_unknown_arguments_and_unsupported_settings_are_errors() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument.*drop_rat\\b"):
        timm.create_model("facenas_r12_v3_hs", drop_rat=0.2)  # a typo must not pass silently
    with pytest.raises(ValueError, match="output_stride=16 is not supported.*32 only"):
        timm.create_model("facenas_r12_v3_hs", output_stride=16)
    timm.create_model("facenas_r12_v3_hs", output_stride=32)  # the one it has
    with pytest.raises(ValueError, match="global_pool='' .*needs num_classes=0"):
        timm.create_model("facenas_r12_v3_hs", num_classes=10, global_pool="")
    with pytest.raises(ValueError, match="global_pool='token'"):
        timm.create_model("facenas_r12_v3_hs", global_pool="token")


def test_global_pool_kinds(one_thread) -> None:
    x = _input()
    reference = timm.create_model("facenas_r5").eval()
    with torch.no_grad():
        features = reference.forward_features(x)
    expected = {"avg": features.mean((2, 3)), "max": features.amax((2, 3)),
                "avgmax": 0.5 * (features.mean((2, 3)) + features.amax((2, 3))), "": features}
    for pool, value in expected.items():
        model = timm.create_model("facenas_r5", global_pool=pool).eval()
        model.load_state_dict(reference.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(model(x), value)
        assert timm.models._input._get_global_pool(model) == pool  # what save_for_hf records


def test_drop_path_rate_is_stochastic_depth_on_identity_blocks(one_thread) -> None:
    plain = timm.create_model("facenas_r11_v2_hs")
    assert not any(isinstance(m, DropPath) for m in plain.modules())  # default 0: the thesis networks unchanged
    model = timm.create_model("facenas_r11_v2_hs", drop_path_rate=0.2)
    blocks = [b for stage in model.stages for b in stage]
    rates = [b.drop_path.rate if b.drop_path is not None else None for b in blocks]
    linear = [0.2 * i / (len(blocks) - 1) for i in range(len(blocks))]
    for block, rate, expected in zip(blocks, rates, linear):
        if block.spec.shortcut == "identity" and expected > 0:
            assert rate == pytest.approx(expected)
        else:
            assert rate is None, block.spec.name  # no residual branch to drop (or rate 0 at the first block)
    assert rates[-1] == pytest.approx(0.2) and sum(r is not None for r in rates) >= 10
    model.load_state_dict(plain.state_dict())  # DropPath has no parameters: same weights, same checkpoints
    x = _input(64, 4)
    model.eval()
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x))  # identity in eval mode
    model.train()
    plain.train()
    torch.manual_seed(1)
    a = model.forward_features(x)
    b = model.forward_features(x)
    assert not torch.allclose(a, b)  # a different draw each call in training


def test_drop_path_keeps_the_expectation() -> None:
    drop = DropPath(0.3).train()
    x = torch.ones(20000, 1, 2, 2)
    out = drop(x)
    kept = (out[:, 0, 0, 0] > 0).float().mean()
    assert 0.68 < kept < 0.72 and out.mean().item() == pytest.approx(1.0, abs=0.03)
    values = out.unique()
    assert len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(1 / 0.7)
    assert torch.equal(drop.eval()(x), x)
    block = Block(models.parse_block("3x3_DKConv_16_Id"), 16, drop_path=0.5)
    assert isinstance(block.drop_path, DropPath)
    assert Block(models.parse_block("S_3x3_DKConv_16"), 8, drop_path=0.5).drop_path is None


def _saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass during the forward (the activation memory of training)."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x).sum()
    loss.backward()
    return total


def test_grad_checkpointing_keeps_gradients_and_saves_activation_memory(one_thread) -> None:
    model = timm.create_model("facenas_r11_v2_hs", num_classes=3).train()
    x = _input(96, 2)
    state = model.state_dict()
    plain_bytes = _saved_activation_bytes(model, x)
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.load_state_dict(state)  # undo the running-stat update of the first pass
    model.set_grad_checkpointing(True)
    ckpt_bytes = _saved_activation_bytes(model, x)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, plain_grads[name], rtol=1e-4, atol=1e-6)
    assert ckpt_bytes < 0.3 * plain_bytes, (ckpt_bytes, plain_bytes)


# ---------------------------------------------------------------------------------------------- facenas_arch
def test_facenas_arch_default_is_documented_mobilenet(one_thread) -> None:
    default = timm.create_model("facenas_arch")
    reference = timm.create_model("facenas_mobilenetv1_025")
    assert default.arch.to_dict() == reference.arch.to_dict()
    assert "MobileNetV1-0.25" in default.pretrained_cfg["description"]
    assert "MobileNetV1-0.25" in models.facenas_zoo.facenas_arch.__doc__


def test_save_for_hf_carries_the_architecture_not_its_path(tmp_path, one_thread) -> None:
    arch_file = tmp_path / "found" / "arch.json"
    arch_file.parent.mkdir()
    arch = models.published_arch("R12_V3_HS")
    arch.name = "searched_T125"
    arch.save(arch_file)
    model = timm.create_model("facenas_arch", arch=str(arch_file), num_classes=4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    timm.models.save_for_hf(model, tmp_path / "hf", safe_serialization=False)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_args"]["arch"]["name"] == "searched_T125"
    assert str(tmp_path) not in json.dumps(config)  # nothing ties the folder to this machine
    shutil.rmtree(arch_file.parent)  # the arch file is gone; the folder moves elsewhere
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "hf", moved)
    loaded = timm.create_model(f"local-dir:{moved}", pretrained=True)
    assert isinstance(loaded, FaceNASBackbone) and loaded.arch.name == "searched_T125" and loaded.num_classes == 4
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------- data config
def test_timm_transform_of_rgb_equals_our_preprocessing_of_bgr() -> None:
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model("facenas_r12_v3_hs")
    config = resolve_data_config(model=model)
    assert config["crop_pct"] == 1.0 and config["crop_mode"] == "squash"
    transform = create_transform(**config)
    side = config["input_size"][-1]
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)  # already at input size: both resizes are no-ops
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    theirs = transform(Image.fromarray(rgb))
    ours = torch.from_numpy(resize_subtract_mean(bgr, side))
    assert theirs.shape == ours.shape == (3, side, side)
    torch.testing.assert_close(theirs, ours.flip(0), atol=2e-4, rtol=0)  # RGB vs BGR: the channel axis reversed

    # a non-square image is squashed to the input size, not centre-cropped: the same geometry as our resize
    wide = rng.integers(0, 256, (side // 2, side + side // 2, 3), dtype=np.uint8)
    wide = np.asarray(Image.fromarray(wide).resize((side // 4, side // 8), Image.BILINEAR))  # smooth content
    wide = np.asarray(Image.fromarray(wide).resize((side + side // 2, side // 2), Image.BILINEAR))
    theirs = transform(Image.fromarray(wide))
    ours = torch.from_numpy(resize_subtract_mean(np.ascontiguousarray(wide[:, :, ::-1]), side)).flip(0)
    assert theirs.shape == ours.shape
    assert (theirs - ours).abs().mean() < 1.5  # PIL and OpenCV bilinear differ by rounding only
