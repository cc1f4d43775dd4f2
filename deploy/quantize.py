"""Post-training INT8 quantization of ONNX graphs with ONNX Runtime (static, QDQ, per-channel weights).

What every INT8 graph here is: ``onnxruntime.quantization.quantize_static`` in the QDQ format (QuantizeLinear /
DequantizeLinear pairs that ONNX Runtime fuses into integer kernels, and that other runtimes read), weights int8
symmetric per output channel, activations uint8 asymmetric per tensor, ranges from a calibration pass (``minmax`` by
default; ``entropy`` and ``percentile`` are ONNX Runtime's other methods). Calibration inputs are real images for a
detector that is checked for accuracy (``export.py --int8``) and random tensors for a block that is only timed
(``profile_latency.py --precision int8``): latency does not depend on the values.

Nodes can be kept in float (``keep_float``): ``first`` (the first convolution, which sees raw pixels), ``heads`` (the
class / box / landmark heads), ``decode`` (the prior decoding around a detector's network), or any substring of node
names. Face detectors are known to lose their boxes under post-training quantization; here the culprit was the
decoding, not a layer: its outputs are boxes in input pixels, and one 8-bit grid per tensor over a whole image moves
them by several pixels, which small faces do not survive. ``export.py`` therefore always keeps a detector's decoding
in float (BENCHMARKS.md section I: the INT8 AP drop fell from up to 3.6 points to at most 0.65).

Python 3.8 syntax, torch and the standard library only at import time (numpy and onnxruntime are imported when
used): ``profile_latency.py`` embeds this file.
"""
from __future__ import annotations

import importlib
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from deploy.onnx_graph import require_packages
from utils.errors import FaceNASError

#: Calibration methods of ``onnxruntime.quantization`` by their short names.
QUANT_CALIBRATION_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
#: Short names of groups of nodes that can stay in float.
KEEP_FLOAT_GROUPS = ("first", "heads", "decode")
#: Operator types quantized in a graph with NMS (the convolutions carry nearly all of the compute).
CONV_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
#: Random calibration batches of a block that is only timed.
TIMING_CALIBRATION_BATCHES = 4


def quantization_settings(method: str = "minmax", keep_float: Sequence[str] = (), calibration: str = "random",
                          calibration_count: int = TIMING_CALIBRATION_BATCHES) -> dict[str, Any]:
    """The settings of an INT8 graph as a table's or a file's metadata records them (and compares)."""
    _check_method(method)
    return {"format": "QDQ", "weights": "int8 symmetric per-channel", "activations": "uint8 asymmetric per-tensor",
            "calibration_method": method, "calibration": calibration, "calibration_count": int(calibration_count),
            "keep_float": list(keep_float), "tool": "onnxruntime.quantization.quantize_static"}


def _check_method(method: str) -> None:
    if method not in QUANT_CALIBRATION_METHODS:
        raise FaceNASError(f"calibration method {method!r} is not one of {', '.join(QUANT_CALIBRATION_METHODS)}")


def float_node_names(model: Any, keep_float: Sequence[str]) -> list[str]:
    """Names of the nodes of an ONNX model that ``keep_float`` keeps in float (see the module docstring)."""
    names = [node.name for node in model.graph.node]
    kept: list[str] = []
    for item in keep_float:
        if item == "first":
            convs = [node.name for node in model.graph.node if node.op_type == "Conv"]
            found = convs[:1]
        elif item == "heads":
            found = [name for name in names if "_head" in name]
        elif item == "decode":
            # the prior decoding around the network: in a detector export every network node is under /detector/
            found = [node.name for node in model.graph.node if "/detector/" not in node.name
                     and node.op_type != "Constant"] if any("/detector/" in name for name in names) else []
        else:
            found = [name for name in names if item in name]
        if not found:
            raise FaceNASError(f"--int8-keep-float {item!r}: no node of the graph matches it")
        kept += [name for name in found if name not in kept]
    return kept


class _Reader:
    """A calibration data reader over a list of input arrays (ONNX Runtime's ``CalibrationDataReader`` protocol)."""

    def __init__(self, input_name: str, arrays: Iterable[Any]):
        self.input_name = input_name
        self.items = iter(list(arrays))

    def get_next(self) -> dict[str, Any] | None:
        item = next(self.items, None)
        return None if item is None else {self.input_name: item}

    def rewind(self) -> None:  # not needed: one pass per calibration
        pass


