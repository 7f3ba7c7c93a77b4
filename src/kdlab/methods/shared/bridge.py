"""Bridge modules: map one network's stage feature to the shape of another's.

FCFD (Liu et al., ICLR 2023), Sec. 2.1 and App. A.1 (the design follows CRD, Tian et al.
2020): exactly one convolution and one BatchNorm, plus a LeakyReLU when the target is a
post-ReLU feature. The convolution is 3x3 with stride 1 when source and target have the same
spatial size, 3x3 with stride 2 when the target is half the size, and a 4x4 stride-2
transposed convolution when the target is twice the size. FitNet's regressor is the same
module (FitNets, Romero et al., ICLR 2015).

Channels and sizes come from the staged metadata (:class:`~kdlab.models.staged.view.StageInfo`),
so a bridge can be built between any pair of networks.

Initialisation (``init``): ``kaiming`` gives every convolution He-normal weights (fan-out,
ReLU gain) and no bias. ``fcfd_authors`` is the FCFD authors' ``MetaModel``
(``classification/models/meta.py``, ``build_bridge`` and ``__init__``): the stride-2 and the
transposed convolution carry a bias; only ``nn.Conv2d`` weights are re-initialised He-normal,
so a stride-2 conv keeps PyTorch's default bias and the transposed conv (not an
``nn.Conv2d``) keeps PyTorch's default weights and bias (uniform, ``1/sqrt(fan_in)`` with
``fan_in = out_channels * 16``: up to ~11x smaller weights than He's). BatchNorm starts at
1 / 0 either way.
"""

from __future__ import annotations

from torch import nn

from kdlab.errors import UserError
from kdlab.models.staged.view import StageInfo

#: slope of the LeakyReLU appended when the target is post-ReLU (the FCFD authors' value)
LEAKY_SLOPE = 0.1
#: how a bridge's convolution starts (see the module docstring)
INITS = ("kaiming", "fcfd_authors")


def _size_ratio(src: int, dst: int) -> str | None:
    """'same', 'down' (dst = ceil(src / 2)), 'up' (dst = 2 * src) or None."""
    if src == dst:
        return "same"
    if dst == (src + 1) // 2:
        return "down"
    if dst == 2 * src:
        return "up"
    return None


def bridge_kind(src: StageInfo, dst: StageInfo) -> str | None:
    """How a feature shaped like ``src`` reaches ``dst``'s size: 'same', 'down', 'up' or None."""
    kh, kw = _size_ratio(src.height, dst.height), _size_ratio(src.width, dst.width)
    return kh if kh == kw else None


class Bridge(nn.Sequential):
    """Conv (or transposed conv) + BatchNorm (+ LeakyReLU(0.1) for post-ReLU targets).

    Args:
        src: metadata of the input feature.
        dst: metadata of the feature the output must match.
        where: a short description of the two features, for the error message.
        init: ``kaiming`` or ``fcfd_authors`` (module docstring).

    Raises :class:`UserError` when the spatial sizes are neither equal nor a factor of 2
    apart (the paper's three cases).
    """

    def __init__(self, src: StageInfo, dst: StageInfo, *, where: str = "",
                 init: str = "kaiming") -> None:
        if init not in INITS:
            raise ValueError(f"unknown bridge init {init!r}; use one of {INITS}")
        kind = bridge_kind(src, dst)
        if kind is None:
            at = f" ({where})" if where else ""
            raise UserError(
                f"Cannot bridge a {src.height}x{src.width} feature to a {dst.height}x{dst.width} "
                f"one{at}: sizes must be equal or differ by a factor of 2; choose other "
                "positions or another teacher/student pair."
            )
        bias = init == "fcfd_authors" and kind != "same"
        if kind == "same":
            conv: nn.Module = nn.Conv2d(src.channels, dst.channels, 3, 1, 1, bias=False)
        elif kind == "down":
            conv = nn.Conv2d(src.channels, dst.channels, 3, 2, 1, bias=bias)
        else:
            conv = nn.ConvTranspose2d(src.channels, dst.channels, 4, 2, 1, bias=bias)
        layers = [conv, nn.BatchNorm2d(dst.channels)]
        if dst.post_relu:
            layers.append(nn.LeakyReLU(LEAKY_SLOPE))
        super().__init__(*layers)
        self.kind = kind
        if init == "kaiming" or kind != "up":
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
