"""The reference model's block variants (issue 12): q/k norms, partial rotary, parallel blocks,
sliding-window layers (alone and mixed with full ones), dense layers among expert ones.

Counted FLOPs per op and KV-cache bytes are checked exactly against hand-derived values, and the
whole passes against transformers 5.23's own measurements (tests/fixtures/hf); the invariants of
each variant (what it changes and what it leaves alone) are checked on the model's outputs."""

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from costmodel import ModelSpec, get_model  # noqa: E402
from costmodel.errors import SpecError  # noqa: E402
from profiler.flops import count_call  # noqa: E402
from profiler.generate import decode_one_token, forward_no_cache, prefill, random_prompt  # noqa: E402
from profiler.layers import apply_rotary, attention_mask  # noqa: E402
from profiler.model import build_model  # noqa: E402

HF = Path(__file__).parent / "fixtures" / "hf"


def _counts(model, fn, *args):
    """{(layer, op): counted matmul FLOPs} and the output of ``fn(model, *args)``."""
    with torch.no_grad():
        out, sc = count_call(fn, model, *args)
    return dict(sc.counted), out


# --- sliding window -----------------------------------------------------------------------------

def test_sliding_prefill_counts_full_scores_and_the_cache_keeps_window_minus_one():
    spec = get_model("tiny-mistral-sw")  # 2 layers, 4 heads of 16, 2 kv heads, window 8
    m = build_model(spec, attention="eager")
    m.setup_caches(2, 16)
    c, _ = _counts(m, prefill, random_prompt(spec, 2, 12, 0, "cpu"))
    # masks remove no FLOPs: 2*b*H*s*s*d = 2*2*4*12*12*16 = 36,864 for QK^T and for PV, each layer
    assert c[(0, "attn_scores")] == c[(1, "attn_values")] == 36_864
    # kept: min(12, 8 - 1) = 7 positions x b 2 x Hkv 2 x d 16 x (k, v) x 4 bytes = 3,584 a layer
    assert m.kv_cache_bytes() == 2 * 3_584
    c, _ = _counts(m, decode_one_token, torch.zeros(2, 1, dtype=torch.long), 12)
    # context 13, window 8: 7 held + the new key = 8 keys; 2*b*H*1*8*d = 2*2*4*8*16 = 2,048
    assert c[(0, "attn_scores")] == c[(1, "attn_values")] == 2_048
    assert m.kv_cache_bytes() == 2 * 3_584  # still 7 positions


def test_decode_crossing_the_window_attends_over_min_of_context_and_window():
    spec = get_model("tiny-mistral-sw")
    m = build_model(spec, attention="eager")
    m.setup_caches(2, 16)
    with torch.no_grad():
        prefill(m, random_prompt(spec, 2, 5, 0, "cpu"))
    assert m.kv_cache_bytes() == 2 * 5 * 2 * 2 * 16 * 2 * 4  # 5 positions of 2 rows: 2,560 a layer
    scores, held = [], []
    for pos in range(5, 10):  # contexts 6 .. 10
        c, _ = _counts(m, decode_one_token, torch.zeros(2, 1, dtype=torch.long), pos)
        scores.append(c[(0, "attn_scores")])
        held.append(m.caches()[0].positions_filled)
    # keys min(context, 8) = 6, 7, 8, 8, 8; 2*2*4*keys*16 = 256 * keys
    assert scores == [1_536, 1_792, 2_048, 2_048, 2_048]
    assert held == [6, 7, 7, 7, 7]  # min(context, 8 - 1)


def test_mixed_stack_full_and_sliding_layers_differ():
    spec = get_model("tiny-qwen2-sw")  # layer 0 full, layers 1-2 sliding over 8
    m = build_model(spec, attention="eager")
    m.setup_caches(2, 16)
    with torch.no_grad():
        prefill(m, random_prompt(spec, 2, 10, 0, "cpu"))
    # layer 0: 10 positions x 2 x 2 x 16 x 2 x 4 = 5,120; layers 1-2: 7 positions, 3,584 each
    assert [c.filled_bytes() for c in m.caches()] == [5_120, 3_584, 3_584]
    c, _ = _counts(m, decode_one_token, torch.zeros(2, 1, dtype=torch.long), 10)
    # context 11: layer 0 over 11 keys, 2*2*4*11*16 = 5,632; sliding layers over 8, 4,096
    assert [c[(i, "attn_scores")] for i in range(3)] == [2 * 1_408, 2_048, 2_048]
    assert m.kv_cache_bytes() == 5_632 + 2 * 3_584


