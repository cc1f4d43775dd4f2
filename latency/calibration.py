"""Calibrating a block table against whole networks measured on the same device.

Isolated blocks run with warm caches, so the plain sum of a table tends to under-predict a whole network (about
-15% on this project's CPU). A calibration maps the sum to the measured latency: predicted = ``scale`` x sum +
``offset_ms``. :func:`fit_calibration` fits it on measured networks; the table stores it in ``meta.calibration``
(:meth:`latency.table_format.TableFile.set_calibration`) and every prediction applies it.

Standard library only: ``profile_latency.py`` embeds this file to fit on the device.
"""
from __future__ import annotations

import statistics
from typing import Any

from latency.accuracy import accuracy
from utils.errors import FaceNASError

CALIBRATION_METHODS = ("median", "lsq", "affine")


def fit_calibration(predicted: list[float], measured: list[float], method: str = "median") -> tuple[float, float]:
    """A calibration ``(scale, offset_ms)`` so that scale x predicted + offset ~ measured.

    ``median``: scale = median of measured/predicted, no offset; robust to a few networks hit by machine noise (the
    default). ``lsq``: least squares on the relative error, minimising sum((s p_i - m_i) / m_i)^2, which gives
    s = sum(r_i) / sum(r_i^2) with r_i = p_i / m_i. ``affine``: the same least squares with an offset, for a cost every
    network pays once and no block table sees (on CPU: the stem's high-resolution buffers run colder in the network
    than alone); fitted in closed form on the relative error.
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
    """Every calibration method fitted on ``fit`` and scored on ``validate`` (to choose one with evidence)."""
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
