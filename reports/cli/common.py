"""What every command shares: the group, one-line errors with exit code 2, option bundles.

Each command module registers itself on :data:`main` and stays light at import: anything heavy
(torch, pandas, matplotlib) is imported inside the command function, so ``costmodel --help`` and
the analytic commands answer quickly.
"""

from __future__ import annotations

import functools
import json
import sys

import click

from costmodel.dtypes import DTYPE_BITS, canonical_dtype
from costmodel.engine import engine_ids, load_engine
from costmodel.errors import SpecError
from costmodel.hardware import get_hardware
from costmodel.quant import QUANT_CHOICES
from costmodel.sampling import STRATEGIES
from costmodel.spec import LOGITS_MODES, Workload


# The distribution's name on PyPI ("costmodel" there is someone else's Flask app); the import
# packages and the command keep the name costmodel.
DISTRIBUTION = "llm-costmodel"


def install_hint(extra: str) -> str:
    """How to install an extra, for error messages: by name, or from a checkout."""
    return f"pip install '{DISTRIBUTION}[{extra}]' (from a checkout: pip install -e '.[{extra}]')"


class InputError(click.ClickException):
    """Bad user input: printed as one ``Error: ...`` line, exit code 2."""

    exit_code = 2


def _one_line(e: click.UsageError) -> InputError:
    msg = e.format_message()
    if e.ctx is not None:
        msg = f"{e.ctx.command_path}: {msg}"
    return InputError(msg.replace("\n", " "))


class Command(click.Command):
    """A click command whose usage errors are one line (no usage block) with exit code 2."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            raise _one_line(e) from None


class Group(click.Group):
    command_class = Command

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            raise _one_line(e) from None

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            raise _one_line(e) from None


Group.group_class = Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name=DISTRIBUTION)
def main() -> None:
    """What running a transformer costs: FLOPs, bytes, memory and latency, prefill versus decode."""


# Optional dependencies and the extra that installs each.
_EXTRAS = {"torch": "profile", "fvcore": "profile", "safetensors": "profile", "matplotlib": "plots",
           "pyarrow": "sweep"}


def input_errors(fn):
    """Turn the library's :class:`SpecError` into a one-line exit-2 error, and a missing optional
    dependency (torch for the commands that run a model, matplotlib for plots) into one line that
    names the extra to install."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpecError as e:
            raise InputError(str(e)) from None
        except ModuleNotFoundError as e:
            root = (e.name or "").split(".")[0]
            if root not in _EXTRAS:
                raise
            ctx = click.get_current_context(silent=True)
            what = ctx.command_path if ctx is not None else "this command"
            raise InputError(f"{what} needs {root}, which is not installed: "
                             f"{install_hint(_EXTRAS[root])}") from None

    return wrapper


def complete_model(ctx, param, incomplete: str):
    """Shell completion of MODEL: the built-in names starting with what is typed; paths to configs are
    completed by the shell itself (click returns a "file" completion item when it looks like a path)."""
    from click.shell_completion import CompletionItem

    from costmodel.models import preset_names

    if "/" in incomplete or incomplete.startswith("."):
        return [CompletionItem(incomplete, type="file")]
    return [CompletionItem(n) for n in preset_names() if n.startswith(incomplete)]


def complete_gpu(ctx, param, incomplete: str):
    """Shell completion of --gpu: the catalog's hardware ids starting with what is typed."""
    from click.shell_completion import CompletionItem

    from costmodel.hardware import hardware_ids

    return [CompletionItem(n) for n in hardware_ids() if n.startswith(incomplete.lower())]


def model_argument(fn):
    return click.argument("model", metavar="MODEL", shell_complete=complete_model)(fn)


# Activation dtypes: every format of 8 bits or more (int4 is for weights and the KV cache).
ACT_DTYPES = tuple(d for d, bits in DTYPE_BITS.items() if bits >= 8)

