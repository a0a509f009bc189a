"""Per-op, per-phase costs on small specs, against values derived by hand."""

from dataclasses import replace

import pytest

from costmodel import ModelSpec, Workload, analyze, get_model
from costmodel.analysis import decode_cost, decode_step_cost, prefill_cost
from costmodel.errors import SpecError

# MHA, 4h plain MLP: the textbook case. h = 16, 2 heads of 8, 2 layers, vocab 32.
MHA = ModelSpec(name="mha", num_layers=2, hidden_size=16, num_heads=2, intermediate_size=64,
                vocab_size=32, max_position_embeddings=64, mlp_kind="plain", activation="gelu",
                norm_kind="layernorm", position_kind="learned", family="gpt2")
# GQA: 4 query heads of 4, 2 kv heads; gated MLP of 24.
GQA = ModelSpec(name="gqa", num_layers=2, hidden_size=16, num_heads=4, num_kv_heads=2,
                intermediate_size=24, vocab_size=32, max_position_embeddings=64)
MQA = replace(GQA, name="mqa", num_kv_heads=1)
WL = Workload(batch=2, prompt=8, gen=3, weight_dtype="bf16", act_dtype="bf16")


def ops(cost):
    return {o.op: o for o in cost.layer + cost.before + cost.after}


def layer_matmul(cost, names):
    o = ops(cost)
    return sum(o[n].matmul_flops for n in names)


def test_textbook_mha_prefill_per_layer():
    # b = 2, s = 8, h = 16. Attention: 8bsh^2 + 4bs^2h = 8*2*8*256 + 4*2*64*16 = 32768 + 8192 = 40960
    pre = prefill_cost(MHA, WL)
    assert layer_matmul(pre, ["q_proj", "k_proj", "v_proj", "o_proj", "attn_scores", "attn_values"]) == 40960
    # MLP: 16bsh^2 = 16*2*8*256 = 65536
    assert layer_matmul(pre, ["mlp_up", "mlp_down"]) == 65536
    # layer total: 24bsh^2 + 4bs^2h = 98304 + 8192 = 106496
    assert sum(o.matmul_flops for o in pre.layer) == 106496


def test_mha_per_op_prefill():
    o = ops(prefill_cost(MHA, WL))
    assert o["q_proj"].flops == 2 * 16 * 16 * 16 == 8192  # 2 * (b*s tokens = 16) * h * h
    assert o["attn_scores"].flops == 2 * 2 * 2 * 8 * 8 * 8 == 4096  # 2 * b * heads * s * s * d
    assert o["attn_softmax"].flops == 6 * 2 * 2 * 8 * 8 == 1536  # 6 per score element
    assert o["attn_softmax"].matmul_flops == 0
    assert o["attn_norm"].flops == 7 * 16 * 16  # LayerNorm: 7 per element of [16 tokens, 16]
    assert o["mlp_act"].flops == 8 * 16 * 64  # GELU: 8 per element of [16, 64]
    assert o["pos_embedding"].flops == 16 * 16  # one add per element
    # LM head, logits "last": 2 * b * 1 * h * V = 2 * 2 * 16 * 32 = 2048
    assert o["lm_head"].matmul_flops == 2048
    # bytes, bf16 = 2 bytes: q_proj reads W [16, 16] and x [16, 16], writes [16, 16]: 3 * 256 * 2
    assert (o["q_proj"].weight_bytes, o["q_proj"].act_read_bytes, o["q_proj"].act_write_bytes) == (512, 512, 512)
    # scores: read Q [16 tokens, 16], K from the cache (2 seqs * 8 pos * 16), write 2*2*8*8 scores
    s = o["attn_scores"]
    assert (s.act_read_bytes, s.kv_read_bytes, s.act_write_bytes) == (512, 512, 512)
    # cache update writes k and v of 16 tokens: 2 * 16 * 16 elements * 2 bytes
    assert o["kv_cache_update"].kv_write_bytes == 1024


