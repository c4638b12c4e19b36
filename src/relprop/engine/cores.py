"""How many of this process's cores other processes leave free, from the kernel's CPU counters.

Incremental passes run many small ops on crops of new shapes. Where another process holds a core, every small op
that torch runs on two threads waits for the second one (on a busy 2-core machine 8 steps on VGG-16 took 9.6x as long
with every op on both threads), so such passes ran on one thread. On a quiet machine that leaves cores idle that a
plain forward pass uses: on 2 free cores a second thread made VGG-16's plain pass 1.85x faster and its 8
region-perturbation steps 1.04x on one thread, 1.69x with their crops on both.

So a pass looks before it starts: the busy time the kernel counted on the cores this process may run on (Linux's
``/proc/stat``), less this process's own CPU time, over the wall time since the last look, is what other processes
used; the crops run on as many threads as that leaves free, at most torch's setting. Where the counters cannot be read
(not Linux) the crops stay on one thread.
"""
from __future__ import annotations

import os
import time

LOOK_EVERY = 0.05  # seconds: the kernel counts in ticks of 10 ms, so shorter spans say little; the last answer holds
HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_busy_seconds(cpus, path="/proc/stat") -> float | None:
    """Seconds the kernel counted as busy (user, nice, system, interrupts, steal) on these cores since boot; None
    where the counters cannot be read."""
    wanted = {f"cpu{cpu}" for cpu in cpus}
    try:
        with open(path, encoding="ascii") as stat:
            lines = [line.split() for line in stat if line.startswith("cpu")]
    except OSError:
        return None
    busy = 0
    for fields in lines:
        if fields[0] in wanted and len(fields) >= 9:
            user, nice, system, _, _, irq, softirq, steal = (int(value) for value in fields[1:9])
            busy += user + nice + system + irq + softirq + steal
    return busy / HZ


def _own_cpus() -> list:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


class FreeCores:
    """The cores other processes left free since the last look, and the threads a pass's crops may use.

    Args:
        busy: cpus -> the busy seconds counted on them since boot, or None where unknown.
        cpus: The cores this process may run on (its affinity by default).
        clock, own: Wall seconds and this process's CPU seconds (tests give their own, with ``busy``).
    """

    def __init__(self, busy=cpu_busy_seconds, cpus=None, clock=time.monotonic, own=time.process_time):
        self.busy, self.cpus = busy, _own_cpus() if cpus is None else list(cpus)
        self.clock, self.own = clock, own
        self.last = None  # (wall, busy, own CPU) seconds at the last look
        self.free: float | None = None  # cores free over the last span measured; None: not measured yet

    def look(self) -> float | None:
        """Cores free since the last look (the answer before where less than LOOK_EVERY passed), None before a
        first span was measured or where the counters cannot be read."""
        busy = self.busy(self.cpus)
        if busy is None:
            return None
        now = (self.clock(), busy, self.own())
        if self.last is None:
            self.last = now
            return self.free
        wall = now[0] - self.last[0]
        if wall >= LOOK_EVERY:
            others = ((now[1] - self.last[1]) - (now[2] - self.last[2])) / wall
            self.free = len(self.cpus) - max(others, 0.0)
            self.last = now
        return self.free

    def threads(self, most: int) -> int:
        """The threads crops may use now: as many cores as stood free (rounded), between 1 and most."""
        if most <= 1:
            return 1
        free = self.look()
        return 1 if free is None else max(1, min(most, int(free + 0.5)))
