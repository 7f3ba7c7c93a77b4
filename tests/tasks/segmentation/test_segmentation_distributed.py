"""Segmentation evaluation under torch.distributed: two gloo processes on CPU, unequal shards;
the confusion matrix summed over the ranks gives the metrics of the whole split."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TESTS = str(Path(__file__).resolve().parents[2])
WORLD = 2


def split() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Five one-image batches (val_shard gives rank 0 three of them, rank 1 two)."""
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(1, 1, 12, 12, generator=g),
             torch.randint(0, 5, (1, 12, 12), generator=g), torch.tensor([i]))
            for i in range(5)]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    import sys

    sys.path.insert(0, TESTS)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        from test_segmentation_task import tiny_segnet

        from kdlab.tasks import build_task

        shard = split()[rank::WORLD]
        result = build_task("segmentation").evaluate(tiny_segnet(), shard,
                                                     device=torch.device("cpu"))
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_evaluate_reduces_the_confusion_matrix_over_ranks(tmp_path):
    from test_segmentation_task import tiny_segnet

    from kdlab.tasks import build_task

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.start_processes(_worker, args=(str(tmp_path / "init"), str(tmp_path)),
                             nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("the two evaluation processes did not finish within 120 s")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    whole = build_task("segmentation").evaluate(tiny_segnet(), split(),
                                                device=torch.device("cpu"))
    for result in results:
        assert result.keys() == whole.keys()
        for key, value in whole.items():
            assert result[key] == pytest.approx(value, rel=1e-6)
