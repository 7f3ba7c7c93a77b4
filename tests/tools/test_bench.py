"""`kdlab bench`: method-variant parsing, a 2-step run of ce and kd on the cpu preset, the
written results and the user errors. Timings are printed, never asserted."""

from __future__ import annotations

import json
import math

import pytest

from kdlab.cli import main
from kdlab.tools.bench.bench import MethodSpec, parse_methods


def test_parse_methods_variants_and_options():
    specs = parse_methods("ce, kd,fcfd:num_paths=1,k_min=2,fitnet,kd:temperature=8")
    assert specs == [
        MethodSpec("ce", "ce", {}),
        MethodSpec("kd", "kd", {}),
        MethodSpec("fcfd:num_paths=1,k_min=2", "fcfd", {"num_paths": 1, "k_min": 2}),
        MethodSpec("fitnet", "fitnet", {}),
        MethodSpec("kd:temperature=8", "kd", {"temperature": 8}),
    ]
    assert parse_methods("kd:temperature=4.5,reduce=true")[0].options == {
        "temperature": 4.5, "reduce": True}


@pytest.mark.parametrize("text", ["", "num_paths=1", "kd:temperature"])
def test_parse_methods_rejects_malformed(text):
    from kdlab.errors import UserError

    with pytest.raises(UserError):
        parse_methods(text)


def bench_args(*extra: str) -> list[str]:
    return ["bench", "--preset", "cpu", "--device", "cpu", "--batch", "8", "--steps", "2",
            "--warmup", "1", *extra]


def test_bench_runs_ce_and_kd_and_writes_json(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(bench_args("--methods", "ce,kd", "--out", str(out))) == 0
    printed = capsys.readouterr().out
    assert "resnet20 -> resnet8" in printed and "torch" in printed
    assert "peak RSS increase" in printed  # the header says how memory was measured
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("method "))
    assert [line.split()[0] for line in lines[start + 1:start + 3]] == ["ce", "kd"]
    assert lines[start + 3].startswith("written to")
    report = json.loads(out.read_text())
    meta = report["meta"]
    assert meta["torch"] and meta["hardware"] and "bench" in meta["command"]
    assert meta["batch"] == 8 and meta["steps"] == 2
    assert [r["label"] for r in report["results"]] == ["ce", "kd"]
    for r in report["results"]:
        assert r["ms_mean"] > 0 and r["images_per_s"] > 0 and math.isfinite(r["final_loss"])
    kd = report["results"][1]
    assert kd["ratio_to_kd"] == pytest.approx(1.0)


def test_ratios_are_paired_round_by_round():
    from kdlab.tools.bench.bench import BenchResult, set_ratios

    def result(method, round_ms):
        return BenchResult(method, method, {}, 10, sum(round_ms) / len(round_ms), 0.0, 1.0,
                           None, 0.0, rounds=len(round_ms), round_ms=round_ms)

    # the machine slowed down 2x in round 2 and 3: paired ratios do not see it
    kd, fcfd = result("kd", [100.0, 200.0, 200.0]), result("fcfd", [210.0, 400.0, 380.0])
    set_ratios([fcfd, kd])
    assert fcfd.ratio_to_kd == pytest.approx(2.0)  # median of 2.1, 2.0, 1.9
    assert (fcfd.ratio_min, fcfd.ratio_max) == (pytest.approx(1.9), pytest.approx(2.1))
    assert kd.ratio_to_kd == 1.0
    lone = result("ce", [50.0])
    set_ratios([lone])  # no kd: no ratio
    assert lone.ratio_to_kd is None


