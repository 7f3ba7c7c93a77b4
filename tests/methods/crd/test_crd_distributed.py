"""CRD's memory banks under torch.distributed: two gloo processes on CPU.

Every rank scores its own batch locally, then applies every rank's momentum updates (rank 0's
rows first, then rank 1's), and the normalising constants Z are fixed from the scores of all
ranks' first batches; so the banks and Z stay identical on every rank and equal what one
process computes from the same updates (Tian et al., ICLR 2020, Sec. 3.4).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from kdlab.methods.crd.memory_bank import ContrastMemory

TESTS = str(Path(__file__).resolve().parents[2])
WORLD = 2
N, DIM, K, TEMPERATURE, MOMENTUM = 12, 4, 3, 0.5, 0.5
# Per step and rank: the batch's dataset indices. Unequal batch sizes; sample 7 is on both
# ranks in step 0 (as DistributedSampler's padding does), so it moves twice, rank 0 first.
INDICES = [
    [[1, 4, 7], [7, 10]],
    [[0, 2], [3, 5, 6, 11]],
]
SEED_BANKS = 0


def new_memory() -> ContrastMemory:
    torch.manual_seed(SEED_BANKS)  # the trainer seeds every rank alike
    return ContrastMemory(DIM, N, K, temperature=TEMPERATURE, momentum=MOMENTUM)


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(index, v_student, v_teacher, rows) of ``rank`` at ``step``."""
    index = torch.tensor(INDICES[step][rank])
    g = torch.Generator().manual_seed(100 * step + rank)
    v_s = F.normalize(torch.randn(len(index), DIM, generator=g), dim=1)
    v_t = F.normalize(torch.randn(len(index), DIM, generator=g), dim=1)
    rows = torch.cat([index.view(-1, 1), torch.randint(0, N, (len(index), K), generator=g)], 1)
    return index, v_s, v_t, rows


def _memory_steps(rank: int) -> dict[str, torch.Tensor]:
    mem = new_memory().train()
    out = {}
    for step in range(len(INDICES)):
        index, v_s, v_t, rows = batch(step, rank)
        s, t = mem(v_s, v_t, index, rows=rows)
        out[f"scores_student{step}"], out[f"scores_teacher{step}"] = s, t
    out.update({k: v.clone() for k, v in mem.state_dict().items()})
    return out


