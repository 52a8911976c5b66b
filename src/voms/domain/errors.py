"""Domain errors: services raise these, each interface maps them to its protocol."""

from typing import Any

from voms.domain.results import Result


class VomsError(Exception):
    """Base of every error a service raises on purpose."""

    http_status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(VomsError):
    """A referenced object does not exist (the detail names it)."""

    http_status = 404


class Conflict(VomsError):
    """The request collides with existing data (duplicate, illegal transition)."""

    http_status = 409


class RequestIdReused(Conflict):
    """A request id already answered for another body (5006 in the redemption family)."""


class Invalid(VomsError):
    """The request is well-formed but its values are unacceptable."""

    http_status = 422


class Forbidden(VomsError):
    """The caller's role or service-provider scope does not allow this."""

    http_status = 403


class ResultError(VomsError):
    """A redemption-family outcome that carries a result code."""

    def __init__(self, result: Result, **extra: Any) -> None:
        super().__init__(result.text)
        self.result = result
        self.http_status = result.http_status
        self.extra = extra
