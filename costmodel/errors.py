"""The one exception type for bad user input.

Everything a user can get wrong (a model name, a size, a dtype, a config file) raises
:class:`SpecError`, a ``ValueError`` whose message is one line naming the field, the value and
what is allowed. The CLI turns it into that line and exit code 2; library callers catch it as a
``ValueError``. Bugs are not ``SpecError`` and are never caught by the CLI.
"""


class SpecError(ValueError):
    """Invalid user input: the message names the field, the value and the allowed values."""


MAX_INPUT_BYTES = 64 * 2**20  # a config or hardware file larger than 64 MiB is not one (the largest HF configs are ~100 kB)


def read_text_file(path: str, what: str, limit: int = MAX_INPUT_BYTES) -> str:
    """The UTF-8 text of the regular file at ``path``, at most ``limit`` bytes; a one-line SpecError
    naming ``what`` and the path when it cannot be read, is not a regular file (a FIFO, a device such
    as ``/dev/zero``, a folder), is larger than ``limit``, or is not UTF-8 (UTF-16 is named as such).

    The file is opened non-blocking, so a FIFO with no writer does not hang; its type is checked on
    the open descriptor (fstat), so it cannot change between the check and the read."""
    import os
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        raise SpecError(f"cannot read {what} {path!r}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                    else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket"
                    if stat.S_ISSOCK(st.st_mode) else "not a regular file")
            raise SpecError(f"cannot read {what} {path!r}: it is {kind}, not a regular file")
        if st.st_size > limit:
            raise SpecError(f"{what} {path!r} is {st.st_size:,} bytes; the limit is {limit:,} ({limit // 2**20} MiB)")
        chunks, size = [], 0
        while True:
            try:
                chunk = os.read(fd, 1 << 20)
            except OSError as e:
                raise SpecError(f"cannot read {what} {path!r}: {e.strerror or e}") from None
            if not chunk:
                break
            size += len(chunk)
            if size > limit:  # a file growing while read (e.g. under /proc)
                raise SpecError(f"{what} {path!r} is larger than the limit of {limit:,} bytes ({limit // 2**20} MiB)")
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or (len(data) >= 2 and (data[0] == 0) != (data[1] == 0)):
        raise SpecError(f"cannot read {what} {path!r}: it is UTF-16 text; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")  # a UTF-8 byte-order mark is tolerated
    except UnicodeDecodeError as e:
        raise SpecError(f"cannot read {what} {path!r}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                        f"{e.start}); save it as UTF-8") from None


def parse_json_text(text: str, what: str, path: str, malformed: str | None = None):
    """``json.loads(text)``; a one-line SpecError for malformed JSON, nesting too deep for the parser
    (a RecursionError) and integers of more digits than Python converts (its 4300-digit limit).
    ``malformed`` is the message's start (default: ``malformed WHAT 'PATH'``)."""
    import json

    head = malformed or f"malformed {what} {path!r}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{head}: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise SpecError(f"{head}: nested too deeply for the JSON parser") from None
    except ValueError as e:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise SpecError(f"{head}: {str(e).split(';')[0]}") from None


def read_json_file(path: str, what: str):
    """The parsed JSON of the file at ``path``; a SpecError naming ``what`` (``config``, ``hardware
    file``) and the path when it cannot be read (see :func:`read_text_file`) or is not JSON."""
    return parse_json_text(read_text_file(path, what), what, path)


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


def parse_profiles(data: object, key: str, what: str, source: str, from_dict) -> list:
    """Profiles of a data file (the hardware catalog, the engine profiles, a user's file of either):
    one object with an ``id``, a non-empty list of them, or ``{key: [...]}``; each built by
    ``from_dict(entry, source)``, ids unique. SpecError (one line, naming ``source``) otherwise."""
    if isinstance(data, dict) and key in data and "id" not in data:
        data = data[key]
    entries = [data] if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise SpecError(f"{source}: expected {what} object, a non-empty list of them, or {{\"{key}\": [...]}}")
    out, seen = [], set()
    for e in entries:
        profile = from_dict(e, source)
        if profile.id in seen:
            raise SpecError(f"{source}: duplicate {what.split()[-1]} id {profile.id!r}")
        seen.add(profile.id)
        out.append(profile)
    return out
