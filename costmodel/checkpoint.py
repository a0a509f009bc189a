"""What a model folder's ``*.safetensors`` checkpoint holds, read from the file headers only.

A safetensors file is an 8-byte little-endian length ``N``, then ``N`` bytes of JSON, then the
tensor data (https://github.com/huggingface/safetensors, "Format")::

    {"model.embed_tokens.weight": {"dtype": "BF16", "shape": [151936, 4096], "data_offsets": [0, 1244659712]},
     ..., "__metadata__": {"format": "pt"}}

Only the length and the JSON are read, never the data; no ``safetensors`` or ``torch`` import.
A sharded checkpoint is the shards named in ``model.safetensors.index.json`` (its ``weight_map``);
without an index, every ``*.safetensors`` file of the folder.

Quantised checkpoints store packed integers (int4 as ``I32`` / ``U8``) or fp8 plus scales: their
element count is then not the model's parameter count, and their bytes are what the weights take.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field, replace

from .errors import SpecError, read_json_file

INDEX_FILE = "model.safetensors.index.json"

# The safetensors reader refuses headers over 100 MB (safetensors' MAX_HEADER_SIZE).
MAX_HEADER_BYTES = 100_000_000

# Bits per element of each safetensors dtype.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
}

# Dtypes that hold quantised weights: int8, packed int4 (GPTQ/AWQ qweight as I32, bitsandbytes as U8),
# fp8 and smaller floats.
QUANTISED_DTYPES = frozenset({"I8", "U8", "I32", "U32", "F8_E4M3", "F8_E5M2", "F4", "F6_E2M3", "F6_E3M2"})


@dataclass(frozen=True)
class Checkpoint:
    """Totals over every tensor of a safetensors checkpoint. ``num_params`` counts elements: it is
    the parameter count for a float checkpoint, not for a quantised one (see :attr:`quantised`)."""

    folder: str
    files: tuple[str, ...]  # file names within the folder, sorted
    num_tensors: int
    num_params: int  # elements, product of each tensor's shape, summed
    weights_bytes: int  # tensor data bytes (data_offsets), summed
    bytes_by_dtype: dict = field(default_factory=dict)  # safetensors dtype -> bytes
    params_by_dtype: dict = field(default_factory=dict)  # dtype -> elements
    tensors_by_dtype: dict = field(default_factory=dict)  # dtype -> tensors
    quantised_dtypes: tuple[str, ...] = ()  # QUANTISED_DTYPES that hold a matrix (2 or more dims)

    @property
    def quantised(self) -> bool:
        """True when a matrix is stored in an int8 / packed-int4 / fp8 dtype (an integer scalar or
        vector buffer beside float weights does not count)."""
        return bool(self.quantised_dtypes)

    def to_dict(self) -> dict:
        return {"folder": self.folder, "files": list(self.files), "num_tensors": self.num_tensors,
                "num_params": self.num_params, "weights_bytes": self.weights_bytes,
                "dtypes": dict(self.bytes_by_dtype), "params_by_dtype": dict(self.params_by_dtype),
                "tensors_by_dtype": dict(self.tensors_by_dtype), "quantised": self.quantised,
                "quantised_dtypes": list(self.quantised_dtypes),
                "weight_memory_from_checkpoint": self.quantised}


def read_header(path: str) -> dict:
    """The parsed JSON header of the safetensors file at ``path``: ``{name: {"dtype", "shape",
    "data_offsets"}}`` (``__metadata__`` dropped), each entry checked against the file's size.
    Reads 8 + N bytes; a one-line :class:`SpecError` for anything malformed."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise SpecError(f"corrupt safetensors file {path!r}: {size} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES or n > size - 8:
                raise SpecError(f"corrupt safetensors file {path!r}: header length {n:,} bytes, but the file has "
                                f"{size - 8:,} bytes after the length field (and headers are at most {MAX_HEADER_BYTES:,})")
            raw = f.read(n)
    except OSError as e:
        raise SpecError(f"cannot read safetensors file {path!r}: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecError(f"corrupt safetensors file {path!r}: header is not JSON ({e})".replace("\n", " ")) from None
    if not isinstance(header, dict):
        raise SpecError(f"corrupt safetensors file {path!r}: header is a JSON {type(header).__name__}, not an object")
    header.pop("__metadata__", None)
    data_bytes = size - 8 - n
    for name, t in header.items():
        _check_entry(path, name, t, data_bytes)
    return header


def _check_entry(path: str, name: str, t, data_bytes: int) -> None:
    def bad(why):
        return SpecError(f"corrupt safetensors file {path!r}: tensor {name!r} {why}")

    if not isinstance(t, dict) or not {"dtype", "shape", "data_offsets"} <= t.keys():
        raise bad("needs dtype, shape and data_offsets")
    shape, offsets = t["shape"], t["data_offsets"]
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise bad(f"has shape {shape!r}; expected a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets)
            or not offsets[0] <= offsets[1] <= data_bytes):
        raise bad(f"has data_offsets {offsets!r}; expected [begin, end] within the {data_bytes:,} data bytes")
    bits = DTYPE_BITS.get(t["dtype"])
    if bits is not None and offsets[1] - offsets[0] != (_numel(shape) * bits + 7) // 8:
        raise bad(f"spans {offsets[1] - offsets[0]:,} bytes, but shape {shape} of {t['dtype']} needs "
                  f"{(_numel(shape) * bits + 7) // 8:,}")


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def checkpoint_files(folder: str) -> list[str]:
    """The safetensors files of ``folder``: the shards its index names (each must exist), else
    every ``*.safetensors`` file; sorted names, [] when there are none."""
    index = os.path.join(folder, INDEX_FILE)
    if os.path.isfile(index):
        data = read_json_file(index, "checkpoint index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise SpecError(f"malformed checkpoint index {index!r}: expected a \"weight_map\" of tensor name -> file name")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
        if missing:
            raise SpecError(f"checkpoint index {index!r} names {len(shards)} shards, {len(missing)} missing "
                            f"from the folder (first: {missing[0]!r}); download them or remove the index")
        return shards
    return sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")
                  and os.path.isfile(os.path.join(folder, f)))


