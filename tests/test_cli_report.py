"""`costmodel report` and `costmodel models` through click's CliRunner: every format, every bad input."""

import csv
import io
import json

import pytest
from click.testing import CliRunner

from costmodel import Workload, analyze, get_model
from reports.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_report_json_contract():
    r = run("report", "llama-2-7b", "--batch", "8", "--prompt", "2048", "--gen", "128", "--format", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["model"]["num_params"] == 6_738_415_616
    for key in ("name", "num_params", "num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                "intermediate_size", "vocab_size"):
        assert key in d["model"]
    assert d["workload"]["batch"] == 8 and d["workload"]["prompt"] == 2048 and d["workload"]["gen"] == 128
    for phase in ("prefill", "decode"):
        assert {"flops", "matmul_flops", "bytes", "steps"} <= set(d[phase])
    assert d["prefill"]["steps"] == 1 and d["decode"]["steps"] == 127
    assert set(d["memory"]) >= {"weights_bytes", "kv_cache_bytes", "kv_cache_bytes_per_token",
                                "activation_peak_bytes"}
    # bf16 cache: 524,288 bytes per token; 8 sequences of 2048 + 128 - 1 positions
    assert d["memory"]["kv_cache_bytes_per_token"] == 524_288
    assert d["memory"]["kv_cache_bytes"] == 524_288 * 8 * 2175
    assert d["memory"]["weights_bytes"] == 2 * 6_738_415_616
    ops = d["ops"]
    assert set(ops[0]) >= {"phase", "layer", "op", "flops", "matmul_flops", "bytes"}
    for phase in ("prefill", "decode"):
        rows = [o for o in ops if o["phase"] == phase]
        assert sum(o["flops"] for o in rows) == d[phase]["flops"]
        assert sum(o["matmul_flops"] for o in rows) == d[phase]["matmul_flops"]
        assert sum(o["bytes"] for o in rows) == d[phase]["bytes"]
        assert {o["layer"] for o in rows} == {None, *range(32)}
    # the JSON agrees with the Python API
    api = analyze(get_model("llama-2-7b"), Workload(batch=8, prompt=2048, gen=128))
    assert d["prefill"]["matmul_flops"] == api.prefill.matmul_flops
    # prefill of 8 x 2048 tokens: 2 * params * tokens is the classic estimate; exact is close to it
    assert d["prefill"]["matmul_flops"] == pytest.approx(2 * 6.74e9 * 8 * 2048, rel=0.15)


def test_report_table_is_readable():
    r = run("report", "gpt2", "--prompt", "128", "--gen", "16")
    assert r.exit_code == 0, r.output
    out = r.output
    assert out.startswith("gpt2: 124.44 M parameters (124,439,808)")
    for text in ("prefill FLOPs", "decode FLOPs", "attn_scores", "mlp_up", "lm_head", "TOTAL",
                 "12 layers", "KV cache saving", "15 decode steps", "memory: weights 248.88 MB", "units: SI (1 GB = 10^9 bytes"):
        assert text in out, text


def test_report_no_kv_cache_shows_the_saving():
    r = run("report", "tiny-llama", "--prompt", "32", "--gen", "8", "--no-kv-cache", "--format", "json")
    d = json.loads(r.output)
    assert d["workload"]["kv_cache"] is False
    assert d["memory"]["kv_cache_bytes"] == 0
    s = d["kv_cache_saving"]
    assert s["decode_flops_without_cache"] == d["decode"]["flops"]
    assert s["decode_flops_without_cache"] > s["decode_flops_with_cache"]
    assert "kv_cache_update" not in {o["op"] for o in d["ops"]}
    table = run("report", "tiny-llama", "--prompt", "32", "--gen", "8", "--no-kv-cache").output
    assert "KV cache OFF" in table and "KV cache saving" in table


def test_report_csv_has_every_row():
    r = run("report", "tiny-gpt2", "--prompt", "16", "--gen", "4", "--format", "csv")
    assert r.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(r.output)))
    api = analyze(get_model("tiny-gpt2"), Workload(prompt=16, gen=4))
    assert len(rows) == len(list(api.rows()))
    assert sum(int(x["flops"]) for x in rows if x["phase"] == "prefill") == api.prefill.flops
    assert {x["layer"] for x in rows} == {"", "0", "1"}


