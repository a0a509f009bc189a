"""Layers that differ (layer groups) and sliding-window attention, exact against transformers.

The fixtures (tests/fixtures/hf/<model_type>.json) are transformers 5.23.0 runs under
FlopCounterMode (matmul-like aten ops only: costmodel's ``matmul_flops``), fp32 (4-byte cache):
hidden 64, 4 heads / 2 kv heads (head_dim 16), window 8, batch 2, prompt 12 and 3.
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from costmodel import Workload, analyze, get_model
from costmodel.analysis import (decode_cost, decode_step_cost, kv_cache_bytes, prefill_cost, window_split)
from costmodel.errors import SpecError
from costmodel.models import spec_from_hf_dict
from costmodel.parallel import Split, stage_kv_cache_bytes, stage_view
from costmodel.spec import LayerGroup, ModelSpec
from costmodel import stepsum

FIXTURES = Path(__file__).parent / "fixtures" / "hf"


def fixture(model_type):
    d = json.loads((FIXTURES / f"{model_type}.json").read_text())
    return d, spec_from_hf_dict({"model_type": d["model_type"], **d["config"]}, name=model_type)


# --- exact against transformers ---------------------------------------------------------------------

@pytest.mark.parametrize("model_type", ["mistral", "qwen2", "phi3", "mixtral"])
def test_fixture_flops_and_kv_bytes(model_type):
    d, spec = fixture(model_type)
    b, s = d["batch"], d["prompt"]
    assert spec.num_params == d["num_params"]
    for logits in ("all", "last"):
        wl = Workload(batch=b, prompt=s, gen=1, act_dtype="fp32", logits=logits)
        assert prefill_cost(spec, wl).total("matmul_flops") == d["prefill"][f"logits_{logits}"]["flops"]
    series = [(s, d["decode_steps"]), (d["decode_steps_short_prompt"]["prompt"], d["decode_steps_short_prompt"]["steps"])]
    for prompt, steps in series:  # prompt 12: beyond the window of 8; prompt 3: the steps cross it
        wl = Workload(batch=b, prompt=prompt, gen=len(steps) + 1, act_dtype="fp32")
        for step in steps:
            i = step["context_before"] - prompt + 1  # step i feeds the token at position prompt + i - 1
            assert decode_step_cost(spec, wl, i).total("matmul_flops") == step["flops"], (prompt, i)
            assert kv_cache_bytes(spec, wl, positions=prompt + i) == step["kv_cache_bytes_after"], (prompt, i)
        a = analyze(spec, wl)
        assert a.decode.matmul_flops == sum(step["flops"] for step in steps)  # the exact sum, piecewise
        assert a.memory.kv_cache_bytes == steps[-1]["kv_cache_bytes_after"]
    wl = Workload(batch=b, prompt=s, gen=len(d["decode_steps"]) + 1, act_dtype="fp32")
    assert kv_cache_bytes(spec, wl, positions=s) == d["kv_cache_bytes"]["after_prefill"]
    assert analyze(spec, wl).memory.kv_cache_bytes == d["kv_cache_bytes"]["after_decode"]


def test_fixture_layer_types_as_transformers_resolves_them():
    for model_type in ("mistral", "qwen2", "phi3", "mixtral"):
        d, spec = fixture(model_type)
        kinds = [layer["class"] for layer in d["kv_cache_layers"]]
        assert [t == "sliding_attention" for t in spec.layer_types] == [k == "DynamicSlidingWindowLayer" for k in kinds]
    d, spec = fixture("qwen2")
    assert list(spec.layer_types) == d["resolved_config"]["layer_types"]
    assert spec.layer_groups() == (LayerGroup(0, 2, "full_attention", "dense"),
                                   LayerGroup(2, 2, "sliding_attention", "dense"))


def test_hand_derived_sliding_kv_bytes():
    # mistral fixture after the 12-token prefill: 4 layers x 2 (k, v) x 2 seqs x 2 kv heads x 16
    # x min(12, 8 - 1) = 7 positions x 4 bytes = 14,336
    _, spec = fixture("mistral")
    assert kv_cache_bytes(spec, Workload(batch=2, prompt=12, gen=1, act_dtype="fp32")) == 4 * 2 * 2 * 2 * 16 * 7 * 4 == 14_336


def test_mistral_7b_v0_1_at_a_32k_prompt():
    spec = get_model("mistral-7b-v0.1")
    assert spec.num_params == 7_241_732_096  # published_params.json (meta-device count)
    a = analyze(spec, Workload(batch=1, prompt=32768, gen=1))
    # 32 layers x 2 (k, v) x 8 kv heads x 128 x 4095 positions (the window of 4096 less one) x 2 bytes
    assert a.memory.kv_cache_bytes == 32 * 2 * 8 * 128 * 4095 * 2 == 536_739_840
    full = analyze(get_model("mistral-7b"), Workload(batch=1, prompt=32768, gen=1))
    assert full.memory.kv_cache_bytes == 32 * 2 * 8 * 128 * 32768 * 2  # no window: 8x as much
    # a decode step attends over min(32768 + 1, 4096) = 4096 keys: QK^T 2 x 32 heads x 4096 x 128 a layer
    step = decode_step_cost(spec, Workload(batch=1, prompt=32768, gen=2), 1)
    scores = next(o for o in step.layer if o.op == "attn_scores")
    assert scores.flops == 2 * 32 * 4096 * 128


def test_phi_3_mini_4k_preset():
    spec = get_model("phi-3-mini-4k")
    assert spec.num_params == 3_821_079_552  # published_params.json
    assert (spec.sliding_window, set(spec.layer_types)) == (2047, {"sliding_attention"})


# --- the piecewise decode sum ------------------------------------------------------------------------

MISTRAL_TINY = ModelSpec(name="tiny-sliding", num_layers=4, hidden_size=64, num_heads=4, num_kv_heads=2,
                         intermediate_size=128, vocab_size=128, max_position_embeddings=64, sliding_window=8)
QWEN2_TINY = MISTRAL_TINY.with_(name="tiny-mixed", attention_bias=True,
                                layer_types=("full_attention", "full_attention", "sliding_attention", "sliding_attention"))


def test_hand_derived_piecewise_attention_sum():
    # prompt 5, gen 8: steps i = 1..7 attend over min(5 + i, 8) keys = 6, 7, 8, 8, 8, 8, 8; the
    # window fills after step m = 8 - 5 = 3. Sum 6 + 7 + 8 + 4 * 8 = 53 keys; QK^T of one layer,
    # batch 1, 4 heads, head_dim 16: 2 * 4 * 16 = 128 FLOPs a key -> 128 * 53 = 6,784 a layer
    wl = Workload(batch=1, prompt=5, gen=8)
    assert window_split(MISTRAL_TINY, wl, wl.decode_steps) == 3
    scores = next(o for o in decode_cost(MISTRAL_TINY, wl).layer if o.op == "attn_scores")
    assert scores.flops == 128 * 53 == 6_784
    # split_sum by hand: g(i) = 5 + i (growing keys), f(i) = 8 (full window), m = 3, n = 7:
    # (6 + 7 + 8) + 4 * 8 = 53
    assert stepsum.split_sum(stepsum.newton(6, 7, 8), stepsum.newton(8, 8, 8), 3, 7) == 53


def _loop(spec, wl):
    """Every op's costs summed step by step, by group and op name."""
    total = {}
    for i in range(1, wl.decode_steps + 1):
        for layer, o in decode_step_cost(spec, wl, i).rows():
            key = (layer, o.op)
            total[key] = tuple(a + b for a, b in zip(total.get(key, (0,) * 7), o.costs()))
    return total


