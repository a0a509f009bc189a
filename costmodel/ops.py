"""The op registry: every op the op builders emit, registered once with what classifies it.

Like torch's ``utils/flop_counter.py`` (``@register_flop_formula(aten.mm)``, duplicates refused),
each op name of :mod:`costmodel.analysis` and :mod:`costmodel.sampling` is registered here once,
with

- ``kind``: as :attr:`~costmodel.analysis.OpCost.kind` ("matmul", "elementwise" or "memory");
- ``term``: the textbook term its FLOPs are plotted under (``reports.plotdata.TERMS``);
- ``tp``: how Megatron-style tensor parallelism splits it (``costmodel.plan.shard_op``):
  ``column`` (input whole, output sliced), ``row`` (input sliced, full-size partial sums out),
  ``split`` (inside the split region: everything divides), ``vocabulary`` (the LM head, column-
  parallel over the vocabulary) or ``replicated`` (every rank runs it whole);
- ``modules``: the reference model's modules whose counted FLOPs are this op's, as path suffixes
  (``attention.q_proj``; ``*`` stands for an index: ``experts.*.up``), read by ``profiler.flops``;
- ``timing``: (module path inside a block whose forward hook times the op, the part it is
  reported as), read by ``profiler.timing``.

Everything that classifies ops reads this table; :func:`op_info` on a name that is not
registered raises :class:`UnknownOpError`, so a typo fails loudly instead of becoming "other".
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("matmul", "elementwise", "memory")
TERMS = ("projections", "attention", "MLP", "LM head", "other")  # the plots' textbook grouping (reports.plotdata)
TP_SPLITS = ("column", "row", "split", "vocabulary", "replicated")


@dataclass(frozen=True)
class OpInfo:
    """What classifies one op; see the module docstring for each field."""

    name: str
    kind: str
    term: str = "other"
    tp: str = "replicated"
    modules: tuple[str, ...] = ()  # reference-model path suffixes producing its FLOPs
    timing: tuple[str, str] | None = None  # (hooked module path in a block, timing part)


class UnknownOpError(KeyError):
    """An op name nobody registered (a bug: a typo, or a new op without its entry)."""

    def __str__(self) -> str:  # one line, not KeyError's quoted repr
        return str(self.args[0])


_REGISTRY: dict[str, OpInfo] = {}  # in registration order: execution order within a pass


def register(name: str, kind: str, term: str = "other", tp: str = "replicated", modules=(),
             timing: tuple[str, str] | None = None) -> OpInfo:
    """Register op ``name`` once; a second registration of the same name is refused."""
    if name in _REGISTRY:
        raise ValueError(f"op {name!r} is already registered")
    for field, value, allowed in (("kind", kind, KINDS), ("term", term, TERMS), ("tp", tp, TP_SPLITS)):
        if value not in allowed:
            raise ValueError(f"op {name!r}: unknown {field} {value!r}; allowed: {', '.join(allowed)}")
    info = OpInfo(name, kind, term, tp, tuple(modules), timing)
    _REGISTRY[name] = info
    return info


def op_info(name: str) -> OpInfo:
    """The registered entry of ``name``; :class:`UnknownOpError` if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownOpError(f"op {name!r} is not registered in costmodel.ops") from None


def registered() -> tuple[OpInfo, ...]:
    """Every entry, in registration order."""
    return tuple(_REGISTRY.values())


def op_of_module(parts: list[str]) -> str | None:
    """The op whose FLOPs module path ``parts`` (``["layers", "0", "mlp", "up"]``) produces, or None."""
    for info in _REGISTRY.values():
        for pattern in info.modules:
            want = pattern.split(".")
            tail = parts[-len(want):]
            if len(tail) == len(want) and all(w in ("*", p) for w, p in zip(want, tail)):
                return info.name
    return None


def timing_parts() -> tuple[tuple[str, str], ...]:
    """(module path inside a block, timing part) for every module timed per op, without repeats."""
    return tuple(dict.fromkeys(i.timing for i in _REGISTRY.values() if i.timing is not None))


# --- the entries ---------------------------------------------------------------------------------

# Before the first block (costmodel.analysis.model_ops)
register("embedding", "memory")
register("embed_proj_in", "matmul", modules=("embed_proj_in",))  # OPT: word_embed_proj_dim -> hidden
register("embedding_scale", "elementwise")  # sinusoidal models: x * sqrt(h)
register("pos_embedding", "elementwise")
register("token_type_embedding", "elementwise")
register("embedding_norm", "elementwise")
register("position_bias", "memory")  # T5: the bucket lookup, once per pass


