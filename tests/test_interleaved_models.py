"""Gemma 2, Gemma 3 (text), gpt-oss and Llama 4 (text) against transformers 5.23's own models
(tests/fixtures/hf/<model_type>.json: matmul FLOPs counted by FlopCounterMode, eager attention and
experts, fp32) and the released checkpoints' parameter counts (published_params.json); the new
element-wise ops by hand.

A prefill's matmul FLOPs do not depend on the sliding / chunked masks (eager attention scores the
whole q_len x kv_len matrix on every layer), so they are exact here wherever all layers have the
same MLP; Llama 4's dense and MoE layers differ, and a decode step's keys and the KV cache differ by
layer kind: those totals come from the layer groups (``ModelSpec.layer_groups``: attention kind,
MLP kind, NoPE or not); the same numbers are checked exactly here layer by layer with
``layer_ops(..., layer=i)``.
"""

import json
from pathlib import Path

import pytest

from costmodel import ModelSpec, Workload, get_model
from costmodel.analysis import decode_cost, decode_step_cost, kv_cache_bytes, layer_ops, model_ops, prefill_cost
from costmodel.errors import SpecError
from costmodel.models import spec_from_hf_dict

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
TYPES = ("gemma2", "gemma3_text", "gpt_oss", "llama4_text")
UNIFORM = ("gemma2", "gemma3_text", "gpt_oss")  # every layer has the same MLP
PRESETS = ("gemma-2-9b", "gemma-2-27b", "gemma-3-12b", "gemma-3-27b", "gpt-oss-20b", "gpt-oss-120b",
           "llama-4-scout", "llama-4-maverick")


def fixture(model_type):
    return json.loads((FIXTURES / f"{model_type}.json").read_text())


def fixture_spec(model_type):
    fx = fixture(model_type)
    return spec_from_hf_dict({"model_type": model_type, **fx["config"]}, name=model_type), fx


def fp32(fx, **kw):
    return Workload(batch=fx["batch"], prompt=fx["prompt"], gen=5, weight_dtype="fp32", act_dtype="fp32", **kw)


def matmul(ops):
    return sum(o.matmul_flops for o in ops)


def window(spec, layer):
    """Keys a decode step of ``layer`` sees in transformers: min(context, W) on a sliding layer,
    min(context, chunk) on a chunked one (its DynamicSlidingWindowLayer keeps chunk - 1)."""
    return {"sliding_attention": spec.sliding_window,
            "chunked_attention": spec.attention_chunk_size}.get(spec.layer_types[layer])


def layered_flops(spec, wl, batch, q_len, context, logits_positions):
    """Matmul FLOPs of one pass summed layer by layer (each layer its own MLP kind, rotary or not,
    and its keys: all ``context`` in a prefill, at most its window in a decode step)."""
    before, after = model_ops(spec, wl, batch, q_len, logits_positions)
    total = matmul(before + after)
    for i in range(spec.num_layers):
        w = window(spec, i)
        kv = context if q_len > 1 or w is None else min(context, w)
        total += matmul(layer_ops(spec, wl, batch, q_len, kv, layer=i))
    return total


# --- parameters -------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type", TYPES)
def test_parameters_are_transformers(model_type):
    spec, fx = fixture_spec(model_type)
    assert spec.num_params == fx["num_params"] == fx["num_params_meta"]


