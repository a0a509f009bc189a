"""The ``costmodel`` command line: each command lives in its own module and registers on ``main``."""

from . import report  # noqa: F401  (registers report, models)
from . import plan  # noqa: F401  (registers hardware, plan, calibrate)
from . import sweep  # noqa: F401  (registers sweep, plot)
from . import profile  # noqa: F401  (registers profile, validate)
from . import simulate  # noqa: F401  (registers simulate)
from .common import main

__all__ = ["main"]
