"""Hardware profiles: what an accelerator can do, in SI units, read from data files (not code).

The catalog ships as ``costmodel/data/hardware.json``; users add their own with ``--hardware FILE``
(a profile written by ``costmodel calibrate`` is one). A file holds one profile (a JSON object
with an ``id``), a list of them, or an object ``{"hardware": [...]}``. Every figure is SI:
``memory_bytes`` (vendor "80 GB" read as 80e9 bytes) beside ``memory_reported_bytes`` (the total the
device reports: nvidia-smi, torch's ``total_memory``; what plans budget against where known),
``memory_bandwidth_bytes_per_s``, dense
``peak_flops_per_s`` per dtype, link bandwidths per direction. Bad files raise
:class:`~costmodel.errors.SpecError` naming the file, the entry and the field.

Efficiencies say how much of a peak is achievable: ``achievable = peak * efficiency``. A profile may
carry its own (``costmodel calibrate`` writes measured peaks with efficiency 1); otherwise the
defaults below apply, and every output states the ones used.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources

from .errors import SpecError, did_you_mean, parse_profiles, read_json_file

FLOPS_DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8", "int8")
KINDS = ("gpu", "cpu")
# GPU architectures the shape-aware rates know (costmodel.shapes): NVIDIA SM generations, AMD CDNA.
ARCHITECTURES = ("volta", "turing", "ampere", "ada", "hopper", "blackwell", "cdna2", "cdna3", "cdna4", "other")

# Defaults where a profile gives none (stated in every output that uses them):
DEFAULT_FLOPS_EFFICIENCY = 0.7  # large GEMMs in cuBLAS/rocBLAS reach ~60-80 % of the dense peak
DEFAULT_BANDWIDTH_EFFICIENCY = 0.8  # streaming kernels reach ~80-90 % of HBM/GDDR peak
DEFAULT_INTERCONNECT_EFFICIENCY = 0.8  # NCCL all-reduce bus bandwidth vs link peak
DEFAULT_LINK_LATENCY_S = 1e-6  # per ring step of an all-reduce (NCCL small-message regime)
DEFAULT_OP_OVERHEAD_S = 0.0  # per op launch/dispatch: 0 for catalog GPUs (CUDA-graph style serving)

_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")

_REQUIRED = ("id", "name", "peak_flops_per_s", "memory_bytes", "memory_bandwidth_bytes_per_s")
_OPTIONAL = ("kind", "elementwise_flops_per_s", "matmul_bandwidth_bytes_per_s", "interconnect", "interconnect_bandwidth_bytes_per_s", "interconnect_gpus",
             "pcie_bandwidth_bytes_per_s", "memory_reported_bytes", "memory_reported_source", "flops_efficiency", "bandwidth_efficiency",
             "interconnect_efficiency", "link_latency_s", "op_overhead_s", "sources", "notes",
             "calibration", "architecture", "sm_count", "shared_memory_per_sm_bytes", "l2_cache_bytes",
             "boost_clock_hz", "gemm_tiles")
# The fields the shape-aware rates read (costmodel.shapes); each catalog GPU cites its source for them.
SHAPE_FIELDS = ("architecture", "sm_count", "shared_memory_per_sm_bytes", "l2_cache_bytes", "boost_clock_hz")


@dataclass(frozen=True)
class Hardware:
    """One accelerator (or CPU). SI units throughout; ``None`` where a figure does not exist."""

    id: str  # lowercase, hyphenated: "h100-sxm"
    name: str
    peak_flops_per_s: dict = field(hash=False)  # dense peak per dtype in FLOPS_DTYPES; None: unsupported
    memory_bytes: int  # capacity as sold, SI ("80 GB" = 80e9)
    memory_bandwidth_bytes_per_s: float
    kind: str = "gpu"
    # FLOP/s of element-wise ops (vector units, exp/tanh) per dtype where it differs from the matmul
    # peak (CPUs; a calibrated profile measures it); None: element-wise ops use peak_flops_per_s.
    elementwise_flops_per_s: dict | None = field(default=None, hash=False)
    # Weight-streaming rate of matmuls with few rows (decode), where it differs from the copy bandwidth
    # (a CPU core streams a matrix through a GEMV slower than it copies memory; calibrate measures
    # it); None: memory-bound matmuls use memory_bandwidth_bytes_per_s.
    matmul_bandwidth_bytes_per_s: float | None = None
    interconnect: str | None = None  # GPU-to-GPU fabric: NVLink, xGMI, ...
    interconnect_bandwidth_bytes_per_s: float | None = None  # per direction, per GPU
    interconnect_gpus: int = 1  # GPUs the fabric joins all-to-all (8: HGX baseboard; 2: a bridge)
    pcie_bandwidth_bytes_per_s: float | None = None  # per direction
    # Total the device reports (nvidia-smi "81559MiB" = 81559 * 2**20 bytes); None: not known, plans
    # use memory_bytes. memory_reported_source says where the figure comes from (or why there is none).
    memory_reported_bytes: int | None = None
    memory_reported_source: str = ""
    flops_efficiency: float | None = None  # None: DEFAULT_FLOPS_EFFICIENCY
    bandwidth_efficiency: float | None = None
    interconnect_efficiency: float | None = None
    link_latency_s: float | None = None  # per ring step of an all-reduce
    op_overhead_s: float = 0.0  # launch/dispatch time added to every op
    sources: dict = field(default_factory=dict, hash=False, compare=False)
    notes: str = ""
    calibration: dict | None = field(default=None, hash=False, compare=False)  # raw measurements
    # What the shape-aware rates (costmodel.shapes) read; None where unknown (then they fall back to
    # the flat rates). From the vendor whitepapers / CUDA programming guide (see each entry's sources).
    architecture: str | None = None  # one of ARCHITECTURES
    sm_count: int | None = None  # streaming multiprocessors (NVIDIA) / compute units (AMD) enabled
    shared_memory_per_sm_bytes: int | None = None  # max shared memory (LDS) one SM/CU can give its blocks
    l2_cache_bytes: int | None = None
    boost_clock_hz: float | None = None  # the clock the dense tensor peak is quoted at
    # output tile shapes (rows, cols) the GEMM library picks from, most efficient first; None: the
    # default set of costmodel.shapes (NVIDIA's matrix-multiplication performance guide)
    gemm_tiles: tuple | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        src = f"hardware {self.id!r}"
        if not isinstance(self.id, str) or not _ID.match(self.id):
            raise SpecError(f"hardware id must be lowercase letters, digits and hyphens "
                            f"(e.g. 'h100-sxm'), got {self.id!r}")
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"{src}: name must be a non-empty string, got {self.name!r}")
        if self.kind not in KINDS:
            raise SpecError(f"{src}: unknown kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        if not isinstance(self.peak_flops_per_s, dict):
            raise SpecError(f"{src}: peak_flops_per_s must be an object of dtype: FLOP/s, "
                            f"got {self.peak_flops_per_s!r}")
        unknown = set(self.peak_flops_per_s) - set(FLOPS_DTYPES)
        if unknown:
            raise SpecError(f"{src}: peak_flops_per_s has unknown dtype {sorted(unknown)[0]!r}; "
                            f"allowed: {', '.join(FLOPS_DTYPES)}")
        peaks = {d: self.peak_flops_per_s.get(d) for d in FLOPS_DTYPES}
        for d, v in peaks.items():
            if v is not None:
                _positive(src, f"peak_flops_per_s.{d}", v)
        if all(v is None for v in peaks.values()):
            raise SpecError(f"{src}: peak_flops_per_s needs at least one dtype with a number; "
                            f"dtypes: {', '.join(FLOPS_DTYPES)}")
        object.__setattr__(self, "peak_flops_per_s", {d: None if v is None else float(v)
                                                      for d, v in peaks.items()})
        if self.elementwise_flops_per_s is not None:
            ew = self.elementwise_flops_per_s
            if not isinstance(ew, dict) or set(ew) - set(FLOPS_DTYPES):
                raise SpecError(f"{src}: elementwise_flops_per_s must be an object of dtype: FLOP/s with "
                                f"dtypes from {', '.join(FLOPS_DTYPES)}, got {ew!r}")
            for d, v in ew.items():
                if v is not None:
                    _positive(src, f"elementwise_flops_per_s.{d}", v)
            object.__setattr__(self, "elementwise_flops_per_s",
                               {d: None if ew.get(d) is None else float(ew[d]) for d in FLOPS_DTYPES})
        object.__setattr__(self, "memory_bytes", _positive_count(src, "memory_bytes", self.memory_bytes))
        if self.memory_reported_bytes is not None:
            object.__setattr__(self, "memory_reported_bytes",
                               _positive_count(src, "memory_reported_bytes", self.memory_reported_bytes))
        if not isinstance(self.memory_reported_source, str):
            raise SpecError(f"{src}: memory_reported_source must be a string, got {self.memory_reported_source!r}")
        _positive(src, "memory_bandwidth_bytes_per_s", self.memory_bandwidth_bytes_per_s)
        for f in ("interconnect_bandwidth_bytes_per_s", "pcie_bandwidth_bytes_per_s", "link_latency_s",
                  "matmul_bandwidth_bytes_per_s"):
            if getattr(self, f) is not None:
                _positive(src, f, getattr(self, f))
        object.__setattr__(self, "interconnect_gpus",
                           _positive_count(src, "interconnect_gpus", self.interconnect_gpus))
        for f in ("flops_efficiency", "bandwidth_efficiency", "interconnect_efficiency"):
            v = getattr(self, f)
            if v is not None:
                _number(src, f, v)
                if not 0 < v <= 1:
                    raise SpecError(f"{src}: {f} must be in (0, 1], got {v}")
        _number(src, "op_overhead_s", self.op_overhead_s)
        if self.op_overhead_s < 0:
            raise SpecError(f"{src}: op_overhead_s must be >= 0, got {self.op_overhead_s}")
        if self.architecture is not None and self.architecture not in ARCHITECTURES:
            raise SpecError(f"{src}: unknown architecture {self.architecture!r}; allowed: {', '.join(ARCHITECTURES)}")
        for f in ("sm_count", "shared_memory_per_sm_bytes", "l2_cache_bytes"):
            if getattr(self, f) is not None:
                object.__setattr__(self, f, _positive_count(src, f, getattr(self, f)))
        if self.boost_clock_hz is not None:
            _positive(src, "boost_clock_hz", self.boost_clock_hz)
            if not 1e8 <= self.boost_clock_hz <= 1e10:
                raise SpecError(f"{src}: boost_clock_hz must be in hertz (1e8 .. 1e10), got {self.boost_clock_hz}")
        if self.gemm_tiles is not None:
            tiles = self.gemm_tiles
            if (not isinstance(tiles, (list, tuple)) or not tiles
                    or not all(isinstance(t, (list, tuple)) and len(t) == 2 for t in tiles)):
                raise SpecError(f"{src}: gemm_tiles must be a non-empty list of [rows, cols] pairs, got {tiles!r}")
            object.__setattr__(self, "gemm_tiles", tuple(
                (_positive_count(src, "gemm_tiles rows", r), _positive_count(src, "gemm_tiles cols", c))
                for r, c in tiles))
        if self.calibration is not None:  # op tables and curves (costmodel.optable, .curves): validated on load
            from .curves import parse_curves
            from .optable import parse_op_tables

            parse_op_tables(self.calibration, src)
            parse_curves(self.calibration, src)

    @property
    def capacity_bytes(self) -> int:
        """The capacity plans budget against: the reported total where known, else the marketed one."""
        return self.memory_bytes if self.memory_reported_bytes is None else self.memory_reported_bytes

    @property
    def capacity_figure(self) -> str:
        """Which figure :attr:`capacity_bytes` is: "reported" or "marketed"."""
        return "marketed" if self.memory_reported_bytes is None else "reported"

    def capacity_label(self) -> str:
        """The capacity and which figure it is, for text output: "85.52 GB (reported by the device)"."""
        which = "reported by the device" if self.memory_reported_bytes is not None else "marketed figure"
        return f"{self.capacity_bytes / 1e9:,.2f} GB ({which})"

    # Achievable rates: peak x efficiency.
    @property
    def flops_efficiency_used(self) -> float:
        return DEFAULT_FLOPS_EFFICIENCY if self.flops_efficiency is None else self.flops_efficiency

    @property
    def bandwidth_efficiency_used(self) -> float:
        return DEFAULT_BANDWIDTH_EFFICIENCY if self.bandwidth_efficiency is None else self.bandwidth_efficiency

    @property
    def interconnect_efficiency_used(self) -> float:
        return (DEFAULT_INTERCONNECT_EFFICIENCY if self.interconnect_efficiency is None
                else self.interconnect_efficiency)

    @property
    def link_latency_s_used(self) -> float:
        return DEFAULT_LINK_LATENCY_S if self.link_latency_s is None else self.link_latency_s

    def peak_for(self, dtype: str) -> float:
        """Dense peak FLOP/s for compute in ``dtype``; SpecError if this hardware has none."""
        peak = self.peak_flops_per_s.get(dtype)
        if peak is None:
            have = [d for d in FLOPS_DTYPES if self.peak_flops_per_s.get(d) is not None]
            raise SpecError(f"{self.id} has no {dtype} peak FLOP/s; dtypes it has: {', '.join(have)} "
                            "(choose another --dtype, or calibrate that dtype)")
        return peak

    def achievable_flops_per_s(self, dtype: str) -> float:
        return self.peak_for(dtype) * self.flops_efficiency_used

    def achievable_elementwise_flops_per_s(self, dtype: str) -> float:
        """Element-wise ops: their own peak where the profile has one, else the matmul peak."""
        ew = (self.elementwise_flops_per_s or {}).get(dtype)
        return (self.peak_for(dtype) if ew is None else ew) * self.flops_efficiency_used

    @property
    def achievable_bandwidth_bytes_per_s(self) -> float:
        return self.memory_bandwidth_bytes_per_s * self.bandwidth_efficiency_used

    @property
    def achievable_matmul_bandwidth_bytes_per_s(self) -> float:
        """Memory-bound matmuls: their own streaming rate where the profile has one."""
        bw = self.matmul_bandwidth_bytes_per_s or self.memory_bandwidth_bytes_per_s
        return bw * self.bandwidth_efficiency_used

    def link_for(self, gpus: int) -> tuple[str, float] | None:
        """The link ``gpus`` GPUs talk over and its per-direction bandwidth, or None if there is none.

        The GPU-to-GPU fabric when they all fit in its domain (``interconnect_gpus``), else PCIe.
        """
        if gpus <= self.interconnect_gpus and self.interconnect_bandwidth_bytes_per_s:
            return (self.interconnect or "interconnect", self.interconnect_bandwidth_bytes_per_s)
        if self.pcie_bandwidth_bytes_per_s:
            return ("PCIe", self.pcie_bandwidth_bytes_per_s)
        return None

    def efficiencies(self) -> dict:
        """The efficiencies used, and whether each is the profile's own or the default."""
        return {
            "flops": self.flops_efficiency_used,
            "bandwidth": self.bandwidth_efficiency_used,
            "interconnect": self.interconnect_efficiency_used,
            "source": ("command line" if "efficiencies_given" in self.sources
                       else "profile" if self.flops_efficiency is not None else "default"),
        }

    def to_dict(self) -> dict:
        d = {
            "id": self.id, "name": self.name, "kind": self.kind,
            "peak_flops_per_s": dict(self.peak_flops_per_s),
            "elementwise_flops_per_s": None if self.elementwise_flops_per_s is None
            else dict(self.elementwise_flops_per_s),
            "memory_bytes": self.memory_bytes,
            "memory_reported_bytes": self.memory_reported_bytes,
            "memory_reported_source": self.memory_reported_source,
            "memory_bandwidth_bytes_per_s": self.memory_bandwidth_bytes_per_s,
            "interconnect": self.interconnect,
            "interconnect_bandwidth_bytes_per_s": self.interconnect_bandwidth_bytes_per_s,
            "interconnect_gpus": self.interconnect_gpus,
            "pcie_bandwidth_bytes_per_s": self.pcie_bandwidth_bytes_per_s,
            "flops_efficiency": self.flops_efficiency,
            "bandwidth_efficiency": self.bandwidth_efficiency,
            "interconnect_efficiency": self.interconnect_efficiency,
            "link_latency_s": self.link_latency_s,
            "op_overhead_s": self.op_overhead_s,
            "sources": dict(self.sources),
        }
        for f in SHAPE_FIELDS:  # added keys (issue 13): only where the profile has them
            if getattr(self, f) is not None:
                d[f] = getattr(self, f)
        if self.gemm_tiles is not None:
            d["gemm_tiles"] = [list(t) for t in self.gemm_tiles]
        if self.notes:
            d["notes"] = self.notes
        if self.calibration is not None:
            d["calibration"] = self.calibration
        return d


