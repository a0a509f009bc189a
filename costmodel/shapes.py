"""Shape-aware rates: how much of a GPU's peak one kernel reaches, from its matrix shape and the bytes it moves.

Used by :func:`costmodel.roofline.rates` with ``model="shape-aware"`` (the flat model, one efficiency
per GPU, is :mod:`costmodel.hardware`'s). Pure arithmetic on the op's ``shape`` (set by
:mod:`costmodel.analysis`: ``(batch_count, m, n, k, varying)``, C[m, n] = A[m, k] @ B[k, n] done
``batch_count`` times) and the GPU's ``sm_count`` (:mod:`costmodel.hardware`).

Matmul FLOP efficiency (NVIDIA, "Matrix Multiplication Background User's Guide", sections "Tile
Quantization" and "Wave Quantization",
https://docs.nvidia.com/deeplearning/performance/dl-performance-matrix-multiplication/index.html)::

    tile  = m / (tm * ceil(m / tm)) * n / (tn * ceil(n / tn))        output tile tm x tn, padded
    tiles = batch_count * ceil(m / tm) * ceil(n / tn)
    wave  = tiles / (sm_count * ceil(tiles / sm_count))                one tile per SM per wave
    k_eff = k / (tk * (ceil(k / tk) + prologue))                        short-K: the pipeline's fill
    efficiency = base * max over tiles (tm, tn) of (tile * wave) * k_eff

``base`` is the efficiency of large GEMMs (the profile's ``flops_efficiency``, default 0.7, as the flat
model). The library is taken to pick the tile that wastes least (ties: the earlier, larger tile of
:data:`DEFAULT_GEMM_TILES`); the guide lists 256x128 / 128x256 as most efficient, then 128x128,
256x64 / 64x256, 128x64 / 64x128, 64x64. Smaller tiles are charged no extra (an optimistic choice:
the guide calls them less efficient but gives no figure).

Dimensions listed in ``varying`` grow with the decode step (the attended keys; every token row when
there is no KV cache). They are not quantised (tile factor 1 on them, no wave factor when m or n
varies, no short-K factor when k varies), so an op's efficiency is the same at every decode step and
the closed-form decode sums of :mod:`costmodel.stepsum` stay exact. The same rule applies in every
pass (prefill too), so one step's time and the decode sum agree.

Memory: a kernel moving ``b`` bytes takes ``latency + b / (peak_bw * eff)`` (Little's law: a transfer
smaller than bandwidth x latency cannot fill the memory pipeline), i.e. a bandwidth efficiency
``eff * b / (b + latency * peak_bw * eff)`` that grows with the bytes moved. ``latency`` =
:data:`MEMORY_LATENCY_CYCLES` / the GPU's boost clock. ``eff`` by kind of kernel:

=====================  ======  ===========================================================================
kernel                 eff     source
=====================  ======  ===========================================================================
matmul (memory-bound)  0.8     the profile's bandwidth_efficiency (default 0.8, as the flat model)
streaming (copy-like)  0.90    Guo, Zadouri, Dao, "Getting Memory-bound Kernels to Speed-of-Light" (QuACK,
                               https://sysml.cs.princeton.edu/blogs/memory-bound-kernels.html): ~3.0 TB/s
                               of H100 SXM's 3.35 TB/s for bandwidth-bound kernels
reduction (norm,       0.65    same post: its reductions run 33-50 % faster than torch.compile's and
softmax, top-k)                Liger's, so those reach 3.0 / 1.5 .. 3.0 / 1.33 = 2.0 .. 2.25 TB/s, 0.60 ..
                               0.67 of peak; the middle, 0.65
=====================  ======  ===========================================================================

None of these parameters is fitted to measured LLM latencies.
"""

from __future__ import annotations

from dataclasses import dataclass

