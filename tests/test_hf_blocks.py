"""The block variants of issue 12 against transformers 5.23's own models: q/k norm (Qwen3, OLMo 2,
Cohere), partial rotary (GPT-NeoX, Phi), parallel blocks (Falcon, GPT-NeoX, Cohere, Phi), LayerNorm
without bias (Cohere), OPT's learned positions and embedding projection, Granite's multipliers,
StarCoder2's plain biased MLP; and the presets of today's checkpoints with their published counts.

The measured side is tests/fixtures/hf/<model_type>.json (FlopCounterMode over transformers' eager
modules, fp32: matmul-like aten ops only, which is costmodel's ``matmul_flops``) and
published_params.json (meta-device parameter counts of the released configs). A fixture's
``decode_steps[i]`` is our decode step i + 1: the new token at position ``context_before`` attends
over context_before + 1 keys."""

import json

import pytest
from hf_fixtures import HF, fixture, spec_of, workload

from costmodel import Workload, get_model
from costmodel.analysis import decode_step_cost, kv_cache_bytes, prefill_cost
from costmodel.errors import SpecError
from costmodel.models import PRESETS, spec_from_hf_dict

TYPES = ("qwen3", "olmo2", "granite", "cohere", "falcon", "gpt_neox", "opt", "phi", "starcoder2")
# StarCoder2 slides over sliding_window=8 on every layer: a prefill counts the whole score matrix
# (masks remove no FLOPs), a decode step min(context, W) keys, the cache keeps W - 1 positions.


@pytest.mark.parametrize("model_type", TYPES)
def test_parameter_count_is_transformers(model_type):
    fx = fixture(model_type)
    assert spec_of(fx).num_params == fx["num_params"] == fx["num_params_meta"]


@pytest.mark.parametrize("model_type", TYPES)
@pytest.mark.parametrize("logits", ["all", "last"])
def test_prefill_matmul_flops_are_transformers(model_type, logits):
    fx = fixture(model_type)
    cost = prefill_cost(spec_of(fx), workload(fx, logits=logits))
    assert cost.total("matmul_flops") == fx["prefill"][f"logits_{logits}"]["flops"]


@pytest.mark.parametrize("model_type", TYPES)
def test_every_decode_step_is_transformers(model_type):
    fx = fixture(model_type)
    spec = spec_of(fx)
    short = fx["decode_steps_short_prompt"]
    for prompt, steps in ((fx["prompt"], fx["decode_steps"]), (short["prompt"], short["steps"])):
        wl = workload(fx, prompt=prompt, gen=len(steps) + 1)
        measured = [s["flops"] for s in steps]
        assert [decode_step_cost(spec, wl, i).total("matmul_flops") for i in range(1, len(steps) + 1)] == measured
        assert [s["context_before"] for s in steps] == list(range(prompt, prompt + len(steps)))


@pytest.mark.parametrize("model_type", TYPES)
def test_kv_cache_bytes_are_transformers(model_type):
    fx = fixture(model_type)
    spec, wl = spec_of(fx), workload(fx)
    after = fx["kv_cache_bytes"]
    assert kv_cache_bytes(spec, wl, fx["prompt"]) == after["after_prefill"]
    assert kv_cache_bytes(spec, wl, fx["prompt"] + len(fx["decode_steps"])) == after["after_decode"]
    assert [s["kv_cache_bytes_after"] for s in fx["decode_steps"]] == [
        kv_cache_bytes(spec, wl, fx["prompt"] + i) for i in range(1, len(fx["decode_steps"]) + 1)]


@pytest.mark.parametrize("model_type", TYPES)
def test_missing_fields_are_what_transformers_resolved(model_type):
    # the fixture's config gives only a few fields; resolved_config is the config class's to_dict()
    # with every default filled in (rope_parameters, partial_rotary_factor, biases, norms, ...)
    fx = fixture(model_type)
    assert spec_from_hf_dict(fx["resolved_config"], name=model_type) == spec_of(fx)


