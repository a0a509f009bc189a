"""Decoding strategies: pick the next token from the logits. Seeded and reproducible.

Each function mirrors, op for op, the analytic ops of :mod:`costmodel.sampling` (temperature,
softmax, top-k selection, top-p sort and cumulative sum, the draw, beam search's log-softmax,
score add and top-k). Probabilities are computed in fp32 whatever the model's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from costmodel.sampling import STRATEGIES


@dataclass(frozen=True)
class Strategy:
    """How the next token is chosen; the fields of :class:`costmodel.Workload` of the same names."""

    name: str = "greedy"  # one of costmodel.sampling.STRATEGIES
    top_k: int = 50
    top_p: float = 0.9
    temperature: float = 1.0
    beams: int = 1

    @classmethod
    def of(cls, workload) -> "Strategy":
        return cls(workload.strategy, workload.top_k, workload.top_p, workload.temperature, workload.beams)


def sample(logits: Tensor, s: Strategy, generator: torch.Generator) -> Tensor:
    """One token per row of ``logits: [rows, V]`` by greedy or random sampling: ``[rows]`` int64."""
    if s.name == "greedy":
        return logits.argmax(dim=-1)  # sampling_argmax
    if s.temperature != 1.0:
        logits = logits / s.temperature  # sampling_temperature
    if s.name in ("top_k", "top_k_top_p"):
        cand, idx = torch.topk(logits, s.top_k, dim=-1)  # sampling_topk: [rows, k], sorted descending
    elif s.name == "top_p":
        cand, idx = torch.sort(logits, dim=-1, descending=True)  # sampling_sort
    else:
        cand, idx = logits, None
    probs = torch.softmax(cand.float(), dim=-1)  # sampling_softmax
    if s.name in ("top_p", "top_k_top_p"):
        cum = probs.cumsum(dim=-1)  # sampling_cumsum
        # sampling_top_p_mask: keep the smallest prefix whose mass reaches top_p (the best one always)
        probs = probs.masked_fill(cum - probs > s.top_p, 0.0)
    choice = torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # sampling_draw
    return choice if idx is None else idx.gather(-1, choice[:, None]).squeeze(-1)


class Sampler(nn.Module):
    """The strategy as a module, so that timers and counters see it as one op named ``sampler``.

    ``forward(logits: [rows, V])`` returns ``(tokens: [rows], origin: [rows] | None)``: for beam
    search, ``origin[j]`` is the row the new row j continues (the cache and the sequences follow it).
    """

    def __init__(self, strategy: Strategy, seed: int = 0, device="cpu"):
        super().__init__()
        if strategy.name not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy.name!r}")
        self.strategy = strategy
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.scores: Tensor | None = None  # beam search: running log-probability of each row

    def forward(self, logits: Tensor) -> tuple[Tensor, Tensor | None]:
        if self.strategy.name != "beam":
            return sample(logits, self.strategy, self.generator), None
        return self._beam_step(logits)

    def _beam_step(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Keep the ``beams`` best continuations of each sequence of the batch.

        First call (after prefill): ``logits: [B, V]``, each row one live beam of score 0.
        Later calls: ``logits: [B * W, V]``; the W best of each sequence's W * V candidates survive.
        """
        W = self.strategy.beams
        rows, V = logits.shape
        if self.scores is None:
            self.scores = torch.zeros(rows, device=logits.device)
            self.batch = rows
        B, per_seq = self.batch, rows // self.batch
        logp = torch.log_softmax(logits.float(), dim=-1)  # sampling_log_softmax
        cand = (self.scores[:, None] + logp).view(B, per_seq * V)  # sampling_beam_add: [B, per_seq * V]
        if cand.shape[1] < W:  # NB: fewer candidates than beams (first step, W > V): pad with dead beams
            cand = torch.cat((cand, cand.new_full((B, W - cand.shape[1]), float("-inf"))), dim=1)
        scores, flat = cand.topk(W, dim=-1)  # sampling_topk: [B, W]
        flat = flat % (per_seq * V)  # a dead beam continues row 0 of its sequence with score -inf
        origin = flat // V + torch.arange(B, device=logits.device)[:, None] * per_seq  # [B, W]
        self.scores = scores.reshape(-1)
        return (flat % V).reshape(-1), origin.reshape(-1)

    def reset(self) -> None:
        """Forget the beams (and keep the random stream going): call before a new generation."""
        self.scores = None
