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

from ..errors import SpecError


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
@click.version_option(package_name="costmodel")
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
                             f"pip install 'costmodel[{_EXTRAS[root]}]'") from None

    return wrapper


DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8", "int4")


def model_argument(fn):
    return click.argument("model", metavar="MODEL")(fn)


STRATEGY_CHOICES = ("greedy", "sample", "top_k", "top_p", "top_k_top_p", "beam")


def _size_options():
    return [
        click.option("--batch", "-b", type=int, default=1, show_default=True, help="Sequences in the batch."),
        click.option("--prompt", "-s", type=int, default=512, show_default=True,
                     help="Prompt length in tokens (encoder-decoder: the source; encoder: the input)."),
        click.option("--gen", "-n", type=int, default=None,
                     help="Tokens generated per sequence (prefill yields the first; gen - 1 decode steps). "
                          "[default: 128; 1 for encoder-only models]"),
    ]


def _other_workload_options():
    return [
        click.option("--decoder-prompt", type=int, default=1, show_default=True,
                     help="Encoder-decoder: tokens the decoder starts from."),
        click.option("--dtype", default="bf16", show_default=True,
                     help=f"Weights and activations: {', '.join(DTYPES[:5])}."),
        click.option("--weight-dtype", default=None, help=f"Weights only (overrides --dtype): {', '.join(DTYPES)}."),
        click.option("--kv-dtype", default=None, help="KV cache (default: the activation dtype); int4 allowed."),
        click.option("--logits", type=click.Choice(["last", "all"]), default="last", show_default=True,
                     help="Prefill LM head for the last position only, or every position."),
        click.option("--no-kv-cache", is_flag=True, help="Decode recomputes the whole prefix every step."),
        click.option("--causal", is_flag=True, help="Count only the lower triangle of attention scores."),
        click.option("--beams", type=int, default=1, show_default=True, help="Beam width (multiplies the decode batch)."),
        click.option("--strategy", type=click.Choice(STRATEGY_CHOICES), default="greedy", show_default=True,
                     help="Decoding strategy (its per-step sampling ops are counted)."),
        click.option("--top-k", type=int, default=50, show_default=True, help="k of top_k and top_k_top_p."),
        click.option("--top-p", type=float, default=0.9, show_default=True, help="p of top_p and top_k_top_p."),
        click.option("--temperature", type=float, default=1.0, show_default=True, help="Sampling temperature."),
    ]


def _apply(opts, fn):
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def workload_options(fn):
    """--batch --prompt --gen --decoder-prompt --dtype --weight-dtype --kv-dtype --logits --no-kv-cache
    --causal --beams --strategy --top-k --top-p --temperature."""
    return _apply(_size_options() + _other_workload_options(), fn)


def workload_options_without_sizes(fn):
    """The workload options but --batch, --prompt and --gen (commands that take ranges of them)."""
    return _apply(_other_workload_options(), fn)


def build_workload(batch, prompt, gen, dtype, weight_dtype, kv_dtype, logits, no_kv_cache, causal, beams,
                   decoder_prompt=1, strategy="greedy", top_k=50, top_p=0.9, temperature=1.0):
    from ..dtypes import canonical_dtype
    from ..spec import Workload

    dtype = canonical_dtype(dtype, "dtype")
    return Workload(batch=batch, prompt=prompt, gen=128 if gen is None else gen,
                    weight_dtype=weight_dtype or dtype, act_dtype=dtype, kv_dtype=kv_dtype, logits=logits,
                    kv_cache=not no_kv_cache, causal=causal, beams=beams, decoder_prompt=decoder_prompt,
                    strategy=strategy, top_k=top_k, top_p=top_p, temperature=temperature)


WORKLOAD_KEYS = ("batch", "prompt", "gen", "dtype", "weight_dtype", "kv_dtype", "logits",
                 "no_kv_cache", "causal", "beams", "decoder_prompt", "strategy", "top_k", "top_p",
                 "temperature")


def pop_workload(kwargs: dict, spec=None):
    """Remove the workload options from a command's kwargs and build the Workload. ``--gen`` not
    given means 128, or 1 for an encoder-only ``spec`` (it generates nothing)."""
    values = {k: kwargs.pop(k) for k in WORKLOAD_KEYS if k in kwargs}
    if values.get("gen") is None and spec is not None and spec.arch == "encoder":
        values["gen"] = 1
    return build_workload(**values)


def format_option(choices, default="table"):
    return click.option("--format", "fmt", type=click.Choice(choices), default=default,
                        show_default=True, help="Output format.")


def emit_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2))


def warn(msg: str) -> None:
    click.echo(f"Warning: {msg}", err=True)


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()