def test_the_fixtures_switch_on_each_variant():
    # what the exact matches above are evidence of
    s = {t: spec_of(fixture(t)) for t in TYPES}
    assert (s["qwen3"].qk_norm, s["olmo2"].qk_norm, s["cohere"].qk_norm) == ("head", "full", "per_head")
    assert s["olmo2"].norm_position == "output"
    assert (s["gpt_neox"].rotary_dim, s["phi"].rotary_dim) == (4, 8)  # head_dim 16 x 0.25, x 0.5
    assert [s[t].parallel_block_norms for t in TYPES if s[t].parallel_block] == [1, 1, 2, 1]  # cohere .. phi
    assert (s["cohere"].norm_kind, s["cohere"].norm_bias, s["cohere"].logits_scale) == ("layernorm", False, 0.0625)
    assert (s["falcon"].num_kv_heads, s["opt"].position_offset, s["phi"].lm_head_bias) == (1, 2, True)
    assert s["granite"].logits_scale == 1 / 8.0 and s["granite"].residual_multiplier == 0.22
    assert (s["starcoder2"].mlp_kind, s["starcoder2"].mlp_bias, s["starcoder2"].sliding_window) == ("plain", True, 8)
    assert s["starcoder2"].layer_types == ("sliding_attention",) * 4


# --- what the fixtures cannot see: parameters and element-wise ops, by hand ------------------------

def ops_of(spec, batch=1, prompt=4):
    cost = prefill_cost(spec, Workload(batch=batch, prompt=prompt, gen=2, weight_dtype="fp32", act_dtype="fp32"))
    return {o.op: o for o in cost.before + cost.layer + cost.after}, [o.op for o in cost.layer]


OPT_350M = {"model_type": "opt", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
            "ffn_dim": 4096, "vocab_size": 50272, "word_embed_proj_dim": 512, "max_position_embeddings": 2048,
            "do_layer_norm_before": False}


def test_opt_350m_projects_its_embeddings_in_and_out():
    spec = spec_from_hf_dict(OPT_350M, name="opt-350m")
    # embed 50272*512 = 25,739,264; positions (2048 + 2)*1024 = 2,099,200; project_in 512*1024 =
    # 524,288; per layer 4*(1024*1024 + 1024) + (1024*4096 + 4096) + (4096*1024 + 1024) + 2*2*1024
    # = 12,596,224, 24 layers 302,309,376; post-norm: no final LayerNorm; project_out 524,288; head tied
    assert spec.embedding_params() == 25_739_264 + 2_099_200 + 524_288
    assert spec.layer_params() == 12_596_224
    assert spec.num_params == 25_739_264 + 2_099_200 + 524_288 + 302_309_376 + 524_288 == 331_196_416
    ops, layer = ops_of(spec)
    # 4 tokens: 2*4*512*1024 = 4,194,304 each way; the LM head reads the 512-wide rows: 2*1*512*50272
    assert ops["embed_proj_in"].matmul_flops == ops["embed_proj_out"].matmul_flops == 4_194_304
    assert ops["lm_head"].matmul_flops == 2 * 512 * 50272
    assert ops["embedding"].weight_bytes == 4 * 512 * 4  # 4 rows of 512 fp32
    assert "final_norm" not in ops and layer[-1] == "mlp_norm"  # do_layer_norm_before false: post-norm


def test_parallel_block_reads_one_norm_and_adds_once():
    spec = spec_of(fixture("phi"))  # hidden 64, 4 heads of 16, rotary 8 dims, intermediate 256
    ops, layer = ops_of(spec)
    assert layer[0] == "attn_norm" and layer[-1] == "parallel_residual" and "mlp_norm" not in layer
    assert "attn_residual" not in layer and "mlp_residual" not in layer
    assert ops["parallel_residual"].flops == 2 * 4 * 64  # x + attn + mlp: 2 adds on [4, 64]
    # partial rotary: 3 FLOPs on the 8 rotated dims of 4 + 4 heads of 4 tokens = 768 (not 1536)
    assert ops["rotary"].flops == 3 * 4 * 8 * 8
    assert ops["lm_head_bias"].flops == 128 * 1 and ops["lm_head_bias"].weight_bytes == 128 * 4
    neox, neox_layer = ops_of(spec_of(fixture("gpt_neox")))
    assert neox_layer[:2] == ["attn_norm", "mlp_norm"]  # two norms of the same x


