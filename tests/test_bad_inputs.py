"""A corpus of bad input through every CLI command: one clear line, exit code 2, no traceback,
no file left behind. The corpus size is asserted so that the count in the closing notes is true."""

import json
import os

import pytest
from click.testing import CliRunner

from reports.cli import main

GOOD_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
              "num_hidden_layers": 2, "vocab_size": 100, "max_position_embeddings": 64}

# (name, content) of config.json files; each is a bad model for every command that takes one.
BAD_CONFIGS = [
    ("empty", ""),
    ("truncated", json.dumps(GOOD_LLAMA)[:40]),
    ("not-an-object", "[1, 2, 3]"),
    ("null", "null"),
    ("unknown-type", json.dumps({**GOOD_LLAMA, "model_type": "xlnet"})),
    ("no-type", json.dumps({k: v for k, v in GOOD_LLAMA.items() if k != "model_type"})),
    ("missing-layers", json.dumps({k: v for k, v in GOOD_LLAMA.items() if k != "num_hidden_layers"})),
    ("string-size", json.dumps({**GOOD_LLAMA, "hidden_size": "64"})),
    ("float-size", json.dumps({**GOOD_LLAMA, "hidden_size": 64.5})),
    ("bool-size", json.dumps({**GOOD_LLAMA, "num_hidden_layers": True})),
    ("zero-layers", json.dumps({**GOOD_LLAMA, "num_hidden_layers": 0})),
    ("negative-vocab", json.dumps({**GOOD_LLAMA, "vocab_size": -5})),
    ("heads-dont-divide", json.dumps({**GOOD_LLAMA, "num_attention_heads": 5})),
    # contradictory fields: 4 query heads cannot share 3 kv heads; head_dim odd with rotary
    ("kv-heads-contradict", json.dumps({**GOOD_LLAMA, "num_key_value_heads": 3})),
    ("odd-rotary-head-dim", json.dumps({**GOOD_LLAMA, "head_dim": 15})),
    ("bad-activation", json.dumps({**GOOD_LLAMA, "hidden_act": "mish"})),
    ("bad-rope", json.dumps({**GOOD_LLAMA, "rope_theta": "big"})),
    ("t5-bad-ff", json.dumps({"model_type": "t5", "d_model": 64, "d_kv": 16, "d_ff": 128, "num_layers": 2,
                              "num_heads": 4, "vocab_size": 100, "feed_forward_proj": "swiglu"})),
    ("moe-k-too-big", json.dumps({**GOOD_LLAMA, "model_type": "mixtral", "num_local_experts": 2,
                                  "num_experts_per_tok": 3})),
    # issue 15: how the file is read, and sizes past any physical model
    ("utf-16", json.dumps(GOOD_LLAMA).encode("utf-16")),
    ("utf-16-no-bom", json.dumps(GOOD_LLAMA).encode("utf-16-le")),
    ("invalid-utf8", json.dumps({**GOOD_LLAMA, "model_type": "ll\udcffama"}).encode("utf-8", "surrogateescape")
     .replace(b"\\udcff", b"\xff")),
    ("nested-100k-deep", "[" * 100_000 + "]" * 100_000),
    ("5000-digit-int", json.dumps(GOOD_LLAMA)[:-1] + ', "vocab_size": ' + "9" * 5000 + "}"),
    ("layers-2**80", json.dumps({**GOOD_LLAMA, "num_hidden_layers": 2**80})),
    ("hidden-2**30", json.dumps({**GOOD_LLAMA, "hidden_size": 2**30, "num_attention_heads": 2**10})),
]

GOOD_HW = {"id": "my-gpu", "name": "My GPU", "peak_flops_per_s": {"bf16": 1e14}, "memory_bytes": 16_000_000_000,
           "memory_bandwidth_bytes_per_s": 1e12}
