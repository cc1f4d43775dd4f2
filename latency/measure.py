"""The latency measurement protocol (thesis 3.6.3, Table 19) and the deployed form of what gets measured.

One protocol serves the block tables, the end-to-end checks of ``tools/latency_report.py`` and ``evaluate.py``:

1. the module is put in eval mode and run under ``torch.inference_mode()`` (``inference_mode`` alone does not switch
   BatchNorm or dropout to eval);
2. the input is ``torch.randn`` of the block's input shape, batch included;
3. ``warmup`` untimed calls, then ``samples`` timed calls (GPU 40 / 200, CPU 20 / 50 by default); on CUDA every timed
   call sits between two ``torch.cuda.synchronize()`` so the clock sees the kernels, not just their launch, and
   ``cudnn.benchmark`` is on, so the warm-up is also where cuDNN picks an algorithm for the shape;
4. the samples are sorted, the lowest and highest 10% dropped and the rest averaged (``mean_ms``); the median, 10th
   and 90th percentiles and the sample count are kept as well, and ``first5_ms`` (mean of the first five samples after
   warm-up) feeds the profiler's latency-threshold filter.

The thread count is fixed for the call (``threads``, default: PyTorch's current setting) and returned, so tables
record it. New CPU tables default to :func:`default_threads`: every core this process may use but one, because a
benchmark that needs every core waits for the slowest of them, and any other work (the OS, the Python process's
own housekeeping, another tenant of a VM) stalls it; on a 2-vCPU VM this cut the run-to-run change of whole networks
from 8.4% to 3.0% (BENCHMARKS.md A2).

On Linux with glibc the allocator is put in a steady state first (:func:`steady_allocator`): by default glibc hands
out large buffers (conv workspaces, activations) with ``mmap`` and returns them on free, so every call pays page faults
again, and whether it does depends on the process's allocation history; the same 3x3 conv measured
1.5 ms or 6 ms in two processes on one machine. A long-running deployed network reuses its memory; so do the
measurements. Python's garbage collector is switched off while sampling and denormal floats are flushed to zero:
untrained random weights can shrink activations into the denormal range deep in a network, which slows CPUs by orders of
magnitude in a way trained (BatchNorm-normalised) networks never see.

What is measured is the *deployed* form: BatchNorm folded into the preceding conv (:func:`deploy_block`,
:func:`models.backbone.deploy_form`), optionally in ``channels_last`` memory format. Folding removes one kernel per
conv, which matters most on GPUs at small batch.

Depends on torch and on torch-only project files, so ``profile_latency.py`` embeds it (``tools/build_profiler.py``).
"""
from __future__ import annotations

import ctypes
import gc
import math
import os
import platform
import random
import statistics
import time
from typing import Any

import torch
from torch import nn

from latency.table_format import ESTIMATORS
from models.arch import Arch
from models.backbone import FaceNASBackbone, deploy_form
from models.blocks import build_block
from models.naming import BlockSpec, format_block, parse_block
from utils.errors import FaceNASError

#: Warm-up calls and timed samples per device type (thesis Table 19).
PROTOCOL_DEFAULTS = {"cuda": {"warmup": 40, "samples": 200}, "cpu": {"warmup": 20, "samples": 50}}
#: Share of samples dropped at each end before averaging.
TRIM = 0.1
#: Default batch per device type (thesis 3.6.3: GPU tables at batch 8, CPU tables at batch 1).
DEFAULT_BATCH = {"cuda": 8, "cpu": 1}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: The statistic of the timed samples new tables use (``latency.table_format.ESTIMATORS``); see docs/LATENCY.md for
#: the test-retest study behind the choice.
DEFAULT_ESTIMATOR = "min"


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_threads(device: str | torch.device = "cpu") -> int:
    """The thread count of a new table: on a CPU every usable core but one (at least 1), leaving a core to the OS
    and other work so that it does not stall the timed one; on a GPU PyTorch's current CPU setting (it only
    launches kernels). Deploy at the table's thread count, or profile with ``--threads N`` for another."""
    if device_type(device) == "cuda":
        return torch.get_num_threads()
    return max(1, usable_cores() - 1)