@pytest.mark.parametrize("spec", [MISTRAL_TINY, QWEN2_TINY], ids=["all-sliding", "mixed"])
@pytest.mark.parametrize("prompt,gen", [(1, 12), (5, 2), (5, 3), (5, 4), (6, 5), (7, 3), (8, 6), (20, 5), (3, 1)])
def test_decode_sum_equals_the_step_loop(spec, prompt, gen):
    # windows filling before, at and after each of steps 1, 2, 3, and never (prompt >= W)
    for wl in (Workload(batch=2, prompt=prompt, gen=gen), Workload(batch=3, prompt=prompt, gen=gen, beams=2),
               Workload(batch=2, prompt=prompt, gen=gen, kv_cache=False)):
        summed = {(layer, o.op): o.costs() for layer, o in decode_cost(spec, wl).rows()}
        loop = _loop(spec, wl)
        assert summed == {k: loop.get(k, (0,) * 7) for k in summed}


def test_roofline_decode_is_the_sum_of_its_steps():
    from costmodel.hardware import get_hardware
    from costmodel.roofline import decode_seconds, decode_step_curve, decode_step_seconds, predict

    hw = get_hardware("h100-sxm")
    for spec in (MISTRAL_TINY, QWEN2_TINY, get_model("mistral-7b-v0.1")):
        for prompt in (3, 4000, 5000):
            wl = Workload(batch=4, prompt=prompt, gen=300)
            loop = sum(decode_step_seconds(spec, wl, hw, i) for i in range(1, wl.gen))
            assert decode_seconds(spec, wl, hw) == pytest.approx(loop, rel=1e-9)
            assert predict(spec, wl, hw).decode.seconds == pytest.approx(loop, rel=1e-9)
            curve = decode_step_curve(spec, wl, hw)
            assert curve == pytest.approx([decode_step_seconds(spec, wl, hw, i) for i in range(1, wl.gen)], rel=1e-9)


