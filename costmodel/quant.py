"""Quantisation as deployed: the packed weights, their scales and zero points, the compute dtype.

A scheme (``Workload.quant``) names how the linear layers of the blocks are stored and computed,
as the checkpoint formats and vLLM's kernels hold them. Everything else (token embedding, LM head,
norms, biases, the MoE router) stays at ``Workload.weight_dtype``, as AutoAWQ, AutoGPTQ and vLLM
leave them (below). ``quant="none"`` (the default) is today's model: every parameter at
``weight_dtype``, no scales.

Bytes of one quantised matrix W [n_in, n_out] (``x[t, n_in] @ W``), g = group size::

    packed   n_in * n_out * bits / 8
    scales   (n_in / g) * n_out   (group)  |  n_out (channel)  |  1 (tensor)     x scale bytes
    zeros    as many as the scales, x zero bits / 8 (asymmetric schemes only)
    g_idx    n_in int32 (GPTQ: the group of each input row)

e.g. int4, g = 128, fp16 scales, int4 zeros (AWQ):
n_in*n_out/2 + (n_in/128)*n_out*2 + (n_in/128)*n_out/2 bytes.

Sources (the tensor shapes each format stores; vLLM allocates the same shapes on the GPU):

- AWQ (Lin et al. 2023, arXiv:2306.00978): AutoAWQ ``awq/modules/linear/gemm.py`` ``WQLinear_GEMM``
  and vLLM ``vllm/model_executor/layers/quantization/awq.py`` ``AWQLinearMethod.create_weights``:
  ``qweight`` int32 [n_in, n_out / 8] (8 int4 per int32), ``qzeros`` int32 [n_in / g, n_out / 8],
  ``scales`` fp16 [n_in / g, n_out]; vLLM refuses n_in not a multiple of g ("The input size is
  not aligned with the quantized weight shape") and n_out not a multiple of 8. AWQ is asymmetric
  (``zero_point: true`` in TheBloke's and Qwen's AWQ ``quant_config``).
- GPTQ (Frantar et al. 2022, arXiv:2210.17323): AutoGPTQ ``QuantLinear`` and vLLM
  ``quantization/gptq.py`` ``GPTQLinearMethod.create_weights``: ``qweight`` int32 [n_in / 8, n_out],
  ``g_idx`` int32 [n_in], ``qzeros`` int32 [n_in / g, n_out / 8], ``scales`` fp16 [n_in / g, n_out].
  The zeros are stored even for ``sym: true`` checkpoints (vLLM's ``gptq_marlin`` drops them when
  it repacks a symmetric checkpoint for the Marlin kernel: (n_in/g) * n_out / 2 bytes, 0.4 % of
  the packed weight at g = 128; not modelled: the bytes are the checkpoint's).
- int8 per channel, weight-only (W8A16): vLLM ``compressed_tensors`` W8A16 (``CompressedTensorsWNA16``
  with ``num_bits: 8``, ``strategy: channel``): int8 [n_out, n_in], ``weight_scale`` [n_out, 1]
  in the model's dtype (16 bits).
- fp8 W8A8 (vLLM ``quantization/fp8.py`` ``Fp8LinearMethod``; docs "FP8 W8A8",
  https://docs.vllm.ai/en/latest/features/quantization/fp8.html): weight fp8_e4m3 [n_out, n_in],
  ``weight_scale`` float32 per tensor (one per logical matrix); ``--quantization fp8`` quantises
  activations dynamically per tensor. Per channel (``compressed_tensors`` ``CompressedTensorsW8A8Fp8``,
  strategy channel, "FP8_DYNAMIC"): ``weight_scale`` float32 [n_out, 1], activations dynamic per token.
  Matmuls then run on the fp8 tensor cores: at the GPU's fp8 peak; a GPU without one (A100, V100,
  T4) is refused in one line (vLLM runs fp8 there only as weight-only Marlin).
- Not quantised: vLLM's quantisation methods replace ``LinearBase`` layers only; the token
  embedding and ``ParallelLMHead`` are ``VocabParallelEmbedding`` and stay unquantised unless a
  GPTQ config sets ``lm_head: true`` (vLLM ``gptq.py`` ``lm_head_quantized``); AutoAWQ quantises the
  linear layers of the decoder blocks only; MoE routers (``gate``) are built with
  ``quant_config=None`` in vLLM's Mixtral/Qwen-MoE/DeepSeek models. MLA's absorbed decode matmuls
  (``kv_b_absorb_q``/``_v``) read W^UK, W^UV, which vLLM dequantises from ``kv_b_proj`` at load
  time (``MLACommonImpl.process_weights_after_loading``): read at ``weight_dtype`` here.

Activation quantisation (fp8 schemes): each quantised matmul's input x [t, n_in] (at the
activation dtype) is quantised by its own kernel, ``{op}_quant`` (vLLM ``scaled_fp8_quant``; dynamic:
an abs-max reduction pass, then the scaling pass): it reads x twice, writes x in fp8 and its scale(s)
(fp32: one per tensor, or one per token); FLOPs: 1 per element for the abs-max, 1 for the scaling,
and the epilogue's rescale of each output (s_x * s_w folded into one multiply per output per
tensor; two per output per channel/token) is counted here too, so that the matmul's own FLOPs stay
the counted 2 * t * n_in * n_out. The matmul then reads x in fp8 and its scale(s).

fp8 KV cache (``Workload.kv_dtype="fp8"``, ``--kv-dtype fp8``; independent of the scheme): keys and
values are held and read by attention at 1 byte each (``analysis.kv_cache_bytes``, the
``kv_read_bytes`` of ``attn_scores`` / ``attn_values``); attention computes at the activation dtype
(vLLM's attention kernels dequantise fp8 KV on load). vLLM's ``kv_cache_dtype="fp8"`` keeps one
float32 ``k_scale`` and one ``v_scale`` per attention layer (``vllm/attention/layer.py``
``Attention._k_scale``/``_v_scale``; ``quantization/kv_cache.py`` ``BaseKVCacheMethod``): 8 bytes a
layer, 256 bytes for Llama-2-7B, held once, not per token. They are not counted (the KV figures of
an fp8 cache stay those of today).
"""

