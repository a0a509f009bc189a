"""What a serving engine executes instead of the eager ops: fused attention and fused element-wise kernels.

:func:`executed_step` rewrites the eager :class:`~costmodel.analysis.StepCost` of one pass into the
kernels an engine (:mod:`costmodel.engine`; any object with ``attention``, ``fusions``, ``flash``,
``kv_layout``, ``kv_block_tokens``) runs. The eager cost stays the counted convention (``flops``,
``matmul_flops``); this one is what the GPU executes and moves.

FlashAttention (``engine.attention == "flash"``)
    The score, mask, soft-cap, sink, softmax and value ops of each attention become ONE op,
    ``flash_attention`` (``cross_flash_attention``), of kind "matmul":

    - FLOPs: Q K^T and P V over the tiles the kernel computes (``matmul_flops`` = ``flops``): the
      query rows of each tile of Br rows times the keys of the key blocks of Bc it visits. Causal:
      key blocks wholly above the diagonal are skipped, the diagonal ones computed whole (FA2's
      ``n_block_max = ceil(min((m + 1) Br + kv - q, kv) / Bc)``, csrc/flash_attn/src/flash_fwd_kernel.h);
      sliding window / chunk: blocks wholly before the window are skipped too (``n_block_min``). Keys
      beyond the sequence end (a partial last block) are not counted: the kernel predicates them out.
      The online softmax's element-wise work is not in ``flops``: the FlashAttention papers' FLOP
      counts and utilisations are of the two matmuls only (Dao 2023, FA2 sec. 4.1: 4 s^2 d, halved
      for causal), and :func:`fa_flops_efficiency` is such a utilisation.
    - Bytes: the FlashAttention IO analysis (Dao et al. 2022, Theorem 2; Algorithm 1): Q read once,
      O written once (plus the fp32 log-sum-exp per row, which the forward kernel always writes), K
      and V read once per query tile of Br rows, per query head, over the key blocks that tile
      visits; no score matrix. From the cache in the kv dtype when the pass has one (``kv_read_bytes``).
    - Decode (a pass of one query per sequence): split-K, "flash-decoding" (Dao, Haziza, Massa,
      Sizov 2023, https://crfm.stanford.edu/2023/10/12/flashdecoding.html; FA2's splitkv kernel,
      FA3's ``num_splits``): the query heads of a kv head are packed into one tile (FA2
      ``seqlenq_ngroups_swapped``, FA3 ``pack_gqa``), so K and V are read ONCE per kv head over the
      keys attended (actual tokens, not whole paged blocks: blocks are memory, not traffic); with
      ``splits`` > 1 each split writes a partial O and LSE in fp32, and a second kernel,
      ``flash_attention_combine``, reads them and writes O (:func:`decode_splits`).

    Where executed FLOPs are a step function of kv_len: prefill (q_len > 1), through the tile
    rounding on the diagonal and at the window's edge. A prefill is a single pass, so nothing is
    summed over it. A decode step (q_len 1) has one query row per head: no causal skipping and no
    rounding (its keys are counted exactly, ``kv_len``), and the split count does not depend on
    kv_len, so every decode op's FLOPs and bytes stay affine in the step and the closed-form sums of
    :mod:`costmodel.stepsum` stay exact. (Neglected for that: the masked keys of the window's first
    key block in a sliding decode step, fewer than Bc; FA3's "no split below 5 key blocks".)

    Kept eager: T5's relative position bias (FlashAttention adds no per-(q, k) bias but ALiBi;
    the model's attention keeps its eager ops, ``note`` of :func:`attention_plan` says so).
    Soft-capping (Gemma 2) is a FlashAttention argument (FA2 and FA3 ``softcap``:
    csrc/flash_attn/flash_api.cpp, hopper/flash_api.cpp); attention sinks (gpt-oss) are FA3 in vLLM's
    fork (vllm-project/flash-attention PR 75, vllm-project/vllm PR 22313; vLLM refuses them on FA2:
    "Sinks are only supported in FlashAttention 3", vllm issue 22331). Both run inside the kernel.
    Latent attention (DeepSeek MLA): the absorbed form (a decode step) is attention of H query
    heads over ONE latent kv head, keys [c_kv, k_rope] (d_c + d_rope), values c_kv (d_c), the latent
    read once (as FlashMLA and FA3's MLA path do: hopper/tile_size.h, headdim_v 512); the expanded
    form (prefill) is attention over the expanded K (d_nope + d_rope) and V (d_v) of every head.

The engine's ``flash`` dict (:data:`VLLM_FLASH` is vLLM's): ``version_by_architecture`` ({"ampere":
"fa2", "hopper": "fa3", ...}: tiles and utilisation), ``paged_kv`` (the kernel reads a paged cache:
FA2's split-KV kernel, FA3's non-TMA paged tiles), ``decode`` ("split-k", or anything else for no
split), ``max_num_splits``, ``kv_hbm_reads`` (:func:`kv_hbm_reads`), optional ``block_m`` /
``block_n`` overriding the tile table, and ``sources``.

Fused element-wise kernels (``engine.fusions``, as vLLM runs them; vllm/model_executor/layers/
layernorm.py, activation.py, rotary_embedding.py, csrc/cache_kernels.cu):

- "add_rms_norm": ``fused_add_rms_norm(x, residual, w)``: residual += x; x = rmsnorm(residual) in one
  kernel (the residual add of a sublayer with the next sublayer's or layer's RMSNorm): the sum is
  written (it is the residual) but not read back. The first layer's norm runs alone (vLLM passes no
  residual to it): it moves to the ops before the blocks, and the last layer's add fuses with
  ``final_norm``. RMSNorm pre-norm models only (no sandwich norms, no residual multiplier).
- "silu_and_mul": ``{p}_act`` and ``{p}_mul`` of a gated MLP as one kernel reading gate and up and
  writing act(gate) * up (``{p}_silu_and_mul``; GELU: ``{p}_gelu_and_mul``). Not gpt-oss's clamped
  SwiGLU.
- "rotary": rotary in place on q and k (``rotary_inplace``): reads and writes the rotated dims only,
  with one cos/sin row per token (vLLM's ``cos_sin_cache``).
- "kv_cache_write": ``reshape_and_cache``: new keys and values copied into the paged cache by slot,
  the slot mapping (int64 per token) read too.

Each fused op's FLOPs are the sum of its parts; its bytes are its inputs read once and its outputs
written once (the intermediates gone).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from . import formulas as F
from .analysis import OpCost, StepCost, layer_kv_len
from .dtypes import nbytes
from .sampling import INDEX_BYTES
from .spec import ModelSpec, Workload

FUSIONS = ("add_rms_norm", "silu_and_mul", "rotary", "kv_cache_write")
ATTENTIONS = ("eager", "flash")
ACCUM_BYTES = 4  # fp32: split-K partial outputs and log-sum-exp (FA2 flash_api.cpp: out_accum, softmax_lse_accum)

# The flash dict the vLLM engine profile carries (engines.json; the engine helper loads it untouched).
VLLM_FLASH = {
    "version_by_architecture": {"ampere": "fa2", "ada": "fa2", "hopper": "fa3", "blackwell": "fa2",
                                "cdna": "fa2"},
    "paged_kv": True,
    "decode": "split-k",
    "max_num_splits": 16,
    "kv_hbm_reads": "per_query_tile",
    "sources": {
        "kv_hbm_reads": "Dao et al. 2022, FlashAttention, Theorem 2 and Algorithm 1 (K, V read once per "
                        "query block); see costmodel.fused.kv_hbm_reads",
        "version_by_architecture": "vLLM FlashAttention backend, get_flash_attn_version "
                                   "(vllm/v1/attention/backends/fa_utils.py; vllm PR 12093): FA3 on SM90 "
                                   "(Hopper), FA2 otherwise (newer releases try FA4 on SM100; ROCm uses "
                                   "its own kernels: blackwell and cdna here take FA2's tiles as the "
                                   "nearest published ones, and no utilisation figure)",
        "paged_kv": "vLLM V1 attends over the paged cache through block_table for prefill and decode "
                    "(vllm/v1/attention/backends/flash_attn.py); FA2 then runs its split-KV kernel "
                    "(csrc/flash_attn/flash_api.cpp: run_mha_fwd(params, stream, paged_KV)), FA3 its "
                    "non-TMA paged path (hopper/tile_size.h paged_kv_non_TMA) for 16-token blocks",
        "max_num_splits": "vllm/v1/attention/backends/flash_attn.py: _DEFAULT_MAX_NUM_SPLITS_FOR_CUDA_GRAPH = 16",
        "tiles": "Dao-AILab/flash-attention 0251105a: csrc/flash_attn/src/flash_fwd_launch_template.h "
                 "(FA2), hopper/tile_size.h tile_size_fwd_sm90 (FA3)",
    },
}

# Streaming multiprocessors (compute units) per GPU, for the split-K count when hardware.json has no
# ``sm_count``: NVIDIA A100 whitepaper (108), H100 whitepaper (SXM5 132, PCIe 114), H200 = H100 SXM
# die (132), Blackwell B200 (148: NVIDIA Blackwell architecture technical brief), Ada whitepaper
# (L4 58, L40S 142, RTX 4090 128), A10G (80: AWS G5, GA102), AMD Instinct MI300X datasheet (304 CUs).
SM_COUNT_FALLBACK = {"a100": 108, "h100-sxm": 132, "h100-pcie": 114, "h200": 132, "gh200": 132,
                     "b200": 148, "l4": 58, "l40s": 142, "l40": 142, "rtx-4090": 128, "a10g": 80,
                     "a10": 72, "a30": 56, "mi300x": 304}

_ARCH_BY_PREFIX = (("gh200", "hopper"), ("h100", "hopper"), ("h200", "hopper"), ("a100", "ampere"),
                   ("a10", "ampere"), ("a30", "ampere"), ("l40", "ada"), ("l4", "ada"),
                   ("rtx-4090", "ada"), ("b200", "blackwell"), ("gb200", "blackwell"), ("mi", "cdna"))

# Achievable share of the dense peak of the flash forward kernel (matmul FLOPs / time / peak):
# FA2 on A100 (Dao 2023, FlashAttention-2, abstract and sec. 4.1, Fig. 4: forward 50-73 % of
# 312 TFLOP/s; the middle of the range, 0.62, as no one shape is the typical one); FA2 on H100
# (Shah et al. 2024, FlashAttention-3, abstract: "FlashAttention-2 achieving only 35% utilization
# on the H100"); FA3 on H100 FP16/BF16 (same, abstract: "up to 740 TFLOPs/s (75% utilization)" of
# 989) and FP8 ("close to 1.2 PFLOPs/s" of 1979: 0.6). Other architectures: no published figure (None).
FA_EFFICIENCY = {("fa2", "ampere", "16"): 0.62, ("fa2", "hopper", "16"): 0.35,
                 ("fa3", "hopper", "16"): 0.75, ("fa3", "hopper", "8"): 0.60}


def _flash_cfg(engine) -> dict:
    """The engine's ``flash`` dict (empty when it has none)."""
    return getattr(engine, "flash", None) or {}


