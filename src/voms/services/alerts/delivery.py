"""Sending what detection recorded: subscribers by SMS, operators by e-mail.

Rows are claimed a chunk at a time by a conditional UPDATE (``claim``, and
``next_attempt_at`` pushed past the lease), so two runs never send the same row; a
runner that dies leaves its claim to expire, and the row is sent by the next run (at
least once, never twice by two live runners). A failed send is tried again later, up to
``VOMS_ALERT_MAX_ATTEMPTS``. Subscriber alerts of a provider inside its quiet hours
are not claimed at all: they wait, and the first run after the quiet hours sends them.
"""

import logging
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, not_, or_, select, update

from voms.db import tables as t
from voms.runtime import Runtime
from voms.services.alerts import mail
from voms.services.alerts.settings import is_quiet
from voms.services.uow import UnitOfWork

if TYPE_CHECKING:  # the jobs' context; imported lazily, the registry imports this module
    from voms.services.housekeeping.context import JobContext

log = logging.getLogger("voms.alerts")
_a, _s = t.alerts, t.alert_settings
RETRY_AFTER = timedelta(minutes=5)
# Alerts claimed at once: sent well within the claim's lease (VOMS_JOB_LEASE_SECONDS).
DELIVERY_CHUNK = 500
MAX_ERROR = 300


class NotConfigured(Exception):
    """No way to send this alert (no Kannel sendsms URL, no SMTP server, no address)."""


def quiet_providers(rt: Runtime, now: datetime) -> list[int]:
    """The providers whose quiet hours are on at ``now``."""
    with UnitOfWork(rt, read_only=True) as uow:
        rows = uow.conn.execute(
            select(_s.c.service_provider_id, _s.c.quiet_from, _s.c.quiet_until, _s.c.time_zone)
        ).all()
    return [
        row.service_provider_id
        for row in rows
        if is_quiet(row.quiet_from, row.quiet_until, row.time_zone, now)
    ]


def _due(now: datetime) -> Any:
    return and_(
        _a.c.state == "pending",
        or_(_a.c.next_attempt_at.is_(None), _a.c.next_attempt_at <= now),
    )


def _claim(
    rt: Runtime, now: datetime, quiet: list[int], limit: int
) -> tuple[str, list[tuple[Any, dict[str, str | None]]]]:
    """Claim up to ``limit`` due alerts for this run; the claim and the rows with what
    their texts need."""
    token = uuid.uuid4().hex
    lease = now + timedelta(seconds=rt.settings.job_lease_seconds)
    waiting = and_(_a.c.audience == "subscriber", _a.c.service_provider_id.in_(quiet))
    candidates = select(_a.c.id).where(_due(now)).order_by(_a.c.id).limit(limit)
    if quiet:
        candidates = candidates.where(not_(waiting))
    sp, bt, vt, sub, runs = (
        t.service_providers,
        t.balance_types,
        t.voucher_types,
        t.subscribers,
        t.job_runs,
    )
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        # The due condition again on the row itself: a concurrent run that claimed it
        # first has moved next_attempt_at, so this UPDATE skips it.
        conn.execute(
            update(_a)
            .where(_a.c.id.in_(candidates.scalar_subquery()), _due(now))
            .values(claim=token, next_attempt_at=lease)
        )
        rows = conn.execute(
            select(
                _a,
                sp.c.code.label("sp_code"),
                _s.c.operator_emails,
                _s.c.reward_sms,
                bt.c.code.label("balance_type"),
                vt.c.code.label("voucher_type"),
                sub.c.state.label("subscriber_state"),
                sub.c.language.label("language"),
                runs.c.job.label("job"),
                runs.c.error.label("job_error"),
                runs.c.outcome.label("job_outcome"),
            )
            .select_from(
                _a.outerjoin(sp, sp.c.id == _a.c.service_provider_id)
                .outerjoin(_s, _s.c.service_provider_id == _a.c.service_provider_id)
                .outerjoin(
                    bt,
                    and_(
                        bt.c.id == _a.c.subject_id,
                        _a.c.kind.in_(("low_balance", "balance_expiry")),
                    ),
                )
                .outerjoin(vt, and_(vt.c.id == _a.c.subject_id, _a.c.kind == "voucher_stock"))
                .outerjoin(sub, sub.c.id == _a.c.subscriber_id)
                .outerjoin(runs, and_(runs.c.id == _a.c.subject_id, _a.c.kind == "job_failed"))
            )
            .where(_a.c.claim == token)
            .order_by(_a.c.id)
        ).all()
        providers = {row.service_provider_id for row in rows if row.audience == "subscriber"}
        currencies: dict[int, dict[str, str | None]] = defaultdict(dict)
        if providers:
            for found in conn.execute(
                select(bt.c.service_provider_id, bt.c.code, bt.c.currency).where(
                    bt.c.service_provider_id.in_(providers)
                )
            ):
                currencies[found.service_provider_id][found.code] = found.currency
        uow.commit()
    return token, [(row, currencies.get(row.service_provider_id, {})) for row in rows]


