"""Latency: measuring models on a target, latency tables, and analytic fallbacks."""

from __future__ import annotations

from spa_compiler.latency.timing import LatencyMeasurement, measure_ort

__all__ = ["LatencyMeasurement", "measure_ort"]
