"""One block of the reference transformer: self-attention, cross-attention (encoder-decoder), MLP or
experts, each a sublayer of :mod:`profiler.layers` (experts: :mod:`profiler.moe`)."""

from __future__ import annotations

from torch import Tensor, nn

from costmodel.spec import ModelSpec

from .layers import MLP, Attention, CrossAttention, _norm
from .moe import MoE


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
            self.cross_attn_norm = _norm(spec)
            self.cross_attention = CrossAttention(spec, attention)
        self.mlp_norm = _norm(spec)
        self.mlp = MoE(spec) if spec.num_experts else MLP(spec)

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
