"""Latency-table file format: validation, one-line errors, lookups, calibration, atomic saves, internal mode."""
from __future__ import annotations

import json
import os

import pytest

from latency.internal_mode import LatencyTable
from latency.table_format import TABLE_FORMAT, TableFile
from utils.errors import FaceNASError

KEY_A = "3x3_KKConv_Mid_16_16x8x8"
KEY_B = "S_3x3_DKConv_32_16x8x8"


def _meta(**overrides):
    meta = {
        "metric": "latency", "unit": "ms", "device": "cpu", "device_name": "Test CPU", "machine": "x86_64",
        "threads": 1, "batch": 1, "resolution": 32, "dtype": "float32", "memory_format": "contiguous",
        "bn_folded": True, "torch_version": "2.x", "protocol": {"warmup": 2, "samples": 5, "trim": 0.1},
        "created": "2024-01-01T00:00:00+00:00", "calibration": None,
    }
    meta.update(overrides)
    return meta


def _entry(mean):
    return {"mean_ms": mean, "median_ms": mean, "p10_ms": mean * 0.9, "p90_ms": mean * 1.1, "n": 5}


def _write(path, data):
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def _valid(tmp_path, **meta):
    return _write(tmp_path / "t.json", {"format": TABLE_FORMAT, "meta": _meta(**meta),
                                        "entries": {KEY_A: _entry(1.5), KEY_B: _entry(0.5)}})


def test_load_lookup_and_calibration(tmp_path):
    table = LatencyTable.load(_valid(tmp_path, calibration={"scale": 1.2}))
    assert table.batch == 1 and table.input_size == 32 and table.scale == pytest.approx(1.2)
    assert table.latency(KEY_A, calibrated=False) == pytest.approx(1.5)
    assert table.latency(KEY_A) == pytest.approx(1.8)
    assert table.latency("Zero_16x8x8") == 0.0
    assert table.missing([KEY_A, "3x3_KKConv_16_16x8x8", "Zero_16x8x8", "3x3_KKConv_16_16x8x8"]) == [
        "3x3_KKConv_16_16x8x8"]


def test_each_estimator_reads_its_own_statistic_and_min_needs_min_ms(tmp_path):
    entry = {**_entry(1.0), "min_ms": 0.7}
    for estimator, expected in (("trimmed_mean", 1.0), ("p10", 0.9), ("min", 0.7)):
        path = _write(tmp_path / "t.json", {"format": TABLE_FORMAT, "meta": _meta(protocol={
            "warmup": 2, "samples": 5, "trim": 0.1, "estimator": estimator}), "entries": {KEY_A: entry}})
        assert LatencyTable.load(path).latency(KEY_A, calibrated=False) == pytest.approx(expected)
    # a table written before min_ms existed still loads with its own estimator ...
    assert LatencyTable.load(_valid(tmp_path)).latency(KEY_A, calibrated=False) == pytest.approx(1.5)
    # ... but a min table whose entry lacks it is refused in one line naming the file, line and field
    text = json.dumps({"format": TABLE_FORMAT, "meta": _meta(protocol={"warmup": 2, "samples": 5, "trim": 0.1,
                                                                        "estimator": "min"}),
                       "entries": {KEY_B: {**_entry(0.5), "min_ms": 0.4}, KEY_A: _entry(1.5)}}, indent=2)
    (tmp_path / "m.json").write_text(text, encoding="utf-8")
    line = next(i for i, row in enumerate(text.splitlines(), 1) if KEY_A in row)
    with pytest.raises(FaceNASError, match=rf"m\.json:{line}: .*'min_ms'.*estimator 'min'") as err:
        LatencyTable.load(tmp_path / "m.json")
    assert "\n" not in str(err.value)


def test_thesis_spellings_are_normalised(tmp_path):
    path = _write(tmp_path / "t.json", {"format": TABLE_FORMAT, "meta": _meta(),
                                        "entries": {"3X3_MaxPool_16x8x8": _entry(0.1)}})
    table = LatencyTable.load(path)
    assert table.keys() == ["3x3_MAXPool_16x8x8"]
    assert table.latency("3x3_MAXPool_16x8x8") == pytest.approx(0.1)


