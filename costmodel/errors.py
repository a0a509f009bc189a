"""The one exception type for bad user input.

Everything a user can get wrong (a model name, a size, a dtype, a config file) raises
:class:`SpecError`, a ``ValueError`` whose message is one line naming the field, the value and
what is allowed. The CLI turns it into that line and exit code 2; library callers catch it as a
``ValueError``. Bugs are not ``SpecError`` and are never caught by the CLI.
"""


class SpecError(ValueError):
    """Invalid user input: the message names the field, the value and the allowed values."""


def read_json_file(path: str, what: str):
    """The parsed JSON of the file at ``path``; a SpecError naming ``what`` (``config``, ``hardware
    file``) and the path when it cannot be read or is not JSON."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise SpecError(f"cannot read {what} {path!r}: {e.strerror or e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"malformed {what} {path!r}: {e.msg} at line {e.lineno} column {e.colno}") from None


def require_positive_int(field: str, value: object) -> int:
    """Return ``value`` if it is an int > 0 (bools are refused), else raise :class:`SpecError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{field} must be a positive integer, got {value!r}")
    if value <= 0:
        raise SpecError(f"{field} must be a positive integer, got {value}")
    return value


def require_choice(field: str, value: object, allowed) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise :class:`SpecError` listing them."""
    if value not in allowed:
        raise SpecError(f"unknown {field} {value!r}; allowed: {', '.join(sorted(allowed))}")
    return value  # type: ignore[return-value]


def close_matches(name: str, choices, n: int = 3) -> list[str]:
    """Up to ``n`` of ``choices`` spelled like ``name``, best first: those it begins (``h100`` ->
    ``h100-sxm``), then the closest by difflib's ratio (case-insensitive):
    the did-you-mean of an unknown name. Names sharing the lower-cased last path part (a Hugging Face
    id's NAME, ``Llama-2-7b-hf`` -> ``llama-2-7b``) count as close."""
    import difflib

    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    key = str(name).lower()
    keys = [key, key.rsplit("/", 1)[-1]]
    if keys[1].endswith("-hf"):
        keys.append(keys[1][:-3])
    found: list[str] = [lowered[c] for c in lowered if key and c.startswith(key)][:n]  # "h100" -> h100-sxm
    for k in keys:
        for m in difflib.get_close_matches(k, list(lowered), n=n, cutoff=0.75):
            if lowered[m] not in found:
                found.append(lowered[m])
    return found[:n]


def did_you_mean(name: str, choices) -> str:
    """"; did you mean 'a' or 'b'?" for an unknown ``name``, or "" when nothing is close."""
    found = close_matches(name, choices)
    if not found:
        return ""
    return "; did you mean " + " or ".join(repr(f) for f in found) + "?"
