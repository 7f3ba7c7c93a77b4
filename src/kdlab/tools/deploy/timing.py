"""Latency of one call: the median of repeated timed calls after warm-up calls.

Each call is timed alone with ``time.perf_counter`` (the CPU runs synchronously; on CUDA the
device is synchronised around it). The median is robust to the odd slow call a shared
machine gives; the spread (first and third quartile) is kept beside it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Latency:
    """Milliseconds per call: median and quartiles over ``repeats`` calls (``samples``)."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    repeats: int
    samples: list[float]


def time_calls(call: Callable[[], Any], *, warmup: int, repeats: int,
               device: torch.device | None = None) -> Latency:
    """Run ``call`` ``warmup`` times untimed, then ``repeats`` times timed."""
    def sync() -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        call()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        sync()
        times.append(1000 * (time.perf_counter() - t0))
    if len(times) > 1:
        q1, _, q3 = statistics.quantiles(times, n=4)
    else:
        q1 = q3 = times[0]
    return Latency(statistics.median(times), q1, q3, repeats, times)