# --- sweep: exact for windowed models too ----------------------------------------------------------

@pytest.mark.parametrize("spec", [MISTRAL_TINY, QWEN2_TINY], ids=["all-sliding", "mixed"])
@pytest.mark.parametrize("wl", [Workload(), Workload(kv_cache=False), Workload(beams=2, kv_dtype="int4")],
                         ids=["cache", "no-cache", "beams-int4"])
def test_sweep_equals_analyze_for_windowed_models(spec, wl):
    from costmodel.hardware import get_hardware
    from costmodel.roofline import predict
    from reports.sweep import sweep

    hw = get_hardware("h100-sxm")
    df = sweep(spec, wl, [1, 3], [1, 4, 7, 8, 9, 30], [1, 2, 3, 4, 6, 40], hardware=hw)
    for row in df.to_dict("records"):
        w = replace(wl, batch=row["batch"], prompt=row["prompt"], gen=row["gen"])
        a = analyze(spec, w)
        ph = a.phases[row["phase"]]
        kv = a.memory.kv_cache_bytes if row["phase"] == "decode" else kv_cache_bytes(spec, w, positions=w.prompt)
        assert (row["flops"], row["matmul_flops"], row["bytes"], row["kv_cache_bytes"]) == (
            ph.flops, ph.matmul_flops, ph.bytes, kv), row
        assert row["seconds"] == pytest.approx(predict(spec, w, hw).phases[row["phase"]].seconds, rel=1e-9)


# --- pipeline stages cut across groups --------------------------------------------------------------

def test_stage_view_cuts_across_groups():
    # qwen2-style 2 full + 2 sliding layers, pp = 3: stages hold layers 0-1, 2, 3 (first stages larger)
    wl = Workload(batch=2, prompt=12, gen=3, act_dtype="fp32")
    cost = prefill_cost(QWEN2_TINY, wl)
    split = Split(1, 3)
    views = [stage_view(cost, split, s) for s in range(3)]
    assert [[(g.first, g.count, g.attention) for g, _ in v.groups] for v in views] == [
        [(0, 2, "full_attention")], [(2, 1, "sliding_attention")], [(3, 1, "sliding_attention")]]
    assert sum(v.total("flops") for v in views) == cost.total("flops")
    assert [layer for layer, _ in views[1].rows() if layer is not None][0] == 2  # real layer numbers
    # KV after the prefill: full layers hold 12 positions, sliding ones 7;
    # a layer: 2 (k, v) x 2 seqs x 2 kv heads x 16 x 4 bytes = 512 bytes a position
    assert [stage_kv_cache_bytes(QWEN2_TINY, wl, split, s, positions=12) for s in range(3)] == [
        2 * 512 * 12, 512 * 7, 512 * 7]


# --- reports -------------------------------------------------------------------------------------

def test_report_groups_identical_layers():
    from reports.text import report_table

    a = analyze(QWEN2_TINY, Workload(batch=1, prompt=16, gen=4))
    text = report_table(a)
    assert "layers 0-1: dense, full attention" in text
    assert "layers 2-3: dense, sliding attention" in text
    d = a.to_dict()
    assert d["model"]["layer_groups"] == [
        {"first": 0, "count": 2, "attention": "full_attention", "mlp": "dense"},
        {"first": 2, "count": 2, "attention": "sliding_attention", "mlp": "dense"}]
    assert {r["layer"] for r in d["ops"] if r["phase"] == "decode" and r["op"] == "attn_scores"} == {0, 1, 2, 3}
    scores = {r["layer"]: r["flops"] for r in d["ops"] if r["phase"] == "decode" and r["op"] == "attn_scores"}
    # steps 1..3 over 17, 18, 19 keys (full) and 8 each (sliding): 2 x 4 heads x 16 = 128 a key
    assert scores == {0: 128 * 54, 1: 128 * 54, 2: 128 * 24, 3: 128 * 24}


def test_layer_of_several_groups_is_a_clear_error():
    cost = prefill_cost(QWEN2_TINY, Workload(batch=1, prompt=4, gen=1))
    assert cost.num_layers == 4
    with pytest.raises(ValueError, match="the blocks differ"):
        cost.layer


# --- spec validation and the config reader -----------------------------------------------------

@pytest.mark.parametrize("changes,message", [
    (dict(sliding_window=0), "sliding_window must be a positive integer, got 0"),
    (dict(layer_types=("full_attention",)), "layer_types has 1 entries, num_layers is 4; allowed: one entry per layer"),
    (dict(layer_types=("local_attention",) * 4),
     "layer_types entry 'local_attention' is not supported; allowed: full_attention, sliding_attention, "
     "chunked_attention"),
    (dict(sliding_window=None, layer_types=("sliding_attention",) * 4),
     "layer_types has 'sliding_attention' layers but sliding_window is None; allowed: a positive "
     "sliding_window, or only 'full_attention' layers"),
    (dict(mlp_layer_types=("moe",) * 4),
     "mlp_layer_types has 'moe' layers but num_experts is 0; allowed: num_experts > 0, or only 'dense' layers"),
])
def test_bad_layer_fields(changes, message):
    with pytest.raises(SpecError) as e:
        replace(MISTRAL_TINY, **changes)
    assert str(e.value) == message