from __future__ import annotations

from dataclasses import dataclass

from .dtypes import DTYPE_BITS, nbytes
from .errors import SpecError

SCALE_BYTES_FP32 = 4


@dataclass(frozen=True)
class QuantScheme:
    """How quantised linear layers are stored and computed. ``granularity``: "group" (``group_size``
    input rows share one scale per output column), "channel" (one per output column) or "tensor"
    (one per matrix)."""

    id: str
    weight_dtype: str  # packed storage: int4, int8, fp8
    granularity: str  # "group" | "channel" | "tensor"
    group_size: int | None  # rows per scale for "group"; None otherwise
    scale_bits: int  # 16 (fp16 / the model's dtype) or 32 (float32)
    zero_bits: int = 0  # asymmetric schemes: one zero point per scale (int4: 4 bits); 0: symmetric
    g_idx: bool = False  # GPTQ: an int32 group index per input row
    compute: str = "act"  # "act": dequantised in the kernel, at the activation dtype; "fp8": W8A8
    act_scales: str | None = None  # fp8: "tensor" (dynamic per tensor) or "token" (dynamic per token)
    description: str = ""


SCHEMES: dict[str, QuantScheme] = {s.id: s for s in (
    QuantScheme("awq-int4-g128", "int4", "group", 128, 16, zero_bits=4,
                description="AWQ int4, group 128, fp16 scales and int4 zero points (AutoAWQ GEMM / vLLM awq, awq_marlin)"),
    QuantScheme("gptq-int4-g128", "int4", "group", 128, 16, zero_bits=4, g_idx=True,
                description="GPTQ int4, group 128, fp16 scales, int4 zero points, int32 g_idx (AutoGPTQ / vLLM gptq, gptq_marlin)"),
    QuantScheme("int8-channel", "int8", "channel", None, 16,
                description="int8 weight-only (W8A16), one 16-bit scale per output channel (compressed-tensors)"),
    QuantScheme("fp8-tensor", "fp8", "tensor", None, 32, compute="fp8", act_scales="tensor",
                description="fp8 W8A8: float32 scale per weight matrix, dynamic per-tensor activation scales (vLLM --quantization fp8)"),
    QuantScheme("fp8-channel", "fp8", "channel", None, 32, compute="fp8", act_scales="token",
                description="fp8 W8A8: float32 scale per output channel, dynamic per-token activation scales (compressed-tensors FP8_DYNAMIC)"),
)}
QUANT_CHOICES = ("none", *SCHEMES)

