"""The vectorized sweep: ranges, exact agreement with `analyze` one config at a time, the int64 /
Python-int switch, roofline seconds, and `costmodel sweep` through CliRunner."""

import csv
import io
import json
import os
import sys
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from costmodel import Workload, analyze, get_model, kv_cache_bytes
from costmodel.errors import SpecError
from reports.cli import main
from reports.files import atomic_write
from reports.sweep import _check_decode_sums, _NeedsPythonInts
from reports.sweep import _grid_counts as sweep_counts
from reports.sweep import COLUMNS, _peak_magnitude, corner_peak, parse_range, phases_of, sweep, write_frame


def run(*args):
    return CliRunner().invoke(main, list(args))


# --- ranges -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("1,2,4,8", [1, 2, 4, 8]),
    ("128:32768:x2", [128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]),  # 128 * 2^k, k = 0..8
    ("1:100:x10", [1, 10, 100]),
    ("3:30:x3", [3, 9, 27]),  # 81 > 30: stop not hit, not included
    ("100:400:+100", [100, 200, 300, 400]),
    ("100:350:+100", [100, 200, 300]),
    ("1:4", [1, 2, 3, 4]),
    ("7", [7]),
    ("8, 1, 8, 2:4:x2", [1, 2, 4, 8]),  # items combine, sorted, duplicates dropped
])
def test_parse_range(text, expected):
    assert parse_range(text, "--batch") == expected


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("0", "positive"),
    ("10:1", "below START"),
    ("0:8:x2", "START must be"),
    ("1:10:x1", "FACTOR must be an integer >= 2"),
    ("1:10:+0", "STEP must be"),
    ("1.5", "allowed"),
    ("a:b", "allowed"),
    ("1:10:-2", "allowed"),
    ("1:5000000", "limit"),
])
def test_parse_range_rejects(text, words):
    with pytest.raises(SpecError, match=words.replace("+", r"\+")):
        parse_range(text, "--prompt")


# --- exactness against analyze -------------------------------------------------------------------

def _expected(spec, wl, row):
    """The row as `analyze` of its configuration gives it, phase by phase."""
    a = analyze(spec, replace(wl, batch=row["batch"], prompt=row["prompt"], gen=row["gen"]))
    ph, m, w = a.phases[row["phase"]], a.memory, a.workload
    if row["phase"] == "decode":  # held after the last step: the analysis' memory figures
        kv, cross = m.kv_cache_bytes, m.cross_kv_cache_bytes
    elif row["phase"] == "prefill":  # the prompt's positions (decoder prompt's), and the cross cache
        start = w.decoder_prompt if spec.arch == "encoder-decoder" else w.prompt
        kv, cross = kv_cache_bytes(spec, w, positions=start) + m.cross_kv_cache_bytes, m.cross_kv_cache_bytes
    else:  # encode: nothing cached yet
        kv = cross = 0
    return {"steps": ph.steps, "flops": ph.flops, "matmul_flops": ph.matmul_flops, "bytes": ph.bytes,
            "kv_cache_bytes": kv, "weights_bytes": m.weights_bytes,
            "activation_peak_bytes": m.activation_peak_bytes, "cross_kv_cache_bytes": cross}


WORKLOADS = [
    Workload(),
    Workload(kv_cache=False),  # decode recomputes the prefix: quadratic in the step
    Workload(causal=True, beams=3, logits="all", weight_dtype="int4", kv_dtype="int4"),
    Workload(act_dtype="fp32", kv_cache=False, causal=True),
]


MODELS = ["tiny-gpt2", "tiny-llama", "tiny-mixtral", "tiny-qwen-moe", "llama-2-70b",  # decoder-only, MoE
          "tiny-bert", "bert-base",  # encoder-only
          "tiny-t5", "tiny-t5-gated", "t5-small", "transformer-base"]  # encoder-decoder


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("wl", WORKLOADS, ids=["default", "no-cache", "causal-beams-int4", "fp32-no-cache"])
def test_sweep_equals_analyze_row_by_row(model, wl):
    spec = get_model(model)
    df = sweep(spec, wl, [1, 3, 7], [1, 2, 5, 64], [1, 2, 3, 4, 50])
    phases = phases_of(spec)
    gens = 1 if phases == ("encode",) else 5  # encoder-only: nothing generated, one gen (1)
    assert len(df) == 3 * 4 * gens * len(phases)
    assert list(df.columns) == list(COLUMNS)
    assert list(df["phase"].cat.categories) == list(phases)
    for row in df.to_dict("records"):
        exp = _expected(spec, wl, row)
        got = {k: row[k] for k in exp}
        assert got == exp, row
        assert isinstance(row["flops"], int)  # exact integers, never floats


