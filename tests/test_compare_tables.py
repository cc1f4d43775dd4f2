"""tools/compare_tables.py: per-family ratios between two latency tables (issue 23 item 3)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from latency.table_format import TableFile
from tools import compare_tables

KEYS = {  # family -> block keys of a 40x40 input
    "MBV1": ["3x3_MBV1Conv_32_32x40x40", "3x3_MBV1Conv_64_64x40x40", "5x5_MBV1Conv_64_64x40x40"],
    "MBV2": ["3x3_MBConv6_32_32x40x40", "3x3_MBConv3_64_64x40x40"],
    "DK": ["3x3_DKConv_32_32x40x40", "3x3_DKConv_64_64x40x40", "S_3x3_DKConv_64_32x40x40"],
}


def _entry(ms: float) -> dict[str, float]:
    return {"mean_ms": ms, "median_ms": ms, "p10_ms": ms, "p90_ms": ms, "n": 3}


def _table(path, factors: dict[str, float], **meta):
    """A table whose block of index i in family f costs (i + 1) * factors[f] ms."""
    full = {"device": "cpu", "device_name": "test CPU", "threads": 1, "batch": 1, "resolution": 40,
            "protocol": {"warmup": 1, "samples": 3, "trim": 0.1}, **meta}
    table = TableFile.create(path, **full)
    for family, keys in KEYS.items():
        for i, key in enumerate(keys):
            table.add(key, _entry((i + 1) * factors[family]))
    table.save()
    return table


def test_compare_gives_each_family_its_own_ratio(tmp_path) -> None:
    base = _table(tmp_path / "fp32.json", {"MBV1": 1.0, "MBV2": 1.0, "DK": 1.0})
    # INT8 that pays for dense blocks and not for depthwise ones: the report must tell them apart
    other = _table(tmp_path / "int8.json", {"MBV1": 0.9, "MBV2": 0.5, "DK": 1.2})
    result = compare_tables.compare(base, other)
    assert list(result["families"]) == ["MBV1", "MBV2", "DK"]
    assert result["families"]["MBV2"]["geomean"] == pytest.approx(0.5)
    assert result["families"]["DK"]["geomean"] == pytest.approx(1.2)
    assert result["families"]["MBV1"]["n"] == 3
    assert result["families"]["MBV1"]["spearman"] == pytest.approx(1.0)
    assert result["all"]["geomean"] == pytest.approx(math.exp((3 * math.log(0.9) + 2 * math.log(0.5)
                                                               + 3 * math.log(1.2)) / 8))
    assert result["networks"] is None  # neither table measured a whole network


def test_compare_tables_cli_writes_report_table_and_plot(tmp_path, capsys) -> None:
    _table(tmp_path / "a.json", {"MBV1": 2.0, "MBV2": 2.0, "DK": 2.0})
    _table(tmp_path / "b.json", {"MBV1": 1.0, "MBV2": 1.0, "DK": 3.0})
    report = compare_tables.main(["--tables", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                  "--labels", "fp32", "int8", "--out", str(tmp_path / "fam")])
    printed = capsys.readouterr().out
    assert "**int8 / fp32**" in printed and "| DK | 3 | 1.50 |" in printed
    assert json.loads((tmp_path / "fam.json").read_text())["compared"][0]["families"]["MBV1"]["geomean"] == \
        pytest.approx(0.5)
    assert report["compared"][0]["label"] == "int8"
    assert (tmp_path / "fam.png").stat().st_size > 1000 and (tmp_path / "fam.md").is_file()


def test_compare_refuses_tables_of_different_workloads(tmp_path) -> None:
    base = _table(tmp_path / "a.json", {"MBV1": 1.0, "MBV2": 1.0, "DK": 1.0})
    other = _table(tmp_path / "b.json", {"MBV1": 1.0, "MBV2": 1.0, "DK": 1.0}, batch=8)
    with pytest.raises(compare_tables.FaceNASError, match=r"b\.json: batch is 8 but .*a\.json has 1"):
        compare_tables.compare(base, other)


def test_compare_tables_cli_bad_input_is_one_line_exit_2(tmp_path) -> None:
    import subprocess
    import sys

    (tmp_path / "broken.json").write_text("{not json")
    _table(tmp_path / "a.json", {"MBV1": 1.0, "MBV2": 1.0, "DK": 1.0})
    script = Path(__file__).resolve().parents[1] / "tools" / "compare_tables.py"
    proc = subprocess.run([sys.executable, str(script), "--tables", str(tmp_path / "a.json"),
                           str(tmp_path / "broken.json")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "broken.json" in proc.stderr and "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) == 1
