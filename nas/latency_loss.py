"""Expected latency of the supernet and the latency losses (thesis 3.4.2, formulas 8-12).

The constraint comes from the per-candidate costs of :func:`latency.predict.edge_costs`: measured latency in ms from
a calibrated table, or an analytic FLOPs / parameters / activations table; the maths is the same.

Expected latency (formula 12), per edge i with active candidate a and path probabilities p::

    weighted_i = sum_j p_j * lat_j,   active_i = p_a * lat_a,   E_i = p1 * weighted_i + (1 - p1) * active_i

with Zero costing 0; ``p1 = 1`` gives formula 11. ``E = sum_i E_i + fixed`` where ``fixed`` covers the first conv,
the pre-stage block, the MaxPool and the last conv, so that E and the target both mean the whole backbone.

Latency loss, ``T`` the target: ``abs`` (formula 10, default) ``|lambda (E - T) / T|``; ``proxyless`` (formula 8)
``lambda (E - T) / T``; ``hinge`` (formula 9) ``max(lambda (E - T) / T, 0)``.
"""
from __future__ import annotations

import torch

from latency.predict import EdgeCosts
from nas.supernet import SuperNet

LOSS_FORMS = ("abs", "proxyless", "hinge")


def expected_latency(net: SuperNet, costs: EdgeCosts, p1: float = 0.5, use_paths: bool = True) -> torch.Tensor:
    """Formula 12 (formula 11 when ``p1 == 1``), differentiable in the alphas.

    Args:
        net: the supernet, with this step's paths set.
        costs: per-edge candidate costs.
        p1: weight of the probability-weighted term (thesis best: 0.5).
        use_paths: use this step's path probabilities (renormalised over the sampled pair in two-path mode) and
            active candidates; False uses the full softmax and the argmax as "active" (for reporting).
    """
    device = net.edges[0].alpha.device
    total = torch.zeros((), device=device)
    for edge, values in zip(net.edges, costs.edges):
        lat = torch.tensor(values, dtype=torch.float32, device=device)
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
