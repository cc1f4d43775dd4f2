"""Calibration models fitted on synthetic networks whose true latency model is known."""
from __future__ import annotations

import random

import pytest

from latency.calibration import Calibration, block_features, select_model
from latency.predict import arch_features, edge_costs, fit_table_calibration, predict_latency
from latency.random_archs import random_archs
from latency.table_format import TableFile
from models.naming import parse_block
from models.search_space import get_space
from utils.errors import FaceNASError

SIDE = 64


def _table(tmp_path, space, seed=0):
    """A latency table of ``space`` at 64 px with made-up entries (what the blocks 'measured')."""
    rng = random.Random(seed)
    meta = {"device": "cpu", "device_name": "test CPU", "threads": 1, "batch": 1, "resolution": SIDE,
            "protocol": {"warmup": 1, "samples": 3, "trim": 0.1}}
    table = TableFile.create(tmp_path / "t.json", **meta)
    for key in space.latency_keys(SIDE):
        value = rng.uniform(0.05, 2.0)
        table.add(key, {"mean_ms": value, "median_ms": value, "p10_ms": value, "p90_ms": value, "n": 3})
    return table


def _truth(table, arch, coef, noise, rng):
    """The 'measured' latency of a network under a known additive model, with relative noise."""
    total = coef.get("network", 0.0)
    for block in arch.resolve(SIDE):
        features = block_features(block.spec, table.value(block.key), table.batch)
        total += sum(value * features.get(name, 0.0) for name, value in coef.items() if name != "network")
    return total * (1 + rng.uniform(-noise, noise))


@pytest.mark.parametrize("truth, expected_model", [
    ({"time": 1.15}, "scale"),
    ({"time": 1.05, "block": 0.3}, "scale+per-block"),
    ({"time": 1.0, "network": 2.0}, "scale+offset"),
    ({"time": 1.0, "time:DK": 0.4}, "family-scales"),
])
def test_select_model_recovers_a_known_gap_and_generalises(tmp_path, truth, expected_model):
    space = get_space("R5_V2")
    table = _table(tmp_path, space)
    rng = random.Random(1)
    fit_archs = random_archs([space], 16, seed=3, prefix="fit")
    held_archs = random_archs([space], 10, seed=4, prefix="val")
    fit = [(a, _truth(table, a, truth, 0.002, rng)) for a in fit_archs]
    held = [(a, _truth(table, a, truth, 0.002, rng)) for a in held_archs]
    calibration, report = select_model([arch_features(a, table) for a, _ in fit], [m for _, m in fit])
    assert calibration.model == expected_model, report
    for name, value in truth.items():
        assert calibration.coef[name] == pytest.approx(value, rel=0.05, abs=0.05)
    stored = fit_table_calibration(table, fit, held)
    assert stored["model"] == expected_model and stored["validation"]["n"] == 10
    assert stored["validation"]["within10"] == 100.0 and stored["validation"]["mape"] < 1.0
    # the plain sum misses the gap the calibration closes
    assert stored["validation"]["mape"] < stored["validation_plain"]["mape"]
    # stored, reloaded and applied per block: predictions are the model's, and the search's per-edge costs agree
    table.save()
    again = TableFile.load(table.path)
    for arch, measured in held:
        assert predict_latency(arch, again) == pytest.approx(measured, rel=0.01)
    costs = edge_costs(space, again)
    choices = [0] * len(space.edges())
    assert costs.of_paths(choices) == pytest.approx(predict_latency(space.arch_from_choices(choices), again))


