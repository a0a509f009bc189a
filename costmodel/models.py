"""Built-in model presets and the offline reader of Hugging Face ``config.json`` files.

:func:`get_model` is the one entry point: a preset name (``llama-2-7b``), a path to a
``config.json`` file or to a folder holding one, or a Hugging Face id (``Qwen/Qwen3-8B``) already in
the local cache (:mod:`costmodel.hub`, never the network). No ``transformers`` import: the config is read
as JSON and its fields mapped per ``model_type``; unknown fields are ignored. A missing size
(layers, width, heads, MLP width, vocabulary, experts) is a :class:`SpecError` naming it; any other
missing field takes the default of transformers' config class for that ``model_type``. A value of
the wrong JSON type (``"false"`` for a flag, ``4096.0`` or ``true`` for a count) is refused, never coerced.
"""

from __future__ import annotations

import json
import os

from . import hub
from .errors import SpecError, close_matches, did_you_mean, read_json_file
from .spec import ATTENTION_TYPES, ModelSpec

# GPT-2 family: LayerNorm, GELU (tanh) 4h MLP, learned positions, biases everywhere, tied LM head.
_GPT2 = dict(family="gpt2", mlp_kind="plain", activation="gelu_tanh", norm_kind="layernorm",
             position_kind="learned", attention_bias=True, attention_out_bias=True, mlp_bias=True,
             tie_word_embeddings=True)
# LLaMA family: RMSNorm, SwiGLU, rotary positions, no biases, untied LM head.
_LLAMA = dict(family="llama", mlp_kind="gated", activation="silu", norm_kind="rmsnorm",
              position_kind="rotary")


# BERT: post-norm encoder, LayerNorm on the embedding sum, token types, pooler (BertModel).
_BERT = dict(family="bert", arch="encoder", mlp_kind="plain", activation="gelu", norm_kind="layernorm",
             position_kind="learned", norm_position="post", attention_bias=True, attention_out_bias=True,
             mlp_bias=True, tie_word_embeddings=True, embedding_norm=True, type_vocab_size=2, pooler=True,
             norm_eps=1e-12)
# T5: pre-norm encoder-decoder, RMSNorm without bias, relative position bias, no score scaling,
# ReLU MLP (v1.0) or gated GELU (v1.1), shared (tied) embeddings.
_T5 = dict(family="t5", arch="encoder-decoder", mlp_kind="plain", activation="relu", norm_kind="rmsnorm",
           position_kind="relative", relative_attention_buckets=32, attention_scale=False,
           tie_word_embeddings=True, norm_eps=1e-6)


def _bert(name, layers, hidden, heads, vocab=30522, positions=512, **kw):
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden, num_heads=heads,
                     intermediate_size=4 * hidden, vocab_size=vocab, max_position_embeddings=positions,
                     **{**_BERT, **kw})


def _t5(name, layers, d_model, heads, d_ff, d_kv=64, vocab=32128, **kw):
    return ModelSpec(name=name, num_layers=layers, hidden_size=d_model, num_heads=heads, head_dim=d_kv,
                     intermediate_size=d_ff, vocab_size=vocab, max_position_embeddings=512,
                     **{**_T5, "num_encoder_layers": layers, **kw})


def _gpt2(name, layers, hidden, heads, vocab=50257, positions=1024):
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden, num_heads=heads,
                     intermediate_size=4 * hidden, vocab_size=vocab,
                     max_position_embeddings=positions, **_GPT2)


def _llama(name, layers, hidden, heads, kv_heads, inter, vocab, positions, **kw):
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden, num_heads=heads,
                     num_kv_heads=kv_heads, intermediate_size=inter, vocab_size=vocab,
                     max_position_embeddings=positions, **{**_LLAMA, **kw})


def _alternating(layers: int, every: int, other: str = "sliding_attention") -> tuple[str, ...]:
    """Every ``every``-th layer full attention, the others ``other`` (transformers' default layer_types)."""
    return tuple(other if (i + 1) % every else "full_attention" for i in range(layers))


def _gemma2(name, layers, hidden, heads, kv_heads, head_dim, inter, scalar, version=2):
    """Gemma 2 (alternating sliding / full, soft-capping) or Gemma 3's text model (5 sliding : 1 full,
    q/k norm); window 4096 (Gemma 2) or 1024 (Gemma 3) as released."""
    v3 = version == 3
    return ModelSpec(
        name=name, num_layers=layers, hidden_size=hidden, num_heads=heads, num_kv_heads=kv_heads,
        head_dim=head_dim, intermediate_size=inter, vocab_size=262208 if v3 else 256000,
        max_position_embeddings=131072 if v3 else 8192, **{**_LLAMA, "activation": "gelu_tanh"},
        tie_word_embeddings=True, norm_eps=1e-6, rope_theta=1000000.0 if v3 else 10000.0,
        sliding_window=1024 if v3 else 4096, layer_types=_alternating(layers, 6 if v3 else 2),
        qk_norm="head" if v3 else None, embedding_multiplier=hidden ** 0.5, sandwich_norms=True,
        attn_logit_softcapping=None if v3 else 50.0, final_logit_softcapping=None if v3 else 30.0,
        query_pre_attn_scalar=scalar)


def _gpt_oss_preset(name, layers, experts):
    """gpt-oss as released: 2880 wide, 64 query heads of 64, 8 KV heads, experts of 2880, top 4."""
    return ModelSpec(
        name=name, num_layers=layers, hidden_size=2880, num_heads=64, num_kv_heads=8, head_dim=64,
        intermediate_size=2880, vocab_size=201088, max_position_embeddings=131072, **_LLAMA,
        attention_bias=True, attention_out_bias=True, rope_theta=150000.0, sliding_window=128,
        layer_types=_alternating(layers, 2), attn_sinks=True, num_experts=experts, experts_per_token=4,
        moe_renormalize=False, router_bias=True, router_scoring="topk_softmax", expert_bias=True,
        swiglu_limit=7.0)


def _llama4(name, experts, moe_step, qk_norm, positions):
    """Llama 4's text model: 48 layers, 5120 wide, 40 heads / 8 KV heads of 128, NoPE every 4th layer
    (full attention, temperature tuning), chunked attention (8192) on the others, top-1 of
    ``experts`` plus a shared expert (8192 wide) every ``moe_step``-th layer, dense layers 16384."""
    layers = 48
    return ModelSpec(
        name=name, num_layers=layers, hidden_size=5120, num_heads=40, num_kv_heads=8, head_dim=128,
        intermediate_size=16384, vocab_size=202048, max_position_embeddings=positions, **_LLAMA,
        rope_theta=500000.0, layer_types=_alternating(layers, 4, "chunked_attention"), attention_chunk_size=8192,
        mlp_layer_types=tuple("dense" if (i + 1) % moe_step else "moe" for i in range(layers)),
        no_rope_layers=tuple(range(3, layers, 4)), attn_temperature_tuning=True, qk_norm="l2" if qk_norm else None,
        num_experts=experts, experts_per_token=1, moe_intermediate_size=8192, num_shared_experts=1,
        shared_expert_intermediate_size=8192, moe_renormalize=False, router_scoring="topk_sigmoid",
        moe_all_experts=True)