def test_bench_rounds_take_turns_and_report_the_spread(tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(bench_args("--methods", "ce,kd", "--rounds", "2", "--out", str(out))) == 0
    printed = capsys.readouterr().out
    assert printed.index("ce (round 1/2)") < printed.index("kd (round 1/2)") \
        < printed.index("ce (round 2/2)") < printed.index("kd (round 2/2)")
    assert "2 rounds in turn" in printed
    report = json.loads(out.read_text())
    assert report["meta"]["rounds"] == 2
    ce, kd = report["results"]
    assert ce["rounds"] == 2 and len(ce["round_ms"]) == 2
    assert ce["ratio_min"] <= ce["ratio_to_kd"] <= ce["ratio_max"]
    assert kd["ratio_min"] == kd["ratio_max"] == pytest.approx(1.0)
    assert min(ce["round_ms"]) <= ce["ms_mean"] <= max(ce["round_ms"])


def test_bench_writes_csv_with_metadata(tmp_path, capsys):
    out = tmp_path / "results.csv"
    assert main(bench_args("--methods", "ce", "--out", str(out))) == 0
    lines = out.read_text().splitlines()
    meta = [line for line in lines if line.startswith("# ")]
    table = [line for line in lines if not line.startswith("# ")]
    assert any(line.startswith("# torch:") for line in meta)
    assert any(line.startswith("# hardware:") for line in meta)
    assert table[0].startswith("method,") and table[1].startswith("ce,")
    assert "-" in capsys.readouterr().out  # no kd in the list: no ratio, printed as '-'


@pytest.mark.parametrize("busy", [True, False])
def test_bench_takes_one_look_at_the_cores_and_records_threads_wait_and_load(
        busy, tmp_path, capsys, monkeypatch):
    """--threads auto beside a process that keeps one of 2 cores busy: 1 thread for the whole
    measurement, said in the header; the CSV's meta lines and every row record the threads,
    the wait policy and the 1-minute load."""
    import csv

    from support.cores import header, two_cores

    two_cores(monkeypatch, busy=1.0 if busy else 0.0)
    out = tmp_path / "results.csv"
    assert main(bench_args("--methods", "ce", "--no-flops", "--out", str(out))) == 0
    threads, line = (1 if busy else 2), header(1 if busy else 2, busy)
    assert line in capsys.readouterr().out.splitlines()
    lines = out.read_text().splitlines()
    meta = dict(row[2:].split(": ", 1) for row in lines if row.startswith("# "))
    assert (meta["threads"], meta["thread_policy"]) == (str(threads), line)
    assert meta["wait_policy"] == "spin, then sleep (OpenMP's default)"
    load = meta["load"].split()
    assert len(load) == 3 or meta["load"] == "n/a"
    rows = list(csv.DictReader(row for row in lines if not row.startswith("# ")))
    assert [r["method"] for r in rows] == ["ce"]
    assert (rows[0]["threads"], rows[0]["wait_policy"]) == (str(threads), meta["wait_policy"])
    assert rows[0]["load_1min"] == meta["load"].split(" ")[0]


@pytest.mark.parametrize("extra, message", [
    (["--methods", "ce,kdd"], "Did you mean 'kd'"),
    (["--methods", "kd:temprature=2"], "Did you mean 'temperature'"),
    (["--pair", "resnet20"], "TEACHER:STUDENT"),
    (["--pair", "resnet20:resnet9"], "Unknown model 'resnet9'"),
    (["--methods", "ce", "--out", "results.txt"], ".csv or .json"),
    (["--methods", "ce", "--rounds", "0"], "--rounds must be at least 1"),
])
def test_bench_user_errors(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(bench_args(*extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("kdlab: error:") and message in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_bench_times_the_detection_methods_on_random_boxes(tmp_path, capsys):
    out = tmp_path / "det.json"
    args = ["bench", "--preset", "scenes_det", "--device", "cpu", "--batch", "2", "--steps", "1",
            "--warmup", "0", "--methods", "kd,fcfd", "--out", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["meta"]["task"] == "detection"
    assert report["meta"]["student"] == "frcnn_tiny_r10_slim"
    assert [r["label"] for r in report["results"]] == ["kd", "fcfd"]
    assert all(math.isfinite(r["final_loss"]) for r in report["results"])
    capsys.readouterr()
    assert main(args[:-4] + ["--methods", "fcfd:num_paths=2"]) == 2  # no path sampling
    assert "Unknown key method.fcfd.num_paths" in capsys.readouterr().err


def test_bench_times_the_segmentation_methods_on_random_label_maps(tmp_path, capsys):
    out = tmp_path / "seg.json"
    args = ["bench", "--preset", "scenes_seg", "--device", "cpu", "--batch", "2", "--steps", "1",
            "--warmup", "0", "--methods", "ce,kd,skd,fcfd:num_paths=1", "--out", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["meta"]["task"] == "segmentation"
    assert (report["meta"]["teacher"], report["meta"]["student"]) == ("seg_resnet20",
                                                                       "seg_resnet8")
    results = {r["label"]: r for r in report["results"]}
    assert all(math.isfinite(r["final_loss"]) for r in results.values())
    assert results["ce"]["ratio_to_ce"] == 1.0 and results["kd"]["ratio_to_kd"] == 1.0
    assert "× ce" in capsys.readouterr().out


def test_bench_times_the_trainers_own_step_with_skds_critic(tmp_path, monkeypatch):
    """The bench runs kdlab.training.step.train_step, the trainer's step: SKD's critic is
    stepped by its own optimiser, as in training."""
    import kdlab.training.step as step_module

    seen: list[list[str]] = []
    real = step_module.train_step

    def spy(model, optim, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(sorted(optim.separate))
        return real(model, optim, *args, **kwargs)

    monkeypatch.setattr(step_module, "train_step", spy)
    args = ["bench", "--preset", "scenes_seg", "--device", "cpu", "--batch", "2", "--steps", "2",
            "--warmup", "0", "--methods", "skd", "--out", str(tmp_path / "skd.json")]
    assert main(args) == 0
    assert seen == [["critic"], ["critic"]]


# --------------------------------------------------------------------- FLOP and scaling
def test_flop_count_of_a_linear_step_is_the_hand_count():
    """One Linear(in=a, out=b) on a batch of n: forward 2nab (the product), backward 2nab
    (the weight's gradient; the input needs none); the bias adds no multiply-add."""
    import torch

    from kdlab.tools.bench.flops import step_flops

    n, a, b = 16, 32, 8
    net = torch.nn.Linear(a, b)
    x = torch.randn(n, a)
    assert step_flops(lambda: net(x).sum()) == 4 * n * a * b
    first = torch.nn.Linear(a, a)  # a layer before it: its output needs a gradient too
    assert step_flops(lambda: net(first(x)).sum()) == 4 * n * a * a + 6 * n * a * b


def test_bench_counts_a_distiller_step_like_the_hand_count():
    """bench_method's FLOP column on a 'network' of one Linear: the same hand count."""
    import torch

    from kdlab.tools.bench import bench
    from kdlab.tools.bench.flops import step_flops

    n, a, b = 8, 1 * 4 * 4, 10
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(a, b))
    x = torch.randn(n, 1, 4, 4)
    counted = step_flops(lambda: torch.nn.functional.cross_entropy(net(x), torch.arange(n)))
    assert counted == 4 * n * a * b
    assert bench.BenchResult("x", "x", {}, 1, 2.0, 0.0, 1.0, None, 0.0).gflop is None


def test_matmul_rate_is_positive_and_sized():
    from kdlab.tools.bench.flops import matmul_rate

    assert matmul_rate("cpu", size=64, min_seconds=0.0) > 0


def test_bench_reports_gflop_rate_and_matmul_fraction(tmp_path, capsys):
    out = tmp_path / "r.csv"
    args = ["bench", "--preset", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0",
            "--methods", "ce,kd", "--channels-last", "off", "--matmul-size", "256",
            "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "GFLOP/s" in printed and "× mm" in printed and "large-matmul rate" in printed
    import csv

    rows = list(csv.DictReader(line for line in out.read_text().splitlines()
                               if not line.startswith("#")))
    for r in rows:
        assert float(r["gflop"]) > 0 and float(r["gflops"]) > 0 and float(r["mm_fraction"]) > 0
    ce, kd = rows
    assert float(kd["gflop"]) > float(ce["gflop"])  # kd adds the teacher's forward
    meta = out.read_text()
    assert "# matmul_gflops:" in meta and "# channels_last: False" in meta and "# load:" in meta


def test_bench_scaling_writes_table_csv_and_plot(tmp_path, capsys):
    folder = tmp_path / "scaling"
    args = ["bench", "--preset", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0",
            "--methods", "ce", "--scaling", "batch", "--scaling-out", str(folder)]
    assert main(args) == 0
    assert {p.name for p in folder.iterdir()} == {"scaling.md", "scaling.csv", "scaling.png"}
    table = (folder / "scaling.md").read_text()
    assert "ms/iter grows as value^" in table and "| 2 |" in table and "| 16 |" in table
    lines = (folder / "scaling.csv").read_text().splitlines()
    assert lines[0].startswith("axis,value,method") and len(lines) == 1 + 4
    assert (folder / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(args[:-4] + ["--scaling", "width"]) == 2
    assert "batch, image, paths, bank" in capsys.readouterr().err


def test_scaling_exponent_and_points():
    from kdlab.tools.bench.bench import PRESETS, parse_methods
    from kdlab.tools.bench.scaling import axis_points, exponent

    assert exponent([1, 2, 4], [3.0, 6.0, 12.0]) == pytest.approx(1.0)
    assert exponent([1, 2, 4], [5.0, 5.0, 5.0]) == pytest.approx(0.0)
    p = PRESETS["cifar"]
    points = axis_points("image", p, parse_methods("kd"))
    assert [shape for _, _, _, shape in points] == [(3, 16, 16), (3, 32, 32), (3, 64, 64)]
    assert [s.options for _, s, _, _ in axis_points("paths", p, [])] == [
        {"num_paths": k} for k in (1, 2, 3, 4)]
    assert [s.options["num_negatives"] for _, s, _, _ in axis_points("bank", p, [])][-1] == 16384


def test_bench_compiles_and_reports_the_compile_cost(tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["bench", "--preset", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "0",
            "--methods", "ce", "--compile", "eager", "--channels-last", "on", "--no-flops",
            "--out", str(out)]
    assert main(args) == 0
    assert "compile (first step, untimed): ce" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["meta"]["compile"] == "eager" and report["meta"]["channels_last"] is True
    (ce,) = report["results"]
    assert ce["compile_s"] > 0 and ce["gflop"] is None and math.isfinite(ce["final_loss"])


def test_the_cpu_is_named_with_family_model_and_vector_unit():
    from kdlab.tools.bench.bench import cpu_name

    zen4 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
            "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 avx512f avx512bw\n\n"
            "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n")
    assert cpu_name(zen4) == "AMD EPYC (family 25 model 17, AVX-512)"
    assert cpu_name("model name\t: Intel Xeon\nflags\t: sse2 avx avx2\n") == "Intel Xeon (AVX2)"
    assert cpu_name("model name\t: Apple M2\n") == "Apple M2"