def test_encoder_decoder_with_a_longer_decoder_prompt():
    spec, wl = get_model("t5-small"), Workload(decoder_prompt=7, kv_cache=True)
    df = sweep(spec, wl, [2, 5], [3, 100], [1, 9])
    for row in df.to_dict("records"):
        assert {k: row[k] for k in _expected(spec, wl, row)} == _expected(spec, wl, row), row


def test_phases_per_architecture():
    assert phases_of(get_model("tiny-llama")) == ("prefill", "decode")
    assert phases_of(get_model("tiny-mixtral")) == ("prefill", "decode")
    assert phases_of(get_model("bert-base")) == ("encode",)
    assert phases_of(get_model("t5-small")) == ("encode", "prefill", "decode")


def test_hand_derived_tiny_t5_caches():
    # tiny-t5: 2 decoder layers, 4 kv heads x 16 = 64; bf16: 2 (K, V) * 2 * 64 * 2 bytes = 512 bytes
    # per position per sequence, self and cross alike. Batch 3, source 10, decoder prompt 1, gen 5.
    df = sweep(get_model("tiny-t5"), Workload(), [3], [10], [5]).set_index("phase")
    assert df.loc["encode", "kv_cache_bytes"] == 0 and df.loc["encode", "cross_kv_cache_bytes"] == 0
    cross = 512 * 3 * 10  # the source's keys and values, projected once in prefill: 15,360
    assert df.loc["prefill", "cross_kv_cache_bytes"] == df.loc["decode", "cross_kv_cache_bytes"] == cross
    assert df.loc["prefill", "kv_cache_bytes"] == cross + 512 * 3 * 1  # + the decoder prompt: 16,896
    assert df.loc["decode", "kv_cache_bytes"] == cross + 512 * 3 * (1 + 5 - 1)  # + 5 positions: 23,040
    assert list(df["steps"]) == [1, 1, 4]


def test_encoder_only_collapses_gen_and_says_so():
    spec = get_model("tiny-bert")
    df = sweep(spec, Workload(), [1, 2], [8], [1, 128])
    assert list(df["gen"]) == [1, 1] and list(df["phase"]) == ["encode", "encode"]
    assert "encoder-only" in df.attrs["warnings"][0] and "gen = 1" in df.attrs["warnings"][0]
    assert (df["kv_cache_bytes"] == 0).all() and (df["cross_kv_cache_bytes"] == 0).all()
    # tiny-bert: 133,504 parameters, bf16: 2 bytes each
    assert (df["weights_bytes"] == 2 * 133_504).all()
    assert sweep(spec, Workload(), [1], [8], [1]).attrs["warnings"] == []


def test_rows_are_tidy_and_ordered():
    df = sweep(get_model("tiny-llama"), Workload(), [2, 1], [8, 4], [3])
    # sorted batch, then prompt, then gen; prefill before decode
    assert list(zip(df["batch"], df["prompt"], df["phase"])) == [
        (1, 4, "prefill"), (1, 4, "decode"), (1, 8, "prefill"), (1, 8, "decode"),
        (2, 4, "prefill"), (2, 4, "decode"), (2, 8, "prefill"), (2, 8, "decode")]
    assert df.attrs["arithmetic"] == "int64"
    for c in ("flops", "matmul_flops", "bytes", "kv_cache_bytes", "weights_bytes"):
        assert df[c].dtype == np.int64


def test_hand_derived_llama_2_7b_values():
    df = sweep(get_model("llama-2-7b"), Workload(), [8], [2048], [1, 128])
    pre = df[(df["gen"] == 128) & (df["phase"] == "prefill")].iloc[0]
    dec = df[(df["gen"] == 128) & (df["phase"] == "decode")].iloc[0]
    # bf16 cache per token: 2 (K, V) * 32 layers * 4096 * 2 bytes = 524,288
    assert pre["kv_cache_bytes"] == 524_288 * 8 * 2048
    assert dec["kv_cache_bytes"] == 524_288 * 8 * (2048 + 128 - 1)
    assert pre["weights_bytes"] == 2 * 6_738_415_616  # published parameter count, 2 bytes each
    assert (pre["steps"], dec["steps"]) == (1, 127)
    # gen = 1: no decode step, nothing counted
    only = df[(df["gen"] == 1) & (df["phase"] == "decode")].iloc[0]
    assert (only["steps"], only["flops"], only["bytes"]) == (0, 0, 0)


