"""Analytic per-step cost of the decoding strategies (costmodel.sampling), derived by hand."""

from dataclasses import replace

import pytest

from costmodel import ModelSpec, Workload, analyze
from costmodel.analysis import decode_cost, decode_step_cost, prefill_cost
from costmodel.errors import SpecError
from costmodel.sampling import sampling_ops, sort_comparisons

SPEC = ModelSpec(name="s", num_layers=1, hidden_size=16, num_heads=2, intermediate_size=32, vocab_size=32,
                 max_position_embeddings=64)
WL = Workload(batch=2, prompt=4, gen=3, weight_dtype="fp32", act_dtype="fp32")


def ops(wl, phase="prefill"):
    cost = prefill_cost(SPEC, wl) if phase == "prefill" else decode_cost(SPEC, wl)
    return {o.op: o for o in cost.after if o.op.startswith("sampling_")}


def test_greedy_is_one_argmax_pass():
    o = ops(WL)
    assert list(o) == ["sampling_argmax"]
    assert o["sampling_argmax"].flops == 2 * 32  # 1 compare per logit: batch 2 x vocab 32
    assert o["sampling_argmax"].matmul_flops == 0
    assert o["sampling_argmax"].act_read_bytes == 2 * 32 * 4  # fp32 logits
    assert o["sampling_argmax"].act_write_bytes == 2 * 8  # one int64 token id per row


def test_sample_softmax_and_draw_and_temperature_only_when_not_one():
    o = ops(replace(WL, strategy="sample"))
    assert list(o) == ["sampling_softmax", "sampling_draw"]  # T = 1: no divide, as HF skips it
    assert o["sampling_softmax"].flops == 5 * 2 * 32 == 320
    assert o["sampling_draw"].flops == 2 * 2 * 32 == 128
    o = ops(replace(WL, strategy="sample", temperature=0.7))
    assert list(o) == ["sampling_temperature", "sampling_softmax", "sampling_draw"]
    assert o["sampling_temperature"].flops == 2 * 32


def test_top_k_cuts_the_softmax_to_k():
    o = ops(replace(WL, strategy="top_k", top_k=5))
    assert list(o) == ["sampling_topk", "sampling_softmax", "sampling_draw"]
    assert o["sampling_topk"].flops == 2 * 32  # 1 compare per logit
    assert o["sampling_topk"].act_write_bytes == 2 * 5 * 4 + 2 * 5 * 8  # k fp32 values + k int64 indices
    assert o["sampling_softmax"].flops == 5 * 2 * 5 == 50  # over the k kept
    assert o["sampling_draw"].flops == 2 * 2 * 5 == 20


def test_top_p_sorts_the_vocabulary():
    o = ops(replace(WL, strategy="top_p"))
    assert list(o) == ["sampling_sort", "sampling_softmax", "sampling_cumsum", "sampling_top_p_mask",
                       "sampling_draw"]
    assert o["sampling_sort"].flops == 2 * 32 * 5  # rows x n x ceil(log2 32) = 2 * 32 * 5 = 320
    assert o["sampling_cumsum"].flops == 2 * 32
    assert o["sampling_top_p_mask"].flops == 2 * 2 * 32


def test_top_k_top_p_runs_top_p_over_k():
    o = ops(replace(WL, strategy="top_k_top_p", top_k=4, temperature=0.5))
    assert list(o) == ["sampling_temperature", "sampling_topk", "sampling_softmax", "sampling_cumsum",
                       "sampling_top_p_mask", "sampling_draw"]
    assert o["sampling_softmax"].flops == 5 * 2 * 4 == 40
    assert o["sampling_cumsum"].flops == 2 * 4
    assert "sampling_sort" not in o  # torch.topk returns the k already sorted


