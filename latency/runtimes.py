"""Latency in the runtime a network is deployed with: eager PyTorch, ONNX Runtime or OpenVINO, one protocol.

A module (a block in deploy form, or a whole backbone's feature path) is exported to an ONNX graph in memory with
static shapes (:func:`export_module_onnx`, the TorchScript-based exporter), loaded into the runtime
(:func:`build_runtime_module`) and timed by :func:`latency.measure.measure_module` itself, through
:class:`RuntimeModule`, an ``nn.Module`` whose call runs the runtime: the same warm-up, samples, trimmed mean,
median / p10 / p90, ``first5_ms`` and ``max_first5_ms`` abort, garbage collector off, and the same result dict.

Runtime settings:

* ``onnxruntime``: execution provider ``CPUExecutionProvider`` unless another is named (``cuda``, ``tensorrt``, any
  provider name; CUDA and TensorRT times include the copies of input and outputs between host and device, as a
  deployed ``session.run`` pays them), graph-optimisation level ``all`` unless ``disable`` / ``basic`` /
  ``extended`` is named, intra-op threads = the table's threads, inter-op threads 1, sequential execution,
  denormals flushed to zero (as the PyTorch protocol does);
* ``openvino``: device ``CPU`` unless another is named, ``INFERENCE_NUM_THREADS`` = the table's threads,
  ``PERFORMANCE_HINT`` ``LATENCY`` (one stream), ``INFERENCE_PRECISION_HINT`` ``f32`` (OpenVINO would otherwise
  pick bf16 on CPUs that have it), denormals flushed; OpenVINO has no optimisation levels;
* ``torch``: the module itself, eager, as :func:`latency.measure.measure_module` always measured it.

:func:`runtime_info` gives the runtime's name, version, provider, optimisation level and threads for a table's
metadata. The runtimes are imported when first needed: a missing one is a one-line :class:`FaceNASError` saying what
to ``pip install`` (torch's ONNX exporter needs the ``onnx`` package as well).

Python 3.8 syntax, torch and the standard library only at import time: ``profile_latency.py`` embeds this file.
"""
from __future__ import annotations

import importlib
import inspect
import io
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from latency.measure import (
    TRIM,
    block_input_shape,
    deploy_backbone,
    deploy_block,
    measure_interleaved,
    measure_module,
    measure_networks,
)
from latency.table_format import ESTIMATORS
from models.arch import Arch
from models.naming import BlockSpec
from utils.errors import FaceNASError

#: The runtimes a table can be measured in.
RUNTIME_CHOICES = ("torch", "onnxruntime", "openvino")
#: Python packages each runtime needs besides torch (the exporter needs ``onnx``), as pip names them.
RUNTIME_PACKAGES = {"torch": (), "onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}
#: Short names of ONNX Runtime execution providers.
ORT_PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider", "xnnpack": "XnnpackExecutionProvider", "acl": "ACLExecutionProvider",
    "armnn": "ArmNNExecutionProvider", "coreml": "CoreMLExecutionProvider",
}
#: ONNX Runtime graph-optimisation levels by their short names.
ORT_OPTIMIZATION_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                           "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
#: ONNX opset of the measured graphs (17: ONNX 1.12, 2022).
RUNTIME_OPSET = 17


