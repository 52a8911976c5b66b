"""Authorization before validation for routes with a body (docs/api.md, consistency rules).

FastAPI decodes and validates a body before the route runs, so a service's own role
check would come after a 422. These routes take their body raw instead: the caller's
role is checked first (a dependency), then the body is decoded and validated here.
"""

import json
from typing import Any, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from voms.api.deps import Allowed
from voms.domain.roles import Permission

Model = TypeVar("Model", bound=BaseModel)


def permitted(permission: Permission) -> Any:
    """A dependency: the caller, refused (403) unless its role carries ``permission``;
    the service still checks its service-provider scope against the object."""

    return Depends(Allowed(permission))


async def json_body(request: Request) -> Any:
    """The decoded JSON body; None when there is none, 422 when it is not JSON."""
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise RequestValidationError(
            [{"loc": ("body",), "msg": "JSON decode error", "type": "json_invalid"}]
        ) from None


def validated(model: type[Model], data: Any) -> Model:
    """``data`` as ``model``, or 422 naming where and why (never echoing the input)."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        errors = [{**err, "loc": ("body", *err["loc"])} for err in exc.errors(include_input=False)]
        raise RequestValidationError(errors) from None


def documented(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI ``openapi_extra`` describing a raw body as ``model``."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }
