"""What every collection route shares (docs/api.md, "Consistency rules"): the page's
shape ``{"items": [...], "next_cursor": …}`` and the ``limit`` and ``cursor`` queries."""

from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel, Field

from voms.services.paging import DEFAULT_LIMIT, MAX_CURSOR_CHARS, MAX_LIMIT

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Items per page (1-{MAX_LIMIT})")]
Cursor = Annotated[
    str | None,
    Query(max_length=MAX_CURSOR_CHARS, description="`next_cursor` of the previous page"),
]
LIMIT_DEFAULT = DEFAULT_LIMIT


class Page(BaseModel, Generic[T]):
    """One page of a collection; ``next_cursor`` is null on the last one."""

    items: list[T]
    next_cursor: str | None = Field(description="Pass it on as `cursor` for the next page")
