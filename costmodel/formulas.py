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
LayerNorm, no bias    6    the same without beta (Cohere)
RMSNorm               4    square, sum, scale by 1/rms, gamma
softmax (attention)   6    scale by 1/sqrt(d), max, subtract, exp, sum, divide
softmax (sampling)    5    max, subtract, exp, sum, divide
GELU (erf or tanh)    8    the tanh form: x^3, two muls, add, tanh, add, two muls
SiLU                  4    negate, exp, add, divide
sigmoid               4    negate, exp, add, divide
ReLU                  1    max(x, 0)
rotary embedding      3    x * cos + rotate_half(x) * sin
top-k selection       1    one comparison per candidate (a sort is not modelled)
add (residual, bias)  1
mul (gate, scale)     1
tanh (BERT pooler)    1
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
ADD_FLOPS_PER_ELEMENT = 1  # residual, bias, position table
MUL_FLOPS_PER_ELEMENT = 1  # gate * up, a scale
TANH_FLOPS_PER_ELEMENT = 1
SIGMOID_FLOPS_PER_ELEMENT = 4


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


def attention_score_elements(batch: int, heads: int, q_len: int, kv_len: int, causal: bool = False) -> int:
    """Scores [batch, heads, q_len, kv_len] written by Q K^T (the causal triangle only if ``causal``)."""
    return batch * heads * attended_pairs(q_len, kv_len, causal)


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


def norm_flops(tokens: int, hidden: int, kind: str, bias: bool = True) -> int:
    """A norm over ``hidden`` on each of ``tokens`` rows; a LayerNorm without its shift (``bias``
    False) saves one FLOP per element."""
    no_shift = 1 if kind == "layernorm" and not bias else 0
    return (NORM_FLOPS_PER_ELEMENT[kind] - no_shift) * tokens * hidden


def activation_flops(elements: int, kind: str) -> int:
    return ACTIVATION_FLOPS_PER_ELEMENT[kind] * elements


def attention_softmax_flops(batch: int, heads: int, q_len: int, kv_len: int,
                            causal: bool = False, scaled: bool = True) -> int:
    """softmax(scores / sqrt(d)) over every score element: 6 FLOPs each, 5 when the scores are not
    scaled (T5: ``attention_scale`` False)."""
    per_element = ATTENTION_SOFTMAX_FLOPS_PER_ELEMENT - (0 if scaled else 1)
    return per_element * attention_score_elements(batch, heads, q_len, kv_len, causal)


def softmax_flops(elements: int) -> int:
    """An unscaled softmax (the MoE router's over its experts): 5 FLOPs per element."""
    return SOFTMAX_FLOPS_PER_ELEMENT * elements


def add_flops(elements: int) -> int:
    """a + b element-wise: a residual add, a bias, a position table (1 FLOP per element)."""
    return ADD_FLOPS_PER_ELEMENT * elements


def mul_flops(elements: int) -> int:
    """a * b element-wise: act(gate) * up, a scale by a constant (1 FLOP per element)."""
    return MUL_FLOPS_PER_ELEMENT * elements


def residual_add_flops(tokens: int, hidden: int) -> int:
    """x + f(x) on the residual stream [tokens, hidden]."""
    return add_flops(tokens * hidden)


def parallel_residual_flops(tokens: int, hidden: int) -> int:
    """x + attn + mlp of a parallel block (GPT-J, GPT-NeoX, Falcon, Cohere, Phi): two adds on each
    element of the residual stream [tokens, hidden]."""
    return 2 * add_flops(tokens * hidden)


def qkv_elements(q_tokens: int, kv_tokens: int, q_size: int, kv_size: int) -> int:
    """Outputs of the q, k and v projections: q [q_tokens, q_size], k and v [kv_tokens, kv_size]
    each (their bias adds one per element)."""
    return q_tokens * q_size + 2 * kv_tokens * kv_size


def kv_elements(tokens: int, kv_size: int) -> int:
    """Keys and values of ``tokens`` positions: 2 * tokens * num_kv_heads * head_dim (one layer)."""
    return 2 * tokens * kv_size


def smaller(a, b):
    """min(a, b), element-wise on integer arrays too (no branch): (a + b - |a - b|) / 2, exact."""
    return (a + b - abs(a - b)) // 2


def sliding_keys(q_len, kv_len, window):
    """Keys a sliding-window layer attends over in a pass of ``q_len`` new tokens whose sequence
    then holds ``kv_len`` positions: its cache keeps only the last ``window - 1`` positions
    (transformers' ``DynamicSlidingWindowLayer``), and the new tokens join them, so
    q_len + min(kv_len - q_len, window - 1). A decode step (q_len = 1): min(kv_len, window); a
    prefill (q_len = kv_len): kv_len, the whole masked q x kv score matrix (masks remove no FLOPs)."""
    return q_len + smaller(kv_len - q_len, window - 1)


def sliding_cache_positions(positions, window):
    """Positions a sliding-window layer's cache holds after ``positions`` have passed: the last
    window - 1 (transformers' ``DynamicSlidingWindowLayer``), or all of them while fewer."""
    return smaller(positions, window - 1)


def rotary_table_elements(q_len: int, head_dim: int) -> int:
    """The cos and sin tables [q_len, head_dim], each read twice (for q and for k); RoFormer (Su et
    al. 2021), applied as gpt-fast / HF Llama do: x * cos + rotate_half(x) * sin. Partial rotary
    (GPT-NeoX rotary_pct, Phi partial_rotary_factor): ``head_dim`` is the rotated dims only."""
    return 2 * 2 * q_len * head_dim