def device_type(device: str | torch.device) -> str:
    """``"cpu"`` or ``"cuda"`` for a device string such as ``cuda:1``; other types are refused."""
    kind = torch.device(device).type
    if kind not in PROTOCOL_DEFAULTS:
        raise FaceNASError(f"device {device!r} is not supported for latency tables (use cpu or cuda)")
    return kind


def protocol_defaults(device: str | torch.device) -> dict[str, int]:
    """Default ``{"warmup": ..., "samples": ...}`` for the device type."""
    return dict(PROTOCOL_DEFAULTS[device_type(device)])


def check_device(device: str | torch.device) -> torch.device:
    """The device as a ``torch.device``; a one-line error when CUDA is asked for but missing."""
    dev = torch.device(device)
    device_type(dev)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FaceNASError(f"device {device!r} requested but CUDA is not available on this machine "
                           "(use --device cpu, or run on the GPU machine)")
    return dev


def summarize(times_ms: list[float], trim: float = TRIM) -> dict[str, Any]:
    """Trimmed mean, median, p10, p90, minimum and count of a list of timings (milliseconds).

    ``trim`` of the samples is dropped at each end (rounded down, so 50 samples drop 5 and 5); with too few samples
    to drop anything the plain mean is used.
    """
    if not times_ms:
        raise ValueError("no samples")
    ordered = sorted(times_ms)
    n = len(ordered)
    cut = int(n * trim)
    kept = ordered[cut:n - cut] if n - 2 * cut >= 1 else ordered
    return {
        "mean_ms": sum(kept) / len(kept),
        "median_ms": _quantile(ordered, 0.5),
        "p10_ms": _quantile(ordered, 0.1),
        "p90_ms": _quantile(ordered, 0.9),
        "min_ms": ordered[0],
        "n": n,
    }


def _quantile(ordered: list[float], q: float) -> float:
    """Linear-interpolation quantile of sorted values (NumPy's default method, without NumPy)."""
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


_ALLOCATOR: dict[str, str] = {}


