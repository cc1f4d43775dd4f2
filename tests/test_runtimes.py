"""latency.runtimes: blocks and networks measured in ONNX Runtime / OpenVINO with the table protocol, their graphs
computing what torch computes, runtime metadata, one-line errors, and that the file can be embedded in the profiler."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import torch

from latency.measure import deploy_backbone, deploy_block, machine_meta
from latency.runtimes import (
    RuntimeModule,
    export_module_onnx,
    measure_block_in_runtime,
    measure_in_runtime,
    measure_networks_in_runtime,
    require_runtime,
    runtime_info,
    to_runtime,
)
from models.arch import Arch
from models.facenas_zoo import published_arch
from utils.errors import FaceNASError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")

# SE + HardSwish + a ResNet-D (avg-pool, ceil mode) shortcut: the ops most likely to be exported or fused differently
KEY = "S_SE_3x3_BottleNeckConv4_64_32x16x16_HS_1x1ConvPool"
STATS = {"mean_ms", "median_ms", "p10_ms", "p90_ms", "min_ms", "n", "first5_ms", "threads", "aborted", "load"}


def _runtimes() -> list[str]:
    """onnxruntime always (a test dependency); openvino where it is installed."""
    found = ["onnxruntime"]
    try:
        import openvino  # noqa: F401

        found.append("openvino")
    except ImportError:
        pass
    return found


def _tiny_arch() -> Arch:
    """mobile0.25 under a name of its own (the tests run it at 64 x 64)."""
    arch = published_arch("mobilenetv1_0.25")
    arch.name = "tiny_mobile"
    return arch


@pytest.mark.parametrize("runtime", ["torch", *_runtimes()])
def test_a_block_measured_in_each_runtime_gives_the_protocol_stats(runtime):
    stats = measure_block_in_runtime(KEY, 1, runtime, warmup=2, samples=6, threads=1)
    assert set(stats) == STATS
    assert stats["n"] == 6 and stats["threads"] == 1 and stats["aborted"] is False
    assert 0 < stats["min_ms"] <= stats["p10_ms"] <= stats["median_ms"] <= stats["p90_ms"] < 1000
    assert stats["p10_ms"] <= stats["mean_ms"] <= stats["p90_ms"]


@pytest.mark.parametrize("runtime", _runtimes())
def test_the_first_five_threshold_aborts_in_a_runtime_as_in_torch(runtime):
    stats = measure_in_runtime(deploy_block(KEY), (1, 32, 16, 16), runtime, warmup=0, samples=20, threads=1,
                               max_first5_ms=0.0)
    assert stats["aborted"] is True and stats["n"] == 5


@pytest.mark.parametrize("runtime", _runtimes())
def test_runtime_graphs_compute_what_torch_computes(runtime):
    block = deploy_block(KEY)
    x = torch.randn(2, 32, 16, 16)
    runner = to_runtime(block, (2, 32, 16, 16), runtime, threads=1)
    assert isinstance(runner, RuntimeModule)
    (out,) = runner.outputs(x)
    with torch.no_grad():
        expected = block(x)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    # a whole backbone's feature path (first conv .. last conv), the unit of the calibration networks
    net = deploy_backbone(_tiny_arch())
    x = torch.randn(1, 3, 64, 64)
    (out,) = to_runtime(net, (1, 3, 64, 64), runtime, threads=1).outputs(x)
    with torch.no_grad():
        torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-5)


def test_a_wrong_graph_is_told_apart():
    """The comparison above can fail: another block's graph does not match."""
    block = deploy_block(KEY)
    other = deploy_block(KEY)  # same structure, other random weights
    x = torch.randn(1, 32, 16, 16)
    (out,) = to_runtime(other, (1, 32, 16, 16), "onnxruntime", threads=1).outputs(x)
    with torch.no_grad():
        assert (out - block(x)).abs().max() > 1e-3


def test_torch_runtime_is_measure_module_and_refuses_runtime_options():
    block = deploy_block(KEY)
    assert to_runtime(block, (1, 32, 16, 16), "torch") is block
    with pytest.raises(FaceNASError, match="belong to onnxruntime"):
        measure_in_runtime(block, (1, 32, 16, 16), "torch", provider="cuda", samples=1)


def test_networks_in_a_runtime_are_measured_in_interleaved_rounds():
    meta = machine_meta("cpu", batch=1, resolution=64, threads=1, warmup=1, samples=3)
    archs = [_tiny_arch(), published_arch("R12_V3_HS")]
    result = measure_networks_in_runtime(archs, meta, "onnxruntime", repeats=2)
    assert set(result) == {"tiny_mobile", "R12_V3_HS"}
    for stats in result.values():
        assert len(stats["rounds_ms"]) == 2 and stats["measured_ms"] > 0


