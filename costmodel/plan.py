"""Capacity planning: does a model fit, how large a batch and context, how fast, how many GPUs, at what cost.

Everything is per GPU of one replica laid out as ``tp`` x ``pp`` GPUs (:class:`Layout`), and every
rule is stated in :data:`ASSUMPTIONS` (printed by ``costmodel plan``):

- Memory of the fullest GPU = weights + KV cache (``prompt + gen - 1`` positions) + the prefill
  activation peak + a runtime reserve (``reserve_fraction`` of capacity) <= capacity. "Does not
  fit" is a result: ``fits=False`` with ``missing_bytes``; ``max_batch=0``.
- Tensor parallelism (Megatron-style) splits the attention heads, the MLP width and the LM head
  over ``tp`` GPUs: their weights, KV cache, FLOPs and bytes divide by ``tp`` (per-GPU shares of an
  uneven split rounded up); norms, residual adds and the embedding lookup are replicated. Each
  layer adds two all-reduces per pass (after the attention output and the MLP down projection) of
  ``tokens * hidden`` activations, timed with a ring all-reduce: each GPU sends and receives
  ``2 (tp - 1) / tp`` times the message over the link, plus ``2 (tp - 1)`` step latencies.
- Pipeline parallelism splits the layers into ``pp`` consecutive stages (the first also holds the
  embedding, the last the final norm and LM head). Stages run one after the other for a batch (no
  micro-batching), so PP lowers memory per GPU, not latency; each stage boundary adds one hop of
  ``tokens * hidden`` activations.
- Throughput: a batch of B requests runs prefill then decode (static batching); a replica serves
  ``B / e2e(B)`` requests per second. SLOs bound the TTFT and the mean TPOT at that batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from . import engine as E
from . import quant as Q
from .analysis import StepCost, activation_peak_bytes, decode_step_cost, memory_of, prefill_cost, weight_bytes, window_split
from .dtypes import DTYPE_BITS, nbytes
from .errors import SpecError
from .hardware import Hardware
from . import collectives as C
from .parallel import (TOKEN_ID_BYTES, Layout, activation_bytes, allowed_tp, check_split, ep_view, moe_layers,
                       shard_step, split_vocab, stage_kv_cache_bytes, stage_groups, stage_range, stage_view,
                       tp_share)  # the one model of the split
from .roofline import Timing, first_polynomial_step, predict, rates, timing_from
from .spec import ModelSpec, Workload

DEFAULT_RESERVE_FRACTION = 0.10  # like vLLM's default gpu_memory_utilization=0.9
_MAX_SEARCH = 1 << 40  # upper bound for batch / context searches (memory always grows with both)

ASSUMPTIONS = (
    "capacity is the total the device reports (nvidia-smi memory.total, catalog memory_reported_bytes) "
    "where known, else the vendor figure read as SI (80 GB = 80e9 bytes); the output says which",
    "memory per GPU (the fullest pipeline stage) = weights + KV cache at prompt + gen - 1 positions "
    "+ prefill activation peak (eager attention, scores materialised, whole batch prefilled at once) "
    "+ runtime reserve (CUDA context, allocator fragmentation, communication buffers)",
    "latency per op = max(FLOPs / (peak x flops efficiency), bytes / (bandwidth x bandwidth "
    "efficiency)) + per-op overhead; decode summed step by step",
    "tp splits heads, MLP width and LM head (weights, KV, FLOPs); norms, residuals and embedding "
    "replicated; 2 ring all-reduces per layer per pass: 2(tp-1)/tp x message / (link x efficiency) "
    "+ 2(tp-1) x link latency",
    "pp splits layers into stages run one after the other (no micro-batching): less memory per "
    "GPU, same compute time, one activation hop per stage boundary",
    "collectives 'ring' (the default, the eager engine's): as above, no logits all-gather; 'nccl': "
    "all-reduces as NCCL's tuner picks ring or tree and LL / LL128 / Simple (its base and per-hop "
    "latencies), the vocab-parallel logits all-gather, p2p hops and the token-id broadcast, every pass",
    "tp pads a vocabulary it does not divide to a multiple of 128 x tp rows (Megatron-LM); the padded "
    "rows are counted in the embedding and LM-head weights, FLOPs, bytes and the logits all-gather",
    "ep (mixture of experts, tp = pp = 1): E / ep experts per GPU, ceil(batch / ep) sequences each; "
    "per MoE layer an all-gather dispatch and a reduce-scatter combine of the ep GPUs' tokens",
    "throughput: static batching, requests/s per replica = batch / end-to-end latency; the TPOT "
    "SLO applies to the mean over decode steps",
)


# --- Layout (costmodel.parallel.Split: tp tensor-parallel x pp pipeline stages) -----------------

def check_links(hw: Hardware, layout: Layout) -> None:
    """SpecError unless ``hw`` has a link to join the GPUs of ``layout``."""
    if layout.gpus > 1 and hw.link_for(layout.gpus) is None:
        raise SpecError(f"{hw.id} has no interconnect or PCIe bandwidth in its profile, so tp and pp "
                        "must be 1 (add pcie_bandwidth_bytes_per_s to a --hardware file)")


def check_layout(spec: ModelSpec, hw: Hardware, layout: Layout) -> None:
    """SpecError unless the plan can split ``spec`` as ``layout`` (:func:`costmodel.parallel.check_split`,
    uneven shares rounded up) and ``hw`` links its GPUs."""
    check_split(spec, layout, rounding="ceil")
    check_links(hw, layout)


def layout_for_gpus(spec: ModelSpec, hw: Hardware, gpus: int) -> Layout:
    """A layout for ``gpus`` GPUs: the largest allowed tp that divides ``gpus`` and fits in the
    interconnect's domain (tensor parallelism needs the fast link), the rest as pipeline stages."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise SpecError(f"gpus must be a positive integer, got {gpus!r}")
    domain = hw.interconnect_gpus if hw.interconnect_bandwidth_bytes_per_s else 1
    tp = max(t for t in allowed_tp(spec) if gpus % t == 0 and t <= max(domain, 1))
    layout = Layout(tp, gpus // tp)
    check_layout(spec, hw, layout)
    return layout


# --- Per-GPU memory under tensor / pipeline parallelism ----------------------------------------------

def _replicated_layer_params(spec: ModelSpec) -> int:
    """Parameters of one block every tensor-parallel GPU holds: the norms (q/k norms included) and
    the biases added after a row-parallel matmul (attention output, MLP down)."""
    p = spec.block_norms * spec.norm_params() + spec.qk_norm_params()
    if spec.mla:  # q_a_proj, kv_a_proj and their norms (and biases): not split by heads
        r_q, r_kv, h = spec.q_lora_rank or 0, spec.kv_lora_rank, spec.hidden_size
        p += (h * r_q + r_q) + h * (r_kv + spec.qk_rope_head_dim) + r_kv
        if spec.attention_bias:
            p += r_q + r_kv + spec.qk_rope_head_dim
    if spec.attention_out_bias:
        p += spec.hidden_size
    if spec.mlp_bias:
        p += spec.hidden_size
    return p


def stage_weight_params(spec: ModelSpec, layout: Layout, stage: int) -> int:
    """Parameters one GPU of pipeline stage ``stage`` holds (exact; uneven tp shares rounded up).

    Summed over the tp x pp GPUs with tp = pp = 1 this is ``spec.num_params``.
    """
    tp, pp = layout.tp, layout.pp
    layers = stage_range(spec.num_layers, pp, stage)
    rep = _replicated_layer_params(spec)
    experts = spec.num_experts // layout.ep if spec.num_experts else None  # ep: E / ep experts per GPU
    params = sum(g.count * (tp_share(spec.layer_params(experts, mlp=g.mlp) - rep, tp) + rep)
                 for g, _ in stage_groups(((g, ()) for g in spec.layer_groups()), layers))
    vocab_rows = spec.vocab_size * spec.embedding_dim  # embedding and LM head, vocab-parallel
    padded_rows = split_vocab(spec, layout) * spec.embedding_dim  # padded where tp does not divide V
    first, last = stage == 0, stage == pp - 1
    if first:
        params += tp_share(padded_rows, tp) + (spec.embedding_params() - vocab_rows)
    if last:
        params += spec.norm_params() + spec.head_extra_params()  # final norm; OPT's project_out, head bias
        if not spec.tie_word_embeddings or not first:  # a tied head on another stage needs its copy
            params += tp_share(padded_rows, tp)
    return params


def stage_weight_bytes(spec: ModelSpec, wl: Workload, layout: Layout, stage: int) -> int:
    """Weight bytes one GPU of ``stage`` holds: :func:`stage_weight_params` at ``wl.weight_dtype``;
    with a quantisation scheme (``wl.quant``) each block's quantised matrices (packed, scales,
    zeros: :func:`costmodel.quant.layer_quantised`) as a tp share of their bytes instead (MLA's
    q_a_proj and kv_a_proj, which plans replicate, are then counted as split: an approximation)."""
    params = stage_weight_params(spec, layout, stage)
    scheme = Q.scheme_of(wl.quant)
    if scheme is None:
        return _bytes_of(params, wl.weight_dtype)
    if layout.ep > 1:
        raise SpecError(f"quantisation ({wl.quant}) with expert parallelism (ep={layout.ep}) is not modelled; "
                        "allowed: ep 1 with a quantisation scheme, or quant none with ep > 1")
    packed = 0
    for g, _ in stage_groups(((g, ()) for g in spec.layer_groups()), stage_range(spec.num_layers, layout.pp, stage)):
        q_params, q_bytes = Q.layer_quantised(scheme, spec, g.mlp)
        params -= g.count * tp_share(q_params, layout.tp)
        packed += g.count * tp_share(q_bytes, layout.tp)
    return _bytes_of(params, wl.weight_dtype) + packed


def _bytes_of(params: int, dtype: str) -> int:
    """Bytes of ``params`` values of ``dtype``, rounded up to a whole byte (sub-byte shards)."""
    return -(-params * DTYPE_BITS[dtype] // 8)


@dataclass(frozen=True)
class MemoryUse:
    """Bytes on the fullest GPU of a replica, and whether they fit."""

    weights_bytes: int
    kv_bytes: int
    activations_bytes: int
    reserve_bytes: int
    capacity_bytes: int
    stage: int = 0  # which pipeline stage is the fullest
    kv_block_tokens: int | None = None  # a paged cache (costmodel.engine): positions per block and layer
    kv_blocks_per_sequence: int | None = None  # blocks one sequence holds, all layers of the GPU
    kv_block_bytes: int | None = None  # one block of one layer on this GPU

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.activations_bytes + self.reserve_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.capacity_bytes

    @property
    def missing_bytes(self) -> int:
        return max(0, self.total_bytes - self.capacity_bytes)

    @property
    def free_bytes(self) -> int:
        return max(0, self.capacity_bytes - self.total_bytes)

    @property
    def paged(self) -> bool:
        return self.kv_block_tokens is not None

    @property
    def kv_blocks(self) -> int | None:
        """Blocks the KV cache holds (a paged cache; None otherwise)."""
        return None if not self.paged else self.kv_bytes // self.kv_block_bytes

    @property
    def kv_blocks_available(self) -> int | None:
        """Blocks the budget leaves for the KV cache: (capacity - reserve - weights - activations)
        // block bytes (vLLM's num_gpu_blocks); None for a contiguous cache."""
        if not self.paged:
            return None
        room = self.capacity_bytes - self.reserve_bytes - self.weights_bytes - self.activations_bytes
        return max(0, room) // self.kv_block_bytes

    def to_dict(self) -> dict:
        d = {"weights_bytes": self.weights_bytes, "kv_bytes": self.kv_bytes,
             "activations_bytes": self.activations_bytes, "reserve_bytes": self.reserve_bytes,
             "total_bytes": self.total_bytes, "capacity_bytes": self.capacity_bytes,
             "free_bytes": self.free_bytes, "missing_bytes": self.missing_bytes,
             "fits": self.fits, "stage": self.stage}
        if self.paged:
            d.update({"kv_block_tokens": self.kv_block_tokens, "kv_block_bytes": self.kv_block_bytes,
                      "kv_blocks_per_sequence": self.kv_blocks_per_sequence, "kv_blocks": self.kv_blocks,
                      "kv_blocks_available": self.kv_blocks_available})
        return d


def reserve_bytes(hw: Hardware, reserve_fraction: float) -> int:
    return round(hw.capacity_bytes * reserve_fraction)


def engine_reserve_bytes(hw: Hardware, engine, reserve_fraction: float | None) -> int:
    """The reserve: ``reserve_fraction`` of capacity when given (or when the engine has no memory
    budget), else what the engine's budget leaves: capacity - floor(memory_utilization x capacity)."""
    if reserve_fraction is None:
        if engine is not None and engine.memory_utilization is not None:
            return hw.capacity_bytes - E.budget_bytes(engine, hw)
        reserve_fraction = DEFAULT_RESERVE_FRACTION
    return reserve_bytes(hw, reserve_fraction)


def _tp_spec(spec: ModelSpec, tp: int) -> ModelSpec:
    """The kv heads of one tensor-parallel GPU (as :func:`costmodel.parallel.stage_kv_cache_bytes`)."""
    if tp == 1:
        return spec
    return spec.with_(num_heads=spec.num_heads // tp, num_kv_heads=spec.num_kv_heads // tp, head_dim=spec.head_dim)


def engine_memory_use(spec: ModelSpec, hw: Hardware, wl: Workload, layout: Layout, reserve_fraction, engine) -> MemoryUse:
    """:func:`memory_use` under a non-reference ``engine`` (:mod:`costmodel.engine`): the KV cache
    in blocks when paged (blocks per sequence and layer, a sliding layer its window), the engine's
    budget in place of the flat reserve (unless ``reserve_fraction`` is given), the activation peak
    of its largest pass (a chunk of at most max_num_batched_tokens tokens with chunked prefill; no
    score matrix with flash attention)."""
    reserve = engine_reserve_bytes(hw, engine, reserve_fraction)
    if layout.ep > 1:
        raise SpecError(f"expert parallelism (ep={layout.ep}) under the {engine.id} engine's memory model is not "
                        "modelled; allowed: ep 1, or engine eager")

    def kv_and_fields(kv_spec, layers):
        """(KV bytes, the MemoryUse block fields): blocks per sequence counted once."""
        if not engine.paged or spec.arch == "encoder":  # an encoder-only model caches nothing
            return E.kv_bytes(kv_spec, wl, engine, None, layers), {}
        from .analysis import cached_positions
        blocks = 0
        if wl.kv_cache and spec.arch != "encoder":
            blocks = E.kv_blocks_per_sequence(kv_spec, engine, cached_positions(spec, wl), layers)
            if spec.arch == "encoder-decoder":  # the cross cache: the source, in every decoder layer
                n = kv_spec.num_layers if layers is None else len(layers)
                blocks += n * E.layer_blocks(wl.prompt, engine.kv_block_tokens)
        block = E.kv_block_bytes(kv_spec, wl.kv_dtype, engine)
        return (E.sequences(wl) * blocks * block,
                {"kv_block_tokens": engine.kv_block_tokens, "kv_blocks_per_sequence": blocks, "kv_block_bytes": block})

    if layout.gpus == 1:
        kv, paged = kv_and_fields(spec, None)
        return MemoryUse(weight_bytes(spec, wl.weight_dtype, wl.quant), kv,
                         E.engine_activation_peak_bytes(spec, wl, engine, hw),
                         reserve, hw.capacity_bytes, **paged)
    cost, tokens, q_len, kv_len = E.peak_pass_shape(spec, wl, engine, hw)
    pre = shard_step(cost, layout.tp, vocab=(spec.vocab_size, split_vocab(spec, layout)))  # per-GPU shares
    kv_spec = _tp_spec(spec, layout.tp)
    best = None
    for s in range(layout.pp):
        layers = stage_range(spec.num_layers, layout.pp, s)
        kv, paged = kv_and_fields(kv_spec, layers)
        if not engine.paged:
            kv = stage_kv_cache_bytes(spec, wl, layout, s)
        m = MemoryUse(stage_weight_bytes(spec, wl, layout, s), kv,
                      E.pass_activation_peak_bytes(kv_spec, wl, engine, stage_view(pre, layout, s), tokens,
                                                   q_len, kv_len),
                      reserve, hw.capacity_bytes, s, **paged)
        if best is None or m.total_bytes > best.total_bytes:
            best = m
    return best


def memory_use(spec: ModelSpec, hw: Hardware, wl: Workload, layout: Layout = Layout(),
               reserve_fraction: float | None = DEFAULT_RESERVE_FRACTION, engine=None) -> MemoryUse:
    """Memory of the fullest GPU running ``wl`` laid out as ``layout``.

    The analysis' memory formulas (:func:`costmodel.analysis.memory_of`): on one GPU its figures
    for any architecture; split over GPUs (decoder-only models) its KV cache and activation peak
    over each GPU's shares (:mod:`costmodel.parallel`, uneven ones rounded up). Only the prefill
    pass is costed, never the decode steps, so the max_batch / max_context searches stay cheap.

    ``engine`` (a :class:`costmodel.engine.Engine` or its name; None or ``eager``: the reference,
    exactly as before): :func:`engine_memory_use`. ``reserve_fraction`` None: the engine's budget
    (the default reserve without one).
    """
    engine = E.resolve(engine)
    if engine is not None and not engine.reference:
        return engine_memory_use(spec, hw, wl, layout, reserve_fraction, engine)
    reserve = reserve_bytes(hw, DEFAULT_RESERVE_FRACTION if reserve_fraction is None else reserve_fraction)
    if layout.gpus == 1:
        m = memory_of(spec, wl)
        return MemoryUse(m.weights_bytes, m.kv_cache_bytes, m.activation_peak_bytes, reserve, hw.capacity_bytes)
    pre = gpu_step(spec, wl, layout, prefill_cost)  # per-GPU shares, rounded up
    best = None
    for s in range(layout.pp):
        m = MemoryUse(stage_weight_bytes(spec, wl, layout, s),
                      stage_kv_cache_bytes(spec, ep_local_workload(wl, layout), layout, s),
                      activation_peak_bytes(spec, wl, stage_view(pre, layout, s)),
                      reserve, hw.capacity_bytes, s)
        if best is None or m.total_bytes > best.total_bytes:
            best = m
    return best


def memory_use_of(memory, hw: Hardware, reserve_fraction: float = DEFAULT_RESERVE_FRACTION) -> MemoryUse:
    """One GPU's :class:`MemoryUse` from an analysis' :class:`~costmodel.analysis.Memory` (its
    weights, possibly a checkpoint's, KV cache and activation peak) on ``hw``, with the plan's reserve."""
    return MemoryUse(memory.weights_bytes, memory.kv_cache_bytes, memory.activation_peak_bytes,
                     reserve_bytes(hw, reserve_fraction), hw.capacity_bytes)


def fit_warnings(memory: MemoryUse, hw: Hardware, layout: Layout = Layout(),
                 reserve_fraction: float = DEFAULT_RESERVE_FRACTION, latency_shown: bool = True) -> list[str]:
    """One warning when ``memory`` does not fit ``hw`` (per GPU of ``layout``), saying what does not
    fit and against which capacity figure; none when it fits."""
    if memory.fits:
        return []
    cap = memory.capacity_bytes
    figure = ("the total the device reports" if hw.capacity_figure == "reported"
              else "the capacity it is sold by")
    per = "" if layout.gpus == 1 else f" per GPU of tp {layout.tp} x pp {layout.pp}"
    held = memory.weights_bytes + memory.kv_bytes + memory.activations_bytes
    if memory.weights_bytes > cap:
        what = f"the weights alone ({memory.weights_bytes:,} bytes{per}) exceed"
    elif held > cap:
        what = (f"weights {memory.weights_bytes:,} + KV cache {memory.kv_bytes:,} + activations "
                f"{memory.activations_bytes:,} = {held:,} bytes{per} exceed")
    else:
        what = (f"weights {memory.weights_bytes:,} + KV cache {memory.kv_bytes:,} + activations "
                f"{memory.activations_bytes:,} + runtime reserve {memory.reserve_bytes:,} "
                f"({reserve_fraction:g} of capacity) = {memory.total_bytes:,} bytes{per} exceed")
    return [f"does not fit: {what} the {cap:,} bytes of one {hw.id} ({figure})"
            + ("; the latency shown assumes a device that holds it" if latency_shown else "")]


def _largest_passing(ok) -> int:
    """Largest n >= 1 with ok(n) for ok monotone (true then false); 0 if ok(1) is false."""
    if not ok(1):
        return 0
    lo, hi = 1, 2
    while hi <= _MAX_SEARCH and ok(hi):
        lo, hi = hi, hi * 2
    if hi > _MAX_SEARCH:
        return lo
    while hi - lo > 1:  # ok(lo), not ok(hi)
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


def max_batch(spec: ModelSpec, hw: Hardware, wl: Workload, layout: Layout = Layout(),
              reserve_fraction: float | None = DEFAULT_RESERVE_FRACTION, engine=None) -> int:
    """Largest batch of ``wl`` (its prompt, gen and dtypes) that fits; 0 if not even one sequence.
    With a paged ``engine`` the KV cache is counted in blocks (:func:`memory_use`): the largest b
    with b x blocks per sequence x block bytes within what the budget leaves."""
    engine = E.resolve(engine)
    return _largest_passing(lambda b: memory_use(spec, hw, replace(wl, batch=b), layout, reserve_fraction,
                                                 engine).fits)


def max_context(spec: ModelSpec, hw: Hardware, wl: Workload, layout: Layout = Layout(),
                reserve_fraction: float | None = DEFAULT_RESERVE_FRACTION, engine=None) -> int:
    """Longest context (positions in the KV cache) that fits at ``wl.batch``: a prompt of that
    length prefilled at once (gen = 1; with chunked prefill, in chunks of the engine's budget).
    Memory-bound only: compare with the model's max_position_embeddings yourself. 0 if not even
    one position fits. A paged ``engine`` counts the positions' blocks."""
    engine = E.resolve(engine)
    return _largest_passing(lambda c: memory_use(spec, hw, replace(wl, prompt=c, gen=1), layout,
                                                 reserve_fraction, engine).fits)


# --- Time with parallelism --------------------------------------------------------------------------

COMM_MODELS = ("ring", "nccl")  # see comm_seconds


def allreduce_seconds(hw: Hardware, tp: int, message_bytes: int) -> float:
    """Ring all-reduce of ``message_bytes`` over ``tp`` GPUs: each sends and receives
    2 (tp - 1) / tp of the message, in 2 (tp - 1) steps of one link latency each
    (:func:`costmodel.collectives.all_reduce_s`, algo "ring", no base latency)."""
    if tp == 1:
        return 0.0
    _, bw = hw.link_for(tp)
    return C.all_reduce_s(message_bytes, tp, bw * hw.interconnect_efficiency_used, hw.link_latency_s_used, "ring")


def hop_seconds(hw: Hardware, layout: Layout, message_bytes: int) -> float:
    """One pipeline hop: the activations sent from a stage to the next."""
    _, bw = hw.link_for(layout.gpus)
    return C.send_s(message_bytes, bw * hw.interconnect_efficiency_used, hw.link_latency_s_used)


def _nccl_link(hw: Hardware, gpus: int) -> tuple[str, float, float | None]:
    """(NCCL latency-table link kind, bus bandwidth, per-hop latency override) for ``gpus`` GPUs:
    the hardware's link x interconnect efficiency; a profile's own ``link_latency_s`` (a measured
    figure) replaces the table's per-hop latencies."""
    name, bw = hw.link_for(gpus)
    return ("pcie" if name == "PCIe" else "nvlink"), bw * hw.interconnect_efficiency_used, hw.link_latency_s


def ep_local_workload(wl: Workload, layout: Layout) -> Workload:
    """The fullest expert-parallel GPU's workload: ceil(batch / ep) sequences."""
    return wl if layout.ep == 1 else replace(wl, batch=-(-wl.batch // layout.ep))


def gpu_step(spec: ModelSpec, wl: Workload, layout: Layout, cost_of) -> StepCost:
    """One GPU's share of the pass ``cost_of(spec, wl)``: tp shares (the LM head over the padded
    vocabulary), or under ep the fullest rank's own sequences with 1 / ep of the experts' work."""
    if layout.ep > 1:
        return ep_view(cost_of(spec, ep_local_workload(wl, layout)), cost_of(spec, wl), layout.ep)
    return shard_step(cost_of(spec, wl), layout.tp, vocab=(spec.vocab_size, split_vocab(spec, layout)))


def comm_seconds(spec: ModelSpec, hw: Hardware, wl: Workload, layout: Layout, tokens: int,
                 logit_rows: int = 0, collectives: str = "ring", rows: int = 0) -> float:
    """Communication of one pass over ``tokens`` tokens (of ``rows`` sequences; the LM head on
    ``logit_rows`` of them), under ``collectives``:

    - "ring" (the original model, the eager engine's): 2 ring all-reduces per layer
      (:func:`allreduce_seconds`) and pp - 1 hops (:func:`hop_seconds`); no logits all-gather;
    - "nccl" (the serving engines'): the all-reduces as NCCL's tuner picks them
      (:func:`costmodel.collectives.nccl_all_reduce`: ring or tree, LL / LL128 / Simple, with
      NCCL's base and per-hop latencies), the vocab-parallel logits all-gather of ``logit_rows`` x
      padded V, pp - 1 sends (NCCL p2p) and, with pp > 1, the broadcast of the picked token ids.

    Under ep (either model), each MoE layer adds a dispatch all-gather of the ep ranks' tokens and a
    combine reduce-scatter (:func:`costmodel.parallel.ep_comm_bytes`); ``tokens`` are then one
    GPU's (its ceil(batch / ep) sequences) and the buffers ep times that.
    """
    if collectives not in COMM_MODELS:
        raise SpecError(f"unknown collectives {collectives!r}; allowed: {', '.join(COMM_MODELS)}")
    message = activation_bytes(spec, wl, tokens)
    t = 0.0
    if collectives == "ring":
        t += 2 * spec.num_layers * allreduce_seconds(hw, layout.tp, message)
        if layout.pp > 1:
            t += (layout.pp - 1) * hop_seconds(hw, layout, message)
    else:
        if layout.tp > 1:
            link, bus, hop = _nccl_link(hw, layout.tp)
            t += 2 * spec.num_layers * C.nccl_all_reduce(message, layout.tp, bus, link, hop_latency_s=hop).seconds
            logits = nbytes(logit_rows * split_vocab(spec, layout), wl.act_dtype)  # the gathered [rows, V_padded]
            if logit_rows:
                t += C.nccl_all_gather(logits, layout.tp, bus, link, hop_latency_s=hop).seconds
        if layout.pp > 1:
            link, bus, hop = _nccl_link(hw, layout.gpus)
            t += (layout.pp - 1) * C.nccl_send(message, bus, link, hop_latency_s=hop).seconds
            t += C.nccl_broadcast(rows * TOKEN_ID_BYTES, layout.gpus, bus, link, hop_latency_s=hop).seconds
    if layout.ep > 1:
        link, bus, hop = _nccl_link(hw, layout.ep)
        n, whole = moe_layers(spec), layout.ep * message  # the gathered tokens, the combined buffer
        if collectives == "ring":  # the original model's rings: the link latency per step, no base
            lat = hw.link_latency_s_used
            t += n * (C.all_gather_s(whole, layout.ep, bus, lat) + C.reduce_scatter_s(whole, layout.ep, bus, lat))
        else:
            t += n * (C.nccl_all_gather(whole, layout.ep, bus, link, hop_latency_s=hop).seconds
                      + C.nccl_reduce_scatter(whole, layout.ep, bus, link, hop_latency_s=hop).seconds)
    return t


def parallel_timing(spec: ModelSpec, hw: Hardware, wl: Workload, layout: Layout = Layout(),
                    collectives: str = "ring", engine=None) -> Timing:
    """Roofline timing of one GPU's share plus communication (:func:`comm_seconds` under
    ``collectives``); with tp = pp = ep = 1 it equals :func:`costmodel.roofline.predict`. Pipeline
    stages run in turn, so a pass takes the compute time of every layer's tensor-parallel share,
    plus the hops between stages. Communication is counted for every pass: the prefill and each
    decode step (its all-reduces, logits all-gather, hops and ep exchanges).

    ``engine`` (:mod:`costmodel.engine`; None or ``eager``: the reference): each pass executed as
    the engine does, then split over the GPUs, at the engine's rates, plus its overheads."""
    engine = E.resolve(engine)
    if layout.gpus == 1:
        return predict(spec, wl, hw, engine)  # any architecture
    if collectives not in COMM_MODELS:
        raise SpecError(f"unknown collectives {collectives!r}; allowed: {', '.join(COMM_MODELS)}")
    n = wl.decode_steps
    local = ep_local_workload(wl, layout)
    seqs = local.batch * local.beams

    def executed_of(cost_of, shape_of, keys="actual"):
        """The engine's pass ``cost_of(s, w)`` (of the shape ``shape_of(s, w)``), before the split."""
        return lambda s, w: E.executed(s, w, engine, hw, cost_of(s, w), *shape_of(s, w), keys)

    def cost_at(i, keys="actual"):
        return gpu_step(spec, wl, layout, executed_of(lambda s, w: decode_step_cost(s, w, i, keys),
                                                      lambda s, w: E.decode_shape(s, w, i), keys))

    def step_tokens(i):
        return seqs * (1 if wl.kv_cache else wl.prompt + i)

    def comm(tokens, logit_rows):
        return comm_seconds(spec, hw, wl, layout, tokens, logit_rows, collectives, seqs)

    decode_extra = (0.0, 0.0, 0.0)
    if n:
        if collectives == "ring":
            # Affine in the tokens of a step: sum it over the steps in closed form.
            total_tokens = seqs * (n if wl.kv_cache else n * wl.prompt + n * (n + 1) // 2)
            base = comm(0, seqs)
            total = n * base + (comm(1, seqs) - base) * total_tokens
        elif wl.kv_cache:  # every step the same messages
            total = n * comm(seqs, seqs)
        else:  # NCCL's choice is piecewise in the message: step by step
            total = sum(comm(step_tokens(i), seqs) for i in range(1, n + 1))
        decode_extra = (comm(step_tokens(1), seqs), total, comm(step_tokens(n), seqs))
    prefill_logits = seqs * (wl.prompt if wl.logits == "all" else 1)
    pre = gpu_step(spec, wl, layout, executed_of(prefill_cost, E.prefill_shape))
    if E.is_reference(engine):
        return replace(timing_from(hw, rates(hw, wl.act_dtype, wl.quant), wl, pre, cost_at,
                                   first_polynomial_step(spec, wl), comm(seqs * wl.prompt, prefill_logits),
                                   decode_extra, split=window_split(spec, wl, n)), engine=engine)
    over = E.overheads(spec, wl, engine, pre, cost_at(1) if n else None)
    return replace(timing_from(hw, E.engine_rates_for(engine, hw, wl), wl, pre, cost_at,
                               first_polynomial_step(spec, wl), comm(seqs * wl.prompt, prefill_logits),
                               decode_extra, split=window_split(spec, wl, n), overheads=over), engine=engine)


# --- The plan ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """Answer of :func:`capacity_plan`. Bytes per GPU; seconds; ``None`` where a figure does not apply."""

    model: ModelSpec
    hardware: Hardware
    layout: Layout
    workload: Workload  # at ``batch`` (batch 1 when nothing fits)
    reserve_fraction: float
    batch: int  # the batch evaluated: the one asked for, else max_batch
    batch_given: bool
    memory: MemoryUse  # at ``batch`` (at batch 1 when max_batch == 0)
    max_batch: int
    max_context: int
    max_context_batch: int
    timing: Timing | None  # at ``batch``; None when batch == 0
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    rps: float | None = None
    gpu_hour_usd: float | None = None
    serving_batch: int = 0  # largest batch <= batch within memory and the SLOs
    serving_timing: Timing | None = None
    notes: tuple = ()
    collectives: str = "ring"  # the communication model of the timing (comm_seconds)
    engine: object = None  # the costmodel.engine.Engine planned for (None: the reference, eager)

    @property
    def fits(self) -> bool:
        return self.memory.fits

    @property
    def warnings(self) -> list[str]:
        """Fit is part of the answer: a warning when the batch evaluated does not fit."""
        return fit_warnings(self.memory, self.hardware, self.layout, self.reserve_fraction,
                            latency_shown=self.timing is not None)

    @property
    def engine_id(self) -> str:
        return "eager" if self.engine is None else self.engine.id

    @property
    def requests_per_s_per_replica(self) -> float | None:
        t = self.serving_timing
        return self.serving_batch / t.e2e_s if t is not None else None

    @property
    def replicas(self) -> int | None:
        rate = self.requests_per_s_per_replica
        if self.rps is None or not rate:
            return None
        return max(1, math.ceil(self.rps / rate * (1 - 1e-12)))

    @property
    def gpus_needed(self) -> int | None:
        """GPUs to serve ``rps`` requests per second within the SLOs (None without --rps or when
        no batch meets them)."""
        return None if self.replicas is None else self.replicas * self.layout.gpus

    def usd_per_million_tokens(self, count_prompt: bool = False) -> float | None:
        """Cost of a million generated tokens (or prompt + generated) at the serving batch, the
        replica fully busy."""
        t = self.serving_timing
        if self.gpu_hour_usd is None or t is None:
            return None
        w = self.workload
        generated = w.gen if t.prefill is not None else 0  # an encoder-only model generates nothing
        tokens = generated + (w.prompt if count_prompt else 0)
        if not tokens:
            return None
        tokens_per_s = self.serving_batch * tokens / t.e2e_s
        return self.gpu_hour_usd * self.layout.gpus / 3600 / tokens_per_s * 1e6

    def to_dict(self) -> dict:
        t, st, w = self.timing, self.serving_timing, self.workload
        slos = self.ttft_slo_s is not None or self.tpot_slo_s is not None
        d = {
            "model": self.model.name,
            "hardware": {"id": self.hardware.id, "name": self.hardware.name,
                         "memory_bytes": self.hardware.memory_bytes,
                         "memory_reported_bytes": self.hardware.memory_reported_bytes,
                         "capacity_bytes": self.hardware.capacity_bytes,
                         "capacity_figure": self.hardware.capacity_figure,
                         "efficiency": self.hardware.efficiencies(),
                         "op_overhead_s": self.hardware.op_overhead_s},
            "layout": {"tp": self.layout.tp, "pp": self.layout.pp, "gpus_per_replica": self.layout.gpus,
                       "ep": self.layout.ep, "vocab_rows": split_vocab(self.model, self.layout)},
            "collectives": self.collectives,
            "workload": {"prompt": w.prompt, "gen": w.gen, "weight_dtype": w.weight_dtype,
                         "act_dtype": w.act_dtype, "kv_dtype": w.kv_dtype, "beams": w.beams,
                         "kv_cache": w.kv_cache, "quant": w.quant},
            "batch": self.batch,
            "batch_given": self.batch_given,
            "fits": self.fits,
            "missing_bytes": self.memory.missing_bytes,
            "memory": self.memory.to_dict(),
            "reserve_fraction": self.reserve_fraction,
            "max_batch": self.max_batch,
            "max_context": self.max_context,
            "max_context_batch": self.max_context_batch,
            "model_max_context": self.model.max_position_embeddings,
            "ttft_s": t.ttft_s if t else None,
            "tpot_s": t.tpot() if t else {"first": None, "mean": None, "last": None},
            "e2e_s": t.e2e_s if t else None,
            "tokens_per_s": t.tokens_per_s if t else None,
            "decode_tokens_per_s": t.decode_tokens_per_s if t else None,
            "slo": {"ttft_s": self.ttft_slo_s, "tpot_s": self.tpot_slo_s,
                    "met_at_batch": (self.serving_batch == self.batch and self.batch > 0) if slos else None},
            "serving_batch": self.serving_batch,
            "serving": None if st is None else {
                "batch": self.serving_batch, "ttft_s": st.ttft_s, "tpot_s": st.tpot(),
                "e2e_s": st.e2e_s, "tokens_per_s": st.tokens_per_s,
                "requests_per_s_per_replica": self.requests_per_s_per_replica},
            "rps": self.rps,
            "replicas": self.replicas,
            "gpus_needed": self.gpus_needed,
            "gpu_hour_usd": self.gpu_hour_usd,
            "usd_per_million_output_tokens": self.usd_per_million_tokens(),
            "usd_per_million_total_tokens": self.usd_per_million_tokens(count_prompt=True),
            "assumptions": self.base_assumptions() + [
                f"runtime reserve: {self.reserve_fraction:g} of capacity"] + self.engine_assumptions(),
            "notes": list(self.notes),
            "warnings": self.warnings,
        }
        e = E.load_engine("eager") if self.engine is None else self.engine
        d["engine"] = e.id
        d["engine_profile"] = e.to_dict()
        m = self.memory
        d["kv_block_tokens"] = m.kv_block_tokens
        d["kv_blocks_per_sequence"] = m.kv_blocks_per_sequence
        d["kv_blocks_available"] = m.kv_blocks_available
        d["overhead_s"] = t.engine_summary()["overhead_s"] if t is not None and t.engine is not None else None
        for name, phase in ((t.phases if t is not None else {}).items()):
            d.setdefault("executed", {})[name] = {"flops": phase.executed_flops, "bytes": phase.executed_bytes,
                                                  "seconds": phase.seconds, "overhead_s": phase.overhead_s}
        return d

    def base_assumptions(self) -> list[str]:
        """:data:`ASSUMPTIONS`, with the memory rule of a serving engine in place of the eager one."""
        e = self.engine
        if e is None or e.reference:
            return list(ASSUMPTIONS)
        memory = ("memory per GPU (the fullest pipeline stage) = weights + the engine's KV cache at prompt + gen - 1 "
                  "positions + the activation peak of its largest pass (see the engine's rules below) + runtime "
                  "reserve")
        return [memory if a.startswith("memory per GPU") else a for a in ASSUMPTIONS]

    def engine_assumptions(self) -> list[str]:
        """The engine's rules, stated like :data:`ASSUMPTIONS`."""
        e = self.engine
        if e is None or e.reference:
            return ["engine: eager (the reference implementation: one kernel per op, attention scores "
                    "materialised, contiguous cache, whole prefill in one pass, no launch or host overhead)"]
        out = [f"engine: {e.describe()}"]
        if e.paged:
            out.append(f"KV cache paged in blocks of {e.kv_block_tokens} positions per layer: a sequence holds "
                       f"ceil(positions / {e.kv_block_tokens}) blocks per layer, a sliding-window layer at most "
                       f"ceil(window / {e.kv_block_tokens}) + 1; max batch and context counted in blocks")
        if e.memory_utilization is not None:
            out.append(f"memory budget: {e.memory_utilization:g} x capacity - weights - activation peak holds the "
                       "KV cache (the reserve is the rest of capacity)")
        if e.chunked_prefill:
            out.append(f"chunked prefill: at most {e.max_num_batched_tokens} tokens per pass, so the activation "
                       "peak is that of one chunk")
        out.append(f"overhead per pass: kernels x launch time ({e.kernel_launch_s['eager'] * 1e6:g} us eager, "
                   f"{e.kernel_launch_s['graphs'] * 1e6:g} us in CUDA graphs; prefill {e.launch['prefill']}, decode "
                   f"{e.launch['decode']}) + {e.host_step_s * 1e6:g} us host time")
        return out


def _positive_or_none(name: str, v) -> None:
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 or v == float("inf"):
        raise SpecError(f"{name} must be a positive number, got {v!r}")


def capacity_plan(spec: ModelSpec, hardware: Hardware, *, prompt: int = 512, gen: int = 128,
         batch: int | None = None, tp: int = 1, pp: int = 1, gpus: int | None = None,
         ttft_slo_s: float | None = None, tpot_slo_s: float | None = None, rps: float | None = None,
         gpu_hour_usd: float | None = None, reserve_fraction: float | None = None, ep: int = 1,
         collectives: str | None = None, engine="vllm", **workload_fields) -> Plan:
    """Size a deployment of ``spec`` on ``hardware``.

    ``batch=None`` evaluates at the largest batch that fits. ``gpus`` (instead of ``tp``/``pp``)
    picks the layout with :func:`layout_for_gpus`. ``workload_fields`` go to :class:`Workload`
    (``weight_dtype``, ``act_dtype``, ``kv_dtype``, ``beams``, ``kv_cache``, ``causal``, ...).
    Bad input raises SpecError; a model that does not fit is a Plan with ``fits=False``.
    ``ep``: expert-parallel GPUs of a mixture-of-experts model (tp = pp = 1; the fullest GPU runs
    ceil(batch / ep) sequences); ``collectives``: the communication model (:func:`comm_seconds`;
    None: "nccl" for a serving engine, "ring" for the reference).

    ``engine``: an engine id or file (:func:`costmodel.engine.load_engine`) or an Engine; default
    ``vllm``, as ``costmodel plan``. ``"eager"`` is the reference implementation (the plan of
    before engines, exactly). ``reserve_fraction`` None: the engine's memory budget (1 -
    memory_utilization), or :data:`DEFAULT_RESERVE_FRACTION` for an engine without one.
    """
    eng = E.load_engine(engine)
    run = None if eng.reference else eng  # the reference takes the code paths of before engines
    if collectives is None:
        collectives = "ring" if run is None else "nccl"
    if collectives not in COMM_MODELS:
        raise SpecError(f"unknown collectives {collectives!r}; allowed: {', '.join(COMM_MODELS)}")
    if gpus is not None and (tp != 1 or pp != 1):
        raise SpecError("give gpus or tp/pp, not both")
    for name, v in (("ttft_slo_s", ttft_slo_s), ("tpot_slo_s", tpot_slo_s), ("rps", rps),
                    ("gpu_hour_usd", gpu_hour_usd)):
        _positive_or_none(name, v)
    if reserve_fraction is not None and (isinstance(reserve_fraction, bool)
                                         or not isinstance(reserve_fraction, (int, float))
                                         or not 0 <= reserve_fraction < 1):
        raise SpecError(f"reserve_fraction must be in [0, 1), got {reserve_fraction!r}")
    given_reserve = reserve_fraction
    if reserve_fraction is None:
        reserve_fraction = (DEFAULT_RESERVE_FRACTION if eng.memory_utilization is None
                            else round(1 - eng.memory_utilization, 12))
    layout = layout_for_gpus(spec, hardware, gpus) if gpus is not None else Layout(tp, pp, ep)
    check_layout(spec, hardware, layout)
    wl = Workload(batch=1 if batch is None else batch, prompt=prompt, gen=gen, **workload_fields)
    notes = list(wl.check_against(spec))
    hardware.peak_for(wl.act_dtype)  # refuse a dtype the hardware has no peak for, up front

    rf = reserve_fraction if run is None else given_reserve  # None: the engine's budget
    mb = max_batch(spec, hardware, wl, layout, rf, run)
    b = batch if batch is not None else mb
    wl_b = replace(wl, batch=max(b, 1))
    memory = memory_use(spec, hardware, wl_b, layout, rf, run)
    ctx_batch = batch if batch is not None else 1
    mc = max_context(spec, hardware, replace(wl, batch=ctx_batch), layout, rf, run)
    timing = parallel_timing(spec, hardware, wl_b, layout, collectives, run) if b > 0 else None
    if mb == 0:
        notes.append(f"does not fit: one sequence needs {memory.total_bytes} bytes per GPU, "
                     f"{memory.missing_bytes} more than the {memory.capacity_bytes} available; "
                     "try a larger tp or pp, a narrower dtype, or a GPU with more memory")
    elif batch is not None and not memory.fits:
        notes.append(f"batch {batch} does not fit ({memory.missing_bytes} bytes missing per GPU); "
                     f"max_batch is {mb}")
    if mc and mc < wl.final_context:
        notes.append(f"max_context {mc} at batch {ctx_batch} is below prompt + gen - 1 = {wl.final_context}")
    if mc > spec.max_position_embeddings:
        notes.append(f"max_context {mc} exceeds {spec.name}'s max_position_embeddings "
                     f"{spec.max_position_embeddings}: memory is not the limit there")

    def meets(bb: int) -> bool:
        t = parallel_timing(spec, hardware, replace(wl, batch=bb), layout, collectives, run)
        first = t.ttft_s if t.ttft_s is not None else t.e2e_s  # encoder-only: the encode pass
        if ttft_slo_s is not None and first > ttft_slo_s:
            return False
        return not (tpot_slo_s is not None and t.tpot_mean_s is not None and t.tpot_mean_s > tpot_slo_s)

    limit = min(b, mb)
    if limit > 0 and (ttft_slo_s is not None or tpot_slo_s is not None):
        serving = _largest_passing(lambda bb: bb <= limit and meets(bb))
        if serving == 0:
            t1 = parallel_timing(spec, hardware, replace(wl, batch=1), layout, collectives, run)
            first = t1.ttft_s if t1.ttft_s is not None else t1.e2e_s
            notes.append(f"no batch meets the SLOs: at batch 1 TTFT is {first * 1e3:.3f} ms and "
                         f"mean TPOT {0 if t1.tpot_mean_s is None else t1.tpot_mean_s * 1e3:.3f} ms; "
                         "try a larger tp or a faster GPU")
    else:
        serving = limit
    serving_timing = None
    if serving > 0:
        serving_timing = timing if serving == b else parallel_timing(spec, hardware, replace(wl, batch=serving),
                                                                     layout, collectives, run)
    if rps is not None and serving == 0:
        notes.append("gpus_needed is null: no batch fits within memory and the SLOs")
    return Plan(spec, hardware, layout, wl_b, reserve_fraction, b, batch is not None, memory, mb, mc,
                ctx_batch, timing, ttft_slo_s, tpot_slo_s, rps, gpu_hour_usd, serving, serving_timing,
                tuple(notes), collectives, eng)