def test_parameters_by_hand():
    # gemma2: h 64, 4 heads / 2 kv of d 32: attention 64*128 + 2*64*64 + 128*64 = 24576; MLP 3*64*128
    # = 24576; 4 norms (sandwich) 256: 49408 a layer; 4 layers + embedding 128*64 (tied) + final norm 64
    assert fixture_spec("gemma2")[0].num_params == 4 * 49408 + 8192 + 64 == 205888
    # gemma3_text: the same + q_norm and k_norm (head_dim 32 each): 49472 a layer, 6 layers
    assert fixture_spec("gemma3_text")[0].num_params == 6 * 49472 + 8192 + 64 == 305088
    # gpt_oss: h 64, 4 heads / 2 kv of d 16: attention 12288 + biases 64 + 2*32 + 64 + sinks 4 = 12484;
    # router 64*4 + 4 bias; 4 experts of 3*64*32 + biases 2*32 + 64 = 6272 each; norms 128: 37960 a
    # layer; 4 layers + embedding 8192 + untied head 8192 + final norm 64
    assert fixture_spec("gpt_oss")[0].num_params == 4 * 37960 + 8192 + 8192 + 64 == 168288
    # llama4_text: attention 12288; dense layers (0, 2): MLP 3*64*128 = 24576; MoE layers (1, 3):
    # router 256 + 4 experts 4*3*64*32 = 24576 + shared expert 3*64*32 = 6144; norms 128
    dense, moe = 12288 + 24576 + 128, 12288 + 256 + 24576 + 6144 + 128
    assert fixture_spec("llama4_text")[0].num_params == 2 * dense + 2 * moe + 8192 + 8192 + 64 == 177216


PUBLISHED = json.loads((FIXTURES / "published_params.json").read_text())["presets"]


@pytest.mark.parametrize("name", PRESETS)
def test_presets_have_the_published_counts(name):
    published = PUBLISHED[name]
    spec = get_model(name)
    assert spec.num_params == published["num_params"]
    assert spec.embedding_params() == published["embedding_params"]
    if "active_params" in published:  # with the input embedding (see the fixture's notes)
        assert spec.active_params == published["active_params"]
    # the released config.json read by the reader is the preset
    assert spec_from_hf_dict(published["config"], name=name) == spec


def test_llama4_active_parameters_count_the_routed_top_1():
    # llama-4-scout: 48 MoE layers each leave 15 of 16 experts unused, 3 * 5120 * 8192 each
    spec = get_model("llama-4-scout")
    assert spec.num_params - spec.active_params == 48 * 15 * 3 * 5120 * 8192
    # maverick: MoE on every 2nd layer only (24 layers), 127 of 128 unused
    spec = get_model("llama-4-maverick")
    assert spec.num_params - spec.active_params == 24 * 127 * 3 * 5120 * 8192
    assert spec.summary()["moe_all_experts"] is True  # its FLOPs run all 128 on every token


# --- prefill and decode matmul FLOPs ----------------------------------------------------------

@pytest.mark.parametrize("logits", ["all", "last"])
@pytest.mark.parametrize("model_type", UNIFORM)
def test_prefill_matmul_flops_are_transformers(model_type, logits):
    spec, fx = fixture_spec(model_type)
    assert prefill_cost(spec, fp32(fx, logits=logits)).total("matmul_flops") == fx["prefill"][f"logits_{logits}"]["flops"]


@pytest.mark.parametrize("logits", ["all", "last"])
@pytest.mark.parametrize("model_type", TYPES)
def test_prefill_matmul_flops_layer_by_layer(model_type, logits):
    spec, fx = fixture_spec(model_type)
    b, s = fx["batch"], fx["prompt"]
    flops = layered_flops(spec, fp32(fx, logits=logits), b, s, s, s if logits == "all" else 1)
    assert flops == fx["prefill"][f"logits_{logits}"]["flops"]


@pytest.mark.parametrize("logits", ["all", "last"])
def test_llama4_prefill_matmul_flops(logits):
    spec, fx = fixture_spec("llama4_text")
    assert prefill_cost(spec, fp32(fx, logits=logits)).total("matmul_flops") == fx["prefill"][f"logits_{logits}"]["flops"]


def test_llama4_runs_every_expert_on_every_token():
    spec, fx = fixture_spec("llama4_text")
    ops = {o.op: o for o in layer_ops(spec, fp32(fx), 2, 12, 12, layer=1)}
    # 24 tokens through all 4 experts: gate and up 2 * 96 * 64 * 32 each, down 2 * 96 * 32 * 64
    experts = ops["expert_gate"].flops + ops["expert_up"].flops + ops["expert_down"].flops
    assert experts == 3 * 2 * 96 * 64 * 32 == fx["prefill"]["logits_all"]["by_module"][
        "Llama4ForCausalLM.model.layers.1.feed_forward.experts"]
    assert 2 * experts == fx["prefill"]["logits_all"]["routed_expert_flops"]  # MoE layers 1 and 3


