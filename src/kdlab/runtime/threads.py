"""CPU thread policy: as many threads as this process's cores, and one when they are shared.

torch's OpenMP threads spin while they wait for each other. On an idle machine that is the
fastest way to run (a thread that sleeps between the many small parallel regions of a step
pays a wake-up each time: passive waiting made a resnet8 step on 2 cores 2x slower here), but
when another process holds one of the cores the spinning thread burns its core while its
partner waits to be scheduled, and a step becomes up to ten times slower
(``benchmarks/results/thread_policy.md``). So kdlab

- starts with as many intra-op threads as cores this process may run on: the CPU affinity
  mask and the cgroup CPU quota, not the host's core count, shared with torchrun's other
  local processes and with DataLoader workers that decode files (:func:`choose_threads`);
- while a CPU run trains with ``train.threads: auto``, keeps whichever of that count and one
  thread is faster, by timing a few steps of the other count now and then
  (:class:`ThreadGovernor`): a busy neighbour is met with one thread, an idle machine keeps
  every core;
- leaves OpenMP's wait policy to the user (``OMP_WAIT_POLICY``) and reports it.

``train.threads: N`` (or ``OMP_NUM_THREADS``) fixes the count for the whole run instead:
another thread count sums some reductions in another order, so only a fixed count gives
bit-identical weights whatever the machine's load (an ``auto`` run that switches is exact up
to that order). :func:`apply_thread_policy` sets the starting count and returns a
:class:`ThreadChoice` whose :meth:`~ThreadChoice.describe` is the line a run prints.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kdlab.errors import UserError

WAIT_POLICY = "OMP_WAIT_POLICY"


def wait_policy() -> str:
    """How OpenMP threads wait in this process, as the environment sets it."""
    chosen = os.environ.get(WAIT_POLICY, "").strip()
    if chosen:
        return f"{chosen.lower()} ({WAIT_POLICY})"
    return "spin, then sleep (OpenMP's default)"


# --------------------------------------------------------------------- cores
def affinity_cores() -> int:
    """CPUs in this process's affinity mask (``taskset``, container cpusets)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cgroup_paths(proc_cgroup: Path) -> dict[str, str]:
    """Controller -> this process's cgroup path, from ``/proc/self/cgroup`` ('' = v2)."""
    paths: dict[str, str] = {}
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return paths
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(","):
                paths[controller] = parts[2]
    return paths


def _read_quota(folder: Path, v2: bool) -> float | None:
    """CPUs allowed by the quota files in ``folder``, or None when unlimited or unreadable."""
    try:
        if v2:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        else:
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
    except (OSError, ValueError):
        return None
    if quota in ("max", "-1"):
        return None
    try:
        return int(quota) / int(period) if int(period) > 0 and int(quota) > 0 else None
    except ValueError:
        return None


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup"),
                     proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs this process's cgroup may use per period (``docker --cpus``, Kubernetes limits):
    the smallest quota from its cgroup up to the hierarchy's root, cgroup v2 (``cpu.max``) or
    v1 (``cpu.cfs_quota_us``); None when there is no quota."""
    paths = _cgroup_paths(proc_cgroup)
    limits = []
    for base, path, v2 in ((root, paths.get(""), True), (root / "cpu", paths.get("cpu"), False)):
        if path is None:
            continue
        folder = base / path.lstrip("/")
        while True:
            limit = _read_quota(folder, v2)
            if limit is not None:
                limits.append(limit)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return min(limits) if limits else None


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count chosen for this process, and why."""

    threads: int
    reason: str
    wait: str
    #: ``auto`` with more than one core: a training run may fall back to one thread while
    #: another process holds the cores (:class:`ThreadGovernor`)
    adaptive: bool = False

    def describe(self) -> str:
        """One line for a run's header."""
        shared = ", 1 while the cores are shared" if self.adaptive else ""
        return (f"CPU threads: {self.threads} ({self.reason}{shared}); OpenMP waits "
                f"{self.wait}")


