"""The account lifecycle driven by the account's expiry date (docs/policy.md).

``active`` → ``expired`` once ``account_expires_at`` has passed → ``deactivated`` when
``VOMS_ACCOUNT_GRACE_DAYS`` more have passed. A recharge within the grace period
revives an expired account (it is ``active`` again, and the scenario extends its
expiry as usual); after it the account is refused with 5002 like any deactivated one.
Frozen and suspended accounts are left as they are (5010 and 5002).

The date decides, not the stored state alone: a redemption reads the effective state
(:func:`effective_state`), so an account is refused or revived correctly even before
the ``account_lifecycle`` job (:mod:`voms.services.housekeeping.accounts`) has
written the state down in bulk.
"""

from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import bindparam, update

from voms.billing.engine import Account
from voms.db import tables as t
from voms.domain.states import SubscriberState
from voms.runtime import Runtime
from voms.services.uow import UnitOfWork

_s = t.subscribers
_REVIVE = (
    update(_s)
    .where(_s.c.id == bindparam("sid"), _s.c.state == SubscriberState.EXPIRED.value)
    .values(state=SubscriberState.ACTIVE.value)
)
_FOLLOWS_EXPIRY = (SubscriberState.ACTIVE, SubscriberState.EXPIRED)


def effective_state(
    state: SubscriberState, expires_at: datetime | None, now: datetime, grace: timedelta
) -> SubscriberState:
    """The state an account is in at ``now``: its stored state, moved on by its expiry
    date when that state follows the expiry (active or expired)."""
    if state not in _FOLLOWS_EXPIRY:
        return state
    if expires_at is None or expires_at > now:
        return SubscriberState.ACTIVE
    if expires_at + grace <= now:
        return SubscriberState.DEACTIVATED
    return SubscriberState.EXPIRED


def grace(rt: Runtime) -> timedelta:
    return timedelta(days=rt.settings.account_grace_days)


def admit(
    rt: Runtime, uow: UnitOfWork, account: Account | None, *, revive: bool = True
) -> Account | None:
    """The account as the credit checks it: an expired one within its grace period is
    active again (``revive``: written with the COMMIT), one past it is deactivated."""
    if account is None:
        return None
    state = effective_state(account.state, account.account_expires_at, uow.started_at, grace(rt))
    if state is SubscriberState.EXPIRED:  # within the grace period
        state = SubscriberState.ACTIVE
    if revive and state is SubscriberState.ACTIVE and account.state is SubscriberState.EXPIRED:
        uow.write(_REVIVE, {"sid": account.id})
    return account if state is account.state else replace(account, state=state)