def _values(row: Any, currencies: dict[str, str | None]) -> dict[str, Any]:
    """What a subscriber's text is filled with (amounts in minor units, dates as dates),
    and whom it is for: provider, language, the provider's currencies (the channel
    needs no lookup of its own)."""
    values: dict[str, Any] = dict(row.data or {})
    values.update(service_provider=row.sp_code, language=row.language, currencies=currencies)
    if row.balance_type is not None:
        values["balance_type"] = row.balance_type
    if row.amount is not None:
        values["balance"] = row.amount
    if row.subject_at is not None:
        values["date"] = row.subject_at.date().isoformat()
    return values


def _send_sms(rt: Runtime, row: Any, currencies: dict[str, str | None]) -> None:
    if row.kind == "reward" and row.reward_sms is False:
        raise NotConfigured("reward SMS are off for this service provider")
    if rt.alert_sms is None or not rt.settings.kannel_sendsms_url or not row.msisdn:
        raise NotConfigured("no VOMS_KANNEL_SENDSMS_URL")
    rt.alert_sms(row.msisdn, row.kind, _values(row, currencies))


def email_text(row: Any) -> tuple[str, str]:
    """Subject and body of an operator alert (identifiers and counts, never a PIN)."""
    sp = row.sp_code or "installation"
    when = row.subject_at.isoformat() if row.subject_at is not None else ""
    if row.kind == "voucher_stock":
        subject = f"[OpenVoMS] {sp}: voucher stock of {row.voucher_type} is low"
        body = (
            f"Vouchers of type {row.voucher_type} available in live batches: {row.amount}, "
            f"below the threshold of {row.threshold}."
        )
    elif row.kind == "batch_expiry":
        subject = f"[OpenVoMS] {sp}: batch {row.subject_id} expires on {when[:10]}"
        body = f"Batch {row.subject_id} expires at {when} with {row.amount} vouchers unused."
    elif row.kind == "blacklist_burst":
        subject = f"[OpenVoMS] {sp}: burst of blacklistings"
        body = (
            f"{row.amount} numbers of {sp} were blacklisted for bad PINs recently "
            f"(threshold {row.threshold}). Someone may be guessing PINs."
        )
    else:
        subject = f"[OpenVoMS] job {row.job} {row.job_outcome}"
        body = f"Run {row.subject_id} of job {row.job} {row.job_outcome}: {row.job_error or ''}"
    return subject, f"{body}\n\nAlert {row.id} ({row.kind}), recorded at {row.created_at}.\n"


def _send_email(rt: Runtime, row: Any) -> None:
    settings = rt.settings
    to = mail.recipients(settings, row.operator_emails)
    if not settings.smtp_host or not to:
        raise NotConfigured("no VOMS_SMTP_HOST or no address")
    subject, body = email_text(row)
    mail.send(settings, to, subject, body)


def _finish(
    rt: Runtime,
    token: str,
    now: datetime,
    outcomes: dict[str, list[int]],
    errors: dict[str, list[int]],
) -> None:
    """Record a chunk's outcomes: a few statements, whatever the chunk's size."""
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        mine = _a.c.claim == token
        if outcomes["sent"]:
            conn.execute(
                update(_a)
                .where(mine, _a.c.id.in_(outcomes["sent"]))
                .values(
                    state="sent", sent_at=now, claim=None, error=None, attempts=_a.c.attempts + 1
                )
            )
        for error, ids in errors.items():
            skipped = error.startswith("not configured")
            attempts = _a.c.attempts + 1
            conn.execute(
                update(_a)
                .where(mine, _a.c.id.in_(ids))
                .values(
                    state="skipped"
                    if skipped
                    else case(
                        (attempts >= rt.settings.alert_max_attempts, "failed"), else_="pending"
                    ),
                    attempts=attempts,
                    error=error[:MAX_ERROR],
                    claim=None,
                    next_attempt_at=now + RETRY_AFTER,
                )
            )
        uow.commit()


def deliver(ctx: "JobContext") -> int:
    """The ``alert_delivery`` job: send every due alert, chunk by chunk."""
    rt, now = ctx.rt, ctx.now
    quiet = quiet_providers(rt, now)
    counts: dict[str, int] = defaultdict(int)
    while True:
        token, rows = _claim(rt, now, quiet, min(ctx.chunk_size, DELIVERY_CHUNK))
        if not rows:
            break
        outcomes: dict[str, list[int]] = {"sent": []}
        errors: dict[str, list[int]] = defaultdict(list)
        for row, currencies in rows:
            try:
                if row.audience == "subscriber":
                    if row.subscriber_state not in (None, "active"):
                        raise NotConfigured("the subscriber is not active")
                    _send_sms(rt, row, currencies)
                else:
                    _send_email(rt, row)
            except NotConfigured as exc:
                errors[f"not configured: {exc}"].append(row.id)
                counts["skipped"] += 1
            except Exception as exc:  # one alert's failure never stops the others
                log.warning("alert %s (%s) not sent: %s", row.id, row.kind, type(exc).__name__)
                errors[f"{type(exc).__name__}: {exc}"].append(row.id)
                counts["failed"] += 1
            else:
                outcomes["sent"].append(row.id)
                counts["sent"] += 1
        _finish(rt, token, now, outcomes, errors)
        ctx.chunk_done(len(outcomes["sent"]))
    ctx.detail.update(
        sent=counts["sent"],
        failed=counts["failed"],
        skipped=counts["skipped"],
        quiet_providers=len(quiet),
    )
    return counts["sent"]
