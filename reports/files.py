"""Writing output files atomically: a temporary file in the target's folder, then a rename.

A reader never sees a half-written file, and a failed write leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile

from costmodel.errors import SpecError


def check_writable_dir(path: str, what: str = "--out") -> None:
    """Raise SpecError unless ``path`` is an existing folder we can write into."""
    if not os.path.isdir(path):
        raise SpecError(f"{what} folder {path!r} does not exist (create it first)")
    if not os.access(path, os.W_OK | os.X_OK):
        raise SpecError(f"cannot write into {what} folder {path!r}: permission denied")


def check_writable_file(path: str, what: str = "--out") -> None:
    """Raise SpecError unless ``path`` can be created or replaced (checked before any work)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise SpecError(f"{what} {path!r} is a folder; give a file name")
    if not os.path.isdir(folder):
        raise SpecError(f"cannot write {what} {path!r}: folder {folder!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SpecError(f"cannot write {what} {path!r}: permission denied")


def atomic_write(path: str, write, binary: bool = False) -> str:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it onto ``path``.

    OSError becomes a one-line :class:`SpecError`; the temporary file is removed on any failure.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    except OSError as e:
        raise SpecError(f"cannot write {path!r}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        os.unlink(tmp)
        raise SpecError(f"cannot write {path!r}: {e.strerror or e}") from None
    except BaseException:
        os.unlink(tmp)
        raise
    return path
