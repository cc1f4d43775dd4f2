"""Prediction = sum of table entries; analytic FLOPs/params/acts tables; random architectures; the report's maths."""
from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

from latency.accuracy import accuracy, spearman
from latency.analytic import analytic_table, arch_counts, block_counts, module_counts
from latency.calibration import fit_calibration
from latency.internal_mode import LatencyTable
from latency.predict import arch_keys, predict_latency
from latency.random_archs import random_archs, random_choices
from latency.table_format import TableFile
from models import create_backbone, published_arch
from models.backbone import FaceNASBackbone
from models.search_space import get_space
from utils.errors import FaceNASError

ROOT = Path(__file__).resolve().parent.parent


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _synthetic_table(keys, resolution, scale=None):
    """A latency table with a distinct random value per key."""
    rng = random.Random(7)
    meta = {"device": "cpu", "device_name": "Synthetic", "machine": "none", "threads": 1, "batch": 1,
            "resolution": resolution, "dtype": "float32", "memory_format": "contiguous",
            "protocol": {"warmup": 1, "samples": 1, "trim": 0.1}, "torch_version": "x"}
    table = LatencyTable.create(None, **meta)
    for key in dict.fromkeys(keys):
        value = rng.uniform(0.1, 10.0)
        table.add(key, {"mean_ms": value, "median_ms": value, "p10_ms": value, "p90_ms": value, "n": 1})
    if scale is not None:
        table.set_calibration(scale, method="test")
    return table


@pytest.mark.parametrize("name", ["facenas_r12_v3_hs", "facenas_r11_v2_hs", "facenas_mobilenetv1_025",
                                  "facenas_tt3_nose"])
def test_prediction_of_a_registered_backbone_is_the_sum_of_its_entries(name):
    arch = create_backbone(name, features_only=False).arch  # the backbone timm builds for the name
    keys = [key for _, key in arch_keys(arch, 320)]
    table = _synthetic_table(keys, 320, scale=1.25)
    expected = sum(table.entries[key]["mean_ms"] for key in keys)  # repeated blocks count every time
    assert predict_latency(arch, table, calibrated=False) == pytest.approx(expected)
    assert predict_latency(arch, table) == pytest.approx(1.25 * expected)
    table.set_calibration(1.1, offset_ms=2.5, method="affine")
    assert predict_latency(arch, table) == pytest.approx(1.1 * expected + 2.5)  # the offset counts once per network
    wheres = [where for where, _ in arch_keys(arch, 320)]
    assert wheres[0] == "first_conv"
    assert ("maxpool" in wheres) == arch.maxpool and ("last_conv" in wheres) == (arch.last_conv is not None)
    assert len(keys) == sum(1 for _ in FaceNASBackbone(arch).modules() if type(_).__name__ == "Block")


def test_prediction_never_invents_a_missing_block():
    arch = published_arch("R12_V3_HS")
    keys = [key for _, key in arch_keys(arch, 320)]
    table = _synthetic_table(keys[:-1], 320)
    with pytest.raises(FaceNASError, match=keys[-1]):
        predict_latency(arch, table)


def test_internal_mode_measures_what_prediction_needs(tmp_path):
    arch = published_arch("R12_V3_HS")
    table = LatencyTable.create(tmp_path / "t.json", device="cpu", batch=1, resolution=32, threads=1, warmup=1,
                                samples=2)
    predicted = predict_latency(arch, table, measure_missing=True)
    stored = LatencyTable.load(tmp_path / "t.json")
    keys = [key for _, key in arch_keys(arch, 32)]
    assert set(stored.entries) == set(keys)
    assert predicted == pytest.approx(sum(stored.latency(key) for key in keys))


