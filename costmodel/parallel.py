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

Two views of the same split live here, read by ``costmodel.plan`` and the sharded reference
alike, with one validator (:func:`check_split`):

- per op (:func:`shard_op`, :func:`shard_step`, :func:`stage_view`): each op of the whole model's
  pass cut as :func:`_tp_split_of` says (column, row, split or replicated); the plan sizes one
  GPU's memory and time this way;
- per spec (:func:`shard_spec`, :func:`rank_prefill_cost` ...): a rank's blocks are those of the
  sharded spec, as the reference builds them; its figures are held against the measured ones.

Uneven shares follow a ``rounding`` mode (:data:`ROUNDINGS`): ``"exact"`` refuses them (the
reference, whose ranks hold whole heads, MLP columns and vocabulary rows; the per-spec view is
always exact); ``"ceil"`` rounds a per-GPU share up (the plan: the fullest GPU of an uneven split).
For an even split the two views agree on every cost but rotary's cos/sin reads, which the per-op
view divides (see :func:`_tp_split_of`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .analysis import OpCost, StepCost, decode_cost, decode_step_cost, kv_cache_bytes, map_ops, prefill_cost
from .dtypes import nbytes
from .errors import SpecError, require_choice
from .ops import op_info
from .spec import ModelSpec, Workload

COLLECTIVES = ("all_reduce", "all_gather", "send", "recv", "broadcast")
TOKEN_ID_BYTES = 8  # the picked token ids travel as int64
ROUNDINGS = ("exact", "ceil")  # uneven tensor-parallel shares: refused, or rounded up per GPU


@dataclass(frozen=True)
class Split:
    """``tp`` tensor-parallel ranks x ``pp`` pipeline stages; rank = stage * tp + tp_rank.

    The planner calls the same type a ``Layout`` (how one replica spreads over its GPUs).
    """

    tp: int = 1
    pp: int = 1

    @property
    def world(self) -> int:
        return self.tp * self.pp

    @property
    def gpus(self) -> int:
        """GPUs of one replica: the same as ``world`` (the planning word)."""
        return self.world

    def stage_of(self, rank: int) -> int:
        return rank // self.tp

    def tp_rank_of(self, rank: int) -> int:
        return rank % self.tp

    def rank(self, stage: int, tp_rank: int) -> int:
        return stage * self.tp + tp_rank

    def tp_group(self, stage: int) -> list[int]:
        return [self.rank(stage, t) for t in range(self.tp)]


Layout = Split  # the planning name of the same type (costmodel.Layout)


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


# --- Validation --------------------------------------------------------------------------------

# Spec fields tp must divide, in the groups an error names together: "exact" needs every share
# whole; "ceil" only whole heads (MLP columns, vocabulary rows and expert widths are rounded up).
_MUST_DIVIDE = {"exact": (("num_heads",), ("num_kv_heads",), ("intermediate_size",), ("vocab_size",)),
                "ceil": (("num_heads", "num_kv_heads"),)}


def allowed_tp(spec: ModelSpec, rounding: str = "ceil") -> list[int]:
    """Tensor-parallel degrees whose shares of ``spec`` are whole where ``rounding`` needs them."""
    need = [getattr(spec, f) for group in _MUST_DIVIDE[rounding] for f in group]
    return [t for t in range(1, spec.num_heads + 1) if all(n % t == 0 for n in need)]


def check_split(spec: ModelSpec, split: Split, rounding: str = "exact") -> None:
    """SpecError unless ``split`` can run ``spec`` under ``rounding``: positive tp and pp, a
    decoder-only model, pp <= layers, and tp dividing the heads and kv heads; ``"exact"`` (the
    sharded reference) also needs tp to divide the MLP width and the vocabulary, and a dense model
    (expert parallelism is not modelled); ``"ceil"`` (the plan) rounds those shares up."""
    require_choice("rounding", rounding, ROUNDINGS)
    tp, pp = split.tp, split.pp
    for name, v in (("tp", tp), ("pp", pp)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpecError(f"{name} must be a positive integer, got {v!r}")
    arch = spec.arch
    if split.world > 1 and arch != "decoder":
        raise SpecError(f"tensor and pipeline parallelism supports decoder-only models; {spec.name} is "
                        f"arch {arch!r}: use tp = pp = 1")
    if split.world > 1 and rounding == "exact" and spec.num_experts:
        raise SpecError(f"{spec.name} is a mixture-of-experts model; tensor and pipeline parallelism "
                        "here splits dense models only (expert parallelism is not modelled)")
    for group in _MUST_DIVIDE[rounding]:
        if any(getattr(spec, f) % tp for f in group):
            fields = " and ".join(f"{f} ({getattr(spec, f)})" for f in group)
            allowed = allowed_tp(spec, rounding)
            raise SpecError(f"tp={tp} must divide {fields} of {spec.name}; allowed tp: "
                            f"{', '.join(map(str, allowed[:16]))}{' ...' if len(allowed) > 16 else ''}")
    if pp > spec.num_layers:
        raise SpecError(f"pp={pp} exceeds the {spec.num_layers} layers of {spec.name}; "
                        f"allowed pp: 1 to {spec.num_layers}")


# --- Per op: one GPU's share of each op of the whole model's pass ---------------------------------

# Which cost fields each kind of op divides over the tp GPUs (the others stay whole).
_SHARDED_FIELDS = {
    # column-parallel matmuls read the whole (replicated) input and write their slice
    "column": ("flops", "matmul_flops", "weight_bytes", "act_write_bytes", "kv_read_bytes", "kv_write_bytes"),
    # row-parallel ones read a slice and write full-size partial sums (then all-reduced)
    "row": ("flops", "matmul_flops", "weight_bytes", "act_read_bytes", "kv_read_bytes", "kv_write_bytes"),
    # ops inside the split region divide entirely
    "split": ("flops", "matmul_flops", "weight_bytes", "act_read_bytes", "act_write_bytes",
              "kv_read_bytes", "kv_write_bytes"),
    "replicated": (),
}


def _tp_split_of(op_name: str) -> str:
    """How tensor parallelism cuts ``op_name``: "column", "row", "split" or "replicated", as the op
    registry (:mod:`costmodel.ops`) says; a vocabulary-parallel op (the LM head) cuts as "column".
    An unregistered name fails loudly (:class:`~costmodel.ops.UnknownOpError`).

    NB: rotary counts as "split", so its cos/sin table reads divide by tp too, although every GPU
    reads the whole tables (the per-spec view counts them whole).
    """
    tp = op_info(op_name).tp
    return "column" if tp == "vocabulary" else tp


def tp_share(value: int, tp: int, rounding: str = "ceil", what: str = "share") -> int:
    """One GPU's share of ``value`` split over ``tp``: an uneven one rounded up (``"ceil"``) or
    refused (``"exact"``)."""
    require_choice("rounding", rounding, ROUNDINGS)
    if rounding == "exact" and value % tp:
        raise SpecError(f"{what} = {value} does not split evenly over tp={tp} under rounding 'exact'; "
                        "rounding 'ceil' rounds uneven shares up")
    return -(-value // tp)


def shard_op(op: OpCost, tp: int, rounding: str = "ceil") -> OpCost:
    """One GPU's share of ``op`` under tensor parallelism (:func:`_tp_split_of` says which fields
    divide; ``rounding`` says what an uneven share becomes)."""
    if tp == 1:
        return op
    how = _tp_split_of(op.op)
    split = _SHARDED_FIELDS[how]
    if not split:
        return op
    return replace(op, **{f: tp_share(getattr(op, f), tp, rounding, f"{op.op} {f}") for f in split},
                   shape=_shard_shape(op.shape, how, tp))


def _shard_shape(shape, how: str, tp: int):
    """One GPU's matmul shape (batch_count, m, n, k, ...): a column split divides n, a row split k,
    a split inside the region (attention: its heads) the batch count; each share rounded up."""
    if shape is None:
        return None
    b, m, n, k, *rest = shape
    b, n, k = (-(-b // tp) if how == "split" else b, -(-n // tp) if how == "column" else n,
               -(-k // tp) if how == "row" else k)
    return (b, m, n, k, *rest)


def shard_step(cost: StepCost, tp: int, rounding: str = "ceil") -> StepCost:
    """Every op of ``cost`` cut as :func:`shard_op` (all layers kept: see :func:`stage_view`)."""
    before, groups, after = map_ops(lambda o: shard_op(o, tp, rounding), cost)
    return StepCost(before, after=after, groups=groups)


def stage_groups(groups, layers: range) -> tuple:
    """The parts of ``groups`` ((LayerGroup, items), ...) inside ``layers``: a pipeline stage's
    blocks cut across the groups, each part keeping its real layer indices."""
    out = []
    for g, items in groups:
        first, stop = max(g.first, layers.start), min(g.first + g.count, layers.stop)
        if first < stop:
            out.append((replace(g, first=first, count=stop - first), items))
    return tuple(out)


def stage_view(cost: StepCost, split: Split, stage: int) -> StepCost:
    """What pipeline stage ``stage`` runs of ``cost``: the ops before the blocks on the first
    stage, those after them on the last, and the blocks of its layers (:func:`stage_range`)."""
    return StepCost(cost.before if stage == 0 else [], after=cost.after if stage == split.pp - 1 else [],
                    groups=stage_groups(cost.groups, stage_range(cost.num_layers, split.pp, stage)))


# --- Per spec: the blocks one rank of the sharded reference builds -------------------------------

def shard_spec(spec: ModelSpec, tp: int) -> ModelSpec:
    """The spec one tensor-parallel rank's blocks compute: heads, kv heads and MLP width / tp
    (exact: call :func:`check_split` first)."""
    if tp == 1:
        return spec
    return spec.with_(num_heads=spec.num_heads // tp, num_kv_heads=spec.num_kv_heads // tp,
                      head_dim=spec.head_dim, intermediate_size=spec.intermediate_size // tp)


def _rank_view(spec: ModelSpec, split: Split, rank: int, cost_of) -> StepCost:
    """``cost_of(spec) -> StepCost`` restricted to what ``rank`` runs."""
    stage = split.stage_of(rank)
    sharded = shard_spec(spec, split.tp)
    view = stage_view(cost_of(sharded), split, stage)
    if stage == split.pp - 1 and split.tp > 1:  # vocab-parallel LM head: V / tp output columns
        head = {o.op: o for o in cost_of(sharded.with_(vocab_size=spec.vocab_size // split.tp)).after}
        view = replace(view, after=[head["lm_head"] if o.op == "lm_head" else o for o in view.after])
    return view


def stage_kv_cache_bytes(spec: ModelSpec, wl: Workload, split: Split, stage: int,
                         positions: int | None = None) -> int:
    """KV cache one tensor-parallel GPU of ``stage`` holds: its kv heads (tp divides them in
    either rounding), in the layers of its stage."""
    tp = split.tp
    stage_spec = spec.with_(num_heads=spec.num_heads // tp, num_kv_heads=spec.num_kv_heads // tp,
                            head_dim=spec.head_dim)
    return kv_cache_bytes(stage_spec, wl, positions, stage_range(spec.num_layers, split.pp, stage))


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
    return stage_kv_cache_bytes(spec, wl, split, split.stage_of(rank), positions)


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
