"""Invariants of the analytic model over thousands of random valid specs and workloads (hypothesis)."""

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel import ModelSpec, Workload, analyze
from costmodel.analysis import decode_cost, decode_step_cost, kv_cache_bytes, prefill_cost

DTYPES = st.sampled_from(["fp32", "bf16", "fp16", "fp8", "int8"])


@st.composite
def specs(draw):
    kv_heads = draw(st.integers(1, 4))
    heads = kv_heads * draw(st.integers(1, 4))
    head_dim = 2 * draw(st.integers(1, 8))  # even: rotary and int4 need it
    explicit_head_dim = draw(st.booleans())
    hidden = 2 * draw(st.integers(1, 32)) if explicit_head_dim else heads * head_dim
    family = draw(st.sampled_from(["gpt2", "llama"]))
    return ModelSpec(
        name="random", num_layers=draw(st.integers(1, 4)), hidden_size=hidden, num_heads=heads,
        num_kv_heads=kv_heads, head_dim=head_dim if explicit_head_dim else None,
        intermediate_size=2 * draw(st.integers(1, 48)), vocab_size=draw(st.integers(1, 300)),
        max_position_embeddings=10**6, mlp_kind=draw(st.sampled_from(["plain", "gated"])),
        activation=draw(st.sampled_from(["gelu", "gelu_tanh", "silu", "relu"])),
        norm_kind=draw(st.sampled_from(["layernorm", "rmsnorm"])),
        position_kind=draw(st.sampled_from(["learned", "rotary"])),
        attention_bias=draw(st.booleans()), attention_out_bias=draw(st.booleans()),
        mlp_bias=draw(st.booleans()), tie_word_embeddings=draw(st.booleans()), family=family)


@st.composite
def workloads(draw):
    act = draw(DTYPES)
    return Workload(
        batch=draw(st.integers(1, 8)), prompt=draw(st.integers(1, 64)), gen=draw(st.integers(1, 12)),
        weight_dtype=draw(st.sampled_from(["fp32", "bf16", "fp8", "int8", "int4"])), act_dtype=act,
        kv_dtype=draw(st.sampled_from([act, "int4", "fp8"])), logits=draw(st.sampled_from(["last", "all"])),
        kv_cache=draw(st.booleans()), causal=draw(st.booleans()), beams=draw(st.integers(1, 3)))


FIELDS = ("flops", "matmul_flops", "weight_bytes", "act_read_bytes", "act_write_bytes", "kv_read_bytes",
          "kv_write_bytes")


@settings(max_examples=1000, deadline=None)
@given(specs(), workloads())
def test_rows_sum_to_totals_and_decode_equals_the_loop(spec, wl):
    r = analyze(spec, wl)
    for phase in ("prefill", "decode"):
        rows = [x for x in r.rows() if x["phase"] == phase]
        for key in ("flops", "matmul_flops", "bytes"):
            assert sum(x[key] for x in rows) == getattr(r.phases[phase], key)
        assert all(x["matmul_flops"] in (0, x["flops"]) for x in rows)
    steps = [decode_step_cost(spec, wl, i) for i in range(1, wl.gen)]
    for f in FIELDS:
        assert r.decode.cost.total(f) == sum(s.total(f) for s in steps)


@settings(max_examples=1000, deadline=None)
@given(specs(), workloads(), st.integers(1, 20))
def test_a_cached_decode_step_costs_less_than_recomputing_the_prefix(spec, wl, i):
    cached = decode_step_cost(spec, replace(wl, kv_cache=True), i)
    recompute = decode_step_cost(spec, replace(wl, kv_cache=False), i)
    assert cached.total("flops") < recompute.total("flops")
    assert cached.total("matmul_flops") < recompute.total("matmul_flops")


