"""The CRD benchmark's FitNet regressor: one conv (with bias) + BN + ReLU.

Tian et al., "Contrastive Representation Distillation", ICLR 2020 (RepDistiller's
``ConvReg``): the conv maps the student's hinted feature to the teacher's channels and size
- a 3x3 stride-2 conv when the student's map is twice the teacher's, a 4x4 stride-2
transposed conv when it is half, otherwise a "valid" conv whose kernel is
``1 + size_s - size_t`` (a 1x1 conv for equal sizes) - followed by BN and a ReLU.
"""

from __future__ import annotations

from torch import nn

from kdlab.errors import UserError
from kdlab.models.staged.view import StageInfo


class ConvRegressor(nn.Sequential):
    """Student stage output -> teacher stage shape, as the benchmark's FitNet regressor."""

    def __init__(self, src: StageInfo, dst: StageInfo) -> None:
        hs, ws, ht, wt = src.height, src.width, dst.height, dst.width
        if hs == 2 * ht:
            conv: nn.Module = nn.Conv2d(src.channels, dst.channels, 3, stride=2, padding=1)
        elif 2 * hs == ht:
            conv = nn.ConvTranspose2d(src.channels, dst.channels, 4, stride=2, padding=1)
        elif hs >= ht and ws >= wt:
            conv = nn.Conv2d(src.channels, dst.channels, (1 + hs - ht, 1 + ws - wt))
        else:
            raise UserError(
                f"The benchmark's FitNet regressor cannot map a {hs}x{ws} student feature to "
                f"a {ht}x{wt} teacher feature; use method.regressor: bridge or another stage."
            )
        super().__init__(conv, nn.BatchNorm2d(dst.channels), nn.ReLU())