def _number(src, name, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
        raise SpecError(f"{src}: {name} must be a number, got {v!r}")


def _positive(src, name, v) -> None:
    _number(src, name, v)
    if v <= 0:
        raise SpecError(f"{src}: {name} must be > 0, got {v}")


def _positive_count(src, name, v) -> int:
    """An exact positive integer; a float is accepted only if it is whole (JSON ``80e9``)."""
    _positive(src, name, v)
    if isinstance(v, float):
        if not v.is_integer():
            raise SpecError(f"{src}: {name} must be a whole number, got {v}")
        v = int(v)
    return v


def hardware_from_dict(d: object, source: str = "hardware") -> Hardware:
    """Build a :class:`Hardware` from one parsed JSON entry; errors name ``source`` and the field."""
    if not isinstance(d, dict):
        raise SpecError(f"{source}: a hardware entry must be a JSON object, got {type(d).__name__}")
    where = f"{source}: entry {d.get('id')!r}" if "id" in d else f"{source}: entry"
    for k in _REQUIRED:
        if k not in d:
            raise SpecError(f"{where}: missing required field {k!r} "
                            f"(required: {', '.join(_REQUIRED)})")
    unknown = [k for k in d if k not in _REQUIRED + _OPTIONAL]
    if unknown:
        raise SpecError(f"{where}: unknown field {unknown[0]!r}; allowed: "
                        f"{', '.join(_REQUIRED + _OPTIONAL)}")
    kw = {k: d[k] for k in _REQUIRED + _OPTIONAL if k in d}
    if kw.get("interconnect_gpus") is None:
        kw.pop("interconnect_gpus", None)
    if kw.get("op_overhead_s") is None:
        kw.pop("op_overhead_s", None)
    if "sources" in kw and not isinstance(kw["sources"], dict):
        raise SpecError(f"{where}: sources must be an object of field: source, got {kw['sources']!r}")
    if "notes" in kw and not isinstance(kw["notes"], str):
        raise SpecError(f"{where}: notes must be a string")
    try:
        return Hardware(**kw)
    except SpecError as e:
        raise SpecError(f"{source}: {e}") from None


def parse_hardware(data: object, source: str) -> list[Hardware]:
    """Profiles from parsed JSON: one object with an ``id``, a list, or ``{"hardware": [...]}``."""
    return parse_profiles(data, "hardware", "a hardware", source, hardware_from_dict)


def load_hardware_file(path: str) -> list[Hardware]:
    """Read a user's hardware file (a calibrated profile, or entries in the catalog's format)."""
    data = read_json_file(path, "hardware file")
    return parse_hardware(data, f"hardware file {os.path.basename(path)!r}")


_CATALOG: list[Hardware] | None = None


def catalog() -> list[Hardware]:
    """The built-in catalog (read once, on first use)."""
    global _CATALOG
    if _CATALOG is None:
        text = resources.files("costmodel").joinpath("data/hardware.json").read_text(encoding="utf-8")
        _CATALOG = parse_hardware(json.loads(text), "built-in catalog")
    return list(_CATALOG)


def hardware_ids() -> list[str]:
    return [h.id for h in catalog()]


def get_hardware(gpu: str | None = None, hardware_file: str | None = None) -> Hardware:
    """Resolve ``--gpu NAME`` and/or ``--hardware FILE`` to one profile.

    - FILE alone: its only profile (a file with several needs ``--gpu`` to pick one);
    - NAME alone: the catalog entry;
    - both: NAME looked up in FILE first, then in the catalog.
    """
    if gpu is None and hardware_file is None:
        raise SpecError("no hardware given: use --gpu NAME (see `costmodel hardware`) or --hardware FILE")
    user = load_hardware_file(hardware_file) if hardware_file is not None else []
    if gpu is None:
        if len(user) > 1:
            raise SpecError(f"hardware file {hardware_file!r} holds {len(user)} profiles "
                            f"({', '.join(h.id for h in user)}); pick one with --gpu")
        return user[0]
    key = gpu.lower()
    for h in user + catalog():
        if h.id == key:
            return h
    known = [h.id for h in user] + hardware_ids()
    raise SpecError(f"unknown GPU {gpu!r}; known: {', '.join(known)} (or give --hardware FILE)"
                    f"{did_you_mean(gpu, known)}")
