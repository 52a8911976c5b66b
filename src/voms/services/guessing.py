"""PIN guessing: the failed-lookup budget, and answers that tell a guesser nothing.

Failed voucher lookups (a PIN that is no voucher) are counted per API key, per service
provider and, where the subscriber types the MSISDN, per client address, in one-minute
buckets of the table ``lookup_failures`` that every process and host shares. Past a
budget in the sliding window (VOMS_LOOKUP_FAILURES_PER_KEY, _PER_PROVIDER, _PER_CLIENT
over VOMS_LOOKUP_FAILURE_WINDOW_MINUTES) the subject is refused with 5007, an audit
entry ``guessing.throttled`` is written and a warning logged. Before that, when the
failure rate jumps (one minute's failures reach VOMS_LOOKUP_FAILURE_ALERT_FACTOR times
the subject's average minute over the window, and at least
VOMS_LOOKUP_FAILURE_ALERT_MINIMUM), the alert ``guessing.alert`` is raised once for
that minute: an audit entry, a logged warning, and a line on the console's dashboard.

Only a failed lookup touches the database here. A process learns that a subject is
over its budget when one of that subject's lookups fails in it, and from then on
refuses it from memory, so a successful redemption never pays a round trip for this,
and a guesser spread over N processes gets at most N more failures past the budget.
"""

import logging
import math
import time
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, bindparam, case, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import ResultError
from voms.domain.guessing import HOURS_PER_YEAR, hours_to_guess
from voms.domain.msisdn import mask_msisdn, msisdn_is_authenticated
from voms.domain.results import Result
from voms.runtime import Runtime
from voms.services import audit
from voms.services.auth import Principal
from voms.services.uow import UnitOfWork

log = logging.getLogger("voms.security")

# How long a process refuses a subject over budget before asking the database again.
THROTTLE_SECONDS = 60.0

# Answers that depend on the PIN. For a recipient who is no subscriber, a redemption
# answers 5001 instead, whatever the PIN: the subscriber is checked first.
PIN_ANSWERS = frozenset(
    {
        Result.MISSING_VOUCHER_NUMBER,
        Result.INVALID_VOUCHER_NUMBER_LENGTH,
        Result.INVALID_VOUCHER_NUMBER,
        Result.VOUCHER_NOT_FOUND,
        Result.INVALID_SERIAL_NUMBER,
        Result.ALREADY_REDEEMED,
        Result.ALREADY_RESERVED,
        Result.DELETED,
        Result.NOT_YET_ACTIVE,
        Result.BATCH_NOT_ACTIVE,
        Result.FROZEN,
        Result.EXPIRED,
        Result.VOUCHER_TYPE_NOT_FOUND,
    }
)


class Attempt(Protocol):
    """What a failed redemption-family attempt has revealed (voms.services.redemption)."""

    kind: str
    actor: Principal
    channel: str
    msisdn: str | None
    recipient: str | None
    service_provider_id: int | None
    bad_pin: bool


def subjects(
    rt: Runtime, actor: Principal, channel: str, sp_id: int | None
) -> list[tuple[str, int]]:
    """The budgets a lookup by ``actor`` counts against: (subject, failures allowed)."""
    settings = rt.settings
    found = []
    if actor.api_key_id is not None:
        found.append((f"key:{actor.api_key_id}", settings.lookup_failures_per_key))
    if sp_id is not None:
        found.append((f"sp:{sp_id}", settings.lookup_failures_per_provider))
    if actor.client is not None and not msisdn_is_authenticated(channel):
        who = actor.api_key_id if actor.api_key_id is not None else actor.name
        found.append((f"client:{who}@{actor.client}"[:120], settings.lookup_failures_per_client))
    return found


def _throttled(rt: Runtime) -> dict[str, float]:
    """This process's subjects over budget, with the monotonic time they are refused to."""
    throttled = rt.caches.get("guessing_throttled")
    if throttled is None:
        throttled = rt.caches.setdefault("guessing_throttled", {})
    return throttled  # type: ignore[no-any-return]


def refuse_if_throttled(rt: Runtime, actor: Principal, channel: str, sp_id: int | None) -> None:
    """5007 when a budget this call counts against is spent (from memory, no I/O)."""
    throttled = _throttled(rt)
    if not throttled:
        return
    now = time.monotonic()
    for subject, _ in subjects(rt, actor, channel, sp_id):
        until = throttled.get(subject)
        if until is not None:
            if until > now:
                raise ResultError(Result.TOO_MANY_REQUESTS)
            del throttled[subject]


_lf = t.lookup_failures


def _increment(dialect: str) -> Any:
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(_lf)
    return insert.on_conflict_do_update(
        index_elements=[_lf.c.subject, _lf.c.minute],
        set_={"failures": _lf.c.failures + 1},
    )


def count_failure(
    rt: Runtime, conn: Connection, actor: Principal, channel: str, sp_id: int | None, now: datetime
) -> None:
    """One more failed lookup against each budget of the call; a budget spent starts
    refusing its subject (and the first process to see it raises the alert)."""
    found = subjects(rt, actor, channel, sp_id)
    if not found:
        return
    window = rt.settings.lookup_failure_window_minutes
    minute = int(now.timestamp()) // 60
    conn.execute(
        _increment(conn.dialect.name),
        [{"subject": subject, "minute": minute, "failures": 1} for subject, _ in found],
    )
    this_minute = func.sum(case((_lf.c.minute == minute, _lf.c.failures), else_=0))
    totals = {
        row[0]: (int(row[1] or 0), int(row[2] or 0))
        for row in conn.execute(
            select(_lf.c.subject, func.sum(_lf.c.failures), this_minute)
            .where(_lf.c.subject.in_([s for s, _ in found]), _lf.c.minute > minute - window)
            .group_by(_lf.c.subject)
        ).all()
    }
    throttled = _throttled(rt)
    for subject, budget in found:
        total, now_count = totals.get(subject, (0, 0))
        _alert_on_jump(rt, conn, actor, channel, sp_id, subject, total, now_count)
        if total < budget:
            continue
        throttled[subject] = time.monotonic() + THROTTLE_SECONDS
        if total == budget:  # counted exactly once, by whichever process crossed it
            log.warning(
                "guessing: %s reached %d failed voucher lookups in %d minutes; refused (5007)",
                subject,
                total,
                window,
            )
            audit.record(
                conn,
                actor,
                "guessing.throttled",
                "lookup_budget",
                subject,
                sp_id,
                {"failures": total, "window_minutes": window, "channel": channel},
            )
    _forget_old(rt, conn, minute - window)


