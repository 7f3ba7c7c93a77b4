"""Keeps a CPU training run fast while other processes come and go on its cores.

torch's OpenMP threads spin while they wait for each other. When another process holds one of
the cores a run's threads use, a spinning thread burns its core while the thread it waits for
is not scheduled, and a step becomes 10-27x slower (``benchmarks/results/thread_policy.md``);
with one thread fewer per busy core the run keeps its single-thread speed. So, while a run
trains with ``train.threads: auto``, the :class:`ThreadGovernor`

- looks at the cores before the run's work begins (:func:`look_at_cores`: before the model is
  built and the teacher evaluated): if other processes keep at least half a core of this
  process's cores busy, it starts with fewer threads;
- reads Linux's scheduler accounting after every step (:class:`CoreSensor`): when this
  process's threads wait for a CPU (another process arrived) it tries fewer threads, and when
  its cores sit idle (the neighbour left) it tries more;
- keeps a new count only if a few steps with it were faster than the recent ones ("probes"),
  and backs off from a signal that led to nothing.

Without that accounting (not Linux) it probes one thread now and then instead, less and less
often while nothing changes.
"""

from __future__ import annotations

import os
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CoreUse:
    """What happened on this process's cores during one interval."""

    seconds: float  #: wall time of the interval
    waiting: float  #: thread-seconds this process's threads were ready to run but not running
    idle: float  #: core-seconds this process's cores were idle
    others: float  #: core-seconds other processes ran on this process's cores