def read_checkpoint(folder: str) -> Checkpoint | None:
    """Totals of the safetensors checkpoint in ``folder`` (headers only); None when it has none."""
    files = checkpoint_files(folder)
    if not files:
        return None
    by_bytes, by_params, by_tensors, quantised = {}, {}, {}, set()
    for name in files:
        for t in read_header(os.path.join(folder, name)).values():
            dt = t["dtype"]
            by_bytes[dt] = by_bytes.get(dt, 0) + t["data_offsets"][1] - t["data_offsets"][0]
            by_params[dt] = by_params.get(dt, 0) + _numel(t["shape"])
            by_tensors[dt] = by_tensors.get(dt, 0) + 1
            if dt in QUANTISED_DTYPES and len(t["shape"]) >= 2:
                quantised.add(dt)
    return Checkpoint(folder=folder, files=tuple(files), num_tensors=sum(by_tensors.values()),
                      num_params=sum(by_params.values()), weights_bytes=sum(by_bytes.values()),
                      bytes_by_dtype=by_bytes, params_by_dtype=by_params, tensors_by_dtype=by_tensors,
                      quantised_dtypes=tuple(sorted(quantised)))


def model_checkpoint(name_or_path: str) -> Checkpoint | None:
    """The checkpoint beside a model given as :func:`costmodel.models.get_model` takes it (a folder,
    a config file, a cached Hugging Face id); None for a preset or a folder without safetensors."""
    from .models import model_folder

    folder = model_folder(name_or_path)
    return None if folder is None else read_checkpoint(folder)


def checkpoint_warnings(spec, ckpt: Checkpoint) -> list[str]:
    """A warning when the checkpoint's element count is not the spec's parameter count."""
    if ckpt.num_params == spec.num_params:
        return []
    msg = (f"the checkpoint holds {ckpt.num_params:,} elements, {spec.name}'s spec counts "
           f"{spec.num_params:,} parameters ({ckpt.num_params - spec.num_params:+,})")
    if ckpt.quantised:
        msg += (f"; the checkpoint is quantised (matrices in {', '.join(ckpt.quantised_dtypes)}), so its "
                "element count is not the parameter count")
    return [msg]


def with_checkpoint(result, ckpt: Checkpoint | None):
    """``result`` (an :class:`~costmodel.analysis.Analysis`) with the checkpoint attached, its
    parameter-count warning added, and, for a quantised checkpoint, the weight memory taken as the
    checkpoint's bytes. Per-op weight reads keep the workload's weight dtype."""
    if ckpt is None:
        return result
    memory = result.memory
    if ckpt.quantised:
        memory = replace(memory, weights_bytes=ckpt.weights_bytes)
    return replace(result, memory=memory, checkpoint=ckpt,
                   warnings=result.warnings + tuple(checkpoint_warnings(result.model, ckpt)))
