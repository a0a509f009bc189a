"""costmodel.parallel: the per-rank split, by hand and against plan's view of the same split (no torch)."""

from dataclasses import replace

import pytest

from costmodel.analysis import decode_cost, decode_step_cost, kv_cache_bytes, prefill_cost
from costmodel.errors import SpecError
from costmodel.models import get_model
from costmodel.parallel import (Split, check_split, rank_comm_bytes, rank_decode_cost, rank_decode_step_cost,
                                rank_kv_cache_bytes, rank_prefill_cost, shard_op, stage_layers, stage_range,
                                stage_view, wire_bytes)
from costmodel.plan import shard_step
from costmodel.spec import Workload

WL = Workload(batch=2, prompt=16, gen=6, weight_dtype="fp32", act_dtype="fp32")
LLAMA = get_model("tiny-llama")  # L=2, h=64, 4 heads / 2 kv heads, d=16, inter=160, V=256


def ops(cost):
    return {o.op: o.matmul_flops for o in cost.before + cost.layer + cost.after}


def test_tp2_rank_ops_by_hand():
    o = ops(rank_prefill_cost(LLAMA, WL, Split(2, 1), 0))
    t = 2 * 16  # tokens
    assert o["q_proj"] == 2 * t * 64 * 32  # 2 heads x d 16 of 4 = 65,536
    assert o["k_proj"] == 2 * t * 64 * 16  # 1 kv head of 2
    assert o["o_proj"] == 2 * t * 32 * 64  # row-parallel: 32 input columns
    assert o["mlp_up"] == o["mlp_gate"] == o["mlp_down"] == 2 * t * 64 * 80  # inter 160 / 2
    assert o["lm_head"] == 2 * 2 * 64 * 128  # last position of 2 sequences, V 256 / 2 rows


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2", "tiny-qwen2", "tiny-mha"])
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (2, 2), (4, 1)])
def test_ranks_add_up_to_the_model_and_match_plan(model, tp, pp):
    spec, split = get_model(model), Split(tp, pp)
    if spec.num_kv_heads % tp:
        pytest.skip("kv heads do not divide")
    ranks = range(split.world)
    for whole, per_rank in ((prefill_cost(spec, WL), rank_prefill_cost), (decode_cost(spec, WL), rank_decode_cost)):
        # stages partition the layers, tp ranks split every matmul evenly: the whole model's matmuls
        assert sum(per_rank(spec, WL, split, r).total("matmul_flops") for r in ranks) == whole.total("matmul_flops")
        if pp == 1:  # the same split as the plan's per-GPU share (it rounds up; here all divide)
            plan_share = shard_step(whole, tp)
            for r in ranks:
                assert ops(per_rank(spec, WL, split, r)) == ops(plan_share)
    assert sum(rank_kv_cache_bytes(spec, WL, split, r) for r in ranks) == kv_cache_bytes(spec, WL)


def test_comm_bytes_by_hand():
    split = Split(2, 2)  # one layer per stage
    pre0 = rank_comm_bytes(LLAMA, WL, split, 0, "prefill")
    # all-reduce: 2 per layer x [2 x 16 tokens, 64] fp32 = 2 x 8,192; send the same activations once
    assert pre0 == {"all_reduce": 16384, "all_gather": 0, "send": 8192, "recv": 0, "broadcast": 2 * 8}
    pre3 = rank_comm_bytes(LLAMA, WL, split, 3, "prefill")
    # last stage: logits of 2 rows x V/2 = 128 columns x 4 B gathered
    assert pre3 == {"all_reduce": 16384, "all_gather": 1024, "send": 0, "recv": 8192, "broadcast": 16}
    dec3 = rank_comm_bytes(LLAMA, WL, split, 3, "decode")
    # 5 steps of one token per sequence: all-reduce 2 x 2 x 64 x 4 = 1,024 per step
    assert dec3 == {"all_reduce": 5 * 1024, "all_gather": 5 * 1024, "send": 0, "recv": 5 * 512, "broadcast": 5 * 16}


def test_wire_bytes_ring():
    assert wire_bytes(Split(4, 1), "all_reduce", 1000) == 1500  # 2 x 3 / 4
    assert wire_bytes(Split(2, 1), "all_reduce", 1000) == 1000
    assert wire_bytes(Split(4, 1), "all_gather", 100) == 300
    assert wire_bytes(Split(1, 2), "send", 7) == 7


def test_stages():
    assert stage_layers(5, 2) == [3, 2]
    assert list(stage_range(5, 2, 1)) == [3, 4]


