"""Prefill, one decode step, and the generation loop (gpt-fast's shape), with a probe to instrument it.

Phases, as :mod:`costmodel.analysis` counts them:

- ``prefill``: one pass over the ``S``-token prompt of ``B`` sequences, and the first token picked;
- ``decode``: steps i = 1 .. gen - 1, step i feeding one token per row at position S + i - 1 and
  attending over S + i keys (with a KV cache), or recomputing all S + i positions (without).

Beam search: prefill runs the ``B`` sequences, the first pick fans each out to ``W`` beams, and
decode runs ``B * W`` rows, the cache rows following the beams kept at each step.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor

from .model import Transformer
from .sampling import Sampler


def prefill(model: Transformer, tokens: Tensor, logits: str = "last") -> Tensor:
    """tokens: [B, S] -> logits [B, 1 or S, V]; fills positions 0 .. S - 1 of the cache."""
    S = tokens.shape[1]
    return model(tokens, torch.arange(S, device=tokens.device), S, logits)


def decode_one_token(model: Transformer, token: Tensor, pos: int) -> Tensor:
    """token: [B, 1] at position ``pos`` (0-based), attending over pos + 1 cached keys -> [B, 1, V]."""
    return model(token, torch.arange(pos, pos + 1, device=token.device), pos + 1, "last")


def encode(model: Transformer, tokens: Tensor):
    """The encoder over ``tokens: [B, S]``, bidirectional: BERT -> (MLM logits, pooled); an
    encoder-decoder -> the encoder output ``[B, S, h]``, kept on the model for cross-attention."""
    S = tokens.shape[1]
    return model(tokens, torch.arange(S, device=tokens.device), S, stack="encoder")


def forward_no_cache(model: Transformer, seqs: Tensor, logits: str = "last") -> Tensor:
    """Recompute the whole prefix: seqs [B, T] -> logits [B, 1 or T, V]. No cache is read or written."""
    T = seqs.shape[1]
    return model(seqs, torch.arange(T, device=seqs.device), T, logits)


class Probe:
    """What the loop calls around its work; this one does nothing. Subclasses time or count."""

    @contextmanager
    def phase(self, name: str):
        yield

    def model(self, phase: str, step: int, model: Transformer, fn, *args) -> Tensor:
        """Run ``fn(model, *args)``: one forward pass (prefill, decode_one_token or forward_no_cache)."""
        return fn(model, *args)

    def sample(self, phase: str, step: int, sampler: Sampler, logits: Tensor):
        return sampler(logits)


NO_PROBE = Probe()


@torch.no_grad()
def generate(model: Transformer, prompt: Tensor, gen: int, sampler: Sampler, *, kv_cache: bool = True,
             logits: str = "last", probe: Probe = NO_PROBE, source: Tensor | None = None) -> Tensor:
    """Generate ``gen`` tokens after ``prompt: [B, S]``; returns ``[B, S + gen]`` (the best beam).

    With ``kv_cache`` the cache is preallocated for exactly the S + gen - 1 positions it will hold.
    ``source: [B, S_src]``: an encoder-decoder's input, encoded first (phase ``encode``); ``prompt``
    is then the decoder's, and the cross-attention cache holds the S_src encoder positions.
    """
    B, S = prompt.shape
    W = sampler.strategy.beams if sampler.strategy.name == "beam" else 1
    sampler.reset()
    if kv_cache:
        model.setup_caches(B * W, S + gen - 1, **({} if source is None else {"source_len": source.shape[1]}))
    else:
        model.drop_caches()
    if source is not None:
        with probe.phase("encode"):
            probe.model("encode", 0, model, encode, source)
    with probe.phase("prefill"):
        out = probe.model("prefill", 0, model, prefill, prompt, logits)
        tok, origin = probe.sample("prefill", 0, sampler, out[:, -1])
    seqs = prompt
    with probe.phase("decode"):
        for i in range(1, gen):
            if origin is not None:  # beam search: rows continue the beams kept
                seqs = seqs.index_select(0, origin)
                for cache in model.caches():
                    cache.reorder(origin)
                if source is not None and not kv_cache:  # the encoder output follows the beams too
                    model.memory = model.memory.index_select(0, origin)
            seqs = torch.cat((seqs, tok[:, None]), dim=1)  # [rows, S + i]
            if kv_cache:
                out = probe.model("decode", i, model, decode_one_token, tok[:, None], S + i - 1)
            else:
                out = probe.model("decode", i, model, forward_no_cache, seqs, logits)
            tok, origin = probe.sample("decode", i, sampler, out[:, -1])
    if origin is not None:
        seqs = seqs.index_select(0, origin)
    seqs = torch.cat((seqs, tok[:, None]), dim=1)
    if W > 1:  # the best beam of each sequence
        best = sampler.scores.view(B, W).argmax(dim=-1) + torch.arange(B, device=seqs.device) * W
        seqs = seqs.index_select(0, best)
    return seqs


def random_prompt(spec, batch: int, prompt: int, seed: int, device) -> Tensor:
    """Seeded random token ids ``[batch, prompt]``."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randint(0, spec.vocab_size, (batch, prompt), generator=g).to(device)
