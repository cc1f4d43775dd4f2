"""Backbone cost from block tables: predicted latency, and analytic FLOPs / parameter / activation tables.

Prediction (SPEC section 7, thesis 3.6): the predicted latency of an architecture is the sum of the table entries of
every block it runs, fixed parts included (first conv, pre-stage, MaxPool, last conv), each keyed with its input
tensor at the table's resolution (:meth:`models.arch.Arch.resolve`), times the table's calibration scale, plus the
calibration's per-network offset when an affine calibration was fitted.

Analytic constraints (thesis objective 1.2) need no device. Per block, in the training form (BatchNorm not folded):

* ``flops``: counted by ``torch.utils.flop_counter.FlopCounterMode`` (one multiply-add = 2 FLOPs; convolutions and
  matrix products only: BatchNorm, activations, pooling and additions are not counted);
* ``params``: number of parameter elements (BatchNorm affine weights included, running statistics not);
* ``acts``: RegNet's activation count, the number of output elements of every convolution.

``analytic_table`` writes these in the latency-table format with ``meta.metric`` = ``flops`` / ``params`` / ``acts``
and values in millions, so a search uses a FLOPs table exactly like a latency table. The command line builds one::

    python -m nas.cost --metric flops --preset rpi4 --out tables/rpi4_flops.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.arch import Arch
from models.blocks import build_block
from models.naming import BlockSpec, format_block, parse_block
from nas.latency_table import LatencyTable
from nas.table_file import METRICS, TableFile
from utils.errors import FaceNASError, run_cli

__all__ = ["ANALYTIC_METRICS", "analytic_table", "arch_counts", "arch_keys", "block_counts", "module_counts",
           "predict_breakdown", "predict_latency"]

ANALYTIC_METRICS = ("flops", "params", "acts")


def arch_keys(arch: Arch, input_size: int | tuple[int, int]) -> list[tuple[str, str]]:
    """``(where, key)`` of every block of ``arch`` in forward order at ``input_size`` (repeats kept)."""
    return [(block.where, block.key) for block in arch.resolve(input_size)]


def predict_breakdown(arch: Arch, table: TableFile, calibrated: bool = True) -> list[tuple[str, str, float]]:
    """``(where, key, value)`` per block of ``arch`` from ``table`` (see :func:`predict_latency`)."""
    return [(where, key, table.latency(key, calibrated)) for where, key in arch_keys(arch, table.input_size)]


def predict_latency(arch: Arch, table: TableFile, calibrated: bool = True, measure_missing: bool = False) -> float:
    """Predicted backbone cost of ``arch``: the sum of its block entries, fixed parts included.

    Args:
        arch: the architecture (blocks are placed at the table's resolution).
        table: a latency table (ms) or an analytic one (millions of FLOPs / params / acts).
        calibrated: apply the table's calibration: scale x sum + offset (latency tables only; 1.0 and 0 when none).
        measure_missing: internal mode (thesis 3.6.1): measure missing blocks on this machine first and save them
            into the table (needs a :class:`~nas.latency_table.LatencyTable` measured on this machine).

    Raises:
        FaceNASError: a block has no entry (and ``measure_missing`` is off).
    """
    if measure_missing:
        if not isinstance(table, LatencyTable):
            raise FaceNASError("internal mode needs a LatencyTable (load the table with LatencyTable.load)")
        table.measure_missing([key for _, key in arch_keys(arch, table.input_size)], progress=False)
    total = sum(value for _, _, value in predict_breakdown(arch, table, calibrated))
    return total + (table.offset_ms if calibrated else 0.0)


# ------------------------------------------------------------------------------------------------ analytic
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
    for _, key in arch_keys(arch, input_size):
        if key not in cache:
            cache[key] = block_counts(key, batch)
        for metric in ANALYTIC_METRICS:
            total[metric] += cache[key][metric]
    return total


def analytic_table(metric: str, keys: list[str], resolution: int | None, batch: int = 1,
                   path: str | Path | None = None, **meta: Any) -> LatencyTable:
    """A table of ``metric`` (flops, params or acts; values in millions) for ``keys``, saved to ``path`` if given.

    An existing file at ``path`` with the same metric, batch and resolution is completed rather than rebuilt.
    """
    if metric not in ANALYTIC_METRICS:
        raise FaceNASError(f"metric {metric!r} is not one of {', '.join(ANALYTIC_METRICS)}")
    full = {"metric": metric, "unit": METRICS[metric][1], "batch": int(batch), "resolution": resolution,
            "counted_with": "torch.utils.flop_counter.FlopCounterMode" if metric == "flops" else "module walk",
            "torch_version": torch.__version__, **meta}
    if path is not None and Path(path).exists():
        table = LatencyTable.open_or_create(path, **full)
    else:
        table = LatencyTable.create(None, **full)
        table.path = None if path is None else Path(path)
    cache: dict[str, dict[str, int]] = {}
    for key in table.missing(keys):
        cache[key] = block_counts(key, batch)
        table.add(key, {"value": cache[key][metric] / 1e6})
    if table.path is not None:
        table.save()
    return table


def main(argv: list[str] | None = None) -> None:
    """``python -m nas.cost``: write an analytic (FLOPs / params / acts) table for a preset or spaces."""
    from nas.random_arch import space_by_name
    from nas.spaces import PRESETS, preset_spaces

    parser = argparse.ArgumentParser(
        prog="python -m nas.cost",
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
    spaces = [space_by_name(name) for name in args.space]
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
