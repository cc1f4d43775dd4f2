"""The derive: from the searched probabilities to one network, on the latency budget (issue 10; TF-NAS's lesson).

ProxylessNAS derives the argmax of every edge; the latency loss only steers the *expected* latency, so the argmax
network can land far from the target (here 1 of 5 CPU targets within 5%). FaceNAS instead solves, exactly, for the
most probable network whose predicted latency lies within ``tolerance`` of the target::

    maximise  sum_i log p_i(c_i)   subject to   |fixed + sum_i cost_i(c_i) - T| <= tolerance * T

Every non-first edge of a stage keeps its tensor shape, so a network's predicted latency is exactly that sum
(:class:`latency.predict.EdgeCosts`, calibration included): a multiple-choice knapsack. It is solved by dynamic
programming over a grid of latency steps of ``tolerance * T / (4 * edges)`` (the rounding of all edges together then
moves a sum by at most an eighth of the tolerance), keeping the most probable choice for every reachable grid
total; the totals nearest the window are then checked with their exact sums. When the target lies outside the
space's reachable range, or no network fits the window, the network closest to the target (up to the grid step;
the most probable among equally close ones) is taken and the result says so. FLOPs / parameter / activation tables
use the same derive.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from latency.predict import EdgeCosts
from utils.errors import FaceNASError

DERIVE_METHODS = ("budget", "argmax")
#: Upper bound on the number of grid totals (the step grows beyond it; wide spaces with tiny tolerances only).
MAX_GRID = 400_000


@dataclass
class Derived:
    """One derived choice of candidates and what it costs.

    Attributes:
        choices: candidate index per edge.
        predicted: predicted cost of that network (the table's unit).
        log_prob: sum over edges of log p of the chosen candidates.
        status: ``within`` (inside the tolerance window), ``closest`` (no network fits the window; the closest one),
            ``below_range`` / ``above_range`` (the target lies outside what the space can reach), or ``argmax``.
        message: one sentence for the log when the status is not ``within`` or ``argmax``.
    """

    choices: list[int]
    predicted: float
    log_prob: float
    status: str
    message: str = ""

    def to_meta(self) -> dict:
        return asdict(self)


def log_probabilities(probabilities: list[list[float]]) -> list[list[float]]:
    """Natural logs of per-edge probabilities (a probability of 0 becomes -inf: never chosen unless forced)."""
    return [[math.log(p) if p > 0 else -math.inf for p in edge] for edge in probabilities]


def argmax_derive(log_probs: list[list[float]], costs: EdgeCosts) -> Derived:
    """ProxylessNAS's derive: the most probable candidate of every edge, whatever it costs."""
    choices = [int(np.argmax(edge)) for edge in log_probs]
    return Derived(choices, costs.of_paths(choices), _log_prob(log_probs, choices), "argmax")


def budget_derive(log_probs: list[list[float]], costs: EdgeCosts, target: float, tolerance: float = 0.02) -> Derived:
    """The most probable network whose predicted cost is within ``tolerance`` (relative) of ``target``.

    Args:
        log_probs: log-probability of every candidate of every edge (same shape as ``costs.edges``).
        costs: per-candidate costs and the fixed part.
        target: the target cost (e.g. ms), > 0.
        tolerance: relative half-width of the window, e.g. 0.02 for +-2%.

    Raises:
        FaceNASError: mismatched shapes, a non-positive target or a negative tolerance.
    """
    if len(log_probs) != len(costs.edges) or any(len(a) != len(b) for a, b in zip(log_probs, costs.edges)):
        raise FaceNASError("the derive needs one log-probability per candidate cost")
    if not (target > 0 and math.isfinite(target)) or not (tolerance >= 0 and math.isfinite(tolerance)):
        raise FaceNASError(f"the derive needs a positive target and a tolerance >= 0 (got {target}, {tolerance})")
    low, high = target * (1 - tolerance), target * (1 + tolerance)
    n = max(len(costs.edges), 1)
    floors = [min(edge) for edge in costs.edges]
    base = costs.fixed + sum(floors)
    extra = [[c - f for c in edge] for edge, f in zip(costs.edges, floors)]
    span = sum(max(edge) for edge in extra)
    step = max(tolerance, 1e-4) * target / (4 * n)
    step = max(step, span / MAX_GRID) if span > 0 else 1.0
    units = [np.rint(np.asarray(edge) / step).astype(np.int64) for edge in extra]
    best, parents = _knapsack(log_probs, units)
    reachable = np.flatnonzero(best > -np.inf)
    approx = base + reachable * step
    slack = n * step / 2  # the largest rounding error of a grid total

    # 1) inside the window, most probable first; every exact sum is checked
    inside = reachable[(approx >= low - slack) & (approx <= high + slack)]
    for total in inside[np.argsort(-best[inside], kind="stable")]:
        choices = _trace(parents, units, int(total))
        predicted = costs.of_paths(choices)
        if low <= predicted <= high:
            return Derived(choices, predicted, _log_prob(log_probs, choices), "within")
    # 2) nothing fits: the closest network (exact sums of the grid totals nearest the target)
    nearest = reachable[np.argsort(np.abs(approx - target), kind="stable")[:8]]
    options = [_trace(parents, units, int(total)) for total in nearest]
    choices = min(options, key=lambda c: (abs(costs.of_paths(c) - target), -_log_prob(log_probs, c)))
    predicted = costs.of_paths(choices)
    if target < costs.smallest:
        status, why = "below_range", f"the target is below the smallest network of the space ({costs.smallest:.4g})"
    elif target > costs.largest:
        status, why = "above_range", f"the target is above the largest network of the space ({costs.largest:.4g})"
    else:
        status, why = "closest", f"no network of the space lies within +-{100 * tolerance:g}% of the target"
    message = (f"{why}; took the closest network, {predicted:.4g} ({100 * (predicted / target - 1):+.1f}% of the "
               f"target {target:g})")
    return Derived(choices, predicted, _log_prob(log_probs, choices), status, message)


def _knapsack(log_probs: list[list[float]], units: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Best log-probability for every reachable total of grid units, and the choice of every edge per total."""
    best = np.zeros(1)
    parents = []
    for lp, cost in zip(log_probs, units):
        size = best.size + int(cost.max())
        new = np.full(size, -np.inf)
        pick = np.full(size, -1, dtype=np.int32)
        for j, (value, shift) in enumerate(zip(lp, cost)):
            candidate = np.full(size, -np.inf)
            candidate[shift:shift + best.size] = best + value
            better = candidate > new
            new[better], pick[better] = candidate[better], j
        best = new
        parents.append(pick)
    return best, parents


def _trace(parents: list[np.ndarray], units: list[np.ndarray], total: int) -> list[int]:
    """The choices that reach grid ``total`` in :func:`_knapsack`, last edge first."""
    choices = []
    for pick, cost in zip(reversed(parents), reversed(units)):
        j = int(pick[total])
        choices.append(j)
        total -= int(cost[j])
    return choices[::-1]


def _log_prob(log_probs: list[list[float]], choices: list[int]) -> float:
    return float(sum(edge[c] for edge, c in zip(log_probs, choices)))


def differing_edges(a: list[int], b: list[int], where: list[str]) -> list[str]:
    """The edges (``stages.s.b``) where two derives choose differently."""
    return [w for w, x, y in zip(where, a, b) if x != y]
