"""Runtime name -> its backend: the session class, the packages it needs and what a table records about it.

Adding a runtime is one backend file (a session class with ``run`` / ``outputs`` / ``describe`` and the attributes
``runtime``, ``provider``, ``graph_optimization``, ``threads``, plus a ``runtime_info`` function) and one entry here.

Python 3.8 syntax, torch and the standard library only at import time: ``profile_latency.py`` embeds this file.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from deploy.ncnn_runtime import NCNN_PACKAGES, NcnnSession, ncnn_runtime_info
from deploy.onnx_graph import require_packages
from deploy.onnx_runtime import ORT_PACKAGES, OrtSession, ort_runtime_info
from deploy.openvino_runtime import OV_PACKAGES, OpenVinoSession, ov_runtime_info
from utils.errors import FaceNASError


class Backend(NamedTuple):
    """One runtime a graph can be deployed to."""

    session: Callable[..., Any]
    packages: tuple[str, ...]
    runtime_info: Callable[..., dict[str, Any]]
    precisions: tuple[str, ...] = ("float32",)
    #: the session converts the PyTorch module itself (ncnn, via pnnx) instead of taking an ONNX graph
    takes_module: bool = False


#: Runtimes that run exported graphs (eager ``torch`` is not one: it runs the module itself).
BACKENDS = {
    "onnxruntime": Backend(OrtSession, ORT_PACKAGES, ort_runtime_info, ("float32", "int8")),
    "openvino": Backend(OpenVinoSession, OV_PACKAGES, ov_runtime_info),
    "ncnn": Backend(NcnnSession, NCNN_PACKAGES, ncnn_runtime_info, takes_module=True),
}
#: The runtimes a table can be measured in.
RUNTIME_CHOICES = ("torch", *BACKENDS)
#: Precisions a table can be measured in (int8: post-training static quantization, :mod:`deploy.quantize`).
PRECISION_CHOICES = ("float32", "int8")
#: Python packages each runtime needs besides torch, as pip names them.
RUNTIME_PACKAGES = {"torch": (), **{name: backend.packages for name, backend in BACKENDS.items()}}


def require_runtime(runtime: str) -> Any:
    """Import a runtime's Python package (``None`` for torch); a one-line error names what to pip install.

    Raises:
        FaceNASError: unknown runtime, or one of its packages is missing.
    """
    _check_known(runtime)
    return require_packages(RUNTIME_PACKAGES[runtime], f"runtime {runtime}").get(runtime)


def _check_known(runtime: str) -> None:
    if runtime not in RUNTIME_PACKAGES:
        raise FaceNASError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIME_CHOICES)}")


def backend(runtime: str) -> Backend:
    """The backend of a graph runtime (not ``torch``)."""
    if runtime not in BACKENDS:
        raise FaceNASError(f"{runtime!r} does not run exported graphs; use one of {', '.join(BACKENDS)}")
    return BACKENDS[runtime]


def open_session(source: Any, runtime: str, threads: int | None = None, provider: str | None = None,
                 graph_optimization: str | None = None, **options: Any) -> Any:
    """A session of ``runtime``: for an ONNX graph (bytes or, for ONNX Runtime, a path), or for a backend that
    ``takes_module``, the module (with ``input_shape=``) or its converted files."""
    require_runtime(runtime)
    return backend(runtime).session(source, threads, provider, graph_optimization, **options)


def check_precision(runtime: str, precision: str) -> None:
    """Refuse a precision the runtime is not measured in here (eager torch: float32 only)."""
    _check_known(runtime)
    have = ("float32",) if runtime == "torch" else backend(runtime).precisions
    if precision not in have:
        why = " (the ncnn pip packages have no int8 calibration tools: ncnn2table / ncnn2int8)" \
            if runtime == "ncnn" else ""
        raise FaceNASError(f"precision {precision} is not measured in runtime {runtime} here{why} (it has "
                           f"{', '.join(have)}); int8 runs in --runtime onnxruntime")
