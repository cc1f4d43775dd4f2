"""Latency in the runtime a network is deployed with: eager PyTorch, ONNX Runtime or OpenVINO, one protocol.

A module (a block in deploy form, or a whole backbone's feature path) is exported to an ONNX graph in memory with
static shapes (:func:`export_module_onnx`, the TorchScript-based exporter), loaded into the runtime
(:func:`build_runtime_module`) and timed by :func:`latency.measure.measure_module` itself, through
:class:`RuntimeModule`, an ``nn.Module`` whose call runs the runtime: the same warm-up, samples, trimmed mean,
median / p10 / p90, ``first5_ms`` and ``max_first5_ms`` abort, garbage collector off, and the same result dict.

Runtime settings are those of the runtime's backend in :mod:`deploy` (:mod:`deploy.onnx_runtime`,
:mod:`deploy.openvino_runtime`; CUDA and TensorRT times include the copies of input and outputs between host and
device, as a deployed ``session.run`` pays them), with intra-op threads = the table's threads; ``torch`` is the
module itself, eager, as :func:`latency.measure.measure_module` always measured it.

:func:`runtime_info` gives the runtime's name, version, provider, optimisation level and threads for a table's
metadata. The runtimes are imported when first needed: a missing one is a one-line :class:`FaceNASError` saying what
to ``pip install`` (torch's ONNX exporter needs the ``onnx`` package as well).

Python 3.8 syntax, torch and the standard library only at import time: ``profile_latency.py`` embeds this file.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from deploy.onnx_graph import DEFAULT_OPSET, export_graph
from deploy.quantize import quantization_settings, quantize_int8, random_calibration
from deploy.registry import backend, check_precision, open_session, require_runtime
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

#: ONNX opset of the measured graphs.
RUNTIME_OPSET = DEFAULT_OPSET


def export_module_onnx(module: nn.Module, input_shape: tuple[int, ...], opset: int = RUNTIME_OPSET) -> bytes:
    """The module as ONNX bytes with static shapes (traced on ``torch.randn(input_shape)``, eval mode; one input
    named ``input``)."""
    return export_graph(module, torch.randn(tuple(input_shape)), ("input",), opset=opset,
                        label=f"{type(module).__name__} {list(input_shape)}")


class RuntimeModule(nn.Module):
    """A network loaded into a deploy runtime (ONNX Runtime, OpenVINO, ncnn, ...), called like a module.

    ``module(x)`` runs it once on ``x`` (CPU float32) and returns the runtime's raw outputs without copying them
    (what :func:`latency.measure.measure_module` times); :meth:`outputs` returns copies as tensors.

    Args:
        graph: the ONNX graph (one input), or for a runtime that converts modules itself (ncnn) the module, with
            ``input_shape`` in ``options``.
        runtime: a runtime of :data:`deploy.registry.BACKENDS`.
        threads: intra-op threads (default: PyTorch's current setting).
        provider: ONNX Runtime execution provider (short or full name) or OpenVINO device (default: the CPU).
        graph_optimization: ONNX Runtime level (default ``all``); must stay unset for OpenVINO and ncnn.
        options: more keywords of the runtime's session.
    """

    def __init__(self, graph: Any, runtime: str, threads: int | None = None, provider: str | None = None,
                 graph_optimization: str | None = None, **options: Any):
        super().__init__()
        require_runtime(runtime)
        if runtime == "torch":
            raise FaceNASError("RuntimeModule runs exported graphs; the torch runtime runs the module itself")
        self.runtime = runtime
        self.session = open_session(graph, runtime, threads, provider, graph_optimization, **options)
        self.threads = self.session.threads
        self.provider = self.session.provider
        self.graph_optimization = self.session.graph_optimization

    def forward(self, x: torch.Tensor) -> Any:
        return self.session.run(x.detach().cpu().numpy())

    def outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The graph's outputs for ``x`` as tensors (copies, safe to keep)."""
        return [torch.tensor(value) for value in self.session.outputs(self(x))]

    def extra_repr(self) -> str:
        return f"{self.runtime}, {self.provider}, optimisation {self.graph_optimization}, {self.threads} threads"


def build_runtime_module(onnx_bytes: bytes, runtime: str, threads: int | None = None, provider: str | None = None,
                         graph_optimization: str | None = None) -> RuntimeModule:
    """Load an ONNX graph into a runtime (see :class:`RuntimeModule`)."""
    return RuntimeModule(onnx_bytes, runtime, threads, provider, graph_optimization)  # an ONNX graph runtime


def to_runtime(module: nn.Module, input_shape: tuple[int, ...], runtime: str = "torch", threads: int | None = None,
               provider: str | None = None, graph_optimization: str | None = None,
               opset: int = RUNTIME_OPSET, precision: str = "float32") -> nn.Module:
    """The module as the runtime runs it: itself for ``torch``, else its ONNX graph in a :class:`RuntimeModule`.

    With ``precision="int8"`` the graph is quantized first (:func:`deploy.quantize.quantize_int8`, calibrated on
    random inputs: a block that is only timed runs the same kernels whatever its values).
    """
    check_precision(runtime, precision)
    if runtime == "torch":
        if provider is not None or graph_optimization is not None:
            raise FaceNASError("execution providers and graph-optimisation levels belong to onnxruntime / openvino, "
                               "not to the torch runtime")
        return module
    require_runtime(runtime)
    if backend(runtime).takes_module:
        return RuntimeModule(module.eval(), runtime, threads, provider, graph_optimization, input_shape=input_shape)
    graph = export_module_onnx(module, input_shape, opset)
    if precision == "int8":
        graph = quantize_int8(graph, random_calibration(input_shape))
    return build_runtime_module(graph, runtime, threads, provider, graph_optimization)


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
                       opset: int = RUNTIME_OPSET, precision: str = "float32") -> dict[str, Any]:
    """Time a module (deploy form) in a runtime with the protocol of :func:`latency.measure.measure_module`.

    Args:
        module: block or network, BatchNorm already folded.
        input_shape: input with batch, e.g. ``(1, 3, 320, 320)``.
        runtime: ``torch``, ``onnxruntime`` or ``openvino``.
        device: for ``torch`` only (``cpu`` / ``cuda``); the other runtimes take ``provider``.
        warmup, samples, threads, dtype, channels_last, max_first5_ms, trim: as ``measure_module``; ``threads`` is
            also the runtime's intra-op thread count.
        provider, graph_optimization, opset: see :class:`RuntimeModule` and :func:`export_module_onnx`.
        precision: ``float32``, or ``int8`` (ONNX Runtime: the graph quantized, :func:`to_runtime`).

    Returns:
        ``measure_module``'s dict: ``mean_ms``, ``median_ms``, ``p10_ms``, ``p90_ms``, ``n``, ``first5_ms``,
        ``threads``, ``aborted``.
    """
    _check_protocol(runtime, device, dtype, channels_last)
    check_precision(runtime, precision)
    if runtime == "torch":
        if provider is not None or graph_optimization is not None:
            raise FaceNASError("execution providers and graph-optimisation levels belong to onnxruntime / openvino")
        return measure_module(module, input_shape, device, warmup, samples, threads, dtype=dtype,
                              channels_last=channels_last, max_first5_ms=max_first5_ms, trim=trim)
    threads = int(threads or torch.get_num_threads())
    runner = to_runtime(module, input_shape, runtime, threads, provider, graph_optimization, opset, precision)
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
                                repeats: int = 3, seed: int = 0, on_step: Any = None,
                                precision: str = "float32") -> dict[str, dict[str, Any]]:
    """Whole backbones (feature path, deploy form) in a runtime with a table's protocol, in interleaved rounds.

    Like :func:`latency.measure.measure_networks` (which it is for ``torch``); every network is exported and loaded
    once, then :func:`latency.measure.measure_interleaved` times them.
    """
    check_precision(runtime, precision)
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
    modules = {arch.name: to_runtime(deploy_backbone(arch), shape, runtime, threads, provider, graph_optimization,
                                     precision=precision) for arch in archs}
    return measure_interleaved(modules, shape, repeats, seed, on_step, estimator=protocol.get("estimator",
                                                                                           "trimmed_mean"),
                               device="cpu", warmup=protocol["warmup"], samples=protocol["samples"], threads=threads,
                               trim=protocol["trim"])


