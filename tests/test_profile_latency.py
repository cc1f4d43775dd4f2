"""profile_latency.py: generated from the project, fresh, self-contained, resumable, filtered and logged.

Every run below copies the generated script into an empty temporary folder and runs it there with ``python -I``
(no PYTHONPATH, no user site, no script folder on sys.path) under an import guard: importing the project packages,
timm or numpy fails and is reported, and tqdm is hidden as on a device that has nothing but PyTorch.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latency.table_format import TableFile
from models.search_space import PRESETS, preset_spaces

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "profile_latency.py"
FORBIDDEN = ("models", "latency", "nas", "utils", "timm", "numpy")

# Runs the script as __main__ with an import guard installed first. torch is imported before the guard because
# torch itself optionally imports numpy; the static test below checks that the script never names numpy.
GUARD = f"""
import runpy, sys
import torch
FORBIDDEN = {FORBIDDEN!r}
class Guard:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in FORBIDDEN:
            sys.stderr.write("FORBIDDEN-IMPORT " + name + "\\n")
            raise ModuleNotFoundError("no module named " + repr(name) + " on this device")
        if top == "tqdm":
            raise ModuleNotFoundError("tqdm is not installed on this device")
        return None
sys.meta_path.insert(0, Guard())
sys.argv = ["profile_latency.py"] + sys.argv[1:]
runpy.run_path("profile_latency.py", run_name="__main__")
"""

KEY_A = "3x3_KKConv_Mid_16_16x12x12"
KEY_B = "S_3x3_DKConv_32_16x12x12"


@pytest.fixture(scope="module")
def script():
    """The generated script loaded as a module, for the behaviours that need no fresh interpreter."""
    spec = importlib.util.spec_from_file_location("profile_latency_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture()
def device_dir(tmp_path):
    """An empty folder holding only the generated script."""
    folder = tmp_path / "device"
    folder.mkdir()
    shutil.copy(SCRIPT, folder / "profile_latency.py")
    return folder


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_script(folder: Path, *args: str, check: bool = True, wait: bool = True):
    command = [sys.executable, "-I", "-c", GUARD, *args]
    if not wait:
        return subprocess.Popen(command, cwd=folder, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    result = subprocess.run(command, cwd=folder, env=_env(), capture_output=True, text=True, timeout=300)
    assert "FORBIDDEN-IMPORT" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_generated_script_is_fresh():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "build_profiler.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, "profile_latency.py is stale: run python tools/build_profiler.py"


def test_check_detects_a_stale_copy(tmp_path):
    stale = tmp_path / "profile_latency.py"
    stale.write_text(SCRIPT.read_text().replace("def make_act(", "def make_act_edited(", 1))
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "build_profiler.py"), "--check", "--output",
                             str(stale)], capture_output=True, text=True)
    assert result.returncode == 1 and "stale" in result.stderr


def test_blocks_are_embedded_not_copied_by_hand():
    text = SCRIPT.read_text()
    assert "generated" in text.splitlines()[2].lower() and "do not edit" in text.lower()
    blocks = (ROOT / "models" / "blocks.py").read_text()
    body = blocks[blocks.index("def make_act("):]
    assert body in text  # the block code is models/blocks.py verbatim


def test_script_imports_only_the_standard_library_and_torch():
    tree = ast.parse(SCRIPT.read_text())
    allowed = set(sys.stdlib_module_names) | {"torch", "tqdm", "__future__"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
                pytest.fail(f"line {node.lineno}: dynamic __import__")
            continue
        for name in names:
            assert name.split(".")[0] in allowed, f"line {node.lineno}: imports {name}"


def test_list_names_matches_the_preset_spaces(tmp_path, script, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script.main(["--preset", "rpi4", "--list-names"])
    lines = capsys.readouterr().out.splitlines()
    printed = [line for line in lines if not line.startswith("#")]
    assert sum(line.startswith("# network ") for line in lines) == 24 + 8  # the default calibration networks
    size = PRESETS["rpi4"]["latency_size"]
    expected = {key for space in preset_spaces("rpi4") for key in space.latency_keys(size)}
    assert set(printed) == expected and len(printed) == len(expected)
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written


def test_tiny_profile_writes_a_valid_table_and_a_second_run_skips_both(device_dir):
    args = ["--names", KEY_A, KEY_B, "--warmup", "1", "--samples", "4", "--threads", "1", "--out", "t.json"]
    run_script(device_dir, *args)
    table = TableFile.load(device_dir / "t.json")
    assert set(table.entries) == {KEY_A, KEY_B}
    meta = table.meta
    assert meta["device"] == "cpu" and meta["batch"] == 1 and meta["threads"] == 1 and meta["bn_folded"] is True
    assert meta["protocol"] == {**meta["protocol"], "warmup": 1, "samples": 4, "trim": 0.1}
    for field in ("device_name", "cpu_model", "torch_version", "dtype", "memory_format", "created"):
        assert meta[field]
    assert all(entry["n"] == 4 for entry in table.entries.values())
    log = (device_dir / "t.log").read_text()
    assert f"measured {KEY_A}" in log and f"measured {KEY_B}" in log

    first = (device_dir / "t.json").read_text()
    result = run_script(device_dir, "--names", KEY_A, KEY_B, "--threads", "1", "--out", "t.json")
    assert "measured 0, already present 2" in result.stderr
    assert json.loads((device_dir / "t.json").read_text())["entries"] == json.loads(first)["entries"]
    assert f"present {KEY_A}" in (device_dir / "t.log").read_text()


def test_mismatched_rerun_and_bad_names_fail_in_one_line(device_dir, script):
    out = device_dir / "t.json"
    script.main(["--names", KEY_A, "--warmup", "1", "--samples", "3", "--threads", "1", "--quiet", "--out", str(out)])
    before = out.read_text()
    # the device script turns user errors into one line and exit status 2
    result = run_script(device_dir, "--names", KEY_A, "--threads", "1", "--out", "t.json", "--batch", "2",
                        check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "batch=1" in lines[0]
    assert TableFile.load(out).estimator == "min"  # the default of new tables
    for extra, expected in ((["--resolution", "640"], "resolution=None"), (["--samples", "9"], "samples=3"),
                            (["--estimator", "median"], "estimator=min")):
        with pytest.raises(script.FaceNASError) as err:
            script.main(["--names", KEY_A, "--threads", "1", "--quiet", "--out", str(out), *extra])
        assert expected in str(err.value) and "\n" not in str(err.value)
    assert out.read_text() == before
    with pytest.raises(script.FaceNASError, match="_<cin>x<H>x<W>"):
        script.main(["--names", "3x3_KKConv_Mid_16", "--out", str(device_dir / "u.json")])
    (device_dir / "names.txt").write_text(f"# wanted blocks\n{KEY_A}\n\nS_3x3_Nope_3\n")
    with pytest.raises(script.FaceNASError, match="names.txt:4:"):
        script.main(["--names-file", str(device_dir / "names.txt"), "--out", str(device_dir / "u.json")])
    assert not (device_dir / "u.json").exists()


def test_filters_skip_and_log_with_the_reason(tmp_path, script, capsys):
    jump = "S_3x3_KKConv_128_16x12x12"  # 16 -> 128 channels: ratio 8
    out = tmp_path / "f.json"
    args = ["--names", jump, KEY_A, "--max-channel-ratio", "4", "--max-ms", "0.000001", "--warmup", "1",
            "--samples", "20", "--threads", "1", "--quiet", "--out", str(out)]
    script.main(args)
    assert "skipped 2" in capsys.readouterr().err
    table = TableFile.load(out)
    assert table.entries == {}
    assert table.skipped[jump]["filter"] == "channel_ratio"
    assert table.skipped[KEY_A]["filter"] == "max_ms" and table.skipped[KEY_A]["first5_ms"] > 0.000001
    log = (tmp_path / "f.log").read_text()
    assert f"skipped {jump}: atypical channel jump 16 -> 128 (ratio 8 > --max-channel-ratio 4)" in log
    assert f"skipped {KEY_A}: mean of first 5 samples" in log and "--max-ms 1e-06" in log
    # the threshold decision is remembered: a rerun skips without measuring again
    script.main(args)
    assert "(measured in an earlier run)" in (tmp_path / "f.log").read_text()
    # with the filters relaxed the blocks are measured
    script.main(["--names", jump, KEY_A, "--max-channel-ratio", "0", "--threads", "1", "--quiet", "--out", str(out)])
    assert set(TableFile.load(out).entries) == {jump, KEY_A}
    assert TableFile.load(out).skipped == {}


def test_killed_run_leaves_a_valid_table_that_resumes(device_dir, script):
    keys = [f"3x3_KKConv_{c}_{c}x24x24" for c in (16, 24, 32, 40, 48, 56, 64, 72)]
    args = ["--names", *keys, "--warmup", "1", "--samples", "60", "--threads", "1", "--quiet", "--out", "k.json"]
    process = run_script(device_dir, *args, wait=False)
    table_path = device_dir / "k.json"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if table_path.exists() and json.loads(table_path.read_text())["entries"]:
                break
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    partial = TableFile.load(table_path)  # valid JSON whatever moment the kill hit
    assert 1 <= len(partial) < len(keys)
    script.main(["--names", *keys, "--threads", "1", "--quiet", "--out", str(table_path)])
    assert f"present {keys[0]}" in (device_dir / "k.log").read_text().split("run:")[-1]
    assert set(TableFile.load(table_path).entries) == set(keys)


def test_explicit_space_options(script, capsys):
    script.main(["--families", "KK", "DK", "--channels", "16,32", "64", "128", "256", "--resolution", "320",
                 "--first-channels", "8", "16", "--se", "ese", "--hardswish", "both", "--max-channel-ratio", "2",
                 "--list-names"])
    lines = capsys.readouterr().out.splitlines()
    keys = [line for line in lines if not line.startswith("#")]
    skipped = [line for line in lines if line.startswith("#")]
    assert "S_3x3_Conv_16_3x320x320" in keys and "S_3x3_Conv_8_3x320x320" in keys
    assert any(k.startswith("S_3x3_KKConv_64_16x80x80") for k in keys) is False  # 16 -> 64 is ratio 4 > 2
    assert any("16 -> 64" in line for line in skipped)
    assert any(k.startswith("eSE_3x3_KKConv_128_128x20x20_HS") for k in keys)
    assert any(k.startswith("eSE_3x3_KKConv_128_128x20x20") and "_HS" not in k for k in keys)


def test_help_documents_defaults(script, capsys):
    with pytest.raises(SystemExit) as done:
        script.main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("--max-channel-ratio", "default: 8", "--rest", "default: 0", "--max-ms", "--list-names",
                     "--names-file", "--stages", "--strides", "--first-channels", "--last-channels", "--se"):
        assert fragment in text


def test_rounds_and_whole_networks_for_an_external_device(tmp_path, script):
    out = tmp_path / "dev.json"
    args = ["--space", "R11", "--resolution", "32", "--threads", "1", "--warmup", "1", "--samples", "3", "--quiet",
            "--random-archs", "2", "--fit-archs", "2", "--repeats", "2", "--out", str(out)]
    script.main([*args, "--rounds", "2"])
    table = TableFile.load(out)
    entry = next(iter(table.entries.values()))
    field = {"trimmed_mean": "mean_ms", "median": "median_ms", "p10": "p10_ms", "min": "min_ms"}[table.estimator]
    assert len(entry["rounds"]) == 2 and entry[field] == sorted(r[field] for r in entry["rounds"])[0]
    assert table.meta["protocol"]["rounds"] == 2
    assert sorted(n["role"] for n in table.networks.values()) == ["fit", "fit", "validate", "validate"]
    assert all(len(n["rounds_ms"]) == 2 and n["measured_ms"] > 0 for n in table.networks.values())
    # resuming with more rounds adds a round to every entry and leaves the networks alone
    before = {name: n["rounds_ms"] for name, n in table.networks.items()}
    script.main([*args, "--rounds", "3"])
    table = TableFile.load(out)
    assert all(len(e["rounds"]) == 3 for e in table.entries.values())
    assert {name: n["rounds_ms"] for name, n in table.networks.items()} == before
    # the report reads those networks instead of measuring here, and fits on the 'fit' ones only
    report = importlib.util.spec_from_file_location("report_for_device", ROOT / "tools" / "latency_report.py")
    module = importlib.util.module_from_spec(report)
    sys.modules[report.name] = module
    report.loader.exec_module(module)
    module.main(["--latency-table", str(out), "--from-table", "--fit-calibration", "--calibration", "median",
                 "--quiet", "--json", str(tmp_path / "r.json")])
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["from_table"] is True and data["calibration"]["n"] == 2
    assert data["summary"]["all_validation"]["raw"]["n"] == 2


def test_a_profiled_table_is_calibrated_by_default_and_on_the_device(device_dir):
    """Run alone (the guard forbids the project, numpy and tqdm): blocks, then calibration networks, then the fit."""
    args = ["--space", "R12", "--resolution", "32", "--threads", "1", "--warmup", "1", "--samples", "3",
            "--fit-archs", "8", "--random-archs", "4", "--repeats", "2", "--out", "c.json"]
    done = run_script(device_dir, *args)
    table = TableFile.load(device_dir / "c.json")
    calibration = table.meta["calibration"]
    assert calibration is not None and calibration["n_fit"] == 8 and calibration["validation"]["n"] == 4
    assert calibration["model"] in calibration["candidates"] and "loo" in calibration
    assert sorted(n["role"] for n in table.networks.values()) == ["fit"] * 8 + ["validate"] * 4
    assert "calibration" in done.stderr and "held-out: 4 networks" in done.stderr
    # --no-calibration: blocks only, and the stored networks of another run are never refitted into it
    run_script(device_dir, "--space", "R12", "--resolution", "32", "--threads", "1", "--warmup", "1", "--samples",
               "3", "--no-calibration", "--out", "plain.json")
    plain = TableFile.load(device_dir / "plain.json")
    assert plain.meta["calibration"] is None and not plain.networks


def test_a_table_measured_in_onnx_runtime_records_it_and_refuses_to_mix(device_dir, script):
    """--runtime onnxruntime: blocks and calibration networks as ONNX graphs in ONNX Runtime, recorded in meta."""
    pytest.importorskip("onnxruntime")
    out = device_dir / "ort.json"
    args = ["--space", "R12", "--resolution", "32", "--threads", "1", "--warmup", "1", "--samples", "3", "--quiet",
            "--fit-archs", "4", "--random-archs", "2", "--repeats", "1", "--out", str(out)]
    script.main([*args, "--runtime", "onnxruntime"])
    table = TableFile.load(out)
    assert table.runtime == "onnxruntime" and table.meta["execution_provider"] == "CPUExecutionProvider"
    assert table.meta["graph_optimization"] == "all" and table.meta["runtime_version"]
    assert table.meta["calibration"]["n_fit"] == 4 and len(table.networks) == 6
    # the ONNX Runtime pass is anchored by default: one stored reference, a drift factor on every entry
    anchor = table.meta["anchor"]
    assert anchor["key"] in table.entries and anchor["reference_ms"] > 0
    assert all(entry["drift_factor"] > 0 for entry in table.entries.values())
    before = out.read_text()
    with pytest.raises(script.FaceNASError, match="runtime='onnxruntime' but this run has runtime='torch'"):
        script.main(args)  # an eager run may not add entries to an ONNX Runtime table
    with pytest.raises(script.FaceNASError, match="graph_optimization"):
        script.main([*args, "--runtime", "onnxruntime", "--graph-optimization", "basic"])
    with pytest.raises(script.FaceNASError, match="drift anchor; drop --anchor off"):
        script.main([*args, "--runtime", "onnxruntime", "--anchor", "off"])  # no raw entries among anchored ones
    assert out.read_text() == before


def test_an_int8_table_records_its_quantization_and_refuses_to_mix_precisions(device_dir, script):
    """--precision int8: every block and calibration network quantized (QDQ) before ONNX Runtime times it; the table
    says so, and neither a float32 run nor an eager run may add to it (nor int8 to a float table)."""
    pytest.importorskip("onnxruntime")
    out = device_dir / "ort_int8.json"
    args = ["--space", "R12", "--resolution", "32", "--threads", "1", "--warmup", "1", "--samples", "3", "--quiet",
            "--fit-archs", "4", "--random-archs", "2", "--repeats", "1", "--runtime", "onnxruntime", "--out", str(out)]
    script.main([*args, "--precision", "int8"])
    table = TableFile.load(out)
    assert table.runtime == "onnxruntime" and table.meta["precision"] == "int8"
    quant = table.meta["quantization"]
    assert quant["format"] == "QDQ" and quant["calibration"] == "random normal inputs"
    assert table.meta["calibration"]["n_fit"] == 4 and len(table.networks) == 6 and len(table.entries) > 10
    before = out.read_text()
    with pytest.raises(script.FaceNASError, match="precision='int8' but this run has precision='float32'"):
        script.main(args)
    with pytest.raises(script.FaceNASError, match="precision int8 is not measured in runtime torch"):
        script.main([*args[:-4], "--out", str(out), "--precision", "int8"])
    assert out.read_text() == before
    with pytest.raises(script.FaceNASError, match="precision int8 is not measured in runtime openvino"):
        script.main([*args[:-4], "--runtime", "openvino", "--out", str(device_dir / "ov.json"), "--precision", "int8"])


def test_an_ncnn_table_is_measured_in_ncnn_and_calibrated(device_dir, script):
    """--runtime ncnn: every block and calibration network converted by pnnx and timed in ncnn, recorded in meta."""
    pytest.importorskip("ncnn", reason="optional runtime: pip install -r requirements-deploy.txt")
    pytest.importorskip("pnnx", reason="optional converter: pip install -r requirements-deploy.txt")
    out = device_dir / "ncnn.json"
    script.main(["--space", "R12", "--resolution", "32", "--threads", "1", "--warmup", "1", "--samples", "3",
                 "--quiet", "--fit-archs", "4", "--random-archs", "2", "--repeats", "1", "--runtime", "ncnn",
                 "--out", str(out)])
    table = TableFile.load(out)
    assert table.runtime == "ncnn" and table.meta["precision"] == "float32"
    assert table.meta["ncnn_options"]["use_fp16_storage"] is False and table.meta["converter"].startswith("pnnx")
    assert table.meta["calibration"]["n_fit"] == 4 and len(table.networks) == 6 and len(table.entries) > 10


def test_check_tells_a_stale_table_from_a_valid_one_and_writes_nothing(device_dir):
    """--check re-measures the table's stored networks on the device (alone, like the profiler) and exits 1 only when
    the device has drifted beyond the tolerance."""
    run_script(device_dir, "--space", "R12", "--resolution", "32", "--threads", "1", "--warmup", "1", "--samples", "3",
               "--fit-archs", "4", "--random-archs", "0", "--repeats", "1", "--out", "c.json")
    path = device_dir / "c.json"
    before = path.read_bytes()
    same = run_script(device_dir, "--check", "c.json", "--check-tolerance", "400", "--repeats", "1", "--quiet")
    assert "within 400%" in same.stderr and same.stdout.count("stored") == 4
    assert path.read_bytes() == before
    # the same networks stored as if the device had once been three times slower: now they run ~67% faster
    data = json.loads(before)
    for record in data["networks"].values():
        record["measured_ms"] *= 3
    (device_dir / "slow.json").write_text(json.dumps(data))
    stale = run_script(device_dir, "--check", "slow.json", "--check-networks", "2", "--repeats", "1", "--quiet",
                       check=False)
    assert stale.returncode == 1 and "STALE" in stale.stderr and stale.stdout.count("stored") == 2
    run_script(device_dir, "--space", "R12", "--resolution", "32", "--threads", "1", "--warmup", "1", "--samples", "3",
               "--no-calibration", "--out", "plain.json")
    nothing = run_script(device_dir, "--check", "plain.json", check=False)
    assert nothing.returncode == 2 and "plain.json" in nothing.stderr and "no whole networks" in nothing.stderr
    missing = run_script(device_dir, "--check", "absent.json", check=False)
    assert missing.returncode == 2 and "absent.json: no such table" in missing.stderr
