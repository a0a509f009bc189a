"""Per-rank costs of a tensor x pipeline parallel split: the one analytic model of the split.

A replica of a decoder-only model runs on ``tp * pp`` ranks; rank ``r`` is tensor-parallel rank
``r % tp`` of pipeline stage ``r // tp`` (:class:`Split`). Megatron-LM's split (Shoeybi et al.
2019, section 3), as the sharded reference model (``profiler/parallel.py``) runs it:

- q/k/v projections and the MLP gate/up are column-parallel: each rank holds ``num_heads / tp``
  query heads, ``num_kv_heads / tp`` kv heads and ``intermediate_size / tp`` MLP columns, so its
  ops are those of the *sharded spec* (:func:`shard_spec`) and its KV cache holds its kv heads;
- o_proj and MLP down are row-parallel: partial sums of the full ``[tokens, hidden]``, summed by
  one all-reduce each per layer (their bias added once, after it);
- the LM head is vocab-parallel (``vocab_size / tp`` rows per rank) and its logits all-gathered,
  so that every rank of the last stage picks the same next token;
- norms, residual adds, the embedding lookup and the pick of the token are replicated;
- stage ``s`` runs layers :func:`stage_range` (the first stages one larger when uneven); the first
  stage embeds, the last runs the final norm, the LM head and the pick; each boundary sends the
  ``[tokens, hidden]`` activations from each tp rank to its peer of the next stage; with pp > 1
  the picked token ids (int64) are broadcast from the last stage to every rank.

Communication bytes are **payloads**: per collective call, the bytes of the tensor this rank
passes in (all-reduce: the buffer reduced in place; all-gather: its own shard; send / recv: the
tensor sent or received; broadcast: the buffer). :func:`wire_bytes` gives what a ring moves per
rank for that payload (all-reduce ``2 (tp - 1) / tp`` x payload, the plan's timing model).

``costmodel.plan`` sizes memory and time from the same split (its stage layers and all-reduce
message come from here); it rounds uneven shares up where this module refuses them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .analysis import StepCost, decode_cost, decode_step_cost, kv_cache_bytes, prefill_cost
from .dtypes import nbytes
from .errors import SpecError
from .spec import ModelSpec, Workload

COLLECTIVES = ("all_reduce", "all_gather", "send", "recv", "broadcast")
TOKEN_ID_BYTES = 8  # the picked token ids travel as int64


@dataclass(frozen=True)
class Split:
    """``tp`` tensor-parallel ranks x ``pp`` pipeline stages; rank = stage * tp + tp_rank."""

    tp: int = 1
    pp: int = 1

    @property
    def world(self) -> int:
        return self.tp * self.pp

    @property
    def gpus(self) -> int:
        """GPUs of one replica: the same as ``world`` (the planning word; plan's Layout is a Split)."""
        return self.world

    def stage_of(self, rank: int) -> int:
        return rank // self.tp

    def tp_rank_of(self, rank: int) -> int:
        return rank % self.tp

    def rank(self, stage: int, tp_rank: int) -> int:
        return stage * self.tp + tp_rank

    def tp_group(self, stage: int) -> list[int]:
        return [self.rank(stage, t) for t in range(self.tp)]


def stage_layers(num_layers: int, pp: int) -> list[int]:
    """Layers per pipeline stage: as even as possible, the first stages one larger."""
    q, r = divmod(num_layers, pp)
    return [q + (s < r) for s in range(pp)]


def stage_range(num_layers: int, pp: int, stage: int) -> range:
    """The layers (0-based, global) of pipeline stage ``stage``."""
    sizes = stage_layers(num_layers, pp)
    first = sum(sizes[:stage])
    return range(first, first + sizes[stage])


def activation_bytes(spec: ModelSpec, wl: Workload, tokens: int) -> int:
    """One ``[tokens, hidden]`` activation: an all-reduce message, a pipeline hop."""
    return nbytes(tokens * spec.hidden_size, wl.act_dtype)


def check_split(spec: ModelSpec, split: Split) -> None:
    """SpecError unless the split can run exactly: a dense decoder, tp dividing the heads, kv
    heads, MLP width and vocabulary, and pp <= layers."""
    tp, pp = split.tp, split.pp
    for name, v in (("tp", tp), ("pp", pp)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpecError(f"{name} must be a positive integer, got {v!r}")
    arch = spec.arch
    if split.world > 1 and arch != "decoder":
        raise SpecError(f"tensor and pipeline parallelism supports decoder-only models; {spec.name} is "
                        f"arch {arch!r}: use tp = pp = 1")
    if split.world > 1 and spec.num_experts:
        raise SpecError(f"{spec.name} is a mixture-of-experts model; tensor and pipeline parallelism "
                        "here splits dense models only (expert parallelism is not modelled)")
    for field, n in (("num_heads", spec.num_heads), ("num_kv_heads", spec.num_kv_heads),
                     ("intermediate_size", spec.intermediate_size), ("vocab_size", spec.vocab_size)):
        if n % tp:
            allowed = [t for t in range(1, n + 1) if n % t == 0]
            raise SpecError(f"tp={tp} must divide {field} ({n}) of {spec.name}; divisors: "
                            f"{', '.join(map(str, allowed[:16]))}{' ...' if len(allowed) > 16 else ''}")
    if pp > spec.num_layers:
        raise SpecError(f"pp={pp} exceeds the {spec.num_layers} layers of {spec.name}; "
                        f"allowed pp: 1 to {spec.num_layers}")


def shard_spec(spec: ModelSpec, tp: int) -> ModelSpec:
    """The spec one tensor-parallel rank's blocks compute: heads, kv heads and MLP width / tp."""
    if tp == 1:
        return spec
    return spec.with_(num_heads=spec.num_heads // tp, num_kv_heads=spec.num_kv_heads // tp,
                      head_dim=spec.head_dim, intermediate_size=spec.intermediate_size // tp)


def _rank_view(spec: ModelSpec, split: Split, rank: int, cost_of) -> StepCost:
    """``cost_of(spec) -> StepCost`` restricted to what ``rank`` runs."""
    stage = split.stage_of(rank)
    sharded = shard_spec(spec, split.tp)
    full = cost_of(sharded)
    before = full.before if stage == 0 else []
    after = []
    if stage == split.pp - 1:
        after = full.after
        if split.tp > 1:  # vocab-parallel LM head: V / tp output columns
            head = {o.op: o for o in cost_of(sharded.with_(vocab_size=spec.vocab_size // split.tp)).after}
            after = [head["lm_head"] if o.op == "lm_head" else o for o in after]
    return StepCost(before, full.layer, after, stage_layers(spec.num_layers, split.pp)[stage])


def rank_prefill_cost(spec: ModelSpec, wl: Workload, split: Split, rank: int) -> StepCost:
    check_split(spec, split)
    return _rank_view(spec, split, rank, lambda s: prefill_cost(s, wl))


def rank_decode_step_cost(spec: ModelSpec, wl: Workload, split: Split, rank: int, i: int) -> StepCost:
    check_split(spec, split)
    return _rank_view(spec, split, rank, lambda s: decode_step_cost(s, wl, i))


def rank_decode_cost(spec: ModelSpec, wl: Workload, split: Split, rank: int) -> StepCost:
    """The gen - 1 decode steps of ``rank``, summed."""
    check_split(spec, split)
    return _rank_view(spec, split, rank, lambda s: decode_cost(s, wl))


def rank_kv_cache_bytes(spec: ModelSpec, wl: Workload, split: Split, rank: int,
                        positions: int | None = None) -> int:
    """KV cache ``rank`` holds: its kv heads, in the layers of its stage."""
    check_split(spec, split)
    layers = stage_layers(spec.num_layers, split.pp)[split.stage_of(rank)]
    return kv_cache_bytes(shard_spec(spec, split.tp).with_(num_layers=layers), wl, positions)


def pass_comm_bytes(spec: ModelSpec, wl: Workload, split: Split, rank: int, rows: int, q_len: int,
                    logit_rows: int) -> dict[str, int]:
    """Payload bytes of each collective kind ``rank`` calls in one forward pass of ``rows``
    sequences x ``q_len`` new tokens, the LM head on ``logit_rows`` rows, and the pick."""
    stage, tp, pp = split.stage_of(rank), split.tp, split.pp
    act = activation_bytes(spec, wl, rows * q_len)
    layers = stage_layers(spec.num_layers, pp)[stage]
    out = dict.fromkeys(COLLECTIVES, 0)
    if tp > 1:
        out["all_reduce"] = 2 * layers * act  # after o_proj and after MLP down
        if stage == pp - 1:
            out["all_gather"] = nbytes(logit_rows * (spec.vocab_size // tp), wl.act_dtype)
    if stage < pp - 1:
        out["send"] = act
    if stage > 0:
        out["recv"] = act
    if pp > 1:
        out["broadcast"] = rows * TOKEN_ID_BYTES
    return out


def _check_workload(wl: Workload) -> None:
    if not wl.kv_cache or wl.beams != 1:
        raise SpecError("the parallel split is modelled for decoding with a KV cache and one beam")


def rank_comm_bytes(spec: ModelSpec, wl: Workload, split: Split, rank: int, phase: str) -> dict[str, int]:
    """Payload bytes per collective kind of ``rank`` over a phase: ``prefill`` (one pass over the
    prompt) or ``decode`` (the gen - 1 steps of one token per sequence)."""
    check_split(spec, split)
    _check_workload(wl)
    if phase == "prefill":
        return pass_comm_bytes(spec, wl, split, rank, wl.batch, wl.prompt,
                               wl.batch * (wl.prompt if wl.logits == "all" else 1))
    if phase == "decode":
        one = pass_comm_bytes(spec, wl, split, rank, wl.batch, 1, wl.batch)
        return {k: v * wl.decode_steps for k, v in one.items()}
    raise SpecError(f"unknown phase {phase!r}; allowed: prefill, decode")


def wire_bytes(split: Split, kind: str, payload_bytes: int) -> int:
    """Bytes a rank sends for ``payload_bytes`` of ``kind`` under a ring (rounded up):
    all-reduce 2 (tp - 1) / tp x payload (reduce-scatter then all-gather), all-gather (tp - 1) x
    its shard, send / recv / broadcast the payload once."""
    tp = split.tp
    if kind == "all_reduce":
        return -(-2 * (tp - 1) * payload_bytes // tp)
    if kind == "all_gather":
        return (tp - 1) * payload_bytes
    if kind in ("send", "recv", "broadcast"):
        return payload_bytes
    raise SpecError(f"unknown collective {kind!r}; allowed: {', '.join(COLLECTIVES)}")
