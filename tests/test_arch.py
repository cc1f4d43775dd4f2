"""The architecture schema: file form, validation errors, resolution into latency keys, description tables."""
from __future__ import annotations

import json

import pytest

import models
from models.arch import Arch
from utils.errors import FaceNASError


def test_string_and_dict_entries_describe_the_same_block() -> None:
    base = models.published_arch("R12_V3_HS").to_dict()
    strings = json.loads(json.dumps(base))
    strings["stages"][2]["blocks"] = ["S_3x3_KKConv_Mid_128_HS", "3x3_KKConv_Mid_128_HS_Id"]
    assert Arch.from_dict(strings).to_dict() == Arch.from_dict(base).to_dict()


def test_repeat_expands_and_compresses() -> None:
    arch = models.published_arch("R11_V2_HS")
    assert len(arch.stages[2]) == 9
    stage3 = arch.to_dict()["stages"][2]["blocks"]
    assert stage3[1] == {"name": "3x3_DKConv_128", "act": "HS", "shortcut": "Identity", "repeat": 8}


def test_resolve_gives_latency_keys_with_input_tensors() -> None:
    keys = [r.key for r in models.published_arch("R12_V3_HS").resolve(320)]
    assert keys == [
        "S_3x3_Conv_8_3x320x320", "3x3_DKConv_16_8x160x160", "3x3_MAXPool_16x160x160", "3x3_KKConv_32_16x80x80",
        "S_3x3_KKConv_64_32x80x80", "S_3x3_KKConv_Mid_128_64x40x40_HS", "3x3_KKConv_Mid_128_128x20x20_HS_Id",
        "S_3x3_KKConv_Mid_256_128x20x20_HS", "3x3_KKConv_Mid_256_256x10x10_HS_Id", "1x1_Conv_256_256x10x10_HS",
    ]


def test_describe_prints_a_thesis_style_table() -> None:
    text = models.published_arch("TT3_NoSE").describe()
    assert "[3x3_BottleNeckConv4_2048] x 4 | [Identity] x 4" in text
    assert "S_3x3_DKConv_128" in text and "1x1_Conv_Pool" in text and "1x1_Conv_2560" in text


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["stages"].pop(), "stride 32"),
    (lambda d: d["stages"][1]["blocks"].insert(0, {"name": "Zero"}), "Zero is not a stage block"),
    (lambda d: d.update(colour="red"), "unknown field"),
    (lambda d: d["stages"][0]["blocks"][0].update(shortcut="Identity"), "Identity"),
    (lambda d: d["stages"][0]["blocks"][0].update(repeat=0), "repeat"),
    (lambda d: d["stages"][0]["blocks"].__setitem__(0, "3x3_KKConv_32_16x80x80"), "input tensors"),
    (lambda d: d.update(format="facenas-arch/9"), "format"),
])
def test_invalid_architectures_are_one_line_errors(tmp_path, mutate, message: str) -> None:
    data = models.published_arch("R12_V3_HS").to_dict()
    mutate(data)
    path = tmp_path / "bad_arch.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FaceNASError, match=message) as info:
        Arch.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_save_is_atomic_and_round_trips(tmp_path) -> None:
    arch = models.published_arch("J15_HS")
    path = tmp_path / "a.json"
    arch.save(path)
    assert Arch.load(path).to_dict() == arch.to_dict()
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