def runtime_info(runtime: str, provider: str | None = None, graph_optimization: str | None = None,
                 threads: int | None = None, opset: int = RUNTIME_OPSET, precision: str = "float32") -> dict[str, Any]:
    """What a table measured in ``runtime`` records about it (and compares before it is reused).

    Returns:
        ``runtime``, ``runtime_version``, ``execution_provider``, ``graph_optimization``, ``threads`` (intra-op),
        and for the graph runtimes ``precision``, ``onnx_opset``, ``onnx_version``, ``onnx_exporter`` and the
        runtime's own settings (e.g. ``inter_op_threads``); an int8 table also ``quantization`` (its settings).

    Raises:
        FaceNASError: a missing package (what to pip install), or a provider / level / device the runtime lacks.
    """
    check_precision(runtime, precision)  # before the import: a precision the runtime lacks is refused anyway
    require_runtime(runtime)
    threads = int(threads or torch.get_num_threads())
    if runtime == "torch":
        if provider is not None or graph_optimization is not None:
            raise FaceNASError("execution providers and graph-optimisation levels belong to onnxruntime / openvino")
        return {"runtime": "torch", "runtime_version": str(torch.__version__), "execution_provider": "eager",
                "graph_optimization": None, "threads": threads}
    info = backend(runtime).runtime_info(provider, graph_optimization, threads, opset)
    if precision != "float32":
        info.update(precision=precision, quantization=quantization_settings(calibration="random normal inputs"))
    return info


