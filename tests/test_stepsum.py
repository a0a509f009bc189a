"""costmodel.stepsum: exact sums over decode steps, each checked against the loop it replaces."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from costmodel import stepsum as S

COEF = st.integers(-10**9, 10**9)
RATE = st.sampled_from([1.0, 3.0, 7.5, 1e3, 2.5e11, 1e12])
# powers of two: f(i) / F > b(i) / B is decided exactly (ints below 2**53, exact division), so the
# steps where compute wins are well defined; other rates round, and a step where f / F ~ b / B may go
# either way (changing the sum by a rounding error)
EXACT_RATE = st.sampled_from([1.0, 2.0, 0.5, 1024.0, 2.0**40, 2.0**-3])


def quadratic(a, b, c):
    return lambda i: a + b * i + c * i * i


def newton_of(f):
    return S.newton(f(1), f(2), f(3))


def brute_max(f, b, n, F, B):
    """(sum of max(f(i) / F, b(i) / B), steps where f(i) / F > b(i) / B), step by step."""
    return (sum(max(f(i) / F, b(i) / B) for i in range(1, n + 1)),
            sum(f(i) / F > b(i) / B for i in range(1, n + 1)))


def test_hand_derived_example_with_both_sign_changes():
    # f(i) = i^2 + 10 FLOPs, b(i) = 7 i - 1 bytes, F = B = 1: g = f - b = i^2 - 7 i + 11
    # i:    1   2   3   4   5   6
    # f:   11  14  19  26  35  46
    # b:    6  13  20  27  34  41
    # max: 11  14  20  27  35  46  -> 153; compute wins at 1, 2, 5, 6 (g = 5, 1, -1, -1, 1, 5)
    pf, pb = S.newton(11, 14, 19), S.newton(6, 13, 20)
    assert pf == (11, 3, 2) and pb == (6, 7, 0)  # 14 - 11 = 3, 19 - 2 * 14 + 11 = 2
    assert [S.at(pf, i) for i in range(1, 7)] == [11, 14, 19, 26, 35, 46]
    # 6 * 11 + 3 * C(6, 2) + 2 * C(6, 3) = 66 + 45 + 40 = 151 = 11 + 14 + 19 + 26 + 35 + 46
    assert S.prefix_sum(pf, 6) == 151
    # vertex split: c1 = 3 - 7 = -4, c2 = 2 - 0 = 2, k = floor(1.5 + 4 / 2) = 3: runs 1-3 and 4-6;
    # compute on 1-2 (11 + 14) and 5-6 (35 + 46) = 106 FLOPs, memory on 3-4 (20 + 27) = 47 bytes
    assert S.sum_max(pf, pb, 6, 1.0, 1.0) == (153.0, 4)
    assert S.sum_max(pf, pb, 0, 1.0, 1.0) == (0.0, 0)
    # the first 3 steps only: 11 + 14 + 20 = 45, compute at 1 and 2
    assert S.sum_max(pf, pb, 3, 1.0, 1.0) == (45.0, 2)


@settings(max_examples=500, deadline=None)
@given(COEF, COEF, COEF, st.integers(0, 300))
def test_prefix_sum_equals_the_loop(a, b, c, m):
    f = quadratic(a, b, c)
    assert S.prefix_sum(newton_of(f), m) == sum(f(i) for i in range(1, m + 1))
    assert all(S.at(newton_of(f), i) == f(i) for i in range(1, 6))


@settings(max_examples=500, deadline=None)
@given(COEF, COEF, COEF, COEF, COEF, COEF, st.integers(0, 200), EXACT_RATE, EXACT_RATE, RATE, RATE)
def test_sum_max_equals_the_loop(a, b, c, x, y, z, n, F, B, F2, B2):
    f, g = quadratic(a, b, c), quadratic(x, y, z)
    seconds, compute_steps = S.sum_max(newton_of(f), newton_of(g), n, F, B)
    loop_seconds, loop_steps = brute_max(f, g, n, F, B)
    assert compute_steps == loop_steps
    assert seconds == pytest.approx(loop_seconds, rel=1e-12, abs=1e-300)
    seconds, _ = S.sum_max(newton_of(f), newton_of(g), n, F2, B2)
    assert seconds == pytest.approx(brute_max(f, g, n, F2, B2)[0], rel=1e-12, abs=1e-300)


@settings(max_examples=500, deadline=None)
@given(st.integers(1, 100), st.integers(1, 100), st.integers(1, 10**6), st.integers(0, 10**6),
       st.integers(0, 10**6), st.integers(0, 10**4), st.integers(0, 250), st.booleans())
def test_sum_max_finds_both_sign_changes(r1, gap, c, x, y, z, extra, compute_outside):
    # g(i) = f(i) - b(i) = +-c (2i - 2 r1 - 1)(2i - 2 r2 - 1): its sign flips between r1 and r1 + 1
    # and between r2 and r2 + 1, with 1 <= r1 < r2 < n, so both changes lie inside the steps
    r2, b = r1 + gap, quadratic(x, y, z)
    n = r2 + 1 + extra
    sign = 1 if compute_outside else -1

    def f(i):
        return b(i) + sign * c * (2 * i - 2 * r1 - 1) * (2 * i - 2 * r2 - 1)

    seconds, compute_steps = S.sum_max(newton_of(f), newton_of(b), n, 1.0, 1.0)
    assert compute_steps == (n - gap if compute_outside else gap)
    assert (seconds, compute_steps) == brute_max(f, b, n, 1.0, 1.0)  # sums of ints below 2**53: exact


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(*[st.integers(-10**9, 10**9)] * 6), min_size=1, max_size=20),
       st.integers(0, 1000), RATE, RATE)
def test_array_form_equals_the_int_form_element_wise(cases, n, F, B):
    pfs = [S.newton(*(quadratic(*c[:3])(i) for i in (1, 2, 3))) for c in cases]
    pbs = [S.newton(*(quadratic(*c[3:])(i) for i in (1, 2, 3))) for c in cases]
    # the sweep's form: one float64 array per coefficient, over the grid points
    pf_a, pb_a = (tuple(np.array(col, dtype=np.float64) for col in zip(*ps)) for ps in (pfs, pbs))
    seconds, steps = S.sum_max(pf_a, pb_a, n, F, B)
    for k, (pf, pb) in enumerate(zip(pfs, pbs)):
        s, cs = S.sum_max(pf, pb, n, F, B)
        assert (steps[k] if n else steps) == cs  # every step value is exact in float64 here
        assert (seconds[k] if n else seconds) == pytest.approx(s, rel=1e-12, abs=1e-300)
    # exact integer prefix sums on int64 arrays, as the sweep's counts
    p_int = tuple(np.array(col, dtype=np.int64) for col in zip(*pfs))
    assert S.prefix_sum(p_int, n).tolist() == [S.prefix_sum(p, n) for p in pfs]


def test_array_form_broadcasts_over_a_grid():
    # coefficients shaped [2, 1] and [1, 3] (batch x prompt), one of them a plain int: [2, 3] out
    pf = (np.array([[11], [22]]), np.array([[3], [6]]), 2)
    pb = (np.array([[6, 6, 600]]), 7, 0)
    seconds, steps = S.sum_max(pf, pb, 6, 1.0, 1.0)
    assert seconds.shape == steps.shape == (2, 3)
    for ib in range(2):
        for ip in range(3):
            one = S.sum_max(tuple(int(np.broadcast_to(v, (2, 3))[ib, ip]) for v in pf),
                            tuple(int(np.broadcast_to(v, (2, 3))[ib, ip]) for v in pb), 6, 1.0, 1.0)
            assert (seconds[ib, ip], steps[ib, ip]) == one
    assert (seconds[0, 0], steps[0, 0]) == (153.0, 4)  # the hand-derived example above


def test_step_curves_are_the_per_step_values():
    pf, pb = S.newton(11, 14, 19), S.newton(6, 13, 20)  # the hand-derived example
    assert S.step_curve(pf, 6).tolist() == [11.0, 14.0, 19.0, 26.0, 35.0, 46.0]
    assert S.max_step_curve(pf, pb, 6, 1.0, 1.0).tolist() == [11.0, 14.0, 20.0, 27.0, 35.0, 46.0]
    assert S.max_step_curve(pf, pb, 0, 1.0, 1.0).tolist() == []
    # F = 2: f / 2 = 5.5, 7, 9.5, 13, 17.5, 23 against b = 6, 13, 20, 27, 34, 41: memory everywhere
    assert S.max_step_curve(pf, pb, 6, 2.0, 1.0).tolist() == [6.0, 13.0, 20.0, 27.0, 34.0, 41.0]
    assert S.sum_max(pf, pb, 6, 2.0, 1.0) == (141.0, 0)  # 6 + 13 + 20 + 27 + 34 + 41


def test_stepsum_imports_no_numpy():
    import subprocess
    import sys

    code = "import sys, costmodel.stepsum as s; s.sum_max((1, 2, 3), (4, 5, 6), 9, 1.0, 1.0); print('numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
