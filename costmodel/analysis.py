"""Per-op, per-layer, per-phase costs of running a :class:`ModelSpec` on a :class:`Workload`.

:func:`step_ops` gives the ops of one forward pass that feeds ``q_len`` tokens per sequence and
attends over ``kv_len`` keys; one function serves prefill (q_len = kv_len = prompt), a decode step
with a KV cache (q_len = 1, kv_len = prompt + i) and a decode step without one (q_len = kv_len =
prompt + i: the whole prefix recomputed). :func:`analyze` sums them into phases:

- ``prefill``: one pass over the prompt, yielding the first new token;
- ``decode``: steps i = 1 .. gen - 1, summed exactly (see :func:`~costmodel.formulas.sum_quadratic`),
  never one step times N.

Bytes moved per op are split into weights read, activations read and written, and KV cache read
and written; the model is an eager implementation that materialises every op's output (attention
scores included) and, with a cache, writes new keys/values into it and attends over the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from . import formulas as F
from .dtypes import nbytes
from .sampling import INDEX_BYTES, sampling_ops
from .spec import ModelSpec, Workload

PHASES = ("prefill", "decode")

_COST_FIELDS = ("flops", "matmul_flops", "weight_bytes", "act_read_bytes", "act_write_bytes",
                "kv_read_bytes", "kv_write_bytes")


@dataclass(frozen=True)
class OpCost:
    """Cost of one op: FLOPs (2 per multiply-add) and bytes moved, split by where they go."""

    op: str
    kind: str  # "matmul", "elementwise" or "memory" (data movement only)
    flops: int = 0
    matmul_flops: int = 0  # = flops for matmul ops, 0 otherwise
    weight_bytes: int = 0  # parameters read
    act_read_bytes: int = 0
    act_write_bytes: int = 0
    kv_read_bytes: int = 0
    kv_write_bytes: int = 0

    @property
    def bytes(self) -> int:
        return (self.weight_bytes + self.act_read_bytes + self.act_write_bytes
                + self.kv_read_bytes + self.kv_write_bytes)

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte moved (0 for an op that moves nothing)."""
        return self.flops / self.bytes if self.bytes else 0.0

    def costs(self) -> tuple[int, ...]:
        return tuple(getattr(self, f) for f in _COST_FIELDS)

    def with_costs(self, values) -> "OpCost":
        return OpCost(self.op, self.kind, *values)


def _matmul(op, tokens, n_in, n_out, wl: Workload, weights=True) -> OpCost:
    """x[tokens, n_in] @ W[n_in, n_out]: weights read once, input read, output written."""
    a = wl.act_dtype
    return OpCost(op, "matmul", F.linear_flops(tokens, n_in, n_out), F.linear_flops(tokens, n_in, n_out),
                  weight_bytes=nbytes(n_in * n_out, wl.weight_dtype) if weights else 0,
                  act_read_bytes=nbytes(tokens * n_in, a), act_write_bytes=nbytes(tokens * n_out, a))


def _elementwise(op, flops, elements_read, elements_written, wl: Workload, params=0) -> OpCost:
    return OpCost(op, "elementwise", flops, 0, weight_bytes=nbytes(params, wl.weight_dtype),
                  act_read_bytes=nbytes(elements_read, wl.act_dtype),
                  act_write_bytes=nbytes(elements_written, wl.act_dtype))


def _norm(op, tokens, spec: ModelSpec, wl: Workload) -> OpCost:
    n = tokens * spec.hidden_size
    return _elementwise(op, F.norm_flops(tokens, spec.hidden_size, spec.norm_kind), n, n, wl,
                        params=spec.norm_params())