def steady_allocator() -> str:
    """Make glibc serve buffers up to 32 MiB from the heap and keep freed memory (once per process); returns a
    description for the table metadata (``"default"`` where this is not Linux/glibc)."""
    if "state" not in _ALLOCATOR:
        _ALLOCATOR["state"] = "default"
        if platform.system() == "Linux":
            try:
                libc = ctypes.CDLL("libc.so.6")
                # M_MMAP_THRESHOLD (-3): 32 MiB is glibc's maximum; M_TRIM_THRESHOLD (-1): never give memory back
                if libc.mallopt(-3, 32 << 20) and libc.mallopt(-1, 1 << 30):
                    _ALLOCATOR["state"] = "glibc mallopt mmap_threshold=32MiB trim_threshold=1GiB"
            except (OSError, AttributeError):
                pass
    return _ALLOCATOR["state"]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def measure_module(module: nn.Module, input_shape: tuple[int, ...], device: str = "cpu", warmup: int | None = None,
                   samples: int | None = None, threads: int | None = None, *, dtype: str = "float32",
                   channels_last: bool = False, max_first5_ms: float | None = None,
                   trim: float = TRIM, keep_samples: bool = False) -> dict[str, Any]:
    """Time ``module`` on a ``torch.randn(input_shape)`` input with the FaceNAS protocol (module docstring).

    The module is measured as given (fold BatchNorm first with :func:`deploy_block` or ``deploy_form``); it is moved
    to ``device``/``dtype`` and switched to eval mode in place.

    Args:
        module: the network or block.
        input_shape: full input shape including the batch, e.g. ``(1, 3, 320, 320)``.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        warmup: untimed calls first (default: 40 on GPU, 20 on CPU; on GPU at least 1 so that cuDNN's autotuning
            never lands in a timed call).
        samples: timed calls (default: 200 on GPU, 50 on CPU).
        threads: CPU threads for the call (``torch.set_num_threads``); default: the current setting. Restored after.
        dtype: ``float32`` (default), ``float16`` or ``bfloat16``.
        channels_last: convert module and input to the channels-last memory format.
        max_first5_ms: stop after five samples when their mean exceeds this (the profiler's threshold filter);
            the result then has ``aborted=True`` and ``n=5``.
        trim: share dropped at each end for ``mean_ms``.
        keep_samples: also return every timed sample (``samples_ms``, for measurement studies).

    Returns:
        ``{"mean_ms", "median_ms", "p10_ms", "p90_ms", "n", "first5_ms", "threads", "aborted", "load"}`` (``load``:
        the 1-minute load average when the samples were taken).
    """
    dev = check_device(device)
    defaults = protocol_defaults(dev)
    warmup = defaults["warmup"] if warmup is None else int(warmup)
    samples = defaults["samples"] if samples is None else int(samples)
    if warmup < 0 or samples < 1:
        raise FaceNASError(f"warm-up must be >= 0 and samples >= 1 (got {warmup} and {samples})")
    if dev.type == "cuda":
        warmup = max(warmup, 1)
    if dtype not in DTYPES:
        raise FaceNASError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    steady_allocator()
    previous_threads = torch.get_num_threads()
    previous_benchmark = torch.backends.cudnn.benchmark
    if threads is not None:
        if threads < 1:
            raise FaceNASError(f"threads must be >= 1, not {threads}")
        torch.set_num_threads(int(threads))
    flushing = torch.set_flush_denormal(True)
    gc_enabled = gc.isenabled()
    try:
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True
        module = module.eval().to(device=dev, dtype=DTYPES[dtype])
        x = torch.randn(tuple(input_shape), device=dev, dtype=DTYPES[dtype])
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
            if x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
        times: list[float] = []
        aborted = False
        with _inference_mode():
            for _ in range(warmup):
                module(x)
            _sync(dev)
            gc.disable()  # no collection pauses inside a sample (a full gc.collect() first costs ~1 s in big processes)
            for _ in range(samples):
                _sync(dev)
                start = time.perf_counter()
                module(x)
                _sync(dev)
                times.append((time.perf_counter() - start) * 1000.0)
                if max_first5_ms is not None and len(times) == 5 and sum(times) / 5 > max_first5_ms:
                    aborted = True
                    break
        stats = summarize(times, trim)
        first = times[:5]
        stats["first5_ms"] = sum(first) / len(first)
        stats["threads"] = torch.get_num_threads()
        stats["aborted"] = aborted
        stats["load"] = load_average()
        if keep_samples:
            stats["samples_ms"] = times
        return stats
    finally:
        if gc_enabled:
            gc.enable()
        if flushing:
            torch.set_flush_denormal(False)
        torch.backends.cudnn.benchmark = previous_benchmark
        torch.set_num_threads(previous_threads)


def _inference_mode():
    # torch.inference_mode arrived in 1.9; older device images (JetPack 4) fall back to no_grad
    return torch.inference_mode() if hasattr(torch, "inference_mode") else torch.no_grad()


def block_spec(key_or_spec: str | BlockSpec) -> BlockSpec:
    """The spec of a latency-table key; it must state its input tensor (``..._<cin>x<H>x<W>``)."""
    spec = parse_block(key_or_spec) if isinstance(key_or_spec, str) else key_or_spec.validate()
    if spec.cin is None or spec.size is None:
        raise FaceNASError(f"block {format_block(spec)!r} lacks its input tensor: latency keys end with "
                           "_<cin>x<H>x<W> before the activation/shortcut tokens, e.g. 3x3_KKConv_64_32x80x80")
    if spec.family == "Zero":
        raise FaceNASError(f"{format_block(spec)!r}: Zero skips the layer and costs nothing; it is not measured")
    return spec


def deploy_block(key_or_spec: str | BlockSpec, channels_last: bool = False) -> nn.Module:
    """A block in its deployed form: built from its key, eval mode, BatchNorm folded, optionally channels_last."""
    return deploy_form(build_block(block_spec(key_or_spec)), channels_last=channels_last)


def block_input_shape(key_or_spec: str | BlockSpec, batch: int) -> tuple[int, int, int, int]:
    """``(batch, cin, H, W)`` of a key."""
    spec = block_spec(key_or_spec)
    return (int(batch), spec.cin, spec.size[0], spec.size[1])


