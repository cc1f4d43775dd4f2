"""Analytic costs that need no device (thesis objective 1.2): FLOPs, parameters and activations, and their tables.

Per block, in the training form (BatchNorm not folded):

* ``flops``: counted by ``torch.utils.flop_counter.FlopCounterMode`` (one multiply-add = 2 FLOPs; convolutions and
  matrix products only: BatchNorm, activations, pooling and additions are not counted);
* ``params``: number of parameter elements (BatchNorm affine weights included, running statistics not);
* ``acts``: RegNet's activation count, the number of output elements of every convolution.

:func:`analytic_table` writes these in the latency-table format with ``meta.metric`` = ``flops`` / ``params`` /
``acts`` and values in millions, so a search uses a FLOPs table exactly like a latency table::

    python -m latency.analytic --metric flops --preset rpi4 --out tables/rpi4_flops.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from latency.table_format import METRICS, TableFile
from models.arch import Arch
from models.blocks import build_block
from models.naming import BlockSpec, format_block, parse_block
from models.search_space import PRESETS, get_space, preset_spaces
from utils.errors import FaceNASError, run_cli

__all__ = ["ANALYTIC_METRICS", "analytic_table", "arch_counts", "block_counts", "main", "module_counts"]

ANALYTIC_METRICS = ("flops", "params", "acts")


def module_counts(module: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """FLOPs (FlopCounterMode), parameters and conv output elements ("acts") of one forward of ``module``."""
    module = module.eval()
    acts = 0

    def count_output(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal acts
        acts += output.numel()

    hooks = [m.register_forward_hook(count_output) for m in module.modules() if isinstance(m, nn.Conv2d)]
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            module(torch.randn(input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    params = sum(p.numel() for p in module.parameters())
    return {"flops": int(counter.get_total_flops()), "params": int(params), "acts": int(acts)}


def block_counts(key_or_spec: str | BlockSpec, batch: int = 1) -> dict[str, int]:
    """:func:`module_counts` of one block key (with its input tensor) at ``batch``; ``Zero`` counts nothing."""
    spec = parse_block(key_or_spec) if isinstance(key_or_spec, str) else key_or_spec
    if spec.cin is None or spec.size is None:
        raise FaceNASError(f"block {format_block(spec)!r} lacks its input tensor (_<cin>x<H>x<W>)")
    if spec.family == "Zero":
        return {"flops": 0, "params": 0, "acts": 0}
    return module_counts(build_block(spec), (batch, spec.cin, spec.size[0], spec.size[1]))


def arch_counts(arch: Arch, input_size: int | tuple[int, int], batch: int = 1) -> dict[str, int]:
    """Sum of :func:`block_counts` over every block of ``arch`` (equal to counting the whole backbone)."""
    total = {metric: 0 for metric in ANALYTIC_METRICS}
    cache: dict[str, dict[str, int]] = {}
    for block in arch.resolve(input_size):
        if block.key not in cache:
            cache[block.key] = block_counts(block.key, batch)
        for metric in ANALYTIC_METRICS:
            total[metric] += cache[block.key][metric]
    return total


def analytic_table(metric: str, keys: list[str], resolution: int | None, batch: int = 1,
                   path: str | Path | None = None, **meta: Any) -> TableFile:
    """A table of ``metric`` (flops, params or acts; values in millions) for ``keys``, saved to ``path`` if given.

    An existing file at ``path`` with the same metric, batch and resolution is completed rather than rebuilt.
    """
    if metric not in ANALYTIC_METRICS:
        raise FaceNASError(f"metric {metric!r} is not one of {', '.join(ANALYTIC_METRICS)}")
    full = {"metric": metric, "unit": METRICS[metric][1], "batch": int(batch), "resolution": resolution,
            "counted_with": "torch.utils.flop_counter.FlopCounterMode" if metric == "flops" else "module walk",
            "torch_version": torch.__version__, **meta}
    if path is not None and Path(path).exists():
        table = TableFile.open_or_create(path, **full)
    else:
        table = TableFile.create(None, **full)
        table.path = None if path is None else Path(path)
    for key in table.missing(keys):
        table.add(key, {"value": block_counts(key, batch)[metric] / 1e6})
    if table.path is not None:
        table.save()
    return table


def main(argv: list[str] | None = None) -> None:
    """``python -m latency.analytic``: write an analytic (FLOPs / params / acts) table for a preset or spaces."""
    parser = argparse.ArgumentParser(
        prog="python -m latency.analytic",
        description="Write a FLOPs, parameter or activation-count table in the latency-table format (no device "
                    "needed); a search can use it as its constraint instead of a latency table.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--metric", choices=ANALYTIC_METRICS, default="flops", help="what to count")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="every experiment space of this preset (and _HS)")
    parser.add_argument("--space", action="append", default=[], metavar="NAME",
                        help="an experiment space (R5, TT3_HS, ...) or a space .json file; repeatable")
    parser.add_argument("--resolution", type=int, default=None,
                        help="input side; default: the preset's latency resolution, else 640")
    parser.add_argument("--batch", type=int, default=1, help="batch of the counted input")
    parser.add_argument("--out", required=True, help="table file to write (completed if it exists)")
    args = parser.parse_args(argv)
    spaces = [get_space(name) for name in args.space]
    if args.preset:
        spaces += preset_spaces(args.preset)
    if not spaces:
        parser.error("give --preset or --space")
    resolution = args.resolution or (PRESETS[args.preset]["latency_size"] if args.preset else 640)
    keys = list(dict.fromkeys(k for space in spaces for k in space.latency_keys(resolution)))
    table = analytic_table(args.metric, keys, resolution, args.batch, args.out, preset=args.preset,
                           spaces=[s.name for s in spaces])
    print(f"{args.out}: {len(table)} entries ({table.unit})", file=sys.stderr)


if __name__ == "__main__":
    run_cli(main)
