"""One block of the reference transformer: self-attention, cross-attention (encoder-decoder), MLP or
experts, each a sublayer of :mod:`profiler.layers` (experts: :mod:`profiler.moe`)."""

from __future__ import annotations

from torch import Tensor, nn

from costmodel.spec import ModelSpec

from .layers import MLP, Attention, CrossAttention, LatentAttention, _norm
from .moe import MoE


class Block(nn.Module):
    """Self-attention, (``cross``: cross-attention over the encoder output,) MLP or experts; each
    sublayer pre-norm ``x + f(norm(x))`` or post-norm ``norm(x + f(x))`` (BERT, the 2017 Transformer);
    ``spec.parallel_block``: ``x + attn(norm(x)) + mlp(norm'(x))``, norm' the same norm when
    ``parallel_block_norms`` is 1 (Phi, Falcon-7b), a second one when 2 (GPT-NeoX).

    ``layer``: the decoder layer's index, whose ``spec.layer_types`` (sliding or full attention)
    and ``spec.mlp_layer_types`` (dense or experts) it takes; None (an encoder's layer): full
    attention, experts when the spec has them. ``spec.mla``: latent attention in ``mla``'s form
    (:class:`~profiler.layers.LatentAttention`).
    """

    def __init__(self, spec: ModelSpec, attention: str, causal: bool = True, cross: bool = False,
                 layer: int | None = None, mla: str = "transformers"):
        super().__init__()
        sliding = layer is not None and spec.layer_types[layer] == "sliding_attention"
        moe = spec.mlp_layer_types[layer] == "moe" if layer is not None else bool(spec.num_experts)
        self.post_norm = spec.norm_position == "post"
        self.parallel = spec.parallel_block
        self.attn_norm = _norm(spec)
        self.attention = (LatentAttention(spec, attention, mla) if spec.mla else
                          Attention(spec, attention, causal, spec.sliding_window if sliding else None))
        self.cross_attention = None
        if cross:
            self.cross_attn_norm = _norm(spec)
            self.cross_attention = CrossAttention(spec, attention)
        self.mlp_norm = None if self.parallel and spec.parallel_block_norms == 1 else _norm(spec)
        self.mlp = MoE(spec) if moe else MLP(spec)

    def forward(self, x: Tensor, input_pos: Tensor, kv_len: int, rope, bias: Tensor | None = None,
                memory: Tensor | None = None) -> Tensor:
        if self.parallel:  # both sublayers read the block's input; one residual add of both
            h = self.attn_norm(x)
            m = h if self.mlp_norm is None else self.mlp_norm(x)
            return x + self.attention(h, input_pos, kv_len, rope, bias) + self.mlp(m)
        if self.post_norm:
            x = self.attn_norm(x + self.attention(x, input_pos, kv_len, rope, bias))
            if self.cross_attention is not None:
                x = self.cross_attn_norm(x + self.cross_attention(x, memory))
            return self.mlp_norm(x + self.mlp(x))
        x = x + self.attention(self.attn_norm(x), input_pos, kv_len, rope, bias)
        if self.cross_attention is not None:
            x = x + self.cross_attention(self.cross_attn_norm(x), memory)
        return x + self.mlp(self.mlp_norm(x))