def architecture_of(hw) -> str | None:
    """``hw.architecture`` (hardware.json), else by the id's prefix (a100/a10/a30: ampere;
    h100/h200/gh200: hopper; l4/l40/rtx-4090: ada; b200: blackwell; mi*: cdna); None if unknown."""
    arch = getattr(hw, "architecture", None)
    if arch:
        return arch
    hid = getattr(hw, "id", "")
    for prefix, name in _ARCH_BY_PREFIX:
        if hid.startswith(prefix):
            return name
    return None


def sm_count_of(hw) -> int | None:
    """``hw.sm_count`` if the catalog has it, else :data:`SM_COUNT_FALLBACK` by id (prefix)."""
    n = getattr(hw, "sm_count", None)
    if n:
        return n
    hid = getattr(hw, "id", "")
    for key in sorted(SM_COUNT_FALLBACK, key=len, reverse=True):
        if hid.startswith(key):
            return SM_COUNT_FALLBACK[key]
    return None


def flash_version(engine, hw) -> str:
    """"fa2" or "fa3": ``engine.flash["version_by_architecture"]`` for the GPU's architecture (fa2
    where the table has none)."""
    table = _flash_cfg(engine).get("version_by_architecture", {})
    return table.get(architecture_of(hw), "fa2")


def tile_sizes(version: str, arch: str | None, d_qk: int, d_v: int, causal: bool, local: bool,
               paged: bool, element_bytes: int = 2) -> tuple[int, int]:
    """(Br, Bc): query rows and keys per tile of the forward kernel, for 16-bit inputs (FA3 with
    ``element_bytes`` 1, fp8: d <= 64 192 x 160; <= 96 192 x 128; <= 128 128 x (160 paged, else
    224); <= 192 128 x (128 paged and local, else 160); else 128 x (64 local, else 128)).

    FA3 (hopper/tile_size.h, tile_size_fwd_sm90; ``paged`` is its paged_kv_non_TMA: 16-token pages):
    d <= 64: 192 x (128 causal/local/paged, else 192) [d_v 512: 64 x 64, MLA]; d <= 96: 192 x (128
    local/paged, else 144); d <= 128: 128 x (128 causal/local/paged, else 176); d <= 192: 128 x (96
    paged/local, else 128 for d_v <= 128, else 112); else 128 x (64 local, else 80).
    FA2 (csrc/flash_attn/src/flash_fwd_launch_template.h): with a paged cache the split-KV kernel,
    64 x (128 for d <= 64, else 64) (run_mha_fwd_splitkv_align); else run_mha_fwd_hdim{d}: d <= 64:
    128 x 128; d <= 96: 128 x 64 (sm86/89 causal: 64 x 64); d <= 128: 128 x 64 (sm86/89: causal 64 x
    64, else 128 x 32); d <= 192: 128 x 64; 256: 128 x 64 on A100, 64 x 64 where shared memory is
    smaller (sm86/89) or larger (H100: 2 CTAs per SM).
    """
    if version == "fa3" and element_bytes == 1:
        if d_qk <= 64:
            return 192, 160
        if d_qk <= 96:
            return 192, 128
        if d_qk <= 128:
            return 128, 160 if paged else 224
        if d_qk <= 192:
            return 128, 128 if (paged and local) else 160
        return 128, 64 if local else 128
    if version == "fa3":
        if d_qk <= 64:
            if d_v == 512:
                return 64, 64
            return 192, 128 if (causal or local or paged) else 192
        if d_qk <= 96:
            return 192, 128 if (local or paged) else 144
        if d_qk <= 128:
            return 128, 128 if (causal or local or paged) else 176
        if d_qk <= 192:
            return 128, 96 if (paged or local) else (128 if d_v <= 128 else 112)
        return 128, 64 if local else 80
    if paged:
        return 64, 128 if d_qk <= 64 else 64
    sm8x = arch == "ada"
    if d_qk <= 64:
        return 128, 128
    if d_qk <= 96:
        return (64, 64) if (sm8x and causal) else (128, 64)
    if d_qk <= 128:
        if sm8x:
            return (64, 64) if causal else (128, 32)
        return 128, 64
    if d_qk <= 192:
        return 128, 64
    return (128, 64) if arch == "ampere" else (64, 64)


