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
- while a CPU run trains with ``train.threads: auto``, meets a process that shares those cores
  with fewer threads and returns to every core when they are free again
  (:class:`kdlab.runtime.thread_governor.ThreadGovernor`);
- in a command that keeps one count for its whole work (``kdlab bench``, ``profile``,
  ``eval``, ...), looks at the cores once at its start and starts with fewer threads while
  other processes keep them busy (:func:`beside_other_processes`);
- leaves OpenMP's wait policy to the user (``OMP_WAIT_POLICY``) and reports it.

``train.threads: N`` (or ``OMP_NUM_THREADS``) fixes the count for the whole run instead:
another thread count sums some reductions in another order, so only a fixed count gives
bit-identical weights whatever the machine's load (an ``auto`` run that switches is exact up
to that order). :func:`apply_thread_policy` sets the starting count and returns a
:class:`ThreadChoice` whose :meth:`~ThreadChoice.describe` is the line a run prints.
"""

from __future__ import annotations

import dataclasses
import math
import os
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
        shared = ", fewer while other processes use them" if self.adaptive else ""
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


def beside_other_processes(choice: ThreadChoice) -> ThreadChoice:
    """``choice`` after one look at its cores, for a command that keeps its thread count (a
    timing, an evaluation): fewer threads while other processes keep cores busy, as a training
    run's governor starts (:func:`kdlab.runtime.thread_governor.look_at_cores`)."""
    from kdlab.runtime.thread_governor import look_at_cores

    look = look_at_cores()
    threads = look.threads(choice.threads)
    if threads == choice.threads:
        return dataclasses.replace(choice, adaptive=False)
    return ThreadChoice(threads, f"{choice.reason}, {threads} because other processes kept "
                        f"{look.busy:.1f} of these cores busy", choice.wait)


def apply_thread_policy(requested: int | str = "auto", *, loader_workers: int = 0,
                        look: bool = False) -> ThreadChoice:
    """Choose the thread count (:func:`choose_threads`) and give it to torch. ``look``: the
    count stays for the whole command (no governor), so an ``auto`` count is first checked
    against the other processes on the cores (:func:`beside_other_processes`)."""
    import torch

    global _applied
    choice = choose_threads(requested, loader_workers=loader_workers)
    if look and choice.adaptive:
        choice = beside_other_processes(choice)
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
