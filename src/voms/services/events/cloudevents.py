"""The CloudEvents 1.0 body of an event, and the header that carries a webhook delivery's
signature (``voms.crypto.body_signature``).

The body is built from the outbox row alone, so every delivery of one event, a retry or
a replay after a crash, carries the same bytes and the same ``id``.
"""

import json
from datetime import datetime
from typing import Any

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"
SIGNATURE_HEADER = "X-Voms-Signature"


def body(
    event_id: str,
    type: str,
    subject: str | None,
    at: datetime,
    data: dict[str, Any],
    source: str,
) -> bytes:
    """The structured-mode CloudEvent, as UTF-8 JSON."""
    event: dict[str, Any] = {
        "specversion": SPEC_VERSION,
        "id": event_id,
        "source": source,
        "type": type,
        "time": at.isoformat(),
        "datacontenttype": "application/json",
    }
    if subject is not None:
        event["subject"] = subject
    event["data"] = data
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
