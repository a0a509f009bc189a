"""Encoder stacks and cross-attention for the reference transformer: BERT, T5, the 2017 Transformer.

The same :class:`~profiler.model.Transformer` and :class:`~profiler.block.Block` build all three;
what differs is a field of the spec, read here:

- ``arch="encoder"`` (BERT): the model's ``layers`` are bidirectional blocks; the embedding adds
  token types (all type 0) and is layer-normed; the pooler (``tanh(W x_first + b)``) and the MLM
  head (dense, GELU, LayerNorm, the tied decoder with its bias) follow the last block.
- ``arch="encoder-decoder"``: an ``encoder`` stack (bidirectional blocks, its own position bias and
  final norm) shares the token embedding with the decoder, whose blocks add a cross-attention
  sublayer. The encoder output is kept on the model (``model.memory``) for the decoder passes.
- ``position_kind="relative"`` (T5): a learned bias per (bucket, head) added to the scores, one
  table per stack, bidirectional buckets in the encoder, causal ones in the decoder;
  ``"sinusoidal"`` (2017): a fixed table added to the embedding, scaled by sqrt(d_model).
- ``norm_position="post"``: no final norm (an identity in its place).

Module names map onto the analytic op names as :mod:`profiler.model` describes, plus::

    encoder.layers.{i}.*                                 encode phase, layer i (same op names)
    layers.{i}.cross_attention.{q,k,v,o}_proj            cross_q_proj, cross_k_proj, ...
    layers.{i}.cross_attention.core.*                    cross_attn_scores, cross_attn_values
    pooler, mlm_dense, lm_head                           pooler, mlm_dense, lm_head (BERT)

Cross-attention keys and values are projected from the encoder output in the first decoder pass
(prefill) into a preallocated cross cache ``[rows, Hkv, S_src, d]`` and read from it afterwards;
without a cache every pass projects them again (the encoder output itself is kept).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from costmodel.spec import ModelSpec

from .block import Block
from .layers import _norm

T5_MAX_DISTANCE = 128  # relative_attention_max_distance of every T5 config


def relative_position_bucket(relative: Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int = T5_MAX_DISTANCE) -> Tensor:
    """T5's bucket of each (key - query) offset: exact below num_buckets / 2 (/ 4 bidirectional),
    log-spaced up to ``max_distance``; bidirectional buckets give the sign half of the range."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).long() * num_buckets
        relative = relative.abs()
    else:
        relative = -torch.clamp(relative, max=0)
    exact = num_buckets // 2
    large = exact + (torch.log(relative.float().clamp(min=1) / exact) / math.log(max_distance / exact)
                     * (num_buckets - exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return buckets + torch.where(relative < exact, relative, large)


class PositionBias(nn.Module):
    """T5's relative position bias of one stack: ``weight: [buckets, heads]`` -> ``[1, H, T, S]``."""

    def __init__(self, spec: ModelSpec, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = spec.relative_attention_buckets  # an int: under fvcore's jit trace a shape is a CPU tensor
        self.weight = nn.Parameter(torch.zeros(spec.relative_attention_buckets, spec.num_heads))

    def forward(self, input_pos: Tensor, kv_len: int) -> Tensor:
        keys = torch.arange(kv_len, device=input_pos.device)
        buckets = relative_position_bucket(keys[None, :] - input_pos[:, None], self.bidirectional,
                                           self.num_buckets)  # [T, S]
        return self.weight[buckets].permute(2, 0, 1).unsqueeze(0)  # [1, H, T, S]


def sinusoid_table(positions: int, dim: int) -> Tensor:
    """Vaswani et al. 2017, 3.5: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)."""
    pos = torch.arange(positions, dtype=torch.float64)[:, None]
    angles = pos / 10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(positions, dim, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = angles.sin(), angles.cos()[:, : dim // 2]
    return table.float()


class Encoder(nn.Module):
    """The encoder stack of an encoder-decoder: bidirectional blocks, position bias, final norm."""

    def __init__(self, spec: ModelSpec, attention: str):
        super().__init__()
        self.position_bias = PositionBias(spec, True) if spec.relative_attention_buckets else None
        self.layers = nn.ModuleList(Block(spec, attention, causal=False) for _ in range(spec.num_encoder_layers))
        self.final_norm = _norm(spec) if spec.norm_position == "pre" else nn.Identity()

    def forward(self, x: Tensor, input_pos: Tensor) -> Tensor:
        S = x.shape[1]
        bias = None if self.position_bias is None else self.position_bias(input_pos, S)
        for layer in self.layers:
            x = layer(x, input_pos, S, None, bias)
        return self.final_norm(x)


def add_encoder_parts(model: nn.Module, spec: ModelSpec, attention: str) -> None:
    """Give ``model`` (a Transformer of a non-decoder spec) the parts its spec asks for."""
    h = spec.hidden_size
    model.memory = None  # the encoder output, [B, S_src, h], set by the encode pass
    if spec.norm_position == "post":
        model.final_norm = nn.Identity()
    if spec.position_kind == "sinusoidal":
        model.register_buffer("sinusoid", sinusoid_table(spec.max_position_embeddings, h), persistent=False)
    if spec.arch == "encoder-decoder":
        model.encoder = Encoder(spec, attention)
        model.position_bias = PositionBias(spec, False) if spec.relative_attention_buckets else None
        return
    # BERT
    model.type_embeddings = nn.Embedding(spec.type_vocab_size, h) if spec.type_vocab_size else None
    model.embedding_norm = _norm(spec) if spec.embedding_norm else None
    model.position_bias = PositionBias(spec, True) if spec.relative_attention_buckets else None
    model.pooler = nn.Linear(h, h) if spec.pooler else None
    if spec.mlm_head:
        model.mlm_dense = nn.Linear(h, h)
        model.mlm_norm = _norm(spec)
        model.lm_head = nn.Linear(h, spec.vocab_size)  # the decoder, with its bias
        if spec.tie_word_embeddings:
            model.lm_head.weight = model.tok_embeddings.weight
    else:
        model.lm_head = None


def embed(model: nn.Module, tokens: Tensor, input_pos: Tensor) -> Tensor:
    """Token embedding plus positions (learned or sinusoidal), token types and the embedding norm."""
    spec = model.spec
    x = model.tok_embeddings(tokens)  # x: [B, T, h]
    if spec.position_kind == "sinusoidal":  # the 2017 Transformer scales the embedding (3.4)
        x = x * math.sqrt(spec.hidden_size) + model.sinusoid[input_pos].to(x.dtype)
    elif model.pos_embeddings is not None:
        x = x + model.pos_embeddings(input_pos)
    if getattr(model, "type_embeddings", None) is not None:  # every token of segment 0
        x = x + model.type_embeddings(torch.zeros_like(tokens))
    if getattr(model, "embedding_norm", None) is not None:
        x = model.embedding_norm(x)
    return x


def forward(model: nn.Module, tokens: Tensor, input_pos: Tensor, kv_len: int, logits: str, stack: str):
    """One pass of an encoder or encoder-decoder model (:meth:`Transformer.forward` of its spec).

    ``stack="encoder"``: BERT returns ``(MLM logits [B, S, V] or None, pooled [B, h] or None)``; an
    encoder-decoder keeps its encoder output in ``model.memory`` and returns it. ``"decoder"``: a
    decoder pass over ``model.memory``, returning logits like a decoder-only model.
    """
    spec = model.spec
    x = embed(model, tokens, input_pos)
    if stack == "encoder" and spec.arch == "encoder-decoder":
        model.memory = model.encoder(x, input_pos)
        return model.memory
    bias = None if model.position_bias is None else model.position_bias(input_pos, kv_len)
    memory = model.memory
    if spec.arch == "encoder-decoder" and kv_len > tokens.shape[1] and model.layers[0].cross_attention.kv_cache is not None:
        memory = None  # a cached decode step (it does not start at position 0): cross K/V from the cache
    for layer in model.layers:
        x = layer(x, input_pos, kv_len, None, bias, memory)
    x = model.final_norm(x)
    if spec.arch == "encoder":
        pooled = torch.tanh(model.pooler(x[:, 0])) if model.pooler is not None else None
        out = None
        if model.lm_head is not None:
            y = model.mlm_norm(torch.nn.functional.gelu(model.mlm_dense(x)))
            out = model.lm_head(y)
        return out, pooled
    if logits == "last":
        x = x[:, -1:]
    if spec.family == "t5" and spec.tie_word_embeddings:  # T5 rescales before the tied LM head
        x = x * spec.hidden_size ** -0.5
    return model.lm_head(x)