BAD_HARDWARE = [
    ("empty", ""),
    ("truncated", json.dumps(GOOD_HW)[:30]),
    ("not-a-list-or-object", "42"),
    ("missing-bandwidth", json.dumps({k: v for k, v in GOOD_HW.items() if k != "memory_bandwidth_bytes_per_s"})),
    ("negative-memory", json.dumps({**GOOD_HW, "memory_bytes": -1})),
    ("bad-id", json.dumps({**GOOD_HW, "id": "My GPU!"})),
    ("unknown-dtype", json.dumps({**GOOD_HW, "peak_flops_per_s": {"fp64": 1e12}})),
    ("no-peaks", json.dumps({**GOOD_HW, "peak_flops_per_s": {}})),
    ("string-peak", json.dumps({**GOOD_HW, "peak_flops_per_s": {"bf16": "fast"}})),
    ("efficiency-above-one", json.dumps({**GOOD_HW, "flops_efficiency": 1.5})),
    ("utf-16", json.dumps(GOOD_HW).encode("utf-16")),
    ("invalid-utf8", b'{"id": "\xff"}'),
    ("nested-100k-deep", "[" * 100_000 + "]" * 100_000),
    ("5000-digit-int", json.dumps({**GOOD_HW, "memory_bytes": 0})[:-1] + ', "memory_bytes": ' + "9" * 5000 + "}"),
]

MODEL_ARGS = [
    (["llama-9"], "unknown model 'llama-9'"),
    (["gtp2"], "unknown model 'gtp2'"),
    (["LLAMA-2-7B"], "unknown model"),
    ([""], "unknown model"),
]

SIZE_ARGS = [
    (["--batch", "0"], "batch must be a positive integer"),
    (["--batch", "-3"], "batch must be a positive integer"),
    (["--batch", "two"], "is not a valid integer"),
    (["--batch", "1.5"], "is not a valid integer"),
    (["--prompt", "0"], "prompt must be a positive integer"),
    (["--prompt", "-1"], "prompt must be a positive integer"),
    (["--prompt", "1e5"], "is not a valid integer"),
    (["--gen", "0"], "gen must be a positive integer"),
    (["--gen", ""], "is not a valid integer"),
    (["--dtype", "fp64"], "unknown dtype 'fp64'"),
    (["--dtype", "int4"], "activation dtype 'int4' is not supported"),
    (["--kv-dtype", "int3"], "unknown KV-cache dtype 'int3'"),
    (["--weight-dtype", "float64"], "unknown weight dtype"),
    (["--logits", "first"], "'first' is not one of"),
    (["--beams", "0"], "beams must be a positive integer"),
    (["--strategy", "nucleus"], "'nucleus' is not one of"),
    (["--strategy", "top_k", "--top-k", "0"], "top_k must be a positive integer"),
    (["--strategy", "top_k", "--top-k", "100000000"], "exceeds"),
    (["--strategy", "top_p", "--top-p", "1.5"], "top_p must be a number in (0, 1]"),
    (["--strategy", "sample", "--temperature", "0"], "temperature must be a positive number"),
    (["--beams", "2", "--strategy", "top_p"], "needs strategy 'beam'"),
    (["--decoder-prompt", "4"], "decoder_prompt is for encoder-decoder models"),
    (["--frobnicate"], "No such option"),
]


def _write(tmp_path, name, content):
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    _put(folder / "config.json", content)
    return str(folder)


