"""The critic of SKD's holistic distillation: a small fully-convolutional network that scores
a segmentation score map (optionally with the image it belongs to).

Liu et al., "Structured Knowledge Distillation for Semantic Segmentation", CVPR 2019, §3.1:
a Wasserstein critic with spectral normalisation and two self-attention modules (after SAGAN,
Zhang et al., ICML 2019). The shape follows the authors' ``networks/sagan_models.py``
(``Discriminator``): BatchNorm on the input (their ``preprocess_GAN_mode 1``), then
spectrally-normalised 4x4 stride-2 convolutions with ``width * 2^i`` channels each followed by
LeakyReLU(0.1), a self-attention module after each of the last two, and a final plain 4x4
convolution to one channel. Their 65x65 maps (512-pixel crops at output stride 8) go through
four such convolutions (64, 128, 256, 512 channels) to a 4x4 map and then to a 1x1 score.

Adapted to any map: ``in_channels`` is the number of classes (plus the image channels for a
conditional critic) and, for a known ``input_size``, the strided convolutions stop before the
map would fall under 4x4 (at least one; at most ``max_layers``), and the last kernel is at most
the remaining size, so small maps still get a score. An unknown size keeps the authors' four
(so does CIRKD's ``utils/sagan.py`` critic, always; on maps of 64 pixels or more the two agree).

Spectral normalisation: ``sagan`` (the authors' and CIRKD's, :mod:`.spectral`) or ``torch``
(``torch.nn.utils.parametrizations.spectral_norm``: 15 power iterations at construction, one
per training forward, ``u`` before ``v``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from kdlab.methods.skd.spectral import sagan_spectral_norm

#: the spectral normalisations a critic can use
SPECTRAL_NORMS = {"sagan": sagan_spectral_norm, "torch": spectral_norm}
#: negative slope of the critic's LeakyReLUs (the authors' value)
CRITIC_SLOPE = 0.1


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019, §3): ``x + gamma * attend(x)`` with 1x1
    query/key convolutions to ``C // 8`` channels, a 1x1 value convolution and ``gamma``
    starting at 0 (the layer starts as the identity)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(1, channels // 8)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C')
        k = self.key(x).flatten(2)  # (B, C', N)
        attention = torch.softmax(q @ k, dim=-1)  # (B, N, N): row i attends over positions j
        v = self.value(x).flatten(2)  # (B, C, N)
        out = (v @ attention.transpose(1, 2)).view(b, c, h, w)
        return self.gamma * out + x


def critic_depth(input_size: int | None, max_layers: int) -> tuple[int, int]:
    """(number of strided convolutions, size of the map they leave) for a square-ish input
    whose smaller side is ``input_size``: halve while the result stays at least 4."""
    if input_size is None:
        return max_layers, 4
    size, layers = input_size, 0
    while layers < max_layers and (layers == 0 or size // 2 >= 4):
        size, layers = size // 2, layers + 1
    return layers, max(1, size)


class Critic(nn.Sequential):
    """The holistic-distillation critic; ``forward(maps) -> (B, 1, h', w')`` scores.

    Args:
        in_channels: channels of its input (classes, + 3 when conditioned on the image).
        input_size: the smaller spatial side of its input maps, when known (sizes the depth).
        width: channels of the first convolution (the authors' ``adv_conv_dim``, 64).
        max_layers: most strided convolutions (the authors' four for 65x65 maps).
        attention: how many of the last strided convolutions are followed by
            self-attention (the authors' two).
        spectral: ``torch`` (default) or ``sagan`` (:data:`SPECTRAL_NORMS`).
    """

    def __init__(self, in_channels: int, *, input_size: int | None = None, width: int = 64,
                 max_layers: int = 4, attention: int = 2, spectral: str = "torch") -> None:
        normalise = SPECTRAL_NORMS[spectral]
        layers, remaining = critic_depth(input_size, max_layers)
        modules: list[nn.Module] = [nn.BatchNorm2d(in_channels)]
        c_in = in_channels
        for i in range(layers):
            c_out = width * 2**i
            modules += [normalise(nn.Conv2d(c_in, c_out, 4, 2, 1)),
                        nn.LeakyReLU(CRITIC_SLOPE)]
            if i >= layers - attention:
                modules.append(SelfAttention(c_out))
            c_in = c_out
        modules.append(nn.Conv2d(c_in, 1, min(4, remaining)))
        super().__init__(*modules)
