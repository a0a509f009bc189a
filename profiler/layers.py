"""The sublayers of the reference transformer: KV cache, norms, attention (self, cross and latent), MLP.

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

    def __init__(self, rows: int, kv_heads: int, max_len: int, head_dim: int, dtype, device,
                 v_dim: int | None = None):
        """``v_dim``: the width of ``v`` when it differs from the keys' (:class:`LatentKVCache`)."""
        super().__init__()
        shape = (rows, kv_heads, max_len, head_dim)
        v_shape = shape if v_dim is None else (rows, kv_heads, max_len, v_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(v_shape, dtype=dtype, device=device), persistent=False)
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


class SlidingKVCache(KVCache):
    """A sliding layer's cache: the last ``window - 1`` positions, as transformers'
    ``DynamicSlidingWindowLayer`` keeps them, ``[rows, Hkv, window - 1, d]`` each, in order.

    :meth:`update` returns the held positions followed by the new ones (a decode step attends over
    min(context, window) keys: window - 1 held + its own), then keeps the last window - 1 of them.
    """

    def __init__(self, rows: int, kv_heads: int, window: int, head_dim: int, dtype, device):
        super().__init__(rows, kv_heads, window - 1, head_dim, dtype, device)
        self.held = 0  # positions held: min(positions written, window - 1)

    def update(self, positions: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write ``k, v: [B, Hkv, T, d]``; return ``[B, Hkv, held + T, d]``, the keys this pass attends over."""
        b, n, cap = k.shape[0], self.held, self.k.shape[2]
        keys = torch.cat((self.k[:b, :, :n], k), dim=2)  # [B, Hkv, n + T, d]
        values = torch.cat((self.v[:b, :, :n], v), dim=2)
        self.held = min(keys.shape[2], cap)
        if self.held:  # window 1 holds nothing
            self.k[:b, :, :self.held] = keys[:, :, -self.held:]
            self.v[:b, :, :self.held] = values[:, :, -self.held:]
        self.rows_used = max(self.rows_used, b)
        return keys, values

    @property
    def positions_filled(self) -> int:
        return self.held


class LatentKVCache(KVCache):
    """Latent attention's cache, as transformers keeps it: ``k`` holds the latent c_kv
    ``[rows, 1, max_len, kv_lora_rank]`` (after kv_a_norm), ``v`` the shared rotary key k_pe
    ``[rows, 1, max_len, qk_rope_head_dim]`` (after rotary): kv_lora_rank + qk_rope_head_dim
    elements a position, one "head" each."""

    def __init__(self, rows: int, max_len: int, kv_lora_rank: int, rope_dim: int, dtype, device):
        super().__init__(rows, 1, max_len, kv_lora_rank, dtype, device, v_dim=rope_dim)


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


def _norm(spec: ModelSpec, width: int | None = None) -> nn.Module:
    """The spec's norm over ``width`` (default hidden_size; q/k norms: head_dim, q_size, kv_size)."""
    width = spec.hidden_size if width is None else width
    if spec.norm_kind == "layernorm":
        return nn.LayerNorm(width, eps=spec.norm_eps, bias=spec.norm_bias)
    return RMSNorm(width, spec.norm_eps)


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


def attention_mask(T: int, S: int, causal: bool, window: int | None, device) -> Tensor | None:
    """``[T, S]``, True where a query sees a key, or None where every query sees every key.

    The T queries are the last T of the S positions: query t sits at S - T + t and sees keys
    j <= S - T + t (causal) and j > S - T + t - window (sliding, as transformers' mask: the last
    ``window`` positions, itself included). The scores are computed in full and then masked:
    the mask removes no FLOPs.
    """
    if not causal or (T == 1 and (window is None or S <= window)):
        return None
    mask = torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T)  # bottom-right causal
    if window is not None:
        mask &= ~torch.ones(T, S, dtype=torch.bool, device=device).tril(S - T - window)
    return mask