def layer_ops(spec: ModelSpec, wl: Workload, batch: int, q_len: int, kv_len: int) -> list[OpCost]:
    """Ops of one transformer block for ``batch`` sequences, ``q_len`` new tokens, ``kv_len`` keys."""
    h, q, kv, d = spec.hidden_size, spec.q_size, spec.kv_size, spec.head_dim
    inter, heads = spec.intermediate_size, spec.num_heads
    a, c = wl.act_dtype, wl.kv_dtype
    t = batch * q_len  # tokens in this pass
    pairs = batch * heads * F.attended_pairs(q_len, kv_len, wl.causal)  # score elements
    # With a cache, K and V are read from it (kv dtype); without, from activations.
    kv_elems = batch * kv_len * kv
    kv_read = nbytes(kv_elems, c) if wl.kv_cache else 0
    kv_act_read = 0 if wl.kv_cache else nbytes(kv_elems, a)

    ops = [
        _norm("attn_norm", t, spec, wl),
        _matmul("q_proj", t, h, q, wl),
        _matmul("k_proj", t, h, kv, wl),
        _matmul("v_proj", t, h, kv, wl),
    ]
    if spec.attention_bias:
        n = t * (q + 2 * kv)
        ops.append(_elementwise("qkv_bias", n, n, n, wl, params=q + 2 * kv))
    if spec.position_kind == "rotary":
        n = t * (q + kv)  # q and k rotated; cos/sin tables [q_len, d] read twice (q, k)
        ops.append(OpCost("rotary", "elementwise", F.rotary_flops(t, heads + spec.num_kv_heads, d), 0,
                          act_read_bytes=nbytes(n + 2 * 2 * q_len * d, a), act_write_bytes=nbytes(n, a)))
    if wl.kv_cache:
        n = t * 2 * kv  # new keys and values copied into the cache
        ops.append(OpCost("kv_cache_update", "memory", act_read_bytes=nbytes(n, a),
                          kv_write_bytes=nbytes(n, c)))
    score_flops = F.attention_score_flops(batch, heads, q_len, kv_len, d, wl.causal)
    ops += [
        OpCost("attn_scores", "matmul", score_flops, score_flops,
               act_read_bytes=nbytes(t * q, a) + kv_act_read, act_write_bytes=nbytes(pairs, a),
               kv_read_bytes=kv_read),
        _elementwise("attn_softmax", F.attention_softmax_flops(batch, heads, q_len, kv_len, wl.causal),
                     pairs, pairs, wl),
        OpCost("attn_values", "matmul", score_flops, score_flops,
               act_read_bytes=nbytes(pairs, a) + kv_act_read, act_write_bytes=nbytes(t * q, a),
               kv_read_bytes=kv_read),
        _matmul("o_proj", t, q, h, wl),
    ]
    n = t * h
    if spec.attention_out_bias:
        ops.append(_elementwise("o_bias", n, n, n, wl, params=h))
    ops += [_elementwise("attn_residual", n, 2 * n, n, wl), _norm("mlp_norm", t, spec, wl)]
    m = t * inter
    if spec.mlp_kind == "gated":
        ops += [_matmul("mlp_gate", t, h, inter, wl), _matmul("mlp_up", t, h, inter, wl)]
        if spec.mlp_bias:
            ops.append(_elementwise("mlp_up_bias", 2 * m, 2 * m, 2 * m, wl, params=2 * inter))
        ops += [_elementwise("mlp_act", F.activation_flops(m, spec.activation), m, m, wl),
                _elementwise("mlp_mul", m, 2 * m, m, wl)]
    else:
        ops.append(_matmul("mlp_up", t, h, inter, wl))
        if spec.mlp_bias:
            ops.append(_elementwise("mlp_up_bias", m, m, m, wl, params=inter))
        ops.append(_elementwise("mlp_act", F.activation_flops(m, spec.activation), m, m, wl))
    ops.append(_matmul("mlp_down", t, inter, h, wl))
    if spec.mlp_bias:
        ops.append(_elementwise("mlp_down_bias", n, n, n, wl, params=h))
    ops.append(_elementwise("mlp_residual", n, 2 * n, n, wl))
    return ops


def model_ops(spec: ModelSpec, wl: Workload, batch: int, q_len: int, logits_positions: int
              ) -> tuple[list[OpCost], list[OpCost]]:
    """Ops outside the blocks: (before the first block, after the last one)."""
    h, t = spec.hidden_size, batch * q_len
    n = t * h
    # Embedding lookup: reads one row per token, writes the residual stream.
    before = [OpCost("embedding", "memory", weight_bytes=nbytes(n, wl.weight_dtype),
                     act_write_bytes=nbytes(n, wl.act_dtype))]
    if spec.position_kind == "learned":
        before.append(_elementwise("pos_embedding", n, n, n, wl, params=q_len * h))
    after = [_norm("final_norm", t, spec, wl), _matmul("lm_head", batch * logits_positions, h,
                                                      spec.vocab_size, wl)]
    # Picking the next token: one row of logits per sequence (and beam); see costmodel.sampling.
    after += [OpCost(s.op, "elementwise", s.flops, 0, act_read_bytes=nbytes(s.read_elements, wl.act_dtype),
                     act_write_bytes=nbytes(s.write_elements, wl.act_dtype) + INDEX_BYTES * s.write_indices)
              for s in sampling_ops(wl.strategy, batch, spec.vocab_size, wl.batch, wl.top_k, wl.beams,
                                    wl.temperature)]
    return before, after


