"""Collective communication times: latency + bytes / bandwidth, per algorithm (ring, tree).

Every formula here is ``t = base + hops x hop_latency + bytes x factor / bus_bw``, where
``bus_bw`` is what a rank's link achieves (the hardware's link bandwidth x its interconnect
efficiency) and ``factor`` is the share of the message each rank must move over its link. The
factors are nccl-tests' bus-bandwidth corrections (NVIDIA/nccl-tests ``doc/PERFORMANCE.md``,
"Summary"; commit a0b82b2), which turn algorithm bandwidth ``S / t`` into the bus bandwidth a
collective reaches at best:

    all-reduce      2 (n - 1) / n     (reduce-scatter, then all-gather)
    reduce-scatter  (n - 1) / n       (S: the whole input array, n x recvcount)
    all-gather      (n - 1) / n       (S: the whole output array, n x sendcount)
    all-to-all      (n - 1) / n       (S: the whole per-rank buffer, n x the per-peer count)
    broadcast       1
    send / recv     1

Algorithms and latencies follow NCCL's tuner (NVIDIA/nccl ``src/graph/tuning.cc``,
``ncclTunerConstantsDefaults`` and ``ncclTopoTuneModel``; commit 5067397, 2026-06-11):

- **ring**: ``nsteps`` hops, each one hop latency: all-reduce ``2 (n - 1)``, all-gather /
  reduce-scatter ``n - 1``; algorithm bandwidth = bus bandwidth x ``n / nsteps`` (so the time is
  ``factor x S / bus_bw``, the factor above);
- **tree** (all-reduce only; NCCL runs all-gather and reduce-scatter on rings): NCCL's double
  binary tree (Sanders et al. 2009; NVIDIA blog "Massively Scale Your Deep Learning Training with
  NCCL 2.4", 2019): reduce up the tree and broadcast down; latency
  ``2 x ((ranks_per_node - 1) + log2(nodes))`` hops (inside a node the tree is a chain;
  ``log2i`` rounds down, as NCCL's), algorithm bandwidth = bus bandwidth x 0.92 x 0.5 (tuning.cc:
  "busBw * .92" for tree all-reduce, then "ratio *= .5"), i.e. ``2 S / (0.92 bus_bw)``;
- **protocols** LL, LL128 and Simple trade bandwidth for latency: per-hop and base latencies
  from the tables below; bandwidth shares from tuning.cc's "model refinements": ring LL x 0.5,
  ring LL128 x 0.92, tree LL x 1/3.8, tree LL128 x 7/9 (one node) or 120/128; Simple x 1.
  Not modelled: NCCL's per-channel caps (``llMaxBws``, ``perChMax*Bw``), NVLS / CollNet / PAT,
  the tree correction factors by message size, and the chunk pipelining of very small messages.

:func:`nccl_all_reduce` picks the fastest (algorithm, protocol) as NCCL's tuner does (it minimises
the same modelled time over the enabled pairs). The plain functions (:func:`all_reduce_s` ...)
take one per-hop latency and an optional base latency; with ``base_latency_s=0`` the ring
all-reduce is the plan's original model (:func:`costmodel.plan.allreduce_seconds`), exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SpecError, require_choice

ALGORITHMS = ("ring", "tree")
PROTOCOLS = ("LL", "LL128", "Simple")
LINKS = ("nvlink", "pcie")  # the intra-node link kinds of NCCL's latency table (NCCL_HW_NVLINK, NCCL_HW_PCI)

_US = 1e-6
# NCCL src/graph/tuning.cc, ncclTunerConstantsDefaults.baseLatencies [algorithm][protocol], in us
NCCL_BASE_LATENCY_S = {
    "tree": {"LL": 6.8 * _US, "LL128": 14.0 * _US, "Simple": 8.4 * _US},
    "ring": {"LL": 6.6 * _US, "LL128": 14.0 * _US, "Simple": 8.4 * _US},
}
# ... .hwLatencies [NVLINK | PCI][algorithm][protocol], in us: one hop (one ring step, one tree level)
NCCL_HOP_LATENCY_S = {
    "nvlink": {"tree": {"LL": 0.6 * _US, "LL128": 1.25 * _US, "Simple": 4.0 * _US},
               "ring": {"LL": 0.6 * _US, "LL128": 1.9 * _US, "Simple": 3.4 * _US}},
    "pcie": {"tree": {"LL": 1.0 * _US, "LL128": 1.9 * _US, "Simple": 4.0 * _US},
             "ring": {"LL": 1.0 * _US, "LL128": 2.5 * _US, "Simple": 5.7 * _US}},
}
# Share of the Simple protocol's bus bandwidth each protocol reaches (tuning.cc, "Various model
# refinements"; tree all-reduce: busBw x .92 first, then these).
_TREE_ALLREDUCE_BW = 0.92
NCCL_PROTOCOL_BW = {
    "ring": {"LL": 0.5, "LL128": 0.92, "Simple": 1.0},
    "tree": {"LL": 1.0 / 3.8, "LL128": 7.0 / 9.0, "Simple": 1.0},  # LL128: one node (120/128 across nodes)
}
_TREE_LL128_MULTI_NODE = 120.0 / 128.0


def _check(n: int, message_bytes, bus_bw: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SpecError(f"ranks must be a positive integer, got {n!r}")
    if message_bytes < 0:
        raise SpecError(f"message bytes must be >= 0, got {message_bytes!r}")
    if not bus_bw > 0:
        raise SpecError(f"bus bandwidth must be positive, got {bus_bw!r}")


def log2i(n: int) -> int:
    """floor(log2 n) for n >= 1 (NCCL's ``log2i``)."""
    return n.bit_length() - 1


# --- bus-bandwidth factors (nccl-tests doc/PERFORMANCE.md) ------------------------------------

def bus_factor(kind: str, n: int) -> float:
    """nccl-tests' correction from algorithm bandwidth to bus bandwidth for ``kind`` over ``n``
    ranks: the share of the array ``S`` each rank moves over its link."""
    if kind == "all_reduce":
        return 2 * (n - 1) / n
    if kind in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    if kind in ("broadcast", "reduce", "send"):
        return 1.0
    raise SpecError(f"unknown collective {kind!r}; allowed: all_reduce, all_gather, reduce_scatter, "
                    "all_to_all, broadcast, reduce, send")


# --- one algorithm, one latency ---------------------------------------------------------------

def ring_steps(kind: str, n: int) -> int:
    """Hops of a ring collective: all-reduce 2 (n - 1), all-gather / reduce-scatter n - 1,
    broadcast n - 1 (a pipelined chain)."""
    return 2 * (n - 1) if kind == "all_reduce" else n - 1


def tree_hops(n: int, ranks_per_node: int = 1) -> int:
    """Hops of a double-binary-tree all-reduce over ``n`` ranks (NCCL's model): up and down a
    chain of ``ranks_per_node`` inside each node and a tree of depth log2i(nodes) across them:
    ``2 x ((ranks_per_node - 1) + log2i(n / ranks_per_node))``."""
    if n % ranks_per_node:
        raise SpecError(f"ranks_per_node={ranks_per_node} must divide the {n} ranks")
    return 2 * ((ranks_per_node - 1) + log2i(n // ranks_per_node))


def all_reduce_s(message_bytes, n: int, bus_bw: float, latency_s: float, algo: str = "ring",
                 base_latency_s: float = 0.0, ranks_per_node: int = 1) -> float:
    """All-reduce of ``message_bytes`` (the buffer every rank holds) over ``n`` ranks.

    ring: ``base + 2 (n - 1) x latency + 2 (n - 1) / n x S / bus_bw``;
    tree: ``base + tree_hops x latency + 2 S / (0.92 x bus_bw)`` (NCCL's tree: bus bandwidth x
    0.92, algorithm bandwidth half of it).
    """
    require_choice("algo", algo, ALGORITHMS)
    _check(n, message_bytes, bus_bw)
    if n == 1:
        return 0.0
    if algo == "ring":
        return base_latency_s + ring_steps("all_reduce", n) * latency_s + bus_factor("all_reduce", n) * message_bytes / bus_bw
    return base_latency_s + tree_hops(n, ranks_per_node) * latency_s + 2 * message_bytes / (_TREE_ALLREDUCE_BW * bus_bw)


def all_gather_s(total_bytes, n: int, bus_bw: float, latency_s: float, base_latency_s: float = 0.0) -> float:
    """Ring all-gather whose OUTPUT is ``total_bytes`` (n shards): ``base + (n - 1) x latency +
    (n - 1) / n x S / bus_bw`` (each rank receives the n - 1 shards it lacks)."""
    _check(n, total_bytes, bus_bw)
    if n == 1:
        return 0.0
    return base_latency_s + ring_steps("all_gather", n) * latency_s + bus_factor("all_gather", n) * total_bytes / bus_bw


def reduce_scatter_s(total_bytes, n: int, bus_bw: float, latency_s: float, base_latency_s: float = 0.0) -> float:
    """Ring reduce-scatter whose INPUT is ``total_bytes`` per rank: the same form as the
    all-gather (``(n - 1) / n x S``: each rank sends n - 1 partial shards)."""
    _check(n, total_bytes, bus_bw)
    if n == 1:
        return 0.0
    return base_latency_s + ring_steps("reduce_scatter", n) * latency_s + bus_factor("reduce_scatter", n) * total_bytes / bus_bw


def all_to_all_s(total_bytes, n: int, bus_bw: float, latency_s: float, base_latency_s: float = 0.0) -> float:
    """All-to-all of a per-rank buffer of ``total_bytes`` (n equal parts, one per peer):
    ``base + latency + (n - 1) / n x S / bus_bw``. NCCL runs it as one group of ncclSend /
    ncclRecv to every peer at once, so one hop latency, not n - 1 (nccl-tests ``src/alltoall.cu``:
    busBw = algBw x (n - 1) / n)."""
    _check(n, total_bytes, bus_bw)
    if n == 1:
        return 0.0
    return base_latency_s + latency_s + bus_factor("all_to_all", n) * total_bytes / bus_bw


def send_s(message_bytes, bus_bw: float, latency_s: float, base_latency_s: float = 0.0) -> float:
    """Point-to-point send (one pipeline hop): ``base + latency + S / bus_bw``."""
    _check(2, message_bytes, bus_bw)
    return base_latency_s + latency_s + message_bytes / bus_bw


def broadcast_s(message_bytes, n: int, bus_bw: float, latency_s: float, base_latency_s: float = 0.0) -> float:
    """Ring (pipelined chain) broadcast from one root: ``base + (n - 1) x latency + S / bus_bw``
    (every byte leaves the root once: bus factor 1)."""
    _check(n, message_bytes, bus_bw)
    if n == 1:
        return 0.0
    return base_latency_s + ring_steps("broadcast", n) * latency_s + message_bytes / bus_bw


# --- NCCL's choice -----------------------------------------------------------------------------

@dataclass(frozen=True)
class CollectiveTime:
    """The modelled time of one collective and the (algorithm, protocol) that gives it."""

    seconds: float
    algo: str
    proto: str


def _nccl_latencies(link: str, algo: str, proto: str, hop_latency_s: float | None) -> tuple[float, float]:
    require_choice("link", link, LINKS)
    hop = NCCL_HOP_LATENCY_S[link][algo][proto] if hop_latency_s is None else hop_latency_s
    return NCCL_BASE_LATENCY_S[algo][proto], hop


def nccl_all_reduce(message_bytes, n: int, bus_bw: float, link: str = "nvlink", *, nodes: int = 1,
                    hop_latency_s: float | None = None, protocols=PROTOCOLS) -> CollectiveTime:
    """NCCL's all-reduce: the fastest of ring and tree over ``protocols`` by the tuner's model.

    ``bus_bw`` is the Simple protocol's bus bandwidth (link x interconnect efficiency);
    ``hop_latency_s`` (a measured per-hop latency) replaces the table's for every pair when given.
    ``nodes``: ranks spread over that many nodes (``n / nodes`` per node; inside a node the tree is
    a chain, so on one node the ring wins at every size, as NCCL's tuner finds on one NVLink node).
    NB: the hops between nodes take the same per-hop latency as those inside one (NCCL's tuner
    uses its larger NET table and the network's own latency there); this model prices what the
    plan uses, the GPUs of one link domain.
    """
    if n == 1:
        return CollectiveTime(0.0, "ring", "Simple")
    best = None
    for algo in ALGORITHMS:
        for proto in protocols:
            require_choice("protocol", proto, PROTOCOLS)
            base, hop = _nccl_latencies(link, algo, proto, hop_latency_s)
            share = NCCL_PROTOCOL_BW[algo][proto]
            if algo == "tree" and proto == "LL128" and nodes > 1:
                share = _TREE_LL128_MULTI_NODE
            t = all_reduce_s(message_bytes, n, bus_bw * share, hop, algo, base, ranks_per_node=n // nodes)
            if best is None or t < best.seconds:
                best = CollectiveTime(t, algo, proto)
    return best


def _nccl_ring(fn, message_bytes, n, bus_bw, link, hop_latency_s, protocols) -> CollectiveTime:
    if n == 1:
        return CollectiveTime(0.0, "ring", "Simple")
    best = None
    for proto in protocols:
        base, hop = _nccl_latencies(link, "ring", proto, hop_latency_s)
        t = fn(message_bytes, n, bus_bw * NCCL_PROTOCOL_BW["ring"][proto], hop, base)
        if best is None or t < best.seconds:
            best = CollectiveTime(t, "ring", proto)
    return best


def nccl_all_gather(total_bytes, n: int, bus_bw: float, link: str = "nvlink", *,
                    hop_latency_s: float | None = None, protocols=PROTOCOLS) -> CollectiveTime:
    """NCCL's all-gather (rings only; the fastest protocol) of an output of ``total_bytes``."""
    return _nccl_ring(all_gather_s, total_bytes, n, bus_bw, link, hop_latency_s, protocols)


def nccl_reduce_scatter(total_bytes, n: int, bus_bw: float, link: str = "nvlink", *,
                        hop_latency_s: float | None = None, protocols=PROTOCOLS) -> CollectiveTime:
    """NCCL's reduce-scatter (rings only; the fastest protocol) of an input of ``total_bytes``."""
    return _nccl_ring(reduce_scatter_s, total_bytes, n, bus_bw, link, hop_latency_s, protocols)


def nccl_broadcast(message_bytes, n: int, bus_bw: float, link: str = "nvlink", *,
                   hop_latency_s: float | None = None, protocols=PROTOCOLS) -> CollectiveTime:
    """NCCL's ring broadcast (the fastest protocol)."""
    return _nccl_ring(broadcast_s, message_bytes, n, bus_bw, link, hop_latency_s, protocols)


def nccl_send(message_bytes, bus_bw: float, link: str = "nvlink", *,
              hop_latency_s: float | None = None) -> CollectiveTime:
    """A point-to-point send (NCCL's p2p runs the Simple protocol): ring Simple base latency +
    one hop + S / bus_bw."""
    base, hop = _nccl_latencies(link, "ring", "Simple", hop_latency_s)
    return CollectiveTime(send_s(message_bytes, bus_bw, hop, base), "p2p", "Simple")


def nccl_all_to_all(total_bytes, n: int, bus_bw: float, link: str = "nvlink", *,
                    hop_latency_s: float | None = None) -> CollectiveTime:
    """NCCL's all-to-all (grouped p2p, Simple protocol) of a per-rank buffer of ``total_bytes``."""
    if n == 1:
        return CollectiveTime(0.0, "p2p", "Simple")
    base, hop = _nccl_latencies(link, "ring", "Simple", hop_latency_s)
    return CollectiveTime(all_to_all_s(total_bytes, n, bus_bw, hop, base), "p2p", "Simple")