def choose_threads(requested: int | str = "auto", *, loader_workers: int = 0,
                   local_processes: int | None = None) -> ThreadChoice:
    """The intra-op threads for ``requested`` (``"auto"`` or a number).

    ``auto``: ``OMP_NUM_THREADS`` when the user set it; else the cores this process may use
    (affinity, cgroup quota) divided among torchrun's local processes, less one core per busy
    DataLoader worker, at least 1.
    """
    wait = wait_policy()
    if requested != "auto":
        return ThreadChoice(int(requested), "train.threads", wait)
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return ThreadChoice(int(env), "OMP_NUM_THREADS", wait)
    cores = affinity_cores()
    why = [f"{cores} in this process's CPU affinity"]
    quota = cgroup_cpu_limit()
    if quota is not None and quota < cores:
        cores = max(1, math.floor(quota))
        why.append(f"a cgroup quota of {quota:g} CPUs")
    local = local_processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if local > 1:
        cores = max(1, cores // local)
        why.append(f"shared by {local} torchrun processes")
    if loader_workers > 0:
        cores = max(1, cores - loader_workers)
        why.append(f"less {loader_workers} DataLoader worker(s)")
    return ThreadChoice(cores, "auto: " + ", ".join(why), wait, adaptive=cores > 1)


#: the choice :func:`apply_thread_policy` made last
_applied: ThreadChoice | None = None


def parse_threads(value: str | int, where: str = "train.threads") -> int | str:
    """``"auto"`` or a positive thread count from a command line or recipe value."""
    if value == "auto":
        return value
    try:
        threads = int(value)
    except (TypeError, ValueError):
        threads = 0
    if threads < 1:
        raise UserError(f"{where} {value!r} is not known; use auto or a number of threads such "
                        "as 2.")
    return threads


def apply_thread_policy(requested: int | str = "auto", *, loader_workers: int = 0
                        ) -> ThreadChoice:
    """Choose the thread count (:func:`choose_threads`) and give it to torch."""
    import torch

    global _applied
    choice = choose_threads(requested, loader_workers=loader_workers)
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)
    _applied = choice
    return choice


def thread_summary() -> str:
    """The policy applied last in this process (:func:`apply_thread_policy`) as one line, or
    torch's own count when none was applied (a library caller's choice)."""
    import torch

    if _applied is not None and _applied.threads == torch.get_num_threads():
        return _applied.describe()
    return (f"CPU threads: {torch.get_num_threads()} (set outside kdlab's policy); "
            f"OpenMP waits {wait_policy()}")


class ThreadGovernor:
    """Keeps the faster of a run's thread count and one thread while it trains on a CPU.

    The trainer reports each step's time (:meth:`step`). Now and then the governor runs
    ``probe`` steps with the other count (one thread, or all of them when it runs one) and
    keeps that count if those steps were faster than the recent ones by more than ``margin``.
    Probes come after ``first_probe`` steps, then twice as far apart each time nothing
    changes (up to ``max_interval``), so an idle machine pays a probe less and less often; and
    at once when the recent steps become ``1 + 3 * margin`` times slower than the usual steps
    at this count (a neighbour arrived). The first step after any change is not timed.
    """

    def __init__(self, threads: int, *, set_threads: Callable[[int], None] | None = None,
                 note: Callable[[str], None] = print, window: int = 9, probe: int = 3,
                 first_probe: int = 24, max_interval: int = 384, margin: float = 0.15) -> None:
        if threads < 2:
            raise ValueError("a governor needs more than one thread to choose from")
        if set_threads is None:
            import torch

            set_threads = torch.set_num_threads
        self.full, self.current = threads, threads
        self.set_threads, self.note = set_threads, note
        self.probe, self.first_probe = probe, first_probe
        self.max_interval, self.margin = max_interval, margin
        self.recent: deque[float] = deque(maxlen=window)
        self.usual: dict[int, float] = {}  # the usual step time at each count, when known
        self.trial: list[float] = []
        self.interval = self.countdown = first_probe
        self.skip = 0
        self.steps = 0

    @property
    def other(self) -> int:
        return 1 if self.current == self.full else self.full

    def step(self, seconds: float) -> None:
        """Record one training step's wall time; may change the thread count for the next."""
        self.steps += 1
        if self.skip:
            self.skip -= 1
        elif self.trial or self.countdown <= 0:
            self._probe_step(seconds)
        else:
            self.recent.append(seconds)
            self.countdown -= 1
            if self._slowed_down():
                self.countdown, self.interval = 0, self.first_probe
            if self.countdown <= 0 and len(self.recent) >= 3:
                self._use(self.other)

    def _slowed_down(self) -> bool:
        if len(self.recent) < self.recent.maxlen:
            return False
        now = statistics.median(self.recent)
        usual = self.usual.setdefault(self.current, now)
        self.usual[self.current] = min(usual, now)
        return now > usual * (1 + 3 * self.margin)

    def _use(self, threads: int) -> None:
        self.set_threads(threads)
        self.skip = 1

    def _probe_step(self, seconds: float) -> None:
        self.trial.append(seconds)
        if len(self.trial) < self.probe:
            return
        now, then = statistics.median(self.trial), statistics.median(self.recent)
        if now < then * (1 - self.margin):
            before, self.current = self.current, self.other
            why = ("another process is using the cores" if self.current == 1
                   else "the cores are free again")
            self.note(f"CPU threads: {before} -> {self.current} at step {self.steps}: a step "
                      f"took {1000 * then:.0f} ms with {before}, {1000 * now:.0f} ms with "
                      f"{self.current} ({why}).")
            self.recent = deque(self.trial, maxlen=self.recent.maxlen)
            self.usual.pop(self.current, None)  # its old usual time was another machine's
            self.interval = self.first_probe
        else:
            self._use(self.current)
            self.usual[self.current] = then  # slower, but the other count is no better
            self.interval = min(2 * self.interval, self.max_interval)
        self.trial = []
        self.countdown = self.interval