@dataclass(frozen=True)
class StepCost:
    """Ops of one pass (or the sum of several): blocks' ops once, repeated ``num_layers`` times."""

    before: list[OpCost]
    layer: list[OpCost]
    after: list[OpCost]
    num_layers: int

    def total(self, field: str) -> int:
        per_layer = sum(getattr(o, field) for o in self.layer)
        return (sum(getattr(o, field) for o in self.before + self.after)
                + self.num_layers * per_layer)

    def rows(self):
        """(layer, op) in execution order: layer is None outside the blocks."""
        for o in self.before:
            yield None, o
        for i in range(self.num_layers):
            for o in self.layer:
                yield i, o
        for o in self.after:
            yield None, o


def step_cost(spec: ModelSpec, wl: Workload, batch: int, q_len: int, kv_len: int,
              logits_positions: int) -> StepCost:
    before, after = model_ops(spec, wl, batch, q_len, logits_positions)
    return StepCost(before, layer_ops(spec, wl, batch, q_len, kv_len), after, spec.num_layers)


def prefill_cost(spec: ModelSpec, wl: Workload) -> StepCost:
    s = wl.prompt
    return step_cost(spec, wl, wl.batch, s, s, s if wl.logits == "all" else 1)


def decode_step_cost(spec: ModelSpec, wl: Workload, i: int) -> StepCost:
    """Decode step i (1-based): one new token per sequence (and beam), attending over prompt + i keys.

    Without a KV cache the step recomputes all prompt + i positions, with logits for the last
    position (``--logits last``) or every position (``all``), as a naive generation loop does.
    """
    b, ctx = wl.batch * wl.beams, wl.prompt + i
    if wl.kv_cache:
        return step_cost(spec, wl, b, 1, ctx, 1)
    return step_cost(spec, wl, b, ctx, ctx, ctx if wl.logits == "all" else 1)


def _sum_ops(ops1, ops2, ops3, steps):
    return [o1.with_costs(F.sum_quadratic(x1, x2, x3, steps)
                          for x1, x2, x3 in zip(o1.costs(), o2.costs(), o3.costs()))
            for o1, o2, o3 in zip(ops1, ops2, ops3)]


def decode_cost(spec: ModelSpec, wl: Workload) -> StepCost:
    """All gen - 1 decode steps summed exactly, op by op (costs are quadratic in the step at most)."""
    s1, s2, s3 = (decode_step_cost(spec, wl, i) for i in (1, 2, 3))
    n = wl.decode_steps
    return StepCost(_sum_ops(s1.before, s2.before, s3.before, n), _sum_ops(s1.layer, s2.layer, s3.layer, n),
                    _sum_ops(s1.after, s2.after, s3.after, n), spec.num_layers)


@dataclass(frozen=True)
class Phase:
    name: str
    steps: int
    cost: StepCost

    @property
    def flops(self) -> int:
        return self.cost.total("flops")

    @property
    def matmul_flops(self) -> int:
        return self.cost.total("matmul_flops")

    @property
    def bytes(self) -> int:
        return sum(self.cost.total(f) for f in _COST_FIELDS[2:])

    def totals(self) -> dict:
        d = {"steps": self.steps, "flops": self.flops, "matmul_flops": self.matmul_flops,
             "bytes": self.bytes}
        d.update({f: self.cost.total(f) for f in _COST_FIELDS[2:]})
        d["arithmetic_intensity"] = self.flops / self.bytes if self.bytes else 0.0
        return d


@dataclass(frozen=True)
class Memory:
    """Bytes held: weights, the KV cache after the last step, and the prefill activation peak."""

    weights_bytes: int
    kv_cache_bytes: int
    kv_cache_bytes_per_token: int  # one position of one sequence, all layers, keys and values
    activation_peak_bytes: int

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def kv_cache_bytes_per_token(spec: ModelSpec, kv_dtype: str) -> int:
    """Keys and values of one position: 2 * num_layers * num_kv_heads * head_dim elements."""
    return nbytes(2 * spec.num_layers * spec.kv_size, kv_dtype)


