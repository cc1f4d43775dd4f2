"""ncnn as a deploy target: PyTorch modules converted by pnnx, run by the ``ncnn`` Python package, and what a table
records.

Conversion: ``pnnx.export`` traces the module (TorchScript) and writes the ``.ncnn.param`` / ``.ncnn.bin`` pair,
weights in float32 (``fp16=False``); given a second input shape it writes shape-generic layers, so one detector file
runs every input size. ncnn reads the pair, not ONNX: this backend takes the module itself.

Settings, the options ncnn users set: ``num_threads`` = the threads asked for, light mode on (intermediate blobs
freed as soon as they are used), packing layout on, Winograd and sgemm convolution on (ncnn's defaults), and fp16 /
bf16 storage, packing and arithmetic **off**: a float32 table measures float32 kernels (ncnn would pick fp16 on CPUs
with ARMv8.2 half precision, a different precision this table does not claim). Vulkan (GPU) is not measured here.
INT8: the pip packages have no ncnn2table / ncnn2int8 calibration tools, so ncnn INT8 is refused with that reason.

Python 3.8 syntax, torch and the standard library only at import time (ncnn, pnnx and numpy are imported when used):
``profile_latency.py`` embeds this file.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deploy.onnx_graph import require_packages
from utils.errors import FaceNASError

#: Python packages the runtime needs (pnnx converts, ncnn runs), as pip names them.
NCNN_PACKAGES = ("ncnn", "pnnx")
#: The ncnn options every session sets (see the module docstring).
NCNN_OPTIONS = {"lightmode": True, "use_packing_layout": True, "use_winograd_convolution": True,
                "use_sgemm_convolution": True, "use_fp16_packed": False, "use_fp16_storage": False,
                "use_fp16_arithmetic": False, "use_bf16_storage": False, "use_vulkan_compute": False}


@contextlib.contextmanager
def _quiet_output() -> Iterator[None]:
    """Silence what pnnx's converter prints (from C++, so at the file-descriptor level)."""
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, "w") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def convert_to_ncnn(module: nn.Module, input_shape: Sequence[int], folder: str | os.PathLike,
                    second_shape: Sequence[int] | None = None, name: str = "graph") -> tuple[Path, Path]:
    """Convert a module with pnnx into ``folder/NAME.ncnn.param`` and ``.ncnn.bin`` (float32 weights).

    Args:
        module: the network (deploy form; put in eval mode).
        input_shape: the trace input (B, C, H, W).
        second_shape: a second input shape: pnnx then writes layers that follow the input size (dynamic H, W).
        name: file stem.

    Raises:
        FaceNASError: pnnx missing, or the conversion failing or writing nothing.
    """
    pnnx = require_packages(["pnnx"], "converting to ncnn")["pnnx"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    trace = folder / f"{name}.pt"
    example = (torch.zeros(tuple(int(v) for v in input_shape)),)
    second = (torch.zeros(tuple(int(v) for v in second_shape)),) if second_shape is not None else None
    try:
        with torch.no_grad(), _quiet_output(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice: pnnx traces with it
            pnnx.export(module.eval(), str(trace), example, second, fp16=False)
    except Exception as exc:  # noqa: BLE001 - tracing or conversion errors: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FaceNASError(f"pnnx could not convert {type(module).__name__} {list(input_shape)} to ncnn: "
                           f"{first[:300]}") from None
    param, weights = folder / f"{name}.ncnn.param", folder / f"{name}.ncnn.bin"
    if not param.is_file() or not weights.is_file():
        raise FaceNASError(f"pnnx wrote no ncnn files for {type(module).__name__} (an operator ncnn lacks?)")
    return param, weights


def ncnn_blob_names(param: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Input and output blob names of a pnnx-written ``.param`` (``in0``..., ``out0``... in order)."""
    text = Path(param).read_text(encoding="utf-8")
    names = set(re.findall(r"\b((?:in|out)\d+)\b", text))

    def ordered(prefix: str) -> list[str]:
        return sorted((n for n in names if n.startswith(prefix) and n[len(prefix):].isdigit()),
                      key=lambda n: int(n[len(prefix):]))

    return ordered("in"), ordered("out")


class NcnnSession:
    """A network in an ncnn ``Net`` with the settings of this module's docstring (the interface of
    :class:`deploy.onnx_runtime.OrtSession`: ``run`` on a float32 NCHW array, ``outputs``, ``describe``).

    Args:
        source: a module to convert (with ``input_shape``), or the path of a ``.ncnn.param`` (its ``.ncnn.bin``
            beside it).
        threads: ncnn threads (default: PyTorch's current setting).
        provider: ``cpu`` or unset (Vulkan is not measured here).
        graph_optimization: must stay unset (ncnn has no levels).
        input_shape: the trace input of a module ``source``.
        second_shape: a second trace shape for a size-generic conversion.
    """

    runtime = "ncnn"

    def __init__(self, source: Any, threads: int | None = None, provider: str | None = None,
                 graph_optimization: str | None = None, input_shape: Sequence[int] | None = None,
                 second_shape: Sequence[int] | None = None, label: str = ""):
        ncnn = require_packages(["ncnn"], "runtime ncnn")["ncnn"]
        ncnn_check_settings(provider, graph_optimization)
        self.threads = int(threads or torch.get_num_threads())
        if self.threads < 1:
            raise FaceNASError(f"threads must be >= 1, not {threads}")
        self.provider, self.graph_optimization = "cpu", "default"
        self.version = str(getattr(ncnn, "__version__", "?"))
        self._folder = None
        if isinstance(source, nn.Module):
            if input_shape is None:
                raise FaceNASError("converting a module to ncnn needs its input shape")
            self._folder = tempfile.TemporaryDirectory(prefix="facenas_ncnn_")
            param, weights = convert_to_ncnn(source, input_shape, self._folder.name, second_shape)
        else:
            param = Path(source)
            weights = param.with_name(param.name[:-len(".param")] + ".bin") if param.name.endswith(".param") \
                else param.with_suffix(".bin")
            where = label or str(param)
            if not param.is_file() or not weights.is_file():
                raise FaceNASError(f"{where}: ncnn files not found (need {param.name} and {weights.name})")
        self.net = ncnn.Net()
        for key, value in NCNN_OPTIONS.items():
            setattr(self.net.opt, key, value)
        self.net.opt.num_threads = self.threads
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(weights)) != 0:
            raise FaceNASError(f"{label or param}: ncnn cannot load it (not a .param/.bin pair ncnn "
                               f"{self.version} reads)")
        self.input_names, self.output_names = ncnn_blob_names(param)
        if len(self.input_names) != 1 or not self.output_names:
            raise FaceNASError(f"{label or param}: expected one input in0 and outputs out0..., found "
                               f"{self.input_names} / {self.output_names}")
        self._mat = ncnn.Mat

    def run(self, array: Any) -> Any:
        """Run the network on a float32 NCHW array, image by image (ncnn blobs have no batch axis); the runtime's
        raw outputs."""
        results = []
        for image in array:
            extractor = self.net.create_extractor()
            extractor.input(self.input_names[0], self._mat(image))
            results.append([extractor.extract(name)[1] for name in self.output_names])
        return results

    def outputs(self, raw: Any) -> list[Any]:
        """The outputs of :meth:`run` as numpy arrays with the batch axis back, in output order."""
        np = require_packages(["numpy"], "runtime ncnn")["numpy"]
        return [np.stack([np.array(per_image[index]) for per_image in raw]) for index in range(len(self.output_names))]

    def describe(self) -> str:
        return f"ncnn {self.version}, cpu, {self.threads} threads, fp32 (fp16 off), light mode, packing layout"


def ncnn_check_settings(provider: str | None, graph_optimization: str | None) -> None:
    """ncnn runs on the CPU here and has no optimisation levels."""
    if provider not in (None, "cpu", "CPU"):
        raise FaceNASError(f"ncnn runs on the CPU here (got --provider {provider!r}); Vulkan is not measured")
    if graph_optimization not in (None, "default"):
        raise FaceNASError(f"ncnn has no graph-optimisation levels (got {graph_optimization!r}); leave it unset")


def ncnn_runtime_info(provider: str | None = None, graph_optimization: str | None = None, threads: int | None = None,
                      opset: int = 0) -> dict[str, Any]:
    """What a table measured in ncnn records about it (and compares before it is reused)."""
    modules = require_packages(NCNN_PACKAGES, "runtime ncnn")
    ncnn_check_settings(provider, graph_optimization)
    return {"runtime": "ncnn", "runtime_version": str(getattr(modules["ncnn"], "__version__", "?")),
            "execution_provider": "cpu", "graph_optimization": "default",
            "threads": int(threads or torch.get_num_threads()), "precision": "float32",
            "ncnn_options": dict(NCNN_OPTIONS), "converter": f"pnnx {getattr(modules['pnnx'], '__version__', '?')} "
            f"(TorchScript trace, torch {torch.__version__}, fp32 weights)"}
