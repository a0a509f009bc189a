"""The reference transformer: one flat PyTorch model built from a :class:`~costmodel.ModelSpec`.

GPT-2 style (LayerNorm, GELU 4h MLP, learned positions, biases, tied LM head) and LLaMA style
(RMSNorm, SwiGLU, rotary, GQA/MQA, optional q/k/v bias as in Qwen2, head_dim != hidden/heads as in
Gemma) are the same code: every variant is a field of the spec, not a class of its own.

The module tree mirrors the analytic op names so that FlopCounterMode's per-module counts and the
timing hooks map one to one onto the rows of :mod:`costmodel.analysis`::

    tok_embeddings, pos_embeddings                       embedding, pos_embedding
    layers.{i}.attn_norm / .mlp_norm                     attn_norm / mlp_norm
    layers.{i}.attention.{q,k,v,o}_proj                  q_proj, k_proj, v_proj, o_proj (+ biases)
    layers.{i}.attention.core.attn_scores / attn_values  attn_scores, attn_values   (eager path)
    layers.{i}.attention.core.sdpa                       attn_scores + attn_values  (SDPA path)
    layers.{i}.mlp.{gate,up,down}                        mlp_gate, mlp_up, mlp_down
    final_norm, lm_head                                  final_norm, lm_head

Shapes: B batch rows, T new tokens, S keys attended, H query heads, Hkv kv heads, d head_dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from costmodel.errors import SpecError
from costmodel.spec import ModelSpec

from .choices import ATTENTION_PATHS, DEVICES, REFERENCE_DTYPES

TORCH_DTYPES = dict(zip(REFERENCE_DTYPES, (torch.float32, torch.bfloat16, torch.float16)))


class KVCache(nn.Module):
    """Preallocated keys and values, ``[rows, Hkv, max_len, d]`` each, written by :meth:`update`.

    ``rows`` is batch * beams: prefill writes the first ``batch`` rows, :meth:`expand_beams` copies
    them to their beams, :meth:`reorder` follows the beams a search step kept.
    """

    def __init__(self, rows: int, kv_heads: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (rows, kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.rows_used = 0  # largest batch written so far (a Python int: no device sync)
        self._last_positions: Tensor | None = None

    def update(self, positions: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k, v: [B, Hkv, T, d]`` at ``positions: [T]``; return all cached ``[B, Hkv, max_len, d]``."""
        b = k.shape[0]
        self.k[:b].index_copy_(2, positions, k)
        self.v[:b].index_copy_(2, positions, v)
        self.rows_used = max(self.rows_used, b)
        self._last_positions = positions
        return self.k[:b], self.v[:b]

    def expand_beams(self, batch: int, beams: int) -> None:
        """Row r of the first ``batch`` becomes rows r * beams .. r * beams + beams - 1."""
        idx = torch.arange(batch, device=self.k.device).repeat_interleave(beams)
        self.reorder(idx)

    def reorder(self, rows: Tensor) -> None:
        """Row j becomes the old row ``rows[j]`` (beam search keeps some beams twice, drops others)."""
        n = rows.shape[0]
        self.k[:n] = self.k.index_select(0, rows)
        self.v[:n] = self.v.index_select(0, rows)
        self.rows_used = max(self.rows_used, n)

    @property
    def positions_filled(self) -> int:
        """Positions written so far: last position + 1 (positions are written in order)."""
        return 0 if self._last_positions is None else int(self._last_positions[-1]) + 1

    def filled_bytes(self) -> int:
        """Bytes of the cache tensors that hold written keys and values (rows used x positions filled)."""
        n, p = self.rows_used, self.positions_filled
        return sum(t[:n, :, :p].numel() * t.element_size() for t in (self.k, self.v))

    def allocated_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v))


class RMSNorm(nn.Module):
    """x / rms(x) * weight, computed in fp32 as LLaMA does."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


def _norm(spec: ModelSpec) -> nn.Module:
    if spec.norm_kind == "layernorm":
        return nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps)
    return RMSNorm(spec.hidden_size, spec.norm_eps)


_ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "relu": F.relu,
}


class MatMul(nn.Module):
    """``a @ b`` as a module of its own, so counters and timers can name it."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.matmul(a, b)