# Shapes from each model's published config.json (GPT-3: Brown et al. 2020, table 2.1).
PRESETS: dict[str, ModelSpec] = {m.name: m for m in [
    _gpt2("gpt2", 12, 768, 12),
    _gpt2("gpt2-medium", 24, 1024, 16),
    _gpt2("gpt2-large", 36, 1280, 20),
    _gpt2("gpt2-xl", 48, 1600, 25),
    _gpt2("gpt3-175b", 96, 12288, 96, positions=2048),
    _llama("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 4096),
    _llama("llama-2-13b", 40, 5120, 40, 40, 13824, 32000, 4096),
    _llama("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 4096),
    _llama("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192, rope_theta=500000.0),
    _llama("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 8192, rope_theta=500000.0),
    # mistral-7b: Mistral-7B-v0.2's shapes (32k context, no window; v0.3 adds 768 vocabulary rows)
    _llama("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768),
    # Mistral-7B-v0.1 as released: every layer slides over a 4096-token window.
    _llama("mistral-7b-v0.1", 32, 4096, 32, 8, 14336, 32000, 32768, sliding_window=4096),
    _llama("qwen2-7b", 28, 3584, 28, 4, 18944, 152064, 32768, attention_bias=True,
           rope_theta=1000000.0, norm_eps=1e-6),
    _llama("gemma-7b", 28, 3072, 16, 16, 24576, 256000, 8192, head_dim=256,
           activation="gelu_tanh", tie_word_embeddings=True, norm_eps=1e-6),
    # Phi-3-mini-4k-instruct as released: sliding_window 2047 on every layer (phi-3-mini: the same
    # checkpoint, its name before issue 12; it ignored the window until then).
    _llama("phi-3-mini", 32, 3072, 32, 32, 8192, 32064, 4096, sliding_window=2047),
    _llama("phi-3-mini-4k", 32, 3072, 32, 32, 8192, 32064, 4096, sliding_window=2047),
    # Mixture of experts: Mixtral (8 experts, top 2); Qwen1.5-MoE-A2.7B (60 experts, top 4, plus
    # a sigmoid-gated shared expert of 4 x 1408).
    _llama("mixtral-8x7b", 32, 4096, 32, 8, 14336, 32000, 32768, num_experts=8, experts_per_token=2,
           rope_theta=1000000.0),
    # mistralai/Mixtral-8x22B-v0.1 (v3 tokenizer: vocab 32768), no sliding window
    _llama("mixtral-8x22b", 56, 6144, 48, 8, 16384, 32768, 65536, num_experts=8, experts_per_token=2,
           rope_theta=1000000.0),
    _llama("qwen1.5-moe-a2.7b", 24, 2048, 16, 16, 5632, 151936, 8192, attention_bias=True,
           num_experts=60, experts_per_token=4, moe_intermediate_size=1408, num_shared_experts=1,
           shared_expert_intermediate_size=5632, shared_expert_gate=True, moe_renormalize=False,
           rope_theta=1000000.0, norm_eps=1e-6),
    # Issue 12: the models people deploy today (config.json of each checkpoint; counts in
    # tests/fixtures/hf/published_params.json). Llama 3.1 / 3.2 (rope_scaling "llama3" changes no count).
    _llama("llama-3.1-8b", 32, 4096, 32, 8, 14336, 128256, 131072, rope_theta=500000.0),
    _llama("llama-3.1-70b", 80, 8192, 64, 8, 28672, 128256, 131072, rope_theta=500000.0),
    _llama("llama-3.1-405b", 126, 16384, 128, 8, 53248, 128256, 131072, rope_theta=500000.0),
    _llama("llama-3.2-1b", 16, 2048, 32, 8, 8192, 128256, 131072, rope_theta=500000.0, tie_word_embeddings=True),
    _llama("llama-3.2-3b", 28, 3072, 24, 8, 8192, 128256, 131072, rope_theta=500000.0, tie_word_embeddings=True),
    _llama("qwen2.5-7b", 28, 3584, 28, 4, 18944, 152064, 131072, attention_bias=True, rope_theta=1000000.0,
           norm_eps=1e-6),
    _llama("qwen2.5-72b", 80, 8192, 64, 8, 29568, 152064, 131072, attention_bias=True, rope_theta=1000000.0),
    # Qwen3: RMSNorm over head_dim on each q and k head; head_dim 128 given (32 heads x 128 = 4096)
    _llama("qwen3-8b", 36, 4096, 32, 8, 12288, 151936, 40960, head_dim=128, qk_norm="head",
           rope_theta=1000000.0, norm_eps=1e-6),
    _llama("qwen3-32b", 64, 5120, 64, 8, 25600, 151936, 40960, head_dim=128, qk_norm="head",
           rope_theta=1000000.0, norm_eps=1e-6),
    _llama("phi-4", 40, 5120, 40, 10, 17920, 100352, 16384, rope_theta=250000.0),  # Phi3ForCausalLM
    # OLMo 2: RMSNorm over the whole q and k widths; norms on each sublayer's output, x + norm(f(x))
    _llama("olmo-2-7b", 32, 4096, 32, 32, 11008, 100352, 4096, qk_norm="full", norm_position="output",
           rope_theta=500000.0, norm_eps=1e-6),
    # Fine-grained experts without a shared one, q/k norms per head (Qwen3-MoE config.json files):
    # 128 experts of 768 (1536), top 8, renormalised.
    _llama("qwen3-30b-a3b", 48, 2048, 32, 4, 6144, 151936, 40960, head_dim=128, qk_norm="head",
           num_experts=128, experts_per_token=8, moe_intermediate_size=768, rope_theta=1000000.0, norm_eps=1e-6),
    _llama("qwen3-235b-a22b", 94, 4096, 64, 4, 12288, 151936, 40960, head_dim=128, qk_norm="head",
           num_experts=128, experts_per_token=8, moe_intermediate_size=1536, rope_theta=1000000.0, norm_eps=1e-6),
    # DeepSeek-V3 (its config.json): latent attention (q rank 1536, kv rank 512, 128 + 64 rotary dims,
    # values 128), layers 0-2 dense (18432), then 256 routed experts of 2048, top 8 of the 4 best of
    # 8 groups, sigmoid scores, weights x 2.5, one shared expert. The multi-token-prediction layer of
    # the released checkpoint is not counted (transformers does not build it).
    _llama("deepseek-v3", 61, 7168, 128, 128, 18432, 129280, 163840, q_lora_rank=1536, kv_lora_rank=512,
           qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, num_experts=256, experts_per_token=8,
           moe_intermediate_size=2048, num_shared_experts=1, moe_scoring="sigmoid", moe_groups=8,
           moe_topk_groups=4, routed_scaling_factor=2.5, mlp_layer_types=("dense",) * 3 + ("moe",) * 58,
           norm_eps=1e-6),
    # Interleaved local / global attention (issue 12): Gemma 2 and 3 (text), gpt-oss, Llama 4 (text).
    _gemma2("gemma-2-9b", 42, 3584, 16, 8, 256, 14336, 256),
    _gemma2("gemma-2-27b", 46, 4608, 32, 16, 128, 36864, 144),
    _gemma2("gemma-3-12b", 48, 3840, 16, 8, 256, 15360, 256, version=3),
    _gemma2("gemma-3-27b", 62, 5376, 32, 16, 128, 21504, 168, version=3),
    _gpt_oss_preset("gpt-oss-20b", 24, 32),
    _gpt_oss_preset("gpt-oss-120b", 36, 128),
    _llama4("llama-4-scout", 16, 1, True, 10485760),
    _llama4("llama-4-maverick", 128, 2, False, 1048576),
    # Encoder-only and encoder-decoder models.
    _bert("bert-base", 12, 768, 12),
    _bert("bert-large", 24, 1024, 16),
    _t5("t5-small", 6, 512, 8, 2048),
    _t5("t5-base", 12, 768, 12, 3072),
    _t5("t5-large", 24, 1024, 16, 4096),
    # Vaswani et al. 2017, base: post-norm, sinusoidal positions, biases, shared 37k BPE vocabulary.
    ModelSpec(name="transformer-base", num_layers=6, num_encoder_layers=6, hidden_size=512, num_heads=8,
              intermediate_size=2048, vocab_size=37000, max_position_embeddings=512, family="transformer",
              arch="encoder-decoder", mlp_kind="plain", activation="relu", norm_kind="layernorm",
              position_kind="sinusoidal", norm_position="post", attention_bias=True,
              attention_out_bias=True, mlp_bias=True, tie_word_embeddings=True),
    # Tiny models for tests and profiling on a CPU: each exercises one variant.
    _gpt2("tiny-gpt2", 2, 64, 4, vocab=256, positions=128),
    _llama("tiny-llama", 2, 64, 4, 2, 160, 256, 256),  # GQA, 2 query heads per kv head
    _llama("tiny-mqa", 2, 64, 4, 1, 160, 256, 256),  # MQA
    _llama("tiny-mha", 2, 64, 4, 4, 256, 256, 256, mlp_kind="plain", activation="gelu"),
    _llama("tiny-qwen2", 2, 64, 4, 2, 160, 256, 256, attention_bias=True, tie_word_embeddings=True),
    _llama("tiny-gemma", 2, 64, 2, 1, 128, 256, 256, head_dim=48, activation="gelu_tanh",
           tie_word_embeddings=True),  # head_dim != hidden / heads
    _bert("tiny-bert", 2, 64, 4, vocab=256, positions=128, mlm_head=True),
    _t5("tiny-t5", 2, 64, 4, 128, d_kv=16, vocab=256),
    _t5("tiny-t5-gated", 2, 64, 4, 96, d_kv=24, vocab=256, num_encoder_layers=3, mlp_kind="gated",
        activation="gelu_tanh", tie_word_embeddings=False),  # T5 v1.1 style, 3 encoder layers
    ModelSpec(name="tiny-transformer", num_layers=2, num_encoder_layers=2, hidden_size=64, num_heads=4,
              intermediate_size=256, vocab_size=256, max_position_embeddings=128, family="transformer",
              arch="encoder-decoder", mlp_kind="plain", activation="relu", norm_kind="layernorm",
              position_kind="sinusoidal", norm_position="post", attention_bias=True, attention_out_bias=True,
              mlp_bias=True, tie_word_embeddings=True),  # transformer-base in miniature
    _llama("tiny-mixtral", 2, 64, 4, 2, 96, 256, 256, num_experts=4, experts_per_token=2),
    _llama("tiny-qwen-moe", 2, 64, 4, 4, 96, 256, 256, attention_bias=True, num_experts=6,
           experts_per_token=2, moe_intermediate_size=32, num_shared_experts=1,
           shared_expert_intermediate_size=64, shared_expert_gate=True, moe_renormalize=False),
    # Block variants (issue 12): q/k norms, partial rotary, parallel blocks, sliding windows, dense
    # layers among expert ones.
    _llama("tiny-qwen3", 2, 64, 4, 2, 160, 256, 256, qk_norm="head", tie_word_embeddings=True,
           norm_eps=1e-6),  # RMSNorm over each q and k head's 16 dims
    _llama("tiny-olmo2", 2, 64, 4, 2, 160, 256, 256, qk_norm="full", norm_eps=1e-6),  # over q 64, k 32
    _llama("tiny-neox", 2, 64, 4, 4, 256, 256, 256, mlp_kind="plain", activation="gelu", norm_kind="layernorm",
           attention_bias=True, attention_out_bias=True, mlp_bias=True, rotary_dim=4, parallel_block=True,
           parallel_block_norms=2),  # rotary_pct 0.25 of head_dim 16; two norms, as GPT-NeoX
    _llama("tiny-phi", 2, 64, 4, 4, 256, 256, 256, mlp_kind="plain", activation="gelu_tanh",
           norm_kind="layernorm", attention_bias=True, attention_out_bias=True, mlp_bias=True, rotary_dim=8,
           parallel_block=True, parallel_block_norms=1),  # partial_rotary_factor 0.5; one shared norm
    _llama("tiny-mistral-sw", 2, 64, 4, 2, 160, 256, 256, sliding_window=8),  # every layer slides
    _llama("tiny-qwen2-sw", 3, 64, 4, 2, 160, 256, 256, attention_bias=True, sliding_window=8,
           layer_types=("full_attention", "sliding_attention", "sliding_attention")),  # max_window_layers 1
    _llama("tiny-moe-dense-first", 4, 64, 4, 2, 160, 256, 256, num_experts=4, experts_per_token=2,
           moe_intermediate_size=32, num_shared_experts=1, shared_expert_intermediate_size=64,
           mlp_layer_types=("dense", "moe", "dense", "moe")),  # dense first, then every other layer
    # Latent attention in DeepSeek-V3's shapes of tests/fixtures/hf/deepseek_v3.json (q rank 32, kv rank
    # 16, 16 + 8 rotary dims, values 16), dense layers; without q_lora_rank (DeepSeek-V2-Lite): q_proj,
    # with a latent (32) wider than nope + rope (24) so that the absorbed scores differ in width.
    _llama("tiny-deepseek", 3, 64, 4, 4, 128, 256, 256, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16,
           qk_rope_head_dim=8, v_head_dim=16, norm_eps=1e-6),
    _llama("tiny-deepseek-lite", 2, 64, 4, 4, 128, 256, 256, kv_lora_rank=32, qk_nope_head_dim=16,
           qk_rope_head_dim=8, v_head_dim=16, norm_eps=1e-6),
]}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_model(name_or_path: str) -> ModelSpec:
    """A preset by name, a spec read from a ``config.json`` (file or folder) path, or a Hugging Face
    id ``ORG/NAME[@REVISION]`` found in the local cache (:mod:`costmodel.hub`, offline)."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    if not os.path.exists(name_or_path) and hub.looks_like_repo_id(name_or_path):
        try:
            config = hub.find_config(name_or_path)
        except SpecError as e:  # not in the cache: name the built-in of that name, if there is one
            near = close_matches(name_or_path, PRESETS, n=1)
            if not near:
                raise
            raise SpecError(f"{e}; or use the built-in {near[0]!r} (`costmodel report {near[0]}`)") from None
        return load_hf_config(config, name=name_or_path)
    if os.path.exists(name_or_path) or name_or_path.endswith(".json") or os.sep in name_or_path:
        return load_hf_config(name_or_path)
    raise SpecError(f"unknown model {name_or_path!r}{did_you_mean(name_or_path, PRESETS)} (`costmodel models` "
                    f"lists the {len(PRESETS)} built-in models; a path to a Hugging Face config.json or its "
                    "folder, or a Hugging Face id ORG/NAME in the local cache, also work)")


def model_folder(name_or_path: str) -> str | None:
    """The folder a model's files live in (where a checkpoint may sit beside ``config.json``):
    the folder given, the folder of the config file given, or the cache snapshot of a Hugging Face
    id; None for a preset."""
    if name_or_path in PRESETS:
        return None
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.exists(name_or_path):
        return os.path.dirname(os.path.abspath(name_or_path))
    if hub.looks_like_repo_id(name_or_path):
        return hub.snapshot_folder(name_or_path)
    return None


# --- Hugging Face config.json ------------------------------------------------------------------

HF_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2", "gemma", "phi3", "mixtral", "qwen2_moe", "bert",
                  "roberta", "t5", "qwen3", "olmo2", "granite", "cohere", "falcon", "gpt_neox", "opt", "phi",
                  "starcoder2", "qwen3_moe", "deepseek_v3",
                  "gemma2", "gemma3_text", "gpt_oss", "llama4_text")

_HF_ACTIVATIONS = {
    "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh", "silu": "silu", "swish": "silu", "relu": "relu",
}

# What transformers' config class for each model_type uses for a field a config.json leaves out
# (transformers 5.23.0, src/transformers/models/<type>/configuration_<type>.py, `XConfig().to_dict()`).
# None: derived from other fields, as the class does it (num_key_value_heads: num_attention_heads;
# head_dim: hidden_size // num_attention_heads; n_inner: 4 * n_embd; num_decoder_layers: num_layers).
# Biases the modeling code fixes (qwen2: q, k, v; mistral, mixtral, phi3: none) are not fields.
# The sizes have no default here: layers, width, heads, MLP width, vocabulary and the routed
# experts (number, top-k, width) must be in the config, or it describes no particular checkpoint.
_HF_DEFAULTS: dict[str, dict] = {
    "gpt2": dict(n_positions=1024, n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                 tie_word_embeddings=True),
    "bert": dict(max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12),
    "roberta": dict(max_position_embeddings=512, type_vocab_size=2, hidden_act="gelu", layer_norm_eps=1e-12),
    "t5": dict(d_kv=64, num_decoder_layers=None, relative_attention_num_buckets=32, feed_forward_proj="relu",
               layer_norm_epsilon=1e-6, tie_word_embeddings=True),
    "llama": dict(num_key_value_heads=None, head_dim=None, hidden_act="silu", max_position_embeddings=2048,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0, attention_bias=False,
                  mlp_bias=False),
    "mistral": dict(num_key_value_heads=8, head_dim=None, hidden_act="silu", max_position_embeddings=131072,
                    rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0, sliding_window=4096,
                    layer_types=None),
    "qwen2": dict(num_key_value_heads=32, head_dim=None, hidden_act="silu", max_position_embeddings=32768,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0, use_sliding_window=False,
                  sliding_window=4096, max_window_layers=28, layer_types=None),
    "gemma": dict(num_key_value_heads=16, head_dim=256, hidden_act="gelu_pytorch_tanh",
                  max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  rope_theta=10000.0, attention_bias=False),
    "phi3": dict(num_key_value_heads=None, head_dim=None, hidden_act="silu", max_position_embeddings=4096,
                 rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=10000.0, sliding_window=None,
                 layer_types=None),
    "mixtral": dict(num_key_value_heads=8, head_dim=None, hidden_act="silu", max_position_embeddings=131072,
                    rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=1000000.0, sliding_window=None,
                    layer_types=None),
    "qwen2_moe": dict(num_key_value_heads=16, head_dim=None, hidden_act="silu", max_position_embeddings=32768,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0, qkv_bias=True,
                      shared_expert_intermediate_size=5632, norm_topk_prob=False, decoder_sparse_step=1,
                      mlp_only_layers=None, use_sliding_window=False, sliding_window=4096, max_window_layers=28,
                      layer_types=None),
    "qwen3": dict(num_key_value_heads=32, head_dim=128, hidden_act="silu", max_position_embeddings=32768,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0, attention_bias=False,
                  use_sliding_window=False, sliding_window=4096, max_window_layers=28, layer_types=None),
    "olmo2": dict(num_key_value_heads=None, head_dim=None, hidden_act="silu", max_position_embeddings=2048,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=10000.0, attention_bias=False),
    "granite": dict(num_key_value_heads=None, head_dim=None, hidden_act="silu", max_position_embeddings=2048,
                    rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0, attention_bias=False,
                    mlp_bias=False, embedding_multiplier=1.0, logits_scaling=1.0, residual_multiplier=1.0,
                    attention_multiplier=1.0),
    "cohere": dict(num_key_value_heads=None, head_dim=None, hidden_act="silu", max_position_embeddings=8192,
                   layer_norm_eps=1e-5, tie_word_embeddings=True, rope_theta=500000.0, attention_bias=False,
                   use_qk_norm=False, logit_scale=0.0625),
    "falcon": dict(ffn_hidden_size=None, num_kv_heads=None, activation="gelu", max_position_embeddings=2048,
                   layer_norm_epsilon=1e-5, tie_word_embeddings=True, rope_theta=10000.0, alibi=False,
                   new_decoder_architecture=False, multi_query=True, parallel_attn=True, bias=False,
                   num_ln_in_parallel_attn=None),
    "gpt_neox": dict(hidden_act="gelu", max_position_embeddings=2048, layer_norm_eps=1e-5,
                     tie_word_embeddings=False, use_parallel_residual=True, attention_bias=True,
                     rotary_pct=0.25, rotary_emb_base=10000.0),
    "opt": dict(max_position_embeddings=2048, do_layer_norm_before=True, _remove_final_layer_norm=False,
                word_embed_proj_dim=None, activation_function="relu", enable_bias=True,
                layer_norm_elementwise_affine=True, tie_word_embeddings=True),
    "phi": dict(num_key_value_heads=None, head_dim=None, hidden_act="gelu_new", max_position_embeddings=2048,
                layer_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=10000.0, qk_layernorm=False,
                partial_rotary_factor=0.5),
    "starcoder2": dict(num_key_value_heads=2, head_dim=None, hidden_act="gelu_pytorch_tanh",
                       max_position_embeddings=4096, norm_epsilon=1e-5, tie_word_embeddings=True,
                       rope_theta=10000.0, sliding_window=None, use_bias=True, layer_types=None),
    "qwen3_moe": dict(num_key_value_heads=4, head_dim=None, hidden_act="silu", max_position_embeddings=32768,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0, attention_bias=False,
                      use_sliding_window=False, norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=None),
    "deepseek_v3": dict(hidden_act="silu", max_position_embeddings=4096,
                        rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0, attention_bias=False,
                        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                        v_head_dim=128, n_shared_experts=1, n_group=8, topk_group=4, first_k_dense_replace=3,
                        norm_topk_prob=True, routed_scaling_factor=2.5),
    # Gemma 2 / 3: layer_types None means Gemma2Config's alternation (sliding first) or Gemma3TextConfig's
    # sliding_window_pattern (every 6th layer full); Gemma 3's rope_theta is its full layers' (global) base.
    "gemma2": dict(num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
                   max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=True, rope_theta=10000.0,
                   attention_bias=False, query_pre_attn_scalar=256, sliding_window=4096, layer_types=None,
                   final_logit_softcapping=30.0, attn_logit_softcapping=50.0),
    "gemma3_text": dict(num_key_value_heads=4, head_dim=256, hidden_activation="gelu_pytorch_tanh",
                        max_position_embeddings=131072, rms_norm_eps=1e-6, tie_word_embeddings=True,
                        rope_theta=1000000.0, attention_bias=False, query_pre_attn_scalar=256, sliding_window=4096,
                        layer_types=None, sliding_window_pattern=6, final_logit_softcapping=None,
                        attn_logit_softcapping=None, use_bidirectional_attention=False),
    "gpt_oss": dict(num_key_value_heads=8, head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5,
                    tie_word_embeddings=False, rope_theta=150000.0, sliding_window=128, layer_types=None,
                    swiglu_limit=7.0, attention_bias=True),
    # Llama 4 text: no_rope_layers null or empty means every no_rope_layer_interval-th layer NoPE;
    # moe_layers null: every interleave_moe_layer_step-th layer; layer_types null: chunked on the rotary layers.
    "llama4_text": dict(num_key_value_heads=8, head_dim=128, hidden_act="silu", max_position_embeddings=131072,
                        rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=500000.0, attention_bias=False,
                        moe_layers=None, interleave_moe_layer_step=1, use_qk_norm=True, no_rope_layers=None,
                        no_rope_layer_interval=4, attention_chunk_size=8192, layer_types=None,
                        attn_temperature_tuning=True),
}
# Fields the class declares `int | None` (or a list or None): null there means derived (None above),
# as transformers reads it; a null anywhere else is refused, as transformers' strict fields refuse it.
# head_dim is no field of qwen2, phi3 and qwen2_moe: their attention reads it when given (and fails on null).
_HF_NULLABLE: dict[str, set] = {
    "gpt2": {"n_inner"}, "t5": {"num_decoder_layers"}, "llama": {"num_key_value_heads", "head_dim"},
    "mistral": {"head_dim", "sliding_window", "layer_types"},
    "qwen2": {"num_key_value_heads", "sliding_window", "layer_types"},
    "phi3": {"num_key_value_heads", "sliding_window", "layer_types"},
    "mixtral": {"head_dim", "sliding_window", "layer_types"},
    "qwen2_moe": {"num_key_value_heads", "mlp_only_layers", "sliding_window", "layer_types"},
    "qwen3": {"num_key_value_heads", "sliding_window", "layer_types"}, "olmo2": {"num_key_value_heads"},
    "granite": {"num_key_value_heads"}, "cohere": {"num_key_value_heads", "use_qk_norm"},
    "falcon": {"ffn_hidden_size", "num_kv_heads", "alibi", "new_decoder_architecture", "multi_query",
               "parallel_attn", "bias", "num_ln_in_parallel_attn"},
    "opt": {"word_embed_proj_dim"}, "phi": {"num_key_value_heads"},
    "starcoder2": {"head_dim", "sliding_window", "layer_types"},
    "qwen3_moe": {"mlp_only_layers"},
    "deepseek_v3": {"q_lora_rank"},  # null: a plain q_proj
    "gemma2": {"sliding_window", "layer_types", "final_logit_softcapping", "attn_logit_softcapping"},
    "gemma3_text": {"sliding_window", "layer_types", "final_logit_softcapping", "attn_logit_softcapping",
                    "use_bidirectional_attention"},
    "gpt_oss": {"sliding_window", "layer_types"},
    "llama4_text": {"moe_layers", "no_rope_layers", "attention_chunk_size", "layer_types"},
}


def load_hf_config(path: str, name: str | None = None) -> ModelSpec:
    """Read a Hugging Face ``config.json`` (or the folder holding it) into a :class:`ModelSpec`,
    named ``name`` (default: the folder's name, or the file's stem if not ``config.json``)."""
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    cfg = read_json_file(file, "config")
    if not isinstance(cfg, dict):
        raise SpecError(f"malformed config {file!r}: expected a JSON object, got {type(cfg).__name__}")
    folder = os.path.basename(os.path.dirname(os.path.abspath(file)))
    if name is None:
        name = folder if os.path.basename(file) == "config.json" and folder else os.path.splitext(os.path.basename(file))[0]
    return spec_from_hf_dict(cfg, name=printable(name), source=printable(file))


def printable(text: str) -> str:
    """``text`` as UTF-8 can encode it: a file name's undecodable bytes (held by Python as
    surrogate escapes, e.g. a folder named ``b"m\\xff"``) become U+FFFD, so that tables, JSON and
    the HTML page can print the name instead of failing in the encoder."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape" if _only_escapes(text) else "replace").decode("utf-8", "replace")


def _only_escapes(text: str) -> bool:
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def spec_from_hf_dict(cfg: dict, name: str, source: str = "config") -> ModelSpec:
    """Map the fields of a parsed HF config to a :class:`ModelSpec` (see :func:`load_hf_config`)."""
    try:
        return _spec_from_hf_dict(cfg, name, source)
    except SpecError as e:
        msg = str(e)
        raise SpecError(msg if msg.startswith(source) else f"{source}: {msg}") from None


_MISSING = object()


def _shown(value) -> str:
    """A config value as the user wrote it: strings quoted, the rest as JSON (null, true, 4096.0)."""
    return repr(value) if isinstance(value, str) else json.dumps(value, default=repr)


class _HFFields:
    """Typed reads of one parsed config: a missing field takes transformers' default for the
    ``model_type`` (``_HF_DEFAULTS``), a value of the wrong JSON type is a one-line SpecError naming
    the field, the value and the type it needs; never a coercion (``"false"`` is not false, ``4096.0``
    and ``true`` are not integers)."""

    def __init__(self, cfg: dict, model_type: str):
        self.cfg, self.model_type = cfg, model_type
        self.defaults = _HF_DEFAULTS[model_type]
        self.nullable = _HF_NULLABLE.get(model_type, set())

    def _get(self, key: str, aliases: tuple = ()):
        """(the key found, its value); an alias (transformers' attribute_map standard name, e.g.
        ``hidden_size`` for GPT-2's ``n_embd``) wins over the field, as it does in transformers."""
        for k in (*aliases, key):
            if k in self.cfg:
                return k, self.cfg[k]
        return key, _MISSING

    def experts(self, key: str, *aliases: str) -> int:
        """A routed-expert count of a MoE model_type: at least 1 (0 would silently analyse a dense MLP)."""
        n = self.required_int(key, *aliases)
        if n < 1:
            raise SpecError(f"field {key!r} must be at least 1 for model_type {self.model_type!r} "
                            f"(a mixture of experts), got {n}")
        return n

    def required_int(self, key: str, *aliases: str) -> int:
        k, v = self._get(key, aliases)
        if v is _MISSING:
            raise SpecError(f"missing required field {key!r} for model_type {self.model_type!r}")
        return _int_value(k, v)

    def optional_int(self, key: str, *aliases: str) -> int | None:
        """The integer, its default if missing, None (derived) if null where the class allows null."""
        k, v = self._get(key, aliases)
        if v is _MISSING:
            return self.defaults[key]
        if v is None and key in self.nullable:
            return None
        return _int_value(k, v)

    def number(self, key: str) -> float:
        """A float; an integer too (config writers drop the ``.0`` of ``10000.0``)."""
        v = self.cfg.get(key, self.defaults[key])
        return _float_value(key, v)

    def optional_number(self, key: str) -> float | None:
        """A number, or None where the class allows null (soft-capping off)."""
        v = self.cfg.get(key, self.defaults[key])
        return None if v is None and key in self.nullable else _float_value(key, v)

    def string_list(self, key: str) -> list | None:
        """A list of strings (``layer_types``), or None (derived) where the class allows null."""
        v = self.cfg.get(key, self.defaults[key])
        if v is None and key in self.nullable:
            return None
        if not isinstance(v, list) or any(not isinstance(i, str) for i in v):
            raise SpecError(f"field {key!r} must be a list of strings, got {_shown(v)}")
        return v

    def flag(self, key: str) -> bool:
        """true or false; null as false where the class allows it (``bool | None``, read as ``if``)."""
        v = self.cfg.get(key, self.defaults[key])
        if v is None and key in self.nullable:
            return False
        if not isinstance(v, bool):
            raise SpecError(f"field {key!r} must be true or false, got {_shown(v)}")
        return v

    def string(self, key: str) -> str:
        v = self.cfg.get(key, self.defaults[key])
        if not isinstance(v, str):
            raise SpecError(f"field {key!r} must be a string, got {_shown(v)}")
        return v

    def int_list(self, key: str) -> list:
        v = self.cfg.get(key, self.defaults[key])
        if v is None and key in self.nullable:
            return []
        if not isinstance(v, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in v):
            raise SpecError(f"field {key!r} must be a list of integers, got {_shown(v)}")
        return v

    def activation(self, key: str) -> str:
        act = self.string(key)
        if act not in _HF_ACTIVATIONS:
            raise SpecError(f"unsupported {key} {act!r}; supported: {', '.join(_HF_ACTIVATIONS)}")
        return _HF_ACTIVATIONS[act]

    def _rope_parameters(self) -> tuple[str | None, dict]:
        """(the key, the dict) of ``rope_scaling`` (legacy, wins when given) or ``rope_parameters``."""
        found, params = None, {}
        for key in ("rope_scaling", "rope_parameters"):
            v = self.cfg.get(key)
            if v is not None and not isinstance(v, dict):
                raise SpecError(f"field {key!r} must be an object or null, got {_shown(v)}")
            if v and not params:
                found, params = key, v
        return found, params

    def rope_theta(self, key: str = "rope_theta") -> float:
        """transformers 5 keeps it in ``rope_parameters`` (a legacy ``rope_scaling`` dict, when given,
        takes its place); a top-level ``rope_theta`` (GPT-NeoX: ``rotary_emb_base``) fills in when
        that dict has none."""
        found, params = self._rope_parameters()
        if "rope_theta" in params:
            return _float_value(f"{found}.rope_theta", params["rope_theta"])
        return self.number(key)

    def partial_rotary_factor(self, key: str = "partial_rotary_factor") -> float:
        """Fraction of head_dim rotated: the rope dict's ``partial_rotary_factor``, else the top-level
        field ``key`` (GPT-NeoX: ``rotary_pct``), else the class default; in (0, 1]."""
        found, params = self._rope_parameters()
        if "partial_rotary_factor" in params:
            key, v = f"{found}.partial_rotary_factor", params["partial_rotary_factor"]
        else:
            v = self.cfg.get(key, self.defaults[key])
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not 0 < v <= 1:  # the range, named
            raise SpecError(f"field {key!r} must be in (0, 1], got {_shown(v)}")
        factor = _float_value(key, v)
        if not 0 < factor <= 1:
            raise SpecError(f"field {key!r} must be in (0, 1], got {_shown(v)}")
        return factor


def _int_value(key: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"field {key!r} must be an integer, got {_shown(v)}")
    limit = 2**20 if "layer" in key else 2**40  # the bounds of spec.SIZE_LIMITS, before per-layer lists
    if v > limit:
        raise SpecError(f"field {key!r} is {_shown(v)}, past any physical model; the limit is "
                        f"{limit:,} (2**{limit.bit_length() - 1})")
    return v


def _float_value(key: str, v) -> float:
    """A config's float field: every one costmodel reads (rotary bases, norm epsilons, multipliers,
    soft-caps, scales) is a positive finite number; NaN, infinities, 0 and negatives are refused."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SpecError(f"field {key!r} must be a number, got {_shown(v)}")
    try:
        x = float(v)
    except OverflowError:  # an integer too large for a float
        raise SpecError(f"field {key!r} must be a positive finite number, got an integer of "
                        f"{len(str(abs(v)))} digits") from None
    if not 0 < x < float("inf"):
        raise SpecError(f"field {key!r} must be a positive finite number, got {_shown(v)}")
    return x


def _spec_from_hf_dict(cfg: dict, name: str, source: str) -> ModelSpec:
    if "model_type" not in cfg:
        raise SpecError(f"missing required field 'model_type'; supported: {', '.join(HF_MODEL_TYPES)}")
    model_type = cfg["model_type"]
    if not isinstance(model_type, str) or model_type not in HF_MODEL_TYPES:
        raise SpecError(f"unsupported model_type {_shown(model_type)}; supported: {', '.join(HF_MODEL_TYPES)}")
    f = _HFFields(cfg, model_type)

    if model_type == "gpt2":
        hidden = f.required_int("n_embd", "hidden_size")
        inner = f.optional_int("n_inner")
        return ModelSpec(
            name=name, num_layers=f.required_int("n_layer", "num_hidden_layers"), hidden_size=hidden,
            num_heads=f.required_int("n_head", "num_attention_heads"),
            intermediate_size=4 * hidden if inner is None else inner,  # HF: n_inner null means 4 * n_embd
            vocab_size=f.required_int("vocab_size"),
            max_position_embeddings=f.optional_int("n_positions", "max_position_embeddings"),
            **{**_GPT2, "activation": f.activation("activation_function"),
               "tie_word_embeddings": f.flag("tie_word_embeddings")},
            norm_eps=f.number("layer_norm_epsilon"))

    if model_type in ("bert", "roberta"):
        # BertModel / RobertaModel: the encoder with its pooler (the counts model cards quote)
        return ModelSpec(
            name=name, num_layers=f.required_int("num_hidden_layers"), hidden_size=f.required_int("hidden_size"),
            num_heads=f.required_int("num_attention_heads"), intermediate_size=f.required_int("intermediate_size"),
            vocab_size=f.required_int("vocab_size"), max_position_embeddings=f.optional_int("max_position_embeddings"),
            **{**_BERT, "activation": f.activation("hidden_act"), "type_vocab_size": f.optional_int("type_vocab_size"),
               "norm_eps": f.number("layer_norm_eps")})

    if model_type == "t5":
        mlp_kind, act = _t5_feed_forward(f.string("feed_forward_proj"))
        layers = f.required_int("num_layers", "num_hidden_layers")
        decoder_layers = f.optional_int("num_decoder_layers")
        n_positions = cfg.get("n_positions", 512)  # no T5Config field: relative positions have no limit
        return ModelSpec(
            name=name, num_layers=layers if decoder_layers is None else decoder_layers,
            hidden_size=f.required_int("d_model", "hidden_size"),
            num_heads=f.required_int("num_heads", "num_attention_heads"), head_dim=f.optional_int("d_kv", "head_dim"),
            intermediate_size=f.required_int("d_ff"), vocab_size=f.required_int("vocab_size"),
            max_position_embeddings=_int_value("n_positions", n_positions),
            **{**_T5, "num_encoder_layers": layers, "mlp_kind": mlp_kind, "activation": act,
               "relative_attention_buckets": f.optional_int("relative_attention_num_buckets"),
               # T5Config 5.x sets its attribute to true whatever is given; v1.1 (false) has its own LM head
               "tie_word_embeddings": f.flag("tie_word_embeddings"),
               "norm_eps": f.number("layer_norm_epsilon")})

    if model_type == "deepseek_v3":
        return _deepseek_v3(cfg, f, name)
    if model_type in _OWN_LAYOUT:
        return _OWN_LAYOUT[model_type](f, name)
    if model_type in _NEWER_READERS:
        return _NEWER_READERS[model_type](f, name)

    heads = f.required_int("num_attention_heads")
    kw = dict(_LLAMA)
    # Biases as each modeling_<type>.py builds its projections.
    if model_type == "qwen2":
        kw["attention_bias"] = True  # q, k, v: bias=True; o_proj: bias=False
    elif model_type in ("llama", "gemma", "qwen3", "olmo2", "granite", "cohere"):
        bias = f.flag("attention_bias")  # one flag for q, k, v and o
        kw.update(attention_bias=bias, attention_out_bias=bias)
        if model_type in ("llama", "granite"):
            kw["mlp_bias"] = f.flag("mlp_bias")
    elif model_type == "starcoder2":  # use_bias on q, k, v, o and both MLP matrices; LayerNorm
        bias = f.flag("use_bias")
        kw.update(attention_bias=bias, attention_out_bias=bias, mlp_bias=bias, mlp_kind="plain",
                  norm_kind="layernorm")
    kw.update(_llama_like_variant(f, model_type))
    if model_type == "mixtral":
        kw.update(num_experts=f.experts("num_local_experts", "num_experts"),
                  experts_per_token=f.required_int("num_experts_per_tok"))
    elif model_type == "qwen2_moe":
        kw["mlp_layer_types"] = _qwen2_moe_mlp_layer_types(f)
        shared = f.optional_int("shared_expert_intermediate_size")  # 0: no shared expert
        kw.update(attention_bias=f.flag("qkv_bias"), num_experts=f.experts("num_experts"),
                  experts_per_token=f.required_int("num_experts_per_tok"),
                  moe_intermediate_size=f.required_int("moe_intermediate_size"),
                  num_shared_experts=1 if shared else 0, shared_expert_gate=bool(shared),
                  shared_expert_intermediate_size=shared or None, moe_renormalize=f.flag("norm_topk_prob"))
    elif model_type == "qwen3_moe":
        if f.flag("use_sliding_window"):
            raise SpecError("use_sliding_window true is not supported for qwen3_moe; allowed: false")
        bias = f.flag("attention_bias")  # one flag for q, k, v and o (modeling_qwen3_moe.py)
        kw.update(attention_bias=bias, attention_out_bias=bias, qk_norm="head",
                  num_experts=f.experts("num_experts", "num_local_experts"),
                  experts_per_token=f.required_int("num_experts_per_tok"),
                  moe_intermediate_size=f.required_int("moe_intermediate_size"),
                  moe_renormalize=f.flag("norm_topk_prob"),
                  mlp_layer_types=_qwen2_moe_mlp_layer_types(f))  # Qwen3MoeDecoderLayer: the same rule
    if model_type in _SLIDING_TYPES:
        kw.update(_sliding_fields(f, f.required_int("num_hidden_layers")))
    act = f.activation("hidden_act")
    if model_type == "gemma" and act == "gelu":
        act = "gelu_tanh"  # GemmaConfig: the releases' legacy "gelu" means the tanh approximation
    return ModelSpec(
        name=name, num_layers=f.required_int("num_hidden_layers"), hidden_size=f.required_int("hidden_size"),
        num_heads=heads, num_kv_heads=f.optional_int("num_key_value_heads"), head_dim=f.optional_int("head_dim"),
        intermediate_size=f.required_int("intermediate_size"), vocab_size=f.required_int("vocab_size"),
        max_position_embeddings=f.optional_int("max_position_embeddings"),
        **{**kw, "activation": act, "tie_word_embeddings": f.flag("tie_word_embeddings")},
        rope_theta=f.rope_theta(), norm_eps=f.number(_NORM_EPS.get(model_type, "rms_norm_eps")))


_NORM_EPS = {"cohere": "layer_norm_eps", "starcoder2": "norm_epsilon"}  # the rest: rms_norm_eps


def _llama_like_variant(f: _HFFields, model_type: str) -> dict:
    """ModelSpec fields of the LLaMA-shaped families that differ in a detail of the block."""
    if model_type == "qwen3":
        return dict(qk_norm="head")  # Qwen3RMSNorm(head_dim) on each q and k head
    if model_type == "olmo2":  # RMSNorm over all of q and k; norms on the sublayers' outputs
        return dict(qk_norm="full", norm_position="output")
    if model_type == "granite":
        scaling = f.number("logits_scaling")  # logits / logits_scaling
        if scaling == 0:
            raise SpecError("field 'logits_scaling' must be non-zero (the logits are divided by it), got 0")
        return dict(embedding_multiplier=f.number("embedding_multiplier"),
                    residual_multiplier=f.number("residual_multiplier"),
                    attention_multiplier=f.number("attention_multiplier"), logits_scale=1.0 / scaling)
    if model_type == "cohere":  # one LayerNorm without bias feeds attention and MLP; logits scaled
        return dict(norm_kind="layernorm", norm_bias=False, parallel_block=True,
                    qk_norm="per_head" if f.flag("use_qk_norm") else None, logits_scale=f.number("logit_scale"))
    return {}


def _falcon_spec(f: _HFFields, name: str) -> ModelSpec:
    """FalconForCausalLM: fused query_key_value (multi_query: one K/V head), a plain MLP, LayerNorm,
    attention and MLP in parallel from one norm (parallel_attn), ``bias`` on every linear."""
    for key in ("alibi", "new_decoder_architecture"):
        if f.flag(key):
            why = ("ALiBi position bias" if key == "alibi" else
                   "GQA projections with keys and values broadcast to every head in the cache")
            raise SpecError(f"falcon {key}: true ({why}) is not supported; allowed: false")
    if f.optional_int("num_ln_in_parallel_attn") not in (None, 1):
        raise SpecError("falcon num_ln_in_parallel_attn is for new_decoder_architecture; allowed: null or 1")
    hidden = f.required_int("hidden_size", "n_embed")  # FalconConfig: a given n_embed wins
    heads = f.required_int("num_attention_heads")
    ffn = f.optional_int("ffn_hidden_size")
    bias = f.flag("bias")
    return ModelSpec(
        name=name, num_layers=f.required_int("num_hidden_layers"), hidden_size=hidden, num_heads=heads,
        num_kv_heads=1 if f.flag("multi_query") else heads,  # otherwise 3 * hidden: MHA
        intermediate_size=4 * hidden if ffn is None else ffn, vocab_size=f.required_int("vocab_size"),
        max_position_embeddings=f.optional_int("max_position_embeddings"), family="llama", mlp_kind="plain",
        activation=f.activation("activation"), norm_kind="layernorm", position_kind="rotary",
        attention_bias=bias, attention_out_bias=bias, mlp_bias=bias, parallel_block=f.flag("parallel_attn"),
        tie_word_embeddings=f.flag("tie_word_embeddings"), rope_theta=f.rope_theta(),
        norm_eps=f.number("layer_norm_epsilon"))


def _gpt_neox_spec(f: _HFFields, name: str) -> ModelSpec:
    """GPTNeoXForCausalLM (Pythia): fused qkv with attention_bias, plain MLP with biases, LayerNorm,
    rotary on rotary_pct of each head, parallel residual from two norms (use_parallel_residual)."""
    hidden, heads = f.required_int("hidden_size"), f.required_int("num_attention_heads")
    if hidden % heads:
        raise SpecError(f"hidden_size ({hidden}) must be divisible by num_attention_heads ({heads})")
    bias = f.flag("attention_bias")
    return ModelSpec(
        name=name, num_layers=f.required_int("num_hidden_layers"), hidden_size=hidden, num_heads=heads,
        intermediate_size=f.required_int("intermediate_size"), vocab_size=f.required_int("vocab_size"),
        max_position_embeddings=f.optional_int("max_position_embeddings"), family="llama", mlp_kind="plain",
        activation=f.activation("hidden_act"), norm_kind="layernorm", position_kind="rotary",
        attention_bias=bias, attention_out_bias=bias, mlp_bias=True,
        rotary_dim=_rotary_dim(hidden // heads, f.partial_rotary_factor("rotary_pct")),
        parallel_block=f.flag("use_parallel_residual"), parallel_block_norms=2,
        tie_word_embeddings=f.flag("tie_word_embeddings"), rope_theta=f.rope_theta("rotary_emb_base"),
        norm_eps=f.number("layer_norm_eps"))


def _opt_spec(f: _HFFields, name: str) -> ModelSpec:
    """OPTForCausalLM: learned positions with 2 offset rows, LayerNorm before (or, 350m, after) each
    sublayer, plain MLP, enable_bias on every linear, embeddings of word_embed_proj_dim projected
    in and out when it is not hidden_size, tied LM head."""
    if not f.flag("layer_norm_elementwise_affine"):
        raise SpecError("opt layer_norm_elementwise_affine: false (LayerNorms without weights) is not "
                        "supported; allowed: true")
    pre = f.flag("do_layer_norm_before")
    if pre and f.flag("_remove_final_layer_norm"):
        raise SpecError("opt _remove_final_layer_norm: true (no final LayerNorm) is not supported; allowed: false")
    hidden = f.required_int("hidden_size")
    bias, proj = f.flag("enable_bias"), f.optional_int("word_embed_proj_dim")
    return ModelSpec(
        name=name, num_layers=f.required_int("num_hidden_layers"), hidden_size=hidden,
        num_heads=f.required_int("num_attention_heads"), intermediate_size=f.required_int("ffn_dim"),
        vocab_size=f.required_int("vocab_size"), max_position_embeddings=f.optional_int("max_position_embeddings"),
        family="gpt2", mlp_kind="plain", activation=f.activation("activation_function"), norm_kind="layernorm",
        position_kind="learned", position_offset=2, norm_position="pre" if pre else "post",
        attention_bias=bias, attention_out_bias=bias, mlp_bias=bias,
        word_embed_proj_dim=None if proj in (None, hidden) else proj,  # null: hidden_size
        tie_word_embeddings=f.flag("tie_word_embeddings"))


def _phi_spec(f: _HFFields, name: str) -> ModelSpec:
    """PhiForCausalLM (Phi-1/2): biased q, k, v, dense, plain MLP with biases, LayerNorm shared by
    attention and MLP in parallel, partial rotary, optional per-head q/k LayerNorm, LM head bias."""
    heads = f.required_int("num_attention_heads")
    spec = ModelSpec(
        name=name, num_layers=f.required_int("num_hidden_layers"), hidden_size=f.required_int("hidden_size"),
        num_heads=heads, num_kv_heads=f.optional_int("num_key_value_heads"), head_dim=f.optional_int("head_dim"),
        intermediate_size=f.required_int("intermediate_size"), vocab_size=f.required_int("vocab_size"),
        max_position_embeddings=f.optional_int("max_position_embeddings"), family="llama", mlp_kind="plain",
        activation=f.activation("hidden_act"), norm_kind="layernorm", position_kind="rotary",
        attention_bias=True, attention_out_bias=True, mlp_bias=True, lm_head_bias=True, parallel_block=True,
        qk_norm="head" if f.flag("qk_layernorm") else None,
        tie_word_embeddings=f.flag("tie_word_embeddings"), rope_theta=f.rope_theta(),
        norm_eps=f.number("layer_norm_eps"))
    return spec.with_(rotary_dim=_rotary_dim(spec.head_dim, f.partial_rotary_factor()))


def _rotary_dim(head_dim: int, factor: float) -> int | None:
    """Dims rotated, ``int(head_dim * factor)`` as the modeling code takes them; None: all of them."""
    dims = int(head_dim * factor)
    return None if dims == head_dim else dims


_OWN_LAYOUT = {"falcon": _falcon_spec, "gpt_neox": _gpt_neox_spec, "opt": _opt_spec, "phi": _phi_spec}


_SLIDING_TYPES = ("mistral", "mixtral", "phi3", "qwen2", "qwen2_moe", "qwen3", "starcoder2")


def _sliding_fields(f: _HFFields, layers: int) -> dict:
    """``sliding_window`` and ``layer_types`` as transformers 5.23's config classes derive them.

    Mistral, Mixtral, Phi-3, StarCoder2: every layer slides when ``sliding_window`` is set (the cache,
    ``get_layer_types_and_kwargs``, reads each layer's sliding_window). Qwen2, Qwen3: the window only
    with ``use_sliding_window``, on layers i >= ``max_window_layers``. Qwen2-MoE: with
    ``use_sliding_window``, on the even layers i < ``max_window_layers`` (``bool((i + 1) % 2)``).
    An explicit ``layer_types`` wins, as the cache reads it. A window of no layer is dropped."""
    t = f.model_type
    window = f.optional_int("sliding_window")
    if t in ("qwen2", "qwen2_moe", "qwen3"):
        use, first = f.flag("use_sliding_window"), f.optional_int("max_window_layers")
        window = window if use else None  # Qwen2MoeConfig sets 0: no layer may slide then
        if t != "qwen2_moe":
            derived = ["sliding_attention" if window is not None and i >= first else "full_attention"
                       for i in range(layers)]
        else:
            derived = ["sliding_attention" if (i + 1) % 2 and i < first and use else "full_attention"
                       for i in range(layers)]
    else:
        derived = ["sliding_attention" if window is not None else "full_attention"] * layers
    given = f.string_list("layer_types")
    types = derived if given is None else given
    if any(x not in ATTENTION_TYPES for x in types):
        bad = next(x for x in types if x not in ATTENTION_TYPES)
        raise SpecError(f"layer_types entry {_shown(bad)} is not supported; allowed: {', '.join(ATTENTION_TYPES)}")
    if len(types) != layers:
        raise SpecError(f"layer_types has {len(types)} entries, num_hidden_layers is {layers}; "
                        "allowed: one entry per layer")
    if "sliding_attention" in types and window is None:
        raise SpecError("layer_types has 'sliding_attention' layers but no window: sliding_window is null "
                        "or use_sliding_window false; allowed: a positive sliding_window with them")
    if window is not None and window < 1:
        raise SpecError(f"field 'sliding_window' must be a positive integer or null, got {window}")
    if "sliding_attention" not in types:
        window = None
    return {"sliding_window": window, "layer_types": tuple(types)}


def _qwen2_moe_mlp_layer_types(f: _HFFields) -> tuple:
    """Qwen2MoeDecoderLayer: a MoE block where i is not in ``mlp_only_layers`` and
    (i + 1) % ``decoder_sparse_step`` == 0, else a dense MLP of ``intermediate_size``."""
    layers = f.required_int("num_hidden_layers")
    step = f.optional_int("decoder_sparse_step")
    if step < 1:
        raise SpecError(f"field 'decoder_sparse_step' must be a positive integer, got {step}")
    dense = set(f.int_list("mlp_only_layers"))
    if any(not 0 <= i < layers for i in dense):
        raise SpecError(f"field 'mlp_only_layers' must hold layer indices 0 to {layers - 1}, got {sorted(dense)}")
    return tuple("moe" if i not in dense and (i + 1) % step == 0 else "dense" for i in range(layers))


def _deepseek_v3(cfg: dict, f: _HFFields, name: str) -> ModelSpec:
    """DeepSeek-V3 (HF ``DeepseekV3ForCausalLM``): latent attention, the first ``first_k_dense_replace``
    layers dense, then MoE layers of ``n_routed_experts`` with ``n_shared_experts`` shared ones (one
    MLP of n_shared * moe_intermediate_size), sigmoid routing limited to ``topk_group`` of ``n_group``
    groups, weights scaled by ``routed_scaling_factor``. The multi-token-prediction layer
    (``num_nextn_predict_layers``) is not built by transformers and not counted here either."""
    layers, heads = f.required_int("num_hidden_layers"), f.required_int("num_attention_heads")
    bias = f.flag("attention_bias")  # q_a_proj, kv_a_proj and o_proj (q_b, kv_b, q_proj: never)
    routed = f.experts("n_routed_experts", "num_local_experts")
    dense = f.optional_int("first_k_dense_replace")
    shared = f.optional_int("n_shared_experts")
    return ModelSpec(
        name=name, num_layers=layers, hidden_size=f.required_int("hidden_size"), num_heads=heads,
        num_kv_heads=heads,  # every head expands its own keys and values from the latent
        intermediate_size=f.required_int("intermediate_size"), vocab_size=f.required_int("vocab_size"),
        max_position_embeddings=f.optional_int("max_position_embeddings"),
        **{**_LLAMA, "activation": f.activation("hidden_act"), "tie_word_embeddings": f.flag("tie_word_embeddings")},
        attention_bias=bias, attention_out_bias=bias,
        q_lora_rank=f.optional_int("q_lora_rank"), kv_lora_rank=f.optional_int("kv_lora_rank"),
        qk_nope_head_dim=f.optional_int("qk_nope_head_dim"), qk_rope_head_dim=f.optional_int("qk_rope_head_dim"),
        v_head_dim=f.optional_int("v_head_dim"),
        num_experts=routed, experts_per_token=f.required_int("num_experts_per_tok"),
        moe_intermediate_size=f.required_int("moe_intermediate_size"),
        num_shared_experts=1 if shared else 0,
        shared_expert_intermediate_size=shared * f.required_int("moe_intermediate_size") if shared else None,
        moe_renormalize=f.flag("norm_topk_prob"), moe_scoring="sigmoid",
        moe_groups=f.optional_int("n_group"), moe_topk_groups=f.optional_int("topk_group"),
        routed_scaling_factor=f.number("routed_scaling_factor"),
        mlp_layer_types=tuple("dense" if i < dense else "moe" for i in range(layers)),
        rope_theta=f.rope_theta(), norm_eps=f.number("rms_norm_eps"))


def _t5_feed_forward(ff: str) -> tuple[str, str]:
    """(mlp_kind, activation) of T5's ``feed_forward_proj``: ``ACT`` or ``gated-ACT``, as T5Config
    splits it (``gated-gelu`` is the tanh GELU, ``gelu_new``, for backward compatibility)."""
    parts = ff.split("-")
    act = "gelu_new" if ff == "gated-gelu" else parts[-1]
    if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated") or act not in _HF_ACTIVATIONS:
        raise SpecError(f"unsupported feed_forward_proj {ff!r}; supported: an activation "
                        f"({', '.join(_HF_ACTIVATIONS)}) or gated-<activation>")
    return ("gated" if len(parts) == 2 else "plain"), _HF_ACTIVATIONS[act]


# --- Gemma 2 / 3, gpt-oss, Llama 4 (text) ---------------------------------------------------------

def _decoder_sizes(f: _HFFields) -> dict:
    """The ModelSpec fields every decoder reader reads alike (field names as in LlamaConfig)."""
    return dict(num_layers=f.required_int("num_hidden_layers"), hidden_size=f.required_int("hidden_size"),
                num_heads=f.required_int("num_attention_heads"), num_kv_heads=f.optional_int("num_key_value_heads"),
                head_dim=f.optional_int("head_dim"), vocab_size=f.required_int("vocab_size"),
                max_position_embeddings=f.optional_int("max_position_embeddings"),
                tie_word_embeddings=f.flag("tie_word_embeddings"), norm_eps=f.number("rms_norm_eps"))


def _layer_types(f: _HFFields, num_layers: int, every: int) -> tuple:
    """``layer_types`` as given, or transformers' default: every ``every``-th layer full, the rest
    sliding (Gemma2Config: 2; Gemma3TextConfig: sliding_window_pattern; GptOssConfig: 2)."""
    given = f.string_list("layer_types")
    if given is not None:
        return tuple(given)
    return tuple("sliding_attention" if (i + 1) % every else "full_attention" for i in range(num_layers))


def _gemma_v2(f: _HFFields, name: str) -> ModelSpec:
    """Gemma 2 (Gemma2ForCausalLM) and Gemma 3's text model (Gemma3ForCausalLM): sandwich norms,
    embeddings scaled by sqrt(hidden_size), scores scaled by query_pre_attn_scalar ** -0.5, the
    gated tanh-GELU MLP, a tied head; Gemma 2 soft-caps scores and logits, Gemma 3 norms q and k."""
    sizes = _decoder_sizes(f)
    gemma3 = f.model_type == "gemma3_text"
    if gemma3 and f.flag("use_bidirectional_attention"):
        raise SpecError("use_bidirectional_attention true is not supported; allowed: false or null (causal)")
    every = f.optional_int("sliding_window_pattern") if gemma3 else 2
    if every < 1:
        raise SpecError(f"field 'sliding_window_pattern' must be a positive integer, got {every}")
    act = f.activation("hidden_activation")
    bias = f.flag("attention_bias")  # one flag for q, k, v and o
    return ModelSpec(
        name=name, **sizes, intermediate_size=f.required_int("intermediate_size"),
        **{**_LLAMA, "activation": "gelu_tanh" if act == "gelu" else act},  # legacy "gelu": the tanh form
        attention_bias=bias, attention_out_bias=bias, rope_theta=_gemma3_rope_theta(f) if gemma3 else f.rope_theta(),
        sliding_window=f.optional_int("sliding_window"), layer_types=_layer_types(f, sizes["num_layers"], every),
        qk_norm="head" if gemma3 else None, embedding_multiplier=sizes["hidden_size"] ** 0.5,
        sandwich_norms=True, attn_logit_softcapping=f.optional_number("attn_logit_softcapping"),
        final_logit_softcapping=f.optional_number("final_logit_softcapping"),
        query_pre_attn_scalar=f.number("query_pre_attn_scalar"))


def _gemma3_rope_theta(f: _HFFields) -> float:
    """Gemma 3's full layers' rotary base: rope_parameters["full_attention"] (its sliding layers
    have their own, rope_local_base_freq; the reference model uses one), else rope_theta."""
    params = f.cfg.get("rope_parameters")
    full = params.get("full_attention") if isinstance(params, dict) else None
    if isinstance(full, dict) and "rope_theta" in full:
        return _float_value("rope_parameters.full_attention.rope_theta", full["rope_theta"])
    if isinstance(params, dict) and "full_attention" in params:
        return f.number("rope_theta")
    return f.rope_theta()


def _gpt_oss(f: _HFFields, name: str) -> ModelSpec:
    """gpt-oss (GptOssForCausalLM): attention sinks, q/k/v/o biases, alternating sliding / full
    layers, routed experts only (biased, clamped SwiGLU), a biased router whose top-k logits are
    softmaxed (no renormalisation after)."""
    sizes = _decoder_sizes(f)
    bias = f.flag("attention_bias")
    return ModelSpec(
        name=name, **sizes, intermediate_size=f.required_int("intermediate_size"), **_LLAMA,
        attention_bias=bias, attention_out_bias=bias, rope_theta=f.rope_theta(),
        sliding_window=f.optional_int("sliding_window"), layer_types=_layer_types(f, sizes["num_layers"], 2),
        attn_sinks=True, num_experts=f.experts("num_local_experts"),
        experts_per_token=f.required_int("num_experts_per_tok"), moe_renormalize=False,
        router_bias=True, router_scoring="topk_softmax", expert_bias=True, swiglu_limit=f.number("swiglu_limit"))


def _llama4_text(f: _HFFields, name: str) -> ModelSpec:
    """Llama 4's text model (Llama4ForCausalLM): MoE layers (moe_layers, or every
    interleave_moe_layer_step-th) of top-k sigmoid-routed experts plus one shared expert, both of
    width intermediate_size, dense layers of intermediate_size_mlp; NoPE layers (no_rope_layers: 0)
    with temperature tuning; chunked attention on the others; the weightless q/k L2 norm on the rotary
    layers (use_qk_norm). Every routed expert runs on every token, as transformers executes it."""
    sizes = _decoder_sizes(f)
    n = sizes["num_layers"]
    step = f.optional_int("interleave_moe_layer_step")
    if step < 1:
        raise SpecError(f"field 'interleave_moe_layer_step' must be a positive integer, got {step}")
    moe_layers = f.int_list("moe_layers") if f.cfg.get("moe_layers") is not None else range(step - 1, n, step)
    interval = f.optional_int("no_rope_layer_interval")
    if interval < 1:
        raise SpecError(f"field 'no_rope_layer_interval' must be a positive integer, got {interval}")
    rope = f.int_list("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]  # 1: rotary
    if len(rope) != n or any(r not in (0, 1) for r in rope):
        raise SpecError(f"field 'no_rope_layers' must be {n} flags 0 or 1 (1: the layer uses rotary), got {rope}")
    layer_types = f.string_list("layer_types")
    if layer_types is None:
        layer_types = ["chunked_attention" if r else "full_attention" for r in rope]
    bias = f.flag("attention_bias")
    inter = f.required_int("intermediate_size")  # one routed expert's width, and the shared expert's
    return ModelSpec(
        name=name, **sizes, intermediate_size=f.required_int("intermediate_size_mlp"),
        **{**_LLAMA, "activation": f.activation("hidden_act")},
        attention_bias=bias, attention_out_bias=bias, rope_theta=f.rope_theta(),
        layer_types=tuple(layer_types), attention_chunk_size=f.optional_int("attention_chunk_size"),
        mlp_layer_types=tuple("moe" if i in moe_layers else "dense" for i in range(n)),
        no_rope_layers=tuple(i for i, r in enumerate(rope) if not r),
        attn_temperature_tuning=f.flag("attn_temperature_tuning") and 0 in rope,
        qk_norm="l2" if f.flag("use_qk_norm") else None,
        num_experts=f.experts("num_local_experts"), experts_per_token=f.required_int("num_experts_per_tok"),
        moe_intermediate_size=inter, num_shared_experts=1, shared_expert_intermediate_size=inter,
        moe_renormalize=False, router_scoring="topk_sigmoid", moe_all_experts=True)


_NEWER_READERS = {"gemma2": _gemma_v2, "gemma3_text": _gemma_v2, "gpt_oss": _gpt_oss, "llama4_text": _llama4_text}
