"""Honest timing on a shared machine: which clock, at how many threads, under what load.

One measurement discipline serves ``costmodel calibrate`` (its per-model op tables),
``costmodel validate --timing`` and ``costmodel profile``:

- **The clock.** On a CPU at one thread, the per-thread CPU clock (``time.thread_time_ns``, i.e.
  ``clock_gettime(CLOCK_THREAD_CPUTIME_ID)``): it counts only the time this thread ran, so the
  time other processes hold the core is left out (with ``torch.set_num_threads(1)`` every ATen
  kernel runs inline on the calling thread, so nothing is missed). At more threads the work
  is spread over OpenMP workers this clock does not see, so wall time (``perf_counter_ns``) is used
  and the output says so. On a GPU: CUDA events after a warm-up (:class:`profiler.timing.CudaTimer`).
- **The statistic.** Calibration's op tables and validation alike visit every case in rounds
  spread over the run and take the geometric mean of the visits
  (:func:`profiler.model_timing.time_cases`: repeats back to back see one moment of a shared
  machine), with the floor beside it: :func:`floor_pct`, the median absolute deviation of the
  visits from their median, in percent of it. An error figure below the floor is noise.
  ``profile`` visits its variants (bare, phase timers, per-op hooks, the other KV-cache choice)
  in the same rounds (:func:`visit_orders`) and takes the median of the visits, with the same floor.
- **The load.** :func:`load_snapshot` reads ``os.getloadavg()`` and ``/proc/stat`` (the machine's
  busy, idle and steal jiffies); :func:`load_between` gives the share of the CPUs that was busy and
  stolen by a hypervisor between two snapshots. :func:`check_load` warns when the 1-minute load
  average per CPU is above 1 (runnable work exceeds the cores: the per-thread clock still leaves
  out the time others held our core, but caches and memory bandwidth are shared, and wall time is
  meaningless) and refuses above ``max_load`` per CPU (default 4: a runnable thread then gets
  about a quarter of a core, is switched out every few milliseconds and finds its caches cold
  again, so even CPU time inflates by more than the 5 % this project's timing targets; see
  benchmarks/README.md).
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import time

from costmodel.errors import SpecError
from costmodel.optable import MMAP_THRESHOLD_BYTES

DEFAULT_MAX_LOAD_PER_CPU = 4.0
WARN_LOAD_PER_CPU = 1.0


class LoadError(SpecError):
    """The machine is too loaded for a meaningful measurement (exit 2, one line)."""


def clock_name(device: str, threads: int) -> str:
    """"cuda" (events), "thread" (per-thread CPU time: one CPU thread) or "wall"."""
    if device == "cuda":
        return "cuda"
    return "thread" if threads == 1 else "wall"


def clock_ns(clock: str):
    """The function reading ``clock`` in nanoseconds (CPU clocks; CUDA times with events)."""
    return time.thread_time_ns if clock == "thread" else time.perf_counter_ns


def mmap_threshold_bytes(device: str) -> int | None:
    """The allocator's mmap threshold a CPU profile records (:data:`costmodel.optable.MMAP_THRESHOLD_BYTES`:
    glibc's, which torch's CPU allocator sits on); None on a GPU (the caching allocator keeps its
    blocks) or another C library (its threshold unknown: one regime)."""
    if device != "cpu" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return MMAP_THRESHOLD_BYTES


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _proc_stat() -> list[int] | None:
    """The aggregate ``cpu`` line of /proc/stat: user nice system idle iowait irq softirq steal ..."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            first = f.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    return [int(v) for v in first[1:]]


def load_snapshot() -> dict:
    """Load averages (1, 5, 15 min), the CPU count, and /proc/stat's jiffies, now."""
    try:
        la = os.getloadavg()
    except (AttributeError, OSError):
        la = (0.0, 0.0, 0.0)
    return {"loadavg": list(la), "cpus": cpu_count(), "stat": _proc_stat(), "time_s": time.time()}


def load_between(before: dict, after: dict) -> dict:
    """What the machine did between two snapshots: busy and steal share of all CPUs (None where
    /proc/stat is absent), and the 1-minute load average at both ends."""
    out = {"cpus": after["cpus"], "loadavg_1m_start": before["loadavg"][0], "loadavg_1m_end": after["loadavg"][0],
           "busy_share": None, "steal_share": None, "seconds": after["time_s"] - before["time_s"]}
    a, b = before.get("stat"), after.get("stat")
    if a and b:
        d = [y - x for x, y in zip(a, b)]
        total = sum(d[:8])  # user .. steal (guest time is already inside user)
        if total > 0:
            idle = d[3] + (d[4] if len(d) > 4 else 0)
            out["busy_share"] = (total - idle) / total
            out["steal_share"] = (d[7] if len(d) > 7 else 0) / total
    return out


def load_per_cpu(snapshot: dict) -> float:
    return snapshot["loadavg"][0] / max(1, snapshot["cpus"])


def check_load(snapshot: dict, max_load: float | None = DEFAULT_MAX_LOAD_PER_CPU) -> str | None:
    """None when the machine is quiet enough; a warning line when it is oversubscribed; a
    :class:`LoadError` when the 1-minute load per CPU exceeds ``max_load`` (None or 0: never)."""
    per = load_per_cpu(snapshot)
    la = snapshot["loadavg"][0]
    if max_load and per > max_load:
        raise LoadError(f"machine too loaded to time: 1-minute load average {la:.2f} on {snapshot['cpus']} CPUs "
                        f"({per:.2f} per CPU) exceeds --max-load {max_load:g} per CPU; wait for a quieter "
                        "machine or pass --max-load 0 to time anyway")
    if per > WARN_LOAD_PER_CPU:
        return (f"warning: 1-minute load average {la:.2f} on {snapshot['cpus']} CPUs ({per:.2f} per CPU): "
                "other work shares the cores; times use the per-thread CPU clock at 1 thread, but caches "
                "and memory bandwidth are shared, so expect a higher floor")
    return None


def floor_pct(values) -> float:
    """Run-to-run floor of repeated identical measurements: the median absolute deviation from
    their median, in percent of the median (0 for one value)."""
    xs = list(values)
    if len(xs) < 2:
        return 0.0
    med = statistics.median(xs)
    if med <= 0:
        return 0.0
    return 100.0 * statistics.median(abs(x - med) for x in xs) / med


def visit_orders(n: int, visits: int, seed: int = 0):
    """The rounds of a measurement: ``visits`` lists, each every index of ``range(n)`` once, in an
    order shuffled by ``seed`` and the round (so that no case is always timed after the same other
    one, and a slow stretch of the machine lands on different cases each round)."""
    for r in range(visits):
        order = list(range(n))
        random.Random(seed * 1_000_003 + r).shuffle(order)
        yield order


def set_threads(threads: int | None):
    """Set torch's intra-op threads (None: 1) and return a function restoring the old count."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads or 1)
    return lambda: torch.set_num_threads(old)


class PassTimer:
    """Time a callable as one pass with the chosen clock: ``seconds(fn)`` runs ``fn`` once."""

    def __init__(self, device: str, threads: int):
        self.clock = clock_name(device, threads)
        if self.clock == "cuda":
            import torch

            self._torch = torch
        else:
            self._ns = clock_ns(self.clock)

    def seconds(self, fn) -> float:
        if self.clock == "cuda":
            torch = self._torch
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            return a.elapsed_time(b) * 1e-3  # ms -> s
        t0 = self._ns()
        fn()
        return (self._ns() - t0) * 1e-9