def measure_block(key_or_spec: str | BlockSpec, batch: int, device: str = "cpu", warmup: int | None = None,
                  samples: int | None = None, threads: int | None = None, **kwargs: Any) -> dict[str, Any]:
    """Build a block from its key in deployed form and time it (:func:`measure_module`; ``kwargs`` pass through).

    ``channels_last`` (if given) applies to both the module and its input.
    """
    module = deploy_block(key_or_spec, channels_last=bool(kwargs.get("channels_last", False)))
    return measure_module(module, block_input_shape(key_or_spec, batch), device, warmup, samples, threads, **kwargs)


class BackboneFeatures(nn.Module):
    """A backbone's feature path only (first conv .. last conv): exactly the blocks a table prediction adds up."""

    def __init__(self, backbone: FaceNASBackbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)


def deploy_backbone(arch: Arch, channels_last: bool = False) -> nn.Module:
    """A whole backbone in deployed form (BatchNorm folded), reduced to its feature path, for end-to-end timing."""
    return BackboneFeatures(deploy_form(FaceNASBackbone(arch), channels_last=channels_last))


def measure_interleaved(modules: dict[str, nn.Module], input_shape: tuple[int, ...], repeats: int = 3,
                        seed: int = 0, on_step: Any = None, estimator: str = "trimmed_mean",
                        **protocol: Any) -> dict[str, dict[str, Any]]:
    """Time several networks in ``repeats`` rounds, each round over all of them in a fresh random order.

    Slow drifts of the machine (heat, other work) then hit every network alike instead of whichever ran last.

    Args:
        modules: name -> module (deployed form).
        input_shape: input shape with batch.
        repeats: rounds.
        seed: seed of the round orders.
        on_step: called with no argument after each measurement (progress display).
        estimator: the statistic of each round's samples (``latency.table_format.ESTIMATORS``), as the table's.
        **protocol: passed to :func:`measure_module` (device, warmup, samples, threads, dtype, channels_last, trim).

    Returns:
        name -> ``{"rounds_ms": [estimate per round], "measured_ms": median of the rounds, "spread":
        (max - min) / median in %, "load": mean load average during its rounds}``.
    """
    rounds: dict[str, list[float]] = {name: [] for name in modules}
    loads: dict[str, list[float | None]] = {name: [] for name in modules}
    rng = random.Random(seed)
    for _ in range(repeats):
        order = list(modules)
        rng.shuffle(order)
        for name in order:
            stats = measure_module(modules[name], input_shape, **protocol)
            rounds[name].append(stats[ESTIMATORS[estimator]])
            loads[name].append(stats["load"])
            if on_step is not None:
                on_step()
    out = {}
    for name, values in rounds.items():
        middle = statistics.median(values)
        seen = [load for load in loads[name] if load is not None]
        out[name] = {"rounds_ms": [round(v, 6) for v in values], "measured_ms": round(middle, 6),
                     "spread": round((max(values) - min(values)) / middle * 100.0, 3),
                     "load": round(sum(seen) / len(seen), 2) if seen else None}
    return out


def measure_networks(archs: list[Arch], meta: dict[str, Any], repeats: int = 3, seed: int = 0,
                     on_step: Any = None) -> dict[str, dict[str, Any]]:
    """Whole backbones end to end with a table's protocol (``meta``: device, batch, resolution, threads, dtype,
    memory format, warm-up/samples/trim), deployed form, interleaved rounds (:func:`measure_interleaved`).

    Returns:
        architecture name -> ``{"rounds_ms", "measured_ms", "spread"}``.
    """
    protocol = meta["protocol"]
    channels_last = meta["memory_format"] == "channels_last"
    modules = {arch.name: deploy_backbone(arch, channels_last) for arch in archs}
    if meta.get("resolution") is None:
        raise FaceNASError("the table records no resolution (it was built from --names only); whole networks need "
                           "one: give --resolution")
    side = int(meta["resolution"])
    return measure_interleaved(
        modules, (int(meta["batch"]), 3, side, side), repeats, seed, on_step,
        estimator=protocol.get("estimator", "trimmed_mean"), device=meta["device"],
        warmup=protocol["warmup"], samples=protocol["samples"], threads=meta.get("threads"), dtype=meta["dtype"],
        channels_last=channels_last, trim=protocol["trim"])