class EagerAttention(nn.Module):
    """softmax(Q K^T / sqrt(d) + mask) V with explicit matmuls: every counter sees them.

    ``bias``: an additive score bias (T5's relative positions), ``[1, H, T, S]``; ``causal=False``:
    every query sees every key (encoders, cross-attention); ``scale``: 1/sqrt(d) unless given.
    """

    def __init__(self):
        super().__init__()
        self.attn_scores = MatMul()
        self.attn_values = MatMul()

    def forward(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, causal: bool = True,
                scale: float | None = None) -> Tensor:
        # q: [B, H, T, d]; k, v: [B, H, S, d]; the T queries are the last T of the S positions
        T, S = q.shape[2], k.shape[2]
        scores = self.attn_scores(q, k.transpose(-2, -1))  # [B, H, T, S]
        if scale is None:
            scores = scores * (1.0 / math.sqrt(q.shape[-1]))
        elif scale != 1.0:
            scores = scores * scale
        if bias is not None:
            scores = scores + bias
        if causal and T > 1:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return self.attn_values(probs, v)  # [B, H, T, d]


class SdpaAttention(nn.Module):
    """F.scaled_dot_product_attention: one fused kernel (on CPU FlopCounterMode needs a formula)."""

    def __init__(self):
        super().__init__()
        self.sdpa = Sdpa()

    def forward(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, causal: bool = True,
                scale: float | None = None) -> Tensor:
        return self.sdpa(q, k, v, bias, causal, scale)


class Sdpa(nn.Module):
    def forward(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, causal: bool = True,
                scale: float | None = None) -> Tensor:
        T, S = q.shape[2], k.shape[2]
        if bias is not None:  # T5: the position bias, with the causal mask folded in as -inf
            if causal and T > 1:
                mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
                bias = bias.masked_fill(~mask, float("-inf"))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=scale)
        if T == 1 or not causal:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        if T == S:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)  # bottom-right causal
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x * cos + rotate_half(x) * sin; x: [B, heads, T, d], cos/sin: [T, d]."""
    return x * cos + rotate_half(x) * sin


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """[B, Hkv, S, d] -> [B, Hkv * n_rep, S, d], each kv head repeated for its query heads (HF's repeat_kv)."""
    B, Hkv, S, d = x.shape
    return x[:, :, None].expand(B, Hkv, n_rep, S, d).reshape(B, Hkv * n_rep, S, d)


class Attention(nn.Module):
    def __init__(self, spec: ModelSpec, attention: str, causal: bool = True):
        super().__init__()
        h, d = spec.hidden_size, spec.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, d
        self.causal = causal  # False: an encoder's bidirectional self-attention
        self.scale = None if spec.attention_scale else 1.0  # None: 1/sqrt(d); T5 does not scale
        self.q_proj = nn.Linear(h, spec.q_size, bias=spec.attention_bias)
        self.k_proj = nn.Linear(h, spec.kv_size, bias=spec.attention_bias)
        self.v_proj = nn.Linear(h, spec.kv_size, bias=spec.attention_bias)
        self.o_proj = nn.Linear(spec.q_size, h, bias=spec.attention_out_bias)
        self.core = EagerAttention() if attention == "eager" else SdpaAttention()
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, input_pos: Tensor, kv_len: int, rope: tuple[Tensor, Tensor] | None,
                bias: Tensor | None = None) -> Tensor:
        B, T, _ = x.shape
        H, Hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, d).transpose(1, 2)  # q: [B, H, T, d]
        k = self.k_proj(x).view(B, T, Hkv, d).transpose(1, 2)  # k: [B, Hkv, T, d]
        v = self.v_proj(x).view(B, T, Hkv, d).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(input_pos, k, v)
            k, v = k[:, :, :kv_len], v[:, :, :kv_len]  # k: [B, Hkv, S, d], the filled prefix only
        if Hkv != H:  # GQA/MQA: each kv head serves H / Hkv query heads
            k, v = repeat_kv(k, H // Hkv), repeat_kv(v, H // Hkv)
        y = self.core(q, k, v, bias, self.causal, self.scale)  # [B, H, T, d]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * d))


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec, inter: int | None = None):
        """``inter``: the hidden width (default the spec's; an expert's for mixtures of experts)."""
        super().__init__()
        h, bias = spec.hidden_size, spec.mlp_bias and inter is None
        inter = spec.intermediate_size if inter is None else inter
        self.gated = spec.mlp_kind == "gated"
        if self.gated:
            self.gate = nn.Linear(h, inter, bias=bias)
        self.up = nn.Linear(h, inter, bias=bias)
        self.down = nn.Linear(inter, h, bias=bias)
        self.act = _ACTIVATIONS[spec.activation]

    def forward(self, x: Tensor) -> Tensor:
        if self.gated:
            return self.down(self.act(self.gate(x)) * self.up(x))
        return self.down(self.act(self.up(x)))


