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

ATTENTION_PATHS = ("eager", "sdpa")
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    """softmax(Q K^T / sqrt(d) + mask) V with explicit matmuls: every counter sees them."""

    def __init__(self):
        super().__init__()
        self.attn_scores = MatMul()
        self.attn_values = MatMul()

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # q: [B, H, T, d]; k, v: [B, H, S, d]; the T queries are the last T of the S positions
        T, S = q.shape[2], k.shape[2]
        scores = self.attn_scores(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # [B, H, T, S]
        if T > 1:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return self.attn_values(probs, v)  # [B, H, T, d]


class SdpaAttention(nn.Module):
    """F.scaled_dot_product_attention: one fused kernel (on CPU FlopCounterMode needs a formula)."""

    def __init__(self):
        super().__init__()
        self.sdpa = Sdpa()

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return self.sdpa(q, k, v)


class Sdpa(nn.Module):
    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        T, S = q.shape[2], k.shape[2]
        if T == 1:
            return F.scaled_dot_product_attention(q, k, v)
        if T == S:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)  # bottom-right causal
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


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
    def __init__(self, spec: ModelSpec, attention: str):
        super().__init__()
        h, d = spec.hidden_size, spec.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, d
        self.q_proj = nn.Linear(h, spec.q_size, bias=spec.attention_bias)
        self.k_proj = nn.Linear(h, spec.kv_size, bias=spec.attention_bias)
        self.v_proj = nn.Linear(h, spec.kv_size, bias=spec.attention_bias)
        self.o_proj = nn.Linear(spec.q_size, h, bias=spec.attention_out_bias)
        self.core = EagerAttention() if attention == "eager" else SdpaAttention()
        self.kv_cache: KVCache | None = None

    def forward(self, x: Tensor, input_pos: Tensor, kv_len: int, rope: tuple[Tensor, Tensor] | None) -> Tensor:
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
        y = self.core(q, k, v)  # [B, H, T, d]
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * d))


class MLP(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        h, inter, bias = spec.hidden_size, spec.intermediate_size, spec.mlp_bias
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
    def __init__(self, spec: ModelSpec, attention: str):
        super().__init__()
        self.attn_norm = _norm(spec)
        self.attention = Attention(spec, attention)
        self.mlp_norm = _norm(spec)
        self.mlp = MLP(spec)

    def forward(self, x: Tensor, input_pos: Tensor, kv_len: int, rope) -> Tensor:
        x = x + self.attention(self.attn_norm(x), input_pos, kv_len, rope)
        return x + self.mlp(self.mlp_norm(x))


# Spec fields of other architectures, with the value a dense pre-norm decoder has.
_DECODER_ONLY = {"arch": "decoder", "num_experts": 0, "norm_position": "pre", "type_vocab_size": 0,
                 "embedding_norm": False, "pooler": False, "mlm_head": False, "relative_attention_buckets": 0,
                 "attention_scale": True}


def check_supported(spec: ModelSpec) -> None:
    """Refuse, with one line, a spec the reference model cannot build (it builds dense decoders)."""
    if spec.family not in ("gpt2", "llama"):
        raise SpecError(f"{spec.name} is a {spec.family} model; the reference model builds decoder-only "
                        "models of families gpt2, llama")
    if getattr(spec, "num_experts", 0):
        raise SpecError(f"{spec.name} is a mixture-of-experts model; the reference model builds dense "
                        "GPT-2 and LLaMA style models only")
    for f, want in _DECODER_ONLY.items():
        if getattr(spec, f, want) != want:
            raise SpecError(f"{spec.name} has {f}={getattr(spec, f)!r}; the reference model builds dense "
                            f"pre-norm decoders ({f}={want!r})")


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
        self.layers = nn.ModuleList(Block(spec, attention) for _ in range(spec.num_layers))
        self.final_norm = _norm(spec)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_word_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight
        if spec.position_kind == "rotary":
            d = spec.head_dim
            inv_freq = 1.0 / spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
            angles = torch.outer(torch.arange(spec.max_position_embeddings, dtype=torch.float64), inv_freq)
            angles = torch.cat((angles, angles), dim=-1)  # [max_pos, d], halves repeated (rotate_half)
            self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
            self.register_buffer("rope_sin", angles.sin().float(), persistent=False)

    # --- caches -------------------------------------------------------------------------------
    def setup_caches(self, rows: int, max_len: int) -> None:
        """Preallocate a KV cache of ``rows`` sequences and ``max_len`` positions in every layer."""
        p = self.tok_embeddings.weight
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(rows, self.spec.num_kv_heads, max_len, self.spec.head_dim,
                                               p.dtype, p.device)

    def drop_caches(self) -> None:
        for layer in self.layers:
            layer.attention.kv_cache = None

    def caches(self) -> list[KVCache]:
        return [la.attention.kv_cache for la in self.layers if la.attention.kv_cache is not None]

    def kv_cache_bytes(self) -> int:
        """Bytes of cache tensors holding written keys and values, all layers."""
        return sum(c.filled_bytes() for c in self.caches())

    def kv_cache_allocated_bytes(self) -> int:
        return sum(c.allocated_bytes() for c in self.caches())

    def weight_bytes(self) -> int:
        """Bytes of the parameters, a tied embedding counted once (``parameters()`` deduplicates)."""
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- forward ------------------------------------------------------------------------------
    def forward(self, tokens: Tensor, input_pos: Tensor, kv_len: int, logits: str = "last") -> Tensor:
        """tokens: [B, T] at positions ``input_pos: [T]``, attending over ``kv_len`` keys.

        Returns logits ``[B, 1, V]`` (``logits="last"``: the LM head runs on the last position
        only) or ``[B, T, V]`` (``"all"``).
        """
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
    if device not in ("cpu", "cuda"):
        raise SpecError(f"unknown device {device!r}; allowed: cpu, cuda")
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