def require_runtime(runtime: str) -> Any:
    """Import a runtime's Python package (``None`` for torch); a one-line error names what to pip install.

    Raises:
        FaceNASError: unknown runtime, or one of its packages is missing.
    """
    if runtime not in RUNTIME_PACKAGES:
        raise FaceNASError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIME_CHOICES)}")
    missing = []
    modules = {}
    for package in RUNTIME_PACKAGES[runtime]:
        try:
            modules[package] = importlib.import_module(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise FaceNASError(f"runtime {runtime} needs the Python package{'s' if len(missing) > 1 else ''} "
                           f"{', '.join(missing)}, not installed here: pip install {' '.join(missing)}")
    return modules.get(runtime)


def export_module_onnx(module: nn.Module, input_shape: tuple[int, ...], opset: int = RUNTIME_OPSET) -> bytes:
    """The module as ONNX bytes with static shapes (traced on ``torch.randn(input_shape)``, eval mode).

    Uses the TorchScript-based exporter (``dynamo=False`` where the keyword exists), which needs the ``onnx`` package.
    """
    try:
        importlib.import_module("onnx")
    except ImportError:
        raise FaceNASError("exporting to ONNX needs the Python package onnx, not installed here: pip install onnx") \
            from None
    module = module.eval()
    buffer = io.BytesIO()
    options = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        options["dynamo"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notice and tracer notes
        try:
            with torch.no_grad():
                torch.onnx.export(module, (torch.randn(tuple(input_shape)),), buffer, input_names=["input"],
                                  opset_version=int(opset), do_constant_folding=True, **options)
        except Exception as exc:  # noqa: BLE001 - an operator or opset this torch cannot export: one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise FaceNASError(f"ONNX export of {type(module).__name__} {list(input_shape)} at opset {opset} "
                               f"failed: {first[:300]}") from None
    return buffer.getvalue()


def _ort_provider(ort: Any, provider: str | None) -> str:
    name = ORT_PROVIDER_ALIASES.get((provider or "cpu").lower(), provider or "CPUExecutionProvider")
    available = ort.get_available_providers()
    if name not in available:
        hint = {"CUDAExecutionProvider": " (pip install onnxruntime-gpu; on a Jetson the Jetson Zoo wheel)",
                "TensorrtExecutionProvider": " (an onnxruntime-gpu build with TensorRT, e.g. the Jetson Zoo wheel)",
                "OpenVINOExecutionProvider": " (pip install onnxruntime-openvino)"}.get(name, "")
        raise FaceNASError(f"ONNX Runtime {ort.__version__} here has no {name}{hint}; available: "
                           f"{', '.join(available)}")
    return name


def _ort_level(graph_optimization: str | None) -> str:
    level = (graph_optimization or "all").lower()
    if level not in ORT_OPTIMIZATION_LEVELS:
        raise FaceNASError(f"ONNX Runtime graph optimisation {graph_optimization!r} is not one of "
                           f"{', '.join(ORT_OPTIMIZATION_LEVELS)}")
    return level


def _ov_core(ov: Any) -> Any:
    core_class = getattr(ov, "Core", None)
    if core_class is None:  # OpenVINO before 2023.1 keeps it in openvino.runtime
        core_class = importlib.import_module("openvino.runtime").Core
    return core_class()


def _ov_device(ov: Any, provider: str | None) -> str:
    device = (provider or "CPU").upper()
    available = _ov_core(ov).available_devices
    if device not in available:
        raise FaceNASError(f"OpenVINO here has no device {device}; available: {', '.join(available)}")
    return device


def _ov_check_level(graph_optimization: str | None) -> None:
    if graph_optimization not in (None, "default"):
        raise FaceNASError(f"OpenVINO has no graph-optimisation levels (got {graph_optimization!r}); leave it unset")


def _ov_read_onnx(ov: Any, core: Any, onnx_bytes: bytes) -> Any:
    try:
        return core.read_model(onnx_bytes)  # ONNX from memory (OpenVINO 2023.1 and later)
    except Exception:  # noqa: BLE001 - older releases read ONNX from memory only through convert_model
        convert = getattr(ov, "convert_model", None)
        if convert is None:
            raise FaceNASError(f"OpenVINO {_ov_version(ov)} cannot read an ONNX graph from memory; pip install -U "
                               "openvino (2023.1 or later)") from None
        return convert(io.BytesIO(onnx_bytes))


def _ov_version(ov: Any) -> str:
    getter = getattr(ov, "get_version", None) or importlib.import_module("openvino.runtime").get_version
    return str(getter())


class RuntimeModule(nn.Module):
    """An ONNX graph loaded into ONNX Runtime or OpenVINO, called like a module.

    ``module(x)`` runs the graph once on ``x`` (CPU float32) and returns the runtime's raw outputs without copying
    them (what :func:`latency.measure.measure_module` times); :meth:`outputs` returns copies as tensors.

    Args:
        onnx_bytes: the graph (one input).
        runtime: ``onnxruntime`` or ``openvino``.
        threads: intra-op threads (default: PyTorch's current setting).
        provider: ONNX Runtime execution provider (short or full name) or OpenVINO device (default: the CPU).
        graph_optimization: ONNX Runtime level (default ``all``); must stay unset for OpenVINO.
    """

    def __init__(self, onnx_bytes: bytes, runtime: str, threads: int | None = None, provider: str | None = None,
                 graph_optimization: str | None = None):
        super().__init__()
        backend = require_runtime(runtime)
        if runtime not in ("onnxruntime", "openvino"):
            raise FaceNASError(f"RuntimeModule runs onnxruntime or openvino graphs, not {runtime!r}")
        self.runtime = runtime
        self.threads = int(threads or torch.get_num_threads())
        if self.threads < 1:
            raise FaceNASError(f"threads must be >= 1, not {threads}")
        if runtime == "onnxruntime":
            self.provider = _ort_provider(backend, provider)
            self.graph_optimization = _ort_level(graph_optimization)
            options = backend.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.execution_mode = backend.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = getattr(backend.GraphOptimizationLevel,
                                                       ORT_OPTIMIZATION_LEVELS[self.graph_optimization])
            options.add_session_config_entry("session.set_denormal_as_zero", "1")
            options.log_severity_level = 3
            providers = [self.provider] if self.provider == "CPUExecutionProvider" else \
                [self.provider, "CPUExecutionProvider"]  # ops a GPU provider lacks fall back to the CPU
            self.session = backend.InferenceSession(onnx_bytes, sess_options=options, providers=providers)
            self.input_name = self.session.get_inputs()[0].name
            self.output_names = [output.name for output in self.session.get_outputs()]
        else:
            _ov_check_level(graph_optimization)
            self.provider = _ov_device(backend, provider)
            self.graph_optimization = "default"
            core = _ov_core(backend)
            model = _ov_read_onnx(backend, core, onnx_bytes)
            config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY",
                      "INFERENCE_PRECISION_HINT": "f32", "CPU_DENORMALS_OPTIMIZATION": True} \
                if self.provider == "CPU" else {"PERFORMANCE_HINT": "LATENCY"}
            self.compiled = core.compile_model(model, self.provider, config)
            self.request = self.compiled.create_infer_request()
            parameters = inspect.signature(self.request.infer).parameters
            self.share = {"share_inputs": True, "share_outputs": True} if "share_outputs" in parameters else {}

    def forward(self, x: torch.Tensor) -> Any:
        array = x.detach().cpu().numpy()
        if self.runtime == "onnxruntime":
            return self.session.run(self.output_names, {self.input_name: array})
        return self.request.infer({0: array}, **self.share)

    def outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The graph's outputs for ``x`` as tensors (copies, safe to keep)."""
        result = self(x)
        values = result if self.runtime == "onnxruntime" else [result[out] for out in self.compiled.outputs]
        return [torch.tensor(value) for value in values]

    def extra_repr(self) -> str:
        return f"{self.runtime}, {self.provider}, optimisation {self.graph_optimization}, {self.threads} threads"


