"""One rich console for log records and progress bars.

Hydra's ``job_logging``/``hydra_logging`` configs (``conf/hydra/*/rich.yaml``) build their console
handler with :func:`rich_handler`, so Python logging and :func:`progress` write through the same
``rich.console.Console`` (a live progress bar stays at the bottom while log lines scroll above it).
"""

from __future__ import annotations

import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

_CONSOLE: Console | None = None


def console() -> Console:
    """The process-wide console (stderr, so stdout stays clean for ``--cfg job`` and pipes)."""
    global _CONSOLE
    if _CONSOLE is None:
        _CONSOLE = Console(stderr=True)
        if not _CONSOLE.is_terminal:  # logs piped to a file/CI: do not wrap at 80 columns
            _CONSOLE = Console(stderr=True, width=160)
    return _CONSOLE


def rich_handler(level: int | str = logging.NOTSET) -> logging.Handler:
    """Logging handler factory used by the Hydra logging configs (``(): analogtrain.utils.logging.rich_handler``)."""
    return RichHandler(console=console(), level=level, show_path=False, rich_tracebacks=False,
                       markup=False, log_time_format="[%X]")


def setup_logging(level: int = logging.INFO) -> None:
    """Install the rich handler on the root logger when no Hydra logging config did (library use, tests)."""
    root = logging.getLogger()
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        root.addHandler(rich_handler())
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)


def is_interactive() -> bool:
    """True when the console is a terminal (progress bars make sense)."""
    return console().is_terminal and sys.stderr.isatty()
