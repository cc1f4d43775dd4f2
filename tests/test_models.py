"""Registered FaceNAS backbones, checked the way timm's tests/test_models.py checks its models."""
from __future__ import annotations

import json

import pytest
import timm
import torch

import models
from models.arch import Arch
from models.backbone import deploy_form
from utils.errors import FaceNASError

FACENAS_MODELS = [m for m in timm.list_models("facenas_*") if m != "facenas_arch"]


def test_registry_holds_every_published_network() -> None:
    expected = {"facenas_tt3", "facenas_tt3_se", "facenas_tt3_nose", "facenas_r5", "facenas_r5_v2", "facenas_r5_v3",
                "facenas_r5_v2_hs", "facenas_r5_v3_hs", "facenas_r11_v2", "facenas_r11_v3", "facenas_r11_v2_hs",
                "facenas_r11_v3_hs", "facenas_r12_v2", "facenas_r12_v3", "facenas_r12_v2_hs", "facenas_r12_v3_hs",
                "facenas_j1", "facenas_j1_hs", "facenas_j15", "facenas_j15_hs", "facenas_mobilenetv1_025"}
    assert expected == set(FACENAS_MODELS)
    assert timm.is_model("facenas_arch")


# forward, backward, default cfgs, features and TorchScript of every registered model: tests/test_timm_api.py


