"""Calibrating a block table against whole networks measured on the same device.

Isolated blocks run with warm caches and without their neighbours, so the plain sum of a table misses part of a
whole network's latency (on this project's 2-core x86 CPU it under-predicted every one of 30 random networks, by
11-23%). A calibration is a small linear model of that gap, **additive over blocks** so that a network's prediction
stays "fixed part + one cost per edge" (what the budgeted derive of :mod:`nas.derive` needs)::

    predicted = sum over blocks b of  sum_f coef[f] * f(b)   +   coef["network"]

with block features ``f`` (:data:`BLOCK_FEATURES`): ``time`` (the table entry, ms), ``block`` (1: a fixed cost per
block run inside a network), ``io`` (input + output elements of the block in millions: memory traffic that is warm
when a block runs alone) and ``time:<family>`` (the entry again, for one stage family only: that family's scale is
``time + time:<family>``).
``network`` is a per-network constant. The scale-only calibration of earlier tables is ``{"time": scale}`` and the
affine one ``{"time": scale, "network": offset}``: old tables keep working.

:func:`fit_model` fits one feature set by least squares on the relative error; :func:`select_model` tries every
model of :data:`CANDIDATE_MODELS` and keeps the one with the smallest leave-one-out error on the fitting networks,
preferring fewer parameters unless more clearly generalise better. The validation networks are never used for fitting
or choosing. Standard library only apart from ``torch.linalg.lstsq`` (imported when fitting): ``profile_latency.py``
embeds this file and fits on the device.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from latency.accuracy import accuracy
from models.naming import FAMILIES, BlockSpec
from utils.errors import FaceNASError

#: Calibration methods of :func:`fit_calibration` (scale / scale + offset only; kept for reports and old tables).
CALIBRATION_METHODS = ("median", "lsq", "affine")
BLOCK_FEATURES = ("time", "block", "io")
#: Families a calibration may scale separately (on top of ``time``): the stage blocks a search chooses between.
SCALED_FAMILIES = tuple(family for family in FAMILIES if family not in ("Conv", "MaxPool", "Zero"))
#: The models :func:`select_model` chooses from, fewest parameters first.
CANDIDATE_MODELS: dict[str, tuple[str, ...]] = {
    "scale": ("time",),
    "scale+offset": ("time", "network"),
    "scale+per-block": ("time", "block"),
    "scale+traffic": ("time", "io"),
    "scale+per-block+traffic": ("time", "block", "io"),
    "scale+per-block+offset": ("time", "block", "network"),
    "family-scales": ("time", *(f"time:{family}" for family in SCALED_FAMILIES)),
    "family-scales+offset": ("time", *(f"time:{family}" for family in SCALED_FAMILIES), "network"),
    "family-scales+per-block": ("time", "block", *(f"time:{family}" for family in SCALED_FAMILIES)),
}
#: A model with more parameters must beat a simpler one's leave-one-out MAPE by this many points to be chosen.
SIMPLER_MARGIN = 0.25


def block_features(spec: BlockSpec, raw: float, batch: int) -> dict[str, float]:
    """The features of one block (a key with its input tensor) whose table entry is ``raw`` ms."""
    cin, (height, width) = spec.cin or 0, spec.size or (0, 0)
    out_h, out_w = spec.out_size() if spec.size else (0, 0)
    io = batch * (cin * height * width + spec.cout * out_h * out_w) / 1e6
    return {"time": raw, "block": 1.0, "io": io, f"time:{spec.family}": raw}


@dataclass
class Calibration:
    """A fitted calibration: coefficients per feature (see the module docstring) and how it was obtained."""

    coef: dict[str, float]
    model: str = "custom"
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_meta(cls, data: dict[str, Any] | None) -> Calibration | None:
        """Read ``meta.calibration`` (``{"coef": ...}`` or the older ``{"scale", "offset_ms"}``)."""
        if not data:
            return None
        coef = data.get("coef") or {"time": float(data["scale"]), "network": float(data.get("offset_ms", 0.0))}
        return cls({k: float(v) for k, v in coef.items()}, str(data.get("model", "scale+offset")), dict(data))

    @property
    def scale(self) -> float:
        """The multiplier of plain table entries (family models add their own on top of it)."""
        return self.coef.get("time", 1.0)

    @property
    def offset(self) -> float:
        """The per-network constant (ms)."""
        return self.coef.get("network", 0.0)

    def block_cost(self, spec: BlockSpec, raw: float, batch: int) -> float:
        """Calibrated cost of one block whose table entry is ``raw``."""
        if spec.family == "Zero":
            return 0.0
        features = block_features(spec, raw, batch)
        return sum(value * features.get(name, 0.0) for name, value in self.coef.items() if name != "network")

    def to_meta(self) -> dict[str, Any]:
        """The ``meta.calibration`` object: coefficients plus the ``scale`` / ``offset_ms`` older readers use."""
        return {**self.info, "model": self.model, "coef": dict(self.coef), "scale": self.scale,
                "offset_ms": self.offset}


def coef_problem(coef: Any) -> str | None:
    """Why a ``coef`` object is invalid, or ``None``."""
    if not isinstance(coef, dict) or not coef:
        return "'coef' must be an object of feature -> number"
    known = {*BLOCK_FEATURES, "network", *(f"time:{family}" for family in SCALED_FAMILIES)}
    for name, value in coef.items():
        if name not in known:
            return f"unknown calibration feature {name!r} (known: {', '.join(sorted(known))})"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"coefficient {name!r} must be a finite number, not {value!r}"
    return None


# ---------------------------------------------------------------------------------------------------- fitting
def network_features(blocks: list[tuple[BlockSpec, float]], batch: int) -> dict[str, float]:
    """Sum of :func:`block_features` over a network's ``(spec, raw ms)`` blocks, plus ``network`` = 1."""
    total: dict[str, float] = {"network": 1.0}
    for spec, raw in blocks:
        if spec.family == "Zero":
            continue
        for name, value in block_features(spec, raw, batch).items():
            total[name] = total.get(name, 0.0) + value
    return total


