"""Memory layout of feature maps per device.

On CPU, oneDNN convolves channels-last (NHWC) maps directly, while every NCHW convolution pays
a reorder to its blocked layout and back on each call; BatchNorm's NHWC kernel is faster too
(measured in benchmarks/results/frskd_cost_cpu.md and reviewkd_cost_cpu.md). Elsewhere the
default layout is kept (not measured on GPUs here).
"""

from __future__ import annotations

import torch


def preferred_layout(device: torch.device) -> torch.memory_format:
    """Channels-last on CPU (oneDNN's native layout), the default layout elsewhere."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format