def test_logits_all_computes_every_position():
    o = ops(prefill_cost(MHA, replace(WL, logits="all")))
    assert o["lm_head"].matmul_flops == 2 * 2 * 8 * 16 * 32 == 16384  # 2 * b * s * h * V


def test_decode_with_cache_grows_with_context():
    # step i feeds one token per sequence and attends over s + i keys; gen 3 -> steps 1 and 2
    dec = decode_cost(MHA, WL)
    o = ops(dec)
    assert o["q_proj"].flops == 2 * (2 * 2 * 16 * 16) == 2048  # 2 steps of 2 * b * h * h
    # scores: 2*b*heads*1*(s+i)*d = 64 * (8 + i): 64*9 + 64*10 = 1216
    assert o["attn_scores"].flops == 1216
    # lm head every step: 2 steps * 2 * b * h * V = 2 * 2048
    assert o["lm_head"].flops == 4096
    # KV read per step and layer: 2 seqs * (s+i) positions * 16 values * 2 bytes, for K in scores
    assert o["attn_scores"].kv_read_bytes == 2 * 9 * 16 * 2 + 2 * 10 * 16 * 2 == 1216


def test_decode_without_cache_recomputes_the_prefix():
    wl = replace(WL, kv_cache=False)
    o = ops(decode_cost(MHA, wl))
    # step i recomputes s + i tokens: 2 * b * (s+i) * h * h = 1024 * (8 + i): 1024 * (9 + 10)
    assert o["q_proj"].flops == 1024 * 19 == 19456
    # scores: 2 * b * heads * (s+i)^2 * d = 64 * (81 + 100)
    assert o["attn_scores"].flops == 64 * 181
    assert "kv_cache_update" not in o
    # logits "last": the recompute still projects only the last position
    assert o["lm_head"].flops == 2 * 2048


def test_kv_cache_saving_is_reported():
    r = analyze(MHA, WL)
    saving = r.kv_cache_saving()
    without = analyze(MHA, replace(WL, kv_cache=False))
    assert saving["decode_flops_with_cache"] == r.decode.flops
    assert saving["decode_flops_without_cache"] == without.decode.flops
    assert saving["flops_ratio"] > 1
    assert without.kv_cache_saving() == saving


@pytest.mark.parametrize("spec", [MHA, GQA, MQA, get_model("tiny-qwen2"), get_model("tiny-gemma")])
@pytest.mark.parametrize("wl", [
    WL,
    replace(WL, kv_cache=False),
    replace(WL, causal=True, gen=6),
    replace(WL, kv_cache=False, causal=True, logits="all", gen=5),
    replace(WL, beams=3, gen=4, kv_dtype="int8"),
])
def test_decode_total_equals_the_step_by_step_sum(spec, wl):
    dec = decode_cost(spec, wl)
    steps = [decode_step_cost(spec, wl, i) for i in range(1, wl.gen)]
    for field in ("flops", "matmul_flops", "weight_bytes", "act_read_bytes", "act_write_bytes",
                  "kv_read_bytes", "kv_write_bytes"):
        assert dec.total(field) == sum(s.total(field) for s in steps), field


def test_gqa_projections_and_cache():
    o = ops(prefill_cost(GQA, WL))
    # k_proj: 2 * tokens * h * (kv_heads * d) = 2 * 16 * 16 * (2 * 4) = 4096; q is twice that
    assert o["k_proj"].flops == 4096 and o["v_proj"].flops == 4096
    assert o["q_proj"].flops == 8192
    # scores use every query head: 2 * b * 4 heads * 8 * 8 * 4 = 4096
    assert o["attn_scores"].flops == 4096
    # gated MLP: three matrices of 2 * 16 * 16 * 24 = 12288
    assert o["mlp_gate"].flops == o["mlp_up"].flops == o["mlp_down"].flops == 12288
    assert o["mlp_mul"].flops == 16 * 24
    assert o["mlp_act"].flops == 4 * 16 * 24  # SiLU
    # rotary on q (4 heads) and k (2 heads): 3 * 16 tokens * 6 heads * 4
    assert o["rotary"].flops == 3 * 16 * 6 * 4
    r = analyze(GQA, WL)
    # per token: 2 (k, v) * 2 layers * 2 kv heads * 4 * 2 bytes = 64; held: 2 seqs * (8 + 3 - 1) pos
    assert r.memory.kv_cache_bytes_per_token == 64
    assert r.memory.kv_cache_bytes == 64 * 2 * 10 == 1280