@pytest.mark.parametrize("name", ["tiny-mistral-sw", "tiny-qwen2-sw"])
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_sliding_cached_decode_equals_recomputing_the_prefix_beyond_the_window(name, attention):
    spec = get_model(name)
    m = build_model(spec, attention=attention, seed=1)
    seq = random_prompt(spec, 2, 5, 1, "cpu")
    m.setup_caches(2, 14)
    with torch.no_grad():
        logits = prefill(m, seq)
        for pos in range(5, 14):  # contexts 6 .. 14: the window of 8 crossed at context 9
            tok = logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, tok], 1)
            logits = decode_one_token(m, tok, pos)
            caches = m.caches()
            m.drop_caches()
            torch.testing.assert_close(logits, forward_no_cache(m, seq), rtol=1e-4, atol=1e-5)
            for layer, cache in zip(m.layers, caches):
                layer.attention.kv_cache = cache


def test_the_window_changes_outputs_only_beyond_it():
    spec = get_model("tiny-mistral-sw")
    full = build_model(spec.with_(sliding_window=None), seed=2)
    sliding = build_model(spec, seed=2)  # the same weights: the window is no parameter
    toks = random_prompt(spec, 2, 12, 0, "cpu")
    with torch.no_grad():
        a, b = forward_no_cache(full, toks, "all"), forward_no_cache(sliding, toks, "all")
    torch.testing.assert_close(a[:, :8], b[:, :8])  # positions 0-7 see at most 8 keys either way
    assert not torch.allclose(a[:, 8:], b[:, 8:], atol=1e-4)


def test_attention_mask_by_hand():
    # 3 queries, the last 3 of 5 positions (2, 3, 4), window 2: query at p sees p - 1 and p
    assert attention_mask(3, 5, True, 2, "cpu").int().tolist() == [[0, 1, 1, 0, 0], [0, 0, 1, 1, 0],
                                                                    [0, 0, 0, 1, 1]]
    assert attention_mask(1, 8, True, 8, "cpu") is None  # a decode step over its whole window
    assert attention_mask(1, 9, True, 8, "cpu").int().tolist() == [[0] + [1] * 8]


# --- q/k norm -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, q, k", [("tiny-qwen3", 16, 16), ("tiny-olmo2", 64, 32)])
def test_qk_norm_weights_and_counted_flops(name, q, k):
    spec = get_model(name)
    m, off = build_model(spec), build_model(spec.with_(qk_norm=None))
    att = m.layers[0].attention
    assert tuple(att.q_norm.weight.shape) == (q,) and tuple(att.k_norm.weight.shape) == (k,)
    # "head": one weight of head_dim 16 each; "full": q_size 4*16 = 64, kv_size 2*16 = 32; 2 layers
    assert m.num_params() - off.num_params() == 2 * (q + k)
    toks = random_prompt(spec, 2, 12, 0, "cpu")
    c, _ = _counts(m, forward_no_cache, toks)
    c_off, _ = _counts(off, forward_no_cache, toks)
    assert c == c_off  # the norms are element-wise: not one matmul FLOP more
    # q_proj 2*t*h*q_size = 2*24*64*64 = 196,608; k_proj 2*24*64*32 = 98,304
    assert c[(0, "q_proj")] == 196_608 and c[(1, "k_proj")] == 98_304


