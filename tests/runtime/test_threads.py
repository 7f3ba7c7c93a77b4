"""The CPU thread policy (kdlab.runtime.threads): the thread count follows the cores this process
may use (affinity, cgroup quota, torchrun neighbours, DataLoader workers), or train.threads;
while a CPU run trains, the governor keeps the faster of that count and one thread.

No test here times anything: what the policy buys is measured in
benchmarks/results/thread_policy.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kdlab.errors import UserError
from kdlab.runtime import threads as T

SRC = str(Path(__file__).resolve().parents[2] / "src")


def python(code: str, script: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (from the file ``script`` when given, as spawned
    processes need), with the environment of a user who set no thread variables (+ ``env``)."""
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "LOCAL_WORLD_SIZE")}
    clean["PYTHONPATH"] = SRC + os.pathsep + os.environ.get("PYTHONPATH", "")
    clean.update(env)
    code = textwrap.dedent(code)
    if script is not None:
        script.write_text(code)
    args = [str(script)] if script is not None else ["-c", code]
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=clean,
                          timeout=120)


def spin_count(stderr: str) -> int:
    """GNU OpenMP's spin count as it reports at start (OMP_DISPLAY_ENV=VERBOSE): 0 means its
    threads sleep at once when they wait."""
    found = re.search(r"GOMP_SPINCOUNT = '(\d+)'", stderr)
    if found is None:
        pytest.skip("torch's OpenMP runtime here is not GNU libgomp (no GOMP_SPINCOUNT)")
    return int(found.group(1))


