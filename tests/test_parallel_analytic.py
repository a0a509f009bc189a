"""costmodel.parallel: the per-rank split, by hand and against plan's view of the same split (no torch)."""

import pytest

from costmodel.analysis import decode_cost, kv_cache_bytes, prefill_cost
from costmodel.errors import SpecError
from costmodel.models import get_model
from costmodel.parallel import (Split, check_split, rank_comm_bytes, rank_decode_cost, rank_kv_cache_bytes,
                                rank_prefill_cost, stage_layers, stage_range, wire_bytes)
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