# Each workload option once: parameter name -> (flags, click keywords). Commands take the ones they
# need, in their order, changing a default, choices or help where theirs differ (see options()).
WORKLOAD_OPTIONS = {
    "batch": (("--batch", "-b"), dict(type=int, default=1, show_default=True, help="Sequences in the batch.")),
    "prompt": (("--prompt", "-s"), dict(
        type=int, default=512, show_default=True,
        help="Prompt length in tokens (encoder-decoder: the source; encoder: the input).")),
    "gen": (("--gen", "-n"), dict(
        type=int, default=None,
        help="Tokens generated per sequence (prefill yields the first; gen - 1 decode steps). "
             "[default: 128; 1 for encoder-only models]")),
    "decoder_prompt": (("--decoder-prompt",), dict(type=int, default=1, show_default=True,
                                                   help="Encoder-decoder: tokens the decoder starts from.")),
    "dtype": (("--dtype",), dict(default="bf16", show_default=True,
                                 help=f"Weights and activations: {', '.join(ACT_DTYPES)}.")),
    "weight_dtype": (("--weight-dtype",), dict(
        default=None, help=f"Weights only (overrides --dtype): {', '.join(DTYPE_BITS)}.")),
    "kv_dtype": (("--kv-dtype",), dict(default=None,
                                       help="KV cache (default: the activation dtype); int4 allowed.")),
    "quant": (("--quant",), dict(
        type=click.Choice(QUANT_CHOICES), default="none", show_default=True,
        help="Deployed quantisation of the blocks' linear layers, scales and zeros counted: AWQ/GPTQ int4 "
             "group 128, int8 per channel (weight-only, computed at --dtype), fp8 W8A8 per tensor/channel "
             "(fp8 compute; GPUs with fp8 only). --weight-dtype is then the other tensors' dtype.")),
    "logits": (("--logits",), dict(type=click.Choice(LOGITS_MODES), default="last", show_default=True,
                                   help="Prefill LM head for the last position only, or every position.")),
    "no_kv_cache": (("--no-kv-cache",), dict(is_flag=True, help="Decode recomputes the whole prefix every step.")),
    "causal": (("--causal",), dict(is_flag=True, help="Count only the lower triangle of attention scores.")),
    "beams": (("--beams",), dict(type=int, default=1, show_default=True,
                                 help="Beam width (multiplies the decode batch).")),
    "strategy": (("--strategy",), dict(type=click.Choice(STRATEGIES), default="greedy", show_default=True,
                                       help="Decoding strategy (its per-step sampling ops are counted).")),
    "top_k": (("--top-k",), dict(type=int, default=50, show_default=True, help="k of top_k and top_k_top_p.")),
    "top_p": (("--top-p",), dict(type=float, default=0.9, show_default=True, help="p of top_p and top_k_top_p.")),
    "temperature": (("--temperature",), dict(type=float, default=1.0, show_default=True,
                                             help="Sampling temperature.")),
}
SIZES = ("batch", "prompt", "gen")

HARDWARE_OPTIONS = {
    "gpu": (("--gpu",), dict(metavar="NAME", default=None, shell_complete=complete_gpu,
                             help="Hardware id from `costmodel hardware` (or from --hardware FILE).")),
    "hardware_file": (("--hardware", "hardware_file"), dict(
        metavar="FILE", default=None,
        help="Hardware profile file (e.g. from `costmodel calibrate`); with several profiles in it, "
             "pick one with --gpu.")),
}


def options(table: dict, names, changes: dict):
    """A decorator adding the options ``names`` of ``table`` in that order, each with its click
    keywords updated by ``changes[name]`` (a command's own default, choices or help)."""
    unknown = set(changes) - set(names)
    assert not unknown, f"changes to options not taken: {sorted(unknown)}"
    opts = [click.option(*table[n][0], **{**table[n][1], **changes.get(n, {})}) for n in names]

    def deco(fn):
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return deco


def workload_options(*names, **changes):
    """The workload options ``names`` (default: all of :data:`WORKLOAD_OPTIONS`, in its order);
    ``changes``: {name: click keywords} where a command's option differs."""
    return options(WORKLOAD_OPTIONS, names or tuple(WORKLOAD_OPTIONS), changes)


def hardware_options(*names, **changes):
    """--gpu NAME and --hardware FILE (a calibrated profile or entries in the catalog's format);
    ``names`` and ``changes`` as in :func:`workload_options`."""
    return options(HARDWARE_OPTIONS, names or tuple(HARDWARE_OPTIONS), changes)


def build_workload(batch=1, prompt=512, gen=None, dtype="bf16", weight_dtype=None, kv_dtype=None, logits="last",
                   no_kv_cache=False, causal=False, beams=1, decoder_prompt=1, strategy="greedy", top_k=50,
                   top_p=0.9, temperature=1.0, quant="none") -> Workload:
    """The :class:`Workload` of the workload options' values (``gen`` None: 128)."""
    dtype = canonical_dtype(dtype, "dtype")
    return Workload(batch=batch, prompt=prompt, gen=128 if gen is None else gen,
                    weight_dtype=weight_dtype or dtype, act_dtype=dtype, kv_dtype=kv_dtype, logits=logits,
                    kv_cache=not no_kv_cache, causal=causal, beams=beams, decoder_prompt=decoder_prompt,
                    strategy=strategy, top_k=top_k, top_p=top_p, temperature=temperature, quant=quant)


def pop_workload(kwargs: dict, spec=None) -> Workload:
    """Remove the workload options from a command's kwargs and build the Workload. ``--gen`` not
    given means 128, or 1 for an encoder-only ``spec`` (it generates nothing)."""
    values = {k: kwargs.pop(k) for k in WORKLOAD_OPTIONS if k in kwargs}
    if values.get("gen") is None and spec is not None and spec.arch == "encoder":
        values["gen"] = 1
    return build_workload(**values)


_EFFICIENCIES = {"flops_efficiency": "FLOP/s", "bandwidth_efficiency": "memory bandwidth",
                 "interconnect_efficiency": "interconnect bandwidth"}
_META = "costmodel.efficiencies"


def _store_efficiency(ctx, param, value):
    if value is not None:
        ctx.meta.setdefault(_META, {})[param.name] = value
    return value