def build_runtime_module(onnx_bytes: bytes, runtime: str, threads: int | None = None, provider: str | None = None,
                         graph_optimization: str | None = None) -> RuntimeModule:
    """Load an ONNX graph into a runtime (see :class:`RuntimeModule`)."""
    return RuntimeModule(onnx_bytes, runtime, threads, provider, graph_optimization)


def to_runtime(module: nn.Module, input_shape: tuple[int, ...], runtime: str = "torch", threads: int | None = None,
               provider: str | None = None, graph_optimization: str | None = None,
               opset: int = RUNTIME_OPSET) -> nn.Module:
    """The module as the runtime runs it: itself for ``torch``, else its ONNX graph in a :class:`RuntimeModule`."""
    if runtime == "torch":
        if provider is not None or graph_optimization is not None:
            raise FaceNASError("execution providers and graph-optimisation levels belong to onnxruntime / openvino, "
                               "not to the torch runtime")
        return module
    require_runtime(runtime)
    return build_runtime_module(export_module_onnx(module, input_shape, opset), runtime, threads, provider,
                                graph_optimization)


def _check_protocol(runtime: str, device: str, dtype: str, channels_last: bool) -> None:
    if runtime == "torch":
        return
    if torch.device(device).type != "cpu":
        raise FaceNASError(f"device {device!r} is for the torch runtime; {runtime} picks its device by its execution "
                           "provider (e.g. --provider cuda)")
    if dtype != "float32":
        raise FaceNASError(f"{runtime} graphs are measured in float32, not {dtype}")
    if channels_last:
        raise FaceNASError(f"channels_last is an eager PyTorch memory format; {runtime} chooses its own layouts")


