"""benchmarks/gpu/: the script parses (bash -n) and its summary reads kdlab bench CSVs. The
script itself runs on CPU with --dry (a minute: run by hand, see benchmarks/gpu/README.md)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from kdlab.tools.bench.bench import BenchReport, BenchResult, write_report

GPU = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu"


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")
def test_the_script_parses():
    subprocess.run(["bash", "-n", str(GPU / "run_gpu_bench.sh")], check=True)


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