def _ddp_crd_steps(rank: int) -> dict[str, torch.Tensor]:
    """Two training steps of a CRD distiller wrapped by kdlab's DDP helper."""
    from conftest import tiny_staged
    from kdlab.methods import build_distiller
    from kdlab.training import distributed

    teacher = tiny_staged(widths=(16, 32, 64, 64), seed=1)
    student = tiny_staged(widths=(8, 16, 32, 32), seed=2)
    torch.manual_seed(3 + rank)  # banks start different: wrap() must make them equal once
    d = build_distiller("crd", {"num_negatives": 4, "negatives": "uniform"}, student, teacher,
                        train_size=16)
    model = distributed.wrap(d, torch.device("cpu"), find_unused=d.may_skip_parameters)
    initial = {k: v.clone() for k, v in d.memory.state_dict().items()}
    ignored = set(getattr(d, "_ddp_params_and_buffers_to_ignore", ()))
    assert {"memory.bank_student", "memory.bank_teacher", "memory.z_student"} <= ignored
    model.train()
    for step in range(2):
        g = torch.Generator().manual_seed(10 * step + rank)
        x = torch.randn(3, 3, 16, 16, generator=g)
        y = torch.randint(0, 10, (3,), generator=g)
        index = torch.arange(3) + 3 * (2 * step + rank)  # 0..11, each once
        _, losses = model(x, y, index)
        sum(losses.values()).backward()
    out = {f"ddp_{k}": v.clone() for k, v in d.memory.state_dict().items()}
    out.update({f"ddp_initial_{k}": v for k, v in initial.items()})
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    import sys

    sys.path.insert(0, TESTS)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        out = _memory_steps(rank)
        out.update(_ddp_crd_steps(rank))
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # no rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict[str, torch.Tensor]]:
    """What each of two gloo processes ends with."""
    tmp = tmp_path_factory.mktemp("crd_ddp")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ctx = mp.start_processes(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("the two CRD processes did not finish within 120 s")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def reference() -> dict[str, torch.Tensor]:
    """One process, direct loops: score every rank's batch against the same banks, fix Z from
    the mean of all those scores, then move the rows rank by rank."""
    mem = new_memory()
    banks = {"student": mem.bank_student.double(), "teacher": mem.bank_teacher.double()}
    z: dict[str, float] = {}
    out: dict[str, torch.Tensor] = {}
    for step in range(len(INDICES)):
        raw: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
        for rank in range(WORLD):
            index, v_s, v_t, rows = batch(step, rank)
            # student codes against the teacher bank, teacher codes against the student bank
            for name, v, other in (("student", v_s, "teacher"), ("teacher", v_t, "student")):
                scores = torch.empty(len(index), K + 1, dtype=torch.float64)
                for i in range(len(index)):
                    for j in range(K + 1):
                        dot = sum(float(v[i, c]) * float(banks[other][rows[i, j], c])
                                  for c in range(DIM))
                        scores[i, j] = torch.exp(torch.tensor(dot / TEMPERATURE,
                                                              dtype=torch.float64))
                raw[name].append(scores)
        for name in ("student", "teacher"):
            if name not in z:
                z[name] = float(torch.cat(raw[name]).mean()) * N
            for rank in range(WORLD):
                out[f"scores_{name}{step}_rank{rank}"] = raw[name][rank] / z[name]
        for rank in range(WORLD):
            index, v_s, v_t, _ = batch(step, rank)
            for name, v in (("student", v_s), ("teacher", v_t)):
                for i, row in enumerate(index.tolist()):
                    new = MOMENTUM * banks[name][row] + (1 - MOMENTUM) * v[i].double()
                    banks[name][row] = new / new.norm()
    out.update({f"bank_{k}": v for k, v in banks.items()})
    out.update({f"z_{k}": torch.tensor(v, dtype=torch.float64) for k, v in z.items()})
    return out


@pytest.mark.slow
def test_banks_and_z_are_identical_on_every_rank(ranks):
    r0, r1 = ranks
    for key in ("bank_student", "bank_teacher", "z_student", "z_teacher"):
        assert torch.equal(r0[key], r1[key]), key


@pytest.mark.slow
def test_banks_and_z_match_one_process_applying_every_ranks_updates(ranks):
    want = reference()
    for rank, got in enumerate(ranks):
        for key in ("bank_student", "bank_teacher", "z_student", "z_teacher"):
            assert torch.allclose(got[key].double(), want[key], rtol=1e-5, atol=1e-6), key
        for step in range(len(INDICES)):
            for name in ("student", "teacher"):
                assert torch.allclose(got[f"scores_{name}{step}"].double(),
                                      want[f"scores_{name}{step}_rank{rank}"], rtol=1e-5)
    # sample 7 was moved by both ranks: rank 0's code, then rank 1's
    mem = new_memory()
    v0, v1 = batch(0, 0)[1][2], batch(0, 1)[1][0]
    once = F.normalize(MOMENTUM * mem.bank_student[7] + (1 - MOMENTUM) * v0, dim=0)
    twice = F.normalize(MOMENTUM * once + (1 - MOMENTUM) * v1, dim=0)
    assert torch.allclose(ranks[0]["bank_student"][7], twice, atol=1e-6)


@pytest.mark.slow
def test_ddp_wrapped_crd_keeps_every_ranks_updates(ranks):
    """Through kdlab's DDP wrapper (rank 0's banks copied once at wrap time, then not
    broadcast before each forward), the banks start equal on both ranks, and the rows of both
    ranks' samples have moved on both ranks, the rest not."""
    r0, r1 = ranks
    for key in ("bank_student", "bank_teacher", "z_student", "z_teacher"):
        assert torch.equal(r0[f"ddp_initial_{key}"], r1[f"ddp_initial_{key}"]), key
        assert torch.equal(r0[f"ddp_{key}"], r1[f"ddp_{key}"]), key
    for key in ("bank_student", "bank_teacher"):
        moved = (r0[f"ddp_{key}"] != r0[f"ddp_initial_{key}"]).any(1)
        assert moved[:12].all() and not moved[12:].any(), key
