"""Machine drift: how much faster or slower this machine runs a table's own networks now than when it was profiled.

A table is a snapshot of the machine's speed; a shared machine drifts by tens of percent in an hour. Every
end-to-end check (``tools/latency_report.py``, the sweep, search-quality and runtime benchmarks) re-measures a few of
the whole networks the profiler stored in the table, in the same interleaved rounds as the networks it checks, so
the check can tell "the predictor is wrong" from "the machine changed".
"""
from __future__ import annotations

import statistics
from typing import Any

from models.arch import Arch

#: Name prefix of a re-measured stored network among the networks of a check.
STORED_PREFIX = "stored:"


def stored_networks(table: Any, count: int) -> list[tuple[Arch, float, str]]:
    """Up to ``count`` networks the table stored when it was profiled (fitting ones first), renamed
    ``stored:<name>``, each with its stored latency (ms) and measurement date."""
    records = sorted(table.networks.items(), key=lambda item: item[1]["role"] != "fit")[:count]
    out = []
    for name, record in records:
        arch = Arch.from_dict(record["arch"], f"{table.path}: network {name}")
        arch.name = f"{STORED_PREFIX}{name}"
        out.append((arch, float(record["measured_ms"]), str(record.get("date", ""))))
    return out


def machine_drift(stored: list[tuple[Arch, float, str]], measured: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Median relative change (+ = slower now) of the stored networks' ``measured[name]["measured_ms"]`` against
    their stored latency, with its range; ``None`` without stored networks."""
    if not stored:
        return None
    ratios = sorted(measured[arch.name]["measured_ms"] / ms - 1 for arch, ms, _ in stored)
    return {"n": len(ratios), "drift": statistics.median(ratios), "low": ratios[0], "high": ratios[-1],
            "when": min(date for _, _, date in stored) or "unknown date"}


def describe_drift(drift: dict[str, Any]) -> str:
    """``+7.8% (median; -14.0% .. -4.0%)``: a :func:`machine_drift` result for messages."""
    return f"{100 * drift['drift']:+.1f}% (median; {100 * drift['low']:+.1f}% .. {100 * drift['high']:+.1f}%)"
