"""What the reference model accepts, without importing torch (the CLI offers these as choices)."""

ATTENTION_PATHS = ("eager", "sdpa")  # explicit matmuls and softmax, or F.scaled_dot_product_attention
REFERENCE_DTYPES = ("fp32", "bf16", "fp16")  # the formats the reference model runs in
DEVICES = ("cpu", "cuda")
