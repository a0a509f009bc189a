"""Per-op, per-layer, per-phase costs of running a :class:`ModelSpec` on a :class:`Workload`.

:func:`step_ops` gives the ops of one forward pass that feeds ``q_len`` tokens per sequence and
attends over ``kv_len`` keys; one function serves prefill (q_len = kv_len = prompt), a decode step
with a KV cache (q_len = 1, kv_len = prompt + i) and a decode step without one (q_len = kv_len =
prompt + i: the whole prefix recomputed). :func:`analyze` sums them into phases:

- ``prefill``: one pass over the prompt, yielding the first new token;
- ``decode``: steps i = 1 .. gen - 1, summed exactly (see :func:`~costmodel.formulas.sum_quadratic`),
  never one step times N.

Layers may differ: a :class:`StepCost` holds groups of identical blocks
(:meth:`~costmodel.spec.ModelSpec.layer_groups`). A sliding-window layer computes as transformers'
eager attention does: a prefill scores the whole prompt x prompt matrix (the mask removes no
FLOPs), a decode step with a cache attends over min(prompt + i, W) keys, and the cache keeps the
last W - 1 positions; the decode sum splits at the step where the window fills (:func:`window_split`).

Bytes moved per op are split into weights read, activations read and written, and KV cache read
and written; the model is an eager implementation that materialises every op's output (attention
scores included) and, with a cache, writes new keys/values into it and attends over the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from . import formulas as F
from . import quant as Q
from . import stepsum
from .dtypes import nbytes
from .sampling import INDEX_BYTES, sampling_ops
from .spec import LayerGroup, ModelSpec, Workload, decoder_start

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
    # Matmuls: (batch_count, m, n, k, varying): C[m, n] = A[m, k] @ B[k, n], batch_count times; varying
    # names the dimensions ("m", "n", "k") that grow with the decode step (the attended keys; the token
    # rows without a KV cache), which the shape-aware rates do not quantise (costmodel.shapes).
    # None for other ops. Not a cost: not compared, not in the JSON rows.
    shape: tuple | None = field(default=None, compare=False)
    # Score and value matmuls of grouped-query attention (GQA/MQA): the query heads each cached kv
    # head serves, which the eager reference repeats K or V for (``repeat_kv``, a fresh tensor
    # ``kv_repeat`` x the cache bytes read) before the matmul; 1 otherwise. The counted bytes read
    # the cache once (what a GQA kernel reads); the profile's curves price the eager repeat
    # (costmodel.curves). Not a cost: not compared, not in the JSON rows.
    kv_repeat: int = field(default=1, compare=False)

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
        return OpCost(self.op, self.kind, *values, shape=self.shape, kv_repeat=self.kv_repeat)


def _rows_vary(wl: Workload) -> str:
    """The ``varying`` mark of a matmul's token rows: "m" without a KV cache (a decode step then
    recomputes every position, so the rows grow with the step), "" with one."""
    return "" if wl.kv_cache else "m"


def _matmul(op, tokens, n_in, n_out, wl: Workload, weight_copies=1, varying: str | None = None) -> OpCost:
    """x[tokens, n_in] @ W[n_in, n_out]: ``weight_copies`` weight matrices read once each (1 but
    for routed experts), input read, output written. Shape (1, tokens, n_out, n_in); ``varying``
    (default :func:`_rows_vary`): see :attr:`OpCost.shape`. Routed experts count as one GEMM over
    all their token rows (a grouped GEMM's tiles are per expert: an approximation).

    A quantised op (``wl.quant``, :data:`costmodel.quant.QUANTISED_OPS`) reads its packed weight with
    its scales and zeros (:func:`costmodel.quant.matrix_bytes`); an fp8 (W8A8) one reads its input in
    fp8 with its scale(s), quantised by the ``{op}_quant`` op before it (:func:`_with_input_quant`)."""
    a = wl.act_dtype
    scheme = Q.scheme_of(wl.quant) if op in Q.QUANTISED_OPS else None
    if scheme is None:
        weights, x = nbytes(weight_copies * n_in * n_out, wl.weight_dtype), nbytes(tokens * n_in, a)
    else:
        weights = weight_copies * Q.matrix_bytes(scheme, n_in, n_out)
        x = Q.matmul_input_bytes(scheme, tokens, n_in) if scheme.compute == "fp8" else nbytes(tokens * n_in, a)
    return OpCost(op, "matmul", F.linear_flops(tokens, n_in, n_out), F.linear_flops(tokens, n_in, n_out),
                  weight_bytes=weights, act_read_bytes=x, act_write_bytes=nbytes(tokens * n_out, a),
                  shape=(1, tokens, n_out, n_in, _rows_vary(wl) if varying is None else varying))


def _with_input_quant(spec: ModelSpec, wl: Workload, ops: list[OpCost]) -> list[OpCost]:
    """``ops`` with, for an fp8 (W8A8) scheme, ``{op}_quant`` before each quantised matmul: its input
    quantised to fp8 with dynamic scales and its output rescaled (:func:`costmodel.quant.input_quant_cost`).
    The matmul's rows are its FLOPs / (2 n_in n_out) (routed experts: tokens x k), exact."""
    scheme = Q.scheme_of(wl.quant)
    if scheme is None or scheme.compute != "fp8":
        return ops
    shapes = {}
    for mlp in ("dense", "moe") if spec.num_experts else ("dense",):
        shapes.update({op: (n_in, n_out) for op, _, n_in, n_out in Q.layer_matrices(spec, mlp, cross=True)})
    out = []
    for o in ops:
        if o.op in Q.QUANTISED_OPS:
            n_in, n_out = shapes[o.op]
            rows = o.flops // (2 * n_in * n_out)
            flops, read, write = Q.input_quant_cost(scheme, rows, n_in, n_out, wl.act_dtype)
            out.append(OpCost(f"{o.op}_quant", "elementwise", flops, 0, act_read_bytes=read, act_write_bytes=write))
        out.append(o)
    return out


def attention_matmul_shapes(bh, q_len, kv_len, dqk, dv, cached_keys: bool, wl: Workload) -> tuple:
    """Shapes of the score and value matmuls of ``bh`` (batch x heads) attention problems: scores
    [q_len, dqk] @ [dqk, kv_len], values [q_len, kv_len] @ [kv_len, dv]. The key length grows with
    the decode step when ``cached_keys`` (self-attention: the context; cross-attention's encoder
    keys do not), the query rows without a KV cache."""
    q = _rows_vary(wl)
    return ((bh, q_len, kv_len, dqk, q + ("n" if cached_keys else "")),
            (bh, q_len, dv, kv_len, q + ("k" if cached_keys else "")))


def _elementwise(op, flops, elements_read, elements_written, wl: Workload, params=0) -> OpCost:
    return OpCost(op, "elementwise", flops, 0, weight_bytes=nbytes(params, wl.weight_dtype),
                  act_read_bytes=nbytes(elements_read, wl.act_dtype),
                  act_write_bytes=nbytes(elements_written, wl.act_dtype))


def _norm(op, tokens, spec: ModelSpec, wl: Workload, width: int | None = None,
          params: int | None = None) -> OpCost:
    """A norm over ``width`` (default hidden_size) on ``tokens`` rows; ``params``: its weights
    (default one norm of ``width``)."""
    width = spec.hidden_size if width is None else width
    n = tokens * width
    return _elementwise(op, F.norm_flops(tokens, width, spec.norm_kind, spec.norm_bias), n, n, wl,
                        params=spec.norm_params(width) if params is None else params)


def _qk_norms(spec: ModelSpec, wl: Workload, q_tokens, kv_tokens) -> list[OpCost]:
    """q_norm, k_norm on the projected q [q_tokens, q_size] and k [kv_tokens, kv_size]: per head
    over head_dim ("head": one weight of head_dim; "per_head": a weight per head, Cohere) or over
    the whole width ("full", OLMo 2). Norm FLOPs are per element, so the grouping changes none."""
    if spec.qk_norm == "head":
        q_params = k_params = spec.norm_params(spec.head_dim)
    else:
        q_params, k_params = spec.norm_params(spec.q_size), spec.norm_params(spec.kv_size)
    return [_norm("q_norm", q_tokens, spec, wl, spec.q_size, q_params),
            _norm("k_norm", kv_tokens, spec, wl, spec.kv_size, k_params)]


def attention_ops(spec: ModelSpec, wl: Workload, batch, q_len, kv_len, *, prefix: str = "",
                  new_kv_tokens=None, cached: bool = True, causal: bool = False,
                  rotary: bool = False, position_bias: bool = False) -> list[OpCost]:
    """Attention of ``batch * q_len`` queries over ``kv_len`` keys per sequence, with its projections.

    Self-attention (``prefix=""``) projects keys and values for the new tokens; cross-attention
    (``prefix="cross_"``) projects them from the ``new_kv_tokens`` encoder positions once (prefill),
    and with a cache reads them from it afterwards (``new_kv_tokens=0``: no projection rows).
    ``cached``: new keys and values are written to a cache and attention reads K and V from it (kv
    dtype); otherwise they are read as activations.
    """
    if spec.mla and not prefix:
        return mla_attention_ops(spec, wl, batch, q_len, kv_len, cached=cached, causal=causal)
    h, q, kv, d = spec.hidden_size, spec.q_size, spec.kv_size, spec.head_dim
    heads = spec.num_heads
    a, c = wl.act_dtype, wl.kv_dtype
    t = batch * q_len  # query tokens in this pass
    new = t if new_kv_tokens is None else new_kv_tokens  # tokens whose k and v are projected here
    pairs = F.attention_score_elements(batch, heads, q_len, kv_len, causal)
    kv_elems = batch * kv_len * kv
    kv_read = nbytes(kv_elems, c) if cached else 0
    kv_act_read = 0 if cached else nbytes(kv_elems, a)
    p = prefix
    ops = [_matmul(f"{p}q_proj", t, h, q, wl)]
    if new_kv_tokens != 0:
        ops += [_matmul(f"{p}k_proj", new, h, kv, wl), _matmul(f"{p}v_proj", new, h, kv, wl)]
    if spec.attention_bias:
        n = F.qkv_elements(t, new, q, kv)  # new == 0: no k, v projected
        params = q + (0 if new_kv_tokens == 0 else 2 * kv)
        ops.append(_elementwise(f"{p}qkv_bias", F.add_flops(n), n, n, wl, params=params))
    if not p:  # self-attention only
        ops += _qk_ops(spec, wl, batch, q_len, new, rotary)
    if rotary:
        n = t * (q + kv)  # q and k read and written whole; rotated_dim of each head rotated
        rd = spec.rotated_dim
        ops.append(OpCost(f"{p}rotary", "elementwise", F.rotary_flops(t, heads + spec.num_kv_heads, rd), 0,
                          act_read_bytes=nbytes(n + F.rotary_table_elements(q_len, rd), a),
                          act_write_bytes=nbytes(n, a)))
    if cached and new_kv_tokens != 0:
        n = F.kv_elements(new, kv)  # new keys and values copied into the cache
        ops.append(OpCost(f"{p}kv_cache_update", "memory", act_read_bytes=nbytes(n, a),
                          kv_write_bytes=nbytes(n, c)))
    score_flops = F.attention_score_flops(batch, heads, q_len, kv_len, d, causal)
    score_shape, value_shape = attention_matmul_shapes(batch * heads, q_len, kv_len, d, d, not p, wl)
    group = heads // spec.num_kv_heads  # query heads per kv head: the eager reference repeats K and V
    ops.append(OpCost(f"{p}attn_scores", "matmul", score_flops, score_flops,
                      act_read_bytes=nbytes(t * q, a) + kv_act_read, act_write_bytes=nbytes(pairs, a),
                      kv_read_bytes=kv_read, shape=score_shape, kv_repeat=group))
    if position_bias:  # T5: the [heads, q, kv] relative position bias added to the scores
        ops.append(_elementwise(f"{p}attn_position_bias", F.add_flops(pairs), 2 * pairs, pairs, wl))
    if spec.attn_logit_softcapping is not None and not p:  # Gemma 2: tanh(scores / c) * c
        ops.append(_elementwise(f"{p}attn_softcap", F.softcap_flops(pairs), pairs, pairs, wl))
    if spec.attn_sinks and not p:  # gpt-oss: [scores | sink] concatenated for the softmax
        rows = batch * heads * q_len
        ops.append(_elementwise(f"{p}attn_sinks", F.attention_sink_flops(batch, heads, q_len), pairs,
                                pairs + rows, wl, params=heads))
    softmax_flops = F.attention_softmax_flops(batch, heads, q_len, kv_len, causal, spec.attention_scale)
    value_flops = F.attention_value_flops(batch, heads, q_len, kv_len, d, causal)
    ops += [
        _elementwise(f"{p}attn_softmax", softmax_flops, pairs, pairs, wl),
        OpCost(f"{p}attn_values", "matmul", value_flops, value_flops,
               act_read_bytes=nbytes(pairs, a) + kv_act_read, act_write_bytes=nbytes(t * q, a),
               kv_read_bytes=kv_read, shape=value_shape, kv_repeat=group),
        _matmul(f"{p}o_proj", t, q, h, wl),
    ]
    if spec.attention_out_bias:
        ops.append(_elementwise(f"{p}o_bias", F.add_flops(t * h), t * h, t * h, wl, params=h))
    return ops


def _qk_ops(spec: ModelSpec, wl: Workload, batch, q_len, new_kv_tokens, rotary: bool) -> list[OpCost]:
    """Self-attention's work on q and k between the projections and the scores: the q and k norms
    (:func:`_qk_norms`; Llama 4's "l2", without a weight, on its rotary layers only) and Llama 4's
    temperature tuning of the queries on its NoPE layers."""
    d, t = spec.head_dim, batch * q_len
    ops = []
    if spec.qk_norm in ("head", "per_head", "full"):
        ops += _qk_norms(spec, wl, t, new_kv_tokens)
    elif spec.qk_norm == "l2" and rotary:
        for op, tokens, heads in (("q_norm", t, spec.num_heads), ("k_norm", new_kv_tokens, spec.num_kv_heads)):
            n = tokens * heads * d
            ops.append(_elementwise(op, F.head_norm_flops(tokens, heads, d, weighted=False), n, n, wl))
    if spec.attn_temperature_tuning and not rotary:
        n = t * spec.q_size
        ops.append(_elementwise("attn_temperature", F.attn_temperature_flops(q_len, t, spec.q_size), n, n, wl))
    return ops


def _rms_norm(op, tokens, width, spec: ModelSpec, wl: Workload) -> OpCost:
    """An RMSNorm over ``width`` (not the residual stream's): latent attention's q_a_norm, kv_a_norm."""
    n = tokens * width
    return _elementwise(op, F.norm_flops(tokens, width, "rmsnorm"), n, n, wl, params=width)


def mla_attention_ops(spec: ModelSpec, wl: Workload, batch, q_len, kv_len, *, cached: bool = True,
                      causal: bool = False) -> list[OpCost]:
    """Multi-head latent attention (DeepSeek-V2/V3; Liu et al. 2024, section 2.1) of ``batch * q_len``
    queries over ``kv_len`` positions, as HF ``DeepseekV3Attention`` computes it.

    Queries: q_a_proj [h, r_q], q_a_norm, q_b_proj [r_q, H * (d_nope + d_rope)] (q_proj without
    r_q). Keys and values: kv_a_proj [h, d_c + d_rope] of the new tokens, kv_a_norm on the latent
    c_kv, rotary on q_rope and the one shared k_rope; the cache holds c_kv and k_rope
    (:func:`~costmodel.formulas.mla_cache_elements`).

    ``wl.mla`` "transformers" (HF 5.23): kv_b_proj [d_c, H * (d_nope + d_v)] re-expands every
    attended position's latent in every pass, then attention over d_nope + d_rope with values of d_v.
    "absorbed" (serving engines, a decode step reading the cache): W^UK is applied to the query
    (``kv_b_absorb_q``), scores are taken against the cached latent and rotary key (d_c + d_rope),
    values are the latent (d_c), and W^UV follows per head (``kv_b_absorb_v``); a pass with
    nothing cached before (prefill, or any pass without a cache) expands as "transformers" does.
    """
    h, heads = spec.hidden_size, spec.num_heads
    r_q, r_kv = spec.q_lora_rank, spec.kv_lora_rank
    dn, dr, dv = spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim
    dqk = dn + dr
    a, c = wl.act_dtype, wl.kv_dtype
    t = batch * q_len  # query tokens (and new latents) in this pass
    kv_t = batch * kv_len  # latents attended
    # absorbed: a pass reading positions cached before it (a decode step, q_len 1 < kv_len); decided
    # without comparing arrays (the sweep's grid passes arrays of prompts as q_len and kv_len)
    absorbed = (wl.mla == "absorbed" and cached and isinstance(q_len, int)
                and (not isinstance(kv_len, int) or kv_len > q_len))
    if r_q is None:
        ops = [_matmul("q_proj", t, h, heads * dqk, wl)]
    else:
        ops = [_matmul("q_a_proj", t, h, r_q, wl), _rms_norm("q_a_norm", t, r_q, spec, wl),
               _matmul("q_b_proj", t, r_q, heads * dqk, wl)]
    ops.append(_matmul("kv_a_proj", t, h, r_kv + dr, wl))
    if spec.attention_bias:  # on q_a_proj (not q_proj) and kv_a_proj
        n = t * ((r_q or 0) + r_kv + dr)
        ops.append(_elementwise("qkv_bias", F.add_flops(n), n, n, wl, params=(r_q or 0) + r_kv + dr))
    ops.append(_rms_norm("kv_a_norm", t, r_kv, spec, wl))
    n = t * (heads + 1) * dr  # q_rope of every head and the one shared k_rope
    ops.append(OpCost("rotary", "elementwise", F.rotary_flops(t, heads + 1, dr), 0,
                      act_read_bytes=nbytes(n + F.rotary_table_elements(q_len, dr), a),
                      act_write_bytes=nbytes(n, a)))
    latent = F.mla_cache_elements(kv_t, r_kv, dr)  # c_kv and k_rope of the attended positions
    if cached:
        n = F.mla_cache_elements(t, r_kv, dr)
        ops.append(OpCost("kv_cache_update", "memory", act_read_bytes=nbytes(n, a), kv_write_bytes=nbytes(n, c)))

    def read(elements):  # (kv_read_bytes, act_read_bytes) of latent-cache elements
        return (nbytes(elements, c), 0) if cached else (0, nbytes(elements, a))

    pairs = F.attention_score_elements(batch, heads, q_len, kv_len, causal)
    softmax = _elementwise("attn_softmax", F.attention_softmax_flops(batch, heads, q_len, kv_len, causal),
                           pairs, pairs, wl)
    if absorbed:
        q_abs = F.mla_absorbed_query_flops(t, heads, dn, r_kv)
        kv_read, act_read = read(latent)
        score_flops = F.attention_score_flops(batch, heads, q_len, kv_len, r_kv + dr, causal)
        value_flops = F.attention_value_flops(batch, heads, q_len, kv_len, r_kv, causal)
        v_read, v_act_read = read(kv_t * r_kv)
        out = F.mla_absorbed_output_flops(t, heads, r_kv, dv)
        score_shape, value_shape = attention_matmul_shapes(batch * heads, q_len, kv_len, r_kv + dr, r_kv, True, wl)
        rows = _rows_vary(wl)
        ops += [  # the absorptions: per head, [t, dn] @ [dn, r_kv] and [t, r_kv] @ [r_kv, dv]
            OpCost("kv_b_absorb_q", "matmul", q_abs, q_abs, weight_bytes=nbytes(heads * dn * r_kv, wl.weight_dtype),
                   act_read_bytes=nbytes(t * heads * dn, a), act_write_bytes=nbytes(t * heads * r_kv, a),
                   shape=(heads, t, r_kv, dn, rows)),
            OpCost("attn_scores", "matmul", score_flops, score_flops,
                   act_read_bytes=nbytes(t * heads * (r_kv + dr), a) + act_read,
                   act_write_bytes=nbytes(pairs, a), kv_read_bytes=kv_read, shape=score_shape),
            softmax,
            OpCost("attn_values", "matmul", value_flops, value_flops,
                   act_read_bytes=nbytes(pairs, a) + v_act_read, act_write_bytes=nbytes(t * heads * r_kv, a),
                   kv_read_bytes=v_read, shape=value_shape),
            OpCost("kv_b_absorb_v", "matmul", out, out, weight_bytes=nbytes(heads * r_kv * dv, wl.weight_dtype),
                   act_read_bytes=nbytes(t * heads * r_kv, a), act_write_bytes=nbytes(t * heads * dv, a),
                   shape=(heads, t, dv, r_kv, rows)),
        ]
    else:
        expand = F.mla_kv_expand_flops(kv_t, r_kv, heads, dn, dv)
        kv_read, act_read = read(kv_t * r_kv)
        rope_read, rope_act_read = read(kv_t * dr)  # k_rope, broadcast to every head's key
        score_flops = F.attention_score_flops(batch, heads, q_len, kv_len, dqk, causal)
        value_flops = F.attention_value_flops(batch, heads, q_len, kv_len, dv, causal)
        score_shape, value_shape = attention_matmul_shapes(batch * heads, q_len, kv_len, dqk, dv, True, wl)
        ops += [  # kv_b_proj: every attended latent [kv_t, r_kv] @ [r_kv, H (dn + dv)]: rows grow with the step
            OpCost("kv_b_proj", "matmul", expand, expand, weight_bytes=nbytes(r_kv * heads * (dn + dv), wl.weight_dtype),
                   act_read_bytes=act_read, act_write_bytes=nbytes(kv_t * heads * (dn + dv), a), kv_read_bytes=kv_read,
                   shape=(1, kv_t, heads * (dn + dv), r_kv, "m")),
            OpCost("attn_scores", "matmul", score_flops, score_flops,
                   act_read_bytes=nbytes(t * heads * dqk + kv_t * heads * dn, a) + rope_act_read,
                   act_write_bytes=nbytes(pairs, a), kv_read_bytes=rope_read, shape=score_shape),
            softmax,
            OpCost("attn_values", "matmul", value_flops, value_flops,
                   act_read_bytes=nbytes(pairs + kv_t * heads * dv, a), act_write_bytes=nbytes(t * heads * dv, a),
                   shape=value_shape),
        ]
    ops.append(_matmul("o_proj", t, heads * dv, h, wl))
    if spec.attention_out_bias:
        ops.append(_elementwise("o_bias", F.add_flops(t * h), t * h, t * h, wl, params=h))
    return ops


def _sublayer(spec: ModelSpec, wl: Workload, tokens, norm: str, residual: str, body: list[OpCost]):
    """``body`` with its norm (before it; after the residual add for post-norm; on its output before
    the add, ``post_{norm}``, for "output"; both, the norm before and ``post_{norm}`` on the output,
    with sandwich_norms: Gemma 2/3's attention and MLP) and residual add (Granite: the output scaled first)."""
    n = tokens * spec.hidden_size
    add = [_elementwise(residual, F.residual_add_flops(tokens, spec.hidden_size), 2 * n, n, wl)]
    if spec.residual_multiplier is not None:  # x + m * f(x)
        add.insert(0, _elementwise(f"{residual}_scale", F.mul_flops(n), n, n, wl))
    if spec.norm_position == "pre":
        if spec.sandwich_norms and norm in ("attn_norm", "mlp_norm"):
            body = [*body, _norm(f"post_{norm}", tokens, spec, wl)]
        return [_norm(norm, tokens, spec, wl), *body, *add]
    if spec.norm_position == "output":
        return [*body, _norm(f"post_{norm}", tokens, spec, wl), *add]
    return [*body, *add, _norm(norm, tokens, spec, wl)]


def _parallel_block(spec: ModelSpec, wl: Workload, tokens, attention: list[OpCost],
                    mlp: list[OpCost]) -> list[OpCost]:
    """x + attn(n1(x)) + mlp(n2(x)): one shared norm (n2 = n1) or two, then one add of both outputs
    and the residual (GPT-J, GPT-NeoX use_parallel_residual, Falcon parallel_attn, Cohere, Phi)."""
    n = tokens * spec.hidden_size
    norms = [_norm("attn_norm", tokens, spec, wl)]
    if spec.parallel_block_norms == 2:
        norms.append(_norm("mlp_norm", tokens, spec, wl))
    add = _elementwise("parallel_residual", F.parallel_residual_flops(tokens, spec.hidden_size), 3 * n, n, wl)
    return [*norms, *attention, *mlp, add]


def layer_ops(spec: ModelSpec, wl: Workload, batch: int, q_len: int, kv_len: int, *,
              encoder: bool = False, cross_len: int = 0, project_cross: bool = True,
              mlp: str | None = None, layer: int | None = None, rope: bool | None = None) -> list[OpCost]:
    """Ops of one transformer block for ``batch`` sequences, ``q_len`` new tokens, ``kv_len`` keys
    (a sliding layer's caller passes the keys it attends over: :func:`layer_kv_len`).

    ``encoder``: a bidirectional encoder block (no cache, never causal). ``cross_len``: a decoder
    block of an encoder-decoder attending over ``cross_len`` encoder positions; ``project_cross``:
    its cross keys and values are projected in this pass (prefill, or every step without a cache).
    ``mlp``: "dense" or "moe" (default: "moe" when the model has experts; with ``layer``, that
    layer's kind); a dense layer of a MoE model is an MLP of ``intermediate_size``. ``layer``: the
    decoder layer's index, where layers differ (``spec.mlp_layer_types``, NoPE layers without rotary
    positions); ``rope`` False: a NoPE layer (as ``LayerGroup.rope``); None: rotary if the
    model's positions are.
    """
    t = batch * q_len  # tokens in this pass
    cached = wl.kv_cache and not encoder
    if layer is not None and not encoder:
        mlp = mlp or spec.mlp_layer_types[layer]
        rope = spec.uses_rope(layer) if rope is None else rope
    rotary = spec.position_kind == "rotary" and (rope is None or rope or encoder)
    attention = attention_ops(
        spec, wl, batch, q_len, kv_len, cached=cached, causal=wl.causal and not encoder,
        rotary=rotary, position_bias=spec.relative_attention_buckets > 0)
    moe = (mlp or ("moe" if spec.num_experts else "dense")) == "moe"
    body = moe_ops(spec, wl, t) if moe else mlp_ops(spec, wl, t, spec.intermediate_size, "mlp", bias=spec.mlp_bias)
    if spec.parallel_block:  # decoder-only (ModelSpec refuses it elsewhere): no cross-attention
        return _with_input_quant(spec, wl, _parallel_block(spec, wl, t, attention, body))
    ops = _sublayer(spec, wl, t, "attn_norm", "attn_residual", attention)
    if cross_len:
        new = batch * cross_len if project_cross else 0
        ops += _sublayer(spec, wl, t, "cross_attn_norm", "cross_attn_residual", attention_ops(
            spec, wl, batch, q_len, cross_len, prefix="cross_", new_kv_tokens=new, cached=wl.kv_cache))
    return _with_input_quant(spec, wl, ops + _sublayer(spec, wl, t, "mlp_norm", "mlp_residual", body))


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
            ops.append(_elementwise(f"{prefix}_up_bias", F.add_flops(2 * m), 2 * m, 2 * m, wl,
                                    params=2 * inter * weight_copies))
        if prefix == "expert" and spec.swiglu_limit is not None:  # gpt-oss's clamped SwiGLU
            act, mul = F.clamped_swiglu_act_flops(m), F.clamped_swiglu_mul_flops(m)
        else:
            act, mul = F.activation_flops(m, spec.activation), F.mul_flops(m)
        ops += [_elementwise(f"{prefix}_act", act, m, m, wl), _elementwise(f"{prefix}_mul", mul, 2 * m, m, wl)]
    else:
        ops.append(_matmul(f"{prefix}_up", t, h, inter, wl, weight_copies))
        if bias:
            ops.append(_elementwise(f"{prefix}_up_bias", F.add_flops(m), m, m, wl, params=inter))
        ops.append(_elementwise(f"{prefix}_act", F.activation_flops(m, spec.activation), m, m, wl))
    ops.append(_matmul(f"{prefix}_down", t, inter, h, wl, weight_copies))
    if bias:
        ops.append(_elementwise(f"{prefix}_down_bias", F.add_flops(t * h), t * h, t * h, wl,
                                params=h * weight_copies))
    return ops


def experts_touched(spec: ModelSpec, tokens):
    """Distinct routed experts whose weights a pass over ``tokens`` tokens reads, at most:
    min(num_experts, tokens * experts_per_token). Exact and conservative (all experts once
    tokens * k >= E); :func:`expected_experts_touched` gives the mean under uniform routing."""
    a, b = spec.num_experts, tokens * spec.experts_per_token
    if spec.moe_all_experts:  # every expert runs on every token
        return a + 0 * b
    return (a + b - abs(a - b)) // 2  # min(a, b), element-wise on arrays too


def expected_experts_touched(spec: ModelSpec, tokens: int) -> float:
    """Mean distinct experts read when each of ``tokens`` tokens picks k of E uniformly:
    E * (1 - (1 - k/E) ** tokens) (an expert is missed by one token with probability 1 - k/E)."""
    e, k = spec.num_experts, spec.experts_per_token
    if spec.moe_all_experts:
        return float(e)
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
    if spec.moe_scoring == "sigmoid" or spec.moe_groups > 1 or spec.routed_scaling_factor != 1.0:
        ops = deepseek_router_ops(spec, wl, t)
    else:
        topk_flops = F.router_topk_flops(t, e, k, spec.moe_renormalize)
        topk = OpCost("router_topk", "elementwise", topk_flops, 0, act_read_bytes=nbytes(t * e, a),
                      act_write_bytes=nbytes(t * k, a) + INDEX_BYTES * t * k)
        scoring = F.router_scoring_flops(t, e, k, spec.router_scoring)
        ops = [_matmul("router", t, h, e, wl)]
        if spec.router_bias:
            ops.append(_elementwise("router_bias", F.add_flops(t * e), t * e, t * e, wl, params=e))
        if spec.router_scoring == "softmax":  # softmax over E, then the top k (Mixtral)
            ops += [_elementwise("router_softmax", scoring, t * e, t * e, wl), topk]
        elif spec.router_scoring == "topk_softmax":  # top k of the logits, softmax over them (gpt-oss)
            ops += [topk, _elementwise("router_softmax", scoring, t * k, t * k, wl)]
        else:  # top k scattered into [t, E] of -inf, sigmoid over all of it (Llama 4)
            ops += [topk, _elementwise("router_sigmoid", scoring, t * e, t * e, wl)]
    if spec.moe_all_experts:  # Llama 4 as transformers runs it: x * score through every expert, summed
        n = t * e * h
        ops.append(_elementwise("expert_input_scale", F.mul_flops(n), n + t * e, n, wl))
        ops += mlp_ops(spec, wl, t * e, spec.moe_intermediate_size, "expert", bias=spec.expert_bias,
                       weight_copies=e)
        ops.append(_elementwise("expert_combine", F.expert_sum_flops(t, e, h), n, t * h, wl))
    else:
        ops += mlp_ops(spec, wl, t * k, spec.moe_intermediate_size, "expert", bias=spec.expert_bias,
                       weight_copies=experts_touched(spec, t))
        ops.append(_elementwise("expert_combine", F.expert_combine_flops(t, k, h), t * k * (h + 1), t * h, wl))
    if spec.num_shared_experts:
        ops += mlp_ops(spec, wl, t, spec.num_shared_experts * spec.shared_expert_intermediate_size,
                       "shared_expert")
        if spec.shared_expert_gate:
            # sigmoid(x @ w[h, 1]) * shared + routed
            ops += [_matmul("shared_expert_score", t, h, 1, wl),
                    _elementwise("shared_expert_combine", F.shared_expert_combine_flops(t, h, gated=True),
                                 2 * t * h + t, t * h, wl)]
        else:
            ops.append(_elementwise("shared_expert_combine", F.shared_expert_combine_flops(t, h, gated=False),
                                    2 * t * h, t * h, wl))
    return ops


def deepseek_router_ops(spec: ModelSpec, wl: Workload, tokens) -> list[OpCost]:
    """The router of DeepSeek-V3 (HF ``DeepseekV3TopkRouter``; DeepSeek-V3 report, section 2.1.2)
    for ``tokens`` tokens: logits [t, E] = x @ W_r; sigmoid scores (softmax with ``moe_scoring``
    "softmax") and, for the choice only, the per-expert bias added; with ``moe_groups`` > 1 the
    choice is limited to the ``moe_topk_groups`` best groups; top-k of E; the k weights (the
    scores without the bias) renormalised (``moe_renormalize``) and scaled by
    ``routed_scaling_factor``. FLOP conventions of the element-wise steps: see
    :mod:`costmodel.formulas` (sigmoid 4 per score, a comparison per top-k candidate)."""
    h, t, e, k, g = spec.hidden_size, tokens, spec.num_experts, spec.experts_per_token, spec.moe_groups
    a = wl.act_dtype
    if spec.moe_scoring == "sigmoid":  # scores, and scores + bias (the bias: E values, read once)
        ops = [_matmul("router", t, h, e, wl),
               _elementwise("router_sigmoid", F.router_sigmoid_flops(t, e), t * e + e, 2 * t * e, wl)]
    else:
        ops = [_matmul("router", t, h, e, wl),
               _elementwise("router_softmax", F.softmax_flops(t * e), t * e, t * e, wl)]
    if g > 1:  # group scores [t, G], the best groups, the others' experts masked out [t, E]
        ops.append(_elementwise("router_group_topk", F.router_group_topk_flops(t, e, g), t * e, t * e, wl))
    scale = F.routed_scaling_flops(t, k) if spec.routed_scaling_factor != 1.0 else 0
    topk_flops = F.router_topk_flops(t, e, k, spec.moe_renormalize) + scale  # no +=: arrays in a sweep
    ops.append(OpCost("router_topk", "elementwise", topk_flops, 0, act_read_bytes=nbytes(t * e, a),
                      act_write_bytes=nbytes(t * k, a) + INDEX_BYTES * t * k))
    return ops


def model_ops(spec: ModelSpec, wl: Workload, batch: int, q_len: int, logits_positions: int, *,
              stack: str = "decoder", kv_len: int | None = None) -> tuple[list[OpCost], list[OpCost]]:
    """Ops outside the blocks of one stack: (before the first block, after the last one).

    ``stack``: "decoder" (ends in the LM head and the pick of the next token) or "encoder" (an
    encoder-decoder's encoder ends in its final norm; BERT's in its pooler and MLM head).
    """
    h, t = spec.hidden_size, batch * q_len
    n = t * h
    kv_len = q_len if kv_len is None else kv_len
    e = spec.embedding_dim
    # Embedding lookup: reads one row per token, writes the residual stream (OPT: projected to h).
    before = [OpCost("embedding", "memory", weight_bytes=nbytes(t * e, wl.weight_dtype),
                     act_write_bytes=nbytes(t * e, wl.act_dtype))]
    if e != h:
        before.append(_matmul("embed_proj_in", t, e, h, wl))
    if spec.embedding_multiplier is not None:  # Granite: x * embedding_multiplier; Gemma: x * sqrt(h)
        before.append(_elementwise("embedding_scale", F.mul_flops(n), n, n, wl))
    if spec.position_kind == "learned":
        before.append(_elementwise("pos_embedding", F.add_flops(n), n, n, wl, params=q_len * h))
    elif spec.position_kind == "sinusoidal":  # 2017: embedding x sqrt(h), then a fixed table [q_len, h] added
        before += [_elementwise("embedding_scale", F.mul_flops(n), n, n, wl),
                   _elementwise("pos_embedding", F.add_flops(n), n + q_len * h, n, wl)]
    if spec.type_vocab_size:
        before.append(_elementwise("token_type_embedding", F.add_flops(n), n, n, wl, params=spec.type_vocab_size * h))
    if spec.embedding_norm:
        before.append(_norm("embedding_norm", t, spec, wl))
    if spec.relative_attention_buckets:
        # T5: bias [heads, q, kv] looked up from the bucket table once per pass, shared by all layers
        before.append(OpCost("position_bias", "memory",
                             weight_bytes=nbytes(spec.relative_attention_buckets * spec.num_heads, wl.weight_dtype),
                             act_write_bytes=nbytes(spec.num_heads * q_len * kv_len, wl.act_dtype)))
    after = [_norm("final_norm", t, spec, wl)] if spec.norm_position != "post" else []
    if stack == "encoder":
        if spec.pooler:  # tanh(W x + b) on each sequence's first token
            after += [_matmul("pooler", batch, h, h, wl, varying=""),
                      _elementwise("pooler_act", F.pooler_activation_flops(batch, h), batch * h, batch * h, wl,
                                   params=h)]
        if spec.mlm_head:  # every position: dense, bias, GELU, LayerNorm, decoder, bias
            m = t * spec.vocab_size
            after += [_matmul("mlm_dense", t, h, h, wl),
                      _elementwise("mlm_act", F.add_flops(n) + F.activation_flops(n, spec.activation), n, n, wl,
                                   params=h),
                      _norm("mlm_norm", t, spec, wl), _matmul("lm_head", t, h, spec.vocab_size, wl),
                      _elementwise("lm_head_bias", F.add_flops(m), m, m, wl, params=spec.vocab_size)]
        return before, after
    rows = batch * logits_positions
    if e != h:  # OPT: back to the embedding width, on every position (inside the decoder stack)
        after.append(_matmul("embed_proj_out", t, h, e, wl))
    if spec.family == "t5" and spec.tie_word_embeddings:  # T5 scales by d_model ** -0.5 when tied
        after.append(_elementwise("lm_head_scale", F.mul_flops(rows * h), rows * h, rows * h, wl))
    after.append(_matmul("lm_head", rows, e, spec.vocab_size, wl, varying=""))  # logits positions: fixed
    m = rows * spec.vocab_size
    if spec.lm_head_bias:  # Phi
        after.append(_elementwise("lm_head_bias", F.add_flops(m), m, m, wl, params=spec.vocab_size))
    if spec.logits_scale is not None:  # Cohere logit_scale, Granite 1 / logits_scaling
        after.append(_elementwise("logits_scale", F.mul_flops(m), m, m, wl))
    if spec.final_logit_softcapping is not None:  # Gemma 2: tanh(logits / c) * c
        after.append(_elementwise("logits_softcap", F.softcap_flops(m), m, m, wl))
    # Picking the next token: one row of logits per sequence (and beam); see costmodel.sampling.
    after += [OpCost(s.op, "elementwise", s.flops, 0, act_read_bytes=nbytes(s.read_elements, wl.act_dtype),
                     act_write_bytes=nbytes(s.write_elements, wl.act_dtype) + INDEX_BYTES * s.write_indices)
              for s in sampling_ops(wl.strategy, batch, spec.vocab_size, wl.batch, wl.top_k, wl.beams,
                                    wl.temperature)]
    return before, after


def weighted_items(before, groups, after):
    """(multiplicity, item) for each distinct item of a pass: 1 outside the blocks, a group's layer
    count inside (items: op costs, or op times)."""
    for o in before:
        yield 1, o
    for g, items in groups:
        for o in items:
            yield g.count, o
    for o in after:
        yield 1, o


@dataclass(frozen=True, init=False)
class StepCost:
    """Ops of one pass (or the sum of several): the ops before the blocks, then each group of
    identical blocks (:class:`~costmodel.spec.LayerGroup`) with its ops once, repeated ``count``
    times, then the ops after them.

    ``StepCost(before, layer, after, num_layers)`` builds the one-group case (every block alike);
    ``StepCost(before, after=after, groups=((group, ops), ...))`` layers that differ.
    """

    before: list[OpCost]
    groups: tuple  # ((LayerGroup, list[OpCost]), ...) in layer order
    after: list[OpCost]

    def __init__(self, before, layer=None, after=None, num_layers=None, *, groups=None):
        if groups is None:
            if layer is None or num_layers is None:
                raise TypeError("StepCost needs layer and num_layers, or groups")
            groups = ((LayerGroup(0, num_layers), layer),)
        elif layer is not None or num_layers is not None:
            raise TypeError("StepCost takes layer and num_layers, or groups, not both")
        object.__setattr__(self, "before", list(before))
        object.__setattr__(self, "groups", tuple((g, list(ops)) for g, ops in groups))
        object.__setattr__(self, "after", list(after or []))

    @property
    def num_layers(self) -> int:
        """Blocks in the pass, all groups together."""
        return sum(g.count for g, _ in self.groups)

    @property
    def layer(self) -> list[OpCost]:
        """The ops of one block, when every block is alike (one group)."""
        return only_group(self.groups)

    def total(self, field: str) -> int:
        return sum(n * getattr(o, field) for n, o in self.weighted())

    def weighted(self):
        """(multiplicity, op) for each distinct op: 1 outside the blocks, a group's count inside."""
        return weighted_items(self.before, self.groups, self.after)

    def ops(self) -> list[OpCost]:
        """Each distinct op once (a group's ops once, not once per layer)."""
        return [o for _, o in self.weighted()]

    def rows(self):
        """(layer, op) in execution order: layer is None outside the blocks."""
        return layered_rows(self.before, self.groups, self.after)


def only_group(groups):
    """The ops of the one group of ``groups``; ValueError naming the groups when there are several."""
    if len(groups) != 1:
        names = "; ".join(g.describe() for g, _ in groups)
        raise ValueError(f"the blocks differ ({names}): iterate .groups instead of .layer")
    return groups[0][1]


def layered_rows(before, groups, after):
    """(layer, item) in execution order: ``before`` and ``after`` with layer None, each group's
    items once per block of the group, with the block's real 0-based index."""
    for o in before:
        yield None, o
    for g, items in groups:
        for i in g.layers:
            for o in items:
                yield i, o
    for o in after:
        yield None, o


def map_ops(fn, *costs):
    """``fn`` applied op by op to passes of one layout (the same groups, the same ops):
    (before, groups, after) of the results."""
    layouts = {tuple(g for g, _ in c.groups) for c in costs}
    assert len(layouts) == 1, "passes with different layer groups"
    before = [fn(*o) for o in zip(*(c.before for c in costs))]
    groups = tuple((gs[0][0], [fn(*o) for o in zip(*(ops for _, ops in gs))])
                   for gs in zip(*(c.groups for c in costs)))
    after = [fn(*o) for o in zip(*(c.after for c in costs))]
    return before, groups, after


def _mapped(fn, *costs) -> StepCost:
    before, groups, after = map_ops(fn, *costs)
    return StepCost(before, after=after, groups=groups)


SLIDING_KEYS = ("actual", "growing", "full")


def layer_kv_len(spec: ModelSpec, group: LayerGroup, q_len, kv_len, sliding_keys: str = "actual"):
    """Keys a block of ``group`` attends over in a pass of ``q_len`` new tokens, ``kv_len``
    positions in all: ``kv_len``, or on a sliding layer :func:`~costmodel.formulas.sliding_keys`
    (``sliding_keys="actual"``); "growing": as if the window never filled (kv_len); "full": as if
    it were full already (q_len + W - 1). The last two are the two polynomials the exact decode
    sum splits at the step the window fills (:func:`window_split`)."""
    w = spec.window_of(group)
    if w is None or sliding_keys == "growing":
        return kv_len
    if sliding_keys == "full":
        return q_len + w - 1
    return F.sliding_keys(q_len, kv_len, w)


def step_cost(spec: ModelSpec, wl: Workload, batch: int, q_len: int, kv_len: int,
              logits_positions: int, cross_len: int = 0, project_cross: bool = True,
              sliding_keys: str = "actual") -> StepCost:
    """One pass of the decoder stack (``cross_len``: encoder positions it cross-attends to), each
    group of identical blocks over its own keys (:func:`layer_kv_len`)."""
    before, after = model_ops(spec, wl, batch, q_len, logits_positions, kv_len=kv_len)
    groups = tuple((g, layer_ops(spec, wl, batch, q_len, layer_kv_len(spec, g, q_len, kv_len, sliding_keys),
                                 cross_len=cross_len, project_cross=project_cross, mlp=g.mlp,
                                 rope=g.rope))
                   for g in spec.layer_groups())
    return StepCost(before, after=after, groups=groups)


def encode_cost(spec: ModelSpec, wl: Workload) -> StepCost:
    """The encoder over the input (encoder-only) or the source (encoder-decoder): bidirectional."""
    b, s = wl.batch, wl.prompt
    before, after = model_ops(spec, wl, b, s, 0, stack="encoder")
    layers = spec.num_encoder_layers if spec.arch == "encoder-decoder" else spec.num_layers
    return StepCost(before, layer_ops(spec, wl, b, s, s, encoder=True), after, layers)


def prefill_cost(spec: ModelSpec, wl: Workload) -> StepCost:
    """The first decoder pass: the prompt (decoder-only), or the decoder prompt with the one-time
    projection of the cross-attention keys and values from the encoder output (encoder-decoder).
    Every layer scores the whole prompt x prompt matrix, sliding or not (masks remove no FLOPs)."""
    s = decoder_start(spec, wl)
    cross = dict(cross_len=wl.prompt) if spec.arch == "encoder-decoder" else {}
    return step_cost(spec, wl, wl.batch, s, s, s if wl.logits == "all" else 1, **cross)


def decode_step_cost(spec: ModelSpec, wl: Workload, i: int, sliding_keys: str = "actual") -> StepCost:
    """Decode step i (1-based): one new token per sequence (and beam), attending over prompt + i keys
    (encoder-decoder: decoder prompt + i, and cross-attending over the source); a sliding layer
    with a cache over min(prompt + i, W) (``sliding_keys``: see :func:`layer_kv_len`).

    Without a KV cache the step recomputes all prompt + i positions, with logits for the last
    position (``--logits last``) or every position (``all``), as a naive generation loop does; an
    encoder-decoder then also projects the cross keys and values again (the encoder output is kept).
    """
    encdec = spec.arch == "encoder-decoder"
    b, ctx = wl.batch * wl.beams, decoder_start(spec, wl) + i
    cross = dict(cross_len=wl.prompt, project_cross=not wl.kv_cache) if encdec else {}
    if wl.kv_cache:
        return step_cost(spec, wl, b, 1, ctx, 1, sliding_keys=sliding_keys, **cross)
    return step_cost(spec, wl, b, ctx, ctx, ctx if wl.logits == "all" else 1, **cross)


def slides(spec: ModelSpec, wl: Workload) -> bool:
    """Whether some layer's keys stop growing during decode: a sliding (or chunked) layer with a KV cache."""
    return wl.kv_cache and spec.attention_window is not None


def window_split(spec: ModelSpec, wl: Workload, n: int):
    """m: decode steps 1..m attend over every prompt + i keys on each sliding layer (prompt + i <= W),
    steps m + 1..n over W; so m = min(max(W - prompt, 0), n), and n when nothing slides
    (:func:`slides`). Each side is one polynomial in the step ("growing", "full" in
    :func:`layer_kv_len`): the exact decode sum is :func:`~costmodel.stepsum.split_sum` at m.
    Element-wise when the prompt is an array (the sweep)."""
    if not slides(spec, wl):
        return n
    room = spec.attention_window - decoder_start(spec, wl)
    return F.smaller(room - F.smaller(room, 0), n)  # max(room, 0) = room - min(room, 0)


def first_polynomial_step(spec: ModelSpec, wl: Workload) -> int:
    """First decode step from which every cost is a polynomial (degree <= 2) in the step number,
    on each side of the window split (:func:`window_split`).

    Always 1, but for routed experts without a KV cache: the experts read, min(E, tokens * k),
    stop growing only once the recomputed prefix has tokens * k >= E.
    """
    if not spec.num_experts or wl.kv_cache:
        return 1
    rows = wl.batch * wl.beams * spec.experts_per_token
    start = decoder_start(spec, wl)
    return max(1, -(-spec.num_experts // rows) - start)


def decode_cost(spec: ModelSpec, wl: Workload) -> StepCost:
    """All gen - 1 decode steps summed exactly, op by op: closed form where costs are polynomial
    in the step (see :func:`~costmodel.formulas.sum_quadratic`), step by step before that; with a
    sliding window, the two polynomials before and after the window fills, split at
    :func:`window_split` (:func:`~costmodel.stepsum.split_sum`)."""
    n = wl.decode_steps
    first = min(first_polynomial_step(spec, wl), n + 1)
    m = window_split(spec, wl, n)
    grow = [decode_step_cost(spec, wl, i, "growing") for i in (first, first + 1, first + 2)]
    full = [decode_step_cost(spec, wl, i, "full") for i in (first, first + 1, first + 2)] if slides(spec, wl) else grow

    def summed(g1, g2, g3, f1, f2, f3):
        return g1.with_costs(stepsum.split_sum(stepsum.newton(*xg), stepsum.newton(*xf), m - first + 1, n - first + 1)
                             for xg, xf in zip(zip(g1.costs(), g2.costs(), g3.costs()),
                                               zip(f1.costs(), f2.costs(), f3.costs())))

    total = _mapped(summed, *grow, *full)
    for i in range(1, first):  # steps that are not yet polynomial (only without a cache: m = n)
        total = _mapped(lambda a, b: a.with_costs(x + y for x, y in zip(a.costs(), b.costs())),
                        total, decode_step_cost(spec, wl, i))
    return total


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
    """Bytes held: weights, the KV cache after the last step, and the activation peak of the first
    passes (encode, prefill)."""

    weights_bytes: int
    kv_cache_bytes: int  # everything cached: self-attention plus (encoder-decoder) cross-attention
    kv_cache_bytes_per_token: int  # one position of one sequence, all layers, keys and values
    activation_peak_bytes: int
    self_kv_cache_bytes: int = 0  # the decoder's self-attention cache
    cross_kv_cache_bytes: int = 0  # encoder-decoder: keys and values of the source, every decoder layer

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def kv_cache_bytes_per_token(spec: ModelSpec, kv_dtype: str) -> int:
    """Keys and values of one position: 2 * num_layers * num_kv_heads * head_dim elements (what
    the cache grows by per position while no sliding layer's window is full; latent attention:
    num_layers * (kv_lora_rank + qk_rope_head_dim), :attr:`ModelSpec.kv_cache_width`)."""
    return nbytes(spec.num_layers * spec.kv_cache_width, kv_dtype)


def cached_positions(spec: ModelSpec, wl: Workload) -> int:
    """Self-attention positions cached after generation: prompt + gen - 1 (decoder-only), decoder
    prompt + gen - 1 (encoder-decoder), 0 (encoder-only: nothing is cached)."""
    if spec.arch == "encoder":
        return 0
    return decoder_start(spec, wl) + wl.gen - 1


def kv_cache_bytes(spec: ModelSpec, wl: Workload, positions: int | None = None,
                   layers: range | None = None) -> int:
    """Self-attention cache held for batch * beams sequences of ``positions`` (default: the
    positions cached after generation, :func:`cached_positions`), in ``layers`` (default: all);
    a sliding layer holds min(positions, W - 1) of them
    (:func:`~costmodel.formulas.sliding_cache_positions`)."""
    if not wl.kv_cache or spec.arch == "encoder":
        return 0
    positions = cached_positions(spec, wl) if positions is None else positions
    layers = range(spec.num_layers) if layers is None else layers
    total = 0
    for g in spec.layer_groups():
        count = len(range(max(g.first, layers.start), min(g.first + g.count, layers.stop)))
        if not count:
            continue
        w = spec.window_of(g)
        held = positions if w is None else F.sliding_cache_positions(positions, w)
        total = total + held * nbytes(count * spec.kv_cache_width, wl.kv_dtype)
    return wl.batch * wl.beams * total


def cross_kv_cache_bytes(spec: ModelSpec, wl: Workload) -> int:
    """Encoder-decoder: cross-attention keys and values of the source, cached in every decoder layer."""
    if not wl.kv_cache or spec.arch != "encoder-decoder":
        return 0
    return wl.batch * wl.beams * wl.prompt * kv_cache_bytes_per_token(spec, wl.kv_dtype)


def weight_bytes(spec: ModelSpec, weight_dtype: str, quant: str = "none") -> int:
    """Bytes of every parameter: all at ``weight_dtype`` (``quant`` "none"), or the blocks' linear
    layers packed by the scheme with their scales and zeros (:mod:`costmodel.quant`) and the rest
    (embedding, LM head, norms, biases, routers) at ``weight_dtype``."""
    scheme = Q.scheme_of(quant)
    if scheme is None:
        return nbytes(spec.num_params, weight_dtype)
    params, packed = Q.quantised_params_and_bytes(scheme, spec)
    return nbytes(spec.num_params - params, weight_dtype) + packed


def activation_peak_bytes(spec: ModelSpec, wl: Workload, prefill: StepCost, tokens=None,
                          held: int = 0) -> int:
    """Largest activation footprint of one pass, estimated as the residual stream of its
    ``tokens`` (default batch * prompt) plus the biggest single op's inputs and outputs (an eager
    forward frees each intermediate after use), plus ``held`` bytes kept alive throughout (the
    encoder output during an encoder-decoder's prefill). The KV cache is reported on its own."""
    tokens = wl.batch * wl.prompt if tokens is None else tokens
    residual = nbytes(tokens * spec.hidden_size, wl.act_dtype)
    ops = prefill.ops()
    return held + residual + _elementwise_max(o.act_read_bytes + o.act_write_bytes for o in ops)


def memory_of(spec: ModelSpec, wl: Workload, *, encode: StepCost | None = None,
              prefill: StepCost | None = None) -> Memory:
    """What :attr:`Analysis.memory` holds, costing only the first passes (encode, prefill; never
    the decode steps), so a capacity search can probe it cheaply. ``encode`` / ``prefill``: those
    passes' costs when already computed."""
    b, h = wl.batch, spec.hidden_size
    peaks = []
    if spec.arch != "decoder":
        enc = encode if encode is not None else encode_cost(spec, wl)
        peaks.append(activation_peak_bytes(spec, wl, enc))
    if spec.arch != "encoder":
        pre = prefill if prefill is not None else prefill_cost(spec, wl)
        if spec.arch == "encoder-decoder":  # the encoder output stays alive through the prefill
            peaks.append(activation_peak_bytes(spec, wl, pre, tokens=b * wl.decoder_prompt,
                                               held=nbytes(b * wl.prompt * h, wl.act_dtype)))
        else:
            peaks.append(activation_peak_bytes(spec, wl, pre))
    self_kv, cross_kv = kv_cache_bytes(spec, wl), cross_kv_cache_bytes(spec, wl)
    return Memory(
        weights_bytes=weight_bytes(spec, wl.weight_dtype, wl.quant),
        kv_cache_bytes=self_kv + cross_kv,
        kv_cache_bytes_per_token=kv_cache_bytes_per_token(spec, wl.kv_dtype) if spec.arch != "encoder" else 0,
        activation_peak_bytes=max(peaks),
        self_kv_cache_bytes=self_kv,
        cross_kv_cache_bytes=cross_kv,
    )


def _elementwise_max(values):
    """``max(values)`` that also works element-wise when the values are numpy arrays (the
    vectorized sweep in ``reports.sweep``), without importing numpy: exact on ints."""
    values = iter(values)
    best = next(values)
    for v in values:
        best = best + (v > best) * (v - best)
    return best


@dataclass(frozen=True)
class Analysis:
    """Result of :func:`analyze`: phase totals, per-op rows, memory. All counts exact ints.

    Phases: ``prefill`` and ``decode`` (decoder-only), ``encode`` (encoder-only), all three
    (encoder-decoder); a phase that does not apply is None.
    """

    model: ModelSpec
    workload: Workload
    prefill: Phase | None
    decode: Phase | None
    memory: Memory
    decode_alternative: Phase | None  # decode with the other KV-cache choice, to show the saving
    warnings: tuple[str, ...] = ()
    encode: Phase | None = None
    checkpoint: object = None  # a costmodel.checkpoint.Checkpoint read beside the config, if any

    @property
    def phases(self) -> dict[str, Phase]:
        """The phases that apply, in execution order: encode, prefill, decode."""
        return {p.name: p for p in (self.encode, self.prefill, self.decode) if p is not None}

    def rows(self):
        """One dict per (phase, layer, op): the tidy rows; they sum to the phase totals."""
        for phase in self.phases.values():
            for layer, o in phase.cost.rows():
                row = {"phase": phase.name, "layer": layer, "op": o.op, "kind": o.kind}
                row.update({f: getattr(o, f) for f in _COST_FIELDS})
                row["bytes"] = o.bytes
                yield row

    def ops_frame(self):
        """The rows as a pandas DataFrame (pandas is imported only here)."""
        import pandas as pd

        return pd.DataFrame(list(self.rows()))

    def kv_cache_saving(self) -> dict | None:
        """Decode with and without a KV cache (None for encoder-only models: nothing to decode)."""
        if self.decode is None:
            return None
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
        scheme = Q.scheme_of(wl.quant)
        if scheme is None:
            expert_bytes = nbytes(spec.num_mlp_matrices * spec.hidden_size * spec.moe_intermediate_size,
                                  wl.weight_dtype)
        else:  # one expert's matrices, packed with their scales and zeros
            expert_bytes = sum(Q.matrix_bytes(scheme, i, o) for op, _, i, o in Q.layer_matrices(spec, "moe")
                               if op.startswith("expert_"))
        d = {"num_experts": spec.num_experts, "experts_per_token": spec.experts_per_token,
             "total_params": spec.num_params, "active_params": spec.active_params,
             "expert_bytes": expert_bytes}
        start = decoder_start(spec, wl)
        passes = {"encode": wl.batch * wl.prompt, "prefill": wl.batch * start,
                  "decode_step": wl.batch * wl.beams * (1 if wl.kv_cache else start + 1)}
        layers = {"encode": spec.num_encoder_layers or spec.num_layers}
        moe_layers = spec.mlp_layer_types.count("moe")
        for name, t in passes.items():
            if name.split("_")[0] not in self.phases:
                continue
            bound, mean = experts_touched(spec, t), expected_experts_touched(spec, t)
            n = layers.get(name, moe_layers)
            d[f"{name}_tokens"] = t
            d[f"{name}_experts_read"] = bound
            d[f"{name}_expected_experts_read"] = mean
            d[f"{name}_expert_weight_bytes"] = n * bound * expert_bytes
            d[f"{name}_expected_expert_weight_bytes"] = n * mean * expert_bytes
        return d

    def to_dict(self, include_ops: bool = True) -> dict:
        d = {
            "model": self.model.summary(),
            "workload": self.workload.resolved(),
            "phases": list(self.phases),
            **{name: phase.totals() for name, phase in self.phases.items()},
            "memory": self.memory.to_dict(),
            "warnings": list(self.warnings),
        }
        if self.decode is not None:
            d["kv_cache_saving"] = self.kv_cache_saving()
        if self.model.num_experts:
            d["moe"] = self.moe()
        if self.checkpoint is not None:
            d["checkpoint"] = self.checkpoint.to_dict()
        if include_ops:
            d["ops"] = list(self.rows())
        return d


def analyze(spec: ModelSpec, workload: Workload | None = None, **workload_fields) -> Analysis:
    """Costs of running ``spec`` on ``workload`` (or a Workload built from keyword arguments)."""
    wl = workload if workload is not None else Workload(**workload_fields)
    warnings = tuple(wl.check_against(spec))
    encode = prefill = decode = alternative = None
    if spec.arch != "decoder":
        encode = Phase("encode", 1, encode_cost(spec, wl))
    if spec.arch != "encoder":
        prefill = Phase("prefill", 1, prefill_cost(spec, wl))
        decode = Phase("decode", wl.decode_steps, decode_cost(spec, wl))
        alternative = Phase("decode", wl.decode_steps, decode_cost(spec, replace(wl, kv_cache=not wl.kv_cache)))
    memory = memory_of(spec, wl, encode=encode.cost if encode else None,
                       prefill=prefill.cost if prefill else None)
    return Analysis(spec, wl, prefill, decode, memory, alternative, warnings, encode)
