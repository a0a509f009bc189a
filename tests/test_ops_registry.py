"""The op registry (costmodel.ops): one entry per op, duplicates refused, unknown names loud; every op
the builders emit is registered; the classifiers that read it agree with the sets they replaced."""

from itertools import product

import pytest

from costmodel import formulas as F
from costmodel import ops
from costmodel.analysis import OpCost, analyze, prefill_cost
from costmodel.models import PRESETS
from costmodel.parallel import shard_op
from costmodel.sampling import STRATEGIES
from costmodel.spec import Workload


def _workloads(spec):
    """Every phase, with and without a KV cache, logits last and all, every strategy (beam with 2
    beams), temperature 1 and not (the mask does not change which ops run)."""
    extra = {"decoder_prompt": 2} if spec.arch == "encoder-decoder" else {}
    for kv, logits, strategy, temperature in product((True, False), ("last", "all"), STRATEGIES, (1.0, 0.7)):
        yield Workload(batch=2, prompt=8, gen=3, kv_cache=kv, logits=logits, strategy=strategy,
                       beams=2 if strategy == "beam" else 1, temperature=temperature, top_k=4, **extra)


def _emitted():
    """{op name: kinds} over every preset and workload, every phase and the other KV-cache choice."""
    seen = {}
    for spec in PRESETS.values():
        for wl in _workloads(spec):
            a = analyze(spec, wl)
            phases = list(a.phases.values()) + ([a.decode_alternative] if a.decode_alternative else [])
            for phase in phases:
                for _, o in phase.cost.rows():
                    seen.setdefault(o.op, set()).add(o.kind)
    return seen


def test_every_emitted_op_is_registered_with_its_kind():
    seen = _emitted()
    assert {op for op in seen if op.startswith("cross_")}  # the encoder-decoder presets were reached
    assert {"router", "expert_up", "shared_expert_score", "pooler", "mlm_dense", "sampling_sort",
            "sampling_beam_add", "rotary", "attn_position_bias"} <= set(seen)
    for op, kinds in seen.items():
        assert kinds == {ops.op_info(op).kind}, op


def test_a_duplicate_registration_is_refused(monkeypatch):
    monkeypatch.setattr(ops, "_REGISTRY", dict(ops._REGISTRY))  # leave the real table untouched
    with pytest.raises(ValueError, match="'q_proj' is already registered"):
        ops.register("q_proj", "matmul", "projections", "column")
    ops.register("test_op", "elementwise")
    with pytest.raises(ValueError, match="'test_op' is already registered"):
        ops.register("test_op", "elementwise")
    with pytest.raises(ValueError, match="unknown tp 'diagonal'; allowed: column, row, split"):
        ops.register("test_op2", "matmul", tp="diagonal")


def test_an_unknown_op_fails_loudly():
    with pytest.raises(ops.UnknownOpError) as e:
        ops.op_info("q_porj")
    assert str(e.value) == "op 'q_porj' is not registered in costmodel.ops"
    assert isinstance(e.value, KeyError)
    typo = OpCost("q_porj", "matmul", flops=8, matmul_flops=8)
    with pytest.raises(ops.UnknownOpError, match="'q_porj' is not registered"):
        shard_op(typo, 2)  # once silently replicated
    pytest.importorskip("pandas")
    from reports.plotdata import term_of

    with pytest.raises(ops.UnknownOpError, match="'mlp_upp' is not registered"):
        term_of("mlp_upp", "matmul")  # once silently "other"


# The classifiers the registry replaced, as they were, to show that nothing changed.
_FFN = ("mlp", "expert", "shared_expert")
_OLD_COLUMN = {"q_proj", "k_proj", "v_proj", "lm_head"} | {f"{p}_{m}" for p in _FFN for m in ("gate", "up")}
_OLD_ROW = {"o_proj"} | {f"{p}_down" for p in _FFN}
_OLD_SPLIT = ({"qkv_bias", "rotary", "kv_cache_update", "attn_scores", "attn_softmax", "attn_values"}
              | {f"{p}_{m}" for p in _FFN for m in ("act", "mul", "up_bias")})


def _old_term_of(op, kind):
    op = op.removeprefix("cross_")
    if op in ("q_proj", "k_proj", "v_proj", "o_proj"):
        return "projections"
    if op in ("attn_scores", "attn_values"):
        return "attention"
    if kind == "matmul" and op.startswith(("mlp_", "expert_", "shared_expert", "router")):
        return "MLP"
    if op == "lm_head":
        return "LM head"
    return "other"


# Ops an engine executes in place of eager ones (costmodel.fused), which the old classifiers never
# saw: the flash kernels are the attention term, like the scores and values they replace.
_EXECUTED_TERMS = {"flash_attention": "attention", "flash_attention_combine": "attention",
                   "cross_flash_attention": "attention", "cross_flash_attention_combine": "attention"}


def test_terms_are_the_old_terms():
    for info in ops.registered():
        want = _EXECUTED_TERMS.get(info.name) or _old_term_of(info.name, info.kind)
        assert info.term == want, info.name