class CoreSensor:
    """Reads :class:`CoreUse` since the last read from the kernel's accounting: each thread's
    run-queue wait (``/proc/self/task/*/schedstat``) and the busy and idle time of the cores in
    this process's affinity mask (``/proc/stat``), less this process's own CPU time."""

    def __init__(self, proc: Path = Path("/proc"), cpus: set[int] | None = None, *,
                 own_cpu: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.proc, self.own_cpu, self.clock = proc, own_cpu, clock
        self.cpus = cpus if cpus is not None else set(os.sched_getaffinity(0))
        self.tick = 1.0 / os.sysconf("SC_CLK_TCK")
        self.waits: dict[str, int] = {}
        self.last = self._sample()

    @classmethod
    def of_this_process(cls) -> CoreSensor | None:
        """A sensor for this process, or None where the kernel does not keep the accounting."""
        try:
            sensor = cls()
            sensor.read()
        except (OSError, ValueError, AttributeError, IndexError):
            return None
        return sensor

    def _thread_waits(self) -> int:
        """Nanoseconds waited since the last read, summed over this process's threads."""
        total, seen = 0, {}
        for path in (self.proc / "self" / "task").glob("*/schedstat"):
            try:
                waited = int(path.read_text().split()[1])
            except (OSError, IndexError, ValueError):  # the thread ended meanwhile
                continue
            seen[path.parent.name] = waited
            total += max(0, waited - self.waits.get(path.parent.name, 0))
        self.waits = seen
        return total

    def _cores(self) -> tuple[int, int]:
        """Busy and idle clock ticks so far, summed over this process's cores."""
        busy = idle = 0
        for line in (self.proc / "stat").read_text().splitlines():
            if line.startswith("cpu") and line[3:4].isdigit():
                name, *ticks = line.split()
                if int(name[3:]) in self.cpus:
                    user, nice, system, wait_idle, iowait, irq, softirq = map(int, ticks[:7])
                    busy += user + nice + system + irq + softirq
                    idle += wait_idle + iowait
        return busy, idle

    def _sample(self) -> tuple[float, float, int, int, int]:
        busy, idle = self._cores()
        return self.clock(), self.own_cpu(), busy, idle, self._thread_waits()

    def read(self) -> CoreUse:
        """What happened on the cores since the last read."""
        now = self._sample()
        (t0, own0, busy0, idle0, _), (t1, own1, busy1, idle1, waited) = self.last, now
        self.last = now
        others = max(0.0, (busy1 - busy0) * self.tick - (own1 - own0))
        return CoreUse(seconds=max(t1 - t0, 1e-9), waiting=waited / 1e9,
                       idle=(idle1 - idle0) * self.tick, others=others)


@dataclass(frozen=True)
class Look:
    """What other processes did on this process's cores while it slept, before its work."""

    sensor: CoreSensor | None  #: None where the kernel keeps no accounting
    use: CoreUse | None  #: None without a sensor

    @property
    def busy(self) -> float:
        """Cores that other processes kept busy (0 without a sensor)."""
        return 0.0 if self.use is None else self.use.others / self.use.seconds

    def threads(self, full: int) -> int:
        """``full`` less one thread per core other processes kept busy (at least one), when
        they kept at least half a core busy; below that it is noise, not a neighbour."""
        busy = self.busy
        return max(1, full - max(1, round(busy))) if busy >= 0.5 else full


def look_at_cores(settle: float = 0.25) -> Look:
    """Sleep ``settle`` seconds and read what other processes did on this process's cores
    meanwhile (:class:`CoreSensor`): the look a governor takes before a run's first step, and
    a command that keeps one thread count for its whole work (a timing) takes at its start."""
    sensor = CoreSensor.of_this_process()
    if sensor is None:
        return Look(None, None)
    sensor.read()
    time.sleep(settle)
    return Look(sensor, sensor.read())


class ThreadGovernor:
    """Keeps the faster thread count of a CPU training run while its cores' use changes.

    The trainer reports each step's wall time (:meth:`step`) and calls :meth:`restart` where
    steps stop being consecutive (a new epoch after validation). With a :class:`CoreSensor`:
    when this process's threads waited for a CPU more than ``waiting_share`` of each of the
    last two steps, it probes fewer threads (one fewer per core other processes ran on, at
    least one); when half a core sat idle over the last three, it probes more. Without one, it
    probes the other of ``threads`` and one after ``first_probe`` steps, then twice as far
    apart each time nothing changes (up to ``max_interval``), and at once when the recent
    steps become ``1 + 3 * margin`` times slower than the usual ones. A probe runs ``probe``
    steps with the new count and keeps it if they were faster by more than ``margin`` than the
    recent steps (with a sensor: the two that signalled); after a probe that changed nothing,
    the next waits twice as long as the last wait (from ``first_probe``). The first step after
    any change is not timed.
    """

    def __init__(self, threads: int, *, set_threads: Callable[[int], None] | None = None,
                 note: Callable[[str], None] = print, sensor: CoreSensor | None = None,
                 window: int = 9, probe: int = 3, first_probe: int = 24,
                 max_interval: int = 384, margin: float = 0.15,
                 waiting_share: float = 0.05) -> None:
        if threads < 2:
            raise ValueError("a governor needs more than one thread to choose from")
        if set_threads is None:
            import torch

            set_threads = torch.set_num_threads
        self.full, self.current, self.candidate = threads, threads, threads
        self.set_threads, self.note, self.sensor = set_threads, note, sensor
        self.probe, self.first_probe = probe, first_probe
        self.max_interval, self.margin, self.waiting_share = max_interval, margin, waiting_share
        self.recent: deque[float] = deque(maxlen=window)
        self.uses: deque[CoreUse] = deque(maxlen=3)
        self.usual: dict[int, float] = {}  # the usual step time at each count, when known
        self.trial: list[float] = []
        self.probing = False
        self.interval = first_probe
        self.countdown = 0 if sensor is not None else first_probe
        self.skip = 0
        self.steps = 0

    @classmethod
    def after(cls, look: Look, threads: int, *, note: Callable[[str], None] = print
              ) -> ThreadGovernor:
        """A governor for this process that starts from ``look`` (:func:`look_at_cores`, taken
        before the run's work began) with its sensor and the thread count it suggests."""
        governor = cls(threads, note=note, sensor=look.sensor)
        if look.use is not None:
            governor.look_before_start(look.use)
        return governor

    # ------------------------------------------------------------------ signals
    def look_before_start(self, use: CoreUse) -> None:
        """Start with fewer threads when other processes keep this process's cores busy."""
        look = Look(self.sensor, use)
        threads = look.threads(self.full)
        if threads != self.current:
            before, self.current = self.current, threads
            self.set_threads(self.current)
            self.note(f"CPU threads: {before} -> {self.current} before the first step: other "
                      f"processes kept {look.busy:.1f} of this process's cores busy.")

    def _share(self, field: str, steps: int) -> float:
        uses = list(self.uses)[-steps:]
        return sum(getattr(u, field) for u in uses) / sum(u.seconds for u in uses)

    def _signalled(self) -> int | None:
        """The count the sensor's last steps suggest trying, or None."""
        if len(self.uses) >= 2 and self.current > 1:
            last_two = list(self.uses)[-2:]  # both: a kernel thread's burst lasts one step
            if all(u.waiting > self.waiting_share * u.seconds for u in last_two):
                return max(1, self.current - max(1, round(self._share("others", 2))))
        if len(self.uses) >= 3 and self.current < self.full:
            idle = self._share("idle", 3)
            if idle >= 0.5:
                return min(self.full, self.current + max(1, round(idle)))
        return None

    def _slowed_down(self) -> bool:
        if len(self.recent) < self.recent.maxlen:
            return False
        now = statistics.median(self.recent)
        usual = self.usual.setdefault(self.current, now)
        self.usual[self.current] = min(usual, now)
        return now > usual * (1 + 3 * self.margin)

    def _next_candidate(self) -> int | None:
        if self.sensor is not None:
            return self._signalled() if self.countdown <= 0 and len(self.recent) >= 2 else None
        if self._slowed_down():
            self.countdown, self.interval = 0, self.first_probe
        if self.countdown <= 0 and len(self.recent) >= 3:
            return 1 if self.current == self.full else self.full
        return None

    # ------------------------------------------------------------------- steps
    def restart(self) -> None:
        """Steps stop being consecutive here (validation ran): leave the next one untimed."""
        self.skip = max(self.skip, 1)
        if self.sensor is not None:
            self.sensor.read()

    def step(self, seconds: float) -> None:
        """Record one training step's wall time; may change the thread count for the next."""
        self.steps += 1
        use = self.sensor.read() if self.sensor is not None else None
        if self.skip:
            self.skip -= 1
        elif self.probing:
            self._probe_step(seconds)
        else:
            self.recent.append(seconds)
            if use is not None:
                self.uses.append(use)
            self.countdown -= 1
            candidate = self._next_candidate()
            if candidate is not None and candidate != self.current:
                self.candidate, self.probing = candidate, True
                self._use(candidate)

    def _use(self, threads: int) -> None:
        self.set_threads(threads)
        self.skip = 1

    def _probe_step(self, seconds: float) -> None:
        self.trial.append(seconds)
        if len(self.trial) < self.probe:
            return
        # with a sensor, the steps that signalled are the ones to beat: the window before them
        # may be from before a neighbour came or went
        recent = list(self.recent)[-2:] if self.sensor is not None else self.recent
        now, then = statistics.median(self.trial), statistics.median(recent)
        if now < then * (1 - self.margin):
            before, self.current = self.current, self.candidate
            why = ("another process is using the cores" if self.current < before
                   else "the cores are free again")
            self.note(f"CPU threads: {before} -> {self.current} at step {self.steps}: a step "
                      f"took {1000 * then:.0f} ms with {before}, {1000 * now:.0f} ms with "
                      f"{self.current} ({why}).")
            self.recent = deque(self.trial, maxlen=self.recent.maxlen)
            self.usual.pop(self.current, None)  # its old usual time was another machine's
            self.interval = self.first_probe
            self.countdown = 0 if self.sensor is not None else self.interval
        else:
            self._use(self.current)
            self.usual[self.current] = then  # slower, but the other count is no better
            self.interval = min(2 * self.interval, self.max_interval)
            self.countdown = self.interval
        self.trial, self.probing = [], False
        self.uses.clear()  # what the cores did at the old count says nothing about the new
