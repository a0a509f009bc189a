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
}
# Fields the class declares `int | None` (or a list or None): null there means derived (None above),
# as transformers reads it; a null anywhere else is refused, as transformers' strict fields refuse it.
# head_dim is no field of qwen2, phi3 and qwen2_moe: their attention reads it when given (and fails on null).
_HF_NULLABLE: dict[str, set] = {
    "gpt2": {"n_inner"}, "t5": {"num_decoder_layers"}, "llama": {"num_key_value_heads", "head_dim"},
    "mistral": {"head_dim"}, "qwen2": {"num_key_value_heads"}, "phi3": {"num_key_value_heads"},
    "mixtral": {"head_dim"}, "qwen2_moe": {"num_key_value_heads", "mlp_only_layers"},
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

    def flag(self, key: str) -> bool:
        v = self.cfg.get(key, self.defaults[key])
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
