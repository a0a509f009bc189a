"""Ranks on torch.distributed: start them, count and time their collectives, surface failures.

:func:`launch` starts ``world`` processes (``torch.multiprocessing``, spawn) on a free localhost
port, ``gloo`` on CPU or ``nccl`` on CUDA, runs ``fn(rank, comm, *args)`` in each and returns
their results in rank order. A rank that raises, dies or outlives ``timeout_s`` stops the others
and becomes one :class:`RankError` line. :class:`Comm` wraps every collective the reference
model calls: it records, per phase and kind, the calls, the payload bytes (the tensor this rank
passes in; see :mod:`costmodel.parallel`) and the wall time spent inside the call (waiting for
slower peers included).
"""

from __future__ import annotations

import os
import queue as queue_mod
import socket
import time
import traceback
from collections import defaultdict
from datetime import timedelta

import torch
import torch.distributed as dist

from costmodel.errors import SpecError


class RankError(SpecError):
    """A rank failed: its number and its error, in one line."""


def free_port() -> int:
    """A free localhost TCP port (bind to port 0 and let the kernel pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def backend_for(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


class Comm:
    """The collectives of one rank, counted (payload bytes, calls) and timed per phase and kind."""

    def __init__(self, rank: int, world: int, device: torch.device, groups: dict | None = None):
        self.rank, self.world, self.device = rank, world, device
        self.groups = groups or {}  # name -> (process group, ranks)
        self.phase = "setup"
        # phase -> kind -> [calls, payload bytes, seconds]
        self.records: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0.0]))

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _record(self, kind: str, t: torch.Tensor, t0: float) -> None:
        self._sync()
        r = self.records[self.phase][kind]
        r[0] += 1
        r[1] += t.numel() * t.element_size()
        r[2] += time.perf_counter() - t0

    def _start(self) -> float:
        self._sync()
        return time.perf_counter()

    def all_reduce(self, t: torch.Tensor, group: str) -> torch.Tensor:
        """Sum ``t`` in place over ``group``'s ranks."""
        t0 = self._start()
        dist.all_reduce(t, group=self.groups[group][0])
        self._record("all_reduce", t, t0)
        return t

    def all_gather(self, t: torch.Tensor, group: str, dim: int = -1, kind: str = "all_gather") -> torch.Tensor:
        """Every rank's ``t`` (equal shapes) concatenated along ``dim`` in rank order; recorded
        as ``kind`` (expert parallelism's dispatch is an all-gather too)."""
        pg, ranks = self.groups[group]
        t = t.contiguous()
        outs = [torch.empty_like(t) for _ in ranks]
        t0 = self._start()
        dist.all_gather(outs, t, group=pg)
        self._record(kind, t, t0)
        return torch.cat(outs, dim=dim)

    def reduce_scatter(self, t: torch.Tensor, group: str, kind: str = "reduce_scatter") -> torch.Tensor:
        """The sum over ``group`` of ``t`` (dim 0 divisible by the group size), this rank's slice
        of dim 0 (its position in the group); the payload is ``t``, the buffer passed in."""
        pg, ranks = self.groups[group]
        t = t.contiguous()
        out = torch.empty((t.shape[0] // len(ranks),) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
        t0 = self._start()
        getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)(out, t, group=pg)
        self._record(kind, t, t0)
        return out

    def send(self, t: torch.Tensor, dst: int) -> None:
        t = t.contiguous()
        t0 = self._start()
        dist.send(t, dst)
        self._record("send", t, t0)

    def recv(self, shape, dtype, src: int) -> torch.Tensor:
        t = torch.empty(shape, dtype=dtype, device=self.device)
        t0 = self._start()
        dist.recv(t, src)
        self._record("recv", t, t0)
        return t

    def broadcast(self, t: torch.Tensor, src: int) -> torch.Tensor:
        t0 = self._start()
        dist.broadcast(t, src)
        self._record("broadcast", t, t0)
        return t

    def summary(self) -> dict:
        """{phase: {kind: {"calls", "bytes", "seconds"}}} (plain types, to send to the parent)."""
        return {p: {k: {"calls": c, "bytes": b, "seconds": s} for k, (c, b, s) in kinds.items()}
                for p, kinds in self.records.items()}


def _worker(rank: int, world: int, port: int, backend: str, fn, args: tuple, results, timeout_s: float):
    """One rank: join the group, run ``fn(rank, comm, *args)``, put (rank, ok, payload)."""
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)  # ranks share the cores; tiny ops gain nothing from more threads
    try:
        device = torch.device("cpu")
        if backend == "nccl":
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
        try:
            out = fn(rank, Comm(rank, world, device), *args)
        finally:
            dist.destroy_process_group()
        results.put((rank, True, out))
    except BaseException as e:  # reported to the parent, which stops the other ranks
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        at = f" (at {os.path.basename(where.filename)}:{where.lineno})" if where else ""
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        results.put((rank, False, f"{type(e).__name__}: {msg}{at}"))