# The output tile shapes (rows, cols) cuBLAS/CUTLASS choose from, most efficient first: NVIDIA,
# "Matrix Multiplication Background User's Guide", section "Tile Quantization"
# (https://docs.nvidia.com/deeplearning/performance/dl-performance-matrix-multiplication/index.html).
DEFAULT_GEMM_TILES = ((256, 128), (128, 256), (128, 128), (256, 64), (64, 256), (128, 64), (64, 128), (64, 64))
# K is stepped through in blocks of GEMM_K_TILE elements (64 x 16-bit = 128 bytes: CUTLASS's SM80 and
# SM90 tensor-op GEMM configurations, e.g. threadblock shape 128x256x64, github.com/NVIDIA/cutlass
# include/cutlass/gemm/device/default_gemm_configuration.h); before the first MMA a multistage
# pipeline of ``stages`` buffers loads stages - 1 K blocks (CUTLASS's default for SM80: 3 stages), so
# a tile costs ceil(k / 64) + 2 K-block times: GEMM_K_PROLOGUE_BLOCKS.
GEMM_K_TILE = 64
GEMM_K_PROLOGUE_BLOCKS = 2
# DRAM access latency in clock cycles: ~400 on V100, A100 and H100 (Table 3 of the article at
# "Hardware features of different Nvidia GPU architectures", https://pmc.ncbi.nlm.nih.gov/articles/PMC10448217/;
# Jia et al., "Dissecting the NVIDIA Volta GPU Architecture via Microbenchmarking", arXiv:1804.06826,
# measure ~400 cycles on V100).
MEMORY_LATENCY_CYCLES = 400
STREAMING_BANDWIDTH_EFFICIENCY = 0.90  # QuACK (see the module docstring)
REDUCTION_BANDWIDTH_EFFICIENCY = 0.65  # QuACK vs torch.compile / Liger (see the module docstring)

# Element-wise ops that reduce along a row (a norm, a softmax, a top-k, sampling's argmax): their own bandwidth efficiency.
_REDUCTION_SUFFIXES = ("norm", "softmax", "topk", "argmax")
_DIMS = ("m", "n", "k")


def is_reduction(op: str) -> bool:
    """Whether op ``op`` reduces along rows (norms, softmax, top-k): :data:`REDUCTION_BANDWIDTH_EFFICIENCY`."""
    return op.endswith(_REDUCTION_SUFFIXES) or "norm" in op.split("_")


def unpack(shape) -> tuple:
    """(batch_count, m, n, k, varying) of a shape given as 4 or 5 items (varying "" when absent)."""
    if len(shape) == 4:
        return (*shape, "")
    return tuple(shape)


