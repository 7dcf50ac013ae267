"""Logging for ``imgcls serve``: human-readable text, or one JSON object a line for log collectors."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, Literal, TextIO

# The attributes every LogRecord has; anything else on a record came from ``extra=`` and is emitted as a
# JSON field of its own (the start-up summary's model, variant, providers, ...).
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (json.dumps escapes the newlines of a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra that JSON cannot hold (a Path) must not cost the line.
        return json.dumps(entry, default=str)


def configure_logging(
    level: Literal["debug", "info", "warning", "error"],
    fmt: Literal["text", "json"],
    stream: TextIO | None = None,
) -> None:
    """Send every log record to stream (stderr) in the chosen format.

    The level applies to imgcls's own loggers. Other libraries stay at info or above even at debug:
    their debug output (Pillow logs every PNG chunk it reads) would bury the one line per request.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    numeric = logging.getLevelName(level.upper())
    root.setLevel(max(numeric, logging.INFO))
    logging.getLogger("imgcls").setLevel(numeric)
    # warnings.warn output goes through the handler too, so JSON logs stay JSON.
    logging.captureWarnings(True)
