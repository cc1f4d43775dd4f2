"""OpenVINO as a deploy target: ONNX graphs compiled for a device, and what a table records.

Settings: device ``CPU`` unless another is named, ``INFERENCE_NUM_THREADS`` = the threads asked for,
``PERFORMANCE_HINT`` ``LATENCY`` (one stream), ``INFERENCE_PRECISION_HINT`` ``f32`` (OpenVINO would otherwise pick
bf16 on CPUs that have it), denormals flushed. OpenVINO has no graph-optimisation levels.

Python 3.8 syntax, torch and the standard library only at import time: ``profile_latency.py`` embeds this file.
"""
from __future__ import annotations

import importlib
import inspect
import io
from typing import Any

import torch

from deploy.onnx_graph import DEFAULT_OPSET, require_packages
from utils.errors import FaceNASError

#: Python packages the runtime needs (the exporter needs ``onnx``), as pip names them.
OV_PACKAGES = ("onnx", "openvino")


def _ov_core(ov: Any) -> Any:
    core_class = getattr(ov, "Core", None)
    if core_class is None:  # OpenVINO before 2023.1 keeps it in openvino.runtime
        core_class = importlib.import_module("openvino.runtime").Core
    return core_class()


def ov_version(ov: Any) -> str:
    """The installed OpenVINO's version string."""
    getter = getattr(ov, "get_version", None) or importlib.import_module("openvino.runtime").get_version
    return str(getter())


def ov_device(ov: Any, provider: str | None) -> str:
    """An OpenVINO device name (default ``CPU``) that this installation has."""
    device = (provider or "CPU").upper()
    available = _ov_core(ov).available_devices
    if device not in available:
        raise FaceNASError(f"OpenVINO here has no device {device}; available: {', '.join(available)}")
    return device


def ov_check_level(graph_optimization: str | None) -> None:
    """OpenVINO has no optimisation levels: anything but unset / ``default`` is refused."""
    if graph_optimization not in (None, "default"):
        raise FaceNASError(f"OpenVINO has no graph-optimisation levels (got {graph_optimization!r}); leave it unset")


def _ov_read_onnx(ov: Any, core: Any, onnx_bytes: bytes) -> Any:
    try:
        return core.read_model(onnx_bytes)  # ONNX from memory (OpenVINO 2023.1 and later)
    except Exception:  # noqa: BLE001 - older releases read ONNX from memory only through convert_model
        convert = getattr(ov, "convert_model", None)
        if convert is None:
            raise FaceNASError(f"OpenVINO {ov_version(ov)} cannot read an ONNX graph from memory; pip install -U "
                               "openvino (2023.1 or later)") from None
        return convert(io.BytesIO(onnx_bytes))


class OpenVinoSession:
    """An ONNX graph compiled by OpenVINO with the settings of this module's docstring (same interface as
    :class:`deploy.onnx_runtime.OrtSession`).

    Args:
        source: the graph as bytes.
        threads: inference threads (default: PyTorch's current setting).
        provider: OpenVINO device (default ``CPU``).
        graph_optimization: must stay unset.
    """

    runtime = "openvino"

    def __init__(self, source: bytes, threads: int | None = None, provider: str | None = None,
                 graph_optimization: str | None = None, device_id: int = 0, label: str = ""):
        ov = require_packages(["openvino"], "runtime openvino")["openvino"]
        ov_check_level(graph_optimization)
        self.threads = int(threads or torch.get_num_threads())
        if self.threads < 1:
            raise FaceNASError(f"threads must be >= 1, not {threads}")
        self.provider = ov_device(ov, provider)
        self.graph_optimization = "default"
        self.version = ov_version(ov)
        core = _ov_core(ov)
        model = _ov_read_onnx(ov, core, source)
        config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32", "CPU_DENORMALS_OPTIMIZATION": True} \
            if self.provider == "CPU" else {"PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(model, self.provider, config)
        self.request = self.compiled.create_infer_request()
        parameters = inspect.signature(self.request.infer).parameters
        self.share = {"share_inputs": True, "share_outputs": True} if "share_outputs" in parameters else {}
        self.output_names = [output.get_any_name() for output in self.compiled.outputs]

    def run(self, array: Any) -> Any:
        """Run the graph on one input (a float32 numpy array); the runtime's raw result, not copied."""
        return self.request.infer({0: array}, **self.share)

    def outputs(self, raw: Any) -> list[Any]:
        """The outputs of :meth:`run` as a list of numpy arrays, in graph order."""
        return [raw[output] for output in self.compiled.outputs]

    def describe(self) -> str:
        return f"openvino {self.version}, {self.provider}, {self.threads} threads"


def ov_runtime_info(provider: str | None = None, graph_optimization: str | None = None, threads: int | None = None,
                    opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """What a table measured in OpenVINO records about it (and compares before it is reused)."""
    modules = require_packages(OV_PACKAGES, "runtime openvino")
    ov = modules["openvino"]
    ov_check_level(graph_optimization)
    return {"runtime": "openvino", "runtime_version": ov_version(ov), "execution_provider": ov_device(ov, provider),
            "graph_optimization": "default", "threads": int(threads or torch.get_num_threads()),
            "performance_hint": "LATENCY", "precision": "float32", "onnx_opset": int(opset),
            "onnx_version": str(modules["onnx"].__version__),
            "onnx_exporter": f"torch.onnx TorchScript exporter, torch {torch.__version__}"}
