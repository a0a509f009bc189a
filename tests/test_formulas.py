"""Formula functions, each checked against arithmetic done by hand."""

import pytest

from costmodel import formulas as F
from costmodel.dtypes import canonical_dtype, nbytes
from costmodel.errors import SpecError


def test_matmul_is_two_flops_per_multiply_add():
    # [2, 3] @ [3, 4]: 2 * 4 outputs, 3 multiply-adds each, 2 FLOPs each: 2 * 2 * 3 * 4 = 48
    assert F.matmul_flops(2, 3, 4) == 48
    assert F.linear_flops(5, 7, 11) == 2 * 5 * 7 * 11 == 770


@pytest.mark.parametrize("q_len, kv_len, causal, pairs", [
    (4, 4, False, 16),  # 4 * 4
    (4, 4, True, 10),  # 1 + 2 + 3 + 4
    (1, 10, False, 10),  # one decode query over 10 keys
    (1, 10, True, 10),  # the last position sees all 10 keys
    (3, 5, True, 12),  # queries at positions 2, 3, 4 see 3 + 4 + 5 keys
])
def test_attended_pairs(q_len, kv_len, causal, pairs):
    assert F.attended_pairs(q_len, kv_len, causal) == pairs


def test_attention_flops_per_query_head():
    # 2 * batch * heads * q * kv * d = 2 * 2 * 4 * 3 * 5 * 8 = 1920, the same for P V
    assert F.attention_score_flops(2, 4, 3, 5, 8) == 1920
    assert F.attention_value_flops(2, 4, 3, 5, 8) == 1920
    # causal: 12 pairs instead of 15 -> 2 * 2 * 4 * 12 * 8 = 1536
    assert F.attention_score_flops(2, 4, 3, 5, 8, causal=True) == 1536


def test_elementwise_conventions():
    assert F.norm_flops(3, 10, "layernorm") == 7 * 30
    assert F.norm_flops(3, 10, "rmsnorm") == 4 * 30
    assert F.activation_flops(10, "silu") == 40
    assert F.activation_flops(10, "gelu_tanh") == 80
    assert F.attention_softmax_flops(2, 3, 4, 5) == 6 * 2 * 3 * 4 * 5
    assert F.rotary_flops(7, 3, 8) == 3 * 7 * 3 * 8


@pytest.mark.parametrize("coeffs", [(5, 0, 0), (3, 7, 0), (1, 2, 3), (0, 0, 11), (-4, 9, 2)])
@pytest.mark.parametrize("steps", [0, 1, 2, 3, 10, 127])
def test_sum_quadratic_equals_the_loop(coeffs, steps):
    a, b, c = coeffs

    def f(i):
        return a + b * i + c * i * i

    assert F.sum_quadratic(f(1), f(2), f(3), steps) == sum(f(i) for i in range(1, steps + 1))


def test_sum_quadratic_is_exact_for_huge_step_counts():
    # f(i) = (10**7 + i)**2 summed to 10**7 steps: sum_{i=1}^{n} (N + i)^2 with N = n = 10**7
    n = 10**7

    def f(i):
        return (n + i) ** 2

    # closed form: n*N^2 + 2N * n(n+1)/2 + n(n+1)(2n+1)/6
    expected = n * n**2 + 2 * n * (n * (n + 1) // 2) + n * (n + 1) * (2 * n + 1) // 6
    assert F.sum_quadratic(f(1), f(2), f(3), n) == expected


def test_nbytes_sub_byte_and_aliases():
    assert nbytes(10, "int4") == 5  # half a byte each, not 4 // 8 == 0
    assert nbytes(10, "fp8") == 10
    assert nbytes(10, "bf16") == 20
    assert nbytes(10, "fp32") == 40
    assert canonical_dtype("bfloat16") == "bf16"
    assert canonical_dtype("float16") == "fp16"
    with pytest.raises(AssertionError):
        nbytes(3, "int4")  # 1.5 bytes: an internal invariant, specs are validated earlier
    with pytest.raises(SpecError, match="allowed: bf16, fp16, fp32, fp8, int4, int8"):
        canonical_dtype("fp64")