def test_gpt_oss_runs_the_top_k_experts():
    spec, fx = fixture_spec("gpt_oss")
    ops = {o.op: o for o in layer_ops(spec, fp32(fx), 2, 12, 12)}
    # 24 tokens x top 2 = 48 rows: gate_up 2 * 48 * 64 * (2 * 32), down 2 * 48 * 32 * 64, per layer
    experts = ops["expert_gate"].flops + ops["expert_up"].flops + ops["expert_down"].flops
    assert 4 * experts == 4 * (393216 + 196608) == fx["prefill"]["logits_all"]["routed_expert_flops"]
    assert fx["prefill_flops_by_experts_implementation"]["eager"] == fx["prefill"]["logits_all"]["flops"]


def decode_steps(fx):
    """(prompt, context_before, counted FLOPs) of every measured decode step."""
    short = fx["decode_steps_short_prompt"]
    return ([(fx["prompt"], st["context_before"], st["flops"]) for st in fx["decode_steps"]]
            + [(short["prompt"], st["context_before"], st["flops"]) for st in short["steps"]])


@pytest.mark.parametrize("model_type", TYPES)
def test_decode_matmul_flops_layer_by_layer(model_type):
    # context_before c: the step feeds token c + 1 and attends over min(c + 1, W) keys on a
    # sliding / chunked layer (contexts 3..10 cross the window of 8)
    spec, fx = fixture_spec(model_type)
    for prompt, c, counted in decode_steps(fx):
        wl = Workload(batch=fx["batch"], prompt=prompt, gen=12, weight_dtype="fp32", act_dtype="fp32")
        assert layered_flops(spec, wl, fx["batch"], 1, c + 1, 1) == counted, (prompt, c)


@pytest.mark.parametrize("model_type", TYPES)
def test_decode_step_matmul_flops(model_type):
    spec, fx = fixture_spec(model_type)
    for prompt, c, counted in decode_steps(fx):
        wl = Workload(batch=fx["batch"], prompt=prompt, gen=12, weight_dtype="fp32", act_dtype="fp32")
        assert decode_step_cost(spec, wl, c + 1 - prompt).total("matmul_flops") == counted, (prompt, c)


@pytest.mark.parametrize("model_type", TYPES)
def test_kv_cache_bytes(model_type):
    spec, fx = fixture_spec(model_type)
    wl = fp32(fx)
    assert kv_cache_bytes(spec, wl, fx["prompt"]) == fx["kv_cache_bytes"]["after_prefill"]
    assert kv_cache_bytes(spec, wl, fx["prompt"] + 4) == fx["kv_cache_bytes"]["after_decode"]


# --- the new element-wise ops, by hand ----------------------------------------------------------

def ops_of(model_type, layer=None, logits="all"):
    spec, fx = fixture_spec(model_type)
    wl = fp32(fx, logits=logits)
    before, after = model_ops(spec, wl, 2, 12, 12 if logits == "all" else 1)
    return {o.op: o for o in before + layer_ops(spec, wl, 2, 12, 12, layer=layer) + after}


def test_gemma2_ops():
    # batch 2 x prompt 12 = 24 tokens; h 64, 4 heads, 2 x 4 x 12 x 12 = 1152 scores, vocabulary 128
    ops = ops_of("gemma2")
    assert ops["embedding_scale"].flops == 24 * 64  # x * sqrt(64)
    assert ops["attn_softcap"].flops == 3 * 1152  # x / 50, tanh, * 50
    assert ops["post_attn_norm"].flops == ops["post_mlp_norm"].flops == 4 * 24 * 64
    assert ops["post_attn_norm"].weight_bytes == 4 * 64
    assert ops["logits_softcap"].flops == 3 * 24 * 128
    assert ops_of("gemma2", logits="last")["logits_softcap"].flops == 3 * 2 * 128
    assert ops["mlp_act"].flops == 8 * 24 * 128  # tanh GELU
    assert "q_norm" not in ops