def alert_threshold(rt: Runtime, earlier_failures: int) -> int:
    """Failed lookups in one minute that raise the alert, given the subject's failures
    in the window's other minutes: a jump of the rate, never below the minimum."""
    settings = rt.settings
    window = settings.lookup_failure_window_minutes
    average = earlier_failures / max(1, window - 1)
    return max(
        settings.lookup_failure_alert_minimum,
        math.ceil(settings.lookup_failure_alert_factor * max(1.0, average)),
    )


def _alert_on_jump(
    rt: Runtime,
    conn: Connection,
    actor: Principal,
    channel: str,
    sp_id: int | None,
    subject: str,
    total: int,
    now_count: int,
) -> None:
    """Raise ``guessing.alert`` when this minute's failures cross the jump threshold:
    exactly once per subject and minute, by whichever process crossed it."""
    threshold = alert_threshold(rt, total - now_count)
    if now_count != threshold:
        return
    log.warning(
        "guessing alert: %s made %d failed voucher lookups this minute (%d in the window)",
        subject,
        now_count,
        total,
    )
    audit.record(
        conn,
        actor,
        "guessing.alert",
        "lookup_budget",
        subject,
        sp_id,
        {"failures_this_minute": now_count, "failures_in_window": total, "channel": channel},
    )


def _forget_old(rt: Runtime, conn: Connection, before: int) -> None:
    """Delete buckets that left the window, once a minute per process."""
    if rt.caches.get("guessing_cleaned") == before:
        return
    rt.caches["guessing_cleaned"] = before
    conn.execute(delete(_lf).where(_lf.c.minute <= before))


_KNOWN_SUBSCRIBERS = select(t.subscribers.c.msisdn).where(
    t.subscribers.c.msisdn.in_([bindparam("msisdn"), bindparam("recipient")])
)


def after_failure(
    rt: Runtime, uow: UnitOfWork, attempt: Attempt, error: ResultError
) -> ResultError:
    """In a failed attempt's own unit of work, before it is recorded: count a bad PIN
    against the budgets; answer 5001 for a redemption to no subscriber whatever the PIN
    said; mask the numbers that match no subscriber (they may be a mistyped PIN)."""
    if attempt.bad_pin:
        count_failure(
            rt,
            uow.conn,
            attempt.actor,
            attempt.channel,
            attempt.service_provider_id,
            uow.started_at,
        )
    if attempt.msisdn is None and attempt.recipient is None:
        return error
    rows = uow.fetch(_KNOWN_SUBSCRIBERS, {"msisdn": attempt.msisdn, "recipient": attempt.recipient})
    # Subscribers of a charging system have no wallet row: those it has credited count.
    # (Imported here: its HTTP clients cost `voms batch generate` a tenth of a second.)
    from voms.services import billing

    known = {row.msisdn for row in rows} | billing.known_at_charging_systems(
        rt, uow, attempt.msisdn, attempt.recipient
    )
    if (
        attempt.kind == "redemption"
        and attempt.recipient is not None
        and attempt.recipient not in known
        and error.result in PIN_ANSWERS
    ):
        error = ResultError(Result.SUBSCRIBER_NOT_FOUND)
    if attempt.msisdn is not None and attempt.msisdn not in known:
        attempt.msisdn = mask_msisdn(attempt.msisdn)
    if attempt.recipient is not None and attempt.recipient not in known:
        attempt.recipient = mask_msisdn(attempt.recipient)
    return error


def weak_pin_warning(rt: Runtime, voucher_type: str) -> str | None:
    """A warning when a guesser at the per-key budget would expect to find one of the
    live vouchers of ``voucher_type``'s PIN length within a year (SECURITY.md).

    Live vouchers are counted from the batches (their sizes, not their rows): every
    batch of a type with that PIN length that is neither deleted nor expired.
    """
    vt, b = t.voucher_types, t.batches
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        pin_length = conn.execute(select(vt.c.pin_length).where(vt.c.code == voucher_type)).scalar()
        if pin_length is None:
            return None
        live = conn.execute(
            select(func.coalesce(func.sum(b.c.count), 0))
            .join(vt, vt.c.id == b.c.voucher_type_id)
            .where(
                vt.c.pin_length == pin_length,
                b.c.state != "deleted",
                b.c.expires_at > utcnow(),
            )
        ).scalar_one()
    budget = rt.settings.lookup_failures_per_key * 60 / rt.settings.lookup_failure_window_minutes
    hours = hours_to_guess(pin_length, int(live), budget)
    if hours >= HOURS_PER_YEAR:
        return None
    return (
        f"PINs of {pin_length} digits with {int(live)} live vouchers: a guesser at the key "
        f"budget ({budget:.0f} failed lookups an hour) expects a hit within {hours / 24:.0f} "
        "days; use longer PINs (SECURITY.md, PIN guessing)"
    )