@pytest.mark.parametrize("model,tp,pp,words", [
    ("tiny-llama", 3, 1, "tp=3 must divide num_heads (4)"),
    ("tiny-llama", 4, 1, "tp=4 must divide num_kv_heads (2)"),
    ("tiny-llama", 1, 3, "pp=3 exceeds the 2 layers"),
    ("tiny-bert", 2, 1, "decoder-only"),
    ("tiny-t5", 1, 2, "decoder-only"),
    ("tiny-mixtral", 2, 1, "mixture-of-experts"),
])
def test_refused_splits(model, tp, pp, words):
    with pytest.raises(SpecError, match=words.replace("(", r"\(").replace(")", r"\)")):
        check_split(get_model(model), Split(tp, pp))


def test_uneven_share_rounded_up_or_refused():
    gpt2 = get_model("gpt2")  # 12 heads (tp 3 divides them), h = 768, V = 50,257 = 3 x 16,752 + 1
    wl = Workload(batch=1, prompt=4, gen=2, weight_dtype="bf16", act_dtype="bf16")
    head = next(o for o in prefill_cost(gpt2, wl).after if o.op == "lm_head")
    # the last position's logits: 50,257 x 2 B = 100,514 bytes written; 2 x 768 x 50,257 = 77,194,752 FLOPs
    assert (head.act_write_bytes, head.flops) == (100_514, 77_194_752)
    share = shard_op(head, 3, "ceil")
    # 100,514 / 3 = 33,504.67 -> 33,505 on the fullest GPU; 77,194,752 / 3 = 25,731,584 exactly
    assert (share.act_write_bytes, share.flops, share.act_read_bytes) == (33_505, 25_731_584, head.act_read_bytes)
    with pytest.raises(SpecError) as e:
        shard_op(head, 3, "exact")
    assert str(e.value) == ("lm_head act_write_bytes = 100514 does not split evenly over tp=3 under rounding "
                            "'exact'; rounding 'ceil' rounds uneven shares up")
    check_split(gpt2, Split(3, 1), rounding="ceil")  # the plan's split: heads whole, the rest rounded up
    with pytest.raises(SpecError, match=r"^tp=3 must divide vocab_size \(50257\) of gpt2; allowed tp: 1$"):
        check_split(gpt2, Split(3, 1, vocab_pad_multiple=0))  # the reference's, unpadded: every share whole
    with pytest.raises(SpecError, match="^unknown rounding 'floor'; allowed: ceil, exact$"):
        check_split(gpt2, Split(3, 1), rounding="floor")


def test_moe_is_split_by_the_plan_only():
    mixtral = get_model("tiny-mixtral")
    check_split(mixtral, Split(2, 1), rounding="ceil")
    with pytest.raises(SpecError, match="mixture-of-experts"):
        check_split(mixtral, Split(2, 1), rounding="exact")


def costs(cost, rotary_reads=True):
    """(op, its costs) in order; ``rotary_reads=False`` blanks rotary's act_read_bytes."""
    return [(o.op, (o if rotary_reads or o.op != "rotary" else replace(o, act_read_bytes=0)).costs())
            for o in cost.before + cost.layer + cost.after]


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2", "tiny-qwen2", "tiny-mha"])
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2), (2, 2)])
def test_plan_gpu_view_is_the_reference_rank_view(model, tp, pp):
    """An even split: the plan's per-op shares of the whole model (rounded up, here nothing to
    round), restricted to a stage, are every cost of the sharded spec's rank view, op by op, but
    rotary's cos/sin reads (by hand below)."""
    spec, split = get_model(model), Split(tp, pp)
    for whole, view in ((prefill_cost(spec, WL), lambda r: rank_prefill_cost(spec, WL, split, r)),
                        (decode_step_cost(spec, WL, 3), lambda r: rank_decode_step_cost(spec, WL, split, r, 3))):
        gpu = shard_step(whole, tp)
        assert costs(gpu) == costs(shard_step(whole, tp, "exact"))
        for r in range(split.world):
            mine, ref = stage_view(gpu, split, split.stage_of(r)), view(r)
            assert mine.num_layers == ref.num_layers == stage_layers(spec.num_layers, pp)[split.stage_of(r)]
            assert costs(mine, rotary_reads=tp == 1) == costs(ref, rotary_reads=tp == 1)


def test_rotary_tables_read_whole_by_each_rank():
    whole = {o.op: o for o in prefill_cost(LLAMA, WL).layer}["rotary"]
    plan = {o.op: o for o in shard_step(prefill_cost(LLAMA, WL), 2).layer}["rotary"]
    ref = {o.op: o for o in rank_prefill_cost(LLAMA, WL, Split(2, 1), 0).layer}["rotary"]
    # q and k of 32 tokens: 32 x (64 + 32) = 3,072 elements, cos/sin [16, 16] read twice: 1,024; fp32
    assert whole.act_read_bytes == (3072 + 1024) * 4 == 16_384
    assert ref.act_read_bytes == (3072 // 2 + 1024) * 4 == 10_240  # each rank reads the whole tables
    assert plan.act_read_bytes == 16_384 // 2  # the plan's per-op split divides them too (NB in parallel.py)