def test_mqa_cache_is_one_head():
    o = ops(prefill_cost(MQA, WL))
    assert o["k_proj"].flops == 2 * 16 * 16 * 4 == 2048
    assert analyze(MQA, WL).memory.kv_cache_bytes_per_token == 2 * 2 * 1 * 4 * 2 == 32


def test_biases_are_elementwise_rows():
    spec = replace(MHA, attention_bias=True, attention_out_bias=True, mlp_bias=True)
    o = ops(prefill_cost(spec, WL))
    assert o["qkv_bias"].flops == 16 * (16 + 2 * 16)  # tokens * (q + 2 kv) columns
    assert o["qkv_bias"].matmul_flops == 0
    assert o["o_bias"].flops == 16 * 16
    assert o["mlp_up_bias"].flops == 16 * 64
    assert o["mlp_down_bias"].flops == 16 * 16
    # the matmuls are unchanged by biases
    assert ops(prefill_cost(MHA, WL))["q_proj"].flops == o["q_proj"].flops
    # params: q,k,v biases 48, o bias 16, mlp biases 64 + 16 per layer
    assert spec.num_params - MHA.num_params == 2 * (48 + 16 + 64 + 16)


def test_tied_embeddings_counted_once():
    tied = replace(GQA, tie_word_embeddings=True)
    assert GQA.num_params - tied.num_params == 32 * 16  # V * h
    # the LM head still computes: FLOPs are the same
    assert analyze(tied, WL).prefill.flops == analyze(GQA, WL).prefill.flops


def test_head_dim_differs_from_hidden_over_heads():
    spec = get_model("tiny-gemma")  # h = 64, 2 heads of 48, 1 kv head
    o = ops(prefill_cost(spec, WL))
    assert o["q_proj"].flops == 2 * 16 * 64 * 96  # q has heads * d = 96 columns
    assert o["o_proj"].flops == 2 * 16 * 96 * 64
    assert o["k_proj"].flops == 2 * 16 * 64 * 48
    assert o["attn_scores"].flops == 2 * 2 * 2 * 8 * 8 * 48


def test_rows_sum_to_phase_totals_and_layers_are_indexed():
    r = analyze(GQA, WL)
    rows = list(r.rows())
    for phase in ("prefill", "decode"):
        mine = [x for x in rows if x["phase"] == phase]
        for key in ("flops", "matmul_flops", "bytes"):
            assert sum(x[key] for x in mine) == getattr(r.phases[phase], key)
        assert {x["layer"] for x in mine} == {None, 0, 1}
        assert [x["op"] for x in mine if x["layer"] is None] == ["embedding", "final_norm", "lm_head",
                                                                 "sampling_argmax"]  # greedy


def test_activation_peak_is_the_attention_scores_at_long_prompts():
    spec = replace(MHA, max_position_embeddings=128)
    wl = Workload(batch=1, prompt=64, gen=1)
    # softmax reads and writes 1 * 2 heads * 64 * 64 scores: 2 * 8192 elements * 2 bytes = 32768,
    # plus the residual stream 64 * 16 * 2 bytes = 2048
    assert analyze(spec, wl).memory.activation_peak_bytes == 34816


