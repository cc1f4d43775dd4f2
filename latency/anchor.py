"""Drift anchor: one reference block re-timed before every block of a profiling pass, so that a change of the
device's speed *during* the pass is divided out of the table.

Why: a pass over the ``rpi4`` preset in ONNX Runtime takes one to two minutes here (each block is exported and
loaded into its own session), and the blocks are measured family by family. Comparing two profiles block by block,
the ratio between them drifted smoothly along the measurement order by up to +-15% (lag-1 autocorrelation 0.5-0.7,
BENCHMARKS.md section B): a slow spell hit a run of consecutive blocks, i.e. one family, and the whole-network
calibration then found a "family pattern" that came and went from one profile to the next. With the anchor, each
block's timing is multiplied by ``reference / anchor_now``, where ``anchor_now`` is the median of the anchor's last
:data:`ANCHOR_WINDOW` timings (taken just before this block and the ones before it) and ``reference`` the anchor's
timing when the table was started. Every entry is then expressed in one machine state, the one at the start; the
whole networks measured afterwards fit the calibration's scale from that state to theirs, as before.

Policy (``--anchor auto``, the default): on for the ``onnxruntime`` and ``openvino`` runtimes, whose passes take
minutes, off for eager ``torch``, whose pass over the rpi4 preset takes seconds here and met its accuracy bar without
it; on a slow device (a Raspberry Pi takes tens of seconds per family, and throttles) pass ``--anchor on``. The
choice is made when a table is created and stored in ``meta.anchor`` (key, reference timing, window); a resume keeps
it, so one table never mixes anchored and raw entries. Each anchored entry records its ``drift_factor``.

Python 3.8 syntax and the standard library only: ``profile_latency.py`` embeds this file.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from models.naming import parse_block
from utils.errors import FaceNASError

#: Anchor timings the current speed is the median of (one outlier never moves a factor).
ANCHOR_WINDOW = 3
#: ``--anchor`` choices.
ANCHOR_CHOICES = ("auto", "on", "off")
#: Entry fields multiplied by the factor (the statistics of the timed samples).
SCALED_FIELDS = ("mean_ms", "median_ms", "p10_ms", "p90_ms", "min_ms", "first5_ms")


def choose_anchor_key(keys: list[str]) -> str:
    """A mid-sized block of ``keys``: the one whose input tensor has the median number of elements (ties: by name),
    so the anchor is neither dominated by call overhead nor slow to time."""
    sized = []
    for key in keys:
        spec = parse_block(key)
        if spec.family == "Zero" or spec.cin is None or spec.size is None:
            continue
        sized.append((spec.cin * spec.size[0] * spec.size[1], key))
    if not sized:
        raise FaceNASError("no block with an input tensor to anchor the pass on")
    sized.sort()
    return sized[(len(sized) - 1) // 2][1]


def anchor_wanted(meta: dict[str, Any], has_entries: bool, choice: str = "auto") -> bool:
    """Whether a pass over this table is anchored (see the module docstring for the policy).

    Raises:
        FaceNASError: ``choice`` asks for the opposite of what the table's existing entries were measured with.
    """
    if choice not in ANCHOR_CHOICES:
        raise FaceNASError(f"--anchor must be one of {', '.join(ANCHOR_CHOICES)}, not {choice!r}")
    stored = bool(meta.get("anchor"))
    if choice == "auto":
        return stored or (not has_entries and (meta.get("runtime") or "torch") != "torch")
    wanted = choice == "on"
    if has_entries and wanted != stored:
        raise FaceNASError(f"the table's entries were measured {'with' if stored else 'without'} a drift anchor; "
                           f"drop --anchor {choice} to resume it, or write to another --out")
    return wanted


class DriftAnchor:
    """The reference block of a pass and the factor that brings a block's timing back to the reference state.

    Args:
        key: the anchor's block key.
        timer: times the anchor once with the table's protocol and returns its estimate in ms.
        reference_ms: the anchor's timing in the reference state; ``None`` (a new table) = the median of
            :data:`ANCHOR_WINDOW` timings taken now.
        window: how many recent timings the current speed is the median of.
    """

    def __init__(self, key: str, timer: Callable[[], float], reference_ms: float | None = None,
                 window: int = ANCHOR_WINDOW):
        self.key = key
        self.timer = timer
        self.window = max(1, int(window))
        self.recent: list[float] = []
        if reference_ms is None:
            self.recent = [self._time() for _ in range(self.window)]
            reference_ms = statistics.median(self.recent)
        if not reference_ms > 0:
            raise FaceNASError(f"drift anchor {key}: reference timing must be > 0 ms, not {reference_ms!r}")
        self.reference_ms = float(reference_ms)

    def _time(self) -> float:
        value = float(self.timer())
        if not value > 0:
            raise FaceNASError(f"drift anchor {self.key}: timing must be > 0 ms, not {value!r}")
        return value

    def factor(self) -> float:
        """Time the anchor once more; ``reference / median(last window timings)`` (< 1 when the device is slower
        now than in the reference state)."""
        self.recent = (self.recent + [self._time()])[-self.window:]
        return self.reference_ms / statistics.median(self.recent)

    def record(self) -> dict[str, Any]:
        """What ``meta.anchor`` stores, so that a resumed pass uses the same reference."""
        return {"key": self.key, "reference_ms": round(self.reference_ms, 6), "window": self.window}


def corrected(stats: dict[str, Any], factor: float) -> dict[str, Any]:
    """A block's measurement with its timings multiplied by ``factor``, which it records as ``drift_factor``."""
    out = dict(stats)
    for field in SCALED_FIELDS:
        if out.get(field) is not None:
            out[field] = float(out[field]) * factor
    out["drift_factor"] = round(float(factor), 4)
    return out


def start_anchor(meta: dict[str, Any], keys: list[str], wanted: bool,
                 make_timer: Callable[[str, dict[str, Any]], Callable[[], float]]) -> DriftAnchor | None:
    """The pass's anchor: the table's stored one (a resume), a new one chosen from ``keys`` (stored into
    ``meta['anchor']``), or ``None`` when the pass is not anchored or has nothing to measure."""
    if not wanted or not keys:
        return None
    stored = meta.get("anchor") or {}
    if stored:
        return DriftAnchor(stored["key"], make_timer(stored["key"], meta), float(stored["reference_ms"]),
                           int(stored.get("window", ANCHOR_WINDOW)))
    key = choose_anchor_key(keys)
    anchor = DriftAnchor(key, make_timer(key, meta))
    meta["anchor"] = anchor.record()
    return anchor