def _attention(p: str, module: str, timed: tuple[str, str] | None) -> None:
    """Self-attention (p "", module "attention") or cross-attention (p "cross_")."""
    core = timed or (f"{module}.core", "attention core")

    def proj(name):
        return timed or (f"{module}.{name}", "projections")

    for name in ("q_proj", "k_proj", "v_proj"):
        register(p + name, "matmul", "projections", "column", (f"{module}.{name}",), proj(name))
    register(p + "qkv_bias", "elementwise", tp="split", timing=timed)  # inside q/k/v_proj's nn.Linear
    if not p:  # Qwen3 / Cohere / OLMo 2 q and k norms (replicated: OLMo 2's span every head)
        register("q_norm", "elementwise")
        register("k_norm", "elementwise")
    if not p:  # cross-attention has neither rotary positions nor a position bias
        register("rotary", "elementwise", tp="split")
    register(p + "kv_cache_update", "memory", tp="split", timing=timed)
    register(p + "attn_scores", "matmul", "attention", "split", (f"{module}.core.attn_scores",), core)
    if not p:
        register("attn_position_bias", "elementwise", tp="split", timing=core)  # T5, added to the scores
    register(p + "attn_softmax", "elementwise", tp="split", timing=core)
    register(p + "attn_values", "matmul", "attention", "split", (f"{module}.core.attn_values",), core)
    register(p + "o_proj", "matmul", "projections", "row", (f"{module}.o_proj",), proj("o_proj"))
    register(p + "o_bias", "elementwise", timing=proj("o_proj"))  # added once, after the all-reduce


def _ffn(p: str, modules: str, bias: bool = False) -> None:
    """A feed-forward network's ops ``{p}_gate`` .. ``{p}_down`` (costmodel.analysis.mlp_ops)."""
    mlp = ("mlp", "mlp")
    register(f"{p}_gate", "matmul", "MLP", "column", (f"{modules}.gate",), mlp)
    register(f"{p}_up", "matmul", "MLP", "column", (f"{modules}.up",), mlp)
    if bias:
        register(f"{p}_up_bias", "elementwise", tp="split", timing=mlp)
    register(f"{p}_act", "elementwise", tp="split", timing=mlp)
    register(f"{p}_mul", "elementwise", tp="split", timing=mlp)
    register(f"{p}_down", "matmul", "MLP", "row", (f"{modules}.down",), mlp)
    if bias:
        register(f"{p}_down_bias", "elementwise", timing=mlp)  # added once, after the all-reduce


# One block (costmodel.analysis.layer_ops); the norms and residual adds of each sublayer
register("attn_norm", "elementwise")
_attention("", "attention", None)
# Self-attention's variants (Gemma 2 / 3, gpt-oss, Llama 4). Element-wise ops inside the split region
# are registered "replicated" like every op the old classifiers did not name (tests/test_ops_registry)
register("attn_temperature", "elementwise")  # Llama 4: NoPE layers' queries scaled by position
register("attn_softcap", "elementwise", timing=("attention.core", "attention core"))  # Gemma 2: tanh(scores / c) * c
register("attn_sinks", "elementwise", timing=("attention.core", "attention core"))  # gpt-oss: a logit per head joins the softmax
register("post_attn_norm", "elementwise")  # norm_position "output" (OLMo 2): x + norm(attn(x)); Gemma 2 / 3 sandwich norms
register("attn_residual_scale", "elementwise")  # Granite: x + residual_multiplier * attn(x)
# Multi-head latent attention (costmodel.analysis.mla_attention_ops; DeepSeek-V2 section 2.1); it
# reuses q_proj, qkv_bias, rotary, kv_cache_update, attn_scores, attn_softmax, attn_values, o_proj
# and o_bias. Its modules are profiler.layers.LatentAttention's; not timed per op (the attention
# core and o_proj are, as for any attention).
# NB: under tensor parallelism its own ops are replicated here, although q_b_proj and kv_b_proj
# (and the absorbed kv_b matmuls) split by heads in vLLM, q_a_proj and kv_a_proj being replicated;
# tests/test_ops_registry.py holds every op of every preset to the splits and terms of the
# classifier the registry replaced (which knew only q/k/v/o as projections: hence term "other").
# The reused ops split as for any attention, the latent cache's reads and writes included, though
# every rank holds the whole latent.
register("q_a_proj", "matmul", modules=("attention.q_a_proj",))
register("q_a_norm", "elementwise")
register("q_b_proj", "matmul", modules=("attention.q_b_proj",))
register("kv_a_proj", "matmul", modules=("attention.kv_a_proj",))
register("kv_a_norm", "elementwise")
register("kv_b_proj", "matmul", modules=("attention.kv_b_proj",))
register("kv_b_absorb_q", "matmul", modules=("attention.kv_b_absorb_q",))  # absorbed: q_nope @ W^UK per head
register("kv_b_absorb_v", "matmul", modules=("attention.kv_b_absorb_v",))  # absorbed: latent out @ W^UV per head
register("attn_residual", "elementwise")
register("cross_attn_norm", "elementwise")
_attention("cross_", "cross_attention", ("cross_attention", "cross-attention"))
register("cross_attn_residual", "elementwise")
register("mlp_norm", "elementwise")
_ffn("mlp", "mlp", bias=True)
# Mixture of experts (costmodel.analysis.moe_ops)
register("router", "matmul", "MLP", modules=("mlp.router",), timing=("mlp", "mlp"))
register("router_bias", "elementwise", timing=("mlp", "mlp"))  # gpt-oss
register("router_softmax", "elementwise", timing=("mlp", "mlp"))
register("router_sigmoid", "elementwise", timing=("mlp", "mlp"))  # DeepSeek-V3: sigmoid scores + bias; Llama 4: of the top-k logits
register("router_group_topk", "elementwise", timing=("mlp", "mlp"))  # group-limited routing
register("router_topk", "elementwise", timing=("mlp", "mlp"))
_ffn("expert", "experts.*")
register("expert_up_bias", "elementwise", tp="split", timing=("mlp", "mlp"))  # gpt-oss: gate and up biases
register("expert_down_bias", "elementwise", timing=("mlp", "mlp"))
register("expert_input_scale", "elementwise", timing=("mlp", "mlp"))  # Llama 4: x * score before each expert
register("expert_combine", "elementwise", timing=("mlp", "mlp"))
_ffn("shared_expert", "mlp.shared_expert")
# Qwen-MoE's sigmoid gate x @ w[h, 1] (not the shared expert's gate matrix)
register("shared_expert_score", "matmul", "MLP", modules=("mlp.shared_expert_gate",), timing=("mlp", "mlp"))
register("shared_expert_combine", "elementwise", timing=("mlp", "mlp"))
register("post_mlp_norm", "elementwise")
register("mlp_residual_scale", "elementwise")
register("mlp_residual", "elementwise")
register("parallel_residual", "elementwise")  # parallel block: x + attn + mlp, 2 adds per element

