"""train.sync_bn: the distiller's plain BatchNorm layers become SyncBatchNorm in place (CIRKD
trains its student and critic with SyncBN over 8 GPUs); CUDA only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from kdlab.errors import UserError
from kdlab.training.distributed import sync_batchnorm


class _PathBN(nn.BatchNorm2d):
    """A BatchNorm with behaviour of its own (as FCFD's path-aware one): left alone."""


def test_plain_batchnorms_become_syncbatchnorm_in_place():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), _PathBN(4),
                          nn.Sequential(nn.BatchNorm1d(2)))
    weight, stats = model[1].weight, model[1].running_mean
    assert sync_batchnorm(model, torch.device("cuda")) == 2  # the conversion needs no GPU
    assert type(model[1]) is nn.SyncBatchNorm and type(model[3][0]) is nn.SyncBatchNorm
    assert type(model[2]) is _PathBN
    assert model[1].weight is weight and model[1].running_mean is stats
    assert model[1].process_group is None


def test_sync_bn_needs_cuda():
    with pytest.raises(UserError, match="CUDA"):
        sync_batchnorm(nn.BatchNorm2d(3), torch.device("cpu"))