def efficiency_options(fn):
    """--flops-efficiency, --bandwidth-efficiency, --interconnect-efficiency: the share of each peak
    that is achievable, overriding the hardware profile's (or the defaults) for this run. Applied by
    :func:`with_efficiencies` wherever the command reads its hardware."""
    for name, what in reversed(list(_EFFICIENCIES.items())):
        fn = click.option(f"--{name.replace('_', '-')}", name, type=click.FloatRange(0, 1, min_open=True),
                          default=None, expose_value=False, callback=_store_efficiency, metavar="X",
                          help=f"Achievable share of the peak {what}, in (0, 1] (default: the profile's, "
                               "else the stated default).")(fn)
    return fn


def with_efficiencies(hw):
    """``hw`` with the efficiencies given on the command line (if any), the output saying so."""
    from dataclasses import replace

    ctx = click.get_current_context(silent=True)
    given = {} if ctx is None else ctx.meta.get(_META, {})  # click shares meta with every nested context
    if hw is None or not given:
        return hw
    sources = {**hw.sources, "efficiencies_given": ", ".join(f"{k}={v:g}" for k, v in given.items()) + " (command line)"}
    return replace(hw, **given, sources=sources)


def read_hardware(gpu: str | None, hardware_file: str | None):
    """The profile of --gpu / --hardware (with command-line efficiencies), or None when neither is given."""
    return None if gpu is None and hardware_file is None else with_efficiencies(get_hardware(gpu, hardware_file))


def engine_option(default: str | None, help_default: str | None = None):
    """--engine NAME|FILE: a built-in engine (``costmodel engines``) or a JSON file of one; ``default``
    per command (plan and the latency/memory plots: vllm; report, sweep, profile, validate: eager)."""
    shown = help_default or default
    return click.option("--engine", "engine", metavar="NAME|FILE", default=default,
                        help=f"Engine profile: {', '.join(engine_ids())} (see `costmodel engines`) or a JSON "
                             f"file of one. [default: {shown}]")


def read_engine(value: str):
    """The :class:`costmodel.engine.Engine` of --engine (a SpecError becomes a one-line exit-2 error
    through :func:`input_errors`)."""
    return load_engine(value)


def refuse_engine(engine, what: str) -> None:
    """One line, exit 2, unless ``engine`` is the reference (eager) implementation."""
    if not engine.reference:
        raise InputError(f"{what} runs the reference (eager) implementation only, not engine {engine.id!r}: "
                         "give --engine eager, or use `costmodel plan` / `costmodel report --gpu ... "
                         f"--engine {engine.id}`")


def engine_line(engine) -> str:
    """The line every text output names its engine with."""
    return f"engine: {engine.describe()}"


def format_option(choices, default="table"):
    return click.option("--format", "fmt", type=click.Choice(choices), default=default,
                        show_default=True, help="Output format.")


def emit_json(obj) -> None:
    """Print ``obj`` as strict JSON (RFC 8259 has no Infinity or NaN): a non-finite number, e.g. the
    seconds of a hardware rate of 1e-300 FLOP/s, is refused in one line instead."""
    click.echo(json_text(obj))


def json_text(obj, indent=2) -> str:
    try:
        return json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError:
        raise InputError("the result holds a number JSON cannot carry (infinite or NaN), e.g. seconds "
                         "from a hardware rate so small that the time overflows (1e-300 FLOP/s): give "
                         "physical rates") from None


def warn(msg: str) -> None:
    click.echo(f"Warning: {msg}", err=True)


def max_load_option(help_prefix: str = ""):
    """``--max-load``: the timing commands' refusal threshold (1-minute load average per CPU)."""
    return click.option("--max-load", type=click.FloatRange(min=0), default=4.0, show_default=True,
                        help=f"{help_prefix}{'r' if help_prefix else 'R'}efuse to time when the 1-minute load average "
                             "per CPU exceeds this (0: never refuse; CPU only).")


def check_timing_load(device: str, max_load: float) -> dict:
    """The load snapshot before timing; on a CPU, refuse (a one-line LoadError) above ``max_load``
    per CPU and warn above 1 per CPU (see :func:`profiler.measure.check_load`)."""
    from profiler.measure import check_load, load_snapshot

    before = load_snapshot()
    if device == "cpu":
        note = check_load(before, max_load)
        if note:
            warn(note.removeprefix("warning: "))
    return before


def table_width(wide: bool) -> int | None:
    """The width text tables fit: None (full width, one line per op) with --wide or when stdout is
    not a terminal (a pipe or a file gets the full detail) unless COLUMNS says otherwise; else the
    terminal's width (COLUMNS, then the terminal's own, as shutil reads them)."""
    import os
    import shutil

    if wide:
        return None
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return max(int(columns), 40)
    if not stdout_is_tty():
        return None
    return max(shutil.get_terminal_size().columns, 40)


def wide_option(fn):
    return click.option("--wide", is_flag=True,
                        help="Tables at full width (phases side by side) even on a narrow terminal; "
                             "by default a terminal's width is fitted (one table per phase).")(fn)


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()
