"""Expected latency of the supernet and the latency losses (thesis 3.4.2, formulas 8-12).

The constraint comes from any table with the :class:`~nas.latency_table.LatencyTable` interface: measured latency
in ms, or an analytic FLOPs / parameters / activations table (``nas.cost``); the maths is the same.

Expected latency (formula 12), per edge i with active candidate a and path probabilities p::

    weighted_i = sum_j p_j * lat_j,   active_i = p_a * lat_a,   E_i = p1 * weighted_i + (1 - p1) * active_i

with Zero costing 0; ``p1 = 1`` gives formula 11. ``E = sum_i E_i + fixed`` where ``fixed`` covers the first conv,
the pre-stage block, the MaxPool and the last conv, so that E and the target both mean the whole backbone.

Latency loss, ``T`` the target: ``abs`` (formula 10, default) ``|lambda (E - T) / T|``; ``proxyless`` (formula 8)
``lambda (E - T) / T``; ``hinge`` (formula 9) ``max(lambda (E - T) / T, 0)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models.naming import format_block
from nas.spaces import SearchSpace
from nas.supernet import SuperNet

LOSS_FORMS = ("abs", "proxyless", "hinge")


@dataclass
class EdgeCosts:
    """Per-candidate costs of every edge and the fixed part, in the table's unit (ms for latency)."""

    fixed: float
    edges: list[torch.Tensor]
    unit: str = "ms"

    @property
    def smallest(self) -> float:
        """Cost of the cheapest network of the space (Zero where allowed)."""
        return self.fixed + sum(float(c.min()) for c in self.edges)

    @property
    def largest(self) -> float:
        return self.fixed + sum(float(c.max()) for c in self.edges)

    def of_paths(self, choices: list[int]) -> float:
        """Cost of the network that takes candidate ``choices[i]`` on edge i."""
        return self.fixed + sum(float(c[k]) for c, k in zip(self.edges, choices))


def space_keys(space: SearchSpace, input_size: int) -> tuple[list[str], list[list[str | None]]]:
    """Table keys of the fixed parts and of every edge's candidates (None for Zero) at a resolution."""
    fixed, edges = space.placed(input_size)
    fixed_keys = [format_block(spec) for _, spec in fixed]
    edge_keys = [[None if c.family == "Zero" else format_block(c) for c in candidates] for candidates in edges]
    return fixed_keys, edge_keys


def edge_costs(space: SearchSpace, table, measure_missing: bool = False) -> EdgeCosts:
    """Look every key of the space up in ``table`` (measuring missing ones first when ``measure_missing``)."""
    fixed_keys, edge_keys = space_keys(space, table.input_size)
    if measure_missing:
        wanted = fixed_keys + [k for keys in edge_keys for k in keys if k is not None]
        missing = table.missing(list(dict.fromkeys(wanted)))
        if missing:
            table.measure_missing(missing)
    # a calibrated table may carry a per-network offset (affine calibration): it belongs to the fixed part, once
    fixed = sum(table.latency(k) for k in fixed_keys) + float(getattr(table, "offset_ms", 0.0) or 0.0)
    costs = [torch.tensor([0.0 if k is None else table.latency(k) for k in keys]) for keys in edge_keys]
    return EdgeCosts(fixed, costs, getattr(table, "unit", "ms"))


def expected_latency(net: SuperNet, costs: EdgeCosts, p1: float = 0.5, use_paths: bool = True) -> torch.Tensor:
    """Formula 12 (formula 11 when ``p1 == 1``), differentiable in the alphas.

    Args:
        net: the supernet, with this step's paths set.
        costs: per-edge candidate costs.
        p1: weight of the probability-weighted term (thesis best: 0.5).
        use_paths: use this step's path probabilities (renormalised over the sampled pair in two-path mode) and
            active candidates; False uses the full softmax and the argmax as "active" (for reporting).
    """
    total = torch.zeros((), device=net.edges[0].alpha.device)
    for edge, lat in zip(net.edges, costs.edges):
        lat = lat.to(edge.alpha.device)
        probs = edge.path_probs() if use_paths else edge.probs
        active = edge.active if use_paths else edge.argmax()
        weighted = (probs * lat).sum()
        total = total + p1 * weighted + (1.0 - p1) * probs[active] * lat[active]
    return total + costs.fixed


def latency_loss(expected: torch.Tensor, target: float, lam: float, form: str = "abs") -> torch.Tensor:
    """The latency loss of formula 10 (``abs``), 8 (``proxyless``) or 9 (``hinge``)."""
    relative = lam * (expected - target) / target
    if form == "abs":
        return relative.abs()
    if form == "proxyless":
        return relative
    if form == "hinge":
        return relative.clamp_min(0.0)
    raise ValueError(f"unknown latency loss form {form!r}; use one of {', '.join(LOSS_FORMS)}")