def kv_cache_bytes(spec: ModelSpec, wl: Workload, positions: int | None = None) -> int:
    """Cache held for batch * beams sequences of ``positions`` (default: prompt + gen - 1)."""
    if not wl.kv_cache:
        return 0
    positions = wl.final_context if positions is None else positions
    return wl.batch * wl.beams * positions * kv_cache_bytes_per_token(spec, wl.kv_dtype)


def weight_bytes(spec: ModelSpec, weight_dtype: str) -> int:
    return nbytes(spec.num_params, weight_dtype)


def activation_peak_bytes(spec: ModelSpec, wl: Workload, prefill: StepCost) -> int:
    """Largest activation footprint of the prefill pass, estimated as the residual stream plus the
    biggest single op's inputs and outputs (an eager forward frees each intermediate after use).
    The KV cache is not included: it is reported on its own."""
    residual = nbytes(wl.batch * wl.prompt * spec.hidden_size, wl.act_dtype)
    ops = prefill.before + prefill.layer + prefill.after
    return residual + _largest(o.act_read_bytes + o.act_write_bytes for o in ops)


def _largest(values):
    """``max(values)`` that also works element-wise when the values are numpy arrays (the
    vectorized sweep in ``reports.sweep``), without importing numpy: exact on ints."""
    values = iter(values)
    best = next(values)
    for v in values:
        best = best + (v > best) * (v - best)
    return best


@dataclass(frozen=True)
class Analysis:
    """Result of :func:`analyze`: phase totals, per-op rows, memory. All counts exact ints."""

    model: ModelSpec
    workload: Workload
    prefill: Phase
    decode: Phase
    memory: Memory
    decode_alternative: Phase  # decode with the other KV-cache choice, to show the saving
    warnings: tuple[str, ...] = ()

    @property
    def phases(self) -> dict[str, Phase]:
        return {"prefill": self.prefill, "decode": self.decode}

    def rows(self):
        """One dict per (phase, layer, op): the tidy rows; they sum to the phase totals."""
        for phase in (self.prefill, self.decode):
            for layer, o in phase.cost.rows():
                row = {"phase": phase.name, "layer": layer, "op": o.op, "kind": o.kind}
                row.update({f: getattr(o, f) for f in _COST_FIELDS})
                row["bytes"] = o.bytes
                yield row

    def ops_frame(self):
        """The rows as a pandas DataFrame (pandas is imported only here)."""
        import pandas as pd

        return pd.DataFrame(list(self.rows()))

    def kv_cache_saving(self) -> dict:
        with_cache, without = ((self.decode, self.decode_alternative) if self.workload.kv_cache
                               else (self.decode_alternative, self.decode))
        return {
            "decode_flops_with_cache": with_cache.flops,
            "decode_flops_without_cache": without.flops,
            "decode_bytes_with_cache": with_cache.bytes,
            "decode_bytes_without_cache": without.bytes,
            "flops_ratio": without.flops / with_cache.flops if with_cache.flops else None,
        }

    def to_dict(self, include_ops: bool = True) -> dict:
        d = {
            "model": self.model.summary(),
            "workload": self.workload.resolved(),
            "prefill": self.prefill.totals(),
            "decode": self.decode.totals(),
            "memory": self.memory.to_dict(),
            "kv_cache_saving": self.kv_cache_saving(),
            "warnings": list(self.warnings),
        }
        if include_ops:
            d["ops"] = list(self.rows())
        return d


def analyze(spec: ModelSpec, workload: Workload | None = None, **workload_fields) -> Analysis:
    """Costs of running ``spec`` on ``workload`` (or a Workload built from keyword arguments)."""
    wl = workload if workload is not None else Workload(**workload_fields)
    warnings = tuple(wl.check_against(spec))
    pre = prefill_cost(spec, wl)
    other = replace(wl, kv_cache=not wl.kv_cache)
    memory = Memory(
        weights_bytes=weight_bytes(spec, wl.weight_dtype),
        kv_cache_bytes=kv_cache_bytes(spec, wl),
        kv_cache_bytes_per_token=kv_cache_bytes_per_token(spec, wl.kv_dtype),
        activation_peak_bytes=activation_peak_bytes(spec, wl, pre),
    )
    return Analysis(spec, wl, Phase("prefill", 1, pre), Phase("decode", wl.decode_steps, decode_cost(spec, wl)),
                    memory, Phase("decode", wl.decode_steps, decode_cost(spec, other)), warnings)