# --- overflow: int64 where safe, Python ints beyond -------------------------------------------------

def test_counts_beyond_int64_stay_exact():
    spec = get_model("llama-2-70b")
    df = sweep(spec, Workload(), [4096], [1_000_000], [1, 1000])
    assert df.attrs["arithmetic"] == "python-int"
    a = analyze(spec, Workload(batch=4096, prompt=1_000_000, gen=1000))
    pre = df[df["phase"] == "prefill"].iloc[0]
    assert pre["flops"] == a.prefill.flops > 2**63  # ~1.1e22: would wrap in int64
    assert isinstance(pre["flops"], int)
    dec = df[(df["phase"] == "decode") & (df["gen"] == 1000)].iloc[0]
    assert dec["flops"] == a.decode.flops and dec["bytes"] == a.decode.bytes
    # columns that fit are int64 again; the others stay exact Python ints
    assert df["weights_bytes"].dtype == np.int64 and df["flops"].dtype == object
    # CSV and JSON write every digit
    text = write_frame(df, "csv", None)
    assert str(a.prefill.flops) in text
    assert json.loads(write_frame(df, "json", None))[0]["flops"] == a.prefill.flops


def test_large_but_safe_grid_runs_in_int64_and_is_exact():
    # llama-2-70b, batch 64, prompt 32768: prefill ~2e17 FLOPs, under 2**62 ~ 4.6e18 in every step
    spec = get_model("llama-2-70b")
    df = sweep(spec, Workload(), [64], [32768], [2048])
    assert df.attrs["arithmetic"] == "int64"
    for row in df.to_dict("records"):
        assert {k: row[k] for k in ("flops", "bytes")} == {k: v for k, v in _expected(spec, Workload(), row).items()
                                                          if k in ("flops", "bytes")}


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-mixtral", "tiny-qwen-moe", "tiny-bert", "tiny-t5", "llama-2-70b"])
@pytest.mark.parametrize("wl", WORKLOADS[:3], ids=["default", "no-cache", "causal-beams-int4"])
def test_the_corner_bounds_every_point(model, wl):
    # The int64 decision rests on this: no intermediate anywhere in a block is larger than the
    # largest intermediate at its corner (largest batch and prompt). Checked against the
    # element-wise shadow of a whole grid. Gens up to 3 (decode sums of <= 2 steps): the Newton
    # terms of longer sums need not peak at the corner (MoE without a cache: the polynomial through
    # steps 1-3 of an unsaturated point extrapolates past the true sum), and are bounded exactly
    # on the int64 block instead (next test).
    spec = get_model(model)
    b, p, g = np.array([1, 2, 3, 7, 16]), np.array([1, 2, 5, 64, 300]), [1, 2, 3]
    full = _peak_magnitude(lambda bb, pp, dt: sweep_counts(spec, wl, bb, pp, g, dt), b, p)
    assert 0 < full <= corner_peak(spec, wl, b, p, g)


def test_decode_sum_guard_is_exact():
    # steps 2**40, 2**40 + 1, 2**40 + 2 (d1 = 1, d2 = 0); bound n * 2**40 + C(n, 2):
    # n = 2**22: 2**62 + (2**43 - 2**21) >= 2**62: Python ints; n = 2**21: 2**61 + ~2**41: int64.
    s = [np.array([2**40 + k]) for k in range(3)]
    with pytest.raises(_NeedsPythonInts):
        _check_decode_sums({"flops": s}, 2**22)
    _check_decode_sums({"flops": s}, 2**21)


def test_shadow_records_the_largest_intermediate():
    # a * 3 + 2**40 on [1, 5]: intermediates 3, 15, then 2**40 + 15; the Python int 2**40 counts too
    peak = _peak_magnitude(lambda a, dt: a * 3 + 2**40, np.array([1, 5]))
    assert peak == float(2**40 + 15)
    peak = _peak_magnitude(lambda a, dt: (a - 10) * 2, np.array([1, 5]))  # |(1 - 10) * 2| = 18
    assert peak == 18.0


