"""The weight initialisation of the KD benchmark's CIFAR zoo (RepDistiller, FCFD code)."""

from __future__ import annotations

from torch import nn


def he_init(net: nn.Module, *, linear: str = "default") -> None:
    """He (Kaiming, fan-out) normal for convolutions with zero bias, BatchNorm weight 1 and
    bias 0; linear layers: ``"default"`` keeps PyTorch's, ``"zero_bias"`` zeroes the bias,
    ``"normal"`` draws N(0, 0.01) with zero bias (the references differ per family)."""
    if linear not in ("default", "zero_bias", "normal"):
        raise ValueError(f"unknown linear init {linear!r}")
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear != "default":
            if linear == "normal":
                nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