def test_gemma3_ops():
    ops = ops_of("gemma3_text")
    # RMSNorm over head_dim 32 on 4 q heads and 2 k heads of 24 tokens, a weight of 32 each
    assert ops["q_norm"].flops == 4 * 24 * 4 * 32
    assert ops["k_norm"].flops == 4 * 24 * 2 * 32
    assert ops["q_norm"].weight_bytes == ops["k_norm"].weight_bytes == 4 * 32
    assert "attn_softcap" not in ops and "logits_softcap" not in ops  # Gemma 3 has no soft-capping
    assert "post_mlp_norm" in ops and "embedding_scale" in ops


def test_gpt_oss_ops():
    ops = ops_of("gpt_oss")
    # sinks: one more softmax element per row of 2 x 4 heads x 12 queries; its 4 logits read
    assert ops["attn_sinks"].flops == 5 * 2 * 4 * 12
    assert ops["attn_sinks"].weight_bytes == 4 * 4
    # router: logits [24, 4] + bias; top 2 of 4 (4 comparisons a token); softmax over the 2 kept
    assert ops["router_bias"].flops == 24 * 4
    assert ops["router_topk"].flops == 24 * 4
    assert ops["router_softmax"].flops == 5 * 24 * 2
    # 48 expert rows of width 32: gate and up biases, clamped SwiGLU 7 + 4, down bias over 64
    m = 48 * 32
    assert ops["expert_up_bias"].flops == 2 * m
    assert (ops["expert_act"].flops, ops["expert_mul"].flops) == (7 * m, 4 * m)
    assert ops["expert_down_bias"].flops == 48 * 64
    assert ops["expert_combine"].flops == 2 * 24 * 2 * 64
    assert ops["qkv_bias"].flops == 24 * (64 + 2 * 32) and ops["o_bias"].flops == 24 * 64


def test_llama4_ops():
    # layer 0: dense, rotary, L2 q/k norm (3 per element, no weight); layer 3: MoE, NoPE
    rope = ops_of("llama4_text", layer=0)
    assert rope["q_norm"].flops == 3 * 24 * 4 * 16 and rope["k_norm"].flops == 3 * 24 * 2 * 16
    assert rope["q_norm"].weight_bytes == 0
    assert "rotary" in rope and "attn_temperature" not in rope and "router" not in rope
    assert rope["mlp_up"].flops == 2 * 24 * 64 * 128  # the dense width, intermediate_size_mlp
    nope = ops_of("llama4_text", layer=3)
    assert "rotary" not in nope and "q_norm" not in nope
    assert nope["attn_temperature"].flops == 6 * 12 + 24 * 64  # a scale per position, then q * scale
    # MoE: top 1 of 4, sigmoid over [24, 4]; x * score into each of the 4 experts; outputs summed
    assert nope["router_topk"].flops == 24 * 4
    assert nope["router_sigmoid"].flops == 4 * 24 * 4
    assert nope["expert_input_scale"].flops == 24 * 4 * 64
    assert nope["expert_combine"].flops == 3 * 24 * 64
    assert nope["shared_expert_up"].flops == 2 * 24 * 64 * 32
    assert nope["shared_expert_combine"].flops == 24 * 64


# --- the reader and the spec --------------------------------------------------------------------