def _put(path, content):
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def _corpus(tmp_path):
    """Every (args, expected substring) this test feeds the CLI."""
    cases = []
    configs = [(_write(tmp_path, f"cfg-{n}", c), n) for n, c in BAD_CONFIGS]
    hw_files = []
    for n, c in BAD_HARDWARE:
        p = tmp_path / f"hw-{n}.json"
        _put(p, c)
        hw_files.append(str(p))
    missing = str(tmp_path / "missing" / "config.json")
    for model, msg in MODEL_ARGS + [([missing], "cannot read config")]:
        for cmd in (["report"], ["plan", "--gpu", "h100-sxm"], ["sweep"], ["plot", "phases"]):
            if model != [""] or cmd[0] != "plot":  # plot's MODEL is optional: "" reads as none given
                cases.append((cmd + model, msg))
    for path, _ in configs:
        for cmd in (["report"], ["plan", "--gpu", "h100-sxm"], ["sweep"]):
            cases.append((cmd + [path], ""))
    for extra, msg in SIZE_ARGS:
        cases.append((["report", "gpt2"] + extra, msg))
    for extra, msg in SIZE_ARGS[9:]:  # sweep and plot take the same dtypes and decoding options
        cases.append((["sweep", "gpt2"] + extra, msg))
        cases.append((["plot", "phases", "gpt2"] + extra, msg))
    for extra, msg in SIZE_ARGS[:9]:  # plan takes the same sizes
        if extra[0] != "--gen" or extra[1]:
            cases.append((["plan", "gpt2", "--gpu", "h100-sxm"] + extra, msg.split(" must")[0]))
    for hw in hw_files:
        for cmd in (["hardware", "--hardware", hw], ["report", "gpt2", "--hardware", hw],
                    ["plan", "gpt2", "--hardware", hw]):
            cases.append((cmd, ""))
    cases += [
        (["report", "gpt2", "--gpu", "h200x"], "unknown GPU 'h200x'"),
        (["report", "gpt2", "--gpu", "a100-sxm-80gb", "--dtype", "fp8"], "fp8"),
        (["plan", "gpt2", "--gpu", "h100-sxm", "--tp", "5"], "tp=5 must divide"),
        (["plan", "gpt2", "--gpu", "h100-sxm", "--tp", "0"], ""),
        (["plan", "gpt2", "--gpu", "h100-sxm", "--pp", "100"], ""),
        (["plan", "gpt2"], "no hardware given"),
        (["plan", "gpt2", "--gpu", "h100-sxm", "--tp", "2", "--gpus", "4"], "not both"),
        (["plan", "gpt2", "--gpu", "h100-sxm", "--rps", "-1"], "--rps"),
        (["plan", "gpt2", "--gpu", "h100-sxm", "--gpu-hour-usd", "abc"], "--gpu-hour-usd"),
        (["plan", "gpt2", "--gpu", "h100-sxm", "--ttft-slo", "0"], "--ttft-slo"),
        (["sweep", "gpt2", "--batch", "0:4"], "START must be a positive integer"),
        (["sweep", "gpt2", "--batch", "8:4"], ""),
        (["sweep", "gpt2", "--prompt", "1:10:x1"], "FACTOR must be an integer >= 2"),
        (["sweep", "gpt2", "--prompt", "abc"], "bad --prompt 'abc'"),
        (["sweep", "gpt2", "--prompt", "1:100000000000"], ""),
        (["sweep", "gpt2", "--gen", "1,,2"], ""),
        (["sweep", "gpt2", "--format", "xlsx"], "'xlsx' is not one of"),
        (["sweep", "gpt2", "--gpu", "nope"], "unknown GPU 'nope'"),
        (["plot", "foo", "gpt2"], "'foo' is not one of"),
        (["plot", "phases"], "needs MODEL"),
        (["plot", "memory", "gpt2"], "needs a device"),
        (["plot", "roofline", "gpt2"], "needs a device"),
        (["plot", "validation"], "needs --input FILE"),
        (["plot", "validation", "--input", missing], "cannot read --input"),
        (["plot", "compare", "gpt2,nope"], "unknown model 'nope'"),
        (["plot", "phases", "gpt2", "--batch-range", "x"], ""),
        (["plot", "phases", "gpt2", "--out", "/dev/null/no-such-dir"], "is not a folder"),
        (["profile", "gpt2", "--device", "tpu"], "'tpu' is not one of"),
        (["profile", "gpt2", "--dtype", "int8"], "'int8' is not one of"),
        (["profile", "gpt2", "--batch", "0"], "batch must be a positive integer"),
        (["profile", "gpt2", "--tp", "5"], "tp=5 must divide"),
        (["profile", "nope"], "unknown model 'nope'"),
        (["profile", "gpt2", "--weights", str(tmp_path / "no-weights")], "does not exist"),
        (["validate", "--case", "nope"], "unknown case 'nope'"),
        (["validate", "--timing", "--hardware", hw_files[0]], ""),
        (["validate", "--timing", "--gpu", "nope"], "unknown GPU 'nope'"),
        (["calibrate", "--dtype", "fp64"], "cannot calibrate dtype 'fp64'"),
        (["calibrate", "--device", "tpu"], "'tpu' is not one of"),
        (["calibrate", "--threads", "zero"], "is not a valid integer"),
        (["models", "--format", "xml"], "'xml' is not one of"),
        (["hardware", "--format", "xml"], "'xml' is not one of"),
        (["reprot", "gpt2"], "No such command 'reprot'"),
        (["report"], "Missing argument 'MODEL'"),
    ]
    # issue 15: inputs only from regular files, a size limit, strict JSON out, bounded sweeps
    fifo = tmp_path / "fifo-config.json"
    os.mkfifo(fifo)
    big = tmp_path / "huge-config.json"
    with open(big, "wb") as f:
        f.truncate(64 * 2**20 + 1)  # sparse: past the 64 MiB limit
    tiny_rates = tmp_path / "hw-rates-1e-300.json"
    tiny_rates.write_text(json.dumps({**GOOD_HW, "peak_flops_per_s": {"bf16": 1e-300},
                                      "memory_bandwidth_bytes_per_s": 1e-300}))
    utf16_input = tmp_path / "validation-utf16.json"
    utf16_input.write_bytes(b'{"cases": []}'.decode().encode("utf-16"))
    for cmd in (["report"], ["plan", "--gpu", "h100-sxm"], ["sweep"]):
        cases += [(cmd + ["/dev/zero"], "it is a device, not a regular file"),
                  (cmd + [str(fifo)], "it is a FIFO, not a regular file"),
                  (cmd + [str(big)], "the limit is 67,108,864 (64 MiB)")]
    cases += [
        (["hardware", "--hardware", "/dev/zero"], "not a regular file"),
        (["report", "gpt2", "--hardware", str(tiny_rates), "--format", "json"], "JSON cannot carry"),
        (["plan", "gpt2", "--hardware", str(tiny_rates), "--format", "json"], "JSON cannot carry"),
        (["sweep", "gpt2", "--hardware", str(tiny_rates), "--prompt", "8", "--gen", "2"], "overflow to infinity"),
        (["plot", "validation", "--input", str(utf16_input)], "UTF-16"),
        (["plot", "validation", "--input", "/dev/zero"], "not a regular file"),
        (["sweep", "gpt2", "--batch", str(10**22)], "past the sweep's limit"),
        (["sweep", "gpt2", "--batch", "1:10000", "--prompt", "1:10000"], "the limit is 50,000,000"),
        (["sweep", "llama-2-70b", "--batch", str(2**61), "--prompt", str(2**40), "--gen", "1", "--format",
          "parquet", "--out", "x.parquet"], "past parquet's decimal128"),
    ]
    return cases