# --- roofline seconds ----------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["llama-2-7b", "bert-base", "t5-small", "tiny-mixtral"])
@pytest.mark.parametrize("wl", [Workload(), Workload(kv_cache=False)], ids=["cache", "no-cache"])
def test_seconds_match_roofline_predict(model, wl):
    from costmodel.hardware import get_hardware
    from costmodel.roofline import predict

    spec, hw = get_model(model), get_hardware("h100-sxm")
    df = sweep(spec, wl, [1, 64], [16, 4096], [1, 2, 300], hardware=hw)
    for row in df.to_dict("records"):
        t = predict(spec, replace(wl, batch=row["batch"], prompt=row["prompt"], gen=row["gen"]), hw)
        expected = t.phases[row["phase"]].seconds
        assert row["seconds"] == pytest.approx(expected, rel=1e-9, abs=1e-15)



def test_seconds_use_each_ops_rates_like_predict():
    # a profile with its own element-wise peak (a calibrated CPU): softmax, norms and activations
    # at 1e9 FLOP/s, matmuls at 1e12; the sweep's seconds must use the same per-kind rates as predict
    from costmodel.hardware import Hardware
    from costmodel.roofline import predict

    cpu = Hardware(id="toy-cpu", name="toy", peak_flops_per_s={"bf16": 1e12},
                   elementwise_flops_per_s={"bf16": 1e9}, memory_bytes=10**10,
                   memory_bandwidth_bytes_per_s=1e11, flops_efficiency=1.0, bandwidth_efficiency=1.0)
    spec = get_model("tiny-llama")
    for wl in (Workload(), Workload(kv_cache=False)):
        df = sweep(spec, wl, [1, 4], [8, 64], [2, 12], hardware=cpu)
        for row in df.to_dict("records"):
            t = predict(spec, replace(wl, batch=row["batch"], prompt=row["prompt"], gen=row["gen"]), cpu)
            assert row["seconds"] == pytest.approx(t.phases[row["phase"]].seconds, rel=1e-9)

# --- files ---------------------------------------------------------------------------------------

