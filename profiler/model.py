"""The reference transformer: one flat PyTorch model built from a :class:`~costmodel.ModelSpec`.

GPT-2 style (LayerNorm, GELU 4h MLP, learned positions, biases, tied LM head) and LLaMA style
(RMSNorm, SwiGLU, rotary, GQA/MQA, optional q/k/v bias as in Qwen2, head_dim != hidden/heads as in
Gemma) are the same code: every variant is a field of the spec, not a class of its own. So are
q/k norms (Qwen3, OLMo 2), partial rotary (GPT-NeoX, Phi), parallel blocks, sliding-window layers
(Mistral; mixed with full ones: Qwen2), dense layers among expert ones (DeepSeek's first layers) and
multi-head latent attention (DeepSeek-V2/V3, in transformers' form or the absorbed one).

The module tree mirrors the analytic op names so that FlopCounterMode's per-module counts and the
timing hooks map one to one onto the rows of :mod:`costmodel.analysis`::

    tok_embeddings, pos_embeddings                       embedding, pos_embedding
    layers.{i}.attn_norm / .mlp_norm                     attn_norm / mlp_norm
    layers.{i}.attention.{q,k,v,o}_proj                  q_proj, k_proj, v_proj, o_proj (+ biases)
    layers.{i}.attention.{q,k}_norm                      q_norm, k_norm (Qwen3, OLMo 2)
    layers.{i}.attention.{q_a,q_b,kv_a,kv_b}_proj        q_a_proj, q_b_proj, kv_a_proj, kv_b_proj (latent)
    layers.{i}.attention.kv_b_absorb_{q,v}               kv_b_absorb_q, kv_b_absorb_v (latent, absorbed)
    layers.{i}.attention.core.attn_scores / attn_values  attn_scores, attn_values   (eager path)
    layers.{i}.attention.core.sdpa                       attn_scores + attn_values  (SDPA path)
    layers.{i}.mlp.{gate,up,down}                        mlp_gate, mlp_up, mlp_down
    final_norm, lm_head                                  final_norm, lm_head

Shapes: B batch rows, T new tokens, S keys attended, H query heads, Hkv kv heads, d head_dim.
The sublayers live in :mod:`profiler.layers`, the block in :mod:`profiler.block`; this module
stacks the blocks (encoder stacks: :mod:`profiler.encdec`) and builds the model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from costmodel.errors import SpecError
from costmodel.spec import MLA_FORMS, ModelSpec

from . import encdec
from .block import Block
from .choices import ATTENTION_PATHS, DEVICES, REFERENCE_DTYPES
from .layers import KVCache, LatentKVCache, SlidingKVCache, _norm

TORCH_DTYPES = dict(zip(REFERENCE_DTYPES, (torch.float32, torch.bfloat16, torch.float16)))


# Spec fields the decoder-only path does not implement, with the value it needs (encoder stacks do).
_DECODER_ONLY = {"norm_position": "pre", "embedding_norm": False}


# Spec fields the reference model does not build (their analytic side is exact against transformers:
# tests/fixtures/hf), with the value it needs; a spec that sets one is refused, never run without it.
_NOT_BUILT = {
    "word_embed_proj_dim": None, "position_offset": 0, "lm_head_bias": False, "embedding_multiplier": None,
    "residual_multiplier": None, "attention_multiplier": None, "logits_scale": None,
    "moe_scoring": "softmax", "moe_groups": 1, "moe_topk_groups": 1, "routed_scaling_factor": 1.0,
    "attention_chunk_size": None, "sandwich_norms": False, "attn_logit_softcapping": None,
    "final_logit_softcapping": None, "query_pre_attn_scalar": None, "attn_sinks": False,
    "no_rope_layers": (), "attn_temperature_tuning": False, "router_bias": False,
    "router_scoring": "softmax", "expert_bias": False, "swiglu_limit": None, "moe_all_experts": False,
}


def check_supported(spec: ModelSpec) -> None:
    """Refuse, with one line, a spec the reference model cannot build.

    It builds decoder-only models (dense or mixture of experts), encoder-only models (BERT) and
    encoder-decoders (T5, the 2017 Transformer); a decoder-only spec with an encoder's embedding
    parts (sinusoidal or relative positions, post-norm, an embedding norm) has no reference.
    """
    if spec.arch != "decoder":
        return
    if spec.position_kind not in ("learned", "rotary"):
        raise SpecError(f"{spec.name} is decoder-only with {spec.position_kind} positions; the reference model "
                        "builds decoder-only models with learned or rotary positions")
    if spec.qk_norm not in (None, "head", "full"):
        raise SpecError(f"{spec.name} has qk_norm={spec.qk_norm!r}; the reference model builds q/k norms "
                        "'head' and 'full'")
    if spec.mla and "sliding_attention" in spec.layer_types:
        raise SpecError(f"{spec.name} has latent attention with sliding layers; the reference model builds "
                        "latent attention over full layers only")
    for f, want in _NOT_BUILT.items():
        if getattr(spec, f) != want:
            raise SpecError(f"{spec.name} has {f}={getattr(spec, f)!r}; the reference model does not build it "
                            f"(allowed: {want!r}); its analytic costs are checked against transformers instead")
    if "chunked_attention" in spec.layer_types:
        raise SpecError(f"{spec.name} has chunked_attention layers; the reference model builds full and "
                        "sliding_attention layers")
    for f, want in _DECODER_ONLY.items():
        if getattr(spec, f) != want:
            raise SpecError(f"{spec.name} has {f}={getattr(spec, f)!r}; the reference model builds "
                            f"decoder-only models with {f}={want!r}")


class Transformer(nn.Module):
    def __init__(self, spec: ModelSpec, attention: str = "sdpa", mla: str = "transformers"):
        """``mla``: the form latent attention runs in (``Workload.mla``; ignored without it)."""
        super().__init__()
        check_supported(spec)
        if attention not in ATTENTION_PATHS:
            raise SpecError(f"unknown attention path {attention!r}; allowed: {', '.join(ATTENTION_PATHS)}")
        if mla not in MLA_FORMS:
            raise SpecError(f"unknown latent attention form {mla!r}; allowed: {', '.join(MLA_FORMS)}")
        self.spec, self.attention, self.mla = spec, attention, mla
        self.tok_embeddings = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.pos_embeddings = (nn.Embedding(spec.max_position_embeddings, spec.hidden_size)
                               if spec.position_kind == "learned" else None)
        self.layers = nn.ModuleList(Block(spec, attention, causal=spec.arch != "encoder",
                                          cross=spec.arch == "encoder-decoder", layer=i, mla=mla)
                                    for i in range(spec.num_layers))
        self.final_norm = _norm(spec)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_word_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight
        if spec.arch != "decoder":  # BERT's heads; T5's and the 2017 Transformer's encoder stack
            encdec.add_encoder_parts(self, spec, attention)
        if spec.position_kind == "rotary":
            d = spec.qk_rope_head_dim if spec.mla else spec.rotated_dim  # dims rotated per head
            inv_freq = 1.0 / spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
            angles = torch.outer(torch.arange(spec.max_position_embeddings, dtype=torch.float64), inv_freq)
            angles = torch.cat((angles, angles), dim=-1)  # [max_pos, r], halves repeated (rotate_half)
            self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
            self.register_buffer("rope_sin", angles.sin().float(), persistent=False)

    # --- caches -------------------------------------------------------------------------------
    def setup_caches(self, rows: int, max_len: int, source_len: int = 0) -> None:
        """Preallocate a KV cache of ``rows`` sequences and ``max_len`` positions in every layer (a
        sliding layer: its window - 1 positions, :class:`~profiler.layers.SlidingKVCache`);
        ``source_len``: an encoder-decoder's cross-attention cache of that many encoder positions."""
        p = self.tok_embeddings.weight
        for layer in self.layers:
            if self.spec.mla:  # the latent c_kv and the shared rotary key
                layer.attention.kv_cache = LatentKVCache(rows, max_len, self.spec.kv_lora_rank,
                                                         self.spec.qk_rope_head_dim, p.dtype, p.device)
                continue
            w = layer.attention.window
            layer.attention.kv_cache = (KVCache(rows, self.spec.num_kv_heads, max_len, self.spec.head_dim,
                                                p.dtype, p.device) if w is None else
                                        SlidingKVCache(rows, self.spec.num_kv_heads, w, self.spec.head_dim,
                                                       p.dtype, p.device))
            if layer.cross_attention is not None:
                layer.cross_attention.kv_cache = KVCache(rows, self.spec.num_kv_heads, source_len,
                                                         self.spec.head_dim, p.dtype, p.device)

    def drop_caches(self) -> None:
        for layer in self.layers:
            layer.attention.kv_cache = None
            if layer.cross_attention is not None:
                layer.cross_attention.kv_cache = None

    def caches(self) -> list[KVCache]:
        """Every cache: self-attention, then (encoder-decoder) cross-attention."""
        return [la.attention.kv_cache for la in self.layers if la.attention.kv_cache is not None] + self.cross_caches()

    def cross_caches(self) -> list[KVCache]:
        return [la.cross_attention.kv_cache for la in self.layers
                if la.cross_attention is not None and la.cross_attention.kv_cache is not None]

    def kv_cache_bytes(self) -> int:
        """Bytes of cache tensors holding written keys and values, all layers (self and cross)."""
        return sum(c.filled_bytes() for c in self.caches())

    def cross_kv_cache_bytes(self) -> int:
        """Bytes of the written cross-attention caches (encoder-decoder), all layers."""
        return sum(c.filled_bytes() for c in self.cross_caches())

    def kv_cache_allocated_bytes(self) -> int:
        return sum(c.allocated_bytes() for c in self.caches())

    def weight_bytes(self) -> int:
        """Bytes of the parameters, a tied embedding counted once (``parameters()`` deduplicates)."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- forward ------------------------------------------------------------------------------
    def forward(self, tokens: Tensor, input_pos: Tensor, kv_len: int, logits: str = "last",
                stack: str = "decoder") -> Tensor:
        """tokens: [B, T] at positions ``input_pos: [T]``, attending over ``kv_len`` keys.

        Returns logits ``[B, 1, V]`` (``logits="last"``: the LM head runs on the last position
        only) or ``[B, T, V]`` (``"all"``). ``stack="encoder"``: the encoder pass of an encoder
        or encoder-decoder model (see :func:`profiler.encdec.forward`).
        """
        if self.spec.arch != "decoder":
            return encdec.forward(self, tokens, input_pos, kv_len, logits, stack)
        x = self.tok_embeddings(tokens)  # x: [B, T, h]
        if self.pos_embeddings is not None:
            x = x + self.pos_embeddings(input_pos)
        rope = None
        if self.spec.position_kind == "rotary":
            rope = (self.rope_cos[input_pos].to(x.dtype), self.rope_sin[input_pos].to(x.dtype))
        for layer in self.layers:
            x = layer(x, input_pos, kv_len, rope)
        x = self.final_norm(x)
        if logits == "last":
            x = x[:, -1:]
        return self.lm_head(x)


def check_device(device: str) -> torch.device:
    """The torch device for ``cpu`` or ``cuda``; a SpecError when CUDA is asked for and absent."""
    if device not in DEVICES:
        raise SpecError(f"unknown device {device!r}; allowed: {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"device 'cuda' is not available here (torch {torch.__version__}, "
                        "no CUDA device found); allowed: cpu")
    return torch.device(device)


def torch_dtype(dtype: str) -> torch.dtype:
    from costmodel.dtypes import canonical_dtype

    name = canonical_dtype(dtype, "dtype")
    if name not in TORCH_DTYPES:
        raise SpecError(f"the reference model runs in fp32, bf16 or fp16, not {name!r}; "
                        f"allowed: {', '.join(TORCH_DTYPES)}")
    return TORCH_DTYPES[name]


def init_weights(model: Transformer, seed: int) -> None:
    """Seeded random weights: N(0, 0.02) matrices and embeddings, zero biases, unit norms (GPT-2's init)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # deduplicated: a tied matrix is drawn once
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.02)


