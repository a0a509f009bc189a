"""Built-in model presets and the offline reader of Hugging Face ``config.json`` files.

:func:`get_model` is the one entry point: a preset name (``llama-2-7b``), or a path to a
``config.json`` file or to a folder holding one. No ``transformers`` import: the config is read
as JSON and its fields mapped per ``model_type``; unknown fields are ignored. A missing size
(layers, width, heads, MLP width, vocabulary, experts) is a :class:`SpecError` naming it; any other
missing field takes the default of transformers' config class for that ``model_type``. A value of
the wrong JSON type (``"false"`` for a flag, ``4096.0`` or ``true`` for a count) is refused, never coerced.
"""

from __future__ import annotations

import json
import os

from .errors import SpecError, read_json_file
from .spec import ModelSpec

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
    _llama("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768),
    _llama("qwen2-7b", 28, 3584, 28, 4, 18944, 152064, 32768, attention_bias=True,
           rope_theta=1000000.0, norm_eps=1e-6),
    _llama("gemma-7b", 28, 3072, 16, 16, 24576, 256000, 8192, head_dim=256,
           activation="gelu_tanh", tie_word_embeddings=True, norm_eps=1e-6),
    _llama("phi-3-mini", 32, 3072, 32, 32, 8192, 32064, 4096),
    # Mixture of experts: Mixtral (8 experts, top 2); Qwen1.5-MoE-A2.7B (60 experts, top 4, plus
    # a sigmoid-gated shared expert of 4 x 1408).
    _llama("mixtral-8x7b", 32, 4096, 32, 8, 14336, 32000, 32768, num_experts=8, experts_per_token=2,
           rope_theta=1000000.0),
    _llama("qwen1.5-moe-a2.7b", 24, 2048, 16, 16, 5632, 151936, 8192, attention_bias=True,
           num_experts=60, experts_per_token=4, moe_intermediate_size=1408, num_shared_experts=1,
           shared_expert_intermediate_size=5632, shared_expert_gate=True, moe_renormalize=False,
           rope_theta=1000000.0, norm_eps=1e-6),
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
]}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_model(name_or_path: str) -> ModelSpec:
    """A preset by name, or a spec read from a ``config.json`` (file or folder) path."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    if os.path.exists(name_or_path) or name_or_path.endswith(".json") or os.sep in name_or_path:
        return load_hf_config(name_or_path)
    raise SpecError(f"unknown model {name_or_path!r}; built-in models: {', '.join(PRESETS)} "
                    "(or give a path to a Hugging Face config.json or its folder)")


# --- Hugging Face config.json ------------------------------------------------------------------

HF_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2", "gemma", "phi3", "mixtral", "qwen2_moe", "bert",
                  "roberta", "t5", "gemma2", "gemma3_text", "gpt_oss", "llama4_text")

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
                    rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0),
    "qwen2": dict(num_key_value_heads=32, head_dim=None, hidden_act="silu", max_position_embeddings=32768,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0),
    "gemma": dict(num_key_value_heads=16, head_dim=256, hidden_act="gelu_pytorch_tanh",
                  max_position_embeddings=8192, rms_norm_eps=1e-6, tie_word_embeddings=True,
                  rope_theta=10000.0, attention_bias=False),
    "phi3": dict(num_key_value_heads=None, head_dim=None, hidden_act="silu", max_position_embeddings=4096,
                 rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=10000.0),
    "mixtral": dict(num_key_value_heads=8, head_dim=None, hidden_act="silu", max_position_embeddings=131072,
                    rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=1000000.0),
    "qwen2_moe": dict(num_key_value_heads=16, head_dim=None, hidden_act="silu", max_position_embeddings=32768,
                      rms_norm_eps=1e-6, tie_word_embeddings=False, rope_theta=10000.0, qkv_bias=True,
                      shared_expert_intermediate_size=5632, norm_topk_prob=False, decoder_sparse_step=1,
                      mlp_only_layers=None),
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
    "mistral": {"head_dim"}, "qwen2": {"num_key_value_heads"}, "phi3": {"num_key_value_heads"},
    "mixtral": {"head_dim"}, "qwen2_moe": {"num_key_value_heads", "mlp_only_layers"},
    "gemma2": {"sliding_window", "layer_types", "final_logit_softcapping", "attn_logit_softcapping"},
    "gemma3_text": {"sliding_window", "layer_types", "final_logit_softcapping", "attn_logit_softcapping",
                    "use_bidirectional_attention"},
    "gpt_oss": {"sliding_window", "layer_types"},
    "llama4_text": {"moe_layers", "no_rope_layers", "attention_chunk_size", "layer_types"},
}


def load_hf_config(path: str) -> ModelSpec:
    """Read a Hugging Face ``config.json`` (or the folder holding it) into a :class:`ModelSpec`."""
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    cfg = read_json_file(file, "config")
    if not isinstance(cfg, dict):
        raise SpecError(f"malformed config {file!r}: expected a JSON object, got {type(cfg).__name__}")
    folder = os.path.basename(os.path.dirname(os.path.abspath(file)))
    name = folder if os.path.basename(file) == "config.json" and folder else os.path.splitext(os.path.basename(file))[0]
    return spec_from_hf_dict(cfg, name=name, source=file)


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

    def rope_theta(self) -> float:
        """transformers 5 keeps it in ``rope_parameters`` (a legacy ``rope_scaling`` dict, when given,
        takes its place); a top-level ``rope_theta`` fills in when that dict has none."""
        found, params = None, {}
        for key in ("rope_scaling", "rope_parameters"):
            v = self.cfg.get(key)
            if v is not None and not isinstance(v, dict):
                raise SpecError(f"field {key!r} must be an object or null, got {_shown(v)}")
            if v and not params:
                found, params = key, v
        if "rope_theta" in params:
            return _float_value(f"{found}.rope_theta", params["rope_theta"])
        return self.number("rope_theta")


def _int_value(key: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SpecError(f"field {key!r} must be an integer, got {_shown(v)}")
    return v


def _float_value(key: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SpecError(f"field {key!r} must be a number, got {_shown(v)}")
    return float(v)


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

    if model_type in _NEWER_READERS:
        return _NEWER_READERS[model_type](f, name)

    heads = f.required_int("num_attention_heads")
    kw = dict(_LLAMA)
    # Biases as each modeling_<type>.py builds its projections.
    if model_type == "qwen2":
        kw["attention_bias"] = True  # q, k, v: bias=True; o_proj: bias=False
    elif model_type in ("llama", "gemma"):
        bias = f.flag("attention_bias")  # one flag for q, k, v and o
        kw.update(attention_bias=bias, attention_out_bias=bias)
        if model_type == "llama":
            kw["mlp_bias"] = f.flag("mlp_bias")
    if model_type == "mixtral":
        kw.update(num_experts=f.required_int("num_local_experts", "num_experts"),
                  experts_per_token=f.required_int("num_experts_per_tok"))
    elif model_type == "qwen2_moe":
        if f.optional_int("decoder_sparse_step") != 1 or f.int_list("mlp_only_layers"):
            raise SpecError("dense layers between MoE layers (decoder_sparse_step, mlp_only_layers) are not "
                            "supported; allowed: decoder_sparse_step 1, no mlp_only_layers")
        shared = f.optional_int("shared_expert_intermediate_size")  # 0: no shared expert
        kw.update(attention_bias=f.flag("qkv_bias"), num_experts=f.required_int("num_experts"),
                  experts_per_token=f.required_int("num_experts_per_tok"),
                  moe_intermediate_size=f.required_int("moe_intermediate_size"),
                  num_shared_experts=1 if shared else 0, shared_expert_gate=bool(shared),
                  shared_expert_intermediate_size=shared or None, moe_renormalize=f.flag("norm_topk_prob"))
    act = f.activation("hidden_act")
    if model_type == "gemma" and act == "gelu":
        act = "gelu_tanh"  # GemmaConfig: the releases' legacy "gelu" means the tanh approximation
    return ModelSpec(
        name=name, num_layers=f.required_int("num_hidden_layers"), hidden_size=f.required_int("hidden_size"),
        num_heads=heads, num_kv_heads=f.optional_int("num_key_value_heads"), head_dim=f.optional_int("head_dim"),
        intermediate_size=f.required_int("intermediate_size"), vocab_size=f.required_int("vocab_size"),
        max_position_embeddings=f.optional_int("max_position_embeddings"),
        **{**kw, "activation": act, "tie_word_embeddings": f.flag("tie_word_embeddings")},
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
        attn_sinks=True, num_experts=f.required_int("num_local_experts"),
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
        num_experts=f.required_int("num_local_experts"), experts_per_token=f.required_int("num_experts_per_tok"),
        moe_intermediate_size=inter, num_shared_experts=1, shared_expert_intermediate_size=inter,
        moe_renormalize=False, router_scoring="topk_sigmoid", moe_all_experts=True)


_NEWER_READERS = {"gemma2": _gemma_v2, "gemma3_text": _gemma_v2, "gpt_oss": _gpt_oss, "llama4_text": _llama4_text}
