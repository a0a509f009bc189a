"""Timers with one interface for CPU and GPU, and the probe that times the generation loop.

- CPU: the clock :mod:`profiler.measure` picks (per-thread CPU time at one thread, else
  ``time.perf_counter_ns``) at the two ends of a region (CPU ops are synchronous).
- CUDA: a pair of ``torch.cuda.Event(enable_timing=True)`` recorded at the ends, read after one
  ``torch.cuda.synchronize()`` when the results are asked for; no sync inside the loop.

:class:`TimingProbe` times each phase, and with ``per_op=True`` also each layer and the parts of
it (projections, attention core, MLP), the LM head and the sampler, through forward hooks.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from costmodel.ops import timing_parts

from .generate import Probe


class CpuTimer:
    """``start(key)`` / ``stop(key)`` pairs; :meth:`seconds` gives every interval of each key.

    The clock is :mod:`profiler.measure`'s choice for the current torch thread count: the
    per-thread CPU clock at one thread (other processes' time on the core left out), wall time
    at more (:attr:`clock` says which)."""

    def __init__(self):
        from .measure import clock_name, clock_ns

        self.clock = clock_name("cpu", torch.get_num_threads())
        self._now = clock_ns(self.clock)
        self._open: dict = {}
        self._ns: dict = defaultdict(list)

    def start(self, key) -> None:
        self._open[key] = self._now()

    def stop(self, key) -> None:
        self._ns[key].append(self._now() - self._open.pop(key))

    def synchronize(self) -> None:
        pass

    def seconds(self) -> dict:
        return {k: [ns * 1e-9 for ns in v] for k, v in self._ns.items()}


class CudaTimer:
    """The same interface on a GPU: event pairs, read after synchronizing once."""

    def __init__(self):
        self._open: dict = {}
        self._pairs: dict = defaultdict(list)

    def start(self, key) -> None:
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        self._open[key] = e

    def stop(self, key) -> None:
        e = torch.cuda.Event(enable_timing=True)
        e.record()
        self._pairs[key].append((self._open.pop(key), e))

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def seconds(self) -> dict:
        torch.cuda.synchronize()
        return {k: [a.elapsed_time(b) * 1e-3 for a, b in v] for k, v in self._pairs.items()}  # ms -> s


def make_timer(device: torch.device):
    return CudaTimer() if device.type == "cuda" else CpuTimer()


# Modules timed per op, by their path in a block: (suffix, part), as registered in costmodel.ops
_PARTS = timing_parts()


class TimingProbe(Probe):
    """Times phases (always) and, with ``per_op``, layers and ops via forward hooks.

    Keys of :meth:`totals`: ``(phase, None, "total")`` for the phase, ``(phase, layer, part)`` for
    the parts of each layer (``part`` "layer" is the whole block), ``(phase, None, "lm_head")`` and
    ``(phase, None, "sampling")``. Values: seconds summed over the phase's steps.
    """

    def __init__(self, device: torch.device, per_op: bool = False):
        self.timer = make_timer(device)
        self.cuda = device.type == "cuda"
        self.peak_bytes: dict[str, int] = {}  # torch.cuda.max_memory_allocated per phase (GPU only)
        self.per_op = per_op
        self.current = None
        self._handles = []

    def attach(self, model) -> "TimingProbe":
        if not self.per_op:
            return self
        parts = dict(_PARTS)
        for name, mod in model.named_modules():
            key = None
            # layers, i, rest (an encoder-decoder's encoder.layers.i: the same keys, in phase encode)
            path = name.removeprefix("encoder.").split(".", 2)
            if name == "lm_head":
                key = (None, "lm_head")
            elif path[0] == "layers" and len(path) == 2:
                key = (int(path[1]), "layer")
            elif path[0] == "layers" and len(path) == 3 and path[2] in parts:
                key = (int(path[1]), parts[path[2]])
            if key is not None:
                self._handles.append(mod.register_forward_pre_hook(self._pre(key)))
                self._handles.append(mod.register_forward_hook(self._post(key)))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pre(self, key):
        def hook(mod, args):
            self.timer.start((self.current,) + key)
        return hook

    def _post(self, key):
        def hook(mod, args, out):
            self.timer.stop((self.current,) + key)
        return hook

    @contextmanager
    def phase(self, name: str):
        self.current = name
        self.timer.synchronize()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.timer.start((name, None, "total"))
        yield
        self.timer.stop((name, None, "total"))
        self.timer.synchronize()
        if self.cuda:
            self.peak_bytes[name] = torch.cuda.max_memory_allocated()

    def sample(self, phase, step, sampler, logits):
        if not self.per_op:
            return sampler(logits)
        self.timer.start((phase, None, "sampling"))
        out = sampler(logits)
        self.timer.stop((phase, None, "sampling"))
        return out

    def totals(self) -> dict:
        """Seconds per key, summed over the steps of the phase (parts summed over the 4 projections)."""
        return {k: sum(v) for k, v in self.timer.seconds().items()}


@dataclass(frozen=True)
class Stats:
    """Median and spread of repeated measurements, in seconds."""

    median: float
    min: float
    max: float
    runs: int

    @classmethod
    def of(cls, values) -> "Stats":
        values = list(values)
        return cls(statistics.median(values), min(values), max(values), len(values))

    def to_dict(self, prefix: str = "seconds") -> dict:
        return {prefix: self.median, f"{prefix}_min": self.min, f"{prefix}_max": self.max, "runs": self.runs}
