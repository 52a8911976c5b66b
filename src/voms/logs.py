"""Logging: plain text for people, one JSON object a line for machines."""

import logging
import re
import sys
import traceback

from pythonjsonlogger.json import JsonFormatter

from voms.config import Settings


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # Alembic reports every migration-context check (/readyz) at INFO.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


# Control characters a request could smuggle into a message; a line break may stay, but
# what follows it is indented, so no logged value can start a line of its own.
_CONTROL = {
    code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F, 0x85] if code not in (0x09, 0x0A)
} | {0x2028: "\\u2028", 0x2029: "\\u2029"}


class TextFormatter(logging.Formatter):
    """The text log, safe from log injection: control characters in a message (a path,
    a name from a request) are escaped, and every continuation line is indented."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).translate(_CONTROL).replace("\n", "\n    ")


# Query parameters that carry secrets: Kannel's get-url (SMS text with a PIN, shared
# secret), sendsms credentials, and export download tokens.
_SECRET_QUERY_VALUE = re.compile(
    r"(?<=[?&])(secret|text|pin|password|token)=[^&\s]*", re.IGNORECASE
)


class QueryScrubber(logging.Filter):
    """Masks PINs and secrets in the query strings of uvicorn's access log.

    uvicorn logs the path *with* its query string (its third argument).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            masked = _SECRET_QUERY_VALUE.sub(lambda m: f"{m.group(1)}=***", args[2])
            record.args = (*args[:2], masked, *args[3:])
        return True


SCRUB_QUERY = QueryScrubber()


def traceback_without_message(exc: BaseException) -> str:
    """Where an exception happened, and its type, but not its message: the message of an
    unexpected error may quote a request, and so a PIN."""
    return "".join(
        [
            "Traceback (most recent call last):\n",
            *traceback.format_tb(exc.__traceback__),
            f"{type(exc).__module__}.{type(exc).__qualname__} (message not logged)",
        ]
    )


class TracebackScrubber(logging.Filter):
    """Logs the traceback of an error a request raised without its message (uvicorn logs
    the errors an app raises to it with both). Start-up errors keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.exc_info
            and record.exc_info[1] is not None
            and str(record.msg).startswith("Exception in ASGI application")
        ):
            record.exc_text = traceback_without_message(record.exc_info[1])
            record.exc_info = None
        return True


SCRUB_TRACEBACKS = TracebackScrubber()


def scrub_server_logs() -> None:
    """Install the scrubbers on uvicorn's logs (idempotent)."""
    logging.getLogger("uvicorn.access").addFilter(SCRUB_QUERY)
    logging.getLogger("uvicorn.error").addFilter(SCRUB_TRACEBACKS)