@settings(max_examples=500, deadline=None)
@given(specs(), workloads())
def test_costs_grow_with_batch_and_context(spec, wl):
    base = analyze(spec, wl)
    more_batch = analyze(spec, replace(wl, batch=wl.batch + 1))
    longer = analyze(spec, replace(wl, prompt=wl.prompt + 1))
    for bigger in (more_batch, longer):
        assert bigger.prefill.flops > base.prefill.flops
        assert bigger.prefill.bytes > base.prefill.bytes
        assert bigger.decode.flops >= base.decode.flops
        assert bigger.memory.kv_cache_bytes >= base.memory.kv_cache_bytes
        assert bigger.memory.activation_peak_bytes >= base.memory.activation_peak_bytes
    if wl.gen > 1:
        assert more_batch.decode.flops > base.decode.flops and longer.decode.flops > base.decode.flops
    assert analyze(spec, replace(wl, gen=wl.gen + 1)).decode.flops > base.decode.flops


@settings(max_examples=500, deadline=None)
@given(specs(), workloads(), st.integers(1, 5))
def test_kv_bytes_are_linear_in_context_and_kv_heads(spec, wl, k):
    wl = replace(wl, kv_cache=True)
    one = kv_cache_bytes(spec, wl, positions=wl.prompt)
    assert kv_cache_bytes(spec, wl, positions=k * wl.prompt) == k * one
    more_heads = replace(spec, num_kv_heads=spec.num_kv_heads * k, num_heads=spec.num_heads * k,
                         head_dim=spec.head_dim)
    assert kv_cache_bytes(more_heads, wl, positions=wl.prompt) == k * one


@settings(max_examples=1000, deadline=None)
@given(st.integers(1, 8), st.integers(1, 64), st.integers(1, 8), st.integers(1, 16), st.booleans(),
       st.sampled_from(["layernorm", "rmsnorm"]), st.sampled_from(["learned", "rotary"]))
def test_mha_with_4h_mlp_is_24bsh2_plus_4bs2h(b, s, heads, half_d, bias, norm, pos):
    d = 2 * half_d
    h = heads * d
    spec = ModelSpec(name="mha", num_layers=3, hidden_size=h, num_heads=heads, intermediate_size=4 * h,
                     vocab_size=50, max_position_embeddings=1024, mlp_kind="plain", activation="gelu",
                     norm_kind=norm, position_kind=pos, attention_bias=bias, attention_out_bias=bias,
                     mlp_bias=bias)
    pre = prefill_cost(spec, Workload(batch=b, prompt=s, gen=1))
    assert sum(o.matmul_flops for o in pre.layer) == 24 * b * s * h * h + 4 * b * s * s * h


@settings(max_examples=300, deadline=None)
@given(specs(), workloads())
def test_decode_cost_is_independent_of_how_it_is_summed(spec, wl):
    # summing steps 1..n in two halves equals the whole: the closed form is consistent
    n = wl.gen - 1
    whole = decode_cost(spec, wl)
    first = decode_cost(spec, replace(wl, gen=n // 2 + 1))
    second = sum(decode_step_cost(spec, wl, i).total("flops") for i in range(n // 2 + 1, n + 1))
    assert whole.total("flops") == first.total("flops") + second


PLAN_MODELS = ["gpt2", "llama-2-7b", "llama-2-70b", "mistral-7b", "mixtral-8x7b", "t5-large", "bert-large",
               "gemma-7b"]
PLAN_GPUS = ["l4", "a10g", "rtx-4090", "a100-sxm-40gb", "h100-sxm", "mi300x"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(PLAN_MODELS), st.sampled_from(PLAN_GPUS), st.integers(1, 8192), st.integers(1, 2048),
       st.sampled_from(["bf16", "fp8", "int4"]), st.sampled_from([1, 2, 4, 8]))
def test_plan_max_batch_fits_and_one_more_does_not(model, gpu, prompt, gen, kv_dtype, tp):
    from costmodel import get_hardware, get_model
    from costmodel.plan import Layout, allowed_tp, max_batch, memory_use

    spec, hw = get_model(model), get_hardware(gpu)
    layout = Layout(tp=tp if spec.arch == "decoder" and tp in allowed_tp(spec) else 1)
    wl = Workload(prompt=prompt, gen=gen, kv_dtype=kv_dtype)
    n = max_batch(spec, hw, wl, layout)
    if n:
        assert memory_use(spec, hw, replace(wl, batch=n), layout).fits
    assert not memory_use(spec, hw, replace(wl, batch=n + 1), layout).fits