def test_tp_split_is_the_old_split_for_every_op_the_planner_splits():
    # The planner splits decoder-only models only (plan.check_layout); their ops split as before.
    # (Cross-attention's ops, never split, are registered as their self-attention twins.)
    for spec in PRESETS.values():
        if spec.arch != "decoder":
            continue
        for wl in (Workload(batch=2, prompt=8, gen=3), Workload(batch=2, prompt=8, gen=3, strategy="top_p")):
            for o in {o.op for _, o in prefill_cost(spec, wl).rows()}:
                tp = ops.op_info(o).tp
                old = ("column" if o in _OLD_COLUMN else "row" if o in _OLD_ROW else
                       "split" if o in _OLD_SPLIT else "replicated")
                assert tp.replace("vocabulary", "column") == old, o
    # lm_head: column-parallel over the vocabulary, shard_op divides its FLOPs and output
    head = OpCost("lm_head", "matmul", 10, 10, weight_bytes=6, act_read_bytes=4, act_write_bytes=8)
    assert shard_op(head, 2) == OpCost("lm_head", "matmul", 5, 5, weight_bytes=3, act_read_bytes=4,
                                       act_write_bytes=4)


def test_timing_parts_are_the_old_parts():
    assert set(ops.timing_parts()) == {
        ("attention.q_proj", "projections"), ("attention.k_proj", "projections"),
        ("attention.v_proj", "projections"), ("attention.o_proj", "projections"),
        ("attention.core", "attention core"), ("mlp", "mlp"), ("cross_attention", "cross-attention")}


def test_module_paths_map_to_ops_as_before():
    pytest.importorskip("torch")
    from profiler.flops import SDPA_OPS, _op_of

    cases = {
        "layers.0.attention.q_proj": "q_proj",
        "layers.3.cross_attention.v_proj": "cross_v_proj",
        "encoder.layers.1.attention.o_proj": "o_proj",
        "layers.0.attention.core.attn_scores": "attn_scores",
        "layers.0.cross_attention.core.attn_values": "cross_attn_values",
        "layers.0.attention.core.sdpa": SDPA_OPS,
        "layers.0.cross_attention.core.sdpa": "cross_" + SDPA_OPS,
        "layers.0.mlp.gate": "mlp_gate",
        "layers.0.mlp.router": "router",
        "layers.0.mlp.experts.7.down": "expert_down",
        "layers.0.mlp.shared_expert.up": "shared_expert_up",
        "layers.0.mlp.shared_expert_gate": "shared_expert_score",
        "pooler": "pooler", "mlm_dense": "mlm_dense", "lm_head": "lm_head",
        "layers.0.mlp": None, "layers.0.attention": None, "layers.0.attn_norm": None, "tok_embeddings": None,
    }
    for path, op in cases.items():
        assert _op_of(path.split(".")) == op, path


def test_formulas_by_hand():
    # T5 does not scale its scores: 5 FLOPs per score; batch 2, heads 3, q 4, kv 5 (full):
    # 5 * 2*3*4*5 = 600; causal: pairs 4*(5-4) + 4*5/2 = 14 per head -> 5 * 2*3*14 = 420
    assert F.attention_softmax_flops(2, 3, 4, 5, scaled=False) == 600
    assert F.attention_softmax_flops(2, 3, 4, 5, causal=True, scaled=False) == 420
    assert F.attention_score_elements(2, 3, 4, 5, causal=True) == 84  # 2*3*14
    # Mixtral router top-2 of 8 for 3 tokens, renormalised: 3*8 compares + 2*3*2 = 24 + 12 = 36
    assert F.router_topk_flops(3, 8, 2, renormalize=True) == 36
    assert F.router_topk_flops(3, 8, 2, renormalize=False) == 24
    # combine k = 2 expert outputs of hidden 16 for 3 tokens: 2 * 3*2*16 = 192
    assert F.expert_combine_flops(3, 2, 16) == 192
    # Qwen-MoE gated shared expert, 3 tokens, hidden 16: sigmoid 4*3 = 12 + 2*3*16 = 96 -> 108;
    # ungated: one add per element, 3*16 = 48
    assert F.shared_expert_combine_flops(3, 16, gated=True) == 108
    assert F.shared_expert_combine_flops(3, 16, gated=False) == 48
    # q for 5 tokens x 64 + k, v for 7 encoder tokens x 32 each: 320 + 2*7*32 = 320 + 448 = 768
    assert F.qkv_elements(5, 7, 64, 32) == 768
    assert F.kv_elements(7, 32) == 448  # 2 * 7 * 32
    assert F.rotary_table_elements(8, 16) == 512  # cos, sin [8, 16], each read twice: 4 * 128
    assert F.pooler_activation_flops(2, 16) == 64  # bias + tanh on 2*16: 2 * 32
    assert F.residual_add_flops(8, 64) == 512  # 8*64