def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.csv"

    def boom(f):
        f.write("partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(SpecError, match="No space left"):
        atomic_write(str(target), boom)
    assert os.listdir(tmp_path) == []


# --- CLI -----------------------------------------------------------------------------------------

def test_cli_csv_to_stdout():
    r = run("sweep", "tiny-llama", "--batch", "1,2", "--prompt", "4:16:x2", "--gen", "8")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert len(rows) == 2 * 3 * 2  # batch x prompt x phase
    assert list(rows[0]) == list(COLUMNS)
    a = analyze(get_model("tiny-llama"), Workload(batch=2, prompt=16, gen=8))
    last = rows[-1]
    assert (last["batch"], last["prompt"], last["phase"]) == ("2", "16", "decode")
    assert int(last["flops"]) == a.decode.flops


def test_cli_json_with_gpu_has_seconds():
    r = run("sweep", "tiny-llama", "--batch", "1", "--prompt", "8", "--gen", "4", "--gpu", "h100-sxm",
            "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [x["phase"] for x in rows] == ["prefill", "decode"]
    assert all(x["seconds"] > 0 for x in rows)


def test_cli_out_file_atomic(tmp_path):
    out = tmp_path / "grid.csv"
    r = run("sweep", "tiny-gpt2", "--prompt", "4,8", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert out.read_text().startswith("batch,prompt,gen,phase")
    assert sorted(os.listdir(tmp_path)) == ["grid.csv"]  # no temporary file left


def test_cli_parquet_roundtrip(tmp_path):
    pytest.importorskip("pyarrow")
    import pandas as pd

    out = tmp_path / "grid.parquet"
    r = run("sweep", "llama-2-70b", "--batch", "1,4096", "--prompt", "1000000", "--gen", "2",
            "--format", "parquet", "--out", str(out))
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out)
    a = analyze(get_model("llama-2-70b"), Workload(batch=4096, prompt=1_000_000, gen=2))
    got = df[(df["batch"] == 4096) & (df["phase"] == "prefill")]["flops"].iloc[0]
    assert int(got) == a.prefill.flops  # decimal128: exact past int64


def test_cli_parquet_without_pyarrow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow -> ImportError
    r = run("sweep", "tiny-gpt2", "--format", "parquet", "--out", str(tmp_path / "x.parquet"))
    assert r.exit_code == 2
    assert "needs pyarrow" in r.output and len(r.output.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("args, words", [
    (["sweep", "tiny-gpt2", "--prompt", "10:1"], "STOP (1) is below START (10)"),
    (["sweep", "tiny-gpt2", "--batch", "1:8:x1"], "FACTOR"),
    (["sweep", "tiny-gpt2", "--gen", "0"], "positive"),
    (["sweep", "no-such-model"], "unknown model"),
    (["sweep", "tiny-gpt2", "--format", "xml"], "'xml' is not one of"),
    (["sweep", "tiny-gpt2", "--format", "parquet"], "needs --out FILE"),
    (["sweep", "tiny-gpt2", "--gpu", "no-such-gpu"], "unknown GPU"),
    (["sweep", "tiny-gpt2", "--out", "/dev/null/dir/x.csv"], "is not a folder"),  # missing ones are created
    (["sweep", "tiny-llama", "--decoder-prompt", "4"], "decoder_prompt is for encoder-decoder models"),
])
def test_cli_bad_input_is_one_line_exit_2(args, words):
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert words in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_cli_encoder_models():
    r = run("sweep", "tiny-t5", "--batch", "2", "--prompt", "10", "--gen", "5", "--decoder-prompt", "3")
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert [x["phase"] for x in rows] == ["encode", "prefill", "decode"]
    a = analyze(get_model("tiny-t5"), Workload(batch=2, prompt=10, gen=5, decoder_prompt=3))
    assert [int(x["flops"]) for x in rows] == [a.encode.flops, a.prefill.flops, a.decode.flops]
    # tiny-t5 cross cache: 512 bytes a position and sequence (see above) * batch 2 * source 10
    assert rows[2]["cross_kv_cache_bytes"] == str(512 * 2 * 10)
    r = run("sweep", "tiny-bert", "--prompt", "8,16")  # gen defaults to 1 for encoder-only: no warning
    assert r.exit_code == 0 and "Warning" not in r.output
    assert [x["phase"] for x in csv.DictReader(io.StringIO(r.output))] == ["encode", "encode"]


def test_cli_encoder_only_warns_about_gen():
    r = CliRunner().invoke(main, ["sweep", "tiny-bert", "--prompt", "8", "--gen", "1,64"])
    assert r.exit_code == 0, r.output
    assert "encoder-only" in r.stderr and "gen = 1" in r.stderr
    assert len(list(csv.DictReader(io.StringIO(r.stdout)))) == 1


def test_cli_unwritable_out_leaves_no_file(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        if os.access(d, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        r = run("sweep", "tiny-gpt2", "--out", str(d / "x.csv"))
        assert r.exit_code == 2 and "permission denied" in r.output
        assert os.listdir(d) == []
    finally:
        d.chmod(0o700)


@pytest.mark.parametrize("command", ["sweep", "plot"])
def test_help(command):
    r = run(command, "--help")
    assert r.exit_code == 0 and "Usage" in r.output


def test_sweep_interrupted_keeps_finished_chunks(tmp_path, monkeypatch):
    """Ctrl-C during a chunk: the rows of the chunks before it are written, exit code 130."""
    import reports.cli.sweep as cli_sweep
    import reports.sweep as rs
    from click.testing import CliRunner

    from reports.cli import main

    monkeypatch.setattr(cli_sweep, "CHUNK_CONFIGS", 2)  # 1 batch a chunk: 2 prompts x 1 gen
    real, calls = rs.sweep, []

    def flaky(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rs, "sweep", flaky)
    out = tmp_path / "rows.csv"
    r = CliRunner().invoke(main, ["sweep", "tiny-llama", "--batch", "1,2,3,4", "--prompt", "8,16", "--gen", "4",
                                  "--format", "csv", "--out", str(out)])
    assert r.exit_code == 130, r.output
    assert "interrupted: kept the 8 rows finished (batches 3, 4 not computed)" in r.output
    # issue 15: the partial rows are named so (<out>.partial); --out itself is not written
    assert f"wrote them to {out}.partial" in r.output and not out.exists()
    lines = (tmp_path / "rows.csv.partial").read_text().strip().splitlines()
    assert len(lines) == 1 + 8  # header + 2 batches x 2 prompts x 2 phases
