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

from latency.accuracy import accuracy
from latency.calibration import block_features, network_features, select_model, skippable
from models.arch import Arch
from models.naming import parse_block
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


# ------------------------------------------------------------------------------------------------ calibration
def arch_features(arch: Arch, table: Any) -> dict[str, float]:
    """The calibration features of a whole network from the table's plain entries (:mod:`latency.calibration`)."""
    blocks = [(block.spec, table.value(block.key)) for block in arch.resolve(table.input_size)]
    return network_features(blocks, table.batch)


def fit_table_calibration(table: Any, fit: list[tuple[Arch, float]],
                          validate: list[tuple[Arch, float]] = ()) -> dict[str, Any]:
    """Choose and fit the table's calibration on ``fit`` networks ``(arch, measured ms)``, score it on ``validate``
    (never used to fit or choose), store it in ``table.meta`` (call ``table.save()``) and return a summary.

    Raises:
        FaceNASError: too few networks, or blocks missing from the table.
    """
    if len(fit) < 3:
        raise FaceNASError(f"{table.path}: a calibration needs at least 3 measured fitting networks, not {len(fit)}")
    table.meta["calibration"] = None  # fit on the plain entries
    features = [arch_features(arch, table) for arch, _ in fit]
    # only a block an edge may replace by Zero must stay dearer than nothing; a stride or channel-changing block is in
    # every network of its edge, so its calibrated share may be <= 0 (the per-call overhead of timing it alone)
    specs = [(parse_block(key), key) for key in table.keys()]
    blocks = [block_features(spec, table.value(key), table.batch) for spec, key in specs if skippable(spec)]
    calibration, _ = select_model(features, [ms for _, ms in fit], blocks=blocks)
    plain = accuracy([predict_latency(a, table, calibrated=False) for a, _ in fit], [ms for _, ms in fit])
    info: dict[str, Any] = {"n_fit": len(fit), "n_validate": len(validate), "fit_plain": plain,
                            "estimator": getattr(table, "estimator", "")}
    table.set_calibration(calibration, **info)
    if validate:
        measured = [ms for _, ms in validate]
        table.meta["calibration"]["validation"] = accuracy([predict_latency(a, table) for a, _ in validate], measured)
        table.meta["calibration"]["validation_plain"] = accuracy(
            [predict_latency(a, table, calibrated=False) for a, _ in validate], measured)
    return table.meta["calibration"]


def calibrate_from_networks(table: Any) -> dict[str, Any] | None:
    """:func:`fit_table_calibration` on the whole networks stored in the table (its ``fit`` and ``validate``
    roles); ``None`` (and the table unchanged) when fewer than 3 fitting networks are stored."""
    def measured(role: str) -> list[tuple[Arch, float]]:
        return [(Arch.from_dict(r["arch"], f"{table.path}: network {name}"), r["measured_ms"])
                for name, r in table.networks.items() if r["role"] == role]

    fit = measured("fit")
    return fit_table_calibration(table, fit, measured("validate")) if len(fit) >= 3 else None


def describe_calibration(calibration: dict[str, Any] | None) -> str:
    """One line saying what a stored calibration is and how good it was, for logs and warnings."""
    if not calibration:
        return "no calibration (plain sums of block entries)"
    coef = calibration.get("coef") or {"time": calibration["scale"], "network": calibration.get("offset_ms", 0.0)}
    terms = ", ".join(f"{name} {value:.4g}" for name, value in coef.items())
    text = f"calibration {calibration.get('model', 'scale+offset')} ({terms})"
    for label, key in (("fit", "fit"), ("held-out", "validation")):
        acc = calibration.get(key)
        if isinstance(acc, dict) and acc.get("n"):
            text += (f"; {label}: {acc['n']} networks, MAPE {acc['mape']:.1f}%, {acc['within10']:.0f}% within 10%")
    return text