@pytest.mark.parametrize("name", ["tiny-qwen3", "tiny-olmo2"])
def test_qk_norm_makes_scores_blind_to_the_scale_of_q_and_k(name):
    spec = get_model(name)
    toks = random_prompt(spec, 2, 9, 0, "cpu")
    outs = {}
    for qk_norm in (spec.qk_norm, None):
        m = build_model(spec.with_(qk_norm=qk_norm), seed=4)  # norm weights are 1: same matrices
        with torch.no_grad():
            base = forward_no_cache(m, toks, "all")
            for layer in m.layers:  # RMSNorm(c * x) = RMSNorm(x): the norm cancels the scale
                layer.attention.q_proj.weight.mul_(3.0)
                layer.attention.k_proj.weight.mul_(0.5)
            outs[qk_norm] = (base, forward_no_cache(m, toks, "all"))
    base, scaled = outs[spec.qk_norm]
    torch.testing.assert_close(base, scaled, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(*outs[None], atol=1e-4)  # without the norm the scores scale
    assert not torch.allclose(base, outs[None][0], atol=1e-4)  # and the norm changes the output


def test_head_norm_is_per_head_and_full_norm_is_not():
    # Scaling one head's query rows: a per-head norm cancels it, a norm over the whole q does not.
    toks = random_prompt(get_model("tiny-qwen3"), 1, 6, 0, "cpu")
    changed = {}
    for name in ("tiny-qwen3", "tiny-olmo2"):
        m = build_model(get_model(name), seed=5)
        with torch.no_grad():
            base = forward_no_cache(m, toks, "all")
            m.layers[0].attention.q_proj.weight[:16].mul_(4.0)  # head 0's 16 rows
            changed[name] = not torch.allclose(base, forward_no_cache(m, toks, "all"), atol=1e-4)
    assert changed == {"tiny-qwen3": False, "tiny-olmo2": True}


# --- partial rotary -----------------------------------------------------------------------------

def test_partial_rotary_rotates_only_the_first_dims():
    m = build_model(get_model("tiny-neox"))  # rotary_dim 4 of head_dim 16
    assert tuple(m.rope_cos.shape) == (256, 4)
    # inv_freq = 1 / 10000^(2i/4) = (1, 0.01), halves repeated; position 3: cos(3), cos(0.03)
    want = torch.tensor([3.0, 0.03, 3.0, 0.03], dtype=torch.float64).cos().float()
    torch.testing.assert_close(m.rope_cos[3], want)
    x = torch.randn(1, 2, 5, 16, generator=torch.Generator().manual_seed(0))
    cos, sin = m.rope_cos[:5], m.rope_sin[:5]
    y = apply_rotary(x, cos, sin)
    assert torch.equal(y[..., 4:], x[..., 4:])  # 12 dims passed through untouched
    torch.testing.assert_close(y[..., :4], x[..., :4] * cos + torch.cat((-x[..., 2:4], x[..., :2]), -1) * sin)


@pytest.mark.parametrize("name", ["tiny-neox", "tiny-phi"])
def test_partial_rotary_changes_outputs_not_counts(name):
    spec = get_model(name)
    toks = random_prompt(spec, 2, 10, 0, "cpu")
    part, whole = build_model(spec, seed=6), build_model(spec.with_(rotary_dim=None), seed=6)
    c, a = _counts(part, forward_no_cache, toks)
    c_whole, b = _counts(whole, forward_no_cache, toks)
    assert c == c_whole  # rotary is element-wise
    assert not torch.allclose(a, b, atol=1e-4)


# --- parallel block -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, norms", [("tiny-neox", 2), ("tiny-phi", 1)])
def test_parallel_block_is_x_plus_attention_plus_mlp_of_the_input(name, norms):
    spec = get_model(name)
    m = build_model(spec, seed=7)
    block = m.layers[0]
    assert (block.mlp_norm is not None) == (norms == 2)
    x = torch.randn(2, 6, 64, generator=torch.Generator().manual_seed(1))
    pos = torch.arange(6)
    rope = (m.rope_cos[pos], m.rope_sin[pos])
    with torch.no_grad():
        mlp_in = block.attn_norm(x) if norms == 1 else block.mlp_norm(x)
        want = x + block.attention(block.attn_norm(x), pos, 6, rope) + block.mlp(mlp_in)
        torch.testing.assert_close(block(x, pos, 6, rope), want)
    serial = build_model(spec.with_(parallel_block=False), seed=7)
    # one LayerNorm fewer a layer with one shared norm: 2 layers x (64 + 64) = 256 parameters
    assert serial.num_params() - m.num_params() == (256 if norms == 1 else 0)
    toks = random_prompt(spec, 2, 10, 0, "cpu")
    c, a = _counts(m, forward_no_cache, toks)
    c_serial, b = _counts(serial, forward_no_cache, toks)
    assert c == c_serial and not torch.allclose(a, b, atol=1e-4)  # the same matmuls, another sum
    # plain MLP up 2*t*h*I = 2*20*64*256 = 655,360
    assert c[(1, "mlp_up")] == 655_360


# --- dense layers among expert ones -------------------------------------------------------------

def test_dense_first_moe_counts_each_layer_by_its_kind():
    spec = get_model("tiny-moe-dense-first")  # dense, moe, dense, moe; 4 experts top 2, 1 shared
    m = build_model(spec, attention="eager")
    c, _ = _counts(m, forward_no_cache, random_prompt(spec, 2, 8, 0, "cpu"))
    t = 2 * 8
    for i in (0, 2):  # dense: 2*t*h*I = 2*16*64*160 = 327,680 per matrix
        assert c[(i, "mlp_gate")] == c[(i, "mlp_up")] == c[(i, "mlp_down")] == 327_680
        assert (i, "router") not in c
    for i in (1, 3):
        assert (i, "mlp_gate") not in c
        assert c[(i, "router")] == 2 * t * 64 * 4 == 8_192
        # routed: 2*t*k*h*I_e = 2*16*2*64*32 = 131,072 per matrix, however the router spreads them
        assert c[(i, "expert_gate")] == c[(i, "expert_up")] == c[(i, "expert_down")] == 131_072
        # shared, every token: 2*t*h*64 = 131,072 per matrix
        assert c[(i, "shared_expert_up")] == c[(i, "shared_expert_down")] == 131_072
    # parameters: dense MLP 3*64*160 = 30,720; MoE router 64*4 + 4 experts 3*64*32 + shared 3*64*64 = 37,120
    mlp = [sum(p.numel() for p in layer.mlp.parameters()) for layer in m.layers]
    assert mlp == [30_720, 37_120, 30_720, 37_120]


# --- against transformers' own counts -----------------------------------------------------------

_HF_SPECS = {  # the fixtures' configs (tests/fixtures/hf/<model_type>.json), as ModelSpecs
    "mistral": dict(sliding_window=8),
    "phi3": dict(sliding_window=8),
    "qwen2": dict(attention_bias=True, sliding_window=8,
                  layer_types=("full_attention",) * 2 + ("sliding_attention",) * 2),
    "qwen3": dict(head_dim=32, qk_norm="head"),
    "qwen3_moe": dict(head_dim=32, qk_norm="head", num_experts=4, experts_per_token=2, moe_intermediate_size=32,
                      moe_renormalize=False),
    "olmo2": dict(qk_norm="full"),  # its norms after each sublayer move no matmul FLOP
    "gpt_neox": dict(num_kv_heads=4, intermediate_size=256, mlp_kind="plain", activation="gelu",
                     norm_kind="layernorm", attention_bias=True, attention_out_bias=True, mlp_bias=True,
                     rotary_dim=4, parallel_block=True, parallel_block_norms=2),
    "phi": dict(num_kv_heads=4, intermediate_size=256, mlp_kind="plain", activation="gelu_tanh",
                norm_kind="layernorm", attention_bias=True, attention_out_bias=True, mlp_bias=True,
                rotary_dim=8, parallel_block=True, parallel_block_norms=1),  # its LM head bias: no matmul
}


@pytest.mark.parametrize("model_type", sorted(_HF_SPECS))
def test_counts_and_cache_equal_transformers(model_type):
    fx = json.loads((HF / f"{model_type}.json").read_text())
    spec = ModelSpec(name=f"hf-{model_type}", num_layers=4, hidden_size=64, num_heads=4,
                     **{"num_kv_heads": 2, "intermediate_size": 128, **_HF_SPECS[model_type]},
                     vocab_size=128, max_position_embeddings=64)
    m = build_model(spec, attention="eager")
    b, s = fx["batch"], fx["prompt"]
    m.setup_caches(b, s + len(fx["decode_steps"]))
    with torch.no_grad():
        out, sc = count_call(prefill, m, random_prompt(spec, b, s, 0, "cpu"))
    assert sc.counted_total == fx["prefill"]["logits_last"]["flops"]
    assert m.kv_cache_bytes() == fx["kv_cache_bytes"]["after_prefill"]
    for step in fx["decode_steps"]:
        with torch.no_grad():
            out, sc = count_call(decode_one_token, m, out[:, -1].argmax(-1, keepdim=True), step["context_before"])
        assert sc.counted_total == step["flops"], step
    assert m.kv_cache_bytes() == fx["kv_cache_bytes"]["after_decode"]


# --- refusals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    (dict(qk_norm="rms"), "unknown qk_norm .rms.; allowed: full, head"),
    (dict(rotary_dim=6, head_dim=4), "rotary_dim must be even and at most head_dim"),
    (dict(rotary_dim=3), "rotary_dim must be even"),
    (dict(parallel_block=True, parallel_block_norms=3), "parallel_block_norms must be 1 or 2"),
    (dict(sliding_window=0), "sliding_window"),
    (dict(layer_types=("full_attention", "sliding_attention")), "sliding_window is None"),
    (dict(layer_types=("full_attention",)), "layer_types has 1 entries, num_layers is 2"),
    (dict(mlp_layer_types=("dense", "moe")), "num_experts is 0"),
])
def test_bad_variant_fields_are_one_line_errors(changes, message):
    with pytest.raises(SpecError, match=message) as e:
        get_model("tiny-llama").with_(**changes)
    assert "\n" not in str(e.value)


