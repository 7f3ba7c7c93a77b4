"""How close a training step comes to the machine: FLOP per step and the large-matmul rate.

:func:`step_flops` counts the floating-point operations of one distillation step (forward and
backward) with :class:`torch.utils.flop_counter.FlopCounterMode`, which counts the matrix
products and convolutions (2 FLOP per multiply-add) of every operator that runs, in the
autograd backward too; element-wise work (activations, BatchNorm, the optimiser) is not
counted, as in every MFU figure.

:func:`matmul_rate` times a large square ``torch.mm`` on the bench's device and dtype: the
rate a dense product of that size reaches on this machine, the practical ceiling a step's
achieved FLOP/s is compared with (the fraction is the bench's "× mm" column; a step made of
small convolutions stays below it, one made of large products comes close).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

#: the side of the square product per device type: large enough to saturate the device (on a
#: CPU with more than 4 threads, twice this; on one or two threads 1024 is within the noise of
#: 2048's rate and takes an eighth of its time)
MATMUL_SIZE = {"cpu": 1024, "cuda": 8192, "mps": 4096}


def default_matmul_size(device: torch.device) -> int:
    """:data:`MATMUL_SIZE` for the device, doubled on a CPU with more than 4 threads."""
    n = MATMUL_SIZE.get(device.type, 2048)
    if device.type == "cpu" and torch.get_num_threads() > 4:
        n *= 2
    return n


def step_flops(step: Callable[[], torch.Tensor]) -> int | None:
    """FLOP of ``step()`` (which returns the loss) plus the backward of its result; None where
    the counter cannot follow the step (``torch.autograd.grad`` inside it, e.g. a gradient
    penalty, is refused by the counter's backward tracking in torch 2.x)."""
    try:
        with FlopCounterMode(display=False) as counter:
            loss = step()
            loss.backward()
    except RuntimeError:
        return None
    return int(counter.get_total_flops())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def matmul_rate(device: torch.device | str, dtype: torch.dtype = torch.float32, *,
                size: int | None = None, min_seconds: float = 0.2,
                max_repeats: int = 50) -> float:
    """The median rate (GFLOP/s) of a ``size`` x ``size`` by ``size`` x ``size`` ``torch.mm``
    in ``dtype`` on ``device``, over repeats filling ``min_seconds`` (at least 3)."""
    device = torch.device(device)
    n = size or default_matmul_size(device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up: kernel selection, thread pool
    _synchronize(device)
    rates: list[float] = []
    start = time.perf_counter()
    while len(rates) < 3 or (time.perf_counter() - start < min_seconds
                             and len(rates) < max_repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        _synchronize(device)
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)
