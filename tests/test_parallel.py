"""The sharded reference on torch.distributed (gloo, spawned ranks), through the CLI: per-rank
FLOPs, KV bytes and collective payloads equal costmodel.parallel exactly; sharded greedy tokens
equal the unsharded model's; failures are one line."""

import json

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from reports.cli import main  # noqa: E402


def invoke(*args):
    return CliRunner().invoke(main, list(args))


SMALL = ["--batch", "2", "--prompt", "8", "--gen", "4"]


@pytest.fixture(scope="module")
def tp2_json():
    r = invoke("profile", "tiny-llama", "--tp", "2", *SMALL, "--format", "json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_tp2_json_contract_and_exactness(tp2_json):
    d = tp2_json
    assert (d["tp"], d["pp"], d["backend"]) == (2, 1, "gloo")
    assert len(d["ranks"]) == 2
    for rank in d["ranks"]:
        for phase in ("prefill", "decode"):
            p = rank[phase]
            assert p["counted_matmul_flops"] == p["analytic_matmul_flops"]
            assert p["kv_cache_bytes"] == p["analytic_kv_cache_bytes"]
    # prefill per rank: 2 layers x (q 2*16*64*32 + k, v 2*16*64*16 each + o 2*16*32*64 + 3 MLP 2*16*64*80)
    #   + SDPA 2 x (2 seqs x 2 heads x 8 x 8 x 16 x 2) + lm_head 2*2*64*128
    per_layer = 2 * 16 * 64 * (32 + 16 + 16 + 32 + 3 * 80) + 2 * (2 * 2 * 8 * 8 * 16 * 2)
    assert d["ranks"][0]["prefill"]["counted_matmul_flops"] == 2 * per_layer + 2 * 2 * 64 * 128
    # KV after prefill per rank: 2 (k, v) x 2 layers x 1 kv head x 16 x 8 positions x 2 seqs x 4 B
    assert d["ranks"][1]["prefill"]["kv_cache_bytes"] == 2 * 2 * 16 * 8 * 2 * 4
    c = d["communication"]
    for phase in ("prefill", "decode"):
        assert c[phase]["measured_bytes"] == c[phase]["analytic_bytes"]
        assert c[phase]["measured_seconds"] > 0
    # prefill, each of 2 ranks: 4 all-reduces of [16 tokens, 64] fp32 + all-gather of 2 x 128 logits
    assert c["prefill"]["analytic_bytes"] == 2 * (4 * 16 * 64 * 4 + 2 * 128 * 4)
    assert d["tokens_match"] is True and d["ok"] is True


def test_pp2_table():
    r = invoke("profile", "tiny-gpt2", "--pp", "2", *SMALL, "--attention", "eager")
    assert r.exit_code == 0, r.output
    assert "all figures equal the analytic split" in r.output
    assert "equals the unsharded model's" in r.output


def test_validate_parallel_cases_json():
    r = invoke("validate", "--case", "pp2", "--case", "tp2-pp2", "--format", "json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["ok"] and d["cases"] == []
    cases = {c["case"]: c for c in d["parallel_cases"]}
    assert set(cases) == {"pp2", "tp2-pp2"} and len(cases["tp2-pp2"]["ranks"]) == 4
    for c in cases.values():
        assert c["tokens_match"] and not c["mismatches"]
        for phase in ("prefill", "decode"):
            assert c["communication"][phase]["match"]


@pytest.mark.parametrize("args,words", [
    (["tiny-llama", "--tp", "3"], "tp=3 must divide num_heads (4)"),
    (["tiny-mqa", "--tp", "2"], "must divide num_kv_heads (1)"),
    (["tiny-llama", "--pp", "3"], "pp=3 exceeds the 2 layers"),
    (["tiny-bert", "--tp", "2"], "decoder-only"),
    (["tiny-mixtral", "--tp", "2"], "mixture-of-experts"),
    (["tiny-llama", "--tp", "2", "--strategy", "sample"], "greedily"),
])
def test_bad_splits_exit_2(args, words):
    r = invoke("profile", *args)
    assert r.exit_code == 2
    assert words in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_failing_rank_is_one_error():
    from profiler.distributed import RankError, launch, smoke

    assert launch(smoke, 2, (None,), timeout_s=60) == [3.0, 3.0]  # 1 + 2 on both ranks
    with pytest.raises(RankError, match=r"rank 1 failed: ValueError: rank 1 was told to fail"):
        launch(smoke, 2, (1,), timeout_s=60)


def test_calibrate_collectives(tmp_path):
    out = tmp_path / "p.json"
    r = invoke("calibrate", "--quick", "--collectives", "--out", str(out), "--max-load", "0")
    assert r.exit_code == 0, r.output
    prof = json.loads(out.read_text())
    assert prof["interconnect_bandwidth_bytes_per_s"] > 0 and prof["link_latency_s"] >= 0
    assert prof["interconnect_gpus"] == 2 and prof["interconnect_efficiency"] == 1.0
    col = prof["calibration"]["collectives"]
    assert [p["bytes"] for p in col["points"]] == [1024, 16384, 262144, 1 << 20, 1 << 22]
    assert "p90" in r.output
    # the plan reads the fitted link
    r = invoke("plan", "tiny-llama", "--hardware", str(out), "--tp", "2", "--prompt", "32", "--gen", "4",
               "--batch", "1", "--format", "json")
    assert r.exit_code == 0, r.output


def test_fit_ring_recovers_a_line():
    from profiler.calibrate_collectives import fit_ring

    bw, lat = 2e9, 5e-5  # t = m / bw + 2 lat at tp = 2
    pts = [(m, m / bw + 2 * lat) for m in (1024, 65536, 1 << 20, 1 << 24)]
    fbw, flat = fit_ring(pts, 2)
    assert fbw == pytest.approx(bw, rel=1e-9) and flat == pytest.approx(lat, rel=1e-9)