@pytest.mark.parametrize("name", FACENAS_MODELS)
def test_torch_export_matches_eager(name: str) -> None:
    # deployment goes through a graph export (timm tests TorchScript, which torch now deprecates for torch.export)
    model = timm.create_model(name, features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    exported = torch.export.export(model, (x,)).module()
    with torch.no_grad():
        for a, b in zip(exported(x), model(x)):
            torch.testing.assert_close(a, b)


def test_feature_levels_are_stage2_stage3_and_last_conv() -> None:
    features = timm.create_model("facenas_r11_v2_hs", features_only=True)
    assert features.feature_info.channels() == [64, 128, 256]
    assert features.feature_info.module_name() == ["stages.1", "stages.2", "last_conv"]
    mobile = timm.create_model("facenas_mobilenetv1_025", features_only=True)
    assert mobile.feature_info.channels() == [64, 128, 256]  # RetinaFace's stage1/2/3 of mobile0.25
    everything = timm.create_model("facenas_r12_v3_hs", features_only=True, out_indices=(0, 1, 2, 3, 4))
    assert everything.feature_info.reduction() == [4, 8, 16, 32, 32]


def _conv_bn(cin: int, cout: int, k: int, groups: int = 1) -> int:
    return k * k * (cin // groups) * cout + 2 * cout


def _kk(cin: int, cout: int) -> int:
    return _conv_bn(cin, cout, 3) + _conv_bn(cout, cout, 3)


def _dk(cin: int, cout: int, stride: int = 1) -> int:
    return _conv_bn(cin, cout, 3) if stride == 2 else _conv_bn(cin, cout // 2, 1) + _conv_bn(cout // 2, cout, 3)


def _bl(cin: int, cout: int) -> int:
    mid = cout // 4
    return _conv_bn(cin, mid, 1) + _conv_bn(mid, mid, 3) + _conv_bn(mid, cout, 1)


# Parameter counts derived by hand from the thesis tables with the block definitions of SPEC section 3
# (conv weights k*k*cin/groups*cout, BatchNorm weight+bias 2*cout, no conv bias, no SE, no classifier).
HAND_COUNTS = {
    # Table 45: stem 3->8, DK 8->16, KK 16->32, S_KK 32->64, KK_Mid 64->128->128, KK_Mid 128->256->256, 1x1 256
    "facenas_r12_v3_hs": _conv_bn(3, 8, 3) + _dk(8, 16) + _kk(16, 32) + _kk(32, 64) + _conv_bn(64, 128, 3)
    + _conv_bn(128, 128, 3) + _conv_bn(128, 256, 3) + _conv_bn(256, 256, 3) + _conv_bn(256, 256, 1),
    # Table 44: stem, KK_Mid 8->16, DK x4 (16->32), S_DK + 2 DK (64), S_DK + 8 DK (128), S_DK + 5 DK (256), 1x1 256
    "facenas_r11_v2_hs": _conv_bn(3, 8, 3) + _conv_bn(8, 16, 3) + _dk(16, 32) + 3 * _dk(32, 32) + _dk(32, 64, 2)
    + 2 * _dk(64, 64) + _dk(64, 128, 2) + 8 * _dk(128, 128) + _dk(128, 256, 2) + 5 * _dk(256, 256)
    + _conv_bn(256, 256, 1),
    # Table 53: stem, KK_Mid 8->16, KK 16->24, S_KK 24->32 [pool], S_KK 32->64 [pool] + 3 KK, S_KK 64->128 [pool]
    # + 2 KK, 1x1 256; each 1x1_Conv_Pool shortcut is a 1x1 conv + BN
    "facenas_j15_hs": _conv_bn(3, 8, 3) + _conv_bn(8, 16, 3) + _kk(16, 24) + _kk(24, 32) + _conv_bn(24, 32, 1)
    + _kk(32, 64) + _conv_bn(32, 64, 1) + 3 * _kk(64, 64) + _kk(64, 128) + _conv_bn(64, 128, 1) + 2 * _kk(128, 128)
    + _conv_bn(128, 256, 1),
    # Table 34: stem, KK 8->32, KK 32->64 [1x1_Conv 64], KK_Mid 64, S_DK 64->128 [pool] + 2 KK 128,
    # S_BL 128->1024 [pool] + 3 BL, S_BL 1024->2048 [pool] + 4 BL, 1x1 2560
    "facenas_tt3_nose": _conv_bn(3, 8, 3) + _kk(8, 32) + _kk(32, 64) + _conv_bn(32, 64, 1) + _conv_bn(64, 64, 3)
    + _dk(64, 128, 2) + _conv_bn(64, 128, 1) + 2 * _kk(128, 128) + _bl(128, 1024) + _conv_bn(128, 1024, 1)
    + 3 * _bl(1024, 1024) + _bl(1024, 2048) + _conv_bn(1024, 2048, 1) + 4 * _bl(2048, 2048) + _conv_bn(2048, 2560, 1),
}
# The same numbers, pinned: a change in any block definition shows up here.
PINNED = {"facenas_r12_v3_hs": 1_244_504, "facenas_r11_v2_hs": 2_818_056, "facenas_j15_hs": 1_161_192,
          "facenas_tt3_nose": 34_290_280}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_parameter_counts_of_the_four_searched_backbones(name: str) -> None:
    model = timm.create_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == HAND_COUNTS[name] == PINNED[name]


def test_variants_follow_the_thesis_text() -> None:
    r11_v3 = models.published_arch("R11_V3_HS")
    assert r11_v3.pre_stage[0].family == "DK" and r11_v3.stages[2][0].act == "HS"
    r12_v2 = models.published_arch("R12_V2")
    assert r12_v2.pre_stage[0].family == "KK_Mid" and r12_v2.last_conv.act == "LR"
    assert {s.act for s in r12_v2.stages[3]} == {"LR"}
    j15, j15_hs = models.published_arch("J15"), models.published_arch("J15_HS")
    assert [[b.family for b in s] for s in j15.stages] == [[b.family for b in s] for s in j15_hs.stages]
    assert j15_hs.stages[1][0].act == "LR" and j15_hs.stages[2][0].act == "HS" and j15_hs.last_conv.act == "HS"
    tt3, tt3_se, tt3_nose = (models.published_arch(n) for n in ("TT3", "TT3_SE", "TT3_NoSE"))
    kinds = [{b.se for s in a.stages for b in s} for a in (tt3, tt3_se, tt3_nose)]
    assert kinds == [{None, "ese"}, {None, "se"}, {None}]


@pytest.mark.parametrize("alias, name", [("TT3_NoSE", "facenas_tt3_nose"), ("R11_V2_HS", "facenas_r11_v2_hs"),
                                         ("r12_v3_hs", "facenas_r12_v3_hs"), ("J15_HS", "facenas_j15_hs"),
                                         ("mobile0.25", "facenas_mobilenetv1_025"), ("ResNet50", "resnet50"),
                                         ("TT3_eSE", "facenas_tt3")])
def test_thesis_spellings_resolve(alias: str, name: str) -> None:
    assert models.resolve_model_name(alias) == name


def test_any_arch_file_loads_through_timm(tmp_path) -> None:
    path = tmp_path / "arch.json"
    models.published_arch("R12_V3_HS").save(path)
    model = timm.create_model("facenas_arch", arch=str(path), features_only=True)
    reference = timm.create_model("facenas_r12_v3_hs", features_only=True)
    assert model.feature_info.channels() == reference.feature_info.channels()
    assert [k for k in model.state_dict()] == [k for k in reference.state_dict()]
    assert models.create_backbone(str(path)).feature_info.reduction() == [8, 16, 32]


def test_arch_file_errors_name_the_file(tmp_path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"first_conv": "S_3x3_Conv_8",\n "stages": [{"blocks": ["3x3_KKConv_64_Id"]}]}')
    with pytest.raises(FaceNASError, match="broken.json") as info:
        timm.create_model("facenas_arch", arch=str(path))
    assert "\n" not in str(info.value)
    path.write_text('{"first_conv": "S_3x3_Conv_8",\n "stages": [}')
    with pytest.raises(FaceNASError, match=r"broken.json:2"):
        Arch.load(path)


def test_local_checkpoint_loads_and_mismatch_is_clear(tmp_path) -> None:
    detector = models.build_detector("R12_V3_HS")
    ckpt = tmp_path / "facenas_r12_v3_hs-synthetic-e1.pth"
    torch.save({"model": detector.state_dict()}, ckpt)
    loaded = timm.create_model("facenas_r12_v3_hs", pretrained=True, features_only=True,
                               pretrained_cfg_overlay=dict(file=str(ckpt)))
    first = "stem_0.body.0.conv.weight" if "stem_0.body.0.conv.weight" in loaded.state_dict() else None
    assert first is not None
    torch.testing.assert_close(loaded.state_dict()[first], detector.state_dict()["backbone.stem_0.body.0.conv.weight"])
    with pytest.raises(FaceNASError, match="does not match architecture R11_V2_HS"):
        timm.create_model("facenas_r11_v2_hs", pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt)))


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(FaceNASError, match="unknown model"):
        models.create_backbone("R99_HS")


def _assert_folded_and_equal(model: torch.nn.Module, deployed: torch.nn.Module, x: torch.Tensor) -> None:
    """The deploy form has no BatchNorm left and gives the training form's outputs within 1e-4."""
    with torch.no_grad():
        for a, b in zip(model(x), deployed(x)):
            torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.modules())


