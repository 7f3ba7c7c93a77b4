"""Memory layout of feature maps per device, and what ``train.channels_last: auto`` means.

On CPU, oneDNN convolves channels-last (NHWC) maps directly, while every NCHW convolution pays
a reorder to its blocked layout and back on each call; BatchNorm's NHWC kernel is faster too
(measured in benchmarks/results/frskd_cost_cpu.md and reviewkd_cost_cpu.md, and for whole
training steps of every method in benchmarks/results/performance.md). On CUDA, cuDNN's
tensor-core convolutions work in NHWC, so channels-last is the layout NVIDIA recommends for
AMP training; it is on there too (not measured on a GPU here: benchmarks/gpu/ measures it).
Elsewhere (MPS, ...) the default layout is kept.
"""

from __future__ import annotations

import torch

from kdlab.errors import UserError

#: the device types on which ``train.channels_last: auto`` trains channels-last
CHANNELS_LAST_DEVICES = frozenset({"cpu", "cuda"})


def preferred_layout(device: torch.device) -> torch.memory_format:
    """Channels-last on CPU (oneDNN's native layout), the default layout elsewhere."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def use_channels_last(setting: bool | str, device: torch.device) -> bool:
    """``train.channels_last`` (true, false or ``"auto"``) resolved for ``device``: ``auto``
    is on for the devices of :data:`CHANNELS_LAST_DEVICES`."""
    if isinstance(setting, bool):
        return setting
    if setting == "auto":
        return device.type in CHANNELS_LAST_DEVICES
    raise UserError(f"train.channels_last {setting!r} is not known; use auto, true or false.")