def test_defaults_leave_todays_models_unchanged():
    spec = get_model("tiny-mixtral")
    assert spec.layer_types == ("full_attention",) * 2 and spec.mlp_layer_types == ("moe",) * 2
    deeper = spec.with_(num_layers=3)  # derived per-layer types follow the new depth
    assert deeper.layer_types == ("full_attention",) * 3 and deeper.mlp_layer_types == ("moe",) * 3
    assert get_model("tiny-llama").with_(sliding_window=8).layer_types == ("sliding_attention",) * 2


def test_layernorm_without_bias_drops_its_shift():
    spec = get_model("tiny-neox")  # 2 layers x 2 LayerNorms + the final one, each of width 64
    with_shift, without = build_model(spec), build_model(spec.with_(norm_bias=False))
    assert with_shift.num_params() - without.num_params() == 5 * 64
    assert without.final_norm.bias is None


@pytest.mark.parametrize("name", ["tiny-qwen3", "tiny-neox", "tiny-mistral-sw"])
def test_the_sharded_reference_refuses_the_variants_it_does_not_split(name):
    from costmodel.parallel import Split
    from costmodel.spec import Workload
    from profiler.parallel import check_parallel

    wl = Workload(batch=1, prompt=8, gen=2, weight_dtype="fp32", act_dtype="fp32")
    with pytest.raises(SpecError, match="use tp = pp = 1") as e:
        check_parallel(get_model(name), wl, Split(tp=2))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, field", [("gemma-2-9b", "embedding_multiplier"), ("gpt-oss-20b", "attn_sinks"),
                                         ("deepseek-v3", "moe_scoring"), ("llama-4-maverick", "attention_chunk_size")])
def test_what_the_reference_does_not_build_is_refused_in_one_line(name, field):
    # analytic-only variants (exact against transformers' fixtures): the reference never runs without them
    from costmodel.errors import SpecError
    from costmodel.models import get_model
    from profiler.model import check_supported

    with pytest.raises(SpecError) as e:
        check_supported(get_model(name))
    assert field in str(e.value) and "\n" not in str(e.value)
