"""ONNX graphs from PyTorch modules: the one place that calls ``torch.onnx.export``.

The TorchScript-based exporter is used (``dynamo=False`` where the keyword exists): it needs only the ``onnx``
package, and it writes ``torchvision.ops.nms`` as ONNX ``NonMaxSuppression``. Its deprecation notice and tracer notes
about shape arithmetic are silenced; any failure is one :class:`FaceNASError` line.

Python 3.8 syntax, torch and the standard library only at import time: ``profile_latency.py`` embeds this file.
"""
from __future__ import annotations

import importlib
import inspect
import io
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from utils.errors import FaceNASError

#: ONNX opset of every graph (17: ONNX 1.12, 2022); older runtimes need a lower one (13 for TensorRT 8.2).
DEFAULT_OPSET = 17


def require_packages(packages: Sequence[str], what: str) -> dict[str, Any]:
    """Import Python packages by their pip names; a one-line error says which to ``pip install``.

    Args:
        packages: module names (equal to their pip names for every runtime used here).
        what: what needs them, for the message (e.g. ``runtime onnxruntime``).

    Raises:
        FaceNASError: one or more of them is not installed.
    """
    modules, missing = {}, []
    for package in packages:
        try:
            modules[package] = importlib.import_module(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise FaceNASError(f"{what} needs the Python package{'s' if len(missing) > 1 else ''} {', '.join(missing)}, "
                           f"not installed here: pip install {' '.join(missing)}")
    return modules


def export_graph(module: nn.Module, example: torch.Tensor, input_names: Sequence[str] = ("input",),
                 output_names: Sequence[str] | None = None, opset: int = DEFAULT_OPSET,
                 dynamic_axes: dict[str, dict[int, str]] | None = None, label: str = "") -> bytes:
    """The module (eval mode) traced on ``example`` as ONNX bytes, shapes static unless ``dynamic_axes`` say not.

    Args:
        module: what to export; it is put in eval mode.
        example: the trace input.
        input_names, output_names: graph names (outputs: the exporter's own when ``None``).
        opset: ONNX opset.
        dynamic_axes: ``torch.onnx.export``'s argument (``None``: static shapes).
        label: names the module in an error (default: its class and the input shape).

    Raises:
        FaceNASError: ``onnx`` is missing, or the exporter fails (an operator or opset it cannot write).
    """
    require_packages(["onnx"], "exporting to ONNX")
    module = module.eval()
    buffer = io.BytesIO()
    options: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        options["dynamo"] = False
    if output_names is not None:
        options["output_names"] = list(output_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.no_grad():
                torch.onnx.export(module, (example,), buffer, input_names=list(input_names), opset_version=int(opset),
                                  dynamic_axes=dynamic_axes, do_constant_folding=True, **options)
        except Exception as exc:  # noqa: BLE001 - an operator or opset this torch cannot export: one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            name = label or f"{type(module).__name__} {list(example.shape)}"
            raise FaceNASError(f"ONNX export of {name} at opset {opset} failed: {first[:300]}") from None
    return buffer.getvalue()