def query_tiles(q_len: int, kv_len: int, br: int, bc: int, causal: bool,
                window: int | None = None, chunk: int | None = None):
    """(rows, keys) of each query tile of ``br`` rows of one head: its rows, and the in-bounds keys
    of the key blocks of ``bc`` it visits (K and V are loaded for those keys once per tile).

    The q_len queries are the last positions of kv_len (query r at position p = kv_len - q_len + r).
    Causal: a tile visits key blocks up to the one holding its last row's position (blocks wholly
    above the diagonal skipped, the diagonal ones whole: FA2's n_block_max); ``window`` W: from the
    block holding its first row's first key p - (W - 1) (n_block_min); ``chunk`` C (Llama 4's
    chunked attention): from the block holding (p // C) * C. Keys past kv_len are not counted.
    """
    for m in range(-(-q_len // br)):
        rows = min(br, q_len - m * br)
        first = kv_len - q_len + m * br  # position of the tile's first row
        hi = first + rows - 1 if causal else kv_len - 1  # last key any row of the tile sees
        lo = 0
        if causal and window is not None:
            lo = max(0, first - (window - 1))
        elif causal and chunk is not None:
            lo = first // chunk * chunk
        yield rows, min((hi // bc + 1) * bc, kv_len) - lo // bc * bc


def executed_pairs(q_len: int, kv_len: int, br: int, bc: int, causal: bool,
                   window: int | None = None, chunk: int | None = None) -> int:
    """(query, key) pairs one head computes: sum over :func:`query_tiles` of rows x keys. A decode
    step (q_len 1) attends over exactly kv_len keys (no tile rounding: see the module doc)."""
    if q_len == 1:
        return kv_len
    return sum(r * k for r, k in query_tiles(q_len, kv_len, br, bc, causal, window, chunk))


def tile_key_loads(q_len: int, kv_len: int, br: int, bc: int, causal: bool,
                   window: int | None = None, chunk: int | None = None) -> int:
    """Keys whose K and V one head's query tiles load, summed over the tiles (Theorem 2's
    T_r passes over K and V, shortened by block skipping)."""
    if q_len == 1:
        return kv_len
    return sum(k for _, k in query_tiles(q_len, kv_len, br, bc, causal, window, chunk))


@dataclass(frozen=True)
class FlashShape:
    """One attention as the flash kernel sees it (per sequence of the batch)."""

    heads: int  # query heads
    kv_heads: int  # key/value heads (1: MLA's shared latent)
    d_qk: int
    d_v: int
    q_len: int
    kv_len: int  # keys attended
    causal: bool
    window: int | None
    chunk: int | None
    kv_read_elements_per_key: int  # per kv head, from the cache (kv dtype)
    kv_act_elements_per_key: int  # per kv head, read as activations (no cache; MLA's expanded K, V)
    softcap: bool = False
    sinks: bool = False


def packs_gqa(version: str, shape: FlashShape) -> bool:
    """Whether a decode step packs the query heads of a kv head into one tile: FA3 always with
    varlen / paged inputs (hopper/heuristics.h should_pack_gqa: varlen -> true; hopper/flash_api.cpp
    get_pack_gqa); FA2 only without a window (csrc/flash_attn/flash_api.cpp
    seqlenq_ngroups_swapped: max_seqlen_q == 1, num_heads > num_heads_k, window_size_left < 0)."""
    local = shape.window is not None or shape.chunk is not None
    return version == "fa3" or not local


def decode_splits(engine, hw, batch: int, shape: FlashShape, br: int, packed: bool = True) -> int:
    """Split-K splits of a decode step: 1 when the (batch x kv head x packed-query tile) blocks
    nearly fill the GPU (>= 0.8 x SMs, FA2/FA3 ``num_splits_heuristic``), else enough to fill it,
    ceil(SMs / blocks), at most ``engine.flash["max_num_splits"]`` (vLLM: 16 under CUDA graphs).
    The heuristic's cap by the number of key blocks is left out, so the count does not change with
    kv_len (the decode sums stay exact). 1 when the GPU's SM count is unknown."""
    sms = sm_count_of(hw)
    if not sms or _flash_cfg(engine).get("decode", "split-k") != "split-k":
        return 1
    group = shape.heads // shape.kv_heads
    if packed:
        blocks = batch * shape.kv_heads * -(-(shape.q_len * group) // br)
    else:
        blocks = batch * shape.heads * -(-shape.q_len // br)
    if blocks >= 0.8 * sms:
        return 1
    return max(1, min(_flash_cfg(engine).get("max_num_splits", 128), -(-sms // blocks)))


KV_HBM_READS = ("per_query_tile", "per_kv_head")


def kv_hbm_reads(engine) -> str:
    """``engine.flash["kv_hbm_reads"]``: how often a multi-row pass reads K and V from HBM.

    "per_query_tile" (default): the FlashAttention IO analysis (Dao et al. 2022, Theorem 2), which
    has only SRAM between the kernel and HBM: every query tile of every query head loads the keys
    it visits. "per_kv_head": once per sequence and kv head, as if the GPU's L2 (40-50 MB on A100 /
    H100) served every re-read by the tiles that run at the same time (the lower bound). Neither is
    measured here; Theorem 2 can make a long paged FA2 prefill look bandwidth-bound (64-row tiles),
    which the FA2 paper's 50-73 % utilisation contradicts."""
    v = _flash_cfg(engine).get("kv_hbm_reads", "per_query_tile")
    if v not in KV_HBM_READS:
        raise ValueError(f"engine flash kv_hbm_reads {v!r}; allowed: {', '.join(KV_HBM_READS)}")
    return v


def flash_ops(name: str, shape: FlashShape, batch: int, wl: Workload, engine, hw) -> list[OpCost]:
    """The flash kernel of one attention (and, for a split-K decode, its combine kernel)."""
    version, arch = flash_version(engine, hw), architecture_of(hw)
    paged = bool(_flash_cfg(engine).get("paged_kv", getattr(engine, "kv_layout", "") == "paged"))
    paged = paged and shape.kv_read_elements_per_key > 0 and shape.kv_act_elements_per_key == 0
    local = shape.window is not None or shape.chunk is not None
    element_bytes = 1 if wl.act_dtype == "fp8" else 2
    br, bc = tile_sizes(version, arch, shape.d_qk, shape.d_v, shape.causal, local, paged, element_bytes)
    br, bc = _flash_cfg(engine).get("block_m", br), _flash_cfg(engine).get("block_n", bc)
    a, c = wl.act_dtype, wl.kv_dtype
    b, h, hk, q = batch, shape.heads, shape.kv_heads, shape.q_len
    pairs = executed_pairs(q, shape.kv_len, br, bc, shape.causal, shape.window, shape.chunk)
    mm = 2 * b * h * pairs * (shape.d_qk + shape.d_v)  # Q K^T (d_qk) and P V (d_v) per pair
    rows = b * h * q  # query rows: one LSE each
    if q == 1 and packs_gqa(version, shape):  # K and V once per kv head (ceil(group / Br) packed tiles)
        key_reads = b * hk * -(-(h // hk) // br) * shape.kv_len
        splits = decode_splits(engine, hw, b, shape, br)
    elif q == 1:  # FA2 on a sliding layer: one tile per query head, K and V read per query head
        key_reads = b * h * shape.kv_len
        splits = decode_splits(engine, hw, b, shape, br, packed=False)
    elif kv_hbm_reads(engine) == "per_kv_head":  # the lower bound: L2 serves every re-read
        key_reads = b * hk * shape.kv_len
        splits = 1
    else:  # Theorem 2: once per query tile of each query head, over the keys it visits
        key_reads = b * h * tile_key_loads(q, shape.kv_len, br, bc, shape.causal, shape.window, shape.chunk)
        splits = 1
    kv_bytes = nbytes(key_reads * shape.kv_read_elements_per_key, c)
    kv_act = nbytes(key_reads * shape.kv_act_elements_per_key, a)
    q_bytes = nbytes(b * q * h * shape.d_qk, a)
    o_elems = b * q * h * shape.d_v
    sinks = h if shape.sinks else 0
    if splits == 1:
        out = nbytes(o_elems, a) + ACCUM_BYTES * rows
        return [OpCost(name, "matmul", mm, mm, weight_bytes=nbytes(sinks, wl.weight_dtype),
                       act_read_bytes=q_bytes + kv_act, act_write_bytes=out, kv_read_bytes=kv_bytes)]
    partial = ACCUM_BYTES * splits * (o_elems + rows)  # fp32 partial O [splits, b, h, q, d_v] and LSE
    # combine: per split and row, the LSE's max, subtract, exp, sum (4); per output element a
    # multiply-add of each split's partial (2)
    combine_flops = splits * (4 * rows + 2 * o_elems)
    return [OpCost(name, "matmul", mm, mm, weight_bytes=nbytes(sinks, wl.weight_dtype),
                   act_read_bytes=q_bytes + kv_act, act_write_bytes=partial, kv_read_bytes=kv_bytes),
            OpCost(f"{name}_combine", "elementwise", combine_flops, 0, act_read_bytes=partial,
                   act_write_bytes=nbytes(o_elems, a) + ACCUM_BYTES * rows)]


# --- the attention of a pass, as the kernel sees it ------------------------------------------------

_EAGER_CORE = ("attn_scores", "attn_softcap", "attn_sinks", "attn_softmax", "attn_values")  # replaced
FLASH_OPS = {"": "flash_attention", "cross_": "cross_flash_attention"}


def flash_supported(spec: ModelSpec) -> tuple[bool, str]:
    """(True, "") where the flash kernel runs the model's attention; (False, why) where it keeps
    its eager ops."""
    if spec.relative_attention_buckets:
        return False, ("T5's relative position bias is a per-(query, key) bias FlashAttention does not "
                       "add (it takes ALiBi slopes only): attention keeps its eager ops")
    return True, ""


def self_attention_shape(spec: ModelSpec, wl: Workload, group, q_len: int, kv_len: int, *,
                         encoder: bool, absorbed: bool, sliding_keys: str = "actual") -> FlashShape:
    """The self-attention of one block of ``group`` in a pass of ``q_len`` new tokens over ``kv_len``
    positions (its keys: :func:`~costmodel.analysis.layer_kv_len`)."""
    cached = wl.kv_cache and not encoder
    causal = not encoder  # the kernel masks (and skips) causally whatever wl.causal counts
    keys = kv_len if encoder else layer_kv_len(spec, group, q_len, kv_len, sliding_keys)
    w = None if encoder else spec.window_of(group)
    window = w if (w is not None and group.attention == "sliding_attention") else None
    chunk = w if (w is not None and group.attention == "chunked_attention") else None
    extra = dict(softcap=spec.attn_logit_softcapping is not None, sinks=bool(spec.attn_sinks))
    if spec.mla and absorbed:  # H query heads over the one latent: keys [c_kv, k_rope], values c_kv
        r, dr = spec.kv_lora_rank, spec.qk_rope_head_dim
        return FlashShape(spec.num_heads, 1, r + dr, r, q_len, keys, causal, window, chunk,
                          kv_read_elements_per_key=r + dr, kv_act_elements_per_key=0, **extra)
    if spec.mla:  # expanded by kv_b_proj: K [d_nope | k_rope] and V [d_v] per head
        dn, dr, dv = spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim
        rope_cached = dr if cached else 0
        return FlashShape(spec.num_heads, spec.num_heads, dn + dr, dv, q_len, keys, causal, window, chunk,
                          kv_read_elements_per_key=rope_cached,
                          kv_act_elements_per_key=dn + dv + (dr - rope_cached), **extra)
    d = spec.head_dim
    return FlashShape(spec.num_heads, spec.num_kv_heads, d, d, q_len, keys, causal, window, chunk,
                      kv_read_elements_per_key=2 * d if cached else 0,
                      kv_act_elements_per_key=0 if cached else 2 * d, **extra)


def cross_attention_shape(spec: ModelSpec, wl: Workload, q_len: int, cross_len: int) -> FlashShape:
    """An encoder-decoder's cross-attention: not causal, over the cross_len source positions."""
    d, cached = spec.head_dim, wl.kv_cache
    return FlashShape(spec.num_heads, spec.num_kv_heads, d, d, q_len, cross_len, False, None, None,
                      kv_read_elements_per_key=2 * d if cached else 0,
                      kv_act_elements_per_key=0 if cached else 2 * d)


def _replace_core(ops: list[OpCost], prefix: str, new: list[OpCost]) -> list[OpCost]:
    """``ops`` with the eager attention core of ``prefix`` (scores .. values) replaced by ``new``,
    at the place of the scores."""
    core = {prefix + n for n in _EAGER_CORE}
    out, placed = [], False
    for o in ops:
        if o.op in core:
            if not placed:
                out += new
                placed = True
            continue
        out.append(o)
    return out


def _is_encoder_pass(spec: ModelSpec, cost: StepCost) -> bool:
    """Encoder-only models; an encoder-decoder's encoder pass (its blocks have no cross-attention)."""
    if spec.arch == "encoder":
        return True
    if spec.arch != "encoder-decoder":
        return False
    return not any(o.op in ("cross_attn_scores", "cross_flash_attention") for _, ops in cost.groups for o in ops)


def attention_shapes(spec: ModelSpec, wl: Workload, cost: StepCost, q_len: int, kv_len: int,
                     sliding_keys: str = "actual"):
    """(group index, prefix, FlashShape) of every attention of the pass's blocks."""
    encoder = _is_encoder_pass(spec, cost)
    for i, (g, ops) in enumerate(cost.groups):
        names = {o.op for o in ops}
        if names & {"attn_scores", "flash_attention"}:
            yield i, "", self_attention_shape(spec, wl, g, q_len, kv_len, encoder=encoder,
                                              absorbed="kv_b_absorb_q" in names, sliding_keys=sliding_keys)
        if names & {"cross_attn_scores", "cross_flash_attention"}:
            yield i, "cross_", cross_attention_shape(spec, wl, q_len, wl.prompt)


def _flash(spec, wl, engine, hw, cost: StepCost, batch, q_len, kv_len, sliding_keys) -> StepCost:
    groups = [(g, list(ops)) for g, ops in cost.groups]
    for i, prefix, shape in attention_shapes(spec, wl, cost, q_len, kv_len, sliding_keys):
        new = flash_ops(FLASH_OPS[prefix], shape, batch, wl, engine, hw)
        groups[i] = (groups[i][0], _replace_core(groups[i][1], prefix, new))
    return StepCost(cost.before, after=cost.after, groups=groups)


# --- fused element-wise kernels --------------------------------------------------------------------

def fuse(name: str, kind: str, parts, dropped_read_bytes: int = 0, dropped_write_bytes: int = 0) -> OpCost:
    """One kernel doing ``parts``: FLOPs and bytes summed, less the intermediates it no longer
    writes (``dropped_write_bytes``) and reads back (``dropped_read_bytes``)."""
    total = [sum(v) for v in zip(*(p.costs() for p in parts))]
    o = OpCost(name, kind, *total)
    return replace(o, matmul_flops=0 if kind != "matmul" else o.matmul_flops,
                   act_read_bytes=o.act_read_bytes - dropped_read_bytes,
                   act_write_bytes=o.act_write_bytes - dropped_write_bytes)


def add_rms_norm_applies(spec: ModelSpec) -> bool:
    """vLLM's fused_add_rms_norm: RMSNorm, pre-norm, the residual added plainly between norms."""
    return (spec.norm_kind == "rmsnorm" and spec.norm_position == "pre" and not spec.parallel_block
            and not spec.sandwich_norms and spec.residual_multiplier is None)


_RESIDUAL_THEN_NORM = {"attn_residual": ("cross_attn_norm", "mlp_norm"), "cross_attn_residual": ("mlp_norm",)}


def _fused_add_norm(add: OpCost, norm: OpCost) -> OpCost:
    # residual += x (reads x and residual, writes the sum); x = rmsnorm(residual) (reads the sum:
    # dropped, it is still in registers; writes the normed x)
    return fuse("fused_add_rms_norm", "elementwise", (add, norm), dropped_read_bytes=norm.act_read_bytes)


def _add_rms_norm(cost: StepCost) -> StepCost:
    """Residual adds fused with the next RMSNorm: within a block (attention's add + the next norm),
    and across blocks (the MLP's add + the next block's attn_norm, the last one's + final_norm)."""
    groups = []
    for g, ops in cost.groups:
        out = []
        for o in ops:
            if out and out[-1].op in _RESIDUAL_THEN_NORM and o.op in _RESIDUAL_THEN_NORM[out[-1].op]:
                out[-1] = _fused_add_norm(out[-1], o)
            else:
                out.append(o)
        groups.append((g, out))
    across = (all(ops and ops[0].op == "attn_norm" and ops[-1].op == "mlp_residual" for _, ops in groups)
              and cost.after and cost.after[0].op == "final_norm")
    if not across:
        return StepCost(cost.before, after=cost.after, groups=groups)
    first_norm = groups[0][1][0]  # the first block's norm runs alone (vLLM: no residual yet)
    groups = [(g, [*ops[1:-1], _fused_add_norm(ops[-1], ops[0])]) for g, ops in groups]
    # the last block's fused op carries a norm of attn_norm's cost in place of final_norm: the same
    # norm of the hidden size over the same tokens
    return StepCost([*cost.before, first_norm], after=cost.after[1:], groups=groups)


_GATED = ("mlp", "expert", "shared_expert")


def _act_and_mul(spec: ModelSpec, ops: list[OpCost]) -> list[OpCost]:
    """``{p}_act`` followed by ``{p}_mul``: one kernel reading gate and up, writing act(gate) * up."""
    kind = {"silu": "silu", "gelu": "gelu", "gelu_tanh": "gelu"}.get(spec.activation)
    if spec.mlp_kind != "gated" or kind is None:
        return ops
    out = []
    for o in ops:
        prev = out[-1] if out else None
        p = o.op.removesuffix("_mul")
        if (prev is not None and o.op.endswith("_mul") and p in _GATED and prev.op == f"{p}_act"
                and not (p == "expert" and spec.swiglu_limit is not None)):
            # act writes act(gate) and mul reads it back: both dropped
            out[-1] = fuse(f"{p}_{kind}_and_mul", "elementwise", (prev, o),
                           dropped_read_bytes=prev.act_write_bytes, dropped_write_bytes=prev.act_write_bytes)
        else:
            out.append(o)
    return out


def _rotary_inplace(spec: ModelSpec, wl: Workload, o: OpCost, tokens: int) -> OpCost:
    """vLLM's rotary_embedding(positions, q, k, ...): in place, the rotated dims of q and k read and
    written, one cos/sin row (rotated_dim values: half cos, half sin) per token."""
    if spec.mla:
        heads, rd = spec.num_heads + 1, spec.qk_rope_head_dim
    else:
        heads, rd = spec.num_heads + spec.num_kv_heads, spec.rotated_dim
    n = tokens * heads * rd
    return OpCost("rotary_inplace", "elementwise", o.flops, 0,
                  act_read_bytes=nbytes(n + tokens * rd, wl.act_dtype), act_write_bytes=nbytes(n, wl.act_dtype))


def _reshape_and_cache(o: OpCost, tokens: int) -> OpCost:
    """vLLM's reshape_and_cache(_flash) / concat_and_cache_mla: keys and values copied into the
    cache slots, the slot mapping (int64 per new token) read."""
    name = "cross_reshape_and_cache" if o.op.startswith("cross_") else "reshape_and_cache"
    return replace(o, op=name, act_read_bytes=o.act_read_bytes + INDEX_BYTES * tokens)


def _elementwise_fusions(spec: ModelSpec, wl: Workload, fusions, cost: StepCost, batch: int, q_len: int):
    t = batch * q_len

    def per_block(ops):
        if "silu_and_mul" in fusions:
            ops = _act_and_mul(spec, ops)
        out = []
        for o in ops:
            if o.op == "rotary" and "rotary" in fusions:
                o = _rotary_inplace(spec, wl, o, t)
            elif o.op == "kv_cache_update" and "kv_cache_write" in fusions:
                o = _reshape_and_cache(o, t)
            elif o.op == "cross_kv_cache_update" and "kv_cache_write" in fusions:
                o = _reshape_and_cache(o, batch * wl.prompt)
            out.append(o)
        return out

    cost = StepCost(cost.before, after=cost.after, groups=[(g, per_block(ops)) for g, ops in cost.groups])
    if "add_rms_norm" in fusions and add_rms_norm_applies(spec):
        cost = _add_rms_norm(cost)
    return cost


# --- the engine's pass ---------------------------------------------------------------------------

def executed_step(spec: ModelSpec, wl: Workload, engine, hw, cost: StepCost, batch: int, q_len: int,
                  kv_len: int, *, sliding_keys: str = "actual") -> StepCost:
    """The eager ``cost`` of one pass (``analysis.step_cost(spec, wl, batch, q_len, kv_len, ...)``,
    ``prefill_cost``, ``decode_step_cost``, ``encode_cost``) as ``engine`` executes it.

    ``engine.attention`` "eager" with no ``engine.fusions``: ``cost`` itself. "flash": each
    attention's core is :func:`flash_ops` (not for models :func:`flash_supported` refuses). Then the
    element-wise fusions of ``engine.fusions`` (:data:`FUSIONS`). ``sliding_keys``: as the eager
    pass was built (decode_step_cost's "growing" / "full" halves of the exact decode sum).
    """
    attention = getattr(engine, "attention", "eager")
    fusions = tuple(getattr(engine, "fusions", ()) or ())
    if attention not in ATTENTIONS:
        raise ValueError(f"engine attention {attention!r}; allowed: {', '.join(ATTENTIONS)}")
    unknown = [f for f in fusions if f not in FUSIONS]
    if unknown:
        raise ValueError(f"engine fusions {unknown}; allowed: {', '.join(FUSIONS)}")
    if attention == "eager" and not fusions:
        return cost
    if attention == "flash" and flash_supported(spec)[0]:
        cost = _flash(spec, wl, engine, hw, cost, batch, q_len, kv_len, sliding_keys)
    if fusions:
        cost = _elementwise_fusions(spec, wl, fusions, cost, batch, q_len)
    return cost


def attention_plan(spec: ModelSpec, engine) -> dict:
    """How ``engine`` runs ``spec``'s attention, for outputs: {"attention": "flash" | "eager", "note": why}."""
    if getattr(engine, "attention", "eager") != "flash":
        return {"attention": "eager", "note": ""}
    ok, why = flash_supported(spec)
    return {"attention": "flash" if ok else "eager", "note": why}


def fa_flops_efficiency(engine, hw, phase: str, dtype: str = "bf16") -> float | None:
    """Achievable share of the dense ``dtype`` peak of the flash kernel in ``phase`` ("prefill"):
    :data:`FA_EFFICIENCY` by (FA version, architecture, 16- or 8-bit); None where the papers give no
    figure, for the eager engine, and for "decode" (a decode step's attention is bandwidth-bound:
    the hardware's default efficiency applies)."""
    if getattr(engine, "attention", "eager") != "flash" or phase != "prefill":
        return None
    bits = "8" if dtype.startswith("fp8") else "16"
    return FA_EFFICIENCY.get((flash_version(engine, hw), architecture_of(hw), bits))


def flash_activation_peak_bytes(spec: ModelSpec, wl: Workload, cost: StepCost, q_len: int, kv_len: int,
                                tokens=None, held: int = 0, sliding_keys: str = "actual") -> int:
    """:func:`~costmodel.analysis.activation_peak_bytes` of an executed pass: the residual stream
    plus the largest op's inputs and outputs, where a flash op holds Q, O (and K, V when they are
    activations, MLA's expanded ones) once, not once per query tile, and no score matrix."""
    tokens = wl.batch * wl.prompt if tokens is None else tokens
    a = wl.act_dtype
    residual = nbytes(tokens * spec.hidden_size, a)
    flash_names = set(FLASH_OPS.values())
    biggest = max((o.act_read_bytes + o.act_write_bytes for o in cost.ops() if o.op not in flash_names),
                  default=0)
    batch = tokens // q_len if q_len else 0
    for _, _, s in attention_shapes(spec, wl, cost, q_len, kv_len, sliding_keys):
        held_kv = batch * s.kv_heads * s.kv_len * s.kv_act_elements_per_key
        foot = nbytes(batch * q_len * s.heads * (s.d_qk + s.d_v) + held_kv, a) + ACCUM_BYTES * batch * s.heads * q_len
        biggest = max(biggest, foot)
    return held + residual + biggest