def test_block_counts_of_a_plain_conv_are_exact():
    counts = block_counts("1x1_Conv_256_128x10x10", batch=1)
    assert counts["flops"] == 2 * 128 * 256 * 10 * 10  # one multiply-add = 2 FLOPs
    assert counts["params"] == 128 * 256 + 2 * 256  # conv weight + BatchNorm affine
    assert counts["acts"] == 256 * 10 * 10
    strided = block_counts("S_3x3_DKConv_64_32x20x20")
    assert strided["flops"] == 2 * 9 * 32 * 64 * 10 * 10 and strided["acts"] == 64 * 10 * 10
    assert block_counts("Zero_32x10x10") == {"flops": 0, "params": 0, "acts": 0}


@pytest.mark.parametrize("name", ["R12_V3_HS", "TT3", "mobilenetv1_0.25"])
def test_arch_counts_equal_counting_the_whole_backbone(name):
    arch = published_arch(name)
    whole = module_counts(FaceNASBackbone(arch), (1, 3, 64, 64))
    assert arch_counts(arch, 64) == whole


def test_analytic_table_works_as_a_constraint(tmp_path):
    arch = published_arch("R11_V2_HS")
    keys = [key for _, key in arch_keys(arch, 64)]
    table = analytic_table("flops", keys, 64, path=tmp_path / "flops.json")
    loaded = LatencyTable.load(tmp_path / "flops.json")
    assert loaded.meta["metric"] == "flops" and loaded.unit == "MFLOPs"
    assert predict_latency(arch, loaded) == pytest.approx(arch_counts(arch, 64)["flops"] / 1e6)
    assert predict_latency(arch, table) == pytest.approx(predict_latency(arch, loaded))
    with pytest.raises(FaceNASError, match="latency.analytic"):
        loaded.latency("3x3_KKConv_64_64x8x8")


def test_cost_cli_writes_a_params_table(tmp_path):
    from latency.analytic import main

    main(["--metric", "params", "--space", "R11", "--resolution", "64", "--out", str(tmp_path / "p.json")])
    table = TableFile.load(tmp_path / "p.json")
    assert table.metric == "params" and len(table) == len(get_space("R11").latency_keys(64))


def test_random_architectures_are_reproducible_valid_and_inside_the_space():
    space = get_space("R5_V2_HS")
    keys = set(space.latency_keys(320))
    first = [space.arch_from_choices(random_choices(space, random.Random(3)), "a").to_dict() for _ in range(2)]
    assert first[0] == first[1]
    archs = random_archs([space, get_space("R1")], 12, seed=5)
    assert len({json.dumps(a.to_dict()["stages"]) for a in archs}) == 12
    assert [a.meta["space"] for a in archs[:2]] == ["R5_V2_HS", "R1"]
    for arch in archs:
        if arch.meta["space"] == "R5_V2_HS":
            assert {key for _, key in arch_keys(arch, 320)} <= keys
        assert all(spec.family != "Zero" for stage in arch.stages for spec in stage)
    again = random_archs([space, get_space("R1")], 12, seed=5)
    assert [a.to_dict() for a in again] == [a.to_dict() for a in archs]
    taken = {(a.meta["space"], tuple(a.meta["choices"])) for a in archs}
    other = random_archs([space, get_space("R1")], 12, seed=6, exclude=taken)
    assert not taken & {(a.meta["space"], tuple(a.meta["choices"])) for a in other}


def test_arch_from_choices_drops_zero_and_checks_its_input():
    space = get_space("R11")
    edges = space.edges()
    zero_everywhere = [len(e.candidates) - 1 if e.zero_allowed else 0 for e in edges]
    arch = space.arch_from_choices(zero_everywhere, "shallow")
    assert [len(stage) for stage in arch.stages] == [1, 1, 1, 1]
    with pytest.raises(FaceNASError, match="edges"):
        space.arch_from_choices([0], "bad")
    with pytest.raises(FaceNASError, match="choice 9"):
        space.arch_from_choices([9] + [0] * (len(edges) - 1), "bad")


