"""Two-process DistributedDataParallel training on CPU (gloo), launched with torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import torch
    from support.training import registered, tiny_config
    import kdlab.training.trainer as trainer_module
    from kdlab.training.trainer import Trainer

    seeds = []
    def recording_seed_all(*args, _seed_all=trainer_module.seed_all):
        seeds.append(args)
        _seed_all(*args)
    trainer_module.seed_all = recording_seed_all

    out = {out!r}
    with registered():
        cfg = tiny_config(out, data={{"train_subset": 128, "val_subset": 63}})
        trainer = Trainer(cfg)
        summary = trainer.fit()
    rank = int(os.environ["RANK"])
    state = trainer.run.distiller.state_dict()
    torch.save(state, os.path.join(os.path.dirname(out), f"rank{{rank}}.pt"))
    # one write per line: the two ranks share the pipe (unbuffered print writes piecewise)
    sys.stdout.write(f"RANK {{rank}} SEEDS {{repr(seeds).replace(' ', '')}}\\n")
    sys.stdout.write(f"RANK {{rank}} WORLD {{summary['world_size']}} TOP1 "
                     f"{{summary['last_top1']}}\\n")
""")


@pytest.mark.slow
def test_two_process_gloo_run(tmp_path):
    out = tmp_path / "run"
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), out=str(out)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "WORLD 2" in proc.stdout
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 1
    for name in ("config.yaml", "metrics.csv", "report.md", "best.pt"):
        assert (out / name).is_file(), name
    # gradients are averaged over ranks, so both processes end with the same trainable weights
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key, value in r0.items():
        if value.is_floating_point() and "running" not in key:
            assert torch.allclose(value, r1[key], atol=1e-6), key
    assert torch.equal(r0["student.net.fc.weight"], ckpt["distiller"]["student.net.fc.weight"])
    # the build is seeded alike on both ranks; each epoch with the rank, so that each rank
    # draws its own random stream in training (CRD's negatives, FCFD's paths, dropout)
    seeds = {line.split()[1]: line.split()[3] for line in proc.stdout.splitlines()
             if line.startswith("RANK") and "SEEDS" in line}
    assert seeds == {"0": "[(0,-1),(0,0,0),(0,1,0)]", "1": "[(0,-1),(0,0,1),(0,1,1)]"}, \
        proc.stdout
    # top-1 is reduced over ranks: with 63 validation images (shards of 32 and 31) every
    # value is a multiple of 100/63
    top1 = float(proc.stdout.split("TOP1")[-1].split()[0])
    assert abs(top1 * 63 / 100 - round(top1 * 63 / 100)) < 1e-6