def test_beam_search_runs_batch_times_beams_rows_in_decode():
    wl = replace(WL, strategy="beam", beams=3)
    pre = ops(wl)
    assert list(pre) == ["sampling_log_softmax", "sampling_beam_add", "sampling_topk"]
    assert pre["sampling_log_softmax"].flops == 5 * 2 * 32  # prefill: batch 2 rows
    assert pre["sampling_topk"].act_write_bytes == 2 * 3 * 4 + 2 * 3 * 8  # 3 beams per sequence kept
    dec = ops(wl, "decode")  # gen 3: 2 decode steps on 2 * 3 = 6 rows
    assert dec["sampling_log_softmax"].flops == 2 * 5 * 6 * 32 == 1920
    assert dec["sampling_beam_add"].flops == 2 * 6 * 32
    assert dec["sampling_topk"].flops == 2 * 6 * 32  # topk over 3 * 32 candidates per sequence
    assert dec["sampling_topk"].act_write_bytes == 2 * (2 * 3 * 4 + 2 * 3 * 8)


def test_beams_multiply_the_decode_batch_of_every_op():
    step = decode_step_cost(SPEC, replace(WL, beams=3), 1)
    q = next(o for o in step.layer if o.op == "q_proj")
    assert q.flops == 2 * 6 * 16 * 16  # 2 * (batch 2 x 3 beams) tokens * h * h


def test_sampling_ops_are_constant_per_step_and_summed():
    wl = replace(WL, strategy="top_p", gen=6)
    one = {o.op: o.flops for o in decode_step_cost(SPEC, wl, 1).after}
    total = {o.op: o.flops for o in decode_cost(SPEC, wl).after}
    assert total["sampling_sort"] == 5 * one["sampling_sort"]  # gen 6: 5 decode steps


def test_sampling_rows_appear_in_the_report_rows_and_totals():
    r = analyze(SPEC, replace(WL, strategy="sample"))
    rows = [x for x in r.rows() if x["op"].startswith("sampling_")]
    assert {x["layer"] for x in rows} == {None}
    assert sum(x["flops"] for x in r.rows() if x["phase"] == "prefill") == r.prefill.flops
    assert r.to_dict()["workload"]["strategy"] == "sample"


@pytest.mark.parametrize("n, expected", [(1, 0), (2, 2), (5, 15), (8, 24), (256, 2048), (257, 257 * 9)])
def test_sort_comparisons_is_n_ceil_log2_n(n, expected):
    assert sort_comparisons(n) == expected


def test_no_op_is_a_matmul():
    for strategy in ("greedy", "sample", "top_k", "top_p", "top_k_top_p", "beam"):
        for o in prefill_cost(SPEC, replace(WL, strategy=strategy)).after:
            if o.op.startswith("sampling_"):
                assert o.matmul_flops == 0 and o.kind == "elementwise"


def test_unknown_strategy_in_the_library_function():
    with pytest.raises(ValueError, match="unknown strategy"):
        sampling_ops("nucleus", 1, 8, 1)


@pytest.mark.parametrize("fields, message", [
    (dict(strategy="nucleus"), "unknown strategy 'nucleus'; allowed: beam, greedy, sample, top_k, top_k_top_p, top_p"),
    (dict(beams=2, strategy="top_k"), "beams=2 needs strategy 'beam'"),
    (dict(top_k=0), "top_k must be a positive integer, got 0"),
    (dict(top_p=0.0), "top_p must be a number in (0, 1], got 0.0"),
    (dict(top_p=1.5), "top_p must be a number in (0, 1], got 1.5"),
    (dict(temperature=0), "temperature must be a positive number, got 0"),
    (dict(temperature=float("inf")), "temperature must be a positive number, got inf"),
])
def test_bad_strategy_fields_are_one_line_errors(fields, message):
    with pytest.raises(SpecError) as e:
        Workload(**fields)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_beams_with_the_default_strategy_mean_beam_search():
    assert Workload(beams=4).strategy == "beam"


def test_top_k_larger_than_the_vocabulary_is_refused():
    with pytest.raises(SpecError, match="top_k \\(33\\) exceeds s's vocab_size 32; allowed: 1 to 32"):
        analyze(SPEC, replace(WL, strategy="top_k", top_k=33))