def test_missing_key_is_an_error_naming_table_key_and_fix(tmp_path):
    table = LatencyTable.load(_valid(tmp_path))
    with pytest.raises(FaceNASError) as err:
        table.latency("3x3_KKConv_64_32x8x8")
    message = str(err.value)
    assert "t.json" in message and "3x3_KKConv_64_32x8x8" in message and "profile_latency.py" in message
    assert "\n" not in message


def test_skipped_key_explains_why(tmp_path):
    table = LatencyTable.load(_valid(tmp_path))
    table.skip("3x3_KKConv_64_32x8x8", "mean of first 5 samples 900 ms > --max-ms 500", filter="max_ms")
    table.save()
    with pytest.raises(FaceNASError, match="max-ms 500"):
        LatencyTable.load(table.path).latency("3x3_KKConv_64_32x8x8")


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "format": "facenas-latency-table/1",\n  "meta": {\n    "batch": 1,,\n  }\n}\n')
    with pytest.raises(FaceNASError) as err:
        TableFile.load(path)
    assert str(err.value).startswith(f"{path}:4:")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d.update(format="something/2"), "format"),
    (lambda d: d.update(entries=[1, 2]), "'entries' must be a JSON object"),
    (lambda d: d["entries"][KEY_A].update(mean_ms="fast"), "'mean_ms' must be a non-negative number"),
    (lambda d: d["entries"][KEY_A].update(n=0), "'n' must be a positive integer"),
    (lambda d: d["entries"][KEY_A].pop("p90_ms"), "lacks 'p90_ms'"),
    (lambda d: d["entries"].update({"3x3_KKConv_Mid_16": _entry(1.0)}), "must state its input tensor"),
    (lambda d: d["entries"].update({"3x3_Banana_16_16x8x8": _entry(1.0)}), "does not follow"),
    (lambda d: d["meta"].update(batch=0), "meta.batch must be a positive integer"),
    (lambda d: d["meta"].update(threads="two"), "meta.threads must be a positive integer"),
    (lambda d: d["meta"].pop("protocol"), "meta.protocol is missing"),
    (lambda d: d["meta"]["protocol"].update(trim=0.7), "trim must be a number in [0, 0.5)"),
    (lambda d: d["meta"].update(calibration={"scale": -1}), "meta.calibration"),
    (lambda d: d["meta"].update(device="tpu"), "meta.device must be cpu or cuda"),
    (lambda d: d["meta"].update(metric="energy"), "meta.metric must be one of"),
    (lambda d: d.update(extra=1), "unknown top-level field(s) extra"),
    (lambda d: d["entries"][KEY_A].update(rounds=[]), "'rounds' must be a non-empty list"),
    (lambda d: d.update(networks={"net": {"arch": {}, "role": "train", "measured_ms": 1.0, "rounds_ms": [1.0]}}),
     "role must be validate or fit"),
])
def test_schema_errors_are_one_line(tmp_path, mutate, expected):
    data = json.loads(_valid(tmp_path).read_text())
    mutate(data)
    path = _write(tmp_path / "t.json", data)
    with pytest.raises(FaceNASError) as err:
        TableFile.load(path)
    message = str(err.value)
    assert expected in message
    assert message.startswith(str(path)) and "\n" not in message


def test_error_points_at_the_line_of_the_bad_entry(tmp_path):
    data = json.loads(_valid(tmp_path).read_text())
    data["entries"][KEY_B]["mean_ms"] = None
    path = _write(tmp_path / "t.json", data)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if f'"{KEY_B}"' in text)
    with pytest.raises(FaceNASError, match=f"^{path}:{line}: entry '{KEY_B}'"):
        TableFile.load(path)


