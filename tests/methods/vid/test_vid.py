"""VID (Ahn et al., CVPR 2019): the regressors' initial variance."""

from __future__ import annotations

import torch

from kdlab.methods import build_distiller


def test_vid_initial_variance(tiny_pair):
    teacher, student = tiny_pair
    d = build_distiller("vid", {}, student, teacher)
    for reg in d.regressors:
        assert torch.allclose(reg.variance(), torch.full_like(reg.variance(), 5.0), atol=1e-5)
