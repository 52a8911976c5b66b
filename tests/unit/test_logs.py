"""What the logs keep of an unexpected error: where and what, never its message."""

import io
import logging

import pytest
from pythonjsonlogger.json import JsonFormatter

from voms.logs import TracebackScrubber

PIN = "12345678901234"


def _fails() -> None:
    raise ValueError(f"cannot read {PIN}")


@pytest.mark.parametrize("formatter", [logging.Formatter(), JsonFormatter()])
def test_a_logged_exception_keeps_its_traceback_but_not_its_message(
    formatter: logging.Formatter,
) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    logger = logging.getLogger("test.voms.tracebacks")
    logger.addHandler(handler)
    logger.addFilter(TracebackScrubber())
    logger.propagate = False
    try:
        _fails()
    except ValueError:
        logger.exception("Exception in ASGI application")
    text = out.getvalue()
    assert PIN not in text
    assert "Exception in ASGI application" in text
    assert "_fails" in text
    assert "builtins.ValueError (message not logged)" in text


def test_a_start_up_error_keeps_its_message() -> None:
    record = logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, "Application startup failed.", None, None
    )
    try:
        raise RuntimeError("database unreachable")
    except RuntimeError as error:
        record.exc_info = (RuntimeError, error, error.__traceback__)
    assert TracebackScrubber().filter(record)
    assert "database unreachable" in logging.Formatter().format(record)
