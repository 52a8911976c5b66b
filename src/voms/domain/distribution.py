"""Which vouchers may leave the system in a partner's file, and what the file holds."""

from voms.domain.errors import VomsError
from voms.domain.states import BatchState, VoucherState

# A batch still generating, or one that failed, is never handed out; neither is a
# deleted one. Inactive (generated) and frozen batches may be: print shops commonly
# receive vouchers before the operator activates them on delivery.
EXPORTABLE_BATCH_STATES = frozenset({BatchState.GENERATED, BatchState.ACTIVE, BatchState.FROZEN})

# A redeemed or deleted voucher is never exported, nor a reserved one: its PIN has
# already been presented by a subscriber, so it is in someone's hands.
EXPORTABLE_VOUCHER_STATES = frozenset({VoucherState.AVAILABLE, VoucherState.FROZEN})

# The fixed start of every export (docs/api.md "Distribution"); more columns follow.
EXPORT_COLUMNS = (
    "serial",
    "pin",
    "voucher_type",
    "expires_at",
    "value",
    "currency",
    "batch",
)

# One header row plus at most this many rows fit in one spreadsheet sheet.
XLSX_MAX_VOUCHERS = 1_048_575


def is_exportable(batch_state: BatchState, voucher_state: VoucherState, expired: bool) -> bool:
    """True when a voucher may go into an export (expired vouchers would only fail 2014)."""
    return (
        batch_state in EXPORTABLE_BATCH_STATES
        and voucher_state in EXPORTABLE_VOUCHER_STATES
        and not expired
    )


class LinkExpired(VomsError):
    """A download link past its time (410 Gone): ask for a new export."""

    http_status = 410
