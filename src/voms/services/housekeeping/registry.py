"""Every housekeeping job: name, what it does, default schedule, its function.

Schedules are cron expressions (minute hour day month weekday, UTC), parsed by
croniter; ``VOMS_JOB_SCHEDULES`` overrides them per job, and "off" disables one.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from croniter import croniter

from voms.services.alerts import delivery as alert_delivery
from voms.services.alerts import detection as alert_detection
from voms.services.housekeeping import (
    accounts,
    archive,
    expiry,
    maintenance,
    reencryption,
    settlement,
)
from voms.services.housekeeping.context import JobContext
from voms.services.reports import feed, rollups

OFF = "off"


class ScheduleError(ValueError):
    """A schedule names an unknown job or is not a valid cron expression."""


@dataclass(frozen=True)
class Job:
    name: str
    description: str
    default_schedule: str
    run: Callable[[JobContext], int]


JOBS: dict[str, Job] = {
    job.name: job
    for job in (
        Job(
            "reservation_timeouts",
            "Apply the voucher type's timeout action (hold, commit, revoke) to reservations "
            "past their time.",
            "* * * * *",
            maintenance.time_out_reservations,
        ),
        Job(
            "charging_settlement",
            "Settle redemptions a charging system left unknown (timeout, dropped reply): "
            "retry with the same originTransactionID until it answers definitely.",
            "* * * * *",
            settlement.settle_charges,
        ),
        Job(
            "blacklist_release",
            "Release MSISDNs whose bad-PIN blacklist has ended; forget old bad-PIN counts.",
            "*/5 * * * *",
            maintenance.release_blacklists,
        ),
        Job(
            "request_id_purge",
            "Delete client request ids (idempotency records) past "
            "VOMS_IDEMPOTENCY_RETENTION_HOURS.",
            "17 * * * *",
            maintenance.purge_request_ids,
        ),
        Job(
            "channel_session_purge",
            "Delete USSD menu sessions past their timeout.",
            "*/15 * * * *",
            maintenance.purge_channel_sessions,
        ),
        Job(
            "export_file_purge",
            "Delete the encrypted files of exports whose download link has expired "
            "(the export records stay).",
            "40 * * * *",
            maintenance.purge_export_files,
        ),
        Job(
            "expiry_counts",
            "Count, per expired batch, the vouchers that expired unused (for reports).",
            "7 * * * *",
            expiry.count_expiries,
        ),
        Job(
            "report_rollups",
            "Fold new transactions into the report rollups and per-batch voucher counts.",
            "* * * * *",
            rollups.fold_transactions,
        ),
        Job(
            "transaction_feed",
            "Write each finished day's transactions as Parquet and CSV with a manifest "
            "into VOMS_EXPORT_DIR.",
            "20 0 * * *",
            feed.export_days,
        ),
        Job(
            "voucher_archive",
            "Move vouchers redeemed, expired or deleted before VOMS_ARCHIVE_RETENTION_DAYS "
            "into the archive (lookups still find them; their PINs are never reissued).",
            "30 2 * * *",
            archive.archive_vouchers,
        ),
        Job(
            "account_lifecycle",
            "Expire accounts past their expiry date; deactivate those expired longer than "
            "VOMS_ACCOUNT_GRACE_DAYS.",
            "5 * * * *",
            accounts.apply_account_lifecycle,
        ),
        Job(
            "balance_expiry",
            "Zero balances past their expiry date, each with a ledger row of cause expiry.",
            "10 * * * *",
            accounts.expire_balances,
        ),
        Job(
            "recharge_counter_purge",
            "Delete recharge-limit counters of past days and months.",
            "45 3 * * *",
            accounts.purge_recharge_counters,
        ),
        Job(
            "key_reencryption",
            "Re-encrypt PIN ciphertexts under the active encryption key after `voms keys "
            "rotate`; resumes where it stopped.",
            "*/10 * * * *",
            reencryption.reencrypt_pins,
        ),
        Job(
            "alert_detection",
            "Record new alerts once each (low balances, expiries, low voucher stock, batches "
            "about to expire, blacklisting bursts, failed jobs); end those that ended.",
            "*/5 * * * *",
            alert_detection.detect,
        ),
        Job(
            "alert_delivery",
            "Send due alerts: subscribers by SMS (after quiet hours), operators by e-mail.",
            "* * * * *",
            alert_delivery.deliver,
        ),
    )
}


def schedules(overrides: Mapping[str, str]) -> dict[str, str | None]:
    """Each job's cron expression (None: off), defaults overridden by ``overrides``."""
    unknown = sorted(set(overrides) - set(JOBS))
    if unknown:
        raise ScheduleError(f"unknown job in VOMS_JOB_SCHEDULES: {', '.join(unknown)}")
    result: dict[str, str | None] = {}
    for name, job in JOBS.items():
        expression = " ".join(overrides.get(name, job.default_schedule).split())
        if expression.lower() == OFF:
            result[name] = None
            continue
        if len(expression.split()) != 5 or not croniter.is_valid(expression):
            raise ScheduleError(f"job {name}: {expression!r} is not a 5-field cron expression")
        result[name] = expression
    return result


def next_run(expression: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that ``expression`` fires (UTC)."""
    nxt: datetime = croniter(expression, after).get_next(datetime)
    return nxt
