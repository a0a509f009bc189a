"""Progress on stderr for the long commands (profile, report --html, ...), drawn by tqdm.

Shown only when stderr is a terminal (never in pipes, logs or tests) and tqdm is installed (it
comes with the ``profile`` and ``plots`` extras); otherwise every call here does nothing.
"""

from __future__ import annotations

import sys


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def enabled(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)()) and _tqdm() is not None


def over(items, desc: str, show: bool | None = None):
    """``items``, wrapped in a progress bar named ``desc`` when shown (default: stderr is a terminal)."""
    items = list(items)
    if not (enabled() if show is None else show) or _tqdm() is None:
        return items
    return _tqdm()(items, desc=desc, unit="step", leave=False, file=sys.stderr)


class Stages:
    """A bar over named stages of unknown count: ``say(msg)`` advances it and shows ``msg``
    (the reference runner's progress callback); ``close()`` removes it."""

    def __init__(self, desc: str, show: bool | None = None):
        tqdm = _tqdm()
        self.bar = (tqdm(desc=desc, unit="stage", leave=False, file=sys.stderr,
                         bar_format="{desc}: {n_fmt} stages [{elapsed}] {postfix}")
                    if tqdm is not None and (enabled() if show is None else show) else None)

    def __call__(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(msg, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