def _ceil(a, b):
    return -(-a // b)


def tile_efficiency(m, n, tm, tn, varying: str = "") -> float:
    """Share of the padded output tiles that is real output: m / (tm ceil(m / tm)) x the same for n
    (1 along a varying dimension)."""
    fm = 1.0 if "m" in varying else m / (tm * _ceil(m, tm))
    fn = 1.0 if "n" in varying else n / (tn * _ceil(n, tn))
    return fm * fn


def wave_efficiency(tiles, sm_count: int) -> float:
    """tiles / (sm_count x whole waves): the last wave's idle SMs."""
    return tiles / (sm_count * _ceil(tiles, sm_count))


def k_efficiency(k, varying: str = "", k_tile: int = GEMM_K_TILE,
                 prologue: int = GEMM_K_PROLOGUE_BLOCKS) -> float:
    """k / (k_tile (ceil(k / k_tile) + prologue)): K padded to whole blocks plus the pipeline's fill."""
    if "k" in varying:
        return 1.0
    return k / (k_tile * (_ceil(k, k_tile) + prologue))


def best_tile(shape, sm_count: int, tiles=DEFAULT_GEMM_TILES) -> tuple:
    """((tm, tn), tile x wave efficiency) of the tile that wastes least (ties: the earlier tile)."""
    b, m, n, _, vary = unpack(shape)
    best, best_e = tiles[0], -1.0
    for tm, tn in tiles:
        e = tile_efficiency(m, n, tm, tn, vary)
        if "m" not in vary and "n" not in vary:
            e *= wave_efficiency(b * _ceil(m, tm) * _ceil(n, tn), sm_count)
        if e > best_e:
            best, best_e = (tm, tn), e
    return best, best_e


def matmul_shape_efficiency(shape, sm_count: int, tiles=DEFAULT_GEMM_TILES) -> float:
    """Tile x wave x short-K efficiency of a matmul of ``shape`` (multiply by the base efficiency)."""
    b, m, n, k, vary = unpack(shape)
    if min(b, m, n, k) <= 0:
        return 1.0  # an empty matmul: nothing to quantise
    return best_tile(shape, sm_count, tiles)[1] * k_efficiency(k, vary)


def step_invariant(*shapes) -> tuple:
    """The shape of the first with every dimension that differs between ``shapes`` added to its
    ``varying`` (the decode sum's guard: an unmarked dimension that changes with the step)."""
    first = unpack(shapes[0])
    vary = first[4]
    for s in shapes[1:]:
        u = unpack(s)
        vary += "".join(d for d, a, b in zip(_DIMS, first[1:4], u[1:4]) if a != b and d not in vary)
        if u[0] != first[0]:
            raise ValueError(f"batch count changes between decode steps: {first[0]} vs {u[0]}")
    return (*first[:4], vary)


@dataclass(frozen=True)
class ShapeParams:
    """What the shape-aware rates read of one GPU (:func:`params_for`)."""

    peak_flops_per_s: float  # dense peak in the compute dtype
    base_efficiency: float  # large GEMMs
    sm_count: int
    tiles: tuple
    peak_bandwidth_bytes_per_s: float
    peak_matmul_bandwidth_bytes_per_s: float  # weight streaming where the profile has its own, else the same
    matmul_bandwidth_efficiency: float
    streaming_bandwidth_efficiency: float
    reduction_bandwidth_efficiency: float
    memory_latency_s: float

    def to_dict(self) -> dict:
        return {"peak_flops_per_s": self.peak_flops_per_s, "base_efficiency": self.base_efficiency,
                "sm_count": self.sm_count, "gemm_tiles": [list(t) for t in self.tiles],
                "gemm_k_tile": GEMM_K_TILE, "gemm_k_prologue_blocks": GEMM_K_PROLOGUE_BLOCKS,
                "peak_bandwidth_bytes_per_s": self.peak_bandwidth_bytes_per_s,
                "peak_matmul_bandwidth_bytes_per_s": self.peak_matmul_bandwidth_bytes_per_s,
                "matmul_bandwidth_efficiency": self.matmul_bandwidth_efficiency,
                "streaming_bandwidth_efficiency": self.streaming_bandwidth_efficiency,
                "reduction_bandwidth_efficiency": self.reduction_bandwidth_efficiency,
                "memory_latency_s": self.memory_latency_s}

    def bandwidth_efficiency(self, op: str, kind: str) -> float:
        if kind == "matmul":
            return self.matmul_bandwidth_efficiency
        return self.reduction_bandwidth_efficiency if is_reduction(op) else self.streaming_bandwidth_efficiency

    def bytes_rate(self, op: str, kind: str) -> float:
        peak = self.peak_matmul_bandwidth_bytes_per_s if kind == "matmul" else self.peak_bandwidth_bytes_per_s
        return peak * self.bandwidth_efficiency(op, kind)

    def latency_bytes(self, op: str, kind: str) -> int:
        """The memory latency as bytes at the op's rate (an integer, so the decode sums stay exact)."""
        return round(self.memory_latency_s * self.bytes_rate(op, kind))

    def flops_rate(self, shape) -> float:
        return self.peak_flops_per_s * self.base_efficiency * matmul_shape_efficiency(shape, self.sm_count, self.tiles)


def params_for(hw, act_dtype: str) -> ShapeParams | None:
    """The shape-aware parameters of ``hw`` (a :class:`~costmodel.hardware.Hardware`), or None when it
    lacks what they need (no ``sm_count`` or ``boost_clock_hz``: CPUs, user files without them)."""
    if hw.sm_count is None or hw.boost_clock_hz is None:
        return None
    mm_bw = hw.matmul_bandwidth_bytes_per_s or hw.memory_bandwidth_bytes_per_s
    return ShapeParams(hw.peak_for(act_dtype), hw.flops_efficiency_used, hw.sm_count,
                       hw.gemm_tiles or DEFAULT_GEMM_TILES, hw.memory_bandwidth_bytes_per_s, mm_bw,
                       hw.bandwidth_efficiency_used,
                       STREAMING_BANDWIDTH_EFFICIENCY, REDUCTION_BANDWIDTH_EFFICIENCY,
                       MEMORY_LATENCY_CYCLES / hw.boost_clock_hz)