def test_qk_norms_by_kind():
    # 4 tokens; q [4, 4*32] and k [4, 2*32] (qwen3, head_dim 32); RMSNorm 4 FLOPs an element
    qwen3, _ = ops_of(spec_of(fixture("qwen3")))
    assert (qwen3["q_norm"].flops, qwen3["k_norm"].flops) == (4 * 4 * 128, 4 * 4 * 64)
    assert qwen3["q_norm"].weight_bytes == qwen3["k_norm"].weight_bytes == 32 * 4  # one head_dim weight
    olmo, layer = ops_of(spec_of(fixture("olmo2")))  # head_dim 16: q 64 wide, k 32 wide
    assert (olmo["q_norm"].weight_bytes, olmo["k_norm"].weight_bytes) == (64 * 4, 32 * 4)
    assert layer.index("post_attn_norm") + 1 == layer.index("attn_residual") and layer[-2:] == ["post_mlp_norm",
                                                                                               "mlp_residual"]
    assert "attn_norm" not in layer and "mlp_norm" not in layer
    # Cohere: LayerNorm without bias, 6 FLOPs an element; a weight per head: 4*16 and 2*16 values
    cohere, _ = ops_of(spec_of(fixture("cohere")))
    assert (cohere["q_norm"].flops, cohere["attn_norm"].flops) == (6 * 4 * 64, 6 * 4 * 64)
    assert (cohere["q_norm"].weight_bytes, cohere["k_norm"].weight_bytes) == (64 * 4, 32 * 4)
    assert cohere["logits_scale"].flops == 128  # one row of 128 logits


def test_granite_multipliers_are_elementwise_scales():
    ops, layer = ops_of(spec_of(fixture("granite")))
    n = 4 * 64
    assert ops["embedding_scale"].flops == ops["attn_residual_scale"].flops == ops["mlp_residual_scale"].flops == n
    assert layer.index("attn_residual_scale") + 1 == layer.index("attn_residual")
    assert ops["logits_scale"].flops == 128 and ops["logits_scale"].matmul_flops == 0


@pytest.mark.parametrize("cfg, message", [
    ({"model_type": "falcon", "alibi": True}, "falcon alibi: true (ALiBi position bias) is not supported"),
    ({"model_type": "falcon", "new_decoder_architecture": True}, "falcon new_decoder_architecture: true"),
    ({"model_type": "opt", "layer_norm_elementwise_affine": False}, "opt layer_norm_elementwise_affine: false"),
    ({"model_type": "phi", "partial_rotary_factor": 0}, "field 'partial_rotary_factor' must be in (0, 1], got 0"),
    ({"model_type": "cohere", "use_qk_norm": "true"}, "field 'use_qk_norm' must be true or false, got 'true'"),
])
def test_what_is_not_modelled_is_refused_in_one_line(cfg, message):
    base = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 128,
            "ffn_dim": 128, "vocab_size": 128}
    with pytest.raises(SpecError) as e:
        spec_from_hf_dict({**base, **cfg}, name="m")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_block_fields_are_refused():
    base = get_model("tiny-llama")  # head_dim 16
    for changes, message in [(dict(rotary_dim=5), "rotary_dim must be even and at most head_dim (16)"),
                             (dict(rotary_dim=32), "rotary_dim must be even and at most head_dim (16)"),
                             (dict(qk_norm="both"), "qk_norm"),
                             (dict(parallel_block=True, norm_position="post"), "parallel_block is for pre-norm"),
                             (dict(parallel_block_norms=3), "parallel_block_norms must be 1 or 2")]:
        with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
            base.with_(**changes)


# --- presets of today's checkpoints ---------------------------------------------------------------

PUBLISHED = json.loads((HF / "published_params.json").read_text())["presets"]
NEW_PRESETS = ("llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "llama-3.2-1b", "llama-3.2-3b", "qwen2.5-7b",
               "qwen2.5-72b", "qwen3-8b", "qwen3-32b", "phi-4", "olmo-2-7b")


@pytest.mark.parametrize("name", NEW_PRESETS)
def test_preset_has_the_published_parameter_count(name):
    published = PUBLISHED[name]
    spec = PRESETS[name]
    assert spec.num_params == published["num_params"]
    assert spec.embedding_params() == published["embedding_params"]


@pytest.mark.parametrize("name", NEW_PRESETS)
def test_preset_is_its_config_json(name):
    assert spec_from_hf_dict(PUBLISHED[name]["config"], name=name) == PRESETS[name]


def test_qwen3_slides_as_qwen2_when_asked():
    # Qwen3Config: the window only with use_sliding_window, on layers i >= max_window_layers
    base = {"model_type": "qwen3", **fixture("qwen3")["config"]}
    assert spec_of(fixture("qwen3")).sliding_window is None  # use_sliding_window false: released
    spec = spec_from_hf_dict({**base, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 2},
                             name="m")
    assert spec.layer_types == ("full_attention",) * 2 + ("sliding_attention",) * 2 and spec.sliding_window == 8