def test_gemma3_sliding_pattern_and_rope():
    cfg = {"model_type": "gemma3_text", "num_hidden_layers": 7, "hidden_size": 64, "num_attention_heads": 4,
           "intermediate_size": 128, "vocab_size": 128}
    spec = spec_from_hf_dict({**cfg, "sliding_window_pattern": 3}, name="m")
    assert spec.layer_types == ("sliding_attention", "sliding_attention", "full_attention") * 2 + ("sliding_attention",)
    assert spec_from_hf_dict(cfg, name="m").layer_types.count("full_attention") == 1  # layer 5 of 0..6
    nested = {"full_attention": {"rope_type": "default", "rope_theta": 5e5},
              "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}
    assert spec_from_hf_dict({**cfg, "rope_parameters": nested}, name="m").rope_theta == 5e5
    assert spec_from_hf_dict(cfg, name="m").rope_theta == 1e6


def test_gemma2_softcapping_off_and_given_layer_types():
    cfg = {"model_type": "gemma2", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
           "intermediate_size": 128, "vocab_size": 128, "attn_logit_softcapping": None,
           "final_logit_softcapping": None, "layer_types": ["full_attention", "full_attention"]}
    spec = spec_from_hf_dict(cfg, name="m")
    assert spec.attn_logit_softcapping is None and spec.final_logit_softcapping is None
    assert spec.layer_types == ("full_attention", "full_attention")
    ops = {o.op for o in layer_ops(spec, Workload(batch=1, prompt=4, gen=2), 1, 4, 4)}
    assert "attn_softcap" not in ops and "post_attn_norm" in ops


def test_llama4_layers_from_moe_layers_and_no_rope_layers():
    cfg = {"model_type": "llama4_text", "num_hidden_layers": 3, "hidden_size": 64, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 32, "intermediate_size_mlp": 128, "vocab_size": 128, "num_local_experts": 2,
           "num_experts_per_tok": 1, "moe_layers": [0], "no_rope_layers": [0, 1, 1], "use_qk_norm": False}
    spec = spec_from_hf_dict(cfg, name="m")
    assert spec.mlp_layer_types == ("moe", "dense", "dense")
    assert spec.no_rope_layers == (0,) and spec.layer_types == ("full_attention", "chunked_attention",
                                                                "chunked_attention")
    assert spec.qk_norm is None and spec.attn_temperature_tuning and spec.moe_all_experts
    # no_rope_layers [] means the default: every 4th layer NoPE (none of 3)
    assert spec_from_hf_dict({**cfg, "no_rope_layers": []}, name="m").no_rope_layers == ()


@pytest.mark.parametrize("model_type, fields, message", [
    ("gemma2", {"layer_types": "sliding_attention"},
     "field 'layer_types' must be a list of strings, got 'sliding_attention'"),
    ("gemma2", {"attn_logit_softcapping": "50"}, "field 'attn_logit_softcapping' must be a number, got '50'"),
    ("gemma2", {"layer_types": ["sliding_attention"]},
     "layer_types has 1 entries, num_layers is 2; allowed: one entry per layer"),
    ("gemma3_text", {"use_bidirectional_attention": True},
     "use_bidirectional_attention true is not supported; allowed: false or null (causal)"),
    ("gemma3_text", {"sliding_window": None},
     "layer_types has 'sliding_attention' layers but sliding_window is None; allowed: a positive "
     "sliding_window, or only 'full_attention' layers"),
    ("gpt_oss", {"swiglu_limit": True}, "field 'swiglu_limit' must be a number, got true"),
    ("llama4_text", {"no_rope_layers": [1, 2]},
     "field 'no_rope_layers' must be 2 flags 0 or 1 (1: the layer uses rotary), got [1, 2]"),
    ("llama4_text", {"attention_chunk_size": None},
     "layer_types has 'chunked_attention' layers but attention_chunk_size is None; allowed: a positive "
     "attention_chunk_size, or no 'chunked_attention' layers"),
    ("llama4_text", {"interleave_moe_layer_step": 0},
     "field 'interleave_moe_layer_step' must be a positive integer, got 0"),
])
def test_bad_fields_are_refused_in_one_line(model_type, fields, message):
    cfg = {"model_type": model_type, "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 128, "intermediate_size_mlp": 128, "vocab_size": 128, "num_local_experts": 2,
           "num_experts_per_tok": 1, **fields}
    with pytest.raises(SpecError) as e:
        spec_from_hf_dict(cfg, name="m")
    assert str(e.value) == f"config: {message}"


BASE = dict(name="m", num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128, vocab_size=128,
            max_position_embeddings=64)


@pytest.mark.parametrize("fields, message", [
    ({"layer_types": ("full_attention", "local")},
     "layer_types entry 'local' is not supported; allowed: full_attention, sliding_attention, chunked_attention"),
    ({"mlp_layer_types": ("moe", "dense")},
     "mlp_layer_types has 'moe' layers but num_experts is 0; allowed: num_experts > 0, or only 'dense' layers"),
    ({"qk_norm": "rms"}, "unknown qk_norm 'rms'; allowed: full, head, l2, per_head"),
    ({"router_scoring": "sigmoid", "num_experts": 2, "experts_per_token": 1},
     "unknown router_scoring 'sigmoid'; allowed: softmax, topk_sigmoid, topk_softmax"),
    ({"attn_logit_softcapping": 0}, "attn_logit_softcapping must be a positive number or None, got 0"),
    ({"no_rope_layers": (2,)}, "no_rope_layers must be a list of layer indices 0 to 1, got (2,)"),
    ({"attn_temperature_tuning": True},
     "attn_temperature_tuning scales the queries of the NoPE layers; it needs no_rope_layers"),
    ({"expert_bias": True, "router_scoring": "topk_softmax"},
     "expert_bias, router_scoring: for routed experts, got num_experts=0; allowed: num_experts > 0, or the defaults"),
])
def test_bad_spec_fields_are_refused(fields, message):
    with pytest.raises(SpecError) as e:
        ModelSpec(**{**BASE, **fields})
    assert str(e.value) == message


# --- layer groups: chunked and NoPE layers --------------------------------------------------------

def test_layer_groups_split_on_chunked_and_nope_layers():
    # llama4_text fixture: layers 0-2 chunked (chunk 8), layer 3 full and NoPE; MoE on layers 1 and 3
    spec, _ = fixture_spec("llama4_text")
    assert [(g.first, g.count, g.attention, g.mlp, g.rope) for g in spec.layer_groups()] == [
        (0, 1, "chunked_attention", "dense", True), (1, 1, "chunked_attention", "moe", True),
        (2, 1, "chunked_attention", "dense", True), (3, 1, "full_attention", "moe", False)]
    assert spec.layer_groups()[3].describe() == "layer 3: moe, full attention, no rope"
    assert spec.layer_groups()[3].to_dict() == {"first": 3, "count": 1, "attention": "full_attention",
                                                "mlp": "moe", "rope": False}
    assert [spec.window_of(g) for g in spec.layer_groups()] == [8, 8, 8, None]
    # the same layer kinds with the layer NoPE or not: a group boundary only where rope changes
    uniform = spec.with_(mlp_layer_types=("moe",) * 4, layer_types=("full_attention",) * 4)
    assert [(g.first, g.count, g.rope) for g in uniform.layer_groups()] == [(0, 3, True), (3, 1, False)]


@pytest.mark.parametrize("model_type", ["gemma2", "llama4_text"])
@pytest.mark.parametrize("prompt,gen", [(3, 9), (7, 4), (12, 3)])
def test_decode_sum_equals_the_step_loop(model_type, prompt, gen):
    # windows (gemma2 W 8 sliding, llama4 chunk 8) filling during, at the start of, and before decode
    spec, _ = fixture_spec(model_type)
    wl = Workload(batch=2, prompt=prompt, gen=gen)
    loop = {}
    for i in range(1, wl.decode_steps + 1):
        for layer, o in decode_step_cost(spec, wl, i).rows():
            loop[(layer, o.op)] = tuple(a + b for a, b in zip(loop.get((layer, o.op), (0,) * 7), o.costs()))
    summed = {(layer, o.op): o.costs() for layer, o in decode_cost(spec, wl).rows()}
    assert summed == loop
