"""Storage widths of the number formats the cost model knows.

Widths are in bits so that sub-byte formats stay exact: int4 is 4 bits, half a byte, never zero
(``4 // 8 == 0`` is the classic slip). :func:`nbytes` converts an element count to bytes and
refuses a count that does not fill whole bytes; specs that use int4 are validated so that every
tensor has an even number of elements (see ``Workload.__post_init__``).
"""

from .errors import SpecError, require_choice

DTYPE_BITS: dict[str, int] = {
    "fp32": 32,
    "bf16": 16,
    "fp16": 16,
    "fp8": 8,
    "int8": 8,
    "int4": 4,
}

# Spellings users and HF config files use for the same formats.
_ALIASES = {
    "float32": "fp32", "float": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16", "half": "fp16",
    "float8": "fp8", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8", "e4m3": "fp8",
}


def canonical_dtype(name: str, field: str = "dtype") -> str:
    """Map ``name`` (``bf16``, ``bfloat16``, ...) to its canonical short name or raise SpecError."""
    if not isinstance(name, str):
        raise SpecError(f"{field} must be a string, got {name!r}")
    key = _ALIASES.get(name.lower(), name.lower())
    return require_choice(field, key, DTYPE_BITS)


def dtype_bits(dtype: str) -> int:
    return DTYPE_BITS[canonical_dtype(dtype)]


class NotWholeBytesError(SpecError, AssertionError):
    """A count of sub-byte values that does not fill whole bytes (3 int4 values: 1.5 bytes).

    A :class:`SpecError` (one line, exit code 2 in the CLI); also an ``AssertionError``, which is
    what :func:`nbytes` raised before (callers that caught that keep working)."""


def nbytes(num_elements: int, dtype: str) -> int:
    """Bytes taken by ``num_elements`` values of ``dtype``: exact, never rounded.

    A count that is not a whole number of bytes raises :class:`NotWholeBytesError` (one line).
    ``num_elements`` may also be a numpy integer array (the vectorized sweep in ``reports.sweep``):
    the same rule then holds element-wise (one ``.all()`` over the array, no per-element Python).
    """
    width = DTYPE_BITS[dtype]
    if width % 8 == 0:  # whole bytes per element: nothing to check (no array pass in the sweep)
        return num_elements * (width // 8)
    bits = num_elements * width
    whole = bits % 8 == 0
    if not (whole if isinstance(whole, bool) else whole.all()):
        shown = num_elements if isinstance(whole, bool) else "some of the counts"
        raise NotWholeBytesError(f"{shown} x {dtype} is not a whole number of bytes "
                                 f"({width}-bit values pack {8 // width} a byte)")
    return bits // 8