def measure_in_runtime(module: nn.Module, input_shape: tuple[int, ...], runtime: str = "torch", device: str = "cpu",
                       warmup: int | None = None, samples: int | None = None, threads: int | None = None, *,
                       provider: str | None = None, graph_optimization: str | None = None, dtype: str = "float32",
                       channels_last: bool = False, max_first5_ms: float | None = None, trim: float = TRIM,
                       opset: int = RUNTIME_OPSET) -> dict[str, Any]:
    """Time a module (deploy form) in a runtime with the protocol of :func:`latency.measure.measure_module`.

    Args:
        module: block or network, BatchNorm already folded.
        input_shape: input with batch, e.g. ``(1, 3, 320, 320)``.
        runtime: ``torch``, ``onnxruntime`` or ``openvino``.
        device: for ``torch`` only (``cpu`` / ``cuda``); the other runtimes take ``provider``.
        warmup, samples, threads, dtype, channels_last, max_first5_ms, trim: as ``measure_module``; ``threads`` is
            also the runtime's intra-op thread count.
        provider, graph_optimization, opset: see :class:`RuntimeModule` and :func:`export_module_onnx`.

    Returns:
        ``measure_module``'s dict: ``mean_ms``, ``median_ms``, ``p10_ms``, ``p90_ms``, ``n``, ``first5_ms``,
        ``threads``, ``aborted``.
    """
    _check_protocol(runtime, device, dtype, channels_last)
    if runtime == "torch":
        if provider is not None or graph_optimization is not None:
            raise FaceNASError("execution providers and graph-optimisation levels belong to onnxruntime / openvino")
        return measure_module(module, input_shape, device, warmup, samples, threads, dtype=dtype,
                              channels_last=channels_last, max_first5_ms=max_first5_ms, trim=trim)
    threads = int(threads or torch.get_num_threads())
    runner = to_runtime(module, input_shape, runtime, threads, provider, graph_optimization, opset)
    return measure_module(runner, input_shape, "cpu", warmup, samples, threads, max_first5_ms=max_first5_ms,
                          trim=trim)


def measure_block_in_runtime(key_or_spec: str | BlockSpec, batch: int, runtime: str = "torch", device: str = "cpu",
                             warmup: int | None = None, samples: int | None = None, threads: int | None = None,
                             **kwargs: Any) -> dict[str, Any]:
    """A block from its latency-table key, in deploy form, timed in a runtime (:func:`measure_in_runtime`)."""
    module = deploy_block(key_or_spec, channels_last=bool(kwargs.get("channels_last", False)))
    return measure_in_runtime(module, block_input_shape(key_or_spec, batch), runtime, device, warmup, samples,
                              threads, **kwargs)


def measure_networks_in_runtime(archs: list[Arch], meta: dict[str, Any], runtime: str = "torch",
                                provider: str | None = None, graph_optimization: str | None = None,
                                repeats: int = 3, seed: int = 0, on_step: Any = None) -> dict[str, dict[str, Any]]:
    """Whole backbones (feature path, deploy form) in a runtime with a table's protocol, in interleaved rounds.

    Like :func:`latency.measure.measure_networks` (which it is for ``torch``); every network is exported and loaded
    once, then :func:`latency.measure.measure_interleaved` times them.
    """
    if runtime == "torch":
        return measure_networks(archs, meta, repeats, seed, on_step)
    protocol = meta["protocol"]
    _check_protocol(runtime, meta.get("device", "cpu"), meta.get("dtype", "float32"),
                    meta.get("memory_format") == "channels_last")
    if meta.get("resolution") is None:
        raise FaceNASError("the table records no resolution (it was built from --names only); whole networks need "
                           "one: give --resolution")
    side = int(meta["resolution"])
    shape = (int(meta["batch"]), 3, side, side)
    threads = int(meta.get("threads") or torch.get_num_threads())
    modules = {arch.name: to_runtime(deploy_backbone(arch), shape, runtime, threads, provider, graph_optimization)
               for arch in archs}
    return measure_interleaved(modules, shape, repeats, seed, on_step, estimator=protocol.get("estimator",
                                                                                           "trimmed_mean"),
                               device="cpu", warmup=protocol["warmup"], samples=protocol["samples"], threads=threads,
                               trim=protocol["trim"])