def test_report_markdown():
    r = run("report", "tiny-llama", "--format", "markdown", "--prompt", "16", "--gen", "4")
    assert r.exit_code == 0
    assert r.output.startswith("# Cost report: tiny-llama")
    assert "| op | scope | prefill FLOPs |" in r.output and "|:---|:---|---:|" in r.output


def test_report_dtypes_and_logits():
    d = json.loads(run("report", "llama-2-7b", "--dtype", "fp16", "--kv-dtype", "int4", "--weight-dtype",
                       "int4", "--logits", "all", "--prompt", "16", "--gen", "2", "--format", "json").output)
    assert d["workload"]["kv_dtype"] == "int4" and d["workload"]["weight_dtype"] == "int4"
    assert d["memory"]["kv_cache_bytes_per_token"] == 524_288 // 4  # 4 bits instead of 16
    assert d["memory"]["weights_bytes"] == 6_738_415_616 // 2
    head = [o for o in d["ops"] if o["phase"] == "prefill" and o["op"] == "lm_head"][0]
    assert head["matmul_flops"] == 2 * 16 * 4096 * 32000  # every position: 2 * s * h * V


def test_report_hf_config(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
           "num_hidden_layers": 2, "vocab_size": 100, "max_position_embeddings": 64}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = run("report", str(tmp_path), "--prompt", "8", "--gen", "2", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["model"]["num_layers"] == 2


def test_report_warns_beyond_max_positions():
    r = CliRunner().invoke(main, ["report", "gpt2", "--prompt", "1024", "--gen", "10"])
    assert r.exit_code == 0
    assert "Warning: context 1033" in r.output


def test_models_lists_presets():
    r = run("models")
    assert r.exit_code == 0
    for name in ("gpt2", "gpt2-xl", "gpt3-175b", "llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b",
                 "llama-3-70b", "mistral-7b", "tiny-llama"):
        assert f"\n{name} " in r.output
    d = json.loads(run("models", "--format", "json").output)
    assert {m["name"] for m in d} >= {"gpt2", "llama-2-70b"}


def _config(tmp_path, text):
    p = tmp_path / "config.json"
    p.write_text(text)
    return str(p)


BAD_INPUTS = [
    (["report", "llama-9"], "unknown model 'llama-9' (`costmodel models` lists the"),
    (["report", "gpt2", "--batch", "0"], "batch must be a positive integer, got 0"),
    (["report", "gpt2", "--prompt", "-5"], "prompt must be a positive integer, got -5"),
    (["report", "gpt2", "--gen", "0"], "gen must be a positive integer, got 0"),
    (["report", "gpt2", "--batch", "abc"], "'abc' is not a valid integer"),
    (["report", "gpt2", "--dtype", "fp64"], "unknown dtype 'fp64'; allowed: bf16, fp16, fp32"),
    (["report", "gpt2", "--kv-dtype", "int3"], "unknown KV-cache dtype 'int3'"),
    (["report", "gpt2", "--dtype", "int4"], "activation dtype 'int4' is not supported"),
    (["report", "gpt2", "--logits", "first"], "'first' is not one of 'last', 'all'"),
    (["report", "gpt2", "--frobnicate"], "No such option '--frobnicate'"),
    (["report"], "Missing argument 'MODEL'"),
    (["reprot", "gpt2"], "No such command 'reprot'"),
    (["report", "gpt2", "--format", "xml"], "'xml' is not one of"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2(args, message):
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert message in r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "Traceback" not in r.output


@pytest.mark.parametrize("text, message", [
    ("{oops", "malformed config"),
    ('{"model_type": "llama"}', "missing required field 'num_attention_heads'"),
    ('{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 5, '
     '"num_hidden_layers": 2, "vocab_size": 100, "max_position_embeddings": 64}',
     "hidden_size (64) is not divisible by num_heads (5)"),
    ('{"model_type": "xlnet"}', "unsupported model_type 'xlnet'"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, text, message):
    r = run("report", _config(tmp_path, text))
    assert r.exit_code == 2 and message in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_missing_config_file(tmp_path):
    r = run("report", str(tmp_path / "missing" / "config.json"))
    assert r.exit_code == 2 and "cannot read config" in r.output


@pytest.mark.parametrize("command", [[], ["report"], ["models"]])
def test_help(command):
    r = run(*command, "--help")
    assert r.exit_code == 0 and "Usage:" in r.output