def test_qwen2_moe_dense_layers_and_sliding():
    base = {"model_type": "qwen2_moe", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": 128, "num_experts": 4,
            "num_experts_per_tok": 2, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 64}
    spec = spec_from_hf_dict({**base, "mlp_only_layers": [0, 2, 3]}, name="m")
    assert spec.mlp_layer_types == ("dense", "moe", "dense", "dense")
    moe = spec_from_hf_dict(base, name="m")
    # a dense layer replaces the MoE block (router 64 x 4, 4 experts x 3 x 64 x 32, shared 3 x 64 x 64,
    # gate 64) by a gated MLP of 3 x 64 x 128
    moe_mlp = 64 * 4 + 4 * 3 * 64 * 32 + 3 * 64 * 64 + 64
    assert moe.num_params - spec.num_params == 3 * (moe_mlp - 3 * 64 * 128)
    # sliding: Qwen2MoeConfig slides on the even layers below max_window_layers when use_sliding_window
    slid = spec_from_hf_dict({**base, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 3}, name="m")
    assert slid.layer_types == ("sliding_attention", "full_attention", "sliding_attention", "full_attention")
    assert spec_from_hf_dict({**base, "sliding_window": 8}, name="m").sliding_window is None  # not used
    # Qwen2MoeDecoderLayer: MoE where (i + 1) % decoder_sparse_step == 0: layers 1 and 3 of 0..3
    assert spec_from_hf_dict({**base, "decoder_sparse_step": 2}, name="m").mlp_layer_types == (
        "dense", "moe", "dense", "moe")
    with pytest.raises(SpecError, match=r"'mlp_only_layers' must hold layer indices 0 to 3, got \[4\]"):
        spec_from_hf_dict({**base, "mlp_only_layers": [4]}, name="m")


def test_config_windows():
    qwen2 = {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
             "num_key_value_heads": 2, "num_hidden_layers": 4, "vocab_size": 128}
    assert spec_from_hf_dict(qwen2, name="q").sliding_window is None  # use_sliding_window defaults to false
    q = spec_from_hf_dict({**qwen2, "use_sliding_window": True}, name="q")  # window 4096, layers >= 28 slide: none
    assert (q.sliding_window, set(q.layer_types)) == (None, {"full_attention"})
    mistral = {**qwen2, "model_type": "mistral"}
    assert spec_from_hf_dict(mistral, name="m").sliding_window == 4096  # MistralConfig's default
    assert spec_from_hf_dict({**mistral, "sliding_window": None}, name="m").sliding_window is None
    with pytest.raises(SpecError, match="field 'sliding_window' must be an integer, got 4096.0"):
        spec_from_hf_dict({**mistral, "sliding_window": 4096.0}, name="m")
    with pytest.raises(SpecError, match="no window"):
        spec_from_hf_dict({**qwen2, "layer_types": ["sliding_attention"] * 4}, name="q")


def test_plan_with_a_window():
    from costmodel.hardware import get_hardware
    from costmodel.parallel import shard_step
    from costmodel.plan import Layout, memory_use, parallel_timing
    from costmodel.roofline import rates, step_time

    spec, hw = get_model("mistral-7b-v0.1"), get_hardware("h100-sxm")
    wl = Workload(batch=4, prompt=8192, gen=64)
    # the cache after 8192 + 63 positions: 4 seqs x 4095 positions x 32 layers x 2 x 8 x 128 x 2 bytes,
    # on the fuller of pp = 2 stages (16 layers each) half of it
    assert memory_use(spec, hw, wl).kv_bytes == 4 * 4095 * 32 * 2 * 8 * 128 * 2
    assert memory_use(spec, hw, wl, Layout(1, 2)).kv_bytes == 4 * 4095 * 16 * 2 * 8 * 128 * 2
    # decode under tp = 2 across the window filling (prompt 4000: full after step 96): the ops'
    # seconds are the sum of each step's
    wl = Workload(batch=4, prompt=4000, gen=200)
    t = parallel_timing(spec, hw, wl, Layout(2, 1))
    r = rates(hw, wl.act_dtype)
    loop = sum(step_time(shard_step(decode_step_cost(spec, wl, i), 2), r).ops_seconds for i in range(1, wl.gen))
    assert t.decode.ops_seconds == pytest.approx(loop, rel=1e-9)
