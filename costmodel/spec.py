"""Model and workload specifications: frozen dataclasses validated in ``__post_init__``.

A :class:`ModelSpec` describes a decoder-only transformer (GPT-2 and LLaMA families and their
relatives: Mistral, Qwen2, Gemma, Phi-3). A :class:`Workload` says what is run on it: batch,
prompt length, generated tokens, number formats, and how the logits and the KV cache are handled.
Invalid values raise :class:`~costmodel.errors.SpecError` naming the field, value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from . import quant as _quant
from .dtypes import DTYPE_BITS, canonical_dtype
from .errors import SpecError, require_choice, require_positive_int
from .sampling import STRATEGIES

MLP_KINDS = ("plain", "gated")  # plain: down(act(up(x))); gated: down(act(gate(x)) * up(x))
NORM_KINDS = ("layernorm", "rmsnorm")
POSITION_KINDS = ("learned", "rotary", "sinusoidal", "relative")  # relative: T5's attention bias
ARCHS = ("decoder", "encoder", "encoder-decoder")
NORM_POSITIONS = ("pre", "post", "output")  # output: x + norm(f(x)), on each sublayer's output (OLMo 2)
QK_NORMS = ("head", "per_head", "full", "l2")  # see ModelSpec.qk_norm
FAMILIES = ("gpt2", "llama", "bert", "t5", "transformer")
ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "relu")
LOGITS_MODES = ("last", "all")
# Per decoder layer, transformers' config.layer_types names; "chunked_attention": Llama 4's local
# attention over chunks of attention_chunk_size positions
ATTENTION_TYPES = ("full_attention", "sliding_attention", "chunked_attention")
MLP_LAYER_TYPES = ("dense", "moe")
# How a router turns its logits [t, E] into the k weights of each token (see costmodel.analysis.moe_ops)
ROUTER_SCORINGS = ("softmax", "topk_softmax", "topk_sigmoid")
# Shown in ModelSpec.summary() when not at their default
_VARIANT_FIELDS = ("attention_chunk_size", "sandwich_norms",
                   "attn_logit_softcapping", "final_logit_softcapping", "query_pre_attn_scalar", "attn_sinks",
                   "no_rope_layers", "attn_temperature_tuning", "router_bias", "router_scoring", "expert_bias",
                   "swiglu_limit")
MOE_SCORINGS = ("softmax", "sigmoid")  # router scores: softmax over E (Mixtral, Qwen), sigmoid (DeepSeek-V3)
MLA_FORMS = ("transformers", "absorbed")  # how multi-head latent attention runs: see Workload.mla


# Bounds on a model's sizes (see ModelSpec._check_physical): (limit, fields).
SIZE_LIMITS = (
    (2**20, ("num_layers", "num_encoder_layers", "num_heads", "num_kv_heads", "num_experts",
             "experts_per_token", "num_shared_experts", "moe_groups", "moe_topk_groups")),
    (2**24, ("hidden_size", "intermediate_size", "head_dim", "moe_intermediate_size",
             "shared_expert_intermediate_size", "rotary_dim", "word_embed_proj_dim", "q_lora_rank",
             "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
             "relative_attention_buckets", "type_vocab_size", "position_offset")),
    (2**26, ("vocab_size",)),
    (2**40, ("max_position_embeddings", "sliding_window", "attention_chunk_size")),
)


@dataclass(frozen=True)
class LayerGroup:
    """Consecutive decoder layers ``first .. first + count - 1`` (0-based) that are identical:
    the same attention kind (``ATTENTION_TYPES``), MLP kind (``MLP_LAYER_TYPES``) and rotary or not
    (``rope`` False: a NoPE layer of Llama 4, ``ModelSpec.no_rope_layers``)."""

    first: int
    count: int
    attention: str = "full_attention"
    mlp: str = "dense"
    rope: bool = True

    @property
    def layers(self) -> range:
        return range(self.first, self.first + self.count)

    @property
    def sliding(self) -> bool:
        return self.attention == "sliding_attention"

    def describe(self) -> str:
        """'layers 0-2: dense, full attention' (a report's heading for the group)."""
        last = self.first + self.count - 1
        span = f"layer {self.first}" if self.count == 1 else f"layers {self.first}-{last}"
        return f"{span}: {self.mlp}, {self.attention.replace('_', ' ')}" + ("" if self.rope else ", no rope")

    def to_dict(self) -> dict:
        d = {"first": self.first, "count": self.count, "attention": self.attention, "mlp": self.mlp}
        return d if self.rope else {**d, "rope": False}


def _require_positive_finite(name: str, value) -> None:
    """A float field that must be a positive finite number (NaN, 0, negatives and infinities refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise SpecError(f"{name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a transformer: decoder-only (GPT, LLaMA; the default), encoder-only (BERT) or
    encoder-decoder (T5). Sizes are counts of elements, not bytes."""

    name: str
    num_layers: int  # L: transformer blocks (the decoder's in an encoder-decoder)
    hidden_size: int  # h: width of the residual stream
    num_heads: int  # query heads
    intermediate_size: int  # width of the MLP's hidden layer (4h for GPT-2)
    vocab_size: int  # V: rows of the embedding, columns of the LM head
    max_position_embeddings: int  # longest context the model was built for
    num_kv_heads: int | None = None  # key/value heads: = num_heads (MHA), 1 (MQA), between (GQA)
    head_dim: int | None = None  # d: per-head width; hidden_size // num_heads unless given (Gemma)
    mlp_kind: str = "gated"
    activation: str = "silu"
    norm_kind: str = "rmsnorm"
    position_kind: str = "rotary"
    attention_bias: bool = False  # bias on q, k and v projections (GPT-2, Qwen2)
    attention_out_bias: bool = False  # bias on the attention output projection (GPT-2)
    mlp_bias: bool = False  # bias on every MLP matrix (GPT-2)
    tie_word_embeddings: bool = False  # LM head shares the token embedding matrix
    family: str = "llama"  # its reference implementation: gpt2, llama, bert, t5, transformer (2017)
    rope_theta: float = 10000.0  # rotary base, used by the reference model only
    num_experts: int = 0  # routed experts per layer (0: a dense MLP)
    experts_per_token: int = 0  # k: routed experts each token goes through
    moe_intermediate_size: int | None = None  # width of one routed expert (default intermediate_size)
    num_shared_experts: int = 0  # experts every token goes through (Qwen-MoE, DeepSeek-MoE)
    shared_expert_intermediate_size: int | None = None  # width of one shared expert (default: routed)
    shared_expert_gate: bool = False  # Qwen2-MoE: sigmoid(x @ w[h, 1]) scales the shared output
    moe_renormalize: bool = True  # the k routing weights renormalised to sum to 1 (Mixtral)
    arch: str = "decoder"  # "decoder" (GPT, LLaMA), "encoder" (BERT), "encoder-decoder" (T5)
    num_encoder_layers: int | None = None  # encoder-decoder: encoder blocks (default num_layers)
    norm_position: str = "pre"  # "pre": norm before each sublayer; "post": after each residual (BERT)
    type_vocab_size: int = 0  # BERT: token-type (segment) embeddings
    embedding_norm: bool = False  # BERT: LayerNorm on the embedding sum
    pooler: bool = False  # BERT: tanh(W x_first + b) on each sequence's first token
    mlm_head: bool = False  # BERT: dense + GELU + LayerNorm + decoder (tied, with bias), every position
    relative_attention_buckets: int = 0  # T5: learned position bias, buckets x heads per stack
    attention_scale: bool = True  # scores scaled by 1/sqrt(head_dim) (T5: not)
    norm_eps: float = 1e-5  # used by the reference model only
    sliding_window: int | None = None  # W: a sliding layer attends over the last W positions (Mistral)
    layer_types: tuple[str, ...] | None = None  # per decoder layer, ATTENTION_TYPES; None: all sliding
    #   if sliding_window else all full
    mlp_layer_types: tuple[str, ...] | None = None  # per decoder layer, "dense" or "moe"; None: all
    #   "moe" if num_experts else all "dense" (a dense layer of a MoE model uses intermediate_size)
    qk_norm: str | None = None  # norm on q and k after their projections: "head" (over head_dim, one
    # weight of head_dim: Qwen3, Phi qk_layernorm), "per_head" (over head_dim, a weight per head:
    # Cohere, params q_size and kv_size), "full" (over the whole q_size / kv_size width: OLMo 2),
    # "l2" (over head_dim without a weight, on the rotary layers only: Llama 4 use_qk_norm)
    rotary_dim: int | None = None  # dims rotated per head (partial rotary: GPT-NeoX, Phi); None: head_dim
    parallel_block: bool = False  # x + attn(n(x)) + mlp(n(x)): both read the block's normed input (GPT-J)
    parallel_block_norms: int = 1  # parallel block: 1 norm shared (Falcon-7b, Cohere, Phi) or 2 (GPT-NeoX)
    norm_bias: bool = True  # LayerNorm with a shift (False: Cohere)
    word_embed_proj_dim: int | None = None  # OPT: embedding width, projected to hidden_size and back
    position_offset: int = 0  # OPT: learned position table rows before position 0 (2)
    lm_head_bias: bool = False  # bias on the LM head's vocabulary outputs (Phi)
    embedding_multiplier: float | None = None  # Granite: embeddings scaled by it (None: no scaling op; Gemma: sqrt(hidden_size))
    residual_multiplier: float | None = None  # Granite: x + m * f(x) on each residual add
    attention_multiplier: float | None = None  # Granite: score scale instead of 1/sqrt(d); reference model only
    logits_scale: float | None = None  # logits multiplied by it: Cohere logit_scale, Granite 1 / logits_scaling
    # Routing variants (DeepSeek-V3, HF DeepseekV3TopkRouter)
    moe_scoring: str = "softmax"  # "sigmoid": sigmoid scores plus a per-expert bias for the choice
    moe_groups: int = 1  # n_group: experts split into groups, the choice limited to the best groups
    moe_topk_groups: int = 1  # topk_group: groups a token's experts may come from
    routed_scaling_factor: float = 1.0  # the k routing weights multiplied by it (DeepSeek-V3: 2.5)
    # Multi-head latent attention (DeepSeek-V2, Liu et al. 2024, section 2.1); kv_lora_rank None: off
    q_lora_rank: int | None = None  # rank of the query compression (None: a plain q_proj)
    kv_lora_rank: int | None = None  # d_c: width of the cached joint key-value latent c_kv
    qk_nope_head_dim: int | None = None  # d_h: per-head query/key width without positions
    qk_rope_head_dim: int | None = None  # d_h^R: per-head rotary width (the decoupled key, shared)
    v_head_dim: int | None = None  # per-head value width
    # Gemma 2 / 3, gpt-oss, Llama 4
    attention_chunk_size: int | None = None  # Llama 4: a chunked layer attends within its chunk
    sandwich_norms: bool = False  # a norm on each sublayer's output too, before the residual add (Gemma 2/3)
    attn_logit_softcapping: float | None = None  # scores -> tanh(scores / c) * c (Gemma 2)
    final_logit_softcapping: float | None = None  # logits -> tanh(logits / c) * c (Gemma 2)
    query_pre_attn_scalar: float | None = None  # scores scaled by its -1/2 power, not head_dim's (Gemma)
    attn_sinks: bool = False  # gpt-oss: a learned logit per head joins each softmax row, then dropped
    no_rope_layers: tuple[int, ...] = ()  # indices of layers without rotary positions (Llama 4 NoPE)
    attn_temperature_tuning: bool = False  # Llama 4: queries of the NoPE layers scaled by position
    router_bias: bool = False  # bias on the router's logits (gpt-oss)
    router_scoring: str = "softmax"  # ROUTER_SCORINGS: softmax over E then top-k (Mixtral); top-k of
    #   the logits, then softmax over the k (gpt-oss) or a sigmoid of each (Llama 4)
    expert_bias: bool = False  # biases on each routed expert's matrices (gpt-oss)
    swiglu_limit: float | None = None  # gpt-oss: the experts' clamped SwiGLU (clamp at the limit)
    moe_all_experts: bool = False  # every routed expert runs on every token, weighted by its router
    #   score (0 for those not picked), as transformers' Llama4TextMoe executes it

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"name must be a non-empty string, got {self.name!r}")
        for f in ("num_layers", "hidden_size", "num_heads", "intermediate_size", "vocab_size",
                  "max_position_embeddings"):
            require_positive_int(f, getattr(self, f))
        self._check_physical()  # before anything builds per-layer lists
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        require_positive_int("num_kv_heads", self.num_kv_heads)
        if self.num_heads % self.num_kv_heads:
            raise SpecError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads}); allowed num_kv_heads: divisors of {self.num_heads}")
        if self.head_dim is None and self.kv_lora_rank is not None and self.qk_nope_head_dim and self.qk_rope_head_dim:
            object.__setattr__(self, "head_dim", self.qk_nope_head_dim + self.qk_rope_head_dim)  # MLA: q . k width
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise SpecError(
                    f"hidden_size ({self.hidden_size}) is not divisible by num_heads "
                    f"({self.num_heads}); give head_dim explicitly or use a divisor of hidden_size")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        require_positive_int("head_dim", self.head_dim)
        for f in ("rope_theta", "norm_eps"):  # a rotary base and a norm epsilon are positive and finite
            _require_positive_finite(f, getattr(self, f))
        require_choice("mlp_kind", self.mlp_kind, MLP_KINDS)
        require_choice("activation", self.activation, ACTIVATIONS)
        require_choice("norm_kind", self.norm_kind, NORM_KINDS)
        require_choice("position_kind", self.position_kind, POSITION_KINDS)
        require_choice("family", self.family, FAMILIES)
        self._check_arch()
        self._check_mla()
        self._check_moe()
        self._check_layer_types()
        self._check_variants()
        if self.position_kind == "rotary" and self.head_dim % 2:
            raise SpecError(f"rotary positions need an even head_dim, got {self.head_dim}")
        self._check_block()

    def _check_physical(self) -> None:
        """Sizes past any physical model are an error, not a computation (2**80 layers would
        otherwise build per-layer lists forever): :data:`SIZE_LIMITS`, generous bounds far above
        every published model (the largest have ~100 layers, widths ~50k, vocabularies ~260k)."""
        for limit, fields in SIZE_LIMITS:
            for f in fields:
                v = getattr(self, f)
                if isinstance(v, int) and not isinstance(v, bool) and v > limit:
                    raise SpecError(f"{f} {v} is past any physical model; the limit is "
                                    f"{limit:,} (2**{limit.bit_length() - 1})")

    def _check_block(self) -> None:
        """The block variants: q/k norm, partial rotary, parallel block, OPT's embedding, scales."""
        if self.qk_norm is not None:
            require_choice("qk_norm", self.qk_norm, QK_NORMS)
        if self.rotary_dim is not None:
            require_positive_int("rotary_dim", self.rotary_dim)
            if self.position_kind != "rotary" or self.rotary_dim % 2 or self.rotary_dim > self.head_dim:
                raise SpecError(f"rotary_dim must be even and at most head_dim ({self.head_dim}) with "
                                f"position_kind 'rotary', got {self.rotary_dim} with {self.position_kind!r}")
        if self.parallel_block_norms not in (1, 2) or isinstance(self.parallel_block_norms, bool):
            raise SpecError(f"parallel_block_norms must be 1 or 2, got {self.parallel_block_norms!r}")
        if self.norm_position == "output" and self.arch != "decoder":
            raise SpecError(f"norm_position 'output' is for decoders, got arch {self.arch!r}")
        if self.parallel_block and (self.norm_position != "pre" or self.arch != "decoder"):
            raise SpecError("parallel_block is for pre-norm decoders; got norm_position "
                            f"{self.norm_position!r}, arch {self.arch!r}")
        if self.word_embed_proj_dim is not None:
            require_positive_int("word_embed_proj_dim", self.word_embed_proj_dim)
        if isinstance(self.position_offset, bool) or not isinstance(self.position_offset, int) or self.position_offset < 0:
            raise SpecError(f"position_offset must be a non-negative integer, got {self.position_offset!r}")
        if self.position_offset and self.position_kind != "learned":
            raise SpecError(f"position_offset is for position_kind 'learned', got {self.position_kind!r}")
        for f in ("embedding_multiplier", "residual_multiplier", "attention_multiplier", "logits_scale"):
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not -float("inf") < v < float("inf")):
                raise SpecError(f"{f} must be a finite number or None, got {v!r}")

    def _check_arch(self) -> None:
        require_choice("arch", self.arch, ARCHS)
        require_choice("norm_position", self.norm_position, NORM_POSITIONS)
        if self.arch == "encoder-decoder":
            if self.num_encoder_layers is None:
                object.__setattr__(self, "num_encoder_layers", self.num_layers)
            require_positive_int("num_encoder_layers", self.num_encoder_layers)
        elif self.num_encoder_layers is not None:
            raise SpecError(f"num_encoder_layers is for arch 'encoder-decoder', got arch {self.arch!r}")
        if (self.pooler or self.mlm_head or self.type_vocab_size) and self.arch != "encoder":
            raise SpecError("pooler, mlm_head and type_vocab_size are for arch 'encoder' (BERT), "
                            f"got arch {self.arch!r}")
        if (self.position_kind == "relative") != (self.relative_attention_buckets > 0):
            raise SpecError("position_kind 'relative' needs relative_attention_buckets > 0 and "
                            f"the other way round; got {self.position_kind!r} with "
                            f"{self.relative_attention_buckets} buckets")
        if self.type_vocab_size < 0:
            raise SpecError(f"type_vocab_size must be >= 0, got {self.type_vocab_size}")

    def _check_mla(self) -> None:
        """Multi-head latent attention: all its widths or none (q_lora_rank may stay None)."""
        widths = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
        if self.kv_lora_rank is None:
            given = [f for f in (*widths, "q_lora_rank") if getattr(self, f) is not None]
            if given:
                raise SpecError(f"{', '.join(given)} need kv_lora_rank (multi-head latent attention); "
                                "allowed: kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim and v_head_dim together")
            return
        for f in widths:
            require_positive_int(f, getattr(self, f))
        if self.q_lora_rank is not None:
            require_positive_int("q_lora_rank", self.q_lora_rank)
        if self.head_dim != self.qk_nope_head_dim + self.qk_rope_head_dim:
            raise SpecError(f"multi-head latent attention: head_dim ({self.head_dim}) must be qk_nope_head_dim "
                            f"+ qk_rope_head_dim ({self.qk_nope_head_dim + self.qk_rope_head_dim}), or None")
        if self.num_kv_heads != self.num_heads:
            raise SpecError(f"multi-head latent attention: num_kv_heads ({self.num_kv_heads}) must equal "
                            f"num_heads ({self.num_heads}); every head expands its keys from the latent")
        if self.norm_kind != "rmsnorm":
            raise SpecError(f"multi-head latent attention normalises its latents with RMSNorm; got norm_kind "
                            f"{self.norm_kind!r}, allowed: 'rmsnorm'")
        if self.position_kind != "rotary" or self.qk_rope_head_dim % 2:
            raise SpecError("multi-head latent attention needs position_kind 'rotary' and an even qk_rope_head_dim, "
                            f"got {self.position_kind!r} and {self.qk_rope_head_dim}")
        if self.arch != "decoder":
            raise SpecError(f"multi-head latent attention is for arch 'decoder', got arch {self.arch!r}")

    def _check_moe(self) -> None:
        for f in ("num_experts", "experts_per_token", "num_shared_experts"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise SpecError(f"{f} must be a non-negative integer, got {v!r}")
        if not self.num_experts:
            if self.experts_per_token or self.num_shared_experts:
                raise SpecError("experts_per_token and num_shared_experts need num_experts > 0, "
                                f"got num_experts={self.num_experts}")
            return
        if not 1 <= self.experts_per_token <= self.num_experts:
            raise SpecError(f"experts_per_token must be between 1 and num_experts ({self.num_experts}), "
                            f"got {self.experts_per_token}")
        if self.mlp_bias:
            raise SpecError("mlp_bias is not supported with experts (num_experts > 0); allowed: mlp_bias=False")
        if self.moe_intermediate_size is None:
            object.__setattr__(self, "moe_intermediate_size", self.intermediate_size)
        require_positive_int("moe_intermediate_size", self.moe_intermediate_size)
        if self.shared_expert_intermediate_size is None:
            object.__setattr__(self, "shared_expert_intermediate_size", self.moe_intermediate_size)
        require_positive_int("shared_expert_intermediate_size", self.shared_expert_intermediate_size)
        if self.shared_expert_gate and not self.num_shared_experts:
            raise SpecError("shared_expert_gate needs num_shared_experts > 0")
        require_choice("moe_scoring", self.moe_scoring, MOE_SCORINGS)
        require_positive_int("moe_groups", self.moe_groups)
        require_positive_int("moe_topk_groups", self.moe_topk_groups)
        if self.num_experts % self.moe_groups or not self.moe_topk_groups <= self.moe_groups:
            raise SpecError(f"moe_groups ({self.moe_groups}) must divide num_experts ({self.num_experts}) and "
                            f"moe_topk_groups ({self.moe_topk_groups}) be at most moe_groups")
        if self.moe_groups > 1 and self.experts_per_token > self.moe_topk_groups * (self.num_experts // self.moe_groups):
            raise SpecError(f"experts_per_token ({self.experts_per_token}) exceeds the experts of the "
                            f"{self.moe_topk_groups} groups a token may use")
        f = self.routed_scaling_factor
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < float("inf"):
            raise SpecError(f"routed_scaling_factor must be a positive number, got {f!r}")

    @property
    def mla(self) -> bool:
        """Multi-head latent attention (DeepSeek-V2/V3) instead of q, k, v projections."""
        return self.kv_lora_rank is not None

    @property
    def kv_cache_width(self) -> int:
        """Elements one layer caches per position: keys and values, 2 * num_kv_heads * head_dim;
        with latent attention the latent and the shared rotary key, kv_lora_rank + qk_rope_head_dim."""
        if self.mla:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.kv_size

    def _default_layer_types(self) -> tuple[str, ...]:
        return (ATTENTION_TYPES[1 if self.sliding_window is not None else 0],) * self.num_layers

    def _default_mlp_layer_types(self) -> tuple[str, ...]:
        return (MLP_LAYER_TYPES[1 if self.num_experts else 0],) * self.num_layers

    def _check_layer_types(self) -> None:
        w = self.sliding_window
        for f in ("sliding_window", "attention_chunk_size"):
            if getattr(self, f) is not None:
                require_positive_int(f, getattr(self, f))
                if self.arch != "decoder":
                    raise SpecError(f"{f} is for arch 'decoder', got arch {self.arch!r}")
        for f, allowed, default in (("layer_types", ATTENTION_TYPES, self._default_layer_types),
                                    ("mlp_layer_types", MLP_LAYER_TYPES, self._default_mlp_layer_types)):
            v = getattr(self, f)
            if v is None:
                v = default()
            elif isinstance(v, str) or not isinstance(v, (list, tuple)):
                raise SpecError(f"{f} must be a list of {', '.join(allowed)} (one per layer), got {v!r}")
            v = tuple(v)
            if len(v) != self.num_layers:
                raise SpecError(f"{f} has {len(v)} entries, num_layers is {self.num_layers}; "
                                "allowed: one entry per layer")
            for t in v:
                if t not in allowed:
                    raise SpecError(f"{f} entry {t!r} is not supported; allowed: {', '.join(allowed)}")
            object.__setattr__(self, f, v)
        if w is None and "sliding_attention" in self.layer_types:
            raise SpecError("layer_types has 'sliding_attention' layers but sliding_window is None; "
                            "allowed: a positive sliding_window, or only 'full_attention' layers")
        if self.attention_chunk_size is None and "chunked_attention" in self.layer_types:
            raise SpecError("layer_types has 'chunked_attention' layers but attention_chunk_size is None; "
                            "allowed: a positive attention_chunk_size, or no 'chunked_attention' layers")
        if ("sliding_attention" in self.layer_types and "chunked_attention" in self.layer_types
                and self.sliding_window != self.attention_chunk_size):
            raise SpecError(f"layer_types has sliding layers (window {w}) and chunked ones (chunk "
                            f"{self.attention_chunk_size}); allowed: one window size for both")
        if not self.num_experts and "moe" in self.mlp_layer_types:
            raise SpecError("mlp_layer_types has 'moe' layers but num_experts is 0; "
                            "allowed: num_experts > 0, or only 'dense' layers")

    def layer_groups(self) -> tuple[LayerGroup, ...]:
        """The decoder layers as runs of identical ones (attention kind, MLP kind, rotary or not), in order."""
        groups: list[LayerGroup] = []
        for i, kind in enumerate(zip(self.layer_types, self.mlp_layer_types)):
            kind = (*kind, i not in self.no_rope_layers)
            g = groups[-1] if groups else None
            if g is not None and (g.attention, g.mlp, g.rope) == kind:
                groups[-1] = replace(g, count=g.count + 1)
            else:
                groups.append(LayerGroup(i, 1, *kind))
        return tuple(groups)

    @property
    def attention_window(self) -> int | None:
        """The window of the sliding and chunked layers (one size: ModelSpec refuses two), None if
        every layer attends over all positions."""
        windows = {self.window_of(g) for g in self.layer_groups()} - {None}
        return windows.pop() if windows else None

    def window_of(self, group: LayerGroup) -> int | None:
        """Keys a layer of ``group`` may attend to: sliding_window on a sliding layer,
        attention_chunk_size on a chunked one (transformers caches it as a sliding window of the
        chunk size: a decode step sees min(context, chunk) keys), else None."""
        return {"sliding_attention": self.sliding_window,
                "chunked_attention": self.attention_chunk_size}.get(group.attention)

    def _check_variants(self) -> None:
        """Gemma 2 / 3, gpt-oss and Llama 4's fields."""
        require_choice("router_scoring", self.router_scoring, ROUTER_SCORINGS)
        for f in ("attn_logit_softcapping", "final_logit_softcapping",
                  "query_pre_attn_scalar", "swiglu_limit"):
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf")):
                raise SpecError(f"{f} must be a positive number or None, got {v!r}")
        v = self.no_rope_layers
        if (isinstance(v, str) or not isinstance(v, (list, tuple))
                or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.num_layers for i in v)):
            raise SpecError(f"no_rope_layers must be a list of layer indices 0 to {self.num_layers - 1}, got {v!r}")
        object.__setattr__(self, "no_rope_layers", tuple(sorted(set(v))))
        if v and self.position_kind != "rotary":
            raise SpecError(f"no_rope_layers is for position_kind 'rotary', got {self.position_kind!r}")
        if self.attn_temperature_tuning and not v:
            raise SpecError("attn_temperature_tuning scales the queries of the NoPE layers; it needs no_rope_layers")
        if self.sandwich_norms and self.norm_position != "pre":
            raise SpecError(f"sandwich_norms is for norm_position 'pre', got {self.norm_position!r}")
        moe_only = [f for f, on in (("router_bias", self.router_bias), ("expert_bias", self.expert_bias),
                                    ("moe_all_experts", self.moe_all_experts),
                                    ("router_scoring", self.router_scoring != "softmax"),
                                    ("swiglu_limit", self.swiglu_limit is not None)) if on]
        if moe_only and not self.num_experts:
            raise SpecError(f"{', '.join(moe_only)}: for routed experts, got num_experts=0; "
                            "allowed: num_experts > 0, or the defaults")
        if self.swiglu_limit is not None and self.mlp_kind != "gated":
            raise SpecError(f"swiglu_limit is for mlp_kind 'gated', got {self.mlp_kind!r}")

    def uses_rope(self, layer: int) -> bool:
        """Layer ``layer`` rotates its q and k (rotary positions, not a NoPE layer)."""
        return self.position_kind == "rotary" and layer not in self.no_rope_layers

    # Derived widths, named as in the formulas.
    @property
    def q_size(self) -> int:
        """Columns of the query projection: num_heads * head_dim."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Columns of each of the key and value projections: num_kv_heads * head_dim."""
        return self.num_kv_heads * self.head_dim

    @property
    def num_mlp_matrices(self) -> int:
        return 3 if self.mlp_kind == "gated" else 2

    @property
    def embedding_dim(self) -> int:
        """Width of the token embedding (and the tied LM head's input): word_embed_proj_dim or hidden."""
        return self.hidden_size if self.word_embed_proj_dim is None else self.word_embed_proj_dim

    @property
    def rotated_dim(self) -> int:
        """Dims of each q and k head that rotary positions rotate: rotary_dim, or all of head_dim."""
        return self.head_dim if self.rotary_dim is None else self.rotary_dim

    @property
    def block_norms(self) -> int:
        """Norms in one block: 2 (attention, MLP), or parallel_block_norms in a parallel block; 2
        more on the sublayers' outputs with sandwich_norms (Gemma 2/3)."""
        return (self.parallel_block_norms if self.parallel_block else 2) + (2 if self.sandwich_norms else 0)

    def norm_params(self, width: int | None = None) -> int:
        """Parameters of one norm over ``width`` (default hidden_size): scale (and shift for LayerNorm)."""
        width = self.hidden_size if width is None else width
        return 2 * width if self.norm_kind == "layernorm" and self.norm_bias else width

    def qk_norm_params(self) -> int:
        """Weights of the q and k norms: per head dim ("head"), per q and kv element ("per_head",
        "full"); "l2" has none."""
        if self.qk_norm in (None, "l2"):
            return 0
        if self.qk_norm == "head":
            return 2 * self.norm_params(self.head_dim)
        return self.norm_params(self.q_size) + self.norm_params(self.kv_size)

    def mla_params(self) -> int:
        """Latent attention (HF DeepseekV3Attention): q_a_proj [h, r_q], its RMSNorm, q_b_proj
        [r_q, H * (d_nope + d_rope)] (or q_proj [h, H * (d_nope + d_rope)] without r_q), kv_a_proj
        [h, r_kv + d_rope], its RMSNorm over r_kv, kv_b_proj [r_kv, H * (d_nope + d_v)], o_proj
        [H * d_v, h]; biases (attention_bias) on q_a_proj and kv_a_proj, on o_proj (attention_out_bias)."""
        h, heads, r_q, r_kv = self.hidden_size, self.num_heads, self.q_lora_rank, self.kv_lora_rank
        q_out = heads * self.head_dim
        q = h * q_out if r_q is None else h * r_q + r_q + r_q * q_out
        kv = h * (r_kv + self.qk_rope_head_dim) + r_kv + r_kv * heads * (self.qk_nope_head_dim + self.v_head_dim)
        attn = q + kv + heads * self.v_head_dim * h
        if self.attention_bias:
            attn += (r_q or 0) + r_kv + self.qk_rope_head_dim
        if self.attention_out_bias:
            attn += h
        return attn

    def attention_params(self) -> int:
        """q, k, v and output projections with their biases (latent attention: :meth:`mla_params`)."""
        if self.mla:
            return self.mla_params()
        h, q, kv = self.hidden_size, self.q_size, self.kv_size
        attn = h * q + 2 * h * kv + q * h
        if self.attention_bias:
            attn += q + 2 * kv
        if self.attention_out_bias:
            attn += h
        return attn

    def attention_extra_params(self) -> int:
        """Self-attention's parameters besides the projections: the q and k norms' weights
        (:meth:`qk_norm_params`), gpt-oss's sinks (one logit per query head)."""
        return self.qk_norm_params() + (self.num_heads if self.attn_sinks else 0)

    def expert_params(self, inter: int | None = None) -> int:
        """One routed expert's matrices of width ``inter`` (default moe_intermediate_size), with
        their biases (``expert_bias``: gate and up ``inter`` each, down ``hidden_size``)."""
        inter = self.moe_intermediate_size if inter is None else inter
        bias = (self.num_mlp_matrices - 1) * inter + self.hidden_size if self.expert_bias else 0
        return self.num_mlp_matrices * self.hidden_size * inter + bias

    def layer_params(self, experts: int | None = None, cross: bool = False, mlp: str | None = None) -> int:
        """Parameters of one transformer block; ``experts``: count only that many routed experts
        (``experts_per_token`` gives the parameters one token is computed with); ``cross``: a
        decoder block of an encoder-decoder (cross-attention and its norm); ``mlp``: a "dense" or
        "moe" layer (default: "moe" when the model has experts)."""
        h, inter = self.hidden_size, self.intermediate_size
        attn = self.attention_params() + self.attention_extra_params()
        if cross:
            attn += self.attention_params() + self.norm_params()
        if (mlp or ("moe" if self.num_experts else "dense")) == "moe":
            routed = self.num_experts if experts is None else experts
            mlp = (h * self.num_experts + (self.num_experts if self.router_bias else 0)  # router
                   + routed * self.expert_params()
                   + self.num_shared_experts * self.num_mlp_matrices * h * self.shared_expert_intermediate_size
                   + (h if self.shared_expert_gate else 0))
        else:
            mlp = self.num_mlp_matrices * h * inter
            if self.mlp_bias:
                mlp += (self.num_mlp_matrices - 1) * inter + h
        return attn + mlp + self.block_norms * self.norm_params()

    def embedding_params(self) -> int:
        """Token embedding, learned positions (OPT: with its offset rows), token types (BERT), the
        embedding norm (BERT) and OPT's projection of the embedding to hidden_size."""
        h, e = self.hidden_size, self.embedding_dim
        pos = (self.max_position_embeddings + self.position_offset) * h if self.position_kind == "learned" else 0
        norm = self.norm_params() if self.embedding_norm else 0
        project_in = e * h if e != h else 0
        return self.vocab_size * e + pos + self.type_vocab_size * h + norm + project_in

    def stack_params(self) -> int:
        """Per stack, outside its blocks: T5's relative position bias and the final norm (pre-norm)."""
        bias = self.relative_attention_buckets * self.num_heads
        return bias + (self.norm_params() if self.norm_position != "post" else 0)

    def head_params(self) -> int:
        """Parameters after the last block not shared with the embedding: the LM head (0 when
        tied); BERT's pooler and MLM head (dense, LayerNorm, decoder bias; the decoder tied)."""
        h, v = self.hidden_size, self.vocab_size
        untied = 0 if self.tie_word_embeddings else v * h
        if self.arch != "encoder":
            return self.lm_head_params() + self.head_extra_params()
        pooler = h * h + h if self.pooler else 0
        mlm = h * h + h + self.norm_params() + v + untied if self.mlm_head else 0
        return pooler + mlm

    def lm_head_params(self) -> int:
        """Parameters of the LM head's matrix not shared with the embedding (0 when tied)."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.embedding_dim

    def head_extra_params(self) -> int:
        """A decoder's parameters after the last block besides the final norm and the LM head's
        matrix: OPT's projection back to the embedding width, the LM head's bias (Phi)."""
        h, e = self.hidden_size, self.embedding_dim
        return (h * e if e != h else 0) + (self.vocab_size if self.lm_head_bias else 0)

    @property
    def num_params(self) -> int:
        """All parameters, a tied embedding counted once."""
        total = self.embedding_params() + self.head_params() + self.stack_params()
        if self.arch == "encoder-decoder":
            return (total + self.num_encoder_layers * self.layer_params() + self.stack_params()
                    + self.num_layers * self.layer_params(cross=True))
        return total + sum(g.count * self.layer_params(mlp=g.mlp) for g in self.layer_groups())

    @property
    def active_params(self) -> int:
        """Parameters one token is computed with: all but the routed experts it does not use (in
        each MoE layer; ``moe_all_experts``: those it multiplies by a zero weight count as unused too)."""
        if not self.num_experts:
            return self.num_params
        unused = self.layer_params() - self.layer_params(experts=self.experts_per_token)
        layers = self.mlp_layer_types.count("moe") + (self.num_encoder_layers or 0)
        return self.num_params - layers * unused

    def summary(self) -> dict:
        """The model fields a report shows (the JSON ``model`` object)."""
        moe = {} if not self.num_experts else {
            "num_experts": self.num_experts,
            "experts_per_token": self.experts_per_token,
            "moe_intermediate_size": self.moe_intermediate_size,
            "num_shared_experts": self.num_shared_experts,
            "shared_expert_intermediate_size": self.shared_expert_intermediate_size,
            "moe_layers": self.mlp_layer_types.count("moe"),
            **({} if self.moe_scoring == "softmax" else {"moe_scoring": self.moe_scoring}),
            **({} if self.moe_groups == 1 else {"moe_groups": self.moe_groups,
                                                "moe_topk_groups": self.moe_topk_groups}),
            **({} if self.routed_scaling_factor == 1.0 else {"routed_scaling_factor": self.routed_scaling_factor}),
        }
        if self.num_experts and self.moe_all_experts:
            moe["moe_all_experts"] = True  # FLOPs: every routed expert on every token (transformers' Llama 4)
        mla = {} if not self.mla else {f: getattr(self, f) for f in (
            "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")}
        window = {} if self.sliding_window is None else {"sliding_window": self.sliding_window}
        return {**self._summary(), "active_params": self.active_params, **moe, **mla, **window,
                "layer_groups": [g.to_dict() for g in self.layer_groups()], **self._variants()}

    def _variants(self) -> dict:
        """The issue-12 fields that differ from their defaults (a plain model shows none of them)."""
        out = {}
        for f in fields(self):
            if f.name in _VARIANT_FIELDS and getattr(self, f.name) != f.default:
                v = getattr(self, f.name)
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def _summary(self) -> dict:
        return {
            "name": self.name,
            "family": self.family,
            "arch": self.arch,
            "num_params": self.num_params,
            "num_layers": self.num_layers,
            **({"num_encoder_layers": self.num_encoder_layers} if self.arch == "encoder-decoder" else {}),
            "hidden_size": self.hidden_size,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "mlp_kind": self.mlp_kind,
            "activation": self.activation,
            "norm_kind": self.norm_kind,
            "position_kind": self.position_kind,
            "attention_bias": self.attention_bias,
            "attention_out_bias": self.attention_out_bias,
            "mlp_bias": self.mlp_bias,
            "tie_word_embeddings": self.tie_word_embeddings,
        }

    def with_(self, **changes) -> "ModelSpec":
        """A copy with ``changes``; per-layer types left at their default (uniform) are derived
        again for the new num_layers / sliding_window / num_experts."""
        if self.layer_types == self._default_layer_types():
            changes.setdefault("layer_types", None)
        if self.mlp_layer_types == self._default_mlp_layer_types():
            changes.setdefault("mlp_layer_types", None)
        return replace(self, **changes)


@dataclass(frozen=True)
class Workload:
    """What is run: ``batch`` sequences of ``prompt`` tokens, generating ``gen`` tokens each.

    Prefill processes the prompt and yields the first new token; the remaining ``gen - 1`` tokens
    take one decode step each, step i (1-based) feeding one token per sequence and attending over
    ``prompt + i`` keys. After generation the KV cache holds ``prompt + gen - 1`` positions.
    """

    batch: int = 1
    prompt: int = 512
    gen: int = 128
    weight_dtype: str = "bf16"
    act_dtype: str = "bf16"
    kv_dtype: str | None = None  # defaults to act_dtype
    logits: str = "last"  # prefill LM head for the last position only ("last") or every one ("all")
    kv_cache: bool = True  # False: each decode step recomputes the whole prefix
    causal: bool = False  # count only the lower triangle of the attention scores
    beams: int = 1  # beam search width: each decode step runs batch * beams sequences
    strategy: str = "greedy"  # how the next token is picked (costmodel.sampling); beams > 1 means "beam"
    top_k: int = 50  # candidates kept by top_k and top_k_top_p
    top_p: float = 0.9  # probability mass kept by top_p and top_k_top_p
    temperature: float = 1.0  # logits are divided by it before sampling (not in greedy or beam)
    decoder_prompt: int = 1  # encoder-decoder: tokens the decoder starts from (prompt is the source)
    mla: str = "transformers"  # latent attention: "transformers" re-expands the whole cached latent
    #   through kv_b_proj every pass (HF 5.23); "absorbed" decodes in latent space (serving engines)
    quant: str = "none"  # deployed quantisation of the blocks' linear layers (costmodel.quant.SCHEMES):
    #   packed weights with their scales and zeros; weight_dtype is then the unquantised tensors' dtype

    def __post_init__(self) -> None:
        require_positive_int("batch", self.batch)
        require_positive_int("prompt", self.prompt)
        require_positive_int("gen", self.gen)
        require_positive_int("beams", self.beams)
        require_positive_int("decoder_prompt", self.decoder_prompt)
        object.__setattr__(self, "weight_dtype", canonical_dtype(self.weight_dtype, "weight dtype"))
        object.__setattr__(self, "act_dtype", canonical_dtype(self.act_dtype, "activation dtype"))
        if DTYPE_BITS[self.act_dtype] < 8:
            raise SpecError(f"activation dtype {self.act_dtype!r} is not supported; allowed: "
                            "fp32, bf16, fp16, fp8, int8 (int4 is for weights and the KV cache)")
        kv = self.act_dtype if self.kv_dtype is None else self.kv_dtype
        object.__setattr__(self, "kv_dtype", canonical_dtype(kv, "KV-cache dtype"))
        require_choice("logits", self.logits, LOGITS_MODES)
        require_choice("mla", self.mla, MLA_FORMS)
        if _quant.scheme_of(self.quant) is not None and DTYPE_BITS[self.weight_dtype] < 8:
            raise SpecError(f"quant {self.quant!r} quantises the blocks' linear layers; weight dtype is then the "
                            f"dtype of the other tensors (embedding, LM head, norms) and cannot be "
                            f"{self.weight_dtype}; allowed: fp32, bf16, fp16, fp8, int8")
        require_choice("strategy", self.strategy, STRATEGIES)
        if self.beams > 1 and self.strategy == "greedy":
            object.__setattr__(self, "strategy", "beam")  # beams > 1 has always meant beam search
        if self.beams > 1 and self.strategy != "beam":
            raise SpecError(f"beams={self.beams} needs strategy 'beam', got {self.strategy!r}; "
                            "allowed with beams > 1: beam, greedy (taken as beam)")
        require_positive_int("top_k", self.top_k)
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise SpecError(f"top_p must be a number in (0, 1], got {self.top_p!r}")
        if (isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float))
                or not 0 < self.temperature < float("inf")):
            raise SpecError(f"temperature must be a positive number, got {self.temperature!r}")

    @property
    def decode_steps(self) -> int:
        return self.gen - 1

    @property
    def final_context(self) -> int:
        """Positions held in the KV cache after generation: prompt + gen - 1."""
        return self.prompt + self.gen - 1

    def check_against(self, spec: ModelSpec) -> list[str]:
        """Raise SpecError where the workload cannot run on ``spec``; return warnings otherwise."""
        scheme = _quant.scheme_of(self.quant)
        if scheme is not None:
            _quant.check_spec(scheme, spec)
        if DTYPE_BITS[self.weight_dtype] < 8:
            for f in ("hidden_size", "intermediate_size", "head_dim"):
                if getattr(spec, f) % 2:
                    raise SpecError(f"{self.weight_dtype} weights pack two values a byte and need an "
                                    f"even {f}; {spec.name} has {f}={getattr(spec, f)}")
        if DTYPE_BITS[self.kv_dtype] < 8 and spec.head_dim % 2:
            raise SpecError(f"{self.kv_dtype} KV cache packs two values a byte and needs an even "
                            f"head_dim; {spec.name} has head_dim={spec.head_dim}")
        if self.strategy in ("top_k", "top_k_top_p") and self.top_k > spec.vocab_size:
            raise SpecError(f"top_k ({self.top_k}) exceeds {spec.name}'s vocab_size {spec.vocab_size}; "
                            f"allowed: 1 to {spec.vocab_size}")
        if self.decoder_prompt != 1 and spec.arch != "encoder-decoder":
            raise SpecError(f"decoder_prompt is for encoder-decoder models; {spec.name} is arch {spec.arch!r}")
        warnings = self.ignored_options(spec)
        if spec.arch == "encoder":
            contexts = [(self.prompt, f"input {self.prompt}")]
        elif spec.arch == "encoder-decoder":
            n = self.decoder_prompt + self.gen - 1
            contexts = [(self.prompt, f"source {self.prompt}"),
                        (n, f"decoder context {n} (decoder prompt {self.decoder_prompt} + gen {self.gen} - 1)")]
        else:
            contexts = [(self.final_context,
                         f"context {self.final_context} (prompt {self.prompt} + gen {self.gen} - 1)")]
        if spec.position_kind != "relative":  # T5's relative bias has no hard limit
            for n, what in contexts:
                if n > spec.max_position_embeddings:
                    warnings.append(f"{what} exceeds {spec.name}'s max_position_embeddings "
                                    f"{spec.max_position_embeddings}")
        return warnings

    def ignored_options(self, spec: ModelSpec) -> list[str]:
        """One warning for the settings that change nothing here: sampling parameters the strategy
        does not use, and generation and KV-cache settings of an encoder-only model. Only values that
        differ from the defaults are named (a default the user did not set is never warned about)."""
        d = Workload()
        warnings = []
        unused = []
        uses = {"greedy": (), "beam": (), "sample": ("temperature",), "top_k": ("top_k", "temperature"),
                "top_p": ("top_p", "temperature"), "top_k_top_p": ("top_k", "top_p", "temperature")}
        if spec.arch != "encoder":
            unused = [f"{f}={getattr(self, f)}" for f in ("top_k", "top_p", "temperature")
                      if getattr(self, f) != getattr(d, f) and f not in uses[self.strategy]]
            if unused:
                warnings.append(f"strategy {self.strategy!r} does not use {', '.join(unused)}: ignored "
                                f"(top_k is for top_k and top_k_top_p, top_p for top_p and top_k_top_p, "
                                f"temperature for every sampling strategy)")
            return warnings
        ignored = [f"{f}={getattr(self, f)}" for f in ("gen", "beams") if getattr(self, f) != 1]
        ignored += [f"{f}={getattr(self, f)}" for f in ("top_k", "top_p", "temperature")
                    if getattr(self, f) != getattr(d, f)]
        if self.strategy != "greedy" and self.strategy != "beam":
            ignored.append(f"strategy {self.strategy!r}")
        if not self.kv_cache:
            ignored.append("kv_cache=False")
        if self.kv_dtype != self.act_dtype:
            ignored.append(f"kv_dtype={self.kv_dtype}")
        if self.logits != d.logits:
            ignored.append(f"logits={self.logits!r}")
        if ignored:
            warnings.append(f"{spec.name} is encoder-only: one encode pass over the input, no generation "
                            f"and no KV cache; {', '.join(ignored)} ignored")
        return warnings

    def resolved(self) -> dict:
        """The inputs as resolved (the JSON ``workload`` object)."""
        return {
            "batch": self.batch,
            "prompt": self.prompt,
            "gen": self.gen,
            "decode_steps": self.decode_steps,
            "final_context": self.final_context,
            "beams": self.beams,
            "weight_dtype": self.weight_dtype,
            "act_dtype": self.act_dtype,
            "kv_dtype": self.kv_dtype,
            "logits": self.logits,
            "kv_cache": self.kv_cache,
            "causal": self.causal,
            "strategy": self.strategy,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "temperature": self.temperature,
            "decoder_prompt": self.decoder_prompt,
            "mla": self.mla,
            "quant": self.quant,
            "quant_scheme": _quant.to_dict(self.quant, self.weight_dtype),
        }


def decoder_start(spec: ModelSpec, wl: Workload) -> int:
    """Tokens the decoder starts from, before the first new one: ``wl.decoder_prompt`` on an
    encoder-decoder (whose ``prompt`` is the source), else ``wl.prompt`` (an encoder's input).

    A function of the workload passed, not a Workload method: the sweep's grid workload hands
    unknown attributes to its base Workload, whose method would read the base's scalar prompt."""
    return wl.decoder_prompt if spec.arch == "encoder-decoder" else wl.prompt
