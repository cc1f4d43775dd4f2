"""Paths for one weight step: a single sampled path, or the sandwich rule (BigNAS, OFA).

The sandwich rule trains, at every weight step, the largest path of the space, the smallest one and ``n_random``
sampled paths, accumulating their gradients before one optimizer step. The largest and smallest paths bound every
other network, so training them each step keeps the shared heads and early layers good for the whole latency range,
and the largest path can teach the others (:mod:`nas.distill`). "Largest" and "smallest" are by the search's cost
table (the candidate of highest and lowest cost per edge; Zero is the smallest where allowed), so they mean the
slowest and the fastest network on the device being searched for.
"""
from __future__ import annotations

import torch

from latency.predict import EdgeCosts
from nas.supernet import SampledPath, SuperNet


def extreme_choices(costs: EdgeCosts) -> tuple[list[int], list[int]]:
    """The largest and the smallest network of the space as candidate indices per edge (ties: the first)."""
    largest = [max(range(len(c)), key=lambda i, c=c: (c[i], -i)) for c in costs.edges]
    smallest = [min(range(len(c)), key=lambda i, c=c: (c[i], i)) for c in costs.edges]
    return largest, smallest


def fixed_path(choices: list[int]) -> list[SampledPath]:
    """A path that runs ``choices[i]`` on edge ``i`` (weights mode: no other candidate involved)."""
    return [(int(c), (int(c),)) for c in choices]


def weight_step_paths(net: SuperNet, costs: EdgeCosts, kind: str, generator: torch.Generator, sandwich: bool,
                      n_random: int) -> list[list[SampledPath]]:
    """The paths one weight step trains, in order.

    Args:
        net: the supernet.
        costs: the search's cost table (defines largest and smallest).
        kind: how the sampled paths are drawn: ``uniform`` (warm-up) or ``weights`` (from p, search epochs).
        generator: the searcher's checkpointed generator.
        sandwich: the sandwich rule; otherwise one sampled path.
        n_random: sampled paths besides the largest and the smallest (sandwich only, >= 0).

    Returns:
        ``[path]`` without the sandwich rule, else ``[largest, smallest, *n_random sampled]`` (largest first, so
        that it can be the teacher of the others).
    """
    if not sandwich:
        return [net.sample_paths(kind, generator)]
    if n_random < 0:
        raise ValueError(f"n_random must be >= 0, got {n_random}")
    largest, smallest = extreme_choices(costs)
    return [fixed_path(largest), fixed_path(smallest), *(net.sample_paths(kind, generator) for _ in range(n_random))]
