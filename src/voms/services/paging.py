"""Keyset paging for every collection (docs/api.md, "Consistency rules").

A collection answers ``{"items": [...], "next_cursor": …}``. The cursor is the sort key
of the last item answered, opaque to the caller (URL-safe base64 of a JSON list); the
next page is read with ``WHERE key > cursor`` (or ``<`` newest first) on an index, so
page 1,000 costs what page 1 does. ``limit`` is 1 to :data:`MAX_LIMIT`, 50 by default.
"""

import base64
import binascii
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from voms.domain.errors import Invalid

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
MAX_CURSOR_CHARS = 400
BIGINT_MAX = 2**63 - 1

Key = tuple[Any, ...]
Row = TypeVar("Row", bound=Mapping[str, Any])


def encode(key: Key) -> str:
    """The cursor that continues after the item whose sort key is ``key``."""
    text = json.dumps(list(key), separators=(",", ":"), default=str)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode(cursor: str | None, *types: type) -> Key | None:
    """The sort key a cursor carries, each part of the given type (int or str); None
    without a cursor; 422 for anything this module did not write."""
    if cursor is None or cursor == "":
        return None
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        parts = json.loads(raw.decode())
        if not isinstance(parts, list) or len(parts) != len(types):
            raise ValueError
        for part, kind in zip(parts, types, strict=True):
            if type(part) is not kind:
                raise ValueError
            if isinstance(part, int) and not -BIGINT_MAX <= part <= BIGINT_MAX:
                raise ValueError
            if isinstance(part, str) and "\x00" in part:
                raise ValueError
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise Invalid("malformed cursor") from None
    return tuple(parts)


def bounded(limit: int | None) -> int:
    """``limit`` within 1..MAX_LIMIT (the API refuses others with 422 before this)."""
    return DEFAULT_LIMIT if limit is None else max(1, min(int(limit), MAX_LIMIT))


def page(rows: Sequence[Row], limit: int, key: Callable[[Row], Key]) -> dict[str, Any]:
    """``rows`` read with ``limit + 1``: the page and the cursor to the next one."""
    items = list(rows[:limit])
    more = len(rows) > limit
    return {"items": items, "next_cursor": encode(key(items[-1])) if more and items else None}


def after(column_values: Sequence[Any], key: Key, *, descending: bool = False) -> Any:
    """The SQL condition ``(columns) > key`` (``<`` when ``descending``), written out so
    SQLite and PostgreSQL both use the index."""
    condition: Any = None
    for i in reversed(range(len(column_values))):
        column, value = column_values[i], key[i]
        step = column < value if descending else column > value
        condition = step if condition is None else (step | ((column == value) & condition))
    return condition
