"""Per-step cost of a decoding strategy: what picking the next token from the logits costs.

Each step, after the LM head, every sequence (``rows``: ``batch``, or ``batch * beams`` in beam
search) turns its ``V`` logits into one token. The ops below mirror the reference implementation
in ``profiler/sampling.py`` one for one, so that a measured op has an analytic row to stand beside.
None is a matmul: their ``matmul_flops`` are 0, as FlopCounterMode counts them.

FLOPs per element are a convention (counters report 0 for all of these); ours:

====================  =====  ===================================================================
op                    FLOP   what is counted, per element of the ``n`` candidates of a row
====================  =====  ===================================================================
sampling_argmax       1      compare with the running maximum (greedy)
sampling_temperature  1      divide by the temperature (skipped when it is 1, as HF does)
sampling_softmax      5      max, subtract, exp, sum, divide (formulas.SOFTMAX_FLOPS_PER_ELEMENT)
sampling_log_softmax  5      max, subtract, exp, sum, subtract the log-sum (beam search)
sampling_beam_add     1      add the beam's running log-probability
sampling_topk         1      compare with the running k-th largest (a selection pass; the few
                             heap updates of candidates that enter the top k are not counted)
sampling_sort         ceil(log2 n)  comparisons of a comparison sort (top-p over the vocabulary)
sampling_cumsum       1      running sum of the sorted probabilities (top-p)
sampling_top_p_mask   2      subtract the own probability (exclusive sum), compare with p
sampling_draw         2      multinomial draw: running sum, compare with a uniform
====================  =====  ===================================================================

Per-row constants (the one log of a log-softmax, the uniform drawn) are not counted.

The ops of each strategy, over ``n`` candidates per row (V unless a top-k cut them to k):

- greedy:       argmax(V)
- sample:       [temperature(V)], softmax(V), draw(V)
- top_k:        [temperature(V)], topk(V -> k), softmax(k), draw(k)
- top_p:        [temperature(V)], sort(V), softmax(V), cumsum(V), top_p_mask(V), draw(V)
- top_k_top_p:  [temperature(V)], topk(V -> k), softmax(k), cumsum(k), top_p_mask(k), draw(k)
  (torch.topk returns the k best already sorted: top-p then runs over k, not V)
- beam:         log_softmax(V), beam_add(V), topk(beams * V -> beams per sequence of the batch)
"""

from __future__ import annotations

from dataclasses import dataclass

from .formulas import SOFTMAX_FLOPS_PER_ELEMENT

STRATEGIES = ("greedy", "sample", "top_k", "top_p", "top_k_top_p", "beam")
INDEX_BYTES = 8  # token ids and top-k/sort indices are int64, as torch returns them


@dataclass(frozen=True)
class SamplingOp:
    """One op of a sampling step: FLOPs and element counts (bytes are the caller's dtype's)."""

    op: str
    flops: int
    read_elements: int  # logits or probabilities read
    write_elements: int  # values written (logits dtype)
    write_indices: int = 0  # int64 indices written (INDEX_BYTES each)


def sort_comparisons(n: int) -> int:
    """Comparisons of a comparison sort of n elements, counted as n * ceil(log2 n)."""
    return n * (n - 1).bit_length()  # (n - 1).bit_length() == ceil(log2 n) for n >= 1


def _per_element(op: str, flops_per_element: int, rows: int, n: int, writes: bool = True) -> SamplingOp:
    e = rows * n
    return SamplingOp(op, flops_per_element * e, e, e if writes else 0)


def _draw(rows: int, n: int) -> SamplingOp:
    e = rows * n
    return SamplingOp("sampling_draw", 2 * e, e, 0, rows)


def _topk(rows: int, n: int, k: int) -> SamplingOp:
    """Select the k largest of n per row: 1 comparison per element; writes k values and indices."""
    return SamplingOp("sampling_topk", rows * n, rows * n, rows * k, rows * k)


def sampling_ops(strategy: str, rows: int, vocab: int, groups: int, top_k: int = 50,
                 beams: int = 1, temperature: float = 1.0) -> list[SamplingOp]:
    """Ops that pick one token for each of ``rows`` rows of ``vocab`` logits.

    ``groups``: the sequences of the batch (beam search keeps the ``beams`` best of
    ``rows / groups * vocab`` candidates per sequence; ``rows == groups`` for the first token).
    """
    r, V = rows, vocab
    if strategy == "greedy":
        return [SamplingOp("sampling_argmax", r * V, r * V, 0, r)]
    if strategy == "beam":
        # logp = log_softmax(logits); cand = score[:, None] + logp -> [groups, rows / groups * V];
        # topk(beams) over each group's candidates.
        return [_per_element("sampling_log_softmax", SOFTMAX_FLOPS_PER_ELEMENT, r, V),
                _per_element("sampling_beam_add", 1, r, V),
                SamplingOp("sampling_topk", r * V, r * V, groups * beams, groups * beams)]
    ops = [_per_element("sampling_temperature", 1, r, V)] if temperature != 1.0 else []
    if strategy == "sample":
        return ops + [_per_element("sampling_softmax", SOFTMAX_FLOPS_PER_ELEMENT, r, V), _draw(r, V)]
    if strategy in ("top_k", "top_k_top_p"):
        n = top_k
        ops.append(_topk(r, V, n))
    elif strategy == "top_p":
        n = V
        ops.append(SamplingOp("sampling_sort", r * sort_comparisons(V), r * V, r * V, r * V))
    else:
        raise ValueError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    ops.append(_per_element("sampling_softmax", SOFTMAX_FLOPS_PER_ELEMENT, r, n))
    if strategy != "top_k":
        ops += [_per_element("sampling_cumsum", 1, r, n), _per_element("sampling_top_p_mask", 2, r, n)]
    return ops + [_draw(r, n)]
