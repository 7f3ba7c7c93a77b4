"""This process's cores as a test wants them: how many it may use (kdlab's thread policy,
:mod:`kdlab.runtime.threads`) and how busy other processes keep them (the look a governor or a
timing command takes, :func:`kdlab.runtime.thread_governor.look_at_cores`)."""

from __future__ import annotations

from kdlab.runtime import thread_governor as G
from kdlab.runtime import threads as T


class FakeCores:
    """A :class:`G.CoreSensor` of 2 cores that reads every interval alike: ``busy`` cores kept
    busy by other processes, the rest idle, and no thread waiting."""

    cpus = {0, 1}

    def __init__(self, busy: float) -> None:
        self.busy = busy

    def read(self) -> G.CoreUse:
        return G.CoreUse(seconds=0.25, waiting=0.0, idle=0.25 * (2 - self.busy),
                         others=0.25 * self.busy)


def two_cores(monkeypatch, busy: float = 0.0) -> None:
    """This process may use 2 cores (affinity, no cgroup quota), the user set no thread
    variables, and the kernel's accounting says other processes keep ``busy`` of them busy."""
    for name in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(T, "affinity_cores", lambda: 2)
    monkeypatch.setattr(T, "cgroup_cpu_limit", lambda: None)
    monkeypatch.setattr(G.CoreSensor, "of_this_process", classmethod(lambda c: FakeCores(busy)))
    monkeypatch.setattr(G.time, "sleep", lambda seconds: None)  # the look's wait: not needed


def header(choice_threads: int, busy: bool) -> str:
    """The thread line a command without a governor prints on 2 cores, idle or with one busy."""
    reason = ("auto: 2 in this process's CPU affinity, 1 because other processes kept 1.0 of "
              "these cores busy" if busy else "auto: 2 in this process's CPU affinity")
    return (f"CPU threads: {choice_threads} ({reason}); OpenMP waits spin, then sleep "
            "(OpenMP's default)")
