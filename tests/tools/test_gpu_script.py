"""benchmarks/gpu/: the script's CPU smoke run (--dry, one method) writes its three passes'
CSVs and the summary; without a GPU and without --dry it stops with one message; the summary
reads kdlab bench CSVs."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kdlab.tools.bench.bench import BenchReport, BenchResult, write_report

GPU = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"


def _run_script(tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, METHODS="kd",
               COMPILE_METHODS="kd", OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(GPU / "run_gpu_bench.sh"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")
def test_the_dry_run_writes_every_pass_and_the_summary(tmp_path):
    result = _run_script(tmp_path, "--dry")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = (tmp_path / "gpu_bench.md").read_text()
    for label in ("NCHW, eager", "channels-last, eager", "channels-last, compiled"):
        assert f"| kd | {label} |" in summary, summary
    assert "--dry" in summary  # the command line it was run with


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")
def test_without_a_gpu_the_script_asks_for_the_dry_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would run the real benchmark")
    result = _run_script(tmp_path)
    assert result.returncode != 0 and "run with --dry" in result.stderr
    assert not list(tmp_path.iterdir())  # stopped before any pass


def test_summary_lists_every_method_and_pass(tmp_path):
    spec = importlib.util.spec_from_file_location("summarise", GPU / "summarise.py")
    summarise = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarise)
    meta = {"teacher": "t", "student": "s", "input_shape": [3, 32, 32], "batch": 64,
            "amp": "bf16", "steps": 2, "warmup": 1, "hardware": "GPU", "torch": "2",
            "kdlab": "0", "date": "today", "matmul_gflops": 1000.0, "matmul": "8192x8192"}
    for name, methods in (("gpu_nchw_eager.csv", ["ce", "kd"]),
                          ("gpu_nhwc_compile.csv", ["kd"])):
        results = [BenchResult(m, m, {}, 2, 10.0, 1.0, 6400.0, None, 1.0, gflop=5.0,
                               gflops=500.0, mm_fraction=0.5) for m in methods]
        write_report(BenchReport(meta, results), tmp_path / name)
    text = summarise.summarise(tmp_path, "cmd")
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    assert [r.split(" | ")[:2] for r in rows[1:]] == [
        ["| ce", "NCHW, eager"], ["| kd", "NCHW, eager"], ["| kd", "channels-last, compiled"]]
    assert "0.500" in text and "1000.0 GFLOP/s" in text and "`cmd`" in text