# ------------------------------------------------------------------------------------ a table's own runtime
def table_runtime(meta: dict[str, Any]) -> tuple[str, str | None, str | None]:
    """``(runtime, provider, graph_optimization)`` a table was measured with (older tables: eager torch)."""
    runtime = meta.get("runtime") or "torch"
    if runtime == "torch":
        return runtime, None, None
    level = meta.get("graph_optimization")
    return runtime, meta.get("execution_provider"), None if level == "default" else level


def table_precision(meta: dict[str, Any]) -> str:
    """The precision a table was measured in (tables before int8 ones: float32)."""
    return str(meta.get("precision") or "float32")


def measure_table_block(key_or_spec: str | BlockSpec, meta: dict[str, Any],
                        max_first5_ms: float | None = None) -> dict[str, Any]:
    """One block with a table's protocol, in the table's runtime (what the profiler and internal mode measure)."""
    runtime, provider, level = table_runtime(meta)
    protocol = meta["protocol"]
    options: dict[str, Any] = {"dtype": meta["dtype"], "channels_last": meta["memory_format"] == "channels_last",
                               "max_first5_ms": max_first5_ms, "trim": protocol["trim"]}
    if runtime != "torch":
        options.update(provider=provider, graph_optimization=level, precision=table_precision(meta))
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
        module = to_runtime(deploy_block(key), shape, runtime, threads, provider, level,
                            precision=table_precision(meta))
        device = "cpu"

    def time_once() -> float:
        return float(measure_module(module, shape, device, protocol["warmup"], protocol["samples"], threads,
                                    **options)[field])

    return time_once


def measure_table_networks(archs: list[Arch], meta: dict[str, Any], repeats: int = 3, seed: int = 0,
                           on_step: Any = None) -> dict[str, dict[str, Any]]:
    """Whole backbones with a table's protocol, in the table's runtime (calibration and predictor reports)."""
    runtime, provider, level = table_runtime(meta)
    return measure_networks_in_runtime(archs, meta, runtime, provider, level, repeats, seed, on_step,
                                       table_precision(meta))
