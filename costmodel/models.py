"""Built-in model presets and the offline reader of Hugging Face ``config.json`` files.

:func:`get_model` is the one entry point: a preset name (``llama-2-7b``), a path to a
``config.json`` file or to a folder holding one, or a Hugging Face id (``Qwen/Qwen3-8B``) already in
the local cache (:mod:`costmodel.hub`, never the network). No ``transformers`` import: the config is read
as JSON and its fields mapped per ``model_type``; unknown fields are ignored, a missing required
field is a :class:`SpecError` naming it.
"""

from __future__ import annotations

import os

from . import hub
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
    """A preset by name, a spec read from a ``config.json`` (file or folder) path, or a Hugging Face
    id ``ORG/NAME[@REVISION]`` found in the local cache (:mod:`costmodel.hub`, offline)."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    if not os.path.exists(name_or_path) and hub.looks_like_repo_id(name_or_path):
        return load_hf_config(hub.find_config(name_or_path), name=name_or_path)
    if os.path.exists(name_or_path) or name_or_path.endswith(".json") or os.sep in name_or_path:
        return load_hf_config(name_or_path)
    raise SpecError(f"unknown model {name_or_path!r}; built-in models: {', '.join(PRESETS)} "
                    "(or give a path to a Hugging Face config.json or its folder, or a Hugging Face id "
                    "ORG/NAME in the local cache)")


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
                  "roberta", "t5")

_HF_ACTIVATIONS = {
    "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh", "silu": "silu", "swish": "silu", "relu": "relu",
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
    return spec_from_hf_dict(cfg, name=name, source=file)


def spec_from_hf_dict(cfg: dict, name: str, source: str = "config") -> ModelSpec:
    """Map the fields of a parsed HF config to a :class:`ModelSpec` (see :func:`load_hf_config`)."""
    try:
        return _spec_from_hf_dict(cfg, name, source)
    except SpecError as e:
        msg = str(e)
        raise SpecError(msg if msg.startswith(source) else f"{source}: {msg}") from None


def _spec_from_hf_dict(cfg: dict, name: str, source: str) -> ModelSpec:
    model_type = cfg.get("model_type")
    if model_type not in HF_MODEL_TYPES:
        raise SpecError(f"{source}: unsupported model_type {model_type!r}; "
                        f"supported: {', '.join(HF_MODEL_TYPES)}")

    def req(*keys):
        for k in keys:
            if k in cfg and cfg[k] is not None:
                return _as_int(cfg[k], k)
        raise SpecError(f"{source}: missing required field {keys[0]!r} for model_type {model_type!r}")

    def _as_int(v, k):
        if isinstance(v, bool) or not isinstance(v, int):
            raise SpecError(f"{source}: field {k!r} must be an integer, got {v!r}")
        return v

    def opt_float(key, default):
        v = cfg.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise SpecError(f"{source}: field {key!r} must be a number, got {v!r}")
        return float(v)

    def opt_int(key, default):
        v = cfg.get(key)
        return default if v is None else _as_int(v, key)

    def activation(key, default):
        act = cfg.get(key) or default
        if act not in _HF_ACTIVATIONS:
            raise SpecError(f"{source}: unsupported {key} {act!r}; supported: {', '.join(_HF_ACTIVATIONS)}")
        return _HF_ACTIVATIONS[act]

    if model_type == "gpt2":
        hidden = req("n_embd", "hidden_size")
        return ModelSpec(
            name=name, num_layers=req("n_layer", "num_hidden_layers"), hidden_size=hidden,
            num_heads=req("n_head", "num_attention_heads"),
            intermediate_size=opt_int("n_inner", 4 * hidden),  # HF: n_inner null means 4 * n_embd
            vocab_size=req("vocab_size"), max_position_embeddings=req("n_positions", "n_ctx"),
            **{**_GPT2, "activation": activation("activation_function", "gelu_new"),
               "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", True))},
            norm_eps=opt_float("layer_norm_epsilon", 1e-5))

    if model_type in ("bert", "roberta"):
        # BertModel / RobertaModel: the encoder with its pooler (the counts model cards quote)
        hidden = req("hidden_size")
        return ModelSpec(
            name=name, num_layers=req("num_hidden_layers"), hidden_size=hidden,
            num_heads=req("num_attention_heads"), intermediate_size=req("intermediate_size"),
            vocab_size=req("vocab_size"), max_position_embeddings=req("max_position_embeddings"),
            **{**_BERT, "activation": activation("hidden_act", "gelu"),
               "type_vocab_size": opt_int("type_vocab_size", 2),
               "norm_eps": opt_float("layer_norm_eps", 1e-12)})

    if model_type == "t5":
        ff = cfg.get("feed_forward_proj", "relu")
        kinds = {"relu": ("plain", "relu"), "gated-gelu": ("gated", "gelu_tanh"), "gelu": ("plain", "gelu"),
                 "gated-relu": ("gated", "relu"), "gated-silu": ("gated", "silu")}
        if ff not in kinds:
            raise SpecError(f"{source}: unsupported feed_forward_proj {ff!r}; supported: {', '.join(kinds)}")
        mlp_kind, act = kinds[ff]
        layers = req("num_layers")
        return ModelSpec(
            name=name, num_layers=opt_int("num_decoder_layers", layers), hidden_size=req("d_model"),
            num_heads=req("num_heads"), head_dim=req("d_kv"), intermediate_size=req("d_ff"),
            vocab_size=req("vocab_size"), max_position_embeddings=opt_int("n_positions", 512),
            **{**_T5, "num_encoder_layers": layers, "mlp_kind": mlp_kind, "activation": act,
               "relative_attention_buckets": opt_int("relative_attention_num_buckets", 32),
               "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", True)),
               "norm_eps": opt_float("layer_norm_epsilon", 1e-6)})

    heads = req("num_attention_heads")
    kw = dict(_LLAMA)
    # Defaults below are those of the transformers config class for each model_type.
    if model_type in ("qwen2", "qwen2_moe"):
        kw["attention_bias"] = True  # Qwen2 always has q/k/v biases, none on o_proj
    elif model_type in ("llama", "mistral"):
        bias = bool(cfg.get("attention_bias", False))  # LLaMA's flag puts biases on q, k, v and o
        kw.update(attention_bias=bias, attention_out_bias=bias, mlp_bias=bool(cfg.get("mlp_bias", False)))
    if model_type == "mixtral":
        kw.update(num_experts=req("num_local_experts"), experts_per_token=req("num_experts_per_tok"))
    elif model_type == "qwen2_moe":
        if opt_int("decoder_sparse_step", 1) != 1 or cfg.get("mlp_only_layers"):
            raise SpecError(f"{source}: dense layers between MoE layers (decoder_sparse_step, "
                            "mlp_only_layers) are not supported; allowed: decoder_sparse_step 1, no mlp_only_layers")
        shared = opt_int("shared_expert_intermediate_size", 0)
        kw.update(attention_bias=True, num_experts=req("num_experts"),
                  experts_per_token=req("num_experts_per_tok"),
                  moe_intermediate_size=req("moe_intermediate_size"),
                  num_shared_experts=1 if shared else 0, shared_expert_gate=bool(shared),
                  shared_expert_intermediate_size=shared or None,
                  moe_renormalize=bool(cfg.get("norm_topk_prob", False)))
    if model_type == "gemma":
        act = activation("hidden_activation", "gelu_pytorch_tanh")
        tie_default = True
    else:
        act = activation("hidden_act", "silu")
        tie_default = False
    return ModelSpec(
        name=name, num_layers=req("num_hidden_layers"), hidden_size=req("hidden_size"),
        num_heads=heads, num_kv_heads=opt_int("num_key_value_heads", heads),
        head_dim=opt_int("head_dim", None), intermediate_size=req("intermediate_size"),
        vocab_size=req("vocab_size"), max_position_embeddings=req("max_position_embeddings"),
        **{**kw, "activation": act,
           "tie_word_embeddings": bool(cfg.get("tie_word_embeddings", tie_default))},
        rope_theta=opt_float("rope_theta", 10000.0),
        norm_eps=opt_float("rms_norm_eps", 1e-6 if model_type in ("gemma", "qwen2") else 1e-5))