def test_report_statistics_and_calibration_fit():
    measured = [10.0, 20.0, 40.0, 80.0]
    predicted = [8.0, 16.0, 32.0, 64.0]  # a plain sum 20% low everywhere
    assert fit_calibration(predicted, measured, "median")[0] == pytest.approx(1.25)
    assert fit_calibration(predicted, measured, "lsq")[0] == pytest.approx(1.25)
    noisy = predicted[:3] + [200.0]  # one wild measurement barely moves the median fit
    assert fit_calibration(noisy, measured, "median")[0] == pytest.approx(1.25, rel=0.1)
    affine_measured = [1.1 * p + 3.0 for p in predicted]  # a scale and a per-network cost the blocks never see
    scale, offset = fit_calibration(predicted, affine_measured, "affine")
    assert scale == pytest.approx(1.1) and offset == pytest.approx(3.0)
    assert fit_calibration(predicted, measured, "median")[1] == 0.0
    stats = accuracy([10.4, 21.5, 35.0, 80.0], measured)
    assert stats["n"] == 4 and stats["within5"] == 50.0 and stats["within10"] == 75.0
    assert stats["mape"] == pytest.approx((4 + 7.5 + 12.5 + 0) / 4)
    assert stats["spearman"] == pytest.approx(1.0)


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    a = [3.0, 1.0, 2.0, 2.0, 5.0, 4.0, 4.0]
    b = [1.0, 2.0, 2.0, 3.0, 9.0, 7.0, 8.0]
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic)
    assert spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) is None


def test_latency_report_end_to_end_fits_on_networks_it_does_not_report(tmp_path):
    report = _load_tool("latency_report")
    table_path = tmp_path / "t.json"
    LatencyTable.create(table_path, device="cpu", batch=1, resolution=32, threads=1, warmup=1, samples=3,
                        preset="rpi4")
    out = tmp_path / "report.json"
    report.main(["--latency-table", str(table_path), "--random", "3", "--seed", "1", "--fit-random", "3",
                 "--space", "R11", "--models", "R12_V3_HS", "--repeats", "2", "--fit-calibration", "--quiet",
                 "--json", str(out)])
    data = json.loads(out.read_text())
    roles = {n["arch"]: n["role"] for n in data["networks"]}
    assert sorted(roles.values()).count("fit") == 3 and roles["R12_V3_HS"] == "validate"
    assert set(data["summary"]) >= {"random", "registered", "all_validation", "fit"}
    assert data["summary"]["all_validation"]["raw"]["n"] == 4
    table = LatencyTable.load(table_path)
    assert table.scale == pytest.approx(data["scale"]) and table.meta["calibration"]["n"] == 3
    for net in data["networks"]:
        assert len(net["rounds_ms"]) == 2
        assert net["predicted_ms"] == pytest.approx(net["predicted_raw_ms"] * data["scale"])
    plot = _load_tool("plot_latency")
    png = plot.plot_report(out, tmp_path / "scatter.png")
    written = plot.plot_table(table, tmp_path / "plots", tmp_path / "grid.png")
    assert png.stat().st_size > 0 and len(written) >= 3 and all(p.stat().st_size > 0 for p in written)


def test_the_report_measures_the_machine_drift_on_the_table_s_own_networks(tmp_path):
    report = _load_tool("latency_report")
    table_path = tmp_path / "d.json"
    table = LatencyTable.create(table_path, device="cpu", batch=1, resolution=32, threads=1, warmup=1, samples=3,
                                preset="rpi4")
    table.calibrate_here([get_space("R11")], fit=3, validate=1, repeats=1, progress=False)
    out = tmp_path / "r.json"
    report.main(["--latency-table", str(table_path), "--random", "2", "--space", "R11", "--repeats", "1",
                 "--drift-check", "3", "--quiet", "--json", str(out)])
    drift = json.loads(out.read_text())["drift"]
    assert drift["n"] == 3 and drift["low"] <= drift["drift"] <= drift["high"]
    assert drift["validation_corrected"]["n"] == 2