def fit_model(features: list[dict[str, float]], measured: list[float], names: tuple[str, ...]) -> dict[str, float]:
    """Least squares on the relative error: minimise sum_i ((x_i . c - m_i) / m_i)^2 over coefficients ``c``.

    Raises:
        FaceNASError: fewer networks than coefficients, or a rank-deficient design (e.g. only one block family).
    """
    import torch

    present = [n for n in names if any(f.get(n, 0.0) for f in features)]
    if len(measured) < len(present) + 1:
        raise FaceNASError(f"{len(measured)} networks cannot fit {len(present)} calibration coefficients")
    rows = torch.tensor([[f.get(n, 0.0) / m for n in present] for f, m in zip(features, measured)],
                        dtype=torch.float64)
    ones = torch.ones(len(measured), 1, dtype=torch.float64)
    if int(torch.linalg.matrix_rank(rows)) < len(present):
        raise FaceNASError("the fitting networks do not tell the calibration's features apart")
    solution = torch.linalg.lstsq(rows, ones).solution[:, 0]
    return {n: float(v) for n, v in zip(present, solution)}


def _predict(coef: dict[str, float], features: dict[str, float]) -> float:
    return sum(value * features.get(name, 0.0) for name, value in coef.items())


def skippable(spec: BlockSpec) -> bool:
    """Whether a search edge could put ``Zero`` in this block's place: it keeps the tensor's shape (stride 1, as many
    output as input channels). Only such blocks are compared with skipping, so only they must keep a positive
    calibrated cost."""
    return spec.family != "Zero" and spec.stride == 1 and spec.cin == spec.cout


def _physical(coef: dict[str, float], blocks: list[dict[str, float]] | None) -> bool:
    """A calibrated block must cost more than skipping it: every block of ``blocks`` (the table's skippable ones, as
    feature dicts) keeps a positive cost. Without the blocks, no per-block coefficient may be negative."""
    if blocks is None:
        return all(value > 0 if name.startswith("time") else value >= 0 for name, value in coef.items()
                   if name != "network")
    terms = {name: value for name, value in coef.items() if name != "network"}
    return all(_predict(terms, block) > 0 for block in blocks)