def test_dtypes_per_component():
    wl = Workload(batch=1, prompt=4, gen=2, weight_dtype="int4", act_dtype="fp16", kv_dtype="fp8")
    r = analyze(GQA, wl)
    assert r.memory.weights_bytes == GQA.num_params // 2  # 4 bits a parameter
    assert r.memory.kv_cache_bytes_per_token == 2 * 2 * 2 * 4 * 1  # fp8: 1 byte
    o = ops(prefill_cost(GQA, wl))
    assert o["q_proj"].weight_bytes == 16 * 16 // 2
    assert o["q_proj"].act_read_bytes == 4 * 16 * 2  # fp16 activations


def test_gen_one_has_no_decode_steps():
    r = analyze(GQA, Workload(batch=1, prompt=4, gen=1))
    assert r.decode.steps == 0 and r.decode.flops == 0 and r.decode.bytes == 0
    assert r.memory.kv_cache_bytes == 64 * 4  # the prompt's 4 positions


def test_huge_workloads_stay_exact():
    # batch 4096, context 10M, hidden 65536, 1000 layers: Python ints, no overflow, no rounding
    spec = ModelSpec(name="huge", num_layers=1000, hidden_size=65536, num_heads=512,
                     intermediate_size=4 * 65536, vocab_size=256000, max_position_embeddings=10**7,
                     mlp_kind="plain", activation="gelu")
    wl = Workload(batch=4096, prompt=10**7, gen=1000)
    r = analyze(spec, wl)
    b, s, h = 4096, 10**7, 65536
    o = ops(r.prefill.cost)
    assert o["attn_scores"].flops == 2 * b * s * s * h  # 2 * b * heads * s * s * d, heads * d = h
    attn = 8 * b * s * h * h + 4 * b * s * s * h
    assert sum(o[n].matmul_flops for n in ("q_proj", "k_proj", "v_proj", "o_proj", "attn_scores",
                                          "attn_values")) == attn
    assert r.prefill.matmul_flops > 2**63  # beyond int64: still exact
    assert isinstance(r.prefill.matmul_flops, int) and isinstance(r.decode.bytes, int)
    # decode scores: sum over i=1..999 of 2*b*(s+i)*h = 2*b*h*(999*s + 999*1000/2)
    assert ops(r.decode.cost)["attn_scores"].flops == 2 * b * h * (999 * s + 999 * 500)


def test_context_beyond_max_positions_warns():
    r = analyze(MHA, Workload(batch=1, prompt=60, gen=10))
    assert r.warnings and "exceeds" in r.warnings[0] and "69" in r.warnings[0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(batch=0), "batch must be a positive integer, got 0"),
    (dict(prompt=-3), "prompt must be a positive integer, got -3"),
    (dict(gen=0), "gen must be a positive integer"),
    (dict(batch=2.5), "batch must be a positive integer"),
    (dict(act_dtype="int4"), "activation dtype 'int4' is not supported"),
    (dict(kv_dtype="fp64"), "unknown KV-cache dtype 'fp64'; allowed:"),
    (dict(logits="some"), "unknown logits 'some'; allowed: all, last"),
])
def test_bad_workloads(kwargs, message):
    with pytest.raises(SpecError, match=message):
        Workload(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_heads=3), r"hidden_size \(16\) is not divisible by num_heads \(3\)"),
    (dict(num_kv_heads=3, num_heads=4), r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)"),
    (dict(num_layers=0), "num_layers must be a positive integer, got 0"),
    (dict(mlp_kind="moe"), "unknown mlp_kind 'moe'; allowed: gated, plain"),
])
def test_bad_specs(kwargs, message):
    base = dict(name="x", num_layers=2, hidden_size=16, num_heads=2, intermediate_size=24,
                vocab_size=32, max_position_embeddings=64)
    with pytest.raises(SpecError, match=message):
        ModelSpec(**{**base, **kwargs})


def test_int4_needs_even_dimensions():
    odd = ModelSpec(name="odd", num_layers=1, hidden_size=16, num_heads=2, intermediate_size=23,
                    vocab_size=32, max_position_embeddings=64)
    with pytest.raises(SpecError, match="even intermediate_size"):
        analyze(odd, Workload(weight_dtype="int4", prompt=4, gen=2))