def runtime_info(runtime: str, provider: str | None = None, graph_optimization: str | None = None,
                 threads: int | None = None, opset: int = RUNTIME_OPSET) -> dict[str, Any]:
    """What a table measured in ``runtime`` records about it (and compares before it is reused).

    Returns:
        ``runtime``, ``runtime_version``, ``execution_provider``, ``graph_optimization``, ``threads`` (intra-op),
        and for the ONNX runtimes ``inter_op_threads``, ``precision``, ``onnx_opset``, ``onnx_version``,
        ``onnx_exporter``.

    Raises:
        FaceNASError: a missing package (what to pip install), or a provider / level / device the runtime lacks.
    """
    backend = require_runtime(runtime)
    threads = int(threads or torch.get_num_threads())
    if runtime == "torch":
        if provider is not None or graph_optimization is not None:
            raise FaceNASError("execution providers and graph-optimisation levels belong to onnxruntime / openvino")
        return {"runtime": "torch", "runtime_version": str(torch.__version__), "execution_provider": "eager",
                "graph_optimization": None, "threads": threads}
    if runtime == "onnxruntime":
        info = {"runtime": runtime, "runtime_version": str(backend.__version__),
                "execution_provider": _ort_provider(backend, provider),
                "graph_optimization": _ort_level(graph_optimization), "threads": threads, "inter_op_threads": 1}
    else:
        _ov_check_level(graph_optimization)
        info = {"runtime": runtime, "runtime_version": _ov_version(backend),
                "execution_provider": _ov_device(backend, provider), "graph_optimization": "default",
                "threads": threads, "performance_hint": "LATENCY"}
    info.update({"precision": "float32", "onnx_opset": int(opset),
                 "onnx_version": str(importlib.import_module("onnx").__version__),
                 "onnx_exporter": f"torch.onnx TorchScript exporter, torch {torch.__version__}"})
    return info


# ------------------------------------------------------------------------------------ a table's own runtime
def table_runtime(meta: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """``(runtime, provider, graph_optimization)`` a table was measured with (older tables: eager torch)."""
    runtime = meta.get("runtime") or "torch"
    if runtime == "torch":
        return runtime, None, None
    level = meta.get("graph_optimization")
    return runtime, meta.get("execution_provider"), None if level == "default" else level


def measure_table_block(key_or_spec: str | BlockSpec, meta: dict[str, Any],
                        max_first5_ms: float | None = None) -> dict[str, Any]:
    """One block with a table's protocol, in the table's runtime (what the profiler and internal mode measure)."""
    runtime, provider, level = table_runtime(meta)
    protocol = meta["protocol"]
    options: dict[str, Any] = {"dtype": meta["dtype"], "channels_last": meta["memory_format"] == "channels_last",
                               "max_first5_ms": max_first5_ms, "trim": protocol["trim"]}
    if runtime != "torch":
        options.update(provider=provider, graph_optimization=level)
    return measure_block_in_runtime(key_or_spec, int(meta["batch"]), runtime, meta["device"], protocol["warmup"],
                                    protocol["samples"], meta.get("threads"), **options)


def table_block_timer(key: str, meta: dict[str, Any]) -> Callable[[], float]:
    """A function that times one block with a table's protocol in the table's runtime and returns the table's
    estimate (ms); the block is built (and exported, loaded into the runtime) once, so each call only times it.
    The drift anchor (:mod:`latency.anchor`) re-times its reference block this way before every block."""
    runtime, provider, level = table_runtime(meta)
    protocol = meta["protocol"]
    field = ESTIMATORS.get(protocol.get("estimator", "trimmed_mean"), "mean_ms")
    shape = block_input_shape(key, int(meta["batch"]))
    channels_last = meta["memory_format"] == "channels_last"
    options: dict[str, Any] = {"trim": protocol["trim"]}
    if runtime == "torch":
        module, device, threads = deploy_block(key, channels_last=channels_last), meta["device"], meta.get("threads")
        options.update(dtype=meta["dtype"], channels_last=channels_last)
    else:
        _check_protocol(runtime, meta.get("device", "cpu"), meta["dtype"], channels_last)
        threads = int(meta.get("threads") or torch.get_num_threads())
        module, device = to_runtime(deploy_block(key), shape, runtime, threads, provider, level), "cpu"

    def time_once() -> float:
        return float(measure_module(module, shape, device, protocol["warmup"], protocol["samples"], threads,
                                    **options)[field])

    return time_once


def measure_table_networks(archs: list[Arch], meta: dict[str, Any], repeats: int = 3, seed: int = 0,
                           on_step: Any = None) -> dict[str, dict[str, Any]]:
    """Whole backbones with a table's protocol, in the table's runtime (calibration and predictor reports)."""
    runtime, provider, level = table_runtime(meta)
    return measure_networks_in_runtime(archs, meta, runtime, provider, level, repeats, seed, on_step)