def launch(fn, world: int, args: tuple = (), *, device: str = "cpu", timeout_s: float = 120.0) -> list:
    """Run ``fn(rank, comm, *args)`` on ``world`` ranks; their return values in rank order.

    ``fn`` must be importable at module level (spawn pickles it by name). Raises
    :class:`RankError` (one line) when a rank fails or the run exceeds ``timeout_s``.
    """
    import torch.multiprocessing as mp

    backend = backend_for(device)
    if backend == "nccl" and torch.cuda.device_count() < world:
        raise SpecError(f"{world} ranks need {world} CUDA devices; {torch.cuda.device_count()} found")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, backend, fn, args, results, timeout_s),
                         daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s
    got: dict[int, object] = {}
    error = None
    try:
        while len(got) < world and error is None:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(world)) - set(got))
                error = f"ranks {missing} did not finish within {timeout_s:g} s"
                break
            try:
                rank, ok, payload = results.get(timeout=min(left, 0.5))
            except queue_mod.Empty:
                dead = [r for r, p in enumerate(procs)
                        if r not in got and p.exitcode is not None and p.exitcode != 0]
                if dead:
                    # a last look: the rank may have reported just before dying
                    try:
                        rank, ok, payload = results.get(timeout=1.0)
                    except queue_mod.Empty:
                        error = f"rank {dead[0]} exited with code {procs[dead[0]].exitcode}"
                        break
                else:
                    continue
            if ok:
                got[rank] = payload
            else:
                error = _root_cause([(rank, payload)], results)
    finally:
        for p in procs:
            if error is not None and p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    if error is not None:
        raise RankError(error)
    return [got[r] for r in range(world)]


_PEER_FAILURE_WORDS = ("connection closed by peer", "connection reset", "broken pipe", "remote worker")


def _root_cause(failures: list, results, grace_s: float = 2.0) -> str:
    """The error to show when ranks fail: one rank's own exception makes its peers fail too, in a
    collective ("Connection closed by peer"), often first; wait ``grace_s`` for the other reports
    and prefer a failure that is not such a consequence."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            rank, ok, payload = results.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue_mod.Empty:
            break
        if not ok:
            failures.append((rank, payload))
    own = [f for f in failures if not any(w in str(f[1]).lower() for w in _PEER_FAILURE_WORDS)]
    rank, payload = (own or failures)[0]
    return f"rank {rank} failed: {payload}"


def smoke(rank: int, comm: Comm, fail_rank: int | None = None) -> float:
    """Sum of ``rank + 1`` over the ranks by one all-reduce; raises on ``fail_rank`` (to check
    that a failing rank surfaces as one line, not a hang)."""
    if rank == fail_rank:
        raise ValueError(f"rank {rank} was told to fail")
    t = torch.tensor([float(rank + 1)], device=comm.device)
    dist.all_reduce(t)
    return t.item()