# --------------------------------------------------------------- the wait policy
def test_the_wait_policy_is_the_users_and_is_reported(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert T.wait_policy() == "spin, then sleep (OpenMP's default)"
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    assert T.wait_policy() == "passive (OMP_WAIT_POLICY)"


def test_importing_kdlab_leaves_openmp_as_the_user_configured_it():
    out = python("import kdlab, torch; torch.ones(64, 64) @ torch.ones(64, 64)",
                 OMP_DISPLAY_ENV="VERBOSE")
    assert out.returncode == 0, out.stderr
    assert spin_count(out.stderr) == 300000  # GNU OpenMP's own default


def test_the_command_line_prints_its_thread_choice_in_the_header_and_report(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {name: synthetic, batch_size: 8, eval_batch_size: 32}\n"
                      "model: {student: resnet8}\nschedule: {name: constant, epochs: 1}\n"
                      f"train: {{device: cpu, max_steps_per_epoch: 1, progress: none, "
                      f"out_dir: {tmp_path / 'run'}}}\n")
    out = subprocess.run([sys.executable, "-m", "kdlab", "train", str(recipe)],
                         capture_output=True, text=True, timeout=300,
                         env={**{k: v for k, v in os.environ.items()
                                 if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")},
                              "PYTHONPATH": SRC})
    assert out.returncode == 0, out.stderr
    header = [line for line in out.stdout.splitlines() if line.startswith("CPU threads:")]
    cores = len(os.sched_getaffinity(0))
    shared = ", 1 while the cores are shared" if cores > 1 else ""
    assert header == [f"CPU threads: {cores} (auto: {cores} in this process's CPU affinity"
                      f"{shared}); OpenMP waits spin, then sleep (OpenMP's default)"]
    assert header[0] in (tmp_path / "run" / "report.md").read_text()


# --------------------------------------------------------------- the thread count
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_a_restricted_affinity_gives_one_thread_per_allowed_core():
    out = python("""
        import os
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        import torch
        from kdlab.runtime.threads import apply_thread_policy
        choice = apply_thread_policy("auto")
        print(choice.threads, torch.get_num_threads(), "|", choice.reason)
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1 1 | auto: 1 in this process's CPU affinity"
    assert "while the cores are shared" not in T.ThreadChoice(1, "auto: 1", "x").describe()


def test_a_number_or_omp_num_threads_wins_over_auto(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert T.choose_threads(3).threads == 3
    assert T.choose_threads(3).reason == "train.threads"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert (T.choose_threads("auto").threads, T.choose_threads("auto").reason) == (
        1, "OMP_NUM_THREADS")


def test_cores_are_shared_with_torchrun_neighbours_and_loader_workers(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(T, "affinity_cores", lambda: 16)
    monkeypatch.setattr(T, "cgroup_cpu_limit", lambda: None)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert T.choose_threads().threads == 4
    choice = T.choose_threads(loader_workers=3)
    assert choice.threads == 1
    assert choice.reason == ("auto: 16 in this process's CPU affinity, shared by 4 torchrun "
                             "processes, less 3 DataLoader worker(s)")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert T.choose_threads(loader_workers=20).threads == 1  # never below one


def test_a_cgroup_quota_below_the_affinity_limits_the_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(T, "affinity_cores", lambda: 8)
    monkeypatch.setattr(T, "cgroup_cpu_limit", lambda: 2.5)
    choice = T.choose_threads()
    assert (choice.threads, choice.reason) == (
        2, "auto: 8 in this process's CPU affinity, a cgroup quota of 2.5 CPUs")


def _cgroup(tmp_path: Path, lines: str) -> Path:
    proc = tmp_path / "proc_cgroup"
    proc.write_text(lines)
    return proc


def test_cgroup_v2_quota_is_the_smallest_from_the_leaf_to_the_root(tmp_path):
    root = tmp_path / "fs"
    leaf = root / "kube" / "pod"
    leaf.mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (root / "kube" / "cpu.max").write_text("150000 100000\n")
    (leaf / "cpu.max").write_text("400000 100000\n")
    proc = _cgroup(tmp_path, "0::/kube/pod\n")
    assert T.cgroup_cpu_limit(root, proc) == 1.5
    (root / "kube" / "cpu.max").write_text("max 100000\n")
    assert T.cgroup_cpu_limit(root, proc) == 4.0
    (leaf / "cpu.max").write_text("max 100000\n")
    assert T.cgroup_cpu_limit(root, proc) is None


def test_cgroup_v1_quota_and_unlimited(tmp_path):
    root = tmp_path / "fs"
    folder = root / "cpu" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("50000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    proc = _cgroup(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    assert T.cgroup_cpu_limit(root, proc) == 0.5
    (folder / "cpu.cfs_quota_us").write_text("-1\n")
    assert T.cgroup_cpu_limit(root, proc) is None
    assert T.cgroup_cpu_limit(root, tmp_path / "missing") is None


def test_quota_below_one_cpu_still_gives_one_thread(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(T, "affinity_cores", lambda: 4)
    monkeypatch.setattr(T, "cgroup_cpu_limit", lambda: 0.5)
    assert T.choose_threads().threads == 1


@pytest.mark.parametrize("bad", ["many", "0", -2, "1.5"])
def test_a_thread_count_that_is_not_auto_or_positive_is_refused(bad):
    with pytest.raises(UserError, match="use auto or a number of threads"):
        T.parse_threads(bad)


def test_the_recipe_setting_is_checked_before_a_run(tmp_path):
    from kdlab.core.config import load_config
    from kdlab.training.validate import validate_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {name: synthetic}\n")
    cfg = load_config(str(recipe), ["train.threads=lots"])
    with pytest.raises(UserError, match="train.threads 'lots' is not known"):
        validate_config(cfg)
    validate_config(load_config(str(recipe), ["train.threads=2"]))


# --------------------------------------------------------------- the governor
class Machine:
    """A fake CPU: a step's time for each thread count, which a test changes mid-run (a
    neighbour arrives or leaves); records the counts the governor sets."""

    def __init__(self, times: dict[int, float]) -> None:
        self.times, self.threads, self.calls = dict(times), 2, []

    def set_threads(self, n: int) -> None:
        self.threads = n
        self.calls.append(n)

    def run(self, governor: T.ThreadGovernor, steps: int) -> list[int]:
        used = []
        for _ in range(steps):
            used.append(self.threads)
            governor.step(self.times[self.threads])
        return used


def test_an_idle_machine_keeps_every_thread_and_probes_less_and_less_often():
    machine, notes = Machine({2: 0.05, 1: 0.085}), []
    gov = T.ThreadGovernor(2, set_threads=machine.set_threads, note=notes.append)
    used = machine.run(gov, 3000)
    assert notes == [] and gov.current == 2
    assert used[:24] == [2] * 24 and used[24:28] == [1] * 4
    # probes of 1 thread (+ its untimed step), twice as far apart each time, up to 384 steps
    assert used.count(1) <= 4 * (5 + 3000 // 384)
    assert used[-1000:].count(1) <= 4 * 3


def test_a_busy_neighbour_is_met_with_one_thread_and_its_departure_with_all_again():
    machine, notes = Machine({2: 0.05, 1: 0.085}), []
    gov = T.ThreadGovernor(2, set_threads=machine.set_threads, note=notes.append)
    machine.run(gov, 200)
    machine.times = {2: 0.6, 1: 0.1}  # a neighbour arrives: two threads collapse
    used = machine.run(gov, 1000)
    assert gov.current == 1 and len(notes) == 1
    assert "2 -> 1" in notes[0] and "another process is using the cores" in notes[0]
    assert "600 ms with 2, 100 ms with 1" in notes[0]
    assert used.index(1) <= 9  # noticed within a window of steps, not at the next probe
    assert used[20:].count(2) <= 4 * (4 + 1000 // 384)  # the slow count is only probed
    machine.times = {2: 0.05, 1: 0.085}  # it leaves
    machine.run(gov, 2000)
    assert gov.current == 2 and "1 -> 2" in notes[1] and "free again" in notes[1]


def test_a_slowdown_of_both_counts_is_probed_once_and_then_accepted():
    machine, notes = Machine({2: 0.05, 1: 0.085}), []
    gov = T.ThreadGovernor(2, set_threads=machine.set_threads, note=notes.append)
    machine.run(gov, 200)
    machine.times = {2: 0.1, 1: 0.17}  # e.g. the clock dropped: one thread is no better
    calls = len(machine.calls)
    machine.run(gov, 300)
    assert notes == [] and gov.current == 2
    assert len(machine.calls) - calls <= 2 * 4  # one early probe, then the usual schedule


def test_a_difference_within_the_margin_changes_nothing():
    machine, notes = Machine({2: 0.100, 1: 0.095}), []
    gov = T.ThreadGovernor(2, set_threads=machine.set_threads, note=notes.append)
    machine.run(gov, 500)
    assert notes == [] and gov.current == 2


def test_a_governor_needs_two_threads_to_choose_from():
    with pytest.raises(ValueError):
        T.ThreadGovernor(1, set_threads=lambda n: None)


def test_a_cpu_training_run_with_auto_threads_has_a_governor_and_logs_its_count(tmp_path):
    from kdlab.core.config import load_config
    from kdlab.training.trainer import Trainer

    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {name: synthetic, batch_size: 8, eval_batch_size: 32}\n"
                      "model: {student: resnet8}\nschedule: {name: constant, epochs: 1}\n"
                      "train: {device: cpu, max_steps_per_epoch: 2, progress: none}\n")
    for threads, governed in (("auto", T.affinity_cores() > 1), ("1", False)):
        out = tmp_path / f"run{threads}"
        cfg = load_config(str(recipe), [f"train.out_dir={out}", f"train.threads={threads}"])
        if "OMP_NUM_THREADS" in os.environ:
            governed = False
        trainer = Trainer(cfg)
        trainer.fit()
        assert (trainer.governor is not None) == governed
        header = (out / "metrics.csv").read_text().splitlines()[0]
        assert ("cpu_threads" in header) == governed
