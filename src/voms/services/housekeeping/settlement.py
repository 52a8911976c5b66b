"""The charging_settlement job: settle the charges whose outcome a charging system left
unknown (a timeout, a reply dropped), by sending the same refill with the same
originTransactionID until it answers definitely (voms.services.redemption.charging)."""

from voms.services.housekeeping.context import JobContext
from voms.services.redemption import charging


def settle_charges(ctx: JobContext) -> int:
    """Retry every due charge, a chunk at a time; the number settled definitely."""
    settled = 0
    while True:
        done = charging.settle_due(ctx.rt, ctx.now, limit=min(ctx.chunk_size, 1000))
        for outcome, count in done.items():
            ctx.detail[outcome] = ctx.detail.get(outcome, 0) + count
        definite = done["credited"] + done["refused"]
        settled += definite
        ctx.chunk_done(definite)
        # A chunk that settled nothing leaves the rest for the next run (backoff).
        if sum(done.values()) < min(ctx.chunk_size, 1000) or definite == 0:
            return settled
