"""How close predicted latencies are to measured ones: MAPE, shares within 5% / 10%, bias, largest error, Spearman.

Standard library only, so ``profile_latency.py`` can report its own calibration on a device that has only PyTorch;
hence the hand-written rank correlation, which matches ``scipy.stats.spearmanr`` (average ranks; a test checks it).
"""
from __future__ import annotations

import math
import statistics
from typing import Any


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            out[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's rank correlation of two equally long lists (``None`` below 3 values or without spread)."""
    if len(a) != len(b) or len(a) < 3:
        return None
    ra, rb = ranks(a), ranks(b)
    mean_a, mean_b = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - mean_a) * (y - mean_b) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - mean_a) ** 2 for x in ra) * sum((y - mean_b) ** 2 for y in rb))
    return None if var == 0 else cov / var


def accuracy(predicted: list[float], measured: list[float]) -> dict[str, Any]:
    """MAPE (%), shares within 5% / 10% (%), Spearman, mean signed error (%), largest error (%) and count."""
    n = len(predicted)
    if n == 0:
        return {"n": 0}
    errors = [(p - m) / m * 100.0 for p, m in zip(predicted, measured)]
    return {
        "n": n,
        "mape": sum(abs(e) for e in errors) / n,
        "within5": 100.0 * sum(abs(e) <= 5 for e in errors) / n,
        "within10": 100.0 * sum(abs(e) <= 10 for e in errors) / n,
        "spearman": spearman(predicted, measured),
        "bias": sum(errors) / n,
        "max_abs": max(abs(e) for e in errors),
    }


def summarize_groups(nets: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy before (raw) and after (calibrated) calibration per group and over every validation network."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for net in nets:
        groups.setdefault(net["group"], []).append(net)
    groups["all_validation"] = [n for n in nets if n["role"] == "validate"]
    out = {}
    for name, members in groups.items():
        if not members:
            continue
        meas = [n["measured_ms"] for n in members]
        out[name] = {
            "raw": accuracy([n["predicted_raw_ms"] for n in members], meas),
            "calibrated": accuracy([n["predicted_ms"] for n in members], meas),
            "median_spread": statistics.median(n["spread"] for n in members),
        }
    return out