def test_deploy_form_equals_training_form() -> None:
    model = timm.create_model("facenas_tt3", features_only=True)
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    model.eval()
    _assert_folded_and_equal(model, deploy_form(model), torch.randn(2, 3, 96, 96))


def test_local_dir_route_of_weights_readme_loads_the_saved_weights(tmp_path) -> None:
    saved = timm.create_model("facenas_r12_v3_hs")
    with torch.no_grad():
        for p in saved.parameters():
            p.add_(torch.randn_like(p))  # differ from any fresh initialisation
    timm.models.save_for_hf(saved, tmp_path, safe_serialization=False)
    plain = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in saved.state_dict().items())
    features = timm.create_model(f"local-dir:{tmp_path}", pretrained=True, features_only=True)
    for key, value in features.state_dict().items():  # FeatureListNet flattens stem.0 -> stem_0
        assert torch.equal(value, saved.state_dict()[key.replace("stem_", "stem.").replace("stages_", "stages.")])
    assert features.feature_info.reduction() == [8, 16, 32]


def test_deploy_form_folds_the_timm_resnet50_baseline_too() -> None:
    model = models.create_backbone("resnet50").eval()
    deployed = deploy_form(model)
    _assert_folded_and_equal(model, deployed, torch.randn(1, 3, 64, 64))
    assert deployed.feature_info.reduction() == model.feature_info.reduction()
    detector = deploy_form(models.build_detector("resnet50").eval())
    assert isinstance(detector, type(models.build_detector("mobile0.25")))  # methods kept, backbone folded inside
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in detector.modules())


def test_published_arch_files_are_valid_json_schema() -> None:
    for name in models.ZOO:
        arch = models.published_arch(name)
        again = Arch.from_dict(json.loads(json.dumps(arch.to_dict())))
        assert again.to_dict() == arch.to_dict()