def test_runtime_info_records_what_a_table_must_match():
    info = runtime_info("onnxruntime", threads=3)
    import onnxruntime

    assert info["runtime"] == "onnxruntime" and info["runtime_version"] == onnxruntime.__version__
    assert info["execution_provider"] == "CPUExecutionProvider" and info["graph_optimization"] == "all"
    assert info["threads"] == 3 and info["inter_op_threads"] == 1 and info["onnx_opset"] == 17
    assert runtime_info("onnxruntime", graph_optimization="basic")["graph_optimization"] == "basic"
    torch_info = runtime_info("torch", threads=2)
    assert torch_info == {"runtime": "torch", "runtime_version": torch.__version__, "execution_provider": "eager",
                          "graph_optimization": None, "threads": 2}


def test_openvino_info_and_settings():
    pytest.importorskip("openvino")
    info = runtime_info("openvino", threads=1)
    assert info["execution_provider"] == "CPU" and info["graph_optimization"] == "default"
    assert info["performance_hint"] == "LATENCY" and info["precision"] == "float32"
    runner = to_runtime(deploy_block(KEY), (1, 32, 16, 16), "openvino", threads=1)
    assert int(runner.session.compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    assert str(runner.session.compiled.get_property("PERFORMANCE_HINT")).upper().endswith("LATENCY")
    with pytest.raises(FaceNASError, match="no graph-optimisation levels"):
        runtime_info("openvino", graph_optimization="all")


@pytest.mark.parametrize("runtime, missing, command", [
    ("onnxruntime", ["onnxruntime"], "pip install onnxruntime"),
    ("openvino", ["openvino"], "pip install openvino"),
    ("onnxruntime", ["onnx", "onnxruntime"], "pip install onnx onnxruntime"),
])
def test_a_missing_package_is_a_one_line_error_naming_the_pip_install(monkeypatch, runtime, missing, command):
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` fail as if it were not installed
    for call in (lambda: require_runtime(runtime), lambda: runtime_info(runtime),
                 lambda: measure_block_in_runtime(KEY, 1, runtime, warmup=0, samples=1)):
        with pytest.raises(FaceNASError) as caught:
            call()
        message = str(caught.value)
        assert "\n" not in message and message.endswith(command), message


def test_the_exporter_without_onnx_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(FaceNASError, match="pip install onnx$"):
        export_module_onnx(deploy_block(KEY), (1, 32, 16, 16))


def test_bad_runtime_settings_are_one_line_errors():
    block = deploy_block(KEY)
    with pytest.raises(FaceNASError, match="unknown runtime 'tflite'"):
        runtime_info("tflite")
    with pytest.raises(FaceNASError, match="has no TensorrtExecutionProvider.*available: .*CPUExecutionProvider"):
        runtime_info("onnxruntime", provider="tensorrt")
    with pytest.raises(FaceNASError, match="graph optimisation 'max'"):
        runtime_info("onnxruntime", graph_optimization="max")
    with pytest.raises(FaceNASError, match="float32"):
        measure_in_runtime(block, (1, 32, 16, 16), "onnxruntime", dtype="float16", samples=1)
    with pytest.raises(FaceNASError, match="channels_last"):
        measure_in_runtime(block, (1, 32, 16, 16), "onnxruntime", channels_last=True, samples=1)
    with pytest.raises(FaceNASError, match="execution provider"):
        measure_in_runtime(block, (1, 32, 16, 16), "onnxruntime", device="cuda", samples=1)


EMBEDDED_RUNTIME_FILES = ("deploy/onnx_graph.py", "deploy/onnx_runtime.py", "deploy/openvino_runtime.py",
                          "deploy/ncnn_runtime.py", "deploy/registry.py", "deploy/quantize.py", "latency/runtimes.py")


@pytest.mark.parametrize("source", EMBEDDED_RUNTIME_FILES)
def test_the_runtime_files_can_be_embedded_in_the_device_profiler(source):
    """profile_latency.py embeds the runtime files: Python 3.8 syntax, nothing beyond torch and the standard library
    at import time (project imports are stripped by the build), and the build really lists them."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import build_profiler
    finally:
        sys.path.remove(str(ROOT / "tools"))
    text = (ROOT / source).read_text(encoding="utf-8")
    ast.parse(text, feature_version=(3, 8))
    assert source in build_profiler.SOURCES
    imported = {alias.name.split(".")[0] for node in ast.parse(text).body if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.parse(text).body
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "collections", "contextlib", "importlib", "inspect", "io", "logging", "os",
                        "pathlib", "re",
                        "tempfile", "warnings", "typing",
                        "torch", "deploy", "latency", "models", "utils"}, imported
    built = build_profiler.build()
    assert "def measure_in_runtime(" in built and "class OrtSession" in built
    assert "from latency.measure import" not in built and "from deploy." not in built