class Block(nn.Module):
    """Self-attention, (``cross``: cross-attention over the encoder output,) MLP or experts; each
    sublayer pre-norm ``x + f(norm(x))`` or post-norm ``norm(x + f(x))`` (BERT, the 2017 Transformer)."""

    def __init__(self, spec: ModelSpec, attention: str, causal: bool = True, cross: bool = False):
        super().__init__()
        self.post_norm = spec.norm_position == "post"
        self.attn_norm = _norm(spec)
        self.attention = Attention(spec, attention, causal)
        self.cross_attention = None
        if cross:
            from .encdec import CrossAttention  # built on this module's attention cores

            self.cross_attn_norm = _norm(spec)
            self.cross_attention = CrossAttention(spec, attention)
        self.mlp_norm = _norm(spec)
        if spec.num_experts:
            from .moe import MoE  # built on this module's MLP

            self.mlp = MoE(spec)
        else:
            self.mlp = MLP(spec)

    def forward(self, x: Tensor, input_pos: Tensor, kv_len: int, rope, bias: Tensor | None = None,
                memory: Tensor | None = None) -> Tensor:
        if self.post_norm:
            x = self.attn_norm(x + self.attention(x, input_pos, kv_len, rope, bias))
            if self.cross_attention is not None:
                x = self.cross_attn_norm(x + self.cross_attention(x, memory))
            return self.mlp_norm(x + self.mlp(x))
        x = x + self.attention(self.attn_norm(x), input_pos, kv_len, rope, bias)
        if self.cross_attention is not None:
            x = x + self.cross_attention(self.cross_attn_norm(x), memory)
        return x + self.mlp(self.mlp_norm(x))


# Spec fields the decoder-only path does not implement, with the value it needs (encoder stacks do).
_DECODER_ONLY = {"norm_position": "pre", "embedding_norm": False}


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
    for f, want in _DECODER_ONLY.items():
        if getattr(spec, f, want) != want:
            raise SpecError(f"{spec.name} has {f}={getattr(spec, f)!r}; the reference model builds "
                            f"decoder-only models with {f}={want!r}")


class Transformer(nn.Module):
    def __init__(self, spec: ModelSpec, attention: str = "sdpa"):
        super().__init__()
        check_supported(spec)
        if attention not in ATTENTION_PATHS:
            raise SpecError(f"unknown attention path {attention!r}; allowed: {', '.join(ATTENTION_PATHS)}")
        self.spec, self.attention = spec, attention
        self.tok_embeddings = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.pos_embeddings = (nn.Embedding(spec.max_position_embeddings, spec.hidden_size)
                               if spec.position_kind == "learned" else None)
        self.layers = nn.ModuleList(Block(spec, attention, causal=spec.arch != "encoder",
                                          cross=spec.arch == "encoder-decoder") for _ in range(spec.num_layers))
        self.final_norm = _norm(spec)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_word_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight
        if spec.arch != "decoder":  # BERT's heads; T5's and the 2017 Transformer's encoder stack
            from .encdec import add_encoder_parts

            add_encoder_parts(self, spec, attention)
        if spec.position_kind == "rotary":
            d = spec.head_dim
            inv_freq = 1.0 / spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
            angles = torch.outer(torch.arange(spec.max_position_embeddings, dtype=torch.float64), inv_freq)
            angles = torch.cat((angles, angles), dim=-1)  # [max_pos, d], halves repeated (rotate_half)
            self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
            self.register_buffer("rope_sin", angles.sin().float(), persistent=False)

    # --- caches -------------------------------------------------------------------------------
    def setup_caches(self, rows: int, max_len: int, source_len: int = 0) -> None:
        """Preallocate a KV cache of ``rows`` sequences and ``max_len`` positions in every layer;
        ``source_len``: an encoder-decoder's cross-attention cache of that many encoder positions."""
        p = self.tok_embeddings.weight
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(rows, self.spec.num_kv_heads, max_len, self.spec.head_dim,
                                               p.dtype, p.device)
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
            from .encdec import forward

            return forward(self, tokens, input_pos, kv_len, logits, stack)
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
                attention: str = "sdpa", weights: str | None = None) -> Transformer:
    """The reference model of ``spec``: seeded random weights, or real ones from an HF folder.

    ``weights``: a folder holding ``*.safetensors`` in Hugging Face naming (see
    :func:`profiler.weights.load_hf_weights`).
    """
    check_supported(spec)
    dev, dt = check_device(device), torch_dtype(dtype)
    check_fits(spec, dt, dev)
    model = Transformer(spec, attention)  # fp32 on the CPU, then moved and cast
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
        raise SpecError(f"{spec.name} needs {need / 2**30:.1f} GiB of weights in {str(dtype).split('.')[-1]}, "
                        f"more than the {have / 2**30:.1f} GiB of {where}; use a smaller model "
                        "(e.g. a tiny-* preset)")
