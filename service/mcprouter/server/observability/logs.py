"""Logging setup: a request id on every line, JSON or text, secrets redacted.

``REQUEST_ID`` is set by the telemetry layer in each RPC's own task, so
every line logged while serving that call (and by tasks it starts, such as a
single-flight load) carries it. ``configure_logging`` installs one stderr
handler whose filter copies the id onto each record as ``request_id``
(``-`` outside a call), so both formats can show it:

* ``text``: ``2024-05-01 12:00:00,000 INFO mcprouter.server.rpc [3f2a…]: message``
* ``json``: one object per line: ``ts``, ``level``, ``logger``, ``msg``,
  ``request_id``, every ``extra=`` field, ``exc`` with the traceback.

Credentials inside URLs (``scheme://user:secret@host``) and ``password=``
pairs are masked in messages and tracebacks: drivers put DSNs in their errors.
Payloads are never logged at INFO; cache keys and outcomes only at DEBUG.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "mcprouter_request_id", default=None
)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"

_URL_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):[^@/\s]+@")
_PASSWORD_PAIR = re.compile(r"(?P<head>\b(?:password|passwd|pwd|token)\s*[=:]\s*)[^\s,;&]+", re.I)
# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request_id"}


def redact(text: str) -> str:
    """``text`` with URL credentials and ``password=`` values masked."""
    if "://" in text:
        text = _URL_CREDENTIALS.sub(r"\g<head>:***@", text)
    return _PASSWORD_PAIR.sub(r"\g<head>***", text)


class RequestIdFilter(logging.Filter):
    """Copies the current request id onto each record (``-`` outside an RPC)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always pass the record, with ``record.request_id`` set."""
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get() or "-"
        return True


class RedactingFormatter(logging.Formatter):
    """The standard text formatter with secrets masked."""

    def format(self, record: logging.LogRecord) -> str:
        """Format as usual, then mask credentials."""
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record; ``extra=`` fields become top-level keys."""

    def __init__(self, context: Callable[[], Mapping[str, str]] | None = None) -> None:
        """Create the formatter.

        Args:
            context: Extra fields for every line (e.g. the current trace id).
        """
        super().__init__()
        self._context = context

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
            "request_id": getattr(record, "request_id", None) or REQUEST_ID.get() or "-",
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                line[name] = value
        if self._context is not None:
            line.update(self._context())
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exc"] = redact(record.exc_text)
        return json.dumps(line, default=repr, ensure_ascii=False)


def configure_logging(
    level: str,
    fmt: str = "text",
    *,
    stream: TextIO | None = None,
    context: Callable[[], Mapping[str, str]] | None = None,
) -> logging.Handler:
    """Replace the root logger's handlers with one stderr handler in ``fmt``.

    Args:
        level: Root level name (``INFO``, ``DEBUG`` ...).
        fmt: ``"text"`` or ``"json"``.
        stream: Where lines go (stderr by default).
        context: Extra fields for every JSON line.

    Returns:
        The installed handler.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter(context))
    else:
        handler.setFormatter(RedactingFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # grpc's Cython layer logs every event-loop lookup at DEBUG.
    logging.getLogger("grpc._cython").setLevel(max(logging.INFO, root.level))
    # Python warnings as log records (logger "py.warnings"), not bare stderr lines.
    logging.captureWarnings(True)
    return handler
