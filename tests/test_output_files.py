"""Issue 15: output files written as careful tools write them, bounded resources, strict input.

Each test goes through the CLI (click's CliRunner, or a subprocess where a signal, a pipe or the
process's own file descriptors are the point) and fails on the code before issue 15.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from costmodel.dtypes import nbytes
from costmodel.errors import SpecError
from reports.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["sweep", "tiny-llama", "--batch", "1,2", "--prompt", "8", "--gen", "2"]


def run(*args):
    return CliRunner().invoke(main, list(args))


def cli(*args, **kw):
    """The CLI in a subprocess (this worktree's code first on the path)."""
    env = {**os.environ, "PYTHONPATH": ROOT, **kw.pop("env", {})}
    return subprocess.run([sys.executable, "-c", "from reports.cli import main; main()", *args],
                          env=env, capture_output=True, **kw)


# --- output files ------------------------------------------------------------------------------------

def test_fifo_output_is_written_through_not_replaced(tmp_path):
    fifo = tmp_path / "out.csv"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    r = run(*SMALL, "--out", str(fifo))
    reader.join(timeout=30)
    assert r.exit_code == 0, r.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still a FIFO, not a regular file
    assert got and got[0].startswith(b"batch,prompt,gen,phase") and got[0].count(b"\n") == 1 + 4
    assert sorted(os.listdir(tmp_path)) == ["out.csv"]


def test_device_output_is_written_through(tmp_path):
    dev = tmp_path / "null"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers, in our folder
    except (PermissionError, OSError):
        pytest.skip("cannot create a device node here")
    r = run(*SMALL, "--out", str(dev))
    assert r.exit_code == 0, r.output
    assert stat.S_ISCHR(os.lstat(dev).st_mode)


def test_proc_self_fd_1_writes_to_stdout():
    r = cli(*SMALL, "--out", "/proc/self/fd/1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(b"batch,prompt,gen,phase") and r.stdout.count(b"\n") == 1 + 4


def test_symlink_keeps_its_link_and_its_target_is_written(tmp_path):
    target = tmp_path / "real.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target.name)
    r = run(*SMALL, "--out", str(link))
    assert r.exit_code == 0, r.output
    assert link.is_symlink() and os.readlink(link) == "real.csv"
    assert target.read_text().startswith("batch,prompt")
    assert sorted(os.listdir(tmp_path)) == ["link.csv", "real.csv"]


def test_existing_file_keeps_its_mode(tmp_path):
    out = tmp_path / "secret.csv"
    out.write_text("old\n")
    out.chmod(0o600)
    r = run(*SMALL, "--out", str(out))
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # was forced to 0644
    assert out.read_text().startswith("batch,prompt")


def test_new_file_honours_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        r = run(*SMALL, "--out", str(tmp_path / "new.csv"))
    finally:
        os.umask(old)
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE((tmp_path / "new.csv").stat().st_mode) == 0o640  # 0666 & ~0027


def test_sigterm_during_sweep_leaves_no_temp_file(tmp_path):
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = tmp_path / "rows.csv"
    p = subprocess.Popen([sys.executable, "-c", "from reports.cli import main; main()", "sweep", "llama-2-7b",
                          "--batch", "1:4000", "--prompt", "1:2000", "--gen", "1", "--out", str(out)],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and not any(n.startswith(".tmp-") for n in os.listdir(tmp_path)):
        assert p.poll() is None, p.stderr.read()
        time.sleep(0.05)
    assert any(n.startswith(".tmp-") for n in os.listdir(tmp_path)), "the sweep never started writing"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == []


def test_temp_file_removed_at_exit(tmp_path):
    """A temporary file still open when the process ends (no commit, no exception) is removed."""
    code = ("from reports.files import OutputFile; f = OutputFile(%r); f.file.write('x'); "
            "import os; print(len(os.listdir(%r)))" % (str(tmp_path / "x.csv"), str(tmp_path)))
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": ROOT},
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
    assert os.listdir(tmp_path) == []


def test_interrupted_json_sweep_is_a_valid_partial_file(tmp_path, monkeypatch):
    import reports.cli.sweep as cli_sweep
    import reports.sweep as rs

    monkeypatch.setattr(cli_sweep, "CHUNK_CONFIGS", 1)
    real, calls = rs.sweep, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(rs, "sweep", flaky)
    out = tmp_path / "rows.json"
    out.write_text("previous\n")
    r = run("sweep", "tiny-llama", "--batch", "1,2,3", "--prompt", "8", "--gen", "4", "--format", "json",
            "--out", str(out))
    assert r.exit_code == 130, r.output
    rows = json.loads((tmp_path / "rows.json.partial").read_text())
    assert [row["batch"] for row in rows] == [1, 1, 2, 2]  # 2 batches x 2 phases
    assert out.read_text() == "previous\n"  # the requested path is untouched
    assert sorted(os.listdir(tmp_path)) == ["rows.json", "rows.json.partial"]


@pytest.mark.parametrize("args, made", [
    (SMALL + ["--out", "new/deeper/x.csv"], "new/deeper/x.csv"),
    (["report", "tiny-llama", "--format", "markdown", "--out", "md/dir"], "md/dir/report.md"),
    (["report", "tiny-llama", "--html", "new/r.html"], "new/r.html"),
    (["plot", "kv-cache", "tiny-llama", "--out", "plots"], "plots/kv-cache-tiny-llama.png"),
])
def test_out_creates_missing_folders(tmp_path, monkeypatch, args, made):
    monkeypatch.chdir(tmp_path)
    r = run(*args)
    assert r.exit_code == 0, r.output
    assert (tmp_path / made).is_file()


def _calibrate_stub(monkeypatch, calls):
    import profiler.calibrate as cal

    def fake(**kw):
        calls.append(kw)
        return {"id": "calibrated-cpu", "name": "stub", "peak_flops_per_s": {"fp32": 1e11},
                "memory_bytes": 16_000_000_000, "memory_bandwidth_bytes_per_s": 1e10, "sources": {},
                "calibration": {}}

    monkeypatch.setattr(cal, "calibrate", fake)


def test_calibrate_checks_out_before_measuring(monkeypatch):
    calls = []
    _calibrate_stub(monkeypatch, calls)
    r = run("calibrate", "--quick", "--format", "json", "--out", "/dev/null/dir/p.json")
    assert r.exit_code == 2 and "is not a folder" in r.output
    assert calls == []  # nothing measured


def test_calibrate_out_is_atomic(tmp_path, monkeypatch):
    import reports.files as files

    calls = []
    _calibrate_stub(monkeypatch, calls)
    out = tmp_path / "p.json"
    out.write_text('{"old": true}\n')

    def full_disk(self, path=None):
        self._fail(OSError(28, "No space left on device"))

    monkeypatch.setattr(files.OutputFile, "commit", full_disk)
    r = run("calibrate", "--quick", "--format", "json", "--out", str(out))
    assert r.exit_code == 2 and "No space left on device" in r.output
    assert out.read_text() == '{"old": true}\n' and os.listdir(tmp_path) == ["p.json"]


# --- resources ---------------------------------------------------------------------------------------

def test_grid_limit_is_checked_on_the_whole_grid(monkeypatch):
    import reports.cli.sweep as cli_sweep
    import reports.sweep as rs

    monkeypatch.setattr(rs, "MAX_GRID_CONFIGS", 100)
    monkeypatch.setattr(cli_sweep, "CHUNK_CONFIGS", 8)  # every chunk is under the limit
    r = run("sweep", "tiny-llama", "--batch", "1:16", "--prompt", "8:64:+8", "--gen", "1")  # 128 configs
    assert r.exit_code == 2
    assert r.output == "Error: the grid has 128 (batch, prompt, gen) combinations; the limit is 100: narrow a range\n"


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_chunked_sweep_streams_the_same_file(tmp_path, monkeypatch, fmt):
    import reports.cli.sweep as cli_sweep
    from costmodel import Workload, get_model
    from reports.sweep import sweep, write_frame

    monkeypatch.setattr(cli_sweep, "CHUNK_CONFIGS", 6)  # 3 prompts x 2 gens: one batch a chunk
    args = ["sweep", "tiny-llama", "--batch", "1:5", "--prompt", "8,16,32", "--gen", "1,4", "--format", fmt]
    r = run(*args, "--out", str(tmp_path / f"chunked.{fmt}"))
    assert r.exit_code == 0, r.output
    df = sweep(get_model("tiny-llama"), Workload(), [1, 2, 3, 4, 5], [8, 16, 32], [1, 4])
    write_frame(df, fmt, str(tmp_path / f"whole.{fmt}"))
    if fmt == "parquet":
        got = pd.read_parquet(tmp_path / "chunked.parquet")
        want = pd.read_parquet(tmp_path / "whole.parquet")
        pd.testing.assert_frame_equal(got, want)
        import pyarrow.parquet as pq
        assert pq.ParquetFile(tmp_path / "chunked.parquet").num_row_groups == 5
    else:
        assert (tmp_path / f"chunked.{fmt}").read_bytes() == (tmp_path / f"whole.{fmt}").read_bytes()
        if fmt != "parquet":
            r2 = run(*args)
            assert r2.output.encode() == (tmp_path / f"whole.{fmt}").read_bytes()


def test_sweep_sizes_past_int64_are_refused_in_one_line():
    r = run("sweep", "gpt2", "--batch", str(10**22))
    assert r.exit_code == 2 and r.output.startswith("Error: batch value 10000000000000000000000 is past")
    assert r.output.count("\n") == 1


def test_parquet_counts_past_decimal128_are_refused(tmp_path):
    r = run("sweep", "llama-2-70b", "--batch", str(2**61), "--prompt", str(2**40), "--gen", "1",
            "--format", "parquet", "--out", str(tmp_path / "x.parquet"))
    assert r.exit_code == 2, r.output
    assert "past parquet's decimal128 (38 digits): use --format csv or json" in r.output
    assert os.listdir(tmp_path) == []


def test_report_json_streams_ops_without_building_the_whole_list(monkeypatch):
    from costmodel import analysis

    real = analysis.Analysis.to_dict

    def no_ops(self, include_ops=True):
        assert not include_ops, "the CLI built the whole ops list"
        return real(self, include_ops=False)

    monkeypatch.setattr(analysis.Analysis, "to_dict", no_ops)
    r = run("report", "tiny-llama", "--format", "json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["ops"]) > 0


@pytest.mark.parametrize("args", [["tiny-llama"], ["t5-small", "--gen", "4"], ["bert-base"],
                                  ["tiny-llama", "--gpu", "h100-sxm"], ["t5-small", "--gpu", "h100-sxm"]])
def test_report_json_stream_is_byte_identical(args):
    from costmodel import analyze, get_model
    from costmodel.hardware import get_hardware
    from costmodel.roofline import predict
    from reports.cli.common import build_workload

    r = run("report", *args, "--format", "json")
    assert r.exit_code == 0, r.output
    spec = get_model(args[0])
    wl = build_workload(gen=4 if "--gen" in args else (1 if spec.arch == "encoder" else 128))
    a = analyze(spec, wl)
    from costmodel.engine import load_engine

    eager = load_engine("eager")  # every output names its engine
    d = (a.to_dict() if "--gpu" not in args
         else predict(spec, a.workload, get_hardware("h100-sxm"), eager).annotate(a.to_dict()))
    d.update(engine="eager", engine_profile=eager.to_dict())
    assert r.stdout == json.dumps(d, indent=2) + "\n"


def test_layers_past_any_physical_model_are_refused(tmp_path):
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
           "num_hidden_layers": 2**80, "vocab_size": 100, "max_position_embeddings": 64}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    r = run("report", str(tmp_path))
    assert r.exit_code == 2
    assert "field 'num_hidden_layers' is 1208925819614629174706176, past any physical model; the limit " \
           "is 1,048,576 (2**20)" in r.output


def test_spec_sizes_are_bounded():
    from costmodel.spec import ModelSpec

    base = dict(name="x", num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128, vocab_size=100,
                max_position_embeddings=64)
    ModelSpec(**{**base, "num_layers": 2**20})  # at the bound: accepted
    with pytest.raises(SpecError, match=r"num_layers 1048577 is past any physical model; the limit is 1,048,576"):
        ModelSpec(**{**base, "num_layers": 2**20 + 1})
    with pytest.raises(SpecError, match=r"hidden_size 16777280 is past .* 16,777,216 \(2\*\*24\)"):
        ModelSpec(**{**base, "hidden_size": 2**24 + 64})


def test_config_larger_than_the_limit_is_refused(tmp_path):
    big = tmp_path / "config.json"
    with open(big, "wb") as f:
        f.truncate(64 * 2**20 + 1)  # sparse: nothing is written or read
    r = run("report", str(big))
    assert r.exit_code == 2
    assert "is 67,108,865 bytes; the limit is 67,108,864 (64 MiB)" in r.output


def test_fifo_config_does_not_hang(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    r = cli("report", str(fifo), timeout=60)
    assert r.returncode == 2 and b"it is a FIFO, not a regular file" in r.stderr


# --- input reading -----------------------------------------------------------------------------------

def test_folder_name_with_a_non_utf8_byte(tmp_path):
    folder = os.path.join(os.fsencode(tmp_path), b"m\xff")
    os.mkdir(folder)
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
           "num_hidden_layers": 2, "vocab_size": 100, "max_position_embeddings": 1024}
    with open(os.path.join(folder, b"config.json"), "w") as f:
        json.dump(cfg, f)
    path = os.fsdecode(folder)
    r = run("report", path, "--html", str(tmp_path / "r.html"))
    assert r.exit_code == 0, r.output
    assert "m\ufffd" in (tmp_path / "r.html").read_text(encoding="utf-8")
    r = cli("report", path, env={"PYTHONIOENCODING": "utf-8"})
    assert r.returncode == 0 and "m\ufffd".encode() in r.stdout, r.stderr


def test_nbytes_refuses_partial_bytes_without_assert():
    with pytest.raises(SpecError, match="not a whole number of bytes"):
        nbytes(3, "int4")
    with pytest.raises(SpecError, match="not a whole number of bytes"):
        nbytes(np.array([2, 3]), "int4")
    assert nbytes(np.array([2, 4]), "int4").tolist() == [1, 2]  # 2 x 4 bits = 1 byte; 4 x 4 = 2
    assert nbytes(3, "bf16") == 6 and nbytes(3, "int8") == 3
    code = "from costmodel.dtypes import nbytes\ntry:\n nbytes(3, 'int4')\nexcept ValueError: print('refused')"
    r = subprocess.run([sys.executable, "-O", "-c", code], env={**os.environ, "PYTHONPATH": ROOT},
                       capture_output=True, text=True)
    assert r.stdout.strip() == "refused"  # python -O skipped the assert and rounded


def test_infinite_seconds_are_refused_not_printed_as_infinity(tmp_path):
    hw = tmp_path / "hw.json"
    hw.write_text(json.dumps({"id": "slow", "name": "Slow", "peak_flops_per_s": {"bf16": 1e-300},
                              "memory_bytes": 16_000_000_000, "memory_bandwidth_bytes_per_s": 1e-300}))
    for args in (["report", "gpt2"], ["plan", "gpt2"]):
        r = run(*args, "--hardware", str(hw), "--format", "json")
        assert r.exit_code == 2, r.output
        assert "Infinity" not in r.output and "JSON cannot carry" in r.output
    r = run("sweep", "gpt2", "--batch", "1", "--prompt", "8", "--gen", "2", "--hardware", str(hw))
    assert r.exit_code == 2 and "overflow to infinity" in r.output


# --- speed of output: pyarrow's CSV, the bytes of pandas' ----------------------------------------------

def test_pyarrow_csv_is_byte_identical_to_pandas():
    from costmodel import Workload, get_model
    from costmodel.hardware import get_hardware
    from reports.sweep import csv_bytes, sweep

    rng = np.random.default_rng(0)
    x = rng.random(5000) * 10.0 ** rng.integers(-320, 308, 5000)
    x = np.concatenate([x, -x, 10.0 ** np.arange(-30, 30), [0.0, -0.0, np.inf, 1e16, 9999999999999998.0,
                                                            1e-4, 9.999999999999999e-05, 12345.0]])
    df = pd.DataFrame({"n": np.arange(len(x)), "f": x,
                       "phase": pd.Categorical.from_codes(np.arange(len(x)) % 2, categories=["prefill", "decode"])})
    assert csv_bytes(df) == df.to_csv(index=False, lineterminator="\n").encode()
    for model, kw in (("tiny-llama", {}), ("t5-small", {}), ("gpt2", {"hardware": get_hardware("h100-sxm")})):
        d = sweep(get_model(model), Workload(), list(range(1, 9)), [8, 64, 512], [1, 2, 128], **kw)
        assert csv_bytes(d) == d.to_csv(index=False, lineterminator="\n").encode()
    big = sweep(get_model("llama-2-70b"), Workload(), [4096], [1_000_000], [1, 1000])  # Python ints: pandas
    assert big["flops"].dtype == object
    assert csv_bytes(big) == big.to_csv(index=False, lineterminator="\n").encode()
