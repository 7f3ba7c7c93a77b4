"""The CPU thread policy (kdlab.runtime.threads): the thread count follows the cores this process
may use (affinity, cgroup quota, torchrun neighbours, DataLoader workers), or train.threads;
while a CPU run trains, the governor (kdlab.runtime.thread_governor) meets another process on
those cores with fewer threads and returns to every core when they are free.

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
from kdlab.runtime import thread_governor as G
from kdlab.runtime import threads as T
from support.cores import two_cores

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
    shared = ", fewer while other processes use them" if cores > 1 else ""
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
    assert "while other processes use them" not in T.ThreadChoice(1, "auto: 1", "x").describe()


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

    def run(self, governor: G.ThreadGovernor, steps: int) -> list[int]:
        used = []
        for _ in range(steps):
            used.append(self.threads)
            governor.step(self.times[self.threads])
        return used


def test_an_idle_machine_keeps_every_thread_and_probes_less_and_less_often():
    machine, notes = Machine({2: 0.05, 1: 0.085}), []
    gov = G.ThreadGovernor(2, set_threads=machine.set_threads, note=notes.append)
    used = machine.run(gov, 3000)
    assert notes == [] and gov.current == 2
    assert used[:24] == [2] * 24 and used[24:28] == [1] * 4
    # probes of 1 thread (+ its untimed step), twice as far apart each time, up to 384 steps
    assert used.count(1) <= 4 * (5 + 3000 // 384)
    assert used[-1000:].count(1) <= 4 * 3


def test_a_busy_neighbour_is_met_with_one_thread_and_its_departure_with_all_again():
    machine, notes = Machine({2: 0.05, 1: 0.085}), []
    gov = G.ThreadGovernor(2, set_threads=machine.set_threads, note=notes.append)
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
    gov = G.ThreadGovernor(2, set_threads=machine.set_threads, note=notes.append)
    machine.run(gov, 200)
    machine.times = {2: 0.1, 1: 0.17}  # e.g. the clock dropped: one thread is no better
    calls = len(machine.calls)
    machine.run(gov, 300)
    assert notes == [] and gov.current == 2
    assert len(machine.calls) - calls <= 2 * 4  # one early probe, then the usual schedule


def test_a_difference_within_the_margin_changes_nothing():
    machine, notes = Machine({2: 0.100, 1: 0.095}), []
    gov = G.ThreadGovernor(2, set_threads=machine.set_threads, note=notes.append)
    machine.run(gov, 500)
    assert notes == [] and gov.current == 2


def test_a_governor_needs_two_threads_to_choose_from():
    with pytest.raises(ValueError):
        G.ThreadGovernor(1, set_threads=lambda n: None)


class Cores:
    """A fake :class:`G.CoreSensor` for a :class:`Machine` with 2 cores: a neighbour, while
    present, keeps one core busy; the governor's threads wait for a CPU while it runs 2 of them
    beside it, and one core idles while it runs 1 thread alone."""

    def __init__(self, machine: Machine, neighbour: bool = False) -> None:
        self.machine, self.neighbour = machine, neighbour

    def read(self) -> G.CoreUse:
        seconds, threads = self.machine.times[self.machine.threads], self.machine.threads
        shared = self.neighbour and threads == 2
        return G.CoreUse(seconds=seconds, waiting=0.5 * seconds if shared else 0.0,
                         idle=seconds if not self.neighbour and threads == 1 else 0.0,
                         others=(0.5 if shared else 1.0) * seconds if self.neighbour else 0.0)


IDLE, SHARED = {2: 0.05, 1: 0.085}, {2: 0.6, 1: 0.1}


def sensed(machine: Machine, neighbour: bool = False) -> tuple[G.ThreadGovernor, Cores, list]:
    notes: list[str] = []
    cores = Cores(machine, neighbour)
    return G.ThreadGovernor(2, set_threads=machine.set_threads, note=notes.append,
                            sensor=cores), cores, notes


def test_with_the_kernels_accounting_an_idle_machine_is_never_probed():
    machine = Machine(IDLE)
    gov, _, notes = sensed(machine)
    assert set(machine.run(gov, 3000)) == {2} and notes == [] and machine.calls == []


def test_a_neighbour_found_before_the_first_step_is_met_with_one_thread_at_once():
    machine = Machine(SHARED)
    gov, cores, notes = sensed(machine, neighbour=True)
    gov.look_before_start(G.CoreUse(seconds=0.25, waiting=0.0, idle=0.0, others=0.25))
    assert gov.current == 1 and "2 -> 1 before the first step" in notes[0]
    assert set(machine.run(gov, 2000)) == {1}  # two threads beside it are never tried
    cores.neighbour, machine.times = False, dict(IDLE)  # it leaves
    used = machine.run(gov, 50)
    assert gov.current == 2 and "1 -> 2" in notes[1] and "free again" in notes[1]
    assert used.index(2) <= 3 and set(used[8:]) == {2}


def test_on_more_cores_the_governor_gives_up_one_thread_per_busy_core():
    calls: list[int] = []
    gov = G.ThreadGovernor(8, set_threads=calls.append, note=lambda _: None)
    gov.look_before_start(G.CoreUse(seconds=0.25, waiting=0.0, idle=1.0, others=0.65))
    assert gov.current == 5 and calls == [5]  # 2.6 cores busy: 3 threads fewer
    quiet = G.ThreadGovernor(8, set_threads=calls.append, note=lambda _: None)
    quiet.look_before_start(G.CoreUse(seconds=0.25, waiting=0.0, idle=1.9, others=0.1))
    assert quiet.current == 8 and calls == [5]  # 0.4 of a core: noise, not a neighbour


def test_a_neighbour_arriving_mid_run_is_met_within_a_few_steps():
    machine = Machine(IDLE)
    gov, cores, notes = sensed(machine)
    machine.run(gov, 100)
    cores.neighbour, machine.times = True, dict(SHARED)
    used = machine.run(gov, 500)
    assert used.index(1) <= 2 and set(used[6:]) == {1} and gov.current == 1
    assert "2 -> 1" in notes[0] and "another process is using the cores" in notes[0]


def test_a_signal_that_buys_nothing_is_probed_less_and_less_often():
    machine = Machine({2: 0.055, 1: 0.08})  # a neighbour beside which 2 threads stay faster
    gov, _, notes = sensed(machine, neighbour=True)
    used = machine.run(gov, 3000)
    assert notes == [] and gov.current == 2
    assert used.count(1) <= 4 * (6 + 3000 // 384)  # probes (+ untimed step) at doubling gaps


def test_the_first_step_of_an_epoch_is_not_timed():
    machine = Machine(IDLE)
    gov, _, _ = sensed(machine)
    gov.restart()
    gov.step(30.0)  # loader start-up after validation: not a step time
    assert list(gov.recent) == []


def fake_proc(root: Path, waits: dict[str, int], cpus: dict[int, tuple[int, int]]) -> None:
    """/proc/self/task/<tid>/schedstat (run, wait ns, slices) and /proc/stat per-core lines
    whose busy ticks are user and whose idle ticks are idle."""
    for tid, waited in waits.items():
        (root / "self" / "task" / tid).mkdir(parents=True, exist_ok=True)
        (root / "self" / "task" / tid / "schedstat").write_text(f"123 {waited} 4\n")
    lines = ["cpu  1 2 3 4 5 6 7 0 0 0"]
    lines += [f"cpu{n} {busy} 0 0 {idle} 0 0 0 0 0 0" for n, (busy, idle) in cpus.items()]
    (root / "stat").write_text("\n".join(lines) + "\nintr 1 2\n")


def test_the_core_sensor_reads_waits_idle_and_other_processes_on_this_processs_cores(tmp_path):
    clock, own = iter([0.0, 2.0]), iter([0.0, 0.5])
    fake_proc(tmp_path, {"10": 1_000, "11": 5_000}, {0: (100, 50), 1: (200, 60), 2: (0, 0)})
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    sensor = G.CoreSensor(tmp_path, cpus={0, 1}, own_cpu=lambda: next(own),
                          clock=lambda: next(clock))
    # thread 11 ended, 12 started; core 2 is outside the affinity mask and does not count
    (tmp_path / "self" / "task" / "11" / "schedstat").unlink()
    fake_proc(tmp_path, {"10": 300_001_000, "12": 200_000_000},
              {0: (100 + round(1.5 / tick), 50), 1: (200, 60 + round(0.5 / tick)),
               2: (10**6, 0)})
    use = sensor.read()
    assert use.seconds == pytest.approx(2.0)
    assert use.waiting == pytest.approx(0.5)
    assert use.idle == pytest.approx(0.5, abs=tick)
    assert use.others == pytest.approx(1.0, abs=tick)  # 1.5 busy, 0.5 of it this process's


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="no Linux /proc here")
def test_this_machines_kernel_gives_a_sensor_whose_readings_are_sane():
    sensor = G.CoreSensor.of_this_process()
    if sensor is None:
        pytest.skip("this kernel keeps no per-thread scheduler statistics")
    sum(i * i for i in range(200_000))
    use = sensor.read()
    assert use.seconds > 0 and use.waiting >= 0 and use.idle >= 0 and use.others >= 0
    assert use.idle <= use.seconds * len(sensor.cpus) + 0.05


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


@pytest.mark.parametrize("busy", [True, False])
def test_the_teacher_check_runs_at_the_count_of_the_look_before_the_run(
        busy, monkeypatch, tmp_path, capsys):
    import kdlab
    from conftest import tiny_staged
    from kdlab.tasks.classification.datasets.synthetic import generate
    from kdlab.training import teacher_check

    two_cores(monkeypatch, busy=1.0 if busy else 0.0)
    seen, real = [], teacher_check.teacher_scores
    monkeypatch.setattr(teacher_check, "teacher_scores",
                        lambda *a, **k: seen.append(torch_threads()) or real(*a, **k))
    monkeypatch.setattr("kdlab.training.report.plot_curves", lambda *a, **k: None)
    (xt, yt), (xv, yv) = generate()
    kdlab.distill(student=tiny_staged(seed=1), teacher=tiny_staged(seed=2),
                  train=(xt[:64], yt[:64]), val=(xv[:32], yv[:32]), epochs=1, batch_size=32,
                  eval_batch_size=32, device="cpu", progress="lines", method="kd",
                  out=tmp_path / "run")
    printed = capsys.readouterr().out.splitlines()
    assert seen == ([1] if busy else [2])
    noted = [line for line in printed if "before the first step" in line]
    assert len(noted) == busy
    if busy:  # the note comes before the teacher's score, the header before both
        header = next(i for i, line in enumerate(printed) if line.startswith("CPU threads: 2 ("))
        teacher = next(i for i, line in enumerate(printed) if line.startswith("teacher: "))
        assert header < printed.index(noted[0]) < teacher


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


@pytest.mark.parametrize("busy", [0.0, 0.3, 1.0])
def test_a_command_that_keeps_its_count_looks_at_the_cores_once_at_its_start(busy, monkeypatch):
    from support.cores import header

    two_cores(monkeypatch, busy=busy)
    choice = T.apply_thread_policy("auto", look=True)
    threads = 1 if busy >= 0.5 else 2  # 0.3 of a core: noise, not a neighbour
    assert (choice.threads, torch_threads()) == (threads, threads)
    assert choice.describe() == header(threads, busy=busy >= 0.5)  # no governor: no "fewer"
    assert T.thread_summary() == choice.describe()
    looks = []
    monkeypatch.setattr(G, "look_at_cores", lambda: looks.append(1))
    assert T.apply_thread_policy(2, look=True).threads == 2  # a number is kept as it is
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert T.apply_thread_policy("auto", look=True).reason == "OMP_NUM_THREADS"
    assert looks == []