def cpu_model() -> str:
    """A human name for this CPU (x86 model name, Raspberry Pi board model, or what the OS says)."""
    board = _read_text("/proc/device-tree/model").replace("\x00", "").strip()
    model = ""
    for line in _read_text("/proc/cpuinfo").splitlines():
        head, _, value = line.partition(":")
        if head.strip().lower() in ("model name", "cpu model", "hardware") and value.strip():
            model = value.strip()
            break
    if not model and platform.system() == "Darwin":
        model = os.popen("sysctl -n machdep.cpu.brand_string 2>/dev/null").read().strip()
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return f"{board} ({model})" if board and board not in model else model


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def load_average() -> float | None:
    """The 1-minute load average (``None`` where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def device_info(device: str = "cpu", threads: int | None = None) -> dict[str, Any]:
    """Facts about this machine for a table's metadata; ``device_name`` is what tables compare to decide whether
    they were measured here (the CPU model for CPU tables, the GPU name for CUDA tables)."""
    dev = torch.device(device)
    cpu = cpu_model()
    info: dict[str, Any] = {
        "device": device_type(dev),
        "device_name": cpu,
        "cpu_model": cpu,
        "gpu_name": None,
        "machine": platform.machine(),
        "system": platform.system(),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "threads": int(threads) if threads else default_threads(device),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "allocator": steady_allocator(),
    }
    load = load_average()
    if load is not None:
        info["load_average"] = load  # other work on the machine inflates timings: keep the evidence
    governor = _read_text("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").strip()
    if governor:
        info["cpu_governor"] = governor
    if dev.type == "cuda" and torch.cuda.is_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        info["gpu_name"] = info["device_name"] = torch.cuda.get_device_name(index)
        info["cuda_version"] = torch.version.cuda
        info["cudnn_version"] = torch.backends.cudnn.version()
        info["cudnn_benchmark"] = True
    tegra = _read_text("/etc/nv_tegra_release").strip()
    if tegra:
        info["tegra_release"] = tegra.splitlines()[0]
    return info



def machine_problem(meta: dict[str, Any]) -> str | None:
    """Why this machine is not the device a latency table's ``meta`` was measured on (no CUDA, another CPU or GPU
    model, another architecture), or ``None`` when it is."""
    device = meta.get("device", "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        return "the table was measured on a CUDA GPU and CUDA is not available here"
    here = device_info(device)
    for field in ("device_name", "machine"):
        want = meta.get(field)
        if want is not None and here.get(field) != want:
            return f"the table was measured on {field}={want!r} but this machine is {here.get(field)!r}"
    return None

def machine_meta(device: str = "cpu", batch: int | None = None, resolution: int | None = None,
                 threads: int | None = None, warmup: int | None = None, samples: int | None = None,
                 dtype: str = "float32", channels_last: bool = False, estimator: str = DEFAULT_ESTIMATOR,
                 **extra: Any) -> dict[str, Any]:
    """Metadata of a latency table measured on this machine with the FaceNAS protocol (defaults per device type).

    ``extra`` fields (preset, spaces, notes...) are added as they are.
    """
    kind = device_type(device)
    protocol: dict[str, Any] = protocol_defaults(kind)
    protocol.update({k: int(v) for k, v in (("warmup", warmup), ("samples", samples)) if v is not None})
    protocol["trim"] = TRIM
    protocol["estimator"] = estimator
    protocol["timer"] = "time.perf_counter" + (" between torch.cuda.synchronize() calls" if kind == "cuda" else "")
    meta: dict[str, Any] = {"metric": "latency", "unit": "ms", **device_info(kind, threads)}
    meta.update({
        "batch": int(batch or DEFAULT_BATCH[kind]),
        "resolution": resolution,
        "dtype": dtype,
        "memory_format": "channels_last" if channels_last else "contiguous",
        "bn_folded": True,
        "flush_denormal": True,
        "protocol": protocol,
        "calibration": None,
    })
    meta.update(extra)
    return meta
