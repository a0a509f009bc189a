"""Op costs and op times are joined by their (phase, layer, op) key, never by position."""

import csv
import io
import re

import pytest

from costmodel import Workload, analyze, get_model
from costmodel.hardware import get_hardware
from costmodel.roofline import join_by_key, op_key, predict
from reports import text

SPEC, WL, HW = get_model("tiny-llama"), Workload(batch=2, prompt=8, gen=4), get_hardware("h100-sxm")


def _both(wl=WL):
    return analyze(SPEC, wl), predict(SPEC, wl, HW)


def test_op_times_are_keyed_like_the_op_rows():
    result, timing = _both()
    times = timing.op_times()
    # tiny-llama, one pass: embedding; 2 layers x 18 ops (attn_norm, q/k/v_proj, rotary, kv_cache_update,
    # attn_scores, attn_softmax, attn_values, o_proj, attn_residual, mlp_norm, mlp_gate, mlp_up, mlp_act,
    # mlp_mul, mlp_down, mlp_residual); final_norm, lm_head, sampling_argmax: 1 + 36 + 3 = 40 per phase
    assert len(times) == 2 * 40
    assert list(times) == [op_key(r) for r in result.rows()]
    assert times[("decode", 1, "q_proj")] is timing.decode.layer[1]  # layer 0's list: attn_norm, q_proj, ...
    assert times[("prefill", None, "lm_head")] is timing.prefill.after[1]


def test_a_missing_time_fails_loudly():
    result, timing = _both()
    times = timing.op_times()
    del times[("decode", None, "lm_head")]
    with pytest.raises(ValueError, match=re.escape("no time for op ('decode', None, 'lm_head')")):
        join_by_key(result.rows(), times)


def test_an_extra_time_fails_loudly():
    result, timing = _both()
    times = timing.op_times()
    times[("decode", None, "all_reduce")] = times[("decode", None, "lm_head")]
    with pytest.raises(ValueError, match=re.escape("a time for op ('decode', None, 'all_reduce') that no op row has")):
        join_by_key(result.rows(), times)


def test_two_rows_with_one_key_fail_loudly():
    result, timing = _both()
    rows = list(result.rows())
    with pytest.raises(ValueError, match=re.escape("two op rows with the key ('prefill', None, 'embedding')")):
        join_by_key(rows + rows[:1], timing.op_times())


def test_times_of_another_workload_are_refused_in_every_format():
    # Greedy picks with one argmax; top-k with topk, softmax and draw: other op names, and 5 ops after
    # the blocks (final_norm, lm_head and the 3) against 3, which a positional walk would mispair.
    result = analyze(SPEC, WL)
    timing = predict(SPEC, Workload(batch=2, prompt=8, gen=4, strategy="top_k"), HW)
    message = re.escape("op times do not match the op rows: no time for op ('prefill', None, 'sampling_argmax')")
    for render in (text.ops_csv, text.report_table, text.report_markdown, lambda r, t: t.annotate(r.to_dict())):
        with pytest.raises(ValueError, match=message):
            render(result, timing)


def test_csv_seconds_are_each_ops_own():
    result, timing = _both()
    rows = list(csv.DictReader(io.StringIO(text.ops_csv(result, timing))))
    times = timing.op_times()
    assert len(rows) == 80
    for row in rows:
        o = times[(row["phase"], int(row["layer"]) if row["layer"] else None, row["op"])]
        assert (row["seconds"], row["bound"]) == (repr(o.seconds), o.bound)
