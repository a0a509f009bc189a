"""profiler.model_timing.time_cases: visits spread over rounds, geometric mean, warm-ups, yields.

The model and the clock are stand-ins (no torch model runs): ``prepare`` is replaced by one that
hands back a pass tagged with its case, and the timer returns scripted seconds per case, so
every figure below is exact."""

import math

import pytest

pytest.importorskip("torch")

from profiler import model_timing  # noqa: E402


class _Model:
    layers = ()  # AttentionHooks finds no attention modules: attention time 0

    def __init__(self):
        self.drops = 0

    def drop_caches(self):
        self.drops += 1


class _Timer:
    """Runs the pass and returns the next scripted time of its case; logs (case, kind)."""

    def __init__(self, script):
        self.script = {k: list(v) for k, v in script.items()}
        self.log = []

    def seconds(self, run):
        case = run()
        self.log.append(case)
        return self.script[case].pop(0)


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr(model_timing, "prepare", lambda model, spec, phase, b, s, dev, gen: (lambda: (phase, b, s)))


A, B = ("prefill", 1, 16), ("decode", 2, 24)


def test_each_case_is_visited_once_a_round_and_the_mean_is_geometric(fake):
    # visits = 2; each visit is a warm-up then one timed pass: A's timed passes 1 and 4 ms,
    # geometric mean sqrt(1 x 4) = 2 ms (the median, 2.5 ms, is kept beside it); B's 3 and 3.
    timer = _Timer({A: [9e-3, 1e-3, 9e-3, 4e-3], B: [9e-3, 3e-3, 9e-3, 3e-3]})
    rounds, model = [], _Model()
    out = list(model_timing.time_cases(model, None, [A, B], None, None, timer, 2, warmup_s=0,
                                       progress=lambda r, n: rounds.append((r, n, len(timer.log)))))
    assert sorted(i for i, _ in out) == [0, 1]
    res = dict(out)
    assert res[0]["seconds"] == pytest.approx(2e-3, rel=1e-12)
    assert res[0]["seconds_median"] == pytest.approx(2.5e-3) and res[0]["runs"] == 2
    assert (res[0]["seconds_min"], res[0]["seconds_max"]) == (1e-3, 4e-3)
    # floor: median |x - 2.5| = 1.5 ms over 2.5 ms = 60 %
    assert res[0]["floor_pct"] == pytest.approx(60.0)
    assert res[1]["seconds"] == pytest.approx(3e-3, rel=1e-12) and res[1]["floor_pct"] == 0.0
    # round 1 (4 passes: both cases) ends before round 2 starts; no progress call after the last round
    assert rounds == [(1, 2, 4)]
    assert sorted(timer.log[:4]) == sorted([A, A, B, B]) and sorted(timer.log[4:]) == sorted([A, A, B, B])
    assert model.drops == 4  # each visit frees its caches


def test_a_long_pass_skips_its_warm_up_after_the_first_visit(fake):
    # long_pass_s 0.5: A's warm-up takes 0.8 s, so visits 2 and 3 time A once each (4 passes in
    # all, not 6); B's warm-up is short and kept every visit (6 passes).
    timer = _Timer({A: [0.8, 0.7, 0.6, 0.6], B: [0.01] * 6})
    out = dict(model_timing.time_cases(_Model(), None, [A, B], None, None, timer, 3, long_pass_s=0.5, warmup_s=0))
    assert timer.log.count(A) == 4 and timer.log.count(B) == 6
    assert out[0]["seconds"] == pytest.approx(math.exp((math.log(0.7) + 2 * math.log(0.6)) / 3), rel=1e-12)


def test_a_short_pass_warms_up_for_warmup_s(fake):
    # warmup_s 0.03 (the default): A's passes take 12 ms, so each visit warms up with 3 passes
    # (12 + 12 < 30 <= 36 ms) before its timed one: 4 passes a visit, 8 for 2 visits; B's first
    # pass takes 40 ms, so one warm-up a visit: 4 passes. The timed passes are the 4th and the 2nd.
    timer = _Timer({A: [0.012, 0.012, 0.012, 0.005] * 2, B: [0.04, 0.02] * 2})
    out = dict(model_timing.time_cases(_Model(), None, [A, B], None, None, timer, 2))
    assert model_timing.WARMUP_S == 0.03
    assert timer.log.count(A) == 8 and timer.log.count(B) == 4
    assert out[0]["seconds"] == pytest.approx(0.005) and out[1]["seconds"] == pytest.approx(0.02)


