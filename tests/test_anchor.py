"""The drift anchor (latency/anchor.py): a device whose speed changes during a profiling pass still gives a table in
one machine state."""
from __future__ import annotations

import pytest

from latency.anchor import DriftAnchor, anchor_wanted, choose_anchor_key, corrected, start_anchor
from utils.errors import FaceNASError


class DriftingDevice:
    """A fake device: every timing costs ``cost * speed``, and the device slows by ``slope`` per timing."""

    def __init__(self, slope: float):
        self.slope = slope
        self.calls = 0

    def time(self, cost: float) -> float:
        self.calls += 1
        return cost * (1.0 + self.slope * self.calls)


def test_a_pass_on_a_slowing_device_is_brought_back_to_the_reference_state():
    device = DriftingDevice(slope=0.002)  # ~ +80% by the end of the pass, a smooth drift like a throttling board
    anchor = DriftAnchor("anchor", lambda: device.time(0.25))
    reference_speed = 1.0 + device.slope * 2  # the reference is the median of the first three anchor timings
    costs = [0.05 + 0.01 * i for i in range(200)]
    raw, fixed = [], []
    for cost in costs:
        factor = anchor.factor()
        measured = device.time(cost)
        raw.append(measured / (cost * reference_speed) - 1)
        fixed.append(corrected({"mean_ms": measured}, factor)["mean_ms"] / (cost * reference_speed) - 1)
    assert max(abs(e) for e in fixed) < 0.01  # every block within 1% of its cost in the reference state
    assert max(raw) > 0.5  # without the anchor the last blocks read 50-80% slow


def test_one_hiccup_of_the_anchor_does_not_move_the_factor():
    timings = iter([1.0, 1.0, 1.0, 1.0, 5.0, 1.0])
    anchor = DriftAnchor("anchor", lambda: next(timings))
    assert anchor.reference_ms == 1.0
    assert [anchor.factor() for _ in range(3)] == [1.0, 1.0, 1.0]


def test_corrected_scales_every_timing_and_records_the_factor():
    stats = {"mean_ms": 2.0, "median_ms": 1.8, "p10_ms": 1.5, "p90_ms": 2.5, "first5_ms": 2.2, "n": 50, "load": 0.3}
    out = corrected(stats, 0.5)
    assert out == {"mean_ms": 1.0, "median_ms": 0.9, "p10_ms": 0.75, "p90_ms": 1.25, "first5_ms": 1.1, "n": 50,
                   "load": 0.3, "drift_factor": 0.5}
    assert stats["mean_ms"] == 2.0  # the measurement itself is left as it was


def test_the_anchor_is_a_mid_sized_block():
    keys = ["S_3x3_Conv_8_3x320x320", "3x3_KKConv_64_64x40x40_Id", "1x1_Conv_256_256x10x10", "3x3_MAXPool_16x160x160",
            "3x3_DKConv_32_32x80x80_Id"]
    # inputs: 307200, 102400, 25600, 409600, 204800 elements -> the median is 204800
    assert choose_anchor_key(keys) == "3x3_DKConv_32_32x80x80_Id"
    with pytest.raises(FaceNASError, match="no block with an input tensor"):
        choose_anchor_key(["Zero"])


@pytest.mark.parametrize(("meta", "has_entries", "choice", "wanted"), [
    ({"runtime": "torch"}, False, "auto", False),  # eager passes take seconds: raw, as the thesis measured
    ({"runtime": "onnxruntime"}, False, "auto", True),
    ({"runtime": "openvino"}, False, "auto", True),
    ({"runtime": "onnxruntime"}, True, "auto", False),  # a table started raw stays raw
    ({"runtime": "torch", "anchor": {"key": "k", "reference_ms": 1.0}}, True, "auto", True),  # and anchored, anchored
    ({"runtime": "torch"}, False, "on", True),
    ({"runtime": "onnxruntime"}, False, "off", False),
])
def test_the_anchor_policy(meta, has_entries, choice, wanted):
    assert anchor_wanted(meta, has_entries, choice) is wanted


def test_a_resume_may_not_switch_the_anchor():
    with pytest.raises(FaceNASError, match="without a drift anchor; drop --anchor on"):
        anchor_wanted({"runtime": "torch"}, True, "on")
    with pytest.raises(FaceNASError, match="with a drift anchor; drop --anchor off"):
        anchor_wanted({"runtime": "torch", "anchor": {"key": "k", "reference_ms": 1.0}}, True, "off")


def test_a_resumed_pass_keeps_the_stored_reference():
    meta: dict = {}
    device = DriftingDevice(slope=0.0)
    first = start_anchor(meta, ["3x3_DKConv_32_32x80x80_Id"], True, lambda key, _meta: lambda: device.time(0.4))
    assert meta["anchor"] == {"key": "3x3_DKConv_32_32x80x80_Id", "reference_ms": 0.4, "window": 3}
    assert device.calls == 3 and first.factor() == 1.0
    slower = DriftingDevice(slope=0.0)
    resumed = start_anchor(meta, ["S_3x3_Conv_8_3x320x320"], True, lambda key, _meta: lambda: slower.time(0.8))
    assert resumed.key == "3x3_DKConv_32_32x80x80_Id" and slower.calls == 0  # no new reference is taken
    assert resumed.factor() == 0.5  # the device runs twice as slow as when the table was started
    assert start_anchor(meta, [], True, lambda key, _meta: pytest.fail("nothing to measure, nothing to time")) is None
    assert start_anchor({}, ["3x3_DKConv_32_32x80x80_Id"], False, lambda key, _meta: pytest.fail("off")) is None
