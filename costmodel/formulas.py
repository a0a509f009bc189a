"""FLOP formulas: small pure functions of shapes, each named after its quantity.

Convention, stated once: a multiply-add is **2 FLOPs**, as torch's ``FlopCounterMode`` counts
(``mm``: ``2 * m * k * n``). fvcore counts a multiply-add as 1; convert at its boundary.
Bias adds are not matmul FLOPs (torch counts ``addmm`` as its ``mm`` only); they are element-wise
ops of their own. Every function returns an exact ``int``: Python integers never overflow.

Element-wise FLOPs are a convention too (counters report 0 for them); ours, per element:

====================  ===  ==========================================================
op                    FLOP  what is counted
====================  ===  ==========================================================
LayerNorm             7    mean (add), centre (sub), square, sum, scale by 1/std, gamma, beta
RMSNorm               4    square, sum, scale by 1/rms, gamma
softmax (attention)   6    scale by 1/sqrt(d), max, subtract, exp, sum, divide
softmax (sampling)    5    max, subtract, exp, sum, divide
GELU (erf or tanh)    8    the tanh form: x^3, two muls, add, tanh, add, two muls
SiLU                  4    negate, exp, add, divide
ReLU                  1    max(x, 0)
rotary embedding      3    x * cos + rotate_half(x) * sin
add (residual, bias)  1
====================  ===  ==========================================================
Per-row constants (the one square root of a norm, a softmax's one reciprocal) are not counted.
"""

from __future__ import annotations

from . import stepsum

NORM_FLOPS_PER_ELEMENT = {"layernorm": 7, "rmsnorm": 4}
ACTIVATION_FLOPS_PER_ELEMENT = {"gelu": 8, "gelu_tanh": 8, "silu": 4, "relu": 1}
ATTENTION_SOFTMAX_FLOPS_PER_ELEMENT = 6  # 1 for the 1/sqrt(d) scale + 5 for the softmax
SOFTMAX_FLOPS_PER_ELEMENT = 5
ROTARY_FLOPS_PER_ELEMENT = 3


def matmul_flops(m: int, k: int, n: int) -> int:
    """[m, k] @ [k, n]: m * n dot products of length k, 2 FLOPs per multiply-add."""
    return 2 * m * k * n


def linear_flops(tokens: int, in_features: int, out_features: int) -> int:
    """x[tokens, in] @ W[in, out] (the bias add is a separate element-wise op)."""
    return matmul_flops(tokens, in_features, out_features)


def attended_pairs(q_len: int, kv_len: int, causal: bool) -> int:
    """(query, key) pairs one head scores.

    Full: q_len * kv_len, as FlopCounterMode and the textbook count it (the mask is applied after
    the matmul). Causal: the q_len queries are the last positions of kv_len, so query i (0-based)
    sees kv_len - q_len + i + 1 keys; the sum is q_len * (kv_len - q_len) + q_len * (q_len + 1) / 2.
    """
    if not causal:
        return q_len * kv_len
    return q_len * (kv_len - q_len) + q_len * (q_len + 1) // 2


def attention_score_flops(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int,
                          causal: bool = False) -> int:
    """Q K^T: per head, [q_len, d] @ [d, kv_len] -> 2 * pairs * d; over batch and query heads.

    GQA/MQA share K across query heads but every query head still does its own matmul.
    """
    return 2 * batch * heads * attended_pairs(q_len, kv_len, causal) * head_dim


def attention_value_flops(batch: int, heads: int, q_len: int, kv_len: int, head_dim: int,
                          causal: bool = False) -> int:
    """P V: per head, [q_len, kv_len] @ [kv_len, d]; the same count as the scores."""
    return attention_score_flops(batch, heads, q_len, kv_len, head_dim, causal)


def norm_flops(tokens: int, hidden: int, kind: str) -> int:
    return NORM_FLOPS_PER_ELEMENT[kind] * tokens * hidden


def activation_flops(elements: int, kind: str) -> int:
    return ACTIVATION_FLOPS_PER_ELEMENT[kind] * elements


def attention_softmax_flops(batch: int, heads: int, q_len: int, kv_len: int,
                            causal: bool = False) -> int:
    return ATTENTION_SOFTMAX_FLOPS_PER_ELEMENT * batch * heads * attended_pairs(q_len, kv_len, causal)


def rotary_flops(tokens: int, heads: int, head_dim: int) -> int:
    """Rotary embedding of q or k: 3 FLOPs for each of tokens * heads * head_dim elements."""
    return ROTARY_FLOPS_PER_ELEMENT * tokens * heads * head_dim


def sum_quadratic(f1, f2, f3, steps: int):
    """Exact sum of f(1) + ... + f(steps) for f a polynomial of degree <= 2 in the step number,
    from f(1), f(2), f(3): Newton's forward differences and the hockey stick identity, integers only
    (see :mod:`costmodel.stepsum`). Decode costs are of this form: affine in the context with a KV
    cache, quadratic without.
    """
    return stepsum.prefix_sum(stepsum.newton(f1, f2, f3), steps)