def test_warm_up_goes_on_while_the_passes_still_speed_up(fake):
    # A: 20 ms, then 15 (35 ms spent, but 15 < 0.97 x 20: still falling), 11 (< 0.97 x 15), 10.9
    # (not < 0.97 x 11 = 10.67: settled): 4 warm-ups, then the timed pass, 7 ms.
    timer = _Timer({A: [0.020, 0.015, 0.011, 0.0109, 0.007]})
    out = dict(model_timing.time_cases(_Model(), None, [A], None, None, timer, 1))
    assert timer.log.count(A) == 5 and out[0]["seconds"] == pytest.approx(0.007)
    # ever faster passes stop at warmup_max_s (here 50 ms): 20 + 15 + 11 + 8 = 54 ms, then the timed 6
    timer = _Timer({A: [0.020, 0.015, 0.011, 0.008, 0.006]})
    out = dict(model_timing.time_cases(_Model(), None, [A], None, None, timer, 1, warmup_max_s=0.05))
    assert timer.log.count(A) == 5 and out[0]["seconds"] == pytest.approx(0.006)
    # one warm-up that already took warmup_s is the whole warm-up (no trend after one pass)
    timer = _Timer({A: [0.1, 0.05]})
    out = dict(model_timing.time_cases(_Model(), None, [A], None, None, timer, 1))
    assert timer.log.count(A) == 2 and out[0]["seconds"] == pytest.approx(0.05)


def test_a_long_pass_with_hooks_is_timed_hooked(fake):
    # long and hooked: visit 1 is the warm-up (0.8 s) then one hooked, timed pass; visits 2 and 3
    # one hooked, timed pass each: 4 passes, all through the timer, for 3 visits.
    timer = _Timer({A: [0.8, 0.7, 0.6, 0.6]})
    out = dict(model_timing.time_cases(_Model(), None, [A], None, None, timer, 3, hooks_ns=lambda: 0, long_pass_s=0.5))
    assert len(timer.log) == 4 and out[0]["runs"] == 3 and out[0]["attention_s"] == 0.0
    # ... unless the hooks would cost over 0.1 % of it: 10 layers x 0.13 ms = 1.3 ms > 0.8 s / 1000,
    # so the timed pass stays unhooked (warm-up + 3 timed through the timer; 3 hooked beside).
    model = _Model()
    model.layers = tuple(range(10))
    timer = _Timer({A: [0.8, 0.7, 0.6, 0.6]})
    out = dict(model_timing.time_cases(model, None, [A], None, None, timer, 3, hooks_ns=lambda: 0, long_pass_s=0.5))
    assert len(timer.log) == 4 and out[0]["seconds"] == pytest.approx((0.7 * 0.6 * 0.6) ** (1 / 3))


def test_hooked_passes_give_the_attention_share_and_are_not_timed(fake):
    # With hooks: each visit runs a third, hooked, pass outside the timer (the stand-in model has
    # no attention modules: attention_s 0); the timed passes are still warm-up + one a visit.
    timer = _Timer({A: [1.0, 2.0, 1.0, 2.0]})
    out = dict(model_timing.time_cases(_Model(), None, [A], None, None, timer, 2, hooks_ns=lambda: 0))
    assert len(timer.log) == 4 and out[0]["attention_s"] == 0.0 and out[0]["seconds"] == 2.0


def test_the_order_of_a_round_is_shuffled_by_seed_and_round(fake):
    cases = [("prefill", 1, t) for t in (1, 2, 3, 4, 5, 6)]
    orders = []
    for seed in (0, 0, 1):
        timer = _Timer({c: [1.0] * 4 for c in cases})
        list(model_timing.time_cases(_Model(), None, cases, None, None, timer, 2, seed=seed))
        orders.append([timer.log[k] for k in range(0, 24, 2)])  # the warm-ups: one per visit
    assert orders[0] == orders[1] and orders[0] != orders[2]  # reproducible, and seeded
    assert orders[0][:6] != orders[0][6:]  # rounds differ in order