def build_model(spec: ModelSpec, *, dtype: str = "fp32", device: str = "cpu", seed: int = 0,
                attention: str = "sdpa", weights: str | None = None, mla: str = "transformers") -> Transformer:
    """The reference model of ``spec``: seeded random weights, or real ones from an HF folder.

    ``weights``: a folder holding ``*.safetensors`` in Hugging Face naming (see
    :func:`profiler.weights.load_hf_weights`); ``mla``: the form latent attention runs in.
    """
    check_supported(spec)
    dev, dt = check_device(device), torch_dtype(dtype)
    check_fits(spec, dt, dev)
    model = Transformer(spec, attention, mla)  # fp32 on the CPU, then moved and cast
    if weights is None:
        init_weights(model, seed)
    else:
        from .weights import load_hf_weights

        load_hf_weights(model, weights)
    return model.to(device=dev, dtype=dt).eval()


def check_fits(spec: ModelSpec, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse, with one clear line, a model whose weights cannot fit the device's memory."""
    need = spec.num_params * torch.empty((), dtype=dtype).element_size()
    if device.type == "cuda":
        have = torch.cuda.mem_get_info(device)[0]
        where = "free GPU memory"
    else:
        try:
            import os

            have = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return
        where = "available RAM"
    if need > have:
        raise SpecError(f"{spec.name} needs {need / 1e9:.1f} GB of weights in {str(dtype).split('.')[-1]}, "
                        f"more than the {have / 1e9:.1f} GB of {where}; use a smaller model "
                        "(e.g. a tiny-* preset)")