def pooler_activation_flops(rows: int, hidden: int) -> int:
    """BERT's pooler tanh(x W + b) after its matmul (Devlin et al. 2019; HF ``BertPooler``): bias
    add and tanh on [rows, hidden]."""
    return add_flops(rows * hidden) + TANH_FLOPS_PER_ELEMENT * rows * hidden


def router_topk_flops(tokens: int, experts: int, k: int, renormalize: bool) -> int:
    """Top-k of each token's E router probabilities: one comparison per probability; renormalising
    the k kept weights (Mixtral, Jiang et al. 2024; HF ``MixtralSparseMoeBlock``) sums and divides
    them: 2 per kept weight."""
    return tokens * experts + (2 * tokens * k if renormalize else 0)


def expert_combine_flops(tokens: int, k: int, hidden: int) -> int:
    """sum_j w_j * expert_j(x) over the k experts of each token: a multiply and an add per
    element of the k outputs [tokens, k, hidden] (Shazeer et al. 2017, eq. 1)."""
    return 2 * tokens * k * hidden


def shared_expert_combine_flops(tokens: int, hidden: int, gated: bool) -> int:
    """Shared experts' output added to the routed one; Qwen-MoE (HF ``Qwen2MoeSparseMoeBlock``) gates it first,
    sigmoid(x @ w[h, 1]) * shared + routed: the sigmoid 4 per token (negate, exp, add, divide),
    then a multiply and an add per element."""
    if gated:
        return 4 * tokens + 2 * tokens * hidden
    return add_flops(tokens * hidden)


def routed_scaling_flops(tokens: int, k: int) -> int:
    """The k routing weights of each token multiplied by routed_scaling_factor (DeepSeek-V3; HF
    ``DeepseekV3TopkRouter``): one multiply per kept weight."""
    return mul_flops(tokens * k)


def router_sigmoid_flops(tokens: int, experts: int) -> int:
    """DeepSeek-V3's affinities s = sigmoid(u^T e) and the choice scores s + b (the per-expert
    bias ``e_score_correction_bias``): 4 + 1 per router logit (DeepSeek-AI 2024, "DeepSeek-V3
    Technical Report", section 2.1.2: sigmoid affinities, the bias b_i added for the top-k choice only)."""
    return SIGMOID_FLOPS_PER_ELEMENT * tokens * experts + add_flops(tokens * experts)


def router_group_topk_flops(tokens: int, experts: int, groups: int) -> int:
    """Group-limited routing as HF ``DeepseekV3TopkRouter`` runs it (n_group, topk_group): each
    group's score is the sum of its 2 best choice scores (a top-2 over each group: one comparison
    per expert; one add per group), then the best topk_group groups are kept (one comparison per
    group) and the other groups' experts masked (a select: no FLOPs)."""
    return tokens * experts + add_flops(tokens * groups) + tokens * groups


def mla_kv_expand_flops(kv_tokens: int, kv_lora_rank: int, heads: int, nope_dim: int, v_dim: int) -> int:
    """kv_b_proj on cached latents: [kv_tokens, d_c] @ [d_c, H * (d_nope + d_v)], the keys' no-position
    part k^C = W^UK c^KV and the values v^C = W^UV c^KV of every head (Liu et al. 2024, "DeepSeek-V2",
    section 2.1.2, eqs. 9-11). transformers 5.23 runs it over every attended position, every pass."""
    return linear_flops(kv_tokens, kv_lora_rank, heads * (nope_dim + v_dim))


def mla_absorbed_query_flops(tokens: int, heads: int, nope_dim: int, kv_lora_rank: int) -> int:
    """W^UK absorbed into the query (DeepSeek-V2, section 2.1.2: "we can absorb W^UK into W^Q"): each
    head's q_nope [tokens, d_nope] @ W^UK_head [d_nope, d_c], a batched matmul over H heads, so
    scores are taken against the cached latent directly: 2 * tokens * H * d_nope * d_c."""
    return 2 * tokens * heads * nope_dim * kv_lora_rank


def mla_absorbed_output_flops(tokens: int, heads: int, kv_lora_rank: int, v_dim: int) -> int:
    """W^UV applied after attention (DeepSeek-V2, section 2.1.2: "W^UV into W^O"): each head's
    latent output [tokens, d_c] @ W^UV_head [d_c, d_v]: 2 * tokens * H * d_c * d_v."""
    return 2 * tokens * heads * kv_lora_rank * v_dim


def mla_cache_elements(tokens: int, kv_lora_rank: int, rope_dim: int) -> int:
    """What latent attention caches per position: the latent c^KV (d_c) and the shared rotary key
    k^R (d_h^R) (DeepSeek-V2, section 2.1.4, table 1: (d_c + d_h^R) * l elements per token over l layers)."""
    return tokens * (kv_lora_rank + rope_dim)


def rotary_flops(tokens: int, heads: int, head_dim: int) -> int:
    """Rotary embedding of q or k: 3 FLOPs for each of tokens * heads * head_dim elements
    (``head_dim``: the rotated dims; the rest of a partially rotated head passes through)."""
    return ROTARY_FLOPS_PER_ELEMENT * tokens * heads * head_dim


def sum_quadratic(f1, f2, f3, steps: int):
    """Exact sum of f(1) + ... + f(steps) for f a polynomial of degree <= 2 in the step number,
    from f(1), f(2), f(3): Newton's forward differences and the hockey stick identity, integers only
    (see :mod:`costmodel.stepsum`). Decode costs are of this form: affine in the context with a KV
    cache, quadratic without.
    """
    return stepsum.prefix_sum(stepsum.newton(f1, f2, f3), steps)
