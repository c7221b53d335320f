"""Benchmarks of ahi-curation: each compares our code against a baseline measured in the same run.

Every ``benchmarks/bench_*.py`` module defines ``run(scale: float) -> Iterable[Measurement]``; ``scale`` 1.0 is
the full size an issue asks for, smaller values give a quick smoke run (``python -m benchmarks --scale 0.05``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Measurement:
    """One line of benchmark output: our value, the baseline's, and what the ratio means."""

    name: str
    ours: float
    baseline: float
    unit: str
    #: how to read ``ratio``: "ours/baseline" or "baseline/ours" (so a ratio above 1 reads the way it says)
    ratio_is: str = "ours/baseline"
    note: str = ""

    @property
    def ratio(self) -> float:
        num, den = (self.ours, self.baseline) if self.ratio_is == "ours/baseline" else (self.baseline, self.ours)
        return num / den if den else float("inf")

    def line(self) -> str:
        text = (
            f"{self.name}: ours {self.ours:.4g} {self.unit}, baseline {self.baseline:.4g} {self.unit}, "
            f"ratio {self.ratio:.3g} ({self.ratio_is})"
        )
        return f"{text}  # {self.note}" if self.note else text


def best_of(function: Callable[[], object], repeat: int = 3) -> float:
    """The fastest of ``repeat`` wall-clock timings of ``function()``, in seconds."""
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return min(timings)


def interleaved_medians(functions: dict[str, Callable[[], object]], repeat: int = 3) -> dict[str, float]:
    """The median of ``repeat`` wall-clock timings of each function, run round-robin (a, b, a, b, ...) so that
    a change of the machine's load during the run weighs on every side alike; in seconds, by name."""
    timings: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeat):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            timings[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in timings.items()}