class EagerAttention(nn.Module):
    """softmax(Q K^T / sqrt(d) + mask) V with explicit matmuls: every counter sees them.

    ``bias``: an additive score bias (T5's relative positions), ``[1, H, T, S]``; ``causal=False``:
    every query sees every key (encoders, cross-attention); ``scale``: 1/sqrt(d) unless given;
    ``window``: a sliding layer's window (:func:`attention_mask`).
    """

    def __init__(self):
        super().__init__()
        self.attn_scores = MatMul()
        self.attn_values = MatMul()

    def forward(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, causal: bool = True,
                scale: float | None = None, window: int | None = None) -> Tensor:
        # q: [B, H, T, d]; k, v: [B, H, S, d]; the T queries are the last T of the S positions
        T, S = q.shape[2], k.shape[2]
        scores = self.attn_scores(q, k.transpose(-2, -1))  # [B, H, T, S]
        if scale is None:
            scores = scores * (1.0 / math.sqrt(q.shape[-1]))
        elif scale != 1.0:
            scores = scores * scale
        if bias is not None:
            scores = scores + bias
        mask = attention_mask(T, S, causal, window, q.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return self.attn_values(probs, v)  # [B, H, T, d]


class SdpaAttention(nn.Module):
    """F.scaled_dot_product_attention: one fused kernel (on CPU FlopCounterMode needs a formula)."""

    def __init__(self):
        super().__init__()
        self.sdpa = Sdpa()

    def forward(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, causal: bool = True,
                scale: float | None = None, window: int | None = None) -> Tensor:
        return self.sdpa(q, k, v, bias, causal, scale, window)


class Sdpa(nn.Module):
    def forward(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None = None, causal: bool = True,
                scale: float | None = None, window: int | None = None) -> Tensor:
        T, S = q.shape[2], k.shape[2]
        mask = attention_mask(T, S, causal, window, q.device)
        if bias is not None:  # T5: the position bias, with the causal mask folded in as -inf
            if mask is not None:
                bias = bias.masked_fill(~mask, float("-inf"))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=scale)
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        if T == S and window is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x * cos + rotate_half(x) * sin; x: [B, heads, T, d], cos/sin: [T, r].

    r < d (partial rotary, GPT-NeoX / Phi): the first r dims of each head rotated, the rest passed on.
    """
    r = cos.shape[-1]
    if r < x.shape[-1]:
        return torch.cat((apply_rotary(x[..., :r], cos, sin), x[..., r:]), dim=-1)
    return x * cos + rotate_half(x) * sin


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """[B, Hkv, S, d] -> [B, Hkv * n_rep, S, d], each kv head repeated for its query heads (HF's repeat_kv)."""
    B, Hkv, S, d = x.shape
    return x[:, :, None].expand(B, Hkv, n_rep, S, d).reshape(B, Hkv * n_rep, S, d)


class Attention(nn.Module):
    """Self-attention; ``window``: a sliding layer's (the keys a query sees: :func:`attention_mask`).

    ``spec.qk_norm``: a norm on q and k before rotary positions, "head" over each head's d (Qwen3),
    "full" over the whole projection (OLMo 2).
    """

    def __init__(self, spec: ModelSpec, attention: str, causal: bool = True, window: int | None = None):
        super().__init__()
        h, d = spec.hidden_size, spec.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, d
        self.causal = causal  # False: an encoder's bidirectional self-attention
        self.window = window
        self.qk_norm = spec.qk_norm
        if spec.qk_norm is not None:
            self.q_norm = _norm(spec, d if spec.qk_norm == "head" else spec.q_size)
            self.k_norm = _norm(spec, d if spec.qk_norm == "head" else spec.kv_size)
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
        q, k = self.q_proj(x), self.k_proj(x)  # q: [B, T, H * d]; k: [B, T, Hkv * d]
        if self.qk_norm == "full":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.view(B, T, H, d), k.view(B, T, Hkv, d)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # q: [B, H, T, d]; k: [B, Hkv, T, d]
        v = self.v_proj(x).view(B, T, Hkv, d).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(input_pos, k, v)
            # k: [B, Hkv, S, d], the filled prefix only (a sliding cache returns its S <= kv_len)
            k, v = k[:, :, :kv_len], v[:, :, :kv_len]
        if Hkv != H:  # GQA/MQA: each kv head serves H / Hkv query heads
            k, v = repeat_kv(k, H // Hkv), repeat_kv(v, H // Hkv)
        y = self.core(q, k, v, bias, self.causal, self.scale, self.window)  # [B, H, T, d]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * d))


class CrossAttention(Attention):
    """Decoder queries over the encoder output: bidirectional, keys and values from ``memory``.
    The same projections and core as :class:`Attention`; only ``forward`` differs."""

    def __init__(self, spec: ModelSpec, attention: str):
        super().__init__(spec, attention, causal=False)
        self.qk_norm = self.q_norm = self.k_norm = None  # q/k norms are self-attention's

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


class LatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2/V3; Liu et al. 2024, section 2.1), as HF
    ``DeepseekV3Attention`` computes it, in one of two forms (``Workload.mla``).

    q = q_b_proj(q_a_norm(q_a_proj(x))) (or q_proj(x) without q_lora_rank), [B, H, T, d_nope + d_rope];
    kv_a_proj(x) = [c_kv | k_pe]: the latent c_kv [B, 1, T, d_c] after kv_a_norm and one rotary key
    k_pe [B, 1, T, d_rope] shared by every head; rotary on q's last d_rope dims and on k_pe only.
    The cache (:class:`LatentKVCache`) holds c_kv and k_pe.

    ``form`` "transformers" (HF 5.23): every pass expands all attended latents through kv_b_proj
    into k_nope and v of every head, then attends over d_nope + d_rope with values of d_v.
    "absorbed" (serving engines), in a pass that reads positions cached before it (a decode step):
    W^UK (kv_b_proj's key rows) is applied to q_nope per head (``kv_b_absorb_q``), scores are taken
    against [c_kv | k_pe] (d_c + d_rope), the values are c_kv itself, and W^UV (its value rows)
    follows per head (``kv_b_absorb_v``); other passes expand as "transformers" does. Scores are
    scaled by 1/sqrt(d_nope + d_rope) in both.
    """

    def __init__(self, spec: ModelSpec, attention: str, form: str = "transformers"):
        super().__init__()
        h, H, r_q, r_kv = spec.hidden_size, spec.num_heads, spec.q_lora_rank, spec.kv_lora_rank
        self.n_heads, self.kv_lora_rank, self.form, self.q_lora = H, r_kv, form, r_q is not None
        self.dims = (spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim)
        dn, dr, dv = self.dims
        self.causal, self.window, self.qk_norm = True, None, None
        self.scale = (dn + dr) ** -0.5
        if r_q is None:
            self.q_proj = nn.Linear(h, H * (dn + dr), bias=False)
        else:
            self.q_a_proj = nn.Linear(h, r_q, bias=spec.attention_bias)
            self.q_a_norm = RMSNorm(r_q, spec.norm_eps)
            self.q_b_proj = nn.Linear(r_q, H * (dn + dr), bias=False)
        self.kv_a_proj = nn.Linear(h, r_kv + dr, bias=spec.attention_bias)
        self.kv_a_norm = RMSNorm(r_kv, spec.norm_eps)
        self.kv_b_proj = nn.Linear(r_kv, H * (dn + dv), bias=False)
        self.kv_b_absorb_q = MatMul()
        self.kv_b_absorb_v = MatMul()
        self.o_proj = nn.Linear(H * dv, h, bias=spec.attention_out_bias)
        self.core = EagerAttention() if attention == "eager" else SdpaAttention()
        self.kv_cache: LatentKVCache | None = None

    def forward(self, x: Tensor, input_pos: Tensor, kv_len: int, rope: tuple[Tensor, Tensor],
                bias: Tensor | None = None) -> Tensor:
        B, T, _ = x.shape
        H, r_kv, (dn, dr, dv) = self.n_heads, self.kv_lora_rank, self.dims
        q = self.q_b_proj(self.q_a_norm(self.q_a_proj(x))) if self.q_lora else self.q_proj(x)
        q_nope, q_pe = q.view(B, T, H, dn + dr).transpose(1, 2).split([dn, dr], dim=-1)  # [B, H, T, dn], [.., dr]
        c_kv, k_pe = self.kv_a_proj(x).split([r_kv, dr], dim=-1)  # [B, T, d_c], [B, T, dr]
        c_kv, k_pe = self.kv_a_norm(c_kv).unsqueeze(1), k_pe.unsqueeze(1)  # [B, 1, T, d_c], [B, 1, T, dr]
        cos, sin = rope
        q_pe, k_pe = apply_rotary(q_pe, cos, sin), apply_rotary(k_pe, cos, sin)
        absorbed = self.form == "absorbed" and self.kv_cache is not None and kv_len > T
        if self.kv_cache is not None:
            c_kv, k_pe = self.kv_cache.update(input_pos, c_kv, k_pe)
            c_kv, k_pe = c_kv[:, :, :kv_len], k_pe[:, :, :kv_len]  # [B, 1, S, d_c], [B, 1, S, dr]
        S = c_kv.shape[2]
        if absorbed:
            # per head: W^UK rows, then W^UV rows (detached: a view of a parameter under no_grad has
            # no grad_fn, which the counters' module tracker requires of a tensor that needs grad)
            w = self.kv_b_proj.weight.detach().view(H, dn + dv, r_kv)
            q = torch.cat((self.kv_b_absorb_q(q_nope, w[:, :dn]), q_pe), dim=-1)  # [B, H, T, d_c + dr]
            k = torch.cat((c_kv, k_pe), dim=-1).expand(B, H, S, r_kv + dr)
            y = self.core(q, k, c_kv.expand(B, H, S, r_kv), None, self.causal, self.scale)  # [B, H, T, d_c]
            y = self.kv_b_absorb_v(y, w[:, dn:].transpose(1, 2))  # [B, H, T, d_c] @ [H, d_c, dv]
        else:
            kv = self.kv_b_proj(c_kv[:, 0]).view(B, S, H, dn + dv).transpose(1, 2)  # [B, H, S, dn + dv]
            k_nope, v = kv.split([dn, dv], dim=-1)
            k = torch.cat((k_nope, k_pe.expand(B, H, S, dr)), dim=-1)  # [B, H, S, dn + dr]
            y = self.core(torch.cat((q_nope, q_pe), dim=-1), k, v, None, self.causal, self.scale)  # [B, H, T, dv]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * dv))


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
