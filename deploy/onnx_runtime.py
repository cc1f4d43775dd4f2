"""ONNX Runtime as a deploy target: sessions for timing, running and checking ONNX graphs, and what a table records.

Settings (one place for the profiler, the parity check and the detector that evaluates an export): execution
provider ``CPUExecutionProvider`` unless another is named (short names: ``cpu``, ``cuda``, ``tensorrt``, ...; a GPU
provider falls back to the CPU for operators it lacks), graph-optimisation level ``all`` unless ``disable`` /
``basic`` / ``extended`` is named, intra-op threads as asked (default: PyTorch's setting), inter-op threads 1,
sequential execution, denormals flushed to zero (as the PyTorch timing protocol does), errors-only logging.

Python 3.8 syntax, torch and the standard library only at import time: ``profile_latency.py`` embeds this file.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from deploy.onnx_graph import DEFAULT_OPSET, require_packages
from utils.errors import FaceNASError

#: Python packages the runtime needs (the exporter needs ``onnx``), as pip names them.
ORT_PACKAGES = ("onnx", "onnxruntime")
#: Short names of ONNX Runtime execution providers.
ORT_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider", "xnnpack": "XnnpackExecutionProvider", "acl": "ACLExecutionProvider",
    "armnn": "ArmNNExecutionProvider", "coreml": "CoreMLExecutionProvider",
}
#: ONNX Runtime graph-optimisation levels by their short names.
ORT_OPTIMIZATION_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                           "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
_PROVIDER_HINTS = {"CUDAExecutionProvider": " (pip install onnxruntime-gpu; on a Jetson the Jetson Zoo wheel)",
                   "TensorrtExecutionProvider": " (an onnxruntime-gpu build with TensorRT, e.g. the Jetson Zoo wheel)",
                   "OpenVINOExecutionProvider": " (pip install onnxruntime-openvino)"}


def import_onnxruntime(what: str = "runtime onnxruntime") -> Any:
    """The ``onnxruntime`` module (a one-line error saying what to pip install when it is missing)."""
    return require_packages(["onnxruntime"], what)["onnxruntime"]


def ort_provider(ort: Any, provider: str | None) -> str:
    """Full name of an execution provider (short or full name; default the CPU) that this ONNX Runtime has."""
    name = ORT_PROVIDER_ALIASES.get((provider or "cpu").lower(), provider or "CPUExecutionProvider")
    available = ort.get_available_providers()
    if name not in available:
        raise FaceNASError(f"ONNX Runtime {ort.__version__} here has no {name}{_PROVIDER_HINTS.get(name, '')}; "
                           f"available: {', '.join(available)}")
    return name


def ort_level(graph_optimization: str | None) -> str:
    """A graph-optimisation level's short name (default ``all``), checked."""
    level = (graph_optimization or "all").lower()
    if level not in ORT_OPTIMIZATION_LEVELS:
        raise FaceNASError(f"ONNX Runtime graph optimisation {graph_optimization!r} is not one of "
                           f"{', '.join(ORT_OPTIMIZATION_LEVELS)}")
    return level


class OrtSession:
    """An ONNX graph in an ONNX Runtime session with the settings of this module's docstring.

    Args:
        source: the graph as bytes, or the path of an ``.onnx`` file.
        threads: intra-op threads (default: PyTorch's current setting).
        provider: execution provider, short or full name (default: the CPU).
        graph_optimization: level (default ``all``).
        device_id: GPU index for the CUDA and TensorRT providers.
        label: names the graph in errors (default: the path, or "the graph").

    Raises:
        FaceNASError: onnxruntime missing, a provider or level it lacks, or a graph it cannot load.
    """

    runtime = "onnxruntime"

    def __init__(self, source: bytes | str | os.PathLike, threads: int | None = None, provider: str | None = None,
                 graph_optimization: str | None = None, device_id: int = 0, label: str = ""):
        ort = import_onnxruntime()
        self.threads = int(threads or torch.get_num_threads())
        if self.threads < 1:
            raise FaceNASError(f"threads must be >= 1, not {threads}")
        self.provider = ort_provider(ort, provider)
        self.graph_optimization = ort_level(graph_optimization)
        self.version = str(ort.__version__)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                   ORT_OPTIMIZATION_LEVELS[self.graph_optimization])
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        options.log_severity_level = 3  # errors only: no notes about unused initialisers
        providers = [self.provider] if self.provider == "CPUExecutionProvider" else \
            [self.provider, "CPUExecutionProvider"]  # operators a GPU provider lacks fall back to the CPU
        provider_options = [{"device_id": int(device_id)} if name in ("CUDAExecutionProvider",
                                                                      "TensorrtExecutionProvider") else {}
                            for name in providers]
        where = label or (str(source) if not isinstance(source, bytes) else "the graph")
        try:
            self.session = ort.InferenceSession(source if isinstance(source, bytes) else str(source),
                                                sess_options=options, providers=providers,
                                                provider_options=provider_options)
        except Exception as exc:  # noqa: BLE001 - protobuf / graph / operator errors: one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise FaceNASError(f"{where}: ONNX Runtime cannot load it ({first[:300]}; onnxruntime {self.version})") \
                from None
        self.input_names = [item.name for item in self.session.get_inputs()]
        self.output_names = [item.name for item in self.session.get_outputs()]
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, array: Any) -> Any:
        """Run the graph on one input (a float32 numpy array); the runtime's raw outputs, not copied."""
        return self.session.run(self.output_names, {self.input_names[0]: array})

    def outputs(self, raw: Any) -> list[Any]:
        """The outputs of :meth:`run` as a list of numpy arrays, in graph order."""
        return list(raw)

    def describe(self) -> str:
        return f"onnxruntime {self.version}, {self.provider}, optimisation {self.graph_optimization}, " \
               f"{self.threads} threads"


def ort_runtime_info(provider: str | None = None, graph_optimization: str | None = None, threads: int | None = None,
                     opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """What a table measured in ONNX Runtime records about it (and compares before it is reused)."""
    modules = require_packages(ORT_PACKAGES, "runtime onnxruntime")
    ort = modules["onnxruntime"]
    return {"runtime": "onnxruntime", "runtime_version": str(ort.__version__),
            "execution_provider": ort_provider(ort, provider), "graph_optimization": ort_level(graph_optimization),
            "threads": int(threads or torch.get_num_threads()), "inter_op_threads": 1, "precision": "float32",
            "onnx_opset": int(opset), "onnx_version": str(modules["onnx"].__version__),
            "onnx_exporter": f"torch.onnx TorchScript exporter, torch {torch.__version__}"}

