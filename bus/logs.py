"""structlog set-up: a console renderer in a terminal, JSON lines otherwise, on stderr.

Libraries' own logging (aiokafka's above all) goes through the same renderer, so a
service's output is one format. A message repeated within ``REPEAT_WINDOW`` is let through
once; the next one that passes says how many were held back: a broker that is down for a
minute costs a few lines, not thousands. A one-shot command shows libraries nothing below
CRITICAL: its own one-line error already says what went wrong.
"""

from __future__ import annotations

import logging
import sys
import time

import structlog

REPEAT_WINDOW = 30.0


class _Bridge(logging.Handler):
    """Standard-library records rendered by structlog, repeats held back."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        since, held = self._last.get(key, (0.0, 0))
        if since and now - since < REPEAT_WINDOW:
            self._last[key] = (since, held + 1)
            return
        if len(self._last) > 1000:  # bounded: old keys are forgotten
            self._last.clear()
        self._last[key] = (now, 0)
        extra = {"repeated": held} if held else {}
        structlog.get_logger(record.name).log(
            record.levelno, record.getMessage(), library=record.name, **extra
        )


#: The name every line of this process carries (DESIGN §10), once a service names itself.
_SERVICE: dict[str, str] = {}


def name_service(name: str) -> None:
    """From now on, every log line of this process says it comes from ``name``."""
    _SERVICE["service"] = name


def _add_service(
    logger: object, method: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    for key, value in _SERVICE.items():
        event.setdefault(key, value)
    return event


def configure_logging(level: str = "INFO", service: bool = True) -> None:
    """Configure structlog once per process; ``service`` for long-running processes."""
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer()
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_service,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers[:] = [_Bridge()]
    root.setLevel(logging.WARNING if service else logging.CRITICAL)
