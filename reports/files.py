"""Writing output files the way careful tools do.

* A new or existing **regular file** is written atomically: a temporary file in the target's
  folder, then a rename onto the target. A reader never sees a half-written file, and a failed or
  interrupted write (an exception, Ctrl-C, SIGTERM, a full disk) leaves the target as it was and
  no temporary file behind. A new file gets the mode ``0666 & ~umask`` (as ``open`` would give
  it); an existing file keeps its mode, and its owner and group where the process may set them.
* A **symlink** keeps its link: the file it points to is written (atomically when that is a
  regular file or does not exist yet), never the link replaced by a file.
* A **special file** (``/dev/null``, a device node, a FIFO, ``/proc/self/fd/1``, a terminal) is
  written through: opened for writing, never replaced.
* Missing parent folders are created (``--out new/x.csv``), with the umask's mode, as ``mkdir -p``.

Temporary files still open when the process ends are removed by an ``atexit`` hook, and SIGTERM
(when no other handler is installed) exits through ``SystemExit(143)`` so that the same clean-up
runs; :class:`OutputFile` removes its own on any exception.
"""

from __future__ import annotations

import atexit
import os
import signal
import stat
import tempfile
import threading

from costmodel.errors import SpecError

_LIVE: set[str] = set()  # temporary files not yet renamed or removed


def _remove_live() -> None:
    for tmp in list(_LIVE):
        try:
            os.unlink(tmp)
        except OSError:
            pass
        _LIVE.discard(tmp)


atexit.register(_remove_live)


def _on_sigterm(signum, frame):  # noqa: ARG001 - signal handler signature
    _remove_live()
    raise SystemExit(128 + signum)  # unwinds through every finally, as Ctrl-C does


def _guard_sigterm() -> None:
    """Install the SIGTERM clean-up once, in the main thread, unless the program has its own."""
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main interpreter, or no signals here
        pass


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _nearest_existing(path: str) -> str:
    p = os.path.abspath(path)
    while not os.path.lexists(p):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return p


def _check_creatable_dir(folder: str, what: str, target: str) -> None:
    """Raise SpecError unless ``folder`` is a writable folder or can be created (``mkdir -p``)."""
    base = _nearest_existing(folder)
    if not os.path.isdir(base):
        raise SpecError(f"cannot write {what} {target!r}: {base!r} is not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise SpecError(f"cannot write {what} {target!r}: permission denied in {base!r}")


def _is_special(path: str) -> bool:
    """True when ``path`` (links followed) exists and is not a regular file or folder."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def check_writable_dir(path: str, what: str = "--out") -> None:
    """Raise SpecError unless ``path`` is a folder we can write into, or one we can create (its
    nearest existing ancestor is a writable folder). Nothing is created here: a bad input found
    later leaves nothing behind."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise SpecError(f"{what} {path!r} is not a folder")
    if os.path.isdir(path):
        if not os.access(path, os.W_OK | os.X_OK):
            raise SpecError(f"cannot write into {what} folder {path!r}: permission denied")
        return
    _check_creatable_dir(path, what, path)


def check_writable_file(path: str, what: str = "--out") -> None:
    """Raise SpecError unless ``path`` can be written (checked before any work): a special file
    we may write to, or a regular file (new or existing) in a folder we can write into or create."""
    if os.path.isdir(path):
        raise SpecError(f"{what} {path!r} is a folder; give a file name")
    if _is_special(path):
        if not os.access(path, os.W_OK):
            raise SpecError(f"cannot write {what} {path!r}: permission denied")
        return
    real = os.path.realpath(path)
    _check_creatable_dir(os.path.dirname(real), what, path)
    if os.path.exists(real) and not os.access(real, os.W_OK):
        raise SpecError(f"cannot write {what} {path!r}: permission denied")


class OutputFile:
    """One output file being written: ``.file`` is open (text UTF-8 or binary); :meth:`commit`
    renames the temporary file onto the target (or onto another name, e.g. ``<out>.partial``);
    :meth:`discard` removes it. Used as a context manager, an exception discards it.

    ``written_through`` is True when the target is a special file written in place (then there
    is no temporary file and :meth:`commit` only closes it)."""

    def __init__(self, path: str, binary: bool = False):
        self.path = path
        self.tmp: str | None = None
        self._keep: os.stat_result | None = None
        opts = {} if binary else {"encoding": "utf-8", "newline": ""}
        mode = "wb" if binary else "w"
        if os.path.isdir(path):
            raise SpecError(f"cannot write {path!r}: it is a folder")
        self.written_through = _is_special(path)
        if self.written_through:
            try:
                self.file = open(path, mode, **opts)  # noqa: SIM115 - closed by commit/discard
            except OSError as e:
                raise SpecError(f"cannot write {path!r}: {e.strerror or e}") from None
            return
        self.real = os.path.realpath(path)  # a symlink keeps its link: its target is replaced
        folder = os.path.dirname(self.real)
        try:
            os.makedirs(folder, exist_ok=True)
            try:
                self._keep = os.stat(self.real)
            except FileNotFoundError:
                self._keep = None
            _guard_sigterm()
            fd, self.tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(self.real), dir=folder)
        except OSError as e:
            raise SpecError(f"cannot write {path!r}: {e.strerror or e}") from None
        _LIVE.add(self.tmp)
        self.file = os.fdopen(fd, mode, **opts)

    def _fail(self, e: OSError):
        self.discard()
        raise SpecError(f"cannot write {self.path!r}: {e.strerror or e}") from None

    def commit(self, path: str | None = None) -> str:
        """Finish the file: flush it to disk and rename it onto ``path`` (default: the target).
        Returns the path written."""
        try:
            if self.written_through:
                self.file.close()
                return self.path
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            target = self.real if path is None else os.path.realpath(path)
            keep = self._keep if path is None else None
            if path is not None:
                try:
                    keep = os.stat(target)
                except FileNotFoundError:
                    keep = None
            if keep is not None:
                os.chmod(self.tmp, stat.S_IMODE(keep.st_mode))
                try:
                    os.chown(self.tmp, keep.st_uid, keep.st_gid)
                except OSError:  # not ours to give away: the owner becomes this user
                    pass
            else:
                os.chmod(self.tmp, 0o666 & ~_umask())
            os.replace(self.tmp, target)
        except OSError as e:
            self._fail(e)
        _LIVE.discard(self.tmp)
        self.tmp = None
        return self.path if path is None else path

    def discard(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass
        if self.tmp is not None:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass
            _LIVE.discard(self.tmp)
            self.tmp = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
        return False


def atomic_write(path: str, write, binary: bool = False) -> str:
    """Call ``write(f)`` on an :class:`OutputFile` for ``path`` and commit it; returns ``path``.

    OSError becomes a one-line :class:`SpecError`; the temporary file is removed on any failure.
    """
    out = OutputFile(path, binary=binary)
    try:
        write(out.file)
    except OSError as e:
        out._fail(e)
    except BaseException:
        out.discard()
        raise
    return out.commit()
