"""costmodel: exact FLOPs, bytes and memory of transformer inference, prefill versus decode.

The analytic core is pure arithmetic: importing it never imports torch, pandas or matplotlib.

    >>> from costmodel import get_model, analyze
    >>> r = analyze(get_model("llama-2-7b"), batch=8, prompt=2048, gen=128)
    >>> r.prefill.matmul_flops, r.memory.kv_cache_bytes   # doctest: +SKIP
"""

from .analysis import Analysis, OpCost, Phase, analyze, kv_cache_bytes, kv_cache_bytes_per_token
from .dtypes import DTYPE_BITS, nbytes
from .engine import Engine, engine_ids, load_engine
from .errors import SpecError
from .hardware import Hardware, get_hardware, hardware_ids, load_hardware_file
from .models import PRESETS, get_model, load_hf_config, preset_names
from .plan import Layout, MemoryUse, Plan, capacity_plan, max_batch, max_context, memory_use
from .roofline import Timing, decode_step_seconds, pass_seconds, predict, prefill_seconds
from .spec import LayerGroup, ModelSpec, Workload

__all__ = [
    "Analysis", "DTYPE_BITS", "LayerGroup", "ModelSpec", "OpCost", "PRESETS", "Phase", "SpecError", "Workload",
    "analyze", "get_model", "kv_cache_bytes", "kv_cache_bytes_per_token", "load_hf_config",
    "nbytes", "preset_names",
    # hardware, roofline latency, capacity planning
    "Hardware", "Layout", "MemoryUse", "Plan", "Timing", "decode_step_seconds", "get_hardware",
    "hardware_ids", "load_hardware_file", "max_batch", "max_context", "memory_use", "pass_seconds",
    "capacity_plan", "predict", "prefill_seconds",
    # engine profiles
    "Engine", "engine_ids", "load_engine",
]
__version__ = "0.1.0"
