"""`costmodel validate --timing`: the summary arithmetic, and the command's contract (no timing asserts)."""

import json

import pytest
from click.testing import CliRunner

from reports.cli import main
from profiler.timing_validation import TimingCase, percentile, plan, summary


def test_percentile_interpolates_like_numpy():
    xs = [10.0, 20.0, 30.0, 40.0]
    assert percentile(xs, 50) == 25.0  # halfway between 20 and 30
    assert percentile(xs, 90) == pytest.approx(37.0)  # position 0.9 * 3 = 2.7: 30 + 0.7 * 10
    assert percentile([5.0], 90) == 5.0


def test_error_is_signed_and_summary_uses_absolute_values():
    over = TimingCase("prefill", 1, 8, predicted_s=1.5, measured_s=1.0, measured_median_s=1.1, bound="")
    under = TimingCase("decode", 1, 8, predicted_s=0.5, measured_s=1.0, measured_median_s=1.0, bound="")
    assert over.error_pct == pytest.approx(50.0) and under.error_pct == pytest.approx(-50.0)
    s = summary([over, under])
    assert s["median_abs_error_pct"] == pytest.approx(50.0) and s["cases"] == 2


def test_plan_covers_prefill_and_decode():
    phases = {p for p, _, _ in plan(quick=True)}
    assert phases == {"prefill", "decode"} and len(plan(quick=False)) > len(plan(quick=True))


def test_validate_timing_json_contract():
    r = CliRunner().invoke(main, ["validate", "--timing", "--quick", "--gpu", "cpu-generic", "--threads", "1",
                                  "--max-error", "1e9", "--max-load", "0", "--format", "json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["hardware"] == "cpu-generic" and len(d["cases"]) == len(plan(quick=True))
    for c in d["cases"]:
        assert c["predicted_s"] > 0 and c["measured_s"] > 0 and c["phase"] in ("prefill", "decode")
        assert c["error_pct"] == pytest.approx((c["predicted_s"] - c["measured_s"]) / c["measured_s"] * 100)
    errs = sorted(abs(c["error_pct"]) for c in d["cases"])
    assert d["summary"]["median_abs_error_pct"] == pytest.approx(percentile(errs, 50))
    assert set(d["summary"]) >= {"median_abs_error_pct", "p90_abs_error_pct"}


def test_validate_timing_bad_hardware_file(tmp_path):
    r = CliRunner().invoke(main, ["validate", "--timing", "--hardware", str(tmp_path / "nope.json")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1