# Ops whose weight matrix a scheme quantises: the linear layers of the blocks (costmodel.analysis).
QUANTISED_OPS = frozenset({
    "q_proj", "k_proj", "v_proj", "o_proj", "cross_q_proj", "cross_k_proj", "cross_v_proj", "cross_o_proj",
    "q_a_proj", "q_b_proj", "kv_a_proj", "kv_b_proj",
    "mlp_gate", "mlp_up", "mlp_down", "expert_gate", "expert_up", "expert_down",
    "shared_expert_gate", "shared_expert_up", "shared_expert_down",
})


def scheme_of(quant: str) -> QuantScheme | None:
    """The scheme named ``quant`` (None for "none"); SpecError listing the choices otherwise."""
    if quant == "none":
        return None
    if quant not in SCHEMES:
        raise SpecError(f"unknown quant {quant!r}; allowed: {', '.join(QUANT_CHOICES)}")
    return SCHEMES[quant]


def matrix_bytes(scheme: QuantScheme, n_in: int, n_out: int) -> int:
    """Bytes of one quantised W [n_in, n_out]: packed values, scales, zeros, g_idx (module docstring)."""
    if scheme.granularity == "group":
        scales = (n_in // scheme.group_size) * n_out
    elif scheme.granularity == "channel":
        scales = n_out
    else:
        scales = 1
    return (nbytes(n_in * n_out, scheme.weight_dtype) + scales * scheme.scale_bits // 8
            + scales * scheme.zero_bits // 8 + (4 * n_in if scheme.g_idx else 0))


def check_matrix(scheme: QuantScheme, op: str, n_in: int, n_out: int, model: str) -> None:
    """The shape rules of the formats: n_in a multiple of the group size (and of 8, GPTQ's packing
    of 8 int4 per int32 along the rows), n_out a multiple of 8 (AWQ's packing, and the int4 zeros'
    along the columns); int4 values and zeros in whole bytes."""
    if scheme.granularity == "group" and n_in % scheme.group_size:
        raise SpecError(f"quant {scheme.id}: {model}'s {op} has {n_in} input rows, not a multiple of the "
                        f"group size {scheme.group_size} (vLLM refuses it too); use quant int8-channel, "
                        "fp8-tensor, fp8-channel or none")
    if DTYPE_BITS[scheme.weight_dtype] < 8 and (n_out % 8 or n_in % 8):
        raise SpecError(f"quant {scheme.id}: {model}'s {op} is [{n_in}, {n_out}]; int4 packs 8 values an "
                        "int32, so both must be multiples of 8")


def layer_matrices(spec, mlp: str | None = None, cross: bool = False) -> list[tuple[str, int, int, int]]:
    """(op, count, n_in, n_out) of the quantised matrices of one block (``mlp``, ``cross`` as
    :meth:`~costmodel.spec.ModelSpec.layer_params`); routed experts: count = num_experts."""
    h = spec.hidden_size
    if spec.mla:
        heads, r_q, r_kv = spec.num_heads, spec.q_lora_rank, spec.kv_lora_rank
        dn, dr, dv = spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim
        q = ([("q_proj", 1, h, heads * (dn + dr))] if r_q is None
             else [("q_a_proj", 1, h, r_q), ("q_b_proj", 1, r_q, heads * (dn + dr))])
        attn = q + [("kv_a_proj", 1, h, r_kv + dr), ("kv_b_proj", 1, r_kv, heads * (dn + dv)),
                    ("o_proj", 1, heads * dv, h)]
    else:
        attn = [("q_proj", 1, h, spec.q_size), ("k_proj", 1, h, spec.kv_size),
                ("v_proj", 1, h, spec.kv_size), ("o_proj", 1, spec.q_size, h)]
    if cross:
        attn += [("cross_q_proj", 1, h, spec.q_size), ("cross_k_proj", 1, h, spec.kv_size),
                 ("cross_v_proj", 1, h, spec.kv_size), ("cross_o_proj", 1, spec.q_size, h)]

    def ffn(prefix, count, inter):
        names = ("gate", "up") if spec.mlp_kind == "gated" else ("up",)
        return [(f"{prefix}_{n}", count, h, inter) for n in names] + [(f"{prefix}_down", count, inter, h)]

    if (mlp or ("moe" if spec.num_experts else "dense")) == "moe":
        body = ffn("expert", spec.num_experts, spec.moe_intermediate_size)
        if spec.num_shared_experts:
            body += ffn("shared_expert", 1, spec.num_shared_experts * spec.shared_expert_intermediate_size)
    else:
        body = ffn("mlp", 1, spec.intermediate_size)
    return attn + body


def _blocks(spec):
    """(layers, mlp, cross) of every kind of block the model has."""
    if spec.arch == "encoder-decoder":
        return [(spec.num_encoder_layers, None, False), (spec.num_layers, None, True)]
    return [(g.count, g.mlp, False) for g in spec.layer_groups()]


def check_spec(scheme: QuantScheme, spec) -> None:
    """Every quantised matrix of ``spec`` obeys the format's shape rules (:func:`check_matrix`)."""
    for _, mlp, cross in _blocks(spec):
        for op, _, n_in, n_out in layer_matrices(spec, mlp, cross):
            check_matrix(scheme, op, n_in, n_out, spec.name)


def layer_quantised(scheme: QuantScheme, spec, mlp: str | None = None, cross: bool = False) -> tuple[int, int]:
    """(parameters, bytes) of one block's quantised matrices."""
    mats = layer_matrices(spec, mlp, cross)
    return (sum(c * i * o for _, c, i, o in mats),
            sum(c * matrix_bytes(scheme, i, o) for _, c, i, o in mats))


def quantised_params_and_bytes(scheme: QuantScheme, spec) -> tuple[int, int]:
    """(parameters, bytes) of every quantised matrix of ``spec``."""
    p = b = 0
    for layers, mlp, cross in _blocks(spec):
        lp, lb = layer_quantised(scheme, spec, mlp, cross)
        p, b = p + layers * lp, b + layers * lb
    return p, b


def input_quant_cost(scheme: QuantScheme, tokens, n_in, n_out, act_dtype: str):
    """(flops, act_read_bytes, act_write_bytes) of quantising one matmul's input x [tokens, n_in]
    to fp8 (dynamic scales) and rescaling its [tokens, n_out] output (module docstring)::

        flops = 2 * t * n_in (abs-max + scale) + t * n_out (tensor) | 2 * t * n_out (token)
        read  = 2 * t * n_in * act bytes (the abs-max pass, then the scaling pass)
        write = t * n_in (fp8) + scales (fp32: 1 per tensor, t per token)
    """
    scales = tokens if scheme.act_scales == "token" else 1
    epilogue = (2 if scheme.act_scales == "token" else 1) * tokens * n_out
    return (2 * tokens * n_in + epilogue, 2 * nbytes(tokens * n_in, act_dtype),
            nbytes(tokens * n_in, "fp8") + SCALE_BYTES_FP32 * scales)


def matmul_input_bytes(scheme: QuantScheme, tokens, n_in) -> int:
    """What an fp8 matmul reads of its input: x in fp8 and its fp32 scale(s)."""
    scales = tokens if scheme.act_scales == "token" else 1
    return nbytes(tokens * n_in, "fp8") + SCALE_BYTES_FP32 * scales


def describe(quant: str) -> str:
    s = scheme_of(quant)
    return "none (every parameter at the weight dtype)" if s is None else f"{s.id}: {s.description}"


def to_dict(quant: str, weight_dtype: str) -> dict | None:
    """The JSON ``quant_scheme`` object of a workload (None for "none")."""
    s = scheme_of(quant)
    if s is None:
        return None
    return {"id": s.id, "weight_dtype": s.weight_dtype, "granularity": s.granularity,
            "group_size": s.group_size, "scale_bits": s.scale_bits, "zero_bits": s.zero_bits,
            "g_idx": s.g_idx, "compute": s.compute, "act_scales": s.act_scales,
            "unquantised_dtype": weight_dtype, "description": s.description,
            "quantised": "the linear layers of the blocks; embedding, LM head, norms, biases and "
                         "MoE routers at the unquantised dtype"}