def test_open_or_create_resumes_or_refuses_a_mismatch(tmp_path):
    path = _valid(tmp_path)
    resumed = TableFile.open_or_create(path, **_meta())
    assert set(resumed.keys()) == {KEY_A, KEY_B}
    before = path.read_text()
    for field, value in (("batch", 8), ("resolution", 640), ("device_name", "Raspberry Pi 4"), ("threads", 4)):
        with pytest.raises(FaceNASError, match=f"{field}="):
            TableFile.open_or_create(path, **_meta(**{field: value}))
    assert path.read_text() == before
    fresh = TableFile.open_or_create(tmp_path / "new.json", **_meta())
    assert len(fresh) == 0 and TableFile.load(tmp_path / "new.json").meta["batch"] == 1
    with pytest.raises(FaceNASError, match="exists already"):
        TableFile.create(path, **_meta())


def test_interrupted_save_keeps_the_old_table(tmp_path, monkeypatch):
    path = _valid(tmp_path)
    before = path.read_text()
    table = TableFile.load(path)
    table.add("3x3_KKConv_16_16x8x8", _entry(2.0))

    def crash(fd):
        raise KeyboardInterrupt  # Ctrl-C after the temporary file was written, before the rename

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        table.save()
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]
    monkeypatch.undo()
    table.save()
    assert "3x3_KKConv_16_16x8x8" in TableFile.load(path).entries


def test_internal_mode_measures_saves_after_each_entry_and_resumes(tmp_path):
    path = tmp_path / "here.json"
    table = LatencyTable.create(path, device="cpu", batch=1, resolution=32, threads=1, warmup=1, samples=3)
    seen_on_disk = []

    def log(line):
        # the table is saved before the log line is written: the key is already on disk
        seen_on_disk.append(set(json.loads(path.read_text())["entries"]))

    added = table.measure_missing([KEY_A, KEY_B, "Zero_16x8x8", KEY_A], progress=False, log=log)
    assert added == [KEY_A, KEY_B]
    assert seen_on_disk == [{KEY_A}, {KEY_A, KEY_B}]
    reloaded = LatencyTable.load(path)
    entry = reloaded.entries[KEY_A]
    assert entry["n"] == 3 and entry["p10_ms"] <= entry["median_ms"] <= entry["p90_ms"]
    assert reloaded.meta["threads"] == 1 and reloaded.meta["protocol"]["samples"] == 3
    assert reloaded.measure_missing([KEY_A, KEY_B], progress=False) == []


def test_internal_mode_refuses_a_table_from_another_device(tmp_path):
    path = _valid(tmp_path, device_name="Raspberry Pi 4 Model B Rev 1.4 (Cortex-A72)", machine="aarch64")
    before = path.read_text()
    table = LatencyTable.load(path)
    with pytest.raises(FaceNASError) as err:
        table.measure_missing(["3x3_KKConv_16_16x8x8"], progress=False)
    message = str(err.value)
    assert "Raspberry Pi 4" in message and "--names-file" in message and "\n" not in message
    assert path.read_text() == before
    assert (tmp_path / "t.missing.txt").read_text().split() == ["3x3_KKConv_16_16x8x8"]


def test_analytic_table_fills_missing_by_counting(tmp_path):
    table = LatencyTable.create(tmp_path / "flops.json", metric="flops", batch=1, resolution=32)
    assert table.measure_missing(["1x1_Conv_16_8x4x4"], progress=False) == ["1x1_Conv_16_8x4x4"]
    reloaded = LatencyTable.load(tmp_path / "flops.json")
    assert reloaded.metric == "flops" and reloaded.scale == 1.0
    assert reloaded.latency("1x1_Conv_16_8x4x4") == pytest.approx(2 * 8 * 16 * 16 / 1e6)


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 1), (4, 3), (16, 15)])
def test_new_cpu_tables_leave_one_core_free(monkeypatch, tmp_path, cores, expected):
    """Default threads: every usable core but one (never 0), recorded in a new table; an explicit count wins."""
    import latency.measure as measure

    monkeypatch.setattr(measure, "usable_cores", lambda: cores)
    assert measure.default_threads("cpu") == expected
    table = LatencyTable.create(tmp_path / "t.json", device="cpu", batch=1, resolution=64)
    assert table.meta["threads"] == expected
    assert measure.machine_meta("cpu", threads=cores)["threads"] == cores