def test_family_scales_with_an_offset_are_told_apart_across_spaces(tmp_path):
    """ONNX Runtime on the 2-core CPU: some families run faster inside a network than alone, others slower, plus a
    per-network constant (bench/results/ort_report). The rpi4 spaces share their first conv and MaxPool, so the plain
    scale of those fixed parts and the offset are told apart only by the last convs that differ (R9's, the _HS ones);
    with one shared last conv the fit must refuse the model rather than guess."""
    rng = random.Random(0)

    def fitted(names):
        spaces = [get_space(name, hardswish=name.endswith("_HS")) for name in names]
        table = TableFile.create(tmp_path / f"{'-'.join(names)}.json", device="cpu", device_name="test CPU",
                                 threads=1, batch=1, resolution=SIDE, protocol={"warmup": 1, "samples": 3, "trim": 0.1})
        for key in dict.fromkeys(k for space in spaces for k in space.latency_keys(SIDE)):
            value = rng.uniform(0.05, 2.0)
            table.add(key, {"mean_ms": value, "median_ms": value, "p10_ms": value, "p90_ms": value, "n": 3})
        truth = {"time": 1.2, "time:MBV1": -0.3, "time:MBV2": -0.25, "time:DK": 0.2, "network": -4.0}
        fit = [(a, _truth(table, a, truth, 0.002, rng)) for a in random_archs(spaces, 24, seed=3, prefix="fit")]
        held = [(a, _truth(table, a, truth, 0.002, rng)) for a in random_archs(spaces, 12, seed=4, prefix="val")]
        return fit_table_calibration(table, fit, held)

    stored = fitted(["R5_V2", "R9", "R3_HS", "R10"])
    assert stored["model"] == "family-scales+offset", stored["candidates"]
    assert stored["validation"]["within10"] == 100.0 and stored["validation"]["mape"] < 1.0
    assert stored["coef"]["time:DK"] - stored["coef"]["time:MBV1"] == pytest.approx(0.5, abs=0.05)
    same_fixed = fitted(["R5_V2", "R5", "R3"])
    assert "tell the calibration's features apart" in same_fixed["candidates"]["family-scales+offset"]["error"]


@pytest.mark.parametrize("small", ["stride", "skippable"])
def test_a_per_call_overhead_may_exceed_only_blocks_no_edge_can_skip(tmp_path, small):
    """ONNX Runtime's case: every block timed alone pays a call overhead the whole network does not. A negative
    per-block constant larger than a stride-2 block's entry is fine (that block is in every network of its edge),
    but not one that makes a block cheaper than the Zero that could replace it."""
    from latency.calibration import skippable

    space = get_space("R5_V2")
    table = _table(tmp_path, space)
    tiny = None
    for key in space.latency_keys(SIDE):
        spec = parse_block(key)
        if spec.family in ("Conv", "MaxPool", "Zero"):
            continue
        wanted = (spec.stride == 2) if small == "stride" else skippable(spec)
        if wanted and tiny is None:
            tiny = key
        value = 0.03 if key == tiny else max(table.value(key), 0.3)
        table.add(key, {"mean_ms": value, "median_ms": value, "p10_ms": value, "p90_ms": value, "n": 3})
    truth = {"time": 1.0, "block": -0.08}
    rng = random.Random(1)
    fit = [(a, _truth(table, a, truth, 0.002, rng)) for a in random_archs([space], 16, seed=3, prefix="fit")]
    stored = fit_table_calibration(table, fit)
    if small == "stride":
        assert stored["model"] == "scale+per-block", stored["candidates"]
        assert stored["coef"]["block"] == pytest.approx(-0.08, abs=0.01)
    else:
        assert stored["model"] != "scale+per-block"
        assert "cost <= 0" in stored["candidates"]["scale+per-block"]["error"]


def test_per_block_costs_are_the_model_and_old_calibrations_still_read(tmp_path):
    space = get_space("R11")
    table = _table(tmp_path, space)
    key = space.latency_keys(SIDE)[3]
    raw = table.value(key)
    table.set_calibration(Calibration({"time": 2.0, "block": 0.5, "network": 1.0}, "scale+per-block+offset"))
    assert table.latency(key) == pytest.approx(2.0 * raw + 0.5) and table.offset_ms == 1.0
    assert table.latency(key, calibrated=False) == raw
    table.meta["calibration"] = {"scale": 1.25, "offset_ms": 3.0}  # a table written before coefficients existed
    assert table.latency(key) == pytest.approx(1.25 * raw) and table.offset_ms == 3.0 and table.scale == 1.25
    io = block_features(parse_block(key), raw, 1)["io"]
    table.meta["calibration"] = {"coef": {"time": 1.0, "io": 0.1}, "model": "scale+traffic"}
    assert table.latency(key) == pytest.approx(raw + 0.1 * io)


def test_bad_stored_coefficients_name_the_field(tmp_path):
    space = get_space("R11")
    table = _table(tmp_path, space)
    table.meta["calibration"] = {"coef": {"time": 1.0, "warp": 2.0}}
    table.save()
    with pytest.raises(FaceNASError, match=r"meta.calibration .*unknown calibration feature 'warp'"):
        TableFile.load(table.path)


def test_too_few_networks_are_refused(tmp_path):
    space = get_space("R11")
    table = _table(tmp_path, space)
    archs = random_archs([space], 2, seed=0)
    with pytest.raises(FaceNASError, match="at least 3"):
        fit_table_calibration(table, [(a, 1.0) for a in archs])