def quantize_int8(onnx_bytes: bytes, calibration: Sequence[Any], method: str = "minmax",
                  keep_float: Sequence[str] = (), metadata: dict[str, str] | None = None,
                  op_types: Sequence[str] | None = None) -> bytes:
    """An ONNX graph quantized to INT8 (QDQ) with ranges calibrated on ``calibration`` (float32 input arrays).

    Args:
        onnx_bytes: the float graph (one input).
        calibration: input arrays (each one batch, the graph's input layout).
        method: ``minmax``, ``entropy`` or ``percentile``.
        keep_float: nodes to leave in float (``first``, ``heads`` or substrings of node names).
        metadata: entries added to the file's metadata (the float graph's own entries are kept).
        op_types: operator types to quantize (default: ONNX Runtime's list); :data:`CONV_OPS` for a graph with NMS,
            whose tensors after NMS change size from image to image and cannot be calibrated by histograms.

    Raises:
        FaceNASError: onnx / onnxruntime missing, no calibration data, or ONNX Runtime's quantizer failing.
    """
    modules = require_packages(["onnx", "onnxruntime"], "INT8 quantization")
    onnx = modules["onnx"]
    # imported by name, like every runtime package: the profiler that embeds this file needs only torch
    quantization = importlib.import_module("onnxruntime.quantization")
    CalibrationMethod, QuantFormat, QuantType = (quantization.CalibrationMethod, quantization.QuantFormat,  # noqa: N806
                                                 quantization.QuantType)
    quantize_static = quantization.quantize_static

    if not calibration:
        raise FaceNASError("INT8 quantization needs at least one calibration input")
    _check_method(method)
    model = onnx.load_model_from_string(onnx_bytes)
    excluded = float_node_names(model, keep_float)
    kept_meta = {entry.key: entry.value for entry in model.metadata_props}
    with tempfile.TemporaryDirectory(prefix="facenas_int8_") as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(onnx_bytes)
        reader = _Reader(model.graph.input[0].name, calibration)
        quiet = logging.getLogger()
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # the quantizer's notes about pre-processing and bias tensors
        cwd = os.getcwd()
        os.chdir(folder)  # the pre-processing and the calibrator write scratch files into the working directory
        try:
            source = _preprocess(source, Path(folder) / "prepared.onnx")
            quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=excluded or None,
                            op_types_to_quantize=list(op_types) if op_types else None,
                            calibrate_method=getattr(CalibrationMethod, QUANT_CALIBRATION_METHODS[method]),
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        except Exception as exc:  # noqa: BLE001 - the quantizer's own errors: one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise FaceNASError(f"INT8 quantization failed: {first[:300]}") from None
        finally:
            os.chdir(cwd)
            quiet.setLevel(level)
        quantized = onnx.load_model(str(target))
    del quantized.metadata_props[:]
    for key, value in {**kept_meta, **(metadata or {})}.items():
        entry = quantized.metadata_props.add()
        entry.key, entry.value = key, str(value)
    return quantized.SerializeToString()


def _preprocess(source: Path, target: Path) -> Path:
    """ONNX Runtime's recommended pre-processing (shape inference, graph optimisation: the folded biases become
    initializers the quantizer can take); the graph as it was when a graph defeats it."""
    try:
        quant_pre_process = importlib.import_module("onnxruntime.quantization.shape_inference").quant_pre_process
        quant_pre_process(str(source), str(target), skip_symbolic_shape=False)
        return target
    except Exception:  # noqa: BLE001 - e.g. symbolic shape inference failing on a dynamic NMS graph
        return source


def random_calibration(shape: Sequence[int], count: int = TIMING_CALIBRATION_BATCHES, seed: int = 0) -> list[Any]:
    """``count`` standard-normal float32 arrays of ``shape``: calibration of a graph that is only timed."""
    np = require_packages(["numpy"], "calibration inputs")["numpy"]
    generator = np.random.default_rng(seed)
    return [generator.standard_normal(tuple(int(v) for v in shape)).astype(np.float32) for _ in range(count)]
