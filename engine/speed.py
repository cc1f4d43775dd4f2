"""Step-speed settings shared by training and the search: memory format, mixed precision, compilation.

Measured on this project's CPU (BENCHMARKS.md section J, ``bench/bench_step.py``): channels-last memory format is
1.2-1.3x faster for a RetinaFace training step and a supernet step (oneDNN convolutions prefer NHWC) and changes
results only by floating-point rounding, so it is on by default; bfloat16 autocast on a CPU with native bfloat16
(AVX512-BF16 or AMX) adds another ~1.3-1.4x (1.6-1.8x in all) but rounds activations to 8 bits of mantissa, so
it stays opt-in (``--amp`` on a CPU) until its effect on accuracy is measured; ``torch.compile`` of a fixed network
gains 0-5% after 4-20 s of compiling and is opt-in for ``train.py`` only (a supernet changes path every step and
would recompile).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def autocast_dtype(device: torch.device | str) -> torch.dtype:
    """The autocast dtype of ``--amp`` on a device: float16 (with a gradient scaler) on CUDA, bfloat16 on a CPU."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.bfloat16


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (x86 AVX512-BF16 or AMX-BF16, Arm BF16), read from the CPU flags
    that Linux reports; elsewhere (or unknown) bfloat16 autocast is emulated and usually slower than float32."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def use_channels_last(model: nn.Module, enabled: bool) -> nn.Module:
    """Put a model's 4-D weights in channels-last layout (in place; returns the model). Values are unchanged, and
    so are state-dict keys: a checkpoint loads into either layout."""
    if enabled:
        model.to(memory_format=torch.channels_last)
    return model


def images_in_format(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A batch of images in the layout the model's weights use (a no-op when it already is)."""
    if channels_last and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images


def describe_speed(channels_last: bool, amp: bool, device: torch.device | str, compiled: bool = False) -> str:
    """One log line of the speed settings, e.g. ``channels-last, bfloat16 autocast``."""
    parts = ["channels-last" if channels_last else "NCHW"]
    if amp:
        parts.append(f"{str(autocast_dtype(device)).removeprefix('torch.')} autocast")
        if torch.device(device).type == "cpu" and not cpu_has_native_bf16():
            parts.append("(this CPU emulates bfloat16: expect it slower than float32)")
    else:
        parts.append("float32")
    if compiled:
        parts.append("torch.compile")
    return ", ".join(parts)
