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


def _matmul(op, tokens, n_in, n_out, wl: Workload, weight_copies=1) -> OpCost:
    """x[tokens, n_in] @ W[n_in, n_out]: ``weight_copies`` weight matrices read once each (1 but
    for routed experts), input read, output written."""
    a = wl.act_dtype
    return OpCost(op, "matmul", F.linear_flops(tokens, n_in, n_out), F.linear_flops(tokens, n_in, n_out),
                  weight_bytes=nbytes(weight_copies * n_in * n_out, wl.weight_dtype),
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
    heads = spec.num_heads
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
    if spec.num_experts:
        ops += moe_ops(spec, wl, t)
    else:
        ops += mlp_ops(spec, wl, t, spec.intermediate_size, "mlp", bias=spec.mlp_bias)
    ops.append(_elementwise("mlp_residual", n, 2 * n, n, wl))
    return ops


def mlp_ops(spec: ModelSpec, wl: Workload, tokens, inter: int, prefix: str, bias: bool = False,
            weight_copies=1) -> list[OpCost]:
    """A feed-forward network on ``tokens`` tokens: ``{prefix}_gate``, ``_up``, ``_act``, ``_mul``,
    ``_down`` (gated) or ``_up``, ``_act``, ``_down`` (plain). ``weight_copies``: how many distinct
    weight sets the tokens read (routed experts: the experts touched)."""
    h, t, m = spec.hidden_size, tokens, tokens * inter
    ops = []
    if spec.mlp_kind == "gated":
        ops += [_matmul(f"{prefix}_gate", t, h, inter, wl, weight_copies),
                _matmul(f"{prefix}_up", t, h, inter, wl, weight_copies)]
        if bias:
            ops.append(_elementwise(f"{prefix}_up_bias", 2 * m, 2 * m, 2 * m, wl, params=2 * inter))
        ops += [_elementwise(f"{prefix}_act", F.activation_flops(m, spec.activation), m, m, wl),
                _elementwise(f"{prefix}_mul", m, 2 * m, m, wl)]
    else:
        ops.append(_matmul(f"{prefix}_up", t, h, inter, wl, weight_copies))
        if bias:
            ops.append(_elementwise(f"{prefix}_up_bias", m, m, m, wl, params=inter))
        ops.append(_elementwise(f"{prefix}_act", F.activation_flops(m, spec.activation), m, m, wl))
    ops.append(_matmul(f"{prefix}_down", t, inter, h, wl, weight_copies))
    if bias:
        ops.append(_elementwise(f"{prefix}_down_bias", t * h, t * h, t * h, wl, params=h))
    return ops


def experts_touched(spec: ModelSpec, tokens):
    """Distinct routed experts whose weights a pass over ``tokens`` tokens reads, at most:
    min(num_experts, tokens * experts_per_token). Exact and conservative (all experts once
    tokens * k >= E); :func:`expected_experts_touched` gives the mean under uniform routing."""
    a, b = spec.num_experts, tokens * spec.experts_per_token
    return (a + b - abs(a - b)) // 2  # min(a, b), element-wise on arrays too


def expected_experts_touched(spec: ModelSpec, tokens: int) -> float:
    """Mean distinct experts read when each of ``tokens`` tokens picks k of E uniformly:
    E * (1 - (1 - k/E) ** tokens) (an expert is missed by one token with probability 1 - k/E)."""
    e, k = spec.num_experts, spec.experts_per_token
    return e * (1.0 - (1.0 - k / e) ** tokens)


def moe_ops(spec: ModelSpec, wl: Workload, tokens) -> list[OpCost]:
    """Mixture of experts (Mixtral; Qwen-MoE / DeepSeek shared experts) for ``tokens`` tokens.

    router: logits [t, E] = x @ W_r; softmax over E; top-k (and renormalise the k weights);
    experts: each token through k expert FFNs (2 * t * k * h * I_e FLOPs per matrix, however the
    tokens are spread over experts); combine: scale each expert output by its weight and add;
    shared experts: an FFN of num_shared * I_s every token takes (optionally sigmoid-gated).
    """
    h, t, e, k = spec.hidden_size, tokens, spec.num_experts, spec.experts_per_token
    a = wl.act_dtype
    topk_flops = t * e + (2 * t * k if spec.moe_renormalize else 0)  # compare; sum + divide
    ops = [
        _matmul("router", t, h, e, wl),
        _elementwise("router_softmax", F.SOFTMAX_FLOPS_PER_ELEMENT * t * e, t * e, t * e, wl),
        OpCost("router_topk", "elementwise", topk_flops, 0, act_read_bytes=nbytes(t * e, a),
               act_write_bytes=nbytes(t * k, a) + INDEX_BYTES * t * k),
    ]
    ops += mlp_ops(spec, wl, t * k, spec.moe_intermediate_size, "expert",
                   weight_copies=experts_touched(spec, t))
    ops.append(_elementwise("expert_combine", 2 * t * k * h, t * k * (h + 1), t * h, wl))
    if spec.num_shared_experts:
        ops += mlp_ops(spec, wl, t, spec.num_shared_experts * spec.shared_expert_intermediate_size,
                       "shared_expert")
        if spec.shared_expert_gate:
            # sigmoid(x @ w[h, 1]) * shared + routed: sigmoid 4 per token, mul and add per element
            ops += [_matmul("shared_expert_gate", t, h, 1, wl),
                    _elementwise("shared_expert_combine", 4 * t + 2 * t * h, 2 * t * h + t, t * h, wl)]
        else:
            ops.append(_elementwise("shared_expert_combine", t * h, 2 * t * h, t * h, wl))
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


def _first_polynomial_step(spec: ModelSpec, wl: Workload) -> int:
    """First decode step from which every cost is a polynomial (degree <= 2) in the step number.

    Always 1, but for routed experts without a KV cache: the experts read, min(E, tokens * k),
    stop growing only once the recomputed prefix has tokens * k >= E.
    """
    if not spec.num_experts or wl.kv_cache:
        return 1
    rows = wl.batch * wl.beams * spec.experts_per_token
    return max(1, -(-spec.num_experts // rows) - wl.prompt)


def decode_cost(spec: ModelSpec, wl: Workload) -> StepCost:
    """All gen - 1 decode steps summed exactly, op by op: closed form where costs are polynomial
    in the step (see :func:`~costmodel.formulas.sum_quadratic`), step by step before that."""
    n = wl.decode_steps
    first = min(_first_polynomial_step(spec, wl), n + 1)
    looped = [decode_step_cost(spec, wl, i) for i in range(1, first)]
    s1, s2, s3 = (decode_step_cost(spec, wl, i) for i in (first, first + 1, first + 2))
    parts = [_sum_ops(s1.before, s2.before, s3.before, n - first + 1),
             _sum_ops(s1.layer, s2.layer, s3.layer, n - first + 1),
             _sum_ops(s1.after, s2.after, s3.after, n - first + 1)]
    for step in looped:
        for part, ops in zip(parts, (step.before, step.layer, step.after)):
            part[:] = [o.with_costs(x + y for x, y in zip(o.costs(), p.costs())) for o, p in zip(part, ops)]
    return StepCost(*parts, spec.num_layers)


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

    def moe(self) -> dict | None:
        """Routed experts read per pass: the bound used for bytes, and the uniform-routing mean."""
        spec, wl = self.model, self.workload
        if not spec.num_experts:
            return None
        expert_bytes = nbytes(spec.num_mlp_matrices * spec.hidden_size * spec.moe_intermediate_size,
                              wl.weight_dtype)
        prefill_tokens = wl.batch * wl.prompt
        step_tokens = wl.batch * wl.beams * (1 if wl.kv_cache else wl.prompt + 1)
        d = {"num_experts": spec.num_experts, "experts_per_token": spec.experts_per_token,
             "total_params": spec.num_params, "active_params": spec.active_params,
             "expert_bytes": expert_bytes}
        for name, t in (("prefill", prefill_tokens), ("decode_step", step_tokens)):
            bound, mean = experts_touched(spec, t), expected_experts_touched(spec, t)
            d[f"{name}_tokens"] = t
            d[f"{name}_experts_read"] = bound
            d[f"{name}_expected_experts_read"] = mean
            d[f"{name}_expert_weight_bytes"] = spec.num_layers * bound * expert_bytes
            d[f"{name}_expected_expert_weight_bytes"] = spec.num_layers * mean * expert_bytes
        return d

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
        if self.model.num_experts:
            d["moe"] = self.moe()
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
