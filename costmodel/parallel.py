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

Two additions (issue 13):

- **vocabulary padding**: tp pads a vocabulary it does not divide to the next multiple of
  ``vocab_pad_multiple x tp`` rows (Megatron-LM's rule, :func:`padded_vocab`); each rank's LM head
  holds ``V_padded / tp`` rows (zero rows in the reference, whose logits are dropped after the
  all-gather) and the plan counts them in weights, FLOPs, bytes and the all-gather;
- **expert parallelism** (``Split(ep=...)``, tp = pp = 1): each of the ep ranks holds E / ep of the
  routed experts and every other weight, and runs batch / ep of the sequences; per MoE layer it
  all-gathers the ep ranks' tokens (dispatch), routes them all, runs its experts on the pairs
  routed to them and reduce-scatters the partial outputs (combine): :func:`ep_comm_bytes`.
  The routed experts' per-rank FLOPs are the uniform 1 / ep share (:func:`ep_op`); only their sum
  over ranks is exact for a given router.

Communication bytes are **payloads**: per collective call, the bytes of the tensor this rank
passes in (all-reduce: the buffer reduced in place; all-gather and ep's dispatch: its own shard;
ep's combine (reduce-scatter): the whole buffer it passes in; send / recv: the tensor sent or
received; broadcast: the buffer). :func:`wire_bytes` gives what a ring moves per
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
# expert parallelism's two exchanges per MoE layer (ep > 1 only): dispatch, an all-gather of the
# ep ranks' tokens; combine, a reduce-scatter of the expert outputs back to their ranks
EP_COLLECTIVES = ("dispatch", "combine")
VOCAB_PAD_MULTIPLE = 128  # Megatron-LM --make-vocab-size-divisible-by default (see padded_vocab)
TOKEN_ID_BYTES = 8  # the picked token ids travel as int64
ROUNDINGS = ("exact", "ceil")  # uneven tensor-parallel shares: refused, or rounded up per GPU


@dataclass(frozen=True)
class Split:
    """``tp`` tensor-parallel ranks x ``pp`` pipeline stages (x ``ep`` expert-parallel ranks);
    rank = ep_rank * tp * pp + stage * tp + tp_rank.

    ``ep``: the experts of a mixture-of-experts model divided over ``ep`` ranks, each running
    ``batch / ep`` of the sequences through the rest of the model (data-parallel attention), the
    routed tokens exchanged per MoE layer by an all-gather (dispatch) and a reduce-scatter
    (combine): see :func:`ep_comm_bytes`. Modelled with tp = pp = 1.

    ``vocab_pad_multiple``: under tp, a vocabulary that tp does not divide is padded to the next
    multiple of ``vocab_pad_multiple x tp`` rows (:func:`padded_vocab`); 0 refuses such a split.

    The planner calls the same type a ``Layout`` (how one replica spreads over its GPUs).
    """

    tp: int = 1
    pp: int = 1
    ep: int = 1
    vocab_pad_multiple: int = 128  # Megatron-LM --make-vocab-size-divisible-by (default 128), x tp

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.ep

    @property
    def gpus(self) -> int:
        """GPUs of one replica: the same as ``world`` (the planning word)."""
        return self.world

    def stage_of(self, rank: int) -> int:
        return rank % (self.tp * self.pp) // self.tp

    def tp_rank_of(self, rank: int) -> int:
        return rank % self.tp

    def ep_rank_of(self, rank: int) -> int:
        return rank // (self.tp * self.pp)

    def rank(self, stage: int, tp_rank: int, ep_rank: int = 0) -> int:
        return ep_rank * self.tp * self.pp + stage * self.tp + tp_rank

    def tp_group(self, stage: int, ep_rank: int = 0) -> list[int]:
        return [self.rank(stage, t, ep_rank) for t in range(self.tp)]

    def ep_group(self, stage: int = 0, tp_rank: int = 0) -> list[int]:
        return [self.rank(stage, tp_rank, e) for e in range(self.ep)]


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


def collective_kinds(split: Split) -> tuple:
    """The collective kinds of ``split``: :data:`COLLECTIVES`, and :data:`EP_COLLECTIVES` when ep > 1."""
    return COLLECTIVES + (EP_COLLECTIVES if split.ep > 1 else ())


def padded_vocab(vocab_size: int, tp: int, multiple: int = VOCAB_PAD_MULTIPLE) -> int:
    """Vocabulary rows of the vocab-parallel embedding and LM head under ``tp``: ``vocab_size``
    when tp divides it (or ``multiple`` is 0), else the next multiple of ``multiple x tp``.

    Megatron-LM's rule (``_vocab_size_with_padding``, megatron/training/tokenizer/tokenizer.py:
    ``multiple = make_vocab_size_divisible_by * tensor_model_parallel_size``, default 128; the
    vocabulary rounded up to it), applied only where tp does not divide the vocabulary, so every
    split that divides it keeps its counts (Megatron pads even then: GPT-2's 50,257 -> 50,304 at
    tp 1). vLLM pads every vocabulary to a multiple of 64 (``DEFAULT_VOCAB_PADDING_SIZE``,
    vllm/model_executor/layers/vocab_parallel_embedding.py) and divides that by tp.
    GPT-2 at tp 2: 50,257 -> ceil(50,257 / 256) x 256 = 197 x 256 = 50,432 rows, 25,216 per rank.
    The padded rows are real weight rows on each rank (embedding and LM head) and real logit
    columns (LM head FLOPs, the logits all-gather); their logits are dropped before the pick.
    """
    if tp == 1 or multiple == 0 or vocab_size % tp == 0:
        return vocab_size
    m = multiple * tp
    return -(-vocab_size // m) * m


def split_vocab(spec: ModelSpec, split: Split) -> int:
    """The vocabulary rows of ``spec`` under ``split`` (:func:`padded_vocab`)."""
    return padded_vocab(spec.vocab_size, split.tp, split.vocab_pad_multiple)


def moe_layers(spec: ModelSpec, layers: range | None = None) -> int:
    """MoE blocks of ``spec`` (among ``layers``, default all)."""
    layers = range(spec.num_layers) if layers is None else layers
    return sum(len(range(max(g.first, layers.start), min(g.first + g.count, layers.stop)))
               for g in spec.layer_groups() if g.mlp == "moe")


def activation_bytes(spec: ModelSpec, wl: Workload, tokens: int) -> int:
    """One ``[tokens, hidden]`` activation: an all-reduce message, a pipeline hop."""
    return nbytes(tokens * spec.hidden_size, wl.act_dtype)


# --- Validation --------------------------------------------------------------------------------

# Spec fields tp must divide, in the groups an error names together: "exact" needs every share
# whole; "ceil" only whole heads (MLP columns, vocabulary rows and expert widths are rounded up).
_MUST_DIVIDE = {"exact": (("num_heads",), ("num_kv_heads",), ("intermediate_size",), ("vocab_size",)),
                "ceil": (("num_heads", "num_kv_heads"),)}


def _must_divide(rounding: str, pad_vocab: bool) -> tuple:
    return tuple(g for g in _MUST_DIVIDE[rounding] if not (pad_vocab and g == ("vocab_size",)))


def allowed_tp(spec: ModelSpec, rounding: str = "ceil", pad_vocab: bool = False) -> list[int]:
    """Tensor-parallel degrees whose shares of ``spec`` are whole where ``rounding`` needs them
    (``pad_vocab``: the vocabulary is padded, so it need not divide)."""
    need = [getattr(spec, f) for group in _must_divide(rounding, pad_vocab) for f in group]
    return [t for t in range(1, spec.num_heads + 1) if all(n % t == 0 for n in need)]


def check_split(spec: ModelSpec, split: Split, rounding: str = "exact") -> None:
    """SpecError unless ``split`` can run ``spec`` under ``rounding``: positive tp and pp, a
    decoder-only model, pp <= layers, and tp dividing the heads and kv heads; ``"exact"`` (the
    sharded reference) also needs tp to divide the MLP width and the vocabulary, and a dense model
    (expert parallelism is not modelled); ``"ceil"`` (the plan) rounds those shares up."""
    require_choice("rounding", rounding, ROUNDINGS)
    tp, pp, ep = split.tp, split.pp, split.ep
    for name, v in (("tp", tp), ("pp", pp), ("ep", ep)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpecError(f"{name} must be a positive integer, got {v!r}")
    m = split.vocab_pad_multiple
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise SpecError(f"vocab_pad_multiple must be a non-negative integer (0: no padding), got {m!r}")
    arch = spec.arch
    if split.world > 1 and arch != "decoder":
        raise SpecError(f"tensor and pipeline parallelism supports decoder-only models; {spec.name} is "
                        f"arch {arch!r}: use tp = pp = 1")
    if ep > 1:
        check_ep(spec, split)
    elif tp * pp > 1 and rounding == "exact" and spec.num_experts:
        raise SpecError(f"{spec.name} is a mixture-of-experts model; tensor and pipeline parallelism "
                        "here splits dense models only (split its experts with ep, tp = pp = 1)")
    for group in _must_divide(rounding, m > 0):
        if any(getattr(spec, f) % tp for f in group):
            fields = " and ".join(f"{f} ({getattr(spec, f)})" for f in group)
            allowed = allowed_tp(spec, rounding, m > 0)
            raise SpecError(f"tp={tp} must divide {fields} of {spec.name}; allowed tp: "
                            f"{', '.join(map(str, allowed[:16]))}{' ...' if len(allowed) > 16 else ''}")
    if pp > spec.num_layers:
        raise SpecError(f"pp={pp} exceeds the {spec.num_layers} layers of {spec.name}; "
                        f"allowed pp: 1 to {spec.num_layers}")


def check_ep(spec: ModelSpec, split: Split) -> None:
    """SpecError unless ``split.ep`` can divide the experts of ``spec``: a mixture-of-experts
    model with routed top-k experts, ep dividing their number, tp = pp = 1."""
    ep = split.ep
    if not spec.num_experts:
        raise SpecError(f"ep={ep} needs a mixture-of-experts model; {spec.name} is dense: use ep = 1")
    if split.tp > 1 or split.pp > 1:
        raise SpecError(f"expert parallelism is modelled with tp = pp = 1 (the ep ranks run attention "
                        f"data-parallel); got tp={split.tp}, pp={split.pp} with ep={ep}")
    if spec.moe_all_experts:
        raise SpecError(f"{spec.name} runs every expert on every token (moe_all_experts); expert "
                        "parallelism is modelled for routed top-k experts: use ep = 1")
    if spec.num_experts % ep:
        allowed = [e for e in range(1, spec.num_experts + 1) if spec.num_experts % e == 0]
        raise SpecError(f"ep={ep} must divide num_experts ({spec.num_experts}) of {spec.name}; "
                        f"allowed ep: {', '.join(map(str, allowed))}")


def check_ep_workload(wl: Workload, split: Split) -> None:
    """SpecError unless the ep ranks split the batch evenly."""
    if split.ep > 1 and wl.batch % split.ep:
        raise SpecError(f"batch={wl.batch} must be a multiple of ep={split.ep}: each expert-parallel rank "
                        "runs batch / ep of the sequences")


def ep_workload(wl: Workload, split: Split) -> Workload:
    """The workload one expert-parallel rank runs: ``batch / ep`` sequences."""
    return wl if split.ep == 1 else replace(wl, batch=wl.batch // split.ep)


def ep_op(local: OpCost, full: OpCost, ep: int, rounding: str = "ceil") -> OpCost:
    """One ep rank's op from its own pass (``local``: batch / ep sequences) and the whole batch's
    (``full``): the router ops run on every gathered token (``full``); the routed experts' ops are
    a 1 / ep share of the whole batch's (uniform routing: each rank's E / ep experts take t k / ep of
    the t k token-expert pairs; the reference's seeded router spreads them unevenly, so only the
    sum over ranks is exact); every other op is the rank's own."""
    if local.op.startswith("router"):
        return full
    if local.op.startswith("expert"):
        return replace(full, **{f: tp_share(getattr(full, f), ep, rounding, f"{full.op} {f}")
                                for f in _SHARDED_FIELDS["split"]})
    return local


def ep_view(local: StepCost, full: StepCost, ep: int, rounding: str = "ceil") -> StepCost:
    """:func:`ep_op` over every op of a pass."""
    if ep == 1:
        return local
    before, groups, after = map_ops(lambda lo, fu: ep_op(lo, fu, ep, rounding), local, full)
    return StepCost(before, after=after, groups=groups)


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
    split = _SHARDED_FIELDS[_tp_split_of(op.op)]
    if not split:
        return op
    return replace(op, **{f: tp_share(getattr(op, f), tp, rounding, f"{op.op} {f}") for f in split})


def pad_vocab_op(op: OpCost, vocab_size: int, padded: int) -> OpCost:
    """A vocabulary-parallel op (the LM head) over ``padded`` rows instead of ``vocab_size``: its
    FLOPs, weight bytes and logit writes grow by ``padded / vocab_size`` (each is linear in the
    rows; rounded up where a sub-byte count is not a whole multiple)."""
    if padded == vocab_size or op_info(op.op).tp != "vocabulary":
        return op
    return replace(op, **{f: -(-getattr(op, f) * padded // vocab_size)
                          for f in ("flops", "matmul_flops", "weight_bytes", "act_write_bytes")})


def shard_step(cost: StepCost, tp: int, rounding: str = "ceil", vocab: tuple[int, int] | None = None) -> StepCost:
    """Every op of ``cost`` cut as :func:`shard_op` (all layers kept: see :func:`stage_view`);
    ``vocab`` = (vocab_size, padded rows) pads the LM head first (:func:`padded_vocab`)."""
    if vocab is not None and vocab[0] != vocab[1]:
        b, g, a = map_ops(lambda o: pad_vocab_op(o, *vocab), cost)
        cost = StepCost(b, after=a, groups=g)
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


def _rank_view(spec: ModelSpec, wl: Workload, split: Split, rank: int, cost_of) -> StepCost:
    """``cost_of(spec, wl) -> StepCost`` restricted to what ``rank`` runs."""
    if split.ep > 1:  # tp = pp = 1: batch / ep sequences, the experts' share (ep_view)
        check_ep_workload(wl, split)
        return ep_view(cost_of(spec, ep_workload(wl, split)), cost_of(spec, wl), split.ep, "ceil")
    stage = split.stage_of(rank)
    sharded = shard_spec(spec, split.tp)
    view = stage_view(cost_of(sharded, wl), split, stage)
    if stage == split.pp - 1 and split.tp > 1:  # vocab-parallel LM head: padded V / tp output columns
        head = {o.op: o for o in cost_of(sharded.with_(vocab_size=split_vocab(spec, split) // split.tp), wl).after}
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
    return _rank_view(spec, wl, split, rank, prefill_cost)


def rank_decode_step_cost(spec: ModelSpec, wl: Workload, split: Split, rank: int, i: int) -> StepCost:
    check_split(spec, split)
    return _rank_view(spec, wl, split, rank, lambda s, w: decode_step_cost(s, w, i))


def rank_decode_cost(spec: ModelSpec, wl: Workload, split: Split, rank: int) -> StepCost:
    """The gen - 1 decode steps of ``rank``, summed."""
    check_split(spec, split)
    return _rank_view(spec, wl, split, rank, decode_cost)


def rank_kv_cache_bytes(spec: ModelSpec, wl: Workload, split: Split, rank: int,
                        positions: int | None = None) -> int:
    """KV cache ``rank`` holds: its kv heads, in the layers of its stage."""
    check_split(spec, split)
    check_ep_workload(wl, split)
    return stage_kv_cache_bytes(spec, ep_workload(wl, split), split, split.stage_of(rank), positions)


def pass_comm_bytes(spec: ModelSpec, wl: Workload, split: Split, rank: int, rows: int, q_len: int,
                    logit_rows: int) -> dict[str, int]:
    """Payload bytes of each collective kind ``rank`` calls in one forward pass of ``rows``
    sequences x ``q_len`` new tokens (the rank's own: batch / ep under ep), the LM head on
    ``logit_rows`` rows, and the pick. Under ep, per MoE layer: dispatch, an all-gather whose
    payload is the rank's own ``[rows x q_len, hidden]`` tokens; combine, a reduce-scatter whose
    payload is the ``[ep x rows x q_len, hidden]`` expert outputs it passes in (:func:`ep_comm_bytes`)."""
    stage, tp, pp = split.stage_of(rank), split.tp, split.pp
    act = activation_bytes(spec, wl, rows * q_len)
    layers = stage_layers(spec.num_layers, pp)[stage]
    out = dict.fromkeys(collective_kinds(split), 0)
    if tp > 1:
        out["all_reduce"] = 2 * layers * act  # after o_proj and after MLP down
        if stage == pp - 1:
            out["all_gather"] = logits_gather_bytes(spec, wl, split, logit_rows)
    if split.ep > 1:
        out.update(ep_comm_bytes(spec, wl, split, rows * q_len))
    if stage < pp - 1:
        out["send"] = act
    if stage > 0:
        out["recv"] = act
    if pp > 1:
        out["broadcast"] = rows * TOKEN_ID_BYTES
    return out


def logits_gather_bytes(spec: ModelSpec, wl: Workload, split: Split, logit_rows: int) -> int:
    """Payload of the LM head's logits all-gather on one rank: its ``[logit_rows, V_padded / tp]``
    shard of the vocab-parallel logits (0 without tp)."""
    if split.tp == 1:
        return 0
    return nbytes(logit_rows * (split_vocab(spec, split) // split.tp), wl.act_dtype)


def ep_comm_bytes(spec: ModelSpec, wl: Workload, split: Split, tokens: int) -> dict[str, int]:
    """Expert parallelism's payloads on one rank for one pass over its ``tokens`` own tokens.

    The scheme is an all-gather dispatch and a reduce-scatter combine (Megatron-Core's
    ``MoEAllGatherTokenDispatcher``, ``--moe-token-dispatcher-type allgather``; vLLM's
    ``AgRsAll2AllManager``, all2all backend ``allgather_reducescatter``): per MoE layer each rank
    all-gathers the ep ranks' ``[tokens, hidden]`` activations (payload: its own tokens), routes all
    of them, runs its E / ep experts on the pairs routed to them, and reduce-scatters the
    ``[ep x tokens, hidden]`` partial outputs (payload: that buffer), getting back its own tokens'
    sums. Its bytes depend on the shapes only, not on where the router sends each token (an
    all-to-all of the routed pairs would move ``(ep - 1) / ep x tokens x top_k x hidden`` under
    uniform routing, and the router's actual counts in the reference), so the reference's
    measured payloads equal these exactly."""
    n = moe_layers(spec)
    return {"dispatch": n * activation_bytes(spec, wl, tokens),
            "combine": n * activation_bytes(spec, wl, split.ep * tokens)}


def _check_workload(wl: Workload) -> None:
    if not wl.kv_cache or wl.beams != 1:
        raise SpecError("the parallel split is modelled for decoding with a KV cache and one beam")


def rank_comm_bytes(spec: ModelSpec, wl: Workload, split: Split, rank: int, phase: str) -> dict[str, int]:
    """Payload bytes per collective kind of ``rank`` over a phase: ``prefill`` (one pass over the
    prompt) or ``decode`` (the gen - 1 steps of one token per sequence)."""
    check_split(spec, split)
    _check_workload(wl)
    check_ep_workload(wl, split)
    b = wl.batch // split.ep
    if phase == "prefill":
        return pass_comm_bytes(spec, wl, split, rank, b, wl.prompt, b * (wl.prompt if wl.logits == "all" else 1))
    if phase == "decode":
        one = pass_comm_bytes(spec, wl, split, rank, b, 1, b)
        return {k: v * wl.decode_steps for k, v in one.items()}
    raise SpecError(f"unknown phase {phase!r}; allowed: prefill, decode")


def wire_bytes(split: Split, kind: str, payload_bytes: int) -> int:
    """Bytes a rank sends for ``payload_bytes`` of ``kind`` under a ring (rounded up):
    all-reduce 2 (tp - 1) / tp x payload (reduce-scatter then all-gather), all-gather (tp - 1) x
    its shard, send / recv / broadcast the payload once; ep's dispatch (ep - 1) x its tokens,
    combine (ep - 1) / ep x its buffer."""
    tp = split.tp
    if kind == "dispatch":
        return (split.ep - 1) * payload_bytes
    if kind == "combine":
        return -(-(split.ep - 1) * payload_bytes // split.ep)
    if kind == "all_reduce":
        return -(-2 * (tp - 1) * payload_bytes // tp)
    if kind == "all_gather":
        return (tp - 1) * payload_bytes
    if kind in ("send", "recv", "broadcast"):
        return payload_bytes
    raise SpecError(f"unknown collective {kind!r}; allowed: {', '.join(COLLECTIVES + EP_COLLECTIVES)}")
