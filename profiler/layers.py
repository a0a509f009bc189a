"""The sublayers of the reference transformer: KV cache, norms, attention (self and cross), MLP.

:mod:`profiler.block` composes them into a block, :mod:`profiler.moe` builds its experts from
:class:`MLP`, :mod:`profiler.model` and :mod:`profiler.encdec` stack the blocks. Module names and
shapes are as :mod:`profiler.model` describes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from costmodel.spec import ModelSpec


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


class CrossAttention(Attention):
    """Decoder queries over the encoder output: bidirectional, keys and values from ``memory``.
    The same projections and core as :class:`Attention`; only ``forward`` differs."""

    def __init__(self, spec: ModelSpec, attention: str):
        super().__init__(spec, attention, causal=False)

    def forward(self, x: Tensor, memory: Tensor | None) -> Tensor:
        """``memory``: the encoder output to project keys and values from (and cache, with a
        cache); None: read them from the cross cache (filled by the prefill)."""
        B, T, _ = x.shape
        H, Hkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, d).transpose(1, 2)  # q: [B, H, T, d]
        cache = self.kv_cache
        if memory is None:
            k, v = cache.k[:B], cache.v[:B]  # k: [B, Hkv, S_src, d]
        else:
            S = memory.shape[1]
            k = self.k_proj(memory).view(B, S, Hkv, d).transpose(1, 2)  # k: [B, Hkv, S_src, d]
            v = self.v_proj(memory).view(B, S, Hkv, d).transpose(1, 2)
            if cache is not None:
                cache.update(torch.arange(S, device=x.device), k, v)
        if Hkv != H:
            k, v = repeat_kv(k, H // Hkv), repeat_kv(v, H // Hkv)
        y = self.core(q, k, v, None, False, self.scale)  # [B, H, T, d]
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
