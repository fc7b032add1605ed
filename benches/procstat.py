"""CPU, memory, affinity and file-limit helpers built on ``/proc`` and ``os``.

The method asks for server CPU and RSS read from ``/proc/<pid>/stat`` and
``/proc/<pid>/status`` before and after the measured window, for livecomments and the
nginx worker alike, so everything here reads those files directly.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSample:
    """CPU seconds (user + system) and resident memory of a set of processes at one moment."""

    cpu_s: float
    rss_kb: int
    hwm_kb: int


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read().decode()
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (its own threads, not its children)."""
    fields = _stat_fields(pid)
    # After the ')' the fields start at "state" (field 3); utime is field 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def parent_pid(pid: int) -> int:
    return int(_stat_fields(pid)[1])


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB from ``/proc/<pid>/status``."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (scan of ``/proc``; fine for a handful of calls)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if parent_pid(int(name)) == pid:
                out.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def sample(pids: list[int]) -> ProcSample:
    """Sum CPU and memory over ``pids``; processes that have gone away count as zero."""
    cpu = 0.0
    rss = hwm = 0
    for pid in pids:
        try:
            cpu += cpu_seconds(pid)
            r, h = memory_kb(pid)
        except (OSError, ValueError, IndexError):
            continue
        rss += r
        hwm += h
    return ProcSample(cpu, rss, hwm)


def sample_sticky(pids: list[int], last_cpu: dict[int, float]) -> ProcSample:
    """Like :func:`sample`, but a process that has gone keeps counting with the CPU of its
    last reading (kept in ``last_cpu``), so the sum never drops when one of a set ends in
    the middle of a window (nginx's cache loader exits a minute after it starts)."""
    cpu = 0.0
    rss = hwm = 0
    for pid in pids:
        try:
            c = cpu_seconds(pid)
            r, h = memory_kb(pid)
        except (OSError, ValueError, IndexError):
            cpu += last_cpu.get(pid, 0.0)
            continue
        last_cpu[pid] = c
        cpu += c
        rss += r
        hwm += h
    return ProcSample(cpu, rss, hwm)


def raise_nofile() -> tuple[int, int, int]:
    """Raise the soft open-file limit to the hard limit; return (soft before, soft after, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = soft
    if hard == resource.RLIM_INFINITY:
        new = max(soft, 1_048_576)
    elif soft < hard:
        new = hard
    if new != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (ValueError, OSError):
            new = soft
    return soft, new, hard


def pin(cpu: int | None) -> bool:
    """Pin the calling process to one CPU if that CPU is available to it."""
    if cpu is None:
        return False
    try:
        if cpu in os.sched_getaffinity(0):
            os.sched_setaffinity(0, {cpu})
            return True
    except OSError:
        pass
    return False


def cpu_busy_times() -> dict[int, tuple[float, float]]:
    """Per CPU (busy, total) seconds since boot from ``/proc/stat`` (busy excludes idle and iowait)."""
    out: dict[int, tuple[float, float]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *vals = line.split()
            ticks = [int(v) for v in vals[:8]]  # user nice system idle iowait irq softirq steal
            total = sum(ticks)
            busy = total - ticks[3] - ticks[4]
            out[int(name[3:])] = (busy / CLK_TCK, total / CLK_TCK)
    return out


def busy_pct(before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]) -> dict[int, float]:
    """Share of each CPU that was busy (any process) between two :func:`cpu_busy_times` calls."""
    out = {}
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (b1, t1))
        out[cpu] = round(100.0 * (b1 - b0) / (t1 - t0), 1) if t1 > t0 else 0.0
    return out