def select_model(features: list[dict[str, float]], measured: list[float],
                 candidates: dict[str, tuple[str, ...]] | None = None,
                 blocks: list[dict[str, float]] | None = None) -> tuple[Calibration, dict[str, Any]]:
    """Fit every candidate model, score it by leave-one-out on these networks, keep the best that generalises.

    Args:
        features, measured: the fitting networks' :func:`network_features` and measured latencies.
        candidates: models to try (default :data:`CANDIDATE_MODELS`).
        blocks: :func:`block_features` of the table's :func:`skippable` blocks: a model that would give one of them
            a cost <= 0 is rejected (a negative per-block constant is fine where it stays below every such block's
            cost: the per-call overhead a block pays when it runs alone, in ONNX Runtime for one).

    Returns:
        The chosen calibration (fitted on all the networks) and, per candidate, its leave-one-out accuracy
        (``{"loo": accuracy dict, "coef": ...}`` or ``{"error": ...}``).
    """
    candidates = candidates or CANDIDATE_MODELS
    report: dict[str, Any] = {}
    for name, names in candidates.items():
        try:
            coef = fit_model(features, measured, names)
            if not _physical(coef, blocks):
                raise FaceNASError(f"it gives some block a cost <= 0 ({coef})")
            held_out = []
            for i in range(len(measured)):
                rest = [j for j in range(len(measured)) if j != i]
                loo = fit_model([features[j] for j in rest], [measured[j] for j in rest], names)
                held_out.append(_predict(loo, features[i]))
        except FaceNASError as exc:
            report[name] = {"error": str(exc)}
            continue
        report[name] = {"coef": coef, "parameters": len(coef), "loo": accuracy(held_out, measured)}
    usable = [n for n in candidates if "loo" in report[n]]
    if not usable:
        raise FaceNASError("no calibration model could be fitted: " + "; ".join(
            f"{n}: {report[n]['error']}" for n in candidates))
    best = min(usable, key=lambda n: report[n]["loo"]["mape"])
    # the simplest model whose held-out error is within SIMPLER_MARGIN points of the best
    chosen = min((n for n in usable if report[n]["loo"]["mape"] <= report[best]["loo"]["mape"] + SIMPLER_MARGIN),
                 key=lambda n: (report[n]["parameters"], report[n]["loo"]["mape"]))
    coef = report[chosen]["coef"]
    fitted = [_predict(coef, f) for f in features]
    info = {"method": "select", "n": len(measured), "fit": accuracy(fitted, measured),
            "loo": report[chosen]["loo"], "candidates": {n: {k: v for k, v in r.items() if k != "coef"}
                                                         for n, r in report.items()}}
    return Calibration(coef, chosen, info), report


def fit_calibration(predicted: list[float], measured: list[float], method: str = "median") -> tuple[float, float]:
    """A scale (and offset) so that scale x predicted + offset ~ measured, from plain sums only.

    ``median``: scale = median of measured/predicted, no offset; robust to a few networks hit by machine noise.
    ``lsq``: least squares on the relative error, minimising sum((s p_i - m_i) / m_i)^2, which gives
    s = sum(r_i) / sum(r_i^2) with r_i = p_i / m_i. ``affine``: the same least squares with an offset, fitted in
    closed form on the relative error. :func:`select_model` supersedes these for new tables.
    """
    if not predicted:
        raise FaceNASError("no networks to fit the calibration on")
    if method == "median":
        return statistics.median(m / p for p, m in zip(predicted, measured)), 0.0
    ratios = [p / m for p, m in zip(predicted, measured)]
    if method == "lsq":
        return sum(ratios) / sum(r * r for r in ratios), 0.0
    if method == "affine":
        # normal equations of min sum (s*u_i + c*v_i - 1)^2 with u_i = p_i/m_i, v_i = 1/m_i
        inverse = [1.0 / m for m in measured]
        suu = sum(u * u for u in ratios)
        svv = sum(v * v for v in inverse)
        suv = sum(u * v for u, v in zip(ratios, inverse))
        det = suu * svv - suv * suv
        if len(predicted) < 3 or det <= 1e-12 * suu * svv:
            raise FaceNASError("the affine calibration needs at least 3 networks of different sizes")
        scale = (sum(ratios) * svv - sum(inverse) * suv) / det
        offset = (sum(inverse) * suu - sum(ratios) * suv) / det
        if scale <= 0:
            raise FaceNASError(f"the affine fit gave a non-positive scale ({scale:.3f}); use --calibration median")
        return scale, offset
    raise FaceNASError(f"calibration method {method!r} is not one of {', '.join(CALIBRATION_METHODS)}")


def compare_methods(fit: list[dict[str, Any]], validate: list[dict[str, Any]]) -> dict[str, Any]:
    """Every scale/offset method fitted on ``fit`` and scored on ``validate`` (to choose one with evidence)."""
    out: dict[str, Any] = {}
    raw_p = [n["predicted_raw_ms"] for n in fit]
    meas = [n["measured_ms"] for n in fit]
    for method in CALIBRATION_METHODS:
        try:
            scale, offset = fit_calibration(raw_p, meas, method)
        except FaceNASError as exc:
            out[method] = {"error": str(exc)}
            continue
        out[method] = {"scale": scale, "offset_ms": offset, "validation": accuracy(
            [scale * n["predicted_raw_ms"] + offset for n in validate], [n["measured_ms"] for n in validate])}
    return out
