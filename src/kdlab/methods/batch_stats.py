"""Run a frozen network's BatchNorm layers on batch statistics without touching its buffers.

Several reference implementations call ``train()`` on a frozen teacher (the FCFD authors'
classification code, mdistiller's OFD): its BatchNorm layers then normalise with the
statistics of the current batch. :func:`batch_statistics` reproduces that for the duration
of a ``with`` block while leaving the teacher's running statistics (and
``num_batches_tracked``) exactly as loaded, so the teacher checkpoint stays the one trained.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@contextlib.contextmanager
def batch_statistics(module: nn.Module) -> Iterator[None]:
    """Inside the block every BatchNorm of ``module`` normalises with batch statistics and
    updates nothing (``training=True``, ``track_running_stats=False``); restored on exit."""
    saved = [(m, m.training, m.track_running_stats) for m in module.modules()
             if isinstance(m, _BN)]
    for m, _, _ in saved:
        m.training = True
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, training, track in saved:
            m.training = training
            m.track_running_stats = track
