"""The latency predictor: a backbone's cost from a block table (SPEC section 7, thesis 3.6).

A network's predicted latency is the table's calibration applied to the entries of every block it runs, fixed parts
included, each keyed with its input tensor at the table's resolution. :func:`edge_costs` gives every candidate of
every MixedEdge of a space its cost: every non-first edge of a stage keeps its tensor shape, so a network's cost is
exactly the fixed part plus one entry per edge (:class:`EdgeCosts`). Analytic tables (FLOPs, parameters,
activations; :mod:`latency.analytic`) work the same way, never calibrated. Standard library only (plus project
files): ``profile_latency.py`` embeds it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.arch import Arch
from models.search_space import SearchSpace
from utils.errors import FaceNASError


def arch_keys(arch: Arch, input_size: int | tuple[int, int]) -> list[tuple[str, str]]:
    """``(where, key)`` of every block of ``arch`` in forward order at ``input_size`` (repeats kept)."""
    return [(block.where, block.key) for block in arch.resolve(input_size)]


def predict_latency(arch: Arch, table: Any, calibrated: bool = True, measure_missing: bool = False) -> float:
    """Predicted backbone cost of ``arch``: the table's calibration applied to the sum of its block entries.

    Args:
        arch: the architecture (blocks are placed at the table's resolution).
        table: a :class:`~latency.table_format.TableFile`: latency (ms) or analytic (millions of FLOPs / params /
            acts).
        calibrated: apply the table's calibration (latency tables only; the plain sum when it has none).
        measure_missing: internal mode (thesis 3.6.1): measure missing blocks on this machine first and save them
            into the table (needs a :class:`~latency.internal_mode.LatencyTable` measured on this machine).

    Raises:
        FaceNASError: a block has no entry (and ``measure_missing`` is off).
    """
    if measure_missing:
        if not hasattr(table, "measure_missing"):
            raise FaceNASError("internal mode needs a LatencyTable (load the table with LatencyTable.load)")
        table.measure_missing([key for _, key in arch_keys(arch, table.input_size)], progress=False)
    keys = [key for _, key in arch_keys(arch, table.input_size)]
    if not calibrated:
        return sum(table.value(key) for key in keys)
    return sum(table.latency(key) for key in keys) + table.offset_ms


@dataclass
class EdgeCosts:
    """Per-candidate costs of every MixedEdge of a space and of its fixed part, in the table's unit.

    Attributes:
        fixed: cost of the parts every network of the space runs (first conv, pre-stage, MaxPool, last conv) plus
            the calibration's per-network offset.
        edges: one list of candidate costs per edge, in the space's candidate order (``Zero`` costs 0).
        unit: the table's unit (``ms`` for latency).
        keys: the table key of every candidate (``None`` for Zero), parallel to ``edges``.
    """

    fixed: float
    edges: list[list[float]]
    unit: str = "ms"
    keys: list[list[str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # accept tensors or any sequence of numbers: the search hands lists of floats around
        self.edges = [[float(v) for v in costs] for costs in self.edges]

    @property
    def smallest(self) -> float:
        """Cost of the cheapest network of the space (Zero where allowed)."""
        return self.fixed + sum(min(c) for c in self.edges)

    @property
    def largest(self) -> float:
        """Cost of the most expensive network of the space."""
        return self.fixed + sum(max(c) for c in self.edges)

    def of_paths(self, choices: list[int]) -> float:
        """Cost of the network that takes candidate ``choices[i]`` on edge i."""
        return self.fixed + sum(c[k] for c, k in zip(self.edges, choices))


def edge_costs(space: SearchSpace, table: Any, measure_missing: bool = False) -> EdgeCosts:
    """Look every key of ``space`` up in ``table`` (measuring missing ones first when ``measure_missing``).

    The calibration is applied per entry and its per-network offset goes to the fixed part, so
    :meth:`EdgeCosts.of_paths` equals :func:`predict_latency` of the same network.
    """
    fixed_keys, edge_keys = space.keys(table.input_size)
    if measure_missing:
        wanted = fixed_keys + [k for keys in edge_keys for k in keys if k is not None]
        missing = table.missing(list(dict.fromkeys(wanted)))
        if missing:
            table.measure_missing(missing)
    fixed = sum(table.latency(k) for k in fixed_keys) + table.offset_ms
    costs = [[0.0 if k is None else table.latency(k) for k in keys] for keys in edge_keys]
    return EdgeCosts(fixed, costs, table.unit, edge_keys)