def test_bad_input_corpus(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = _corpus(tmp_path)
    before = set(os.listdir(tmp_path))
    runner = CliRunner()
    failures = []
    for args, msg in cases:
        r = runner.invoke(main, args)
        out = r.output.strip()
        lines = [ln for ln in out.splitlines() if not ln.startswith("Warning: ")]
        ok = (r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: ") and msg in lines[0]
              and "Traceback" not in out and not isinstance(r.exception, (AssertionError, TypeError)))
        if not ok:
            failures.append(f"{args}: exit {r.exit_code}, output {out[:300]!r}, exception {r.exception!r}")
    assert not failures, f"{len(failures)} of {len(cases)} bad inputs misbehaved:\n" + "\n".join(failures)
    assert set(os.listdir(tmp_path)) == before, "a bad input left a file behind"
    assert len(cases) >= 200  # the count the closing notes quote


@pytest.mark.parametrize("args", [
    ["sweep", "gpt2", "--batch", "0", "--out", "rows.csv"],
    ["sweep", "nope", "--out", "rows.csv"],
    ["report", "nope", "--html", "page.html"],
    ["report", "gpt2", "--batch", "0", "--format", "markdown", "--out", "md"],
])
def test_bad_input_writes_no_output_file(tmp_path, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2
    assert os.listdir(tmp_path) == []