# After the last block
register("final_norm", "elementwise")
register("embed_proj_out", "matmul", modules=("embed_proj_out",))  # OPT: hidden -> word_embed_proj_dim
register("pooler", "matmul", modules=("pooler",))  # BERT
register("pooler_act", "elementwise")
register("mlm_dense", "matmul", modules=("mlm_dense",))
register("mlm_act", "elementwise")
register("mlm_norm", "elementwise")
register("lm_head_scale", "elementwise")  # T5 with tied embeddings
register("lm_head", "matmul", "LM head", "vocabulary", ("lm_head",))
register("lm_head_bias", "elementwise")
register("logits_softcap", "elementwise")  # Gemma 2: tanh(logits / c) * c
register("logits_scale", "elementwise")  # Cohere logit_scale, Granite 1 / logits_scaling

# Picking the next token (costmodel.sampling), measured as one module, the Sampler
for _name in ("sampling_temperature", "sampling_argmax", "sampling_log_softmax", "sampling_beam_add",
              "sampling_topk", "sampling_sort", "sampling_softmax", "sampling_cumsum", "sampling_top_p_mask",
              "sampling_draw"):
    register(_name, "elementwise")

# What an engine executes in place of eager ops (costmodel.fused.executed_step)
register("flash_attention", "matmul", "attention", "split")  # scores .. values in one kernel, by heads
register("flash_attention_combine", "elementwise", "attention", "split")  # split-K decode: partials reduced
register("cross_flash_attention", "matmul", "attention", "split")
register("cross_flash_attention_combine", "elementwise", "attention", "split")
register("fused_add_rms_norm", "elementwise")  # vLLM fused_add_rms_norm: residual add + the next RMSNorm
for _p in ("mlp", "expert", "shared_expert"):  # vLLM SiluAndMul / GeluAndMul: act(gate) * up in one kernel
    register(f"{_p}_silu_and_mul", "elementwise", tp="split")
    register(f"{_p}_gelu_and_mul", "elementwise", tp="split")
register("rotary_inplace", "elementwise", tp="split")  # vLLM rotary_embedding: in place on q, k
register("reshape_and_cache", "memory", tp="split")  # vLLM reshape_and_cache(_flash): k, v into cache slots
register("cross_reshape_and_cache", "memory", tp="split")

# fp8 (W8A8) quantisation of each quantised matmul's input, just before it (costmodel.quant,
# costmodel.analysis._with_input_quant): a column-parallel matmul's input is whole on every rank
# (replicated), a row-parallel one's is sliced (split); MLA's own projections are replicated above.
# Term "other" (element-wise work, as every element-wise op); not timed per op (the reference model
# runs no quantisation).
def _input_quant() -> None:
    from .quant import QUANTISED_OPS

    for name in sorted(QUANTISED_OPS):
        info = op_info(name)
        register(f"{name}_quant", "elementwise", tp="split" if info.tp == "row" else "replicated")


_input_quant()
